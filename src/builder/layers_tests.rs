//! Layer merge tests: in-memory layer tars through [`build_layers`], read
//! back from the bootstrap. The whole-image comparison against a reference
//! implementation is `tests/oci_layers.rs`.

use crate::builder::layers::LayerInput;
use crate::builder::tests::{noise, opts, Built};
use crate::builder::{build_layers, BuildError};
use rafs_format::layout::*;
use std::fs;
use std::io::Cursor;
use tar::EntryType;

/// A layer under construction.
#[derive(Default)]
struct Layer(Vec<(tar::Header, Vec<u8>)>);

impl Layer {
    fn add(&mut self, path: &str, etype: EntryType, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(etype);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_000);
        h.set_uid(0);
        h.set_gid(0);
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.push((h, data.to_vec()));
        self
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.add(path, EntryType::Regular, 0o644, data)
    }
    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(path, EntryType::Directory, mode, b"")
    }
    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(path, EntryType::Link, 0o644, b"");
        let h = &mut self.0.last_mut().unwrap().0;
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self
    }
    /// A PAX `path` record, then a file.
    fn long_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", path.as_bytes())])
            .unwrap();
        let pax = b.get_ref().clone();
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes().copy_from_slice(&pax[..512]);
        self.0.push((h, pax[512..].to_vec()));
        self.file("placeholder", data)
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in &self.0 {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend([0u8; 1024]);
        out
    }
}

fn inputs(layers: &[&Layer]) -> Vec<crate::builder::error::Result<LayerInput>> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LayerInput {
                name: format!("layer{i}"),
                stream: Box::new(Cursor::new(l.bytes())),
            })
        })
        .collect()
}

fn build(dir: &tempfile::TempDir, name: &str, layers: &[&Layer]) -> Built {
    let o = opts(dir.path(), &dir.path().join(name));
    let summary = build_layers(&o, inputs(layers)).expect("build");
    let boot = fs::read(o.output.join("bootstrap")).unwrap();
    rafs_format::Bootstrap::open(&boot).expect("valid bootstrap");
    Built {
        out: o.output.clone(),
        summary,
        boot,
    }
}

fn fail(dir: &tempfile::TempDir, layers: &[&Layer]) -> BuildError {
    let out = dir.path().join("failed");
    let err = build_layers(&opts(dir.path(), &out), inputs(layers)).unwrap_err();
    assert!(!out.exists(), "failed build left OUTDIR behind");
    err
}

fn exists(b: &Built, path: &str) -> bool {
    b.b().resolve(path.as_bytes()).unwrap().is_some()
}

#[test]
fn whiteouts_hide_lower_entries_whatever_the_name_order() {
    let mut l1 = Layer::default();
    // '-' sorts before ".wh.-x"; 'z' after it.
    l1.dir("-x/", 0o700)
        .file("-x/old", b"old")
        .file("z", b"z")
        .file("keep", b"k");
    let mut l2 = Layer::default();
    l2.file("-x/new", b"new")
        .file("d/.wh..wh..opq", b"")
        .file(".wh.-x", b"")
        .file(".wh.z", b"")
        .file(".wh.", b"")
        .file(".wh.nothing", b"");
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &l2]);
    assert!(!exists(&b, "-x/old") && !exists(&b, "z"));
    assert_eq!(b.read("-x/new"), b"new");
    // Re-created by the layer, implied only: not the lower directory.
    assert_eq!(b.inode("-x").mode.get(), S_IFDIR | 0o755);
    assert_eq!(b.read("keep"), b"k");
    let boot = b.b();
    let names: Vec<String> = boot
        .dir_entries(0)
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(boot.entry_name(e).unwrap()).into_owned())
        .collect();
    assert_eq!(names, ["-x", "d", "keep"]);
}

#[test]
fn hardlinks_into_lower_layers() {
    let data = noise(20_000, 7);
    let mut l1 = Layer::default();
    l1.file("lib/a", &data).file("lib/b", b"b");
    let mut l2 = Layer::default();
    // Linked before the layer replaces its target: the lower file.
    l2.hardlink("old-a", "lib/a")
        .file("lib/a", b"new a")
        .hardlink("link-b", "./lib/b")
        .hardlink("link-b2", "link-b")
        // A dangling link this layer then replaces: no error.
        .hardlink("gone", "missing")
        .file("gone", b"replaced");
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &l2]);
    assert_eq!(b.read("old-a"), data);
    assert_eq!(b.read("lib/a"), b"new a");
    assert_eq!(b.ino("link-b"), b.ino("lib/b"));
    assert_eq!(b.ino("link-b2"), b.ino("lib/b"));
    assert_eq!(b.inode("lib/b").nlink.get(), 3);
    assert_eq!(b.read("gone"), b"replaced");

    let mut bad = Layer::default();
    bad.hardlink("x", "lib/missing");
    let err = fail(&tmp, &[&l1, &bad]);
    assert!(matches!(err, BuildError::CorruptArchive { .. }), "{err}");
    let mut to_dir = Layer::default();
    to_dir.hardlink("x", "lib");
    assert!(fail(&tmp, &[&l1, &to_dir]).to_string().contains("x"));
}

#[test]
fn implied_directories_and_type_changes() {
    let mut l1 = Layer::default();
    l1.dir("./", 0o711)
        .dir("etc/", 0o750)
        .file("etc/f", b"f")
        .file("file", b"was a file")
        .dir("dir/", 0o700)
        .file("dir/x", b"x");
    let mut l2 = Layer::default();
    l2.file("etc/g", b"g")
        .file("file/inside", b"now a dir")
        .file("dir", b"now a file");
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &l2]);
    assert_eq!(b.inode("").mode.get(), S_IFDIR | 0o711);
    assert_eq!(b.inode("etc").mode.get(), S_IFDIR | 0o750);
    assert_eq!(b.read("etc/f"), b"f");
    assert_eq!(b.inode("file").mode.get(), S_IFDIR | 0o755);
    assert_eq!(b.read("file/inside"), b"now a dir");
    assert_eq!(b.read("dir"), b"now a file");
    assert!(!exists(&b, "dir/x"));
    // An explicit entry takes the layer's metadata.
    let mut l3 = Layer::default();
    l3.dir("etc", 0o700).dir(".", 0o755);
    let b = build(&tmp, "out3", &[&l1, &l2, &l3]);
    assert_eq!(b.inode("etc").mode.get(), S_IFDIR | 0o700);
    assert_eq!(b.inode("").mode.get(), S_IFDIR | 0o755);
    assert_eq!(b.read("etc/g"), b"g");
}

#[test]
fn whiteouts_below_a_path_the_layer_made_a_non_directory_are_no_ops() {
    // What umoci 0.4.7 writes when a directory became a file: the file,
    // then whiteouts for the old directory's entries below it.
    let mut l1 = Layer::default();
    l1.dir("d2f/", 0o755).file("d2f/z", b"z").file("keep", b"k");
    let mut l2 = Layer::default();
    l2.file("d2f", b"now a file")
        .file("d2f/.wh.z", b"")
        .file("d2f/sub/.wh..wh..opq", b"");
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &l2]);
    assert_eq!(b.read("d2f"), b"now a file");
    assert_eq!(b.read("keep"), b"k");
    // Anything else below a non-directory is still an error.
    let mut bad = Layer::default();
    bad.file("f", b"f").file("f/x", b"x");
    assert!(fail(&tmp, &[&l1, &bad])
        .to_string()
        .contains("not a directory"));
}

#[test]
fn a_blob_per_layer_with_data() {
    let mut l1 = Layer::default();
    l1.file("a", &noise(30_000, 1));
    let mut wh = Layer::default();
    wh.file(".wh.a", b"").dir("empty/", 0o755);
    let mut l3 = Layer::default();
    l3.file("b", &noise(30_000, 2));
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &wh, &l3, &l1]);
    let layers = &b.summary.layers;
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[0].blobs.len(), 1);
    assert!(layers[1].blobs.is_empty() && layers[1].dict_blobs.is_empty());
    assert_eq!(layers[2].blobs.len(), 1);
    // The same layer twice: the same blob, stored and listed once.
    assert_eq!(layers[3].blobs, layers[0].blobs);
    assert_eq!(b.b().blobs().len(), 2);
    assert_eq!(b.summary.new_blobs, 2);
    assert_eq!(b.read("a"), noise(30_000, 1));
    assert_eq!(fs::read_dir(b.out.join("blobs")).unwrap().count(), 2);
    // Each layer's blob is the one a single-layer build of it makes.
    let alone = build(&tmp, "alone", &[&l3]);
    assert_eq!(alone.summary.layers[0].blobs, layers[2].blobs);
}

#[test]
fn chunk_dict_blobs_are_listed_per_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l1 = Layer::default();
    l1.file("a", &noise(30_000, 1));
    let base = build(&tmp, "base", &[&l1]);
    let mut l2 = Layer::default();
    l2.file("b", &noise(30_000, 1)).file("c", b"new data");
    let mut o = opts(tmp.path(), &tmp.path().join("v2"));
    o.chunk_dict = Some(base.out.join("bootstrap"));
    let s = build_layers(&o, inputs(&[&l1, &l2])).unwrap();
    assert!(s.layers[0].blobs.is_empty());
    assert_eq!(s.layers[0].dict_blobs, base.summary.layers[0].blobs);
    assert_eq!(s.layers[1].dict_blobs, base.summary.layers[0].blobs);
    assert_eq!(s.layers[1].blobs.len(), 1);
    assert_eq!(s.blobs, 2);
}

#[test]
fn deep_paths_and_no_layers() {
    let deep = "d/".repeat(20_000);
    let mut l1 = Layer::default();
    l1.long_file(&format!("{deep}f"), b"deep");
    let mut l2 = Layer::default();
    l2.long_file(&format!("{deep}.wh.f"), b"");
    let tmp = tempfile::tempdir().unwrap();
    let b = build(&tmp, "out", &[&l1, &l2]);
    assert_eq!(b.summary.inodes, 20_001);
    assert!(matches!(fail(&tmp, &[]), BuildError::BadOptions(_)));
}
