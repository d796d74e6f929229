//! Fuzzes the ELF reader that names an object's libraries (`DT_NEEDED`,
//! src/fs/elf.rs): the input is the object's bytes, served short at its
//! end like a file. Nothing may panic, reads stay within the reader's
//! caps, and every name returned is non-empty, NUL-free and bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs::fs::elf::{needed, HEAD, MAX_DYNAMIC, MAX_NEEDED, MAX_STRTAB};

fuzz_target!(|data: &[u8]| {
    let mut read_bytes = 0u64;
    let mut read = |off: u64, len: u32| -> Option<Vec<u8>> {
        read_bytes += u64::from(len);
        let start = usize::try_from(off).ok()?.min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Some(data[start..end].to_vec())
    };
    let names = needed(&mut read);
    assert!(read_bytes <= u64::from(HEAD + MAX_DYNAMIC + MAX_STRTAB));
    assert!(names.len() <= MAX_NEEDED);
    for n in &names {
        assert!(!n.is_empty() && n.len() < 256 && !n.contains(&0));
    }
});
