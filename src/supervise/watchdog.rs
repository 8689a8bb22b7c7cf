//! systemd's watchdog: liveness in every run, and under a lease in the
//! unprivileged mode the fence that the node's uid cannot stop.
//!
//! In the unprivileged unit the node, cosmovisor, this tool and its fencer
//! all run as one uid, and a process of that uid may SIGSTOP the tool and the
//! fencer (and cosmovisor) and let the node sign on past the lease. Measured
//! before this (issue 20 item 3): the standby's node had the key 6.0 s after
//! the stop, the old node died only at SIGCONT 20.5 s after it, both held the
//! key for 14.5 s. (In split trust the same stop is refused: EPERM.)
//!
//! PID 1 is the one process on the host the node's uid cannot stop. When
//! the `WATCHDOG=1` pings stop for the watchdog timeout, systemd sends the
//! main process the unit's `WatchdogSignal=` (SIGABRT) and SIGCONT, and
//! SIGKILLs the unit's whole cgroup if it has not exited `TimeoutAbortSec=`
//! later (`KillMode=mixed` gives the first signal to the main process only).
//! Our signal thread takes that SIGABRT and SIGKILLs the node's tree itself
//! before exiting (`signals.rs`); a tool stopped again before it can is left
//! to the cgroup kill. So, under a lease in that mode ([`Watchdog::Fence`]):
//! - the timeout becomes [`fence_timeout`] when that is shorter than the
//!   unit's (`WATCHDOG_USEC=`, which systemd takes from the main process), and
//! - a ping goes out only while the node's kill deadline is at least the
//!   timeout plus [`ABORT_GRACE`] away ([`Watchdog::may_ping`]).
//!
//! A tool stopped right after a ping is then killed with its node by that
//! deadline, the fencer's own, which comes a sixth of the duration before any
//! standby may take the lease over.

use std::time::{Duration, Instant};

use crate::lease::LeaseSettings;

/// The `TimeoutAbortSec=` the unprivileged unit ships: how long systemd
/// leaves a watchdog-aborted main process before it SIGKILLs the cgroup.
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Shorter timeouts would trip on an ordinary scheduling delay.
const MIN_FENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the watchdog is in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watchdog {
    /// None configured (not under systemd, or no `WatchdogSec=`).
    Off,
    /// Pings while the supervision loop turns.
    Liveness { timeout: Duration },
    /// Also the lease's fence: `timeout` (at most the unit's `unit`),
    /// pinged only while the kill deadline allows it.
    Fence { timeout: Duration, unit: Duration },
}

/// Why a lease in the unprivileged mode has no fence the node's uid cannot
/// stop (logged as a warning at every start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unfenced {
    /// No systemd watchdog (`WATCHDOG_USEC` unset).
    NoWatchdog,
    /// The lease is too short for a watchdog timeout of at least 1 s.
    LeaseTooShort(Duration),
}

impl std::fmt::Display for Unfenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfenced::NoWatchdog => f.write_str(
                "no systemd watchdog (WATCHDOG_USEC is not set): run under the ssm-cosmovisor@ unit, which has WatchdogSec=, or use the split-trust unit",
            ),
            Unfenced::LeaseTooShort(d) => write!(
                f,
                "the lease duration {d:?} leaves no watchdog timeout of at least {MIN_FENCE_TIMEOUT:?} before the kill deadline: use SSM_COSMOVISOR_LEASE_DURATION=6s or more"
            ),
        }
    }
}

/// The longest watchdog timeout that fences a lease of these settings: the
/// kill deadline is `keep_for + stop_grace` after a renewal is sent, the
/// next renewal is due `renew_every` later and may take half of that again
/// to land, and the cgroup kill may come [`ABORT_GRACE`] after the timeout.
/// 9 s for the default 30 s lease, 1 s for 6 s; `None` under 1 s.
pub(crate) fn fence_timeout(s: &LeaseSettings) -> Option<Duration> {
    let slack = s.renew_every() + s.renew_every() / 2 + ABORT_GRACE;
    (s.keep_for() + s.stop_grace())
        .checked_sub(slack)
        .filter(|t| *t >= MIN_FENCE_TIMEOUT)
}

/// The watchdog of a run: `unit` is systemd's timeout (`WATCHDOG_USEC`),
/// `lease` the lease this run holds, `stoppable` whether the node's uid may
/// signal us (not split trust).
pub(crate) fn choose(
    unit: Option<Duration>,
    lease: Option<&LeaseSettings>,
    stoppable: bool,
) -> (Watchdog, Option<Unfenced>) {
    let fenced_lease = lease.filter(|_| stoppable);
    match (unit, fenced_lease) {
        (None, None) => (Watchdog::Off, None),
        (None, Some(_)) => (Watchdog::Off, Some(Unfenced::NoWatchdog)),
        (Some(u), None) => (Watchdog::Liveness { timeout: u }, None),
        (Some(u), Some(l)) => match fence_timeout(l) {
            Some(f) => (
                Watchdog::Fence {
                    timeout: f.min(u),
                    unit: u,
                },
                None,
            ),
            None => (
                Watchdog::Liveness { timeout: u },
                Some(Unfenced::LeaseTooShort(l.duration)),
            ),
        },
    }
}

impl Watchdog {
    /// How often a ping is due: half the timeout, a quarter for a fence
    /// (a late turn of the loop must not cost the validator its node).
    pub(crate) fn interval(&self) -> Option<Duration> {
        match *self {
            Watchdog::Off => None,
            Watchdog::Liveness { timeout } => Some(timeout / 2),
            Watchdog::Fence { timeout, .. } => Some(timeout / 4),
        }
    }

    /// The timeout to send systemd (`WATCHDOG_USEC=`) at the start of the
    /// run, when it differs from the unit's.
    pub(crate) fn start_override(&self) -> Option<Duration> {
        match *self {
            Watchdog::Fence { timeout, unit } if timeout < unit => Some(timeout),
            _ => None,
        }
    }

    /// Whether a ping may go out at `now` (boot clock) while the node must
    /// be dead by `kill_by` (`None`: no node under a lease).
    pub(crate) fn may_ping(&self, now: Duration, kill_by: Option<Duration>) -> bool {
        match (*self, kill_by) {
            (Watchdog::Off, _) => false,
            (Watchdog::Fence { timeout, .. }, Some(k)) => now + timeout + ABORT_GRACE <= k,
            _ => true,
        }
    }

    /// Once the child has exited: liveness at the unit's timeout (the steps
    /// left are bounded by the kill deadline), and the timeout to send back
    /// to systemd if the run had changed it.
    pub(crate) fn after_child(&self) -> (Watchdog, Option<Duration>) {
        match *self {
            Watchdog::Fence { timeout, unit } => (
                Watchdog::Liveness { timeout: unit },
                (timeout < unit).then_some(unit),
            ),
            w => (w, None),
        }
    }
}

/// When the next ping is due after `last`, if any.
pub(crate) fn next_ping(w: &Watchdog, last: Instant) -> Option<Instant> {
    w.interval().map(|iv| last + iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(secs: u64) -> LeaseSettings {
        LeaseSettings {
            table: "t".into(),
            name: "n".into(),
            holder_id: "h".into(),
            duration: Duration::from_secs(secs),
            region: None,
            takeover_heights: 0,
            max_height_jump: 0,
        }
    }

    #[test]
    fn the_fence_timeout_fits_the_lease() {
        assert_eq!(fence_timeout(&lease(30)), Some(Duration::from_secs(9)));
        assert_eq!(fence_timeout(&lease(6)), Some(Duration::from_secs(1)));
        assert_eq!(fence_timeout(&lease(3)), None);
        // Whatever the duration: a ping at the end of a renewal period still
        // leaves the timeout and the abort grace before the kill deadline.
        for secs in [6, 8, 12, 30, 60, 600] {
            let l = lease(secs);
            let t = fence_timeout(&l).unwrap();
            let last_ping_before_renewal = l.renew_every() + l.renew_every() / 2;
            assert!(
                last_ping_before_renewal + t + ABORT_GRACE <= l.keep_for() + l.stop_grace(),
                "{secs}s"
            );
            assert!(l.keep_for() + l.stop_grace() < l.duration, "{secs}s");
        }
    }

    #[test]
    fn a_fence_only_where_the_node_can_stop_us_and_a_watchdog_exists() {
        let unit = Some(Duration::from_secs(120));
        let l = lease(30);
        assert_eq!(choose(None, None, true), (Watchdog::Off, None));
        assert_eq!(
            choose(None, Some(&l), true),
            (Watchdog::Off, Some(Unfenced::NoWatchdog))
        );
        // Split trust: the node cannot stop us; liveness only.
        assert_eq!(
            choose(unit, Some(&l), false),
            (
                Watchdog::Liveness {
                    timeout: Duration::from_secs(120)
                },
                None
            )
        );
        let (w, none) = choose(unit, Some(&l), true);
        assert_eq!(none, None);
        assert_eq!(
            w,
            Watchdog::Fence {
                timeout: Duration::from_secs(9),
                unit: Duration::from_secs(120)
            }
        );
        assert_eq!(w.start_override(), Some(Duration::from_secs(9)));
        // A unit watchdog already shorter is kept as it is.
        let (w, _) = choose(Some(Duration::from_secs(5)), Some(&l), true);
        assert_eq!(w.start_override(), None);
        assert_eq!(w.interval(), Some(Duration::from_millis(1250)));
        let (w, why) = choose(unit, Some(&lease(3)), true);
        assert!(matches!(w, Watchdog::Liveness { .. }));
        assert_eq!(why, Some(Unfenced::LeaseTooShort(Duration::from_secs(3))));
    }

    #[test]
    fn pings_stop_in_time_for_the_kill_deadline() {
        let w = Watchdog::Fence {
            timeout: Duration::from_secs(9),
            unit: Duration::from_secs(120),
        };
        let s = Duration::from_secs;
        assert!(w.may_ping(s(100), Some(s(110))));
        assert!(!w.may_ping(s(100), Some(s(109) + Duration::from_millis(999))));
        // No node under the lease (between nodes, or none yet): liveness.
        assert!(w.may_ping(s(100), None));
        let live = Watchdog::Liveness { timeout: s(120) };
        assert!(live.may_ping(s(100), Some(s(101))));
        assert!(!Watchdog::Off.may_ping(s(0), None));
        let (after, back) = w.after_child();
        assert_eq!(after, Watchdog::Liveness { timeout: s(120) });
        assert_eq!(back, Some(s(120)));
    }
}
