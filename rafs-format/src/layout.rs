//! Every on-disk structure of the bootstrap, in one place.
//!
//! `docs/FORMAT.md` is the normative description; this file is its
//! transcription. All integers are little-endian and every struct has
//! alignment 1 (`zerocopy::little_endian` types), so views can be taken at any
//! offset of an mmapped file without alignment concerns and without `unsafe`.
//! Each struct carries a compile-time size assertion; `tests::offsets` checks
//! every documented field offset.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First eight bytes of every bootstrap.
pub const MAGIC: [u8; 8] = *b"RAFSBOOT";
/// Major version: a reader refuses any other major version.
pub const MAJOR_VERSION: u16 = 1;
/// Minor version: additions a reader of the same major may ignore.
pub const MINOR_VERSION: u16 = 0;

/// Incompat feature: chunks may be zstd-compressed.
pub const INCOMPAT_ZSTD: u64 = 1 << 0;
/// Incompat feature: some chunks are members of batch frames.
pub const INCOMPAT_BATCH: u64 = 1 << 1;
/// Incompat features this reader understands.
pub const KNOWN_INCOMPAT: u64 = INCOMPAT_ZSTD | INCOMPAT_BATCH;
/// Compat feature: the prefetch table was filled from a prefetch list.
pub const COMPAT_PREFETCH_LIST: u64 = 1 << 0;

/// Chunk flag: the stored bytes are a zstd frame.
pub const CHUNK_ZSTD: u32 = 1 << 0;
/// Chunk flag: the chunk is a hole; it stores nothing and reads as zeros.
pub const CHUNK_HOLE: u32 = 1 << 1;
/// Chunk flag: the stored bytes are a zstd frame holding several small
/// chunks (always together with [`CHUNK_ZSTD`]); the chunk's data is
/// `batch_offset..batch_offset + uncompressed_size` of the decompressed frame.
pub const CHUNK_BATCH: u32 = 1 << 2;
/// All chunk flags this reader understands.
pub const CHUNK_KNOWN_FLAGS: u32 = CHUNK_ZSTD | CHUNK_HOLE | CHUNK_BATCH;

/// Largest uncompressed data chunk (holes may be larger).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Longest name of a directory entry or an xattr.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target (PATH_MAX - 1).
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Largest xattr value (the Linux VFS limit).
pub const MAX_XATTR_VALUE_LEN: usize = 65536;

/// Blob compressor: chunks are stored raw.
pub const COMPRESSOR_NONE: u32 = 0;
/// Blob compressor: chunks are zstd frames, or raw where zstd did not help.
pub const COMPRESSOR_ZSTD: u32 = 1;
/// Blob flag: every frame starts at a multiple of [`BLOB_FRAME_ALIGN`] in
/// the blob's uncompressed address space, and the bytes between a frame's
/// end and the next multiple are padding no chunk references.
pub const BLOB_ALIGNED: u32 = 1 << 0;
/// Blob flags this version knows.
pub const BLOB_KNOWN_FLAGS: u32 = BLOB_ALIGNED;
/// Frame alignment of [`BLOB_ALIGNED`] blobs (and the cache's range size).
pub const BLOB_FRAME_ALIGN: u64 = 4096;

/// Chunking mode recorded in the superblock: fixed-size chunks.
pub const CHUNKING_FIXED: u8 = 1;
/// Chunking mode recorded in the superblock: FastCDC content-defined chunks.
pub const CHUNKING_FASTCDC: u8 = 2;

/// File type bits of `Inode::mode` (the POSIX `S_IFMT` values).
pub const S_IFMT: u32 = 0o170000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;

/// Location of one table: `count` entries starting `offset` bytes into the
/// bootstrap. The byte length is `count * size_of::<Entry>()`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct TableRef {
    /// Byte offset from the start of the bootstrap.
    pub offset: U64,
    /// Number of entries (bytes, for the string pool).
    pub count: U64,
}

/// The superblock: the first 256 bytes of the bootstrap.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`MAJOR_VERSION`].
    pub major_version: U16,
    /// [`MINOR_VERSION`] of the writer.
    pub minor_version: U16,
    /// `size_of::<SuperBlock>()` (256).
    pub superblock_size: U32,
    /// Features a reader may ignore.
    pub compat_features: U64,
    /// Features a reader must understand; unknown bits make it refuse.
    pub incompat_features: U64,
    /// blake3 of the whole bootstrap with this field zeroed.
    pub checksum: [u8; 32],
    /// Total length of the bootstrap in bytes.
    pub bootstrap_size: U64,
    /// [`CHUNKING_FIXED`] or [`CHUNKING_FASTCDC`] (informative).
    pub chunking: u8,
    /// Reserved, zero.
    pub reserved0: [u8; 3],
    /// FastCDC minimum chunk size; the chunk size for fixed chunking.
    pub chunk_min: U32,
    /// FastCDC average chunk size; the chunk size for fixed chunking.
    pub chunk_avg: U32,
    /// FastCDC maximum chunk size; the chunk size for fixed chunking.
    pub chunk_max: U32,
    /// Reserved, zero.
    pub reserved1: [u8; 8],
    /// Inode table: [`Inode`], indexed by inode number; inode 0 is the root.
    pub inodes: TableRef,
    /// Directory entry table: [`DirEntry`].
    pub dirents: TableRef,
    /// Chunk table: [`ChunkInfo`].
    pub chunks: TableRef,
    /// Blob table: [`BlobInfo`].
    pub blobs: TableRef,
    /// Xattr table: [`XattrEntry`].
    pub xattrs: TableRef,
    /// Prefetch table: [`PrefetchEntry`].
    pub prefetch: TableRef,
    /// String pool: raw bytes (names, symlink targets, xattr names/values).
    pub strings: TableRef,
    /// Reserved, zero.
    pub reserved2: [u8; 48],
}

/// One inode. The meaning of `payload_start`/`payload_count` depends on the
/// file type: a directory's range in the dirent table, a regular file's run
/// in the chunk table, a symlink target's offset/length in the string pool.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct Inode {
    /// File type (`S_IFMT` bits) and permission bits including
    /// setuid/setgid/sticky.
    pub mode: U32,
    /// Owner user id.
    pub uid: U32,
    /// Owner group id.
    pub gid: U32,
    /// Link count: entries naming a non-directory; 2 + subdirectories for a
    /// directory.
    pub nlink: U32,
    /// Size in bytes (regular files: data length; symlinks: target length).
    pub size: U64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: I64,
    /// Modification time, nanoseconds (< 1e9).
    pub mtime_nsec: U32,
    /// Directories: inode number of the parent (the root is its own parent).
    /// Zero for other types.
    pub parent: U32,
    /// Device number of character and block devices; zero otherwise.
    pub rdev: U64,
    /// Start of the per-type payload range.
    pub payload_start: U32,
    /// Length of the per-type payload range.
    pub payload_count: U32,
    /// First entry of this inode's xattrs in the xattr table.
    pub xattr_start: U32,
    /// Number of xattrs.
    pub xattr_count: U32,
}

/// One directory entry. A directory's entries are contiguous and sorted by
/// name bytes, strictly ascending.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DirEntry {
    /// Inode number the entry names (never 0, the root).
    pub ino: U32,
    /// Offset of the name in the string pool.
    pub name_offset: U32,
    /// Length of the name (1..=255).
    pub name_len: U16,
    /// Reserved, zero.
    pub reserved: U16,
}

/// One chunk of a regular file. A file's run of chunks tiles `[0, size)` in
/// order: the first starts at 0, each next one where the previous ended.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ChunkInfo {
    /// blake3 of the uncompressed data; zero for holes.
    pub digest: [u8; 32],
    /// Offset of the chunk within the file.
    pub file_offset: U64,
    /// Offset of the stored bytes (for a batch member: of the whole frame)
    /// in the blob; zero for holes.
    pub compressed_offset: U64,
    /// Offset of the data in the blob's uncompressed address space (where a
    /// cache stores it); zero for holes.
    pub uncompressed_offset: U64,
    /// Stored length in the blob (for a batch member: of the whole frame);
    /// zero for holes.
    pub compressed_size: U32,
    /// Length of the data in the file.
    pub uncompressed_size: U32,
    /// Index into the blob table; zero for holes.
    pub blob_index: U32,
    /// [`CHUNK_ZSTD`], [`CHUNK_ZSTD`] | [`CHUNK_BATCH`], [`CHUNK_HOLE`], or
    /// none (stored raw).
    pub flags: U32,
    /// Batch members: offset of the data in the decompressed frame; else 0.
    pub batch_offset: U32,
    /// Batch members: decompressed length of the whole frame; else 0.
    pub batch_size: U32,
}

/// One data blob: a concatenation of stored chunks, addressed by the sha256
/// of its bytes as an OCI registry addresses it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct BlobInfo {
    /// sha256 of the blob's bytes.
    pub id: [u8; 32],
    /// Length of the blob in bytes.
    pub compressed_size: U64,
    /// Length of the blob's uncompressed address space.
    pub uncompressed_size: U64,
    /// Number of distinct chunks stored in the blob.
    pub chunk_count: U32,
    /// [`COMPRESSOR_NONE`] or [`COMPRESSOR_ZSTD`].
    pub compressor: U32,
    /// [`BLOB_ALIGNED`] or zero.
    pub flags: U32,
    /// Reserved, zero.
    pub reserved: [u8; 4],
}

/// One extended attribute. An inode's xattrs are contiguous and sorted by
/// name bytes, strictly ascending.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct XattrEntry {
    /// Offset of the name in the string pool.
    pub name_offset: U32,
    /// Offset of the value in the string pool.
    pub value_offset: U32,
    /// Length of the value (0..=65536).
    pub value_len: U32,
    /// Length of the name (1..=255).
    pub name_len: U16,
    /// Reserved, zero.
    pub reserved: U16,
}

/// One prefetch table entry: an inode number, in priority order.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct PrefetchEntry {
    /// Inode to prefetch.
    pub ino: U32,
}

const _: () = assert!(size_of::<TableRef>() == 16);
const _: () = assert!(size_of::<SuperBlock>() == 256);
const _: () = assert!(size_of::<Inode>() == 64);
const _: () = assert!(size_of::<DirEntry>() == 12);
const _: () = assert!(size_of::<ChunkInfo>() == 80);
const _: () = assert!(size_of::<BlobInfo>() == 64);
const _: () = assert!(size_of::<XattrEntry>() == 16);
const _: () = assert!(size_of::<PrefetchEntry>() == 4);

/// Byte range of the superblock's checksum field.
pub const CHECKSUM_RANGE: core::ops::Range<usize> = 32..64;

impl Inode {
    /// The file type bits.
    pub fn file_type(&self) -> u32 {
        self.mode.get() & S_IFMT
    }
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
    /// True for regular files.
    pub fn is_reg(&self) -> bool {
        self.file_type() == S_IFREG
    }
    /// True for symbolic links.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }
    /// True for character and block devices.
    pub fn is_device(&self) -> bool {
        matches!(self.file_type(), S_IFCHR | S_IFBLK)
    }
}

impl ChunkInfo {
    /// True if the chunk is a hole.
    pub fn is_hole(&self) -> bool {
        self.flags.get() & CHUNK_HOLE != 0
    }
    /// True if the stored bytes are a zstd frame.
    pub fn is_zstd(&self) -> bool {
        self.flags.get() & CHUNK_ZSTD != 0
    }
    /// True if the chunk is a member of a batch frame.
    pub fn is_batch(&self) -> bool {
        self.flags.get() & CHUNK_BATCH != 0
    }
    /// Decompressed length of the stored frame: `batch_size` for batch
    /// members, else `uncompressed_size`.
    pub fn frame_size(&self) -> u32 {
        if self.is_batch() {
            self.batch_size.get()
        } else {
            self.uncompressed_size.get()
        }
    }
    /// End of the chunk within the file (saturating; validation rejects
    /// chunks whose end overflows).
    pub fn file_end(&self) -> u64 {
        self.file_offset
            .get()
            .saturating_add(u64::from(self.uncompressed_size.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    /// Every offset documented in docs/FORMAT.md.
    #[test]
    fn offsets() {
        assert_eq!(offset_of!(TableRef, offset), 0);
        assert_eq!(offset_of!(TableRef, count), 8);

        assert_eq!(offset_of!(SuperBlock, magic), 0);
        assert_eq!(offset_of!(SuperBlock, major_version), 8);
        assert_eq!(offset_of!(SuperBlock, minor_version), 10);
        assert_eq!(offset_of!(SuperBlock, superblock_size), 12);
        assert_eq!(offset_of!(SuperBlock, compat_features), 16);
        assert_eq!(offset_of!(SuperBlock, incompat_features), 24);
        assert_eq!(offset_of!(SuperBlock, checksum), CHECKSUM_RANGE.start);
        assert_eq!(offset_of!(SuperBlock, bootstrap_size), CHECKSUM_RANGE.end);
        assert_eq!(offset_of!(SuperBlock, chunking), 72);
        assert_eq!(offset_of!(SuperBlock, reserved0), 73);
        assert_eq!(offset_of!(SuperBlock, chunk_min), 76);
        assert_eq!(offset_of!(SuperBlock, chunk_avg), 80);
        assert_eq!(offset_of!(SuperBlock, chunk_max), 84);
        assert_eq!(offset_of!(SuperBlock, reserved1), 88);
        assert_eq!(offset_of!(SuperBlock, inodes), 96);
        assert_eq!(offset_of!(SuperBlock, dirents), 112);
        assert_eq!(offset_of!(SuperBlock, chunks), 128);
        assert_eq!(offset_of!(SuperBlock, blobs), 144);
        assert_eq!(offset_of!(SuperBlock, xattrs), 160);
        assert_eq!(offset_of!(SuperBlock, prefetch), 176);
        assert_eq!(offset_of!(SuperBlock, strings), 192);
        assert_eq!(offset_of!(SuperBlock, reserved2), 208);

        assert_eq!(offset_of!(Inode, mode), 0);
        assert_eq!(offset_of!(Inode, uid), 4);
        assert_eq!(offset_of!(Inode, gid), 8);
        assert_eq!(offset_of!(Inode, nlink), 12);
        assert_eq!(offset_of!(Inode, size), 16);
        assert_eq!(offset_of!(Inode, mtime_sec), 24);
        assert_eq!(offset_of!(Inode, mtime_nsec), 32);
        assert_eq!(offset_of!(Inode, parent), 36);
        assert_eq!(offset_of!(Inode, rdev), 40);
        assert_eq!(offset_of!(Inode, payload_start), 48);
        assert_eq!(offset_of!(Inode, payload_count), 52);
        assert_eq!(offset_of!(Inode, xattr_start), 56);
        assert_eq!(offset_of!(Inode, xattr_count), 60);

        assert_eq!(offset_of!(DirEntry, ino), 0);
        assert_eq!(offset_of!(DirEntry, name_offset), 4);
        assert_eq!(offset_of!(DirEntry, name_len), 8);
        assert_eq!(offset_of!(DirEntry, reserved), 10);

        assert_eq!(offset_of!(ChunkInfo, digest), 0);
        assert_eq!(offset_of!(ChunkInfo, file_offset), 32);
        assert_eq!(offset_of!(ChunkInfo, compressed_offset), 40);
        assert_eq!(offset_of!(ChunkInfo, uncompressed_offset), 48);
        assert_eq!(offset_of!(ChunkInfo, compressed_size), 56);
        assert_eq!(offset_of!(ChunkInfo, uncompressed_size), 60);
        assert_eq!(offset_of!(ChunkInfo, blob_index), 64);
        assert_eq!(offset_of!(ChunkInfo, flags), 68);
        assert_eq!(offset_of!(ChunkInfo, batch_offset), 72);
        assert_eq!(offset_of!(ChunkInfo, batch_size), 76);

        assert_eq!(offset_of!(BlobInfo, id), 0);
        assert_eq!(offset_of!(BlobInfo, compressed_size), 32);
        assert_eq!(offset_of!(BlobInfo, uncompressed_size), 40);
        assert_eq!(offset_of!(BlobInfo, chunk_count), 48);
        assert_eq!(offset_of!(BlobInfo, compressor), 52);
        assert_eq!(offset_of!(BlobInfo, flags), 56);
        assert_eq!(offset_of!(BlobInfo, reserved), 60);

        assert_eq!(offset_of!(XattrEntry, name_offset), 0);
        assert_eq!(offset_of!(XattrEntry, value_offset), 4);
        assert_eq!(offset_of!(XattrEntry, value_len), 8);
        assert_eq!(offset_of!(XattrEntry, name_len), 12);
        assert_eq!(offset_of!(XattrEntry, reserved), 14);

        assert_eq!(offset_of!(PrefetchEntry, ino), 0);
    }

    #[test]
    fn sizes() {
        assert_eq!(size_of::<SuperBlock>(), 256);
        assert_eq!(size_of::<Inode>(), 64);
        assert_eq!(size_of::<DirEntry>(), 12);
        assert_eq!(size_of::<ChunkInfo>(), 80);
        assert_eq!(size_of::<BlobInfo>(), 64);
        assert_eq!(size_of::<XattrEntry>(), 16);
        assert_eq!(size_of::<PrefetchEntry>(), 4);
    }
}
