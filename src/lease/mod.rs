//! Failover lease (docs/design.md, "Failover lease"): at most one host
//! delivers the key at any instant, and the signer that takes over never
//! signs at or below anything its predecessors may have signed.
//!
//! One DynamoDB item per validator key. Every write replaces its record
//! version (`rvn`, random) under a condition on the version the writer last
//! saw, so two hosts can never both believe their write won. No clock is
//! compared across hosts; each host measures only its own `CLOCK_BOOTTIME`
//! (time in suspend counts):
//!
//! - the holder renews every `duration/3`, and if no renewal has succeeded for
//!   `duration - duration/3` since it *sent* the last successful one, its node
//!   is stopped (SIGTERM, SIGKILL a sixth of the duration later) — by the
//!   supervisor, and independently of it by the fencer process
//!   ([`crate::fence`]), so a stalled tool cannot keep its node signing;
//! - a contender that sees a record held by someone else starts timing when it
//!   *receives* that record, and may take over only after a full `duration`
//!   (the holder's, from the record) without the version changing, and only by
//!   a write conditioned on that same version.
//!
//! Every write carries the highest height/round/step any holder may have
//! signed: a takeover after expiry writes the skip into the record itself, so
//! no later release, renewal or error path can drop it ([`protocol`]). A host
//! that acquires the lease raises its own state file to the record's state
//! before the node gets the key, and CometBFT then refuses to sign at or below
//! it.
//!
//! Files: [`settings`] (configuration and ids), [`state`] (the node's sign
//! state file), [`record`] (the item and its strict codec), [`protocol`]
//! (pure decisions, shared with the model checker), [`client`] (DynamoDB),
//! [`take`] (taking the lease or standing by, preparing it, releasing it
//! on drop),
//! [`threads`] (renewal and wait threads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod client;
mod error;
#[cfg(test)]
mod model;
pub(crate) mod protocol;
mod record;
mod settings;
mod state;
mod take;
mod threads;

pub(crate) use client::{Held, LeaseClient};
pub(crate) use error::LeaseError;
pub(crate) use record::Record;
pub(crate) use settings::LeaseSettings;
pub(crate) use state::{Raised, SignState, StateFile};
pub(crate) use take::{
    accept_state, release_logged, take_or_stand_by, Acceptance, FirstLook, HeldLease,
};
pub(crate) use threads::{Keeper, LeaseNews, Stop, Waiter};

/// Now on `CLOCK_BOOTTIME`, the clock every lease time is measured on.
pub(crate) fn boot_time() -> Duration {
    crate::sys::boot_time()
}

/// Until when the holder's node may run (boot clock): moved by each
/// confirmed renewal, read by the supervisor, which enforces it whatever the
/// renewal thread is doing (blocked in a request, or dead), and passed on to
/// the fencer by a subscriber.
#[derive(Clone)]
pub(crate) struct Deadline {
    nanos: Arc<AtomicU64>,
    #[allow(clippy::type_complexity)]
    subscriber: Arc<Mutex<Option<Box<dyn Fn(Duration) + Send>>>>,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Deadline").field(&self.get()).finish()
    }
}

impl Deadline {
    fn new(at: Duration) -> Deadline {
        Deadline {
            nanos: Arc::new(AtomicU64::new(at.as_nanos() as u64)),
            subscriber: Arc::new(Mutex::new(None)),
        }
    }

    /// The current deadline (boot clock).
    pub(crate) fn get(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    /// Moves it (only confirmed writes do) and tells the subscriber.
    fn set(&self, at: Duration) {
        self.nanos.store(at.as_nanos() as u64, Ordering::SeqCst);
        if let Some(f) = &*self.subscriber.lock().unwrap_or_else(|e| e.into_inner()) {
            f(at);
        }
    }

    /// Calls `f` with the deadline now and after every move.
    pub(crate) fn subscribe(&self, f: impl Fn(Duration) + Send + 'static) {
        let mut s = self.subscriber.lock().unwrap_or_else(|e| e.into_inner());
        f(self.get());
        *s = Some(Box::new(f));
    }

    /// No more calls to the subscriber.
    pub(crate) fn unsubscribe(&self) {
        *self.subscriber.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
