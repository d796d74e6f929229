//! Flags of `rafs push`, `rafs pull` and `rafs convert` (images in OCI registries, see
//! `docs/IMAGE.md`), and running them: the output is the manifest digest
//! on stdout, or with `--json` the command's report.

use super::backend_args::BackendArgs;
use super::tool_args::BuildFlags;
use crate::builder;
use crate::oci::blobs_from::BlobsFrom;
use crate::oci::convert::{self, ChunkDict, ConvertOptions};
use crate::oci::pull::{self, PullOptions};
use crate::oci::push::{self, PushOptions};
use crate::oci::source::Location;
use crate::oci::{Reference, RegistryOptions};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Registry flags of the commands that take a reference.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Reach the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Network and credential settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

impl RegistryArgs {
    fn options(&self) -> anyhow::Result<RegistryOptions> {
        Ok(RegistryOptions {
            backend: self.net.options()?,
            plain_http: self.plain_http,
        })
    }
}

/// Arguments of `rafs push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// A `rafs create` output directory (`bootstrap`, `blobs/<sha256>`).
    pub outdir: PathBuf,
    /// Destination: `[docker://]host[:port]/repo[:tag][@sha256:...]`.
    pub reference: String,
    /// The source image's config (OCI image config JSON) to carry over
    /// [default: a minimal config for this platform].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The source image's manifest digest (sha256:...), recorded in the
    /// `dev.rafs.source.manifest` annotation.
    #[arg(long, value_name = "DIGEST")]
    pub source_digest: Option<String>,
    /// A repository of the same registry to mount missing blobs from.
    #[arg(long, value_name = "REPO")]
    pub mount_from: Option<String>,
    /// Where blobs the bootstrap names but OUTDIR lacks are (a chunk
    /// dictionary's): a `rafs create` output directory or a rafs image
    /// `docker://REF` (mounted from it on the same registry, else copied).
    /// Repeatable.
    #[arg(long, value_name = "DIR|REF")]
    pub blobs_from: Vec<String>,
    /// Blob uploads at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Print the push report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Never show a progress bar [default: one on a terminal].
    #[arg(long)]
    pub no_progress: bool,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Arguments of `rafs pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// The image: `[docker://]host[:port]/repo[:tag][@sha256:...]`.
    pub reference: String,
    /// Output directory: receives `bootstrap`, `config.json`,
    /// `manifest.json` (and `blobs/<sha256>` with --blobs).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Also fetch and verify the data blobs.
    #[arg(long)]
    pub blobs: bool,
    /// Print the pull report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Never show a progress bar [default: one on a terminal].
    #[arg(long)]
    pub no_progress: bool,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// A progress bar only on a terminal, never with `--json` or
/// `--no-progress`.
fn show_progress(no_progress: bool, json: bool) -> bool {
    use std::io::IsTerminal as _;
    !no_progress && !json && std::io::stderr().is_terminal()
}

/// Prints `report` as JSON with `--json`, else just the manifest digest.
fn print_report(
    json: bool,
    report: &impl serde::Serialize,
    digest: &str,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `rafs push`.
pub fn run_push(a: &PushArgs) -> anyhow::Result<ExitCode> {
    let opts = PushOptions {
        outdir: a.outdir.clone(),
        reference: Reference::parse(&a.reference)?,
        config: a.config.clone(),
        source_digest: a.source_digest.clone(),
        mount_from: a.mount_from.clone(),
        blobs_from: a
            .blobs_from
            .iter()
            .map(|b| BlobsFrom::parse(b))
            .collect::<Result<_, _>>()?,
        jobs: a.jobs,
        progress: show_progress(a.no_progress, a.json),
        registry: a.registry.options()?,
    };
    let report = push::push(&opts).with_context(|| format!("pushing {}", opts.outdir.display()))?;
    print_report(a.json, &report, &report.digest)
}

/// Runs `rafs pull`.
pub fn run_pull(a: &PullArgs) -> anyhow::Result<ExitCode> {
    let opts = PullOptions {
        reference: Reference::parse(&a.reference)?,
        out: a.output.clone(),
        blobs: a.blobs,
        progress: show_progress(a.no_progress, a.json),
        registry: a.registry.options()?,
    };
    let report = pull::pull(&opts).with_context(|| format!("pulling {}", a.reference))?;
    print_report(a.json, &report, &report.digest)
}

/// Arguments of `rafs bundle`.
#[derive(Debug, Clone, clap::Args)]
pub struct BundleArgs {
    /// The image: `docker://host[:port]/repo[:tag][@sha256:...]`, or an
    /// image config file (`config.json` of `rafs pull`).
    pub image: String,
    /// The bundle directory: receives `config.json` and an empty `rootfs`
    /// to put an overlay of the mount on.
    #[arg(required_unless_present = "podman")]
    pub dir: Option<PathBuf>,
    /// Write no bundle: print the `podman run` arguments (shell-quoted)
    /// that run the image's command, env, user and working dir on an
    /// overlay of the mount MNT: `eval "podman run --rm $(rafs bundle REF
    /// --podman MNT)"`. User and group names are looked up in MNT.
    #[arg(long, value_name = "MNT", conflicts_with = "dir")]
    pub podman: Option<PathBuf>,
    /// A tree of the image (the mount) to look user and group names up in.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Arguments of `rafs convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// The image to convert: `docker://host[:port]/repo[:tag][@sha256:...]`
    /// or an OCI image layout `oci:DIR[:tag]`.
    pub source: String,
    /// Where the rafs image goes: a registry reference or `oci:DIR[:tag]`.
    pub dest: String,
    /// The platform to pick from a multi-platform source,
    /// `os/arch[/variant]` [default: this machine's].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Blob uploads at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Print the convert report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Build settings, as `rafs create`.
    #[command(flatten)]
    pub build: BuildFlags,
    /// Registry settings (for the source and the destination).
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `rafs bundle`: prints the bundle's `config.json` path, or with
/// `--podman` the `podman run` arguments.
pub fn run_bundle(a: &BundleArgs) -> anyhow::Result<ExitCode> {
    let config = if a.image.starts_with("docker://") {
        let r = Reference::parse(&a.image)?;
        let client = crate::oci::client(&r, &a.registry.options()?, Vec::new())?;
        pull::fetch(&client, &r)
            .with_context(|| format!("fetching {}", a.image))?
            .config
    } else {
        std::fs::read(&a.image).with_context(|| format!("reading {}", a.image))?
    };
    if let Some(mnt) = &a.podman {
        let rootfs = a.rootfs.as_deref().unwrap_or(mnt);
        let args = crate::oci::bundle::podman_args(&config, mnt, Some(rootfs))
            .with_context(|| format!("reading the image config of {}", a.image))?;
        println!("{}", crate::oci::bundle::shell_join(&args));
        return Ok(ExitCode::SUCCESS);
    }
    let dir = a.dir.as_deref().context("no bundle directory given")?;
    crate::oci::bundle::write_bundle(&config, dir, a.rootfs.as_deref())
        .with_context(|| format!("writing the bundle {}", dir.display()))?;
    println!("{}", dir.join("config.json").display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `rafs convert`.
pub fn run_convert(a: &ConvertArgs) -> anyhow::Result<ExitCode> {
    // The dictionary is resolved by the convert (a reference is fetched).
    let mut build = a.build.create_args(&[], std::path::Path::new(""), false);
    let chunk_dict = build
        .chunk_dict
        .take()
        .map(ChunkDict::from_arg)
        .transpose()?;
    let opts = ConvertOptions {
        source: Location::parse(&a.source)?,
        dest: Location::parse(&a.dest)?,
        platform: a.platform.clone(),
        build: builder::Options::from_args(&build)?,
        chunk_dict,
        jobs: a.jobs,
        registry: a.registry.options()?,
    };
    let report = convert::convert(&opts).with_context(|| format!("converting {}", a.source))?;
    print_report(a.json, &report, &report.digest)
}
