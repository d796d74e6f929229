//! The connection layer over real sockets, with a fake service that counts
//! its calls.

use super::*;
use crate::blobmgr::protocol::{
    self, ErrorCode, FetchFrame, FrameStatus, Lane, Member, Message, Packet, UsedRange,
};
use crate::manager::service::{FetchDone, OpenRequest, Opened, Refused};
use nix::sys::socket::{self as sock, ControlMessage, MsgFlags};
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

/// Counts calls; `open` hands out two temp files; `fetch` answers at once
/// (all Ready) unless `hold` is set, then keeps `done` for the test.
#[derive(Default)]
struct Fake {
    opens: AtomicUsize,
    closes: AtomicUsize,
    used: AtomicUsize,
    fetches: AtomicUsize,
    hold: AtomicBool,
    held: Mutex<Vec<(usize, FetchDone)>>,
}

impl BlobService for Fake {
    type Blob = [u8; 32];
    fn open(&self, req: &OpenRequest) -> Result<Opened<[u8; 32]>, Refused> {
        if req.blob_size == 666 {
            return Err(Refused::new(ErrorCode::TooLarge, "too large"));
        }
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Opened {
            blob: Arc::new(req.blob_id),
            data: tempfile::tempfile().unwrap().into(),
            map: tempfile::tempfile().unwrap().into(),
            generation: 7,
        })
    }
    fn fetch(
        &self,
        _blob: &Arc<[u8; 32]>,
        _lane: Lane,
        frames: Vec<FetchFrame>,
        _deadline: Instant,
        done: FetchDone,
    ) {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.held.lock().unwrap().push((frames.len(), done));
        } else {
            done(vec![FrameStatus::Ready; frames.len()]);
        }
    }
    fn used(&self, _blob: &[u8; 32], _ranges: &[UsedRange]) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn close(&self, _blob: Arc<[u8; 32]>) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    fake: Arc<Fake>,
    server: Server,
}

fn setup(cfg: ServerConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mgr.sock");
    let listener = transport::listen_at(&path, 128).unwrap();
    let fake = Arc::new(Fake::default());
    let server = Server::start(listener, fake.clone(), cfg).unwrap();
    Setup {
        _dir: dir,
        path,
        fake,
        server,
    }
}

fn pkt(request_id: u64, message: Message) -> Packet {
    Packet {
        request_id,
        message,
    }
}

fn hello_msg(min_version: u16, max_version: u16) -> Message {
    Message::Hello {
        min_version,
        max_version,
        compat: 0,
        incompat: 0,
    }
}

fn connect(path: &Path) -> Conn {
    let c = Conn::connect(path).unwrap();
    c.set_recv_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// A connected client past the handshake.
fn client(path: &Path) -> Conn {
    let c = connect(path);
    c.send(&pkt(1, hello_msg(1, 1)), &[]).unwrap();
    let (p, _) = c.recv().unwrap();
    assert!(matches!(p.message, Message::HelloOk { .. }), "{p:?}");
    c
}

fn ping_ok(c: &Conn, id: u64) {
    c.send(&pkt(id, Message::Ping), &[]).unwrap();
    let (p, _) = c.recv().unwrap();
    assert_eq!(p, pkt(id, Message::Pong));
}

fn assert_closed(c: &Conn) {
    match c.recv() {
        Err(TransportError::Closed) => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

fn expect_error(c: &Conn, id: u64, code: ErrorCode) {
    let (p, _) = c.recv().unwrap();
    assert_eq!(p.request_id, id, "{p:?}");
    assert!(
        matches!(p.message, Message::Error { code: c, .. } if c == code),
        "expected {code:?}: {p:?}"
    );
}

/// Polls `cond` until it holds, at most 20 s.
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    crate::testimage::wait_until(what, Duration::from_secs(20), cond);
}

/// The `n` lowest descriptor numbers not open in this process.
fn lowest_free_fds(n: usize) -> Vec<i32> {
    // SAFETY: F_GETFD only reads the flags of descriptor `fd`, if open.
    let open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    (0..).filter(|&fd| !open(fd)).take(n).collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn open_msg(id: u8) -> Message {
    Message::OpenBlob {
        blob_id: [id; 32],
        blob_size: 1 << 20,
        layout: [1; 16],
        granularity: 4096,
    }
}

fn fetch_msg(handle: u32) -> Message {
    Message::Fetch {
        handle,
        lane: Lane::OnDemand,
        deadline_ms: 1000,
        frames: vec![FetchFrame {
            coff: 0,
            clen: 10,
            ustart: 0,
            ulen: 4096,
            flags: 0,
            members: vec![Member {
                offset: 0,
                size: 4096,
                digest: [0; 32],
            }],
        }],
    }
}

#[test]
fn handshake_negotiates_and_refuses_disjoint_versions() {
    let s = setup(ServerConfig::default());
    let c = connect(&s.path);
    c.send(&pkt(5, hello_msg(1, 9)), &[]).unwrap();
    let (p, _) = c.recv().unwrap();
    assert_eq!(
        p,
        pkt(
            5,
            Message::HelloOk {
                version: 1,
                compat: 0,
                incompat: 0,
                instance: instance(),
            }
        )
    );
    ping_ok(&c, 6);

    let c = connect(&s.path);
    c.send(&pkt(3, hello_msg(2, 4)), &[]).unwrap();
    expect_error(&c, 3, ErrorCode::Version);
    assert_closed(&c);

    // Anything but Hello first: BadRequest, closed.
    let c = connect(&s.path);
    c.send(&pkt(4, Message::Ping), &[]).unwrap();
    expect_error(&c, 4, ErrorCode::BadRequest);
    assert_closed(&c);

    // A second Hello: BadRequest, closed.
    let c = client(&s.path);
    c.send(&pkt(8, hello_msg(1, 1)), &[]).unwrap();
    expect_error(&c, 8, ErrorCode::BadRequest);
    assert_closed(&c);
    assert_eq!(s.server.metrics().protocol_errors.get(), 0);
}

#[test]
fn a_silent_client_is_dropped_after_the_hello_timeout() {
    let s = setup(ServerConfig {
        hello_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    });
    let c = connect(&s.path);
    assert_closed(&c);
    assert_eq!(s.server.metrics().protocol_errors.get(), 1);
}

/// Sends raw bytes (and maybe descriptors) as one packet.
fn send_raw(c: &Conn, bytes: &[u8], fds: &[std::os::fd::RawFd]) {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sock::sendmsg::<()>(
        c.as_fd().as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

#[test]
fn bad_packets_drop_only_their_connection() {
    let s = setup(ServerConfig::default());
    let good = client(&s.path);
    let ping = protocol::encode(&pkt(2, Message::Ping)).unwrap();
    let pong = protocol::encode(&pkt(2, Message::Pong)).unwrap();
    let f = tempfile::tempfile().unwrap();
    let mut oversized = ping.clone();
    oversized.resize(protocol::MAX_PACKET + 100, 0);
    let cases: Vec<(&str, Vec<u8>, Vec<std::os::fd::RawFd>)> = vec![
        ("garbage", b"RFBM not a packet at all".to_vec(), vec![]),
        ("truncated", ping[..20].to_vec(), vec![]),
        ("oversized", oversized, vec![]),
        ("unexpected fd", ping.clone(), vec![f.as_raw_fd()]),
        ("server kind", pong, vec![]),
    ];
    for (i, (what, bytes, fds)) in cases.into_iter().enumerate() {
        let c = client(&s.path);
        send_raw(&c, &bytes, &fds);
        assert_closed(&c);
        let n = i as u64 + 1;
        wait_for(what, || s.server.metrics().protocol_errors.get() == n);
        ping_ok(&good, 100 + n);
    }
    // The same before Hello.
    let c = connect(&s.path);
    send_raw(&c, b"garbage", &[]);
    assert_closed(&c);
    wait_for("garbage before hello", || {
        s.server.metrics().protocol_errors.get() == 6
    });
    ping_ok(&good, 200);
}

#[test]
fn handle_table_opens_once_and_closes_everything() {
    let s = setup(ServerConfig::default());
    let c = client(&s.path);
    c.send(&pkt(10, open_msg(1)), &[]).unwrap();
    let (p, fds) = c.recv().unwrap();
    let Message::BlobOpened { handle, generation } = p.message else {
        panic!("{p:?}")
    };
    assert_eq!((fds.len(), generation), (2, 7));
    // The same blob again: the same handle, no second open.
    c.send(&pkt(11, open_msg(1)), &[]).unwrap();
    let (p, fds) = c.recv().unwrap();
    assert_eq!(p, pkt(11, Message::BlobOpened { handle, generation }));
    assert_eq!(fds.len(), 2);
    assert_eq!(s.fake.opens.load(Ordering::SeqCst), 1);
    // A refused open is an Error with the service's code.
    let mut m = open_msg(9);
    if let Message::OpenBlob { blob_size, .. } = &mut m {
        *blob_size = 666;
    }
    c.send(&pkt(12, m), &[]).unwrap();
    expect_error(&c, 12, ErrorCode::TooLarge);

    c.send(&pkt(13, fetch_msg(handle)), &[]).unwrap();
    let (p, _) = c.recv().unwrap();
    assert_eq!(
        p,
        pkt(
            13,
            Message::FetchDone {
                status: vec![FrameStatus::Ready]
            }
        )
    );
    c.send(&pkt(14, fetch_msg(handle + 100)), &[]).unwrap();
    expect_error(&c, 14, ErrorCode::UnknownHandle);
    let used = |h| Message::Used {
        handle: h,
        ranges: vec![UsedRange { start: 0, len: 1 }],
    };
    c.send(&pkt(15, used(handle)), &[]).unwrap();
    c.send(&pkt(16, used(handle + 100)), &[]).unwrap();
    ping_ok(&c, 17);
    assert_eq!(s.fake.used.load(Ordering::SeqCst), 1);
    assert_eq!(s.server.metrics().unknown_handles.get(), 1);

    c.send(&pkt(18, Message::CloseBlob { handle }), &[])
        .unwrap();
    ping_ok(&c, 19);
    assert_eq!(s.fake.closes.load(Ordering::SeqCst), 1);
    // Closed: the handle is unknown now, and a new open opens again.
    c.send(&pkt(20, fetch_msg(handle)), &[]).unwrap();
    expect_error(&c, 20, ErrorCode::UnknownHandle);
    for (id, blob) in [(21, 1), (22, 2)] {
        c.send(&pkt(id, open_msg(blob)), &[]).unwrap();
        let (p, _) = c.recv().unwrap();
        assert!(matches!(p.message, Message::BlobOpened { .. }), "{p:?}");
    }
    assert_eq!(s.fake.opens.load(Ordering::SeqCst), 3);
    // Disconnect: every handle is closed.
    drop(c);
    wait_for("closes on disconnect", || {
        s.fake.closes.load(Ordering::SeqCst) == 3
    });
    wait_for("client gone", || s.server.clients() == 0);
    assert_eq!(s.server.metrics().clients.get(), 0);
}

#[test]
fn too_many_handles_or_fetches_is_busy_and_late_answers_are_harmless() {
    let s = setup(ServerConfig {
        max_handles_per_conn: 1,
        max_outstanding_per_conn: 2,
        ..ServerConfig::default()
    });
    s.fake.hold.store(true, Ordering::SeqCst);
    let c = client(&s.path);
    c.send(&pkt(1, open_msg(1)), &[]).unwrap();
    let (p, _) = c.recv().unwrap();
    let Message::BlobOpened { handle, .. } = p.message else {
        panic!("{p:?}")
    };
    c.send(&pkt(2, open_msg(2)), &[]).unwrap();
    expect_error(&c, 2, ErrorCode::Busy);
    for id in [3, 4] {
        c.send(&pkt(id, fetch_msg(handle)), &[]).unwrap();
    }
    c.send(&pkt(5, fetch_msg(handle)), &[]).unwrap();
    expect_error(&c, 5, ErrorCode::Busy);
    wait_for("fetches held", || s.fake.held.lock().unwrap().len() == 2);
    // Answered out of order, from another thread.
    let mut held = std::mem::take(&mut *s.fake.held.lock().unwrap());
    let (n, done) = held.pop().unwrap();
    std::thread::spawn(move || done(vec![FrameStatus::TimedOut; n]))
        .join()
        .unwrap();
    let (p, _) = c.recv().unwrap();
    assert_eq!(
        p,
        pkt(
            4,
            Message::FetchDone {
                status: vec![FrameStatus::TimedOut]
            }
        )
    );
    // Room again.
    c.send(&pkt(6, fetch_msg(handle)), &[]).unwrap();
    wait_for("third fetch", || s.fake.fetches.load(Ordering::SeqCst) == 3);
    // The client goes away with two Fetches in flight; answering them
    // later sends nothing and panics nowhere.
    drop(c);
    wait_for("closed", || s.fake.closes.load(Ordering::SeqCst) == 1);
    held.append(&mut s.fake.held.lock().unwrap());
    for (n, done) in held {
        done(vec![FrameStatus::Ready; n]);
    }
    ping_ok(&client(&s.path), 1);
}

/// Raises the soft fd limit to the hard one (2000 clients in this
/// process, plus the server's side).
fn raise_nofile() {
    let (_, hard) = nofile();
    set_nofile(hard, hard);
}

/// RLIMIT_NOFILE (soft, hard).
fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is valid for writes for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    (r.rlim_cur, r.rlim_max)
}

/// Sets RLIMIT_NOFILE (nextest runs each test in its own process).
fn set_nofile(soft: u64, hard: u64) {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is a valid rlimit for the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

#[test]
fn connections_over_the_cap_are_refused_and_every_fd_comes_back() {
    raise_nofile();
    let s = setup(ServerConfig {
        max_connections: 32,
        ..ServerConfig::default()
    });
    let baseline = open_fds();
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(c) = Conn::connect(&s.path) {
            held.push(c);
        }
    }
    let connected = held.len() as u64;
    assert!(connected > 1000, "{connected} connects");
    let m = s.server.metrics().clone();
    wait_for("every connection decided", || {
        m.connections.get() + m.refused_connections.get() == connected
    });
    assert_eq!(m.connections.get(), 32);
    assert_eq!(s.server.clients(), 32);
    drop(held);
    wait_for("fds back to baseline", || open_fds() <= baseline);
    wait_for("no clients", || s.server.clients() == 0);
    ping_ok(&client(&s.path), 1);
}

#[test]
fn accept_failures_are_counted_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mgr.sock");
    let listener = transport::listen_at(&path, 128).unwrap();
    let fake = Arc::new(Fake::default());
    let server = Server::start(listener, fake, ServerConfig::default()).unwrap();
    let (soft, hard) = nofile();
    // One descriptor left below the limit, taken by a client's socket:
    // the server's accept of that connection then fails with EMFILE until
    // the limit is raised. (Nothing is pending before the connect, so the
    // server cannot take the last descriptor first.) The limit bounds the
    // descriptor numbers, and the open ones need not be contiguous: it goes
    // right above the lowest free number, at the next free one.
    let free = lowest_free_fds(2);
    set_nofile(free[1] as u64, hard);
    let queued = [Conn::connect(&path).unwrap()];
    let m = server.metrics().clone();
    wait_for("an accept error", || m.accept_errors.get() >= 1);
    // Backed off, not spinning: each failure waits 50 ms before the next
    // accept, so three more take at least 100 ms (a spinning loop makes
    // them in microseconds).
    let (before, t0) = (m.accept_errors.get(), Instant::now());
    wait_for("3 more accept errors", || {
        m.accept_errors.get() >= before + 3
    });
    let took = t0.elapsed();
    set_nofile(soft, hard);
    assert!(
        took >= Duration::from_millis(100),
        "3 accept errors in {took:?}: spinning"
    );
    wait_for("every queued connection served", || {
        m.connections.get() == queued.len() as u64
    });
    ping_ok(&client(&path), 1);
    drop(queued);
}

#[test]
fn a_client_that_never_reads_is_dropped_and_others_are_served() {
    let s = setup(ServerConfig {
        send_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    let slow = Arc::new(client(&s.path));
    slow.set_send_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let good = client(&s.path);
    let flooder = {
        let slow = slow.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            // Pings until the server stops reading or drops us.
            while slow.send(&pkt(sent, Message::Ping), &[]).is_ok() && sent < 1_000_000 {
                sent += 1;
            }
            sent
        })
    };
    let m = s.server.metrics().clone();
    let t = Instant::now();
    while m.slow_clients.get() == 0 {
        ping_ok(&good, 1);
        assert!(t.elapsed() < Duration::from_secs(20), "slow client kept");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = flooder.join().unwrap();
    assert!(sent > 10, "{sent}");
    ping_ok(&good, 2);
    wait_for("slow client gone", || s.server.clients() == 1);
}

#[test]
fn a_peer_with_another_uid_is_closed_unanswered() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("mgr.sock");
    let listener = transport::listen_at(&path, 16).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let fake = Arc::new(Fake::default());
    let server = Server::start(listener, fake, ServerConfig::default()).unwrap();
    let hello: String = protocol::encode(&pkt(1, hello_msg(1, 1)))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n\
        s.settimeout(10)\n\
        s.connect(sys.argv[1])\n\
        try:\n  s.send(bytes.fromhex(sys.argv[2]))\nexcept OSError as e:\n  pass\n\
        try:\n  print('reply', len(s.recv(65536)))\nexcept ConnectionResetError:\n  print('reply 0')\n";
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", script])
        .arg(&path)
        .arg(&hello)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "reply 0", "answered a denied peer");
    assert_eq!(server.metrics().denied_peers.get(), 1);
    assert_eq!(server.metrics().connections.get(), 0);
    ping_ok(&client(&path), 1);
}

#[test]
fn allowed_uids_are_admitted() {
    let shared = Shared {
        cfg: ServerConfig {
            allow_uids: vec![1234],
            ..ServerConfig::default()
        },
        metrics: Arc::default(),
        own_uid: 1000,
        stop: AtomicBool::new(false),
        live: Mutex::new(HashMap::new()),
        ended: Condvar::new(),
        next_id: AtomicU64::new(0),
        spill: crossbeam_channel::unbounded().0,
    };
    assert!(shared.peer_allowed(0));
    assert!(shared.peer_allowed(1000));
    assert!(shared.peer_allowed(1234));
    assert!(!shared.peer_allowed(65534));
}

#[test]
fn metrics_are_registered_with_their_names() {
    let s = setup(ServerConfig::default());
    let c = client(&s.path);
    ping_ok(&c, 1);
    let mut reg = prometheus_client::registry::Registry::default();
    s.server.metrics().register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    for name in [
        "rafs_blobmgr_clients 1",
        "rafs_blobmgr_connections_total 1",
        "rafs_blobmgr_requests_total{op=\"ping\"} 1",
        "rafs_blobmgr_requests_total{op=\"hello\"} 1",
        "rafs_blobmgr_protocol_errors_total 0",
        "rafs_blobmgr_denied_peers_total 0",
        "rafs_blobmgr_refused_connections_total 0",
        "rafs_blobmgr_slow_clients_total 0",
        "rafs_blobmgr_accept_errors_total 0",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn shutdown_ends_connections_and_closes_their_handles() {
    let s = setup(ServerConfig::default());
    let c = client(&s.path);
    c.send(&pkt(1, open_msg(1)), &[]).unwrap();
    c.recv().unwrap();
    let fake = s.fake.clone();
    s.server.shutdown();
    assert_eq!(fake.closes.load(Ordering::SeqCst), 1);
    assert_closed(&c);
}

#[test]
fn answers_to_a_client_that_never_reads_do_not_block_the_answering_thread() {
    // The send timeout is long: answering must not wait for it.
    let s = setup(ServerConfig {
        send_timeout: Duration::from_secs(120),
        max_outstanding_per_conn: 100_000,
        ..ServerConfig::default()
    });
    s.fake.hold.store(true, Ordering::SeqCst);
    let open = |c: &Conn, id: u8| {
        c.send(&pkt(1, open_msg(id)), &[]).unwrap();
        let (p, _) = c.recv().unwrap();
        let Message::BlobOpened { handle, .. } = p.message else {
            panic!("{p:?}")
        };
        handle
    };
    // A client that asks a lot and never reads its answers.
    let deaf = client(&s.path);
    let h = open(&deaf, 1);
    let n = 3000;
    for id in 0..n {
        deaf.send(&pkt(10 + id, fetch_msg(h)), &[]).unwrap();
    }
    wait_for("deaf fetches held", || {
        s.fake.held.lock().unwrap().len() == n as usize
    });
    let good = client(&s.path);
    let g = open(&good, 2);
    good.send(&pkt(7, fetch_msg(g)), &[]).unwrap();
    wait_for("good fetch held", || {
        s.fake.held.lock().unwrap().len() == n as usize + 1
    });
    // One engine thread settles them all, the deaf client's first (as a
    // flight's waiters are answered in turn).
    let held = std::mem::take(&mut *s.fake.held.lock().unwrap());
    let answering = std::thread::spawn(move || {
        for (n, done) in held {
            done(vec![FrameStatus::Ready; n]);
        }
    });
    let (p, _) = good
        .recv()
        .expect("the good client's answer waited behind the deaf client");
    assert_eq!(
        p,
        pkt(
            7,
            Message::FetchDone {
                status: vec![FrameStatus::Ready]
            }
        )
    );
    wait_for("the answering thread returns", || answering.is_finished());
    drop(deaf);
}
