//! The encoder: an in-memory description of an image ([`ImageSpec`]) to
//! bootstrap bytes.
//!
//! The caller numbers the nodes (node `i` becomes inode `i`, node 0 the root
//! directory) and gives each directory its entries; the encoder sorts
//! entries, derives parents and link counts, lays out the file offsets of
//! chunks, interns strings, shares identical chunk runs and xattr sets,
//! writes the tables and the checksum, and finally validates its own output,
//! so it never returns an invalid bootstrap. Output depends only on the
//! input: builds are reproducible.

use crate::decode::{seal, Bootstrap};
use crate::error::FormatError;
use crate::layout::*;
use crate::name::Name;
use std::collections::HashMap;
use zerocopy::IntoBytes;

/// Chunking parameters, recorded in the superblock for information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// [`CHUNKING_FIXED`] or [`CHUNKING_FASTCDC`].
    pub mode: u8,
    /// Minimum (fixed: the chunk size).
    pub min: u32,
    /// Average (fixed: the chunk size).
    pub avg: u32,
    /// Maximum (fixed: the chunk size).
    pub max: u32,
}

/// One chunk of a file, without its file offset (the encoder lays chunks
/// out back to back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkSpec {
    /// blake3 of the uncompressed data; zero for holes.
    pub digest: [u8; 32],
    /// Blob table index; zero for holes.
    pub blob_index: u32,
    /// Offset of the stored bytes in the blob.
    pub compressed_offset: u64,
    /// Offset in the blob's uncompressed space.
    pub uncompressed_offset: u64,
    /// Stored length.
    pub compressed_size: u32,
    /// Data length.
    pub uncompressed_size: u32,
    /// [`CHUNK_ZSTD`], [`CHUNK_ZSTD`] | [`CHUNK_BATCH`], [`CHUNK_HOLE`] or 0.
    pub flags: u32,
    /// Batch members: offset of the data in the decompressed frame.
    pub batch_offset: u32,
    /// Batch members: decompressed length of the whole frame.
    pub batch_size: u32,
}

impl From<&ChunkInfo> for ChunkSpec {
    /// The chunk's storage fields (everything but its file offset).
    fn from(c: &ChunkInfo) -> Self {
        ChunkSpec {
            digest: c.digest,
            blob_index: c.blob_index.get(),
            compressed_offset: c.compressed_offset.get(),
            uncompressed_offset: c.uncompressed_offset.get(),
            compressed_size: c.compressed_size.get(),
            uncompressed_size: c.uncompressed_size.get(),
            flags: c.flags.get(),
            batch_offset: c.batch_offset.get(),
            batch_size: c.batch_size.get(),
        }
    }
}

impl ChunkSpec {
    /// A hole of `len` bytes.
    pub fn hole(len: u32) -> Self {
        ChunkSpec {
            uncompressed_size: len,
            flags: CHUNK_HOLE,
            ..Default::default()
        }
    }
}

/// What kind of node, with its per-type payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: its entries (any order) and its reported size.
    Dir {
        /// `(name, node index)`; node 0 may not appear.
        entries: Vec<(Name, u32)>,
        /// Reported `st_size`.
        size: u64,
    },
    /// A regular file: its chunks in file order; the size is their sum.
    File {
        /// Chunks, back to back from offset 0.
        chunks: Vec<ChunkSpec>,
    },
    /// A symbolic link.
    Symlink {
        /// Target bytes (1..=4095, no NUL).
        target: Vec<u8>,
    },
    /// A character or block device, FIFO or socket (type from `mode`).
    Special,
}

/// Inode metadata common to every file type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// File type and permission bits (must agree with the node's kind).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number (devices only).
    pub rdev: u64,
    /// Extended attributes `(name, value)`, any order, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Metadata.
    pub meta: Meta,
    /// Type-specific payload.
    pub kind: NodeKind,
}

/// Everything a bootstrap holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Nodes; index = inode number; node 0 is the root directory.
    pub nodes: Vec<NodeSpec>,
    /// Blob table.
    pub blobs: Vec<BlobInfo>,
    /// Inodes to prefetch, in priority order.
    pub prefetch: Vec<u32>,
    /// Chunking parameters.
    pub chunking: Chunking,
    /// Compat feature bits to set.
    pub compat_features: u64,
}

fn too_big(what: &str) -> FormatError {
    FormatError::Encode(format!("too many {what}"))
}

fn u32_len(n: usize, what: &str) -> Result<u32, FormatError> {
    u32::try_from(n).map_err(|_| too_big(what))
}

/// An xattr `(name, value)`.
type Xattr = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct Tables {
    inodes: Vec<Inode>,
    dirents: Vec<DirEntry>,
    chunks: Vec<ChunkInfo>,
    xattrs: Vec<XattrEntry>,
    strings: Vec<u8>,
    string_ids: HashMap<Vec<u8>, u32>,
    runs: HashMap<Vec<ChunkSpec>, (u32, u64)>,
    xattr_sets: HashMap<Vec<Xattr>, u32>,
}

impl Tables {
    fn intern(&mut self, s: &[u8]) -> Result<u32, FormatError> {
        if let Some(&off) = self.string_ids.get(s) {
            return Ok(off);
        }
        let off = u32_len(self.strings.len(), "string bytes")?;
        self.strings.extend_from_slice(s);
        u32_len(self.strings.len(), "string bytes")?;
        self.string_ids.insert(s.to_vec(), off);
        Ok(off)
    }

    /// Appends (or reuses) a chunk run; returns (start, count, file size).
    fn add_run(&mut self, chunks: &[ChunkSpec]) -> Result<(u32, u32, u64), FormatError> {
        let count = u32_len(chunks.len(), "chunks")?;
        if let Some(&(start, size)) = self.runs.get(chunks) {
            return Ok((start, count, size));
        }
        let start = u32_len(self.chunks.len(), "chunks")?;
        let mut off = 0u64;
        for c in chunks {
            self.chunks.push(ChunkInfo {
                digest: c.digest,
                file_offset: off.into(),
                compressed_offset: c.compressed_offset.into(),
                uncompressed_offset: c.uncompressed_offset.into(),
                compressed_size: c.compressed_size.into(),
                uncompressed_size: c.uncompressed_size.into(),
                blob_index: c.blob_index.into(),
                flags: c.flags.into(),
                batch_offset: c.batch_offset.into(),
                batch_size: c.batch_size.into(),
            });
            off = off
                .checked_add(u64::from(c.uncompressed_size))
                .ok_or_else(|| too_big("file bytes"))?;
        }
        self.runs.insert(chunks.to_vec(), (start, off));
        Ok((start, count, off))
    }

    fn add_xattrs(&mut self, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(u32, u32), FormatError> {
        let count = u32_len(xattrs.len(), "xattrs")?;
        if xattrs.is_empty() {
            return Ok((0, 0));
        }
        let mut sorted = xattrs.to_vec();
        sorted.sort();
        if let Some(&start) = self.xattr_sets.get(&sorted) {
            return Ok((start, count));
        }
        let start = u32_len(self.xattrs.len(), "xattrs")?;
        for (name, value) in &sorted {
            let name_len = u16::try_from(name.len())
                .map_err(|_| FormatError::Encode("xattr name too long".into()))?;
            let value_len = u32_len(value.len(), "xattr value bytes")?;
            let entry = XattrEntry {
                name_offset: self.intern(name)?.into(),
                value_offset: self.intern(value)?.into(),
                value_len: value_len.into(),
                name_len: name_len.into(),
                reserved: 0.into(),
            };
            self.xattrs.push(entry);
        }
        self.xattr_sets.insert(sorted, start);
        Ok((start, count))
    }

    fn add_dir(&mut self, entries: &[(Name, u32)]) -> Result<(u32, u32), FormatError> {
        let start = u32_len(self.dirents.len(), "directory entries")?;
        let mut sorted: Vec<&(Name, u32)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ino) in sorted {
            let name_offset = self.intern(name.as_bytes())?;
            self.dirents.push(DirEntry {
                ino: (*ino).into(),
                name_offset: name_offset.into(),
                name_len: (name.as_bytes().len() as u16).into(),
                reserved: 0.into(),
            });
        }
        Ok((start, u32_len(entries.len(), "directory entries")?))
    }
}

/// Derived per-node facts: link counts and directory parents.
fn links(nodes: &[NodeSpec]) -> Result<(Vec<u32>, Vec<u32>), FormatError> {
    let mut nlink = vec![0u32; nodes.len()];
    let mut parent = vec![0u32; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if let NodeKind::Dir { entries, .. } = &node.kind {
            nlink[i] = nlink[i].saturating_add(2);
            for (_, child) in entries {
                let c = *child as usize;
                let target = nodes
                    .get(c)
                    .ok_or_else(|| FormatError::Encode(format!("entry names missing node {c}")))?;
                if matches!(target.kind, NodeKind::Dir { .. }) {
                    nlink[i] = nlink[i].saturating_add(1);
                    parent[c] = i as u32;
                } else {
                    nlink[c] = nlink[c].saturating_add(1);
                }
            }
        }
    }
    Ok((nlink, parent))
}

fn encode_node(
    t: &mut Tables,
    node: &NodeSpec,
    nlink: u32,
    parent: u32,
) -> Result<Inode, FormatError> {
    let (payload_start, payload_count, size) = match &node.kind {
        NodeKind::Dir { entries, size } => {
            let (s, c) = t.add_dir(entries)?;
            (s, c, *size)
        }
        NodeKind::File { chunks } => t.add_run(chunks)?,
        NodeKind::Symlink { target } => (
            t.intern(target)?,
            u32_len(target.len(), "symlink bytes")?,
            target.len() as u64,
        ),
        NodeKind::Special => (0, 0, 0),
    };
    let m = &node.meta;
    let (xattr_start, xattr_count) = t.add_xattrs(&m.xattrs)?;
    Ok(Inode {
        mode: m.mode.into(),
        uid: m.uid.into(),
        gid: m.gid.into(),
        nlink: nlink.into(),
        size: size.into(),
        mtime_sec: m.mtime_sec.into(),
        mtime_nsec: m.mtime_nsec.into(),
        parent: parent.into(),
        rdev: m.rdev.into(),
        payload_start: payload_start.into(),
        payload_count: payload_count.into(),
        xattr_start: xattr_start.into(),
        xattr_count: xattr_count.into(),
    })
}

/// Appends `bytes` 8-byte aligned; returns the table reference.
fn put(out: &mut Vec<u8>, bytes: &[u8], count: usize) -> TableRef {
    if count == 0 {
        return TableRef::default();
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let offset = out.len() as u64;
    out.extend_from_slice(bytes);
    TableRef {
        offset: offset.into(),
        count: (count as u64).into(),
    }
}

/// Encodes `spec` into a sealed, validated bootstrap.
pub fn encode(spec: &ImageSpec) -> Result<Vec<u8>, FormatError> {
    u32_len(spec.nodes.len(), "inodes")?;
    let (nlink, parent) = links(&spec.nodes)?;
    let mut t = Tables::default();
    for (i, node) in spec.nodes.iter().enumerate() {
        let inode = encode_node(&mut t, node, nlink[i], parent[i])?;
        t.inodes.push(inode);
    }
    let prefetch: Vec<PrefetchEntry> = spec
        .prefetch
        .iter()
        .map(|&ino| PrefetchEntry { ino: ino.into() })
        .collect();
    let zstd = t.chunks.iter().any(ChunkInfo::is_zstd);
    let batch = t.chunks.iter().any(ChunkInfo::is_batch);

    let mut out = vec![0u8; size_of::<SuperBlock>()];
    let inodes = put(&mut out, t.inodes.as_bytes(), t.inodes.len());
    let dirents = put(&mut out, t.dirents.as_bytes(), t.dirents.len());
    let chunks = put(&mut out, t.chunks.as_bytes(), t.chunks.len());
    let blobs = put(&mut out, spec.blobs.as_bytes(), spec.blobs.len());
    let xattrs = put(&mut out, t.xattrs.as_bytes(), t.xattrs.len());
    let prefetch = put(&mut out, prefetch.as_bytes(), prefetch.len());
    let strings = put(&mut out, &t.strings, t.strings.len());
    let sb = SuperBlock {
        magic: MAGIC,
        major_version: MAJOR_VERSION.into(),
        minor_version: MINOR_VERSION.into(),
        superblock_size: (size_of::<SuperBlock>() as u32).into(),
        compat_features: spec.compat_features.into(),
        incompat_features: (if zstd { INCOMPAT_ZSTD } else { 0 }
            | if batch { INCOMPAT_BATCH } else { 0 })
        .into(),
        checksum: [0; 32],
        bootstrap_size: (out.len() as u64).into(),
        chunking: spec.chunking.mode,
        reserved0: [0; 3],
        chunk_min: spec.chunking.min.into(),
        chunk_avg: spec.chunking.avg.into(),
        chunk_max: spec.chunking.max.into(),
        reserved1: [0; 8],
        inodes,
        dirents,
        chunks,
        blobs,
        xattrs,
        prefetch,
        strings,
        reserved2: [0; 48],
    };
    out[..size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal(&mut out);
    Bootstrap::open(&out)?;
    Ok(out)
}
