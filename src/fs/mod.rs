//! The filesystem core: a read-only filesystem over a mapped bootstrap and
//! a blob backend, with a plain Rust API and typed errors.
//!
//! Every operation a read-only FUSE filesystem serves is a method here,
//! addressed by rafs inode number (0 is the root; the FUSE adapter adds 1).
//! Nothing in this module knows FUSE: `crate::fuse` is a thin adapter that
//! turns results into replies and [`FsError`]s into errnos, so the core is
//! tested directly against a reference model (`tests/fs_model.rs`).
//!
//! Memory barely grows with the image: metadata is read in place from the
//! mmapped bootstrap on every call; the heap holds the bounded LRU of
//! decompressed chunks (see [`read`]), the fetcher's frame index, and one
//! entry per hole chunk ([`Holes`]).
//!
//! Every call costs O(log n) in the bootstrap size plus what it returns: a
//! valid bootstrap may share chunk runs and xattr sets between inodes, so
//! nothing may scan a whole run or set per call (`getattr` of thousands of
//! files sharing one long run would be quadratic).

pub mod elf;
mod elfdeps;
mod error;
mod metrics;
mod read;
pub mod record;
mod spread;

pub use error::FsError;
pub use metrics::{Metrics, Op};

use crate::backend::Backend;
use crate::cache::CacheError;
use crate::fetch::{FetchConfig, Fetcher};
use crate::image::Image;
use rafs_format::layout::*;
use rafs_format::Bootstrap;
use std::sync::Arc;

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// FIFO.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    fn of(mode: u32) -> FileKind {
        match mode & S_IFMT {
            S_IFDIR => FileKind::Dir,
            S_IFLNK => FileKind::Symlink,
            S_IFCHR => FileKind::CharDevice,
            S_IFBLK => FileKind::BlockDevice,
            S_IFIFO => FileKind::Fifo,
            S_IFSOCK => FileKind::Socket,
            // Validation admits only the seven types.
            _ => FileKind::File,
        }
    }
}

/// What `stat` reports for an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// rafs inode number (0 = root).
    pub ino: u32,
    /// Type.
    pub kind: FileKind,
    /// Permission bits (including setuid, setgid, sticky), without type.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks of stored (non-hole) data.
    pub blocks: u64,
    /// Device number.
    pub rdev: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
}

/// One directory entry as `readdir` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Inode the entry names.
    pub ino: u32,
    /// Name (`.` and `..` included).
    pub name: &'a [u8],
    /// Its type.
    pub kind: FileKind,
    /// Offset to resume after this entry.
    pub next: u64,
}

/// Filesystem-wide figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total 4 KiB blocks (logical file data).
    pub blocks: u64,
    /// Inodes.
    pub files: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// Uncompressed bytes of all blobs (saturating: sizes are untrusted).
fn blob_bytes(b: &Bootstrap<'_>) -> u64 {
    b.blobs()
        .iter()
        .fold(0u64, |n, x| n.saturating_add(x.uncompressed_size.get()))
}

/// The hole chunks of the chunk table, for O(log n) stored-size sums over
/// any run (`st_blocks`): nothing at all for an image without holes.
#[derive(Debug, Default)]
struct Holes {
    /// Chunk-table indices of holes, ascending.
    at: Vec<usize>,
    /// `sum[k]`: bytes of the holes `at[..k]`.
    sum: Vec<u64>,
}

impl Holes {
    fn new(chunks: &[ChunkInfo]) -> Holes {
        let mut h = Holes {
            at: Vec::new(),
            sum: vec![0],
        };
        let mut total = 0u64;
        for (i, c) in chunks.iter().enumerate().filter(|(_, c)| c.is_hole()) {
            total = total.saturating_add(u64::from(c.uncompressed_size.get()));
            h.at.push(i);
            h.sum.push(total);
        }
        h
    }

    /// Bytes of the holes among chunk-table entries `r`.
    fn bytes(&self, r: std::ops::Range<usize>) -> u64 {
        let sum_before = |i: usize| {
            let k = self.at.partition_point(|&h| h < i);
            self.sum.get(k).copied().unwrap_or(0)
        };
        sum_before(r.end).saturating_sub(sum_before(r.start))
    }
}

/// Access modes for [`RafsFs::access`] (the `access(2)` mask bits).
pub const W_OK: u32 = 2;

/// A mounted image: bootstrap, fetcher (disk cache, memory, backend) and
/// counters.
pub struct RafsFs {
    image: Arc<Image>,
    holes: Holes,
    /// Uncompressed bytes of all blobs (`statfs`: the blob table may be
    /// long, so summed once).
    blob_bytes: u64,
    /// Where each inode is named, built on the first data error.
    names: std::sync::OnceLock<read::Names>,
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    /// The access record, when recording (`--record-access`).
    recorder: Option<Arc<record::Recorder>>,
    /// Which files are read scattered (fetched whole: `--widen`).
    spread: spread::Spread,
    /// The libraries of ELF objects read cold, fetched ahead.
    elf_deps: elfdeps::ElfDeps,
}

impl RafsFs {
    /// A filesystem over a validated image, reading blobs from `backend`
    /// as `config` says. Fails only if the disk cache directory cannot be
    /// used.
    pub fn new(
        image: Image,
        backend: Arc<dyn Backend>,
        config: FetchConfig,
    ) -> Result<RafsFs, CacheError> {
        RafsFs::with_storage(image, backend, config, crate::cache::io::real())
    }

    /// [`RafsFs::new`] with the disk cache's durable operations going
    /// through `storage` (a test double, see `cache::io::testing`).
    pub fn with_storage(
        image: Image,
        backend: Arc<dyn Backend>,
        config: FetchConfig,
        storage: Arc<dyn crate::cache::io::Storage>,
    ) -> Result<RafsFs, CacheError> {
        let image = Arc::new(image);
        let metrics: Arc<Metrics> = Arc::default();
        let fetcher = Fetcher::with_storage(
            image.clone(),
            backend,
            config,
            metrics.chunks.clone(),
            storage,
        )?;
        let (holes, blob_bytes) = match image.bootstrap() {
            Ok(b) => (Holes::new(b.chunks()), blob_bytes(&b)),
            Err(_) => (Holes::default(), 0),
        };
        // Validation and the scans above read the whole bootstrap; serving
        // needs only what lookups touch from now on.
        image.release_pages();
        Ok(RafsFs {
            image,
            holes,
            blob_bytes,
            names: std::sync::OnceLock::new(),
            fetcher,
            metrics,
            recorder: None,
            spread: spread::Spread::default(),
            elf_deps: elfdeps::ElfDeps::default(),
        })
    }

    /// Records every regular file read into `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<record::Recorder>) -> RafsFs {
        self.recorder = Some(recorder);
        self
    }

    /// The access record, if recording.
    pub fn recorder(&self) -> Option<&Arc<record::Recorder>> {
        self.recorder.as_ref()
    }

    /// The fetcher (its metrics, configuration).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The counters (shared with the API socket).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    fn boot(&self) -> Result<Bootstrap<'_>, FsError> {
        Ok(self.image.bootstrap()?)
    }

    fn attr_of(&self, b: &Bootstrap<'_>, ino: u32) -> Result<Attr, FsError> {
        let i = b.inode(ino).map_err(|_| FsError::NotFound)?;
        let blocks = if i.is_reg() {
            // The run tiles [0, size) (validated): stored = size - holes.
            b.file_chunks(ino)?;
            let start = i.payload_start.get() as usize;
            let holes = self
                .holes
                .bytes(start..start + i.payload_count.get() as usize);
            i.size.get().saturating_sub(holes).div_ceil(512)
        } else {
            0
        };
        Ok(Attr {
            ino,
            kind: FileKind::of(i.mode.get()),
            perm: (i.mode.get() & 0o7777) as u16,
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            size: i.size.get(),
            blocks,
            rdev: i.rdev.get(),
            mtime_sec: i.mtime_sec.get(),
            mtime_nsec: i.mtime_nsec.get(),
        })
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u32, name: &[u8]) -> Result<Attr, FsError> {
        self.metrics.op(Op::Lookup);
        let b = self.boot()?;
        if !b.inode(parent).map_err(|_| FsError::NotFound)?.is_dir() {
            return Err(FsError::NotDir);
        }
        let ino = match name {
            b"." => parent,
            b".." => b.inode(parent)?.parent.get(),
            _ => b.lookup(parent, name)?.ok_or(FsError::NotFound)?,
        };
        self.attr_of(&b, ino)
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u32) -> Result<Attr, FsError> {
        self.metrics.op(Op::Getattr);
        let b = self.boot()?;
        self.attr_of(&b, ino)
    }

    /// Lists directory `ino` from `offset` (0 = start: `.`, `..`, then the
    /// entries in name order), calling `add` for each entry until it returns
    /// `false` (reply buffer full). Offsets are stable: the image is
    /// immutable.
    pub fn readdir(
        &self,
        ino: u32,
        offset: u64,
        mut add: impl FnMut(Entry<'_>) -> bool,
    ) -> Result<(), FsError> {
        self.metrics.op(Op::Readdir);
        let b = self.boot()?;
        let dir = b.inode(ino).map_err(|_| FsError::NotFound)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let entries = b.dir_entries(ino)?;
        let total = entries.len() as u64 + 2;
        for off in offset..total {
            let entry = match off {
                0 => Entry {
                    ino,
                    name: b".",
                    kind: FileKind::Dir,
                    next: 1,
                },
                1 => Entry {
                    ino: dir.parent.get(),
                    name: b"..",
                    kind: FileKind::Dir,
                    next: 2,
                },
                _ => {
                    let e = &entries[(off - 2) as usize];
                    let child = e.ino.get();
                    let kind = FileKind::of(b.inode(child)?.mode.get());
                    Entry {
                        ino: child,
                        name: b.entry_name(e)?,
                        kind,
                        next: off + 1,
                    }
                }
            };
            if !add(entry) {
                break;
            }
        }
        Ok(())
    }

    /// Like [`RafsFs::readdir`], with each entry's attributes (readdirplus).
    pub fn readdirplus(
        &self,
        ino: u32,
        offset: u64,
        mut add: impl FnMut(Entry<'_>, &Attr) -> bool,
    ) -> Result<(), FsError> {
        let b = self.boot()?;
        let mut failed = None;
        self.readdir(ino, offset, |e| match self.attr_of(&b, e.ino) {
            Ok(attr) => add(e, &attr),
            Err(err) => {
                failed = Some(err);
                false
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u32) -> Result<&[u8], FsError> {
        self.metrics.op(Op::Readlink);
        let b = self.image.bootstrap()?;
        if !b.inode(ino).map_err(|_| FsError::NotFound)?.is_symlink() {
            return Err(FsError::Invalid);
        }
        Ok(b.symlink_target(ino)?)
    }

    /// `access(2)`: write access is refused, everything else allowed
    /// (permission bits are enforced by the kernel: `default_permissions`).
    pub fn access(&self, ino: u32, mask: u32) -> Result<(), FsError> {
        self.metrics.op(Op::Other);
        self.boot()?.inode(ino).map_err(|_| FsError::NotFound)?;
        if mask & W_OK != 0 {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// The value of xattr `name` on `ino`.
    pub fn getxattr(&self, ino: u32, name: &[u8]) -> Result<&[u8], FsError> {
        self.metrics.op(Op::Xattr);
        let b = self.image.bootstrap()?;
        b.inode(ino).map_err(|_| FsError::NotFound)?;
        // Names are sorted, strictly ascending (validated): binary search.
        let xattrs = b.xattrs(ino)?;
        let (mut lo, mut hi) = (0, xattrs.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match b.xattr_name(&xattrs[mid])?.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(b.xattr_value(&xattrs[mid])?),
            }
        }
        Err(FsError::NoAttr)
    }

    /// The xattr names of `ino`, each followed by NUL (the `listxattr(2)`
    /// format).
    pub fn listxattr(&self, ino: u32) -> Result<Vec<u8>, FsError> {
        self.metrics.op(Op::Xattr);
        let b = self.boot()?;
        b.inode(ino).map_err(|_| FsError::NotFound)?;
        let mut out = Vec::new();
        for x in b.xattrs(ino)? {
            out.extend_from_slice(b.xattr_name(x)?);
            out.push(0);
        }
        Ok(out)
    }

    /// Filesystem figures.
    pub fn statfs(&self) -> Result<StatFs, FsError> {
        self.metrics.op(Op::Other);
        let b = self.boot()?;
        Ok(StatFs {
            blocks: self.blob_bytes.div_ceil(4096),
            files: u64::from(b.inode_count()),
            bsize: 4096,
            namelen: MAX_NAME_LEN as u32,
        })
    }
}

#[cfg(test)]
mod tests;
