//! What every AWS client of ours shares (SSM for the key, DynamoDB for the
//! lease): the runtime, the one summary of a failed SDK call that is safe to
//! print, and the one list of error codes that mean "your credentials".

use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::SdkError;

/// A current-thread runtime for one client's blocking calls.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The error codes AWS answers when the caller's credentials are missing,
/// wrong, expired or not signed right (STS, SSM, KMS, DynamoDB alike): what
/// an operator fixes in the host's role or profile, not in the resource.
const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationToken",
    "IncompleteSignature",
];

/// Whether `code` says the credentials are at fault.
pub(crate) fn is_credential_code(code: &str) -> bool {
    CREDENTIAL_CODES.contains(&code)
}

/// An answer larger than a client accepts (found in the SDK error's source
/// chain, so the failure is named by it).
#[derive(Debug, thiserror::Error)]
#[error("an answer of {size} bytes, more than the {limit} any parameter needs")]
pub(crate) struct AnswerTooLarge {
    pub(crate) size: u64,
    pub(crate) limit: u64,
}

/// Printable ASCII only, at most `max` characters: what may go into our
/// message from text we did not write.
pub(crate) fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// The HTTP status and request id of a failed call, as `HTTP 400, request
/// id 1234-...` (whichever is known).
pub(crate) fn status_and_request_id<E>(e: &SdkError<E, HttpResponse>) -> String {
    use aws_sdk_ssm::operation::RequestId;
    let mut parts = Vec::new();
    if let Some(r) = e.raw_response() {
        parts.push(format!("HTTP {}", r.status().as_u16()));
    }
    // A request id is a UUID-like token; anything else is not shown.
    if let Some(id) = e.request_id().filter(|id| {
        !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        parts.push(format!("request id {id}"));
    }
    if parts.is_empty() {
        "no answer".into()
    } else {
        parts.join(", ")
    }
}

/// Names a failure by its class from the error's type and source chain,
/// never from its text: the kind of an I/O error, a timeout, our own size
/// limit. The SDK's messages are not used (a parse error's can quote input).
fn failure_class<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + 'static,
{
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(big) = s.downcast_ref::<AnswerTooLarge>() {
            return big.to_string();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return format!("I/O error: {}", io.kind());
        }
        src = s.source();
    }
    match e {
        SdkError::ConstructionFailure(_) => "the request could not be built".into(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "connection timed out".into(),
        SdkError::DispatchFailure(d) if d.is_io() => "connection failed (I/O error)".into(),
        SdkError::DispatchFailure(_) => "connection failed".into(),
        SdkError::ResponseError(_) => "the answer could not be parsed".into(),
        SdkError::ServiceError(_) => "AWS error".into(),
        _ => "unknown SDK failure".into(),
    }
}

/// What an SDK call failed with, safe to print and log: its class, the HTTP
/// status and the request id, nothing of the answer. For every AWS client
/// (the response types are the same).
pub(crate) fn sdk_failure_summary<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + 'static,
{
    format!("{}; {}", failure_class(e), status_and_request_id(e))
}

/// An AWS error code as AWS writes them (`AccessDeniedException`), else `Unknown`.
pub(crate) fn error_code(code: Option<&str>) -> String {
    match code {
        Some(c)
            if !c.is_empty()
                && c.len() <= 64
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') =>
        {
            c.to_string()
        }
        _ => "Unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_codes_are_one_list_and_only_credentials() {
        // The lease client knew two of these before the list was shared.
        for c in [
            "ExpiredTokenException",
            "InvalidClientTokenId",
            "UnrecognizedClientException",
        ] {
            assert!(is_credential_code(c), "{c}");
        }
        for c in [
            "AccessDeniedException",
            "ResourceNotFoundException",
            "Unknown",
            "",
        ] {
            assert!(!is_credential_code(c), "{c}");
        }
    }

    #[test]
    fn an_error_code_is_shown_only_as_aws_writes_them() {
        assert_eq!(
            error_code(Some("AccessDeniedException")),
            "AccessDeniedException"
        );
        assert_eq!(error_code(Some("a b")), "Unknown");
        assert_eq!(error_code(Some(&"A".repeat(65))), "Unknown");
        assert_eq!(error_code(None), "Unknown");
        assert_eq!(clean("ok\u{1b}[31m", 4), "ok?[...");
    }
}
