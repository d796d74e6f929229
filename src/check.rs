//! PLACEHOLDER: being written.

/// Arguments of `rafs check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The bootstrap.
    pub bootstrap: std::path::PathBuf,
}

/// Runs `rafs check`.
pub fn run(_args: &CheckArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("rafs check is being written")
}
