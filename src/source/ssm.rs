//! AWS SSM Parameter Store: fetch (`GetParameter` with decryption), describe
//! (KMS key id, for `check`) and store (`PutParameter`, for `import`).
//!
//! Each call builds its own single-threaded runtime and client and drops both
//! before returning, so the long-running supervisor holds no network client,
//! connection pool or credentials cache once the key is fetched.
//!
//! An SDK error is never formatted (its `Debug`, and the `Display` of a
//! response error's source chain, carry the raw HTTP answer, which for
//! `GetParameter` is the decrypted key): [`classify`] reduces it to a class,
//! the HTTP status, the request id and, for IAM/KMS/credential refusals
//! only, AWS's own message, cleaned and capped.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::ParameterType;
use zeroize::Zeroize;

use crate::aws::{
    self, clean, error_code, sdk_failure_summary, status_and_request_id, AnswerTooLarge,
};
use crate::secret::SecretBuf;

/// Attempts per request (the SDK backs off exponentially with jitter between
/// them, and retries throttling and transient network errors only).
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// What the parameter is, as SSM reports it (no secret).
#[derive(Debug, Clone)]
pub(crate) struct ParameterInfo {
    /// Parameter name.
    pub(crate) name: String,
    /// Version number.
    pub(crate) version: i64,
    /// `SecureString`, `String`, …
    pub(crate) kind: String,
    /// ARN, if returned.
    pub(crate) arn: Option<String>,
}

/// Classified SSM failure. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SsmError {
    /// No region configured.
    #[error("no AWS region configured: set AWS_REGION (e.g. us-east-1)")]
    NoRegion,
    /// The parameter does not exist.
    #[error("SSM parameter {name} not found in region {region}: check AWS_PARAMETER and AWS_REGION, or create it with `ssm-cosmovisor import`")]
    NotFound {
        /// Parameter.
        name: String,
        /// Region asked.
        region: String,
    },
    /// IAM refused.
    #[error("access denied reading SSM parameter {name}: the role needs ssm:GetParameter on it (and kms:Decrypt on its KMS key); AWS said: {message}")]
    AccessDenied {
        /// Parameter.
        name: String,
        /// AWS's message.
        message: String,
    },
    /// KMS could not decrypt.
    #[error("KMS could not decrypt SSM parameter {name} ({code}): check the KMS key's policy allows kms:Decrypt for this role; AWS said: {message}")]
    Kms {
        /// Parameter.
        name: String,
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The credentials were rejected or absent.
    #[error("AWS credentials problem for SSM parameter {name} ({code}): {message}; check the instance role, AWS_PROFILE or AWS_ACCESS_KEY_ID")]
    Credentials {
        /// Parameter.
        name: String,
        code: String,
        /// AWS's message.
        message: String,
    },
    /// Parameter is not a SecureString.
    #[error("SSM parameter {name} is of type {kind}, not SecureString: the key would be stored unencrypted. Re-create it as SecureString (`ssm-cosmovisor import --overwrite`), or pass --allow-plain-string to accept it knowingly")]
    NotSecure {
        /// Parameter.
        name: String,
        /// Actual type.
        kind: String,
    },
    /// The parameter already exists (import without --overwrite).
    #[error(
        "SSM parameter {name} already exists (version {version}); pass --overwrite to replace it"
    )]
    Exists {
        /// Parameter.
        name: String,
        /// Its current version.
        version: i64,
    },
    /// The answer could not be parsed (or is far larger than any parameter).
    #[error("SSM answered {op} of {name} with something that is not a valid answer ({detail}); nothing of it is shown, since it may hold the key. Check AWS_ENDPOINT_URL and any proxy between this host and SSM")]
    Malformed {
        op: &'static str,
        /// Parameter.
        name: String,
        /// Class, HTTP status, request id.
        detail: String,
    },
    /// The configuration forbids using the SDK (its body logging is on).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Network, timeout or throttling persisted through all retries.
    #[error("cannot reach SSM for parameter {name} after {MAX_ATTEMPTS} attempts: {detail}; check network access to the SSM endpoint (and AWS_ENDPOINT_URL if set)")]
    Unreachable {
        /// Parameter.
        name: String,
        /// Transport error.
        detail: String,
    },
    /// Anything else AWS returned (its message is not shown: validation
    /// errors echo request values, and `PutParameter`'s value is the key).
    #[error("SSM {op} of {name} failed ({code}; {message})")]
    Other {
        op: &'static str,
        /// Parameter.
        name: String,
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The response had no value.
    #[error("SSM returned parameter {name} without a value")]
    NoValue {
        /// Parameter.
        name: String,
    },
    /// Secret memory failure.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The largest answer accepted from SSM. A parameter value is at most
/// 8 KiB (advanced tier), JSON-escaped at most 6 times that, plus the
/// envelope: anything larger is not an SSM answer, and is not read.
pub(crate) const MAX_ANSWER: u64 = 64 * 1024;

/// One attempt of a request, from connecting to the last byte of the answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connecting, within an attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A whole request, every attempt and back-off included: the longest a start
/// waits for SSM before it fails (exit 3) and systemd tries again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Per-attempt and whole-operation timeouts.
fn timeouts() -> (Duration, Duration) {
    // Test builds only: the slow-answer tests would otherwise wait 90 s.
    #[cfg(feature = "failpoints")]
    if let Some(ms) = std::env::var("SSM_COSMOVISOR_TEST_SSM_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return (Duration::from_millis(ms), Duration::from_millis(3 * ms));
    }
    (ATTEMPT_TIMEOUT, OPERATION_TIMEOUT)
}

/// Refuses an answer larger than [`MAX_ANSWER`]: by its `Content-Length`
/// before the body is read, else (chunked) once it has been read.
#[derive(Debug)]
struct AnswerSizeLimit;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl aws_sdk_ssm::config::Intercept for AnswerSizeLimit {
    fn name(&self) -> &'static str {
        "AnswerSizeLimit"
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_sdk_ssm::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_ssm::config::RuntimeComponents,
        _: &mut aws_sdk_ssm::config::ConfigBag,
    ) -> Result<(), BoxError> {
        let len = ctx
            .response()
            .headers()
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        match len {
            Some(n) if n > MAX_ANSWER => Err(Box::new(AnswerTooLarge {
                size: n,
                limit: MAX_ANSWER,
            })),
            _ => Ok(()),
        }
    }

    fn read_after_deserialization(
        &self,
        ctx: &aws_sdk_ssm::config::interceptors::AfterDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_ssm::config::RuntimeComponents,
        _: &mut aws_sdk_ssm::config::ConfigBag,
    ) -> Result<(), BoxError> {
        match ctx.response().body().bytes().map(|b| b.len() as u64) {
            Some(n) if n > MAX_ANSWER => Err(Box::new(AnswerTooLarge {
                size: n,
                limit: MAX_ANSWER,
            })),
            _ => Ok(()),
        }
    }
}

async fn client() -> Result<(aws_sdk_ssm::Client, String), SsmError> {
    client_with(None).await
}

/// The SSM client and its region, as the tool's own (region, endpoint,
/// retries, timeouts, answer size limit from our environment); with
/// `credentials`, signing with those instead of the default chain's.
pub(super) async fn client_with(
    credentials: Option<aws_credential_types::Credentials>,
) -> Result<(aws_sdk_ssm::Client, String), SsmError> {
    // Before the SDK reads its environment: its body logging would put the
    // key (and container credentials) into our trace log.
    crate::config::refuse_sdk_body_logging(&crate::config::ProcessEnv)?;
    let (attempt, operation) = timeouts();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT.min(attempt))
                .operation_attempt_timeout(attempt)
                .operation_timeout(operation)
                .build(),
        );
    if let Some(c) = credentials {
        loader = loader.credentials_provider(c);
    }
    let conf = loader.load().await;
    let region = conf.region().ok_or(SsmError::NoRegion)?.to_string();
    let conf = aws_sdk_ssm::config::Builder::from(&conf)
        .interceptor(AnswerSizeLimit)
        .build();
    Ok((aws_sdk_ssm::Client::from_conf(conf), region))
}

pub(super) fn classify<E>(
    op: &'static str,
    name: &str,
    region: &str,
    e: SdkError<E, HttpResponse>,
) -> SsmError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let at = status_and_request_id(&e);
    // AWS's own message, for the IAM/KMS/credential refusals it explains
    // (which principal, which action); cleaned and capped.
    let said = |m: Option<&str>| match m.map(|m| clean(m, 300)) {
        Some(m) if !m.is_empty() => format!("{m} ({at})"),
        _ => at.clone(),
    };
    // Some endpoints (and emulators) answer IAM failures with a body the
    // JSON protocol cannot parse; the HTTP status still says what happened.
    let status = e.raw_response().map(|r| r.status().as_u16());
    if e.code().is_none() && matches!(status, Some(401 | 403)) {
        let body = e
            .raw_response()
            .and_then(|r| r.body().bytes())
            .filter(|b| b.len() <= 4096)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let message = said(extract_xml_message(&body).as_deref());
        let lower = body.to_ascii_lowercase();
        return if lower.contains("invalidclienttokenid") || lower.contains("signaturedoesnotmatch")
        {
            SsmError::Credentials {
                name: name.into(),
                code: "InvalidClientTokenId".into(),
                message,
            }
        } else if lower.contains("kms") {
            SsmError::Kms {
                name: name.into(),
                code: "AccessDenied".into(),
                message,
            }
        } else {
            SsmError::AccessDenied {
                name: name.into(),
                message,
            }
        };
    }
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            return SsmError::Unreachable {
                name: name.into(),
                detail: sdk_failure_summary(&e),
            }
        }
        SdkError::ServiceError(_) => {}
        _ => {
            return SsmError::Malformed {
                op,
                name: name.into(),
                detail: sdk_failure_summary(&e),
            }
        }
    }
    let code = error_code(e.code());
    let lower = e.message().unwrap_or("").to_ascii_lowercase();
    match code.as_str() {
        "ParameterNotFound" => SsmError::NotFound {
            name: name.into(),
            region: region.into(),
        },
        "AccessDeniedException" | "AccessDenied" if lower.contains("kms") => SsmError::Kms {
            name: name.into(),
            message: said(e.message()),
            code,
        },
        "AccessDeniedException" | "AccessDenied" => SsmError::AccessDenied {
            name: name.into(),
            message: said(e.message()),
        },
        c if c.starts_with("KMS") || c == "InvalidKeyId" => SsmError::Kms {
            name: name.into(),
            message: said(e.message()),
            code,
        },
        c if aws::is_credential_code(c) => SsmError::Credentials {
            name: name.into(),
            message: said(e.message()),
            code,
        },
        _ => SsmError::Other {
            op,
            name: name.into(),
            code,
            message: at,
        },
    }
}

fn extract_xml_message(body: &str) -> Option<String> {
    let start = body.find("<Message>")? + "<Message>".len();
    let end = body[start..].find("</Message>")? + start;
    Some(body[start..end].to_string())
}

/// Fetches a parameter with decryption. The value is moved into secret
/// memory and the SDK's `String` is wiped before it is freed.
pub(crate) fn fetch(
    name: &str,
    allow_plain_string: bool,
) -> Result<(ParameterInfo, SecretBuf), SsmError> {
    aws::runtime().map_err(SsmError::Runtime)?.block_on(async {
        let (client, region) = client().await?;
        let out = client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify("GetParameter", name, &region, e))?;
        let mut param = out.parameter.ok_or_else(|| SsmError::NoValue { name: name.into() })?;
        // Take the value out first so every early return below still wipes it.
        let mut value = param.value.take().unwrap_or_default();
        let result = (|| {
            let kind = param
                .r#type
                .as_ref()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "unknown".into());
            if param.r#type != Some(ParameterType::SecureString) {
                if !allow_plain_string {
                    return Err(SsmError::NotSecure {
                        name: name.into(),
                        kind,
                    });
                }
                tracing::warn!(
                    parameter = name,
                    kind = %kind,
                    "parameter is not a SecureString: the key is stored unencrypted in SSM (accepted because of --allow-plain-string)"
                );
            }
            let info = ParameterInfo {
                name: param.name.clone().unwrap_or_else(|| name.to_string()),
                version: param.version,
                kind,
                arn: param.arn.clone(),
            };
            let buf = SecretBuf::from_slice(value.as_bytes())?;
            Ok((info, buf))
        })();
        value.zeroize();
        result
    })
}

/// Metadata for `check`: the KMS key id, tier and last modification.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParameterMeta {
    /// KMS key id or alias (`alias/aws/ssm` when the default key is used).
    pub(crate) kms_key_id: Option<String>,
    /// Standard / Advanced / Intelligent-Tiering.
    pub(crate) tier: Option<String>,
    /// Last modified by (IAM principal).
    pub(crate) last_modified_user: Option<String>,
}

/// Reads the parameter's metadata with `DescribeParameters` (needs
/// `ssm:DescribeParameters`; `check` reports a denial as a warning).
pub(crate) fn describe(name: &str) -> Result<ParameterMeta, SsmError> {
    use aws_sdk_ssm::types::ParameterStringFilter;
    aws::runtime().map_err(SsmError::Runtime)?.block_on(async {
        let (client, region) = client().await?;
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .values(name)
            .build()
            .map_err(|_| SsmError::Other {
                op: "DescribeParameters",
                name: name.into(),
                code: "BuildError".into(),
                message: "the request filter could not be built".into(),
            })?;
        let out = client
            .describe_parameters()
            .parameter_filters(filter)
            .send()
            .await
            .map_err(|e| classify("DescribeParameters", name, &region, e))?;
        let meta = out
            .parameters
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(|p| ParameterMeta {
                kms_key_id: p.key_id,
                tier: p.tier.map(|t| t.as_str().to_string()),
                last_modified_user: p.last_modified_user,
            })
            .unwrap_or_default();
        Ok(meta)
    })
}

/// Stores `value` as a SecureString. Returns the new version.
pub(crate) fn put(
    name: &str,
    value: &SecretBuf,
    kms_key_id: Option<&str>,
    overwrite: bool,
) -> Result<i64, SsmError> {
    use secrecy::ExposeSecret;
    aws::runtime().map_err(SsmError::Runtime)?.block_on(async {
        let (client, region) = client().await?;
        // The SDK needs an owned String. It is moved in (no copy of ours
        // remains) and wiped on free by the binary's zeroizing allocator,
        // which also covers the SDK's request buffers.
        let text = String::from_utf8_lossy(value.expose_secret()).into_owned();
        let mut req = client
            .put_parameter()
            .name(name)
            .value(text)
            .r#type(ParameterType::SecureString)
            .overwrite(overwrite);
        if let Some(k) = kms_key_id {
            req = req.key_id(k);
        }
        match req.send().await {
            Ok(out) => Ok(out.version),
            Err(e) if e.code() == Some("ParameterAlreadyExists") => {
                let version = client
                    .get_parameter()
                    .name(name)
                    .send()
                    .await
                    .ok()
                    .and_then(|o| o.parameter.map(|p| p.version))
                    .unwrap_or(0);
                Err(SsmError::Exists {
                    name: name.into(),
                    version,
                })
            }
            Err(e) => Err(classify("PutParameter", name, &region, e)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a start may wait for SSM is what operators size their units
    /// and alerts by: README and security.md say it in these words, with the
    /// numbers the client is built with.
    #[test]
    fn the_timeouts_are_documented_as_built() {
        let phrase = format!(
            "up to {MAX_ATTEMPTS} attempts of at most {} s each (connecting: {} s), {} s in all",
            ATTEMPT_TIMEOUT.as_secs(),
            CONNECT_TIMEOUT.as_secs(),
            OPERATION_TIMEOUT.as_secs()
        );
        for doc in ["README.md", "security.md"] {
            let text = std::fs::read_to_string(format!("{}/{doc}", env!("CARGO_MANIFEST_DIR")))
                .expect("doc");
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains(&phrase), "{doc} does not say {phrase:?}");
        }
    }
}
