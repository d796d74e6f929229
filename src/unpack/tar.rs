//! Writing an image as a POSIX.1-2001 (pax) tar stream.
//!
//! Each entry is a ustar header, preceded by a pax extended header (`x`)
//! carrying what ustar cannot: `mtime=SEC.NSEC` (always, nine digits of
//! nanoseconds), `SCHILY.xattr.NAME` per xattr (the GNU tar / star
//! convention, values as raw bytes; `LIBARCHIVE.xattr.NAME` for a name
//! holding `=`, see [`xattr_record`]), and when needed `path` / `linkpath`
//! (over 100 bytes, or 255 with the prefix split), `uid` / `gid` (over
//! 2097151) and `size` (8 GiB and over). Names are written as raw bytes,
//! never re-encoded. Ownership is numeric only (no user/group names).
//!
//! The root is the entry `./`, directories end in `/`, other paths are
//! relative. A hardlinked inode is a full entry at its first path and a
//! `Link` entry naming that path at the others. Sockets have no tar
//! representation: they are skipped with a warning on stderr. File data is
//! streamed one chunk at a time, holes as zeros, so memory use does not
//! depend on file sizes.

use super::data::FileReader;
use super::{Stats, UnpackError};
use crate::backend::Backend;
use crate::image::walk::{dev_split, escape, walk, Visit};
use rafs_format::layout::*;
use rafs_format::{Bootstrap, FormatError};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tar::{EntryType, Header};

/// Largest value of a 7-digit octal ustar uid, gid or device number field.
const USTAR_MAX_ID: u32 = 0o7777777;
/// Largest value of the 11-digit octal ustar size field.
const USTAR_MAX_SIZE: u64 = 0o77777777777;
/// Length of the ustar name and linkname fields.
const USTAR_NAME_LEN: usize = 100;

/// Writes image `b` as a tar to `dest`, a file path or `-` for stdout.
pub(super) fn unpack_tar(
    b: &Bootstrap<'_>,
    backend: &dyn Backend,
    dest: &Path,
) -> Result<Stats, UnpackError> {
    let io = |source| UnpackError::Io {
        path: dest.to_owned(),
        source,
    };
    if dest == Path::new("-") {
        let out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
        let (stats, mut out) = write_tar(b, backend, out)?;
        out.flush().map_err(io)?;
        Ok(stats)
    } else {
        let file = File::create(dest).map_err(io)?;
        let (stats, out) = write_tar(b, backend, BufWriter::with_capacity(1 << 20, file))?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        Ok(stats)
    }
}

/// Writes image `b` as a tar stream to `out`; returns `out`, finished with
/// the end-of-archive blocks but not flushed.
pub(super) fn write_tar<W: Write>(
    b: &Bootstrap<'_>,
    backend: &dyn Backend,
    out: W,
) -> Result<(Stats, W), UnpackError> {
    let mut w = TarWriter {
        tb: tar::Builder::new(Output {
            inner: out,
            failed: false,
        }),
        b,
        backend,
        first: HashMap::new(),
        stats: Stats::default(),
        open: false,
    };
    if let Err(e) = walk(b, |v| w.entry(v)) {
        let sink = w.tb.get_mut();
        if !w.open {
            // Best effort: the unpack has failed whatever this returns.
            let _ = sink.inner.write_all(&[0xff; 512]);
        }
        sink.failed = true;
        return Err(e);
    }
    let out = w.tb.into_inner().map_err(|source| UnpackError::Tar {
        path: "(end of archive)".into(),
        source,
    })?;
    Ok((w.stats, out.inner))
}

/// The archive's sink, which refuses every write once the unpack has failed.
///
/// The `tar` crate's `Builder` finishes the archive (two zero blocks) when
/// dropped, even after an error. An entry cut short by a chunk that failed
/// verification was thus followed by 1 KiB of zeros, which readers took as
/// the rest of its data and a clean end of archive: `rafs unpack --tar - |
/// tar -x` extracted a zero-filled file and succeeded. Refusing those
/// writes leaves the archive cut off inside the entry whose chunk failed,
/// which GNU tar and the `tar` crate reject. A failure between two entries
/// (a device number no header can hold, say) would leave an archive that
/// ends cleanly at an entry boundary, so [`write_tar`] then writes one
/// block that is no valid header (all `0xff`) before refusing the rest.
struct Output<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("unpack failed: archive left incomplete"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct TarWriter<'a, 'b, W: Write> {
    tb: tar::Builder<Output<W>>,
    b: &'a Bootstrap<'b>,
    backend: &'a dyn Backend,
    /// Tar name of the first entry of every hardlinked inode.
    first: HashMap<u32, Vec<u8>>,
    stats: Stats,
    /// An entry is partly written: the archive does not end at an entry
    /// boundary (see [`Output`]).
    open: bool,
}

/// Pax extended header records, key and value as raw bytes.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Formats a timestamp as pax wants it: decimal seconds, fraction after a
/// dot; negative times are negative as a whole (`-1.5` is 1.5 s before the
/// epoch).
pub(super) fn pax_time(sec: i64, nsec: u32) -> String {
    let total = i128::from(sec) * 1_000_000_000 + i128::from(nsec);
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// Encodes pax records: `"<len> <key>=<value>\n"`, where `len` counts the
/// whole record including its own digits.
fn encode_records(records: &Records) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

/// The pax record of one xattr: `SCHILY.xattr.NAME` with the raw value; or,
/// when the name holds a `=`, libarchive's `LIBARCHIVE.xattr.NAME` with the
/// name %-encoded and the value in base64.
///
/// A pax key ends at its first `=`, so `SCHILY.xattr.user.a=b` with value
/// `c` reads back, in `rafs create`, GNU tar and the `tar` crate alike, as
/// xattr `user.a` with value `b=c`. The libarchive form is what `rafs
/// create` and bsdtar read back exactly; GNU tar ignores it with a warning
/// rather than restoring a wrong xattr.
fn xattr_record(name: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine as _;
    if !name.contains(&b'=') {
        return ([b"SCHILY.xattr.", name].concat(), value.to_vec());
    }
    let mut key = b"LIBARCHIVE.xattr.".to_vec();
    for &c in name {
        if c <= b' ' || c > b'~' || c == b'%' || c == b'=' {
            key.extend_from_slice(format!("%{c:02X}").as_bytes());
        } else {
            key.push(c);
        }
    }
    let value = base64::engine::general_purpose::STANDARD.encode(value);
    (key, value.into_bytes())
}

/// Sets the device number fields from a Linux `rdev`.
///
/// The fields hold seven octal digits and the `tar` crate's setters keep
/// only the low ones of a larger number, so a major or minor over
/// [`USTAR_MAX_ID`] (possible only with `rdev` bits above 32) is refused
/// rather than written as another device.
fn set_device(h: &mut Header, rdev: u64) -> io::Result<()> {
    let (major, minor) = dev_split(rdev);
    if major > USTAR_MAX_ID || minor > USTAR_MAX_ID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "device {major}:{minor} does not fit a tar header (at most {USTAR_MAX_ID} each)"
            ),
        ));
    }
    h.set_device_major(major)?;
    h.set_device_minor(minor)
}

/// Sets a ustar name field from raw bytes, or falls back to a pax record
/// (`key`) with a truncated name in the field.
fn set_name(h: &mut Header, pax: &mut Records, name: &[u8], link: bool) {
    let fits = name.len() <= USTAR_NAME_LEN;
    if link {
        if !fits {
            pax.push((b"linkpath".to_vec(), name.to_vec()));
        }
        let field = &mut h.as_old_mut().linkname;
        let n = name.len().min(USTAR_NAME_LEN);
        field[..n].copy_from_slice(&name[..n]);
        return;
    }
    if fits {
        let n = name.len();
        h.as_old_mut().name[..n].copy_from_slice(name);
    } else if h.set_path(OsStr::from_bytes(name)).is_err() {
        pax.push((b"path".to_vec(), name.to_vec()));
        h.as_old_mut().name.copy_from_slice(&name[..USTAR_NAME_LEN]);
    }
}

impl<W: Write> TarWriter<'_, '_, W> {
    fn entry(&mut self, v: &Visit<'_, '_>) -> Result<(), UnpackError> {
        let inode = v.inode;
        if inode.file_type() == S_IFSOCK {
            eprintln!(
                "rafs: warning: {}: sockets cannot be stored in tar; skipped",
                escape(v.path)
            );
            self.stats.skipped += 1;
            return Ok(());
        }
        let mut name = if v.ino == 0 {
            b".".to_vec()
        } else {
            v.rel().to_vec()
        };
        if inode.is_dir() {
            name.push(b'/');
        }
        let hardlinked = !inode.is_dir() && inode.nlink.get() > 1;
        let link_to = if hardlinked {
            self.first.get(&v.ino).cloned()
        } else {
            None
        };
        let (h, pax) = self.header(v, &name, link_to.as_deref())?;
        self.append(v, &h, &pax, link_to.is_none())?;
        if hardlinked && link_to.is_none() {
            self.first.insert(v.ino, name);
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// The ustar header and pax records of one entry.
    fn header(
        &self,
        v: &Visit<'_, '_>,
        name: &[u8],
        link_to: Option<&[u8]>,
    ) -> Result<(Header, Records), UnpackError> {
        let (b, inode) = (self.b, v.inode);
        let mut h = Header::new_ustar();
        let mut pax = Records::new();
        set_name(&mut h, &mut pax, name, false);
        let mut size = 0;
        if let Some(target) = link_to {
            h.set_entry_type(EntryType::Link);
            set_name(&mut h, &mut pax, target, true);
        } else {
            let kind = match inode.file_type() {
                S_IFREG => {
                    size = inode.size.get();
                    EntryType::Regular
                }
                S_IFDIR => EntryType::Directory,
                S_IFLNK => {
                    set_name(&mut h, &mut pax, b.symlink_target(v.ino)?, true);
                    EntryType::Symlink
                }
                S_IFCHR => EntryType::Char,
                S_IFBLK => EntryType::Block,
                S_IFIFO => EntryType::Fifo,
                _ => {
                    return Err(FormatError::BadInode {
                        ino: v.ino,
                        reason: "unknown file type",
                    }
                    .into())
                }
            };
            h.set_entry_type(kind);
            if inode.is_device() {
                set_device(&mut h, inode.rdev.get()).map_err(|source| UnpackError::Tar {
                    path: escape(v.path),
                    source,
                })?;
            }
            for x in b.xattrs(v.ino)? {
                pax.push(xattr_record(b.xattr_name(x)?, b.xattr_value(x)?));
            }
        }
        self.set_meta(&mut h, &mut pax, inode, size);
        Ok((h, pax))
    }

    fn set_meta(&self, h: &mut Header, pax: &mut Records, inode: &Inode, size: u64) {
        h.set_size(size);
        if size > USTAR_MAX_SIZE {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        h.set_mode(inode.mode.get() & 0o7777);
        for (key, id) in [("uid", inode.uid.get()), ("gid", inode.gid.get())] {
            if id > USTAR_MAX_ID {
                pax.push((key.as_bytes().to_vec(), id.to_string().into_bytes()));
            }
        }
        h.set_uid(u64::from(inode.uid.get()));
        h.set_gid(u64::from(inode.gid.get()));
        let (sec, nsec) = (inode.mtime_sec.get(), inode.mtime_nsec.get());
        h.set_mtime(sec.max(0) as u64);
        pax.push((b"mtime".to_vec(), pax_time(sec, nsec).into_bytes()));
        h.set_cksum();
    }

    /// Appends the pax header (if any), the entry, and its data.
    fn append(
        &mut self,
        v: &Visit<'_, '_>,
        h: &Header,
        pax: &Records,
        with_data: bool,
    ) -> Result<(), UnpackError> {
        let tar_err = |source| UnpackError::Tar {
            path: escape(v.path),
            source,
        };
        self.open = true;
        if !pax.is_empty() {
            let data = encode_records(pax);
            let mut ph = Header::new_ustar();
            ph.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            ph.set_entry_type(EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_size(data.len() as u64);
            ph.set_cksum();
            self.tb.append(&ph, data.as_slice()).map_err(tar_err)?;
        }
        if with_data && v.inode.is_reg() {
            let reader = FileReader::new(self.backend, self.b, v.ino, v.path)?;
            self.tb
                .append(h, reader)
                .map_err(|e| UnpackError::from_io(e, tar_err))?;
            let chunks = self.b.file_chunks(v.ino)?;
            let data = chunks.iter().filter(|c| !c.is_hole());
            self.stats.data_bytes += data
                .map(|c| u64::from(c.uncompressed_size.get()))
                .sum::<u64>();
        } else {
            self.tb.append(h, io::empty()).map_err(tar_err)?;
        }
        self.open = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_and_times() {
        assert_eq!(pax_time(5, 7), "5.000000007");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(0, 0), "0.000000000");
        let r = encode_records(&vec![(b"mtime".to_vec(), b"1.5".to_vec())]);
        assert_eq!(r, b"13 mtime=1.5\n");
        // Length crossing a power of ten: 3 + 5 + 1 + 90 = 99 payload bytes.
        let long = vec![b'x'; 90];
        let r = encode_records(&vec![(b"k".to_vec(), long)]);
        let len: usize = std::str::from_utf8(&r[..r.iter().position(|&c| c == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, r.len());
        assert_eq!(dev_split(0x0801), (8, 1));
        assert_eq!(dev_split(0x0103), (1, 3));
    }
}
