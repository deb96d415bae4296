//! The `switchyard` binary: parse the command line and hand over to the library's CLI.

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
