//! Multi-layer OCI images: `rafs create L1 L2 ... -o OUT`.
//!
//! Layers are hand-built tars (the `tar` crate). The expected tree is made
//! by a small reference implementation of the OCI layer rules (image-spec
//! `layer.md`) that applies the layers to a real directory with plain
//! filesystem calls; `rafs unpack` of the built image must equal it in every
//! field the tree comparator checks (type, mode, owner, size, links, mtime,
//! content, xattrs). Also checked: one blob per layer with data, none for a
//! whiteout-only layer, identical output for identical input, shared blob
//! ids for a shared base layer, compressed layers, and errors.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::{blob_names, rafs, tempdir, unpack};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    Hardlink(&'static str),
}

/// One tar entry.
#[derive(Clone)]
struct E {
    path: &'static str,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// Extended attributes (PAX `SCHILY.xattr.`).
    xattrs: Vec<(&'static str, &'static [u8])>,
}

fn dir(path: &'static str, mode: u32, mtime: i64) -> E {
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

fn file(path: &'static str, data: impl Into<Vec<u8>>, mtime: i64) -> E {
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

fn whiteout(path: &'static str) -> E {
    file(path, Vec::new(), 0)
}

fn link(path: &'static str, kind: Kind) -> E {
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

fn noise(len: usize, seed: u64) -> Vec<u8> {
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
fn tar_of(entries: &[E]) -> Vec<u8> {
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
type RefMeta = (u32, u32, u32, i64, Vec<(&'static str, &'static [u8])>);

/// The reference implementation: layers applied to a directory.
struct Reference {
    root: PathBuf,
    meta: BTreeMap<String, RefMeta>,
}

fn split(path: &str) -> (&str, &str) {
    let p = path.trim_end_matches('/');
    p.rsplit_once('/').unwrap_or(("", p))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn remove_all(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

impl Reference {
    fn new(root: &Path) -> Reference {
        fs::create_dir(root).unwrap();
        let mut meta = BTreeMap::new();
        meta.insert(String::new(), (0o755, 0, 0, 0, Vec::new()));
        Reference {
            root: root.to_owned(),
            meta,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
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

    fn apply(&mut self, layer: &[E]) {
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
    fn finish(&self) {
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
fn layers() -> Vec<Vec<E>> {
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

/// Writes the layers as `dir/layer-N.tar`.
fn write_layers(dir: &Path, layers: &[Vec<E>]) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("layer-{i}.tar"));
            fs::write(&p, tar_of(l)).unwrap();
            p
        })
        .collect()
}

/// `rafs create LAYERS... -o OUT --json`, parsed.
fn create_json(layers: &[PathBuf], out: &Path) -> serde_json::Value {
    let mut a = args!["create"];
    a.extend(layers.iter().map(|p| p.into()));
    a.extend(args![
        "-o",
        out,
        "--no-progress",
        "--json",
        "--chunker",
        "fixed"
    ]);
    a.extend(args!["--chunk-size", "16K", "--threads", "2"]);
    let r = rafs(&a).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

fn layer_blobs(summary: &serde_json::Value) -> Vec<Vec<String>> {
    summary["layers"]
        .as_array()
        .expect("layers in the summary")
        .iter()
        .map(|l| {
            l["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

fn no_whiteouts(root: &Path) {
    for p in common::list_recursive(root) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "{} survived", p.display());
    }
}

#[test]
fn merged_image_equals_the_reference() {
    let tmp = tempdir();
    let layers = layers();
    let paths = write_layers(tmp.path(), &layers);
    let out = tmp.path().join("out");
    let summary = create_json(&paths, &out);
    let per_layer = layer_blobs(&summary);
    assert_eq!(per_layer.len(), 4);
    for (i, blobs) in per_layer.iter().enumerate() {
        // The whiteout-only layer has no data and so no blob.
        assert_eq!(blobs.len(), usize::from(i != 2), "layer {i}: {blobs:?}");
    }
    let mut all: Vec<String> = per_layer.concat();
    all.sort();
    assert_eq!(blob_names(&out.join("blobs")), all);

    let reference = tmp.path().join("reference");
    let mut r = Reference::new(&reference);
    for l in &layers {
        r.apply(l);
    }
    r.finish();
    let unpacked = tmp.path().join("unpacked");
    unpack(&out.join("bootstrap"), &out.join("blobs"), &unpacked);
    assert_same_tree(&reference, &unpacked, &exclude_none);
    no_whiteouts(&unpacked);
    // The reference really exercised the rules.
    assert!(unpacked.join("same").is_file() && !unpacked.join("gone/x").exists());
    assert_eq!(fs::read(unpacked.join("opq/new")).unwrap(), b"new");
    assert!(!unpacked.join("opq/a").exists() && unpacked.join("opq/sub").is_dir());
    assert_eq!(fs::read(unpacked.join("hl")).unwrap(), noise(50_000, 3));
}

#[test]
fn same_layers_same_image_and_shared_base_blobs() {
    let tmp = tempdir();
    let layers = layers();
    let paths = write_layers(tmp.path(), &layers);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = create_json(&paths, &a);
    let sb = create_json(&paths, &b);
    assert_eq!(
        fs::read(a.join("bootstrap")).unwrap(),
        fs::read(b.join("bootstrap")).unwrap()
    );
    assert_eq!(layer_blobs(&sa), layer_blobs(&sb));
    assert_eq!(blob_names(&a.join("blobs")), blob_names(&b.join("blobs")));

    // Another image on the same base layer shares the base's blob only.
    let other = tmp.path().join("other.tar");
    fs::write(&other, tar_of(&[file("etc/change", noise(30_000, 9), 1)])).unwrap();
    let c = tmp.path().join("c");
    let sc = create_json(&[paths[0].clone(), other], &c);
    let (ab, cb) = (layer_blobs(&sa), layer_blobs(&sc));
    assert_eq!(ab[0], cb[0]);
    assert_ne!(ab[1], cb[1]);

    // Compressed layers give the same image as plain ones.
    let gz = tmp.path().join("layer-1.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&fs::read(&paths[1]).unwrap()).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let zst = tmp.path().join("layer-3.tar.zst");
    fs::write(
        &zst,
        zstd::encode_all(&fs::read(&paths[3]).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    let d = tmp.path().join("d");
    let compressed = [paths[0].clone(), gz, paths[2].clone(), zst];
    let sd = create_json(&compressed, &d);
    assert_eq!(layer_blobs(&sd), layer_blobs(&sa));
    assert_eq!(
        fs::read(d.join("bootstrap")).unwrap(),
        fs::read(a.join("bootstrap")).unwrap()
    );
}

#[test]
fn one_source_keeps_whiteouts_and_bad_layers_fail_cleanly() {
    let tmp = tempdir();
    let paths = write_layers(tmp.path(), &layers());
    // One tar: today's behaviour, whiteouts kept verbatim, no layer list.
    let single = tmp.path().join("single");
    let s = create_json(&paths[2..3], &single);
    assert!(s.get("layers").is_none(), "{s:#}");
    let unpacked = tmp.path().join("unpacked");
    unpack(&single.join("bootstrap"), &single.join("blobs"), &unpacked);
    assert!(unpacked.join(".wh.lnk").is_file());

    // A hardlink to a file no layer has: an error, no output left.
    let bad = tmp.path().join("bad.tar");
    fs::write(&bad, tar_of(&[link("x", Kind::Hardlink("nowhere"))])).unwrap();
    let out = tmp.path().join("out");
    let r = rafs(args![
        "create",
        &paths[0],
        &bad,
        "-o",
        &out,
        "--no-progress"
    ])
    .failed();
    assert!(
        r.stderr.contains("nowhere") || r.stderr.contains("target"),
        "{r}"
    );
    assert!(!out.exists());
    // A missing layer is named.
    let missing = tmp.path().join("missing.tar");
    let r = rafs(args!["create", &paths[0], &missing, "-o", &out]).failed();
    assert!(r.stderr.contains("missing.tar"), "{r}");
    assert!(!out.exists());
    // A directory among several sources.
    let r = rafs(args!["create", &paths[0], tmp.path(), "-o", &out]).failed();
    assert!(r.stderr.contains("tar"), "{r}");
    assert!(!out.exists());
}
