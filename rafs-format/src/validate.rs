//! Deep validation: proves every invariant of docs/FORMAT.md in time linear
//! in the size of the bootstrap.
//!
//! Ranges shared by several inodes (identical files share a chunk run, equal
//! xattr sets share entries) are checked with prefix sums of "breaks", so a
//! hostile bootstrap cannot make validation quadratic. Directory entry ranges
//! must be disjoint, and each directory is visited once from the root.

use crate::decode::Bootstrap;
use crate::error::{FormatError, Table};
use crate::layout::*;
use crate::name::check_name;
use std::collections::{HashSet, VecDeque};

/// `prefix[i]` = number of indices `j < i` where the entry `j` does not
/// continue entry `j - 1`. A run `[s, s+c)` is unbroken iff
/// `prefix[s+c] - prefix[s+1] == 0`.
struct Breaks(Vec<u32>);

impl Breaks {
    fn new(n: usize, continues: impl Fn(usize) -> bool) -> Self {
        let mut prefix = Vec::with_capacity(n + 1);
        let mut acc = 0u32;
        prefix.push(0);
        for i in 0..n {
            if i == 0 || !continues(i) {
                acc += 1;
            }
            prefix.push(acc);
        }
        Breaks(prefix)
    }
    /// True if entries `start+1 .. start+count` each continue the previous.
    fn unbroken(&self, start: usize, count: usize) -> bool {
        count <= 1 || self.0[start + count] == self.0[start + 1]
    }
}

impl Bootstrap<'_> {
    /// Checks every invariant of docs/FORMAT.md except the checksum.
    pub fn validate(&self) -> Result<(), FormatError> {
        self.validate_blobs()?;
        self.validate_chunks()?;
        self.validate_xattr_entries()?;
        let root = self.inode(0).map_err(|_| FormatError::BadRoot)?;
        if !root.is_dir() || root.parent.get() != 0 {
            return Err(FormatError::BadRoot);
        }
        let chunk_breaks = Breaks::new(self.chunks().len(), |i| {
            let c = self.chunks();
            c[i].file_offset.get() == c[i - 1].file_end()
        });
        let xattr_breaks = Breaks::new(self.xattr_table().len(), |i| {
            let x = self.xattr_table();
            // Names were checked in range by validate_xattr_entries.
            matches!((self.xattr_name(&x[i - 1]), self.xattr_name(&x[i])), (Ok(a), Ok(b)) if a < b)
        });
        for ino in 0..self.inode_count() {
            self.validate_inode(ino, &chunk_breaks, &xattr_breaks)?;
        }
        self.validate_tree()?;
        for p in self.prefetch() {
            self.inode(p.ino.get())
                .map_err(|_| FormatError::IndexOutOfRange {
                    table: Table::Prefetch,
                    index: u64::from(p.ino.get()),
                })?;
        }
        Ok(())
    }

    fn validate_blobs(&self) -> Result<(), FormatError> {
        let mut ids = HashSet::with_capacity(self.blobs().len());
        for (i, b) in self.blobs().iter().enumerate() {
            let bad = |reason| FormatError::BadBlob {
                index: i as u64,
                reason,
            };
            if b.reserved != [0; 4] {
                return Err(bad("reserved field not zero"));
            }
            if b.flags.get() & !BLOB_KNOWN_FLAGS != 0 {
                return Err(bad("unknown flags"));
            }
            if !matches!(b.compressor.get(), COMPRESSOR_NONE | COMPRESSOR_ZSTD) {
                return Err(bad("unknown compressor"));
            }
            if !ids.insert(b.id) {
                return Err(bad("duplicate blob id"));
            }
        }
        Ok(())
    }

    fn validate_chunks(&self) -> Result<(), FormatError> {
        for (i, c) in self.chunks().iter().enumerate() {
            self.validate_chunk(c)
                .map_err(|reason| FormatError::BadChunk {
                    index: i as u64,
                    reason,
                })?;
        }
        Ok(())
    }

    fn validate_chunk(&self, c: &ChunkInfo) -> Result<(), &'static str> {
        let flags = c.flags.get();
        if flags & !CHUNK_KNOWN_FLAGS != 0 {
            return Err("unknown flags");
        }
        let uncomp = c.uncompressed_size.get();
        if uncomp == 0 {
            return Err("zero length");
        }
        if c.file_offset.get().checked_add(u64::from(uncomp)).is_none() {
            return Err("file offset overflows");
        }
        if flags & CHUNK_HOLE != 0 {
            let zero = c.digest == [0; 32]
                && c.compressed_offset.get() == 0
                && c.uncompressed_offset.get() == 0
                && c.compressed_size.get() == 0
                && c.blob_index.get() == 0
                && c.batch_offset.get() == 0
                && c.batch_size.get() == 0;
            return if flags == CHUNK_HOLE && zero {
                Ok(())
            } else {
                Err("hole with data fields set")
            };
        }
        if uncomp > MAX_CHUNK_SIZE {
            return Err("larger than the maximum chunk size");
        }
        self.validate_stored_form(c)?;
        let blob = self.chunk_blob(c).map_err(|_| "blob index out of range")?;
        let fits = |off: u64, len: u32, size: u64| {
            off.checked_add(u64::from(len))
                .is_some_and(|end| end <= size)
        };
        if !fits(
            c.compressed_offset.get(),
            c.compressed_size.get(),
            blob.compressed_size.get(),
        ) {
            return Err("stored bytes outside the blob");
        }
        // The whole decompressed frame occupies the blob's uncompressed space
        // from `uncompressed_offset - batch_offset`.
        let frame_start = c
            .uncompressed_offset
            .get()
            .checked_sub(u64::from(c.batch_offset.get()));
        if !frame_start.is_some_and(|s| fits(s, c.frame_size(), blob.uncompressed_size.get())) {
            return Err("data outside the blob's uncompressed space");
        }
        let aligned = blob.flags.get() & BLOB_ALIGNED != 0;
        if aligned && frame_start.is_some_and(|s| s % BLOB_FRAME_ALIGN != 0) {
            return Err("frame not aligned in an aligned blob");
        }
        Ok(())
    }

    /// Sizes of raw, zstd and batch chunks agree with their flags.
    fn validate_stored_form(&self, c: &ChunkInfo) -> Result<(), &'static str> {
        let (comp, uncomp) = (c.compressed_size.get(), c.uncompressed_size.get());
        let (boff, bsize) = (c.batch_offset.get(), c.batch_size.get());
        match c.flags.get() {
            0 if comp == uncomp && boff == 0 && bsize == 0 => Ok(()),
            0 => Err("raw chunk with differing sizes or batch fields"),
            CHUNK_ZSTD if comp > 0 && comp < uncomp && boff == 0 && bsize == 0 => Ok(()),
            CHUNK_ZSTD => Err("zstd chunk not smaller than its data, or batch fields set"),
            f if f == CHUNK_ZSTD | CHUNK_BATCH => {
                if bsize > MAX_CHUNK_SIZE || u64::from(boff) + u64::from(uncomp) > u64::from(bsize)
                {
                    return Err("batch member outside its frame");
                }
                if comp == 0 || comp >= bsize {
                    return Err("batch frame not smaller than its data");
                }
                Ok(())
            }
            _ => Err("batch flag without zstd"),
        }
    }

    fn validate_xattr_entries(&self) -> Result<(), FormatError> {
        for (i, x) in self.xattr_table().iter().enumerate() {
            let bad = |reason| FormatError::BadXattr {
                ino: u32::MAX,
                index: i as u64,
                reason,
            };
            if x.reserved.get() != 0 {
                return Err(bad("reserved field not zero"));
            }
            let name = self
                .xattr_name(x)
                .map_err(|_| bad("name outside the string pool"))?;
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(&0) {
                return Err(bad("invalid name"));
            }
            if x.value_len.get() as usize > MAX_XATTR_VALUE_LEN {
                return Err(bad("value too long"));
            }
            self.xattr_value(x)
                .map_err(|_| bad("value outside the string pool"))?;
        }
        Ok(())
    }

    fn validate_inode(
        &self,
        ino: u32,
        chunk_breaks: &Breaks,
        xattr_breaks: &Breaks,
    ) -> Result<(), FormatError> {
        let inode = self.inode(ino)?;
        let bad = |reason| FormatError::BadInode { ino, reason };
        if inode.mtime_nsec.get() >= 1_000_000_000 {
            return Err(bad("mtime nanoseconds out of range"));
        }
        let xs = inode.xattr_start.get() as usize;
        self.xattrs(ino)?;
        if !xattr_breaks.unbroken(xs, inode.xattr_count.get() as usize) {
            return Err(FormatError::BadXattr {
                ino,
                index: xs as u64,
                reason: "names not sorted or duplicated",
            });
        }
        if inode.parent.get() != 0 && !inode.is_dir() {
            return Err(bad("parent set on a non-directory"));
        }
        if inode.rdev.get() != 0 && !inode.is_device() {
            return Err(bad("rdev set on a non-device"));
        }
        match inode.file_type() {
            S_IFDIR => {
                self.dir_entries(ino)?;
            }
            S_IFREG => self.validate_file(ino, inode, chunk_breaks)?,
            S_IFLNK => {
                let target = self.symlink_target(ino)?;
                if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                    return Err(bad("invalid symlink target"));
                }
                if inode.size.get() != target.len() as u64 {
                    return Err(bad("symlink size differs from its target length"));
                }
            }
            S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {
                if inode.payload_start.get() != 0
                    || inode.payload_count.get() != 0
                    || inode.size.get() != 0
                {
                    return Err(bad("payload or size set on a special file"));
                }
            }
            _ => return Err(bad("unknown file type")),
        }
        Ok(())
    }

    fn validate_file(&self, ino: u32, inode: &Inode, breaks: &Breaks) -> Result<(), FormatError> {
        let run = self.file_chunks(ino)?;
        let ok = match (run.first(), run.last()) {
            (None, None) => inode.size.get() == 0,
            (Some(first), Some(last)) => {
                first.file_offset.get() == 0
                    && last.file_end() == inode.size.get()
                    && breaks.unbroken(inode.payload_start.get() as usize, run.len())
            }
            _ => false,
        };
        if !ok {
            return Err(FormatError::ChunkRunMismatch { ino });
        }
        Ok(())
    }

    /// Walks the tree from the root: names valid and sorted, directory entry
    /// ranges disjoint, every directory reached exactly once with a matching
    /// parent, every inode reached, link counts consistent.
    fn validate_tree(&self) -> Result<(), FormatError> {
        let n = self.inode_count() as usize;
        let mut refs = vec![0u32; n];
        let mut subdirs = vec![0u32; n];
        let mut claimed = vec![false; self.dirents().len()];
        refs[0] = 1;
        let mut queue = VecDeque::from([0u32]);
        while let Some(dir) = queue.pop_front() {
            let start = self.inode(dir)?.payload_start.get() as u64;
            let mut prev: Option<&[u8]> = None;
            for (k, e) in self.dir_entries(dir)?.iter().enumerate() {
                let index = start + k as u64;
                let slot = &mut claimed[index as usize];
                if std::mem::replace(slot, true) {
                    return Err(FormatError::NotATree { ino: dir });
                }
                let name = self.entry_name(e)?;
                check_name(name).map_err(|error| FormatError::BadName { dir, index, error })?;
                if e.reserved.get() != 0 {
                    return Err(FormatError::ReservedNotZero("dirent.reserved"));
                }
                if prev.is_some_and(|p| p >= name) {
                    return Err(FormatError::UnsortedEntries { dir, index });
                }
                prev = Some(name);
                let child = e.ino.get();
                let node = self
                    .inode(child)
                    .map_err(|_| FormatError::IndexOutOfRange {
                        table: Table::Inodes,
                        index: u64::from(child),
                    })?;
                if child == 0 {
                    return Err(FormatError::NotATree { ino: 0 });
                }
                refs[child as usize] = refs[child as usize].saturating_add(1);
                if node.is_dir() {
                    if refs[child as usize] > 1 || node.parent.get() != dir {
                        return Err(FormatError::NotATree { ino: child });
                    }
                    subdirs[dir as usize] += 1;
                    queue.push_back(child);
                }
            }
        }
        self.validate_links(&refs, &subdirs)
    }

    fn validate_links(&self, refs: &[u32], subdirs: &[u32]) -> Result<(), FormatError> {
        for (ino, inode) in self.inodes().iter().enumerate() {
            let ino32 = ino as u32;
            if refs[ino] == 0 {
                return Err(FormatError::Orphan { ino: ino32 });
            }
            let expected = if inode.is_dir() {
                2 + u64::from(subdirs[ino])
            } else {
                u64::from(refs[ino])
            };
            if u64::from(inode.nlink.get()) != expected {
                return Err(FormatError::NlinkMismatch {
                    ino: ino32,
                    nlink: inode.nlink.get(),
                    expected,
                });
            }
        }
        Ok(())
    }
}
