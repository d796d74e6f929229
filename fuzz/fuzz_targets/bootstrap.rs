//! Fuzzes the bootstrap decoder. The checksum is skipped (it would reject
//! almost every input before the interesting checks): `parse`, then
//! `validate`, then every accessor over the whole tree, whatever validation
//! said. Nothing may panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs_format::Bootstrap;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    // Half the inputs get a correct checksum so `open` reaches the deep checks.
    if bytes.first().is_some_and(|b| b & 1 == 1) {
        rafs_format::seal(&mut bytes);
    }
    let _ = Bootstrap::open(&bytes);
    let Ok(b) = Bootstrap::parse(&bytes) else { return };
    let _ = b.validate();
    for ino in 0..b.inode_count().min(4096) {
        for e in b.dir_entries(ino).unwrap_or_default() {
            let _ = b.entry_name(e);
        }
        for c in b.file_chunks(ino).unwrap_or_default() {
            let _ = b.chunk_blob(c);
        }
        for x in b.xattrs(ino).unwrap_or_default() {
            let _ = (b.xattr_name(x), b.xattr_value(x));
        }
        let _ = b.chunk_index_at(ino, 1 << 20);
        let _ = b.symlink_target(ino);
        let _ = b.lookup(ino, b"usr");
    }
    let _ = b.resolve(b"/usr/bin/../lib/x");
});
