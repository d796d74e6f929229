//! Typed decoding and encoding errors.
//!
//! Policy: every malformed bootstrap yields one of these variants, naming the
//! table and index at fault; decoding never panics and never reads out of
//! bounds. Variants carry plain integers so callers can match on them.

use thiserror::Error;

/// The tables of a bootstrap, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The inode table.
    Inodes,
    /// The directory entry table.
    Dirents,
    /// The chunk table.
    Chunks,
    /// The blob table.
    Blobs,
    /// The xattr table.
    Xattrs,
    /// The prefetch table.
    Prefetch,
    /// The string pool.
    Strings,
}

impl core::fmt::Display for Table {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Table::Inodes => "inode table",
            Table::Dirents => "directory entry table",
            Table::Chunks => "chunk table",
            Table::Blobs => "blob table",
            Table::Xattrs => "xattr table",
            Table::Prefetch => "prefetch table",
            Table::Strings => "string pool",
        };
        f.write_str(s)
    }
}

/// Why a name (directory entry or xattr name) is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NameError {
    /// Zero-length name.
    #[error("empty name")]
    Empty,
    /// Longer than 255 bytes.
    #[error("name longer than 255 bytes")]
    TooLong,
    /// Contains `/`.
    #[error("name contains '/'")]
    Slash,
    /// Contains NUL.
    #[error("name contains NUL")]
    Nul,
    /// `.` or `..`.
    #[error("name is '.' or '..'")]
    Dot,
}

/// A bootstrap that cannot be decoded, or a tree that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Shorter than a superblock.
    #[error("bootstrap too short: {len} bytes")]
    TooShort {
        /// Actual length.
        len: usize,
    },
    /// Wrong magic bytes.
    #[error("not a rafs bootstrap (bad magic)")]
    BadMagic,
    /// Major version not understood by this reader.
    #[error("unsupported format version {major}.{minor}")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The superblock size field is not 256.
    #[error("bad superblock size {0}")]
    BadSuperblockSize(u32),
    /// Incompat feature bits this reader does not know.
    #[error("unknown incompatible features {0:#x}")]
    UnknownIncompatFeatures(u64),
    /// Recorded size differs from the actual length.
    #[error("bootstrap size mismatch: header says {header}, file has {actual}")]
    SizeMismatch {
        /// Size in the superblock.
        header: u64,
        /// Actual length.
        actual: u64,
    },
    /// blake3 checksum mismatch.
    #[error("bootstrap checksum mismatch")]
    ChecksumMismatch,
    /// A reserved field is non-zero.
    #[error("reserved field not zero: {0}")]
    ReservedNotZero(&'static str),
    /// A table lies (partly) outside the bootstrap or inside the superblock.
    #[error("{0} lies outside the bootstrap")]
    TableOutOfBounds(Table),
    /// Two tables overlap.
    #[error("{0} overlaps {1}")]
    TablesOverlap(Table, Table),
    /// A table has more entries than a 32-bit index can address.
    #[error("{0} has too many entries")]
    TableTooLarge(Table),
    /// An entry index is past the end of its table.
    #[error("{table} index {index} out of range")]
    IndexOutOfRange {
        /// Table indexed.
        table: Table,
        /// Offending index.
        index: u64,
    },
    /// A range of entries (start, count) is past the end of its table.
    #[error("inode {ino}: range {start}+{count} outside the {table}")]
    RangeOutOfBounds {
        /// Inode owning the range.
        ino: u32,
        /// Table indexed.
        table: Table,
        /// Range start.
        start: u64,
        /// Range length.
        count: u64,
    },
    /// An inode with an unknown file type or bad per-type fields.
    #[error("inode {ino}: {reason}")]
    BadInode {
        /// Offending inode.
        ino: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The root inode is not a directory or is not its own parent.
    #[error("root inode is not a directory that is its own parent")]
    BadRoot,
    /// A directory entry name is invalid.
    #[error("directory inode {dir}, entry {index}: {error}")]
    BadName {
        /// Directory containing the entry.
        dir: u32,
        /// Entry index in the dirent table.
        index: u64,
        /// What is wrong with the name.
        error: NameError,
    },
    /// Directory entries are not strictly ascending.
    #[error("directory inode {dir}: entries not sorted or duplicated at {index}")]
    UnsortedEntries {
        /// Directory.
        dir: u32,
        /// Entry index in the dirent table.
        index: u64,
    },
    /// A directory is reachable twice, or its parent field disagrees: the
    /// tree would not be a tree.
    #[error("directory inode {ino} is linked more than once or has a wrong parent")]
    NotATree {
        /// Offending directory.
        ino: u32,
    },
    /// An inode no directory entry reaches.
    #[error("inode {ino} is not reachable from the root")]
    Orphan {
        /// Offending inode.
        ino: u32,
    },
    /// Link count differs from the number of entries.
    #[error("inode {ino}: nlink {nlink}, expected {expected}")]
    NlinkMismatch {
        /// Offending inode.
        ino: u32,
        /// Recorded link count.
        nlink: u32,
        /// Count implied by the tree.
        expected: u64,
    },
    /// A chunk entry is malformed.
    #[error("chunk {index}: {reason}")]
    BadChunk {
        /// Index in the chunk table.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file's chunks do not tile `[0, size)`.
    #[error("inode {ino}: chunks do not cover the file contiguously")]
    ChunkRunMismatch {
        /// Offending file.
        ino: u32,
    },
    /// A blob entry is malformed.
    #[error("blob {index}: {reason}")]
    BadBlob {
        /// Index in the blob table.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An xattr entry is malformed.
    #[error("inode {ino}, xattr {index}: {reason}")]
    BadXattr {
        /// Owning inode.
        ino: u32,
        /// Index in the xattr table.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The caller asked for an inode that does not exist.
    #[error("no inode {0}")]
    NoSuchInode(u64),
    /// The inode is not of the type the operation needs.
    #[error("inode {ino} is not a {expected}")]
    WrongType {
        /// Inode.
        ino: u32,
        /// Type the operation needs.
        expected: &'static str,
    },
    /// The encoder was given a tree it cannot represent.
    #[error("cannot encode: {0}")]
    Encode(String),
}
