//! Test doubles for [`Storage`] (public so that the fetcher's and the
//! integration tests can use them; production code never does).
//!
//! - [`Crash`] performs every operation for real and records it, so that a
//!   test can afterwards ask for every disk image a power loss after
//!   operation `k` could have left, for every `k`: data-file writes and
//!   punches are durable only once an `fdatasync` of that file followed;
//!   bitmap bits only once an `msync` covering them followed, except that
//!   the kernel may write back a dirty mapped page at any moment, so every
//!   bit changed since its last `msync` may be found with any value it held
//!   since then. Unsynced writes are torn at sector granularity (each sector
//!   of each pending write survives or not).
//! - [`Stall`] wraps a storage and blocks its writes (`pwrite`,
//!   `fdatasync`, `msync`, punch) while the test says so: a cache disk that
//!   hangs; or slows its `fdatasync`s down: a busy disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use memmap2::MmapMut;

use super::{Real, Storage};
use crate::cache::bitmap::MAP_BITS_OFFSET;

/// One recorded operation.
#[derive(Debug, Clone)]
enum Op {
    Write {
        name: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    SyncData {
        name: String,
    },
    Punch {
        name: String,
        offset: u64,
        len: u64,
    },
    Msync {
        name: String,
        offset: usize,
        len: usize,
    },
    /// Creation, rename, fsync: not modelled after a checkpoint.
    Namespace(String),
}

#[derive(Debug, Clone)]
struct Event {
    op: Op,
    /// The in-memory bytes of every map file just before the operation.
    maps: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
struct Log {
    dir: Option<PathBuf>,
    base: BTreeMap<String, Vec<u8>>,
    events: Vec<Event>,
}

/// The crash double (see the module docs). Use: open the cache through it,
/// [`Crash::checkpoint`] once the files are in a known durable state, run
/// the operations under test, then [`Crash::for_each_crash`]. Only data
/// writes, syncs, punches and msyncs are modelled after the checkpoint: a
/// creation, rename or fsync there makes [`Crash::for_each_crash`] panic.
/// Single-threaded use: map snapshots are plain reads of the map files.
#[derive(Debug)]
pub struct Crash {
    log: Mutex<Log>,
    sector: u64,
}

/// A disk image a power loss could have left.
#[derive(Debug, Clone)]
pub struct CrashImage {
    /// The power was lost after this many recorded operations.
    pub after_ops: usize,
    /// File name → bytes, for every file of the checkpointed directory.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl CrashImage {
    /// Writes the files into `dir` (mode 0600), replacing any there.
    pub fn restore(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, bytes)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// splitmix64: a small deterministic generator for sampled crash choices.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An unsynced data write, one sector of it.
#[derive(Debug, Clone)]
struct Piece {
    name: String,
    offset: u64,
    bytes: Vec<u8>,
}

/// The state a crash at one point leaves: durable bytes, and the choices.
#[derive(Debug)]
struct Uncertain {
    durable: BTreeMap<String, Vec<u8>>,
    /// Pending data sectors, in write order.
    pieces: Vec<Piece>,
    /// Map bits that may be found either way: (file, byte, bit mask).
    bits: Vec<(String, usize, u8)>,
}

impl Crash {
    /// A crash double over the real syscalls, tearing unsynced writes at
    /// 512-byte sectors.
    pub fn new() -> Arc<Crash> {
        Arc::new(Crash {
            log: Mutex::new(Log::default()),
            sector: 512,
        })
    }

    /// Declares every file now in `dir` durable as it is, and starts
    /// recording. Call it after a sync of everything (or on files the test
    /// wrote itself).
    pub fn checkpoint(&self, dir: &Path) -> io::Result<()> {
        let mut base = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                base.insert(name, std::fs::read(entry.path())?);
            }
        }
        let mut log = lock(&self.log);
        log.dir = Some(dir.to_path_buf());
        log.base = base;
        log.events.clear();
        Ok(())
    }

    /// Number of operations recorded since the checkpoint.
    pub fn ops(&self) -> usize {
        lock(&self.log).events.len()
    }

    fn map_snapshot(log: &Log) -> BTreeMap<String, Vec<u8>> {
        let Some(dir) = &log.dir else {
            return BTreeMap::new();
        };
        log.base
            .keys()
            .filter(|n| n.ends_with(".map"))
            .filter_map(|n| Some((n.clone(), std::fs::read(dir.join(n)).ok()?)))
            .collect()
    }

    fn record(&self, op: Op) {
        let mut log = lock(&self.log);
        if log.dir.is_none() {
            return;
        }
        let maps = Self::map_snapshot(&log);
        log.events.push(Event { op, maps });
    }

    /// Calls `check` with every image a power loss after operation `k`
    /// (for each `k` in `0..=ops`) could leave: all of them when a crash
    /// point has at most 8 uncertain items (unsynced sectors and bits),
    /// otherwise all-survive, none-survive and `samples` random mixes drawn
    /// from `seed`. Stops at the first error `check` returns.
    pub fn for_each_crash<E>(
        &self,
        samples: usize,
        mut seed: u64,
        mut check: impl FnMut(&CrashImage) -> Result<(), E>,
    ) -> Result<(), E> {
        let (events, base, now) = {
            let log = lock(&self.log);
            assert!(log.dir.is_some(), "Crash::checkpoint was not called");
            (
                log.events.clone(),
                log.base.clone(),
                Self::map_snapshot(&log),
            )
        };
        for k in 0..=events.len() {
            let mem = events.get(k).map_or(&now, |e| &e.maps);
            let u = self.uncertain(&base, &events[..k], mem);
            let items = u.pieces.len() + u.bits.len();
            let choices: Vec<Vec<bool>> = if items <= 8 {
                (0..1u32 << items)
                    .map(|m| (0..items).map(|i| m >> i & 1 == 1).collect())
                    .collect()
            } else {
                let mut v = vec![vec![true; items], vec![false; items]];
                for _ in 0..samples {
                    v.push((0..items).map(|_| next(&mut seed) & 1 == 1).collect());
                }
                v
            };
            for c in choices {
                check(&u.image(k, &c))?;
            }
        }
        Ok(())
    }

    /// Replays `events` (all executed) over `base` and returns what is
    /// durable and what is uncertain when memory holds `mem`.
    fn uncertain(
        &self,
        base: &BTreeMap<String, Vec<u8>>,
        events: &[Event],
        mem: &BTreeMap<String, Vec<u8>>,
    ) -> Uncertain {
        let mut r = Replay {
            durable: base.clone(),
            pending: Vec::new(),
            seen: base
                .iter()
                .filter(|(n, _)| n.ends_with(".map"))
                .map(|(n, b)| (n.clone(), (b.clone(), b.iter().map(|x| !x).collect())))
                .collect(),
        };
        for e in events {
            r.observe(&e.maps);
            match &e.op {
                Op::Write {
                    name,
                    offset,
                    bytes,
                } => r.pending.extend(self.sectors(name, *offset, bytes)),
                Op::Punch { name, offset, len } => {
                    let zeros = vec![0u8; usize::try_from(*len).unwrap_or(0)];
                    r.pending.extend(self.sectors(name, *offset, &zeros));
                }
                Op::SyncData { name } => r.sync_data(name),
                Op::Msync { name, offset, len } => r.msync(&e.maps, name, *offset, *len),
                Op::Namespace(what) => {
                    panic!("crash double: {what} after the checkpoint is not modelled")
                }
            }
        }
        r.observe(mem);
        r.finish(mem)
    }

    fn sectors(&self, name: &str, offset: u64, bytes: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let pos = offset + at as u64;
            let room = (self.sector - pos % self.sector) as usize;
            let n = room.min(bytes.len() - at);
            out.push(Piece {
                name: name.to_string(),
                offset: pos,
                bytes: bytes[at..at + n].to_vec(),
            });
            at += n;
        }
        out
    }
}

fn apply(file: &mut Vec<u8>, p: &Piece) {
    let start = p.offset as usize;
    let end = start + p.bytes.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[start..end].copy_from_slice(&p.bytes);
}

/// The state of the disk while replaying the recorded operations.
#[derive(Debug)]
struct Replay {
    durable: BTreeMap<String, Vec<u8>>,
    pending: Vec<Piece>,
    /// Per map file and byte: bits seen set / seen clear since their last
    /// msync (a bit in both may be found either way).
    seen: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Replay {
    fn observe(&mut self, maps: &BTreeMap<String, Vec<u8>>) {
        for (n, (one, zero)) in self.seen.iter_mut() {
            let Some(m) = maps.get(n) else {
                continue;
            };
            for (i, &b) in m.iter().enumerate().take(one.len()) {
                one[i] |= b;
                zero[i] |= !b;
            }
        }
    }

    fn sync_data(&mut self, name: &str) {
        let (done, rest) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.name == name);
        self.pending = rest;
        let d = self.durable.entry(name.to_string()).or_default();
        for p in done {
            apply(d, &p);
        }
    }

    /// `mem` holds the mapping as the msync saw it.
    fn msync(&mut self, mem: &BTreeMap<String, Vec<u8>>, name: &str, offset: usize, len: usize) {
        let (Some(m), Some(d), Some((one, zero))) = (
            mem.get(name),
            self.durable.get_mut(name),
            self.seen.get_mut(name),
        ) else {
            return;
        };
        let end = (offset + len).min(m.len()).min(d.len());
        for i in offset.min(end)..end {
            d[i] = m[i];
            one[i] = m[i];
            zero[i] = !m[i];
        }
    }

    fn finish(mut self, mem: &BTreeMap<String, Vec<u8>>) -> Uncertain {
        let mut bits = Vec::new();
        for (n, (one, zero)) in &self.seen {
            for (i, (&o, &z)) in one.iter().zip(zero).enumerate().skip(MAP_BITS_OFFSET) {
                for b in 0..8 {
                    if o & z & (1 << b) != 0 {
                        bits.push((n.clone(), i, 1u8 << b));
                    }
                }
            }
            // Outside the bits (header, live block) take the memory bytes:
            // the header never changes, the live block is not trusted.
            if let (Some(m), Some(d)) = (mem.get(n), self.durable.get_mut(n)) {
                let end = MAP_BITS_OFFSET.min(m.len()).min(d.len());
                d[..end].copy_from_slice(&m[..end]);
            }
        }
        Uncertain {
            durable: self.durable,
            pieces: self.pending,
            bits,
        }
    }
}

impl Uncertain {
    /// The image for one choice: `choice[i]` for piece `i` (survives), then
    /// for bit `i - pieces` (found with the other value than durable).
    fn image(&self, after_ops: usize, choice: &[bool]) -> CrashImage {
        let mut files = self.durable.clone();
        for (p, _) in self.pieces.iter().zip(choice).filter(|(_, &c)| c) {
            if let Some(f) = files.get_mut(&p.name) {
                apply(f, p);
            }
        }
        let flips = choice.get(self.pieces.len()..).unwrap_or(&[]);
        for ((name, i, mask), _) in self.bits.iter().zip(flips).filter(|(_, &c)| c) {
            if let Some(b) = files.get_mut(name).and_then(|f| f.get_mut(*i)) {
                *b ^= mask;
            }
        }
        CrashImage { after_ops, files }
    }
}

impl Storage for Crash {
    fn write_at(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.record(Op::Write {
            name: name_of(path),
            offset,
            bytes: bytes.to_vec(),
        });
        Real.write_at(file, path, offset, bytes)
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.record(Op::SyncData {
            name: name_of(path),
        });
        Real.sync_data(file, path)
    }

    fn msync(&self, map: &MmapMut, path: &Path, offset: usize, len: usize) -> io::Result<()> {
        self.record(Op::Msync {
            name: name_of(path),
            offset,
            len,
        });
        Real.msync(map, path, offset, len)
    }

    fn punch_hole(&self, file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
        self.record(Op::Punch {
            name: name_of(path),
            offset,
            len,
        });
        Real.punch_hole(file, path, offset, len)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.record(Op::Namespace(format!("create {}", path.display())));
        Real.create_new(path)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.record(Op::Namespace(format!("fsync {}", path.display())));
        Real.sync_all(file, path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(Op::Namespace(format!("rename {}", to.display())));
        Real.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(Op::Namespace(format!("fsync {}", dir.display())));
        Real.sync_dir(dir)
    }
}

/// A storage whose writes (`pwrite`, `fdatasync`, `msync`, punch) block
/// while [`Stall::block`] is in force, until [`Stall::release`]. Creation,
/// rename and `fsync` pass through.
#[derive(Debug)]
pub struct Stall {
    inner: Arc<dyn Storage>,
    state: Mutex<StallState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct StallState {
    blocked: bool,
    /// Only `fdatasync` waits (a disk whose flushes hang).
    syncs_blocked: bool,
    /// Every `fdatasync` fails with EIO (a disk whose flushes fail).
    syncs_fail: bool,
    waiting: usize,
    passed: u64,
    /// Added to every `fdatasync` (a busy disk, not a hung one).
    sync_delay: std::time::Duration,
}

impl Stall {
    /// Wraps `inner` (e.g. [`super::real`]), initially not blocking.
    pub fn new(inner: Arc<dyn Storage>) -> Arc<Stall> {
        Arc::new(Stall {
            inner,
            state: Mutex::new(StallState::default()),
            cv: Condvar::new(),
        })
    }

    /// From now on, writes wait.
    pub fn block(&self) {
        lock(&self.state).blocked = true;
    }

    /// From now on, `fdatasync` waits; the other writes go through.
    pub fn block_syncs(&self) {
        lock(&self.state).syncs_blocked = true;
    }

    /// From now on, every `fdatasync` fails with EIO.
    pub fn fail_syncs(&self) {
        lock(&self.state).syncs_fail = true;
    }

    /// Lets every waiting and future write through.
    pub fn release(&self) {
        let mut s = lock(&self.state);
        s.blocked = false;
        s.syncs_blocked = false;
        self.cv.notify_all();
    }

    /// From now on, every `fdatasync` takes `delay` longer: a disk that is
    /// slow but keeps going.
    pub fn slow_syncs(&self, delay: std::time::Duration) {
        lock(&self.state).sync_delay = delay;
    }

    /// How many writes are waiting right now (poll this to know that the
    /// cache reached its disk).
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting
    }

    /// How many writes went through so far.
    pub fn passed(&self) -> u64 {
        lock(&self.state).passed
    }

    fn gate(&self) {
        self.gate_if(|s| s.blocked);
    }

    fn gate_if(&self, blocked: fn(&StallState) -> bool) {
        let mut s = lock(&self.state);
        s.waiting += 1;
        while blocked(&s) {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.waiting -= 1;
        s.passed += 1;
    }
}

impl Storage for Stall {
    fn write_at(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.gate();
        self.inner.write_at(file, path, offset, bytes)
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.gate_if(|s| s.blocked || s.syncs_blocked);
        let (delay, fail) = {
            let s = lock(&self.state);
            (s.sync_delay, s.syncs_fail)
        };
        if fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        std::thread::sleep(delay);
        self.inner.sync_data(file, path)
    }

    fn msync(&self, map: &MmapMut, path: &Path, offset: usize, len: usize) -> io::Result<()> {
        self.gate();
        self.inner.msync(map, path, offset, len)
    }

    fn punch_hole(&self, file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
        self.gate();
        self.inner.punch_hole(file, path, offset, len)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.inner.create_new(path)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.inner.sync_all(file, path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}
