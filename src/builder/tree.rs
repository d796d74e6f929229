//! The in-memory tree a source is read into, and its conversion to an
//! [`ImageSpec`].
//!
//! Nodes live in an arena and directories map names to node ids, so a
//! hardlinked file is one node named by several entries (the encoder derives
//! `nlink`). Regular files hold no data, only [`Slot`]s: the sequence numbers
//! of the chunks the pipeline produced for them, and explicit holes. Inode
//! numbers are assigned by [`Tree::order`]: the root is 0, then breadth-first
//! with each directory's entries in name-byte order, a hardlinked node taking
//! the number of its first entry. The numbering depends only on the tree, so
//! builds are reproducible.

use super::error::{BuildError, Result};
use rafs_format::layout::S_IFDIR;
use rafs_format::{ChunkSpec, ImageSpec, Name, NodeKind, NodeSpec};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

/// Index of a node in the arena.
pub type NodeId = usize;

pub use rafs_format::Meta;

/// Metadata of a directory created only because an entry below it exists:
/// mode 0755, owner 0:0, mtime 0.
pub fn implicit_dir() -> Meta {
    Meta {
        mode: S_IFDIR | 0o755,
        ..Meta::default()
    }
}

/// One piece of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The chunk the pipeline assigned this sequence number.
    Data(u64),
    /// A hole of this many bytes (any length; split when encoding).
    Hole(u64),
}

/// Per-type content of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory.
    Dir {
        /// Entries, sorted by name bytes.
        children: BTreeMap<Name, NodeId>,
        /// Reported size.
        size: u64,
    },
    /// A regular file.
    File {
        /// Where to read the data from (directory sources).
        source: Option<PathBuf>,
        /// Size from the source's metadata (used for progress only; the
        /// image size is the sum of the chunks actually read).
        size: u64,
        /// The chunks and holes, in file order.
        slots: Vec<Slot>,
    },
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A device, FIFO or socket.
    Special,
}

/// A node: metadata plus content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Metadata.
    pub meta: Meta,
    /// Content.
    pub content: Content,
}

impl Node {
    /// An empty directory.
    pub fn dir(meta: Meta, size: u64) -> Node {
        Node {
            meta,
            content: Content::Dir {
                children: BTreeMap::new(),
                size,
            },
        }
    }
}

/// The tree: node 0 is the root directory.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree holding only a root directory with `meta`.
    pub fn new(meta: Meta, size: u64) -> Tree {
        Tree {
            nodes: vec![Node::dir(meta, size)],
        }
    }

    /// Adds a node (not yet named by any entry).
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// Node `id`, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The entries of `dir`, or `None` if it is not a directory.
    pub fn children(&self, dir: NodeId) -> Option<&BTreeMap<Name, NodeId>> {
        match &self.nodes[dir].content {
            Content::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    /// The entries of `dir`, mutably.
    pub fn children_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<Name, NodeId>> {
        match &mut self.nodes[dir].content {
            Content::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    /// Node ids in inode-number order (see the module comment); nodes no
    /// entry reaches (replaced tar entries) are left out.
    pub fn order(&self) -> Vec<NodeId> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = vec![0];
        seen[0] = true;
        let mut queue = VecDeque::from([0]);
        while let Some(dir) = queue.pop_front() {
            let Some(children) = self.children(dir) else {
                continue;
            };
            for &child in children.values() {
                if !std::mem::replace(&mut seen[child], true) {
                    order.push(child);
                    if self.children(child).is_some() {
                        queue.push_back(child);
                    }
                }
            }
        }
        order
    }

    /// Looks up a slash-separated path (leading `/` optional, empty and `.`
    /// components skipped; symlinks are not followed).
    pub fn resolve(&self, path: &[u8]) -> Option<NodeId> {
        let mut id = 0;
        for comp in path.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            let name = Name::new(comp).ok()?;
            id = *self.children(id)?.get(&name)?;
        }
        Some(id)
    }

    /// Number of regular files among `order`.
    pub fn count_files(&self, order: &[NodeId]) -> usize {
        order
            .iter()
            .filter(|&&id| matches!(self.nodes[id].content, Content::File { .. }))
            .count()
    }

    /// Builds the encoder's input. `order` comes from [`Tree::order`];
    /// `specs[seq]` is the pipeline's chunk for sequence number `seq`.
    pub fn to_nodes(&self, order: &[NodeId], specs: &[ChunkSpec]) -> Result<Vec<NodeSpec>> {
        let mut ino_of = vec![u32::MAX; self.nodes.len()];
        for (ino, &id) in order.iter().enumerate() {
            ino_of[id] = u32::try_from(ino)
                .map_err(|_| BuildError::BadOptions("more than 2^32 inodes".into()))?;
        }
        let mut out = Vec::with_capacity(order.len());
        for &id in order {
            let node = &self.nodes[id];
            let kind = match &node.content {
                Content::Dir { children, size } => NodeKind::Dir {
                    entries: children
                        .iter()
                        .map(|(name, &child)| (name.clone(), ino_of[child]))
                        .collect(),
                    size: *size,
                },
                Content::File { slots, .. } => NodeKind::File {
                    chunks: file_chunks(slots, specs)?,
                },
                Content::Symlink(target) => NodeKind::Symlink {
                    target: target.clone(),
                },
                Content::Special => NodeKind::Special,
            };
            out.push(NodeSpec {
                meta: node.meta.clone(),
                kind,
            });
        }
        Ok(out)
    }
}

/// A file's chunk list: pipeline chunks by sequence number, with adjacent
/// holes (explicit, or all-zero chunks) merged and split into pieces of at
/// most `u32::MAX` bytes.
pub fn file_chunks(slots: &[Slot], specs: &[ChunkSpec]) -> Result<Vec<ChunkSpec>> {
    let mut out = Vec::with_capacity(slots.len());
    let mut hole = 0u64;
    let flush = |out: &mut Vec<ChunkSpec>, hole: &mut u64| {
        while *hole > 0 {
            let n = (*hole).min(u64::from(u32::MAX));
            out.push(ChunkSpec::hole(n as u32));
            *hole -= n;
        }
    };
    for slot in slots {
        let spec = match *slot {
            Slot::Hole(n) => {
                hole += n;
                continue;
            }
            Slot::Data(seq) => *specs
                .get(seq as usize)
                .ok_or_else(|| BuildError::Internal(format!("no chunk for sequence {seq}")))?,
        };
        if spec.flags & rafs_format::layout::CHUNK_HOLE != 0 {
            hole += u64::from(spec.uncompressed_size);
        } else {
            flush(&mut out, &mut hole);
            out.push(spec);
        }
    }
    flush(&mut out, &mut hole);
    Ok(out)
}

/// Assembles the image: nodes plus tables the pipeline produced.
pub fn image_spec(
    nodes: Vec<NodeSpec>,
    blobs: Vec<rafs_format::layout::BlobInfo>,
    prefetch: Vec<u32>,
    chunking: rafs_format::Chunking,
) -> ImageSpec {
    let compat_features = if prefetch.is_empty() {
        0
    } else {
        rafs_format::layout::COMPAT_PREFETCH_LIST
    };
    ImageSpec {
        nodes,
        blobs,
        prefetch,
        chunking,
        compat_features,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafs_format::layout::{CHUNK_HOLE, S_IFREG};

    fn file(slots: Vec<Slot>) -> Node {
        Node {
            meta: Meta {
                mode: S_IFREG | 0o644,
                ..Meta::default()
            },
            content: Content::File {
                source: None,
                size: 0,
                slots,
            },
        }
    }

    fn name(s: &str) -> Name {
        Name::try_from(s).unwrap()
    }

    #[test]
    fn breadth_first_sorted_numbering_with_hardlinks() {
        let mut t = Tree::new(implicit_dir(), 0);
        let sub = t.add(Node::dir(implicit_dir(), 0));
        let f = t.add(file(vec![]));
        let g = t.add(file(vec![]));
        t.children_mut(0).unwrap().insert(name("z"), f);
        t.children_mut(0).unwrap().insert(name("b"), sub);
        t.children_mut(sub).unwrap().insert(name("a"), g);
        t.children_mut(sub).unwrap().insert(name("link"), f);
        let orphan = t.add(file(vec![]));
        let order = t.order();
        assert_eq!(order, vec![0, sub, f, g]);
        assert!(!order.contains(&orphan));
        assert_eq!(t.resolve(b"/b/a"), Some(g));
        assert_eq!(t.resolve(b"b//./link"), Some(f));
        assert_eq!(t.resolve(b"z/x"), None);
        assert_eq!(t.count_files(&order), 2);
    }

    #[test]
    fn holes_merge_and_split() {
        let data = ChunkSpec {
            digest: [1; 32],
            compressed_size: 10,
            uncompressed_size: 100,
            ..Default::default()
        };
        let zero = ChunkSpec::hole(50);
        let specs = [data, zero, data];
        let slots = [
            Slot::Hole(u64::from(u32::MAX) + 10),
            Slot::Data(1),
            Slot::Data(0),
            Slot::Data(1),
            Slot::Hole(5),
        ];
        let out = file_chunks(&slots, &specs).unwrap();
        let sizes: Vec<(u32, bool)> = out
            .iter()
            .map(|c| (c.uncompressed_size, c.flags & CHUNK_HOLE != 0))
            .collect();
        assert_eq!(
            sizes,
            [(u32::MAX, true), (60, true), (100, false), (55, true)]
        );
        assert!(file_chunks(&[Slot::Data(9)], &specs).is_err());
    }
}
