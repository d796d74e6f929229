//! PLACEHOLDER: being written.

/// Arguments of `rafs create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The source.
    pub source: std::path::PathBuf,
}

/// Runs `rafs create`.
pub fn run(_args: &CreateArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("rafs create is being written")
}
