//! A damaged blob under a live mount: one flipped byte inside one chunk
//! of one file (located with `rafs inspect --file PATH --json`) must make
//! reads touching that chunk fail with EIO, every time, while the rest of
//! that file, every other file and the daemon itself keep working; the
//! daemon's log must name the blob, the chunk and the file.

#[macro_use]
mod common;

use common::mount::Mounted;
use common::reads::pread_full;
use common::tree::{random_bytes, write};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The chunks of image path `file`, from `inspect --file --json`.
fn chunks_of(bootstrap: &Path, file: &str) -> Vec<serde_json::Value> {
    let r = common::rafs(args!["inspect", bootstrap, "--file", file, "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("inspect --file --json is not JSON ({e}):\n{r}"));
    v["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunks array in {v:#}"))
        .clone()
}

/// Flips the middle byte of chunk `c`'s stored bytes; returns the blob id.
fn corrupt(blobs: &Path, c: &serde_json::Value) -> String {
    let blob = c["blob"].as_str().expect("chunk has a blob").to_owned();
    let off = c["compressed_offset"].as_u64().unwrap();
    let len = c["compressed_size"].as_u64().unwrap();
    let path = blobs.join(&blob);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(off + len / 2) as usize] ^= 0x5a;
    fs::write(&path, bytes).unwrap();
    blob
}

struct Fixture {
    src: PathBuf,
    mnt: Mounted,
    blob: String,
    _work: tempfile::TempDir,
}

/// `victim` (3 chunks of 256 KiB, unique content), two healthy files; the
/// victim's first chunk corrupted; the image mounted.
fn fixture() -> Fixture {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("victim"), &random_bytes(11, 3 * (256 << 10)));
    write(&src.join("healthy/big"), &random_bytes(12, 2 << 20));
    write(&src.join("healthy/small"), b"small and fine\n");
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "256K"]);
    let chunks = chunks_of(&bootstrap, "/victim");
    assert_eq!(chunks.len(), 3, "victim chunks: {chunks:#?}");
    let blobs = out.join("blobs");
    let blob = corrupt(&blobs, &chunks[0]);
    let mnt = Mounted::start(&bootstrap, &blobs, &work.path().join("mnt"), &[]);
    Fixture {
        src,
        mnt,
        blob,
        _work: work,
    }
}

fn assert_eio(r: std::io::Result<Vec<u8>>, what: &str, mnt: &Mounted) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        Err(e) => panic!("{what}: {e} (want EIO)\n{}", mnt.describe()),
        Ok(d) => panic!(
            "{what}: read {} bytes (want EIO)\n{}",
            d.len(),
            mnt.describe()
        ),
    }
}

#[test]
fn corrupt_chunk_fails_only_its_reads_with_eio() {
    let f = fixture();
    let victim = f.mnt.path("victim");
    for attempt in 0..3 {
        assert_eio(
            fs::read(&victim),
            &format!("read victim #{attempt}"),
            &f.mnt,
        );
    }
    let file = File::open(&victim).expect("open still works: metadata is intact");
    assert_eio(pread_full(&file, 1000, 10), "pread in chunk 0", &f.mnt);
    let want = fs::read(f.src.join("victim")).unwrap();
    let tail = pread_full(&file, 256 << 10, 512 << 10)
        .unwrap_or_else(|e| panic!("chunks 1-2 of victim: {e}\n{}", f.mnt.describe()));
    assert!(tail == want[256 << 10..], "chunks 1-2 of victim differ");
    for rel in ["healthy/big", "healthy/small"] {
        let got = fs::read(f.mnt.path(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", f.mnt.describe()));
        assert!(got == fs::read(f.src.join(rel)).unwrap(), "{rel} differs");
    }
    assert!(
        common::mount::is_mounted(&f.mnt.mountpoint),
        "mount gone after EIO"
    );
}

#[test]
fn corrupt_chunk_is_logged_with_blob_chunk_and_file() {
    let mut f = fixture();
    assert_eio(fs::read(f.mnt.path("victim")), "read victim", &f.mnt);
    let status = f.mnt.terminate();
    let log = f.mnt.stderr();
    assert!(status.success(), "daemon exit {status}\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains(&f.blob))
        .unwrap_or_else(|| panic!("no log line names blob {}:\n{log}", f.blob));
    assert!(
        line.contains("victim"),
        "log line does not name the file: {line}"
    );
    assert!(
        line.contains("chunk"),
        "log line does not name the chunk: {line}"
    );
}
