//! `rafs cache verify|ls|gc` and `rafs stats`, run as the binary.
//!
//! Images are built with `rafs create`; cache directories are filled by the
//! test itself through the `rafs::cache` API, with each chunk's true bytes
//! (read back from the blobs and verified by `rafs::chunk::fetch_chunk`), as
//! a mount would fill them. `stats` talks to a fake API server: a thread
//! answering one HTTP request on a Unix socket with canned OpenMetrics text.

#[macro_use]
mod common;

use common::tree::{random_bytes, text_bytes, write};
use common::{create, rafs, Run};
use nix::fcntl::{Flock, FlockArg};
use rafs::backend::file::FileBackend;
use rafs::backend::BlobId;
use rafs::cache::bitmap::map_path;
use rafs::cache::blobfile::data_path;
use rafs::cache::{BlobCache, Fill, MapParams, RangeBitmap, DEFAULT_GRANULARITY};
use rafs::chunk::fetch_chunk;
use rafs::image::Image;
use rafs_format::layout::ChunkInfo;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One image: its bootstrap and blob directory.
struct Built {
    bootstrap: PathBuf,
    blobs: PathBuf,
}

/// Builds an image from files of seeded random data (plus small text files,
/// batched into shared zstd frames).
fn build(work: &Path, name: &str, seed: u64) -> Built {
    let src = work.join(format!("{name}-src"));
    write(&src.join("big"), &random_bytes(seed, 300_000));
    write(&src.join("mid"), &random_bytes(seed + 1, 70_000));
    for i in 0..5 {
        let mut t = text_bytes(3000 + i * 100);
        t.extend_from_slice(name.as_bytes());
        write(&src.join(format!("small{i}")), &t);
    }
    let out = work.join(format!("{name}-out"));
    let extra = ["--chunk-size", "64K", "--batch-size", "16K"];
    let bootstrap = create(&src, &out, &extra);
    let image = Image::open(&bootstrap).unwrap();
    let batched = image
        .bootstrap()
        .unwrap()
        .chunks()
        .iter()
        .filter(|c| c.is_batch())
        .count();
    assert!(batched >= 2, "no batch frame to cover");
    Built {
        bootstrap,
        blobs: out.join("blobs"),
    }
}

/// Every blob of `b`: (id, uncompressed size).
fn blobs_of(b: &Built) -> Vec<(BlobId, u64)> {
    let image = Image::open(&b.bootstrap).unwrap();
    let boot = image.bootstrap().unwrap();
    boot.blobs()
        .iter()
        .map(|i| (BlobId(i.id), i.uncompressed_size.get()))
        .collect()
}

fn params(id: BlobId, size: u64) -> MapParams {
    MapParams::new(id, size, DEFAULT_GRANULARITY).unwrap()
}

/// Fills `cache` with every chunk of `b`, verified, in one commit per blob.
fn populate(b: &Built, cache: &Path) {
    let image = Image::open(&b.bootstrap).unwrap();
    let boot = image.bootstrap().unwrap();
    let backend = FileBackend::new(&b.blobs);
    let mut per_blob: BTreeMap<u32, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for c in boot.chunks().iter().filter(|c| !c.is_hole()) {
        let data = fetch_chunk(&backend, &boot, c).unwrap();
        let blob = per_blob.entry(c.blob_index.get()).or_default();
        blob.insert(c.uncompressed_offset.get(), data);
    }
    for (index, chunks) in per_blob {
        let info = &boot.blobs()[index as usize];
        let p = params(BlobId(info.id), info.uncompressed_size.get());
        let (cache, _) = BlobCache::open(cache, p).unwrap();
        // As the fetcher does: in an ALIGNED blob each chunk here is its own
        // frame or inside a batch frame, and owns the padding up to the next
        // 4 KiB boundary.
        let end = info.uncompressed_size.get();
        let fills: Vec<Fill<'_>> = chunks
            .iter()
            .map(|(o, d)| Fill {
                offset: *o,
                bytes: d.as_slice(),
                cover_end: (*o + d.len() as u64).next_multiple_of(4096).min(end),
            })
            .collect();
        cache.commit_covering(&fills).unwrap();
        cache.bitmap().flush().unwrap();
    }
}

/// The largest non-batch chunk of `b`.
fn big_chunk(b: &Built) -> (BlobId, ChunkInfo) {
    let image = Image::open(&b.bootstrap).unwrap();
    let boot = image.bootstrap().unwrap();
    let c = *boot
        .chunks()
        .iter()
        .filter(|c| !c.is_hole() && !c.is_batch())
        .max_by_key(|c| c.uncompressed_size.get())
        .unwrap();
    (BlobId(boot.chunk_blob(&c).unwrap().id), c)
}

fn code(r: &Run) -> i32 {
    r.status.code().unwrap_or(-1)
}

fn verify(cache: &Path, b: &Built) -> Run {
    rafs(args!["cache", "verify", cache, "--bootstrap", &b.bootstrap])
}

#[test]
fn verify_finds_clears_and_then_passes() {
    let work = common::tempdir();
    let a = build(work.path(), "a", 1);
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    populate(&a, &cache);
    let r = verify(&cache, &a);
    assert_eq!(code(&r), 0, "{r}");
    assert!(r.stdout.contains(", 0 bad"), "{r}");

    // Flip one byte inside the biggest chunk.
    let (blob, c) = big_chunk(&a);
    let at = c.uncompressed_offset.get() + 1000;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_path(&cache, &blob))
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    drop(f);

    let r = verify(&cache, &a);
    assert_eq!(code(&r), 1, "{r}");
    let offset = c.uncompressed_offset.get();
    assert!(
        r.stderr.contains(&format!("blob {blob} offset {offset} ")),
        "bad chunk not named:\n{r}"
    );
    assert!(r.stdout.contains(", 1 bad"), "{r}");
    // The range holding the flipped byte is clear now; the first range of
    // the blob (if it is not the damaged one) is still ready.
    let size = blobs_of(&a)
        .into_iter()
        .find(|(id, _)| *id == blob)
        .unwrap()
        .1;
    let (map, _) = RangeBitmap::open(&cache, params(blob, size)).unwrap();
    let g = u64::from(DEFAULT_GRANULARITY);
    assert!(!map.is_ready(at / g).unwrap());
    assert!(map.ready_count() > 0);
    drop(map);
    let r = verify(&cache, &a);
    assert_eq!(code(&r), 0, "second verify must pass:\n{r}");
}

#[test]
fn verify_skips_blobs_without_a_map_and_reports_errors() {
    let work = common::tempdir();
    let a = build(work.path(), "a", 2);
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let r = verify(&cache, &a);
    assert_eq!(code(&r), 0, "{r}");
    assert!(r.stdout.contains("0 blobs cached"), "{r}");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "verify created files"
    );
    // A missing bootstrap is an error, exit code 2.
    let r = rafs(args![
        "cache",
        "verify",
        &cache,
        "--bootstrap",
        work.path().join("nope")
    ]);
    assert_eq!(code(&r), 2, "{r}");
    assert!(r.stderr.contains("nope"), "{r}");
}

fn ls_json(cache: &Path, bootstraps: &[&Path]) -> serde_json::Value {
    let mut a = args!["cache", "ls", cache, "--json"];
    for b in bootstraps {
        a.extend(args!["--bootstrap", *b]);
    }
    let r = rafs(&a).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

#[test]
fn ls_lists_blobs_with_ready_counts() {
    let work = common::tempdir();
    let (a, b) = (build(work.path(), "a", 3), build(work.path(), "b", 4));
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    populate(&a, &cache);
    populate(&b, &cache);
    std::fs::write(cache.join("notes.txt"), b"hello").unwrap();
    let v = ls_json(&cache, &[&a.bootstrap]);
    let rows = v["blobs"].as_array().unwrap();
    let all: Vec<_> = blobs_of(&a).into_iter().chain(blobs_of(&b)).collect();
    assert_eq!(rows.len(), all.len(), "{v:#}");
    let used: Vec<BlobId> = blobs_of(&a).into_iter().map(|x| x.0).collect();
    for (id, size) in &all {
        let row = rows.iter().find(|r| r["id"] == id.to_hex()).unwrap();
        let ranges = size.div_ceil(u64::from(DEFAULT_GRANULARITY));
        assert_eq!(row["blob_size"], *size, "{row:#}");
        assert_eq!(row["ranges"], ranges, "{row:#}");
        assert_eq!(row["ready_ranges"], ranges, "{row:#}");
        assert_eq!(row["ready_bytes"], *size, "{row:#}");
        assert_eq!(row["used"], used.contains(id), "{row:#}");
        assert_eq!(row["map"], "ok", "{row:#}");
        assert!(row["allocated_bytes"].as_u64().unwrap() > 0, "{row:#}");
    }
    assert_eq!(v["other_files"], serde_json::json!(["notes.txt"]));
    // After clearing one range, the count drops by one (human output too).
    let (id, size) = all[0];
    let (map, _) = RangeBitmap::open(&cache, params(id, size)).unwrap();
    map.clear(0).unwrap();
    map.flush().unwrap();
    let v = ls_json(&cache, &[]);
    let row = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.to_hex())
        .unwrap();
    let ranges = size.div_ceil(u64::from(DEFAULT_GRANULARITY));
    assert_eq!(row["ready_ranges"], ranges - 1, "{row:#}");
    assert!(row["used"].is_null());
    let r = rafs(args!["cache", "ls", &cache]).ok();
    let short = &id.to_hex()[..12];
    let line = r.stdout.lines().find(|l| l.starts_with(short)).unwrap();
    assert!(line.contains(&format!("{}/{ranges}", ranges - 1)), "{r}");
    assert!(r.stdout.contains("ignored: notes.txt"), "{r}");
    assert!(
        r.stdout.contains(&format!("total: {} blobs", all.len())),
        "{r}"
    );
}

/// The cache's file names, but for the lock file standalone users take
/// (`.blobmgr.lock`, created by the first of them).
fn cache_files(cache: &Path) -> Vec<String> {
    let mut names = common::blob_names(cache);
    names.retain(|n| n != ".blobmgr.lock");
    names
}

#[test]
fn gc_removes_unused_keeps_used_and_locked() {
    let work = common::tempdir();
    let a = build(work.path(), "a", 5);
    let b = build(work.path(), "b", 6);
    let c = build(work.path(), "c", 7);
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    for x in [&a, &b, &c] {
        populate(x, &cache);
    }
    let stray = cache.join(format!(".{}.map.tmp.999999999", "ab".repeat(32)));
    std::fs::write(&stray, b"partial").unwrap();
    let before = cache_files(&cache);

    // Without --bootstrap: refused, nothing removed.
    let r = rafs(args!["cache", "gc", &cache]);
    assert_eq!(code(&r), 2, "{r}");
    assert!(r.stderr.contains("--bootstrap"), "{r}");
    assert_eq!(cache_files(&cache), before);

    // A dry run removes nothing.
    let r = rafs(args![
        "cache",
        "gc",
        &cache,
        "--bootstrap",
        &a.bootstrap,
        "--dry-run"
    ])
    .ok();
    assert!(r.stdout.contains("would remove"), "{r}");
    assert_eq!(cache_files(&cache), before);

    // c's maps are locked shared, as a mount daemon using them would.
    let c_blobs = blobs_of(&c);
    let locks: Vec<_> = c_blobs
        .iter()
        .map(|(id, _)| {
            let f = std::fs::File::open(map_path(&cache, id)).unwrap();
            Flock::lock(f, FlockArg::LockSharedNonblock).unwrap()
        })
        .collect();
    let r = rafs(args!["cache", "gc", &cache, "--bootstrap", &a.bootstrap]).ok();
    for (id, _) in blobs_of(&a) {
        assert!(map_path(&cache, &id).exists() && data_path(&cache, &id).exists());
    }
    for (id, _) in blobs_of(&b) {
        assert!(!map_path(&cache, &id).exists() && !data_path(&cache, &id).exists());
        assert!(r.stdout.contains(&format!("removed {id}")), "{r}");
    }
    for (id, _) in &c_blobs {
        assert!(map_path(&cache, id).exists() && data_path(&cache, id).exists());
        assert!(r.stdout.contains(&format!("in use, kept {id}")), "{r}");
    }
    assert!(!stray.exists(), "stray temp file kept:\n{r}");
    drop(locks);
    // Unlocked, c goes too.
    rafs(args!["cache", "gc", &cache, "--bootstrap", &a.bootstrap]).ok();
    for (id, _) in &c_blobs {
        assert!(!map_path(&cache, id).exists());
    }
    let left = cache_files(&cache);
    assert_eq!(left.len(), 2 * blobs_of(&a).len(), "{left:?}");
}

const METRICS: &str = "\
# TYPE rafs_operations counter
rafs_operations_total{op=\"lookup\"} 7
rafs_operations_total{op=\"read\"} 93
rafs_read_bytes_total 3145728
rafs_cache_hits_total 30
rafs_cache_misses_total 10
rafs_cache_usage_bytes 536870912
rafs_cache_limit_bytes 1073741824
rafs_backend_errors_total{kind=\"timeout\"} 2
rafs_backend_errors_total{kind=\"status\"} 1
# TYPE rafs_backend_request_seconds histogram
rafs_backend_request_seconds_bucket{le=\"0.001\"} 0
rafs_backend_request_seconds_bucket{le=\"0.01\"} 50
rafs_backend_request_seconds_bucket{le=\"0.1\"} 100
rafs_backend_request_seconds_bucket{le=\"+Inf\"} 100
rafs_backend_request_seconds_sum 0.8
rafs_backend_request_seconds_count 100
rafs_future_metric_total 5
# EOF
";

/// Serves one request on a fresh socket with `response`; returns the
/// socket path and the thread (which yields the request it read).
fn fake_server(dir: &Path, response: String) -> (PathBuf, std::thread::JoinHandle<String>) {
    let path = dir.join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        conn.write_all(response.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    (path, t)
}

fn http_ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn stats_renders_a_fake_daemons_metrics() {
    let work = common::tempdir();
    let (sock, t) = fake_server(work.path(), http_ok(METRICS));
    let r = rafs(args!["stats", &sock]).ok();
    let req = t.join().unwrap();
    assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
    let out = &r.stdout;
    for want in [
        "operations       100 (lookup 7, read 93)",
        "read             3.0 MiB",
        "lookups          30 hits, 10 misses (75.0%)",
        "usage            512.0 MiB of 1.0 GiB (50.0%)",
        "errors           3 (status 1, timeout 2)",
        // p90: rank 90 in 0.01..0.1 (50 of 100): 0.01 + 0.09 * 40/50.
        "latency          count 100, mean 8.0 ms, p50 10.0 ms, p90 82.0 ms, p99 98.2 ms",
        "rafs_future_metric_total 5",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{r}");
    }

    // JSON.
    std::fs::remove_file(&sock).unwrap();
    let (sock, t) = fake_server(work.path(), http_ok(METRICS));
    let r = rafs(args!["stats", &sock, "--json"]).ok();
    t.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let h = &v["histograms"]["rafs_backend_request_seconds"];
    assert_eq!(h["count"], 100.0);
    assert!((h["p90"].as_f64().unwrap() - 0.082).abs() < 1e-9, "{h}");
}

#[test]
fn stats_errors_exit_2() {
    let work = common::tempdir();
    // Nobody listening.
    let r = rafs(args!["stats", work.path().join("none.sock")]);
    assert_eq!(code(&r), 2, "{r}");
    // An error status.
    let (sock, t) = fake_server(
        work.path(),
        "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n".into(),
    );
    let r = rafs(args!["stats", &sock]);
    t.join().unwrap();
    assert_eq!(code(&r), 2, "{r}");
    assert!(r.stderr.contains("404"), "{r}");
    // Garbage metrics.
    std::fs::remove_file(&sock).unwrap();
    let (sock, t) = fake_server(work.path(), http_ok("rafs_x{le=\"1 2\n"));
    let r = rafs(args!["stats", &sock]);
    t.join().unwrap();
    assert_eq!(code(&r), 2, "{r}");
    assert!(r.stderr.contains("line 1"), "{r}");
}
