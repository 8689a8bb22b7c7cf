//! Lease failures. Each message says what to check.

use std::path::PathBuf;

/// A lease failure. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// The table does not exist.
    #[error("DynamoDB table {table} not found: create it (partition key `lease`, type S; see README \"Failover lease\") or fix SSM_COSMOVISOR_LEASE_TABLE")]
    NoTable { table: String },
    /// IAM refused.
    #[error("access denied on DynamoDB table {table}: the role needs dynamodb:GetItem and dynamodb:PutItem on it; AWS said: {message}")]
    AccessDenied {
        table: String,
        /// AWS's message.
        message: String,
    },
    /// The credentials were rejected.
    #[error("AWS rejected the credentials for DynamoDB table {table} ({code}): {message}; check the instance role, AWS_PROFILE or AWS_ACCESS_KEY_ID")]
    Credentials {
        table: String,
        code: String,
        message: String,
    },
    /// No region configured.
    #[error("no AWS region configured for the lease table: set AWS_REGION or SSM_COSMOVISOR_LEASE_REGION")]
    NoRegion,
    /// Network, timeout or throttling; worth retrying.
    #[error("cannot reach DynamoDB table {table}: {detail}")]
    Unreachable {
        table: String,
        /// Transport error.
        detail: String,
    },
    /// Our conditional write lost: the lease changed since we last saw it.
    #[error(
        "lease {name} in table {table} was written by another host since this host last saw it"
    )]
    Lost { table: String, name: String },
    /// The lease is bound to another validator's key.
    #[error("lease {name} belongs to validator {theirs}, but this host's key is {ours}: each validator needs its own lease (SSM_COSMOVISOR_LEASE_NAME)")]
    OtherValidator {
        name: String,
        /// Address in the lease.
        theirs: String,
        /// Address of our key.
        ours: String,
    },
    /// The item exists but is not a lease record we understand, or it
    /// carries what no host of ours writes (anyone allowed to write to the
    /// table can put anything there).
    #[error("lease item {name} in table {table} is malformed or out of bounds ({reason}); the key was not delivered. Find out who wrote it; delete the item only once no host of this validator is running")]
    Malformed {
        table: String,
        name: String,
        reason: String,
    },
    /// The table's partition key is not ours.
    #[error("DynamoDB table {table} does not have the lease key schema ({message}): its partition key must be `lease`, type S (see README \"Failover lease\")")]
    KeySchema {
        table: String,
        /// AWS's message.
        message: String,
    },
    /// Taking the lease would raise our sign state further than allowed
    /// without the operator's confirmation.
    #[error("lease {name} carries sign state {carried}, which would raise this host's state from {ours} to {target}: a jump of {jump} heights, more than SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP ({max}). The key was not delivered and the lease not taken. If this host simply has not signed for that long, confirm with `ssm-cosmovisor accept-lease-state --height {carried_height}` (or copy the signer's priv_validator_state.json); if nobody signed that height, the record was forged: find out who can write to the table")]
    HeightJump {
        name: String,
        /// State in the record.
        carried: super::SignState,
        /// Its height (for the command line in the message).
        carried_height: i64,
        /// Our state.
        ours: super::SignState,
        /// What we would raise ours to.
        target: super::SignState,
        /// target.height - ours.height.
        jump: i64,
        /// The limit.
        max: i64,
    },
    /// The node's sign-state file.
    #[error("node sign state {path:?}: {reason}")]
    State { path: PathBuf, reason: String },
    /// Anything else AWS returned.
    #[error("DynamoDB {op} on {table} failed ({code}): {message}")]
    Other {
        op: &'static str,
        table: String,
        code: String,
        message: String,
    },
    /// Waiting was cancelled (we are stopping).
    #[error("cancelled")]
    Cancelled,
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl LeaseError {
    /// Worth retrying (transport trouble), as opposed to a configuration fault.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, LeaseError::Unreachable { .. })
    }
}
