//! DynamoDB access for one lease: reads, conditional writes, and the
//! protocol's moves ([`super::protocol`] decides, this file does).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::protocol::{self, Decision, Takeover, Tick, Watch};
use super::settings::{random_hex, KEY_ATTR};
use super::{boot_time, Deadline, LeaseError, LeaseSettings, Record, SignState, Stop};
use crate::metrics;

/// A lease this process holds.
#[derive(Debug)]
pub(crate) struct Held {
    rvn: String,
    /// When the last confirmed write was sent (boot clock).
    sent: Tick,
    /// Until when the node may run: `sent` + the holder's share.
    pub(crate) deadline: Deadline,
    /// Highest sign state the record carries (takeover skip included).
    pub(crate) state: SignState,
    /// How we got it, if by a takeover after expiry.
    pub(crate) took_over: Option<Takeover>,
    /// Validator address recorded with the lease, if any.
    pub(crate) address: Option<String>,
    /// The highest state of any write sent while holding, confirmed or not:
    /// a record naming us with more is not ours ([`protocol::is_own_write`]).
    sent_max: SignState,
}

impl Held {
    /// When the last confirmed write was sent (boot clock).
    pub(crate) fn sent(&self) -> Tick {
        self.sent
    }
}

/// DynamoDB access for one lease: a current-thread runtime and a client.
pub(crate) struct LeaseClient {
    rt: Option<tokio::runtime::Runtime>,
    client: aws_sdk_dynamodb::Client,
    pub(crate) settings: LeaseSettings,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("settings", &self.settings)
            .finish()
    }
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
    pub(crate) fn new(settings: LeaseSettings) -> Result<LeaseClient, LeaseError> {
        let rt = crate::aws::runtime().map_err(LeaseError::Runtime)?;
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

    /// Turns an SDK error into ours. Never formats the raw response (only
    /// the class, the code, the message and the HTTP status).
    fn classify<E>(
        &self,
        op: &'static str,
        e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let table = self.settings.table.clone();
        let unreachable = |detail: String| LeaseError::Unreachable {
            table: table.clone(),
            detail,
        };
        if let SdkError::DispatchFailure(_)
        | SdkError::TimeoutError(_)
        | SdkError::ResponseError(_) = &e
        {
            // The class, HTTP status and request id only: an SDK error's own
            // forms end with the raw answer.
            return unreachable(format!("{op}: {}", crate::aws::sdk_failure_summary(&e)));
        }
        let code = crate::aws::error_code(e.code());
        // AWS's text, cleaned and capped as for SSM.
        let message = crate::aws::clean(e.message().unwrap_or_default(), 300);
        match code.as_str() {
            "ResourceNotFoundException" => LeaseError::NoTable { table },
            "AccessDeniedException" => LeaseError::AccessDenied { table, message },
            c if crate::aws::is_credential_code(c) => LeaseError::Credentials {
                table,
                code,
                message,
            },
            "ValidationException" if message.to_ascii_lowercase().contains("key") => {
                LeaseError::KeySchema { table, message }
            }
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable" => unreachable(format!("{code}: {message}")),
            _ => LeaseError::Other {
                op,
                table,
                code,
                message,
            },
        }
    }

    /// Reads the lease item (strongly consistent), refusing one our writes
    /// would never produce.
    pub(crate) fn read(&self) -> Result<Option<Record>, LeaseError> {
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
        Record::from_item(&item)
            .map(Some)
            .map_err(|reason| LeaseError::Malformed {
                table: s.table.clone(),
                name: s.name.clone(),
                reason,
            })
    }

    /// Writes `rec` (which must be ours), conditioned on `expect_rvn`
    /// (`None`: the item must not exist).
    fn write(&self, expect_rvn: Option<&str>, rec: &Record) -> Result<(), LeaseError> {
        let s = &self.settings;
        debug_assert_eq!(rec.holder_id, s.holder_id);
        let mut req = self
            .client
            .put_item()
            .table_name(&s.table)
            .set_item(Some(rec.to_item(&s.name)));
        req = match expect_rvn {
            None => req
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", KEY_ATTR),
            Some(r) => req
                .condition_expression("#r = :r")
                .expression_attribute_names("#r", "rvn")
                .expression_attribute_values(":r", AttributeValue::S(r.to_string())),
        };
        match self.block_on(req.send()) {
            Ok(_) => Ok(()),
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

    /// A new record of ours carrying `state`.
    fn ours(&self, state: SignState, address: Option<String>, released: bool) -> Record {
        Record {
            holder_id: self.settings.holder_id.clone(),
            rvn: random_hex(),
            duration: self.settings.duration,
            released,
            state,
            address,
        }
    }

    /// Takes the lease as `decision` says: a write conditioned on the
    /// version read (`cur`), carrying what [`protocol::claim`] computes from
    /// `basis` (the record the decision was made on).
    fn take(
        &self,
        decision: &Decision,
        cur: Option<&Record>,
        basis: Option<&Record>,
        local: Option<SignState>,
    ) -> Result<Held, LeaseError> {
        let c = protocol::claim(decision, basis, &self.settings, local)?;
        self.take_claim(decision, cur, c)
    }

    /// Writes claim `c` on the version read (`cur`).
    fn take_claim(
        &self,
        decision: &Decision,
        cur: Option<&Record>,
        c: protocol::Claim,
    ) -> Result<Held, LeaseError> {
        let rec = self.ours(c.state, c.address.clone(), false);
        let sent = boot_time();
        self.write(cur.map(|r| r.rvn.as_str()), &rec)?;
        let deadline = protocol::node_deadline(sent, &self.settings);
        let how = match decision {
            Decision::TakeExpired { .. } => metrics::Takeover::Expired,
            Decision::TakeReleased => metrics::Takeover::Released,
            _ => metrics::Takeover::Free,
        };
        metrics::lease_taken(how, c.state.hrs());
        metrics::lease_held(&self.settings.name, Some(deadline));
        Ok(Held {
            rvn: rec.rvn,
            sent,
            deadline: Deadline::new(deadline),
            state: c.state,
            took_over: c.took_over,
            address: c.address,
            sent_max: c.state,
        })
    }

    /// The record names this process, unreleased: a write of ours landed
    /// although its reply was lost. Takes it back with a renewal (whose send
    /// time then bounds the node's time, as for any renewal).
    fn reclaim_own(&self, r: &Record, took_over: Option<Takeover>) -> Result<Held, LeaseError> {
        tracing::info!(
            event = "lease_reply_lost",
            "a write of ours took the lease although its reply was lost; renewing it"
        );
        let now = boot_time();
        let mut h = Held {
            rvn: r.rvn.clone(),
            sent: now,
            deadline: Deadline::new(now),
            state: r.state,
            took_over,
            address: r.address.clone(),
            sent_max: r.state,
        };
        self.renew(&mut h, || None)?;
        Ok(h)
    }

    /// Takes the lease if it is free or released right now; `None` if
    /// another host holds it (or won the race for it).
    pub(crate) fn try_acquire_now(
        &self,
        local: Option<SignState>,
    ) -> Result<Option<Held>, LeaseError> {
        let cur = self.read()?;
        let mut watch = Watch::default();
        // Nothing sent yet: a record naming us is not ours.
        let d = watch.decide(cur.as_ref(), &self.settings.holder_id, None, boot_time());
        let r = match d {
            Decision::Impersonated { .. } => {
                log_impersonated(cur.as_ref().expect("decided on it"));
                return Ok(None);
            }
            Decision::Wait { .. } | Decision::TakeExpired { .. } => return Ok(None),
            Decision::Reclaim => self.reclaim_own(cur.as_ref().expect("decided on it"), None),
            _ => self.take(&d, cur.as_ref(), watch.last(), local),
        };
        match r {
            Ok(h) => Ok(Some(h)),
            Err(LeaseError::Lost { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this process holds the lease (or `cancel` is set).
    /// `on_wait` is told who holds it whenever that changes.
    pub(crate) fn acquire(
        &self,
        cancel: &Stop,
        local: Option<SignState>,
        mut on_wait: impl FnMut(&Record),
    ) -> Result<Held, LeaseError> {
        let mut watch = Watch::default();
        // A takeover whose write may have landed with its reply lost: a
        // reclaim of it is still that takeover.
        let mut taking: Option<Takeover> = None;
        // The highest state our take writes carried: a reclaim may adopt no
        // more than that.
        let mut sent: Option<SignState> = None;
        let mut impersonated: Option<String> = None;
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
            let d = watch.decide(cur.as_ref(), &self.settings.holder_id, sent, boot_time());
            let mut wait = poll;
            let attempt = match &d {
                Decision::Wait {
                    holder_changed,
                    due_in,
                } => {
                    if let (true, Some(r)) = (*holder_changed, cur.as_ref().or(watch.last())) {
                        on_wait(r);
                    }
                    wait = (*due_in).min(poll);
                    None
                }
                Decision::Impersonated { due_in } => {
                    let r = cur.as_ref().expect("decided on it");
                    if impersonated.as_deref() != Some(r.rvn.as_str()) {
                        log_impersonated(r);
                        impersonated = Some(r.rvn.clone());
                    }
                    wait = (*due_in).min(poll);
                    None
                }
                Decision::Reclaim => {
                    Some(self.reclaim_own(cur.as_ref().expect("decided on it"), taking.clone()))
                }
                Decision::TakeExpired { unchanged_for } => {
                    let from = watch.last().map(|r| r.holder_id.as_str()).unwrap_or("-");
                    tracing::info!(
                        event = "lease_taking_over",
                        from = %from,
                        unchanged_ms = unchanged_for.as_millis() as u64,
                        "the lease expired: taking it over"
                    );
                    Some(self.attempt(&d, &cur, &watch, local, &mut sent, &mut taking))
                }
                Decision::TakeFree | Decision::TakeReleased => {
                    Some(self.attempt(&d, &cur, &watch, local, &mut sent, &mut taking))
                }
            };
            match attempt {
                Some(Ok(h)) => return Ok(h),
                Some(Err(LeaseError::Lost { .. })) => {
                    // Someone else wrote first; look again.
                    watch.lost_race();
                    continue;
                }
                Some(Err(e)) if e.is_transient() => {
                    tracing::warn!(event = "lease_unreachable", error = %e, "cannot write the lease; still waiting");
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
            cancel.sleep(wait.max(Duration::from_millis(50)));
        }
    }

    /// One take attempt in [`Self::acquire`]: remembers what it sends, as a
    /// landed write with its reply lost comes back as a reclaim of it.
    fn attempt(
        &self,
        d: &Decision,
        cur: &Option<Record>,
        watch: &Watch,
        local: Option<SignState>,
        sent: &mut Option<SignState>,
        taking: &mut Option<Takeover>,
    ) -> Result<Held, LeaseError> {
        let c = protocol::claim(d, watch.last(), &self.settings, local)?;
        *sent = Some(sent.map_or(c.state, |s| s.max(c.state)));
        taking.clone_from(&c.took_over);
        self.take_claim(d, cur.as_ref(), c)
    }

    /// Renews a held lease, carrying the node's state as `read_state` gives
    /// it (raised to at least what the record carries). Moves the deadline
    /// only once the write is confirmed.
    ///
    /// The send time is taken *before* the state is read: the node may sign
    /// until the deadline counted from it, so counted from the read (a stall
    /// between read and send must not lengthen what the skip has to cover;
    /// found by the model checker).
    pub(crate) fn renew(
        &self,
        held: &mut Held,
        read_state: impl FnOnce() -> Option<SignState>,
    ) -> Result<(), LeaseError> {
        let r = self.renew_once(held, read_state);
        if r.is_err() {
            metrics::lease_renewal_failed();
        }
        r
    }

    fn renew_once(
        &self,
        held: &mut Held,
        read_state: impl FnOnce() -> Option<SignState>,
    ) -> Result<(), LeaseError> {
        let sent = boot_time();
        let local = read_state();
        let state = protocol::carried(held.state, local);
        let rec = self.ours(state, held.address.clone(), false);
        held.sent_max = held.sent_max.max(state);
        match self.write(Some(&held.rvn), &rec) {
            Ok(()) => {}
            Err(LeaseError::Lost { .. }) if self.adopt_own_write(held)? => {
                // An earlier renewal of ours went through although its reply
                // was lost; its version is ours. The deadline stays where the
                // last *confirmed* renewal put it until this one succeeds.
                let rec = self.ours(
                    protocol::carried(held.state, local),
                    held.address.clone(),
                    false,
                );
                held.sent_max = held.sent_max.max(rec.state);
                self.write(Some(&held.rvn), &rec)?;
                return self.confirmed(held, rec, sent);
            }
            Err(e) => return Err(e),
        }
        self.confirmed(held, rec, sent)
    }

    fn confirmed(&self, held: &mut Held, rec: Record, sent: Tick) -> Result<(), LeaseError> {
        held.rvn = rec.rvn;
        held.state = rec.state;
        held.sent = sent;
        let deadline = protocol::node_deadline(sent, &self.settings);
        held.deadline.set(deadline);
        metrics::lease_renewed(&self.settings.name, deadline, held.state.hrs());
        Ok(())
    }

    /// After a failed conditional renewal: if the record names this process
    /// as holder and carries no more than we sent, the version in it came
    /// from one of our own writes whose reply was lost. Adopts it. A record
    /// naming us with more is someone else's: the lease is lost.
    fn adopt_own_write(&self, held: &mut Held) -> Result<bool, LeaseError> {
        let me = &self.settings.holder_id;
        match self.read()? {
            Some(r) if protocol::is_own_write(&r, me, Some(held.sent_max)) => {
                tracing::info!(
                    event = "lease_reply_lost",
                    "an earlier renewal succeeded although its reply was lost; continuing"
                );
                held.rvn = r.rvn;
                held.state = held.state.max(r.state);
                Ok(true)
            }
            Some(r) if r.holder_id == *me && !r.released => {
                log_impersonated(&r);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Binds the lease to the key this host is about to deliver: refuses a
    /// lease recorded for another validator (two validators sharing one lease
    /// name would each block the other, or worse, look like one).
    pub(crate) fn bind_address(&self, held: &mut Held, address: &str) -> Result<(), LeaseError> {
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

    /// Gives the lease up (after our node has stopped), carrying the final
    /// state, never below what the record carries (a takeover skip stays).
    /// Returns the state released.
    pub(crate) fn release(
        &self,
        held: &Held,
        last: Option<SignState>,
    ) -> Result<SignState, LeaseError> {
        let rec = self.ours(
            protocol::carried(held.state, last),
            held.address.clone(),
            true,
        );
        self.write(Some(&held.rvn), &rec)?;
        metrics::lease_held(&self.settings.name, None);
        Ok(rec.state)
    }
}

/// A record naming this process that it did not write: someone with
/// `PutItem` on the table wrote it (issue 20, item 7).
fn log_impersonated(r: &Record) {
    metrics::lease_record_impersonated();
    tracing::error!(
        event = "lease_record_impersonated",
        holder = %r.holder_id,
        state = %r.state,
        "the lease record names this process but carries a sign state it never sent: someone else wrote it (find out who may write to the lease table); not adopted"
    );
}
