//! Client tests against the fake manager of [`super::testing`]: requests
//! and replies, splitting, re-send after a dropped connection, reopen
//! after a restart, grace and fallback, batched Used.

use super::testing::{Answer, Fake, OnFetch};
use super::*;
use crate::blobmgr::protocol::{Member, FRAME_ZSTD};
use crate::cache::MapParams;
use crate::testimage::wait_until;
use std::sync::atomic::{AtomicBool, AtomicU64};

const G: u32 = 4096;

struct Setup {
    _tmp: tempfile::TempDir,
    socket: PathBuf,
    dir: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("bm.sock");
    let dir = tmp.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    Setup {
        _tmp: tmp,
        socket,
        dir,
    }
}

fn client(s: &Setup, fallback: Fallback, grace: Duration) -> Arc<ManagerClient> {
    ManagerClient::start(ClientConfig {
        socket: s.socket.clone(),
        fallback,
        grace,
    })
    .unwrap()
}

fn req() -> OpenRequest {
    OpenRequest {
        blob: BlobId([5; 32]),
        blob_size: 64 * G as u64,
        layout: [1; 16],
        granularity: G,
    }
}

fn frame(i: u64) -> FetchFrame {
    FetchFrame {
        coff: i * 100,
        clen: 100,
        ustart: i * G as u64,
        ulen: G,
        flags: FRAME_ZSTD,
        members: vec![Member {
            offset: 0,
            size: G,
            digest: [0; 32],
        }],
    }
}

fn ready() -> Arc<OnFetch> {
    Arc::new(|_, frames: &[FetchFrame], _| Answer::Done(vec![FrameStatus::Ready; frames.len()]))
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[test]
fn open_and_fetch_round_trip() {
    let s = setup();
    let _fake = Fake::start(&s.socket, &s.dir, ready());
    let c = client(&s, Fallback::Fetch, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    let st = c.fetch(b.id, Lane::OnDemand, &[frame(0), frame(1)], soon());
    assert_eq!(st.unwrap(), vec![FrameStatus::Ready; 2]);
    assert_eq!(c.metrics().sent(Kind::Fetch), 1);
    assert_eq!(c.metrics().sent(Kind::OpenBlob), 1);
    assert!(c.available());
    // The descriptors are the fake's cache files, read-only.
    let p = MapParams::new(req().blob, req().blob_size, G)
        .unwrap()
        .with_layout([1; 16]);
    let cache = crate::cache::BlobCache::from_fds(b.data, b.map, p).unwrap();
    assert_eq!(cache.generation(), b.generation);
}

#[test]
fn large_fetches_are_split_by_the_limits() {
    let s = setup();
    let fake = Fake::start(&s.socket, &s.dir, ready());
    let c = client(&s, Fallback::Fetch, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    let frames: Vec<FetchFrame> = (0..64 + 10).map(frame).collect();
    let st = c.fetch(b.id, Lane::Prefetch, &frames, soon()).unwrap();
    assert_eq!(st.len(), 74);
    assert_eq!(c.metrics().sent(Kind::Fetch), 2, "64 frames per Fetch");
    // Members: 2 frames of 1024 members do not fit one packet.
    let mut big = frame(0);
    big.members = vec![big.members[0].clone(); 1024];
    let st = c.fetch(b.id, Lane::Prefetch, &[big.clone(), big], soon());
    assert_eq!(st.unwrap().len(), 2);
    assert_eq!(
        c.metrics().sent(Kind::Fetch),
        4,
        "the packet size splits too"
    );
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 4);
}

#[test]
fn a_dropped_connection_is_reconnected_and_the_request_resent() {
    let s = setup();
    // The first Fetch kills the connection; the re-sent one is answered.
    let on: Arc<OnFetch> = Arc::new(|_, frames: &[FetchFrame], n| match n {
        0 => Answer::Drop,
        _ => Answer::Done(vec![FrameStatus::Ready; frames.len()]),
    });
    let fake = Fake::start(&s.socket, &s.dir, on);
    let c = client(&s, Fallback::Wait, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    let t0 = Instant::now();
    let st = c.fetch(b.id, Lane::OnDemand, &[frame(3)], soon()).unwrap();
    assert_eq!(st, vec![FrameStatus::Ready]);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(c.metrics().reconnects(), 1);
    assert_eq!(c.metrics().sent(Kind::Fetch), 2);
    // The blob was reopened on the new connection before the re-send.
    assert_eq!(fake.count(|m| matches!(m, Message::OpenBlob { .. })), 2);
}

#[test]
fn a_restarted_manager_gets_the_blobs_reopened() {
    let s = setup();
    let fake = Fake::start(&s.socket, &s.dir, ready());
    let c = client(&s, Fallback::Wait, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    let first = c.instance().unwrap();
    fake.stop();
    wait_until("the manager seen gone", Duration::from_secs(5), || {
        !c.available()
    });
    let fake = Fake::start(&s.socket, &s.dir, ready());
    let st = c.fetch(b.id, Lane::OnDemand, &[frame(1)], soon()).unwrap();
    assert_eq!(st, vec![FrameStatus::Ready]);
    assert_ne!(c.instance().unwrap(), first);
    assert_eq!(fake.count(|m| matches!(m, Message::OpenBlob { .. })), 1);
}

#[test]
fn unreachable_manager_fetch_fallback_after_the_grace() {
    let s = setup();
    let grace = Duration::from_millis(300);
    let c = client(&s, Fallback::Fetch, grace);
    let t0 = Instant::now();
    let r = c.open_blob(req(), Instant::now() + Duration::from_secs(20));
    assert!(matches!(r, Err(ClientError::Unavailable(_))), "{r:?}");
    let took = t0.elapsed();
    assert!(took >= grace - Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(c.unreachable_since().is_some());
}

#[test]
fn unreachable_manager_wait_fails_at_the_deadline() {
    let s = setup();
    let c = client(&s, Fallback::Wait, Duration::from_millis(10));
    let t0 = Instant::now();
    let deadline = Duration::from_millis(600);
    let r = c.open_blob(req(), t0 + deadline);
    assert_eq!(r.unwrap_err(), ClientError::Timeout);
    assert!(t0.elapsed() >= deadline);
    assert!(t0.elapsed() < deadline * 10);
}

#[test]
fn a_manager_that_comes_up_within_the_grace_serves_the_request() {
    let s = setup();
    let c = client(&s, Fallback::Fetch, Duration::from_secs(10));
    let (sock, dir) = (s.socket.clone(), s.dir.clone());
    let asking = Arc::new(AtomicBool::new(false));
    let late = {
        let (c, asking) = (c.clone(), asking.clone());
        std::thread::spawn(move || {
            // Up once the client found it down and is asking.
            wait_until("the client waiting", Duration::from_secs(10), || {
                asking.load(Ordering::SeqCst) && c.unreachable_since().is_some()
            });
            Fake::start(&sock, &dir, ready())
        })
    };
    asking.store(true, Ordering::SeqCst);
    let b = c.open_blob(req(), soon()).unwrap();
    let _fake = late.join().unwrap();
    let st = c.fetch(b.id, Lane::OnDemand, &[frame(0)], soon()).unwrap();
    assert_eq!(st, vec![FrameStatus::Ready]);
}

#[test]
fn a_reply_to_no_request_drops_the_connection() {
    let s = setup();
    let fake = Fake::start(&s.socket, &s.dir, ready());
    let c = client(&s, Fallback::Wait, Duration::from_secs(5));
    c.open_blob(req(), soon()).unwrap();
    // Forge a Pong with an id nobody asked for, from the fake's side.
    let forged = Packet {
        request_id: 999_999,
        message: Message::Pong,
    };
    let peers = fake.connections();
    peers[0].send(&forged, &[]).unwrap();
    wait_until("the protocol error", Duration::from_secs(5), || {
        c.metrics().protocol_errors.load(Ordering::Relaxed) == 1
    });
    wait_until("the reconnect", Duration::from_secs(5), || {
        c.metrics().reconnects() == 1
    });
}

#[test]
fn used_is_batched_and_merged() {
    let s = setup();
    let fake = Fake::start(&s.socket, &s.dir, ready());
    let c = client(&s, Fallback::Wait, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    // 3000 reads of adjacent 4 KiB pieces: one range once merged.
    for i in 0..3000u64 {
        c.used(
            b.id,
            &[UsedRange {
                start: i * 4096,
                len: 4096,
            }],
        );
    }
    let used = || fake.count(|m| matches!(m, Message::Used { .. }));
    wait_until("one Used", Duration::from_secs(5), || used() == 1);
    let sent_used = c.metrics().sent(Kind::Used);
    assert_eq!(sent_used, 1, "one Used for 3000 reads");
    let ranges = || -> Vec<UsedRange> {
        let log = fake.log.lock().unwrap().clone();
        log.iter()
            .filter_map(|m| match m {
                Message::Used { ranges, .. } => Some(ranges.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert_eq!(
        ranges(),
        vec![UsedRange {
            start: 0,
            len: 3000 * 4096
        }]
    );
    // 9000 disjoint ranges: sent early (at 4000), at most 4000 a message.
    for i in 0..9000u64 {
        c.used(
            b.id,
            &[UsedRange {
                start: i * 8192,
                len: 4096,
            }],
        );
    }
    c.flush_used();
    wait_until("every range", Duration::from_secs(5), || {
        ranges().len() == 9001
    });
    assert!((4..=8).contains(&used()), "{} Used messages", used());
    assert_eq!(c.metrics().sent(Kind::Used), used() as u64);
}

#[test]
fn a_late_reply_after_a_timeout_is_not_a_protocol_error() {
    let s = setup();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let gave_up = Arc::new(AtomicBool::new(false));
    let gave_up2 = gave_up.clone();
    let on: Arc<OnFetch> = Arc::new(move |_, frames: &[FetchFrame], i| {
        n2.fetch_add(1, Ordering::SeqCst);
        if i == 0 {
            // Answered only after the client timed the request out.
            wait_until("the client's timeout", Duration::from_secs(10), || {
                gave_up2.load(Ordering::SeqCst)
            });
        }
        Answer::Done(vec![FrameStatus::TimedOut; frames.len()])
    });
    let _fake = Fake::start(&s.socket, &s.dir, on);
    let c = client(&s, Fallback::Wait, Duration::from_secs(5));
    let b = c.open_blob(req(), soon()).unwrap();
    let r = c.fetch(
        b.id,
        Lane::OnDemand,
        &[frame(0)],
        Instant::now() + Duration::from_millis(50),
    );
    assert_eq!(r.unwrap_err(), ClientError::Timeout);
    gave_up.store(true, Ordering::SeqCst);
    c.fetch(b.id, Lane::OnDemand, &[frame(0)], soon()).unwrap();
    assert_eq!(c.metrics().protocol_errors.load(Ordering::Relaxed), 0);
    assert_eq!(c.metrics().reconnects(), 0);
}
