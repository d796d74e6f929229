//! Shared libraries fetched before the dynamic loader asks for them.
//!
//! A program starts through a chain of opens: the kernel maps the
//! executable, the loader reads each library it names (`DT_NEEDED`), then
//! the libraries those name; a library loaded later with `dlopen` (a
//! Python extension module) starts a chain of its own. On a cold mount
//! each open is a round trip to the backend, taken one after another.
//!
//! When a read of an ELF object's first bytes misses the cache, a worker
//! reads the names it needs ([`super::elf`]), finds each library in the
//! image's library directories, and speculates its head (the whole file
//! if it is stored in at most `--readahead` bytes, else its first
//! `--readahead` bytes) in the background lane, all of them at once; then
//! it does the same for those libraries, up to [`MAX_DEPTH`] levels. By the
//! time the loader opens a library its header, and often all of it, is
//! cached or on its way. Like the other read-ahead rules it needs a disk
//! cache and is off with `--readahead 0` or `--widen 0`.
//!
//! Whatever the image, every dynamically linked program starts by mapping
//! the same few files (the loader, the C library, the loader's cache), and
//! most go on to read the same few more (the C.UTF-8 locale, the gconv
//! module cache, the time zone): they are speculated at mount
//! ([`LOADERS`], [`STARTUP`]), before any program asks.
//!
//! Costs: each object is inspected once per mount (at most [`MAX_SEEN`]
//! objects; then inspection stops), with three small reads of bytes the
//! loader reads anyway; a name is resolved in at most [`LIB_DIRS`] path
//! walks of at most [`MAX_HOPS`] symlinks each.

use super::elf;
use super::RafsFs;
use crate::fetch::prefetch::Plan;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use rafs_format::Bootstrap;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

/// Where the loader looks for a library named without a slash (its
/// default paths on Debian-style and other multiarch or lib64 systems;
/// `/etc/ld.so.cache` is not read).
pub const LIB_DIRS: [&[u8]; 8] = [
    b"/lib/x86_64-linux-gnu",
    b"/usr/lib/x86_64-linux-gnu",
    b"/lib/aarch64-linux-gnu",
    b"/usr/lib/aarch64-linux-gnu",
    b"/lib64",
    b"/usr/lib64",
    b"/lib",
    b"/usr/lib",
];

/// What every dynamically linked program built for this machine maps
/// first, whatever it is: the dynamic loader its `PT_INTERP` names
/// (glibc's or musl's, [`LOADERS`]), the C library, and the loader's
/// cache; then what glibc reads at the start of most programs: the
/// C.UTF-8 locale (read by `setlocale(LC_ALL, "")` under `LANG=C.UTF-8`,
/// the default of many images, and by every Python, which turns the C
/// locale into it; a directory of small files, about 0.4 MB on Debian),
/// the gconv module cache (read with it) and `/etc/localtime` (read by
/// `localtime`). Speculated at mount ([`RafsFs::speculate_startup`]);
/// names are found as libraries are ([`find_library`]), a name starting
/// with a slash as a path, and a directory by its regular files
/// ([`DIR_FILES`] at most, in name order, while they are stored in at most
/// `--readahead` bytes).
pub const STARTUP: [&[u8]; 6] = [
    b"libc.so.6",
    b"/etc/ld.so.cache",
    b"/usr/lib/locale/C.utf8",
    b"/usr/lib/locale/C.UTF-8",
    b"gconv/gconv-modules.cache",
    b"/etc/localtime",
];

/// The dynamic loaders of this machine's programs, glibc's and musl's,
/// speculated at mount before [`STARTUP`].
#[cfg(target_arch = "x86_64")]
pub const LOADERS: [&[u8]; 2] = [b"ld-linux-x86-64.so.2", b"ld-musl-x86_64.so.1"];
/// See the x86-64 list.
#[cfg(target_arch = "aarch64")]
pub const LOADERS: [&[u8]; 2] = [b"ld-linux-aarch64.so.1", b"ld-musl-aarch64.so.1"];
/// See the x86-64 list.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const LOADERS: [&[u8]; 0] = [];

/// Regular files of a [`STARTUP`] directory speculated at most (its own
/// and one level of subdirectories'; a locale has about 15).
pub const DIR_FILES: usize = 32;

/// Levels of libraries below an object that are inspected.
pub const MAX_DEPTH: u32 = 4;
/// Objects inspected per mount at most.
pub const MAX_SEEN: usize = 4096;
/// Symlinks followed per path at most.
pub const MAX_HOPS: u32 = 16;
/// Objects waiting for the worker at most (more are not inspected).
const QUEUE: usize = 64;

/// The worker's inbox and what it has seen.
#[derive(Default)]
pub(super) struct ElfDeps {
    tx: OnceLock<Sender<u32>>,
    seen: Mutex<HashSet<u32>>,
}

impl ElfDeps {
    /// True the first time `ino` is offered (and while fewer than
    /// [`MAX_SEEN`] objects have been).
    fn first_time(&self, ino: u32) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.len() < MAX_SEEN && seen.insert(ino)
    }
}

impl RafsFs {
    /// Starts the worker that fetches the libraries of ELF objects read
    /// cold (see the module docs); nothing without speculation (no disk
    /// cache, `--readahead 0` or `--widen 0`). Idempotent.
    pub fn start_elf_deps(self: &Arc<Self>) -> std::io::Result<()> {
        if !self.fetcher.speculates() || self.fetcher.config().readahead == 0 {
            return Ok(());
        }
        let (tx, rx) = bounded(QUEUE);
        if self.elf_deps.tx.set(tx).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("rafs-elfdeps".into())
            .spawn(move || worker(weak, rx))?;
        Ok(())
    }

    /// Speculates `LOADERS` and `STARTUP`: the loader, C library and
    /// loader cache every dynamically linked program maps first, and the
    /// locale and time zone files most read next, before any program runs.
    /// Nothing without speculation (as [`RafsFs::start_elf_deps`]).
    /// Returns the stored bytes planned.
    pub fn speculate_startup(&self) -> u64 {
        if self.elf_deps.tx.get().is_none() {
            return 0;
        }
        let Ok(b) = self.image.bootstrap() else {
            return 0;
        };
        let budget = self.fetcher.config().readahead;
        let mut planned = 0;
        for name in LOADERS.iter().chain(&STARTUP) {
            // One plan per name: a directory's files share their batch
            // frames, and get `--readahead` stored bytes between them.
            let mut plan = Plan::default();
            for ino in startup_files(&b, name) {
                if plan.bytes >= budget {
                    break;
                }
                self.plan_head(&b, ino, &mut plan);
            }
            self.fetcher.speculate(&plan);
            planned += plan.bytes;
        }
        tracing::debug!(planned, "elf deps: start-up files speculated");
        planned
    }

    /// A read of `ino` from offset 0 missed and returned `head`: if it is
    /// an ELF object not seen before, the worker inspects it.
    pub(super) fn note_read_head(&self, ino: u32, head: &[u8]) {
        let Some(tx) = self.elf_deps.tx.get() else {
            return;
        };
        if head.starts_with(elf::MAGIC) && self.elf_deps.first_time(ino) {
            if let Err(TrySendError::Full(_)) = tx.try_send(ino) {
                tracing::debug!(ino, "elf deps: queue full");
            }
        }
    }

    /// Inspects `root` and the libraries below it, breadth first.
    fn inspect(&self, root: u32) {
        let mut queue = VecDeque::from([(root, 0)]);
        while let Some((ino, depth)) = queue.pop_front() {
            let names = elf::needed(&mut |off, len| self.read(ino, off, len).ok());
            let Ok(b) = self.image.bootstrap() else {
                return;
            };
            for name in names {
                let Some(lib) = find_library(&b, &name) else {
                    continue;
                };
                if !self.elf_deps.first_time(lib) {
                    continue;
                }
                let planned = self.speculate_head(&b, lib);
                tracing::trace!(ino, lib, planned, "elf deps: library");
                if depth < MAX_DEPTH {
                    queue.push_back((lib, depth + 1));
                }
            }
        }
    }

    /// Speculates `ino`'s head ([`RafsFs::plan_head`]). Returns the
    /// stored bytes planned.
    fn speculate_head(&self, b: &Bootstrap<'_>, ino: u32) -> u64 {
        let mut plan = Plan::default();
        self.plan_head(b, ino, &mut plan);
        self.fetcher.speculate(&plan);
        plan.bytes
    }

    /// Adds `ino`'s head to `plan`: the whole file if it is a small one
    /// ([`RafsFs::plan_small_file`], as on a first miss at its start),
    /// else its first `--readahead` bytes.
    fn plan_head(&self, b: &Bootstrap<'_>, ino: u32, plan: &mut Plan) {
        let Ok(run) = b.file_chunks(ino) else {
            return;
        };
        let head = if self.plan_small_file(run).is_some() {
            run
        } else {
            // The chunks of the first `--readahead` bytes (the run is in
            // file order).
            let budget = self.fetcher.config().readahead;
            &run[..run.partition_point(|c| c.file_offset.get() < budget)]
        };
        self.fetcher.plan_chunks(head, None, plan);
    }
}

fn worker(fs: Weak<RafsFs>, rx: Receiver<u32>) {
    while let Ok(ino) = rx.recv() {
        let Some(fs) = fs.upgrade() else {
            return;
        };
        fs.inspect(ino);
    }
}

/// The regular file library `name` resolves to in [`LIB_DIRS`], if any
/// (a name with a slash is a path, taken as it is).
pub(super) fn find_library(b: &Bootstrap<'_>, name: &[u8]) -> Option<u32> {
    if name.contains(&b'/') {
        return resolve(b, name).filter(|&i| is_reg(b, i));
    }
    LIB_DIRS.iter().find_map(|dir| {
        let mut path = dir.to_vec();
        path.push(b'/');
        path.extend_from_slice(name);
        resolve(b, &path).filter(|&i| is_reg(b, i))
    })
}

/// The regular files a [`STARTUP`] name stands for: a library (a name
/// without a leading slash, looked up in [`LIB_DIRS`]), a file, or the
/// regular files of a directory and of its subdirectories (not deeper;
/// [`DIR_FILES`] at most, in name order).
fn startup_files(b: &Bootstrap<'_>, name: &[u8]) -> Vec<u32> {
    let found = if name.starts_with(b"/") {
        resolve(b, name)
    } else {
        LIB_DIRS.iter().find_map(|dir| {
            let mut path = dir.to_vec();
            path.push(b'/');
            path.extend_from_slice(name);
            resolve(b, &path)
        })
    };
    let Some(ino) = found else {
        return Vec::new();
    };
    if is_reg(b, ino) {
        return vec![ino];
    }
    let mut files = Vec::new();
    let mut dirs = vec![(ino, 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = b.dir_entries(dir) else {
            continue;
        };
        for e in entries {
            let Ok(inode) = b.inode(e.ino.get()) else {
                continue;
            };
            if inode.is_reg() && files.len() < DIR_FILES {
                files.push(e.ino.get());
            } else if inode.is_dir() && depth == 0 {
                dirs.push((e.ino.get(), 1));
            }
        }
    }
    files
}

fn is_reg(b: &Bootstrap<'_>, ino: u32) -> bool {
    b.inode(ino).is_ok_and(|i| i.is_reg())
}

/// The inode `path` names from the root, following symlinks (at most
/// [`MAX_HOPS`]) in every component.
pub(super) fn resolve(b: &Bootstrap<'_>, path: &[u8]) -> Option<u32> {
    b.resolve_following(path, MAX_HOPS).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::file::FileBackend;
    use crate::fetch::FetchConfig;
    use crate::image::Image;
    use crate::testimage::{noise, wait_until, Builder, Part, TestImage};
    use std::time::Duration;

    /// An ELF object naming `libs`, then 96 KiB of noise (one frame).
    fn object(libs: &[&str], seed: u64) -> Vec<Part> {
        let mut b = elf::tests::object(libs);
        b.extend_from_slice(&noise(96 << 10, seed));
        vec![Part::Data(b)]
    }

    struct Tree {
        t: TestImage,
        prog: u32,
        lib_a: u32,
        lib_b: u32,
        lib_c: u32,
    }

    /// `/usr/bin/prog` needs `libA.so.1`, which needs `libB.so.2` (a
    /// symlink to `libB.so.2.0`) and a library the image lacks; `/lib` is
    /// a symlink to `usr/lib` (merged /usr), `libC.so.3` is needed by
    /// nobody. Files lie apart in the blob (pads between), so no stream
    /// read-ahead joins them.
    fn tree() -> Tree {
        let mut b = Builder::new();
        let usr = b.dir(0, "usr", 0o755);
        let lib = b.dir(usr, "lib", 0o755);
        let multi = b.dir(lib, "x86_64-linux-gnu", 0o755);
        let bin = b.dir(usr, "bin", 0o755);
        b.symlink(0, "lib", b"usr/lib");
        b.symlink(0, "loop", b"/loop");
        let lib_c = b.file(multi, "libC.so.3", 0o644, object(&[], 1));
        b.file(0, "pad1", 0o644, vec![Part::Data(noise(64 << 10, 2))]);
        let lib_b = b.file(multi, "libB.so.2.0", 0o644, object(&[], 3));
        b.symlink(multi, "libB.so.2", b"libB.so.2.0");
        b.file(0, "pad2", 0o644, vec![Part::Data(noise(64 << 10, 4))]);
        let deps = ["libB.so.2", "libmissing.so.9"];
        let lib_a = b.file(multi, "libA.so.1", 0o644, object(&deps, 5));
        b.file(0, "pad3", 0o644, vec![Part::Data(noise(64 << 10, 6))]);
        let prog = b.file(bin, "prog", 0o755, object(&["libA.so.1"], 7));
        Tree {
            t: b.finish(),
            prog,
            lib_a,
            lib_b,
            lib_c,
        }
    }

    fn mounted(t: &TestImage, cfg: FetchConfig) -> Arc<RafsFs> {
        let image = Image::open(&t.bootstrap).unwrap();
        let backend = Arc::new(FileBackend::new(&t.blobs));
        let fs = Arc::new(RafsFs::new(image, backend, cfg).unwrap());
        fs.start_elf_deps().unwrap();
        fs
    }

    fn on_disk(cache: &std::path::Path) -> FetchConfig {
        FetchConfig {
            cache_dir: Some(cache.to_path_buf()),
            ..FetchConfig::default()
        }
    }

    fn cached(fs: &RafsFs, ino: u32) -> bool {
        let b = fs.image.bootstrap().unwrap();
        let run = b.file_chunks(ino).unwrap();
        run.iter().all(|c| fs.fetcher.chunk_cached(c))
    }

    #[test]
    fn libraries_are_found_through_symlinks_in_any_component() {
        let t = tree();
        let image = Image::open(&t.t.bootstrap).unwrap();
        let b = image.bootstrap().unwrap();
        assert_eq!(find_library(&b, b"libA.so.1"), Some(t.lib_a));
        // Through /lib -> usr/lib, then libB.so.2 -> libB.so.2.0.
        assert_eq!(find_library(&b, b"libB.so.2"), Some(t.lib_b));
        assert_eq!(find_library(&b, b"/usr/bin/prog"), Some(t.prog));
        assert_eq!(find_library(&b, b"libmissing.so.9"), None);
        // A directory or a symlink loop is no library.
        assert_eq!(find_library(&b, b"x86_64-linux-gnu"), None);
        assert_eq!(find_library(&b, b"/loop"), None);
        // `..` after a symlink is the parent of its target: /lib/.. is /usr.
        assert_eq!(resolve(&b, b"/lib/../bin/./prog"), Some(t.prog));
        assert_eq!(resolve(&b, b"/lib/../usr/bin/prog"), None);
    }

    #[test]
    fn a_cold_read_of_a_program_fetches_its_libraries_and_theirs() {
        let t = tree();
        let cache = tempfile::tempdir().unwrap();
        let fs = mounted(&t.t, on_disk(cache.path()));
        let head = fs.read(t.prog, 0, 4096).unwrap();
        assert!(head.starts_with(elf::MAGIC));
        // Nothing reads the libraries: the worker fetches them.
        wait_until("libA and libB cached", Duration::from_secs(20), || {
            cached(&fs, t.lib_a) && cached(&fs, t.lib_b)
        });
        assert!(fs.fetcher.settle(Duration::from_secs(20)));
        assert!(!cached(&fs, t.lib_c), "a library nobody needs");
        assert!(fs.fetcher.metrics().speculative_bytes.get() > 0);
    }

    /// `/usr/lib` (a library directory on every machine) holding this
    /// machine's glibc loader and C library, `/etc/ld.so.cache`, the
    /// C.utf8 locale (a file, and one in a subdirectory), the gconv cache,
    /// `/etc/localtime` (a symlink into `/usr/share/zoneinfo`), and files
    /// nobody names (an unrelated library, a file two levels below the
    /// locale, another time zone); each apart in the blob. No musl loader,
    /// no `C.UTF-8` locale.
    fn startup_tree() -> (TestImage, Vec<u32>, Vec<u32>) {
        let mut b = Builder::new();
        let mut seed = 10;
        let mut file = |b: &mut Builder, dir: u32, name: &str, mode: u32| {
            seed += 2;
            let ino = b.file(dir, name, mode, object(&[], seed));
            b.file(
                0,
                format!("pad{seed}"),
                0o644,
                vec![Part::Data(noise(64 << 10, seed + 1))],
            );
            ino
        };
        let usr = b.dir(0, "usr", 0o755);
        let lib = b.dir(usr, "lib", 0o755);
        let etc = b.dir(0, "etc", 0o755);
        let mut wanted = Vec::new();
        let names = LOADERS.iter().chain(&STARTUP);
        for name in names.filter_map(|n| std::str::from_utf8(n).ok()) {
            if !name.contains('/') && !name.starts_with("ld-musl") {
                wanted.push(file(&mut b, lib, name, 0o755));
            }
        }
        wanted.push(file(&mut b, etc, "ld.so.cache", 0o644));
        let locale = b.dir(lib, "locale", 0o755);
        let c_utf8 = b.dir(locale, "C.utf8", 0o755);
        wanted.push(file(&mut b, c_utf8, "LC_CTYPE", 0o644));
        let messages = b.dir(c_utf8, "LC_MESSAGES", 0o755);
        wanted.push(file(&mut b, messages, "SYS_LC_MESSAGES", 0o644));
        let deeper = b.dir(messages, "deeper", 0o755);
        let mut others = vec![file(&mut b, deeper, "too-deep", 0o644)];
        let gconv = b.dir(lib, "gconv", 0o755);
        wanted.push(file(&mut b, gconv, "gconv-modules.cache", 0o644));
        let share = b.dir(usr, "share", 0o755);
        let zoneinfo = b.dir(share, "zoneinfo", 0o755);
        wanted.push(file(&mut b, zoneinfo, "UTC", 0o644));
        others.push(file(&mut b, zoneinfo, "Europe-Paris", 0o644));
        b.symlink(etc, "localtime", b"/usr/share/zoneinfo/UTC");
        others.push(file(&mut b, lib, "libother.so.1", 0o644));
        (b.finish(), wanted, others)
    }

    #[test]
    fn the_loader_c_library_and_locale_are_fetched_at_mount_before_any_read() {
        let (t, wanted, others) = startup_tree();
        let cache = tempfile::tempdir().unwrap();
        let fs = mounted(&t, on_disk(cache.path()));
        assert!(fs.speculate_startup() > 0);
        wait_until(
            "loader, libc, ld.so.cache, locale, gconv cache and time zone cached",
            Duration::from_secs(20),
            || wanted.iter().all(|&ino| cached(&fs, ino)),
        );
        assert!(fs.fetcher.settle(Duration::from_secs(20)));
        for ino in others {
            assert!(!cached(&fs, ino), "inode {ino}: a file nobody named");
        }
        assert_eq!(fs.metrics.ops(crate::fs::Op::Read), 0, "nothing read them");
        // Off with read-ahead, as the rest of this module.
        let cache = tempfile::tempdir().unwrap();
        let off = FetchConfig {
            readahead: 0,
            ..on_disk(cache.path())
        };
        let fs = mounted(&t, off);
        assert_eq!(fs.speculate_startup(), 0);
        assert!(wanted.iter().all(|&ino| !cached(&fs, ino)));
    }

    /// `/usr/lib/locale/C.utf8` holding `n` files `LC_000`... of `data(i)`.
    fn locale_dir(n: usize, data: impl Fn(u64) -> Vec<u8>) -> (TestImage, Vec<u32>) {
        let mut b = Builder::new();
        let usr = b.dir(0, "usr", 0o755);
        let lib = b.dir(usr, "lib", 0o755);
        let locale = b.dir(lib, "locale", 0o755);
        let c_utf8 = b.dir(locale, "C.utf8", 0o755);
        let files = (0..n as u64)
            .map(|i| {
                b.file(
                    c_utf8,
                    format!("LC_{i:03}"),
                    0o644,
                    vec![Part::Data(data(i))],
                )
            })
            .collect();
        (b.finish(), files)
    }

    #[test]
    fn a_startup_directory_gives_at_most_its_first_files() {
        let (t, files) = locale_dir(DIR_FILES + 5, |_| vec![1]);
        let image = Image::open(&t.bootstrap).unwrap();
        let b = image.bootstrap().unwrap();
        assert_eq!(
            startup_files(&b, b"/usr/lib/locale/C.utf8"),
            files[..DIR_FILES]
        );
        assert!(startup_files(&b, b"/usr/lib/locale/C.UTF-8").is_empty());
        // A relative name is looked up in the library directories.
        assert_eq!(startup_files(&b, b"locale/C.utf8/LC_000"), [files[0]]);
        assert!(startup_files(&b, b"C.utf8/LC_000").is_empty());
    }

    #[test]
    fn a_startup_directory_gets_readahead_stored_bytes_at_most() {
        // 12 incompressible files of 160 KiB, each its own chunk (above
        // the batch threshold) stored raw.
        const SIZE: u64 = 160 << 10;
        let (t, files) = locale_dir(12, |i| noise(SIZE as usize, 100 + i));
        let cache = tempfile::tempdir().unwrap();
        let fs = mounted(&t, on_disk(cache.path()));
        // Files are added while the plan is under 1 MiB: 6 make 960 KiB,
        // the 7th goes past it, the 8th is not planned.
        assert_eq!(fs.fetcher.config().readahead, 1 << 20);
        assert_eq!(fs.speculate_startup(), 7 * SIZE);
        wait_until("the first 7 files cached", Duration::from_secs(20), || {
            files[..7].iter().all(|&ino| cached(&fs, ino))
        });
        assert!(fs.fetcher.settle(Duration::from_secs(20)));
        for (i, &ino) in files.iter().enumerate().skip(7) {
            assert!(!cached(&fs, ino), "file {i} is past the budget");
        }
    }

    #[test]
    fn without_a_disk_cache_or_with_readahead_0_nothing_is_inspected() {
        let t = tree();
        let cache = tempfile::tempdir().unwrap();
        let no_readahead = FetchConfig {
            readahead: 0,
            ..on_disk(cache.path())
        };
        for cfg in [FetchConfig::default(), no_readahead] {
            let fs = mounted(&t.t, cfg);
            fs.read(t.prog, 0, 4096).unwrap();
            assert!(fs.elf_deps.tx.get().is_none(), "no worker started");
            assert!(fs.elf_deps.seen.lock().unwrap().is_empty());
        }
    }
}
