//! Fuzzes the cache range bitmap header check. The input is a whole map file;
//! the expected parameters (layout included) come from its own header bytes
//! half the time (so the comparisons and the length check are reached) and are fixed otherwise.
//! Inputs with a valid checksum are rare, so half of them get resealed.
//! Nothing may panic, and an accepted file must have exactly the length the
//! parameters imply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs::backend::BlobId;
use rafs::cache::bitmap::{check_header, MAP_CHECKSUM_OFFSET, MAP_HEADER_SIZE};
use rafs::cache::MapParams;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= MAP_HEADER_SIZE && bytes[0] & 1 == 1 {
        let sum = blake3::hash(&bytes[..MAP_CHECKSUM_OFFSET]);
        bytes[MAP_CHECKSUM_OFFSET..MAP_HEADER_SIZE].copy_from_slice(sum.as_bytes());
    }
    let from_header = |b: &[u8]| -> Option<MapParams> {
        let id: [u8; 32] = b.get(16..48)?.try_into().ok()?;
        let size = u64::from_le_bytes(b.get(48..56)?.try_into().ok()?);
        let g = u32::from_le_bytes(b.get(56..60)?.try_into().ok()?);
        let layout: [u8; 16] = b.get(72..88)?.try_into().ok()?;
        Some(MapParams::new(BlobId(id), size, g).ok()?.with_layout(layout))
    };
    let fixed = MapParams::new(BlobId([0; 32]), 1 << 20, 64 << 10).unwrap();
    let expect = if data.get(1).is_some_and(|b| b & 1 == 1) {
        from_header(&bytes).unwrap_or(fixed)
    } else {
        fixed
    };
    let len = bytes.len() as u64;
    if check_header(&bytes, len, &expect).is_ok() {
        assert_eq!(len, expect.file_len());
    }
    // The header alone, with the length claimed by the input's tail.
    let claimed = bytes.len().min(MAP_HEADER_SIZE);
    let _ = check_header(&bytes[..claimed], len.wrapping_mul(3), &expect);
});
