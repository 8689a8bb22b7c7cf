//! The driver of one run: [`Live`] performs the effects the decisions of
//! `core.rs` ask for (the child, the slot, the hand-off threads, systemd);
//! the event loop feeds it the threads' events; [`finish`] is the common
//! exit once the child is gone.

use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::child::{reap_others, status_code, stop_orphans, Child};
use super::core::{Effects, End, Handed, Notice, Supervisor};
use super::handoff::{log_outcome, next_mode, start_delivery, Delivering};
use super::holder::{finish_lease, LeaseGuard, LeaseThread};
use super::keywait::NodeMatch;
use super::rearm::{spawn_reader_exit_thread, FastRearm};
use super::signals::Attached;
use super::{Ended, Event, KeyJob, SuperviseError};
use crate::config::Config;
use crate::deliver::{DeliverError, Outcome, ReaderPolicy};
use crate::lease::boot_time;
use crate::metrics;
use crate::notify::Notifier;
use crate::procfs::{self, Pid};
use crate::slot::{ArmedFifo, SlotError};

/// The effects of a run, on the real child, slot and systemd.
pub(super) struct Live<'a> {
    pub(super) cfg: &'a Config,
    pub(super) job: Option<KeyJob>,
    /// The slot's re-arm lock (with a key job only).
    pub(super) fast: Option<Arc<FastRearm>>,
    pub(super) child: Child,
    pub(super) policy: ReaderPolicy,
    pub(super) tx: Sender<Event>,
    pub(super) notifier: Notifier,
    pub(super) delivering: Option<Delivering>,
    /// Our fencer, spared by every kill and reap of the child's tree.
    pub(super) fencer: Option<Pid>,
}

impl Effects for Live<'_> {
    type Fifo = ArmedFifo;
    type Guard = LeaseGuard;

    fn now(&self) -> Instant {
        Instant::now()
    }
    fn boot_time(&self) -> Duration {
        boot_time()
    }
    fn child_pid(&self) -> Pid {
        self.child.pid()
    }
    fn signal_child(&mut self, sig: i32) {
        self.child.signal(sig);
    }
    fn forward_stop(&mut self, received: i32) {
        self.child.forward_stop(received);
    }
    fn kill_tree(&mut self) {
        self.child.kill_tree(self.fencer, self.cfg.node);
    }
    fn reap_others(&mut self) {
        reap_others(Some(self.child.pid()));
    }
    fn find_node(&mut self) -> Option<Pid> {
        let m = self.job.as_ref().map(|j| &j.node)?;
        find_node(m, self.child.pid(), self.cfg.node)
    }
    fn disable_rearm(&mut self) {
        if let Some(fast) = &self.fast {
            fast.disable();
        }
    }
    fn take_armed(&mut self) -> Option<ArmedFifo> {
        self.fast.as_ref()?.take()
    }
    fn take_or_arm(&mut self) -> Result<ArmedFifo, SlotError> {
        let fast = self.fast.as_ref().expect("a re-arm needs a key job");
        let (a, fresh) = fast.take_or_arm()?;
        if fresh {
            tracing::info!(
                event = "re_armed",
                inode = a.ino,
                reason = "after a refused or failed hand-off",
                "key FIFO re-armed"
            );
        }
        Ok(a)
    }
    fn start_delivery(&mut self, fifo: ArmedFifo) {
        let job = self.job.as_ref().expect("a hand-off needs a key job");
        self.delivering = Some(start_delivery(
            job,
            fifo,
            &self.policy,
            next_mode(self.cfg),
            &self.tx,
            &self.notifier,
        ));
    }
    fn cancel_delivery(&mut self) {
        if let Some(d) = &self.delivering {
            d.canceller.cancel();
        }
    }
    fn watch_reader(&mut self, pid: Pid) {
        if let Some(fast) = &self.fast {
            spawn_reader_exit_thread(pid, fast.clone(), self.tx.clone());
        }
    }
    fn notify(&mut self, n: Notice) {
        match n {
            Notice::Ready(s) => self.notifier.ready(s),
            Notice::Status(s) => self.notifier.status(&s),
            Notice::Stopping => self.notifier.stopping(),
            Notice::Ping => self.notifier.ping(),
            Notice::WatchdogTimeout(t) => self.notifier.set_watchdog_timeout(t),
        }
    }
}

/// A hand-off's outcome, logged and counted, as the decisions take it.
fn handed(r: Result<Outcome, DeliverError>) -> Handed<ArmedFifo> {
    match log_outcome(r) {
        (_, Some(e)) => Handed::Failed(e),
        (Some(Outcome::Delivered { reader, next, .. }), None) => {
            if let Some(a) = &next {
                tracing::info!(
                    event = "re_armed",
                    inode = a.ino,
                    reason = "always-armed",
                    "key FIFO re-armed"
                );
            }
            Handed::Delivered {
                reader: reader.pid,
                next,
            }
        }
        (Some(Outcome::Refused { next, .. } | Outcome::NotRead { next, .. }), None) => {
            Handed::Declined { next }
        }
        _ => Handed::Cancelled,
    }
}

/// Runs until the child exits; returns its status.
pub(super) fn event_loop(
    sup: &mut Supervisor<Live<'_>>,
    rx: &Receiver<Event>,
) -> std::io::Result<ExitStatus> {
    loop {
        sup.tick();
        let wait = sup
            .next_deadline()
            .saturating_duration_since(Instant::now());
        let ev = rx.recv_timeout(wait);
        sup.ping_watchdog_if_due();
        match ev {
            Ok(Event::ChildExited(st)) => return st,
            Ok(ev) => on_event(sup, ev),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("event channel closed"))
            }
        }
    }
}

/// Passes one event to its decision (the child's exit ends the loop instead).
fn on_event(sup: &mut Supervisor<Live<'_>>, ev: Event) {
    match ev {
        Event::Signal(sig) => sup.on_signal(sig),
        Event::ChildExited(_) => {}
        Event::Delivery(r) => {
            sup.io.delivering = None;
            sup.on_delivery(handed(r));
        }
        // The watcher thread re-armed before sending it (see Rearmed).
        Event::Marker => {}
        Event::ReaderExited(pid) => sup.on_reader_exited(pid),
        Event::Rearmed => sup.on_rearmed(),
        Event::RearmFailed(e) => sup.on_rearm_failed(e),
        Event::Lease(n) => sup.on_lease(n),
        Event::Fence(n) => sup.on_fence(n),
    }
}

/// The common exit: stop what is left, restore the slot, and settle the
/// lease (released, kept for the handover, or left to expire).
pub(super) fn finish(
    mut sup: Supervisor<Live<'_>>,
    status: std::io::Result<ExitStatus>,
    rx: &Receiver<Event>,
    lease_thread: LeaseThread,
    attached: Attached,
) -> Result<Ended, SuperviseError> {
    let orphans_by = sup.child_exited();
    settle_delivery(&mut sup, rx, orphans_by);
    let live = &sup.io;
    let me = Pid(std::process::id() as i32);
    stop_orphans(me, live.fencer, orphans_by, live.cfg.node);
    let code = exit_code(&status);
    if let Some(j) = &live.job {
        let r = j.slot.restore()?;
        tracing::info!(
            event = "restore_done",
            found = r.found,
            "key slot back to idle"
        );
        live.notifier.status("safe key restored");
    }
    let no_orphans = super::children_except(live.fencer).is_empty();
    let End {
        guard,
        keep_lease,
        may_release,
        fatal,
    } = sup.end(no_orphans);
    if keep_lease {
        // A stop from now on must release the lease we just won, not end
        // the process with it held.
        attached.detach_deferring_stops();
    } else {
        drop(attached);
    }
    // The node is gone and the safe key back: the fencer has nothing left
    // to guard, and the lease may go.
    if let Some(g) = guard {
        g.deadline.unsubscribe();
        g.fence.finish();
    }
    let acquired = finish_lease(lease_thread, keep_lease, may_release);
    match (fatal, acquired) {
        (Some(e), _) => Err(e),
        (None, Some(l)) => Ok(Ended::Acquired(Box::new(l))),
        (None, None) => Ok(Ended::Exit(code)),
    }
}

/// Logs and counts the child's exit; the code we exit with for it.
fn exit_code(status: &std::io::Result<ExitStatus>) -> u8 {
    match status {
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
    }
}

/// Cancels a hand-off still under way and waits (bounded) for its outcome:
/// it must still reach the log, and an exposure must still fail the run,
/// even when the child exited first.
fn settle_delivery(sup: &mut Supervisor<Live<'_>>, rx: &Receiver<Event>, by: Instant) {
    let Some(d) = sup.io.delivering.take() else {
        return;
    };
    d.canceller.cancel();
    let deadline = (Instant::now() + Duration::from_secs(5)).min(by);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Delivery(r)) => {
                sup.settled(match log_outcome(r) {
                    (_, Some(e)) => Handed::Failed(e),
                    _ => Handed::Cancelled,
                });
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
