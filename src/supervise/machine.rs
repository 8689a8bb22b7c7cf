//! The supervisor of one run: its state, one [`Phase`], an event loop of
//! [`Supervisor::on_event`] and [`Supervisor::next_deadline`], and the common
//! exit in [`Supervisor::finish`].

use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::child::{reap_others, status_code, stop_orphans, Child};
use super::handoff::{log_outcome, next_mode, start_delivery, Delivering};
use super::holder::{finish_lease, LeaseGuard, LeaseThread};
use super::keywait::{KeyWait, NodeMatch};
use super::rearm::{spawn_marker_thread, spawn_reader_exit_thread, FastRearm};
use super::signals::Attached;
use super::watchdog::{self, Watchdog};
use super::{Ended, Event, KeyJob, SuperviseError, ORPHAN_GRACE};
use crate::config::Config;
use crate::deliver::{DeliverError, Outcome, ReaderPolicy};
use crate::fence::FenceNews;
use crate::lease::{boot_time, LeaseNews, StateFile};
use crate::metrics;
use crate::notify::Notifier;
use crate::procfs::{self, Pid};
use crate::slot::ArmedFifo;

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
        /// Why (the strongest reason so far: a lost lease outranks all).
        why: Why,
        /// Our own SIGKILL.
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

/// A holder's lease in this run.
enum Holding {
    /// No lease held (none configured, or a standby).
    None,
    /// Held: the node may run until the guard's deadline.
    Valid(LeaseGuard),
    /// Declared lost: never released, the node is being stopped.
    Lost(LeaseGuard),
}

impl Holding {
    fn guard(&self) -> Option<&LeaseGuard> {
        match self {
            Holding::None => None,
            Holding::Valid(g) | Holding::Lost(g) => Some(g),
        }
    }
}

/// What a supervisor starts from.
pub(super) struct Setup<'a> {
    pub(super) cfg: &'a Config,
    pub(super) job: Option<KeyJob>,
    pub(super) child: Child,
    pub(super) policy: ReaderPolicy,
    pub(super) tx: Sender<Event>,
    pub(super) guard: Option<LeaseGuard>,
    pub(super) stop_grace: Duration,
    pub(super) watchdog: Watchdog,
}

/// One run's supervision state.
pub(super) struct Supervisor<'a> {
    cfg: &'a Config,
    job: Option<KeyJob>,
    /// The slot's re-arm lock (with a key job only).
    fast: Option<Arc<FastRearm>>,
    child: Child,
    policy: ReaderPolicy,
    tx: Sender<Event>,
    notifier: Notifier,
    phase: Phase,
    /// The first error that ends the run.
    fatal: Option<SuperviseError>,
    delivering: Option<Delivering>,
    /// The key timeout's clock (keywait.rs).
    wait: KeyWait,
    /// The node that read the last key, while it runs.
    keyed: Option<Pid>,
    holding: Holding,
    /// SIGTERM to SIGKILL when the lease is lost.
    stop_grace: Duration,
    watchdog: Watchdog,
    last_ping: Instant,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(s: Setup<'a>) -> Supervisor<'a> {
        Supervisor {
            fast: s.job.as_ref().map(|j| FastRearm::new(j.slot.clone())),
            cfg: s.cfg,
            job: s.job,
            child: s.child,
            policy: s.policy,
            tx: s.tx,
            notifier: Notifier::from_env(),
            phase: Phase::Running,
            fatal: None,
            delivering: None,
            wait: KeyWait::Idle,
            keyed: None,
            holding: s.guard.map_or(Holding::None, Holding::Valid),
            stop_grace: s.stop_grace,
            watchdog: s.watchdog,
            last_ping: Instant::now(),
        }
    }

    /// Starts the watchers and the first hand-off, and tells systemd we are up.
    pub(super) fn start(&mut self, armed: Option<ArmedFifo>, standby: bool) {
        if let Some(t) = self.watchdog.start_override() {
            self.notifier.set_watchdog_timeout(t);
            self.notifier.ping();
            self.last_ping = Instant::now();
            tracing::info!(
                event = "watchdog_fence",
                timeout_ms = t.as_millis() as u64,
                "systemd's watchdog fences the lease: pings stop before the node's kill deadline"
            );
        }
        match (armed, &self.fast) {
            (Some(a), Some(fast)) => {
                // Without the sign state every marker counts as due (rearm.rs).
                let state = StateFile::of_home(&self.cfg.home, self.cfg.node)
                    .map_err(|e| tracing::warn!(error = %e, "cannot find the node's sign state: every upgrade marker re-arms at once"))
                    .ok();
                spawn_marker_thread(
                    &self.cfg.home.join("data"),
                    self.cfg.node,
                    state,
                    fast.clone(),
                    self.tx.clone(),
                );
                self.deliver(a);
                self.notifier.ready("waiting for the node to read the key");
            }
            _ if standby => self
                .notifier
                .ready("standby: waiting for the failover lease"),
            _ => self
                .notifier
                .ready("running without the SSM key (USE_SSM_KEY=false)"),
        }
    }

    fn deliver(&mut self, a: ArmedFifo) {
        // Never past the lease deadline, checked where a hand-off is decided:
        // a tool that resumes after a stall may find a re-arm event queued
        // before the loop's own check of the deadline has run. The FIFO
        // stays at the key path for the restore.
        self.enforce_lease();
        if matches!(self.holding, Holding::Lost(_)) {
            drop(a);
            return;
        }
        let job = self.job.as_ref().expect("a hand-off needs a key job");
        let exec_child = (job.node == NodeMatch::Child).then(|| self.child.pid());
        self.wait = self.wait.armed(self.keyed, exec_child, Instant::now());
        self.delivering = Some(start_delivery(
            job,
            a,
            &self.policy,
            next_mode(self.cfg),
            &self.tx,
            &self.notifier,
        ));
    }

    fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Enters (or strengthens) the stopping phase. The caller has signalled
    /// the child already.
    fn stop(&mut self, why: Why) {
        self.phase = self.phase.stop(why, Instant::now(), self.stop_grace);
    }

    /// Records the error that ends the run and stops the child.
    fn fail(&mut self, e: SuperviseError) {
        self.fatal.get_or_insert(e);
        self.child.signal(libc::SIGTERM);
        self.stop(Why::Fatal);
    }

    fn disable_rearm(&self) {
        if let Some(fast) = &self.fast {
            fast.disable();
        }
    }

    /// The lease is lost (renewals failed, the fencer fired or died): stop
    /// the node before the lease can expire for others.
    fn lose_lease(&mut self, reason: String) {
        let Holding::Valid(g) = std::mem::replace(&mut self.holding, Holding::None) else {
            return;
        };
        self.holding = Holding::Lost(g);
        metrics::lease_lost();
        tracing::error!(event = "lease_lost", reason = %reason, "LEASE LOST: stopping the node");
        self.notifier
            .status("failover lease lost: stopping the node");
        self.disable_rearm();
        if let Some(d) = &self.delivering {
            d.canceller.cancel();
        }
        self.fatal.get_or_insert(SuperviseError::Lease(format!(
            "{reason}. The node was stopped and the safe key restored; restart the service to stand by for the lease again"
        )));
        self.child.signal(libc::SIGTERM);
        self.stop(Why::LeaseLost);
    }

    /// Loses the lease if its deadline (or the fencer's) has passed.
    fn enforce_lease(&mut self) {
        let Holding::Valid(g) = &self.holding else {
            return;
        };
        let now = boot_time();
        if now >= g.until() {
            let reason = if g.deadline.get() <= now {
                "no renewal of the lease was confirmed in time"
            } else {
                "the fencer process stopped confirming the lease deadline"
            };
            self.lose_lease(reason.to_string());
        }
    }

    /// Sends our own SIGKILL when it is due.
    fn escalate_if_due(&mut self) {
        if let Phase::Stopping {
            why,
            escalate: Escalation::At(t),
        } = self.phase
        {
            if Instant::now() >= t {
                if why == Why::LeaseLost {
                    let fencer = self.holding.guard().map(|g| Pid(g.fence.pid() as i32));
                    self.child.kill_tree(fencer, self.cfg.node);
                } else {
                    self.child.signal(libc::SIGKILL);
                }
                self.phase = Phase::Stopping {
                    why,
                    escalate: Escalation::Done,
                };
            }
        }
    }

    /// The next instant something is due without an event.
    pub(super) fn next_deadline(&self) -> Instant {
        let mut at = Instant::now() + Duration::from_secs(3600);
        if let Holding::Valid(g) = &self.holding {
            at = at.min(g.until_instant());
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
        if let (Some(_), Some(t)) = (&self.delivering, self.wait.wake_at(self.cfg.key_timeout)) {
            at = at.min(t);
        }
        if let Some(t) = watchdog::next_ping(&self.watchdog, self.last_ping) {
            at = at.min(t);
        }
        at
    }

    /// Pings when due and the lease allows it (watchdog.rs); a withheld
    /// ping still ends the interval, so the loop does not spin on it.
    fn ping_watchdog_if_due(&mut self) {
        if !watchdog::next_ping(&self.watchdog, self.last_ping).is_some_and(|t| Instant::now() >= t)
        {
            return;
        }
        let kill_by = self
            .holding
            .guard()
            .map(|g| g.until().saturating_add(g.grace));
        if self.watchdog.may_ping(boot_time(), kill_by) {
            self.notifier.ping();
        } else {
            tracing::debug!(
                event = "watchdog_withheld",
                "watchdog ping withheld: the node's kill deadline is too near"
            );
        }
        self.last_ping = Instant::now();
    }

    /// Runs until the child exits; returns its status.
    pub(super) fn event_loop(&mut self, rx: &Receiver<Event>) -> std::io::Result<ExitStatus> {
        loop {
            self.enforce_lease();
            self.escalate_if_due();
            // Every turn, not only on a quiet wake: a stream of events must
            // not hold the key timeout off.
            self.check_key_timeout();
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            let ev = rx.recv_timeout(wait);
            self.ping_watchdog_if_due();
            match ev {
                Ok(Event::ChildExited(st)) => return st,
                Ok(ev) => self.on_event(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other("event channel closed"))
                }
            }
        }
    }

    /// Looks for a new node process while cosmovisor is between nodes, and
    /// fails the run when a started node has not read its key in time.
    fn check_key_timeout(&mut self) {
        let (Some(d), Some(j)) = (&self.delivering, &self.job) else {
            return;
        };
        let now = Instant::now();
        if self.wait.look_due(now) {
            let found = find_node(&j.node, self.child.pid(), self.cfg.node);
            self.wait = self.wait.looked(found, now);
            if let (KeyWait::NodeStarted { pid, .. }, Some(_)) = (self.wait, found) {
                tracing::info!(
                    event = "node_started",
                    pid = pid.0,
                    timeout_s = self.cfg.key_timeout.as_secs(),
                    "a node process started: it must read the key within the key timeout"
                );
            }
        }
        if let Some((pid, after)) = self.wait.timed_out(now, self.cfg.key_timeout) {
            if self.fatal.is_none() {
                d.canceller.cancel();
                let e = SuperviseError::Timeout {
                    timeout: self.cfg.key_timeout,
                    pid: pid.0,
                    after,
                    path: j.slot.path().to_path_buf(),
                };
                self.fail(e);
            }
        }
    }

    /// Acts on one event (the child's exit ends the loop instead).
    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Signal(libc::SIGCHLD) => reap_others(Some(self.child.pid())),
            Event::Signal(sig) => {
                // The node is about to stop: no re-arm for it.
                self.disable_rearm();
                self.notifier.stopping();
                self.child.forward_stop(sig);
                self.stop(Why::Signal(sig));
            }
            Event::ChildExited(_) => {}
            Event::Delivery(r) => self.on_delivery(r),
            // The watcher thread re-armed before sending it (see Rearmed).
            Event::Marker => {}
            Event::ReaderExited(pid) => {
                tracing::info!(
                    event = "node_exited",
                    pid = pid.0,
                    "the node that read the key exited"
                );
                if self.keyed == Some(pid) {
                    self.keyed = None;
                }
                self.wait = self.wait.keyed_node_exited(pid, Instant::now());
            }
            Event::Rearmed => self.on_rearmed(),
            Event::RearmFailed(e) => self.fail(e.into()),
            Event::Lease(LeaseNews::Lost(reason)) => self.lose_lease(reason),
            Event::Lease(LeaseNews::Failed(reason)) => self.fail(SuperviseError::Lease(reason)),
            Event::Lease(LeaseNews::Acquired) => self.hand_over(),
            Event::Fence(FenceNews::Fired(n)) => self.lose_lease(format!(
                "the fencer killed the node's process tree ({n} processes): the lease deadline passed while this process could not act"
            )),
            Event::Fence(FenceNews::Exited) => self.lose_lease(
                "the fencer process exited: nothing independent of this process would stop the node".into(),
            ),
        }
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
        self.notifier
            .status("got the failover lease: restarting the node with the key");
        self.child.signal(libc::SIGTERM);
        self.stop(Why::Handover);
    }

    /// A watcher re-armed the key path: start that hand-off, unless we stop
    /// (the restore takes the slot back to idle) or one is being verified
    /// (its outcome takes the FIFO).
    fn on_rearmed(&mut self) {
        if self.stopping() || self.delivering.is_some() {
            return;
        }
        if let Some(a) = self.fast.as_ref().and_then(|f| f.take()) {
            self.deliver(a);
        }
    }

    fn on_delivery(&mut self, r: Result<Outcome, DeliverError>) {
        self.delivering = None;
        let Some(fast) = self.fast.clone() else {
            return;
        };
        let (outcome, failure) = log_outcome(r);
        if let Some(e) = failure {
            self.fail(e);
            return;
        }
        let next_fifo = match outcome {
            Some(Outcome::Delivered { reader, next, .. }) => {
                self.notifier
                    .status(&format!("key delivered to pid {}", reader.pid));
                self.wait = self.wait.delivered();
                self.keyed = Some(reader.pid);
                // Its exit re-arms (unless a FIFO is at the key path
                // already) and tells the key timeout cosmovisor is between
                // nodes.
                spawn_reader_exit_thread(reader.pid, fast.clone(), self.tx.clone());
                match (next, fast.take()) {
                    (Some(a), _) => {
                        tracing::info!(
                            event = "re_armed",
                            inode = a.ino,
                            reason = "always-armed",
                            "key FIFO re-armed"
                        );
                        Some(Ok(a))
                    }
                    // The node already wrote its upgrade marker (or exited)
                    // while we were verifying.
                    (None, Some(a)) => (!self.stopping()).then_some(Ok(a)),
                    // From now on the watchers re-arm by themselves.
                    (None, None) => None,
                }
            }
            Some(Outcome::Refused { next, .. } | Outcome::NotRead { next, .. })
                if !self.stopping() =>
            {
                Some(match next {
                    Some(a) => Ok(a),
                    None => fast.take_or_arm().map(|(a, fresh)| {
                        if fresh {
                            tracing::info!(
                                event = "re_armed",
                                inode = a.ino,
                                reason = "after a refused or failed hand-off",
                                "key FIFO re-armed"
                            );
                        }
                        a
                    }),
                })
            }
            _ => None,
        };
        match next_fifo {
            Some(Ok(a)) => self.deliver(a),
            Some(Err(e)) => self.fail(e.into()),
            None => {}
        }
    }

    /// The common exit: stop what is left, restore the slot, and settle the
    /// lease (released, kept for the handover, or left to expire).
    pub(super) fn finish(
        mut self,
        status: std::io::Result<ExitStatus>,
        rx: &Receiver<Event>,
        lease_thread: LeaseThread,
        attached: Attached,
    ) -> Result<Ended, SuperviseError> {
        // No watcher may move the slot once we head for the restore.
        self.disable_rearm();
        // The child may have exited (killed by the fencer while we were
        // stopped) before the loop saw the deadline pass: lost all the same.
        if let Holding::Valid(g) = &self.holding {
            if boot_time() >= g.until() {
                let reason = "the lease deadline passed before the node exited";
                metrics::lease_lost();
                tracing::error!(event = "lease_lost", reason, "LEASE LOST");
                self.fatal.get_or_insert(SuperviseError::Lease(format!(
                    "{reason}. The safe key is restored; restart the service to stand by for the lease again"
                )));
                self.holding = match std::mem::replace(&mut self.holding, Holding::None) {
                    Holding::Valid(g) => Holding::Lost(g),
                    h => h,
                };
            }
        }
        let handover = matches!(
            self.phase,
            Phase::Stopping {
                why: Why::Handover,
                ..
            }
        );
        // A standby's handover keeps the service running: STOPPING=1 would
        // put the unit in "deactivating" for good, and systemd would then
        // ignore `systemctl stop` (seen under a real systemd).
        if !handover {
            self.notifier.stopping();
        }
        // The child is gone: the steps left are bounded by the kill deadline,
        // and the watchdog goes back to the unit's timeout.
        let (after, back) = self.watchdog.after_child();
        self.watchdog = after;
        if let Some(t) = back {
            self.notifier.set_watchdog_timeout(t);
            self.notifier.ping();
        }
        let lost = matches!(self.holding, Holding::Lost(_));
        // Orphans (a keyed node whose cosmovisor died) must be gone by the
        // lease deadline plus the stop grace, whatever else we wait for.
        let orphan_grace = if lost { Duration::ZERO } else { ORPHAN_GRACE };
        let orphans_by = {
            let by = Instant::now() + orphan_grace;
            match self.holding.guard() {
                Some(g) => by.min(g.until_instant() + g.grace),
                None => by,
            }
        };
        self.settle_delivery(rx, orphans_by);
        let fencer = self.holding.guard().map(|g| Pid(g.fence.pid() as i32));
        let me = Pid(std::process::id() as i32);
        stop_orphans(me, fencer, orphans_by, self.cfg.node);
        let code = match &status {
            Ok(st) => {
                tracing::info!(event = "child_exited", status = %st, "child exited");
                metrics::child_exited(match (st.success(), st.code()) {
                    (true, _) => metrics::ChildExit::Success,
                    (false, Some(_)) => metrics::ChildExit::Failure,
                    (false, None) => metrics::ChildExit::Signal,
                });
                status_code(st)
            }
            Err(e) => {
                tracing::error!(error = %e, "lost track of the child");
                1
            }
        };
        if let Some(j) = &self.job {
            let r = j.slot.restore()?;
            tracing::info!(
                event = "restore_done",
                found = r.found,
                "key slot back to idle"
            );
            self.notifier.status("safe key restored");
        }
        if handover {
            // A stop from now on must release the lease we just won, not
            // end the process with it held.
            attached.detach_deferring_stops();
        } else {
            drop(attached);
        }
        // The node is gone and the safe key back: now the lease may go.
        let no_orphans = super::children_except(fencer).is_empty();
        if let Some(g) = match self.holding {
            Holding::Valid(g) | Holding::Lost(g) => Some(g),
            Holding::None => None,
        } {
            // The node is gone: the fencer has nothing left to guard.
            g.deadline.unsubscribe();
            g.fence.finish();
        }
        // A lease we declared lost is never offered back, even if a renewal
        // confirmed late moved its deadline again: it expires by itself.
        let acquired = finish_lease(
            lease_thread,
            handover && self.fatal.is_none(),
            no_orphans && !lost,
        );
        match (self.fatal, acquired) {
            (Some(e), _) => Err(e),
            (None, Some(l)) => Ok(Ended::Acquired(Box::new(l))),
            (None, None) => Ok(Ended::Exit(code)),
        }
    }

    /// Cancels a hand-off still under way and waits (bounded) for its
    /// outcome: it must still reach the log, and an exposure must still
    /// fail the run, even when the child exited first.
    fn settle_delivery(&mut self, rx: &Receiver<Event>, by: Instant) {
        let Some(d) = self.delivering.take() else {
            return;
        };
        d.canceller.cancel();
        let deadline = (Instant::now() + Duration::from_secs(5)).min(by);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::Delivery(r)) => {
                    if let (_, Some(e)) = log_outcome(r) {
                        self.fatal.get_or_insert(e);
                    }
                    break;
                }
                Ok(_) => {}
                // A cancel that lands before the delivery thread is blocked
                // in its writer open (it was just started) wakes nobody.
                Err(_) => d.canceller.cancel(),
            }
        }
        tracing::debug!(inode = d.inode, "pending delivery cancelled");
    }
}

/// A process in our child's tree running the node's command, other than
/// the one that read the last key (read as the node: in split trust the
/// node's `/proc` entries may be hidden from root without `CAP_SYS_PTRACE`).
fn find_node(m: &NodeMatch, child: Pid, node: crate::identity::NodeIdentity) -> Option<Pid> {
    node.as_node(|| {
        let own = procfs::cmdline_of(child);
        procfs::tree_of(child)
            .into_iter()
            .skip(1)
            .find(|&p| procfs::cmdline_of(p).is_some_and(|argv| m.is_node(&argv, own.as_deref())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn at(p: Phase) -> Option<Instant> {
        match p {
            Phase::Stopping {
                escalate: Escalation::At(t),
                ..
            } => Some(t),
            _ => None,
        }
    }

    #[test]
    fn the_operators_stop_is_escalated_by_systemd_ours_by_us() {
        let now = Instant::now();
        let p = Phase::Running.stop(Why::Signal(15), now, GRACE);
        assert_eq!(
            p,
            Phase::Stopping {
                why: Why::Signal(15),
                escalate: Escalation::None
            }
        );
        // An error while stopping: now we escalate too, and the signal
        // stays the reason.
        let p = p.stop(Why::Fatal, now, GRACE);
        assert_eq!(at(p), Some(now + ORPHAN_GRACE));
        assert!(matches!(
            p,
            Phase::Stopping {
                why: Why::Signal(15),
                ..
            }
        ));
        let p = Phase::Running.stop(Why::Handover, now, GRACE);
        assert_eq!(at(p), Some(now + ORPHAN_GRACE));
        // A signal during the handover keeps it a handover.
        assert!(matches!(
            p.stop(Why::Signal(2), now, GRACE),
            Phase::Stopping {
                why: Why::Handover,
                ..
            }
        ));
    }

    #[test]
    fn a_lost_lease_outranks_everything_and_kills_within_the_stop_grace() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let p = Phase::Running.stop(Why::Fatal, now, GRACE);
        let p = p.stop(Why::LeaseLost, later, GRACE);
        assert_eq!(at(p), Some(now + ORPHAN_GRACE).min(Some(later + GRACE)));
        assert!(matches!(
            p,
            Phase::Stopping {
                why: Why::LeaseLost,
                ..
            }
        ));
        // After our SIGKILL to the child alone, a lost lease kills again, the tree.
        let done = Phase::Stopping {
            why: Why::Fatal,
            escalate: Escalation::Done,
        };
        assert_eq!(
            at(done.stop(Why::LeaseLost, later, GRACE)),
            Some(later + GRACE)
        );
        // Once the tree was killed, no further escalation.
        let tree = Phase::Stopping {
            why: Why::LeaseLost,
            escalate: Escalation::Done,
        };
        assert_eq!(tree.stop(Why::LeaseLost, later, GRACE), tree);
        assert_eq!(tree.stop(Why::Fatal, later, GRACE), tree);
        // From the operator's stop: at once within the grace.
        let p = Phase::Running
            .stop(Why::Signal(15), now, GRACE)
            .stop(Why::LeaseLost, now, GRACE);
        assert_eq!(at(p), Some(now + GRACE));
    }
}
