//! Command-line interface: parses arguments and dispatches to the
//! subsystems. This is the only module that knows clap: each subcommand's
//! flags are defined here and turned into the plain settings of the module
//! that implements it (engine settings into [`FetchConfig`] and
//! [`BackendOptions`], one flag name per setting for every command).
//!
//! [`FetchConfig`]: crate::fetch::FetchConfig
//! [`BackendOptions`]: crate::backend::BackendOptions

pub mod backend_args;
pub mod blobmgr_args;
pub mod fetch_args;
pub mod mount_args;
pub mod oci_args;
pub mod prefetch_args;
pub mod tool_args;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// rafs: a lazy-loading image filesystem.
#[derive(Debug, Parser)]
#[command(name = "rafs", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RAFS_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image (bootstrap + blobs) from a directory or tar stream.
    Create(tool_args::CreateArgs),
    /// Describe an image: summary, tree, a file's chunks.
    Inspect(tool_args::InspectArgs),
    /// Validate an image, and with --blobs every chunk of data.
    Check(tool_args::CheckArgs),
    /// Restore an image's tree into a directory or a tar stream.
    Unpack(tool_args::UnpackArgs),
    /// Serve an image read-only over FUSE, in the foreground.
    Mount(Box<mount_args::MountArgs>),
    /// Inspect, verify and clean a cache directory.
    Cache(tool_args::CacheArgs),
    /// Show a running mount's metrics (over its API socket).
    Stats(tool_args::StatsArgs),
    /// Fill a cache directory with an image's data (paths, a list, or all)
    /// ahead of mounts.
    Prefetch(Box<prefetch_args::PrefetchArgs>),
    /// Run the node's blob manager: own a cache directory and serve its
    /// blobs to mounts and prefetches over a Unix socket.
    Blobmgr(Box<blobmgr_args::BlobmgrArgs>),
    /// Publish a `rafs create` output to an OCI registry as a rafs image;
    /// prints the manifest digest.
    Push(Box<oci_args::PushArgs>),
    /// Fetch and verify a rafs image's bootstrap and config (and with
    /// --blobs its blobs) from an OCI registry.
    Pull(Box<oci_args::PullArgs>),
    /// Write an OCI runtime bundle (runc `config.json` and an empty
    /// `rootfs`) running a rafs image's own command.
    Bundle(Box<oci_args::BundleArgs>),
    /// Convert a container image (registry or OCI layout) to a rafs image
    /// in a registry or an OCI layout; prints the manifest digest.
    Convert(Box<oci_args::ConvertArgs>),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // fuser warns when a mount it serves was already unmounted from
        // outside, which `rafs mount` treats as a normal exit.
        0 => "warn,fuser::session=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Entry point of the `rafs` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(&cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rafs: {}", render(&e));
            error_code(&cli.command)
        }
    }
}

/// Runs the command.
fn dispatch(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create(a) => {
            if let Some(d) = a
                .build
                .chunk_dict
                .as_ref()
                .filter(|d| d.to_str().is_some_and(|s| s.starts_with("docker://")))
            {
                anyhow::bail!(
                    "--chunk-dict {}: rafs create takes a bootstrap file; a registry image as dictionary works with rafs convert (or rafs pull it first)",
                    d.display()
                );
            }
            crate::builder::run(&a.into())
        }
        Command::Inspect(a) => crate::inspect::run(&a.into()),
        Command::Check(a) => crate::check::run(&a.into()),
        Command::Unpack(a) => crate::unpack::run(&a.into()),
        Command::Mount(a) => {
            let cfg = a.resolve(crate::mount::is_root())?;
            let _lock = standalone_lock(cfg.fetch.cache_dir.as_deref())?;
            crate::mount::run(&cfg)
        }
        Command::Cache(a) => {
            let gc_dir = match &a.command {
                tool_args::CacheCommand::Gc(g) => Some(g.dir.as_path()),
                _ => None,
            };
            let _lock = standalone_lock(gc_dir)?;
            crate::cache::tools::run(&a.into())
        }
        Command::Stats(a) => crate::stats::run(&a.into()),
        Command::Blobmgr(a) => blobmgr_args::run(a),
        Command::Push(a) => oci_args::run_push(a),
        Command::Pull(a) => oci_args::run_pull(a),
        Command::Bundle(a) => oci_args::run_bundle(a),
        Command::Convert(a) => oci_args::run_convert(a),
        Command::Prefetch(a) => {
            let job = a.to_job()?;
            let _lock = standalone_lock(job.fetch.cache_dir.as_deref())?;
            crate::prefetch::cli::run(&job)
        }
    }
}

/// A standalone user's shared hold on its cache directory for as long as
/// it runs (`rafs mount`, `rafs prefetch --cache-dir`, `rafs cache gc`): a
/// directory a blob manager owns is refused, naming its socket.
fn standalone_lock(
    dir: Option<&std::path::Path>,
) -> Result<Option<crate::manager::lockfile::SharedLock>, crate::manager::lockfile::LockError> {
    dir.map(crate::manager::lockfile::SharedLock::acquire)
        .transpose()
}

/// The exit code of a command that failed with an error. `cache` and
/// `stats` keep 1 for "bad data found" (`cache verify`) and use 2, as clap
/// does for usage errors, for errors that stopped the command.
fn error_code(command: &Command) -> ExitCode {
    match command {
        Command::Cache(_) | Command::Stats(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// The error and its causes, `: `-separated, skipping causes the message
/// already spells out (most rafs errors embed their source's text).
fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use crate::image::{Image, ImageError};

    #[test]
    fn causes_are_printed_once() {
        let err = Image::open(std::path::Path::new("/nonexistent/bootstrap"))
            .err()
            .unwrap();
        assert!(matches!(err, ImageError::Io { .. }));
        let text = render(&anyhow::Error::from(err));
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        // A cause the message does not contain is still shown.
        let e = anyhow::Error::from(std::io::Error::other("disk on fire")).context("reading blob");
        assert_eq!(render(&e), "reading blob: disk on fire");
    }

    /// Rust files under `dir`, recursively.
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Only the CLI layer knows clap: the engine and the commands'
    /// implementations take plain settings, so the blob manager (or any
    /// library user) can drive them without it.
    #[test]
    fn clap_only_in_the_cli_layer() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(
            files.len() > 20,
            "{} files under {}",
            files.len(),
            root.display()
        );
        let mut offenders = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&root).unwrap();
            if rel.starts_with("cli") || rel == std::path::Path::new("main.rs") {
                continue;
            }
            let text = std::fs::read_to_string(f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("clap::") || code.contains("use clap") {
                    offenders.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "clap outside src/cli/:\n{}",
            offenders.join("\n")
        );
    }
}
