//! The lease's part in a run: a holder's ([`HolderPart`]: the fencer and
//! the deadline the supervisor enforces, the renewal thread, the release at
//! the end) or a standby's (its wait thread).

use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::Duration;

use super::core::LeaseDeadlines;
use super::Event;
use crate::config::Config;
use crate::fence::{Fence, FenceOptions};
use crate::lease::{
    boot_time, release_logged, Held, Keeper, LeaseClient, LeaseNews, StateFile, Waiter,
};

/// A callback that turns lease news into events of this run.
pub(super) fn lease_news(tx: &Sender<Event>) -> Box<dyn Fn(LeaseNews) + Send> {
    let tx = Mutex::new(tx.clone());
    Box::new(move |n| {
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Event::Lease(n));
    })
}

/// How a held lease is renewed in this run.
pub(super) enum Renewal {
    /// No renewal thread (yet): a step before it failed.
    Unstarted(Box<(LeaseClient, Held)>),
    Keeper(Keeper),
}

/// A holder's part in a run: the deadline it may run to (with the fencer
/// that enforces it), how the lease is renewed, and the node's sign-state
/// file, read for the release.
pub(super) struct HolderPart {
    pub(super) guard: LeaseGuard,
    pub(super) renewal: Renewal,
    pub(super) state: StateFile,
}

impl LeaseDeadlines for HolderPart {
    fn until(&self) -> Duration {
        self.guard.until()
    }
    fn renewed_until(&self) -> Duration {
        self.guard.renewed_until()
    }
    fn grace(&self) -> Duration {
        self.guard.grace()
    }
}

impl HolderPart {
    /// Our fencer's pid.
    pub(super) fn fencer(&self) -> crate::procfs::Pid {
        crate::procfs::Pid(self.guard.fence.pid() as i32)
    }

    /// The node is gone: the fencer has nothing left to guard, renewals
    /// stop, and the lease is released with the node's final sign state,
    /// but only if `may_release` (no process of the child is left, and we
    /// did not declare it lost): otherwise it expires, and the standby
    /// waits the full duration.
    pub(super) fn finish(self, may_release: bool) {
        self.guard.deadline.unsubscribe();
        self.guard.fence.finish();
        match self.renewal {
            Renewal::Unstarted(lease) => {
                let (c, h) = *lease;
                // As the keeper's stop would hand it back: only while still ours.
                if boot_time() < h.deadline.get() {
                    release_held(&c, &h, &self.state, may_release);
                }
            }
            Renewal::Keeper(k) => {
                if let Some((c, h)) = k.stop() {
                    release_held(&c, &h, &self.state, may_release);
                }
            }
        }
    }
}

/// Stops a standby's wait: its newly won lease is returned if `keep`, else
/// released (we are stopping).
pub(super) fn finish_standby(w: Waiter, keep: bool) -> Option<(LeaseClient, Held)> {
    match w.finish() {
        Ok((c, h)) if keep => Some((c, h)),
        Ok((c, h)) => {
            release_logged(&c, &h, None);
            None
        }
        Err(_) => None,
    }
}

/// A holder's lease deadline as the supervisor enforces it: the earlier of
/// the lease's own (moved by confirmed renewals) and the one the fencer has
/// acknowledged (a stalled or dead fencer stops the node too).
pub(super) struct LeaseGuard {
    pub(super) deadline: crate::lease::Deadline,
    pub(super) grace: Duration,
    pub(super) fence: Fence,
}

impl LeaseDeadlines for LeaseGuard {
    fn until(&self) -> Duration {
        self.deadline
            .get()
            .min(self.fence.enforced().saturating_sub(self.grace))
    }
    fn renewed_until(&self) -> Duration {
        self.deadline.get()
    }
    fn grace(&self) -> Duration {
        self.grace
    }
}

/// Starts the fencer and has it enforce the lease deadline before the node
/// exists; every later confirmed renewal is passed on to it.
pub(super) fn start_fence(
    cfg: &Config,
    held: &Held,
    lease: &crate::lease::LeaseSettings,
    tx: &Sender<Event>,
) -> Result<LeaseGuard, String> {
    let opts = FenceOptions {
        node: cfg.node,
        json: matches!(cfg.log_format, crate::config::LogFormat::Json),
    };
    if crate::failpoint_hit!("fence-start") {
        return Err("cannot start the fencer process: failpoint fence-start".into());
    }
    let tx = Mutex::new(tx.clone());
    let fence = Fence::start(opts, move |n| {
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Event::Fence(n));
    })
    .map_err(|e| format!("cannot start the fencer process: {e}"))?;
    let kill_by = {
        let lease = lease.clone();
        move |d| crate::lease::protocol::kill_by(d, &lease)
    };
    if !fence.extend_and_confirm(kill_by(held.deadline.get()), Duration::from_secs(2)) {
        return Err("the fencer process did not confirm the lease deadline".into());
    }
    let extend = fence.extender();
    held.deadline.subscribe(move |d| extend(kill_by(d)));
    tracing::info!(
        event = "fence_started",
        pid = fence.pid(),
        "fencer process enforces the lease deadline"
    );
    Ok(LeaseGuard {
        deadline: held.deadline.clone(),
        grace: lease.stop_grace(),
        fence,
    })
}

/// Releases a holder's lease with the node's final sign state, if it may.
fn release_held(c: &LeaseClient, h: &Held, state: &StateFile, may_release: bool) {
    if !may_release {
        tracing::warn!(
            event = "lease_kept",
            "not releasing the lease early (declared lost, or a process of the child outlived the stop); it expires by itself"
        );
        return;
    }
    match state.read() {
        Ok(Some(final_state)) => release_logged(c, h, Some(final_state)),
        // Released with a stale state, the next host would take
        // it without skipping ahead: let it expire instead.
        other => tracing::warn!(
            event = "lease_kept",
            state = ?other.map_err(|e| e.to_string()),
            "cannot read the node's final sign state: not releasing the lease; it expires by itself"
        ),
    }
}
