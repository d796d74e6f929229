//! `rafs create`: a directory or tar stream to a bootstrap plus blobs.
//!
//! The build has three phases. The source is read into a [`tree::Tree`]
//! (metadata only) while its file data streams through the
//! [`pipeline`]: chunked ([`chunker`]), small chunks packed into shared
//! frames ([`batch`]), hashed, deduplicated (within the
//! build and against an optional [`dict`]), compressed and appended to blobs
//! in a deterministic order. Then the tree is numbered and encoded with
//! `rafs_format::encode`, which validates its own output. Finally
//! [`output::Staging`] moves blobs and bootstrap into the output directory
//! by rename; any error before that leaves the directory as it was.
//!
//! Sources: [`source_dir`] (walk first, then read files in inode order,
//! sparse-aware) and [`source_tar`] (one pass in archive order; plain, gzip
//! or zstd; OCI layer rules). Several tar sources are the layers of an OCI
//! image ([`build_layers`], [`layers`]): merged into one tree, each layer's
//! data in its own blobs. Output is a pure function of the source and the
//! options: independent of thread count and scheduling.

pub mod batch;
pub mod chunker;
pub mod dict;
pub mod error;
pub mod layers;
pub mod output;
pub mod pax;
pub mod pipeline;
pub mod source_dir;
pub mod source_tar;
pub mod tree;

use crate::util::{human_bytes, parse_size};
use batch::BatchConfig;
use chunker::ChunkerConfig;
use dict::Dict;
use error::{BuildError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use layers::{LayerInput, LayerSummary, Merged};
use pipeline::{PipelineConfig, PipelineOutput};
use rafs_format::{ImageSpec, NodeKind};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tree::{NodeId, Tree};

pub use error::BuildError as Error;

/// Default chunker (see docs/chunking.md for the measurements).
pub const DEFAULT_CHUNKER: ChunkerKind = ChunkerKind::Cdc;
/// Default fixed chunk size.
pub const DEFAULT_CHUNK_SIZE: &str = "1M";
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 10;

/// Chunking algorithm names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkerKind {
    /// Fixed-size chunks (`--chunk-size`).
    Fixed,
    /// FastCDC content-defined chunks (`--cdc-min/avg/max`).
    Cdc,
}

/// Arguments of `rafs create`.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    /// A directory, a tar file (plain, gzip or zstd), or `-` for a tar
    /// stream on stdin.
    pub source: PathBuf,
    /// More tar sources: `source` is then the bottom layer of an OCI image
    /// and these the layers above it, bottom first.
    pub upper_layers: Vec<PathBuf>,
    /// Print the summary as JSON.
    pub json: bool,
    /// Output directory: receives `bootstrap` and `blobs/<sha256>`.
    pub output: PathBuf,
    /// Chunking algorithm [default: cdc, or fixed when --chunk-size is
    /// given].
    pub chunker: Option<ChunkerKind>,
    /// Fixed chunk size: a power of two, 4K..16M [default: 1M].
    pub chunk_size: Option<u64>,
    /// FastCDC minimum chunk size [default: avg/4].
    pub cdc_min: Option<u64>,
    /// FastCDC average chunk size [default: 1M].
    pub cdc_avg: Option<u64>,
    /// FastCDC maximum chunk size, at most 16M [default: avg*4].
    pub cdc_max: Option<u64>,
    /// zstd compression level.
    pub compression_level: i32,
    /// Pack chunks shorter than --batch-threshold into shared zstd frames of
    /// up to SIZE bytes (0: no batching) [default: 1M].
    pub batch_size: Option<u64>,
    /// Chunks shorter than SIZE (small files, tails) are batched
    /// [default: 256K, at most --batch-size].
    pub batch_threshold: Option<u64>,
    /// zstd level for batch frames [default: --compression-level].
    pub batch_level: Option<i32>,
    /// Reuse chunks of this bootstrap instead of storing them again.
    pub chunk_dict: Option<PathBuf>,
    /// Start a new blob before one would grow past SIZE.
    pub blob_size_limit: Option<u64>,
    /// Paths to prefetch, one per line, in priority order.
    pub prefetch_list: Option<PathBuf>,
    /// Show a progress bar [default: if stderr is a terminal].
    pub progress: bool,
    /// Never show a progress bar.
    pub no_progress: bool,
    /// Compression threads [default: available parallelism].
    pub threads: Option<usize>,
}

/// Validated build options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Source directory, tar file, or `-`.
    pub source: PathBuf,
    /// Tar layers above `source` (bottom first): a multi-layer build.
    pub upper_layers: Vec<PathBuf>,
    /// Output directory.
    pub output: PathBuf,
    /// Chunking.
    pub chunker: ChunkerConfig,
    /// zstd level.
    pub level: i32,
    /// Batch frames.
    pub batch: BatchConfig,
    /// Worker threads.
    pub threads: usize,
    /// Blob size limit.
    pub blob_size_limit: Option<u64>,
    /// Chunk dictionary bootstrap.
    pub chunk_dict: Option<PathBuf>,
    /// Prefetch list file.
    pub prefetch_list: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

fn to_u32(v: u64, flag: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| BuildError::BadOptions(format!("{flag} {v} too large")))
}

fn chunker_from_args(a: &CreateArgs) -> Result<ChunkerConfig> {
    let cdc_given = a.cdc_min.is_some() || a.cdc_avg.is_some() || a.cdc_max.is_some();
    // --chunk-size alone asks for fixed chunks; otherwise the default.
    let kind = match (a.chunker, a.chunk_size) {
        (Some(k), _) => k,
        (None, Some(_)) => ChunkerKind::Fixed,
        (None, None) => DEFAULT_CHUNKER,
    };
    let cfg = match kind {
        ChunkerKind::Fixed => {
            if cdc_given {
                return Err(BuildError::BadOptions(
                    "--cdc-min/--cdc-avg/--cdc-max need --chunker cdc".into(),
                ));
            }
            let default = parse_size(DEFAULT_CHUNK_SIZE).map_err(BuildError::BadOptions)?;
            ChunkerConfig::Fixed {
                size: to_u32(a.chunk_size.unwrap_or(default), "--chunk-size")?,
            }
        }
        ChunkerKind::Cdc => {
            if a.chunk_size.is_some() {
                return Err(BuildError::BadOptions(
                    "--chunk-size applies to --chunker fixed only".into(),
                ));
            }
            let avg = a.cdc_avg.unwrap_or(1 << 20);
            ChunkerConfig::Cdc {
                min: to_u32(a.cdc_min.unwrap_or(avg / 4), "--cdc-min")?,
                avg: to_u32(avg, "--cdc-avg")?,
                max: to_u32(a.cdc_max.unwrap_or(avg.saturating_mul(4)), "--cdc-max")?,
            }
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

fn check_level(level: i32, flag: &str) -> Result<()> {
    let levels = zstd::compression_level_range();
    if !levels.contains(&level) || level == 0 {
        return Err(BuildError::BadOptions(format!(
            "{flag} {level} outside 1..={}",
            levels.end()
        )));
    }
    Ok(())
}

fn batch_from_args(a: &CreateArgs) -> Result<BatchConfig> {
    let default = |s: &str| parse_size(s).map_err(BuildError::BadOptions);
    let frame_size = a
        .batch_size
        .map_or_else(|| default(batch::DEFAULT_BATCH_SIZE), Ok)?;
    let threshold = match a.batch_threshold {
        Some(t) => t,
        None => default(batch::DEFAULT_BATCH_THRESHOLD)?.min(frame_size),
    };
    let level = a.batch_level.unwrap_or(a.compression_level);
    check_level(level, "--batch-level")?;
    let cfg = BatchConfig {
        frame_size: to_u32(frame_size, "--batch-size")?,
        threshold: to_u32(threshold, "--batch-threshold")?,
        level,
    };
    if cfg.frame_size == 0 {
        return Ok(BatchConfig::OFF);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Several sources must all be tar streams, stdin at most once.
fn check_layers(a: &CreateArgs) -> Result<()> {
    if a.upper_layers.is_empty() {
        return Ok(());
    }
    let tars = std::iter::once(&a.source).chain(&a.upper_layers);
    if tars.clone().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(BuildError::BadOptions("stdin ('-') given twice".into()));
    }
    if let Some(dir) = tars.clone().find(|p| p.is_dir()) {
        return Err(BuildError::BadOptions(format!(
            "{}: the layers of a multi-layer image must be tar streams",
            dir.display()
        )));
    }
    Ok(())
}

impl Options {
    /// Validates command-line arguments.
    pub fn from_args(a: &CreateArgs) -> Result<Options> {
        let chunker = chunker_from_args(a)?;
        let batch = batch_from_args(a)?;
        check_level(a.compression_level, "--compression-level")?;
        if a.blob_size_limit == Some(0) {
            return Err(BuildError::BadOptions(
                "--blob-size-limit must be positive".into(),
            ));
        }
        let threads = match a.threads {
            Some(0) => return Err(BuildError::BadOptions("--threads must be positive".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let progress = if a.no_progress {
            false
        } else {
            a.progress || std::io::stderr().is_terminal()
        };
        check_layers(a)?;
        Ok(Options {
            source: a.source.clone(),
            upper_layers: a.upper_layers.clone(),
            output: a.output.clone(),
            chunker,
            level: a.compression_level,
            batch,
            threads,
            blob_size_limit: a.blob_size_limit,
            chunk_dict: a.chunk_dict.clone(),
            prefetch_list: a.prefetch_list.clone(),
            progress,
        })
    }
}

/// What a build produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Inodes in the image.
    pub inodes: usize,
    /// Regular files.
    pub files: usize,
    /// Data bytes read (holes and all-zero chunks excluded).
    pub bytes_in: u64,
    /// Bytes written to new blobs.
    pub stored_bytes: u64,
    /// Blobs in the blob table (new and dictionary).
    pub blobs: usize,
    /// New blobs written.
    pub new_blobs: usize,
    /// Logical data bytes / distinct chunk bytes.
    pub dedup_ratio: f64,
    /// Batch frames written.
    pub frames: u64,
    /// Chunks stored as batch members.
    pub batched_chunks: u64,
    /// Mean stored bytes fetched per random 4 KiB read, over file chunks.
    pub read_amplification: f64,
    /// Bootstrap size.
    pub bootstrap_bytes: usize,
    /// Per layer, bottom first (multi-layer builds only): the blobs each
    /// layer's data went to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSummary>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "created image: {} files ({} inodes), {} in, {} stored in {} blob(s), dedup ratio {:.2}",
            self.files,
            self.inodes,
            human_bytes(self.bytes_in),
            human_bytes(self.stored_bytes),
            self.blobs,
            self.dedup_ratio,
        )?;
        for (i, l) in self.layers.iter().enumerate() {
            write!(f, "\nlayer {} ({}):", i + 1, l.name)?;
            if l.blobs.is_empty() && l.dict_blobs.is_empty() {
                write!(f, " no data")?;
            }
            for b in &l.blobs {
                write!(f, " blob {b}")?;
            }
            for b in &l.dict_blobs {
                write!(f, " dict blob {b}")?;
            }
        }
        Ok(())
    }
}

/// Runs `rafs create`.
pub fn run(args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let opts = Options::from_args(args)?;
    let summary = build(&opts)?;
    tracing::info!(?summary, "build finished");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(opts: &Options) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bytes}/{total_bytes} ({bytes_per_sec}) {wide_bar}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// A prefetch list: `(line number, path)` pairs.
type PrefetchLines = Vec<(usize, Vec<u8>)>;

/// Reads a prefetch list (the format of [`crate::image::list`], shared
/// with `--record-access` and `rafs prefetch --list`); the image's table
/// holds whole files, so ranges are ignored.
pub fn read_prefetch_list(path: &Path) -> Result<PrefetchLines> {
    let entries = crate::image::list::read(path)?;
    Ok(entries.into_iter().map(|e| (e.line, e.path)).collect())
}

fn resolve_prefetch(
    tree: &Tree,
    order: &[NodeId],
    list: Option<(&Path, PrefetchLines)>,
) -> Result<Vec<u32>> {
    let Some((list_path, lines)) = list else {
        return Ok(Vec::new());
    };
    let ino_of: std::collections::HashMap<NodeId, u32> = order
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i as u32))
        .collect();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (line, path) in lines {
        let ino = tree.resolve(&path).and_then(|id| ino_of.get(&id).copied());
        let ino = ino.ok_or_else(|| BuildError::PrefetchMissing {
            list: list_path.to_owned(),
            line,
            path: String::from_utf8_lossy(&path).into_owned(),
        })?;
        if seen.insert(ino) {
            out.push(ino);
        }
    }
    Ok(out)
}

/// The pipeline parameters of `opts`.
fn pipeline_config(opts: &Options) -> PipelineConfig {
    PipelineConfig {
        level: opts.level,
        threads: opts.threads,
        blob_size_limit: opts.blob_size_limit,
        max_chunk: opts.chunker.max_chunk(),
        batch: opts.batch,
    }
}

/// Reads the source through the pipeline into `staging`'s temporary dir.
fn read_source(
    opts: &Options,
    dict: Option<&Dict>,
    tmp: &Path,
    bar: &ProgressBar,
) -> Result<(Tree, PipelineOutput)> {
    let cfg = pipeline_config(opts);
    let src = &opts.source;
    if src.as_os_str() != "-" && src.is_dir() {
        let mut tree = source_dir::scan(src)?;
        let order = tree.order();
        bar.set_length(source_dir::total_size(&tree, &order));
        let ((), out) = pipeline::run(&cfg, dict, tmp, bar, |emit| {
            source_dir::read_data(&mut tree, &order, &opts.chunker, emit)
        })?;
        return Ok((tree, out));
    }
    let stream = source_tar::open_stream(src)?;
    let name = src.display().to_string();
    pipeline::run(&cfg, dict, tmp, bar, |emit| {
        source_tar::read_tar(stream, &name, &opts.chunker, emit)
    })
}

/// Mean stored bytes fetched to serve a random 4 KiB read of file data:
/// Σ(u·c) / Σu / 4096 over the data chunks of every file (each file once).
pub fn read_amplification(spec: &ImageSpec) -> f64 {
    let (mut uc, mut u) = (0f64, 0f64);
    for node in &spec.nodes {
        if let NodeKind::File { chunks } = &node.kind {
            for c in chunks.iter().filter(|c| c.compressed_size > 0) {
                uc += f64::from(c.uncompressed_size) * f64::from(c.compressed_size);
                u += f64::from(c.uncompressed_size);
            }
        }
    }
    if u == 0.0 {
        0.0
    } else {
        uc / u / 4096.0
    }
}

/// Reads the layers bottom first, each through its own pipeline run
/// (blobs in `tmp/layer-N/`), merging them as they come.
fn read_layers(
    opts: &Options,
    dict: Option<&Dict>,
    tmp: &Path,
    bar: &ProgressBar,
    inputs: impl IntoIterator<Item = Result<LayerInput>>,
) -> Result<Merged> {
    let cfg = pipeline_config(opts);
    let mut merged = Merged::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let LayerInput { name, stream } = input?;
        let dir = tmp.join(format!("layer-{i}"));
        std::fs::create_dir(&dir).map_err(|e| BuildError::io(&dir, e))?;
        let stream = source_tar::decompress(stream, &name)?;
        let ((tree, marks), out) = pipeline::run(&cfg, dict, &dir, bar, |emit| {
            source_tar::read_layer(stream, &name, &opts.chunker, emit)
        })?;
        merged.add(&name, &tree, &marks, out)?;
    }
    if merged.layers.is_empty() {
        return Err(BuildError::BadOptions("no layers".into()));
    }
    Ok(merged)
}

/// Builds a multi-layer OCI image from `inputs` (tar streams, bottom layer
/// first), as `opts` says (its `source` and `upper_layers` are not read):
/// one merged bootstrap, each layer's data in its own blobs. The inputs
/// are opened one at a time, as the build reaches them.
pub fn build_layers(
    opts: &Options,
    inputs: impl IntoIterator<Item = Result<LayerInput>>,
) -> Result<Summary> {
    let dict = opts.chunk_dict.as_deref().map(Dict::open).transpose()?;
    let prefetch_lines = match &opts.prefetch_list {
        Some(p) => Some((p.as_path(), read_prefetch_list(p)?)),
        None => None,
    };
    let staging = output::Staging::new(&opts.output)?;
    let bar = progress_bar(opts);
    let read = read_layers(opts, dict.as_ref(), staging.tmp(), &bar, inputs);
    bar.finish_and_clear();
    let merged = read?;
    let out = PipelineOutput {
        specs: merged.specs,
        blobs: merged.blobs,
        blob_files: merged.blob_files,
        stats: merged.stats,
    };
    finish(
        opts,
        staging,
        &merged.tree,
        out,
        prefetch_lines,
        merged.layers,
    )
}

/// Opens a layer file (or `-`, stdin) for [`build_layers`].
pub fn open_layer(path: &Path) -> Result<LayerInput> {
    let stream: source_tar::Stream = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
        Box::new(f)
    };
    Ok(LayerInput {
        name: path.display().to_string(),
        stream,
    })
}

/// Builds an image as `opts` says; returns the summary.
pub fn build(opts: &Options) -> Result<Summary> {
    if !opts.upper_layers.is_empty() {
        let paths = std::iter::once(&opts.source).chain(&opts.upper_layers);
        // Missing files are found before any layer is read.
        for p in paths.clone().filter(|p| p.as_os_str() != "-") {
            std::fs::metadata(p).map_err(|e| BuildError::io(p, e))?;
        }
        return build_layers(opts, paths.map(|p| open_layer(p)));
    }
    let dict = opts.chunk_dict.as_deref().map(Dict::open).transpose()?;
    let prefetch_lines = match &opts.prefetch_list {
        Some(p) => Some((p.as_path(), read_prefetch_list(p)?)),
        None => None,
    };
    if opts.source.as_os_str() != "-" {
        std::fs::metadata(&opts.source).map_err(|e| BuildError::io(&opts.source, e))?;
    }
    let staging = output::Staging::new(&opts.output)?;
    let bar = progress_bar(opts);
    let read = read_source(opts, dict.as_ref(), staging.tmp(), &bar);
    bar.finish_and_clear();
    let (tree, out) = read?;
    finish(opts, staging, &tree, out, prefetch_lines, Vec::new())
}

/// Numbers and encodes the tree, then commits blobs and bootstrap.
fn finish(
    opts: &Options,
    staging: output::Staging,
    tree: &Tree,
    out: PipelineOutput,
    prefetch_lines: Option<(&Path, PrefetchLines)>,
    layers: Vec<LayerSummary>,
) -> Result<Summary> {
    let order = tree.order();
    let nodes = tree.to_nodes(&order, &out.specs)?;
    let prefetch = resolve_prefetch(tree, &order, prefetch_lines)?;
    let spec = tree::image_spec(nodes, out.blobs, prefetch, opts.chunker.chunking());
    let bootstrap = rafs_format::encode(&spec)?;
    let st = out.stats;
    let summary = Summary {
        inodes: order.len(),
        files: tree.count_files(&order),
        bytes_in: st.data_bytes,
        stored_bytes: st.stored_bytes,
        blobs: spec.blobs.len(),
        new_blobs: out.blob_files.len(),
        dedup_ratio: if st.distinct_bytes == 0 {
            1.0
        } else {
            st.data_bytes as f64 / st.distinct_bytes as f64
        },
        frames: st.frames,
        batched_chunks: st.batched_chunks,
        read_amplification: read_amplification(&spec),
        bootstrap_bytes: bootstrap.len(),
        layers,
    };
    staging.commit(&out.blob_files, &bootstrap)?;
    Ok(summary)
}

#[cfg(test)]
pub(crate) mod tests;
