//! The supervisor's decisions without I/O, as `lease/protocol.rs` is for the
//! lease: the run's state (one [`Phase`], the lease's [`LeasePart`], the key
//! wait, whether a hand-off is under way) and what each event leads to.
//! Every effect goes through the narrow [`Effects`]: the driver
//! (`driver.rs`) implements it over the child, the slot, the hand-off
//! threads and systemd; the unit tests below over a record of calls, which
//! is how the ordering rules of a run are checked without processes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::keywait::KeyWait;
use super::watchdog::{self, Watchdog};
use super::{SuperviseError, ORPHAN_GRACE};
use crate::fence::FenceNews;
use crate::lease::LeaseNews;
use crate::metrics;
use crate::procfs::Pid;
use crate::slot::SlotError;

/// Why we stop the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The operator (systemd) asked; systemd escalates, not we.
    Signal(i32),
    /// An error ends the run (recorded in `fatal`).
    Fatal,
    /// The lease is lost: the whole tree must be gone within the stop grace.
    LeaseLost,
    /// A standby won the lease: its keyless child makes way for the keyed one.
    Handover,
}

/// When we send SIGKILL ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escalation {
    /// Not ours to do (a stop systemd asked for; systemd escalates).
    None,
    /// At this instant.
    At(Instant),
    /// Sent.
    Done,
}

/// The run's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The child runs; hand-offs and re-arms go on.
    Running,
    /// The child was told to stop.
    Stopping {
        /// The strongest reason so far: a lost lease outranks all.
        why: Why,
        escalate: Escalation,
    },
}

impl Phase {
    /// The phase after being told to stop for `why` at `now`: a stop the
    /// operator asked for is escalated by systemd; one of ours by us after
    /// the orphan grace; a lost lease within the stop grace, to the whole
    /// tree, whatever was under way (it outranks every other reason).
    pub(super) fn stop(self, why: Why, now: Instant, stop_grace: Duration) -> Phase {
        let own = match why {
            Why::Signal(_) => None,
            Why::Fatal | Why::Handover => Some(now + ORPHAN_GRACE),
            Why::LeaseLost => Some(now + stop_grace),
        };
        match self {
            Phase::Running => Phase::Stopping {
                why,
                escalate: own.map_or(Escalation::None, Escalation::At),
            },
            Phase::Stopping { why: old, escalate } => {
                let lost_now = why == Why::LeaseLost && old != Why::LeaseLost;
                let escalate = match (escalate, own) {
                    (Escalation::At(t), Some(o)) if lost_now => Escalation::At(t.min(o)),
                    // A SIGKILL to the child alone was sent: now the tree.
                    (Escalation::Done, Some(o)) if lost_now => Escalation::At(o),
                    (Escalation::None, Some(o)) => Escalation::At(o),
                    (e, _) => e,
                };
                let why = if lost_now { why } else { old };
                Phase::Stopping { why, escalate }
            }
        }
    }
}

/// The deadlines of a lease this host holds (boot clock), as the
/// supervisor enforces them.
pub(super) trait LeaseDeadlines {
    /// Until when the node may run: the earlier of the lease's own deadline
    /// and the one the fencer acknowledged.
    fn until(&self) -> Duration;
    /// The lease's own deadline, moved by confirmed renewals: past it the
    /// loss is the renewals', before it the fencer's.
    fn renewed_until(&self) -> Duration;
    /// SIGTERM to SIGKILL of the node's tree when the lease is lost.
    fn grace(&self) -> Duration;
}

/// The lease's part in this run: `G` a holder's (its deadlines), `W` a
/// standby's wait.
pub(super) enum LeasePart<G, W> {
    /// No lease configured.
    None,
    /// Another host holds it: the child runs without the key until the
    /// lease is ours.
    Standby(W),
    /// Held: the node may run until the guard's deadline.
    Held(G),
    /// Declared lost: never released, the node is being stopped.
    Lost(G),
}

impl<G, W> LeasePart<G, W> {
    /// Held becomes lost; any other part stays as it is. Whether it was held.
    fn mark_lost(&mut self) -> bool {
        match std::mem::replace(self, LeasePart::None) {
            LeasePart::Held(g) => {
                *self = LeasePart::Lost(g);
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    fn guard(&self) -> Option<&G> {
        match self {
            LeasePart::Held(g) | LeasePart::Lost(g) => Some(g),
            LeasePart::None | LeasePart::Standby(_) => None,
        }
    }
}

/// A message for systemd (`sd_notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notice {
    Ready(&'static str),
    Status(String),
    /// `STOPPING=1`: the unit goes to "deactivating" for good.
    Stopping,
    /// `WATCHDOG=1`.
    Ping,
    /// `WATCHDOG_USEC=`.
    WatchdogTimeout(Duration),
}

/// How a hand-off ended, as far as the run's decisions go (the driver logs
/// and counts the full outcome first).
pub(super) enum Handed<F> {
    /// The node read the key; `next` is the FIFO re-armed after it
    /// (always-armed mode).
    Delivered { reader: Pid, next: Option<F> },
    /// Refused or not read: nothing of the key left us; `next` is a FIFO
    /// still armed at the key path, if the hand-off left one.
    Declined { next: Option<F> },
    /// Cancelled by us.
    Cancelled,
    /// The run must end: the delivery failed or the key may be exposed.
    Failed(SuperviseError),
}

/// Whether a hand-off is under way (its outcome will come as an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handoff {
    Idle,
    Underway,
}

/// What the supervisor does to the world.
pub(super) trait Effects {
    /// An armed FIFO at the key path.
    type Fifo;
    /// A held lease's deadlines.
    type Guard: LeaseDeadlines;
    /// A standby's wait for the lease.
    type Waiter;
    fn now(&self) -> Instant;
    /// The clock of lease deadlines (`CLOCK_BOOTTIME`).
    fn boot_time(&self) -> Duration;
    fn child_pid(&self) -> Pid;
    fn signal_child(&mut self, sig: i32);
    /// Passes an operator's stop signal on (mapped for the child).
    fn forward_stop(&mut self, received: i32);
    /// SIGKILL to the child's whole tree until none is left (a lost lease).
    fn kill_tree(&mut self);
    /// Reaps exited processes other than the child (SIGCHLD).
    fn reap_others(&mut self);
    /// A process of the child's tree running the node, other than the
    /// one that read the last key.
    fn find_node(&mut self) -> Option<Pid>;
    /// Stops the re-arm watchers from moving the slot.
    fn disable_rearm(&mut self);
    /// A FIFO a watcher armed, if any.
    fn take_armed(&mut self) -> Option<Self::Fifo>;
    /// A FIFO a watcher armed, or a new one.
    fn take_or_arm(&mut self) -> Result<Self::Fifo, SlotError>;
    /// Starts a hand-off of the key through `fifo`; its outcome comes
    /// back as [`Supervisor::on_delivery`].
    fn start_delivery(&mut self, fifo: Self::Fifo);
    /// Asks the hand-off under way to end without writing.
    fn cancel_delivery(&mut self);
    /// Watches the node that read the key, for its exit.
    fn watch_reader(&mut self, pid: Pid);
    fn notify(&mut self, n: Notice);
}

/// The settings a run's decisions use.
pub(super) struct Rules {
    /// How long a started node has to read its key.
    pub(super) key_timeout: Duration,
    /// Our child is the node itself (`exec`): it starts with the hand-off.
    pub(super) child_is_node: bool,
    /// The key path, for the key timeout's error.
    pub(super) key_path: PathBuf,
}

/// How the run ends, once the child has exited and the slot is restored.
pub(super) struct End<G, W> {
    /// The lease's part, to be settled.
    pub(super) lease: LeasePart<G, W>,
    /// A standby's newly won lease is kept for the keyed run.
    pub(super) keep_lease: bool,
    /// A holder's lease may be released early.
    pub(super) may_release: bool,
    /// The first error that ended the run.
    pub(super) fatal: Option<SuperviseError>,
}

/// One run's supervision state and decisions.
pub(super) struct Supervisor<E: Effects> {
    pub(super) io: E,
    rules: Rules,
    phase: Phase,
    /// The first error that ends the run.
    fatal: Option<SuperviseError>,
    handoff: Handoff,
    wait: KeyWait,
    /// The node that read the last key, while it runs.
    keyed: Option<Pid>,
    lease: LeasePart<E::Guard, E::Waiter>,
    watchdog: Watchdog,
    last_ping: Instant,
}

impl<E: Effects> Supervisor<E> {
    pub(super) fn new(
        io: E,
        rules: Rules,
        lease: LeasePart<E::Guard, E::Waiter>,
        watchdog: Watchdog,
    ) -> Self {
        let last_ping = io.now();
        Supervisor {
            io,
            rules,
            phase: Phase::Running,
            fatal: None,
            handoff: Handoff::Idle,
            wait: KeyWait::Idle,
            keyed: None,
            lease,
            watchdog,
            last_ping,
        }
    }

    /// Starts the first hand-off (with `armed`) and tells systemd we are up.
    pub(super) fn start(&mut self, armed: Option<E::Fifo>) {
        let standby = matches!(self.lease, LeasePart::Standby(_));
        if let Some(t) = self.watchdog.start_override() {
            self.io.notify(Notice::WatchdogTimeout(t));
            self.io.notify(Notice::Ping);
            self.last_ping = self.io.now();
            tracing::info!(
                event = "watchdog_fence",
                timeout_ms = t.as_millis() as u64,
                "systemd's watchdog fences the lease: pings stop before the node's kill deadline"
            );
        }
        let ready = match armed {
            Some(a) => {
                self.deliver(a);
                "waiting for the node to read the key"
            }
            None if standby => "standby: waiting for the failover lease",
            None => "running without the SSM key (USE_SSM_KEY=false)",
        };
        self.io.notify(Notice::Ready(ready));
    }

    /// Starts a hand-off through `a`, unless the lease is lost. Checked
    /// here, where it is decided: a tool that resumes after a stall may
    /// find a re-arm queued before the loop's own check of the deadline.
    /// A FIFO not used stays at the key path for the restore.
    fn deliver(&mut self, a: E::Fifo) {
        self.enforce_lease();
        if matches!(self.lease, LeasePart::Lost(_)) {
            return;
        }
        let now = self.io.now();
        let exec_child = self.rules.child_is_node.then(|| self.io.child_pid());
        self.wait = self.wait.armed(self.keyed, exec_child, now);
        self.handoff = Handoff::Underway;
        self.io.start_delivery(a);
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    fn stop_grace(&self) -> Duration {
        self.lease.guard().map_or(ORPHAN_GRACE, |g| g.grace())
    }

    /// Enters (or strengthens) the stopping phase. The caller has signalled
    /// the child already.
    fn stop(&mut self, why: Why) {
        self.phase = self.phase.stop(why, self.io.now(), self.stop_grace());
    }

    /// Records the error that ends the run and stops the child.
    fn fail(&mut self, e: SuperviseError) {
        self.fatal.get_or_insert(e);
        self.io.signal_child(libc::SIGTERM);
        self.stop(Why::Fatal);
    }

    /// The lease is lost (renewals failed, the fencer fired or died): stop
    /// the node before the lease can expire for others.
    fn lose_lease(&mut self, reason: String) {
        if !self.lease.mark_lost() {
            return;
        }
        metrics::lease_lost();
        tracing::error!(event = "lease_lost", reason = %reason, "LEASE LOST: stopping the node");
        self.io.notify(Notice::Status(
            "failover lease lost: stopping the node".into(),
        ));
        self.io.disable_rearm();
        if self.handoff == Handoff::Underway {
            self.io.cancel_delivery();
        }
        self.fatal.get_or_insert(SuperviseError::Lease(format!(
            "{reason}. The node was stopped and the safe key restored; restart the service to stand by for the lease again"
        )));
        self.io.signal_child(libc::SIGTERM);
        self.stop(Why::LeaseLost);
    }

    /// Loses the lease if its deadline (or the fencer's) has passed.
    fn enforce_lease(&mut self) {
        let LeasePart::Held(g) = &self.lease else {
            return;
        };
        let now = self.io.boot_time();
        if now >= g.until() {
            let reason = if g.renewed_until() <= now {
                "no renewal of the lease was confirmed in time"
            } else {
                "the fencer process stopped confirming the lease deadline"
            };
            self.lose_lease(reason.to_string());
        }
    }

    /// Sends our own SIGKILL when it is due.
    fn escalate_if_due(&mut self) {
        let Phase::Stopping {
            why,
            escalate: Escalation::At(t),
        } = self.phase
        else {
            return;
        };
        if self.io.now() < t {
            return;
        }
        if why == Why::LeaseLost {
            self.io.kill_tree();
        } else {
            self.io.signal_child(libc::SIGKILL);
        }
        self.phase = Phase::Stopping {
            why,
            escalate: Escalation::Done,
        };
    }

    /// `until` of the boot clock as an instant of the monotonic clock.
    fn instant_of(&self, until: Duration) -> Instant {
        self.io.now() + until.saturating_sub(self.io.boot_time())
    }

    /// The next instant something is due without an event.
    pub(super) fn next_deadline(&self) -> Instant {
        let mut at = self.io.now() + Duration::from_secs(3600);
        if let LeasePart::Held(g) = &self.lease {
            at = at.min(self.instant_of(g.until()));
        }
        if let Phase::Stopping {
            escalate: Escalation::At(t),
            ..
        } = self.phase
        {
            at = at.min(t);
        }
        // Only a hand-off under way waits for a node (a refusal while
        // stopping leaves none).
        if let (Handoff::Underway, Some(t)) =
            (self.handoff, self.wait.wake_at(self.rules.key_timeout))
        {
            at = at.min(t);
        }
        if let Some(t) = watchdog::next_ping(&self.watchdog, self.last_ping) {
            at = at.min(t);
        }
        at
    }

    /// What is due at every turn of the loop, not only on a quiet wake: a
    /// stream of events must not hold the deadline or the key timeout off.
    pub(super) fn tick(&mut self) {
        self.enforce_lease();
        self.escalate_if_due();
        self.check_key_timeout();
    }

    /// Pings when due and the lease allows it (watchdog.rs); a withheld
    /// ping still ends the interval, so the loop does not spin on it.
    pub(super) fn ping_watchdog_if_due(&mut self) {
        let now = self.io.now();
        if !watchdog::next_ping(&self.watchdog, self.last_ping).is_some_and(|t| now >= t) {
            return;
        }
        let kill_by = self
            .lease
            .guard()
            .map(|g| g.until().saturating_add(g.grace()));
        if self.watchdog.may_ping(self.io.boot_time(), kill_by) {
            self.io.notify(Notice::Ping);
        } else {
            tracing::debug!(
                event = "watchdog_withheld",
                "watchdog ping withheld: the node's kill deadline is too near"
            );
        }
        self.last_ping = now;
    }

    /// Looks for a new node process while cosmovisor is between nodes, and
    /// fails the run when a started node has not read its key in time.
    fn check_key_timeout(&mut self) {
        if self.handoff != Handoff::Underway {
            return;
        }
        let now = self.io.now();
        if self.wait.look_due(now) {
            let found = self.io.find_node();
            self.wait = self.wait.looked(found, now);
            if let (KeyWait::NodeStarted { pid, .. }, Some(_)) = (self.wait, found) {
                tracing::info!(
                    event = "node_started",
                    pid = pid.0,
                    timeout_s = self.rules.key_timeout.as_secs(),
                    "a node process started: it must read the key within the key timeout"
                );
            }
        }
        if let Some((pid, after)) = self.wait.timed_out(now, self.rules.key_timeout) {
            if self.fatal.is_none() {
                self.io.cancel_delivery();
                let e = SuperviseError::Timeout {
                    timeout: self.rules.key_timeout,
                    pid: pid.0,
                    after,
                    path: self.rules.key_path.clone(),
                };
                self.fail(e);
            }
        }
    }

    /// An operator's stop signal, or SIGCHLD.
    pub(super) fn on_signal(&mut self, sig: i32) {
        if sig == libc::SIGCHLD {
            self.io.reap_others();
            return;
        }
        // The node is about to stop: no re-arm for it.
        self.io.disable_rearm();
        self.io.notify(Notice::Stopping);
        self.io.forward_stop(sig);
        self.stop(Why::Signal(sig));
    }

    /// The node that read the key exited.
    pub(super) fn on_reader_exited(&mut self, pid: Pid) {
        tracing::info!(
            event = "node_exited",
            pid = pid.0,
            "the node that read the key exited"
        );
        if self.keyed == Some(pid) {
            self.keyed = None;
        }
        self.wait = self.wait.keyed_node_exited(pid, self.io.now());
    }

    pub(super) fn on_rearm_failed(&mut self, e: SlotError) {
        self.fail(e.into());
    }

    pub(super) fn on_lease(&mut self, n: LeaseNews) {
        match n {
            LeaseNews::Lost(reason) => self.lose_lease(reason),
            LeaseNews::Failed(reason) => self.fail(SuperviseError::Lease(reason)),
            LeaseNews::Acquired => self.hand_over(),
        }
    }

    pub(super) fn on_fence(&mut self, n: FenceNews) {
        self.lose_lease(match n {
            FenceNews::Fired(n) => format!(
                "the fencer killed the node's process tree ({n} processes): the lease deadline passed while this process could not act"
            ),
            FenceNews::Exited => {
                "the fencer process exited: nothing independent of this process would stop the node".into()
            }
        });
    }

    /// A standby won the lease: stop the keyless child (unless we stop anyway).
    fn hand_over(&mut self) {
        if self.stopping() {
            return;
        }
        tracing::info!(
            event = "lease_won",
            "got the failover lease: stopping the keyless node to restart it with the key"
        );
        self.io.notify(Notice::Status(
            "got the failover lease: restarting the node with the key".into(),
        ));
        self.io.signal_child(libc::SIGTERM);
        self.stop(Why::Handover);
    }

    /// A watcher re-armed the key path: start that hand-off, unless we stop
    /// (the restore takes the slot back to idle) or one is under way (its
    /// outcome takes the FIFO).
    pub(super) fn on_rearmed(&mut self) {
        if self.stopping() || self.handoff == Handoff::Underway {
            return;
        }
        if let Some(a) = self.io.take_armed() {
            self.deliver(a);
        }
    }

    /// A hand-off ended: the next one starts through the FIFO it left or a
    /// watcher armed, or through a new one after a refusal; none while we
    /// stop.
    pub(super) fn on_delivery(&mut self, h: Handed<E::Fifo>) {
        self.handoff = Handoff::Idle;
        let next = match h {
            Handed::Failed(e) => {
                self.fail(e);
                return;
            }
            Handed::Delivered { reader, next } => {
                self.io
                    .notify(Notice::Status(format!("key delivered to pid {}", reader.0)));
                self.wait = self.wait.delivered();
                self.keyed = Some(reader);
                // Its exit re-arms (unless a FIFO is at the key path
                // already) and tells the key timeout cosmovisor is between
                // nodes.
                self.io.watch_reader(reader);
                // A FIFO a watcher armed while we verified (the node wrote
                // its upgrade marker, or exited) is taken either way: one
                // hand-off goes on, and the delivery's own FIFO comes first.
                let watcher = self.io.take_armed();
                match next.or(watcher) {
                    Some(a) if !self.stopping() => Some(Ok(a)),
                    // From now on the watchers re-arm by themselves.
                    _ => None,
                }
            }
            Handed::Declined { next } if !self.stopping() => Some(match next {
                Some(a) => Ok(a),
                None => self.io.take_or_arm(),
            }),
            Handed::Declined { .. } | Handed::Cancelled => None,
        };
        match next {
            Some(Ok(a)) => self.deliver(a),
            Some(Err(e)) => self.fail(e.into()),
            None => {}
        }
    }

    /// The outcome of a hand-off cancelled at the end: it must still fail
    /// the run if the key may be exposed.
    pub(super) fn settled(&mut self, h: Handed<E::Fifo>) {
        self.handoff = Handoff::Idle;
        if let Handed::Failed(e) = h {
            self.fatal.get_or_insert(e);
        }
    }

    /// The child has exited: no watcher may move the slot any more; a lease
    /// whose deadline passed meanwhile is lost all the same (the child may
    /// have been killed by the fencer while we were stopped); systemd hears
    /// we stop (except at a handover) and gets its watchdog back. Returns
    /// by when orphans of the child must be gone.
    pub(super) fn child_exited(&mut self) -> Instant {
        self.io.disable_rearm();
        if let LeasePart::Held(g) = &self.lease {
            if self.io.boot_time() >= g.until() {
                let reason = "the lease deadline passed before the node exited";
                metrics::lease_lost();
                tracing::error!(event = "lease_lost", reason, "LEASE LOST");
                self.fatal.get_or_insert(SuperviseError::Lease(format!(
                    "{reason}. The safe key is restored; restart the service to stand by for the lease again"
                )));
                self.lease.mark_lost();
            }
        }
        // A standby's handover keeps the service running: STOPPING=1 would
        // put the unit in "deactivating" for good, and systemd would then
        // ignore `systemctl stop` (seen under a real systemd).
        if !self.handing_over() {
            self.io.notify(Notice::Stopping);
        }
        // The steps left are bounded by the kill deadline.
        let (after, back) = self.watchdog.after_child();
        self.watchdog = after;
        if let Some(t) = back {
            self.io.notify(Notice::WatchdogTimeout(t));
            self.io.notify(Notice::Ping);
        }
        // Orphans (a keyed node whose cosmovisor died) must be gone by the
        // lease deadline plus the stop grace, whatever else we wait for.
        let lost = matches!(self.lease, LeasePart::Lost(_));
        let by = self.io.now() + if lost { Duration::ZERO } else { ORPHAN_GRACE };
        match self.lease.guard() {
            Some(g) => by.min(self.instant_of(g.until()) + g.grace()),
            None => by,
        }
    }

    fn handing_over(&self) -> bool {
        matches!(
            self.phase,
            Phase::Stopping {
                why: Why::Handover,
                ..
            }
        )
    }

    /// How the run ends: a won lease is kept only by a handover without
    /// error; a held one is released only if no process of the child is
    /// left (`no_orphans`) and we never declared it lost, even if a renewal
    /// confirmed late moved its deadline again: it expires by itself.
    pub(super) fn end(self, no_orphans: bool) -> (E, End<E::Guard, E::Waiter>) {
        let lost = matches!(self.lease, LeasePart::Lost(_));
        let end = End {
            keep_lease: self.handing_over() && self.fatal.is_none(),
            may_release: no_orphans && !lost,
            lease: self.lease,
            fatal: self.fatal,
        };
        (self.io, end)
    }
}

#[cfg(test)]
mod tests;
