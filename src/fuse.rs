//! A thin FUSE adapter over the filesystem core ([`RafsFs`]).
//!
//! Each handler is one call into the core and one `match` that turns the
//! result into a reply or an errno; [`errno`] is the only place an
//! [`FsError`] becomes an errno. The core is tested without FUSE
//! (`tests/fs_model.rs`); this file only translates.
//!
//! Numbering: FUSE inode = rafs inode + 1 (FUSE reserves 0 and names the
//! root 1; rafs's root is 0). Inodes are stable for the life of the mount,
//! so `forget` has nothing to free.
//!
//! The image is immutable, so every cache the kernel offers is safe and
//! on: long entry/attr TTLs, `FOPEN_KEEP_CACHE` for files,
//! `FOPEN_CACHE_DIR` for directories, cached symlinks. Every write-side
//! operation answers EROFS (the mount is also `ro`, so most never arrive).

use crate::fs::{Attr, Entry, FileKind, FsError, RafsFs};
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache entries and attributes: the image never
/// changes under a mount.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// `st_blksize` reported for every inode.
const BLKSIZE: u32 = 4096;

/// Pending background requests (readahead) the kernel may queue; the
/// default 16 starves a multi-threaded daemon on sequential reads.
const MAX_BACKGROUND: u16 = 64;

/// The kernel-side features asked for when the kernel offers them.
const WANTED: InitFlags = InitFlags::FUSE_ASYNC_READ
    .union(InitFlags::FUSE_DO_READDIRPLUS)
    .union(InitFlags::FUSE_READDIRPLUS_AUTO)
    .union(InitFlags::FUSE_PARALLEL_DIROPS)
    .union(InitFlags::FUSE_CACHE_SYMLINKS)
    .union(InitFlags::FUSE_MAX_PAGES)
    // ACLs stored as system.posix_acl_* xattrs are enforced by the kernel.
    .union(InitFlags::FUSE_POSIX_ACL);

/// The errno for a core error: the only place one is produced.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::Invalid => Errno::EINVAL,
        FsError::NoAttr => Errno::NO_XATTR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::Data { .. } | FsError::Format(_) => Errno::EIO,
    }
}

/// A reply for an xattr value or name list, honouring the size probe:
/// `size == 0` asks for the length; a buffer too small is ERANGE.
enum XattrReply<'a> {
    Size(u32),
    Data(&'a [u8]),
    TooSmall,
}

fn xattr_reply(size: u32, value: &[u8]) -> XattrReply<'_> {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => XattrReply::Size(len),
        Ok(len) if len <= size => XattrReply::Data(value),
        _ => XattrReply::TooSmall,
    }
}

fn send_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match xattr_reply(size, value) {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(d),
        XattrReply::TooSmall => reply.error(Errno::ERANGE),
    }
}

/// The rafs inode for a FUSE inode (anything out of range names nothing).
fn rafs_ino(ino: INodeNo) -> Result<u32, FsError> {
    ino.0
        .checked_sub(1)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or(FsError::NotFound)
}

/// The FUSE inode for a rafs inode.
fn fuse_ino(ino: u32) -> INodeNo {
    INodeNo(u64::from(ino) + 1)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// A (seconds, nanoseconds) pair as stored (nanoseconds added to the
/// possibly negative seconds) to a `SystemTime`.
fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let whole = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    whole
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
        .unwrap_or(UNIX_EPOCH)
}

/// A userspace `dev_t` (as stored) to the 32-bit encoding the FUSE
/// protocol carries (the kernel's `new_encode_dev`: 12-bit major, 20-bit
/// minor). Larger numbers cannot be represented and are truncated.
fn fuse_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev as libc::dev_t) as u32;
    let minor = libc::minor(rdev as libc::dev_t) as u32;
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The FUSE attributes of a core [`Attr`].
pub fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime_sec, a.mtime_nsec);
    FileAttr {
        ino: fuse_ino(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: fuse_rdev(a.rdev),
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The FUSE filesystem: a shared handle on the core.
pub struct FuseFs {
    fs: Arc<RafsFs>,
}

impl FuseFs {
    /// An adapter over `fs`.
    pub fn new(fs: Arc<RafsFs>) -> FuseFs {
        FuseFs { fs }
    }
}

/// Handlers that only refuse (the filesystem is read-only).
macro_rules! read_only {
    ($reply:ident) => {
        $reply.error(errno(&FsError::ReadOnly))
    };
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        if let Err(unsupported) = config.add_capabilities(WANTED & offered) {
            tracing::debug!(?unsupported, "kernel refused FUSE capabilities");
        }
        // The kernel offers its current readahead as the maximum; take all
        // of it (`mount` raises the device's readahead afterwards).
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        tracing::debug!(?offered, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match rafs_ino(parent).and_then(|p| self.fs.lookup(p, name.as_bytes())) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {}

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match rafs_ino(ino).and_then(|i| self.fs.getattr(i)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match rafs_ino(ino).and_then(|i| self.fs.readlink(i)) {
            Ok(target) => reply.data(target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// ENOSYS: the kernel then stops sending OPEN and RELEASE for every
    /// file ("no_open") and keeps the page cache (its default for no-open
    /// is FOPEN_KEEP_CACHE). The image is immutable, so there is no per-open
    /// state, and a read-only mount makes the VFS refuse write opens with
    /// EROFS before they reach us. This saves two round trips per file.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match rafs_ino(ino).and_then(|i| self.fs.read(i, offset, size)) {
            Ok(data) => {
                reply.data(&data);
                crate::util::pool::give(data);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// ENOSYS, as for [`FuseFs::open`]: the kernel stops sending OPENDIR
    /// and RELEASEDIR ("no_opendir") and caches listings (its default is
    /// FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR). The VFS only opens directories
    /// as directories.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let add = |e: Entry<'_>| {
            let name = OsStr::from_bytes(e.name);
            !reply.add(fuse_ino(e.ino), e.next, file_type(e.kind), name)
        };
        match rafs_ino(ino).and_then(|i| self.fs.readdir(i, offset, add)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let add = |e: Entry<'_>, a: &Attr| {
            let name = OsStr::from_bytes(e.name);
            !reply.add(
                fuse_ino(e.ino),
                e.next,
                name,
                &TTL,
                &file_attr(a),
                Generation(0),
            )
        };
        match rafs_ino(ino).and_then(|i| self.fs.readdirplus(i, offset, add)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(s.blocks, 0, 0, s.files, 0, s.bsize, s.namelen, s.bsize),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match rafs_ino(ino).and_then(|i| self.fs.getxattr(i, name.as_bytes())) {
            Ok(value) => send_xattr(reply, size, value),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match rafs_ino(ino).and_then(|i| self.fs.listxattr(i)) {
            Ok(names) => send_xattr(reply, size, &names),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match rafs_ino(ino).and_then(|i| self.fs.access(i, mask.bits() as u32)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered, so nothing to write back. ENOSYS makes the
        // kernel stop sending FLUSH ("no_flush"), which it would otherwise
        // do on every close(2): one round trip per file.
        reply.error(Errno::ENOSYS)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // ENOSYS: the kernel stops asking ("no_fsync") and fsync(2) succeeds.
        reply.error(Errno::ENOSYS)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // As for fsync ("no_fsyncdir").
        reply.error(Errno::ENOSYS)
    }

    // Everything below would modify the image.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        read_only!(reply)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        read_only!(reply)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        read_only!(reply)
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply)
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        read_only!(reply)
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        read_only!(reply)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        read_only!(reply)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        read_only!(reply)
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        read_only!(reply)
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        read_only!(reply)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        read_only!(reply)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        read_only!(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BlobId;
    use crate::chunk::FetchError;

    #[test]
    fn errnos() {
        let cases = [
            (FsError::NotFound, libc::ENOENT),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::Invalid, libc::EINVAL),
            (FsError::NoAttr, libc::ENODATA),
            (FsError::ReadOnly, libc::EROFS),
            (
                FsError::Format(rafs_format::FormatError::BadMagic),
                libc::EIO,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(i32::from(errno(&e)), want, "{e}");
        }
        let data = FsError::Data {
            ino: 3,
            chunk: 4,
            blob: BlobId([0; 32]),
            source: FetchError::Backend(crate::backend::BackendError::NotFound(BlobId([0; 32]))),
        };
        assert_eq!(i32::from(errno(&data)), libc::EIO);
    }

    #[test]
    fn inode_numbering() {
        assert_eq!(rafs_ino(INodeNo::ROOT).unwrap(), 0);
        assert_eq!(fuse_ino(0), INodeNo::ROOT);
        assert_eq!(rafs_ino(fuse_ino(41)).unwrap(), 41);
        assert!(matches!(rafs_ino(INodeNo(0)), Err(FsError::NotFound)));
        assert!(matches!(
            rafs_ino(INodeNo(u64::from(u32::MAX) + 2)),
            Err(FsError::NotFound)
        ));
        assert_eq!(
            rafs_ino(INodeNo(u64::from(u32::MAX) + 1)).unwrap(),
            u32::MAX
        );
    }

    #[test]
    fn xattr_size_probe() {
        assert!(matches!(xattr_reply(0, b"abc"), XattrReply::Size(3)));
        assert!(matches!(xattr_reply(0, b""), XattrReply::Size(0)));
        assert!(matches!(xattr_reply(2, b"abc"), XattrReply::TooSmall));
        assert!(matches!(xattr_reply(3, b"abc"), XattrReply::Data(b"abc")));
        assert!(matches!(xattr_reply(64, b"abc"), XattrReply::Data(b"abc")));
    }

    #[test]
    fn times_and_devices() {
        assert_eq!(system_time(0, 0), UNIX_EPOCH);
        assert_eq!(
            system_time(5, 7),
            UNIX_EPOCH + Duration::from_secs(5) + Duration::from_nanos(7)
        );
        assert_eq!(
            system_time(-2, 800_000_000),
            UNIX_EPOCH - Duration::new(1, 200_000_000)
        );
        assert_eq!(
            system_time(i64::MIN, 0),
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(i64::MIN.unsigned_abs()))
                .unwrap_or(UNIX_EPOCH)
        );
        // /dev/null is 1:3, /dev/sda 8:0, a large minor 259:65536.
        assert_eq!(fuse_rdev(libc::makedev(1, 3)), (1 << 8) | 3);
        assert_eq!(fuse_rdev(libc::makedev(8, 0)), 8 << 8);
        assert_eq!(
            fuse_rdev(libc::makedev(259, 65536)),
            (259 << 8) | (65536 << 12)
        );
    }

    #[test]
    fn attrs() {
        let a = Attr {
            ino: 0,
            kind: FileKind::Dir,
            perm: 0o4755,
            nlink: 2,
            uid: 1,
            gid: 2,
            size: 10,
            blocks: 1,
            rdev: 0,
            mtime_sec: 100,
            mtime_nsec: 5,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo::ROOT);
        assert_eq!(f.kind, FileType::Directory);
        assert_eq!((f.perm, f.nlink, f.uid, f.gid), (0o4755, 2, 1, 2));
        assert_eq!((f.size, f.blocks, f.blksize), (10, 1, 4096));
        assert_eq!(f.mtime, f.ctime);
    }
}
