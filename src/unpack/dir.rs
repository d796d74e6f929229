//! Restoring an image into a directory.
//!
//! The image root maps onto the destination itself. Entries are created in
//! walk order; directories are created 0700 so their contents can be
//! written whatever their final mode, and their metadata is applied last, in
//! reverse walk order (children before parents), so creating entries does
//! not disturb a directory's restored mtime or lock us out of it.
//!
//! Per inode, metadata is applied in an order forced by the kernel:
//! `lchown` first (it clears setuid/setgid and `security.capability`), then
//! xattrs (before a restrictive mode could bite), then `chmod` (never on
//! symlinks, where it would follow), then the times with
//! `AT_SYMLINK_NOFOLLOW`. A hardlinked inode is created and finished at its
//! first path and `link`ed at the others.
//!
//! Not running as root, ownership and xattrs the kernel refuses with EPERM
//! are skipped with one warning instead of failing the unpack.

use super::data::write_sparse;
use super::{Stats, UnpackError};
use crate::backend::Backend;
use crate::image::walk::{walk, Visit};
use filetime::FileTime;
use nix::sys::stat::{mknod, Mode, SFlag};
use rafs_format::layout::*;
use rafs_format::{Bootstrap, FormatError};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dest` if missing; otherwise it must be an empty directory.
fn prepare(dest: &Path) -> Result<(), UnpackError> {
    let io = |source| UnpackError::Io {
        path: dest.to_owned(),
        source,
    };
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dest).map_err(io)?.next().is_some() {
                return Err(UnpackError::NotEmpty(dest.to_owned()));
            }
            Ok(())
        }
        Ok(_) => Err(UnpackError::NotADirectory(dest.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

struct Unpacker<'a, 'b> {
    b: &'a Bootstrap<'b>,
    backend: &'a dyn Backend,
    dest: &'a Path,
    /// First path of every hardlinked inode created so far.
    first: HashMap<u32, PathBuf>,
    /// Directories in walk order, for the final metadata pass.
    dirs: Vec<(u32, PathBuf)>,
    stats: Stats,
    root: bool,
    warned: bool,
}

/// Restores image `b` into directory `dest`.
pub(super) fn unpack_dir(
    b: &Bootstrap<'_>,
    backend: &dyn Backend,
    dest: &Path,
) -> Result<Stats, UnpackError> {
    prepare(dest)?;
    let mut u = Unpacker {
        b,
        backend,
        dest,
        first: HashMap::new(),
        dirs: Vec::new(),
        stats: Stats::default(),
        root: nix::unistd::geteuid().is_root(),
        warned: false,
    };
    walk(b, |v| u.entry(v))?;
    let dirs = std::mem::take(&mut u.dirs);
    for (ino, path) in dirs.iter().rev() {
        u.apply_meta(*ino, path)?;
    }
    Ok(u.stats)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Unpacker<'_, '_> {
    fn entry(&mut self, v: &Visit<'_, '_>) -> Result<(), UnpackError> {
        let path = if v.ino == 0 {
            self.dest.to_owned()
        } else {
            self.dest.join(OsStr::from_bytes(v.rel()))
        };
        self.stats.entries += 1;
        if v.inode.is_dir() {
            if v.ino != 0 {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err(&path))?;
            }
            self.dirs.push((v.ino, path));
            return Ok(());
        }
        if v.inode.nlink.get() > 1 {
            if let Some(first) = self.first.get(&v.ino) {
                return fs::hard_link(first, &path).map_err(io_err(&path));
            }
            self.first.insert(v.ino, path.clone());
        }
        self.create(v, &path)?;
        self.apply_meta(v.ino, &path)
    }

    /// Creates a non-directory inode at `path`, with its data.
    fn create(&mut self, v: &Visit<'_, '_>, path: &Path) -> Result<(), UnpackError> {
        let ft = v.inode.file_type();
        match ft {
            S_IFREG => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io_err(path))?;
                self.stats.data_bytes +=
                    write_sparse(self.backend, self.b, v.ino, v.path, &file, path)?;
                Ok(())
            }
            S_IFLNK => {
                let target = OsStr::from_bytes(self.b.symlink_target(v.ino)?);
                std::os::unix::fs::symlink(target, path).map_err(io_err(path))
            }
            S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {
                let kind = SFlag::from_bits_truncate(ft as libc::mode_t);
                mknod(path, kind, Mode::S_IRUSR, v.inode.rdev.get() as libc::dev_t)
                    .map_err(|e| io_err(path)(e.into()))
            }
            _ => Err(FormatError::BadInode {
                ino: v.ino,
                reason: "unknown file type",
            }
            .into()),
        }
    }

    /// Tolerates EPERM when not root (one warning); anything else fails.
    fn tolerate(&mut self, e: io::Error, path: &Path, what: &str) -> Result<(), UnpackError> {
        if self.root || e.kind() != io::ErrorKind::PermissionDenied {
            return Err(UnpackError::Io {
                path: path.to_owned(),
                source: io::Error::new(e.kind(), format!("{what}: {e}")),
            });
        }
        if !self.warned {
            self.warned = true;
            eprintln!(
                "rafs: warning: not running as root; ownership and privileged \
                 xattrs are not restored (first at {}: {what})",
                path.display()
            );
        }
        Ok(())
    }

    /// Ownership, xattrs, mode, mtime; in that order (see the module doc).
    fn apply_meta(&mut self, ino: u32, path: &Path) -> Result<(), UnpackError> {
        let b = self.b;
        let inode = b.inode(ino)?;
        let (uid, gid) = (inode.uid.get(), inode.gid.get());
        if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
            self.tolerate(e, path, &format!("chown {uid}:{gid}"))?;
        }
        for x in b.xattrs(ino)? {
            let name = OsStr::from_bytes(b.xattr_name(x)?);
            if let Err(e) = xattr::set(path, name, b.xattr_value(x)?) {
                let what = format!("setting xattr {}", name.to_string_lossy());
                self.tolerate(e, path, &what)?;
            }
        }
        if !inode.is_symlink() {
            fs::set_permissions(path, Permissions::from_mode(inode.mode.get() & 0o7777))
                .map_err(io_err(path))?;
        }
        let t = FileTime::from_unix_time(inode.mtime_sec.get(), inode.mtime_nsec.get());
        filetime::set_symlink_file_times(path, t, t).map_err(io_err(path))
    }
}
