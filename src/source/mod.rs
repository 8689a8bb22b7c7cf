//! Where the consensus key comes from: AWS SSM Parameter Store, or a systemd
//! credential. Every source returns a validated [`ValidatorKey`] plus a
//! description of its origin for the audit log; none keeps a copy.

pub(crate) mod child_aws;
pub(crate) mod credential;
pub(crate) mod ssm;

use secrecy::ExposeSecret;

use crate::config::SourceSpec;
use crate::key::{KeyError, ValidatorKey};
use crate::metrics::FetchError;

/// Where a fetched key came from (logged, never secret).
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// An SSM parameter.
    Ssm(ssm::ParameterInfo),
    /// A systemd credential.
    Credential { name: String },
}

/// A validated key and where it came from.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) key: ValidatorKey,
    pub(crate) origin: Origin,
}

/// Why the key could not be obtained.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// SSM failed.
    #[error(transparent)]
    Ssm(#[from] ssm::SsmError),
    /// The credential file failed.
    #[error(transparent)]
    Credential(#[from] credential::CredentialError),
    /// The value is not a valid key.
    #[error("{origin}: {source}")]
    Invalid {
        /// Which parameter or credential.
        origin: String,
        source: KeyError,
    },
    /// The key is valid but not the one the operator expects.
    #[error("{origin} holds the key for address {found}, but the expected address is {expected} (SSM_COSMOVISOR_EXPECTED_ADDRESS / --expected-address); refusing to hand a different validator's key to this node")]
    UnexpectedAddress {
        /// Which parameter or credential.
        origin: String,
        /// Address of the key found.
        found: String,
        /// Address configured.
        expected: String,
    },
}

impl SourceError {
    /// What the operator has to fix, as the fetch-error metric labels it.
    pub(crate) fn metrics_class(&self) -> FetchError {
        use ssm::SsmError as S;
        match self {
            SourceError::Ssm(S::NotFound { .. }) => FetchError::NotFound,
            SourceError::Ssm(S::AccessDenied { .. }) => FetchError::Denied,
            SourceError::Ssm(S::Kms { .. }) => FetchError::Kms,
            SourceError::Ssm(S::Credentials { .. } | S::NoRegion) => FetchError::Credentials,
            SourceError::Ssm(S::Unreachable { .. }) => FetchError::Unreachable,
            SourceError::Ssm(S::NotSecure { .. } | S::NoValue { .. } | S::Malformed { .. })
            | SourceError::Invalid { .. }
            | SourceError::UnexpectedAddress { .. } => FetchError::Invalid,
            SourceError::Credential(credential::CredentialError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                FetchError::NotFound
            }
            SourceError::Ssm(_) | SourceError::Credential(_) => FetchError::Other,
        }
    }
}

/// Fetches and validates the key from the configured source.
pub(crate) fn fetch(
    spec: &SourceSpec,
    expected_address: Option<&str>,
) -> Result<Fetched, SourceError> {
    let fetched = match spec {
        SourceSpec::Ssm {
            parameter,
            allow_plain_string,
        } => {
            let (info, value) = ssm::fetch(parameter, *allow_plain_string)?;
            let key = ValidatorKey::parse(value.expose_secret()).map_err(|source| {
                SourceError::Invalid {
                    origin: format!("SSM parameter {parameter} (version {})", info.version),
                    source,
                }
            })?;
            Fetched {
                key,
                origin: Origin::Ssm(info),
            }
        }
        SourceSpec::Credential { name, dir } => {
            let value = credential::read(dir, name)?;
            let key = ValidatorKey::parse(value.expose_secret()).map_err(|source| {
                SourceError::Invalid {
                    origin: format!("systemd credential {name}"),
                    source,
                }
            })?;
            Fetched {
                key,
                origin: Origin::Credential { name: name.clone() },
            }
        }
    };
    if let Some(expected) = expected_address {
        let found = fetched.key.identity().address_hex();
        if found != expected {
            return Err(SourceError::UnexpectedAddress {
                origin: spec.describe(),
                found,
                expected: expected.to_string(),
            });
        }
    }
    Ok(fetched)
}
