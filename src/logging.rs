//! Log setup: one line per operator milestone, as text (journald adds time
//! and unit) or JSON with stable field names. No secret ever reaches a log
//! call: keys are only logged by address and public key.

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` may raise or lower the level.
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SSM_COSMOVISOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.without_time().with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
