//! The hand-off: one armed FIFO, one verified reader, one write.
//!
//! docs/design.md §3, in order:
//! 1. the writer end is opened through the FIFO's `O_PATH` fd on a thread
//!    (blocking, no polling); cancelling opens the same inode for reading,
//!    after setting a flag so our own canceller is never taken for a reader;
//! 2. the next file (stripped key, or a fresh FIFO) is renamed over `P` at
//!    once and the FIFO must have no name left (`st_nlink == 0`);
//! 3. holders of the inode are found in `/proc` and re-scanned until the set
//!    is non-empty and stable (a blocked reader's fd appears only after our
//!    open returns);
//! 4. the key is written only if every holder is the node: a descendant of
//!    our child with the node's uid; the drain is confirmed with `FIONREAD`
//!    and `POLLERR` reveals a reader that died; while the key is in the pipe
//!    the reader must not be stopped and nobody else may hold the pipe
//!    (scanned every [`DRAIN_SCAN_EVERY`]), and it must be drained within
//!    [`DRAIN_BOUND`]: otherwise we take the key back out of the pipe and
//!    treat it as exposed;
//! 5. a final scan raises the alarm if anyone else holds the pipe;
//! 6. the delivery is logged with the reader's pid, uid and executable.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use secrecy::ExposeSecret;

use crate::identity::NodeIdentity;
use crate::key::ValidatorKey;
use crate::procfs::{self, Pid, PipeHolder, ProcError};
use crate::slot::{ArmedFifo, KeySlot, SlotError};

/// How long to wait for the holder set to settle after the writer open returns.
pub(crate) const SETTLE_BOUND: Duration = Duration::from_millis(200);

/// How long the verified reader has to drain the pipe.
pub(crate) const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// How often the pipe's holders are scanned while the key sits in it.
pub(crate) const DRAIN_SCAN_EVERY: Duration = Duration::from_millis(10);

/// Who may receive the key.
#[derive(Debug, Clone)]
pub(crate) struct ReaderPolicy {
    /// Our child (cosmovisor, or the node in `exec` mode): readers must descend from it.
    pub(crate) root: Pid,
    /// The node's identity (its uid; its /proc entries are inspected as it).
    pub(crate) node: NodeIdentity,
    /// Ourselves and our fencer (left out of the scans).
    pub(crate) ours: procfs::Ours,
}

impl ReaderPolicy {
    /// The node: our child or one of its descendants, running as the node's uid.
    /// (In `exec` mode the child itself is the node.)
    #[cfg(test)]
    pub(crate) fn allows(&self, h: &PipeHolder) -> bool {
        self.admits(h, |pid| procfs::is_descendant_of(pid, self.root))
    }

    /// Whether `h` is the node: running as the node's uid and, as `descends`
    /// tells (asked only for the node's uid), our child or one of its
    /// descendants.
    fn admits(&self, h: &PipeHolder, descends: impl Fn(Pid) -> bool) -> bool {
        h.euid() == self.node.uid() && descends(h.pid)
    }
}

/// What to put at `P` the moment a reader is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The stripped key file (default).
    Stripped,
    /// A fresh FIFO (always-armed mode).
    Fifo,
}

/// The result of one hand-off attempt.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The node read the whole key.
    Delivered {
        reader: PipeHolder,
        /// Writer open returned → drain confirmed.
        latency: Duration,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// Someone other than the node (alone or with it) opened the FIFO:
    /// nothing was written.
    Refused {
        /// Everyone holding the pipe.
        holders: Vec<PipeHolder>,
        reason: String,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// The verified reader went away before draining the pipe.
    NotRead {
        reader: PipeHolder,
        /// What happened.
        reason: &'static str,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// The key was written but may have reached someone else: treat it as
    /// exposed.
    Exposed {
        /// The node.
        reader: PipeHolder,
        exposure: Exposure,
        /// Key bytes we took back out of the pipe (so nobody reads them later).
        pulled_back: usize,
    },
    /// Cancelled before any reader attached.
    Cancelled,
}

/// Why a written key may have reached someone else than the node.
#[derive(Debug)]
pub(crate) enum Exposure {
    /// Others held the pipe while the key was in it, or after.
    Strangers(Vec<PipeHolder>),
    /// The reader was stopped (a stop signal, a tracer) with the key in its
    /// pipe: whoever stopped it could open the pipe through
    /// `/proc/<pid>/fd` and copy the key, close, and let it run on.
    ReaderStopped,
    /// The reader held the pipe without draining it for [`DRAIN_BOUND`]:
    /// the key sat there for anyone who can reach the node's fds.
    NotDrained,
    /// A process of the node's uid whose fd table we may not read (not
    /// dumpable, say) was there while the key was in the pipe, or after:
    /// it may hold the pipe. Before the write the same fails the delivery
    /// closed; after it the key is out of our hands.
    Uninspectable(String),
}

/// [`procfs::holders`] once the key is written: an uninspectable process
/// is an exposure, not a failed delivery.
fn holders_after_write(
    armed: &ArmedFifo,
    p: &ReaderPolicy,
) -> Result<Result<Vec<PipeHolder>, Exposure>, DeliverError> {
    match procfs::holders(armed.dev, armed.ino, &p.ours, p.node) {
        Ok(h) => Ok(Ok(h)),
        Err(e @ ProcError::Unreadable { .. }) => Ok(Err(Exposure::Uninspectable(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

/// Delivery failed in a way that is not about the reader.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    /// A slot move failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// `/proc` could not be inspected: fail closed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A syscall on the FIFO failed.
    #[error("{op} on the key FIFO: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    /// The inode at the writer end is not the one armed.
    #[error("the FIFO opened for writing is not the one armed (expected inode {expected}, got {got}); refusing to write")]
    WrongInode {
        /// Armed inode.
        expected: u64,
        /// Opened inode.
        got: u64,
    },
    /// The FIFO still has a name after it was moved off the key path.
    #[error("the key FIFO still has {0} name(s) after being replaced at the key path; someone linked it elsewhere. Refusing to write")]
    StillLinked(u64),
    /// Secret memory or serialisation failure.
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),
}

fn io_err(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> DeliverError {
    move |e| DeliverError::Io {
        op,
        source: e.into(),
    }
}

/// Cancels a pending hand-off from another thread.
#[derive(Clone)]
pub(crate) struct Canceller {
    flag: Arc<AtomicBool>,
    path_fd: Arc<OwnedFd>,
    node: NodeIdentity,
}

impl Canceller {
    /// Wakes the blocked writer open (by attaching a reader of our own) after
    /// setting the flag that tells the writer thread to stand down.
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // The open of a FIFO for writing waits for the reader counter to
        // change, so closing our reader right away still wakes it.
        let _ = reopen_as(&self.path_fd, OFlags::RDONLY | OFlags::NONBLOCK, self.node);
    }

    /// Whether cancel was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Reopens the FIFO; as the node's fs ids when we are root and the FIFO is
/// the node's (0600): root without CAP_DAC_OVERRIDE (the split-trust unit)
/// could not open it otherwise.
fn reopen_as(fd: &OwnedFd, flags: OFlags, node: NodeIdentity) -> rustix::io::Result<OwnedFd> {
    node.as_node(|| proc_self_reopen(fd, flags))
}

fn proc_self_reopen(fd: &OwnedFd, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// One armed FIFO waiting for its reader.
pub(crate) struct Pending {
    armed: ArmedFifo,
    canceller: Canceller,
}

impl Pending {
    /// Wraps an armed FIFO for delivery to the node of `policy`.
    pub(crate) fn new(armed: ArmedFifo, policy: &ReaderPolicy) -> Self {
        let path_fd = Arc::new(armed.path_fd.try_clone().expect("dup of O_PATH fd"));
        Pending {
            armed,
            canceller: Canceller {
                flag: Arc::new(AtomicBool::new(false)),
                path_fd,
                node: policy.node,
            },
        }
    }

    /// A handle to cancel the wait.
    pub(crate) fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Inode of the armed FIFO.
    pub(crate) fn inode(&self) -> u64 {
        self.armed.ino
    }

    /// Blocks until a reader opens the FIFO (or cancel), then runs the hand-off.
    pub(crate) fn run(
        self,
        slot: &KeySlot,
        key: &ValidatorKey,
        policy: &ReaderPolicy,
        next: Next,
    ) -> Result<Outcome, DeliverError> {
        // 1. Someone opened the FIFO for reading (or we were cancelled).
        let Some(writer) = self.open_writer()? else {
            return Ok(Outcome::Cancelled);
        };
        let attached = Instant::now();
        crate::failpoint!("after-writer-open");
        self.check_inode(&writer)?;
        // 2. Nobody new may reach this inode by name from now on.
        let next_armed = move_off(slot, key, next, &writer)?;
        // 3. Who holds it?
        let holders = match settle_holders(&self.armed, policy)? {
            Ok(h) => h,
            Err(reason) => {
                return Ok(Outcome::Refused {
                    holders: vec![],
                    reason,
                    next: next_armed,
                })
            }
        };
        let descends = |pid| procfs::is_descendant_of(pid, policy.root);
        let reader = match decide(&holders, policy, descends) {
            Decision::Write(reader) => reader,
            Decision::Refuse(reason) => {
                // Dropping the writer without writing: every reader sees EOF.
                drop(writer);
                return Ok(Outcome::Refused {
                    holders,
                    reason,
                    next: next_armed,
                });
            }
        };
        // A reader stopped now may have been stopped since it attached, for
        // someone to open its pipe after our last scan and copy the key as it
        // arrives, closing and letting it run on before the drain watch's
        // first look (measured under load: 2 silent copies in 8 without this
        // check, issue 20 item 2a). Nothing is written to a stopped reader.
        if reader_stopped(&reader) {
            drop(writer);
            return Ok(Outcome::Refused {
                holders: vec![reader],
                reason: "the node is stopped (a stop signal or a tracer): whoever stopped it could copy the key out of its pipe".into(),
                next: next_armed,
            });
        }
        // 4. One write, then the drain, watched.
        let watch = DrainWatch {
            armed: &self.armed,
            policy,
            reader: &reader,
            last_scan: Instant::now(),
        };
        match write_key(&writer, key, watch)? {
            WriteEnd::Drained => {}
            WriteEnd::NotRead(reason) => {
                return Ok(Outcome::NotRead {
                    reader,
                    reason,
                    next: next_armed,
                })
            }
            WriteEnd::Exposed(exposure) => {
                let pulled_back = pull_back(&writer, self.canceller.node);
                return Ok(Outcome::Exposed {
                    reader,
                    exposure,
                    pulled_back,
                });
            }
        }
        let latency = attached.elapsed();
        drop(writer);
        // 5. Anyone else on the pipe now could have read along.
        let exposure = match holders_after_write(&self.armed, policy)? {
            Ok(after) => {
                let strangers = strangers(after, policy, |pid| pid == reader.pid || descends(pid));
                (!strangers.is_empty()).then_some(Exposure::Strangers(strangers))
            }
            Err(e) => Some(e),
        };
        if let Some(exposure) = exposure {
            return Ok(Outcome::Exposed {
                reader,
                exposure,
                pulled_back: 0,
            });
        }
        Ok(Outcome::Delivered {
            reader,
            latency,
            next: next_armed,
        })
    }

    /// Step 1: the writer end, once a reader has attached; `None` when the
    /// open returned because we cancelled.
    fn open_writer(&self) -> Result<Option<OwnedFd>, DeliverError> {
        match reopen_as(&self.armed.path_fd, OFlags::WRONLY, self.canceller.node) {
            Ok(_) | Err(_) if self.canceller.is_cancelled() => Ok(None),
            Ok(w) => Ok(Some(w)),
            Err(e) => Err(io_err("open for writing")(e)),
        }
    }

    /// The writer end must be the inode we armed.
    fn check_inode(&self, writer: &OwnedFd) -> Result<(), DeliverError> {
        let st = rustix::fs::fstat(writer).map_err(io_err("fstat"))?;
        if st.st_dev != self.armed.dev || st.st_ino != self.armed.ino {
            return Err(DeliverError::WrongInode {
                expected: self.armed.ino,
                got: st.st_ino,
            });
        }
        Ok(())
    }
}

/// Step 2: the next file renamed over `P`; the FIFO must then have no name left.
fn move_off(
    slot: &KeySlot,
    key: &ValidatorKey,
    next: Next,
    writer: &OwnedFd,
) -> Result<Option<ArmedFifo>, DeliverError> {
    let next_armed = match next {
        Next::Stripped => {
            slot.strip(&key.stripped_json())?;
            tracing::info!(event = "stripped", path = %slot.path().display(), "wrote stripped key file");
            None
        }
        Next::Fifo => Some(slot.arm()?),
    };
    let st = rustix::fs::fstat(writer).map_err(io_err("fstat"))?;
    if st.st_nlink != 0 {
        return Err(DeliverError::StillLinked(st.st_nlink as u64));
    }
    Ok(next_armed)
}

/// What the settled holder set decides.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The node alone holds the pipe: write the key to it.
    Write(PipeHolder),
    /// Write nothing, for this reason (logged with the holders).
    Refuse(String),
}

/// Step 4's condition: the key goes only to a pipe held by exactly one
/// process, the node (a descendant of our child with the node's uid).
/// `descends(pid)` says whether `pid` is our child or one of its descendants
/// (the caller reads that from `/proc`); everything else is decided here.
pub(crate) fn decide(
    holders: &[PipeHolder],
    policy: &ReaderPolicy,
    descends: impl Fn(Pid) -> bool,
) -> Decision {
    let (ok, strangers): (Vec<&PipeHolder>, Vec<&PipeHolder>) =
        holders.iter().partition(|h| policy.admits(h, &descends));
    if strangers.is_empty() && ok.len() == 1 {
        return Decision::Write(ok[0].clone());
    }
    Decision::Refuse(if strangers.is_empty() {
        format!("{} node processes attached at once", ok.len())
    } else if ok.is_empty() {
        "the reader is not our node (not a descendant of our child with the node's uid)".to_string()
    } else {
        "a stranger attached at the same time as the node".to_string()
    })
}

/// Step 5: the holders after the write that are not the node.
fn strangers(
    after: Vec<PipeHolder>,
    policy: &ReaderPolicy,
    descends: impl Fn(Pid) -> bool,
) -> Vec<PipeHolder> {
    after
        .into_iter()
        .filter(|h| !policy.admits(h, &descends))
        .collect()
}

/// How step 4 ended.
enum WriteEnd {
    Drained,
    /// The reader went away without the key (nobody else held the pipe).
    NotRead(&'static str),
    Exposed(Exposure),
}

/// What is watched while the key sits in the pipe.
struct DrainWatch<'a> {
    armed: &'a ArmedFifo,
    policy: &'a ReaderPolicy,
    reader: &'a PipeHolder,
    last_scan: Instant,
}

/// Whether the reader's task, or its process (a group stop), is stopped.
fn reader_stopped(reader: &PipeHolder) -> bool {
    procfs::task_is_stopped(reader.pid, reader.tid)
        || procfs::task_is_stopped(reader.pid, reader.pid)
}

impl DrainWatch<'_> {
    /// `Some` as soon as the key may be reaching someone else.
    fn check(&mut self) -> Result<Option<Exposure>, DeliverError> {
        if reader_stopped(self.reader) {
            return Ok(Some(Exposure::ReaderStopped));
        }
        if self.last_scan.elapsed() < DRAIN_SCAN_EVERY {
            return Ok(None);
        }
        self.last_scan = Instant::now();
        let p = self.policy;
        let now = match holders_after_write(self.armed, p)? {
            Ok(now) => now,
            Err(e) => return Ok(Some(e)),
        };
        // The verified reader is known by its pid: a node that reads and
        // exits at once may be reaped between the scan and the walk up its
        // parents, which would make it look like a stranger.
        let others = strangers(now, p, |pid| {
            pid == self.reader.pid || procfs::is_descendant_of(pid, p.root)
        });
        Ok((!others.is_empty()).then_some(Exposure::Strangers(others)))
    }
}

/// Takes what is left of the key back out of the pipe (through a read end
/// of our own on the same pipe), so that nobody reads it once we have
/// judged it exposed; the bytes are wiped. Best effort: the exposure stands
/// whatever this finds.
fn pull_back(writer: &OwnedFd, node: NodeIdentity) -> usize {
    let Ok(r) = reopen_as(writer, OFlags::RDONLY | OFlags::NONBLOCK, node) else {
        tracing::warn!("could not open the key FIFO to take the key back out of it");
        return 0;
    };
    let mut buf = zeroize::Zeroizing::new([0u8; 4096]);
    let mut total = 0;
    while let Ok(n @ 1..) = rustix::io::read(&r, &mut buf[..]) {
        total += n;
    }
    total
}

/// Step 4: one write (the key is far below PIPE_BUF, so it is atomic), then
/// the drain, watched.
fn write_key(
    writer: &OwnedFd,
    key: &ValidatorKey,
    mut watch: DrainWatch<'_>,
) -> Result<WriteEnd, DeliverError> {
    let json = key.to_secret_json()?;
    match rustix::io::write(writer, json.expose_secret()) {
        Ok(n) if n == json.len() => {}
        Ok(_) => {
            return Err(DeliverError::Io {
                op: "short write",
                source: std::io::Error::other("pipe accepted part of the key"),
            })
        }
        Err(rustix::io::Errno::PIPE) => {
            return Ok(WriteEnd::NotRead(
                "the reader closed the FIFO before the key was written",
            ))
        }
        Err(e) => return Err(io_err("write")(e)),
    }
    drop(json);
    crate::failpoint!("after-key-write");
    Ok(match confirm_drained(writer, || watch.check())? {
        Drain::Drained => WriteEnd::Drained,
        Drain::ReaderGone => {
            WriteEnd::NotRead("the reader exited or closed the FIFO before reading the key")
        }
        Drain::Watched(e) => WriteEnd::Exposed(e),
        Drain::Timeout => WriteEnd::Exposed(Exposure::NotDrained),
    })
}

/// Re-scans until the holder set is non-empty and unchanged across two scans.
/// `Ok(Err(reason))` means undecidable within the bound: refuse.
fn settle_holders(
    armed: &ArmedFifo,
    policy: &ReaderPolicy,
) -> Result<Result<Vec<PipeHolder>, String>, ProcError> {
    let deadline = Instant::now() + SETTLE_BOUND;
    let mut prev: Option<Vec<PipeHolder>> = None;
    let mut backoff = Duration::from_micros(100);
    let mut confirming = false;
    loop {
        let cur = procfs::holders(armed.dev, armed.ino, &policy.ours, policy.node)?;
        let past_deadline = Instant::now() >= deadline;
        match settle_step(prev.as_deref(), &cur, past_deadline, confirming) {
            Settle::Stable => return Ok(Ok(cur)),
            Settle::GiveUp(reason) => return Ok(Err(reason)),
            Settle::Again => {}
        }
        confirming = Instant::now() >= deadline;
        prev = Some(cur);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(10));
    }
}

/// What one scan of the holders tells the settling loop.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    /// Non-empty and the same as the scan before: decide on it.
    Stable,
    /// Scan again.
    Again,
    /// Undecidable within the bound: refuse, for this reason.
    GiveUp(String),
}

/// One step of [`settle_holders`]: `cur` after `prev` (`None` before the
/// first scan), whether the bound has passed, and whether the scan before
/// already ran into it.
fn settle_step(
    prev: Option<&[PipeHolder]>,
    cur: &[PipeHolder],
    past_deadline: bool,
    confirming: bool,
) -> Settle {
    if !cur.is_empty() && prev == Some(cur) {
        return Settle::Stable;
    }
    // A reader that first showed in the scan that ran into the bound gets
    // the one scan that can confirm it: on a loaded machine a scan of
    // every task can take a good part of the bound, and refusing the node
    // for that would restart it for nothing. Nothing is written unless two
    // scans in a row agree, however long they take.
    let just_appeared = !cur.is_empty() && prev.map_or(true, <[PipeHolder]>::is_empty);
    if !past_deadline || (just_appeared && !confirming) {
        return Settle::Again;
    }
    Settle::GiveUp(if cur.is_empty() {
        format!("no reader became visible in /proc within {SETTLE_BOUND:?}")
    } else {
        format!(
            "the set of readers kept changing for {SETTLE_BOUND:?} (last two scans: {} then {})",
            holders_brief(prev.unwrap_or_default()),
            holders_brief(cur)
        )
    })
}

/// `[pid 12 task 12, pid 40 task 41]`, for a refusal's reason.
fn holders_brief(h: &[PipeHolder]) -> String {
    let items: Vec<String> = h
        .iter()
        .map(|h| format!("pid {} task {} uid {}", h.pid, h.tid, h.euid()))
        .collect();
    format!("[{}]", items.join(", "))
}

enum Drain {
    Drained,
    ReaderGone,
    /// What `watch` found while the key was in the pipe.
    Watched(Exposure),
    Timeout,
}

fn confirm_drained(
    writer: &OwnedFd,
    mut watch: impl FnMut() -> Result<Option<Exposure>, DeliverError>,
) -> Result<Drain, DeliverError> {
    let deadline = Instant::now() + DRAIN_BOUND;
    let mut wait = Duration::from_micros(50);
    loop {
        let pending = rustix::io::ioctl_fionread(writer).map_err(io_err("FIONREAD"))?;
        if pending == 0 {
            return Ok(Drain::Drained);
        }
        // Events empty: poll still reports POLLERR (no readers left) and
        // POLLHUP; the timeout paces the FIONREAD checks.
        let mut fds = [PollFd::new(writer, PollFlags::empty())];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as i64,
        };
        let n = rustix::event::poll(&mut fds, Some(&ts)).map_err(io_err("poll"))?;
        if n > 0 && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) {
            let pending = rustix::io::ioctl_fionread(writer.as_fd()).map_err(io_err("FIONREAD"))?;
            return Ok(if pending == 0 {
                Drain::Drained
            } else {
                Drain::ReaderGone
            });
        }
        if let Some(e) = watch()? {
            return Ok(Drain::Watched(e));
        }
        if Instant::now() >= deadline {
            return Ok(Drain::Timeout);
        }
        wait = (wait * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::slot::tests::{OTHER as CONSENSUS, SAFE};

    /// Our child (cosmovisor) is pid 100; the node is its descendant 101;
    /// pid 300 is elsewhere in the tree.
    const CHILD: i32 = 100;
    const NODE: i32 = 101;
    const ELSEWHERE: i32 = 300;
    const NODE_UID: u32 = 1000;

    fn policy() -> ReaderPolicy {
        ReaderPolicy {
            root: Pid(CHILD),
            node: NodeIdentity::new(NODE_UID, NODE_UID),
            ours: procfs::Ours {
                me: Pid(1),
                fencer: None,
            },
        }
    }

    /// Descendants of our child, as `/proc` would say.
    fn family(pid: Pid) -> bool {
        BTreeSet::from([CHILD, NODE, NODE + 1, NODE + 2]).contains(&pid.0)
    }

    fn holder(pid: i32, uids: [u32; 4]) -> PipeHolder {
        PipeHolder {
            pid: Pid(pid),
            tid: Pid(pid),
            uids,
            exe: None,
        }
    }

    fn node(pid: i32) -> PipeHolder {
        holder(pid, [NODE_UID; 4])
    }

    fn refused(holders: &[PipeHolder]) -> String {
        match decide(holders, &policy(), family) {
            Decision::Refuse(reason) => reason,
            Decision::Write(h) => panic!("wrote to {h:?} for {holders:?}"),
        }
    }

    const NOT_OUR_NODE: &str =
        "the reader is not our node (not a descendant of our child with the node's uid)";

    #[test]
    fn writes_to_the_node_alone() {
        let n = node(NODE);
        assert_eq!(
            decide(std::slice::from_ref(&n), &policy(), family),
            Decision::Write(n)
        );
        // In `exec` mode our child is the node itself.
        let child = node(CHILD);
        assert_eq!(
            decide(std::slice::from_ref(&child), &policy(), family),
            Decision::Write(child)
        );
        // Through one of its threads.
        let thread = PipeHolder {
            tid: Pid(NODE + 50),
            ..node(NODE)
        };
        assert_eq!(
            decide(std::slice::from_ref(&thread), &policy(), family),
            Decision::Write(thread)
        );
    }

    #[test]
    fn refuses_a_process_outside_our_child_even_with_the_node_uid() {
        assert_eq!(refused(&[node(ELSEWHERE)]), NOT_OUR_NODE);
    }

    /// The effective uid decides: a descendant that kept the node's real uid
    /// but runs as another is not the node.
    #[test]
    fn refuses_a_descendant_of_another_uid() {
        assert_eq!(refused(&[holder(NODE, [0; 4])]), NOT_OUR_NODE);
        assert_eq!(
            refused(&[holder(NODE, [NODE_UID, 0, NODE_UID, NODE_UID])]),
            NOT_OUR_NODE
        );
        assert_eq!(refused(&[holder(NODE, [2000; 4])]), NOT_OUR_NODE);
    }

    #[test]
    fn refuses_a_stranger_beside_the_node() {
        for stranger in [node(ELSEWHERE), holder(NODE + 1, [0; 4])] {
            let reason = refused(&[node(NODE), stranger.clone()]);
            assert_eq!(
                reason, "a stranger attached at the same time as the node",
                "{stranger:?}"
            );
        }
    }

    /// Two node processes on one pipe: which one would read is a race.
    #[test]
    fn refuses_two_node_processes() {
        assert_eq!(
            refused(&[node(NODE), node(NODE + 1)]),
            "2 node processes attached at once"
        );
    }

    /// The settling loop never decides on an empty set; if it did, nothing is written.
    #[test]
    fn refuses_when_nobody_holds_the_pipe() {
        assert_eq!(refused(&[]), "0 node processes attached at once");
    }

    #[test]
    fn ancestry_is_asked_only_for_the_node_uid() {
        let asked = std::cell::Cell::new(0);
        let count = |pid| {
            asked.set(asked.get() + 1);
            family(pid)
        };
        let _ = decide(&[holder(NODE, [0; 4]), node(NODE)], &policy(), count);
        assert_eq!(asked.get(), 1);
    }

    /// Step 5: everyone but the node on the pipe after the write.
    #[test]
    fn strangers_after_the_write_are_everyone_but_the_node() {
        let others = vec![node(ELSEWHERE), holder(NODE + 1, [0; 4])];
        let mut after = vec![node(NODE)];
        after.extend(others.iter().cloned());
        assert_eq!(strangers(after, &policy(), family), others);
        assert!(strangers(vec![node(NODE)], &policy(), family).is_empty());
    }

    /// `allows` asks the real `/proc`: this test process is its own
    /// descendant, init is not ours.
    #[test]
    fn allows_reads_ancestry_from_proc() {
        let me = Pid(rustix::process::getpid().as_raw_nonzero().get());
        let uid = rustix::process::geteuid().as_raw();
        let p = ReaderPolicy {
            root: me,
            node: NodeIdentity::new(uid, 0),
            ours: procfs::Ours::me(),
        };
        assert!(p.allows(&holder(me.0, [uid; 4])));
        assert!(!p.allows(&holder(me.0, [uid.wrapping_add(1); 4])));
        if me.0 != 1 {
            assert!(!p.allows(&holder(1, [uid; 4])));
        }
    }

    // -- settling the holder set --------------------------------------------------------------

    #[test]
    fn settles_on_two_equal_non_empty_scans_even_past_the_bound() {
        let a = [node(NODE)];
        assert_eq!(settle_step(Some(&a), &a, false, false), Settle::Stable);
        assert_eq!(settle_step(Some(&a), &a, true, true), Settle::Stable);
    }

    #[test]
    fn scans_again_within_the_bound() {
        let a = [node(NODE)];
        let b = [node(NODE), node(ELSEWHERE)];
        assert_eq!(settle_step(None, &[], false, false), Settle::Again);
        assert_eq!(settle_step(Some(&[]), &[], false, false), Settle::Again);
        assert_eq!(settle_step(None, &a, false, false), Settle::Again);
        assert_eq!(settle_step(Some(&a), &b, false, false), Settle::Again);
    }

    #[test]
    fn gives_up_when_no_reader_shows_within_the_bound() {
        for prev in [None, Some(&[][..]), Some(&[node(NODE)][..])] {
            assert_eq!(
                settle_step(prev, &[], true, false),
                Settle::GiveUp("no reader became visible in /proc within 200ms".into()),
                "{prev:?}"
            );
        }
    }

    #[test]
    fn gives_up_when_the_readers_keep_changing() {
        let a = [holder(NODE, [NODE_UID; 4])];
        let b = [PipeHolder {
            tid: Pid(NODE + 7),
            ..node(NODE)
        }];
        assert_eq!(
            settle_step(Some(&a), &b, true, false),
            Settle::GiveUp(
                "the set of readers kept changing for 200ms (last two scans: \
                 [pid 101 task 101 uid 1000] then [pid 101 task 108 uid 1000])"
                    .into()
            )
        );
    }

    /// A reader first seen by the scan that ran into the bound gets one more
    /// scan to confirm it, and only one.
    #[test]
    fn a_reader_seen_first_at_the_bound_gets_one_confirming_scan() {
        let a = [node(NODE)];
        assert_eq!(settle_step(None, &a, true, false), Settle::Again);
        assert_eq!(settle_step(Some(&[]), &a, true, false), Settle::Again);
        assert!(matches!(
            settle_step(Some(&[]), &a, true, true),
            Settle::GiveUp(r) if r.contains("kept changing")
        ));
        // The confirming scan agrees: decide on it.
        assert_eq!(settle_step(Some(&a), &a, true, true), Settle::Stable);
    }

    // -- the hand-off on a real FIFO --------------------------------------------------------

    /// An armed slot in a tempdir whose node has `uid` (the FIFO is its own).
    fn armed_slot(uid: u32) -> (tempfile::TempDir, KeySlot, ArmedFifo) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("priv_validator_key.json");
        std::fs::write(&path, SAFE).unwrap();
        let slot = KeySlot::open(
            &path,
            NodeIdentity::new(uid, rustix::process::getegid().as_raw()),
        )
        .unwrap();
        slot.backup().unwrap();
        let armed = slot.arm().unwrap();
        (tmp, slot, armed)
    }

    fn our_policy(root: Pid, uid: u32) -> ReaderPolicy {
        ReaderPolicy {
            root,
            node: NodeIdentity::new(uid, rustix::process::getegid().as_raw()),
            ours: procfs::Ours::me(),
        }
    }

    /// `cat` reading the key path: a real reader process of our uid.
    fn reader(slot: &KeySlot) -> std::process::Child {
        Command::new("cat")
            .arg(slot.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// What the reader got; killed first if the hand-off failed (it would
    /// wait for a writer forever).
    fn read_all<T>(child: &mut std::process::Child, run: &Result<T, DeliverError>) -> Vec<u8> {
        if run.is_err() {
            let _ = child.kill();
        }
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        child.wait().unwrap();
        out
    }

    #[test]
    fn the_node_gets_the_key_once_and_the_stripped_key_takes_its_place() {
        let me = rustix::process::geteuid().as_raw();
        let (_tmp, slot, armed) = armed_slot(me);
        let key = ValidatorKey::parse(CONSENSUS.as_bytes()).unwrap();
        let mut cat = reader(&slot);
        let policy = our_policy(Pid(cat.id() as i32), me);
        let out = Pending::new(armed, &policy).run(&slot, &key, &policy, Next::Stripped);
        let got = read_all(&mut cat, &out);
        match out {
            Ok(Outcome::Delivered { reader, next, .. }) => {
                assert_eq!(reader.pid.0, cat.id() as i32);
                assert!(next.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ValidatorKey::parse(&got).unwrap().identity(),
            key.identity()
        );
        assert_eq!(std::fs::read(slot.path()).unwrap(), key.stripped_json());
    }

    /// A reader of another uid than the node's reads EOF, and the slot moves on all the same.
    #[test]
    fn a_reader_of_another_uid_reads_nothing() {
        // As root the FIFO is the node's, as in production: we open it as the node.
        let node_uid = rustix::process::geteuid().as_raw().wrapping_add(4242);
        let (_tmp, slot, armed) = armed_slot(node_uid);
        let key = ValidatorKey::parse(CONSENSUS.as_bytes()).unwrap();
        let mut cat = reader(&slot);
        let policy = our_policy(Pid(cat.id() as i32), node_uid);
        let out = Pending::new(armed, &policy).run(&slot, &key, &policy, Next::Fifo);
        assert!(
            read_all(&mut cat, &out).is_empty(),
            "the stranger read something"
        );
        match out {
            Ok(Outcome::Refused {
                holders,
                reason,
                next,
            }) => {
                assert_eq!(reason, NOT_OUR_NODE);
                assert_eq!(holders.len(), 1);
                assert_eq!(holders[0].pid.0, cat.id() as i32);
                let next = next.expect("always-armed: a fresh FIFO");
                use std::os::unix::fs::MetadataExt;
                let at_p = std::fs::symlink_metadata(slot.path()).unwrap();
                assert_eq!(at_p.ino(), next.ino);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !slot.holds_regular_file(),
            "a fresh FIFO is at the key path"
        );
    }

    /// Issue 20 item 2: a reader stopped with the key in its pipe (so that
    /// whoever stopped it can copy the key through `/proc/<pid>/fd`) is an
    /// exposure, found while the key is still there; we take the key back
    /// out, and the reader, once continued, reads nothing.
    #[test]
    fn a_reader_stopped_with_the_key_in_its_pipe_is_an_exposure_and_gets_nothing() {
        let me = rustix::process::geteuid().as_raw();
        let (_tmp, slot, armed) = armed_slot(me);
        let key = ValidatorKey::parse(CONSENSUS.as_bytes()).unwrap();
        // Opens the FIFO and never reads: the key sits in its pipe until it
        // is stopped (below, once the key had time to arrive).
        let mut sh = Command::new("sh")
            .args(["-c", r#"exec 3<"$1"; exec sleep 30"#, "sh"])
            .arg(slot.path())
            .spawn()
            .unwrap();
        let pid = Pid(sh.id() as i32);
        let policy = our_policy(pid, me);
        let out = std::thread::scope(|s| {
            let t =
                s.spawn(|| Pending::new(armed, &policy).run(&slot, &key, &policy, Next::Stripped));
            std::thread::sleep(Duration::from_millis(300));
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid.0).unwrap(),
                rustix::process::Signal::STOP,
            );
            t.join().unwrap()
        });
        let _ = sh.kill();
        let _ = sh.wait();
        match out {
            Ok(Outcome::Exposed {
                reader,
                exposure: Exposure::ReaderStopped,
                pulled_back,
            }) => {
                assert_eq!(reader.pid, pid);
                // All of it taken back: nobody read any of it.
                assert_eq!(pulled_back, key.to_secret_json().unwrap().len());
            }
            other => panic!("{other:?}"),
        }
    }

    /// Stopped before the write (since it attached, say), the reader is
    /// refused: nothing is written for whoever stopped it to copy.
    #[test]
    fn a_reader_stopped_before_the_write_gets_nothing() {
        let me = rustix::process::geteuid().as_raw();
        let (_tmp, slot, armed) = armed_slot(me);
        let key = ValidatorKey::parse(CONSENSUS.as_bytes()).unwrap();
        let mut sh = Command::new("sh")
            .args(["-c", r#"exec 3<"$1"; kill -STOP $$; cat <&3"#, "sh"])
            .arg(slot.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid(sh.id() as i32);
        let policy = our_policy(pid, me);
        let out = Pending::new(armed, &policy).run(&slot, &key, &policy, Next::Stripped);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid.0).unwrap(),
            rustix::process::Signal::CONT,
        );
        let got = read_all(&mut sh, &out);
        match out {
            Ok(Outcome::Refused { reason, .. }) => assert!(reason.contains("stopped"), "{reason}"),
            // It stopped itself a moment after our last look before the
            // write: the drain watch saw it, and took the key back.
            Ok(Outcome::Exposed {
                exposure: Exposure::ReaderStopped,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(got.is_empty(), "the stopped reader got {} bytes", got.len());
    }

    #[test]
    fn cancel_wakes_the_writer_and_leaves_the_fifo_armed() {
        let (_tmp, slot, armed) = armed_slot(rustix::process::geteuid().as_raw());
        let key = ValidatorKey::parse(CONSENSUS.as_bytes()).unwrap();
        let ino = armed.ino;
        let policy = our_policy(Pid(1), rustix::process::geteuid().as_raw());
        let pending = Pending::new(armed, &policy);
        let cancel = pending.canceller();
        let out = std::thread::scope(|s| {
            let t = s.spawn(|| pending.run(&slot, &key, &policy, Next::Stripped));
            std::thread::sleep(Duration::from_millis(50));
            cancel.cancel();
            t.join().unwrap()
        });
        assert!(matches!(out, Ok(Outcome::Cancelled)), "{out:?}");
        assert!(cancel.is_cancelled());
        let (repair, _) = slot.diagnose().unwrap();
        assert_eq!(repair.found, "armed");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::symlink_metadata(slot.path()).unwrap().ino(), ino);
    }
}
