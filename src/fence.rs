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

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Pid as RPid;

use crate::identity::NodeIdentity;
use crate::procfs::tree::{kill_tree, Tree};

/// The hidden subcommand the fencer runs as.
pub(crate) const SUBCOMMAND: &str = "__fence";

/// A message from the tool to its fencer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToFencer {
    /// Kill the node's tree at this instant of the boot clock unless told
    /// a later one (nanoseconds).
    Deadline(u64),
    /// The node's process group (cosmovisor's pid).
    Arm(u64),
    /// The tree is gone: nothing to kill any more.
    Disarm,
}

/// A message from the fencer to the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FromFencer {
    /// This deadline (ns) is enforced now.
    Ack(u64),
    /// The tree was killed: this many processes.
    Fired(u64),
}

/// Each message is 16 bytes, a tag and a value, so that one pipe write is
/// atomic. The two directions have disjoint tags: a message read from the
/// wrong pipe is unknown, never taken for another.
const TAG_DEADLINE: u64 = 1;
const TAG_ARM: u64 = 2;
const TAG_DISARM: u64 = 3;
const TAG_ACK: u64 = 0x101;
const TAG_FIRED: u64 = 0x102;

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

impl ToFencer {
    fn bytes(self) -> [u8; 16] {
        match self {
            ToFencer::Deadline(ns) => encode(TAG_DEADLINE, ns),
            ToFencer::Arm(pgid) => encode(TAG_ARM, pgid),
            ToFencer::Disarm => encode(TAG_DISARM, 0),
        }
    }

    fn from_bytes(b: &[u8; 16]) -> Option<ToFencer> {
        match decode(b) {
            (TAG_DEADLINE, ns) => Some(ToFencer::Deadline(ns)),
            (TAG_ARM, pgid) => Some(ToFencer::Arm(pgid)),
            (TAG_DISARM, _) => Some(ToFencer::Disarm),
            _ => None,
        }
    }
}

impl FromFencer {
    fn bytes(self) -> [u8; 16] {
        match self {
            FromFencer::Ack(ns) => encode(TAG_ACK, ns),
            FromFencer::Fired(n) => encode(TAG_FIRED, n),
        }
    }

    fn from_bytes(b: &[u8; 16]) -> Option<FromFencer> {
        match decode(b) {
            (TAG_ACK, ns) => Some(FromFencer::Ack(ns)),
            (TAG_FIRED, n) => Some(FromFencer::Fired(n)),
            _ => None,
        }
    }
}

/// Reads one whole message: `None` at end of file or on an error,
/// `Some(None)` for a message of unknown tag (skipped).
fn read_msg<M>(r: &mut impl Read, parse: fn(&[u8; 16]) -> Option<M>) -> Option<Option<M>> {
    let mut b = [0u8; 16];
    r.read_exact(&mut b).ok().map(|()| parse(&b))
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
                while let Some(msg) = read_msg(&mut acks, FromFencer::from_bytes) {
                    match msg {
                        Some(FromFencer::Ack(ns)) => {
                            seen.fetch_max(ns, Ordering::SeqCst);
                        }
                        Some(FromFencer::Fired(n)) => news(FenceNews::Fired(n)),
                        None => {}
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

    fn send(&self, msg: ToFencer) -> bool {
        (&*self.to).write_all(&msg.bytes()).is_ok()
    }

    /// A sender of kill deadlines, for the lease's renewal thread.
    pub(crate) fn extender(&self) -> impl Fn(Duration) + Send + 'static {
        let to = self.to.clone();
        move |kill_at: Duration| {
            let _ = (&*to).write_all(&ToFencer::Deadline(kill_at.as_nanos() as u64).bytes());
        }
    }

    /// The latest kill deadline the fencer acknowledged (boot clock; zero
    /// before the first).
    pub(crate) fn enforced(&self) -> Duration {
        Duration::from_nanos(self.enforced.load(Ordering::SeqCst))
    }

    /// Sends `kill_at` and waits until the fencer enforces it.
    pub(crate) fn extend_and_confirm(&self, kill_at: Duration, within: Duration) -> bool {
        if !self.send(ToFencer::Deadline(kill_at.as_nanos() as u64)) {
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
        self.send(ToFencer::Arm(u64::from(pgid)))
    }

    /// The node's tree is gone: nothing to kill any more; then stops the
    /// fencer and reaps it. (Dropping a `Fence` instead closes the pipe
    /// without disarming: the fencer then kills whatever is left.)
    pub(crate) fn finish(self) {
        self.send(ToFencer::Disarm);
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
            let _ = self.acks.write_all(&FromFencer::Fired(k.count).bytes());
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
            let _ = self.acks.write_all(&FromFencer::Ack(ns).bytes());
        }
    }

    /// One message from the tool; `false` at the end of its pipe.
    fn on_message(&mut self, msg: Option<Option<ToFencer>>) -> bool {
        match msg {
            Some(Some(ToFencer::Deadline(ns))) => self.extend(ns),
            Some(Some(ToFencer::Arm(pgid))) => {
                if let Guard::Armed { kill_at, .. } = self.guard {
                    self.guard = Guard::Armed {
                        kill_at,
                        pgid: i32::try_from(pgid).ok(),
                    };
                }
                tracing::debug!(pgid, "fencer: guarding the node's process group");
            }
            Some(Some(ToFencer::Disarm)) => {
                if !matches!(self.guard, Guard::Fired) {
                    self.guard = Guard::Idle;
                }
            }
            Some(None) => {}
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
        if (msg && !f.on_message(read_msg(&mut input, ToFencer::from_bytes))) || tool_gone {
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
    fn messages_round_trip_and_never_cross() {
        for m in [
            ToFencer::Deadline(123_456_789_012),
            ToFencer::Arm(4242),
            ToFencer::Disarm,
        ] {
            assert_eq!(ToFencer::from_bytes(&m.bytes()), Some(m));
            assert_eq!(FromFencer::from_bytes(&m.bytes()), None, "{m:?}");
        }
        for m in [FromFencer::Ack(99), FromFencer::Fired(3)] {
            assert_eq!(FromFencer::from_bytes(&m.bytes()), Some(m));
            assert_eq!(ToFencer::from_bytes(&m.bytes()), None, "{m:?}");
        }
    }
}
