//! Log setup: one line per operator milestone, as text (journald adds time
//! and unit) or JSON with stable field names. No secret ever reaches a log
//! call: keys are only logged by address and public key.

use crate::config::LogFormat;

/// Whether an event may be logged at all, whatever `SSM_COSMOVISOR_LOG`
/// asks for: TRACE only from this crate. The AWS SDK's trace events carry
/// whole requests, responses and results in debug form, their bodies
/// redacted by the SDK itself (unless `LOG_SENSITIVE_BODIES`, which we
/// refuse); one change in that redaction would put the key (the
/// `GetParameter` answer, the `PutParameter` request) into our log, and
/// nothing needed to debug a fetch is below DEBUG. Defence in depth.
fn allowed(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() < tracing::Level::TRACE || meta.target().starts_with("ssm_cosmovisor")
}

/// Installs the global subscriber. `SSM_COSMOVISOR_LOG` may raise or lower
/// the level (TRACE stays limited to our own events, see [`allowed`]).
pub(crate) fn init(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::EnvFilter;
    // aws_config's INFO events narrate credential resolution from profile
    // files (each credential's debug form: access key id, provider), at
    // every start that checks cosmovisor's profile; its warnings stay.
    let filter = EnvFilter::try_from_env("SSM_COSMOVISOR_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let cap = tracing_subscriber::filter::filter_fn(allowed);
    let _ = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(
            builder.without_time().with_ansi(false).finish().with(cap),
        ),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish()
                .with(cap),
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_only_from_this_crate() {
        use tracing::callsite::Identifier;
        use tracing::metadata::Kind;
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level| {
            tracing::Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&CS)),
                Kind::EVENT,
            )
        };
        assert!(allowed(&meta(
            "ssm_cosmovisor::deliver",
            tracing::Level::TRACE
        )));
        assert!(!allowed(&meta(
            "aws_smithy_runtime::client::orchestrator",
            tracing::Level::TRACE
        )));
        assert!(!allowed(&meta("hyper::proto::h1", tracing::Level::TRACE)));
        assert!(allowed(&meta(
            "aws_smithy_runtime::client::orchestrator",
            tracing::Level::DEBUG
        )));
    }
}
