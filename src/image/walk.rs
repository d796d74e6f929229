//! Depth-first walk of an image's tree in name order, rebuilding paths.
//!
//! The format stores no per-inode path: a path exists only as the chain of
//! directory entries leading to an inode, and a hardlinked inode has several.
//! [`walk`] visits the root (`/`), then every directory entry in pre-order,
//! children in the (sorted) order of the directory, so a hardlinked inode is
//! visited once per name and its first visit is its first path in that
//! order. `inspect`, `check`, `unpack` and the access record of the
//! filesystem core all see the tree through it; [`paths_of`] gathers the
//! paths of chosen inodes in one walk.
//!
//! Also here: [`escape`] and [`dev_split`], display helpers the three
//! tools share.
//!
//! The walk uses an explicit stack, not recursion: a hostile but valid
//! bootstrap may nest directories a million deep. A validated bootstrap is a
//! tree (every directory linked once), so the walk terminates.

use rafs_format::layout::{DirEntry, Inode};
use rafs_format::{Bootstrap, FormatError};
use std::collections::HashMap;

/// One visited entry.
pub(crate) struct Visit<'p, 'b> {
    /// Absolute image path: `/` for the root, else `/a/b`.
    pub path: &'p [u8],
    /// Inode number.
    pub ino: u32,
    /// The inode.
    pub inode: &'b Inode,
}

impl Visit<'_, '_> {
    /// The path relative to the root (empty for the root itself).
    pub fn rel(&self) -> &[u8] {
        &self.path[1..]
    }
}

struct Frame<'b> {
    entries: &'b [DirEntry],
    next: usize,
    /// Length of this directory's path in the path buffer.
    path_len: usize,
}

/// Calls `visit` for the root and then every directory entry, depth-first,
/// in name order. Stops at the first error.
pub(crate) fn walk<'b, E: From<FormatError>>(
    b: &Bootstrap<'b>,
    mut visit: impl FnMut(&Visit<'_, 'b>) -> Result<(), E>,
) -> Result<(), E> {
    let mut path = b"/".to_vec();
    visit(&Visit {
        path: &path,
        ino: 0,
        inode: b.inode(0)?,
    })?;
    let mut stack = vec![Frame {
        entries: b.dir_entries(0)?,
        next: 0,
        path_len: 1,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(e) = top.entries.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        path.truncate(top.path_len);
        if top.path_len > 1 {
            path.push(b'/');
        }
        path.extend_from_slice(b.entry_name(e)?);
        let ino = e.ino.get();
        let inode = b.inode(ino)?;
        visit(&Visit {
            path: &path,
            ino,
            inode,
        })?;
        if inode.is_dir() {
            stack.push(Frame {
                entries: b.dir_entries(ino)?,
                next: 0,
                path_len: path.len(),
            });
        }
    }
    Ok(())
}

/// What [`paths_of`] found of one inode.
#[derive(Debug, Default)]
pub(crate) struct Paths {
    /// Its first paths in walk order, as many as were asked for.
    pub kept: Vec<Vec<u8>>,
    /// How many paths it has, kept or not.
    pub count: usize,
}

/// Walks the tree once, keeping for each inode `keep` names its first
/// `keep[ino]` paths in walk order and counting the rest.
///
/// Memory is the kept paths plus an entry per named inode. Every path of
/// every inode would be quadratic in the depth of the tree: a chain of
/// 20 000 directories, a 1.5 MiB bootstrap, has 400 MB of them.
pub(crate) fn paths_of(
    b: &Bootstrap<'_>,
    keep: &HashMap<u32, usize>,
) -> Result<HashMap<u32, Paths>, FormatError> {
    let mut found: HashMap<u32, Paths> = HashMap::new();
    walk(b, |v| {
        if let Some(&max) = keep.get(&v.ino) {
            let p = found.entry(v.ino).or_default();
            if p.kept.len() < max {
                p.kept.push(v.path.to_vec());
            }
            p.count += 1;
        }
        Ok::<_, FormatError>(())
    })?;
    Ok(found)
}

/// Renders path (or name, or symlink target) bytes for display.
///
/// Valid UTF-8 passes through except control characters and `\`; those and
/// every byte of an invalid UTF-8 sequence become `\xNN` (`\` becomes `\\`).
/// The output is therefore unambiguous and reversible, and a plain UTF-8 path
/// prints unchanged.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Linux `dev_t` to (major, minor).
pub(crate) fn dev_split(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_is_plain_for_utf8_and_escapes_the_rest() {
        assert_eq!(escape(b"/usr/bin/caf\xc3\xa9"), "/usr/bin/café");
        assert_eq!(escape(b"/a\\b"), "/a\\\\b");
        assert_eq!(escape(b"/a\nb"), "/a\\x0ab");
        assert_eq!(escape(b"/\xff\xfe"), "/\\xff\\xfe");
    }
}
