//! Bad input to `rafs create`: each case must fail with a message naming
//! the offending path or option, and leave OUTDIR exactly as it was (only
//! its pre-existing content, nothing half-written).
//!
//! Tests run as root; the unreadable-file cases drop CAP_DAC_OVERRIDE and
//! CAP_DAC_READ_SEARCH with `setpriv` and first prove that the drop works,
//! so they cannot pass vacuously.

#[macro_use]
mod common;

use common::tree::{chmod, random_bytes, write};
use common::{cmd, list_recursive, rafs_bin, run_cmd, Input, Run};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// An OUTDIR holding one pre-existing file.
fn outdir(work: &Path) -> PathBuf {
    let out = work.join("out");
    write(&out.join("keep-me"), b"pre-existing");
    out
}

/// Runs `rafs create SOURCE -o OUT extra...` expecting failure, a message
/// containing every string of `names`, and OUT unchanged.
fn create_fails(prefix: &[OsString], source: &Path, out: &Path, extra: &[&str], names: &[&str]) {
    let before = list_recursive(out);
    let mut a: Vec<OsString> = prefix.to_vec();
    a.push(rafs_bin().into());
    a.extend(args!["create", source, "-o", out, "--no-progress"]);
    a.extend(extra.iter().map(OsString::from));
    let (program, rest) = a.split_first().unwrap();
    let r = run_cmd(program, rest, Input::Null).failed();
    for n in names {
        assert!(r.stderr.contains(n), "error does not name {n:?}:\n{r}");
    }
    assert!(r.stderr.lines().count() <= 20, "not a clear error:\n{r}");
    assert_eq!(
        list_recursive(out),
        before,
        "OUTDIR changed by a failed create:\n{r}"
    );
    assert!(fs::read(out.join("keep-me")).unwrap() == b"pre-existing");
}

fn no_dac_caps() -> Vec<OsString> {
    args![
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
    ]
}

/// Proves that `setpriv` really takes away root's permission bypass.
fn assert_caps_drop_works(path: &Path, program: &str) {
    let mut a = no_dac_caps();
    a.push(program.into());
    a.push(path.into());
    let (p, rest) = a.split_first().unwrap();
    let r: Run = run_cmd(p, rest, Input::Null);
    assert!(
        !r.status.success(),
        "setpriv did not drop DAC capabilities:\n{r}"
    );
}

#[test]
fn unreadable_file_is_named() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("ok"), b"fine");
    let secret = src.join("sub/secret-file");
    write(&secret, &random_bytes(1, 10_000));
    chmod(&secret, 0o000);
    assert_caps_drop_works(&secret, "cat");
    let out = outdir(work.path());
    create_fails(&no_dac_caps(), &src, &out, &[], &["secret-file"]);
}

#[test]
fn unreadable_directory_is_named() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("locked-dir/inside"), b"x");
    chmod(&src.join("locked-dir"), 0o000);
    assert_caps_drop_works(&src.join("locked-dir"), "ls");
    let out = outdir(work.path());
    create_fails(&no_dac_caps(), &src, &out, &[], &["locked-dir"]);
}

#[test]
fn nonexistent_source_is_named() {
    let work = common::tempdir();
    let out = outdir(work.path());
    let src = work.path().join("no-such-source-dir");
    create_fails(&[], &src, &out, &[], &["no-such-source-dir"]);
}

/// A tar whose second entry is `../escape` (raw header: the tar crate's
/// own path setter refuses `..`).
fn escaping_tar(p: &Path) {
    let mut b = tar::Builder::new(fs::File::create(p).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_path("ok.txt").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, &b"ok\n"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    let name = b"../escape";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"bad\n"[..]).unwrap();
    b.finish().unwrap();
}

#[test]
fn tar_entry_escaping_the_root_is_refused() {
    let work = common::tempdir();
    let tarball = work.path().join("escape.tar");
    escaping_tar(&tarball);
    let listing = cmd("tar", args!["-tf", &tarball]).ok();
    assert!(
        listing.stdout.contains("../escape"),
        "fixture wrong:\n{listing}"
    );
    let out = outdir(work.path());
    create_fails(&[], &tarball, &out, &[], &["../escape"]);
    assert!(!work.path().join("escape").exists());
}

/// A damaged archive's error names the archive file, or says "archive" and
/// names the entry being read (`./...`).
fn assert_archive_error_named(archive: &Path, out: &Path) {
    let r = common::rafs(args!["create", archive, "-o", out, "--no-progress"]).failed();
    let name = archive.file_name().unwrap().to_str().unwrap();
    let entry_named = r.stderr.contains("archive") && r.stderr.contains("./");
    assert!(
        r.stderr.contains(name) || entry_named,
        "error names neither archive nor entry:\n{r}"
    );
    assert!(
        r.stderr.contains("truncated")
            || r.stderr.contains("incomplete")
            || r.stderr.contains("early")
            || r.stderr.contains("EOF")
            || r.stderr.contains("end"),
        "error does not say the archive is cut short:\n{r}"
    );
}

#[test]
fn truncated_gzip_tar_is_named() {
    let work = common::tempdir();
    let src = work.path().join("src");
    for i in 0..4 {
        write(&src.join(format!("f{i}")), &random_bytes(10 + i, 300_000));
    }
    let tarball = work.path().join("src.tar");
    common::gnu_tar_create(&src, &tarball);
    cmd("gzip", args!["-q", &tarball]).ok();
    let gz = work.path().join("src.tar.gz");
    let data = fs::read(&gz).unwrap();
    let cut = work.path().join("cut-archive.tar.gz");
    fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let out = outdir(work.path());
    create_fails(&[], &cut, &out, &[], &[]);
    assert_archive_error_named(&cut, &out);
}

#[test]
fn truncated_plain_tar_is_named() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("big"), &random_bytes(3, 1 << 20));
    let tarball = work.path().join("src.tar");
    common::gnu_tar_create(&src, &tarball);
    let data = fs::read(&tarball).unwrap();
    let cut = work.path().join("cut-plain.tar");
    fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let out = outdir(work.path());
    create_fails(&[], &cut, &out, &[], &[]);
    assert_archive_error_named(&cut, &out);
}

#[test]
fn garbage_source_file_is_named() {
    let work = common::tempdir();
    let junk = work.path().join("not-an-archive.bin");
    fs::write(&junk, random_bytes(4, 5000)).unwrap();
    let out = outdir(work.path());
    create_fails(&[], &junk, &out, &[], &["not-an-archive.bin"]);
}

#[test]
fn invalid_chunk_sizes_are_refused() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("f"), b"data");
    let out = outdir(work.path());
    // (arguments, what the message must mention, lower-cased).
    let cases: [(&[&str], &str); 7] = [
        (&["--chunk-size", "3000"], "chunk-size"),
        (&["--chunk-size", "32M"], "chunk-size"),
        (&["--chunk-size", "0"], "chunk-size"),
        (&["--chunk-size", "2K"], "chunk-size"),
        (
            &["--chunker", "cdc", "--cdc-min", "1M", "--cdc-avg", "64K"],
            "cdc",
        ),
        (&["--chunker", "cdc", "--cdc-max", "32M"], "cdc-max"),
        (&["--chunker", "cdc", "--cdc-avg", "16"], "cdc"),
    ];
    for (extra, mention) in cases {
        create_fails(&[], &src, &out, extra, &[]);
        let r = common::rafs(
            args!["create", &src, "-o", &out, "--no-progress"]
                .into_iter()
                .chain(extra.iter().map(OsString::from)),
        );
        let msg = r.stderr.to_lowercase();
        assert!(
            msg.contains(mention),
            "{extra:?}: error does not mention {mention}:\n{r}"
        );
    }
}
