//! The AWS identity handed to cosmovisor (`SSM_COSMOVISOR_CHILD_AWS_PROFILE`)
//! must not be able to read the key: cosmovisor passes its whole environment
//! to the node, and the node may read the profile's files. So before the
//! child starts (and in `check`) the key parameter is asked for with that
//! profile's credentials, and only a refusal lets the child start.
//!
//! The credentials come from the AWS config and credentials files alone
//! (`ProfileFileCredentialsProvider`): the default chain would sign with our
//! own environment's keys, which win over any profile, and so test ours.
//! Region, endpoint, retries and timeouts are the tool's own SSM client's,
//! so the parameter asked for is the very one `run` fetches.

use std::path::Path;

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use zeroize::Zeroize;

use super::ssm::{self, SsmError};
use crate::config::{Config, SourceSpec};

/// How SSM refused the profile the key (the expected outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// IAM refused `ssm:GetParameter`.
    AccessDenied,
    /// SSM could read the parameter but KMS refused `kms:Decrypt`.
    KmsDecryptDenied,
}

impl Refusal {
    /// The stable token logged as `result`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::AccessDenied => "access_denied",
            Refusal::KmsDecryptDenied => "kms_decrypt_denied",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::AccessDenied => "access denied (ssm:GetParameter)",
            Refusal::KmsDecryptDenied => "KMS refused to decrypt (kms:Decrypt)",
        })
    }
}

/// Why the check failed, or why it could not be completed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildAwsError {
    /// The profile can read the key.
    #[error("SSM_COSMOVISOR_CHILD_AWS_PROFILE={profile:?} can read the consensus key: GetParameter of {parameter} with decryption succeeded with that profile's credentials, and cosmovisor passes its environment (this profile included) to the node. Give cosmovisor a role or user without ssm:GetParameter on {parameter} and without kms:Decrypt on its KMS key, or unset SSM_COSMOVISOR_CHILD_AWS_PROFILE")]
    CanReadKey {
        /// The child's profile.
        profile: String,
        /// The key parameter.
        parameter: String,
    },
    /// The profile does not resolve to credentials.
    #[error("SSM_COSMOVISOR_CHILD_AWS_PROFILE={profile:?} does not resolve to credentials ({detail}): define the profile, with its credentials, in {files} (readable by this process and by cosmovisor), or correct the name")]
    Unresolved {
        /// The child's profile.
        profile: String,
        /// What the SDK said (from the files' structure, never their values).
        detail: String,
        /// The files looked in.
        files: String,
    },
    /// Neither a refusal nor the key: the check could not be completed.
    #[error("cannot complete the check that SSM_COSMOVISOR_CHILD_AWS_PROFILE={profile:?} cannot read SSM parameter {parameter}: {cause}; cosmovisor is not started until it can be checked")]
    Incomplete {
        /// The child's profile.
        profile: String,
        /// The key parameter.
        parameter: String,
        /// What failed (boxed: an SSM error is large, and rare here).
        cause: Box<Incomplete>,
    },
}

/// What kept the check from an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Incomplete {
    /// The SSM request (with the profile's credentials) failed otherwise.
    #[error("with the profile's credentials: {0}")]
    Ssm(#[source] SsmError),
    /// The profile's credential source (assume-role, credential_process,
    /// SSO, instance metadata) failed; its message is not repeated here, as
    /// a credential process's error output could hold anything.
    #[error("the profile's credential source failed ({0}: assume-role, credential_process, SSO or instance metadata); the AWS SDK's warnings above, or SSM_COSMOVISOR_LOG=aws_config=debug, say why")]
    CredentialSource(&'static str),
}

impl ChildAwsError {
    /// A configuration error (exit 2: the same settings fail the same way
    /// at every start), or a check that may succeed when retried (exit 3).
    pub(crate) fn is_configuration(&self) -> bool {
        !matches!(self, ChildAwsError::Incomplete { .. })
    }
}

/// `run`/`exec`: with a child profile and an SSM key parameter, refuses to
/// go on unless the profile is refused the key; logs the refusal. Nothing
/// to check without either (the key of a systemd credential is not in SSM).
pub(crate) fn verify_before_start(cfg: &Config) -> Result<(), ChildAwsError> {
    let (Some(profile), Some(SourceSpec::Ssm { parameter, .. })) =
        (&cfg.child_aws_profile, &cfg.source)
    else {
        return Ok(());
    };
    let refusal = verify(profile, parameter)?;
    tracing::info!(
        event = "child_aws_checked",
        profile = %profile,
        parameter = %parameter,
        result = refusal.as_str(),
        "cosmovisor's AWS profile cannot read the key: {refusal}"
    );
    Ok(())
}

/// Asks SSM for `parameter`, decrypted, with `profile`'s credentials only;
/// `Ok` is the refusal, any answer with the key an error.
pub(crate) fn verify(profile: &str, parameter: &str) -> Result<Refusal, ChildAwsError> {
    let incomplete = |cause| ChildAwsError::Incomplete {
        profile: profile.into(),
        parameter: parameter.into(),
        cause: Box::new(cause),
    };
    let rt = crate::aws::runtime()
        .map_err(|e| incomplete(Incomplete::Ssm(ssm::SsmError::Runtime(e))))?;
    rt.block_on(async {
        let provider = ProfileFileCredentialsProvider::builder()
            .configure(&ProviderConfig::with_default_region().await)
            .profile_name(profile)
            .build();
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| credentials_error(profile, e).unwrap_or_else(incomplete))?;
        let (client, region) = ssm::client_with(Some(creds))
            .await
            .map_err(|e| incomplete(Incomplete::Ssm(e)))?;
        let answer = client
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await;
        match answer {
            Ok(mut out) => {
                // The zeroizing allocator wipes it on free too; this copy
                // is never even looked at.
                if let Some(v) = out.parameter.as_mut().and_then(|p| p.value.as_mut()) {
                    v.zeroize();
                }
                Err(ChildAwsError::CanReadKey {
                    profile: profile.into(),
                    parameter: parameter.into(),
                })
            }
            Err(e) => match ssm::classify("GetParameter", parameter, &region, e) {
                SsmError::AccessDenied { .. } => Ok(Refusal::AccessDenied),
                SsmError::Kms { code, .. } if code.contains("AccessDenied") => {
                    Ok(Refusal::KmsDecryptDenied)
                }
                other => Err(incomplete(Incomplete::Ssm(other))),
            },
        }
    })
}

/// A profile that is not defined (or defines no credentials, or is
/// malformed) is a configuration error; a failing credential source is an
/// incomplete check, returned as `Err` for the caller to wrap.
fn credentials_error(profile: &str, e: CredentialsError) -> Result<ChildAwsError, Incomplete> {
    let class = match &e {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            return Ok(ChildAwsError::Unresolved {
                profile: profile.into(),
                // "not loaded" says nothing; its cause names the profile.
                detail: match std::error::Error::source(&e) {
                    Some(cause) => crate::aws::clean(&chain(cause), 300),
                    None => "no such profile with credentials, or no profile files".into(),
                },
                files: profile_files(),
            });
        }
        CredentialsError::ProviderTimedOut(_) => "timed out",
        CredentialsError::ProviderError(_) => "provider error",
        _ => "unexpected error",
    };
    Err(Incomplete::CredentialSource(class))
}

/// An error and its causes, `a: b: c` (repeated messages once).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The profile files the SDK reads, as this process's environment names
/// them (the child, with the same variables, reads the same ones).
fn profile_files() -> String {
    let file = |var: &str, default: &str| match std::env::var_os(var) {
        Some(p) if !p.is_empty() => format!("{} ({var})", Path::new(&p).display()),
        _ => format!("{default} (or set {var})"),
    };
    format!(
        "{} or {}",
        file("AWS_CONFIG_FILE", "~/.aws/config"),
        file("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_classes() {
        let can = ChildAwsError::CanReadKey {
            profile: "cv".into(),
            parameter: "/v/key".into(),
        };
        assert!(can.is_configuration());
        let text = can.to_string();
        for needle in ["\"cv\"", "/v/key", "ssm:GetParameter", "kms:Decrypt"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let unresolved = credentials_error(
            "nope",
            CredentialsError::not_loaded("profile `nope` was not defined"),
        )
        .unwrap();
        assert!(unresolved.is_configuration());
        assert!(
            unresolved.to_string().contains("\"nope\"")
                && unresolved.to_string().contains("was not defined"),
            "{unresolved}"
        );
        let source = credentials_error("cv", CredentialsError::provider_error("stderr: secret"))
            .unwrap_err();
        let incomplete = ChildAwsError::Incomplete {
            profile: "cv".into(),
            parameter: "/v/key".into(),
            cause: Box::new(source),
        };
        assert!(!incomplete.is_configuration());
        assert!(!incomplete.to_string().contains("secret"), "{incomplete}");
    }
}
