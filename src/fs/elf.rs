//! The shared libraries an ELF object names (`DT_NEEDED`), read from the
//! object's bytes in three small reads: the header and program headers,
//! the dynamic section, and the names in the string table.
//!
//! Only 64-bit little-endian objects (x86-64, AArch64, RISC-V) are read;
//! anything else, or anything malformed, names nothing. The bytes come
//! from an image, so they are untrusted: every offset is bounds-checked,
//! every count capped, and the cost is linear in the bytes read (at most
//! [`HEAD`] + [`MAX_DYNAMIC`] + [`MAX_STRTAB`]).

/// The first bytes of an ELF object.
pub const MAGIC: &[u8; 4] = b"\x7fELF";

/// Bytes read for the header and program headers.
pub const HEAD: u32 = 4096;
/// Dynamic section bytes read at most (1024 entries).
pub const MAX_DYNAMIC: u32 = 16 << 10;
/// String table bytes read at most.
pub const MAX_STRTAB: u32 = 64 << 10;
/// Names returned at most.
pub const MAX_NEEDED: usize = 64;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const PHDR_SIZE: usize = 56;
const DYN_SIZE: usize = 16;

/// Reads up to `len` bytes at `offset` of the object (short at its end);
/// `None` if they cannot be read.
pub type ReadAt<'a> = dyn FnMut(u64, u32) -> Option<Vec<u8>> + 'a;

/// A loadable segment: where its bytes lie in memory and in the file.
#[derive(Debug, Clone, Copy)]
struct Load {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// The libraries the object read by `read` names, in order (at most
/// [`MAX_NEEDED`], each a non-empty name without NUL).
pub fn needed(read: &mut ReadAt<'_>) -> Vec<Vec<u8>> {
    needed_opt(read).unwrap_or_default()
}

fn needed_opt(read: &mut ReadAt<'_>) -> Option<Vec<Vec<u8>>> {
    let head = read(0, HEAD)?;
    let (dynamic, loads) = segments(&head)?;
    let len = u32::try_from(dynamic.1.min(u64::from(MAX_DYNAMIC))).ok()?;
    let dyn_bytes = read(dynamic.0, len)?;
    let (strtab, strsz, names) = entries(&dyn_bytes);
    let strtab = file_offset(&loads, strtab?)?;
    let len = u32::try_from(strsz?.min(u64::from(MAX_STRTAB))).ok()?;
    let table = read(strtab, len)?;
    let mut out = Vec::new();
    for off in names {
        let Some(rest) = usize::try_from(off).ok().and_then(|o| table.get(o..)) else {
            continue;
        };
        let name = &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())];
        if !name.is_empty() && name.len() < 256 && !out.iter().any(|n: &Vec<u8>| n == name) {
            out.push(name.to_vec());
        }
    }
    Some(out)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The dynamic segment (file offset, size) and the loadable segments,
/// from the header and program headers in `head`.
fn segments(head: &[u8]) -> Option<((u64, u64), Vec<Load>)> {
    // 64-bit (class 2), little-endian (data 1).
    if head.get(..4)? != MAGIC || head.get(4)? != &2 || head.get(5)? != &1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(head, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(head, 0x36)?);
    let phnum = usize::from(u16_at(head, 0x38)?);
    if phentsize < PHDR_SIZE {
        return None;
    }
    let mut dynamic = None;
    let mut loads = Vec::new();
    // Program headers past the bytes read are not looked for (the
    // header's 16-bit count bounds the loop anyway).
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let Some(ph) = head.get(at..at.checked_add(PHDR_SIZE)?) else {
            break;
        };
        let (kind, offset) = (u32_at(ph, 0)?, u64_at(ph, 8)?);
        let (vaddr, filesz) = (u64_at(ph, 16)?, u64_at(ph, 32)?);
        match kind {
            PT_LOAD => loads.push(Load {
                vaddr,
                offset,
                filesz,
            }),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            _ => {}
        }
    }
    Some((dynamic?, loads))
}

/// From the dynamic entries: the string table's address and size, and
/// the name offsets of the first [`MAX_NEEDED`] `DT_NEEDED` entries.
fn entries(dynamic: &[u8]) -> (Option<u64>, Option<u64>, Vec<u64>) {
    let (mut strtab, mut strsz, mut names) = (None, None, Vec::new());
    for e in dynamic.chunks_exact(DYN_SIZE) {
        let (Some(tag), Some(val)) = (u64_at(e, 0), u64_at(e, 8)) else {
            break;
        };
        match tag {
            DT_NULL => break,
            DT_NEEDED if names.len() < MAX_NEEDED => names.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            _ => {}
        }
    }
    (strtab, strsz, names)
}

/// The file offset of address `vaddr`, through the segment holding it.
fn file_offset(loads: &[Load], vaddr: u64) -> Option<u64> {
    let l = loads
        .iter()
        .find(|l| l.vaddr <= vaddr && vaddr - l.vaddr < l.filesz)?;
    l.offset.checked_add(vaddr - l.vaddr)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 object naming `libs`: header, a PT_LOAD of the
    /// whole file at address 0x400000, a PT_DYNAMIC, the dynamic entries
    /// and the string table.
    pub(crate) fn object(libs: &[&str]) -> Vec<u8> {
        const BASE: u64 = 0x40_0000;
        let mut strtab = vec![0u8];
        let mut offs = Vec::new();
        for l in libs {
            offs.push(strtab.len() as u64);
            strtab.extend_from_slice(l.as_bytes());
            strtab.push(0);
        }
        let dyn_off = 64 + 2 * PHDR_SIZE as u64;
        let dyn_len = (libs.len() as u64 + 3) * DYN_SIZE as u64;
        let str_off = dyn_off + dyn_len;
        let total = str_off + strtab.len() as u64;
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(MAGIC);
        (b[4], b[5], b[6]) = (2, 1, 1);
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        for (kind, off, len) in [(PT_LOAD, 0, total), (PT_DYNAMIC, dyn_off, dyn_len)] {
            let mut ph = vec![0u8; PHDR_SIZE];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[16..24].copy_from_slice(&(BASE + off).to_le_bytes());
            ph[32..40].copy_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        let mut dyns: Vec<(u64, u64)> = offs.iter().map(|&o| (DT_NEEDED, o)).collect();
        dyns.push((DT_STRTAB, BASE + str_off));
        dyns.push((DT_STRSZ, strtab.len() as u64));
        dyns.push((DT_NULL, 0));
        for (tag, val) in dyns {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&val.to_le_bytes());
        }
        b.extend_from_slice(&strtab);
        b
    }

    fn reader(bytes: &[u8]) -> impl FnMut(u64, u32) -> Option<Vec<u8>> + '_ {
        |off, len| {
            let start = usize::try_from(off).ok()?.min(bytes.len());
            let end = start.saturating_add(len as usize).min(bytes.len());
            Some(bytes[start..end].to_vec())
        }
    }

    #[test]
    fn the_needed_libraries_of_an_object_in_order() {
        let obj = object(&["libm.so.6", "libz.so.1", "libc.so.6"]);
        let got = needed(&mut reader(&obj));
        let want: Vec<Vec<u8>> = ["libm.so.6", "libz.so.1", "libc.so.6"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn anything_but_a_little_endian_64_bit_object_names_nothing() {
        let obj = object(&["libc.so.6"]);
        for (at, value) in [(0, 0x7e), (4, 1), (5, 2)] {
            let mut bad = obj.clone();
            bad[at] = value;
            assert!(needed(&mut reader(&bad)).is_empty(), "byte {at} = {value}");
        }
        assert!(needed(&mut reader(b"#!/bin/sh\n")).is_empty());
    }

    #[test]
    fn a_read_that_fails_names_nothing() {
        let obj = object(&["libc.so.6"]);
        // The three reads: head, dynamic section, string table.
        for ok_reads in 0..=3 {
            let mut n = 0;
            let mut read = |off, len| {
                n += 1;
                (n <= ok_reads).then(|| reader(&obj)(off, len)).flatten()
            };
            let got = needed(&mut read);
            assert_eq!(got.len(), usize::from(ok_reads == 3), "{ok_reads} reads ok");
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_survived() {
        let obj = object(&["libssl.so.3", "libcrypto.so.3"]);
        for len in 0..obj.len() {
            let _ = needed(&mut reader(&obj[..len]));
        }
        for at in 0..obj.len() {
            for value in [0x00, 0x7f, 0xff] {
                let mut bad = obj.clone();
                bad[at] = value;
                let got = needed(&mut reader(&bad));
                assert!(got.len() <= MAX_NEEDED && got.iter().all(|n| !n.is_empty()));
            }
        }
    }
}
