//! umoci helpers of the integration tests: an OCI image layout built
//! layer by layer with `umoci init/new/unpack/repack` ([`Image`]), a hand-
//! written layer appended verbatim (`umoci raw add-layer`), the entry
//! names of every layer of the image (to check what umoci really wrote),
//! `skopeo copy` into a registry, fixed mtimes for a tree, and an overlay
//! whose lower layer is a rafs mount (for a runc bundle).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An OCI image layout `dir` and the tag the steps work on.
pub struct Image {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag.
    pub tag: String,
}

/// `umoci args...`, asserting success.
pub fn umoci(args: Vec<OsString>) -> super::Run {
    super::cmd("umoci", args).ok()
}

impl Image {
    /// `umoci init` + `umoci new`: an empty image `dir:tag`.
    pub fn new(dir: &Path, tag: &str) -> Image {
        umoci(args!["init", "--layout", dir]);
        let img = Image {
            dir: dir.to_owned(),
            tag: tag.to_owned(),
        };
        umoci(args!["new", "--image", img.name()]);
        img
    }

    /// `DIR:TAG`, as umoci takes it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.dir.display(), self.tag)
    }

    /// `oci:DIR:TAG`, as skopeo takes it.
    pub fn skopeo_name(&self) -> String {
        format!("oci:{}", self.name())
    }

    /// `umoci unpack` into `bundle`; returns its rootfs.
    pub fn unpack(&self, bundle: &Path) -> PathBuf {
        umoci(args!["unpack", "--image", self.name(), bundle]);
        bundle.join("rootfs")
    }

    /// `umoci repack --refresh-bundle`: a new layer with what changed in
    /// `bundle`'s rootfs, and the bundle ready for the next one.
    pub fn repack(&self, bundle: &Path) {
        umoci(args![
            "repack",
            "--refresh-bundle",
            "--no-history",
            "--image",
            self.name(),
            bundle
        ]);
    }

    /// Appends the uncompressed tar `layer` verbatim (`umoci raw
    /// add-layer`); a bundle unpacked before is stale afterwards.
    pub fn add_raw_layer(&self, layer: &[u8], work: &Path) {
        let p = work.join("raw-layer.tar");
        std::fs::write(&p, layer).unwrap();
        umoci(args![
            "raw",
            "add-layer",
            "--no-history",
            "--image",
            self.name(),
            &p
        ]);
        std::fs::remove_file(&p).unwrap();
    }

    /// `umoci config --image DIR:TAG args...`.
    pub fn config(&self, args: &[&str]) {
        let mut a = args!["config", "--image", self.name()];
        a.extend(args.iter().map(OsString::from));
        umoci(a);
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(self.dir.join("blobs/sha256").join(hex)).unwrap()
    }

    /// The manifest the tag names.
    pub fn manifest(&self) -> serde_json::Value {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let m = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == self.tag.as_str())
            .unwrap_or_else(|| panic!("no tag {} in {index}", self.tag));
        serde_json::from_slice(&self.blob(m["digest"].as_str().unwrap())).unwrap()
    }

    /// The entry names of every layer, in order (gzip or plain tar).
    pub fn layer_entries(&self) -> Vec<Vec<String>> {
        let m = self.manifest();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let bytes = self.blob(l["digest"].as_str().unwrap());
                let mut plain = Vec::new();
                if bytes.starts_with(&[0x1f, 0x8b]) {
                    flate2::read::GzDecoder::new(&bytes[..])
                        .read_to_end(&mut plain)
                        .unwrap();
                } else {
                    plain = bytes;
                }
                let mut ar = tar::Archive::new(&plain[..]);
                ar.entries()
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        String::from_utf8_lossy(&e.path_bytes()).into_owned()
                    })
                    .collect()
            })
            .collect()
    }
}

/// The last name of a tar entry path (`a/b/` → `b`).
pub fn base_name(entry: &str) -> &str {
    entry
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(entry)
}

/// `skopeo copy` without TLS verification on either side.
pub fn skopeo_copy(from: &str, to: &str) {
    super::cmd(
        "skopeo",
        args![
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to
        ],
    )
    .ok();
}

/// Sets the mtime (and atime) of every entry below `root` (and `root`)
/// whose mtime is at or after `newer_than` to `base + n` (n counting up in
/// path order, children before their directory): "now"-ish times left by
/// the edits of one layer become fixed, older fixed ones stay.
pub fn fix_new_mtimes(root: &Path, newer_than: i64, base: i64) {
    let mut paths = super::list_recursive(root);
    paths.sort();
    paths.reverse();
    paths.push(PathBuf::new());
    for (n, rel) in paths.iter().enumerate() {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.mtime() >= newer_than {
            let t = filetime::FileTime::from_unix_time(base + n as i64, 0);
            filetime::set_symlink_file_times(&p, t, t).unwrap();
        }
    }
}

/// An overlay with `lower` as its lower layer, upper and work on a tmpfs
/// under `dir`, mounted on `target`; unmounted on drop.
pub struct Overlay {
    target: PathBuf,
    tmpfs: PathBuf,
}

impl Overlay {
    /// Mounts it.
    pub fn mount(lower: &Path, dir: &Path, target: &Path) -> Overlay {
        let tmpfs = dir.join("rw");
        std::fs::create_dir_all(&tmpfs).unwrap();
        super::cmd("mount", args!["-t", "tmpfs", "tmpfs", &tmpfs]).ok();
        for d in ["upper", "work"] {
            std::fs::create_dir(tmpfs.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            tmpfs.join("upper").display(),
            tmpfs.join("work").display()
        );
        super::cmd(
            "mount",
            args!["-t", "overlay", "overlay", "-o", opts, target],
        )
        .ok();
        Overlay {
            target: target.to_owned(),
            tmpfs,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = super::cmd("umount", args![&self.target]);
        let _ = super::cmd("umount", args![&self.tmpfs]);
    }
}
