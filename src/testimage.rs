//! Test fixture: builds small images (bootstrap + one blob) directly with
//! `rafs_format::encode`, independent of the builder, for the unit tests
//! (`fs`, `fetch`, `prefetch`, `inspect`, `check`, `unpack`).

use rafs_format::layout::*;
use rafs_format::{encode, ChunkSpec, Chunking, ImageSpec, Meta, Name, NodeKind, NodeSpec};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

/// A piece of a file's contents.
pub(crate) enum Part {
    /// Data bytes, stored as one chunk (zstd if that helps).
    Data(Vec<u8>),
    /// A hole of this many bytes.
    Hole(u32),
}

/// An image on disk.
pub(crate) struct TestImage {
    /// Keeps the files alive.
    pub dir: tempfile::TempDir,
    /// The bootstrap file.
    pub bootstrap: PathBuf,
    /// The blob directory.
    pub blobs: PathBuf,
    /// The blob's id (hex), if any data was stored.
    pub blob_id: Option<String>,
}

/// Builds an [`ImageSpec`] and its blob.
pub(crate) struct Builder {
    pub nodes: Vec<NodeSpec>,
    blob: Vec<u8>,
    uncompressed: u64,
    stored: HashMap<[u8; 32], ChunkSpec>,
    pub prefetch: Vec<u32>,
}

fn node(mode: u32, kind: NodeKind) -> NodeSpec {
    let meta = Meta {
        mode,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 123_456_789,
        ..Meta::default()
    };
    NodeSpec { meta, kind }
}

impl Builder {
    /// An image with an empty root directory (mode 0755).
    pub fn new() -> Self {
        let root = node(
            S_IFDIR | 0o755,
            NodeKind::Dir {
                entries: Vec::new(),
                size: 4096,
            },
        );
        Builder {
            nodes: vec![root],
            blob: Vec::new(),
            uncompressed: 0,
            stored: HashMap::new(),
            prefetch: Vec::new(),
        }
    }

    /// Adds an entry `name` in directory `parent` naming inode `ino`.
    pub fn link(&mut self, parent: u32, name: impl AsRef<[u8]>, ino: u32) {
        match &mut self.nodes[parent as usize].kind {
            NodeKind::Dir { entries, .. } => entries.push((Name::new(name.as_ref()).unwrap(), ino)),
            _ => panic!("parent {parent} is not a directory"),
        }
    }

    fn add(&mut self, parent: u32, name: impl AsRef<[u8]>, n: NodeSpec) -> u32 {
        let ino = self.nodes.len() as u32;
        self.nodes.push(n);
        self.link(parent, name, ino);
        ino
    }

    /// Adds a directory.
    pub fn dir(&mut self, parent: u32, name: impl AsRef<[u8]>, perm: u32) -> u32 {
        let kind = NodeKind::Dir {
            entries: Vec::new(),
            size: 4096,
        };
        self.add(parent, name, node(S_IFDIR | perm, kind))
    }

    fn chunk(&mut self, data: &[u8]) -> ChunkSpec {
        let digest = *blake3::hash(data).as_bytes();
        if let Some(c) = self.stored.get(&digest) {
            return *c;
        }
        let compressed = zstd::bulk::compress(data, 3).unwrap();
        let (stored, flags) = if compressed.len() < data.len() {
            (compressed, CHUNK_ZSTD)
        } else {
            (data.to_vec(), 0)
        };
        let c = ChunkSpec {
            digest,
            blob_index: 0,
            compressed_offset: self.blob.len() as u64,
            uncompressed_offset: self.uncompressed,
            compressed_size: stored.len() as u32,
            uncompressed_size: data.len() as u32,
            flags,
            ..Default::default()
        };
        self.blob.extend_from_slice(&stored);
        self.uncompressed += data.len() as u64;
        self.stored.insert(digest, c);
        c
    }

    /// Adds a regular file made of `parts`.
    pub fn file(
        &mut self,
        parent: u32,
        name: impl AsRef<[u8]>,
        perm: u32,
        parts: Vec<Part>,
    ) -> u32 {
        let chunks = parts
            .into_iter()
            .map(|p| match p {
                Part::Data(d) => self.chunk(&d),
                Part::Hole(n) => ChunkSpec::hole(n),
            })
            .collect();
        self.add(
            parent,
            name,
            node(S_IFREG | perm, NodeKind::File { chunks }),
        )
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, parent: u32, name: impl AsRef<[u8]>, target: &[u8]) -> u32 {
        let kind = NodeKind::Symlink {
            target: target.to_vec(),
        };
        self.add(parent, name, node(S_IFLNK | 0o777, kind))
    }

    /// Adds a device, FIFO or socket (`mode` includes the type).
    pub fn special(&mut self, parent: u32, name: impl AsRef<[u8]>, mode: u32, rdev: u64) -> u32 {
        let mut n = node(mode, NodeKind::Special);
        n.meta.rdev = rdev;
        self.add(parent, name, n)
    }

    /// The node of inode `ino`, to adjust its metadata.
    pub fn node(&mut self, ino: u32) -> &mut NodeSpec {
        &mut self.nodes[ino as usize]
    }

    /// Encodes the image and writes `image.boot` and `blobs/<id>`.
    pub fn finish(self) -> TestImage {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let mut blob_table = Vec::new();
        let mut blob_id = None;
        if !self.blob.is_empty() {
            let id: [u8; 32] = Sha256::digest(&self.blob).into();
            std::fs::write(blobs.join(hex::encode(id)), &self.blob).unwrap();
            blob_id = Some(hex::encode(id));
            blob_table.push(BlobInfo {
                id,
                compressed_size: (self.blob.len() as u64).into(),
                uncompressed_size: self.uncompressed.into(),
                chunk_count: (self.stored.len() as u32).into(),
                compressor: COMPRESSOR_ZSTD.into(),
                flags: 0.into(),
                reserved: [0; 4],
            });
        }
        let spec = ImageSpec {
            nodes: self.nodes,
            blobs: blob_table,
            prefetch: self.prefetch,
            chunking: Chunking {
                mode: CHUNKING_FIXED,
                min: 65536,
                avg: 65536,
                max: 65536,
            },
            compat_features: 0,
        };
        let bytes = encode(&spec).unwrap();
        let bootstrap = dir.path().join("image.boot");
        std::fs::write(&bootstrap, bytes).unwrap();
        TestImage {
            dir,
            bootstrap,
            blobs,
            blob_id,
        }
    }
}

pub(crate) use crate::util::noise;

/// Polls `cond` (at once, then every millisecond) until it holds; panics
/// naming `what` if it still does not after `timeout`. Unit tests wait for
/// conditions with this, never with a fixed sleep (`tests/common` has the
/// same helper for the integration tests).
pub(crate) fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The peak-RSS growth memory tests allow: far above what linear code
/// needs for their inputs (a few MiB) and far below what the unbounded or
/// quadratic code they guard against took (380 MiB and more), so neither
/// allocator noise nor a loaded machine moves a result across it.
pub(crate) const RSS_BOUND: u64 = 128 << 20;

/// Runs `f`; returns its result and how far the peak resident set of this
/// process rose above the resident set when `f` started, in bytes.
///
/// The peak (`VmHWM`) is reset first through `/proc/self/clear_refs`, so an
/// earlier, higher peak (building a fixture) cannot hide `f`'s; if the
/// kernel refuses, growth is measured from the old peak and can only read
/// low. The figure is process-wide: meaningful under nextest, which runs
/// each test in a process of its own.
pub(crate) fn peak_rss_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let field = |name: &str| -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    let base = match std::fs::write("/proc/self/clear_refs", "5") {
        Ok(()) => field("VmRSS:"),
        Err(_) => field("VmHWM:"),
    };
    let out = f();
    (out, field("VmHWM:").saturating_sub(base))
}

/// A chain of `depth` directories named `a` holding a one-chunk file `f`,
/// hard-linked as `/g` and listed in the prefetch table; returns the image
/// and the file's long path (`/a/a/.../a/f`).
///
/// The bootstrap grows by about 76 bytes a level, while every path of every
/// inode adds up to `depth`² bytes: at depth 20 000, 1.5 MiB against 400 MB.
pub(crate) fn deep(depth: usize) -> (TestImage, Vec<u8>) {
    let mut b = Builder::new();
    let mut dir = 0;
    for _ in 0..depth {
        dir = b.dir(dir, "a", 0o755);
    }
    let f = b.file(dir, "f", 0o644, vec![Part::Data(hello_data())]);
    b.link(0, "g", f);
    b.prefetch = vec![f];
    let path = [b"/a".repeat(depth), b"/f".to_vec()].concat();
    (b.finish(), path)
}

/// Inode numbers of [`sample`].
pub(crate) mod ino {
    pub const ETC: u32 = 1;
    pub const HELLO: u32 = 2;
    pub const SPARSE: u32 = 3;
    pub const SUID: u32 = 4;
    pub const LINK: u32 = 5;
    pub const CHR: u32 = 6;
    pub const BLK: u32 = 7;
    pub const FIFO: u32 = 8;
    pub const SOCK: u32 = 9;
    pub const EMPTY: u32 = 10;
    pub const COPY: u32 = 11;
}

/// Contents of `/etc/hello` in [`sample`] (compressible: stored as zstd).
pub(crate) fn hello_data() -> Vec<u8> {
    b"hello, rafs!\n".repeat(1000)
}

/// Every file type and interesting metadata:
///
/// ```text
/// /                     dir 0755, uid 0
/// /etc                  dir 0750, uid 1000 gid 100, xattr user.dir
/// /etc/hello            13000 bytes zstd, hardlinked as /hello2 (nlink 2),
///                       xattrs user.comment, trusted.t (binary)
/// /etc/passwd2          = /etc/hello's twin: same chunks (COPY)
/// /sparse               1 MiB hole, 4 KiB noise (raw), 3 MiB hole
/// /suid                 04755 uid 0, 8 KiB noise in two chunks,
///                       security.capability cap_net_raw+ep
/// /link -> etc/hello
/// /chr  c 1,3  /blk  b 8,1  /fifo  /sock  /empty (0 bytes, mode 0600)
/// ```
pub(crate) fn sample() -> TestImage {
    let mut b = Builder::new();
    let etc = b.dir(0, "etc", 0o750);
    let hello = b.file(etc, "hello", 0o644, vec![Part::Data(hello_data())]);
    let sparse = b.file(
        0,
        "sparse",
        0o644,
        vec![
            Part::Hole(1 << 20),
            Part::Data(noise(4096, 1)),
            Part::Hole(3 << 20),
        ],
    );
    let suid = b.file(
        0,
        "suid",
        0o4755,
        vec![Part::Data(noise(4096, 2)), Part::Data(noise(4096, 3))],
    );
    let link = b.symlink(0, "link", b"etc/hello");
    let chr = b.special(0, "chr", S_IFCHR | 0o666, 0x0103);
    let blk = b.special(0, "blk", S_IFBLK | 0o660, 0x0801);
    let fifo = b.special(0, "fifo", S_IFIFO | 0o644, 0);
    let sock = b.special(0, "sock", S_IFSOCK | 0o755, 0);
    let empty = b.file(0, "empty", 0o600, Vec::new());
    let copy = b.file(etc, "passwd2", 0o644, vec![Part::Data(hello_data())]);
    b.link(0, "hello2", hello);
    assert_eq!(
        [etc, hello, sparse, suid, link, chr, blk, fifo, sock, empty, copy],
        [
            ino::ETC,
            ino::HELLO,
            ino::SPARSE,
            ino::SUID,
            ino::LINK,
            ino::CHR,
            ino::BLK,
            ino::FIFO,
            ino::SOCK,
            ino::EMPTY,
            ino::COPY
        ]
    );
    let n = b.node(etc);
    (n.meta.uid, n.meta.gid) = (1000, 100);
    n.meta.xattrs = vec![(b"user.dir".to_vec(), b"d".to_vec())];
    let n = b.node(hello);
    (n.meta.uid, n.meta.gid, n.meta.mtime_sec, n.meta.mtime_nsec) = (1, 2, 1_600_000_000, 5);
    n.meta.xattrs = vec![
        (b"user.comment".to_vec(), b"greeting".to_vec()),
        (b"trusted.t".to_vec(), vec![0, 1, 2, 0xff]),
    ];
    b.node(link).meta.xattrs = vec![(b"trusted.l".to_vec(), b"on a symlink".to_vec())];
    b.node(link).meta.uid = 7;
    b.node(suid).meta.mtime_nsec = 999_999_999;
    // VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_RAW: chown would
    // clear it, so it must be set after ownership.
    let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&[0, 0x20, 0, 0]);
    cap.extend_from_slice(&[0; 12]);
    b.node(suid).meta.xattrs = vec![(b"security.capability".to_vec(), cap)];
    b.prefetch = vec![hello, suid];
    b.finish()
}

/// CPU time the calling thread has used (user and system). Work done on
/// the thread costs the same however loaded the machine is, where its wall
/// time stretches: bound a cost with this, not with `Instant`.
pub(crate) fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which
    // is valid for that write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    std::time::Duration::new(
        ts.tv_sec.unsigned_abs(),
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
