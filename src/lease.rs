//! Failover lease (DESIGN §9): at most one host delivers the key at any
//! instant, and the signer that takes over never signs below its predecessor.
//!
//! One DynamoDB item per validator key. Every write replaces its record
//! version (`rvn`, random) under a condition on the version the writer last
//! saw, so two hosts can never both believe their write won. No clock is
//! compared across hosts; each host measures only its own monotonic time:
//!
//! - the holder renews every `duration/3`, and if no renewal has succeeded for
//!   `duration - duration/3` since it *sent* the last successful one, it stops
//!   its node (SIGTERM, SIGKILL half-way through the remaining third);
//! - a contender that sees a record held by someone else starts timing when it
//!   *receives* that record, and may take over only after a full `duration`
//!   (the holder's, from the record) without the version changing, and only by
//!   a write conditioned on that same version.
//!
//! The holder's last renewal was sent before the contender received it, so
//! the holder's node is stopped at least `duration/3` (minus the clock-rate
//! difference of the two hosts) before the takeover can happen. A holder that
//! is frozen (SIGSTOP, a VM pause) cannot stop its node: no lease can help
//! there, see security.md.
//!
//! Every write carries the highest height/round/step signed so far (from the
//! node's `priv_validator_state.json`); a host that acquires the lease raises
//! its own state file to it before the node gets the key, and CometBFT then
//! refuses to sign at or below it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

/// Default lease duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Shortest lease duration accepted (the tests use 3 s).
pub const MIN_DURATION: Duration = Duration::from_secs(3);

/// Longest lease duration accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// Name of the table's partition key attribute.
pub const KEY_ATTR: &str = "lease";

/// Lease settings, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// DynamoDB table.
    pub table: String,
    /// The item's key: one lease per validator key.
    pub name: String,
    /// This process's holder id (host, pid, random suffix).
    pub holder: String,
    /// Lease duration.
    pub duration: Duration,
    /// Region of the table (`None`: the standard chain's region).
    pub region: Option<String>,
    /// Heights a host skips after taking over an *expired* lease (the old
    /// holder may have signed after its last renewal carried its state).
    pub takeover_heights: i64,
}

/// The lease name for an SSM parameter given by name or by ARN: both forms
/// must name the same lease, or two hosts could each hold "their" lease.
pub fn lease_name_for_parameter(parameter: &str) -> String {
    let name = match parameter.split_once(":parameter") {
        Some((head, tail)) if head.starts_with("arn:") => tail,
        _ => parameter,
    };
    // A flat name's ARN has a slash the name itself does not.
    match name.strip_prefix('/') {
        Some(rest) if !rest.contains('/') => rest.to_string(),
        _ => name.to_string(),
    }
}

impl LeaseSettings {
    /// Time between renewals.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long after sending its last successful write the holder keeps its
    /// node; the last third of the duration is for stopping it.
    pub fn keep_for(&self) -> Duration {
        self.duration - self.duration / 3
    }

    /// How long the stop may take before SIGKILL.
    pub fn stop_grace(&self) -> Duration {
        self.duration / 6
    }
}

/// A holder id: hostname, pid and a random suffix, so a restarted process on
/// the same host is a different holder (it cannot know whether its previous
/// life's node is really gone).
pub fn holder_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host}/{}/{}", std::process::id(), &random_hex()[..8])
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .expect("getrandom cannot fail for 16 bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The last height/round/step a validator signed (CometBFT's
/// `FilePVLastSignState` without the signature), ordered as CometBFT orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SignState {
    /// Block height.
    pub height: i64,
    /// Round.
    pub round: i32,
    /// Step (1 propose, 2 prevote, 3 precommit).
    pub step: i8,
}

impl std::fmt::Display for SignState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.height, self.round, self.step)
    }
}

impl SignState {
    /// Parses `priv_validator_state.json` (`height` is a JSON string there).
    pub fn parse(bytes: &[u8]) -> Result<SignState, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let height = match &v["height"] {
            serde_json::Value::String(s) => s.parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .filter(|h| *h >= 0)
        .ok_or("height missing or not a non-negative integer")?;
        let round = v["round"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok())
            .filter(|r| *r >= 0)
            .ok_or("round missing or invalid")?;
        let step = v["step"]
            .as_i64()
            .and_then(|s| i8::try_from(s).ok())
            .filter(|s| (0..=3).contains(s))
            .ok_or("step missing or not 0..3")?;
        Ok(SignState {
            height,
            round,
            step,
        })
    }

    /// The file's content for this state: no signature, so CometBFT signs
    /// nothing at this very height/round/step either ("no SignBytes found").
    pub fn to_json(self) -> String {
        format!(
            "{{\n  \"height\": \"{}\",\n  \"round\": {},\n  \"step\": {}\n}}",
            self.height, self.round, self.step
        )
    }
}

/// Where the node keeps its sign state, from `config.toml`'s
/// `priv_validator_state_file` (default `data/priv_validator_state.json`).
/// A `config.toml` we cannot parse is an error: raising a file the node does
/// not read would protect nothing.
pub fn state_path_for_home(home: &Path) -> Result<PathBuf, LeaseError> {
    crate::config::node_file_from_config(
        home,
        "priv_validator_state_file",
        "data/priv_validator_state.json",
    )
    .map_err(|(path, reason)| LeaseError::State {
        path,
        reason: format!("cannot use it to find priv_validator_state_file: {reason}"),
    })
}

/// The node's sign-state file, read and written as the node's user.
#[derive(Debug, Clone)]
pub struct StateFile {
    /// The file.
    pub path: PathBuf,
    /// Node uid/gid when we run as root for another user (split trust).
    pub node: Option<(u32, u32)>,
}

impl StateFile {
    fn as_node<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.node {
            Some((u, g)) if rustix::process::geteuid().is_root() => {
                crate::sys::with_fs_ids(u, g, f)
            }
            _ => f(),
        }
    }

    /// The current state; `None` if the file does not exist yet.
    pub fn read(&self) -> Result<Option<SignState>, LeaseError> {
        match self.as_node(|| std::fs::read(&self.path)) {
            Ok(b) => SignState::parse(&b)
                .map(Some)
                .map_err(|reason| LeaseError::State {
                    path: self.path.clone(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaseError::State {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Raises the file to `to` if it is lower (atomic replace, fsynced).
    pub fn raise_to(&self, to: SignState) -> Result<Raised, LeaseError> {
        let now = self.read()?;
        if now.is_some_and(|n| n >= to) {
            return Ok(Raised::Unchanged);
        }
        let err = |reason: String| LeaseError::State {
            path: self.path.clone(),
            reason,
        };
        let dir = self
            .path
            .parent()
            .ok_or_else(|| err("no parent directory".into()))?;
        let tmp = dir.join(".priv_validator_state.json.ssm-cosmovisor");
        self.as_node(|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            if let (Some((uid, _)), true) = (self.node, rustix::process::geteuid().is_root()) {
                // setfsuid does not report a refusal: check who owns what we made.
                let owner = rustix::fs::fstat(&f)?.st_uid;
                if owner != uid {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(std::io::Error::other(format!(
                        "it would be owned by uid {owner}, not the node's uid {uid}"
                    )));
                }
            }
            f.write_all(to.to_json().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .map_err(|e| err(format!("cannot write it: {e}")))?;
        Ok(Raised::From(now))
    }
}

/// What [`StateFile::raise_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// The file was already at or above the state.
    Unchanged,
    /// The file was raised from this state (`None`: there was no file).
    From(Option<SignState>),
}

/// A lease failure. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The table does not exist.
    #[error("DynamoDB table {table} not found: create it (partition key `lease`, type S; see README \"Failover lease\") or fix SSM_COSMOVISOR_LEASE_TABLE")]
    NoTable {
        /// Table.
        table: String,
    },
    /// IAM refused.
    #[error("access denied on DynamoDB table {table}: the role needs dynamodb:GetItem and dynamodb:PutItem on it; AWS said: {message}")]
    AccessDenied {
        /// Table.
        table: String,
        /// AWS's message.
        message: String,
    },
    /// The credentials were rejected.
    #[error("AWS rejected the credentials for DynamoDB table {table} ({code}): {message}; check the instance role, AWS_PROFILE or AWS_ACCESS_KEY_ID")]
    Credentials {
        /// Table.
        table: String,
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// No region configured.
    #[error("no AWS region configured for the lease table: set AWS_REGION or SSM_COSMOVISOR_LEASE_REGION")]
    NoRegion,
    /// Network, timeout or throttling; worth retrying.
    #[error("cannot reach DynamoDB table {table}: {detail}")]
    Unreachable {
        /// Table.
        table: String,
        /// Transport error.
        detail: String,
    },
    /// Our conditional write lost: the lease changed since we last saw it.
    #[error(
        "lease {name} in table {table} was written by another host since this host last saw it"
    )]
    Lost {
        /// Table.
        table: String,
        /// Lease name.
        name: String,
    },
    /// The lease is bound to another validator's key.
    #[error("lease {name} belongs to validator {theirs}, but this host's key is {ours}: each validator needs its own lease (SSM_COSMOVISOR_LEASE_NAME)")]
    OtherValidator {
        /// Lease name.
        name: String,
        /// Address in the lease.
        theirs: String,
        /// Address of our key.
        ours: String,
    },
    /// The item exists but is not a lease record we understand.
    #[error("lease item {name} in table {table} is malformed ({reason}); delete it if no host is running")]
    Malformed {
        /// Table.
        table: String,
        /// Lease name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The node's sign-state file.
    #[error("node sign state {path:?}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Anything else AWS returned.
    #[error("DynamoDB {op} on {table} failed ({code}): {message}")]
    Other {
        /// Operation.
        op: &'static str,
        /// Table.
        table: String,
        /// Code.
        code: String,
        /// Message.
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
    pub fn is_transient(&self) -> bool {
        matches!(self, LeaseError::Unreachable { .. })
    }
}

/// The lease item as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Who wrote it.
    pub holder: String,
    /// Record version.
    pub rvn: String,
    /// The writer's lease duration.
    pub duration: Duration,
    /// Released by its holder (free to take at once).
    pub released: bool,
    /// Highest sign state carried.
    pub state: SignState,
    /// Address of the validator whose key the holder delivered, once known.
    pub address: Option<String>,
}

/// Until when the holder's node may run: moved by each confirmed renewal,
/// read by the supervisor, which enforces it whatever the renewal thread is
/// doing (blocked in a request, or dead).
#[derive(Debug, Clone)]
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    nanos: Arc<AtomicU64>,
}

impl Deadline {
    fn new(at: Instant) -> Deadline {
        Deadline {
            base: at,
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current deadline.
    pub fn get(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    /// Moves it; never before the first deadline (those only come from
    /// confirmed writes sent later).
    fn set(&self, at: Instant) {
        let n = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.nanos.store(n, Ordering::SeqCst);
    }
}

/// A lease this process holds.
#[derive(Debug)]
pub struct Held {
    rvn: String,
    /// When the last confirmed write was sent.
    sent: Instant,
    /// `sent` + the holder's share of the duration.
    pub deadline: Deadline,
    /// Highest sign state known (carried, raised by our own renewals).
    pub state: SignState,
    /// Holder we took it from after it expired (`None`: it was free or released).
    pub took_over_from: Option<String>,
    /// Validator address recorded with the lease, if any.
    pub address: Option<String>,
}

/// DynamoDB access for one lease: a current-thread runtime and a client.
pub struct LeaseClient {
    rt: Option<tokio::runtime::Runtime>,
    client: aws_sdk_dynamodb::Client,
    /// The settings.
    pub settings: LeaseSettings,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("settings", &self.settings)
            .finish()
    }
}

fn attr_s(item: &std::collections::HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn attr_n(item: &std::collections::HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

impl Drop for LeaseClient {
    fn drop(&mut self) {
        // Do not wait for a DNS lookup on the blocking pool: we may be exiting.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl LeaseClient {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the client")
            .block_on(f)
    }

    /// Builds the client (standard AWS credential chain, `AWS_ENDPOINT_URL`
    /// or `AWS_ENDPOINT_URL_DYNAMODB`). Requests time out well inside one
    /// renewal period, so a hung connection cannot eat the lease.
    pub fn new(settings: LeaseSettings) -> Result<LeaseClient, LeaseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LeaseError::Runtime)?;
        let attempt = (settings.renew_every() / 2).max(Duration::from_millis(500));
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &settings.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let conf = rt.block_on(
            loader
                .retry_config(RetryConfig::standard().with_max_attempts(2))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(attempt)
                        .operation_attempt_timeout(attempt)
                        .operation_timeout(settings.renew_every())
                        .build(),
                )
                .load(),
        );
        if conf.region().is_none() {
            return Err(LeaseError::NoRegion);
        }
        let client = aws_sdk_dynamodb::Client::new(&conf);
        Ok(LeaseClient {
            rt: Some(rt),
            client,
            settings,
        })
    }

    fn classify<E>(
        &self,
        op: &'static str,
        e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let table = self.settings.table.clone();
        match &e {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => {
                return LeaseError::Unreachable {
                    table,
                    detail: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                }
            }
            _ => {}
        }
        let code = e.code().unwrap_or("unknown").to_string();
        let message = e.message().unwrap_or_default().to_string();
        match code.as_str() {
            "ResourceNotFoundException" => LeaseError::NoTable { table },
            "AccessDeniedException" => LeaseError::AccessDenied { table, message },
            "UnrecognizedClientException" | "InvalidSignatureException" => {
                LeaseError::Credentials {
                    table,
                    code,
                    message,
                }
            }
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable" => LeaseError::Unreachable {
                table,
                detail: format!("{code}: {message}"),
            },
            _ => LeaseError::Other {
                op,
                table,
                code,
                message,
            },
        }
    }

    /// Reads the lease item (strongly consistent).
    pub fn read(&self) -> Result<Option<Record>, LeaseError> {
        let s = &self.settings;
        let out = self
            .block_on(
                self.client
                    .get_item()
                    .table_name(&s.table)
                    .key(KEY_ATTR, AttributeValue::S(s.name.clone()))
                    .consistent_read(true)
                    .send(),
            )
            .map_err(|e| self.classify("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let bad = |reason: &str| LeaseError::Malformed {
            table: s.table.clone(),
            name: s.name.clone(),
            reason: reason.to_string(),
        };
        let rvn = attr_s(&item, "rvn").ok_or_else(|| bad("no rvn"))?;
        let holder = attr_s(&item, "holder").ok_or_else(|| bad("no holder"))?;
        let ms = attr_n(&item, "duration_ms")
            .filter(|m| *m > 0)
            .ok_or_else(|| bad("no duration_ms"))?;
        let released = item
            .get("released")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false);
        let state = SignState {
            height: attr_n(&item, "height").unwrap_or(0).max(0),
            round: attr_n(&item, "round")
                .and_then(|r| i32::try_from(r).ok())
                .unwrap_or(0)
                .max(0),
            step: attr_n(&item, "step")
                .and_then(|r| i8::try_from(r).ok())
                .unwrap_or(0)
                .clamp(0, 3),
        };
        Ok(Some(Record {
            holder,
            rvn,
            duration: Duration::from_millis(ms as u64),
            released,
            state,
            address: attr_s(&item, "address"),
        }))
    }

    /// Writes a new record version, conditioned on `expect_rvn` (`None`: the
    /// item must not exist). Returns the new rvn.
    fn write(
        &self,
        expect_rvn: Option<&str>,
        released: bool,
        state: SignState,
        address: Option<&str>,
    ) -> Result<String, LeaseError> {
        let s = &self.settings;
        let rvn = random_hex();
        let mut req = self
            .client
            .put_item()
            .table_name(&s.table)
            .item(KEY_ATTR, AttributeValue::S(s.name.clone()))
            .item("holder", AttributeValue::S(s.holder.clone()))
            .item("rvn", AttributeValue::S(rvn.clone()))
            .item(
                "duration_ms",
                AttributeValue::N(s.duration.as_millis().to_string()),
            )
            .item("released", AttributeValue::Bool(released))
            .item("height", AttributeValue::N(state.height.to_string()))
            .item("round", AttributeValue::N(state.round.to_string()))
            .item("step", AttributeValue::N(state.step.to_string()))
            // For people reading the table; never used for decisions.
            .item(
                "written_at",
                AttributeValue::S(format!(
                    "{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                )),
            );
        if let Some(a) = address {
            req = req.item("address", AttributeValue::S(a.to_string()));
        }
        req = match expect_rvn {
            None => req.condition_expression("attribute_not_exists(#k)"),
            Some(r) => req
                .condition_expression("#r = :r")
                .expression_attribute_names("#r", "rvn")
                .expression_attribute_values(":r", AttributeValue::S(r.to_string())),
        };
        if expect_rvn.is_none() {
            req = req.expression_attribute_names("#k", KEY_ATTR);
        }
        match self.block_on(req.send()) {
            Ok(_) => Ok(rvn),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(LeaseError::Lost {
                    table: s.table.clone(),
                    name: s.name.clone(),
                })
            }
            Err(e) => Err(self.classify("PutItem", e)),
        }
    }

    /// One attempt to take the lease without waiting: succeeds if it is
    /// free, released, or `observed` (seen at least one of its durations
    /// ago) still is the current version.
    fn try_take(
        &self,
        current: Option<&Record>,
        took_over_from: Option<String>,
    ) -> Result<Held, LeaseError> {
        // The record's own state, not ours: until the lease is bound to our
        // key (after the fetch) it may be another validator's.
        let state = current.map(|r| r.state).unwrap_or_default();
        let address = current.and_then(|r| r.address.clone());
        let sent = Instant::now();
        let rvn = self.write(
            current.map(|r| r.rvn.as_str()),
            false,
            state,
            address.as_deref(),
        )?;
        Ok(Held {
            rvn,
            sent,
            deadline: Deadline::new(sent + self.settings.keep_for()),
            state,
            took_over_from,
            address,
        })
    }

    /// The record names this process as holder, unreleased: a write of ours
    /// landed although its reply was lost. Takes it back with a renewal
    /// (whose send time then bounds the node's time, as for any renewal).
    fn reclaim_own(&self, r: &Record, took_over_from: Option<String>) -> Result<Held, LeaseError> {
        tracing::info!(
            event = "lease_reply_lost",
            "a write of ours took the lease although its reply was lost; renewing it"
        );
        let now = Instant::now();
        let mut h = Held {
            rvn: r.rvn.clone(),
            sent: now,
            deadline: Deadline::new(now),
            state: r.state,
            took_over_from,
            address: r.address.clone(),
        };
        self.renew(&mut h, None)?;
        Ok(h)
    }

    fn is_ours(&self, r: &Record) -> bool {
        r.holder == self.settings.holder && !r.released
    }

    /// Takes the lease if it is free or released right now; `None` if
    /// another host holds it (or won the race for it).
    pub fn try_acquire_now(&self) -> Result<Option<Held>, LeaseError> {
        let cur = self.read()?;
        if let Some(r) = cur.as_ref().filter(|r| self.is_ours(r)) {
            return self.reclaim_own(r, None).map(Some);
        }
        if cur.as_ref().is_some_and(|r| !r.released) {
            return Ok(None);
        }
        match self.try_take(cur.as_ref(), None) {
            Ok(h) => Ok(Some(h)),
            Err(LeaseError::Lost { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this process holds the lease (or `cancel` is set).
    /// `on_wait` is told who holds it whenever that changes.
    pub fn acquire(
        &self,
        cancel: &Stop,
        mut on_wait: impl FnMut(&Record),
    ) -> Result<Held, LeaseError> {
        // The holder we last tried to take over from: if that write landed
        // but its reply was lost, the reclaim is still a takeover (and the
        // sign state must skip ahead as for one).
        let mut taking_from: Option<String> = None;
        // (rvn seen, when we received it, the holder's duration)
        let mut seen: Option<(Record, Instant)> = None;
        // Reads are cheap; a planned handover should not wait long.
        let poll = self.settings.renew_every().min(Duration::from_secs(2));
        loop {
            if cancel.is_stopped() {
                return Err(LeaseError::Cancelled);
            }
            let cur = match self.read() {
                Ok(c) => c,
                Err(e) if e.is_transient() => {
                    tracing::warn!(event = "lease_unreachable", error = %e, "cannot read the lease; still waiting");
                    cancel.sleep(poll);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let received = Instant::now();
            let attempt = match &cur {
                Some(r) if self.is_ours(r) => Some(self.reclaim_own(r, taking_from.clone())),
                None => Some(self.try_take(None, None)),
                Some(r) if r.released => Some(self.try_take(Some(r), None)),
                Some(r) => match &seen {
                    Some((old, since)) if old.rvn == r.rvn => {
                        if since.elapsed() >= r.duration {
                            tracing::info!(
                                event = "lease_taking_over",
                                from = %r.holder,
                                unchanged_ms = since.elapsed().as_millis() as u64,
                                "the lease expired: taking it over"
                            );
                            taking_from = Some(r.holder.clone());
                            Some(self.try_take(Some(r), Some(r.holder.clone())))
                        } else {
                            None
                        }
                    }
                    _ => {
                        on_wait(r);
                        seen = Some((r.clone(), received));
                        None
                    }
                },
            };
            match attempt {
                Some(Ok(h)) => return Ok(h),
                Some(Err(LeaseError::Lost { .. })) => {
                    // Someone else wrote first; look again.
                    seen = None;
                    continue;
                }
                Some(Err(e)) if e.is_transient() => {
                    tracing::warn!(event = "lease_unreachable", error = %e, "cannot write the lease; still waiting");
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
            let wait = match &seen {
                Some((r, since)) => r.duration.saturating_sub(since.elapsed()).min(poll),
                None => poll,
            };
            cancel.sleep(wait.max(Duration::from_millis(50)));
        }
    }

    /// Renews a held lease, carrying `state` (raised to at least what we carried).
    pub fn renew(&self, held: &mut Held, state: Option<SignState>) -> Result<(), LeaseError> {
        let state = state.unwrap_or_default().max(held.state);
        let sent = Instant::now();
        let address = held.address.clone();
        let rvn = match self.write(Some(&held.rvn), false, state, address.as_deref()) {
            Ok(rvn) => rvn,
            Err(LeaseError::Lost { .. }) if self.adopt_own_write(held)? => {
                // An earlier renewal of ours went through although its reply
                // was lost; its version is ours. The deadline stays where the
                // last *confirmed* renewal put it until this one succeeds.
                self.write(Some(&held.rvn), false, state, address.as_deref())?
            }
            Err(e) => return Err(e),
        };
        held.rvn = rvn;
        held.state = state;
        held.sent = sent;
        held.deadline.set(sent + self.settings.keep_for());
        Ok(())
    }

    /// After a failed conditional renewal: if the record still names this
    /// process as holder (the id is unique to it), the version in it came from
    /// one of our own writes whose reply was lost. Adopts it.
    fn adopt_own_write(&self, held: &mut Held) -> Result<bool, LeaseError> {
        match self.read()? {
            Some(r) if self.is_ours(&r) => {
                tracing::info!(
                    event = "lease_reply_lost",
                    "an earlier renewal succeeded although its reply was lost; continuing"
                );
                held.rvn = r.rvn;
                held.state = held.state.max(r.state);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Binds the lease to the key this host is about to deliver: refuses a
    /// lease recorded for another validator (two validators sharing one lease
    /// name would each block the other, or worse, look like one).
    pub fn bind_address(&self, held: &mut Held, address: &str) -> Result<(), LeaseError> {
        match &held.address {
            Some(a) if a != address => Err(LeaseError::OtherValidator {
                name: self.settings.name.clone(),
                theirs: a.clone(),
                ours: address.to_string(),
            }),
            _ => {
                held.address = Some(address.to_string());
                Ok(())
            }
        }
    }

    /// Gives the lease up (after our node has stopped), carrying the final state.
    pub fn release(&self, held: &Held, state: Option<SignState>) -> Result<(), LeaseError> {
        let state = state.unwrap_or_default().max(held.state);
        self.write(Some(&held.rvn), true, state, held.address.as_deref())
            .map(|_| ())
    }
}

/// A stop flag a thread can sleep on: it wakes at the timeout or at once when
/// stopped, with no polling (an idle holder must not wake every few ms).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Stop {
    /// Sets the flag and wakes the sleeper.
    pub fn stop(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.notify_all();
    }

    /// Whether it was stopped.
    pub fn is_stopped(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`; true if stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let (m, c) = &*self.0;
        let end = Instant::now() + d;
        let mut stopped = m.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= end {
                break;
            }
            stopped = c
                .wait_timeout(stopped, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}

/// What a lease thread tells the supervisor.
#[derive(Debug)]
pub enum LeaseNews {
    /// The standby got the lease.
    Acquired,
    /// The holder could not keep the lease: stop the node now.
    Lost(String),
    /// The standby cannot wait for the lease (configuration, permissions).
    Failed(String),
}

/// The renewal thread of a held lease.
pub struct Keeper {
    stop: Stop,
    done: std::sync::mpsc::Receiver<(LeaseClient, Held, bool)>,
    /// How long `stop` waits for the thread (it may be inside a request).
    patience: Duration,
}

impl Keeper {
    /// Starts renewing; `news` is called once if the lease is lost. The
    /// thread blocks the supervisor's signals (they are for its sigwait).
    /// The supervisor enforces [`Held::deadline`] itself as well: this thread
    /// may be stuck in a request when it passes.
    pub fn start(
        client: LeaseClient,
        mut held: Held,
        state: StateFile,
        news: Box<dyn Fn(LeaseNews) + Send>,
    ) -> std::io::Result<Keeper> {
        let stop = Stop::default();
        let flag = stop.clone();
        let patience = client.settings.renew_every() + Duration::from_secs(1);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let every = client.settings.renew_every();
                let retry = (every / 4).max(Duration::from_millis(200));
                // Due one period after the last confirmed write, which may be
                // long past (a slow fetch): then at once.
                let mut next = held.sent + every;
                let mut last_error: Option<String> = None;
                let mut lost = false;
                loop {
                    let now = Instant::now();
                    let deadline = held.deadline.get();
                    if now >= deadline {
                        lost = true;
                        news(LeaseNews::Lost(format!(
                            "no renewal of lease {} in table {} was confirmed for {:?} (last error: {})",
                            client.settings.name,
                            client.settings.table,
                            client.settings.keep_for(),
                            last_error.as_deref().unwrap_or("none")
                        )));
                        break;
                    }
                    if flag.sleep(next.min(deadline).saturating_duration_since(now)) {
                        break;
                    }
                    if Instant::now() < next {
                        continue;
                    }
                    let local = state.read().unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "cannot read the sign state; carrying the last known");
                        None
                    });
                    crate::failpoint_hang!("lease-renew-hangs");
                    match client.renew(&mut held, local) {
                        Ok(()) => {
                            tracing::debug!(state = %held.state, "lease renewed");
                            last_error = None;
                            next = held.sent + every;
                        }
                        Err(e @ LeaseError::Lost { .. }) => {
                            lost = true;
                            news(LeaseNews::Lost(e.to_string()));
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(event = "lease_renew_failed", error = %e, remaining_ms = held.deadline.get().saturating_duration_since(Instant::now()).as_millis() as u64, "lease renewal failed; retrying");
                            last_error = Some(e.to_string());
                            next = Instant::now() + retry;
                        }
                    }
                }
                let _ = tx.send((client, held, lost));
            })?;
        Ok(Keeper {
            stop,
            done,
            patience,
        })
    }

    /// Stops renewing; returns the client and the lease, unless it was lost,
    /// or the thread died or is stuck (then the lease simply expires).
    pub fn stop(self) -> Option<(LeaseClient, Held)> {
        self.stop.stop();
        match self.done.recv_timeout(self.patience) {
            Ok((c, h, false)) if Instant::now() < h.deadline.get() => Some((c, h)),
            Ok(_) => None,
            Err(_) => {
                tracing::warn!(
                    "the lease thread did not stop in time; the lease will expire by itself"
                );
                None
            }
        }
    }
}

/// The thread a standby waits for the lease in.
pub struct Waiter {
    cancel: Stop,
    done: std::sync::mpsc::Receiver<Result<(LeaseClient, Held), LeaseError>>,
    patience: Duration,
}

impl Waiter {
    /// Starts waiting; `news` is called with [`LeaseNews::Acquired`] once the
    /// lease is ours.
    pub fn start(
        client: LeaseClient,
        news: Box<dyn Fn(LeaseNews) + Send>,
    ) -> std::io::Result<Waiter> {
        let cancel = Stop::default();
        let flag = cancel.clone();
        // A read and a take-over write may be under way.
        let patience = client.settings.renew_every() * 2 + Duration::from_secs(1);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lease-wait".into())
            .spawn(move || {
                let mut sigs = crate::supervise::FORWARDED.to_vec();
                sigs.push(libc::SIGCHLD);
                let _ = crate::sys::block_signals(&sigs);
                let r = client.acquire(&flag, log_waiting);
                let r = match r {
                    Ok(h) => {
                        news(LeaseNews::Acquired);
                        Ok((client, h))
                    }
                    Err(e) => {
                        if !matches!(e, LeaseError::Cancelled) {
                            news(LeaseNews::Failed(e.to_string()));
                        }
                        Err(e)
                    }
                };
                let _ = tx.send(r);
            })?;
        Ok(Waiter {
            cancel,
            done,
            patience,
        })
    }

    /// Stops waiting; returns the lease if it was acquired meanwhile.
    pub fn finish(self) -> Result<(LeaseClient, Held), LeaseError> {
        self.cancel.stop();
        self.done
            .recv_timeout(self.patience)
            .unwrap_or(Err(LeaseError::Cancelled))
    }
}

/// Logs who holds the lease we wait for.
pub fn log_waiting(r: &Record) {
    tracing::info!(
        event = "lease_waiting",
        holder = %r.holder,
        duration_ms = r.duration.as_millis() as u64,
        state = %r.state,
        "the lease is held by another host; standing by"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_state_parses_cometbft_files_and_orders_by_height_round_step() {
        let a = SignState::parse(br#"{"height":"0","round":0,"step":0}"#).unwrap();
        assert_eq!(a, SignState::default());
        let b = SignState::parse(
            br#"{"height":"36","round":0,"step":3,"signature":"x","signbytes":"AB"}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            SignState {
                height: 36,
                round: 0,
                step: 3
            }
        );
        let c = SignState {
            height: 36,
            round: 1,
            step: 1,
        };
        let d = SignState {
            height: 37,
            round: 0,
            step: 0,
        };
        assert!(a < b && b < c && c < d);
        for bad in [
            &br#"{"height":"-1","round":0,"step":0}"#[..],
            br#"{"height":"x","round":0,"step":0}"#,
            br#"{"height":"1","round":0,"step":4}"#,
            br#"{"height":"1","step":1}"#,
            b"not json",
        ] {
            assert!(
                SignState::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(SignState::parse(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn raise_to_only_ever_raises_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile {
            path: dir.path().join("priv_validator_state.json"),
            node: None,
        };
        let s10 = SignState {
            height: 10,
            round: 0,
            step: 2,
        };
        assert_eq!(f.raise_to(s10).unwrap(), Raised::From(None));
        assert_eq!(f.read().unwrap(), Some(s10));
        let s9 = SignState {
            height: 9,
            round: 5,
            step: 3,
        };
        assert_eq!(f.raise_to(s9).unwrap(), Raised::Unchanged, "lowered");
        assert_eq!(f.read().unwrap(), Some(s10));
        let s11 = SignState { height: 11, ..s9 };
        assert_eq!(f.raise_to(s11).unwrap(), Raised::From(Some(s10)));
        assert_eq!(f.read().unwrap(), Some(s11));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left: {names:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn parameter_name_and_arn_give_the_same_lease() {
        for (given, lease) in [
            ("/validators/a/key", "/validators/a/key"),
            (
                "arn:aws:ssm:eu-west-1:123456789012:parameter/validators/a/key",
                "/validators/a/key",
            ),
            ("flatkey", "flatkey"),
            (
                "arn:aws:ssm:eu-west-1:123456789012:parameter/flatkey",
                "flatkey",
            ),
        ] {
            assert_eq!(lease_name_for_parameter(given), lease, "{given}");
        }
    }

    #[test]
    fn state_path_follows_config_toml_and_refuses_a_broken_one() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            state_path_for_home(d.path()).unwrap(),
            d.path().join("data/priv_validator_state.json")
        );
        std::fs::create_dir(d.path().join("config")).unwrap();
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_state_file = \"/srv/state.json\"\n",
        )
        .unwrap();
        assert_eq!(
            state_path_for_home(d.path()).unwrap(),
            PathBuf::from("/srv/state.json")
        );
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_state_file = [",
        )
        .unwrap();
        let e = state_path_for_home(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("priv_validator_state_file"),
            "{e}"
        );
    }

    #[test]
    fn lease_timing_leaves_the_holder_a_third_to_stop() {
        let s = LeaseSettings {
            table: "t".into(),
            name: "n".into(),
            holder: holder_id(),
            duration: Duration::from_secs(30),
            region: None,
            takeover_heights: 31,
        };
        assert_eq!(s.renew_every(), Duration::from_secs(10));
        assert_eq!(s.keep_for(), Duration::from_secs(20));
        assert_eq!(s.stop_grace(), Duration::from_secs(5));
        assert!(s.keep_for() + s.stop_grace() < s.duration);
        assert_ne!(holder_id(), holder_id());
    }
}
