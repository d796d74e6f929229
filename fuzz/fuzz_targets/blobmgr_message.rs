//! Fuzzes the blob-manager packet decoder (`rafs::blobmgr::protocol`; see
//! docs/PROTOCOL.md). The input is one packet. Half the inputs get a valid
//! header written over their first 24 bytes (magic, version 1, a kind from
//! the input, flags 0, and the true body length) so the body decoders are
//! reached, not only the header checks. Nothing may panic; a packet that
//! decodes must re-encode to exactly its bytes and decode again to the same
//! value, and its descriptor count must be 0 or 2.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs::blobmgr::protocol::{
    decode, encode, HEADER_SIZE, MAGIC, MAX_VERSION, OFF_BODY_LEN, OFF_FLAGS, OFF_KIND, OFF_MAGIC,
    OFF_RESERVED, OFF_VERSION,
};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= HEADER_SIZE && bytes[OFF_FLAGS] & 1 == 1 {
        let kind = 1 + u16::from(bytes[OFF_KIND] % 11);
        let body = (bytes.len() - HEADER_SIZE) as u32;
        bytes[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC);
        bytes[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&MAX_VERSION.to_le_bytes());
        bytes[OFF_KIND..OFF_KIND + 2].copy_from_slice(&kind.to_le_bytes());
        bytes[OFF_FLAGS..OFF_RESERVED + 2].fill(0);
        bytes[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&body.to_le_bytes());
    }
    if let Ok(p) = decode(&bytes) {
        let fds = p.message.fds_expected();
        assert!(fds == 0 || fds == 2);
        let again = encode(&p).expect("a decoded packet encodes");
        assert_eq!(again, bytes, "re-encoding changed the bytes");
        assert_eq!(decode(&again).expect("re-encoded packet decodes"), p);
    }
});
