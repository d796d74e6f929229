//! PLACEHOLDER: being written.

/// Arguments of `rafs unpack`.
#[derive(Debug, clap::Args)]
pub struct UnpackArgs {
    /// The bootstrap.
    pub bootstrap: std::path::PathBuf,
}

/// Runs `rafs unpack`.
pub fn run(_args: &UnpackArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("rafs unpack is being written")
}
