//! The process's one signal thread, as a handle.
//!
//! INT/TERM/HUP/QUIT, CHLD and ABRT are blocked before any other thread exists, so
//! every thread inherits the mask and only this thread's `sigwait` ever takes
//! them. One thread for the whole process, across runs (a standby's run, then
//! the holder's): a second `sigwait` thread could take a signal meant for one
//! run and hand it to a finished one.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::{Event, SuperviseError};
use crate::identity::NodeIdentity;
use crate::procfs::Pid;

/// The stop signals we take (each reaches the child as [`for_child`] says).
pub(crate) const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The signal the child gets for a stop signal we received: always
/// SIGTERM. cosmovisor 1.7 catches only SIGQUIT and SIGTERM and forwards the
/// one it got to the node (process.go, `Launcher.Run`: `signal.Notify` with
/// those two); SIGINT and SIGHUP end cosmovisor by Go's default action and
/// leave the node running, orphaned; and a Go node takes SIGQUIT as "dump
/// every goroutine and exit 2". SIGTERM is the one stop that reaches the
/// node through cosmovisor and that the node (the SDK's server listens for
/// SIGINT and SIGTERM) handles as a clean shutdown.
pub(crate) fn for_child(received: i32) -> i32 {
    debug_assert!(
        FORWARDED.contains(&received),
        "not a stop signal: {received}"
    );
    libc::SIGTERM
}

#[derive(Default)]
struct Shared {
    /// Where signals go: the current run's channel; `None` between runs.
    sink: Mutex<Option<Sender<Event>>>,
    /// The last stop signal received (0: none), for the stretches between
    /// runs (a standby's handover: stop, fetch, backup) where nobody
    /// forwards it.
    stop: AtomicI32,
    /// While set, a stop signal with no run to take it ends the process at
    /// once: nothing has been changed yet that would need undoing.
    exit_on_stop: AtomicBool,
    /// The current run's child, whose tree a watchdog abort kills.
    child: Mutex<Option<(Pid, NodeIdentity)>>,
}

/// The signal thread's handle.
#[derive(Clone)]
pub(crate) struct Signals(Arc<Shared>);

impl Signals {
    /// Blocks the signals in this thread (and so in every thread created
    /// after it: call before any runtime or helper thread exists) and
    /// starts the thread. Only once per process.
    pub(crate) fn start() -> Result<Signals, SuperviseError> {
        static STARTED: AtomicBool = AtomicBool::new(false);
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(SuperviseError::SignalsStartedTwice);
        }
        let mut sigs = FORWARDED.to_vec();
        sigs.push(libc::SIGCHLD);
        // systemd's watchdog abort (a process-directed kill). Our own
        // `abort()` still works: it unblocks SIGABRT in the calling thread.
        sigs.push(libc::SIGABRT);
        crate::sys::block_signals(&sigs).map_err(super::internal("blocking signals"))?;
        let shared = Arc::new(Shared::default());
        shared.exit_on_stop.store(true, Ordering::SeqCst);
        let me = shared.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let Ok(sig) = crate::sys::wait_signal(&sigs) else {
                    return;
                };
                me.take(sig);
            })
            .map_err(super::internal("signal thread"))?;
        Ok(Signals(shared))
    }

    /// From now on a stop signal between runs is only recorded
    /// ([`Signals::stop_requested`]): the caller is about to change the key
    /// slot and must put it back itself.
    pub(crate) fn defer_stop(&self) {
        self.0.exit_on_stop.store(false, Ordering::SeqCst);
    }

    /// A stop signal (INT/TERM/HUP/QUIT) received so far, if any.
    pub(crate) fn stop_requested(&self) -> Option<i32> {
        match self.0.stop.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Sends signals to `tx` until the returned guard is dropped.
    pub(crate) fn attach(&self, tx: Sender<Event>) -> Attached {
        *self.0.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Attached(self.0.clone())
    }
}

impl Shared {
    fn take(&self, sig: i32) {
        if sig == libc::SIGABRT {
            self.watchdog_abort();
        }
        if sig != libc::SIGCHLD {
            self.stop.store(sig, Ordering::SeqCst);
        }
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        match sink.as_ref() {
            // Orphans adopted as subreaper (SIGCHLD) are reaped by the run.
            Some(tx) => {
                let _ = tx.send(Event::Signal(sig));
            }
            None if sig != libc::SIGCHLD && self.exit_on_stop.load(Ordering::SeqCst) => {
                // Nothing changed yet (the key slot is idle; a lease we may
                // hold simply expires): do not make systemd wait for a fetch.
                tracing::info!(
                    event = "stopped_before_start",
                    signal = sig,
                    "stop requested before anything was changed: exiting"
                );
                std::process::exit(0);
            }
            None => {}
        }
    }
}

impl Shared {
    /// systemd's watchdog gave up on us: it sends SIGABRT, then SIGCONT, to
    /// the main process only (`KillMode=mixed`), and SIGKILLs the rest of
    /// the unit only `TimeoutAbortSec=` later. The node must not outlive us
    /// whatever else is stuck (a stopped tool is the case that matters:
    /// watchdog.rs), so its tree is SIGKILLed from this thread, which needs
    /// nothing of the supervision loop, and then we abort.
    fn watchdog_abort(&self) -> ! {
        let child = *self.child.lock().unwrap_or_else(|e| e.into_inner());
        tracing::error!(
            event = "watchdog_abort",
            child = child.map(|c| c.0 .0),
            "SIGABRT (systemd's watchdog): killing the child's tree, then aborting"
        );
        if let Some((pid, node)) = child {
            // The fencer too: it is stopped or as stuck as we are.
            super::child::kill_descendants(Some(pid), None, node);
        }
        std::process::abort()
    }
}

/// A run's subscription to the signals; dropping it ends it.
pub(crate) struct Attached(Arc<Shared>);

impl Attached {
    /// Names the run's child: a watchdog abort kills its tree.
    pub(crate) fn guard_child(&self, pid: Pid, node: NodeIdentity) {
        *self.0.child.lock().unwrap_or_else(|e| e.into_inner()) = Some((pid, node));
    }

    /// Ends the subscription with stop signals deferred from then on: the
    /// run leaves something to undo (a standby won the lease, which must be
    /// released if a stop comes before the next run takes the signals).
    pub(crate) fn detach_deferring_stops(self) {
        self.0.exit_on_stop.store(false, Ordering::SeqCst);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        *self.0.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.0.child.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stop_signal_reaches_cosmovisor_as_sigterm() {
        for sig in FORWARDED {
            assert_eq!(for_child(sig), libc::SIGTERM, "signal {sig}");
        }
    }
}
