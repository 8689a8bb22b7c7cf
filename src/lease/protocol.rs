//! The lease protocol's decisions, with no I/O and no clock of their own.
//! The client ([`super::client`]) feeds them what it read and when, and does
//! what they say; the model checker (`model.rs`, tests only) drives the very
//! same functions, so what is checked is what runs.
//!
//! The two rules that make it safe (docs/design.md, "Failover lease"):
//!
//! - **Time.** A holder keeps its node for [`keep_for`] after *sending* its
//!   last confirmed write and kills it by [`kill_by`]; a standby takes over
//!   only after the version it *received* has not changed for a full
//!   duration. The send precedes the receipt, so the node is dead a sixth of
//!   the duration before any takeover, given clock rates within 1/6.
//!   ([`kill_by`] is the hard end, enforced by the fencer too.)
//! - **Sign state.** Every record carries at least what any holder so far may
//!   have signed: a takeover after expiry writes the skip *into the record*
//!   ([`claim`]), and every later write carries at least the record's state
//!   ([`carried`]). No path of any host can lower it again.
//!
//! [`keep_for`]: super::LeaseSettings::keep_for

use std::time::Duration;

use super::{LeaseError, LeaseSettings, Record, SignState};

/// A reading of a host's own clock (time since an origin of that host;
/// `CLOCK_BOOTTIME` in the client, so time in suspend counts).
pub(crate) type Tick = Duration;

/// What a standby does after reading the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The item does not exist and never did as far as we saw: create it.
    TakeFree,
    /// Released by its holder: take it at once.
    TakeReleased,
    /// The record names this process: one of our own writes landed although
    /// its reply was lost. Renew it; it already carries what it must.
    Reclaim,
    /// The record names this process but is none of its writes: it carries
    /// more than we ever sent, or we sent nothing yet. The holder id is no
    /// secret (every record shows it), so anyone with `PutItem` can write it;
    /// treated as another holder's record (waited out, taken over with a
    /// skip and the jump check), and worth an error line.
    Impersonated {
        /// When a takeover could be due at the earliest.
        due_in: Duration,
    },
    /// Held by another host (or vanished) and not expired yet.
    Wait {
        /// Another holder than at the last read: worth a log line.
        holder_changed: bool,
        /// When a takeover could be due at the earliest.
        due_in: Duration,
    },
    /// Unchanged for a full duration since we received it: take it over.
    TakeExpired {
        /// How long it was unchanged.
        unchanged_for: Duration,
    },
}

/// What a standby remembers between reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Watch {
    /// The version held by another host, and when we first received it.
    seen: Option<(String, Tick)>,
    /// The last record we read, for an item that disappears afterwards.
    last: Option<Record>,
    /// The holder we last reported.
    holder: Option<String>,
}

impl Watch {
    /// Decides what to do about `cur`, received at `now`; `sent` is the
    /// highest state of the writes this process sent to take the lease
    /// (`None`: none yet).
    pub(crate) fn decide(
        &mut self,
        cur: Option<&Record>,
        me: &str,
        sent: Option<SignState>,
        now: Tick,
    ) -> Decision {
        let Some(r) = cur else {
            return match self.last.clone() {
                None => Decision::TakeFree,
                // Nobody of ours deletes the item: someone did, maybe while a
                // holder still runs. Treat it as a holder that stopped
                // renewing: wait a full duration, then take over with a skip.
                Some(last) => self.held(
                    &Record {
                        rvn: String::new(),
                        holder_id: "(vanished)".into(),
                        ..last
                    },
                    now,
                ),
            };
        };
        if is_own_write(r, me, sent) {
            return Decision::Reclaim;
        }
        self.last = Some(r.clone());
        if r.released {
            return Decision::TakeReleased;
        }
        match self.held(r, now) {
            Decision::Wait { due_in, .. } if names(r, me) => Decision::Impersonated { due_in },
            d => d,
        }
    }

    fn held(&mut self, r: &Record, now: Tick) -> Decision {
        let holder_changed = self.holder.as_deref() != Some(r.holder_id.as_str());
        self.holder = Some(r.holder_id.clone());
        let since = match &self.seen {
            Some((rvn, since)) if *rvn == r.rvn => *since,
            _ => {
                self.seen = Some((r.rvn.clone(), now));
                now
            }
        };
        let unchanged_for = now.saturating_sub(since);
        if unchanged_for >= r.duration {
            Decision::TakeExpired { unchanged_for }
        } else {
            Decision::Wait {
                holder_changed,
                due_in: r.duration - unchanged_for,
            }
        }
    }

    /// Our takeover write lost a race: whatever we timed is stale.
    pub(crate) fn lost_race(&mut self) {
        self.seen = None;
    }

    /// The record we last read (for an item that vanished, the one before).
    pub(crate) fn last(&self) -> Option<&Record> {
        self.last.as_ref()
    }
}

/// Whether the record names this process as its unreleased holder.
fn names(r: &Record, me: &str) -> bool {
    r.holder_id == me && !r.released
}

/// Whether `r` can be one of this process's own writes whose reply was
/// lost: it names us, unreleased, and carries no more than the highest
/// state we sent (`sent`; `None` before our first write). A record naming
/// us with more was written by someone else: adopting it would raise our
/// sign state past the jump check ([`claim`]).
pub(crate) fn is_own_write(r: &Record, me: &str, sent: Option<SignState>) -> bool {
    names(r, me) && sent.is_some_and(|s| r.state <= s)
}

/// A takeover of an expired lease, as recorded in the held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Takeover {
    /// The holder whose lease ran out.
    pub(crate) from: String,
    /// The state its record carried.
    pub(crate) carried: SignState,
    /// Heights skipped past it (already in the record we wrote).
    pub(crate) skip: i64,
}

/// The content of a write that takes the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The sign state the new record carries.
    pub(crate) state: SignState,
    /// The validator address the record is bound to, kept as it was.
    pub(crate) address: Option<String>,
    /// Set for a takeover after expiry.
    pub(crate) took_over: Option<Takeover>,
}

/// What a host writes to take the lease after `decision` about `basis` (the
/// record read, or for a vanished item the one before), given its own sign
/// state. Refuses a claim that would raise our state by more than the
/// configured maximum: a forged record must not be able to stop this
/// validator from signing for good.
pub(crate) fn claim(
    decision: &Decision,
    basis: Option<&Record>,
    s: &LeaseSettings,
    local: Option<SignState>,
) -> Result<Claim, LeaseError> {
    let carried = basis.map(|r| r.state).unwrap_or_default();
    let (state, took_over) = match decision {
        Decision::TakeExpired { .. } => {
            let r = basis.expect("an expiry is decided on a record");
            let skip = s.skip_after(r.duration);
            (
                carried.skipped(skip),
                Some(Takeover {
                    from: r.holder_id.clone(),
                    carried,
                    skip,
                }),
            )
        }
        _ => (carried, None),
    };
    let ours = local.unwrap_or_default();
    let jump = state.height.saturating_sub(ours.height);
    if jump > s.max_height_jump {
        return Err(LeaseError::HeightJump {
            name: s.name.clone(),
            carried,
            carried_height: carried.height,
            ours,
            target: state,
            jump,
            max: s.max_height_jump,
        });
    }
    Ok(Claim {
        state,
        address: basis.and_then(|r| r.address.clone()),
        took_over,
    })
}

/// The state a holder writes with a renewal or its release: its node's
/// current state, never below what the lease already carries.
pub(crate) fn carried(held: SignState, local: Option<SignState>) -> SignState {
    local.unwrap_or_default().max(held)
}

/// Until when a holder's node may run after a confirmed write sent at `sent`.
pub(crate) fn node_deadline(sent: Tick, s: &LeaseSettings) -> Tick {
    sent + s.keep_for()
}

/// By when the node must be dead (SIGKILL, by the supervisor or the
/// fencer) given its deadline from [`node_deadline`].
pub(crate) fn kill_by(node_deadline: Tick, s: &LeaseSettings) -> Tick {
    node_deadline + s.stop_grace()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::settings::test_settings;

    fn rec(holder: &str, rvn: &str, released: bool, h: i64) -> Record {
        Record {
            holder_id: holder.into(),
            rvn: rvn.into(),
            duration: Duration::from_secs(6),
            released,
            state: SignState {
                height: h,
                round: 1,
                step: 2,
            },
            address: None,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_held_version_is_taken_only_after_a_full_duration_unchanged() {
        let mut w = Watch::default();
        let a1 = rec("a", "1", false, 10);
        assert!(matches!(
            w.decide(Some(&a1), "me", None, S(100)),
            Decision::Wait {
                holder_changed: true,
                ..
            }
        ));
        assert!(matches!(
            w.decide(Some(&a1), "me", None, S(105)),
            Decision::Wait {
                holder_changed: false,
                ..
            }
        ));
        // Renewed: the clock starts again, the holder is the same.
        let a2 = rec("a", "2", false, 11);
        assert_eq!(
            w.decide(Some(&a2), "me", None, S(106)),
            Decision::Wait {
                holder_changed: false,
                due_in: S(6)
            }
        );
        assert!(matches!(
            w.decide(Some(&a2), "me", None, S(111)),
            Decision::Wait { .. }
        ));
        assert_eq!(
            w.decide(Some(&a2), "me", None, S(112)),
            Decision::TakeExpired {
                unchanged_for: S(6)
            }
        );
    }

    #[test]
    fn released_free_and_own_records() {
        let mut w = Watch::default();
        assert_eq!(w.decide(None, "me", None, S(0)), Decision::TakeFree);
        assert_eq!(
            w.decide(Some(&rec("a", "1", true, 3)), "me", None, S(1)),
            Decision::TakeReleased
        );
        // Ours: one of our writes (state 3) landed with its reply lost.
        let sent = Some(rec("me", "2", false, 3).state);
        assert_eq!(
            w.decide(Some(&rec("me", "2", false, 3)), "me", sent, S(2)),
            Decision::Reclaim
        );
        // Our own record, released: another host may take it, so may we.
        assert_eq!(
            w.decide(Some(&rec("me", "3", true, 3)), "me", None, S(3)),
            Decision::TakeReleased
        );
    }

    /// Issue 20 item 7: a record naming this process is no proof that we
    /// wrote it (the holder id is in every record). Only a state we sent
    /// makes it ours; anything else is waited out as another holder's, and
    /// a takeover from it goes through the skip and the jump check.
    #[test]
    fn a_record_naming_us_with_more_than_we_sent_is_not_ours() {
        let mut s = test_settings(6);
        s.max_height_jump = 1000;
        let sent = Some(rec("me", "x", false, 1000).state);
        let forged = rec("me", "f", false, 100_999);
        let mut w = Watch::default();
        assert_eq!(
            w.decide(Some(&forged), "me", sent, S(0)),
            Decision::Impersonated { due_in: S(6) }
        );
        // Nothing sent yet (a standby's first look): never ours.
        let mut w0 = Watch::default();
        assert!(matches!(
            w0.decide(Some(&rec("me", "g", false, 5)), "me", None, S(0)),
            Decision::Impersonated { .. }
        ));
        // Unchanged for a duration: taken over, and the jump check refuses it.
        let d = w.decide(Some(&forged), "me", sent, S(6));
        assert!(matches!(d, Decision::TakeExpired { .. }), "{d:?}");
        let ours = Some(SignState {
            height: 1000,
            round: 0,
            step: 0,
        });
        let e = claim(&d, w.last(), &s, ours).unwrap_err();
        assert!(matches!(e, LeaseError::HeightJump { .. }), "{e}");
        // A lower or equal state is one we may have sent: ours.
        assert!(is_own_write(&rec("me", "y", false, 999), "me", sent));
        assert!(is_own_write(&rec("me", "y", false, 1000), "me", sent));
        assert!(!is_own_write(&rec("me", "y", false, 1001), "me", sent));
        assert!(!is_own_write(&rec("me", "y", true, 10), "me", sent));
        assert!(!is_own_write(&rec("other", "y", false, 10), "me", sent));
    }

    #[test]
    fn a_vanished_item_is_waited_out_and_taken_over_with_a_skip() {
        let s = test_settings(6);
        let mut w = Watch::default();
        let a = rec("a", "1", false, 50);
        w.decide(Some(&a), "me", None, S(0));
        assert!(matches!(
            w.decide(None, "me", None, S(1)),
            Decision::Wait { .. }
        ));
        let d = w.decide(None, "me", None, S(7));
        assert_eq!(
            d,
            Decision::TakeExpired {
                unchanged_for: S(6)
            }
        );
        let c = claim(&d, w.last(), &s, None).unwrap();
        assert_eq!(c.state.height, 50 + 7);
    }

    #[test]
    fn an_expiry_takeover_writes_the_skip_into_the_record() {
        let s = test_settings(6);
        let r = rec("a", "1", false, 1143);
        let d = Decision::TakeExpired {
            unchanged_for: S(6),
        };
        let c = claim(&d, Some(&r), &s, Some(SignState::default())).unwrap();
        assert_eq!(
            c.state,
            SignState {
                height: 1150,
                round: 0,
                step: 0
            }
        );
        assert_eq!(c.took_over.unwrap().skip, 7);
        // A released lease carries exactly what its holder released.
        let c = claim(&Decision::TakeReleased, Some(&r), &s, None).unwrap();
        assert_eq!(c.state, r.state);
        assert!(c.took_over.is_none());
        // Every later write keeps at least that.
        assert_eq!(carried(c.state, None), c.state);
        assert_eq!(carried(c.state, Some(SignState::default())), c.state);
    }

    #[test]
    fn a_claim_may_not_raise_our_state_past_the_maximum() {
        let mut s = test_settings(6);
        s.max_height_jump = 1000;
        let ours = SignState {
            height: 5000,
            round: 0,
            step: 0,
        };
        let ok = rec("a", "1", true, 6000);
        assert!(claim(&Decision::TakeReleased, Some(&ok), &s, Some(ours)).is_ok());
        let forged = rec("a", "1", true, i64::MAX);
        let e = claim(&Decision::TakeReleased, Some(&forged), &s, Some(ours)).unwrap_err();
        assert!(matches!(e, LeaseError::HeightJump { .. }), "{e}");
        assert!(e.to_string().contains("accept-lease-state"), "{e}");
        // The skip counts: 994 + 7 > 1000.
        let near = rec("a", "1", false, 5994);
        let exp = Decision::TakeExpired {
            unchanged_for: S(6),
        };
        assert!(claim(&exp, Some(&near), &s, Some(ours)).is_err());
        // Saturating, not wrapping, at the top.
        let top = rec("a", "1", false, i64::MAX);
        assert!(claim(&exp, Some(&top), &s, None).is_err());
    }
}
