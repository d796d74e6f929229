//! Where the data blobs of an image come from when they are not in its
//! build output: a chunk dictionary (`--chunk-dict`) makes the new
//! bootstrap name blobs of an older image, which the destination must
//! serve too (`docs/IMAGE.md`, "Chunk dictionaries").
//!
//! A source is either a `rafs create` output directory (`DIR/blobs/<hex>`,
//! or `DIR/<hex>`) or a rafs image in a registry. Every blob of the new
//! bootstrap is located before anything is written to the destination
//! ([`Sources::locate`]): a blob found nowhere is an error naming it. A registry
//! source's blobs are those its verified manifest lists.

use super::manifest::Content;
use super::{client, pull, OciError, Reference, RegistryOptions};
use crate::backend::registry::session::RegistryClient;
use crate::backend::BlobId;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A place to find blobs in, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobsFrom {
    /// A `rafs create` output directory (or a directory of blobs).
    Dir(PathBuf),
    /// A rafs image in a registry.
    Image(Reference),
}

impl BlobsFrom {
    /// `docker://REF` is an image, anything else a directory.
    pub fn parse(s: &str) -> Result<BlobsFrom, OciError> {
        if s.starts_with("docker://") {
            Ok(BlobsFrom::Image(Reference::parse(s)?))
        } else {
            Ok(BlobsFrom::Dir(PathBuf::from(s)))
        }
    }
}

/// An opened registry source: a client of its repository and the blobs its
/// manifest lists.
pub(crate) struct ImageSource {
    /// The image.
    pub reference: Reference,
    /// Pull access to its repository.
    pub client: RegistryClient,
    /// Its data blobs.
    pub blobs: HashSet<BlobId>,
}

impl ImageSource {
    /// The repository to cross-mount this source's blobs from into `dest`:
    /// only on the same registry, and only from another repository.
    pub fn mount_repo_for(&self, dest: &Reference) -> Option<&str> {
        let r = &self.reference;
        (r.host == dest.host && r.repo != dest.repo).then_some(r.repo.as_str())
    }
}

/// Opened sources, in the order given.
#[derive(Default)]
pub(crate) struct Sources {
    dirs: Vec<PathBuf>,
    /// The registry sources.
    pub images: Vec<ImageSource>,
}

/// Where one blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A local file of the right size.
    File(PathBuf),
    /// `Sources::images[i]`.
    Image(usize),
}

impl Sources {
    /// Opens `from`: each registry source's manifest is fetched and
    /// verified (a non-rafs image is an error).
    pub fn open(from: &[BlobsFrom], opts: &RegistryOptions) -> Result<Sources, OciError> {
        let mut s = Sources::default();
        for f in from {
            match f {
                BlobsFrom::Dir(d) => s.dirs.push(d.clone()),
                BlobsFrom::Image(r) => {
                    let c = client(r, opts, vec![format!("repository:{}:pull", r.repo)])?;
                    let (_, _, m) = pull::rafs_manifest(&c, r)?;
                    s.images.push(ImageSource {
                        reference: r.clone(),
                        client: c,
                        blobs: m.blobs.iter().map(|b| b.id).collect(),
                    });
                }
            }
        }
        Ok(s)
    }

    /// Where blob `c` is: `outdir/blobs/<hex>`, else a directory source,
    /// else a registry source that lists it.
    pub fn locate(&self, outdir: &Path, c: &Content) -> Result<Origin, OciError> {
        let hex = c.id.to_hex();
        let mut candidates = vec![outdir.join("blobs").join(&hex)];
        for d in &self.dirs {
            candidates.push(d.join("blobs").join(&hex));
            candidates.push(d.join(&hex));
        }
        for p in candidates {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && m.len() == c.size => return Ok(Origin::File(p)),
                Ok(m) if m.is_file() => {
                    let why = format!("{} bytes, the bootstrap says {}", m.len(), c.size);
                    return Err(OciError::invalid(p.display().to_string(), why));
                }
                _ => {}
            }
        }
        match self.images.iter().position(|i| i.blobs.contains(&c.id)) {
            Some(i) => Ok(Origin::Image(i)),
            None => Err(OciError::MissingBlob {
                digest: c.digest(),
                searched: self.describe(outdir),
            }),
        }
    }

    /// The places searched, for an error message.
    fn describe(&self, outdir: &Path) -> String {
        let mut v = vec![outdir.join("blobs").display().to_string()];
        v.extend(self.dirs.iter().map(|d| d.display().to_string()));
        v.extend(self.images.iter().map(|i| i.reference.to_string()));
        v.join(", ")
    }

    /// Registry sources on the host of `r`: their repositories can be
    /// mounted from (cross-repository blob mount).
    pub fn same_registry_repos(&self, r: &Reference) -> Vec<String> {
        self.images
            .iter()
            .filter_map(|i| i.mount_repo_for(r).map(str::to_owned))
            .collect()
    }

    /// Copies blob `c` of registry source `i` into `dir/<hex>`, verified.
    pub fn download(&self, i: usize, c: &Content, dir: &Path) -> Result<PathBuf, OciError> {
        let src = self
            .images
            .get(i)
            .ok_or_else(|| OciError::invalid("blob sources", "no such source"))?;
        pull::download(&src.client, c, dir, &indicatif::ProgressBar::hidden())?;
        Ok(dir.join(c.id.to_hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_images_from_directories() {
        assert_eq!(
            BlobsFrom::parse("/tmp/out").unwrap(),
            BlobsFrom::Dir("/tmp/out".into())
        );
        match BlobsFrom::parse("docker://127.0.0.1:5000/a/b:v1").unwrap() {
            BlobsFrom::Image(r) => {
                assert_eq!((r.repo.as_str(), r.tag.as_deref()), ("a/b", Some("v1")))
            }
            other => panic!("{other:?}"),
        }
        assert!(BlobsFrom::parse("docker://").is_err());
    }

    #[test]
    fn locate_prefers_the_output_then_dirs_and_names_a_missing_blob() {
        let t = tempfile::tempdir().unwrap();
        let (out, dict) = (t.path().join("out"), t.path().join("dict"));
        std::fs::create_dir_all(out.join("blobs")).unwrap();
        std::fs::create_dir_all(dict.join("blobs")).unwrap();
        let a = Content::of(b"aaaa");
        let b = Content::of(b"bbbbbb");
        let missing = Content::of(b"zz");
        std::fs::write(out.join("blobs").join(a.id.to_hex()), b"aaaa").unwrap();
        std::fs::write(dict.join("blobs").join(b.id.to_hex()), b"bbbbbb").unwrap();
        let s = Sources {
            dirs: vec![dict.clone()],
            images: Vec::new(),
        };
        assert_eq!(
            s.locate(&out, &a).unwrap(),
            Origin::File(out.join("blobs").join(a.id.to_hex()))
        );
        assert_eq!(
            s.locate(&out, &b).unwrap(),
            Origin::File(dict.join("blobs").join(b.id.to_hex()))
        );
        match s.locate(&out, &missing) {
            Err(OciError::MissingBlob { digest, searched }) => {
                assert_eq!(digest, missing.digest());
                assert!(searched.contains(&dict.display().to_string()), "{searched}");
            }
            other => panic!("{other:?}"),
        }
        // A file of the wrong size is an error, not a match.
        std::fs::write(dict.join(missing.id.to_hex()), b"zzz").unwrap();
        assert!(matches!(
            s.locate(&out, &missing),
            Err(OciError::Invalid { .. })
        ));
    }
}
