//! Prometheus metrics (docs/design.md §9): off unless configured; a textfile
//! for node_exporter and/or a loopback `/metrics` endpoint.
//!
//! One process-wide registry ([`init`] sets it once, before the slot is
//! touched); the rest of the crate reports what happens through the small
//! functions below, which do nothing when metrics are off. Every change
//! wakes the textfile's writer thread, which rewrites the file (so no key
//! path ever waits for a metrics write: a hung file system stalls only that
//! thread); the endpoint encodes on each scrape. Nothing secret is ever a
//! value or a label: the only strings are the version, the lease name and
//! fixed label values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod format;
mod http;
mod settings;
mod textfile;

pub(crate) use settings::{MetricsError, MetricsSettings};

/// Defines a label value type: an enum whose variants are the only values
/// the label can take (low cardinality by construction).
macro_rules! label_values {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub(crate) enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$v),+];

            /// The label value.
            pub(crate) const fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(e, self.as_str())
            }
        }
    };
}

label_values! {
    /// What this host is in the run.
    Role { Signer => "signer", Standby => "standby", Off => "off" }
}

label_values! {
    /// How a key hand-off ended.
    DeliveryOutcome {
        Delivered => "delivered",
        Refused => "refused",
        NotRead => "not_read",
        Exposed => "exposed",
    }
}

label_values! {
    /// Why a key fetch failed (what the operator has to fix).
    FetchError {
        NotFound => "not_found",
        Denied => "denied",
        Kms => "kms",
        Credentials => "credentials",
        Unreachable => "unreachable",
        Invalid => "invalid",
        Other => "other",
    }
}

label_values! {
    /// What the guard decided before a delivery.
    GuardVerdict {
        Clean => "clean",
        Foreign => "foreign",
        Unknown => "unknown",
        UnknownDelivered => "unknown_delivered",
    }
}

label_values! {
    /// How this host got the lease.
    Takeover { Free => "free", Released => "released", Expired => "expired" }
}

label_values! {
    /// How the child ended.
    ChildExit { Success => "success", Failure => "failure", Signal => "signal" }
}

label_values! {
    /// Which sign state.
    Which { Carried => "carried", Raised => "raised" }
}

label_values! {
    /// The key slot's state (`slot::SlotState`, in label form: this module
    /// imports nothing that reports to it).
    SlotLabel { Idle => "idle", BackedUp => "backed_up", Armed => "armed", Delivered => "delivered" }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionL {
    version: &'static str,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleL {
    role: Role,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseL {
    lease: String,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeL {
    outcome: DeliveryOutcome,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassL {
    class: FetchError,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindL {
    kind: Takeover,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusL {
    status: ChildExit,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhichL {
    which: Which,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateL {
    state: SlotLabel,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictL {
    verdict: GuardVerdict,
}
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

/// A sign state (height, round, step), as the lease carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hrs {
    pub(crate) height: i64,
    pub(crate) round: i32,
    pub(crate) step: i8,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The metric families (each an `Arc` inside: the registry holds clones).
#[derive(Default)]
struct Families {
    role: Family<RoleL, Gauge>,
    signer_since: FGauge,
    lease_held: Family<LeaseL, Gauge>,
    lease_remaining: FGauge,
    lease_deadline: FGauge,
    renewals: Counter,
    renewal_failures: Counter,
    losses: Counter,
    impersonations: Counter,
    takeovers: Family<KindL, Counter>,
    sign_height: Family<WhichL, Gauge>,
    sign_round: Family<WhichL, Gauge>,
    sign_step: Family<WhichL, Gauge>,
    raises: Counter,
    deliveries: Family<OutcomeL, Counter>,
    last_delivery: FGauge,
    since_delivery: Family<NoLabels, FGauge>,
    fetch_errors: Family<ClassL, Counter>,
    child_starts: Counter,
    child_exits: Family<StatusL, Counter>,
    slot: Family<StateL, Gauge>,
    write_errors: Counter,
    endpoint_up: Gauge,
    guard_checks: Family<VerdictL, Counter>,
    guard_unusable: Gauge,
    guard_last: FGauge,
}

/// Buckets for durations of the tool's own work, 1 ms .. ~16 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// The process's, the role's and the lease's families.
fn register_run_and_lease(r: &mut Registry, f: &Families) {
    let build: Family<VersionL, Gauge> = Family::default();
    build
        .get_or_create(&VersionL {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    r.register("build_info", "Build of ssm-cosmovisor (value 1)", build);
    let start: FGauge = Gauge::default();
    start.set(unix_now());
    r.register_with_unit(
        "start_time",
        "When this process started (unix time)",
        Unit::Seconds,
        start,
    );
    r.register(
        "role",
        "1 for this host's current role (signer: holds the key for its node; standby: waits for the failover lease; off: USE_SSM_KEY=false)",
        f.role.clone(),
    );
    r.register_with_unit(
        "signer_since_timestamp",
        "When this process became the signer (unix time); 0 while it is not",
        Unit::Seconds,
        f.signer_since.clone(),
    );
    r.register(
        "lease_held",
        "1 while this host holds the failover lease",
        f.lease_held.clone(),
    );
    r.register_with_unit("lease_remaining", "Seconds until the lease deadline: without a confirmed renewal by then the node is stopped (0 when not held; in the textfile as of its last write)", Unit::Seconds, f.lease_remaining.clone());
    r.register_with_unit(
        "lease_deadline_timestamp",
        "The lease deadline as unix time (0 when not held)",
        Unit::Seconds,
        f.lease_deadline.clone(),
    );
    r.register(
        "lease_renewals",
        "Confirmed lease renewals",
        f.renewals.clone(),
    );
    r.register(
        "lease_renewal_failures",
        "Lease renewals that failed (retried until the deadline)",
        f.renewal_failures.clone(),
    );
    r.register(
        "lease_losses",
        "Times the lease was declared lost here (the node was stopped)",
        f.losses.clone(),
    );
    r.register(
        "lease_record_impersonations",
        "Lease records seen naming this process with a sign state it never sent: written by someone else with PutItem on the table",
        f.impersonations.clone(),
    );
    r.register("lease_takeovers", "How this host got the lease (free: no record; released: by its holder; expired: after a full duration unrenewed, with the height skip)", f.takeovers.clone());
    r.register("sign_state_height", "Sign state height: carried by the lease record, or the one this host raised its state file to", f.sign_height.clone());
    r.register(
        "sign_state_round",
        "Sign state round (see sign_state_height)",
        f.sign_round.clone(),
    );
    r.register(
        "sign_state_step",
        "Sign state step (see sign_state_height)",
        f.sign_step.clone(),
    );
    r.register(
        "sign_state_raises",
        "Times the node's sign state file was raised to the lease's",
        f.raises.clone(),
    );
    r.register("guard_checks", "Guard checks before a delivery, by verdict (foreign: the key signs elsewhere, no key went out; unknown: no endpoint could be believed, no key; unknown_delivered: the same, delivered as SSM_COSMOVISOR_GUARD_ON_UNKNOWN=deliver allows)", f.guard_checks.clone());
    r.register(
        "guard_endpoints_unusable",
        "Endpoints the last guard check could not believe (down, another chain, catching up, stale, pruned)",
        f.guard_unusable.clone(),
    );
    r.register_with_unit(
        "guard_last_check_timestamp",
        "When the guard last decided (unix time; 0: never)",
        Unit::Seconds,
        f.guard_last.clone(),
    );
}

/// The key's, the fetch's, the child's and the slot's families.
fn register_key_and_child(
    r: &mut Registry,
    f: &Families,
    delivery_latency: &Histogram,
    fetch_latency: &Histogram,
) {
    r.register("key_deliveries", "Key hand-offs by outcome (exposed: a stranger held the pipe after the write; the process stops)", f.deliveries.clone());
    r.register_with_unit(
        "key_delivery_duration",
        "Reader attached to key drained: the tool's verification and write",
        Unit::Seconds,
        delivery_latency.clone(),
    );
    r.register_with_unit(
        "last_delivery_timestamp",
        "Unix time of the last delivery (0 before the first)",
        Unit::Seconds,
        f.last_delivery.clone(),
    );
    r.register("seconds_since_last_delivery", "Seconds since the last delivery (absent before the first; in the textfile as of its last write)", f.since_delivery.clone());
    r.register_with_unit(
        "fetch_duration",
        "Key fetches (SSM or systemd credential), successful or not",
        Unit::Seconds,
        fetch_latency.clone(),
    );
    r.register(
        "fetch_errors",
        "Key fetches that failed, by what to fix",
        f.fetch_errors.clone(),
    );
    r.register(
        "child_starts",
        "Starts of the child (cosmovisor)",
        f.child_starts.clone(),
    );
    r.register(
        "child_exits",
        "Exits of the child by how it ended",
        f.child_exits.clone(),
    );
    r.register(
        "slot_state",
        "1 for the key slot's current state",
        f.slot.clone(),
    );
    r.register(
        "metrics_write_errors",
        "Metrics textfile rewrites that failed",
        f.write_errors.clone(),
    );
}

/// Only with an endpoint configured: a 0 must mean "configured and down".
fn register_endpoint(r: &mut Registry, f: &Families) {
    r.register(
        "metrics_endpoint_up",
        "1 while the /metrics endpoint serves; 0 while its address cannot be bound (retried every 5 s; the run goes on)",
        f.endpoint_up.clone(),
    );
}

impl Families {
    /// Every label value exists from the start: a counter that appears
    /// only when it first counts is invisible to `increase()`.
    fn zeros(&self) {
        let f = self;
        for &role in Role::ALL {
            let _ = f.role.get_or_create(&RoleL { role });
        }
        for &outcome in DeliveryOutcome::ALL {
            let _ = f.deliveries.get_or_create(&OutcomeL { outcome });
        }
        for &class in FetchError::ALL {
            let _ = f.fetch_errors.get_or_create(&ClassL { class });
        }
        for &kind in Takeover::ALL {
            let _ = f.takeovers.get_or_create(&KindL { kind });
        }
        for &verdict in GuardVerdict::ALL {
            let _ = f.guard_checks.get_or_create(&VerdictL { verdict });
        }
        for &status in ChildExit::ALL {
            let _ = f.child_exits.get_or_create(&StatusL { status });
        }
        for &which in Which::ALL {
            let l = WhichL { which };
            let _ = f.sign_height.get_or_create(&l);
            let _ = f.sign_round.get_or_create(&l);
            let _ = f.sign_step.get_or_create(&l);
        }
        for &state in SlotLabel::ALL {
            let _ = f.slot.get_or_create(&StateL { state });
        }
    }
}

/// The registry and what publishes it.
struct Metrics {
    registry: Registry,
    f: Families,
    delivery_latency: Histogram,
    fetch_latency: Histogram,
    /// The lease deadline on the boot clock, in ns; 0: not held.
    deadline_ns: AtomicU64,
    last_delivery: Mutex<Option<Instant>>,
    /// The lease's name, once one was held (its `lease_held` label).
    lease: Mutex<Option<String>>,
    textfile: Option<textfile::TextFile>,
    /// Serialises refresh + encode (the clock gauges are set, then read).
    publish: Mutex<()>,
    /// Textfile rewrites wanted and done, for the writer thread.
    pending: Pending,
}

/// Generations of the textfile: wanted (bumped by each change) and written,
/// and the condvar the writer thread sleeps on (no timer: idle is silent).
#[derive(Default)]
struct Pending {
    gens: Mutex<(u64, u64)>,
    cv: Condvar,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The textfile writer thread's name.
const WRITER: &str = "metrics-file";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// `endpoint`: whether one is configured and, if so, whether it is bound.
    fn new(textfile: Option<textfile::TextFile>, endpoint: Option<bool>) -> Metrics {
        let f = Families::default();
        let delivery_latency = Histogram::new(duration_buckets());
        let fetch_latency = Histogram::new(duration_buckets());
        let mut r = Registry::with_prefix("ssm_cosmovisor");
        register_run_and_lease(&mut r, &f);
        register_key_and_child(&mut r, &f, &delivery_latency, &fetch_latency);
        if let Some(up) = endpoint {
            register_endpoint(&mut r, &f);
            f.endpoint_up.set(i64::from(up));
        }
        f.zeros();
        Metrics {
            registry: r,
            f,
            delivery_latency,
            fetch_latency,
            deadline_ns: AtomicU64::new(0),
            last_delivery: Mutex::new(None),
            lease: Mutex::new(None),
            textfile,
            publish: Mutex::new(()),
            pending: Pending::default(),
        }
    }

    /// The gauges that follow the clock, as of now.
    fn refresh(&self) {
        let d = self.deadline_ns.load(Ordering::SeqCst);
        let left = match d {
            0 => Duration::ZERO,
            d => Duration::from_nanos(d).saturating_sub(crate::sys::boot_time()),
        };
        self.f.lease_remaining.set(left.as_secs_f64());
        if let Some(t) = *self.last_delivery.lock().unwrap_or_else(|e| e.into_inner()) {
            self.f
                .since_delivery
                .get_or_create(&NoLabels {})
                .set(t.elapsed().as_secs_f64());
        }
    }

    /// The OpenMetrics text of everything, as of now.
    fn encode(&self) -> String {
        let _one = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        self.encode_locked()
    }

    fn encode_locked(&self) -> String {
        self.refresh();
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Rewrites the textfile (if any) now, in the calling thread: `init`,
    /// then only the writer thread, so rewrites never overlap. The write is
    /// outside the encode lock: a hung one does not hold up the endpoint.
    fn write_textfile(&self) {
        let Some(tf) = &self.textfile else {
            return;
        };
        let text = format::to_prometheus_text(&self.encode());
        // Test-only: every rewrite after init's first never returns.
        #[cfg(feature = "failpoints")]
        if self
            .pending
            .gens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            > 0
        {
            crate::failpoint_hang!("metrics-write-hangs");
        }
        if let Err(e) = tf.write(&text) {
            self.f.write_errors.inc();
            tracing::warn!(event = "metrics_write_failed", path = %tf.path().display(), error = %e, "cannot rewrite the metrics file");
        }
    }

    /// After a change: the writer thread rewrites the textfile (changes
    /// that come while it writes are coalesced into its next rewrite).
    fn publish(&self) {
        if self.textfile.is_some() {
            let mut g = self.pending.gens.lock().unwrap_or_else(|e| e.into_inner());
            g.0 += 1;
            self.pending.cv.notify_all();
        }
    }

    /// The writer thread's loop.
    fn writer(&self) {
        loop {
            let target = {
                let mut g = self.pending.gens.lock().unwrap_or_else(|e| e.into_inner());
                while g.1 == g.0 {
                    g = self.pending.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                g.0
            };
            self.write_textfile();
            let mut g = self.pending.gens.lock().unwrap_or_else(|e| e.into_inner());
            g.1 = target;
            self.pending.cv.notify_all();
        }
    }

    /// Waits (at most `timeout`) until every change so far is in the file.
    fn flush(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        let mut g = self.pending.gens.lock().unwrap_or_else(|e| e.into_inner());
        let target = g.0;
        while g.1 < target {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    event = "metrics_write_failed",
                    "the metrics file was not rewritten in time; it may miss the last changes"
                );
                return;
            }
            g = self
                .pending
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Starts metrics as configured (nothing when off): checks the textfile can
/// be written (writes it once) and starts the endpoint. Called once, before
/// the key slot is touched, so a bad setting changes nothing. An address
/// that cannot be bound is no error (any local user can take a port, and
/// monitoring must never stop signing): the endpoint's thread retries it.
/// `node_uid`: the node's user, who must not own a directory above the
/// textfile's when we are not it.
pub(crate) fn init(s: &MetricsSettings, node_uid: u32) -> Result<(), MetricsError> {
    if s.is_off() {
        return Ok(());
    }
    let tf = s
        .file
        .as_deref()
        .map(|p| textfile::TextFile::open(p, node_uid))
        .transpose()?;
    let listener = s.addr.map(|a| (a, http::bind(a)));
    let up = listener.as_ref().map(|(_, l)| l.is_ok());
    if METRICS.set(Metrics::new(tf, up)).is_err() {
        return Err(MetricsError::Twice);
    }
    let m = METRICS.get().expect("just set");
    m.write_textfile();
    if let Some(tf) = &m.textfile {
        std::thread::Builder::new()
            .name(WRITER.into())
            .spawn(|| METRICS.get().expect("set before").writer())
            .map_err(|source| MetricsError::Thread {
                var: settings::FILE_VAR,
                does: "writes the metrics file",
                source,
            })?;
        tracing::info!(event = "metrics_file", path = %tf.path().display(), "writing metrics for node_exporter's textfile collector");
    }
    if let Some((addr, first)) = listener {
        if first.is_ok() {
            tracing::info!(event = "metrics_endpoint", addr = %addr, "serving metrics at http://{addr}/metrics");
        }
        let up = |up: bool| {
            change(|m| {
                m.f.endpoint_up.set(i64::from(up));
            })
        };
        let encode = || METRICS.get().map(Metrics::encode).unwrap_or_default();
        http::start(addr, first, up, encode).map_err(|source| MetricsError::Thread {
            var: settings::ADDR_VAR,
            does: "serves the metrics endpoint",
            source,
        })?;
    }
    Ok(())
}

/// Applies `f` and publishes, if metrics are on.
fn change(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.get() {
        f(m);
        m.publish();
    }
}

/// This host's role from now on.
pub(crate) fn role(r: Role) {
    change(|m| {
        for &other in Role::ALL {
            m.f.role
                .get_or_create(&RoleL { role: other })
                .set(i64::from(other == r));
        }
        let since = if r == Role::Signer { unix_now() } else { 0.0 };
        m.f.signer_since.set(since);
    });
}

/// The key slot moved to `now`.
pub(crate) fn slot(now: SlotLabel) {
    change(|m| {
        for &state in SlotLabel::ALL {
            m.f.slot
                .get_or_create(&StateL { state })
                .set(i64::from(state == now));
        }
    });
}

/// The guard decided `v`, with `unusable` endpoints it could not believe.
pub(crate) fn guard_checked(v: GuardVerdict, unusable: usize) {
    change(|m| {
        m.f.guard_checks
            .get_or_create(&VerdictL { verdict: v })
            .inc();
        m.f.guard_unusable.set(unusable as i64);
        m.f.guard_last.set(unix_now());
    });
}

/// A key fetch took `took` and ended as `r`.
pub(crate) fn fetched(took: Duration, r: Result<(), FetchError>) {
    change(|m| {
        m.fetch_latency.observe(took.as_secs_f64());
        if let Err(class) = r {
            m.f.fetch_errors.get_or_create(&ClassL { class }).inc();
        }
    });
}

/// A hand-off ended as `o`; `took` for a delivery.
pub(crate) fn delivery(o: DeliveryOutcome, took: Option<Duration>) {
    change(|m| {
        m.f.deliveries.get_or_create(&OutcomeL { outcome: o }).inc();
        if let Some(t) = took {
            m.delivery_latency.observe(t.as_secs_f64());
        }
        if o == DeliveryOutcome::Delivered {
            m.f.last_delivery.set(unix_now());
            *m.last_delivery.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    });
}

/// The child was started.
pub(crate) fn child_started() {
    change(|m| {
        m.f.child_starts.inc();
    });
}

/// The child ended.
pub(crate) fn child_exited(how: ChildExit) {
    change(|m| {
        m.f.child_exits
            .get_or_create(&StatusL { status: how })
            .inc();
    });
}

/// The lease `name` is held until `deadline` (boot clock), or, `None`, not
/// held (released).
pub(crate) fn lease_held(name: &str, deadline: Option<Duration>) {
    change(|m| set_held(m, Some(name), deadline));
}

fn set_held(m: &Metrics, name: Option<&str>, deadline: Option<Duration>) {
    let ns = deadline.map_or(0, |d| (d.as_nanos() as u64).max(1));
    m.deadline_ns.store(ns, Ordering::SeqCst);
    // On the wall clock once, when it moves: a stable value to alert on.
    let wall = deadline.map_or(0.0, |d| {
        let now = crate::sys::boot_time();
        if d >= now {
            unix_now() + (d - now).as_secs_f64()
        } else {
            unix_now() - (now - d).as_secs_f64()
        }
    });
    m.f.lease_deadline.set(wall);
    let mut known = m.lease.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = name {
        *known = Some(n.to_string());
    }
    if let Some(lease) = known.clone() {
        m.f.lease_held
            .get_or_create(&LeaseL { lease })
            .set(i64::from(deadline.is_some()));
    }
}

/// A renewal of lease `name` was confirmed: held until `deadline` (boot
/// clock), carrying `carried`.
pub(crate) fn lease_renewed(name: &str, deadline: Duration, carried: Hrs) {
    change(|m| {
        m.f.renewals.inc();
        set_held(m, Some(name), Some(deadline));
        set_state(m, Which::Carried, carried);
    });
}

/// The run is over: whatever lease this process held it holds no more
/// (released, lost, or left to expire). The textfile outlives the process,
/// and must not show it as a holder.
pub(crate) fn stopped() {
    change(|m| set_held(m, None, None));
    if let Some(m) = METRICS.get() {
        // The process exits next: what ended the run must be in the file.
        m.flush(Duration::from_secs(2));
    }
}

/// A renewal failed (it is retried while the deadline holds).
pub(crate) fn lease_renewal_failed() {
    change(|m| {
        m.f.renewal_failures.inc();
    });
}

/// A lease record named this process with a state it never sent.
pub(crate) fn lease_record_impersonated() {
    change(|m| {
        m.f.impersonations.inc();
    });
}

/// The lease was declared lost here: not held from now on.
pub(crate) fn lease_lost() {
    change(|m| {
        m.f.losses.inc();
        set_held(m, None, None);
    });
}

/// This host took the lease, `how`, carrying `carried`.
pub(crate) fn lease_taken(how: Takeover, carried: Hrs) {
    change(|m| {
        m.f.takeovers.get_or_create(&KindL { kind: how }).inc();
        set_state(m, Which::Carried, carried);
    });
}

/// The node's sign state file was raised to `to`.
pub(crate) fn sign_state_raised(to: Hrs) {
    change(|m| {
        m.f.raises.inc();
        set_state(m, Which::Raised, to);
    });
}

fn set_state(m: &Metrics, which: Which, s: Hrs) {
    let l = WhichL { which };
    m.f.sign_height.get_or_create(&l).set(s.height);
    m.f.sign_round.get_or_create(&l).set(i64::from(s.round));
    m.f.sign_step.get_or_create(&l).set(i64::from(s.step));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_present_from_the_start_and_nothing_else_is_labelled() {
        let m = Metrics::new(None, None);
        let text = format::to_prometheus_text(&m.encode());
        for name in [
            "ssm_cosmovisor_build_info{version=\"",
            "ssm_cosmovisor_role{role=\"standby\"} 0",
            "ssm_cosmovisor_key_deliveries_total{outcome=\"exposed\"} 0",
            "ssm_cosmovisor_fetch_errors_total{class=\"kms\"} 0",
            "ssm_cosmovisor_lease_takeovers_total{kind=\"expired\"} 0",
            "ssm_cosmovisor_slot_state{state=\"backed_up\"} 0",
            "ssm_cosmovisor_key_delivery_duration_seconds_bucket{le=\"+Inf\"} 0",
            "# TYPE ssm_cosmovisor_lease_renewals_total counter",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        // Before the first delivery there is no "seconds since" at all.
        assert!(!text.contains("seconds_since_last_delivery "), "{text}");
    }
}
