//! Directory sources: a metadata walk, then file data in inode order.
//!
//! [`scan`] reads the whole tree's metadata (lstat, readdir, readlink,
//! xattrs via the non-following `l*xattr` calls) without opening any regular
//! file, and detects hardlinks by (device, inode) so a file with several
//! names becomes one node. [`read_data`] then reads regular files in inode
//! order, so the blob layout follows the bootstrap's inode order (a
//! directory's files are adjacent in the blob). Sparse files are read by
//! extent with `SEEK_DATA`/`SEEK_HOLE`: holes are never read, so a 5 GiB
//! file with 1 MiB of data costs 1 MiB of I/O.

use super::chunker::ChunkerConfig;
use super::error::{BuildError, Result};
use super::pipeline::Emitter;
use super::tree::{Content, Meta, Node, NodeId, Slot, Tree};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use rafs_format::layout::{MAX_NAME_LEN, MAX_SYMLINK_LEN, MAX_XATTR_VALUE_LEN, S_IFMT};
use rafs_format::Name;
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn bad(path: &Path, reason: impl Into<String>) -> BuildError {
    BuildError::BadEntry {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Extended attributes of `path` itself (symlinks not followed).
fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e)
            if matches!(
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                Errno::ENOTSUP
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(BuildError::io(path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(value) = xattr::get(path, &name).map_err(|e| BuildError::io(path, e))? else {
            continue; // removed since listed
        };
        let name = name.as_bytes().to_vec();
        if name.len() > MAX_NAME_LEN || value.len() > MAX_XATTR_VALUE_LEN {
            return Err(bad(path, "xattr name or value too long"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn meta_of(path: &Path, md: &Metadata) -> Result<Meta> {
    let ft = md.file_type();
    let device = ft.is_char_device() || ft.is_block_device();
    Ok(Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        rdev: if device { md.rdev() } else { 0 },
        xattrs: read_xattrs(path)?,
    })
}

fn node_of(path: &Path, md: &Metadata) -> Result<Node> {
    let meta = meta_of(path, md)?;
    let ft = md.file_type();
    let content = if ft.is_dir() {
        return Ok(Node::dir(meta, md.size()));
    } else if ft.is_file() {
        Content::File {
            source: Some(path.to_owned()),
            size: md.size(),
            slots: Vec::new(),
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| BuildError::io(path, e))?;
        let target = target.as_os_str().as_bytes().to_vec();
        if target.is_empty() || target.len() > MAX_SYMLINK_LEN {
            return Err(bad(path, "symlink target empty or longer than 4095 bytes"));
        }
        Content::Symlink(target)
    } else {
        Content::Special
    };
    Ok(Node { meta, content })
}

/// Reads the metadata of the tree rooted at `root` (which may be a symlink
/// to a directory).
pub fn scan(root: &Path) -> Result<Tree> {
    let md = fs::metadata(root).map_err(|e| BuildError::io(root, e))?;
    if !md.is_dir() {
        return Err(bad(root, "not a directory"));
    }
    let mut tree = Tree::new(meta_of(root, &md)?, md.size());
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack: Vec<(NodeId, PathBuf)> = vec![(0, root.to_owned())];
    while let Some((dir, dir_path)) = stack.pop() {
        let entries = fs::read_dir(&dir_path).map_err(|e| BuildError::io(&dir_path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BuildError::io(&dir_path, e))?;
            let path = entry.path();
            let name = Name::new(entry.file_name().as_bytes())
                .map_err(|e| bad(&path, format!("invalid name: {e}")))?;
            let md = fs::symlink_metadata(&path).map_err(|e| BuildError::io(&path, e))?;
            let key = (md.dev(), md.ino());
            let linked = (!md.is_dir() && md.nlink() > 1)
                .then(|| links.get(&key).copied())
                .flatten();
            let id = match linked {
                Some(id) => id,
                None => {
                    let id = tree.add(node_of(&path, &md)?);
                    if md.is_dir() {
                        stack.push((id, path));
                    } else if md.nlink() > 1 {
                        links.insert(key, id);
                    }
                    id
                }
            };
            if let Some(children) = tree.children_mut(dir) {
                children.insert(name, id);
            }
        }
    }
    Ok(tree)
}

/// Total bytes of the regular files among `order` (for progress).
pub fn total_size(tree: &Tree, order: &[NodeId]) -> u64 {
    order
        .iter()
        .map(|&id| match tree.node(id).content {
            Content::File { size, .. } => size,
            _ => 0,
        })
        .sum()
}

/// The data extents `(start, end)` of `file` below `size`. Filesystems
/// without `SEEK_DATA` report the whole file as data.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL | Errno::ENOTSUP) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(size),
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

fn read_file(path: &Path, chunker: &ChunkerConfig, emit: &mut Emitter<'_>) -> Result<Vec<Slot>> {
    let io = |e| BuildError::io(path, e);
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    let md = file.metadata().map_err(io)?;
    if md.mode() & S_IFMT != rafs_format::layout::S_IFREG {
        return Err(bad(path, "changed type while building"));
    }
    let size = md.size();
    let mut slots = Vec::new();
    let mut pos = 0;
    for (start, end) in data_extents(&file, size).map_err(io)? {
        if start > pos {
            slots.push(Slot::Hole(start - pos));
            emit.skip(start - pos);
        }
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        chunker.split(&file, start, end - start, &io, &mut |data| {
            slots.push(Slot::Data(emit.emit(data)?));
            Ok(())
        })?;
        pos = end;
    }
    if size > pos {
        slots.push(Slot::Hole(size - pos));
        emit.skip(size - pos);
    }
    Ok(slots)
}

/// Reads every regular file of `tree`, in `order`, through `emit`, and
/// records each file's slots.
pub fn read_data(
    tree: &mut Tree,
    order: &[NodeId],
    chunker: &ChunkerConfig,
    emit: &mut Emitter<'_>,
) -> Result<()> {
    for &id in order {
        let Content::File {
            source: Some(path), ..
        } = &tree.node(id).content
        else {
            continue;
        };
        let path = path.clone();
        let new_slots = read_file(&path, chunker, emit)?;
        if let Content::File { slots, source, .. } = &mut tree.node_mut(id).content {
            *slots = new_slots;
            *source = None;
        }
    }
    Ok(())
}
