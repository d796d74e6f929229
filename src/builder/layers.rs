//! Multi-layer images: OCI layer tars merged into one tree, one blob (or
//! more, with `--blob-size-limit`) per layer.
//!
//! Each layer is read by [`super::source_tar::read_layer`] through its own
//! [`super::pipeline`] run, so a layer's blobs depend only on the layer's bytes
//! and the build options (including `--chunk-dict`): images that share a
//! layer share its blobs. Chunks are deduplicated within a layer and
//! against `--chunk-dict`, not against lower layers of the same image
//! (that would make a layer's blob depend on what lies below it). A layer
//! with no new data produces no blob.
//!
//! The layer trees are then merged bottom first, following the OCI image
//! spec's `layer.md`:
//! 1. hardlinks to files not in the layer are resolved in the lower tree;
//! 2. whiteouts: `.wh.NAME` removes NAME (a whole subtree for a directory)
//!    and `.wh..wh..opq` empties its directory, both in the lower tree
//!    only, wherever they appear in the archive (never the layer's own
//!    entries);
//! 3. overlay: the layer's entries replace lower ones (a directory merges
//!    into a lower directory; a directory the layer only implies keeps
//!    the lower metadata); no `.wh.` name is copied.
//!
//! Walks use explicit work lists, not recursion: paths in a tar are
//! unbounded and deep trees must not overflow the stack.

use super::error::{BuildError, Result};
use super::pipeline::{PipelineOutput, Stats};
use super::source_tar::Marks;
use super::tree::{implicit_dir, Content, Node, NodeId, Slot, Tree};
use rafs_format::layout::{BlobInfo, CHUNK_HOLE};
use rafs_format::{ChunkSpec, Name};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// Whiteout prefix (OCI image spec, `layer.md`).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// One input layer: a tar stream (plain, gzip or zstd), and a name for
/// errors and the summary.
pub struct LayerInput {
    /// Name for errors and the summary (a path, a digest...).
    pub name: String,
    /// The raw layer stream; compression is detected.
    pub stream: super::source_tar::Stream,
}

/// What one layer contributed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerSummary {
    /// The layer's name.
    pub name: String,
    /// Blobs written for this layer (sha256 hex, in table order); empty
    /// for a layer without new data.
    pub blobs: Vec<String>,
    /// `--chunk-dict` blobs this layer's files reference.
    pub dict_blobs: Vec<String>,
    /// Data bytes read from the layer.
    pub bytes_in: u64,
    /// Bytes written to this layer's blobs.
    pub stored_bytes: u64,
}

/// The merged image so far.
pub struct Merged {
    /// The merged tree.
    pub tree: Tree,
    /// Chunks by global sequence number.
    pub specs: Vec<ChunkSpec>,
    /// The blob table.
    pub blobs: Vec<BlobInfo>,
    /// New blob files to commit (each id once).
    pub blob_files: Vec<(PathBuf, [u8; 32])>,
    /// Summed counters.
    pub stats: Stats,
    /// Per layer, bottom first.
    pub layers: Vec<LayerSummary>,
}

impl Default for Merged {
    fn default() -> Merged {
        Merged::new()
    }
}

fn is_whiteout(name: &Name) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX)
}

impl Merged {
    /// An empty image (an implicit root).
    pub fn new() -> Merged {
        Merged {
            tree: Tree::new(implicit_dir(), 0),
            specs: Vec::new(),
            blobs: Vec::new(),
            blob_files: Vec::new(),
            stats: Stats::default(),
            layers: Vec::new(),
        }
    }

    /// Merges the next layer (read by `read_layer` through a pipeline
    /// whose output is `out`) on top of the image.
    pub fn add(
        &mut self,
        name: &str,
        layer: &Tree,
        marks: &Marks,
        out: PipelineOutput,
    ) -> Result<()> {
        let base = self.specs.len() as u64;
        let summary = self.add_chunks(name, out)?;
        let mut map = HashMap::new();
        let mut unresolved = HashMap::new();
        for (&id, target) in marks.external.iter().flatten() {
            match self.lookup(target) {
                Some(m) if self.tree.children(m).is_none() => {
                    map.insert(id, m);
                }
                Some(_) => {
                    unresolved.insert(id, "a directory");
                }
                None => {
                    unresolved.insert(id, "not found in this or a lower layer");
                }
            }
        }
        self.whiteouts(layer);
        let ctx = Overlay {
            layer,
            marks,
            base,
            unresolved: &unresolved,
            name,
        };
        self.overlay(&ctx, &mut map)?;
        self.layers.push(summary);
        Ok(())
    }

    /// Appends the layer's chunks (remapping blob indices into the merged
    /// table) and records its blobs.
    fn add_chunks(&mut self, name: &str, out: PipelineOutput) -> Result<LayerSummary> {
        let mut remap = Vec::with_capacity(out.blobs.len());
        let mut summary = LayerSummary {
            name: name.to_owned(),
            bytes_in: out.stats.data_bytes,
            stored_bytes: out.stats.stored_bytes,
            ..LayerSummary::default()
        };
        let new: std::collections::HashSet<[u8; 32]> =
            out.blob_files.iter().map(|(_, id)| *id).collect();
        for b in &out.blobs {
            let hex = hex::encode(b.id);
            if new.contains(&b.id) {
                summary.blobs.push(hex);
            } else {
                summary.dict_blobs.push(hex);
            }
            let at = match self.blobs.iter().position(|g| g.id == b.id) {
                Some(i) => i,
                None => {
                    self.blobs.push(*b);
                    self.blobs.len() - 1
                }
            };
            remap.push(u32::try_from(at).map_err(|_| BuildError::Internal("blob table".into()))?);
        }
        for mut spec in out.specs {
            if spec.flags & CHUNK_HOLE == 0 {
                spec.blob_index = *remap
                    .get(spec.blob_index as usize)
                    .ok_or_else(|| BuildError::Internal("chunk of an unknown blob".into()))?;
            }
            self.specs.push(spec);
        }
        for (path, id) in out.blob_files {
            if !self.blob_files.iter().any(|(_, known)| *known == id) {
                self.blob_files.push((path, id));
            }
        }
        add_stats(&mut self.stats, &out.stats);
        Ok(summary)
    }

    /// The merged node at `path`, if any.
    fn lookup(&self, path: &[Name]) -> Option<NodeId> {
        let mut id = 0;
        for name in path {
            id = *self.tree.children(id)?.get(name)?;
        }
        Some(id)
    }

    /// Applies the layer's whiteouts and opaque markers to the merged
    /// (lower) tree.
    fn whiteouts(&mut self, layer: &Tree) {
        let mut work = vec![(0, 0)];
        while let Some((ldir, mdir)) = work.pop() {
            let Some(lchildren) = layer.children(ldir) else {
                continue;
            };
            if let Some(m) = self.tree.children_mut(mdir) {
                for name in lchildren.keys().filter(|n| is_whiteout(n)) {
                    if name.as_bytes() == OPAQUE {
                        m.clear();
                    } else if let Ok(hidden) = Name::new(&name.as_bytes()[WHITEOUT_PREFIX.len()..])
                    {
                        m.remove(&hidden);
                    }
                }
            }
            for (name, &lchild) in lchildren.iter().filter(|(n, _)| !is_whiteout(n)) {
                if layer.children(lchild).is_none() {
                    continue;
                }
                let lower = self.tree.children(mdir).and_then(|c| c.get(name).copied());
                if let Some(m) = lower.filter(|&m| self.tree.children(m).is_some()) {
                    work.push((lchild, m));
                }
            }
        }
    }

    /// Copies the layer's entries over the merged tree. `map`: layer node
    /// -> merged node, for hardlinks (pre-filled with resolved external
    /// links).
    fn overlay(&mut self, ctx: &Overlay<'_>, map: &mut HashMap<NodeId, NodeId>) -> Result<()> {
        let layer = ctx.layer;
        if !ctx.marks.implicit.contains(&0) {
            self.take_dir_meta(0, layer.node(0));
        }
        let mut work = vec![(0, 0)];
        while let Some((ldir, mdir)) = work.pop() {
            let Some(lchildren) = layer.children(ldir) else {
                continue;
            };
            for (name, &lchild) in lchildren.iter().filter(|(n, _)| !is_whiteout(n)) {
                if layer.children(lchild).is_some() {
                    let target = self.merge_dir(ctx, mdir, name, lchild);
                    work.push((lchild, target));
                    continue;
                }
                let mid = match map.get(&lchild) {
                    Some(&m) => m,
                    None if ctx.unresolved.contains_key(&lchild) => {
                        return Err(BuildError::CorruptArchive {
                            path: ctx.name.to_owned(),
                            reason: format!(
                                "hardlink '{}': target {}",
                                String::from_utf8_lossy(name.as_bytes()),
                                ctx.unresolved[&lchild]
                            ),
                        })
                    }
                    None => {
                        let m = self.tree.add(remapped(layer.node(lchild), ctx.base));
                        map.insert(lchild, m);
                        m
                    }
                };
                if let Some(c) = self.tree.children_mut(mdir) {
                    c.insert(name.clone(), mid);
                }
            }
        }
        Ok(())
    }

    /// The merged directory for the layer's directory `lchild` named
    /// `name` in `mdir`: the lower directory (taking the layer's metadata
    /// unless the layer only implies it), or a new one replacing whatever
    /// else was there.
    fn merge_dir(
        &mut self,
        ctx: &Overlay<'_>,
        mdir: NodeId,
        name: &Name,
        lchild: NodeId,
    ) -> NodeId {
        let lower = self.tree.children(mdir).and_then(|c| c.get(name).copied());
        let explicit = !ctx.marks.implicit.contains(&lchild);
        if let Some(m) = lower.filter(|&m| self.tree.children(m).is_some()) {
            if explicit {
                self.take_dir_meta(m, ctx.layer.node(lchild));
            }
            return m;
        }
        let lnode = ctx.layer.node(lchild);
        let size = match lnode.content {
            Content::Dir { size, .. } => size,
            _ => 0,
        };
        let meta = if explicit {
            lnode.meta.clone()
        } else {
            implicit_dir()
        };
        let m = self.tree.add(Node::dir(meta, size));
        if let Some(c) = self.tree.children_mut(mdir) {
            c.insert(name.clone(), m);
        }
        m
    }

    /// Gives merged directory `m` the metadata and size of layer node `l`.
    fn take_dir_meta(&mut self, m: NodeId, l: &Node) {
        let node = self.tree.node_mut(m);
        node.meta = l.meta.clone();
        if let (Content::Dir { size, .. }, Content::Dir { size: s, .. }) =
            (&l.content, &mut node.content)
        {
            *s = *size;
        }
    }
}

/// The layer being overlaid.
struct Overlay<'a> {
    layer: &'a Tree,
    marks: &'a Marks,
    base: u64,
    /// Lower-layer hardlinks that cannot be made, and why.
    unresolved: &'a HashMap<NodeId, &'static str>,
    name: &'a str,
}

/// A copy of layer node `n` whose chunk sequence numbers are offset by
/// `base` (the chunks of the layers below).
fn remapped(n: &Node, base: u64) -> Node {
    let mut n = n.clone();
    if let Content::File { slots, .. } = &mut n.content {
        for s in slots {
            if let Slot::Data(seq) = s {
                *seq += base;
            }
        }
    }
    n
}

fn add_stats(to: &mut Stats, s: &Stats) {
    to.data_bytes += s.data_bytes;
    to.distinct_bytes += s.distinct_bytes;
    to.stored_bytes += s.stored_bytes;
    to.stored_chunks += s.stored_chunks;
    to.dict_chunks += s.dict_chunks;
    to.frames += s.frames;
    to.batched_chunks += s.batched_chunks;
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
