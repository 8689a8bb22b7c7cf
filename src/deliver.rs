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
//!    and `POLLERR` reveals a reader that died;
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
use crate::procfs::{self, Holder, Pid, ProcError};
use crate::slot::{ArmedFifo, KeySlot, SlotError};

/// How long to wait for the holder set to settle after the writer open returns.
pub const SETTLE_BOUND: Duration = Duration::from_millis(200);

/// How long the verified reader has to drain the pipe.
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Who may receive the key.
#[derive(Debug, Clone)]
pub struct ReaderPolicy {
    /// Our child (cosmovisor, or the node in `exec` mode): readers must descend from it.
    pub root: Pid,
    /// The node's identity (its uid; its /proc entries are inspected as it).
    pub node: NodeIdentity,
    /// Ourselves (our own fds are ignored).
    pub me: Pid,
}

impl ReaderPolicy {
    /// The node: our child or one of its descendants, running as the node's uid.
    /// (In `exec` mode the child itself is the node.)
    pub fn allows(&self, h: &Holder) -> bool {
        h.euid() == self.node.uid() && procfs::is_descendant_of(h.pid, self.root)
    }
}

/// What to put at `P` the moment a reader is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The stripped key file (default).
    Stripped,
    /// A fresh FIFO (always-armed mode).
    Fifo,
}

/// The result of one hand-off attempt.
#[derive(Debug)]
pub enum Outcome {
    /// The node read the whole key.
    Delivered {
        /// The reader.
        reader: Holder,
        /// Writer open returned → drain confirmed.
        latency: Duration,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// Someone other than the node (alone or with it) opened the FIFO:
    /// nothing was written.
    Refused {
        /// Everyone holding the pipe.
        holders: Vec<Holder>,
        /// Why.
        reason: String,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// The verified reader went away before draining the pipe.
    NotRead {
        /// The reader.
        reader: Holder,
        /// What happened.
        reason: &'static str,
        /// In always-armed mode, the FIFO now at `P`.
        next: Option<ArmedFifo>,
    },
    /// A stranger held the pipe after the key was written: treat the key as exposed.
    Exposed {
        /// The node.
        reader: Holder,
        /// The others.
        strangers: Vec<Holder>,
    },
    /// Cancelled before any reader attached.
    Cancelled,
}

/// Delivery failed in a way that is not about the reader.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// A slot move failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// `/proc` could not be inspected: fail closed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A syscall on the FIFO failed.
    #[error("{op} on the key FIFO: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Cause.
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
pub struct Canceller {
    flag: Arc<AtomicBool>,
    path_fd: Arc<OwnedFd>,
    node: NodeIdentity,
}

impl Canceller {
    /// Wakes the blocked writer open (by attaching a reader of our own) after
    /// setting the flag that tells the writer thread to stand down.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // The open of a FIFO for writing waits for the reader counter to
        // change, so closing our reader right away still wakes it.
        let _ = reopen_as(&self.path_fd, OFlags::RDONLY | OFlags::NONBLOCK, self.node);
    }

    /// Whether cancel was called.
    pub fn is_cancelled(&self) -> bool {
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
pub struct Pending {
    armed: ArmedFifo,
    canceller: Canceller,
}

impl Pending {
    /// Wraps an armed FIFO for delivery to the node of `policy`.
    pub fn new(armed: ArmedFifo, policy: &ReaderPolicy) -> Self {
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
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Inode of the armed FIFO.
    pub fn inode(&self) -> u64 {
        self.armed.ino
    }

    /// Blocks until a reader opens the FIFO (or cancel), then runs the hand-off.
    pub fn run(
        self,
        slot: &KeySlot,
        key: &ValidatorKey,
        policy: &ReaderPolicy,
        next: Next,
    ) -> Result<Outcome, DeliverError> {
        let writer = match reopen_as(&self.armed.path_fd, OFlags::WRONLY, self.canceller.node) {
            Ok(w) => w,
            Err(e) if self.canceller.is_cancelled() => {
                let _ = e;
                return Ok(Outcome::Cancelled);
            }
            Err(e) => return Err(io_err("open for writing")(e)),
        };
        if self.canceller.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let attached = Instant::now();
        crate::failpoint!("after-writer-open");
        let st = rustix::fs::fstat(&writer).map_err(io_err("fstat"))?;
        if st.st_dev != self.armed.dev || st.st_ino != self.armed.ino {
            return Err(DeliverError::WrongInode {
                expected: self.armed.ino,
                got: st.st_ino,
            });
        }
        // 2. Nobody new may reach this inode by name from now on.
        let next_armed = match next {
            Next::Stripped => {
                slot.strip(&key.stripped_json())?;
                tracing::info!(event = "stripped", path = %slot.path().display(), "wrote stripped key file");
                None
            }
            Next::Fifo => Some(slot.arm()?),
        };
        let st = rustix::fs::fstat(&writer).map_err(io_err("fstat"))?;
        if st.st_nlink != 0 {
            return Err(DeliverError::StillLinked(st.st_nlink as u64));
        }
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
        let (ok, strangers): (Vec<_>, Vec<_>) =
            holders.iter().cloned().partition(|h| policy.allows(h));
        if !strangers.is_empty() || ok.len() != 1 {
            let reason = if strangers.is_empty() {
                format!("{} node processes attached at once", ok.len())
            } else if ok.is_empty() {
                "the reader is not our node (not a descendant of our child with the node's uid)"
                    .to_string()
            } else {
                "a stranger attached at the same time as the node".to_string()
            };
            // Dropping the writer without writing: every reader sees EOF.
            drop(writer);
            return Ok(Outcome::Refused {
                holders,
                reason,
                next: next_armed,
            });
        }
        let reader = ok.into_iter().next().expect("one reader");
        // 4. One write (the key is far below PIPE_BUF, so it is atomic).
        let json = key.to_secret_json()?;
        match rustix::io::write(&writer, json.expose_secret()) {
            Ok(n) if n == json.len() => {}
            Ok(_) => {
                return Err(DeliverError::Io {
                    op: "short write",
                    source: std::io::Error::other("pipe accepted part of the key"),
                })
            }
            Err(rustix::io::Errno::PIPE) => {
                return Ok(Outcome::NotRead {
                    reader,
                    reason: "the reader closed the FIFO before the key was written",
                    next: next_armed,
                })
            }
            Err(e) => return Err(io_err("write")(e)),
        }
        drop(json);
        crate::failpoint!("after-key-write");
        match confirm_drained(&writer)? {
            Drain::Drained => {}
            Drain::ReaderGone => {
                return Ok(Outcome::NotRead {
                    reader,
                    reason: "the reader exited or closed the FIFO before reading the key",
                    next: next_armed,
                })
            }
            Drain::Timeout => {
                tracing::warn!(
                    pid = reader.pid.0,
                    "the node attached but did not read the key within {:?}; closing the pipe",
                    DRAIN_BOUND
                );
                return Ok(Outcome::NotRead {
                    reader,
                    reason: "the reader did not read the key in time",
                    next: next_armed,
                });
            }
        }
        let latency = attached.elapsed();
        drop(writer);
        // 5. Anyone else on the pipe now could have read along.
        let after = procfs::holders(self.armed.dev, self.armed.ino, policy.me, policy.node)?;
        let strangers: Vec<_> = after.into_iter().filter(|h| !policy.allows(h)).collect();
        if !strangers.is_empty() {
            return Ok(Outcome::Exposed { reader, strangers });
        }
        Ok(Outcome::Delivered {
            reader,
            latency,
            next: next_armed,
        })
    }
}

/// Re-scans until the holder set is non-empty and unchanged across two scans.
/// `Ok(Err(reason))` means undecidable within the bound: refuse.
fn settle_holders(
    armed: &ArmedFifo,
    policy: &ReaderPolicy,
) -> Result<Result<Vec<Holder>, String>, ProcError> {
    let deadline = Instant::now() + SETTLE_BOUND;
    let mut prev: Option<Vec<Holder>> = None;
    let mut backoff = Duration::from_micros(100);
    let mut confirming = false;
    loop {
        let cur = procfs::holders(armed.dev, armed.ino, policy.me, policy.node)?;
        if !cur.is_empty() && prev.as_ref() == Some(&cur) {
            return Ok(Ok(cur));
        }
        // A reader that first showed in the scan that ran into the bound gets
        // the one scan that can confirm it: on a loaded machine a scan of
        // every task can take a good part of the bound, and refusing the node
        // for that would restart it for nothing. Nothing is written unless two
        // scans in a row agree, however long they take.
        let just_appeared = !cur.is_empty() && prev.as_ref().map_or(true, Vec::is_empty);
        if Instant::now() >= deadline && (confirming || !just_appeared) {
            return Ok(Err(if cur.is_empty() {
                format!("no reader became visible in /proc within {SETTLE_BOUND:?}")
            } else {
                format!(
                    "the set of readers kept changing for {SETTLE_BOUND:?} (last two scans: {} then {})",
                    holders_brief(prev.as_deref().unwrap_or_default()),
                    holders_brief(&cur)
                )
            }));
        }
        confirming = Instant::now() >= deadline;
        prev = Some(cur);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(10));
    }
}

/// `[pid 12 task 12, pid 40 task 41]`, for a refusal's reason.
fn holders_brief(h: &[Holder]) -> String {
    let items: Vec<String> = h
        .iter()
        .map(|h| format!("pid {} task {} uid {}", h.pid, h.tid, h.euid()))
        .collect();
    format!("[{}]", items.join(", "))
}

enum Drain {
    Drained,
    ReaderGone,
    Timeout,
}

fn confirm_drained(writer: &OwnedFd) -> Result<Drain, DeliverError> {
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
        if Instant::now() >= deadline {
            return Ok(Drain::Timeout);
        }
        wait = (wait * 2).min(Duration::from_millis(5));
    }
}
