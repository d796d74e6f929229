//! `rafs mount docker://host/repo:tag MNT`: resolves a reference to a
//! verified bootstrap on disk (`docs/IMAGE.md`, "Pulling").
//!
//! The manifest is always fetched (a tag may have moved) and checked
//! against a digest given in the reference. Config and bootstrap are kept
//! in `CACHE/images/<hex of the manifest digest>/{config.json,bootstrap}`
//! with `--cache-dir`, else in a private temporary directory removed when
//! the mount ends. A kept file is reused only if it still hashes to the
//! manifest's digest (and the bootstrap still validates against the
//! manifest's blob layers); otherwise it is fetched again and replaced
//! atomically. Blobs come from the same repository, lazily.
//!
//! A mount holds a shared `flock` on its kept image's directory for its
//! whole life ([`Resolved`] owns it): `rafs cache gc` takes it exclusively
//! (non-blocking) before removing a kept image and leaves a busy one
//! alone. If gc removed the directory between our `mkdir` and our lock,
//! the directory we locked is no longer the one at the path: we start
//! again.

use crate::backend::registry::session::RegistryClient;
use crate::backend::url::BackendUrl;
use crate::backend::BackendOptions;
use crate::oci::manifest::{self, Content, BOOTSTRAP_LIMIT, CONFIG_LIMIT};
use crate::oci::pull::{check_bootstrap, get_document, rafs_manifest, verify, write_atomic};
use crate::oci::{client, OciError, Reference, RegistryOptions};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The image a mount serves when its bootstrap argument is a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The reference given.
    pub reference: Reference,
    /// Talk plain HTTP to the registry.
    pub plain_http: bool,
}

impl ImageSource {
    /// The registry backend of the image's repository.
    pub fn backend(&self) -> BackendUrl {
        BackendUrl::Registry {
            tls: !self.plain_http,
            host: self.reference.host.clone(),
            repo: self.reference.repo.clone(),
        }
    }
}

/// A resolved image: where its verified bootstrap and config are.
#[derive(Debug)]
pub struct Resolved {
    /// The manifest digest (`sha256:<hex>`).
    pub digest: String,
    /// The verified bootstrap.
    pub bootstrap: PathBuf,
    /// The verified image config.
    pub config: PathBuf,
    /// Whether the bootstrap was already kept (no bootstrap download).
    pub reused_bootstrap: bool,
    /// The private directory removed on drop (no cache dir given).
    _private: Option<PrivateDir>,
    /// The shared lock on the kept image's directory (with a cache dir).
    _hold: Option<Flock<File>>,
}

/// A directory removed with its contents on drop.
#[derive(Debug)]
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<PrivateDir, OciError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("rafs-image-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| OciError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches and verifies `src`'s manifest, config and bootstrap, keeping
/// them under `cache_dir/images/<hex>` (or a private directory).
pub fn resolve(
    src: &ImageSource,
    backend: &BackendOptions,
    cache_dir: Option<&Path>,
) -> Result<Resolved, OciError> {
    let r = &src.reference;
    let name = r.to_string();
    let opts = RegistryOptions {
        backend: backend.clone(),
        plain_http: src.plain_http,
    };
    let client = client(r, &opts, Vec::new())?;
    let (_, digest, m) = rafs_manifest(&client, r)?;
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let (dir, private, hold) = match cache_dir {
        Some(c) => {
            let dir = c.join("images").join(&hex);
            let hold = hold_kept_dir(&dir)?;
            (dir, None, Some(hold))
        }
        None => {
            let p = PrivateDir::create()?;
            (p.0.clone(), Some(p), None)
        }
    };
    let check_cfg = |b: &[u8]| manifest::check_config(b, &format!("{name}: config"));
    obtain(
        &client,
        &dir,
        "config.json",
        &m.config,
        CONFIG_LIMIT,
        &check_cfg,
    )?;
    let check_boot = |b: &[u8]| check_bootstrap(b, &m, &name);
    let reused = obtain(
        &client,
        &dir,
        "bootstrap",
        &m.bootstrap,
        BOOTSTRAP_LIMIT,
        &check_boot,
    )?;
    Ok(Resolved {
        digest,
        bootstrap: dir.join("bootstrap"),
        config: dir.join("config.json"),
        reused_bootstrap: reused,
        _private: private,
        _hold: hold,
    })
}

/// Creates the kept image directory `dir` if needed and takes a shared
/// `flock` on it (waiting while a gc holds it exclusively), making sure
/// the directory locked is still the one at `dir`.
pub fn hold_kept_dir(dir: &Path) -> Result<Flock<File>, OciError> {
    let io = |source| OciError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for _ in 0..8 {
        std::fs::create_dir_all(dir).map_err(io)?;
        let f = match File::open(dir) {
            Ok(f) => f,
            // Removed by a gc right after the mkdir: again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let lock = Flock::lock(f, FlockArg::LockShared).map_err(|(_, e)| io(e.into()))?;
        let held = lock.metadata().map_err(io)?;
        match std::fs::metadata(dir) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(lock),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other(
        "removed again and again while being locked (a gc loop?)",
    )))
}

/// `dir/name` if it is kept and still verifies against `c` and `check`,
/// else fetched, checked and written: whether it was kept.
fn obtain(
    client: &RegistryClient,
    dir: &Path,
    name: &str,
    c: &Content,
    limit: u64,
    check: &dyn Fn(&[u8]) -> Result<(), OciError>,
) -> Result<bool, OciError> {
    let what = format!("{name} {}", c.digest());
    if let Some(bytes) = read_kept(&dir.join(name), c, limit) {
        match verify(&bytes, c, &what).and_then(|()| check(&bytes)) {
            Ok(()) => return Ok(true),
            Err(e) => tracing::warn!(
                "kept {name} in {} is bad, fetching again: {e}",
                dir.display()
            ),
        }
    }
    let doc = if name == "bootstrap" {
        "bootstrap"
    } else {
        "config"
    };
    let bytes = get_document(client, c, limit, doc)?;
    check(&bytes)?;
    write_atomic(dir, name, &bytes)?;
    Ok(false)
}

/// The kept file's bytes, if it exists with the expected size (at most
/// `limit` bytes are read).
fn read_kept(path: &Path, c: &Content, limit: u64) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len != c.size || len > limit {
        return None;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
