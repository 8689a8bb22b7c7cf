//! The lease's part in a run: the fencer and the deadline the supervisor
//! enforces, the renewal or wait thread, and the release at the end.

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

/// The lease's part of a run.
pub(super) enum LeaseThread {
    None,
    /// Held, and no renewal thread yet: a step before it failed.
    Unstarted(Box<(LeaseClient, Held)>, StateFile),
    Keeper(Keeper, StateFile),
    Waiter(Waiter),
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

/// Stops the lease thread. A holder's lease is released with the node's
/// final sign state, but only if `may_release` (no process of ours is left,
/// and we did not declare it lost): otherwise it expires, and the standby
/// waits the full duration. A standby's
/// newly won lease is returned if `keep`, else released (we are stopping).
pub(super) fn finish_lease(
    t: LeaseThread,
    keep: bool,
    may_release: bool,
) -> Option<(LeaseClient, Held)> {
    match t {
        LeaseThread::None => None,
        LeaseThread::Unstarted(lease, state) => {
            let (c, h) = *lease;
            // As the keeper's stop would hand it back: only while still ours.
            if boot_time() < h.deadline.get() {
                release_held(&c, &h, &state, may_release);
            }
            None
        }
        LeaseThread::Keeper(k, state) => {
            if let Some((c, h)) = k.stop() {
                release_held(&c, &h, &state, may_release);
            }
            None
        }
        LeaseThread::Waiter(w) => match w.finish() {
            Ok((c, h)) if keep => Some((c, h)),
            Ok((c, h)) => {
                release_logged(&c, &h, None);
                None
            }
            Err(_) => None,
        },
    }
}
