//! The holder's side before the supervisor takes over: take the lease (or
//! find that the caller must stand by until it is ours), prepare it for a
//! delivery, and release it on every path that ends before the delivery.

use super::{
    boot_time, Held, LeaseClient, LeaseError, LeaseSettings, Raised, Record, SignState, StateFile,
};

/// A lease this process holds, with its client and the node's state file.
/// Dropped, it is released (carrying the record's state, takeover skip
/// included); [`HeldLease::into_parts`] hands it on instead.
pub(crate) struct HeldLease {
    parts: Option<(LeaseClient, Held, StateFile)>,
    /// When the lease became ours, on the wall clock (Unix ms).
    taken_unix_ms: i64,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HeldLease")
            .field(&self.parts.as_ref().map(|(_, h, _)| h))
            .finish()
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if let Some((c, h, _)) = self.parts.take() {
            release_logged(&c, &h, None);
        }
    }
}

impl HeldLease {
    fn parts(&mut self) -> &mut (LeaseClient, Held, StateFile) {
        self.parts.as_mut().expect("held until handed on")
    }

    /// If we took the lease over after it expired: the height the old
    /// holder's record carried, and when the lease became ours (Unix ms),
    /// by which the old holder's node was fenced.
    pub(crate) fn expiry_takeover(&self) -> Option<(i64, i64)> {
        let (_, held, _) = self.parts.as_ref()?;
        let t = held.took_over.as_ref()?;
        Some((t.carried.height, self.taken_unix_ms))
    }

    /// Readies the lease for delivering the key of `address`: binds the
    /// lease to it (another validator's lease is refused before anything is
    /// touched), raises the node's sign state to the record's, and confirms
    /// the lease once more (the fetch may have taken a while). A renewal
    /// that cannot reach DynamoDB is tolerated while the deadline holds: the
    /// renewal thread retries.
    pub(crate) fn prepare(&mut self, address: &str) -> Result<(), LeaseError> {
        let (client, held, state) = self.parts();
        client.bind_address(held, address)?;
        raise_sign_state(held.state, state)?;
        match client.renew(held, || state.read().ok().flatten()) {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() && boot_time() < held.deadline.get() => {
                tracing::warn!(error = %e, "lease renewal failed; the renewal thread retries");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hands the lease on (to the supervisor), without releasing it.
    pub(crate) fn into_parts(mut self) -> (LeaseClient, Held, StateFile) {
        self.parts.take().expect("held until handed on")
    }
}

/// Raises the node's sign state to what the lease carries. After a takeover
/// of an *expired* lease that already includes the skip past the old
/// holder's last carried state: the record itself carries it, so no later
/// path can lose it.
fn raise_sign_state(target: SignState, state: &StateFile) -> Result<(), LeaseError> {
    if let Raised::From(prev) = state.raise_to(target)? {
        crate::metrics::sign_state_raised(target.hrs());
        // A record anyone with PutItem can write decides this raise: the
        // heights go to the log and an alert (contrib/prometheus), so an
        // operator can compare them with what the last signer signed.
        let heights = target
            .height
            .saturating_sub(prev.map(|p| p.height).unwrap_or(0));
        tracing::info!(
            event = "sign_state_raised",
            path = %state.path.display(),
            from = %prev.map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
            to = %target,
            heights,
            "raised the node's sign state to what the lease carries: it will not sign at or below it"
        );
    }
    Ok(())
}

/// Releases a lease we hold, carrying `last`; logs the outcome.
pub(crate) fn release_logged(c: &LeaseClient, h: &Held, last: Option<SignState>) {
    match c.release(h, last) {
        Ok(released) => tracing::info!(
            event = "lease_released",
            lease = %c.settings.name,
            state = %released,
            takeover_skip = h.took_over.as_ref().map(|t| t.skip).unwrap_or(0),
            skipped_from = %h.took_over.as_ref().map(|t| t.carried.to_string()).unwrap_or_else(|| "-".into()),
            "released the failover lease"
        ),
        Err(e) => tracing::warn!(
            event = "lease_release_failed",
            error = %e,
            "could not release the lease; other hosts take it over when it expires"
        ),
    }
}

/// What the first look at the lease found.
pub(crate) enum FirstLook {
    /// The lease is ours.
    Held(HeldLease),
    /// Another host holds it (or the table cannot be reached): stand by
    /// with this client until it is ours.
    Standby(LeaseClient, StateFile),
}

/// Takes the lease at once if it is free, released or ours; otherwise the
/// caller stands by (runs the keyless node) with the returned client.
pub(crate) fn take_or_stand_by(
    settings: &LeaseSettings,
    state: StateFile,
) -> Result<FirstLook, LeaseError> {
    // Refuse a sign state we cannot read before taking anything.
    let local = state.read()?.unwrap_or_default();
    tracing::info!(event = "lease_config", table = %settings.table, lease = %settings.name, holder = %settings.holder_id, duration_ms = settings.duration.as_millis() as u64, sign_state = %local, "using the failover lease");
    let client = LeaseClient::new(settings.clone())?;
    match client.try_acquire_now(Some(local)) {
        Ok(Some(held)) => Ok(FirstLook::Held(HeldLease::new(client, held, state))),
        Ok(None) => {
            tracing::info!(
                event = "standby",
                "another host holds the failover lease: running without the consensus key until it is ours"
            );
            Ok(FirstLook::Standby(client, state))
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(event = "lease_unreachable", error = %e, "cannot reach the lease table; standing by");
            Ok(FirstLook::Standby(client, state))
        }
        Err(e) => Err(e),
    }
}

impl HeldLease {
    /// A lease taken (at once, or won as a standby); released when dropped.
    pub(crate) fn new(client: LeaseClient, held: Held, state: StateFile) -> HeldLease {
        let t = held.took_over.as_ref();
        tracing::info!(
            event = "lease_acquired",
            lease = %client.settings.name,
            took_over_from = t.map(|t| t.from.as_str()).unwrap_or("-"),
            carried_state = %t.map(|t| t.carried).unwrap_or(held.state),
            takeover_skip = t.map(|t| t.skip).unwrap_or(0),
            state = %held.state,
            "holding the failover lease"
        );
        // The take's write was sent at `held.sent()` (boot clock): that
        // instant on the wall clock.
        let since = boot_time().saturating_sub(held.sent());
        HeldLease {
            taken_unix_ms: crate::sys::unix_ms() - since.as_millis() as i64,
            parts: Some((client, held, state)),
        }
    }

    /// Confirms a lease won as a standby: stopping the keyless node took
    /// time. A renewal that cannot reach DynamoDB is tolerated while the
    /// deadline holds.
    pub(crate) fn confirm(&mut self) -> Result<(), LeaseError> {
        let (client, held, _) = self.parts();
        match client.renew(held, || None) {
            Err(e) if !e.is_transient() || boot_time() >= held.deadline.get() => Err(e),
            _ => Ok(()),
        }
    }
}

/// What `accept-lease-state` found, and did.
pub(crate) enum Acceptance {
    /// The lease has no record: nothing to accept.
    NoLease,
    /// The lease carries another height now: nothing changed.
    Moved(Record),
    /// The lease carried the confirmed height; our state was raised to it
    /// (or already at or above it).
    Accepted {
        /// The record whose state was accepted.
        record: Record,
        /// Our state before.
        before: Option<SignState>,
        /// Whether it changed.
        raised: Raised,
    },
}

/// `accept-lease-state`: the operator confirms the state a lease carries
/// after a refusal for too large a jump. Raises `state` to it only if the
/// lease still carries exactly `height` (it may have moved since the
/// operator looked).
pub(crate) fn accept_state(
    settings: &LeaseSettings,
    state: &StateFile,
    height: i64,
) -> Result<Acceptance, LeaseError> {
    let client = LeaseClient::new(settings.clone())?;
    let Some(record) = client.read()? else {
        return Ok(Acceptance::NoLease);
    };
    if record.state.height != height {
        return Ok(Acceptance::Moved(record));
    }
    let before = state.read()?;
    let raised = state.raise_to(record.state)?;
    Ok(Acceptance::Accepted {
        record,
        before,
        raised,
    })
}
