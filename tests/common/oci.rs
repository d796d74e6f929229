//! OCI image helpers of the integration tests: hand-built layer tars
//! ([`tar_of`]), a reference implementation of the OCI layer rules that
//! applies layers to a real directory ([`Reference`]), a layer set that
//! exercises every rule ([`layers`]), and an OCI image layout written by
//! hand ([`write_layout`]: gzip layers, config, manifest, `index.json`).
//!
//! The layer model is the one `tests/oci_layers.rs` started with.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    Hardlink(&'static str),
}

/// One tar entry.
#[derive(Clone)]
pub struct E {
    pub path: &'static str,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Extended attributes (PAX `SCHILY.xattr.`).
    pub xattrs: Vec<(&'static str, &'static [u8])>,
}

pub fn dir(path: &'static str, mode: u32, mtime: i64) -> E {
    E {
        path,
        kind: Kind::Dir,
        mode,
        uid: 0,
        gid: 0,
        mtime,
        xattrs: Vec::new(),
    }
}

pub fn file(path: &'static str, data: impl Into<Vec<u8>>, mtime: i64) -> E {
    E {
        path,
        kind: Kind::File(data.into()),
        mode: 0o644,
        uid: 1000,
        gid: 100,
        mtime,
        xattrs: Vec::new(),
    }
}

pub fn whiteout(path: &'static str) -> E {
    file(path, Vec::new(), 0)
}

pub fn link(path: &'static str, kind: Kind) -> E {
    E {
        path,
        kind,
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime: 77,
        xattrs: Vec::new(),
    }
}

pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The archive of `entries`, in order.
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let keys: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        let (etype, data): (tar::EntryType, &[u8]) = match &e.kind {
            Kind::Dir => (tar::EntryType::Directory, &[]),
            Kind::File(d) => (tar::EntryType::Regular, d),
            Kind::Symlink(t) | Kind::Hardlink(t) => {
                h.set_link_name(t).unwrap();
                let ty = match e.kind {
                    Kind::Symlink(_) => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                (ty, &[])
            }
        };
        h.set_entry_type(etype);
        h.set_size(data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime as u64);
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Metadata the reference gives a path: mode, uid, gid, mtime, xattrs.
pub type RefMeta = (u32, u32, u32, i64, Vec<(&'static str, &'static [u8])>);

/// The reference implementation: layers applied to a directory.
pub struct Reference {
    root: PathBuf,
    meta: BTreeMap<String, RefMeta>,
}

pub fn split(path: &str) -> (&str, &str) {
    let p = path.trim_end_matches('/');
    p.rsplit_once('/').unwrap_or(("", p))
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

pub fn remove_all(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

impl Reference {
    pub fn new(root: &Path) -> Reference {
        fs::create_dir(root).unwrap();
        let mut meta = BTreeMap::new();
        meta.insert(String::new(), (0o755, 0, 0, 0, Vec::new()));
        Reference {
            root: root.to_owned(),
            meta,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn is_dir(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok_and(|m| m.is_dir())
    }

    fn remove(&mut self, rel: &str) {
        remove_all(&self.path(rel));
        let prefix = format!("{rel}/");
        self.meta.retain(|k, _| k != rel && !k.starts_with(&prefix));
    }

    /// Parent directories of `rel`: a missing one (or a non-directory in
    /// the way) becomes a new directory 0755 0:0 mtime 0.
    fn parents(&mut self, rel: &str) {
        let mut at = String::new();
        let (dir, _) = split(rel);
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            at = join(&at, comp);
            if !self.is_dir(&at) {
                self.remove(&at);
                fs::create_dir(self.path(&at)).unwrap();
                self.meta.insert(at.clone(), (0o755, 0, 0, 0, Vec::new()));
            }
        }
    }

    pub fn apply(&mut self, layer: &[E]) {
        // Whiteouts first: the directory holds only the lower layers now.
        for e in layer {
            let (dir, base) = split(e.path);
            if base == ".wh..wh..opq" {
                if self.is_dir(dir) {
                    for c in fs::read_dir(self.path(dir)).unwrap() {
                        let name = c.unwrap().file_name().into_string().unwrap();
                        self.remove(&join(dir, &name));
                    }
                }
            } else if let Some(hidden) = base.strip_prefix(".wh.") {
                self.remove(&join(dir, hidden));
            }
        }
        for e in layer
            .iter()
            .filter(|e| !split(e.path).1.starts_with(".wh."))
        {
            let rel = e.path.trim_end_matches('/').trim_start_matches("./");
            let m = (e.mode, e.uid, e.gid, e.mtime, e.xattrs.clone());
            if rel.is_empty() || rel == "." {
                self.meta.insert(String::new(), m);
                continue;
            }
            self.parents(rel);
            let p = self.path(rel);
            let m = match &e.kind {
                Kind::Dir => {
                    if !self.is_dir(rel) {
                        self.remove(rel);
                        fs::create_dir(&p).unwrap();
                    }
                    m
                }
                Kind::File(d) => {
                    self.remove(rel);
                    fs::write(&p, d).unwrap();
                    m
                }
                Kind::Symlink(t) => {
                    self.remove(rel);
                    symlink(t, &p).unwrap();
                    m
                }
                Kind::Hardlink(t) => {
                    self.remove(rel);
                    fs::hard_link(self.path(t), &p).unwrap();
                    self.meta[*t].clone()
                }
            };
            self.meta.insert(rel.to_owned(), m);
        }
    }

    /// Sets the recorded metadata (after all layers: extraction changes
    /// directory mtimes).
    pub fn finish(&self) {
        for (rel, (mode, uid, gid, mtime, xattrs)) in &self.meta {
            let p = self.path(rel);
            let is_link = fs::symlink_metadata(&p).unwrap().is_symlink();
            lchown(&p, Some(*uid), Some(*gid)).unwrap();
            if !is_link {
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            }
            for (k, v) in xattrs {
                xattr::set(&p, k, v).unwrap();
            }
            let t = filetime::FileTime::from_unix_time(*mtime, 0);
            filetime::set_symlink_file_times(&p, t, t).unwrap();
        }
    }
}

/// Four layers covering every rule; the third has whiteouts only.
pub fn layers() -> Vec<Vec<E>> {
    let l1 = vec![
        dir("./", 0o755, 5),
        E {
            xattrs: vec![("user.dir", b"etc"), ("trusted.t", b"\n\0")],
            ..dir("etc/", 0o750, 1111)
        },
        file("etc/keep", "keep", 10),
        file("etc/change", "old", 100),
        file("etc/remove", "remove me", 10),
        dir("usr/", 0o755, 2000),
        E {
            gid: 7,
            ..dir("usr/lib/", 0o700, 2222)
        },
        file("usr/lib/libfoo", noise(300_000, 1), 10),
        dir("opq/", 0o755, 3000),
        file("opq/a", "a", 10),
        dir("opq/sub/", 0o755, 3001),
        file("opq/sub/b", "b", 10),
        dir("gone/", 0o755, 10),
        file("gone/x", "x", 10),
        dir("gone/deep/", 0o755, 10),
        file("gone/deep/y", noise(10_000, 2), 10),
        file("f2d", "a file, later a directory", 10),
        dir("d2f/", 0o711, 4000),
        file("d2f/z", "z", 10),
        dir("bin/", 0o755, 10),
        E {
            mode: 0o755,
            ..file("bin/tool", noise(50_000, 3), 10)
        },
        link("lnk", Kind::Symlink("etc/keep")),
    ];
    let l2 = vec![
        E {
            xattrs: vec![("user.v", b"2")],
            ..file("etc/change", noise(20_000, 4), 200)
        },
        whiteout("etc/.wh.remove"),
        file("opq/new", "new", 20),
        whiteout("opq/.wh..wh..opq"),
        whiteout(".wh.gone"),
        dir("f2d/", 0o755, 5000),
        file("f2d/inner", "inner", 20),
        file("d2f", "now a file", 20),
        file("usr/lib/libbar", "bar", 20),
        link("hl", Kind::Hardlink("bin/tool")),
        file("same", "whiteouts do not apply to their own layer", 20),
        whiteout(".wh.same"),
    ];
    let l3 = vec![
        whiteout(".wh.lnk"),
        whiteout("etc/.wh.keep"),
        whiteout("bin/.wh.tool"),
    ];
    let l4 = vec![
        file("gone/fresh", "fresh", 30),
        link("gone/fresh2", Kind::Hardlink("gone/fresh")),
        dir("opq/sub/", 0o700, 6000),
    ];
    vec![l1, l2, l3, l4]
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// gzip of `bytes` (fixed header: no timestamp).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Stores `bytes` as a blob of layout `dir`; returns its descriptor.
pub fn put_blob(dir: &Path, media: &str, bytes: &[u8]) -> Value {
    let d = digest(bytes);
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(&d[7..]), bytes).unwrap();
    json!({"mediaType": media, "digest": d, "size": bytes.len()})
}

/// The image config the layout images carry.
pub fn image_config(layers: usize) -> Value {
    json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/tool", "--flag"],
            "Cmd": ["arg"],
            "Env": ["PATH=/usr/bin:/bin", "RAFS_TEST=yes"],
            "User": "1000:100",
            "WorkingDir": "/etc",
        },
        "rootfs": {"type": "layers", "diff_ids": vec!["sha256:".to_owned() + &"0".repeat(64); layers]},
    })
}

/// This machine's architecture in GOARCH names.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes an OCI image layout at `dir`: `layers` gzip-compressed, the
/// [`image_config`], a manifest and an `index.json` naming it `tag`.
/// Returns (manifest digest, config bytes, layer descriptors).
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<E>]) -> (String, Vec<u8>, Vec<Value>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            put_blob(
                dir,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gzip(&tar_of(l)),
            )
        })
        .collect();
    let config = serde_json::to_vec(&image_config(layers.len())).unwrap();
    let cdesc = put_blob(dir, "application/vnd.oci.image.config.v1+json", &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc,
        "layers": descs,
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mut mdesc = put_blob(dir, "application/vnd.oci.image.manifest.v1+json", &mbytes);
    mdesc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [mdesc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (digest(&mbytes), config, descs)
}

/// The tree `layers` make, applied by the [`Reference`] at `root`.
pub fn reference_tree(root: &Path, layers: &[Vec<E>]) {
    let mut r = Reference::new(root);
    for l in layers {
        r.apply(l);
    }
    r.finish();
}
