//! A fake blob manager for tests of the client and of the fetch engine in
//! manager mode: it listens on a temporary socket, answers Hello and
//! OpenBlob (with `O_RDONLY` descriptors of a real cache it keeps in its
//! own directory) and hands every Fetch to a test-chosen behaviour, which
//! may fill the cache, answer, or drop the connection.

use crate::backend::BlobId;
use crate::blobmgr::protocol::{FetchFrame, FrameStatus, Message, Packet, FRAME_ZSTD};
use crate::blobmgr::transport::{accept, listen_at, Conn};
use crate::cache::{BlobCache, Fill, MapParams};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the fake does with one Fetch.
pub(crate) enum Answer {
    /// Reply FetchDone with these statuses.
    Done(Vec<FrameStatus>),
    /// Drop the connection without replying.
    Drop,
}

/// A Fetch's behaviour: (the fake, the blob's cache, the frames, how many
/// Fetches came before) -> answer.
pub(crate) type OnFetch = dyn Fn(&BlobCache, &[FetchFrame], u64) -> Answer + Send + Sync;

/// A running fake manager.
pub(crate) struct Fake {
    pub(crate) socket: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    /// Every packet received (Hello included).
    pub(crate) log: Arc<Mutex<Vec<Message>>>,
    pub(crate) fetches: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Caches = Arc<Mutex<HashMap<BlobId, Arc<BlobCache>>>>;

impl Fake {
    /// Starts a fake at `socket`, caching in `dir`, with a fresh instance.
    pub(crate) fn start(socket: &Path, dir: &Path, on_fetch: Arc<OnFetch>) -> Fake {
        let listener = listen_at(socket, 16).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let log: Arc<Mutex<Vec<Message>>> = Arc::default();
        let fetches = Arc::new(AtomicU64::new(0));
        let instance = crate::cache::io::random_u64().to_le_bytes().repeat(2);
        let instance: [u8; 16] = instance.try_into().unwrap();
        let caches: Caches = Arc::default();
        let (s, c, l, f, d) = (
            stop.clone(),
            conns.clone(),
            log.clone(),
            fetches.clone(),
            dir.to_path_buf(),
        );
        let thread = std::thread::spawn(move || loop {
            let Ok(conn) = accept(listener.as_fd()) else {
                return;
            };
            if s.load(Ordering::SeqCst) {
                return;
            }
            let conn = Arc::new(conn);
            c.lock().unwrap().push(conn.clone());
            let ctx = Ctx {
                conn,
                log: l.clone(),
                fetches: f.clone(),
                caches: caches.clone(),
                dir: d.clone(),
                instance,
                on_fetch: on_fetch.clone(),
            };
            std::thread::spawn(move || ctx.serve());
        });
        Fake {
            socket: socket.to_path_buf(),
            stop,
            conns,
            log,
            fetches,
            thread: Some(thread),
        }
    }

    /// Drops every connection (the fake keeps listening).
    pub(crate) fn drop_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.shutdown();
        }
    }

    /// The live connections (server side).
    pub(crate) fn connections(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().unwrap().clone()
    }

    /// Messages of the log matching `f`.
    pub(crate) fn count(&self, f: impl Fn(&Message) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|m| f(m)).count()
    }

    /// Stops listening, drops every connection, removes the socket.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = Conn::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.drop_connections();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

struct Ctx {
    conn: Arc<Conn>,
    log: Arc<Mutex<Vec<Message>>>,
    fetches: Arc<AtomicU64>,
    caches: Caches,
    dir: PathBuf,
    instance: [u8; 16],
    on_fetch: Arc<OnFetch>,
}

impl Ctx {
    fn serve(self) {
        let mut handles: Vec<Arc<BlobCache>> = Vec::new();
        while let Ok((p, _)) = self.conn.recv() {
            self.log.lock().unwrap().push(p.message.clone());
            let reply = |m: Message, fds: &[std::os::fd::BorrowedFd<'_>]| {
                let pk = Packet {
                    request_id: p.request_id,
                    message: m,
                };
                let _ = self.conn.send(&pk, fds);
            };
            match p.message {
                Message::Hello { .. } => reply(
                    Message::HelloOk {
                        version: 1,
                        compat: 0,
                        incompat: 0,
                        instance: self.instance,
                    },
                    &[],
                ),
                Message::OpenBlob {
                    blob_id,
                    blob_size,
                    layout,
                    granularity,
                } => {
                    let Some((cache, data, map)) =
                        self.open(blob_id, blob_size, layout, granularity)
                    else {
                        let m = Message::Error {
                            code: crate::blobmgr::protocol::ErrorCode::LayoutConflict,
                            message: "held with another layout".into(),
                        };
                        reply(m, &[]);
                        continue;
                    };
                    handles.push(cache.clone());
                    let m = Message::BlobOpened {
                        handle: handles.len() as u32 - 1,
                        generation: cache.generation(),
                    };
                    reply(m, &[data.as_fd(), map.as_fd()]);
                }
                Message::Fetch { handle, frames, .. } => {
                    let n = self.fetches.fetch_add(1, Ordering::SeqCst);
                    let cache = &handles[handle as usize];
                    match (self.on_fetch)(cache, &frames, n) {
                        Answer::Done(status) => reply(Message::FetchDone { status }, &[]),
                        Answer::Drop => {
                            self.conn.shutdown();
                            return;
                        }
                    }
                }
                Message::Ping => reply(Message::Pong, &[]),
                _ => {}
            }
        }
    }

    fn open(
        &self,
        blob: [u8; 32],
        size: u64,
        layout: [u8; 16],
        g: u32,
    ) -> Option<(Arc<BlobCache>, OwnedFd, OwnedFd)> {
        let id = BlobId(blob);
        let mut caches = self.caches.lock().unwrap();
        let cache = match caches.get(&id) {
            Some(c) => c.clone(),
            None => {
                let p = MapParams::new(id, size, g).unwrap().with_layout(layout);
                let c = Arc::new(BlobCache::open(&self.dir, p).ok()?.0);
                caches.insert(id, c.clone());
                c
            }
        };
        let data = std::fs::File::open(crate::cache::blobfile::data_path(&self.dir, &id)).unwrap();
        let map = std::fs::File::open(crate::cache::bitmap::map_path(&self.dir, &id)).unwrap();
        Some((cache, data.into(), map.into()))
    }
}

/// Fills `frame` into `cache` from the blob's stored bytes `stored` (the
/// whole blob), decoded as its flags say: what a real manager does.
pub(crate) fn fill(cache: &BlobCache, stored: &[u8], f: &FetchFrame) {
    let raw = &stored[f.coff as usize..(f.coff + u64::from(f.clen)) as usize];
    let bytes = match f.flags & FRAME_ZSTD {
        0 => raw.to_vec(),
        _ => zstd::bulk::decompress(raw, f.ulen as usize).unwrap(),
    };
    let end = (f.ustart + u64::from(f.ulen)).next_multiple_of(4096);
    let fill = Fill {
        offset: f.ustart,
        bytes: &bytes,
        cover_end: end.min(cache.data().size()),
    };
    cache.commit_covering(&[fill]).unwrap();
}
