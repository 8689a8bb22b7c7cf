//! The fencer: a small process of ours, separate from the tool, that kills
//! the lease holder's node when the lease deadline passes — whatever the
//! tool is doing. Fencing that lives only in the tool's threads fails as soon
//! as the tool is stopped (SIGSTOP, a debugger, a stuck page fault, a frozen
//! cgroup of one process) while the node runs on (docs/design.md, "Fencing").
//!
//! The tool re-executes its own binary (`/proc/self/exe __fence`) before it
//! starts the node, sends it every confirmed lease deadline over a pipe and
//! waits for the fencer to acknowledge each one; the node may run only while
//! *both* the lease is confirmed and the fencer enforces it (the supervisor
//! uses the earlier of the two). The fencer sleeps on a `CLOCK_BOOTTIME`
//! timerfd (suspend counts) and SIGKILLs the node's whole tree when
//!
//! - the deadline passes without an extension (the tool is stalled, or its
//!   renewals failed and its own kill did not happen), or
//! - the tool goes away (the pipe closes, or its pidfd says it exited)
//!   without having disarmed it first.
//!
//! In turn the tool stops the node when the fencer exits, and the fencer's
//! acknowledged deadline stops advancing when it is stalled, so the tool
//! stops the node then too. Only a whole host frozen (tool, fencer and node
//! alike) escapes both: security.md.
//!
//! "The node's tree" is cosmovisor's process group (the tool starts
//! cosmovisor as a group leader), plus every descendant of the tool other
//! than the fencer (orphans reparented to the tool as subreaper, and anything
//! that left the group), plus their descendants.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid as RPid, Signal};

use crate::identity::NodeIdentity;

/// The hidden subcommand the fencer runs as.
pub(crate) const SUBCOMMAND: &str = "__fence";

/// Message tags, tool to fencer.
const MSG_DEADLINE: u64 = 1;
const MSG_ARM: u64 = 2;
const MSG_DISARM: u64 = 3;
/// Message tags, fencer to tool.
const MSG_ACK: u64 = 1;
const MSG_FIRED: u64 = 2;

/// One message: a tag and a value, 16 bytes, so a pipe write is atomic.
fn encode(tag: u64, value: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&tag.to_le_bytes());
    b[8..].copy_from_slice(&value.to_le_bytes());
    b
}

fn decode(b: &[u8; 16]) -> (u64, u64) {
    let (t, v) = b.split_at(8);
    (
        u64::from_le_bytes(t.try_into().expect("8 bytes")),
        u64::from_le_bytes(v.try_into().expect("8 bytes")),
    )
}

/// Reads one whole message; `None` at end of file or on an error.
fn read_msg(r: &mut impl Read) -> Option<(u64, u64)> {
    let mut b = [0u8; 16];
    r.read_exact(&mut b).ok().map(|()| decode(&b))
}

/// What the tool hears from its fencer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceNews {
    /// The fencer killed the node's tree (this many processes).
    Fired(u64),
    /// The fencer is gone (exited, or closed its pipe).
    Exited,
}

/// The tool's handle on its fencer process.
pub(crate) struct Fence {
    child: Child,
    to: Arc<std::fs::File>,
    /// The latest kill deadline the fencer acknowledged (boot clock, ns).
    enforced: Arc<AtomicU64>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("pid", &self.child.id())
            .finish()
    }
}

/// Fencer settings passed on its command line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FenceOptions {
    /// The node; passed on when the tool runs as root for another user
    /// (the fencer looks at the node's `/proc` entries as the node).
    pub(crate) node: NodeIdentity,
    /// Log as JSON.
    pub(crate) json: bool,
}

impl Fence {
    /// Starts the fencer; `news` is called from its reader thread.
    pub(crate) fn start(
        opts: FenceOptions,
        news: impl Fn(FenceNews) + Send + 'static,
    ) -> std::io::Result<Fence> {
        let (cmd_r, cmd_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (ack_r, ack_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // A stalled fencer must never block the tool: its messages are
        // dropped then, and its acknowledged deadline stops moving.
        rustix::fs::fcntl_setfl(&cmd_w, rustix::fs::OFlags::NONBLOCK)?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("ssm-cosmovisor-fence")
            .arg(SUBCOMMAND)
            .env_clear()
            .env(
                "SSM_COSMOVISOR_LOG_FORMAT",
                if opts.json { "json" } else { "text" },
            )
            .stdin(Stdio::from(cmd_r))
            .stdout(Stdio::from(ack_w))
            .stderr(Stdio::inherit());
        if opts.node.switches() {
            cmd.arg(format!(
                "--node-ids={}:{}",
                opts.node.uid(),
                opts.node.gid()
            ));
        }
        if let Ok(v) = std::env::var("SSM_COSMOVISOR_LOG") {
            cmd.env("SSM_COSMOVISOR_LOG", v);
        }
        let child = cmd.spawn()?;
        let enforced = Arc::new(AtomicU64::new(0));
        let seen = enforced.clone();
        let mut acks = std::fs::File::from(ack_r);
        std::thread::Builder::new()
            .name("fence-acks".into())
            .spawn(move || {
                while let Some((tag, v)) = read_msg(&mut acks) {
                    match tag {
                        MSG_ACK => {
                            seen.fetch_max(v, Ordering::SeqCst);
                        }
                        MSG_FIRED => news(FenceNews::Fired(v)),
                        _ => {}
                    }
                }
                news(FenceNews::Exited);
            })?;
        Ok(Fence {
            child,
            to: Arc::new(std::fs::File::from(cmd_w)),
            enforced,
        })
    }

    /// The fencer's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&self, tag: u64, value: u64) -> bool {
        (&*self.to).write_all(&encode(tag, value)).is_ok()
    }

    /// A sender of kill deadlines, for the lease's renewal thread.
    pub(crate) fn extender(&self) -> impl Fn(Duration) + Send + 'static {
        let to = self.to.clone();
        move |kill_at: Duration| {
            let _ = (&*to).write_all(&encode(MSG_DEADLINE, kill_at.as_nanos() as u64));
        }
    }

    /// The latest kill deadline the fencer acknowledged (boot clock; zero
    /// before the first).
    pub(crate) fn enforced(&self) -> Duration {
        Duration::from_nanos(self.enforced.load(Ordering::SeqCst))
    }

    /// Sends `kill_at` and waits until the fencer enforces it.
    pub(crate) fn extend_and_confirm(&self, kill_at: Duration, within: Duration) -> bool {
        if !self.send(MSG_DEADLINE, kill_at.as_nanos() as u64) {
            return false;
        }
        let end = Instant::now() + within;
        while self.enforced() < kill_at {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Names the node's process group (cosmovisor's pid).
    pub(crate) fn arm(&self, pgid: u32) -> bool {
        self.send(MSG_ARM, u64::from(pgid))
    }

    /// The node's tree is gone: nothing to kill any more; then stops the
    /// fencer and reaps it. (Dropping a `Fence` instead closes the pipe
    /// without disarming: the fencer then kills whatever is left.)
    pub(crate) fn finish(self) {
        self.send(MSG_DISARM, 0);
        let Fence { mut child, to, .. } = self;
        // Closing our end is the fencer's cue to exit.
        drop(to);
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            // Err: already reaped by the supervisor's reaper of orphans.
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One `/proc/<pid>/stat` line, the fields the fencer needs.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    ppid: i32,
    pgid: i32,
    /// Start time (clock ticks since boot): with the pid, names one process
    /// for good, so a pid freed and reused between scan and kill is spared.
    start: u64,
    /// A zombie whose every thread is gone holds nothing and cannot sign.
    dead: bool,
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let state = *f.first()?;
    let threads: i64 = f.get(17)?.parse().ok()?;
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
        dead: state == "Z" && threads <= 1 || state == "X",
    })
}

fn all_stats() -> HashMap<i32, ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, read_stat(p)?)))
        .collect()
}

/// The processes to kill: the group `pgid`, the descendants of `tool`, and
/// all their descendants, less `spare` and the tool itself.
fn victims(
    stats: &HashMap<i32, ProcStat>,
    tool: Option<i32>,
    pgid: Option<i32>,
    spare: &[i32],
) -> Vec<i32> {
    let mut set: HashSet<i32> = stats
        .iter()
        .filter(|(_, s)| Some(s.pgid) == pgid)
        .map(|(p, _)| *p)
        .collect();
    let mut roots: Vec<i32> = set.iter().copied().chain(tool).collect();
    while let Some(r) = roots.pop() {
        for (p, s) in stats {
            if s.ppid == r && set.insert(*p) {
                roots.push(*p);
            }
        }
    }
    set.into_iter()
        .filter(|p| !spare.contains(p) && Some(*p) != tool && stats.get(p).is_some_and(|s| !s.dead))
        .collect()
}

/// The tool's children in a scan, zombies included: a process of the tree
/// that dies hands its children to the tool (a child subreaper) before it
/// shows as a zombie, so a pid new here since the last scan may have been
/// missed by it.
fn children_of(stats: &HashMap<i32, ProcStat>, tool: Option<i32>) -> HashSet<i32> {
    stats
        .iter()
        .filter(|(_, s)| Some(s.ppid) == tool)
        .map(|(p, _)| *p)
        .collect()
}

/// Whose tree [`kill_tree`] kills.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    /// The tool, a child subreaper: every orphan of the child's tree is
    /// reparented to it (stopped or not) and stays its descendant, whatever
    /// session or group it made. `None` once it is gone.
    pub(crate) tool: Option<i32>,
    /// cosmovisor's process group (cosmovisor's pid).
    pub(crate) pgid: Option<i32>,
    /// Never killed: the fencer, the caller.
    pub(crate) spare: [i32; 2],
    /// Whose file-system ids read the node's `/proc` entries.
    pub(crate) node: NodeIdentity,
}

/// What [`kill_tree`] did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Killed {
    /// Distinct processes SIGKILLed, the group's members included.
    pub(crate) count: u64,
    /// Scans of `/proc` it took.
    pub(crate) scans: u32,
    /// Still alive when the time ran out (empty when it converged).
    pub(crate) left: Vec<i32>,
    /// Processes the kernel would not let us signal, with the error.
    pub(crate) denied: Vec<(i32, rustix::io::Errno)>,
}

/// How long [`kill_tree`] keeps scanning for a tree that keeps forking. A
/// fork chain whose links live longer than a scan (milliseconds) is caught
/// within a few scans; this bounds the pathological one.
const KILL_BUDGET: Duration = Duration::from_secs(2);

/// SIGKILLs `pid` only if it is still the process that started at `start`
/// (through a pidfd, so not a pid reused since the scan).
fn kill_exact(pid: i32, start: u64) -> Result<bool, rustix::io::Errno> {
    let Some(p) = RPid::from_raw(pid) else {
        return Ok(false);
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e),
    };
    if read_stat(pid).map(|s| s.start) != Some(start) {
        return Ok(false);
    }
    match rustix::process::pidfd_send_signal(&fd, Signal::KILL) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// SIGKILLs the child's whole tree (docs/design.md, "Fencing"): every
/// process of cosmovisor's group or descending from the tool, scanned again
/// and again until a scan finds none alive *and* no child of the tool
/// appeared since the scan before (one that did may have been born after
/// that scan's listing of `/proc`, from a process that died before it was
/// read: a `setsid` fork-and-exit chain), or [`KILL_BUDGET`] has passed.
pub(crate) fn kill_tree(t: &Tree) -> Killed {
    let began = Instant::now();
    let mut out = Killed::default();
    let mut killed: HashSet<(i32, u64)> = HashSet::new();
    let mut last_children: Option<HashSet<i32>> = None;
    loop {
        // Root without CAP_SYS_PTRACE sees the node's /proc entries only
        // with the node's file-system ids (ProtectProc=invisible).
        let stats = t.node.as_node(all_stats);
        out.scans += 1;
        let v = victims(&stats, t.tool, t.pgid, &t.spare);
        for &p in &v {
            let Some(st) = stats.get(&p) else { continue };
            match kill_exact(p, st.start) {
                Ok(true) => {
                    killed.insert((p, st.start));
                }
                Ok(false) => {}
                Err(e) => out.denied.push((p, e)),
            }
        }
        if out.scans == 1 {
            // Members born after the listing.
            if let Some(g) = t.pgid.and_then(RPid::from_raw) {
                let _ = rustix::process::kill_process_group(g, Signal::KILL);
            }
        }
        let children = children_of(&stats, t.tool);
        let settled = last_children
            .as_ref()
            .is_some_and(|last| children.is_subset(last));
        if v.is_empty() && settled {
            break;
        }
        if began.elapsed() >= KILL_BUDGET {
            out.left = v;
            break;
        }
        last_children = Some(children);
        std::thread::yield_now();
    }
    out.denied.sort_unstable_by_key(|d| d.0);
    out.denied.dedup_by_key(|d| d.0);
    out.count = killed.len() as u64;
    out
}

/// Why the fencer kills.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Deadline,
    ToolGone,
}

/// The fencer's state: armed once it has a deadline, until disarmed.
enum Guard {
    /// No deadline yet, or disarmed (the node's tree is gone).
    Idle,
    /// Guarding: kill at `kill_at` (boot clock) unless extended.
    Armed {
        kill_at: Duration,
        pgid: Option<i32>,
    },
    /// Killed the node's tree on its deadline: for good. A deadline the tool
    /// sends afterwards (a renewal confirmed while the tool was stopped, sent
    /// on when it resumes) is stale and neither re-arms nor is acknowledged;
    /// the tool, unacknowledged, stops the node itself.
    Fired,
}

/// The fencer process: what it guards and how it reports.
struct Fencer {
    tool: Option<i32>,
    node: NodeIdentity,
    guard: Guard,
    timer: OwnedFd,
    acks: std::fs::File,
}

impl Fencer {
    /// Kills the node's tree if armed, and reports it to the tool.
    fn fire(&mut self, cause: Cause) {
        if let Guard::Armed { pgid, kill_at } = self.guard {
            let me = std::process::id() as i32;
            let k = kill_tree(&Tree {
                tool: self.tool,
                pgid,
                spare: [me, me],
                node: self.node,
            });
            let late_ms = crate::sys::boot_time().saturating_sub(kill_at).as_millis() as u64;
            for (pid, e) in &k.denied {
                tracing::error!(event = "fence_kill_denied", pid, error = %e, "fencer: not allowed to SIGKILL a process of the node's tree (the unit needs CAP_KILL)");
            }
            if k.left.is_empty() {
                tracing::error!(
                    event = "fence_fired",
                    cause = ?cause,
                    killed = k.count,
                    scans = k.scans,
                    late_ms,
                    "fencer: SIGKILLed the node's process tree"
                );
            } else {
                tracing::error!(
                    event = "fence_fired",
                    cause = ?cause,
                    killed = k.count,
                    scans = k.scans,
                    late_ms,
                    left = ?k.left,
                    "fencer: SIGKILLed the node's process tree, but processes of it were still forking when the time ran out"
                );
            }
            let _ = self.acks.write_all(&encode(MSG_FIRED, k.count));
            self.guard = Guard::Fired;
        }
    }

    /// A new kill deadline: arm the timer for it, then acknowledge it.
    fn extend(&mut self, ns: u64) {
        let kill_at = Duration::from_nanos(ns);
        let pgid = match self.guard {
            Guard::Armed { pgid, .. } => pgid,
            Guard::Idle => None,
            Guard::Fired => return,
        };
        self.guard = Guard::Armed { kill_at, pgid };
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = rustix::time::Itimerspec {
            it_interval: zero,
            it_value: rustix::time::Timespec {
                tv_sec: kill_at.as_secs() as _,
                tv_nsec: kill_at.subsec_nanos() as _,
            },
        };
        let set = rustix::time::timerfd_settime(
            &self.timer,
            rustix::time::TimerfdTimerFlags::ABSTIME,
            &spec,
        );
        // Unacknowledged, the tool stops the node by this deadline itself.
        if set.is_ok() {
            let _ = self.acks.write_all(&encode(MSG_ACK, ns));
        }
    }

    /// One message from the tool; `false` at the end of its pipe.
    fn on_message(&mut self, msg: Option<(u64, u64)>) -> bool {
        match msg {
            Some((MSG_DEADLINE, ns)) => self.extend(ns),
            Some((MSG_ARM, pgid)) => {
                if let Guard::Armed { kill_at, .. } = self.guard {
                    self.guard = Guard::Armed {
                        kill_at,
                        pgid: i32::try_from(pgid).ok(),
                    };
                }
                tracing::debug!(pgid, "fencer: guarding the node's process group");
            }
            Some((MSG_DISARM, _)) => {
                if !matches!(self.guard, Guard::Fired) {
                    self.guard = Guard::Idle;
                }
            }
            Some(_) => {}
            None => return false,
        }
        true
    }

    fn deadline_passed(&self) -> bool {
        matches!(self.guard, Guard::Armed { kill_at, .. } if crate::sys::boot_time() >= kill_at)
    }
}

/// The fencer process's main function (the hidden `__fence` subcommand);
/// `node`: its `--node-ids`. Returns its exit code.
pub(crate) fn fencer_main(node: Option<(u32, u32)>) -> u8 {
    let node = node.map_or_else(NodeIdentity::ours, |(u, g)| NodeIdentity::new(u, g));
    if let Err(e) = crate::harden::harden_self() {
        tracing::warn!(error = %e, "fencer: cannot harden itself");
    }
    let tool = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    let tool_fd = tool
        .and_then(RPid::from_raw)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let timer = rustix::time::timerfd_create(
        rustix::time::TimerfdClockId::Boottime,
        rustix::time::TimerfdFlags::CLOEXEC,
    );
    // Unbuffered: a message left in a buffer would be invisible to poll.
    let (Some(tool_fd), Ok(timer), Ok(input), Ok(output)) = (
        tool_fd,
        timer,
        rustix::io::dup(std::io::stdin()),
        rustix::io::dup(std::io::stdout()),
    ) else {
        tracing::error!(
            event = "fence_failed",
            "fencer: the tool is gone, or no pipe or CLOCK_BOOTTIME timer"
        );
        return 1;
    };
    let mut input = std::fs::File::from(input);
    let mut f = Fencer {
        tool,
        node,
        guard: Guard::Idle,
        timer,
        acks: std::fs::File::from(output),
    };
    loop {
        let mut fds = [
            PollFd::new(&input, PollFlags::IN),
            PollFd::new(&f.timer, PollFlags::IN),
            PollFd::new(&tool_fd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return 1,
        }
        let ready = |i: usize| !fds[i].revents().is_empty();
        let (msg, timed, tool_gone) = (ready(0), ready(1), ready(2));
        if timed {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&f.timer, &mut b);
        }
        // The tool closed the pipe or exited: a disarmed fencer just exits.
        if (msg && !f.on_message(read_msg(&mut input))) || tool_gone {
            f.fire(Cause::ToolGone);
            return 0;
        }
        if f.deadline_passed() {
            f.fire(Cause::Deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        assert_eq!(
            decode(&encode(MSG_DEADLINE, 123_456_789_012)),
            (1, 123_456_789_012)
        );
    }

    #[test]
    fn victims_are_the_group_the_tools_descendants_and_theirs() {
        let s = |ppid, pgid, dead| ProcStat {
            ppid,
            pgid,
            start: 1,
            dead,
        };
        let stats: HashMap<i32, ProcStat> = [
            (10, s(1, 10, false)),  // the tool
            (11, s(10, 10, false)), // the fencer
            (20, s(10, 20, false)), // cosmovisor, group leader
            (21, s(20, 20, false)), // the node
            (22, s(21, 22, false)), // a child of the node in a group of its own
            (30, s(10, 30, false)), // an orphan reparented to the tool
            (40, s(1, 20, false)),  // in the group, reparented to init
            (41, s(40, 41, false)), // its child
            (50, s(1, 50, false)),  // unrelated
            (23, s(20, 20, true)),  // a dead zombie
        ]
        .into_iter()
        .collect();
        let mut v = victims(&stats, Some(10), Some(20), &[11, 11]);
        v.sort();
        assert_eq!(v, vec![20, 21, 22, 30, 40, 41]);
        let mut c: Vec<i32> = children_of(&stats, Some(10)).into_iter().collect();
        c.sort();
        assert_eq!(c, vec![11, 20, 30]);
        // The tool gone: the group and its descendants still.
        let mut v = victims(&stats, None, Some(20), &[11, 11]);
        v.sort();
        assert_eq!(v, vec![20, 21, 22, 40, 41]);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let me = std::process::id() as i32;
        let st = read_stat(me).expect("own stat");
        assert_eq!(
            st.ppid,
            rustix::process::getppid().unwrap().as_raw_nonzero().get()
        );
        assert!(!st.dead);
    }
}
