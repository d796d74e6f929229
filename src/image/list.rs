//! Prefetch list files: what `rafs mount --record-access` writes and what
//! `rafs mount --prefetch-list`, `rafs prefetch --list` and `rafs create
//! --prefetch-list` read.
//!
//! One entry per line: a path inside the image (raw bytes, leading `/`
//! optional), then optionally a tab and comma-separated byte ranges
//! `START-END` (decimal, END exclusive) of the file that were read. Blank
//! lines and lines starting with `#` are ignored. Paths containing a
//! newline or a tab cannot be written and are skipped by writers.

use std::path::Path;
use thiserror::Error;

/// One line of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number (0 for entries not read from a file).
    pub line: usize,
    /// Path inside the image.
    pub path: Vec<u8>,
    /// Byte ranges (start, end exclusive), or `None` for the whole file.
    pub ranges: Option<Vec<(u64, u64)>>,
}

/// Why a list could not be read.
#[derive(Debug, Error)]
pub enum ListError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The list file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A range is not `START-END` with START < END.
    #[error("{path}, line {line}: bad range '{range}' (expected START-END, END > START)")]
    Range {
        /// The list file.
        path: String,
        /// Line number.
        line: usize,
        /// The offending text.
        range: String,
    },
}

/// Parses list text; `name` is for messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<Vec<Entry>, ListError> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let mut parts = line.splitn(2, |&b| b == b'\t');
        let path = parts.next().unwrap_or(&[]).trim_ascii();
        if path.is_empty() || path.starts_with(b"#") {
            continue;
        }
        let ranges = match parts.next().map(<[u8]>::trim_ascii) {
            None | Some(b"") => None,
            Some(text) => Some(parse_ranges(text).ok_or_else(|| ListError::Range {
                path: name.to_owned(),
                line: i + 1,
                range: String::from_utf8_lossy(text).into_owned(),
            })?),
        };
        out.push(Entry {
            line: i + 1,
            path: path.to_vec(),
            ranges,
        });
    }
    Ok(out)
}

fn parse_ranges(text: &[u8]) -> Option<Vec<(u64, u64)>> {
    let text = std::str::from_utf8(text).ok()?;
    text.split(',')
        .map(|r| {
            let (a, b) = r.trim().split_once('-')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a < b).then_some((a, b))
        })
        .collect()
}

/// Reads and parses a list file.
pub fn read(path: &Path) -> Result<Vec<Entry>, ListError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ListError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&bytes, &name)
}

/// Formats entries as list text; entries whose path holds a newline or a
/// tab are skipped (returned count: entries written).
pub fn format(entries: &[Entry]) -> (Vec<u8>, usize) {
    let mut out = b"# rafs prefetch list: path [TAB start-end,...]\n".to_vec();
    let mut n = 0;
    for e in entries {
        if e.path.iter().any(|&b| b == b'\n' || b == b'\t') || e.path.is_empty() {
            continue;
        }
        out.extend_from_slice(&e.path);
        if let Some(r) = &e.ranges {
            let text: Vec<String> = r.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            out.push(b'\t');
            out.extend_from_slice(text.join(",").as_bytes());
        }
        out.push(b'\n');
        n += 1;
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let entries = vec![
            Entry {
                line: 0,
                path: b"/usr/bin/perl".to_vec(),
                ranges: Some(vec![(0, 4096), (8192, 12288)]),
            },
            Entry {
                line: 0,
                path: b"etc/passwd".to_vec(),
                ranges: None,
            },
            Entry {
                line: 0,
                path: b"bad\tname".to_vec(),
                ranges: None,
            },
        ];
        let (text, n) = format(&entries);
        assert_eq!(n, 2);
        let back = parse(&text, "x").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].path, b"/usr/bin/perl");
        assert_eq!(back[0].ranges, Some(vec![(0, 4096), (8192, 12288)]));
        assert_eq!(back[1].ranges, None);
        assert_eq!(back[1].line, 3);
        assert!(parse(b"# c\n\n  /a  \n", "x").unwrap()[0].path == b"/a");
        for bad in ["/a\t5-5", "/a\t9-3", "/a\tx", "/a\t1-2,", "/a\t-4"] {
            assert!(
                matches!(
                    parse(bad.as_bytes(), "x"),
                    Err(ListError::Range { line: 1, .. })
                ),
                "{bad}"
            );
        }
    }
}
