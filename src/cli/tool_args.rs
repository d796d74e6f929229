//! Flags of the image and cache tools (`create`, `inspect`, `check`,
//! `unpack`, `cache`, `stats`), turned into the plain argument structs of
//! the modules that implement them.

use crate::builder::{self, ChunkerKind, DEFAULT_LEVEL};
use crate::cache::tools as cache;
use crate::util::parse_size;
use std::path::PathBuf;

/// Chunking algorithm names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChunkerArg {
    /// Fixed-size chunks (`--chunk-size`).
    Fixed,
    /// FastCDC content-defined chunks (`--cdc-min/avg/max`).
    Cdc,
}

impl From<ChunkerArg> for ChunkerKind {
    fn from(c: ChunkerArg) -> ChunkerKind {
        match c {
            ChunkerArg::Fixed => ChunkerKind::Fixed,
            ChunkerArg::Cdc => ChunkerKind::Cdc,
        }
    }
}

/// Arguments of `rafs create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// A directory, a tar file (plain, gzip or zstd), or `-` for a tar
    /// stream on stdin. Several tar sources are the layers of an OCI
    /// image, bottom layer first: merged into one tree (whiteouts
    /// applied), each layer's data in its own blobs.
    #[arg(required = true, num_args = 1.., value_name = "SOURCE")]
    pub sources: Vec<PathBuf>,
    /// Print the summary (with the blobs of each layer) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Output directory: receives `bootstrap` and `blobs/<sha256>`.
    #[arg(short = 'o', long = "output", value_name = "OUTDIR")]
    pub output: PathBuf,
    /// How the image is built.
    #[command(flatten)]
    pub build: BuildFlags,
}

/// The build flags of `rafs create`, shared with `rafs convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildFlags {
    /// Chunking algorithm [default: cdc, or fixed when --chunk-size is
    /// given].
    #[arg(long, value_enum)]
    pub chunker: Option<ChunkerArg>,
    /// Fixed chunk size: a power of two, 4K..16M [default: 1M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: Option<u64>,
    /// FastCDC minimum chunk size [default: avg/4].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cdc_min: Option<u64>,
    /// FastCDC average chunk size [default: 1M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cdc_avg: Option<u64>,
    /// FastCDC maximum chunk size, at most 16M [default: avg*4].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cdc_max: Option<u64>,
    /// zstd compression level.
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_name = "N", allow_hyphen_values = true)]
    pub compression_level: i32,
    /// Pack chunks shorter than --batch-threshold into shared zstd frames of
    /// up to SIZE bytes (0: no batching) [default: 256K].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub batch_size: Option<u64>,
    /// Chunks shorter than SIZE (small files, tails) are batched
    /// [default: 128K, at most --batch-size].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub batch_threshold: Option<u64>,
    /// zstd level for batch frames [default: --compression-level].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub batch_level: Option<i32>,
    /// Reuse chunks of this bootstrap instead of storing them again
    /// (`rafs convert` also takes a rafs image, `docker://REF`, e.g. the
    /// previous version: its blobs the new image uses are mounted or
    /// copied into the destination).
    #[arg(long, value_name = "BOOTSTRAP|REF")]
    pub chunk_dict: Option<PathBuf>,
    /// Start a new blob before one would grow past SIZE.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub blob_size_limit: Option<u64>,
    /// Paths to prefetch, one per line, in priority order.
    #[arg(long, value_name = "FILE")]
    pub prefetch_list: Option<PathBuf>,
    /// Show a progress bar [default: if stderr is a terminal].
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never show a progress bar.
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
    /// Compression threads [default: available parallelism].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl BuildFlags {
    /// The builder's arguments for `sources` (bottom layer first) into
    /// `output`.
    pub fn create_args(
        &self,
        sources: &[PathBuf],
        output: &std::path::Path,
        json: bool,
    ) -> builder::CreateArgs {
        builder::CreateArgs {
            source: sources.first().cloned().unwrap_or_default(),
            upper_layers: sources.iter().skip(1).cloned().collect(),
            json,
            output: output.to_path_buf(),
            chunker: self.chunker.map(ChunkerKind::from),
            chunk_size: self.chunk_size,
            cdc_min: self.cdc_min,
            cdc_avg: self.cdc_avg,
            cdc_max: self.cdc_max,
            compression_level: self.compression_level,
            batch_size: self.batch_size,
            batch_threshold: self.batch_threshold,
            batch_level: self.batch_level,
            chunk_dict: self.chunk_dict.clone(),
            blob_size_limit: self.blob_size_limit,
            prefetch_list: self.prefetch_list.clone(),
            progress: self.progress,
            no_progress: self.no_progress,
            threads: self.threads,
        }
    }
}

impl From<&CreateArgs> for builder::CreateArgs {
    fn from(a: &CreateArgs) -> builder::CreateArgs {
        a.build.create_args(&a.sources, &a.output, a.json)
    }
}

/// `rafs create ARGV...` parsed (for the builder's option tests).
#[cfg(test)]
pub fn parse_create(argv: &[&str]) -> Result<builder::CreateArgs, String> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        a: CreateArgs,
    }
    let argv = ["rafs"].iter().chain(argv);
    Cmd::try_parse_from(argv)
        .map(|c| builder::CreateArgs::from(&c.a))
        .map_err(|e| e.to_string())
}

/// Arguments of `rafs inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every entry of the tree, depth-first in name order.
    #[arg(long, conflicts_with = "file")]
    pub tree: bool,
    /// Show one file's metadata and chunks (image path, leading `/`
    /// optional).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl From<&InspectArgs> for crate::inspect::InspectArgs {
    fn from(a: &InspectArgs) -> Self {
        crate::inspect::InspectArgs {
            bootstrap: a.bootstrap.clone(),
            json: a.json,
            tree: a.tree,
            file: a.file.clone(),
        }
    }
}

/// Arguments of `rafs check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Also verify every blob and chunk, reading blobs from this directory
    /// (files named by their sha256 hex).
    #[arg(long, value_name = "DIR")]
    pub blobs: Option<PathBuf>,
}

impl From<&CheckArgs> for crate::check::CheckArgs {
    fn from(a: &CheckArgs) -> Self {
        crate::check::CheckArgs {
            bootstrap: a.bootstrap.clone(),
            blobs: a.blobs.clone(),
        }
    }
}

/// Arguments of `rafs unpack`.
#[derive(Debug, clap::Args)]
pub struct UnpackArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Directory holding the blobs, named by their sha256 hex.
    #[arg(long)]
    pub blobs: PathBuf,
    /// Destination: a directory (created if missing, must be empty), or
    /// with --tar a file path or `-` for stdout.
    pub dest: PathBuf,
    /// Write a PAX tar archive instead of restoring into a directory.
    #[arg(long)]
    pub tar: bool,
}

impl From<&UnpackArgs> for crate::unpack::UnpackArgs {
    fn from(a: &UnpackArgs) -> Self {
        crate::unpack::UnpackArgs {
            bootstrap: a.bootstrap.clone(),
            blobs: a.blobs.clone(),
            dest: a.dest.clone(),
            tar: a.tar,
        }
    }
}

/// Arguments of `rafs stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The mount daemon's API socket (`rafs mount --api-socket`).
    pub socket: PathBuf,
    /// Print the parsed samples and histogram summaries as JSON.
    #[arg(long)]
    pub json: bool,
}

impl From<&StatsArgs> for crate::stats::StatsArgs {
    fn from(a: &StatsArgs) -> Self {
        crate::stats::StatsArgs {
            socket: a.socket.clone(),
            json: a.json,
        }
    }
}

/// Arguments of `rafs cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// The cache subcommand.
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// `rafs cache` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Re-hash every ready chunk against the bootstraps; clear bad ones.
    Verify(VerifyArgs),
    /// List the blobs in a cache directory.
    Ls(LsArgs),
    /// Remove the blobs no given bootstrap uses.
    Gc(GcArgs),
}

/// Arguments of `rafs cache verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// A bootstrap whose blobs to verify (repeatable).
    #[arg(long = "bootstrap", value_name = "BOOTSTRAP", required = true)]
    pub bootstraps: Vec<PathBuf>,
}

/// Arguments of `rafs cache ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// Mark which blobs these bootstraps use (repeatable).
    #[arg(long = "bootstrap", value_name = "BOOTSTRAP")]
    pub bootstraps: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `rafs cache gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// A bootstrap whose blobs to keep (repeatable).
    #[arg(long = "bootstrap", value_name = "BOOTSTRAP")]
    pub bootstraps: Vec<PathBuf>,
    /// A kept image (`DIR/images/<hex>`, from `rafs mount docker://...
    /// --cache-dir DIR`) to keep with its blobs: `sha256:<hex>` or `<hex>`
    /// (repeatable). Kept images neither named nor in use by a running
    /// mount are removed.
    #[arg(long = "image", value_name = "DIGEST")]
    pub images: Vec<String>,
    /// Keep only what is in use (running mounts' images and blobs); needed
    /// when neither --bootstrap nor --image is given.
    #[arg(long)]
    pub all: bool,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl From<&CacheArgs> for cache::CacheArgs {
    fn from(a: &CacheArgs) -> Self {
        let command = match &a.command {
            CacheCommand::Verify(v) => cache::CacheCommand::Verify(cache::VerifyArgs {
                dir: v.dir.clone(),
                bootstraps: v.bootstraps.clone(),
            }),
            CacheCommand::Ls(l) => cache::CacheCommand::Ls(cache::LsArgs {
                dir: l.dir.clone(),
                bootstraps: l.bootstraps.clone(),
                json: l.json,
            }),
            CacheCommand::Gc(g) => cache::CacheCommand::Gc(cache::GcArgs {
                dir: g.dir.clone(),
                bootstraps: g.bootstraps.clone(),
                images: g.images.clone(),
                all: g.all,
                dry_run: g.dry_run,
            }),
        };
        cache::CacheArgs { command }
    }
}
