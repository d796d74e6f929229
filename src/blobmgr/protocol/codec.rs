//! The codec of the blob-manager protocol: [`encode`] and [`decode`], byte
//! for byte as `docs/PROTOCOL.md` lays packets out. Every length and count
//! is checked against what is left of the packet before it is used (the
//! bounds-checked cursor `Rd`), and the whole body must be consumed.

use super::*;

/// Encodes `p` as one packet. Fails (never panics) when the message breaks
/// a limit or a range rule of PROTOCOL.md: what this returns, every peer's
/// [`decode`] accepts, and decodes to `p`.
pub fn encode(p: &Packet) -> Result<Vec<u8>, ProtocolError> {
    let kind = p.message.kind();
    let mut b = Vec::with_capacity(HEADER_SIZE + 64);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&MAX_VERSION.to_le_bytes());
    b.extend_from_slice(&(kind as u16).to_le_bytes());
    b.extend_from_slice(&[0; 4]); // flags, reserved
    b.extend_from_slice(&[0; 4]); // body_len, patched below
    b.extend_from_slice(&p.request_id.to_le_bytes());
    encode_body(&p.message, &mut b)?;
    let body = b.len() - HEADER_SIZE;
    if b.len() > MAX_PACKET {
        return Err(ProtocolError::Oversized(b.len()));
    }
    // Fits: body <= MAX_BODY < 2^32.
    let len = u32::try_from(body).map_err(|_| ProtocolError::Oversized(b.len()))?;
    b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&len.to_le_bytes());
    // The decoder holds the range rules; a packet it refuses is not sent.
    decode(&b)?;
    Ok(b)
}

fn count16(kind: Kind, field: &'static str, n: usize, max: usize) -> Result<u16, ProtocolError> {
    match u16::try_from(n) {
        Ok(v) if n <= max => Ok(v),
        _ => Err(ProtocolError::Count {
            kind,
            field,
            count: n,
            max,
        }),
    }
}

fn encode_body(m: &Message, b: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let kind = m.kind();
    match m {
        Message::Hello {
            min_version,
            max_version,
            compat,
            incompat,
        } => {
            b.extend_from_slice(&min_version.to_le_bytes());
            b.extend_from_slice(&max_version.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&compat.to_le_bytes());
            b.extend_from_slice(&incompat.to_le_bytes());
        }
        Message::HelloOk {
            version,
            compat,
            incompat,
            instance,
        } => {
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&compat.to_le_bytes());
            b.extend_from_slice(&incompat.to_le_bytes());
            b.extend_from_slice(instance);
        }
        Message::Error { code, message } => {
            let n = count16(kind, "msg_len", message.len(), MAX_ERROR_MESSAGE)?;
            b.extend_from_slice(&(*code as u16).to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(message.as_bytes());
        }
        Message::OpenBlob {
            blob_id,
            blob_size,
            layout,
            granularity,
        } => {
            b.extend_from_slice(blob_id);
            b.extend_from_slice(&blob_size.to_le_bytes());
            b.extend_from_slice(layout);
            b.extend_from_slice(&granularity.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        Message::BlobOpened { handle, generation } => {
            b.extend_from_slice(&handle.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&generation.to_le_bytes());
        }
        Message::Fetch {
            handle,
            lane,
            deadline_ms,
            frames,
        } => encode_fetch(*handle, *lane, *deadline_ms, frames, b)?,
        Message::FetchDone { status } => {
            let n = count16(kind, "frame_count", status.len(), MAX_FRAMES)?;
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&[0; 6]);
            for s in status {
                b.extend_from_slice(&(*s as u16).to_le_bytes());
            }
        }
        Message::Used { handle, ranges } => {
            let n = count16(kind, "range_count", ranges.len(), MAX_USED_RANGES)?;
            b.extend_from_slice(&handle.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&[0; 2]);
            for r in ranges {
                b.extend_from_slice(&r.start.to_le_bytes());
                b.extend_from_slice(&r.len.to_le_bytes());
            }
        }
        Message::CloseBlob { handle } => {
            b.extend_from_slice(&handle.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        Message::Ping | Message::Pong => {}
    }
    Ok(())
}

fn encode_fetch(
    handle: u32,
    lane: Lane,
    deadline_ms: u32,
    frames: &[FetchFrame],
    b: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let kind = Kind::Fetch;
    let n = count16(kind, "frame_count", frames.len(), MAX_FRAMES)?;
    b.extend_from_slice(&handle.to_le_bytes());
    b.push(lane as u8);
    b.push(0);
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&deadline_ms.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for f in frames {
        let m = count16(kind, "member_count", f.members.len(), MAX_MEMBERS)?;
        b.extend_from_slice(&f.coff.to_le_bytes());
        b.extend_from_slice(&f.clen.to_le_bytes());
        b.extend_from_slice(&f.ulen.to_le_bytes());
        b.extend_from_slice(&f.ustart.to_le_bytes());
        b.extend_from_slice(&f.flags.to_le_bytes());
        b.extend_from_slice(&m.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for mb in &f.members {
            b.extend_from_slice(&mb.offset.to_le_bytes());
            b.extend_from_slice(&mb.size.to_le_bytes());
            b.extend_from_slice(&mb.digest);
        }
        if b.len() > MAX_PACKET {
            return Err(ProtocolError::Oversized(b.len()));
        }
    }
    Ok(())
}

/// A bounds-checked cursor over one body.
struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
    kind: Kind,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.saturating_add(n);
        let s = self.b.get(self.pos..end).ok_or(ProtocolError::BodySize {
            kind: self.kind,
            expected: end,
            actual: self.b.len(),
        })?;
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.arr().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.arr().map(u64::from_le_bytes)
    }
    fn zero(&mut self, n: usize, field: &'static str) -> Result<(), ProtocolError> {
        if self.take(n)?.iter().any(|&x| x != 0) {
            return Err(ProtocolError::Reserved {
                kind: self.kind,
                field,
            });
        }
        Ok(())
    }
    /// Requires the body to be exactly `n` bytes (checked before reading).
    fn exact(&self, n: usize) -> Result<(), ProtocolError> {
        if self.b.len() != n {
            return Err(ProtocolError::BodySize {
                kind: self.kind,
                expected: n,
                actual: self.b.len(),
            });
        }
        Ok(())
    }
    fn count(&self, field: &'static str, n: usize, max: usize) -> Result<usize, ProtocolError> {
        if n == 0 || n > max {
            return Err(ProtocolError::Count {
                kind: self.kind,
                field,
                count: n,
                max,
            });
        }
        Ok(n)
    }
    fn range(&self, field: &'static str, v: u64, ok: bool) -> Result<(), ProtocolError> {
        if ok {
            Ok(())
        } else {
            Err(ProtocolError::Value {
                kind: self.kind,
                field,
                value: v,
            })
        }
    }
}

/// Decodes one packet (exactly the bytes of one `SOCK_SEQPACKET` read).
pub fn decode(p: &[u8]) -> Result<Packet, ProtocolError> {
    if p.len() > MAX_PACKET {
        return Err(ProtocolError::Oversized(p.len()));
    }
    let head: &[u8; HEADER_SIZE] = p
        .get(..HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProtocolError::ShortHeader(p.len()))?;
    let le16 = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let mut magic = [0; 4];
    magic.copy_from_slice(&head[OFF_MAGIC..OFF_MAGIC + 4]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = le16(OFF_VERSION);
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(ProtocolError::Version(version));
    }
    let kind = Kind::try_from(le16(OFF_KIND))?;
    let flags = le16(OFF_FLAGS);
    if flags != 0 {
        return Err(ProtocolError::Flags(flags));
    }
    if le16(OFF_RESERVED) != 0 {
        return Err(ProtocolError::Reserved {
            kind,
            field: "reserved",
        });
    }
    let mut w = [0; 4];
    w.copy_from_slice(&head[OFF_BODY_LEN..OFF_BODY_LEN + 4]);
    let body_len = u32::from_le_bytes(w);
    let body = &p[HEADER_SIZE..];
    if usize::try_from(body_len).ok() != Some(body.len()) {
        return Err(ProtocolError::BodyLength {
            header: body_len,
            actual: body.len(),
        });
    }
    let mut id = [0; 8];
    id.copy_from_slice(&head[OFF_REQUEST_ID..OFF_REQUEST_ID + 8]);
    let mut r = Rd {
        b: body,
        pos: 0,
        kind,
    };
    let message = decode_body(&mut r)?;
    if r.pos != body.len() {
        return Err(ProtocolError::BodySize {
            kind,
            expected: r.pos,
            actual: body.len(),
        });
    }
    Ok(Packet {
        request_id: u64::from_le_bytes(id),
        message,
    })
}

fn decode_body(r: &mut Rd<'_>) -> Result<Message, ProtocolError> {
    Ok(match r.kind {
        Kind::Hello => {
            r.exact(HELLO_SIZE)?;
            let (min_version, max_version) = (r.u16()?, r.u16()?);
            r.range("min_version", min_version.into(), min_version >= 1)?;
            r.range(
                "max_version",
                max_version.into(),
                max_version >= min_version,
            )?;
            r.zero(4, "reserved")?;
            Message::Hello {
                min_version,
                max_version,
                compat: r.u64()?,
                incompat: r.u64()?,
            }
        }
        Kind::HelloOk => {
            r.exact(HELLO_OK_SIZE)?;
            let version = r.u16()?;
            r.range("version", version.into(), version >= 1)?;
            r.zero(6, "reserved")?;
            Message::HelloOk {
                version,
                compat: r.u64()?,
                incompat: r.u64()?,
                instance: r.arr()?,
            }
        }
        Kind::Error => decode_error(r)?,
        Kind::OpenBlob => {
            r.exact(OPEN_SIZE)?;
            let blob_id = r.arr()?;
            let blob_size = r.u64()?;
            r.range("blob_size", blob_size, blob_size >= 1)?;
            let layout = r.arr()?;
            let g = r.u32()?;
            let ok = g.is_power_of_two() && (MIN_GRANULARITY..=MAX_GRANULARITY).contains(&g);
            r.range("granularity", g.into(), ok)?;
            r.zero(4, "reserved")?;
            Message::OpenBlob {
                blob_id,
                blob_size,
                layout,
                granularity: g,
            }
        }
        Kind::BlobOpened => {
            r.exact(OPENED_SIZE)?;
            let handle = r.u32()?;
            r.zero(4, "reserved")?;
            Message::BlobOpened {
                handle,
                generation: r.u64()?,
            }
        }
        Kind::Fetch => decode_fetch(r)?,
        Kind::FetchDone => {
            let n = usize::from(r.u16()?);
            let n = r.count("frame_count", n, MAX_FRAMES)?;
            r.zero(6, "reserved")?;
            r.exact(DONE_HEAD + 2 * n)?;
            let status = (0..n)
                .map(|_| FrameStatus::try_from(r.u16()?))
                .collect::<Result<_, _>>()?;
            Message::FetchDone { status }
        }
        Kind::Used => decode_used(r)?,
        Kind::CloseBlob => {
            r.exact(CLOSE_SIZE)?;
            let handle = r.u32()?;
            r.zero(4, "reserved")?;
            Message::CloseBlob { handle }
        }
        Kind::Ping => {
            r.exact(0)?;
            Message::Ping
        }
        Kind::Pong => {
            r.exact(0)?;
            Message::Pong
        }
    })
}

fn decode_error(r: &mut Rd<'_>) -> Result<Message, ProtocolError> {
    let code = ErrorCode::try_from(r.u16()?)?;
    let n = usize::from(r.u16()?);
    if n > MAX_ERROR_MESSAGE {
        return Err(ProtocolError::Count {
            kind: r.kind,
            field: "msg_len",
            count: n,
            max: MAX_ERROR_MESSAGE,
        });
    }
    r.zero(4, "reserved")?;
    r.exact(ERROR_HEAD + n)?;
    let message = std::str::from_utf8(r.take(n)?)
        .map_err(|_| ProtocolError::Utf8)?
        .to_owned();
    Ok(Message::Error { code, message })
}

fn decode_used(r: &mut Rd<'_>) -> Result<Message, ProtocolError> {
    let handle = r.u32()?;
    let n = usize::from(r.u16()?);
    let n = r.count("range_count", n, MAX_USED_RANGES)?;
    r.zero(2, "reserved")?;
    r.exact(USED_HEAD + USED_RANGE_SIZE * n)?;
    let mut ranges = Vec::with_capacity(n);
    for _ in 0..n {
        let (start, len) = (r.u64()?, r.u64()?);
        r.range("len", len, len >= 1 && start.checked_add(len).is_some())?;
        ranges.push(UsedRange { start, len });
    }
    Ok(Message::Used { handle, ranges })
}

fn decode_fetch(r: &mut Rd<'_>) -> Result<Message, ProtocolError> {
    let handle = r.u32()?;
    let lane = Lane::try_from(r.u8()?)?;
    r.zero(1, "reserved0")?;
    let n = usize::from(r.u16()?);
    let n = r.count("frame_count", n, MAX_FRAMES)?;
    let deadline_ms = r.u32()?;
    let ok = (1..=MAX_DEADLINE_MS).contains(&deadline_ms);
    r.range("deadline_ms", deadline_ms.into(), ok)?;
    r.zero(4, "reserved1")?;
    // At least every frame's fixed part must be there.
    let least = FETCH_HEAD + n * FRAME_SIZE;
    if r.b.len() < least {
        return Err(ProtocolError::BodySize {
            kind: r.kind,
            expected: least,
            actual: r.b.len(),
        });
    }
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(decode_frame(r)?);
    }
    Ok(Message::Fetch {
        handle,
        lane,
        deadline_ms,
        frames,
    })
}

fn decode_frame(r: &mut Rd<'_>) -> Result<FetchFrame, ProtocolError> {
    let coff = r.u64()?;
    let clen = r.u32()?;
    let ulen = r.u32()?;
    let ustart = r.u64()?;
    let flags = r.u16()?;
    let len_ok = |l: u32| (1..=MAX_FRAME_LEN).contains(&l);
    r.range("clen", clen.into(), len_ok(clen))?;
    r.range("ulen", ulen.into(), len_ok(ulen))?;
    let c_end = coff.checked_add(clen.into()).is_some();
    r.range("coff", coff, c_end)?;
    let u_end = ustart.checked_add(ulen.into()).is_some();
    r.range("ustart", ustart, u_end)?;
    r.range("flags", flags.into(), flags & !FRAME_FLAGS == 0)?;
    let m = usize::from(r.u16()?);
    let m = r.count("member_count", m, MAX_MEMBERS)?;
    r.zero(4, "reserved")?;
    // Checked against what is left before allocating.
    let left = r.b.len().saturating_sub(r.pos);
    if m.saturating_mul(MEMBER_SIZE) > left {
        return Err(ProtocolError::BodySize {
            kind: r.kind,
            expected: r.pos.saturating_add(m.saturating_mul(MEMBER_SIZE)),
            actual: r.b.len(),
        });
    }
    let mut members = Vec::with_capacity(m);
    for _ in 0..m {
        let (offset, size) = (r.u32()?, r.u32()?);
        let end = u64::from(offset) + u64::from(size);
        r.range("member size", size.into(), size >= 1 && end <= ulen.into())?;
        members.push(Member {
            offset,
            size,
            digest: r.arr()?,
        });
    }
    Ok(FetchFrame {
        coff,
        clen,
        ustart,
        ulen,
        flags,
        members,
    })
}
