//! The caches already in the directory when the engine starts: each valid
//! one is opened with the parameters its own map header records (size,
//! granularity, layout) and held like a blob a client opened, its ready
//! ranges accounted as the oldest runs of the LRU; then the directory is
//! evicted down to the limit if it is over.
//!
//! A client opening such a blob with the same parameters gets that entry
//! (nothing is counted twice); with another size, layout or granularity it
//! gets `LayoutConflict`, as for any blob held with other parameters.
//!
//! The directory is listed with [`crate::cache::tools::scan`] and each map
//! read with [`crate::cache::tools::read_map`] (the listing behind `rafs
//! cache ls`), so a map that opening would reset is never opened: bad or
//! foreign files (an invalid map, a map without its data file or with a
//! data file of another length, a file not named like a cache file) are
//! skipped with a warning and left as they are. The cost is one `readdir`
//! and one read of each map, linear in the files and ranges.

use super::Engine;
use crate::backend::BlobId;
use crate::cache::blobfile::data_path;
use crate::cache::tools::{read_map, scan, MapInfo};
use crate::cache::{BlobCache, MapParams};
use crate::manager::lockfile::LOCK_FILE;

impl Engine {
    /// Holds every valid cache in the directory and evicts down to the
    /// limit (see the module docs).
    pub(super) fn adopt_existing(&self) {
        let found = match scan(&self.dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("existing caches not accounted: {e}");
                return;
            }
        };
        let (mut blobs, mut bytes) = (0usize, 0u64);
        for (id, &(data, map)) in &found.blobs {
            match self.adopt(id, data, map) {
                Ok(ready) => (blobs, bytes) = (blobs + 1, bytes + ready),
                Err(why) => {
                    tracing::warn!(blob = %id.to_hex(), "existing cache skipped (left as it is): {why}")
                }
            }
        }
        for name in found.other.iter().filter(|n| n.as_str() != LOCK_FILE) {
            tracing::warn!(
                "{}: not a cache file, ignored",
                self.dir.join(name).display()
            );
        }
        tracing::info!(
            blobs,
            ready_bytes = bytes,
            "existing caches accounted in the quota"
        );
        self.quota.evict(&self.open_blobs());
    }

    /// Opens and holds the cache of `id` if its files are valid; returns
    /// its ready bytes, or why it was skipped.
    fn adopt(&self, id: &BlobId, has_data: bool, has_map: bool) -> Result<u64, String> {
        if !has_map {
            return Err("no map file".into());
        }
        let (blob_size, granularity, layout, ready) =
            match read_map(&self.dir, id).map_err(|e| e.to_string())? {
                MapInfo::Valid {
                    blob_size,
                    granularity,
                    layout,
                    ready_bytes,
                    ..
                } => (blob_size, granularity, layout, ready_bytes),
                MapInfo::Invalid(why) => return Err(format!("invalid map: {why}")),
                MapInfo::Missing => return Err("no map file".into()),
            };
        let data_ok = has_data
            && std::fs::symlink_metadata(data_path(&self.dir, id))
                .is_ok_and(|m| m.is_file() && m.len() == blob_size);
        if !data_ok {
            // Opening would reset the map: leave it to a client's open.
            return Err("data file missing or of the wrong length".into());
        }
        let params = MapParams::new(*id, blob_size, granularity)
            .map_err(|e| e.to_string())?
            .with_layout(layout);
        let mut blobs = self.lock_blobs();
        if blobs.contains_key(id) {
            return Err("already open".into());
        }
        let (cache, _) = BlobCache::open(&self.dir, params).map_err(|e| e.to_string())?;
        self.insert(&mut blobs, params, cache, false);
        Ok(ready)
    }
}
