//! Supervision: run the child (cosmovisor, or any node command), deliver the
//! key each time the node starts, forward signals, adopt orphans, and put the
//! safe key back on every exit path we control.
//!
//! Threads, not an async runtime: one waits for signals (`sigwait`), one
//! waits for the child, one blocks in the FIFO's writer open, one reads
//! inotify for the upgrade marker, one waits on the node's pidfd. All report
//! to the main thread over one channel; the main thread alone moves the slot.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::deliver::{Canceller, DeliverError, Next, Outcome, Pending, ReaderPolicy};
use crate::fence::{Fence, FenceNews, FenceOptions};
use crate::harden;
use crate::key::ValidatorKey;
use crate::lease::{boot_time, Held, Keeper, LeaseClient, LeaseNews, SignState, StateFile, Waiter};
use crate::notify::Notifier;
use crate::procfs::{self, Pid};
use crate::slot::{ArmedFifo, KeySlot, SlotError};

/// Signals forwarded to the child.
pub const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Grace period between SIGTERM and SIGKILL for orphaned nodes.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// Documented exit codes of our own (the child's status is passed through otherwise).
pub mod exit {
    /// Usage or configuration error.
    pub const CONFIG: u8 = 2;
    /// The key source failed or held an invalid key.
    pub const SOURCE: u8 = 3;
    /// The key slot needs an operator.
    pub const SLOT: u8 = 4;
    /// The node never read the key (timeout) or delivery failed.
    pub const DELIVERY: u8 = 5;
    /// A stranger held the pipe after the key was written: rotate the key.
    pub const EXPOSED: u8 = 6;
    /// The child could not be started.
    pub const SPAWN: u8 = 7;
    /// The failover lease was lost (node stopped) or cannot be used.
    pub const LEASE: u8 = 8;
}

/// A fatal supervision error, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The slot failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The child could not be started.
    #[error("cannot start {program:?}: {source}; set COSMOVISOR_BIN or put cosmovisor on PATH")]
    Spawn {
        /// The program.
        program: OsString,
        /// Cause.
        source: std::io::Error,
    },
    /// Delivery failed.
    #[error("key delivery failed: {0}")]
    Deliver(#[from] DeliverError),
    /// The node did not read the key in time.
    #[error("the node did not read the key within {0:?} (SSM_COSMOVISOR_KEY_TIMEOUT); stopped the node and restored the safe key. Check that the node starts and that priv_validator_key_file points at {1:?}")]
    Timeout(Duration, PathBuf),
    /// Key possibly exposed.
    #[error("KEY MAY BE EXPOSED: {0}. The node was stopped and the safe key restored. Rotate the consensus key")]
    Exposed(String),
    /// The failover lease was lost or cannot be used.
    #[error("failover lease: {0}")]
    Lease(String),
    /// Internal failure (threads, signals).
    #[error("{0}")]
    Internal(String),
}

impl SuperviseError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            SuperviseError::Slot(_) => exit::SLOT,
            SuperviseError::Spawn { .. } => exit::SPAWN,
            SuperviseError::Deliver(_) | SuperviseError::Timeout(..) => exit::DELIVERY,
            SuperviseError::Exposed(_) => exit::EXPOSED,
            SuperviseError::Lease(_) => exit::LEASE,
            SuperviseError::Internal(_) => 1,
        }
    }
}

enum Event {
    Signal(i32),
    ChildExited(std::io::Result<ExitStatus>),
    Delivery(Result<Outcome, DeliverError>),
    Marker,
    ReaderExited(Pid),
    /// A watcher thread re-armed the key path ([`FastRearm`]).
    Rearmed,
    /// A watcher thread failed to re-arm.
    RearmFailed(SlotError),
    /// From the lease thread.
    Lease(LeaseNews),
    /// From the fencer's reader thread.
    Fence(FenceNews),
}

/// Lets the watcher threads (upgrade marker, node exit) re-arm the key path
/// themselves, the moment the reason shows, also while the main loop has not
/// yet heard how the last hand-off ended (its verification can take tens of
/// milliseconds under load). Going through the main loop cost wake-ups, and
/// with the CPUs busy that lost the race with a cosmovisor restarting the
/// node at once: the new node read the stripped file (tests/e2e_delivery.rs,
/// 100 upgrades with two CPU hogs). The lock keeps re-arms to one thread at a
/// time; the main loop takes a FIFO armed this way for its next hand-off.
struct FastRearm {
    slot: Arc<KeySlot>,
    state: Mutex<FastState>,
}

struct FastState {
    /// Watchers may re-arm (false once we stop).
    enabled: bool,
    /// A FIFO armed by a watcher, for the main loop's next hand-off.
    armed: Option<ArmedFifo>,
}

impl FastRearm {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-arms now if the stripped file is at the key path, and tells the
    /// main loop. The stripped file is there only from a reader attaching to
    /// the next re-arm: exactly when a starting node must not find it.
    fn trigger(&self, reason: &'static str, tx: &Sender<Event>) {
        let mut st = self.lock();
        if !st.enabled || st.armed.is_some() || !self.slot.holds_regular_file() {
            return;
        }
        let ev = match self.slot.arm() {
            Ok(a) => {
                tracing::info!(
                    event = "re_armed",
                    inode = a.ino,
                    reason,
                    "key FIFO re-armed"
                );
                st.armed = Some(a);
                Event::Rearmed
            }
            Err(e) => Event::RearmFailed(e),
        };
        drop(st);
        let _ = tx.send(ev);
    }

    /// The FIFO a watcher armed, if any.
    fn take(&self) -> Option<ArmedFifo> {
        self.lock().armed.take()
    }

    /// For the main loop's next hand-off: the FIFO a watcher armed (`false`),
    /// else a new one (`true`).
    fn take_or_arm(&self) -> Result<(ArmedFifo, bool), SlotError> {
        let mut st = self.lock();
        match st.armed.take() {
            Some(a) => Ok((a, false)),
            None => self.slot.arm().map(|a| (a, true)),
        }
    }

    /// No more re-arms (shutdown); a FIFO armed meanwhile is dropped, the
    /// restore that follows takes the slot back to idle.
    fn disable(&self) {
        let mut st = self.lock();
        st.enabled = false;
        st.armed = None;
    }
}

/// What the key handling needs; `None` runs the child like plain cosmovisor.
pub struct KeyJob {
    /// The slot, already repaired and backed up.
    pub slot: Arc<KeySlot>,
    /// The validated consensus key.
    pub key: Arc<ValidatorKey>,
}

/// Maps a child's status to our exit code (128+N for a signal death).
pub fn status_code(st: &ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Where the signal thread sends: the current run's channel, `None` between
/// runs. One thread for the process (a second sigwait thread could take a
/// signal meant for this run and hand it to a finished one).
static SIGNAL_SINK: Mutex<Option<Sender<Event>>> = Mutex::new(None);

/// The last stop signal received (0: none), for the stretches between runs
/// (a standby's handover: stop, fetch, backup) where nobody forwards it.
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// While set, a stop signal with no run to take it ends the process at once:
/// nothing has been changed yet that would need undoing (see
/// [`defer_stop_signals`]).
static EXIT_ON_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// From now on a stop signal between runs is only recorded
/// ([`stop_requested`]): the caller is about to change the key slot and must
/// put it back itself.
pub fn defer_stop_signals() {
    EXIT_ON_STOP.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Blocks the forwarded signals and SIGCHLD in this thread (and so in every
/// thread created after it: call before any runtime or helper thread exists)
/// and starts the one thread that `sigwait`s for them. Idempotent.
pub fn start_signal_handling() -> Result<(), SuperviseError> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let mut sigs = FORWARDED.to_vec();
    sigs.push(libc::SIGCHLD);
    STARTED
        .get_or_init(|| {
            crate::sys::block_signals(&sigs).map_err(|e| format!("blocking signals: {e}"))?;
            thread::Builder::new()
                .name("signals".into())
                .spawn(move || loop {
                    // Orphans adopted as subreaper (SIGCHLD) are reaped by the main loop.
                    let Ok(sig) = crate::sys::wait_signal(&sigs) else {
                        return;
                    };
                    if sig != libc::SIGCHLD {
                        STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
                    }
                    let sink = SIGNAL_SINK.lock().unwrap_or_else(|e| e.into_inner());
                    match sink.as_ref() {
                        Some(tx) => {
                            let _ = tx.send(Event::Signal(sig));
                        }
                        None if sig != libc::SIGCHLD
                            && EXIT_ON_STOP.load(std::sync::atomic::Ordering::SeqCst) =>
                        {
                            // Nothing changed yet (the key slot is idle; a lease
                            // we may hold simply expires): do not make systemd
                            // wait for a fetch to finish.
                            tracing::info!(
                                event = "stopped_before_start",
                                signal = sig,
                                "stop requested before anything was changed: exiting"
                            );
                            std::process::exit(0);
                        }
                        None => {}
                    }
                })
                .map(|_| ())
                .map_err(|e| format!("signal thread: {e}"))
        })
        .clone()
        .map_err(SuperviseError::Internal)
}

/// A stop signal (INT/TERM/HUP/QUIT) received so far, if any.
pub fn stop_requested() -> Option<i32> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn set_signal_sink(tx: Option<Sender<Event>>) {
    *SIGNAL_SINK.lock().unwrap_or_else(|e| e.into_inner()) = tx;
}

/// Watches `<home>/data/` for the upgrade marker. The SDK rewrites
/// `upgrade-info.json` in place, so close-after-write matters as much as create.
fn spawn_marker_thread(
    data_dir: &Path,
    node: Option<(u32, u32)>,
    rearm: Arc<FastRearm>,
    tx: Sender<Event>,
) {
    use rustix::fs::inotify;
    let Ok(fd) = inotify::init(inotify::CreateFlags::CLOEXEC) else {
        tracing::warn!("inotify unavailable: re-arming only when the node exits");
        return;
    };
    let flags = inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::CREATE;
    let watched = match inotify::add_watch(&fd, data_dir, flags) {
        // Split-trust: the node's data/ may be closed to root without
        // CAP_DAC_READ_SEARCH; the watch only needs read access, as the node.
        Err(rustix::io::Errno::ACCESS) if node.is_some() => {
            let (uid, gid) = node.expect("checked");
            crate::sys::with_fs_ids(uid, gid, || inotify::add_watch(&fd, data_dir, flags))
        }
        r => r,
    };
    if let Err(e) = watched {
        tracing::warn!(dir = %data_dir.display(), error = %e, "cannot watch for the upgrade marker: re-arming only when the node exits");
        return;
    }
    let _ = thread::Builder::new()
        .name("upgrade-marker".into())
        .spawn(move || {
            // Best effort: the re-arm must beat cosmovisor restarting the node.
            if let Err(e) = crate::sys::make_thread_realtime() {
                tracing::debug!(error = %e, "re-arm watchers run at normal priority");
            }
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(&fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let is_marker = ev
                            .file_name()
                            .map(|n| n.to_bytes() == b"upgrade-info.json")
                            .unwrap_or(false);
                        if is_marker {
                            rearm.trigger("upgrade marker written", &tx);
                            if tx.send(Event::Marker).is_err() {
                                return;
                            }
                        }
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                }
            }
        });
}

fn spawn_reader_exit_thread(pid: Pid, rearm: Arc<FastRearm>, tx: Sender<Event>) {
    let Ok(pidfd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid.0).expect("positive pid"),
        rustix::process::PidfdFlags::empty(),
    ) else {
        // Already gone.
        rearm.trigger("node exited", &tx);
        let _ = tx.send(Event::ReaderExited(pid));
        return;
    };
    let _ = thread::Builder::new()
        .name("node-exit".into())
        .spawn(move || {
            let _ = crate::sys::make_thread_realtime();
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            while let Err(rustix::io::Errno::INTR) = rustix::event::poll(&mut fds, None) {}
            rearm.trigger("node exited", &tx);
            let _ = tx.send(Event::ReaderExited(pid));
        });
}

struct Delivering {
    canceller: Canceller,
    inode: u64,
    since: Instant,
}

/// Starts the hand-off of `armed` on its own thread, and tells systemd that
/// we wait for the node.
fn start_delivery(
    job: &KeyJob,
    armed: ArmedFifo,
    policy: &ReaderPolicy,
    next: Next,
    tx: &Sender<Event>,
    notifier: &Notifier,
) -> Delivering {
    notifier.status("waiting for the node to read the key");
    let pending = Pending::new(armed, policy);
    let d = Delivering {
        canceller: pending.canceller(),
        inode: pending.inode(),
        since: Instant::now(),
    };
    let (slot, key, policy, tx) = (
        job.slot.clone(),
        job.key.clone(),
        policy.clone(),
        tx.clone(),
    );
    thread::Builder::new()
        .name("deliver".into())
        .spawn(move || {
            let r = pending.run(&slot, &key, &policy, next);
            let _ = tx.send(Event::Delivery(r));
        })
        .expect("spawn delivery thread");
    d
}

fn holders_text(h: &[procfs::Holder]) -> String {
    h.iter()
        .map(|h| {
            format!(
                "pid {} uid {} exe {}",
                h.pid,
                h.euid(),
                h.exe
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Logs a hand-off's outcome (one audit line per outcome). Returns the
/// error that must end the run, if any: a delivery failure, or a stranger on
/// the pipe after the key was written.
fn log_outcome(r: Result<Outcome, DeliverError>) -> (Option<Outcome>, Option<SuperviseError>) {
    let o = match r {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(event = "delivery_failed", error = %e, "key delivery failed");
            return (None, Some(e.into()));
        }
    };
    match &o {
        Outcome::Delivered {
            reader, latency, ..
        } => tracing::info!(
            event = "delivered",
            pid = reader.pid.0,
            uid = reader.euid(),
            exe = %reader.exe.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            latency_us = latency.as_micros() as u64,
            "key was read from named pipe by the node"
        ),
        Outcome::Refused {
            holders, reason, ..
        } => {
            tracing::error!(event = "refused_reader", holders = %holders_text(holders), reason = %reason, "refused to hand the key over: nothing was written")
        }
        Outcome::NotRead { reader, reason, .. } => {
            tracing::warn!(
                event = "not_read",
                pid = reader.pid.0,
                reason,
                "the node did not take the key"
            )
        }
        Outcome::Exposed { reader, strangers } => {
            let text = format!(
                "after the key was written to pid {}, the pipe was also held by {}",
                reader.pid,
                holders_text(strangers)
            );
            tracing::error!(event = "key_exposed", detail = %text, "KEY MAY BE EXPOSED: rotate the consensus key");
            return (None, Some(SuperviseError::Exposed(text)));
        }
        Outcome::Cancelled => {}
    }
    (Some(o), None)
}

/// Stops every process we adopted (orphans of the child): TERM, then KILL
/// after the grace period. Returns once none is left.
fn stop_orphans(me: Pid, fencer: Option<Pid>, deadline: Instant) {
    let left = || -> Vec<Pid> {
        procfs::children_of(me)
            .into_iter()
            .filter(|p| Some(*p) != fencer)
            .collect()
    };
    let mut orphans = left();
    if orphans.is_empty() {
        return;
    }
    for p in &orphans {
        tracing::warn!(event = "orphan", pid = p.0, exe = ?procfs::exe_of(*p), "stopping a process left behind by the child (no node may sign unsupervised)");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(p.0).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    while !orphans.is_empty() {
        reap_others(fencer);
        orphans = left();
        if Instant::now() >= deadline {
            for p in &orphans {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(p.0).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
            thread::sleep(Duration::from_millis(20));
            reap_others(fencer);
            orphans = left();
            if Instant::now() >= deadline + Duration::from_secs(5) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps exited children other than `keep` (our own child is reaped by its
/// waiter thread, so its exit status is not stolen).
fn reap_others(keep: Option<Pid>) {
    let me = Pid(std::process::id() as i32);
    for p in procfs::children_of(me) {
        if Some(p) == keep {
            continue;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(p.0) {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
    }
}

/// The failover lease's part in a run.
pub enum LeaseRole {
    /// No lease configured.
    None,
    /// We hold the lease: renew it while the child runs, stop the node if it
    /// is lost, release it (with the final sign state) after the restore.
    Holder {
        /// The client.
        client: LeaseClient,
        /// The lease.
        held: Held,
        /// The node's sign-state file, carried with each renewal.
        state: StateFile,
    },
    /// Another host holds it: run the child without the key and wait; once
    /// the lease is ours, stop the child and return [`Ended::Acquired`].
    Standby {
        /// The client.
        client: LeaseClient,
        /// The node's sign-state file (a lease may raise it only so far).
        state: StateFile,
    },
}

/// How a run ended.
pub enum Ended {
    /// Exit with this code.
    Exit(u8),
    /// A standby got the lease and stopped its keyless child.
    Acquired(Box<(LeaseClient, Held)>),
}

enum LeaseThread {
    None,
    Keeper(Keeper, StateFile),
    Waiter(Waiter),
}

/// A holder's lease deadline as the supervisor enforces it: the earlier of
/// the lease's own (moved by confirmed renewals) and the one the fencer has
/// acknowledged (a stalled or dead fencer stops the node too).
struct LeaseGuard {
    deadline: crate::lease::Deadline,
    grace: Duration,
    fence: Fence,
}

impl LeaseGuard {
    /// Until when the node may run (boot clock).
    fn until(&self) -> Duration {
        self.deadline
            .get()
            .min(self.fence.enforced().saturating_sub(self.grace))
    }

    /// `until()` as an instant of the monotonic clock, for waits.
    fn until_instant(&self) -> Instant {
        Instant::now() + self.until().saturating_sub(boot_time())
    }
}

/// Starts the fencer and has it enforce the lease deadline before the node
/// exists; every later confirmed renewal is passed on to it.
fn start_fence(
    cfg: &Config,
    held: &Held,
    lease: &crate::lease::LeaseSettings,
    tx: &Sender<Event>,
) -> Result<LeaseGuard, String> {
    let opts = FenceOptions {
        node: cfg
            .node_user
            .as_ref()
            .filter(|_| rustix::process::geteuid().is_root())
            .map(|u| (u.uid, u.gid)),
        json: matches!(cfg.log_format, crate::config::LogFormat::Json),
    };
    let tx = Mutex::new(tx.clone());
    let fence = Fence::start(opts, move |n| {
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Event::Fence(n));
    })
    .map_err(|e| format!("cannot start the fencer process: {e}"))?;
    let kill_by = {
        let lease = lease.clone();
        move |d| crate::lease::protocol::kill_by(d, &lease)
    };
    if !fence.extend_and_confirm(kill_by(held.deadline.get()), Duration::from_secs(2)) {
        return Err("the fencer process did not confirm the lease deadline".into());
    }
    let extend = fence.extender();
    held.deadline.subscribe(move |d| extend(kill_by(d)));
    tracing::info!(
        event = "fence_started",
        pid = fence.pid(),
        "fencer process enforces the lease deadline"
    );
    Ok(LeaseGuard {
        deadline: held.deadline.clone(),
        grace: lease.stop_grace(),
        fence,
    })
}

/// Runs `program args` as our child and supervises it to the end.
pub fn run(
    cfg: &Config,
    program: &OsString,
    args: &[OsString],
    job: Option<KeyJob>,
    lease: LeaseRole,
) -> Result<Ended, SuperviseError> {
    let notifier = Notifier::from_env();
    let (tx, rx) = mpsc::channel::<Event>();
    start_signal_handling()?;
    set_signal_sink(Some(tx.clone()));
    // Stopped between runs (a standby's handover): no new child.
    if let Some(sig) = stop_requested() {
        set_signal_sink(None);
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested before the child started"
        );
        if let Some(j) = &job {
            j.slot.restore()?;
        }
        let l = match lease {
            LeaseRole::Holder { client, held, .. } => Some((client, held)),
            _ => None,
        };
        if let Some((c, h)) = l {
            release_lease(&c, &h, None);
        }
        return Ok(Ended::Exit(0));
    }
    // After the signal mask is set: the lease threads inherit it.
    let news = |tx: &Sender<Event>| -> Box<dyn Fn(LeaseNews) + Send> {
        let tx = Mutex::new(tx.clone());
        Box::new(move |n| {
            let _ = tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Event::Lease(n));
        })
    };
    // The lease deadline, binding for the main loop and after it, while we
    // wait for the delivery thread and for orphans.
    let mut guard: Option<LeaseGuard> = None;
    let (lease_thread, stop_grace) = match lease {
        LeaseRole::None => (LeaseThread::None, ORPHAN_GRACE),
        LeaseRole::Holder {
            client,
            held,
            state,
        } => {
            let grace = client.settings.stop_grace();
            let g = match start_fence(cfg, &held, &client.settings, &tx) {
                Ok(g) if boot_time() < g.until() => g,
                r => {
                    // Renewals failed until now, or no fencer: the key must
                    // not go out.
                    set_signal_sink(None);
                    if let Some(j) = &job {
                        j.slot.restore()?;
                    }
                    return Err(SuperviseError::Lease(match r {
                        Err(e) => format!("{e}; nothing was delivered"),
                        Ok(_) => "no renewal of the lease was confirmed before the node could start; nothing was delivered".into(),
                    }));
                }
            };
            guard = Some(g);
            let k = Keeper::start(client, held, state.clone(), news(&tx))
                .map_err(|e| SuperviseError::Internal(format!("lease thread: {e}")))?;
            (LeaseThread::Keeper(k, state), grace)
        }
        LeaseRole::Standby { client, state } => {
            let w = Waiter::start(client, state, news(&tx))
                .map_err(|e| SuperviseError::Internal(format!("lease thread: {e}")))?;
            (LeaseThread::Waiter(w), ORPHAN_GRACE)
        }
    };
    let mut orphan_grace = ORPHAN_GRACE;
    let mut handover = false;
    // Orphaned descendants (a node whose cosmovisor died) are reparented to
    // us instead of init, so we can stop them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| SuperviseError::Internal(format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
    let me = Pid(std::process::id() as i32);

    // Arm before the child exists: the node may look for its key at once.
    let mut armed = match &job {
        Some(j) => {
            let a = j.slot.arm()?;
            tracing::info!(event = "armed", path = %j.slot.path().display(), inode = a.ino, "key FIFO armed");
            Some(a)
        }
        None => None,
    };

    let creds = harden::child_creds(cfg.node_user.as_ref());
    let mut cmd = Command::new(program);
    cmd.args(args);
    harden::prepare(&mut cmd, creds);
    if guard.is_some() {
        // A group of its own, which the fencer can kill as a whole.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    // Spawned from the main thread, which lives as long as we do: the
    // child's parent-death signal fires when the *spawning thread* exits.
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            if let Some(j) = &job {
                let _ = j.slot.restore();
            }
            set_signal_sink(None);
            finish_lease(lease_thread, false, true);
            return Err(SuperviseError::Spawn {
                program: program.clone(),
                source,
            });
        }
    };
    let child_pid = Pid(child.id() as i32);
    if let Some(g) = &guard {
        g.fence.arm(child.id());
    }
    let child_pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(child_pid.0).expect("positive pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    tracing::info!(event = "child_started", pid = child_pid.0, program = %Path::new(program).display(), "started child");
    {
        let tx = tx.clone();
        let mut child = child;
        thread::Builder::new()
            .name("child-wait".into())
            .spawn(move || {
                let _ = tx.send(Event::ChildExited(child.wait()));
            })
            .map_err(|e| SuperviseError::Internal(format!("child wait thread: {e}")))?;
    }

    let policy = ReaderPolicy {
        root: child_pid,
        uid: cfg
            .node_user
            .as_ref()
            .map(|u| u.uid)
            .unwrap_or_else(|| rustix::process::geteuid().as_raw()),
        gid: cfg
            .node_user
            .as_ref()
            .map(|u| u.gid)
            .unwrap_or_else(|| rustix::process::getegid().as_raw()),
        me,
    };
    let mut delivering: Option<Delivering> = None;
    let fast = job.as_ref().map(|j| {
        Arc::new(FastRearm {
            slot: j.slot.clone(),
            state: Mutex::new(FastState {
                enabled: true,
                armed: None,
            }),
        })
    });
    if let (Some(j), Some(fast)) = (&job, &fast) {
        spawn_marker_thread(
            &cfg.home.join("data"),
            cfg.node_user
                .as_ref()
                .filter(|_| rustix::process::geteuid().is_root())
                .map(|u| (u.uid, u.gid)),
            fast.clone(),
            tx.clone(),
        );
        let a = armed.take().expect("armed above");
        delivering = Some(start_delivery(
            j,
            a,
            &policy,
            next_mode(cfg),
            &tx,
            &notifier,
        ));
        notifier.ready("waiting for the node to read the key");
    } else if matches!(lease_thread, LeaseThread::Waiter(_)) {
        notifier.ready("standby: waiting for the failover lease");
    } else {
        notifier.ready("running without the SSM key (USE_SSM_KEY=false)");
    }

    let forward = |sig: i32| {
        let s =
            rustix::process::Signal::from_named_raw(sig).unwrap_or(rustix::process::Signal::TERM);
        let r = match &child_pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd.as_fd(), s),
            None => rustix::process::kill_process(
                rustix::process::Pid::from_raw(child_pid.0).unwrap(),
                s,
            ),
        };
        tracing::info!(
            event = "signal_forwarded",
            signal = sig,
            pid = child_pid.0,
            ok = r.is_ok(),
            "forwarded signal to child"
        );
    };
    // Fatal conditions stop the child, then fall through to the common exit.
    let mut fatal: Option<SuperviseError> = None;
    let mut stopping = false;
    // When we stop the child ourselves (fatal error), escalate to SIGKILL
    // after the grace period; a stop requested by systemd is escalated by systemd.
    let mut kill_at: Option<Instant> = None;
    let mut last_ping = Instant::now();
    // Set when the lease is lost (thread's news, or its deadline seen here).
    let mut lease_lost: Option<String> = None;
    // Set once the loss is acted on; from then on the kill escalation takes
    // the whole tree.
    let mut lost_handled = false;
    let status: std::io::Result<ExitStatus> = loop {
        let mut wait = Duration::from_secs(3600);
        if let (Some(g), false) = (&guard, lost_handled) {
            let (at, now) = (g.until(), boot_time());
            if now >= at {
                lease_lost.get_or_insert_with(|| {
                    if g.deadline.get() <= now {
                        "no renewal of the lease was confirmed in time".to_string()
                    } else {
                        "the fencer process stopped confirming the lease deadline".to_string()
                    }
                });
            } else {
                wait = wait.min(at - now);
            }
        }
        if let (Some(reason), false) = (&lease_lost, lost_handled) {
            lost_handled = true;
            tracing::error!(event = "lease_lost", reason = %reason, "LEASE LOST: stopping the node");
            notifier.status("failover lease lost: stopping the node");
            if let Some(fast) = &fast {
                fast.disable();
            }
            if let Some(d) = &delivering {
                d.canceller.cancel();
            }
            fatal.get_or_insert(SuperviseError::Lease(format!(
                "{reason}. The node was stopped and the safe key restored; restart the service to stand by for the lease again"
            )));
            forward(libc::SIGTERM);
            stopping = true;
            // The node must be gone before the lease can expire for others:
            // after `stop_grace` the whole tree gets SIGKILL.
            kill_at = Some(Instant::now() + stop_grace);
            orphan_grace = Duration::ZERO;
        }
        if let Some(d) = &delivering {
            wait = wait.min(cfg.key_timeout.saturating_sub(d.since.elapsed()));
        }
        if let Some(iv) = notifier.watchdog_interval() {
            wait = wait.min(iv.saturating_sub(last_ping.elapsed()));
        }
        if fatal.is_some() && kill_at.is_none() {
            kill_at = Some(Instant::now() + ORPHAN_GRACE);
        }
        if let Some(k) = kill_at {
            if Instant::now() >= k {
                if lost_handled {
                    for p in procfs::descendants_of(child_pid) {
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(p.0).expect("positive pid"),
                            rustix::process::Signal::KILL,
                        );
                    }
                }
                forward(libc::SIGKILL);
                kill_at = Some(Instant::now() + Duration::from_secs(3600));
            }
            wait = wait.min(k.saturating_duration_since(Instant::now()));
        }
        let ev = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                break Err(std::io::Error::other("event channel closed"))
            }
        };
        if let Some(iv) = notifier.watchdog_interval() {
            if last_ping.elapsed() >= iv {
                notifier.ping();
                last_ping = Instant::now();
            }
        }
        let Some(ev) = ev else {
            if let (Some(d), Some(j)) = (&delivering, &job) {
                if d.since.elapsed() >= cfg.key_timeout && fatal.is_none() {
                    fatal = Some(SuperviseError::Timeout(
                        cfg.key_timeout,
                        j.slot.path().to_path_buf(),
                    ));
                    d.canceller.cancel();
                    forward(libc::SIGTERM);
                    stopping = true;
                }
            }
            continue;
        };
        match ev {
            Event::Signal(libc::SIGCHLD) => reap_others(Some(child_pid)),
            Event::Signal(sig) => {
                stopping = true;
                if let Some(fast) = &fast {
                    // The node is about to stop: no re-arm for it.
                    fast.disable();
                }
                notifier.stopping();
                forward(sig);
            }
            Event::ChildExited(st) => break st,
            Event::Delivery(r) => {
                delivering = None;
                let (Some(j), Some(fast)) = (&job, &fast) else {
                    continue;
                };
                let (outcome, failure) = log_outcome(r);
                if let Some(e) = failure {
                    fatal.get_or_insert(e);
                    forward(libc::SIGTERM);
                    stopping = true;
                    continue;
                }
                // The FIFO for the next hand-off, if one is due now.
                let next_fifo = match outcome {
                    Some(Outcome::Delivered { reader, next, .. }) => {
                        notifier.status(&format!("key delivered to pid {}", reader.pid));
                        match (next, fast.take()) {
                            (Some(a), _) => {
                                tracing::info!(
                                    event = "re_armed",
                                    inode = a.ino,
                                    reason = "always-armed",
                                    "key FIFO re-armed"
                                );
                                Some(Ok(a))
                            }
                            // The node already wrote its upgrade marker (or
                            // exited) while we were verifying.
                            (None, Some(a)) => (!stopping).then_some(Ok(a)),
                            // From now on the watchers re-arm by themselves.
                            (None, None) => {
                                spawn_reader_exit_thread(reader.pid, fast.clone(), tx.clone());
                                None
                            }
                        }
                    }
                    Some(Outcome::Refused { next, .. } | Outcome::NotRead { next, .. })
                        if !stopping =>
                    {
                        Some(match next {
                            Some(a) => Ok(a),
                            None => fast.take_or_arm().map(|(a, fresh)| {
                                if fresh {
                                    tracing::info!(
                                        event = "re_armed",
                                        inode = a.ino,
                                        reason = "after a refused or failed hand-off",
                                        "key FIFO re-armed"
                                    );
                                }
                                a
                            }),
                        })
                    }
                    _ => None,
                };
                match next_fifo {
                    Some(Ok(a)) => {
                        delivering = Some(start_delivery(
                            j,
                            a,
                            &policy,
                            next_mode(cfg),
                            &tx,
                            &notifier,
                        ));
                    }
                    Some(Err(e)) => {
                        fatal.get_or_insert(e.into());
                        forward(libc::SIGTERM);
                        stopping = true;
                    }
                    None => {}
                }
            }
            Event::Marker | Event::ReaderExited(_) => {
                if let Event::ReaderExited(pid) = ev {
                    tracing::info!(
                        event = "node_exited",
                        pid = pid.0,
                        "the node that read the key exited"
                    );
                }
                // The re-arm itself was done by the watcher thread that sent
                // this (FastRearm), before sending it; see Event::Rearmed.
            }
            Event::Rearmed => {
                let (Some(j), Some(fast)) = (&job, &fast) else {
                    continue;
                };
                if stopping || delivering.is_some() {
                    // Stopping: the restore takes the slot back to idle. A
                    // hand-off still being verified: its outcome takes the FIFO.
                    continue;
                }
                let Some(a) = fast.take() else { continue };
                delivering = Some(start_delivery(
                    j,
                    a,
                    &policy,
                    next_mode(cfg),
                    &tx,
                    &notifier,
                ));
            }
            Event::RearmFailed(e) => {
                fatal.get_or_insert(e.into());
                forward(libc::SIGTERM);
                stopping = true;
            }
            Event::Lease(LeaseNews::Lost(reason)) => {
                lease_lost.get_or_insert(reason);
            }
            Event::Fence(FenceNews::Fired(n)) => {
                lease_lost.get_or_insert(format!(
                    "the fencer killed the node's process tree ({n} processes): the lease deadline passed while this process could not act"
                ));
            }
            Event::Fence(FenceNews::Exited) => {
                lease_lost.get_or_insert(
                    "the fencer process exited: nothing independent of this process would stop the node".to_string(),
                );
            }
            Event::Lease(LeaseNews::Failed(reason)) => {
                fatal.get_or_insert(SuperviseError::Lease(reason));
                forward(libc::SIGTERM);
                stopping = true;
            }
            Event::Lease(LeaseNews::Acquired) if !stopping => {
                tracing::info!(
                    event = "lease_won",
                    "got the failover lease: stopping the keyless node to restart it with the key"
                );
                notifier.status("got the failover lease: restarting the node with the key");
                handover = true;
                forward(libc::SIGTERM);
                stopping = true;
                kill_at = Some(Instant::now() + ORPHAN_GRACE);
            }
            // Acquired while we were stopping anyway: released below.
            Event::Lease(LeaseNews::Acquired) => {}
        }
    };
    // The child may have exited (killed by the fencer while we were stopped)
    // before the loop saw the deadline pass: the lease is lost all the same.
    if let (Some(g), false) = (&guard, lost_handled) {
        if boot_time() >= g.until() {
            lost_handled = true;
            let reason = "the lease deadline passed before the node exited";
            tracing::error!(event = "lease_lost", reason, "LEASE LOST");
            fatal.get_or_insert(SuperviseError::Lease(format!(
                "{reason}. The safe key is restored; restart the service to stand by for the lease again"
            )));
        }
    }
    if let Some(fast) = &fast {
        // No watcher may move the slot once we head for the restore.
        fast.disable();
    }

    notifier.stopping();
    // Orphans (a keyed node whose cosmovisor died) must be gone by the lease
    // deadline plus the stop grace, whatever else we wait for.
    let orphans_by = {
        let by = Instant::now() + orphan_grace;
        match &guard {
            Some(g) => by.min(g.until_instant() + g.grace),
            None => by,
        }
    };
    if let Some(d) = &delivering {
        d.canceller.cancel();
        // Let the delivery thread stand down before the slot is restored.
        let deadline = (Instant::now() + Duration::from_secs(5)).min(orphans_by);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::Delivery(r)) => {
                    // The child may exit before the main loop saw the outcome
                    // of a hand-off that was finishing (a refused node exits at
                    // once): it must still reach the log, and an exposure must
                    // still fail the run.
                    if let (_, Some(e)) = log_outcome(r) {
                        fatal.get_or_insert(e);
                    }
                    break;
                }
                Ok(_) => {}
                // A cancel that lands before the delivery thread is blocked in
                // its writer open (it was just started) wakes nobody: poke again.
                Err(_) => d.canceller.cancel(),
            }
        }
        tracing::debug!(inode = d.inode, "pending delivery cancelled");
    }
    let fencer = guard.as_ref().map(|g| Pid(g.fence.pid() as i32));
    stop_orphans(me, fencer, orphans_by);
    let code = match &status {
        Ok(st) => {
            tracing::info!(event = "child_exited", status = %st, "child exited");
            status_code(st)
        }
        Err(e) => {
            tracing::error!(error = %e, "lost track of the child");
            1
        }
    };
    if let Some(j) = &job {
        let r = j.slot.restore()?;
        tracing::info!(
            event = "restore_done",
            found = r.found,
            "key slot back to idle"
        );
        notifier.status("safe key restored");
    }
    set_signal_sink(None);
    // The node is gone and the safe key back: now the lease may go.
    let no_orphans = procfs::children_of(me)
        .into_iter()
        .all(|p| Some(p) == fencer);
    if let Some(g) = guard {
        // The node is gone: the fencer has nothing left to guard.
        g.deadline.unsubscribe();
        g.fence.finish();
    }
    // A lease we declared lost is never offered back, even if a renewal
    // confirmed late moved its deadline again: it expires by itself.
    let acquired = finish_lease(
        lease_thread,
        handover && fatal.is_none(),
        no_orphans && !lost_handled,
    );
    match (fatal, acquired) {
        (Some(e), _) => Err(e),
        (None, Some(l)) => Ok(Ended::Acquired(Box::new(l))),
        (None, None) => Ok(Ended::Exit(code)),
    }
}

/// Releases a lease we hold, carrying `state`; logs the outcome.
pub fn release_lease(c: &LeaseClient, h: &Held, state: Option<SignState>) {
    match c.release(h, state) {
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

/// Stops the lease thread. A holder's lease is released with the node's
/// final sign state, but only if `may_release` (no process of ours is left,
/// and we did not declare it lost): otherwise it expires, and the standby
/// waits the full duration. A standby's
/// newly won lease is returned if `keep`, else released (we are stopping).
fn finish_lease(t: LeaseThread, keep: bool, may_release: bool) -> Option<(LeaseClient, Held)> {
    match t {
        LeaseThread::None => None,
        LeaseThread::Keeper(k, state) => {
            if let Some((c, h)) = k.stop() {
                if may_release {
                    match state.read() {
                        Ok(Some(final_state)) => release_lease(&c, &h, Some(final_state)),
                        // Released with a stale state, the next host would take
                        // it without skipping ahead: let it expire instead.
                        other => tracing::warn!(
                            event = "lease_kept",
                            state = ?other.map_err(|e| e.to_string()),
                            "cannot read the node's final sign state: not releasing the lease; it expires by itself"
                        ),
                    }
                } else {
                    tracing::warn!(
                        event = "lease_kept",
                        "not releasing the lease early (declared lost, or a process of the child outlived the stop); it expires by itself"
                    );
                }
            }
            None
        }
        LeaseThread::Waiter(w) => match w.finish() {
            Ok((c, h)) if keep => Some((c, h)),
            Ok((c, h)) => {
                release_lease(&c, &h, None);
                None
            }
            Err(_) => None,
        },
    }
}

fn next_mode(cfg: &Config) -> Next {
    if cfg.always_armed {
        Next::Fifo
    } else {
        Next::Stripped
    }
}
