//! The `peer` binary: parses the command line and hands over to [`peer::cli`].
fn main() -> std::process::ExitCode {
    peer::cli::main()
}
