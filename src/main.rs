//! The `ofapi-gateway` binary: parse the command line, run the command. Everything else lives in
//! the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ofapi_gateway::cli::Cli::parse().run()
}
