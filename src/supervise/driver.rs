//! The driver of one run: [`Live`] performs the effects the decisions of
//! `core.rs` ask for (the child, the slot, the hand-off threads, systemd);
//! the event loop feeds it the threads' events; [`finish`] is the common
//! exit once the child is gone.

use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::child::{reap_others, status_code, stop_orphans, Child};
use super::core::{Effects, Handed, LeasePart, Notice, Supervisor};
use super::handoff::{log_outcome, next_mode, start_delivery, Delivering};
use super::keywait::NodeMatch;
use super::lease_part::{finish_standby, HolderPart};
use super::rearm::{spawn_reader_exit_thread, FastRearm};
use super::signals::Attached;
use super::{Ended, Event, KeyJob, SuperviseError};
use crate::config::Config;
use crate::deliver::{DeliverError, Outcome, ReaderPolicy};
use crate::lease::{boot_time, Waiter};
use crate::metrics;
use crate::notify::Notifier;
use crate::procfs::{self, Pid};
use crate::slot::{ArmedFifo, SlotError};

/// The key's part in a run.
pub(super) enum KeyPart {
    /// No key in this run (`USE_SSM_KEY=false`, or a standby).
    Keyless,
    Keyed {
        job: KeyJob,
        /// The slot's re-arm lock, shared with the watchers.
        fast: Arc<FastRearm>,
        delivering: Option<Delivering>,
    },
}

/// The effects of a run, on the real child, slot and systemd; with the
/// run's signal subscription, held until its end.
pub(super) struct Live<'a> {
    pub(super) cfg: &'a Config,
    pub(super) key: KeyPart,
    pub(super) child: Child,
    pub(super) policy: ReaderPolicy,
    pub(super) tx: Sender<Event>,
    pub(super) notifier: Notifier,
    /// Our fencer, spared by every kill and reap of the child's tree.
    pub(super) fencer: Option<Pid>,
    pub(super) attached: Attached,
}

impl Effects for Live<'_> {
    type Fifo = ArmedFifo;
    type Guard = HolderPart;
    type Waiter = Waiter;

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
        let KeyPart::Keyed { job, .. } = &self.key else {
            return None;
        };
        find_node(&job.node, self.child.pid(), self.cfg.node)
    }
    fn disable_rearm(&mut self) {
        if let KeyPart::Keyed { fast, .. } = &self.key {
            fast.disable();
        }
    }
    fn take_armed(&mut self) -> Option<ArmedFifo> {
        match &self.key {
            KeyPart::Keyed { fast, .. } => fast.take(),
            KeyPart::Keyless => None,
        }
    }
    fn take_or_arm(&mut self) -> Result<ArmedFifo, SlotError> {
        let KeyPart::Keyed { fast, .. } = &self.key else {
            return Err(SlotError::Io {
                op: "arm",
                path: self.cfg.key_path.clone(),
                source: std::io::Error::other("no key in this run"),
            });
        };
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
        if let KeyPart::Keyed {
            job, delivering, ..
        } = &mut self.key
        {
            *delivering = Some(start_delivery(
                job,
                fifo,
                &self.policy,
                next_mode(self.cfg),
                &self.tx,
                &self.notifier,
            ));
        }
    }
    fn cancel_delivery(&mut self) {
        if let KeyPart::Keyed {
            delivering: Some(d),
            ..
        } = &self.key
        {
            d.canceller.cancel();
        }
    }
    fn watch_reader(&mut self, pid: Pid) {
        if let KeyPart::Keyed { fast, .. } = &self.key {
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

impl KeyPart {
    /// The hand-off under way, taken (its outcome arrived, or we settle it).
    fn take_delivering(&mut self) -> Option<Delivering> {
        match self {
            KeyPart::Keyed { delivering, .. } => delivering.take(),
            KeyPart::Keyless => None,
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
            sup.io.key.take_delivering();
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
) -> Result<Ended, SuperviseError> {
    let orphans_by = sup.child_exited();
    settle_delivery(&mut sup, rx, orphans_by);
    let fencer = sup.io.fencer;
    let me = Pid(std::process::id() as i32);
    stop_orphans(me, fencer, orphans_by, sup.io.cfg.node);
    let code = exit_code(&status);
    // A failed restore is reported, and the lease still settled: the node
    // is gone either way.
    let restored = match &sup.io.key {
        KeyPart::Keyed { job, .. } => job.slot.restore().map(|r| {
            tracing::info!(
                event = "restore_done",
                found = r.found,
                "key slot back to idle"
            );
            sup.io.notifier.status("safe key restored");
        }),
        KeyPart::Keyless => Ok(()),
    };
    let no_orphans = super::children_except(fencer).is_empty();
    let (live, end) = sup.end(no_orphans);
    if end.keep_lease {
        // A stop from now on must release the lease we just won, not end
        // the process with it held.
        live.attached.detach_deferring_stops();
    } else {
        drop(live.attached);
    }
    // The node is gone and the safe key back: now the lease may go.
    let acquired = match end.lease {
        LeasePart::Held(h) | LeasePart::Lost(h) => {
            h.finish(end.may_release);
            None
        }
        LeasePart::Standby(w) => finish_standby(w, end.keep_lease),
        LeasePart::None => None,
    };
    match (restored, end.fatal, acquired) {
        (Err(e), _, _) => Err(e.into()),
        (Ok(()), Some(e), _) => Err(e),
        (Ok(()), None, Some(l)) => Ok(Ended::Acquired(Box::new(l))),
        (Ok(()), None, None) => Ok(Ended::Exit(code)),
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
    let Some(d) = sup.io.key.take_delivering() else {
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
