//! Tar sources: an OCI layer (or any tar stream) read in one pass.
//!
//! The stream may be plain, gzip or zstd; the compression is detected from
//! the first bytes, not from a file name, so stdin works too. Entries are
//! read in archive order and each file's data goes straight into the
//! pipeline as it streams past, so the blob follows archive order (the input
//! cannot be rewound to follow inode order, and need not be: the output is
//! still a pure function of the input).
//!
//! OCI layer semantics: `./` prefixes, empty and `.` components are
//! normalised away; `..` is resolved lexically and an entry (or hardlink
//! target) that would leave the root is an error, as is any path that
//! becomes absolute-with-`..`. A leading `/` is dropped. Missing parent
//! directories are created as implicit directories (0755, 0:0, mtime 0). A
//! later entry for the same path replaces the earlier one (a directory
//! replacing a directory keeps its entries and takes the new metadata); the
//! root entry `./` sets the root's metadata. Replaced files' chunks stay in
//! the blob, unreferenced. OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) are
//! kept verbatim as regular files: applying them is a layer-merging
//! concern ([`super::layers`]), and keeping them lets `rafs unpack`
//! reproduce the layer. For that merge, [`read_layer`] also records which
//! directories were only implied by deeper paths ([`Marks::implicit`]) and
//! lets a hardlink name a file of a lower layer (a placeholder node in
//! [`Marks::external`]).
//!
//! Metadata comes from the header with PAX overrides: `path`/`linkpath`
//! and GNU long names (via the `tar` crate), `uid`, `gid`, `mtime` with
//! nanoseconds ("sec.frac"), `SCHILY.xattr.<name>` (raw value) and
//! `LIBARCHIVE.xattr.<name>` (name %-encoded, value base64, as libarchive's
//! tar(5) specifies). GNU sparse entries are expanded by the `tar` crate,
//! which reads holes as zeros; all-zero chunks become holes again.
//!
//! Memory does not follow the sizes headers claim: file data streams into
//! the pipeline, the data of every other entry (a directory's, a link's, a
//! global PAX header's: the builder reads none of it) streams past unkept
//! while the `tar` crate skips it, and only the headers between two
//! entries' data are kept ([`super::pax::Recorder`]), at most 16 MiB of
//! them ([`super::pax::MAX_HEADER_BYTES`]): past that (a PAX or GNU
//! long-name extension header claiming more, say) the archive is refused
//! as corrupt. Besides the tree (a node per entry) and the pipeline's
//! window of chunks, reading a layer thus holds a few copies of at most
//! 16 MiB of headers (the recorder's, the `tar` crate's, the parsed
//! records), whatever sizes the headers claim.

use super::chunker::ChunkerConfig;
use super::error::{BuildError, Result};
use super::pipeline::Emitter;
use super::tree::{implicit_dir, Content, Meta, Node, NodeId, Slot, Tree};
use rafs_format::layout::*;
use rafs_format::Name;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::Path;
use tar::EntryType;

/// A boxed, sendable byte stream.
pub type Stream = Box<dyn Read + Send>;

fn corrupt(path: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError::CorruptArchive {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// What [`read_layer`] records besides the tree.
#[derive(Debug, Default)]
pub struct Marks {
    /// Directories no entry described: created only for deeper paths.
    pub implicit: HashSet<NodeId>,
    /// Hardlinks whose target is not (yet) in this archive: placeholder
    /// node (a [`Content::Special`] no other entry creates) -> target path.
    /// `None`: such a hardlink is an error (a single archive).
    pub external: Option<BTreeMap<NodeId, Vec<Name>>>,
}

/// Opens `source` (`-` is stdin) and undoes gzip or zstd compression,
/// detected by magic bytes.
pub fn open_stream(source: &Path) -> Result<Stream> {
    let raw: Stream = if source.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        let f = File::open(source).map_err(|e| BuildError::io(source, e))?;
        Box::new(f)
    };
    decompress(raw, &source.display().to_string())
}

/// Wraps a raw layer stream (plain, gzip or zstd, detected by magic
/// bytes) so that it reads the tar archive. `name` is for errors.
pub fn decompress(raw: Stream, name: &str) -> Result<Stream> {
    let mut raw = BufReader::with_capacity(1 << 20, raw);
    let mut magic = Vec::with_capacity(4);
    (&mut raw)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| BuildError::io(Path::new(name), e))?;
    let joined = Cursor::new(magic.clone()).chain(raw);
    Ok(match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(joined))),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            let d = zstd::stream::read::Decoder::new(joined).map_err(|e| corrupt("zstd", e))?;
            Box::new(d)
        }
        _ => Box::new(joined),
    })
}

/// Splits an archive path into validated components, resolving `.` and
/// `..` lexically. Escaping the root is [`BuildError::TarEscape`].
pub fn normalise(raw: &[u8], display: &str) -> Result<Vec<Name>> {
    let mut out: Vec<Name> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(BuildError::TarEscape {
                        path: display.to_owned(),
                    });
                }
            }
            _ => out.push(Name::new(comp).map_err(|e| BuildError::BadEntry {
                path: display.to_owned(),
                reason: format!("invalid name: {e}"),
            })?),
        }
    }
    Ok(out)
}

/// PAX overrides for one entry.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    mtime: Option<(i64, u32)>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Parses a PAX time, "sec[.frac]", possibly negative, to (sec, nsec) with
/// nsec in 0..1e9 (so -1.5 is (-2, 500000000)).
pub fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (neg, t) = s.strip_prefix('-').map_or((false, s), |t| (true, t));
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let digits: String = frac.chars().chain("000000000".chars()).take(9).collect();
    let nsec: u32 = digits.parse().ok()?;
    Some(match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, n) => (-sec - 1, 1_000_000_000 - n),
    })
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64 with optional padding (libarchive's xattr values).
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s: Vec<u8> = s.iter().copied().filter(|&c| c != b'=').collect();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for group in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in group.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

/// The entry's PAX records: parsed from `raw` (the recorded `x` header
/// data) when available, else through the `tar` crate's own parser.
fn pax_records<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: Option<&[u8]>,
    display: &str,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if let Some(records) = raw.and_then(super::pax::parse_records) {
        return Ok(records);
    }
    let Some(exts) = entry.pax_extensions().map_err(|e| corrupt(display, e))? else {
        return Ok(Vec::new());
    };
    exts.map(|ext| {
        let ext = ext.map_err(|e| corrupt(display, e))?;
        Ok((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()))
    })
    .collect()
}

fn parse_pax(records: Vec<(Vec<u8>, Vec<u8>)>, display: &str) -> Result<Pax> {
    let mut pax = Pax::default();
    let bad = |what: &str| corrupt(display, format!("bad PAX {what}"));
    for (key, value) in records {
        let (key, value) = (key.as_slice(), value.as_slice());
        let text = || std::str::from_utf8(value).map_err(|_| bad("value"));
        match key {
            b"mtime" => pax.mtime = Some(parse_pax_time(text()?).ok_or_else(|| bad("mtime"))?),
            b"uid" => pax.uid = Some(text()?.parse().map_err(|_| bad("uid"))?),
            b"gid" => pax.gid = Some(text()?.parse().map_err(|_| bad("gid"))?),
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.insert(name.to_vec(), value.to_vec());
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    let name = percent_decode(name).ok_or_else(|| bad("xattr name"))?;
                    let value = base64_decode(value).ok_or_else(|| bad("xattr value"))?;
                    pax.xattrs.insert(name, value);
                }
            }
        }
    }
    Ok(pax)
}

/// The Linux (glibc) encoding of a device number.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

fn entry_meta(header: &tar::Header, pax: Pax, file_type: u32, display: &str) -> Result<Meta> {
    let bad = |what: &str| corrupt(display, format!("bad {what} in header"));
    let id = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| corrupt(display, format!("{what} {v} too large")))
    };
    let uid = match pax.uid {
        Some(u) => u,
        None => header.uid().map_err(|_| bad("uid"))?,
    };
    let gid = match pax.gid {
        Some(g) => g,
        None => header.gid().map_err(|_| bad("gid"))?,
    };
    let (mtime_sec, mtime_nsec) = match pax.mtime {
        Some(t) => t,
        None => {
            let m = header.mtime().map_err(|_| bad("mtime"))?;
            (i64::try_from(m).map_err(|_| bad("mtime"))?, 0)
        }
    };
    let mut rdev = 0;
    if matches!(file_type, S_IFCHR | S_IFBLK) {
        let major = header.device_major().map_err(|_| bad("device major"))?;
        let minor = header.device_minor().map_err(|_| bad("device minor"))?;
        rdev = makedev(major.unwrap_or(0), minor.unwrap_or(0));
    }
    for (name, value) in &pax.xattrs {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(&0) {
            return Err(BuildError::BadEntry {
                path: display.to_owned(),
                reason: "invalid xattr name".into(),
            });
        }
        if value.len() > MAX_XATTR_VALUE_LEN {
            return Err(BuildError::BadEntry {
                path: display.to_owned(),
                reason: "xattr value longer than 64 KiB".into(),
            });
        }
    }
    Ok(Meta {
        mode: file_type | (header.mode().map_err(|_| bad("mode"))? & 0o7777),
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime_sec,
        mtime_nsec,
        rdev,
        xattrs: pax.xattrs.into_iter().collect(),
    })
}

/// Walks to the directory holding `comps`' last component, creating
/// implicit directories; a non-directory on the way is an error.
fn parent_dir(tree: &mut Tree, marks: &mut Marks, comps: &[Name], display: &str) -> Result<NodeId> {
    let mut dir = 0;
    for name in comps {
        let existing = tree.children(dir).and_then(|c| c.get(name).copied());
        dir = match existing {
            Some(id) if tree.children(id).is_some() => id,
            Some(_) => {
                return Err(BuildError::BadEntry {
                    path: display.to_owned(),
                    reason: format!(
                        "parent '{}' is not a directory",
                        String::from_utf8_lossy(name.as_bytes())
                    ),
                })
            }
            None => {
                let id = tree.add(Node::dir(implicit_dir(), 0));
                marks.implicit.insert(id);
                if let Some(c) = tree.children_mut(dir) {
                    c.insert(name.clone(), id);
                }
                id
            }
        };
    }
    Ok(dir)
}

/// Binds `comps` to `node`, replacing any earlier entry; a directory
/// replacing a directory keeps the old entries.
fn place(
    tree: &mut Tree,
    marks: &mut Marks,
    comps: &[Name],
    node: Node,
    display: &str,
) -> Result<NodeId> {
    let Some((name, parents)) = comps.split_last() else {
        // The root itself: only a directory may describe it.
        return match node.content {
            Content::Dir { size, .. } => {
                marks.implicit.remove(&0);
                let root = tree.node_mut(0);
                root.meta = node.meta;
                if let Content::Dir { size: s, .. } = &mut root.content {
                    *s = size;
                }
                Ok(0)
            }
            _ => Err(BuildError::BadEntry {
                path: display.to_owned(),
                reason: "the root must be a directory".into(),
            }),
        };
    };
    let parent = parent_dir(tree, marks, parents, display)?;
    let existing = tree.children(parent).and_then(|c| c.get(name).copied());
    if let (Some(old), Content::Dir { size, .. }) = (existing, &node.content) {
        if let Content::Dir { size: s, .. } = &mut tree.node_mut(old).content {
            *s = *size;
            tree.node_mut(old).meta = node.meta;
            marks.implicit.remove(&old);
            return Ok(old);
        }
    }
    let id = tree.add(node);
    if let Some(c) = tree.children_mut(parent) {
        c.insert(name.clone(), id);
    }
    Ok(id)
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, pax: &Pax, display: &str) -> Result<Vec<u8>> {
    pax.linkpath
        .clone()
        .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| corrupt(display, "link entry without a target"))
}

fn hardlink(
    tree: &mut Tree,
    marks: &mut Marks,
    comps: &[Name],
    target: &[u8],
    display: &str,
) -> Result<()> {
    let target_display = String::from_utf8_lossy(target).into_owned();
    let target_comps = normalise(target, &target_display)?;
    let mut id = Some(0);
    for name in &target_comps {
        id = id
            .and_then(|d| tree.children(d))
            .and_then(|c| c.get(name).copied());
    }
    let id = match (id, &mut marks.external) {
        (Some(id), _) => id,
        // Perhaps in a lower layer: the merge resolves the placeholder.
        (None, Some(external)) if !target_comps.is_empty() => {
            let id = tree.add(Node {
                meta: Meta::default(),
                content: Content::Special,
            });
            external.insert(id, target_comps);
            id
        }
        (None, _) => {
            return Err(corrupt(
                display,
                format!("hardlink target '{target_display}' not found"),
            ))
        }
    };
    if tree.children(id).is_some() {
        return Err(BuildError::BadEntry {
            path: display.to_owned(),
            reason: format!("hardlink to directory '{target_display}'"),
        });
    }
    let Some((name, parents)) = comps.split_last() else {
        return Err(BuildError::BadEntry {
            path: display.to_owned(),
            reason: "hardlink at the root".into(),
        });
    };
    let parent = parent_dir(tree, marks, parents, display)?;
    if let Some(c) = tree.children_mut(parent) {
        c.insert(name.clone(), id);
    }
    Ok(())
}

/// A layer's whiteout below a path this same layer made a non-directory
/// (umoci writes `d` as a file, then `d/.wh.x` for the directory `d` it
/// replaced): the replacement already hides everything below `d` in the
/// lower layers, so the whiteout has nothing to remove and is dropped
/// (as `umoci unpack` and the other runtimes do).
fn is_moot_whiteout(tree: &Tree, comps: &[Name]) -> bool {
    let Some((name, parents)) = comps.split_last() else {
        return false;
    };
    if !name.as_bytes().starts_with(b".wh.") {
        return false;
    }
    let mut dir = 0;
    for p in parents {
        match tree.children(dir).and_then(|c| c.get(p).copied()) {
            Some(id) if tree.children(id).is_some() => dir = id,
            Some(_) => return true,
            None => return false,
        }
    }
    false
}

/// Reads one entry into the tree (file data through `emit`).
fn add_entry<R: Read>(
    tree: &mut Tree,
    marks: &mut Marks,
    entry: &mut tar::Entry<'_, R>,
    chunker: &ChunkerConfig,
    emit: &mut Emitter<'_>,
    raw_pax: Option<&[u8]>,
) -> Result<()> {
    if entry.header().entry_type() == EntryType::XGlobalHeader {
        // Its records are ignored, so not read either: the `tar` crate
        // would read them whole, and a header may claim any size.
        return Ok(());
    }
    let pre_display = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let records = pax_records(entry, raw_pax, &pre_display)?;
    let pax = parse_pax(records, &pre_display)?;
    let raw = pax
        .path
        .clone()
        .unwrap_or_else(|| entry.path_bytes().into_owned());
    let display = String::from_utf8_lossy(&raw).into_owned();
    let etype = entry.header().entry_type();
    let file_type = match etype {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => S_IFREG,
        EntryType::Directory => S_IFDIR,
        EntryType::Symlink => S_IFLNK,
        EntryType::Char => S_IFCHR,
        EntryType::Block => S_IFBLK,
        EntryType::Fifo => S_IFIFO,
        EntryType::Link => 0,
        other => {
            return Err(corrupt(
                &display,
                format!("unsupported entry type {other:?}"),
            ))
        }
    };
    let comps = normalise(&raw, &display)?;
    if marks.external.is_some() && is_moot_whiteout(tree, &comps) {
        return Ok(());
    }
    if etype == EntryType::Link {
        let target = link_target(entry, &pax, &display)?;
        return hardlink(tree, marks, &comps, &target, &display);
    }
    let symlink = link_target(entry, &pax, &display);
    let meta = entry_meta(entry.header(), pax, file_type, &display)?;
    let content = match file_type {
        S_IFREG => {
            let mut slots = Vec::new();
            let size = entry.size();
            let read_err = |e: io::Error| corrupt(&display, e);
            chunker.split(&mut *entry, 0, size, &read_err, &mut |data| {
                slots.push(Slot::Data(emit.emit(data)?));
                Ok(())
            })?;
            Content::File {
                source: None,
                size,
                slots,
            }
        }
        S_IFDIR => Content::Dir {
            children: BTreeMap::new(),
            size: 0,
        },
        S_IFLNK => {
            let target = symlink?;
            if target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                return Err(BuildError::BadEntry {
                    path: display,
                    reason: "symlink target longer than 4095 bytes".into(),
                });
            }
            Content::Symlink(target)
        }
        _ => Content::Special,
    };
    place(tree, marks, &comps, Node { meta, content }, &display)?;
    Ok(())
}

/// Reads a whole tar stream into a tree, file data through `emit`.
/// `name` identifies the archive in errors.
pub fn read_tar(
    stream: impl Read,
    name: &str,
    chunker: &ChunkerConfig,
    emit: &mut Emitter<'_>,
) -> Result<Tree> {
    let mut marks = Marks::default();
    read_entries(stream, name, chunker, emit, &mut marks)
}

/// Reads one layer of a multi-layer image: [`read_tar`], plus the
/// [`Marks`] the merge needs (hardlinks may name files of lower layers).
pub fn read_layer(
    stream: impl Read,
    name: &str,
    chunker: &ChunkerConfig,
    emit: &mut Emitter<'_>,
) -> Result<(Tree, Marks)> {
    let mut marks = Marks {
        implicit: HashSet::from([0]),
        external: Some(BTreeMap::new()),
    };
    let tree = read_entries(stream, name, chunker, emit, &mut marks)?;
    Ok((tree, marks))
}

fn read_entries(
    stream: impl Read,
    name: &str,
    chunker: &ChunkerConfig,
    emit: &mut Emitter<'_>,
    marks: &mut Marks,
) -> Result<Tree> {
    let mut tree = Tree::new(implicit_dir(), 0);
    let (stream, recorder) = super::pax::Recorder::new(stream);
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(|e| corrupt(name, e))?;
    // Offset of the first header after the previous entry's data, if known.
    let mut next_header = Some(0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(name, e))?;
        let raw_pax =
            next_header.and_then(|from| recorder.pax_before(from, entry.raw_header_position()));
        recorder.pause();
        let (data_len, exact) = stored_data(&mut entry);
        add_entry(
            &mut tree,
            marks,
            &mut entry,
            chunker,
            emit,
            raw_pax.as_deref(),
        )?;
        let end = entry
            .raw_file_position()
            .saturating_add(data_len.div_ceil(512).saturating_mul(512));
        // Recording restarts at `end` in any case, so the headers before
        // the next entry stay under the recorder's cap.
        recorder.restart_at(end);
        next_header = exact.then_some(end);
    }
    Ok(tree)
}

/// How many bytes of `entry`'s data follow its position in the stream
/// (`raw_file_position`), as the `tar` crate steps over them, and whether
/// the next header starts right after them.
///
/// For most entries that is `entry.size()` (the PAX `size` record, else the
/// header's). A GNU sparse entry's size is its expanded size: its stored
/// data is the PAX `size` record's, else the header's. When its sparse map
/// goes on in extension headers, they come between the position and the
/// data, and the `tar` crate does not say how many there were: then the
/// next header's offset is unknown (false), and the next entry's PAX
/// records come from the `tar` crate's parser, not from a walk of the
/// recorded headers starting at a guessed offset.
fn stored_data<R: Read>(entry: &mut tar::Entry<'_, R>) -> (u64, bool) {
    let header = entry.header();
    if !header.entry_type().is_gnu_sparse() {
        return (entry.size(), true);
    }
    let extended = header.as_gnu().is_some_and(|g| g.is_extended());
    let header_size = header.entry_size().unwrap_or(0);
    (pax_size(entry).unwrap_or(header_size), !extended)
}

/// The PAX `size` record as the `tar` crate reads it: the first `size`
/// key, none if a record before it is malformed or its value is not a
/// number.
fn pax_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> Option<u64> {
    for ext in entry.pax_extensions().ok()?? {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
#[path = "source_tar_tests.rs"]
mod tests;
