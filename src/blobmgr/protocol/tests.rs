//! Tests of the blob-manager codec: round trips of every kind (proptest),
//! every truncation refused, limits, header checks, and the byte tables of
//! `docs/PROTOCOL.md` checked against what the encoder writes.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn pkt(request_id: u64, message: Message) -> Packet {
    Packet {
        request_id,
        message,
    }
}

fn frame(members: usize) -> FetchFrame {
    FetchFrame {
        coff: 0x0102_0304_0506,
        clen: 0x1_0000,
        ustart: 0x0a0b_0c0d_0e0f,
        ulen: 0x2_0000,
        flags: FRAME_ZSTD | FRAME_BATCH,
        members: (0..members)
            .map(|i| Member {
                offset: (i * 16) as u32,
                size: 16,
                digest: [i as u8; 32],
            })
            .collect(),
    }
}

/// One valid message of every kind, with distinct field values.
fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            min_version: 1,
            max_version: 0x0203,
            compat: 0x1112_1314_1516_1718,
            incompat: 0x2122_2324_2526_2728,
        },
        Message::HelloOk {
            version: 1,
            compat: 0x3132_3334_3536_3738,
            incompat: 0x4142_4344_4546_4748,
            instance: [0x5a; 16],
        },
        Message::Error {
            code: ErrorCode::LayoutConflict,
            message: "layout différent".into(),
        },
        Message::OpenBlob {
            blob_id: [0xb1; 32],
            blob_size: 0x6162_6364_6566,
            layout: [0x1a; 16],
            granularity: 4096,
        },
        Message::BlobOpened {
            handle: 0x7172_7374,
            generation: 0x8182_8384_8586_8788,
        },
        Message::Fetch {
            handle: 0x9192_9394,
            lane: Lane::Prefetch,
            deadline_ms: 30_000,
            frames: vec![frame(2), frame(1)],
        },
        Message::FetchDone {
            status: vec![FrameStatus::Ready, FrameStatus::Corrupt],
        },
        Message::Used {
            handle: 0xa1a2_a3a4,
            ranges: vec![
                UsedRange {
                    start: 0xb1b2,
                    len: 0xc1c2,
                },
                UsedRange { start: 0, len: 1 },
            ],
        },
        Message::CloseBlob {
            handle: 0xd1d2_d3d4,
        },
        Message::Ping,
        Message::Pong,
    ]
}

fn enc(m: &Message) -> Vec<u8> {
    encode(&pkt(0xfeed_f00d_dead_beef, m.clone())).unwrap()
}

#[test]
fn every_sample_round_trips() {
    let all = samples();
    assert_eq!(all.len(), 11, "one sample per kind");
    for m in all {
        let b = enc(&m);
        assert!(b.len() <= MAX_PACKET);
        let p = decode(&b).unwrap();
        assert_eq!(p.request_id, 0xfeed_f00d_dead_beef);
        assert_eq!(p.message, m);
    }
}

/// Every prefix of a valid packet is refused with a typed error, both as
/// it is (body_len then disagrees) and with body_len patched to match (so
/// the body decoder itself sees the short body).
#[test]
fn every_truncation_is_refused() {
    for m in samples() {
        let b = enc(&m);
        for n in 0..b.len() {
            let cut = &b[..n];
            let e = decode(cut).unwrap_err();
            if n < HEADER_SIZE {
                assert_eq!(e, ProtocolError::ShortHeader(n));
                continue;
            }
            assert!(matches!(e, ProtocolError::BodyLength { .. }), "{e:?}");
            let mut patched = cut.to_vec();
            let len = (n - HEADER_SIZE) as u32;
            patched[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&len.to_le_bytes());
            let e = decode(&patched).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtocolError::BodySize { .. }
                        | ProtocolError::Count { .. }
                        | ProtocolError::Utf8
                ),
                "{:?} cut at {n}: {e:?}",
                m.kind()
            );
        }
    }
}

/// A body with bytes past what its counts imply (the Nydus desync: a body
/// length that disagrees with the fields) is refused, not half-read.
#[test]
fn trailing_bytes_are_refused() {
    for m in samples() {
        let mut b = enc(&m);
        b.push(0);
        let len = (b.len() - HEADER_SIZE) as u32;
        b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&len.to_le_bytes());
        let e = decode(&b).unwrap_err();
        assert!(matches!(e, ProtocolError::BodySize { .. }), "{e:?}");
    }
}

#[test]
fn body_length_mismatch_is_refused() {
    let mut b = enc(&Message::CloseBlob { handle: 1 });
    for claimed in [0u32, 7, 9, u32::MAX] {
        b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&claimed.to_le_bytes());
        assert_eq!(
            decode(&b),
            Err(ProtocolError::BodyLength {
                header: claimed,
                actual: 8
            })
        );
    }
}

#[test]
fn bad_header_fields_are_refused() {
    let good = enc(&Message::Ping);
    let with = |off: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[off..off + bytes.len()].copy_from_slice(bytes);
        decode(&b)
    };
    assert_eq!(
        with(OFF_MAGIC, b"NYDS"),
        Err(ProtocolError::BadMagic(*b"NYDS"))
    );
    assert_eq!(with(OFF_VERSION, &[0, 0]), Err(ProtocolError::Version(0)));
    assert_eq!(with(OFF_VERSION, &[2, 0]), Err(ProtocolError::Version(2)));
    assert_eq!(with(OFF_KIND, &[0, 0]), Err(ProtocolError::UnknownKind(0)));
    assert_eq!(
        with(OFF_KIND, &[12, 0]),
        Err(ProtocolError::UnknownKind(12))
    );
    assert_eq!(
        with(OFF_KIND, &[0xff, 0xff]),
        Err(ProtocolError::UnknownKind(0xffff))
    );
    assert_eq!(with(OFF_FLAGS, &[1, 0]), Err(ProtocolError::Flags(1)));
    assert!(matches!(
        with(OFF_RESERVED, &[0, 1]),
        Err(ProtocolError::Reserved { .. })
    ));
}

#[test]
fn kinds_decode_with_try_from_only_when_defined() {
    let mut n = 0;
    for v in 0..=u16::MAX {
        match Kind::try_from(v) {
            Ok(k) => {
                assert_eq!(k as u16, v);
                n += 1;
            }
            Err(e) => assert_eq!(e, ProtocolError::UnknownKind(v)),
        }
    }
    assert_eq!(n, 11);
    for v in 0..=u16::MAX {
        if let Ok(c) = ErrorCode::try_from(v) {
            assert_eq!(c as u16, v);
        }
        if let Ok(s) = FrameStatus::try_from(v) {
            assert_eq!(s as u16, v);
        }
    }
    assert_eq!(
        ErrorCode::try_from(0),
        Err(ProtocolError::UnknownErrorCode(0))
    );
    assert_eq!(
        FrameStatus::try_from(6),
        Err(ProtocolError::UnknownStatus(6))
    );
    assert_eq!(Lane::try_from(0), Err(ProtocolError::UnknownLane(0)));
    assert_eq!(Lane::try_from(3), Err(ProtocolError::UnknownLane(3)));
}

#[test]
fn fds_ride_only_on_blob_opened() {
    for m in samples() {
        let want = usize::from(m.kind() == Kind::BlobOpened) * 2;
        assert_eq!(m.fds_expected(), want, "{:?}", m.kind());
    }
}

#[test]
fn sides_and_replies() {
    for m in samples() {
        let k = m.kind();
        if k.expects_reply() {
            assert_eq!(k.sender(), Side::Client);
        }
    }
    assert_eq!(Kind::BlobOpened.sender(), Side::Server);
    assert_eq!(Kind::Used.sender(), Side::Client);
    assert!(!Kind::Used.expects_reply());
    assert!(!Kind::CloseBlob.expects_reply());
}

fn count_err(r: Result<Vec<u8>, ProtocolError>, field: &str) {
    match r {
        Err(ProtocolError::Count { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{field}: {other:?}"),
    }
}

#[test]
fn oversized_counts_are_refused_by_encode_and_decode() {
    let fetch = |frames: Vec<FetchFrame>| Message::Fetch {
        handle: 1,
        lane: Lane::OnDemand,
        deadline_ms: 1,
        frames,
    };
    count_err(
        encode(&pkt(1, fetch(vec![frame(1); MAX_FRAMES + 1]))),
        "frame_count",
    );
    count_err(encode(&pkt(1, fetch(vec![]))), "frame_count");
    let mut big = frame(1);
    big.members = vec![big.members[0].clone(); MAX_MEMBERS + 1];
    count_err(encode(&pkt(1, fetch(vec![big]))), "member_count");
    let used = Message::Used {
        handle: 1,
        ranges: vec![UsedRange { start: 0, len: 1 }; MAX_USED_RANGES + 1],
    };
    count_err(encode(&pkt(1, used)), "range_count");
    let err = Message::Error {
        code: ErrorCode::Internal,
        message: "x".repeat(MAX_ERROR_MESSAGE + 1),
    };
    count_err(encode(&pkt(1, err)), "msg_len");
    // Many frames, each at the member limit: over the packet limit.
    let mut full = frame(0);
    full.ulen = MAX_FRAME_LEN;
    full.members = vec![
        Member {
            offset: 0,
            size: 1,
            digest: [0; 32]
        };
        MAX_MEMBERS
    ];
    let r = encode(&pkt(1, fetch(vec![full; 2])));
    assert!(matches!(r, Err(ProtocolError::Oversized(_))), "{r:?}");

    // Raw counts over the limit, in otherwise well-framed packets.
    let patch = |m: Message, off: usize, v: u16| {
        let mut b = enc(&m);
        b[HEADER_SIZE + off..HEADER_SIZE + off + 2].copy_from_slice(&v.to_le_bytes());
        decode(&b)
    };
    let f = samples()[5].clone();
    let is_count = |r: Result<Packet, ProtocolError>| matches!(r, Err(ProtocolError::Count { .. }));
    assert!(is_count(patch(f.clone(), 6, 65)));
    assert!(is_count(patch(f.clone(), 6, 0)));
    assert!(is_count(patch(f.clone(), 16 + 26, 1025)));
    assert!(is_count(patch(samples()[6].clone(), 0, 65)));
    assert!(is_count(patch(samples()[7].clone(), 4, 4001)));
    assert!(is_count(patch(samples()[2].clone(), 2, 1025)));
    // A count within the limit but larger than the body: short, not a read
    // past the end.
    let r = patch(f, 16 + 26, 1000);
    assert!(matches!(r, Err(ProtocolError::BodySize { .. })), "{r:?}");
}

#[test]
fn oversized_packet_is_refused() {
    let mut b = enc(&Message::Ping);
    b.resize(MAX_PACKET + 1, 0);
    let len = (b.len() - HEADER_SIZE) as u32;
    b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(decode(&b), Err(ProtocolError::Oversized(MAX_PACKET + 1)));
}

#[test]
fn field_ranges_are_checked() {
    let bad = |m: Message, field: &str| match encode(&pkt(3, m)) {
        Err(ProtocolError::Value { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{field}: {other:?}"),
    };
    let open = |blob_size, granularity| Message::OpenBlob {
        blob_id: [1; 32],
        blob_size,
        layout: [2; 16],
        granularity,
    };
    bad(open(1, 4095), "granularity");
    bad(open(1, 6 << 10), "granularity");
    bad(open(1, 32 << 20), "granularity");
    bad(open(0, 4096), "blob_size");
    let hello = |min_version, max_version| Message::Hello {
        min_version,
        max_version,
        compat: 0,
        incompat: 0,
    };
    bad(hello(0, 1), "min_version");
    bad(hello(2, 1), "max_version");
    let fetch = |deadline_ms, f: FetchFrame| Message::Fetch {
        handle: 0,
        lane: Lane::OnDemand,
        deadline_ms,
        frames: vec![f],
    };
    bad(fetch(0, frame(1)), "deadline_ms");
    bad(fetch(MAX_DEADLINE_MS + 1, frame(1)), "deadline_ms");
    let mut f = frame(1);
    f.flags = 2;
    bad(fetch(1, f), "flags");
    let mut f = frame(1);
    f.ulen = 0;
    bad(fetch(1, f), "ulen");
    let mut f = frame(1);
    f.clen = MAX_FRAME_LEN + 1;
    bad(fetch(1, f), "clen");
    let mut f = frame(1);
    f.coff = u64::MAX;
    bad(fetch(1, f), "coff");
    let mut f = frame(1);
    f.ustart = u64::MAX - 1;
    bad(fetch(1, f), "ustart");
    let mut f = frame(1);
    f.members[0].offset = f.ulen - 8; // 16 bytes would end past ulen
    bad(fetch(1, f), "member size");
    let mut f = frame(1);
    f.members[0].size = 0;
    bad(fetch(1, f), "member size");
    let used = |start, len| Message::Used {
        handle: 0,
        ranges: vec![UsedRange { start, len }],
    };
    bad(used(0, 0), "len");
    bad(used(u64::MAX, 1), "len");
}

#[test]
fn reserved_body_bytes_must_be_zero() {
    // (sample index, reserved offset in the body)
    let cases = [(0, 4), (1, 2), (2, 4), (3, 60), (4, 4), (5, 5), (5, 12)];
    let cases = cases
        .into_iter()
        .chain([(5, 16 + 28), (6, 2), (7, 6), (8, 4)]);
    for (i, off) in cases {
        let m = samples()[i].clone();
        let mut b = enc(&m);
        b[HEADER_SIZE + off] = 1;
        let r = decode(&b);
        assert!(
            matches!(r, Err(ProtocolError::Reserved { .. })),
            "{:?} +{off}: {r:?}",
            m.kind()
        );
    }
}

#[test]
fn error_message_must_be_utf8() {
    let mut b = enc(&Message::Error {
        code: ErrorCode::Io,
        message: "ab".into(),
    });
    b[HEADER_SIZE + 8] = 0xff;
    assert_eq!(decode(&b), Err(ProtocolError::Utf8));
}

/// A short or garbled blob id cannot panic the decoder (the Nydus 256-byte
/// `copy_from_slice`): the body size is checked before any field is read.
#[test]
fn short_open_blob_is_refused_not_panicking() {
    let b = enc(&samples()[3]);
    for n in [
        HEADER_SIZE,
        HEADER_SIZE + 5,
        HEADER_SIZE + 31,
        HEADER_SIZE + 63,
    ] {
        let mut p = b[..n].to_vec();
        let len = (n - HEADER_SIZE) as u32;
        p[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            decode(&p),
            Err(ProtocolError::BodySize { expected: 64, .. })
        ));
    }
}

fn arb_member(ulen: u32) -> impl Strategy<Value = Member> {
    (0..ulen).prop_flat_map(move |offset| {
        (1..=ulen - offset, any::<[u8; 32]>()).prop_map(move |(size, digest)| Member {
            offset,
            size,
            digest,
        })
    })
}

fn arb_frame() -> impl Strategy<Value = FetchFrame> {
    (1..=MAX_FRAME_LEN, 1..=MAX_FRAME_LEN).prop_flat_map(|(clen, ulen)| {
        (
            0..=u64::MAX - u64::from(clen),
            0..=u64::MAX - u64::from(ulen),
            prop::sample::select(vec![0, FRAME_ZSTD, FRAME_ZSTD | FRAME_BATCH, FRAME_BATCH]),
            vec(arb_member(ulen), 1..20),
        )
            .prop_map(move |(coff, ustart, flags, members)| FetchFrame {
                coff,
                clen,
                ustart,
                ulen,
                flags,
                members,
            })
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let code = (1u16..=11).prop_map(|c| ErrorCode::try_from(c).unwrap());
    let status = (0u16..=5).prop_map(|c| FrameStatus::try_from(c).unwrap());
    let lane = prop_oneof![Just(Lane::OnDemand), Just(Lane::Prefetch)];
    let range = (any::<u64>(), 1..=u64::MAX).prop_map(|(s, l)| UsedRange {
        start: s.min(u64::MAX - l),
        len: l,
    });
    prop_oneof![
        (1u16.., any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| {
            Message::Hello {
                min_version: a,
                max_version: a.max(b),
                compat: c,
                incompat: d,
            }
        }),
        (1u16.., any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(v, c, i, n)| {
            Message::HelloOk {
                version: v,
                compat: c,
                incompat: i,
                instance: n,
            }
        }),
        (code, "\\PC{0,200}").prop_filter_map("fits", |(code, message)| {
            (message.len() <= MAX_ERROR_MESSAGE).then_some(Message::Error { code, message })
        }),
        (any::<[u8; 32]>(), 1u64.., any::<[u8; 16]>(), 12u32..=24).prop_map(
            |(blob_id, blob_size, layout, g)| Message::OpenBlob {
                blob_id,
                blob_size,
                layout,
                granularity: 1 << g,
            }
        ),
        (any::<u32>(), any::<u64>())
            .prop_map(|(handle, generation)| Message::BlobOpened { handle, generation }),
        (
            any::<u32>(),
            lane,
            1..=MAX_DEADLINE_MS,
            vec(arb_frame(), 1..8)
        )
            .prop_map(|(handle, lane, deadline_ms, frames)| Message::Fetch {
                handle,
                lane,
                deadline_ms,
                frames,
            }),
        vec(status, 1..=MAX_FRAMES).prop_map(|status| Message::FetchDone { status }),
        (any::<u32>(), vec(range, 1..=MAX_USED_RANGES))
            .prop_map(|(handle, ranges)| Message::Used { handle, ranges }),
        any::<u32>().prop_map(|handle| Message::CloseBlob { handle }),
        Just(Message::Ping),
        Just(Message::Pong),
    ]
}

proptest! {
    #[test]
    fn blobmgr_round_trip(id in any::<u64>(), m in arb_message()) {
        let p = pkt(id, m);
        let b = encode(&p).unwrap();
        prop_assert!(b.len() <= MAX_PACKET);
        prop_assert_eq!(decode(&b).unwrap(), p);
    }

    /// Arbitrary bytes behind a valid header never panic, and whatever
    /// decodes re-encodes to the same bytes.
    #[test]
    fn blobmgr_arbitrary_bodies(kind in 1u16..=11, body in vec(any::<u8>(), 0..600)) {
        let mut b = enc(&Message::Ping);
        b[OFF_KIND..OFF_KIND + 2].copy_from_slice(&kind.to_le_bytes());
        b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&body);
        if let Ok(p) = decode(&b) {
            prop_assert_eq!(encode(&p).unwrap(), b);
        }
    }
}

/// Rows `(offset, size, field)` of the first table after the line that
/// starts with `prefix` in docs/PROTOCOL.md (size `None`: variable).
fn doc_table(doc: &str, prefix: &str) -> Vec<(usize, Option<usize>, String)> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(prefix));
    assert!(lines.next().is_some(), "no {prefix:?} in PROTOCOL.md");
    let rows: Vec<_> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            let off = c[1]
                .parse()
                .unwrap_or_else(|_| panic!("{prefix}: offset {l}"));
            (off, c[2].parse().ok(), c[4].trim_matches('`').to_owned())
        })
        .collect();
    assert!(!rows.is_empty(), "{prefix}: empty table");
    rows
}

/// Checks that the documented table under `prefix` matches `bytes` (the
/// encoding of a sample, from the table's base): fields are contiguous from
/// offset 0, reserved ones are zero, and each named field holds `want`.
fn check_table(doc: &str, prefix: &str, bytes: &[u8], want: &[(&str, Vec<u8>)]) -> usize {
    let mut end = 0;
    let mut seen = 0;
    for (off, size, field) in doc_table(doc, prefix) {
        assert_eq!(off, end, "{prefix}: {field} is not contiguous");
        let Some(size) = size else { break };
        let got = &bytes[off..off + size];
        if field.starts_with("reserved") {
            assert!(got.iter().all(|&b| b == 0), "{prefix}: {field}");
        } else {
            let (_, w) = want
                .iter()
                .find(|(n, _)| *n == field)
                .unwrap_or_else(|| panic!("{prefix}: undocumented field {field}"));
            assert_eq!(got, &w[..], "{prefix}: {field} at {off}");
            seen += 1;
        }
        end = off + size;
    }
    assert_eq!(seen, want.len(), "{prefix}: fields missing from the doc");
    end
}

fn le<T: Into<u64>>(v: T, n: usize) -> Vec<u8> {
    v.into().to_le_bytes()[..n].to_vec()
}

#[test]
fn header_offsets_match_protocol_doc() {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let all = samples();
    let b = enc(&all[7]);
    let head = [
        ("magic", MAGIC.to_vec()),
        ("version", le(MAX_VERSION, 2)),
        ("kind", le(Kind::Used as u16, 2)),
        ("flags", le(0u16, 2)),
        ("body_len", le((b.len() - HEADER_SIZE) as u32, 4)),
        ("request_id", le(0xfeed_f00d_dead_beef_u64, 8)),
    ];
    let n = check_table(doc, "### Packet header (24 bytes", &b, &head);
    assert_eq!(n, HEADER_SIZE);
    assert_eq!(
        [
            OFF_MAGIC,
            OFF_VERSION,
            OFF_KIND,
            OFF_FLAGS,
            OFF_RESERVED,
            OFF_BODY_LEN,
            OFF_REQUEST_ID
        ],
        [0, 4, 6, 8, 10, 12, 16]
    );
    // The kinds table: number, name, fds.
    let kinds = doc
        .lines()
        .skip_while(|l| !l.starts_with("### Message kinds"))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    let mut count = 0;
    for l in kinds {
        let c: Vec<&str> = l.split('|').map(str::trim).collect();
        let k = Kind::try_from(c[1].parse::<u16>().unwrap()).unwrap();
        assert_eq!(format!("{k:?}"), c[2]);
        let fds: usize = c[5]
            .trim_start_matches("**")
            .chars()
            .take(1)
            .collect::<String>()
            .parse()
            .unwrap();
        assert_eq!(k.fds_expected(), fds, "{k:?}");
        let side = if c[3] == "client" {
            Side::Client
        } else {
            Side::Server
        };
        assert_eq!(k.sender(), side, "{k:?}");
        count += 1;
    }
    assert_eq!(count, 11);
}

#[test]
fn body_offsets_match_protocol_doc() {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let all = samples();
    let body = |i: usize| enc(&all[i])[HEADER_SIZE..].to_vec();
    let n = check_table(
        doc,
        "### Hello (kind 1",
        &body(0),
        &[
            ("min_version", le(1u16, 2)),
            ("max_version", le(0x0203u16, 2)),
            ("compat", le(0x1112_1314_1516_1718u64, 8)),
            ("incompat", le(0x2122_2324_2526_2728u64, 8)),
        ],
    );
    assert_eq!(n, HELLO_SIZE);
    let n = check_table(
        doc,
        "### HelloOk (kind 2",
        &body(1),
        &[
            ("version", le(1u16, 2)),
            ("compat", le(0x3132_3334_3536_3738u64, 8)),
            ("incompat", le(0x4142_4344_4546_4748u64, 8)),
            ("instance", vec![0x5a; 16]),
        ],
    );
    assert_eq!(n, HELLO_OK_SIZE);
    let msg = "layout différent";
    let n = check_table(
        doc,
        "### Error (kind 3",
        &body(2),
        &[
            ("code", le(ErrorCode::LayoutConflict as u16, 2)),
            ("msg_len", le(msg.len() as u16, 2)),
        ],
    );
    assert_eq!(n, ERROR_HEAD);
    assert_eq!(&body(2)[ERROR_HEAD..], msg.as_bytes());
    let n = check_table(
        doc,
        "### OpenBlob (kind 4",
        &body(3),
        &[
            ("blob_id", vec![0xb1; 32]),
            ("blob_size", le(0x6162_6364_6566u64, 8)),
            ("layout", vec![0x1a; 16]),
            ("granularity", le(4096u32, 4)),
        ],
    );
    assert_eq!(n, OPEN_SIZE);
    let n = check_table(
        doc,
        "### BlobOpened (kind 5",
        &body(4),
        &[
            ("handle", le(0x7172_7374u32, 4)),
            ("generation", le(0x8182_8384_8586_8788u64, 8)),
        ],
    );
    assert_eq!(n, OPENED_SIZE);
    let fetch = body(5);
    let n = check_table(
        doc,
        "### Fetch (kind 6",
        &fetch,
        &[
            ("handle", le(0x9192_9394u32, 4)),
            ("lane", vec![Lane::Prefetch as u8]),
            ("frame_count", le(2u16, 2)),
            ("deadline_ms", le(30_000u32, 4)),
        ],
    );
    assert_eq!(n, FETCH_HEAD);
    let n = check_table(
        doc,
        "Frame (32 bytes)",
        &fetch[FETCH_HEAD..],
        &[
            ("coff", le(0x0102_0304_0506u64, 8)),
            ("clen", le(0x1_0000u32, 4)),
            ("ulen", le(0x2_0000u32, 4)),
            ("ustart", le(0x0a0b_0c0d_0e0fu64, 8)),
            ("flags", le(FRAME_ZSTD | FRAME_BATCH, 2)),
            ("member_count", le(2u16, 2)),
        ],
    );
    assert_eq!(n, FRAME_SIZE);
    // The second member of the first frame.
    let m1 = FETCH_HEAD + FRAME_SIZE + MEMBER_SIZE;
    let n = check_table(
        doc,
        "Member (40 bytes)",
        &fetch[m1..],
        &[
            ("offset", le(16u32, 4)),
            ("size", le(16u32, 4)),
            ("digest", vec![1; 32]),
        ],
    );
    assert_eq!(n, MEMBER_SIZE);
    let n = check_table(
        doc,
        "### FetchDone (kind 7",
        &body(6),
        &[("frame_count", le(2u16, 2))],
    );
    assert_eq!(n, DONE_HEAD);
    assert_eq!(
        &body(6)[DONE_HEAD..],
        &[0, 0, FrameStatus::Corrupt as u8, 0]
    );
    let used = body(7);
    let n = check_table(
        doc,
        "### Used (kind 8",
        &used,
        &[
            ("handle", le(0xa1a2_a3a4u32, 4)),
            ("range_count", le(2u16, 2)),
        ],
    );
    assert_eq!(n, USED_HEAD);
    assert_eq!(&used[USED_HEAD..USED_HEAD + 8], &le(0xb1b2u64, 8)[..]);
    assert_eq!(&used[USED_HEAD + 8..USED_HEAD + 16], &le(0xc1c2u64, 8)[..]);
    assert_eq!(used.len(), USED_HEAD + 2 * USED_RANGE_SIZE);
    let n = check_table(
        doc,
        "### CloseBlob (kind 9",
        &body(8),
        &[("handle", le(0xd1d2_d3d4u32, 4))],
    );
    assert_eq!(n, CLOSE_SIZE);
    assert!(body(9).is_empty() && body(10).is_empty());
}
