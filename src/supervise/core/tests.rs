//! The ordering rules of a run, driven through a record of effects: each
//! test plays a sequence of events as the threads could deliver them and
//! checks what the supervisor did.

use std::cell::Cell;
use std::rc::Rc;

use super::*;

const GRACE: Duration = Duration::from_secs(1);
const KEY_TIMEOUT: Duration = Duration::from_secs(20);
const CHILD: Pid = Pid(100);
const NODE: Pid = Pid(200);

/// One thing the supervisor did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    Signal(i32),
    Forward(i32),
    KillTree,
    Reap,
    DisableRearm,
    /// A new FIFO was armed (not one a watcher or a delivery left).
    Arm(u32),
    Deliver(u32),
    Cancel,
    Watch(Pid),
    Notice(Notice),
}

/// Both clocks, moved together by the test.
struct Clock {
    start: Instant,
    elapsed: Cell<Duration>,
}

const BOOT_AT_START: Duration = Duration::from_secs(1000);

struct Fake {
    clock: Rc<Clock>,
    did: Vec<Did>,
    /// A FIFO a watcher armed, waiting to be taken.
    armed: Option<u32>,
    next_fifo: u32,
    node: Option<Pid>,
    arm_fails: bool,
}

struct Guard {
    until: Rc<Cell<Duration>>,
}

impl LeaseDeadlines for Guard {
    fn until(&self) -> Duration {
        self.until.get()
    }
    fn renewed_until(&self) -> Duration {
        self.until.get()
    }
    fn grace(&self) -> Duration {
        GRACE
    }
}

impl Effects for Fake {
    type Fifo = u32;
    type Guard = Guard;
    type Waiter = ();
    fn now(&self) -> Instant {
        self.clock.start + self.clock.elapsed.get()
    }
    fn boot_time(&self) -> Duration {
        BOOT_AT_START + self.clock.elapsed.get()
    }
    fn child_pid(&self) -> Pid {
        CHILD
    }
    fn signal_child(&mut self, sig: i32) {
        self.did.push(Did::Signal(sig));
    }
    fn forward_stop(&mut self, received: i32) {
        self.did.push(Did::Forward(received));
    }
    fn kill_tree(&mut self) {
        self.did.push(Did::KillTree);
    }
    fn reap_others(&mut self) {
        self.did.push(Did::Reap);
    }
    fn find_node(&mut self) -> Option<Pid> {
        self.node
    }
    fn disable_rearm(&mut self) {
        self.did.push(Did::DisableRearm);
    }
    fn take_armed(&mut self) -> Option<u32> {
        self.armed.take()
    }
    fn take_or_arm(&mut self) -> Result<u32, SlotError> {
        if self.arm_fails {
            return Err(SlotError::Io {
                op: "arm",
                path: "/k".into(),
                source: std::io::Error::other("test"),
            });
        }
        Ok(self.armed.take().unwrap_or_else(|| {
            self.next_fifo += 1;
            self.did.push(Did::Arm(self.next_fifo));
            self.next_fifo
        }))
    }
    fn start_delivery(&mut self, fifo: u32) {
        self.did.push(Did::Deliver(fifo));
    }
    fn cancel_delivery(&mut self) {
        self.did.push(Did::Cancel);
    }
    fn watch_reader(&mut self, pid: Pid) {
        self.did.push(Did::Watch(pid));
    }
    fn notify(&mut self, n: Notice) {
        self.did.push(Did::Notice(n));
    }
}

/// A run under test: the supervisor, its clock and its lease deadline.
struct Run {
    sup: Supervisor<Fake>,
    clock: Rc<Clock>,
    until: Rc<Cell<Duration>>,
}

impl Run {
    /// A run of cosmovisor (`exec_node`: of the node itself); holding a
    /// lease valid for `lease` from now, if given.
    fn new(lease: Option<Duration>, exec_node: bool, watchdog: Watchdog) -> Run {
        let clock = Rc::new(Clock {
            start: Instant::now(),
            elapsed: Cell::new(Duration::ZERO),
        });
        let until = Rc::new(Cell::new(BOOT_AT_START + lease.unwrap_or_default()));
        let fake = Fake {
            clock: clock.clone(),
            did: Vec::new(),
            armed: None,
            next_fifo: 100,
            node: None,
            arm_fails: false,
        };
        let rules = Rules {
            key_timeout: KEY_TIMEOUT,
            child_is_node: exec_node,
            key_path: "/k".into(),
        };
        let part = match lease {
            Some(_) => LeasePart::Held(Guard {
                until: until.clone(),
            }),
            None => LeasePart::None,
        };
        Run {
            sup: Supervisor::new(fake, rules, part, watchdog),
            clock,
            until,
        }
    }

    fn standby() -> Run {
        let mut r = Run::new(None, false, Watchdog::Off);
        r.sup.lease = LeasePart::Standby(());
        r
    }

    fn holder(lease: Duration) -> Run {
        Run::new(Some(lease), false, Watchdog::Off)
    }

    fn advance(&self, d: Duration) {
        self.clock.elapsed.set(self.clock.elapsed.get() + d);
    }

    /// What the supervisor did since the last call.
    fn did(&mut self) -> Vec<Did> {
        std::mem::take(&mut self.sup.io.did)
    }

    /// A first hand-off through FIFO 1, read by the node.
    fn delivered_once(&mut self) {
        self.sup.start(Some(1));
        self.sup.on_delivery(Handed::Delivered {
            reader: NODE,
            next: None,
        });
        self.did();
    }
}

fn delivers(did: &[Did]) -> Vec<u32> {
    did.iter()
        .filter_map(|d| match d {
            Did::Deliver(f) => Some(*f),
            _ => None,
        })
        .collect()
}

fn lease_error(e: &Option<SuperviseError>) -> bool {
    matches!(e, Some(SuperviseError::Lease(_)))
}

#[test]
fn a_lost_lease_during_a_hand_off_cancels_it_and_never_re_arms() {
    let mut r = Run::holder(Duration::from_secs(30));
    r.sup.start(Some(1));
    assert_eq!(delivers(&r.did()), [1]);
    r.sup.on_lease(LeaseNews::Lost("renewals failed".into()));
    let did = r.did();
    let pos = |d: &Did| {
        did.iter()
            .position(|x| x == d)
            .unwrap_or_else(|| panic!("no {d:?} in {did:?}"))
    };
    // The watchers stop and the hand-off is cancelled before the node is told.
    assert!(
        pos(&Did::DisableRearm) < pos(&Did::Signal(libc::SIGTERM)),
        "{did:?}"
    );
    assert!(
        pos(&Did::Cancel) < pos(&Did::Signal(libc::SIGTERM)),
        "{did:?}"
    );
    // Whatever the cancelled hand-off reports, and whatever a watcher
    // armed, no key goes out and nothing is armed again.
    r.sup.on_delivery(Handed::Declined { next: None });
    r.sup.on_delivery(Handed::Declined { next: Some(7) });
    r.sup.io.armed = Some(8);
    r.sup.on_rearmed();
    r.sup.on_delivery(Handed::Delivered {
        reader: NODE,
        next: Some(9),
    });
    let did = r.did();
    assert!(delivers(&did).is_empty(), "{did:?}");
    assert!(!did.iter().any(|d| matches!(d, Did::Arm(_))), "{did:?}");
    let end = r.sup.end(true).1;
    assert!(!end.may_release && lease_error(&end.fatal));
}

#[test]
fn no_hand_off_starts_after_the_deadline_even_from_an_event_queued_before_the_loop_saw_it() {
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    // The tool was stopped past the deadline; on resume a watcher's re-arm
    // is the first event, before any tick.
    r.advance(Duration::from_secs(6));
    r.sup.io.armed = Some(2);
    r.sup.on_rearmed();
    let did = r.did();
    assert!(delivers(&did).is_empty(), "{did:?}");
    assert!(did.contains(&Did::Signal(libc::SIGTERM)), "{did:?}");
    // And a refusal's FIFO after it.
    r.sup.on_delivery(Handed::Declined { next: Some(3) });
    assert!(delivers(&r.did()).is_empty());
    assert!(lease_error(&r.sup.end(true).1.fatal));
}

#[test]
fn a_renewed_lease_goes_on_delivering() {
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    r.advance(Duration::from_secs(4));
    r.until.set(r.until.get() + Duration::from_secs(5));
    r.advance(Duration::from_secs(2));
    r.sup.io.armed = Some(2);
    r.sup.on_rearmed();
    assert_eq!(delivers(&r.did()), [2]);
    r.sup.on_delivery(Handed::Delivered {
        reader: Pid(201),
        next: None,
    });
    r.sup.child_exited();
    let end = r.sup.end(true).1;
    assert!(end.may_release && end.fatal.is_none() && !end.keep_lease);
}

#[test]
fn a_handover_never_sends_stopping_and_keeps_the_lease() {
    let mut r = Run::standby();
    r.sup.start(None);
    assert_eq!(
        r.did(),
        [Did::Notice(Notice::Ready(
            "standby: waiting for the failover lease"
        ))]
    );
    r.sup.on_lease(LeaseNews::Acquired);
    // Won twice (a late duplicate): one stop.
    r.sup.on_lease(LeaseNews::Acquired);
    r.sup.child_exited();
    let did = r.did();
    assert!(!did.contains(&Did::Notice(Notice::Stopping)), "{did:?}");
    assert_eq!(
        did.iter()
            .filter(|d| **d == Did::Signal(libc::SIGTERM))
            .count(),
        1,
        "{did:?}"
    );
    assert!(r.sup.end(true).1.keep_lease);
}

#[test]
fn a_handover_that_failed_releases_and_an_operators_stop_wins_over_a_late_win() {
    let mut r = Run::standby();
    r.sup.start(None);
    r.sup.on_lease(LeaseNews::Acquired);
    r.sup.on_rearm_failed(SlotError::Io {
        op: "arm",
        path: "/k".into(),
        source: std::io::Error::other("test"),
    });
    r.sup.child_exited();
    assert!(!r.sup.end(true).1.keep_lease);
    // Stopped by the operator, then the lease comes: no handover.
    let mut r = Run::standby();
    r.sup.start(None);
    r.sup.on_signal(libc::SIGTERM);
    r.sup.on_lease(LeaseNews::Acquired);
    r.sup.child_exited();
    let did = r.did();
    assert!(did.contains(&Did::Notice(Notice::Stopping)), "{did:?}");
    assert!(!did.contains(&Did::Signal(libc::SIGTERM)), "{did:?}");
    assert!(!r.sup.end(true).1.keep_lease);
}

#[test]
fn a_refusal_while_stopping_does_not_re_arm() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.did();
    r.sup.on_signal(libc::SIGTERM);
    let did = r.did();
    assert!(did.starts_with(&[
        Did::DisableRearm,
        Did::Notice(Notice::Stopping),
        Did::Forward(libc::SIGTERM)
    ]));
    r.sup.on_delivery(Handed::Declined { next: None });
    r.sup.on_delivery(Handed::Declined { next: Some(5) });
    // Nor a delivery that left the next FIFO (always-armed mode).
    r.sup.on_delivery(Handed::Delivered {
        reader: NODE,
        next: Some(6),
    });
    let did = r.did();
    assert!(delivers(&did).is_empty(), "{did:?}");
    assert!(!did.iter().any(|d| matches!(d, Did::Arm(_))), "{did:?}");
}

#[test]
fn a_refusal_while_running_re_arms_and_a_failed_arm_ends_the_run() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.did();
    r.sup.on_delivery(Handed::Declined { next: None });
    assert_eq!(r.did(), [Did::Arm(101), Did::Deliver(101)]);
    r.sup.on_delivery(Handed::Declined { next: Some(5) });
    assert_eq!(r.did(), [Did::Deliver(5)]);
    r.sup.io.arm_fails = true;
    r.sup.on_delivery(Handed::Declined { next: None });
    assert_eq!(r.did(), [Did::Signal(libc::SIGTERM)]);
    assert!(matches!(
        r.sup.end(true).1.fatal,
        Some(SuperviseError::Slot(_))
    ));
}

#[test]
fn a_late_loss_is_never_released() {
    // The child exited (the fencer killed it while we were stopped) after
    // the deadline, before the loop saw it pass.
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    r.advance(Duration::from_secs(6));
    let by = r.sup.child_exited();
    // Orphans get no grace past the lost lease.
    assert!(by <= r.sup.io.now());
    let end = r.sup.end(true).1;
    assert!(!end.may_release && lease_error(&end.fatal));
    // Declared lost, then a late renewal moved the deadline: still never released.
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    r.sup.on_fence(FenceNews::Exited);
    r.until.set(r.until.get() + Duration::from_secs(60));
    r.sup.child_exited();
    assert!(!r.sup.end(true).1.may_release);
    // Before the deadline, released unless a process of the child is left.
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    r.sup.child_exited();
    assert!(!r.sup.end(false).1.may_release);
}

#[test]
fn a_lease_lost_twice_stays_lost() {
    // The fencer fired, then the renewal thread gave up too: the second
    // loss must not forget the first (a lease lost is never released).
    let mut r = Run::holder(Duration::from_secs(30));
    r.delivered_once();
    r.sup.on_fence(FenceNews::Fired(2));
    r.sup.on_lease(LeaseNews::Lost("renewals failed".into()));
    r.sup.on_fence(FenceNews::Exited);
    r.sup.child_exited();
    let end = r.sup.end(true).1;
    assert!(matches!(end.lease, LeasePart::Lost(_)));
    assert!(!end.may_release && lease_error(&end.fatal));
}

#[test]
fn a_lost_lease_kills_the_tree_within_the_stop_grace_other_stops_the_child_after_the_orphan_grace()
{
    let mut r = Run::holder(Duration::from_secs(30));
    r.delivered_once();
    r.sup.on_fence(FenceNews::Fired(3));
    r.did();
    r.advance(GRACE - Duration::from_millis(1));
    r.sup.tick();
    assert!(r.did().is_empty());
    r.advance(Duration::from_millis(1));
    r.sup.tick();
    assert_eq!(r.did(), [Did::KillTree]);
    r.advance(Duration::from_secs(60));
    r.sup.tick();
    assert!(r.did().is_empty(), "one kill");

    let mut r = Run::new(None, false, Watchdog::Off);
    r.delivered_once();
    r.sup.on_lease(LeaseNews::Failed("no permission".into()));
    assert_eq!(r.did(), [Did::Signal(libc::SIGTERM)]);
    r.advance(ORPHAN_GRACE);
    r.sup.tick();
    assert_eq!(r.did(), [Did::Signal(libc::SIGKILL)]);
    // The operator's stop is systemd's to escalate.
    let mut r = Run::new(None, false, Watchdog::Off);
    r.delivered_once();
    r.sup.on_signal(libc::SIGINT);
    r.advance(Duration::from_secs(3600));
    r.sup.tick();
    assert!(!r
        .did()
        .iter()
        .any(|d| matches!(d, Did::Signal(_) | Did::KillTree)));
}

#[test]
fn the_lease_deadline_is_enforced_at_a_tick_and_wakes_the_loop() {
    let mut r = Run::holder(Duration::from_secs(5));
    r.delivered_once();
    assert_eq!(
        r.sup.next_deadline(),
        r.sup.io.now() + Duration::from_secs(5)
    );
    r.advance(Duration::from_secs(5));
    r.sup.tick();
    let did = r.did();
    assert!(did.contains(&Did::Signal(libc::SIGTERM)), "{did:?}");
    // The stop grace is the next wake, not the dead lease.
    assert_eq!(r.sup.next_deadline(), r.sup.io.now() + GRACE);
}

#[test]
fn a_started_node_that_never_reads_times_out_one_that_reads_does_not() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.did();
    // Cosmovisor between nodes: no clock until a node is seen.
    r.advance(KEY_TIMEOUT * 2);
    r.sup.tick();
    assert!(r.did().is_empty());
    r.sup.io.node = Some(NODE);
    // Seen at the next look.
    r.sup.tick();
    assert!(r.did().is_empty());
    r.advance(super::super::keywait::LOOK_EVERY);
    r.sup.tick();
    r.advance(KEY_TIMEOUT - Duration::from_millis(1));
    r.sup.tick();
    assert!(r.did().is_empty());
    r.advance(Duration::from_millis(1));
    r.sup.tick();
    assert_eq!(r.did(), [Did::Cancel, Did::Signal(libc::SIGTERM)]);
    assert!(matches!(
        r.sup.end(true).1.fatal,
        Some(SuperviseError::Timeout { pid: 200, .. })
    ));

    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.sup.io.node = Some(NODE);
    r.sup.tick();
    r.sup.on_delivery(Handed::Delivered {
        reader: NODE,
        next: None,
    });
    r.advance(KEY_TIMEOUT * 2);
    r.sup.tick();
    assert!(!r.did().contains(&Did::Cancel));
    assert!(r.sup.end(true).1.fatal.is_none());
}

#[test]
fn an_exec_node_has_its_clock_from_the_first_hand_off() {
    let mut r = Run::new(None, true, Watchdog::Off);
    r.sup.start(Some(1));
    r.advance(KEY_TIMEOUT);
    r.sup.tick();
    assert!(matches!(
        r.sup.end(true).1.fatal,
        Some(SuperviseError::Timeout { pid: 100, .. })
    ));
}

#[test]
fn a_delivery_watches_its_reader_and_continues_through_the_fifo_left_for_the_next() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.did();
    r.sup.on_delivery(Handed::Delivered {
        reader: NODE,
        next: Some(2),
    });
    let did = r.did();
    assert!(did.contains(&Did::Watch(NODE)), "{did:?}");
    assert_eq!(delivers(&did), [2]);
    // A watcher's re-arm while that hand-off is under way waits for it.
    r.sup.io.armed = Some(3);
    r.sup.on_rearmed();
    assert!(delivers(&r.did()).is_empty());
    r.sup.on_delivery(Handed::Delivered {
        reader: Pid(201),
        next: None,
    });
    assert_eq!(delivers(&r.did()), [3]);
}

#[test]
fn an_exposure_while_settling_still_fails_the_run() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.sup.start(Some(1));
    r.sup.child_exited();
    assert_eq!(r.sup.handoff, Handoff::Underway);
    r.sup
        .settled(Handed::Failed(SuperviseError::Exposed("test".into())));
    assert!(matches!(
        r.sup.end(true).1.fatal,
        Some(SuperviseError::Exposed(_))
    ));
}

#[test]
fn the_watchdog_fence_withholds_pings_near_the_kill_deadline() {
    let wd = Watchdog::Fence {
        timeout: Duration::from_secs(9),
        unit: Duration::from_secs(30),
    };
    let mut r = Run::new(Some(Duration::from_secs(20)), false, wd);
    r.sup.start(None);
    let did = r.did();
    assert!(did.starts_with(&[
        Did::Notice(Notice::WatchdogTimeout(Duration::from_secs(9))),
        Did::Notice(Notice::Ping)
    ]));
    // Kill deadline at 20 s + 1 s grace: a ping due (every 2.25 s) at t
    // goes out only while t + 9 s + 1 s (abort) <= 21 s.
    let pings_at = |r: &mut Run, ms: u64| {
        r.advance(Duration::from_millis(ms) - r.clock.elapsed.get());
        r.sup.ping_watchdog_if_due();
        r.did().contains(&Did::Notice(Notice::Ping))
    };
    assert!(!pings_at(&mut r, 2000), "not due yet");
    assert!(pings_at(&mut r, 2500));
    assert!(pings_at(&mut r, 5000));
    assert!(pings_at(&mut r, 7500));
    assert!(pings_at(&mut r, 10500));
    assert!(!pings_at(&mut r, 13000), "withheld");
    // A renewal moves the kill deadline: pings resume.
    r.until.set(r.until.get() + Duration::from_secs(10));
    assert!(pings_at(&mut r, 15500));
    // The child gone, the unit's timeout is back.
    r.sup.child_exited();
    assert!(r
        .did()
        .contains(&Did::Notice(Notice::WatchdogTimeout(Duration::from_secs(
            30
        )))));
}

#[test]
fn sigchld_reaps_and_stops_nothing() {
    let mut r = Run::new(None, false, Watchdog::Off);
    r.delivered_once();
    r.sup.on_signal(libc::SIGCHLD);
    assert_eq!(r.did(), [Did::Reap]);
    r.sup.io.armed = Some(2);
    r.sup.on_rearmed();
    assert_eq!(delivers(&r.did()), [2]);
}

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
