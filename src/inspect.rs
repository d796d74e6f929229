//! PLACEHOLDER: being written.

/// Arguments of `rafs inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The bootstrap.
    pub bootstrap: std::path::PathBuf,
}

/// Runs `rafs inspect`.
pub fn run(_args: &InspectArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("rafs inspect is being written")
}
