//! `http://` / `https://`: blobs behind plain HTTP range requests (a web
//! server's directory, a CDN, presigned URLs).
//!
//! Blob `hex` lives at [`blob_url`]: the URL with `{blob}` replaced, or
//! `/<hex>` appended. Every read is one range GET through the shared
//! [`HttpClient`], which checks the answer strictly (`206` with a
//! matching `Content-Range` and body length). Sizes come from a one-byte
//! range GET and are cached for the backend's life: blobs are immutable,
//! so a size never changes. A cached size also answers zero-length reads
//! and refuses ranges past the end without a request.

use super::client::{answer_locally, HttpClient};
use super::{Backend, BackendError, BackendOptions, BlobId};
use std::collections::HashMap;
use std::sync::Mutex;

/// The URL of blob `hex` under an HTTP template: `{blob}` replaced by
/// the id, or `/<hex>` appended when the template has no `{blob}`.
pub fn blob_url(template: &str, hex: &str) -> String {
    if template.contains("{blob}") {
        template.replace("{blob}", hex)
    } else {
        format!("{}/{hex}", template.trim_end_matches('/'))
    }
}

/// Blobs behind a URL template.
#[derive(Debug)]
pub struct HttpBackend {
    client: HttpClient,
    template: String,
    sizes: Mutex<HashMap<BlobId, u64>>,
}

impl HttpBackend {
    /// Sets up the backend for `template` (no request is made here).
    pub fn open(template: &str, opts: &BackendOptions) -> Result<HttpBackend, BackendError> {
        let lower = template.to_ascii_lowercase();
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Err(BackendError::Config(format!(
                "http backend: '{template}' is not an http(s) URL"
            )));
        }
        Ok(HttpBackend {
            client: HttpClient::new(opts)?,
            template: template.to_owned(),
            sizes: Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, id: &BlobId) -> String {
        blob_url(&self.template, &id.to_hex())
    }

    fn cached_size(&self, id: &BlobId) -> Option<u64> {
        // A poisoned lock only means another reader panicked mid-insert of
        // a plain u64: the map is still consistent.
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.get(id).copied()
    }
}

impl Backend for HttpBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        super::collect_range(len, |sink| self.read_range_to(id, offset, len, sink))
    }

    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let known = self.cached_size(id);
        if let Some(answer) = answer_locally(id, offset, len, known, || self.blob_size(id)) {
            return answer;
        }
        self.client
            .get_range_to(id, &self.url(id), &[], offset, len, sink)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        if let Some(size) = self.cached_size(id) {
            return Ok(size);
        }
        let size = self.client.size_of(id, &self.url(id), &[])?;
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.insert(*id, size);
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_and_bad_schemes() {
        let opts = BackendOptions::default();
        let b = HttpBackend::open("http://h/blobs/", &opts).unwrap();
        let id = BlobId([0xab; 32]);
        assert_eq!(b.url(&id), format!("http://h/blobs/{}", id.to_hex()));
        let b = HttpBackend::open("https://h/x/{blob}.bin?sig=1", &opts).unwrap();
        assert_eq!(b.url(&id), format!("https://h/x/{}.bin?sig=1", id.to_hex()));
        assert!(matches!(
            HttpBackend::open("ftp://h/", &opts),
            Err(BackendError::Config(_))
        ));
        assert_eq!(
            blob_url("https://cdn.example/blobs/", "ab"),
            "https://cdn.example/blobs/ab"
        );
        assert_eq!(
            blob_url("http://h/b/{blob}.bin?x=1", "ab"),
            "http://h/b/ab.bin?x=1"
        );
    }
}
