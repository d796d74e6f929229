//! The `rafs` command.

fn main() -> std::process::ExitCode {
    rafs::cli::main()
}
