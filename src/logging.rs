//! Log setup: one line per operator milestone, as text (journald adds time
//! and unit) or JSON with stable field names. No secret ever reaches a log
//! call: keys are only logged by address and public key.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

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
            builder
                .fmt_fields(OneLineFields)
                .without_time()
                .with_ansi(false)
                .finish()
                .with(cap),
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

/// The text format's fields, each event kept to one line and each value
/// one token. Some fields come from outside the tool (a lease record's
/// holder, which anyone with `PutItem` on the table writes; a foreign
/// process's executable path): a line break in one would start a line of
/// the attacker's choosing in the journal, and a space followed by
/// `event="delivered"` would put that token on ours. So a value that is not
/// one plain word is written quoted and escaped; control characters are
/// escaped everywhere, the message included. The JSON format escapes by
/// itself.
struct OneLineFields;

impl<'w> FormatFields<'w> for OneLineFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = OneLineVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct OneLineVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl OneLineVisitor<'_> {
    fn put(&mut self, name: &str, value: &str, quote: bool) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", one_line(value))
        } else if quote || !is_plain(value) {
            write!(self.writer, "{sep}{name}={value:?}")
        } else {
            write!(self.writer, "{sep}{name}={value}")
        };
    }
}

impl tracing::field::Visit for OneLineVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        // As tracing's own text format: strings quoted, `%` values not.
        self.put(field.name(), value, true);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.put(field.name(), &format!("{value:?}"), false);
    }
}

/// One token as it stands: no space, quote, `=` or line break to mislead a
/// reader of the line about where a field ends.
fn is_plain(v: &str) -> bool {
    !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
}

/// `text` with every control character (line breaks, escapes, DEL, C1)
/// written as its Rust escape, so it cannot end or rewrite the line.
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    // U+2028/U+2029 are not control characters but end a line in some viewers.
    let breaks = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(breaks) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if breaks(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        assert_eq!(one_line("host/1/ab"), "host/1/ab");
        let forged = "x\nINFO event=\"delivered\"\r\u{1b}[2K\u{85}";
        let out = one_line(forged);
        assert!(!out.chars().any(char::is_control), "{out}");
        assert_eq!(out, "x\\nINFO event=\"delivered\"\\r\\u{1b}[2K\\u{85}");
    }

    /// Through the real formatter: a `%` field and the message, both with a
    /// line break, come out as one line.
    #[test]
    fn a_text_event_is_one_line_whatever_its_fields_hold() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .fmt_fields(OneLineFields)
            .with_writer(move || w.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        let holder = "h\nINFO event=\"delivered\" x";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(event = "lease_wait", holder = %holder, "line one\nline two");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#"holder="h\nINFO event=\"delivered\" x""#),
            "{text}"
        );
        assert!(text.contains(r#"event="lease_wait""#), "{text}");
        assert!(text.contains(r"line one\nline two"), "{text}");
    }

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
