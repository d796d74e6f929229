//! `rafs mount` settings: command-line flags, an optional TOML file
//! (`--config`), and their merge into one [`MountConfig`].
//!
//! The file's keys mirror the long flags (`api_socket` or `api-socket`);
//! an unknown key is an error, so a typo never silently falls back to a
//! default. A flag overrides the file's value; `--blobs` and `--backend`
//! are one setting (where blobs live), so either flag overrides either key.
//! Relative paths in the file are relative to the file's directory.
//! Of the network backend flags only `registry-token-realm` has a key (a
//! string or a list); `allow-other`, `suid` and `dev` can only turn on
//! what is off by default. The engine settings are the shared
//! [`FetchArgs`] and [`ReadArgs`]: the file's values go through the same
//! parsers as the flags'.

use super::backend_args::BackendArgs;
use super::fetch_args::{FetchArgs, ManagerArgs, ReadArgs, SettingError};
use crate::backend::url::BackendUrl;
use crate::mount::image_ref::ImageSource;
use crate::mount::{default_threads, MountConfig, MountError, PrefetchSource};
use crate::oci::Reference;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Arguments of `rafs mount`.
#[derive(Debug, Default, clap::Args)]
pub struct MountArgs {
    /// The bootstrap to serve, or a rafs image in a registry,
    /// `docker://host[:port]/repo[:tag][@sha256:...]` (or `bootstrap` in
    /// --config). A reference's blobs come from the same repository unless
    /// --blobs or --backend say otherwise.
    pub bootstrap: Option<PathBuf>,
    /// An existing, empty directory to mount on (or `mountpoint` in
    /// --config).
    pub mountpoint: Option<PathBuf>,
    /// Blobs are files named by their sha256 hex in DIR (same as
    /// --backend file:///DIR).
    #[arg(long, value_name = "DIR", conflicts_with = "backend")]
    pub blobs: Option<PathBuf>,
    /// Where blobs live, as a URL. file:///DIR, http(s)://HOST/PATH,
    /// registry://HOST/REPO, registry+http://HOST/REPO, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// TOML file with any of the settings below (keys as the long flags,
    /// `_` or `-`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// FUSE worker threads [default: max(4, cores)].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Serve GET /status and /metrics over HTTP on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Let users other than the mounting one access the mount (FUSE
    /// `allow_other`) [default: off, only the mounting user may].
    #[arg(long)]
    pub allow_other: bool,
    /// Honour the image's setuid and setgid bits (root only) [default:
    /// off, the mount is `nosuid`].
    #[arg(long)]
    pub suid: bool,
    /// Make the image's device nodes usable (root only) [default: off, the
    /// mount is `nodev`].
    #[arg(long)]
    pub dev: bool,
    /// After mounting, prefetch the paths of this list (the format
    /// --record-access writes) in the background instead of the image's
    /// prefetch table; paths not in the image are skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prefetch_all", "no_prefetch"])]
    pub prefetch_list: Option<PathBuf>,
    /// After mounting, prefetch every blob in the background.
    #[arg(long, conflicts_with = "no_prefetch")]
    pub prefetch_all: bool,
    /// Do not prefetch the image's prefetch table after mounting [default:
    /// it is prefetched].
    #[arg(long)]
    pub no_prefetch: bool,
    /// Record which files are read, in first-access order, with the byte
    /// ranges read, and write them to FILE (a prefetch list) on unmount,
    /// on SIGUSR1 and on POST /record.
    #[arg(long, value_name = "FILE")]
    pub record_access: Option<PathBuf>,
    /// Reach the registry of a `docker://` reference over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
    /// Fetch and cache engine settings.
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Blob manager settings.
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// On-demand read settings.
    #[command(flatten)]
    pub read: ReadArgs,
    /// Network backend settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

/// A size given in the file as a number of bytes or a string like "64M".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// A key that takes one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bootstrap: Option<PathBuf>,
    mountpoint: Option<PathBuf>,
    blobs: Option<PathBuf>,
    backend: Option<String>,
    threads: Option<usize>,
    #[serde(alias = "api-socket")]
    api_socket: Option<PathBuf>,
    #[serde(alias = "chunk-cache-size")]
    chunk_cache_size: Option<Size>,
    #[serde(alias = "allow-other")]
    allow_other: Option<bool>,
    suid: Option<bool>,
    dev: Option<bool>,
    #[serde(alias = "cache-dir")]
    cache_dir: Option<PathBuf>,
    #[serde(alias = "cache-size")]
    cache_size: Option<Size>,
    #[serde(alias = "read-timeout")]
    read_timeout: Option<String>,
    #[serde(alias = "max-request-size")]
    max_request_size: Option<Size>,
    #[serde(alias = "fetch-threads")]
    fetch_threads: Option<usize>,
    readahead: Option<Size>,
    widen: Option<Size>,
    #[serde(alias = "prefetch-list")]
    prefetch_list: Option<PathBuf>,
    #[serde(alias = "prefetch-all")]
    prefetch_all: Option<bool>,
    #[serde(alias = "no-prefetch")]
    no_prefetch: Option<bool>,
    #[serde(alias = "prefetch-threads")]
    prefetch_threads: Option<usize>,
    #[serde(alias = "prefetch-bandwidth")]
    prefetch_bandwidth: Option<Size>,
    #[serde(alias = "record-access")]
    record_access: Option<PathBuf>,
    #[serde(alias = "registry-token-realm")]
    registry_token_realm: Option<OneOrMany>,
    #[serde(alias = "blob-manager")]
    blob_manager: Option<PathBuf>,
    #[serde(alias = "blob-manager-fallback")]
    blob_manager_fallback: Option<String>,
    #[serde(alias = "blob-manager-grace")]
    blob_manager_grace: Option<String>,
    #[serde(alias = "plain-http")]
    plain_http: Option<bool>,
}

impl FileConfig {
    fn parse(text: &str, path: &Path) -> Result<FileConfig, MountError> {
        let mut f: FileConfig = toml::from_str(text).map_err(|e| MountError::ConfigSyntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut f.bootstrap,
            &mut f.mountpoint,
            &mut f.blobs,
            &mut f.api_socket,
            &mut f.cache_dir,
            &mut f.blob_manager,
            &mut f.prefetch_list,
            &mut f.record_access,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(f)
    }
}

fn backend_of(
    blobs: Option<&PathBuf>,
    backend: Option<&String>,
) -> Result<Option<BackendUrl>, MountError> {
    match (blobs, backend) {
        (Some(_), Some(_)) => Err(MountError::BlobsAndBackend),
        (Some(dir), None) => Ok(Some(BackendUrl::from_dir(dir))),
        (None, Some(url)) => Ok(Some(BackendUrl::parse(url)?)),
        (None, None) => Ok(None),
    }
}

impl Size {
    /// The value as a flag would give it.
    fn text(self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(t) => t,
        }
    }
}

impl FileConfig {
    /// The file's engine settings, as the shared flags would give them.
    fn engine(&mut self) -> (FetchArgs, ReadArgs) {
        let fetch = FetchArgs {
            cache_dir: self.cache_dir.take(),
            cache_size: self.cache_size.take().map(Size::text),
            read_timeout: self.read_timeout.take(),
            max_request_size: self.max_request_size.take().map(Size::text),
            prefetch_threads: self.prefetch_threads.take(),
            prefetch_bandwidth: self.prefetch_bandwidth.take().map(Size::text),
        };
        let read = ReadArgs {
            fetch_threads: self.fetch_threads.take(),
            readahead: self.readahead.take().map(Size::text),
            widen: self.widen.take().map(Size::text),
            chunk_cache_size: self.chunk_cache_size.take().map(Size::text),
        };
        (fetch, read)
    }
}

fn flag_err(e: SettingError) -> MountError {
    MountError::Flag(e.0)
}

impl MountArgs {
    /// Reads `--config` if given and merges it under the flags.
    /// `is_root`: whether `suid` and `dev` may be asked for.
    pub fn resolve(&self, is_root: bool) -> Result<MountConfig, MountError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| MountError::Config {
                    path: path.clone(),
                    source,
                })?;
                FileConfig::parse(&text, path)?
            }
            None => FileConfig::default(),
        };
        self.merge(file, is_root)
    }

    fn merge(&self, mut file: FileConfig, is_root: bool) -> Result<MountConfig, MountError> {
        let (file_fetch, file_read) = file.engine();
        let fetch = self.fetch.or(file_fetch).to_config(Default::default());
        let read = self.read.or(file_read);
        let fetch = read.to_config(fetch.map_err(flag_err)?);
        let file_manager = ManagerArgs {
            blob_manager: file.blob_manager.take(),
            blob_manager_fallback: file.blob_manager_fallback.take(),
            blob_manager_grace: file.blob_manager_grace.take(),
        };
        let fetch = fetch.map_err(flag_err)?;
        let fetch = self.manager.or(file_manager).to_config(fetch);
        let fetch = read.disk_backed(fetch.map_err(flag_err)?);
        let prefetch = prefetch_source(self, &file)?;
        let access = access_policy(self, &file, is_root)?;
        let mut backend_options = self.net.options().map_err(flag_err)?;
        if backend_options.registry_token_realms.is_empty() {
            if let Some(realms) = file.registry_token_realm.clone() {
                backend_options.registry_token_realms = realms.into_vec();
            }
        }
        let bootstrap = self
            .bootstrap
            .clone()
            .or(file.bootstrap)
            .ok_or(MountError::Missing("bootstrap"))?;
        let mountpoint = self
            .mountpoint
            .clone()
            .or(file.mountpoint)
            .ok_or(MountError::Missing("mountpoint"))?;
        let image = image_of(&bootstrap, self.plain_http || file.plain_http == Some(true))?;
        let backend = match backend_of(self.blobs.as_ref(), self.backend.as_ref())? {
            Some(b) => b,
            None => match backend_of(file.blobs.as_ref(), file.backend.as_ref())? {
                Some(b) => b,
                None => image
                    .as_ref()
                    .map(ImageSource::backend)
                    .ok_or(MountError::Missing("blobs (--blobs DIR or --backend URL)"))?,
            },
        };
        let threads = self
            .threads
            .or(file.threads)
            .unwrap_or_else(default_threads);
        if threads == 0 {
            return Err(MountError::Threads);
        }
        Ok(MountConfig {
            bootstrap,
            mountpoint,
            backend,
            backend_options,
            threads,
            api_socket: self.api_socket.clone().or(file.api_socket),
            chunk_cache_bytes: fetch.memory_bytes as u64,
            fetch,
            allow_other: access.allow_other,
            suid: access.suid,
            dev: access.dev,
            prefetch,
            record_access: self.record_access.clone().or(file.record_access),
            image,
        })
    }
}

/// The image a `docker://` bootstrap argument names (None: a file).
fn image_of(bootstrap: &Path, plain_http: bool) -> Result<Option<ImageSource>, MountError> {
    let Some(text) = bootstrap.to_str().filter(|t| t.starts_with("docker://")) else {
        return Ok(None);
    };
    let reference = Reference::parse(text).map_err(|e| MountError::Flag(e.to_string()))?;
    Ok(Some(ImageSource {
        reference,
        plain_http,
    }))
}

/// Who may use the mount and what of the image is honoured; each is off
/// unless its flag or key turns it on.
struct Access {
    allow_other: bool,
    suid: bool,
    dev: bool,
}

/// The opt-in access settings. An untrusted image's setuid binaries and
/// device nodes must not be live by default, and only root can make them
/// live at all (fusermount3 forces `nosuid,nodev`), so asking for them
/// without root is an error rather than a silent no-op.
fn access_policy(args: &MountArgs, file: &FileConfig, is_root: bool) -> Result<Access, MountError> {
    let on = |flag: bool, key: Option<bool>| flag || key.unwrap_or(false);
    let a = Access {
        allow_other: on(args.allow_other, file.allow_other),
        suid: on(args.suid, file.suid),
        dev: on(args.dev, file.dev),
    };
    for (set, name) in [(a.suid, "suid"), (a.dev, "dev")] {
        if set && !is_root {
            return Err(MountError::Flag(format!("{name} needs root")));
        }
    }
    Ok(a)
}

/// The prefetch choice: any of the three flags, else the file's keys.
fn prefetch_source(args: &MountArgs, file: &FileConfig) -> Result<PrefetchSource, MountError> {
    let pick = |list: Option<&PathBuf>, all: bool, off: bool| match (list, all, off) {
        (None, false, false) => Ok(None),
        (Some(l), false, false) => Ok(Some(PrefetchSource::List(l.clone()))),
        (None, true, false) => Ok(Some(PrefetchSource::All)),
        (None, false, true) => Ok(Some(PrefetchSource::Off)),
        _ => Err(MountError::Flag(
            "set only one of prefetch-list, prefetch-all and no-prefetch".into(),
        )),
    };
    let flags = pick(
        args.prefetch_list.as_ref(),
        args.prefetch_all,
        args.no_prefetch,
    )?;
    let keys = pick(
        file.prefetch_list.as_ref(),
        file.prefetch_all.unwrap_or(false),
        file.no_prefetch.unwrap_or(false),
    )?;
    Ok(flags.or(keys).unwrap_or(PrefetchSource::Table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchConfig;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: MountArgs,
    }

    fn args(argv: &[&str]) -> MountArgs {
        let mut v = vec!["mount"];
        v.extend_from_slice(argv);
        Cmd::try_parse_from(v).unwrap().args
    }

    fn merge_of(a: MountArgs, f: FileConfig, is_root: bool) -> Result<MountConfig, MountError> {
        a.merge(f, is_root)
    }

    fn file(text: &str) -> Result<FileConfig, MountError> {
        FileConfig::parse(text, Path::new("/etc/rafs/m.toml"))
    }

    #[test]
    fn flags_only() {
        let c = merge_of(
            args(&["/b", "/m", "--blobs", "/blobs", "--threads", "3"]),
            FileConfig::default(),
            false,
        )
        .unwrap();
        assert_eq!(c.bootstrap, Path::new("/b"));
        assert_eq!(c.mountpoint, Path::new("/m"));
        assert_eq!(c.backend, BackendUrl::File("/blobs".into()));
        assert_eq!(c.threads, 3);
        assert_eq!(c.chunk_cache_bytes, 16 << 20);
        assert_eq!(c.api_socket, None);
        assert!(!c.allow_other);
        let root = merge_of(
            args(&["/b", "/m", "--backend", "file:///x"]),
            FileConfig::default(),
            true,
        )
        .unwrap();
        // Root too: other users, setuid bits and devices are opt-in.
        assert!(!root.allow_other && !root.suid && !root.dev);
        assert_eq!(root.backend, BackendUrl::File("/x".into()));
        assert_eq!(root.threads, default_threads());
        assert!(root.threads >= 4);
    }

    #[test]
    fn file_then_flags() {
        let f = file(
            "bootstrap = 'img/boot'\nmountpoint = '/mnt'\nbackend = 'file:///blobs'\n\
             threads = 8\napi-socket = '/run/rafs.sock'\nchunk_cache_size = '16M'\n\
             allow-other = false\n",
        )
        .unwrap();
        assert_eq!(
            f.bootstrap.as_deref(),
            Some(Path::new("/etc/rafs/img/boot"))
        );
        let c = merge_of(args(&[]), f, true).unwrap();
        assert_eq!(c.bootstrap, Path::new("/etc/rafs/img/boot"));
        assert_eq!(c.threads, 8);
        assert_eq!(c.chunk_cache_bytes, 16 << 20);
        assert_eq!(c.api_socket.as_deref(), Some(Path::new("/run/rafs.sock")));
        assert!(!c.allow_other);

        let f = file("blobs = '/fileblobs'\nthreads = 8\nchunk-cache-size = 1024\n").unwrap();
        let c = merge_of(
            args(&[
                "/b",
                "/m",
                "--backend",
                "file:///flagblobs",
                "--threads",
                "2",
                "--allow-other",
            ]),
            f,
            false,
        )
        .unwrap();
        assert_eq!(c.backend, BackendUrl::File("/flagblobs".into()));
        assert_eq!(c.threads, 2);
        assert_eq!(c.chunk_cache_bytes, 1024);
        assert!(c.allow_other);
    }

    #[test]
    fn access_is_opt_in() {
        let merge = |a: &[&str], f: &str, root: bool| {
            let mut v = vec!["/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(a);
            merge_of(args(&v), file(f).unwrap(), root)
        };
        let access = |c: MountConfig| (c.allow_other, c.suid, c.dev);
        assert_eq!(access(merge(&[], "", true).unwrap()), (false, false, false));
        assert_eq!(
            access(merge(&["--allow-other", "--suid", "--dev"], "", true).unwrap()),
            (true, true, true)
        );
        assert_eq!(
            access(merge(&["--suid"], "", true).unwrap()),
            (false, true, false)
        );
        assert_eq!(
            access(merge(&[], "allow-other = true\nsuid = true\ndev = true", true).unwrap()),
            (true, true, true)
        );
        assert_eq!(
            access(merge(&[], "suid = false\ndev = false\nallow_other = false", true).unwrap()),
            (false, false, false)
        );
        // A flag turns on what the file leaves off.
        assert_eq!(
            access(merge(&["--dev"], "dev = false", true).unwrap()),
            (false, false, true)
        );
        // allow_other is the FUSE configuration's business for a user;
        // setuid bits and devices can only ever be live for root.
        assert!(merge(&["--allow-other"], "", false).unwrap().allow_other);
        for (a, f) in [
            (&["--suid"][..], ""),
            (&["--dev"][..], ""),
            (&[][..], "dev = true"),
        ] {
            assert!(
                matches!(merge(a, f, false), Err(MountError::Flag(_))),
                "{a:?} {f}"
            );
        }
        // The old opt-out flag is gone: allow_other is never on by default.
        let v = ["m", "/b", "/m", "--blobs", "/d", "--no-allow-other"];
        assert!(Cmd::try_parse_from(v).is_err());
    }

    #[test]
    fn a_disk_cache_shrinks_the_default_chunk_cache_only() {
        let merge = |a: &[&str], f: &str| {
            let mut v = vec!["/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(a);
            merge_of(args(&v), file(f).unwrap(), false).unwrap().fetch
        };
        let mem = |f: FetchConfig| (f.memory_bytes, f.widen);
        let default = FetchConfig::default();
        assert_eq!(mem(merge(&[], "")), (16 << 20, default.widen));
        assert_eq!(merge(&["--cache-dir", "/c"], "").memory_bytes, 4 << 20);
        assert_eq!(merge(&[], "cache-dir = '/c'").memory_bytes, 4 << 20);
        let given = merge(&["--cache-dir", "/c", "--chunk-cache-size", "16M"], "");
        assert_eq!(given.memory_bytes, 16 << 20);
        let given = merge(&["--cache-dir", "/c"], "chunk_cache_size = '32M'");
        assert_eq!(given.memory_bytes, 32 << 20);
        let m = merge(&["--blob-manager", "/run/m.sock"], "");
        assert_eq!(m.memory_bytes, 4 << 20);
        assert_eq!(merge(&["--widen", "0"], "").widen, 0);
        assert_eq!(merge(&[], "widen = '8M'").widen, 8 << 20);
    }

    #[test]
    fn prefetch_settings() {
        let merge = |a: &[&str], f: &str| {
            let mut v = vec!["/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(a);
            merge_of(args(&v), file(f).unwrap(), false)
        };
        let c = merge(&[], "").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Table);
        assert_eq!(c.record_access, None);
        assert_eq!(
            c.fetch.prefetch_threads,
            FetchConfig::default().prefetch_threads
        );
        assert_eq!(c.fetch.prefetch_bandwidth, None);
        let c = merge(
            &[
                "--prefetch-list",
                "/l",
                "--prefetch-threads",
                "3",
                "--prefetch-bandwidth",
                "50MiB/s",
                "--record-access",
                "/r",
            ],
            "prefetch-all = true\nprefetch-bandwidth = '1K'\n",
        )
        .unwrap();
        assert_eq!(c.prefetch, PrefetchSource::List("/l".into()));
        assert_eq!(c.fetch.prefetch_threads, 3);
        assert_eq!(c.fetch.prefetch_bandwidth, Some(50 << 20));
        assert_eq!(c.record_access.as_deref(), Some(Path::new("/r")));
        let c = merge(
            &[],
            "prefetch_list = 'hot.list'\nrecord-access = 'rec'\nprefetch-threads = 4\n\
             prefetch-bandwidth = 1000\n",
        )
        .unwrap();
        assert_eq!(
            c.prefetch,
            PrefetchSource::List("/etc/rafs/hot.list".into())
        );
        assert_eq!(c.record_access.as_deref(), Some(Path::new("/etc/rafs/rec")));
        assert_eq!(c.fetch.prefetch_threads, 4);
        assert_eq!(c.fetch.prefetch_bandwidth, Some(1000));
        let c = merge(&["--no-prefetch"], "prefetch-all = true").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Off);
        let c = merge(&[], "no-prefetch = true").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Off);
        assert_eq!(
            merge(&["--prefetch-all"], "").unwrap().prefetch,
            PrefetchSource::All
        );
        for (a, f) in [
            (&["--prefetch-threads", "0"][..], ""),
            (&["--prefetch-bandwidth", "0"][..], ""),
            (&["--prefetch-bandwidth", "fast"][..], ""),
            (&[][..], "prefetch-all = true\nno-prefetch = true"),
            (&[][..], "prefetch-bandwidth = 0"),
        ] {
            assert!(matches!(merge(a, f), Err(MountError::Flag(_))), "{a:?} {f}");
        }
        for bad in [
            &["--prefetch-all", "--no-prefetch"][..],
            &["--prefetch-list", "/l", "--prefetch-all"][..],
        ] {
            let mut v = vec!["m", "/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(bad);
            assert!(Cmd::try_parse_from(v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_realms_from_flags_or_file() {
        let merge = |a: &[&str], f: &str| {
            let mut v = vec!["/b", "/m", "--backend", "registry://r/x"];
            v.extend_from_slice(a);
            merge_of(args(&v), file(f).unwrap(), false).unwrap()
        };
        let realms = |c: MountConfig| c.backend_options.registry_token_realms;
        assert!(realms(merge(&[], "")).is_empty());
        assert_eq!(
            realms(merge(&[], "registry-token-realm = 'https://a/t'")),
            ["https://a/t"]
        );
        assert_eq!(
            realms(merge(
                &[],
                "registry_token_realm = ['https://a/t', 'https://b/t']"
            )),
            ["https://a/t", "https://b/t"]
        );
        assert_eq!(
            realms(merge(
                &[
                    "--registry-token-realm",
                    "https://c/t",
                    "--registry-token-realm",
                    "https://d/t"
                ],
                "registry-token-realm = 'https://a/t'"
            )),
            ["https://c/t", "https://d/t"]
        );
    }

    #[test]
    fn rejected() {
        let e = file("bootstrap = '/b'\nthread = 4\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `thread`"), "{e}");
        assert!(file("threads = 'many'").is_err());
        assert!(file("not toml at all [").is_err());
        let merge = |a: &[&str], f: &str| merge_of(args(a), file(f).unwrap(), false);
        assert!(matches!(
            merge(&["/m"], "blobs = '/d'"),
            Err(MountError::Missing("mountpoint"))
        ));
        assert!(matches!(
            merge(&[], "mountpoint = '/m'\nblobs = '/d'"),
            Err(MountError::Missing("bootstrap"))
        ));
        assert!(matches!(
            merge(&["/b", "/m"], ""),
            Err(MountError::Missing(_))
        ));
        assert!(matches!(
            merge(&["/b", "/m"], "blobs = '/d'\nbackend = 'file:///d'"),
            Err(MountError::BlobsAndBackend)
        ));
        assert!(matches!(
            merge(&["/b", "/m", "--backend", "s3://x"], ""),
            Err(MountError::Url(_))
        ));
        assert!(matches!(
            merge(&["/b", "/m", "--blobs", "/d", "--threads", "0"], ""),
            Err(MountError::Threads)
        ));
        assert!(matches!(
            merge(
                &["/b", "/m", "--blobs", "/d", "--chunk-cache-size", "1Q"],
                ""
            ),
            Err(MountError::Flag(_))
        ));
        // --blobs and --backend together are refused by clap.
        assert!(
            Cmd::try_parse_from(["m", "/b", "/m", "--blobs", "/d", "--backend", "file:///d"])
                .is_err()
        );
    }

    /// The file's keys are the mount's flags (and positionals), named the
    /// same: no key without a flag, no engine flag without a key.
    #[test]
    fn file_keys_are_the_flags() {
        use clap::CommandFactory;
        let e = file("no_such_key = 1").unwrap_err().to_string();
        let expected = e.split("expected one of").nth(1).expect("key list");
        let mut keys: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        // Every key is also accepted with `-` as the flag spells it.
        let (dashed, mut keys): (Vec<String>, Vec<String>) =
            keys.drain(..).partition(|k| k.contains('-'));
        for k in keys.iter().filter(|k| k.contains('_')) {
            assert!(dashed.contains(&k.replace('_', "-")), "{k}");
        }
        keys.sort();
        // Of the network backend flags only this one has a key.
        let net_with_key = "registry-token-realm";
        let net: Vec<String> = BackendCmd::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .filter(|l| l != net_with_key)
            .collect();
        let mut flags: Vec<String> = Cmd::command()
            .get_arguments()
            .filter_map(|a| {
                a.get_long()
                    .map(str::to_owned)
                    .or(Some(a.get_id().to_string()))
            })
            .filter(|l| l != "config" && !net.contains(l))
            .map(|l| l.replace('-', "_"))
            .collect();
        flags.sort();
        assert_eq!(keys, flags);
        for kv in [
            "fetch-threads = 1",
            "prefetch-threads = 1",
            "prefetch-bandwidth = '1M/s'",
            "read-timeout = '1s'",
        ] {
            assert!(file(kv).is_ok(), "{kv}");
        }
    }

    #[derive(Parser)]
    struct BackendCmd {
        #[command(flatten)]
        net: BackendArgs,
    }
}
