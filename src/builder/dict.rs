//! Chunk dictionaries (`--chunk-dict`): reusing another image's chunks.
//!
//! The dictionary is an existing bootstrap. Every data chunk in its chunk
//! table is indexed by blake3 digest; a chunk of the new image with the same
//! digest is not stored again but references the dictionary's blob, which
//! joins the new blob table on first use (and only then). The dictionary's
//! blobs are not copied: they must already be where the image's blobs are
//! served from, e.g. a shared blob directory. The bootstrap is validated
//! before use, so its chunk entries satisfy every format invariant.

use super::error::Result;
use crate::image::Image;
use rafs_format::layout::BlobInfo;
use rafs_format::ChunkSpec;
use std::collections::HashMap;
use std::path::Path;

/// An indexed dictionary.
#[derive(Debug, Default, Clone)]
pub struct Dict {
    /// The dictionary's blob table.
    pub blobs: Vec<BlobInfo>,
    /// Data chunks by digest; `blob_index` indexes [`Dict::blobs`].
    pub chunks: HashMap<[u8; 32], ChunkSpec>,
}

impl Dict {
    /// Opens, validates and indexes the bootstrap at `path`.
    pub fn open(path: &Path) -> Result<Dict> {
        let image = Image::open(path)?;
        let b = image.bootstrap()?;
        let mut chunks = HashMap::new();
        for c in b.chunks().iter().filter(|c| !c.is_hole()) {
            chunks.entry(c.digest).or_insert(ChunkSpec::from(c));
        }
        Ok(Dict {
            blobs: b.blobs().to_vec(),
            chunks,
        })
    }
}
