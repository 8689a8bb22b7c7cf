//! The chaos test's nemesis: a seeded sequence of fault episodes played against a
//! [`Cluster`].
//!
//! The sequence of episodes and every parameter in it (kind, stall, proxy fault, duration,
//! trigger event, which candidate host is chosen) is a function of the seed alone; it
//! starts with a coverage round, one episode of every kind in a seeded order (each kind in
//! the variant the issue names: stops of three lease durations, SIGTERM the moment a
//! standby won an expired lease, …), then draws kinds and their parameters by weight.
//! Targets are roles resolved when an episode begins ("the holder": the host whose node
//! holds the key now; "a standby": one of the others, by a seeded index), and each episode
//! begins a seeded gap after the cluster recovered from the previous one (a new height
//! signed after the heal, or 4 lease durations at most), so the wall-clock times differ
//! from run to run while the schedule does not.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::checker::FaultRec;
use super::cluster::{unix_us, Action, Cluster, Trigger};
use super::Fault;

/// SplitMix64: small, seedable, good enough to draw a schedule from.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[lo, hi]` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// One of `items`, by weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total);
        for (t, w) in items {
            if x < *w {
                return *t;
            }
            x -= w;
        }
        items[items.len() - 1].0
    }
}

/// Who an episode acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Holder,
    Standby,
}

/// What makes the lease change hands in an [`Episode::AtEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// kill -9 of the holder's tree: a standby takes the lease after it expires.
    Kill9Tree,
    /// SIGTERM of the holder: it releases the lease.
    Sigterm,
    /// The holder's proxy refuses for this long: it loses the lease, a standby takes over.
    Cut(Duration),
}

/// One fault episode.
#[derive(Debug, Clone)]
pub enum Episode {
    /// A signal to the tool or its tree (kill -9, SIGTERM).
    Signal { role: Role, action: Action },
    /// SIGSTOP of the holder's tool alone (`tree` false) or its whole tree, then SIGCONT.
    Stop { tree: bool, stall: Duration },
    /// SIGSTOP (for `stall`, then SIGCONT) or, with no stall, SIGKILL of the holder's
    /// fencer alone.
    Fencer { stall: Option<Duration> },
    /// A proxy fault on one host.
    Proxy {
        role: Role,
        fault: Fault,
        dur: Duration,
    },
    /// The same proxy fault on every host.
    AllCut { fault: Fault, dur: Duration },
    /// KMS refuses decryption to one standby (or all of them) while the holder is
    /// killed: a standby takes the expired lease and cannot decrypt the key.
    KmsDenied { all: bool, dur: Duration },
    /// `action` on whichever host next logs `event`, with `cause` making the lease move.
    AtEvent {
        event: &'static str,
        action: Action,
        cause: Cause,
    },
}

/// An episode with its seeded choices.
#[derive(Debug, Clone)]
pub struct Planned {
    pub episode: Episode,
    /// The kind's index (the coverage round draws each once).
    pub kind: usize,
    /// Which candidate host (index modulo the candidates).
    pub pick: u64,
    /// Quiet time after the cluster recovered.
    pub gap: Duration,
}

const KINDS: usize = 13;

/// Lease events a trigger can fire on, by weight.
const EVENTS: &[(&str, u64)] = &[
    ("lease_taking_over", 3),
    ("lease_won", 4),
    ("lease_acquired", 3),
    ("fetching", 1),
    ("fetched", 2),
    ("sign_state_raised", 2),
    ("armed", 1),
    ("child_started", 1),
    ("delivered", 1),
    ("lease_released", 1),
    ("standby", 1),
    ("lease_waiting", 1),
    ("lease_lost", 1),
    ("fence_started", 2),
    ("fence_fired", 1),
];

/// Draws the seeded sequence of episodes.
pub struct Planner {
    rng: Rng,
    coverage: Vec<usize>,
    lease: Duration,
    gap_ms: (u64, u64),
}

impl Planner {
    /// `gap_ms`: the range of quiet time between episodes.
    pub fn new(seed: u64, lease: Duration, gap_ms: (u64, u64)) -> Planner {
        let mut rng = Rng::new(seed);
        let mut coverage: Vec<usize> = (0..KINDS).collect();
        for i in (1..coverage.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            coverage.swap(i, j);
        }
        coverage.reverse();
        Planner {
            rng,
            coverage,
            lease,
            gap_ms,
        }
    }

    fn stall(&mut self) -> Duration {
        let l = self.lease.as_millis() as u64;
        match self.rng.weighted(&[(0, 30), (1, 30), (2, 40)]) {
            // Shorter than the holder keeps its node without a renewal: it must survive.
            0 => self.rng.ms(1000, l * 2 / 3 - 500),
            1 => self.rng.ms(l * 3 / 4, 2 * l),
            // At least three lease durations.
            _ => self.rng.ms(3 * l, 3 * l + 7000),
        }
    }

    fn proxy_fault(&mut self, kms: bool) -> Fault {
        let mut kinds = vec![(0u8, 3), (1, 3), (2, 4), (3, 4)];
        if kms {
            kinds.push((4, 2));
        }
        match self.rng.weighted(&kinds) {
            0 => Fault::Refuse,
            1 => Fault::Blackhole,
            2 => Fault::DropReplies,
            3 => Fault::Delay(self.rng.ms(200, 2500)),
            _ => Fault::KmsDenied,
        }
    }

    /// The coverage round's variant of a kind: the faults the issue names, with durations
    /// that keep the round short (a stop of at least three lease durations, a standby
    /// that cannot decrypt at takeover, SIGTERM the moment a standby won an expired lease).
    fn canonical(&mut self, kind: usize) -> Episode {
        let l = self.lease.as_millis() as u64;
        match kind {
            4 | 5 => Episode::Stop {
                tree: kind == 5,
                stall: self.rng.ms(3 * l, 3 * l + 2000),
            },
            6 => Episode::Proxy {
                role: Role::Holder,
                fault: self.proxy_fault(false),
                dur: self.rng.ms(5000, 8000),
            },
            7 => Episode::Proxy {
                role: Role::Standby,
                fault: self.proxy_fault(true),
                dur: self.rng.ms(4000, 6000),
            },
            8 => Episode::AllCut {
                fault: match self.rng.below(3) {
                    0 => Fault::Refuse,
                    1 => Fault::Blackhole,
                    _ => Fault::DropReplies,
                },
                dur: self.rng.ms(4000, 8000),
            },
            9 => Episode::KmsDenied {
                all: false,
                dur: Duration::from_millis(2 * l + 2000),
            },
            10 => Episode::AtEvent {
                event: "lease_won",
                action: Action::TermTool,
                cause: Cause::Kill9Tree,
            },
            11 => Episode::Fencer {
                stall: Some(self.rng.ms(3 * l, 3 * l + 2000)),
            },
            k => self.episode(k),
        }
    }

    fn at_event(&mut self) -> Episode {
        Episode::AtEvent {
            event: self.rng.weighted(EVENTS),
            action: self.rng.weighted(&[
                (Action::TermTool, 70),
                (Action::KillTool, 15),
                (Action::KillTree, 15),
            ]),
            cause: match self.rng.weighted(&[(0, 50), (1, 25), (2, 25)]) {
                0 => Cause::Kill9Tree,
                1 => Cause::Sigterm,
                _ => Cause::Cut(self.rng.ms(6000, 10000)),
            },
        }
    }

    fn episode(&mut self, kind: usize) -> Episode {
        match kind {
            0 => Episode::Signal {
                role: Role::Holder,
                action: Action::KillTree,
            },
            1 => Episode::Signal {
                role: Role::Holder,
                action: Action::KillTool,
            },
            2 => Episode::Signal {
                role: Role::Holder,
                action: Action::TermTool,
            },
            3 => Episode::Signal {
                role: Role::Standby,
                action: if self.rng.below(2) == 0 {
                    Action::KillTree
                } else {
                    Action::KillTool
                },
            },
            4 => Episode::Stop {
                tree: false,
                stall: self.stall(),
            },
            5 => Episode::Stop {
                tree: true,
                stall: self.stall(),
            },
            6 => Episode::Proxy {
                role: Role::Holder,
                fault: self.proxy_fault(false),
                dur: self.rng.ms(2000, 14000),
            },
            7 => Episode::Proxy {
                role: Role::Standby,
                fault: self.proxy_fault(true),
                dur: self.rng.ms(2000, 14000),
            },
            8 => Episode::AllCut {
                fault: match self.rng.below(3) {
                    0 => Fault::Refuse,
                    1 => Fault::Blackhole,
                    _ => Fault::DropReplies,
                },
                dur: self.rng.ms(3000, 14000),
            },
            9 => Episode::KmsDenied {
                all: self.rng.below(2) == 0,
                dur: self.rng.ms(12000, 20000),
            },
            10 => self.at_event(),
            11 => Episode::Fencer {
                stall: Some(self.stall()),
            },
            _ => Episode::Fencer { stall: None },
        }
    }
}

impl Iterator for Planner {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        let (kind, episode) = match self.coverage.pop() {
            Some(k) => (k, self.canonical(k)),
            None => {
                let k = self.rng.weighted(&[
                    (0, 9),
                    (1, 6),
                    (2, 6),
                    (3, 4),
                    (4, 9),
                    (5, 8),
                    (6, 14),
                    (7, 6),
                    (8, 6),
                    (9, 10),
                    (10, 22),
                    (11, 5),
                    (12, 3),
                ]);
                (k, self.episode(k))
            }
        };
        let pick = self.rng.next_u64();
        let gap = self.rng.ms(self.gap_ms.0, self.gap_ms.1);
        Some(Planned {
            episode,
            kind,
            pick,
            gap,
        })
    }
}

impl Episode {
    /// The kind, for the summary.
    pub fn kind(&self, lease: Duration) -> String {
        let role = |r: &Role| match r {
            Role::Holder => "holder",
            Role::Standby => "standby",
        };
        match self {
            Episode::Signal { role: r, action } => format!("{}_{}", action.label(), role(r)),
            Episode::Stop { tree, stall } => {
                let class = if *stall < lease * 2 / 3 {
                    "short"
                } else if *stall < lease * 3 {
                    "mid"
                } else {
                    "long"
                };
                format!(
                    "sigstop_{}_holder/{class}",
                    if *tree { "tree" } else { "tool" }
                )
            }
            Episode::Proxy { role: r, fault, .. } => {
                let f = match fault {
                    Fault::Delay(_) => "delay".to_string(),
                    f => f.label(),
                };
                format!("proxy_{}/{f}", role(r))
            }
            Episode::AllCut { fault, .. } => format!("all_cut/{}", fault.label()),
            Episode::Fencer { stall: None } => "kill9_fencer_holder".into(),
            Episode::Fencer { stall: Some(s) } => Episode::Stop {
                tree: false,
                stall: *s,
            }
            .kind(lease)
            .replace("sigstop_tool", "sigstop_fencer"),
            Episode::KmsDenied { all, .. } => {
                format!("kms_denied_takeover/{}", if *all { "all" } else { "one" })
            }
            Episode::AtEvent { event, action, .. } => format!("{}@{event}", action.label()),
        }
    }
}

/// Nemesis settings.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    pub seed: u64,
    /// No episode starts after this much time.
    pub duration: Duration,
    /// Quiet time between episodes (ms).
    pub gap_ms: (u64, u64),
    /// Print a status line this often.
    pub status_every: Duration,
}

/// Plays episodes until the duration is over; prints each as it begins.
pub fn run(c: &Cluster, n: &NemesisConfig) {
    let lease = c.cfg.lease;
    let t0 = Instant::now();
    let end = t0 + n.duration;
    println!("nemesis: seed {} for {:?}", n.seed, n.duration);
    // The first holder must be signing before faults begin.
    wait_progress_after(c, unix_us(), 10 * lease);
    let mut next_status = Instant::now() + n.status_every;
    for p in Planner::new(n.seed, lease, n.gap_ms) {
        if Instant::now() >= end {
            break;
        }
        let kind = p.episode.kind(lease);
        println!(
            "nemesis: [{:>4}s] {kind} {:?}",
            t0.elapsed().as_secs(),
            p.episode
        );
        let healed = play(c, &p, &kind);
        wait_progress_after(c, healed, 4 * lease);
        let quiet_until = (Instant::now() + p.gap).min(end);
        while Instant::now() < quiet_until {
            thread::sleep(Duration::from_millis(50));
        }
        if Instant::now() >= next_status {
            let (h, _) = c.progress();
            println!(
                "nemesis: [{:>4}s] height {h}, key with {:?}",
                t0.elapsed().as_secs(),
                c.holder_node()
            );
            next_status = Instant::now() + n.status_every;
        }
    }
}

/// Waits until a height is signed after `after_us`, for at most `max`.
fn wait_progress_after(c: &Cluster, after_us: u64, max: Duration) {
    let until = Instant::now() + max;
    while Instant::now() < until && c.progress().1 <= after_us {
        thread::sleep(Duration::from_millis(50));
    }
}

fn sleep(d: Duration) {
    thread::sleep(d);
}

/// The host acting as `role` now; when no node holds the key, any host (by `pick`).
fn resolve(c: &Cluster, role: Role, pick: u64) -> usize {
    let n = c.hosts.len() as u64;
    match (role, c.holder()) {
        (Role::Holder, Some(h)) => h,
        (Role::Standby, Some(h)) => {
            let others: Vec<usize> = (0..c.hosts.len()).filter(|i| *i != h).collect();
            others[(pick % others.len() as u64) as usize]
        }
        (_, None) => (pick % n) as usize,
    }
}

fn signal(c: &Cluster, h: usize, action: Action) -> bool {
    let host = &c.hosts[h];
    match action {
        Action::TermTool => host.signal_tool(Signal::SIGTERM),
        Action::KillTool => host.signal_tool(Signal::SIGKILL),
        Action::KillTree => host.signal_tree(Signal::SIGKILL),
    }
}

/// Plays one episode; returns when its last fault was healed (µs since the epoch).
fn play(c: &Cluster, p: &Planned, kind: &str) -> u64 {
    let name = |h: usize| c.hosts[h].name.clone();
    let mut rec = FaultRec {
        id: 0,
        kind: kind.to_string(),
        detail: String::new(),
        unhealthy: Vec::new(),
        targets: Vec::new(),
        start_us: unix_us(),
        end_us: 0,
        holder: c.holder_node(),
        frozen: Vec::new(),
    };
    let gone = |ok: bool| if ok { "" } else { " (no tool was running)" };
    match &p.episode {
        Episode::Signal { role, action } => {
            let h = resolve(c, *role, p.pick);
            rec.targets.push(name(h));
            let ok = signal(c, h, *action);
            rec.detail = format!("{} to {}{}", action.label(), name(h), gone(ok));
            rec.end_us = rec.start_us;
            c.record_fault(rec);
        }
        Episode::Stop { tree, stall } => {
            let h = resolve(c, Role::Holder, p.pick);
            rec.targets.push(name(h));
            rec.unhealthy.push(name(h));
            if *tree {
                rec.frozen.push(name(h));
            }
            let ok = if *tree {
                c.hosts[h].signal_tree(Signal::SIGSTOP)
            } else {
                c.hosts[h].signal_tool(Signal::SIGSTOP)
            };
            rec.detail = format!(
                "SIGSTOP of {}'s {} for {} ms{}",
                name(h),
                if *tree { "whole tree" } else { "tool alone" },
                stall.as_millis(),
                gone(ok)
            );
            let id = c.record_fault(rec);
            sleep(*stall);
            // Healed as of just before SIGCONT: what the node does after it counts as
            // running time.
            c.end_fault(id);
            c.hosts[h].cont();
        }
        Episode::Fencer { stall } => {
            let h = resolve(c, Role::Holder, p.pick);
            rec.targets.push(name(h));
            let none = " (no fencer was running)";
            match stall {
                None => {
                    let ok = c.hosts[h].signal_fencer(Signal::SIGKILL);
                    rec.detail = format!(
                        "kill9 of {}'s fencer{}",
                        name(h),
                        if ok { "" } else { none }
                    );
                    rec.end_us = rec.start_us;
                    c.record_fault(rec);
                }
                Some(stall) => {
                    rec.unhealthy.push(name(h));
                    let ok = c.hosts[h].signal_fencer(Signal::SIGSTOP);
                    rec.detail = format!(
                        "SIGSTOP of {}'s fencer alone for {} ms{}",
                        name(h),
                        stall.as_millis(),
                        if ok { "" } else { none }
                    );
                    let id = c.record_fault(rec);
                    sleep(*stall);
                    c.end_fault(id);
                    c.hosts[h].cont();
                }
            }
        }
        Episode::Proxy { role, fault, dur } => {
            let h = resolve(c, *role, p.pick);
            rec.targets.push(name(h));
            rec.unhealthy.push(name(h));
            rec.detail = format!(
                "{}'s proxy {} for {} ms",
                name(h),
                fault.label(),
                dur.as_millis()
            );
            let id = c.record_fault(rec);
            c.hosts[h].proxy.set_fault(*fault);
            sleep(*dur);
            c.hosts[h].proxy.set_fault(Fault::Pass);
            c.end_fault(id);
        }
        Episode::AllCut { fault, dur } => {
            rec.targets = c.hosts.iter().map(|h| h.name.clone()).collect();
            rec.unhealthy = rec.targets.clone();
            rec.detail = format!("every proxy {} for {} ms", fault.label(), dur.as_millis());
            let id = c.record_fault(rec);
            for h in &c.hosts {
                h.proxy.set_fault(*fault);
            }
            sleep(*dur);
            for h in &c.hosts {
                h.proxy.set_fault(Fault::Pass);
            }
            c.end_fault(id);
        }
        Episode::KmsDenied { all, dur } => {
            let holder = resolve(c, Role::Holder, p.pick);
            let denied: Vec<usize> = if *all {
                (0..c.hosts.len()).filter(|i| *i != holder).collect()
            } else {
                vec![resolve(c, Role::Standby, p.pick)]
            };
            for &d in &denied {
                c.hosts[d].proxy.set_fault(Fault::KmsDenied);
                rec.unhealthy.push(name(d));
            }
            rec.targets.push(name(holder));
            let ok = c.hosts[holder].signal_tree(Signal::SIGKILL);
            rec.detail = format!(
                "KMS denies decryption to {:?} for {} ms; kill9_tree to {}{}",
                rec.unhealthy,
                dur.as_millis(),
                name(holder),
                gone(ok)
            );
            let id = c.record_fault(rec);
            sleep(*dur);
            for &d in &denied {
                c.hosts[d].proxy.set_fault(Fault::Pass);
            }
            c.end_fault(id);
        }
        Episode::AtEvent {
            event,
            action,
            cause,
        } => {
            let holder = resolve(c, Role::Holder, p.pick);
            rec.targets.push(name(holder));
            if let Cause::Cut(_) = cause {
                rec.unhealthy.push(name(holder));
            }
            rec.detail = format!(
                "{} on the next host to log {event}; cause: {cause:?} of {}",
                action.label(),
                name(holder)
            );
            rec.end_us = rec.start_us;
            let id = c.record_fault(rec);
            c.arm(Trigger {
                events: vec![event],
                action: *action,
                fault_id: id,
                expires_us: unix_us() + 40_000_000,
            });
            match cause {
                Cause::Kill9Tree => {
                    c.hosts[holder].signal_tree(Signal::SIGKILL);
                }
                Cause::Sigterm => {
                    c.hosts[holder].signal_tool(Signal::SIGTERM);
                }
                Cause::Cut(d) => {
                    c.hosts[holder].proxy.set_fault(Fault::Refuse);
                    sleep(*d);
                    c.hosts[holder].proxy.set_fault(Fault::Pass);
                    c.end_fault(id);
                }
            }
            while c.trigger_pending() {
                sleep(Duration::from_millis(50));
            }
        }
    }
    unix_us()
}
