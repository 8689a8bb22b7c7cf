//! The key timeout (`SSM_COSMOVISOR_KEY_TIMEOUT`, docs/design.md §4.1): how
//! long a *started* node may go without reading its key.
//!
//! A FIFO at the key path does not mean a node is waiting for it. cosmovisor
//! 1.7 puts a lot between two node processes at an upgrade: the kill (with
//! `DAEMON_SHUTDOWN_GRACE`), `DAEMON_RESTART_DELAY`, the copy of all of
//! `data/` (hours on a real node), `COSMOVISOR_CUSTOM_PREUPGRADE`,
//! `<bin> pre-upgrade` with retries, a binary download. Counting from the
//! re-arm stopped cosmovisor in its backup (issue 19). So the clock runs only
//! from the first sight of a node process that has not read the key: never
//! while the node that read the last key still runs, never while cosmovisor
//! is between nodes. The decisions are pure; the supervisor feeds them what
//! it sees (a new hand-off, the keyed node's exit, a look at the child's
//! processes) and sleeps until [`KeyWait::wake_at`].

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::procfs::Pid;

/// How the node process is told apart from cosmovisor's other children
/// (`<bin> status` height checks every `DAEMON_POLL_INTERVAL` while a plan
/// is pending, `<bin> pre-upgrade`, `COSMOVISOR_CUSTOM_PREUPGRADE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeMatch {
    /// `run`: cosmovisor starts the node as `<bin> <args after run>`
    /// (process.go `Launcher.Run`: `exec.Command(bin, args...)`). A later
    /// cosmovisor may append its own flags (`--halt-height`), so the node's
    /// arguments may start with these; a `#!` script as the node binary
    /// runs as `<interpreter> [opt] <script> <args>`, so they may end it.
    Args(Vec<OsString>),
    /// `exec`: our child is the node.
    Child,
}

impl NodeMatch {
    /// Whether a process with this argument vector (`argv[0]` first) runs
    /// the node's command.
    pub(super) fn matches(&self, argv: &[OsString]) -> bool {
        match self {
            NodeMatch::Args(args) if args.is_empty() => argv.len() == 1,
            NodeMatch::Args(args) => {
                argv.len() > args.len() && (argv[1..].starts_with(args) || argv.ends_with(args))
            }
            NodeMatch::Child => false,
        }
    }

    /// [`NodeMatch::matches`], for a process under our child, whose own
    /// argument vector is `child`: a process with exactly cosmovisor's is
    /// one cosmovisor forked and has not yet exec'd (its `pre-upgrade`, a
    /// backup helper), and `cosmovisor run start --home H` ends with the
    /// node's arguments. Seen in that window under load, it started the key
    /// timeout for a node that never was (e2e_upgrade under CI load).
    pub(super) fn is_node(&self, argv: &[OsString], child: Option<&[OsString]>) -> bool {
        child != Some(argv) && self.matches(argv)
    }
}

/// How often the child's processes are searched for a new node while
/// cosmovisor is between nodes (a `/proc` walk of the child's tree).
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Where the wait for the node to read its key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyWait {
    /// No hand-off is waiting.
    Idle,
    /// The FIFO is armed ahead of time (upgrade marker, always-armed mode)
    /// while the node that read the last key still runs: no clock.
    KeyedNodeRuns(Pid),
    /// No node process seen yet: cosmovisor is starting, shutting down,
    /// backing up or running pre-upgrade steps. Look again at `next_look`.
    BetweenNodes {
        /// When to search the child's processes again.
        next_look: Instant,
    },
    /// A node process was first seen at `since`; it must read the key
    /// within the timeout.
    NodeStarted {
        /// The node process first seen.
        pid: Pid,
        /// When it was first seen.
        since: Instant,
    },
}

impl KeyWait {
    /// A hand-off starts. `keyed` is the node that read the last key, if it
    /// still runs; `exec_child` is our child when it is the node itself
    /// (`exec` mode: it starts with the hand-off). A hand-off that follows a
    /// refused or unread one keeps the clock of the node already waiting: a
    /// stranger on the pipe must not give a node that never reads more time.
    pub(super) fn armed(self, keyed: Option<Pid>, exec_child: Option<Pid>, now: Instant) -> Self {
        match (self, keyed, exec_child) {
            (KeyWait::NodeStarted { .. }, _, _) => self,
            (_, Some(pid), _) => KeyWait::KeyedNodeRuns(pid),
            (_, None, Some(pid)) => KeyWait::NodeStarted { pid, since: now },
            (_, None, None) => KeyWait::BetweenNodes { next_look: now },
        }
    }

    /// The node read its key: nothing waits until the next hand-off.
    pub(super) fn delivered(self) -> Self {
        KeyWait::Idle
    }

    /// The node that read the last key exited: cosmovisor is between nodes.
    pub(super) fn keyed_node_exited(self, pid: Pid, now: Instant) -> Self {
        match self {
            KeyWait::KeyedNodeRuns(p) if p == pid => KeyWait::BetweenNodes { next_look: now },
            s => s,
        }
    }

    /// The result of a look at the child's processes at `now` (`found`: a
    /// node process other than the keyed one).
    pub(super) fn looked(self, found: Option<Pid>, now: Instant) -> Self {
        match (self, found) {
            (KeyWait::BetweenNodes { .. }, Some(pid)) => KeyWait::NodeStarted { pid, since: now },
            (KeyWait::BetweenNodes { .. }, None) => KeyWait::BetweenNodes {
                next_look: now + LOOK_EVERY,
            },
            (s, _) => s,
        }
    }

    /// Whether a look at the child's processes is due.
    pub(super) fn look_due(self, now: Instant) -> bool {
        matches!(self, KeyWait::BetweenNodes { next_look } if now >= next_look)
    }

    /// The node that has not read its key within `timeout`, if any.
    pub(super) fn timed_out(self, now: Instant, timeout: Duration) -> Option<(Pid, Duration)> {
        match self {
            KeyWait::NodeStarted { pid, since } if now >= since + timeout => {
                Some((pid, now - since))
            }
            _ => None,
        }
    }

    /// When the supervisor must wake for this wait, if ever.
    pub(super) fn wake_at(self, timeout: Duration) -> Option<Instant> {
        match self {
            KeyWait::BetweenNodes { next_look } => Some(next_look),
            KeyWait::NodeStarted { since, .. } => Some(since + timeout),
            KeyWait::Idle | KeyWait::KeyedNodeRuns(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn no_clock_while_the_keyed_node_runs_or_cosmovisor_is_between_nodes() {
        let t0 = Instant::now();
        // Re-armed at the upgrade marker while node 10 (keyed) still runs.
        let w = KeyWait::Idle.armed(Some(Pid(10)), None, t0);
        assert_eq!(w, KeyWait::KeyedNodeRuns(Pid(10)));
        assert_eq!(w.wake_at(T), None);
        assert_eq!(w.timed_out(t0 + 10 * T, T), None);
        // Another process exiting changes nothing.
        assert_eq!(w.keyed_node_exited(Pid(11), t0), w);
        // cosmovisor kills it; a backup far longer than the timeout follows.
        let t1 = t0 + 100 * T;
        let mut w = w.keyed_node_exited(Pid(10), t1);
        assert!(w.look_due(t1));
        let mut now = t1;
        for _ in 0..1000 {
            w = w.looked(None, now);
            assert_eq!(w.timed_out(now + T, T), None);
            now += LOOK_EVERY;
        }
        // The next node appears: now it has the timeout to read its key.
        let w = w.looked(Some(Pid(20)), now);
        assert_eq!(
            w,
            KeyWait::NodeStarted {
                pid: Pid(20),
                since: now
            }
        );
        assert_eq!(w.wake_at(T), Some(now + T));
        assert_eq!(w.timed_out(now + T - Duration::from_millis(1), T), None);
        assert_eq!(w.timed_out(now + T, T), Some((Pid(20), T)));
        // A started node's clock is not reset by further looks.
        assert_eq!(w.looked(Some(Pid(21)), now + T), w);
        assert!(!w.look_due(now + T));
    }

    #[test]
    fn the_node_is_the_process_with_the_arguments_after_run() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let m = NodeMatch::Args(os(&["start", "--home", "/h"]));
        assert!(m.matches(&os(&[
            "/h/cosmovisor/current/bin/noded",
            "start",
            "--home",
            "/h"
        ])));
        assert!(m.matches(&os(&["noded", "start", "--home", "/h", "--halt-height=9"])));
        // cosmovisor's height check, pre-upgrade, a custom script.
        assert!(!m.matches(&os(&["noded", "status", "--home", "/h"])));
        assert!(!m.matches(&os(&["noded", "pre-upgrade"])));
        assert!(!m.matches(&os(&["/h/cosmovisor/preupgrade.sh", "v2", "100"])));
        // A zombie's cmdline is empty; so is a kernel thread's.
        assert!(!m.matches(&[]));
        assert!(!m.matches(&os(&["start", "--home"])));
        assert!(!NodeMatch::Child.matches(&os(&["noded", "start", "--home", "/h"])));
        // A shell or Python script as the node binary, before it execs.
        assert!(m.matches(&os(&["/bin/sh", "/h/noded", "start", "--home", "/h"])));
        assert!(m.matches(&os(&["python3", "-c", "...", "start", "--home", "/h"])));
        // A fork of cosmovisor before its exec carries cosmovisor's arguments,
        // which end with the node's.
        let cv = os(&["/usr/bin/cosmovisor", "run", "start", "--home", "/h"]);
        assert!(m.matches(&cv));
        assert!(!m.is_node(&cv, Some(&cv)));
        assert!(m.is_node(&os(&["noded", "start", "--home", "/h"]), Some(&cv)));
        assert!(m.is_node(&cv, None));
        // No node arguments at all: the bare binary.
        let bare = NodeMatch::Args(vec![]);
        assert!(bare.matches(&os(&["noded"])));
        assert!(!bare.matches(&os(&["noded", "status"])));
    }

    #[test]
    fn a_first_hand_off_waits_for_the_node_to_appear_except_in_exec_mode() {
        let t0 = Instant::now();
        let w = KeyWait::Idle.armed(None, None, t0);
        assert_eq!(w, KeyWait::BetweenNodes { next_look: t0 });
        assert!(w.look_due(t0));
        assert_eq!(w.wake_at(T), Some(t0));
        // exec: the child is the node and starts with the hand-off.
        let w = KeyWait::Idle.armed(None, Some(Pid(7)), t0);
        assert_eq!(
            w,
            KeyWait::NodeStarted {
                pid: Pid(7),
                since: t0
            }
        );
    }

    #[test]
    fn a_refused_hand_off_keeps_the_waiting_nodes_clock() {
        let t0 = Instant::now();
        let started = KeyWait::NodeStarted {
            pid: Pid(5),
            since: t0,
        };
        let later = t0 + Duration::from_secs(3);
        assert_eq!(started.armed(None, None, later), started);
        assert_eq!(started.armed(Some(Pid(9)), None, later), started);
        assert_eq!(started.timed_out(t0 + T, T), Some((Pid(5), T)));
        // A delivery ends the wait: the next FIFO (always-armed) starts
        // with the keyed node running.
        let next = started.delivered().armed(Some(Pid(5)), None, later);
        assert_eq!(next, KeyWait::KeyedNodeRuns(Pid(5)));
    }
}
