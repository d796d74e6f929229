//! The library's layering, checked from the source text.
//!
//! The engine (`backend`, `blobmgr`, `cache`, `chunk`, `fetch`, `image`,
//! `manager` and the `util` helpers) is what a mount, `rafs prefetch` and a blob manager all
//! build on: it must not reach up into a front end (`fs`, `fuse`, `mount`,
//! `api`, `cli`, `prefetch`, `stats`, `builder`, `unpack`, ...) nor use
//! clap or fuser. The two cores over it, the filesystem core (`fs`) and the
//! builder, use the engine only (no command module, no fuser). Across the
//! whole library, the graph of top-level modules has no cycle, and within
//! an engine module the graph of its submodules (siblings, not counting the
//! parent's `mod.rs`) has none either.
//!
//! References are read from the text: `crate::x`, `crate::{x, y}` and
//! `super::` chains, outside comments. Code compiled only for tests (a file
//! declared under `#[cfg(test)]`, or an inline `#[cfg(test)] mod x { .. }`
//! to the end of its file) is left out: a test may drive the engine through
//! a front end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of the engine.
const ENGINE: &[&str] = &[
    "backend", "blobmgr", "cache", "chunk", "fetch", "image", "manager", "util",
];

/// The cores over the engine: they may use the engine, nothing above it.
const CORE: &[&str] = &["fs", "builder"];

/// Engine files that may use clap: none (every clap `Args` lives in the
/// command-line layer, `src/cli/`). Kept as the place to say so if that
/// ever has to change.
const CLAP_EXEMPT: &[&str] = &[];

/// One source file of the library.
struct SrcFile {
    /// Path relative to `src/`, with `/` separators.
    rel: String,
    /// Module path (`["fetch", "job"]`; `[]` for `lib.rs`).
    modpath: Vec<String>,
    /// Lines outside comments and test-only code.
    code: String,
}

impl SrcFile {
    fn top(&self) -> Option<&str> {
        self.modpath.first().map(String::as_str)
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn rel(p: &Path) -> String {
    let r = p.strip_prefix(src_dir()).unwrap();
    r.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn modpath(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// `mod name;` (any visibility): `name`.
fn mod_decl(line: &str) -> Option<&str> {
    let l = line.trim();
    let at = l.find("mod ")?;
    let (vis, rest) = l.split_at(at);
    if !(vis.is_empty() || vis.starts_with("pub")) {
        return None;
    }
    rest[4..].strip_suffix(';').map(str::trim)
}

/// Files declared under `#[cfg(test)]` by `file` (relative paths).
fn test_children(file: &Path, text: &str) -> Vec<String> {
    let dir = file.parent().unwrap();
    let stem = file.file_stem().unwrap().to_string_lossy();
    let base = if stem == "mod" || stem == "lib" {
        dir.to_path_buf()
    } else {
        dir.join(&*stem)
    };
    let (mut cfg_test, mut path_attr) = (false, None::<String>);
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l == "#[cfg(test)]" {
            cfg_test = true;
        } else if let Some(p) = l.strip_prefix("#[path = \"") {
            path_attr = Some(p.trim_end_matches("\"]").to_owned());
        } else if let Some(name) = mod_decl(l) {
            if cfg_test {
                let child = match &path_attr {
                    Some(p) => dir.join(p),
                    None if base.join(name).join("mod.rs").exists() => {
                        base.join(name).join("mod.rs")
                    }
                    None => base.join(format!("{name}.rs")),
                };
                out.push(rel(&child));
            }
            (cfg_test, path_attr) = (false, None);
        } else if !l.starts_with("#[") {
            (cfg_test, path_attr) = (false, None);
        }
    }
    out
}

/// `text` without comment lines and without an inline `#[cfg(test)]`
/// module and what follows it.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut cfg_test = false;
    for line in text.lines() {
        let l = line.trim();
        if cfg_test && l.contains("mod ") && l.ends_with('{') {
            break;
        }
        cfg_test = l == "#[cfg(test)]" || (cfg_test && l.starts_with("#["));
        if !l.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every library file except test-only ones (and the binary's `main.rs`).
fn load() -> Vec<SrcFile> {
    let mut paths = Vec::new();
    rs_files(&src_dir(), &mut paths);
    paths.sort();
    let texts: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    let test_only: BTreeSet<String> = texts
        .iter()
        .flat_map(|(p, t)| test_children(p, t))
        .collect();
    texts
        .iter()
        .map(|(p, t)| (rel(p), t))
        .filter(|(r, _)| r != "main.rs" && !test_only.contains(r))
        .map(|(r, t)| SrcFile {
            modpath: modpath(&r),
            code: non_test_code(t),
            rel: r,
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident(s: &str) -> &str {
    &s[..s.find(|c: char| !is_ident(c)).unwrap_or(s.len())]
}

/// The first path segment of each item of a `{a::b, c}` group.
fn group_heads(s: &str) -> Vec<String> {
    let (mut depth, mut heads, mut start) = (0, Vec::new(), true);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => break,
            '}' => depth -= 1,
            ',' if depth == 1 => start = true,
            c if start && depth == 1 && is_ident(c) => {
                heads.push(ident(&s[i..]).to_owned());
                start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The path segments at the start of `s` (`a::b::C` as `[a, b, C]`).
fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let id = ident(rest);
        if id.is_empty() {
            return out;
        }
        out.push(id.to_owned());
        match rest[id.len()..].strip_prefix("::") {
            Some(r) => rest = r,
            None => return out,
        }
    }
}

/// Starts of paths in `code` that begin with `prefix` (not in the middle
/// of another path).
fn path_starts<'c>(code: &'c str, prefix: &str) -> Vec<&'c str> {
    code.match_indices(prefix)
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| is_ident(c) || c == ':'))
        .map(|(at, _)| &code[at..])
        .collect()
}

/// Paths `f` refers to, from the crate root: `crate::a::b` as `[a, b]`,
/// `crate::{a, b}` as `[a]` and `[b]`, `super::x` resolved against `f`'s
/// module path.
fn references(f: &SrcFile) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let mut add = |base: &[String], rest: &str| {
        let heads = match rest.strip_prefix('{') {
            Some(_) => group_heads(rest).into_iter().map(|h| vec![h]).collect(),
            None => vec![segments(rest)],
        };
        for h in heads {
            out.insert([base, &h].concat());
        }
    };
    for rest in path_starts(&f.code, "crate::") {
        add(&[], &rest[7..]);
    }
    for mut rest in path_starts(&f.code, "super::") {
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            (rest, up) = (r, up + 1);
        }
        if up <= f.modpath.len() {
            add(&f.modpath[..f.modpath.len() - up], rest);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Whether `code` uses `krate` (a path or a `use` of it).
fn uses_crate(code: &str, krate: &str) -> bool {
    let pat = format!("{krate}::");
    code.match_indices(&pat)
        .any(|(at, _)| !code[..at].ends_with(|c: char| is_ident(c) || c == ':'))
        || code.lines().any(|l| l.trim() == format!("use {krate};"))
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A cycle of `g` (first node repeated at the end), if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, m, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(g, n, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Edges from `files` to other top-level modules, each with one file
/// that makes it.
fn top_level_edges(files: &[SrcFile], of: &[SrcFile]) -> BTreeMap<(String, String), String> {
    let tops: BTreeSet<&str> = files.iter().filter_map(SrcFile::top).collect();
    let mut edges = BTreeMap::new();
    for f in of {
        let Some(from) = f.top() else { continue };
        for r in references(f) {
            let to = &r[0];
            if to != from && tops.contains(to.as_str()) {
                edges
                    .entry((from.to_owned(), to.clone()))
                    .or_insert_with(|| f.rel.clone());
            }
        }
    }
    edges
}

fn graph_of(edges: &BTreeMap<(String, String), String>) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges.keys() {
        g.entry(a.clone()).or_default().insert(b.clone());
    }
    g
}

fn describe(cycle: &[String], edges: &BTreeMap<(String, String), String>) -> String {
    let steps: Vec<String> = cycle
        .windows(2)
        .map(|w| {
            format!(
                "{} -> {} (in src/{})",
                w[0],
                w[1],
                edges[&(w[0].clone(), w[1].clone())]
            )
        })
        .collect();
    steps.join("\n  ")
}

/// What files of the layer `layer` use outside the engine: module
/// references, fuser, and (with `clap`) clap outside [`CLAP_EXEMPT`].
fn reaching_up(files: &[SrcFile], layer: &[&str], clap: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.top().is_some_and(|t| layer.contains(&t)))
    {
        for (to, by) in top_level_edges(files, std::slice::from_ref(f))
            .into_keys()
            .map(|(_, to)| (to, &f.rel))
        {
            if !ENGINE.contains(&to.as_str()) {
                bad.push(format!("src/{by} uses crate::{to}"));
            }
        }
        if uses_crate(&f.code, "fuser") {
            bad.push(format!("src/{} uses fuser", f.rel));
        }
        if clap && uses_crate(&f.code, "clap") && !CLAP_EXEMPT.contains(&f.rel.as_str()) {
            bad.push(format!("src/{} uses clap", f.rel));
        }
    }
    bad
}

#[test]
fn engine_reaches_no_front_end_and_no_clap_or_fuser() {
    let bad = reaching_up(&load(), ENGINE, true);
    assert!(
        bad.is_empty(),
        "the engine reaches up:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn cores_use_only_the_engine() {
    let bad = reaching_up(&load(), CORE, false);
    assert!(bad.is_empty(), "a core reaches up:\n  {}", bad.join("\n  "));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let files = load();
    let edges = top_level_edges(&files, &files);
    if let Some(c) = find_cycle(&graph_of(&edges)) {
        panic!(
            "a cycle between top-level modules:\n  {}",
            describe(&c, &edges)
        );
    }
}

/// Within each engine module, edges between its files: from a file to the
/// file of the module it names (the longest module path of a file that
/// prefixes the reference), not counting a file's uses of its ancestors
/// (`use super::Item` from a child of `mod.rs`).
fn inner_edges(files: &[SrcFile], top: &str) -> BTreeMap<(String, String), String> {
    let mine: Vec<&SrcFile> = files.iter().filter(|f| f.top() == Some(top)).collect();
    let mut edges = BTreeMap::new();
    for f in &mine {
        for r in references(f) {
            let target = mine
                .iter()
                .filter(|g| r.starts_with(&g.modpath))
                .max_by_key(|g| g.modpath.len());
            let Some(g) = target else { continue };
            if !f.modpath.starts_with(&g.modpath) {
                edges
                    .entry((f.modpath.join("::"), g.modpath.join("::")))
                    .or_insert_with(|| f.rel.clone());
            }
        }
    }
    edges
}

#[test]
fn engine_submodules_form_no_cycle() {
    let files = load();
    for top in ENGINE {
        let edges = inner_edges(&files, top);
        if let Some(c) = find_cycle(&graph_of(&edges)) {
            panic!("a cycle inside {top}:\n  {}", describe(&c, &edges));
        }
    }
}

/// The checks above see real references (so their passing means
/// something) and skip test-only code.
#[test]
fn the_reader_sees_known_references() {
    let files = load();
    let edges = top_level_edges(&files, &files);
    for (a, b) in [
        ("mount", "fuse"),
        ("fetch", "cache"),
        ("chunk", "backend"),
        ("fuse", "fs"),
    ] {
        assert!(
            edges.contains_key(&(a.into(), b.into())),
            "{a} -> {b} not seen"
        );
    }
    assert!(!files
        .iter()
        .any(|f| f.rel == "fetch/tests.rs" || f.rel == "stats_tests.rs"));
    // An inline test module is skipped: prefetch's tests drive a RafsFs.
    let text = std::fs::read_to_string(src_dir().join("prefetch/mod.rs")).unwrap();
    assert!(text.contains("use crate::fs::RafsFs;"));
    let prefetch = files.iter().find(|f| f.rel == "prefetch/mod.rs").unwrap();
    assert!(!references(prefetch).iter().any(|r| r[0] == "fs"));
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap().len(), 3);
}
