//! `ssm-cosmovisor` binary: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

/// Every heap block is wiped when freed, so the AWS SDK's copies of the
/// parameter (HTTP, TLS and JSON buffers we never see) do not linger.
#[global_allocator]
static ALLOC: ssm_cosmovisor::secret::ZeroizingAlloc = ssm_cosmovisor::secret::ZeroizingAlloc;

fn main() -> ExitCode {
    ssm_cosmovisor::cli::main(ssm_cosmovisor::cli::Cli::parse())
}
