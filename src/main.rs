//! `ssm-cosmovisor` binary: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

/// Every heap block is wiped when freed, so the AWS SDK's copies of the
/// parameter (HTTP, TLS and JSON buffers we never see) do not linger.
#[global_allocator]
static ALLOC: ssm_cosmovisor::secret::ZeroizingAlloc = ssm_cosmovisor::secret::ZeroizingAlloc;

fn main() -> ExitCode {
    let cli = ssm_cosmovisor::cli::Cli::parse();
    match ssm_cosmovisor::cli::main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.exit_code();
            // Also through tracing when it is set up, so JSON logs carry it.
            tracing::error!(event = "fatal", exit_code = code, error = %e, "stopping");
            // One write, so the line cannot interleave with the child's output.
            use std::io::Write as _;
            let line = format!("ssm-cosmovisor: error: {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::from(code)
        }
    }
}
