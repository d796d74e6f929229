//! Command-line interface: parses arguments and dispatches to the
//! subsystems. Each subcommand's arguments are defined next to the code that
//! implements it.

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
    Create(crate::builder::CreateArgs),
    /// Describe an image: summary, tree, a file's chunks.
    Inspect(crate::inspect::InspectArgs),
    /// Validate an image, and with --blobs every chunk of data.
    Check(crate::check::CheckArgs),
    /// Restore an image's tree into a directory or a tar stream.
    Unpack(crate::unpack::UnpackArgs),
    /// Serve an image read-only over FUSE, in the foreground.
    Mount(Box<crate::mount::MountArgs>),
    /// Inspect, verify and clean a cache directory.
    Cache(crate::cache::tools::CacheArgs),
    /// Show a running mount's metrics (over its API socket).
    Stats(crate::stats::StatsArgs),
    /// Fill a cache directory with an image's data (paths, a list, or all)
    /// ahead of mounts.
    Prefetch(Box<crate::prefetch::cli::PrefetchArgs>),
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
    let result = match &cli.command {
        Command::Create(a) => crate::builder::run(a),
        Command::Inspect(a) => crate::inspect::run(a),
        Command::Check(a) => crate::check::run(a),
        Command::Unpack(a) => crate::unpack::run(a),
        Command::Mount(a) => crate::mount::run(a),
        Command::Cache(a) => crate::cache::tools::run(a),
        Command::Stats(a) => crate::stats::run(a),
        Command::Prefetch(a) => crate::prefetch::cli::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rafs: {}", render(&e));
            error_code(&cli.command)
        }
    }
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
}
