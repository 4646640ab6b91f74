//! The `ofapi-gateway` binary: parse the command line, run the command. Everything else lives in
//! the library.

use clap::Parser;

/// mimalloc rather than the system's malloc: see `docs/benchmarks.md`, "Round 5".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ofapi_gateway::cli::Cli::parse().run()
}
