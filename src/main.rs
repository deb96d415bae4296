//! The `switchyard` binary: parse the command line and hand over to the library's CLI.

// A proxy allocates and frees many short-lived buffers per request; mimalloc does that with less contention
// than the system allocator (measured with bench/run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
