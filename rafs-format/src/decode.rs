//! Zero-copy views over a bootstrap held in memory (usually an mmap).
//!
//! Decoding is two steps. [`Bootstrap::parse`] is O(1): it checks the
//! superblock and that every table lies inside the buffer, after the
//! superblock, without overlapping another, and slices the tables. The deep
//! checks ([`Bootstrap::verify_checksum`], [`Bootstrap::validate`]) then prove
//! the invariants of docs/FORMAT.md. [`Bootstrap::open`] does all three.
//!
//! Every accessor stays bounds-checked even after validation, so a view over
//! bytes that were never validated (or that changed underneath an mmap) can
//! return an error but can never panic or read out of bounds.

use crate::error::{FormatError, Table};
use crate::layout::*;
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// A parsed bootstrap: typed slices into the underlying bytes.
#[derive(Clone, Copy)]
pub struct Bootstrap<'a> {
    data: &'a [u8],
    sb: &'a SuperBlock,
    inodes: &'a [Inode],
    dirents: &'a [DirEntry],
    chunks: &'a [ChunkInfo],
    blobs: &'a [BlobInfo],
    xattrs: &'a [XattrEntry],
    prefetch: &'a [PrefetchEntry],
    strings: &'a [u8],
}

impl core::fmt::Debug for Bootstrap<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("len", &self.data.len())
            .field("inodes", &self.inodes.len())
            .field("chunks", &self.chunks.len())
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

/// A table's byte range, resolved from its [`TableRef`].
struct Span {
    table: Table,
    start: usize,
    end: usize,
}

fn span(data_len: usize, r: &TableRef, entry: usize, table: Table) -> Result<Span, FormatError> {
    let count = r.count.get();
    // Indexes into every table but the string pool are u32, and string pool
    // offsets are u32 too.
    if count > u64::from(u32::MAX) {
        return Err(FormatError::TableTooLarge(table));
    }
    let oob = FormatError::TableOutOfBounds(table);
    let len = count.checked_mul(entry as u64).ok_or(oob.clone())?;
    if len == 0 {
        return Ok(Span {
            table,
            start: 0,
            end: 0,
        });
    }
    let start = r.offset.get();
    let end = start.checked_add(len).ok_or(oob.clone())?;
    if start < size_of::<SuperBlock>() as u64 || end > data_len as u64 {
        return Err(oob);
    }
    Ok(Span {
        table,
        start: start as usize,
        end: end as usize,
    })
}

fn slice<'a, T>(data: &'a [u8], s: &Span) -> Result<&'a [T], FormatError>
where
    T: FromBytes + Immutable + KnownLayout + Unaligned,
{
    let bytes = data
        .get(s.start..s.end)
        .ok_or(FormatError::TableOutOfBounds(s.table))?;
    <[T]>::ref_from_bytes(bytes).map_err(|_| FormatError::TableOutOfBounds(s.table))
}

fn check_superblock(sb: &SuperBlock, len: usize) -> Result<(), FormatError> {
    if sb.magic != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if sb.major_version.get() != MAJOR_VERSION {
        return Err(FormatError::UnsupportedVersion {
            major: sb.major_version.get(),
            minor: sb.minor_version.get(),
        });
    }
    if sb.superblock_size.get() as usize != size_of::<SuperBlock>() {
        return Err(FormatError::BadSuperblockSize(sb.superblock_size.get()));
    }
    let unknown = sb.incompat_features.get() & !KNOWN_INCOMPAT;
    if unknown != 0 {
        return Err(FormatError::UnknownIncompatFeatures(unknown));
    }
    if sb.bootstrap_size.get() != len as u64 {
        return Err(FormatError::SizeMismatch {
            header: sb.bootstrap_size.get(),
            actual: len as u64,
        });
    }
    if sb.reserved0 != [0; 3] {
        return Err(FormatError::ReservedNotZero("superblock.reserved0"));
    }
    if sb.reserved1 != [0; 8] {
        return Err(FormatError::ReservedNotZero("superblock.reserved1"));
    }
    if sb.reserved2 != [0; 48] {
        return Err(FormatError::ReservedNotZero("superblock.reserved2"));
    }
    Ok(())
}

/// blake3 of `data` with the checksum field read as zeros.
pub fn compute_checksum(data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&data[..CHECKSUM_RANGE.start.min(data.len())]);
    h.update(&[0u8; 32]);
    if data.len() > CHECKSUM_RANGE.end {
        h.update(&data[CHECKSUM_RANGE.end..]);
    }
    *h.finalize().as_bytes()
}

/// Recomputes and stores the checksum of an encoded bootstrap. Used by the
/// encoder, and by tests that corrupt a table and want to reach the
/// structural checks behind the checksum.
pub fn seal(data: &mut [u8]) {
    if data.len() >= CHECKSUM_RANGE.end {
        let sum = compute_checksum(data);
        data[CHECKSUM_RANGE].copy_from_slice(&sum);
    }
}

impl<'a> Bootstrap<'a> {
    /// Parses and fully validates: superblock, table bounds, checksum, and
    /// every invariant of docs/FORMAT.md.
    pub fn open(data: &'a [u8]) -> Result<Self, FormatError> {
        let b = Self::parse(data)?;
        b.verify_checksum()?;
        b.validate()?;
        Ok(b)
    }

    /// O(1) structural parse: the superblock and the table layout. Accessors
    /// on the result are memory-safe but the contents are unchecked.
    pub fn parse(data: &'a [u8]) -> Result<Self, FormatError> {
        let (sb, _) = SuperBlock::ref_from_prefix(data)
            .map_err(|_| FormatError::TooShort { len: data.len() })?;
        check_superblock(sb, data.len())?;
        let n = data.len();
        let spans = [
            span(n, &sb.inodes, size_of::<Inode>(), Table::Inodes)?,
            span(n, &sb.dirents, size_of::<DirEntry>(), Table::Dirents)?,
            span(n, &sb.chunks, size_of::<ChunkInfo>(), Table::Chunks)?,
            span(n, &sb.blobs, size_of::<BlobInfo>(), Table::Blobs)?,
            span(n, &sb.xattrs, size_of::<XattrEntry>(), Table::Xattrs)?,
            span(n, &sb.prefetch, size_of::<PrefetchEntry>(), Table::Prefetch)?,
            span(n, &sb.strings, 1, Table::Strings)?,
        ];
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                if a.start < a.end && b.start < b.end && a.start < b.end && b.start < a.end {
                    return Err(FormatError::TablesOverlap(a.table, b.table));
                }
            }
        }
        Ok(Bootstrap {
            data,
            sb,
            inodes: slice(data, &spans[0])?,
            dirents: slice(data, &spans[1])?,
            chunks: slice(data, &spans[2])?,
            blobs: slice(data, &spans[3])?,
            xattrs: slice(data, &spans[4])?,
            prefetch: slice(data, &spans[5])?,
            strings: slice(data, &spans[6])?,
        })
    }

    /// Checks the blake3 checksum of the whole bootstrap.
    pub fn verify_checksum(&self) -> Result<(), FormatError> {
        if compute_checksum(self.data) != self.sb.checksum {
            return Err(FormatError::ChecksumMismatch);
        }
        Ok(())
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }
    /// The superblock.
    pub fn superblock(&self) -> &'a SuperBlock {
        self.sb
    }
    /// The inode table.
    pub fn inodes(&self) -> &'a [Inode] {
        self.inodes
    }
    /// The directory entry table.
    pub fn dirents(&self) -> &'a [DirEntry] {
        self.dirents
    }
    /// The whole chunk table.
    pub fn chunks(&self) -> &'a [ChunkInfo] {
        self.chunks
    }
    /// The blob table.
    pub fn blobs(&self) -> &'a [BlobInfo] {
        self.blobs
    }
    /// The xattr table.
    pub fn xattr_table(&self) -> &'a [XattrEntry] {
        self.xattrs
    }
    /// The prefetch table.
    pub fn prefetch(&self) -> &'a [PrefetchEntry] {
        self.prefetch
    }
    /// The string pool.
    pub fn strings(&self) -> &'a [u8] {
        self.strings
    }

    /// Number of inodes; inode numbers are `0..inode_count()`, 0 the root.
    pub fn inode_count(&self) -> u32 {
        self.inodes.len() as u32
    }

    /// The inode numbered `ino`.
    pub fn inode(&self, ino: u32) -> Result<&'a Inode, FormatError> {
        self.inodes
            .get(ino as usize)
            .ok_or(FormatError::NoSuchInode(u64::from(ino)))
    }

    /// `len` bytes at `offset` in the string pool.
    pub fn string(&self, offset: u32, len: u32) -> Result<&'a [u8], FormatError> {
        let start = offset as usize;
        let end = start.checked_add(len as usize);
        end.and_then(|end| self.strings.get(start..end))
            .ok_or(FormatError::IndexOutOfRange {
                table: Table::Strings,
                index: u64::from(offset) + u64::from(len),
            })
    }

    fn range<T>(
        &self,
        ino: u32,
        all: &'a [T],
        table: Table,
        start: u32,
        count: u32,
    ) -> Result<&'a [T], FormatError> {
        let (s, c) = (start as usize, count as usize);
        s.checked_add(c)
            .and_then(|end| all.get(s..end))
            .ok_or(FormatError::RangeOutOfBounds {
                ino,
                table,
                start: u64::from(start),
                count: u64::from(count),
            })
    }

    /// The entries of directory `ino`, sorted by name.
    pub fn dir_entries(&self, ino: u32) -> Result<&'a [DirEntry], FormatError> {
        let inode = self.inode(ino)?;
        if !inode.is_dir() {
            return Err(FormatError::WrongType {
                ino,
                expected: "directory",
            });
        }
        self.range(
            ino,
            self.dirents,
            Table::Dirents,
            inode.payload_start.get(),
            inode.payload_count.get(),
        )
    }

    /// The name of a directory entry.
    pub fn entry_name(&self, e: &DirEntry) -> Result<&'a [u8], FormatError> {
        self.string(e.name_offset.get(), u32::from(e.name_len.get()))
    }

    /// Looks `name` up in directory `dir` by binary search.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<u32>, FormatError> {
        let entries = self.dir_entries(dir)?;
        let (mut lo, mut hi) = (0usize, entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry_name(&entries[mid])?.cmp(name) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Ok(Some(entries[mid].ino.get())),
            }
        }
        Ok(None)
    }

    /// Resolves a slash-separated path from the root (leading `/` optional;
    /// empty components and `.` are skipped; symlinks are not followed).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<u32>, FormatError> {
        self.walk(path, None)
    }

    /// [`Bootstrap::resolve`] following symlinks in every component, as
    /// the kernel does: an absolute target from the root, a relative one
    /// from the link's directory. `None` past `max_hops` symlinks (a loop).
    /// Cost: linear in the path and the targets followed.
    pub fn resolve_following(
        &self,
        path: &[u8],
        max_hops: u32,
    ) -> Result<Option<u32>, FormatError> {
        self.walk(path, Some(max_hops))
    }

    fn walk(&self, path: &[u8], follow: Option<u32>) -> Result<Option<u32>, FormatError> {
        let split = |p| <[u8]>::split(p, |&b| b == b'/');
        let mut todo: std::collections::VecDeque<&[u8]> = split(path).collect();
        let (mut ino, mut hops) = (0u32, 0u32);
        while let Some(comp) = todo.pop_front() {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            if comp == b".." {
                ino = self.inode(ino)?.parent.get();
                continue;
            }
            if !self.inode(ino)?.is_dir() {
                return Ok(None);
            }
            let Some(next) = self.lookup(ino, comp)? else {
                return Ok(None);
            };
            match follow {
                Some(max) if self.inode(next)?.is_symlink() => {
                    hops += 1;
                    if hops > max {
                        return Ok(None);
                    }
                    let target = self.symlink_target(next)?;
                    if target.starts_with(b"/") {
                        ino = 0;
                    }
                    for c in split(target).rev() {
                        todo.push_front(c);
                    }
                }
                _ => ino = next,
            }
        }
        Ok(Some(ino))
    }

    /// The chunk run of regular file `ino`, ordered by file offset.
    pub fn file_chunks(&self, ino: u32) -> Result<&'a [ChunkInfo], FormatError> {
        let inode = self.inode(ino)?;
        if !inode.is_reg() {
            return Err(FormatError::WrongType {
                ino,
                expected: "regular file",
            });
        }
        self.range(
            ino,
            self.chunks,
            Table::Chunks,
            inode.payload_start.get(),
            inode.payload_count.get(),
        )
    }

    /// Index within `file_chunks(ino)` of the chunk holding byte `offset`, or
    /// `None` at or past the end of the file.
    pub fn chunk_index_at(&self, ino: u32, offset: u64) -> Result<Option<usize>, FormatError> {
        let run = self.file_chunks(ino)?;
        let i = run.partition_point(|c| c.file_end() <= offset);
        Ok((i < run.len() && run[i].file_offset.get() <= offset).then_some(i))
    }

    /// The blob a (non-hole) chunk is stored in.
    pub fn chunk_blob(&self, c: &ChunkInfo) -> Result<&'a BlobInfo, FormatError> {
        let i = c.blob_index.get();
        self.blobs
            .get(i as usize)
            .ok_or(FormatError::IndexOutOfRange {
                table: Table::Blobs,
                index: u64::from(i),
            })
    }

    /// The target of symlink `ino`.
    pub fn symlink_target(&self, ino: u32) -> Result<&'a [u8], FormatError> {
        let inode = self.inode(ino)?;
        if !inode.is_symlink() {
            return Err(FormatError::WrongType {
                ino,
                expected: "symlink",
            });
        }
        self.string(inode.payload_start.get(), inode.payload_count.get())
    }

    /// The xattr entries of inode `ino`, sorted by name.
    pub fn xattrs(&self, ino: u32) -> Result<&'a [XattrEntry], FormatError> {
        let inode = self.inode(ino)?;
        self.range(
            ino,
            self.xattrs,
            Table::Xattrs,
            inode.xattr_start.get(),
            inode.xattr_count.get(),
        )
    }

    /// An xattr's name.
    pub fn xattr_name(&self, x: &XattrEntry) -> Result<&'a [u8], FormatError> {
        self.string(x.name_offset.get(), u32::from(x.name_len.get()))
    }

    /// An xattr's value.
    pub fn xattr_value(&self, x: &XattrEntry) -> Result<&'a [u8], FormatError> {
        self.string(x.value_offset.get(), x.value_len.get())
    }

    /// The value of xattr `name` on inode `ino`.
    pub fn get_xattr(&self, ino: u32, name: &[u8]) -> Result<Option<&'a [u8]>, FormatError> {
        for x in self.xattrs(ino)? {
            if self.xattr_name(x)? == name {
                return self.xattr_value(x).map(Some);
            }
        }
        Ok(None)
    }
}
