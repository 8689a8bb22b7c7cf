//! Supervision: run the child (cosmovisor, or any node command), deliver the
//! key each time the node starts, forward signals, adopt orphans, enforce the
//! lease deadline, and put the safe key back on every exit path we control
//! (docs/design.md §6).
//!
//! Threads, not an async runtime: one waits for signals ([`Signals`]), one
//! waits for the child, one blocks in the FIFO's writer open, one reads
//! inotify for the upgrade marker, one waits on the node's pidfd, and the
//! lease has its own. All report over one channel to the driver
//! (`driver.rs`), which passes each event to the run's decisions
//! ([`Supervisor`](core::Supervisor), without I/O: `core.rs`) and performs
//! the effects they ask for.
//!
//! Who moves the key slot: the supervisor (first arm, restore at the end),
//! the delivery thread (the file that follows a hand-off, while the FIFO is
//! at the key path), and the re-arm watchers, which go through one lock
//! ([`rearm::FastRearm`]) and act only while a regular file (the stripped
//! key) is at the key path. Those conditions never hold at once for two of
//! them, and the supervisor disables the watchers before it restores.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use self::core::{LeaseDeadlines, LeasePart};
use crate::config::Config;
use crate::deliver::{DeliverError, Outcome, ReaderPolicy};
use crate::fence::FenceNews;
use crate::key::ValidatorKey;
use crate::lease::{boot_time, Held, Keeper, LeaseClient, LeaseNews, StateFile, Waiter};
use crate::procfs::{self, Pid};
use crate::slot::{ArmedFifo, KeySlot, SlotError};

mod child;
mod core;
mod driver;
mod handoff;
mod keywait;
mod lease_part;
mod rearm;
mod signals;
mod watchdog;

pub(crate) use keywait::NodeMatch;
pub(crate) use signals::Signals;

/// Grace period between SIGTERM and SIGKILL for orphaned nodes.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// A fatal supervision error (its exit status: `crate::error`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SuperviseError {
    /// The slot failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The child could not be started.
    #[error("cannot start {program:?}: {source}; set COSMOVISOR_BIN or put cosmovisor on PATH")]
    Spawn {
        program: OsString,
        source: std::io::Error,
    },
    /// Delivery failed.
    #[error("key delivery failed: {0}")]
    Deliver(#[from] DeliverError),
    /// A started node did not read the key in time.
    #[error("the node (pid {pid}) did not read the key within {timeout:?} of its start (SSM_COSMOVISOR_KEY_TIMEOUT; waited {after:?}); stopped the node and restored the safe key. Check that the node starts and that priv_validator_key_file points at {path:?}")]
    Timeout {
        /// The setting.
        timeout: Duration,
        /// The node process that did not read.
        pid: i32,
        /// How long it ran without reading.
        after: Duration,
        /// The key path.
        path: PathBuf,
    },
    /// Key possibly exposed.
    #[error("KEY MAY BE EXPOSED: {0}. The node was stopped and the safe key restored. Rotate the consensus key")]
    Exposed(String),
    /// The failover lease was lost or cannot be used.
    #[error("failover lease: {0}")]
    Lease(String),
    /// A thread, the signal mask or the subreaper could not be set up.
    #[error("{what}: {source}")]
    Internal {
        /// What was being set up.
        what: &'static str,
        source: std::io::Error,
    },
    /// [`Signals::start`] was called a second time (a bug).
    #[error("the signal thread was started twice")]
    SignalsStartedTwice,
}

/// `map_err` for a setup step that failed with an I/O error.
fn internal<E: Into<std::io::Error>>(what: &'static str) -> impl FnOnce(E) -> SuperviseError {
    move |e| SuperviseError::Internal {
        what,
        source: e.into(),
    }
}

/// What the run's threads tell the supervisor.
pub(crate) enum Event {
    Signal(i32),
    ChildExited(std::io::Result<ExitStatus>),
    Delivery(Result<Outcome, DeliverError>),
    Marker,
    ReaderExited(Pid),
    /// A watcher thread re-armed the key path.
    Rearmed,
    /// A watcher thread failed to re-arm.
    RearmFailed(SlotError),
    /// From the lease thread.
    Lease(LeaseNews),
    /// From the fencer's reader thread.
    Fence(FenceNews),
}

/// What the key handling needs; `None` runs the child like plain cosmovisor.
pub(crate) struct KeyJob {
    /// The slot, already repaired and backed up.
    pub(crate) slot: Arc<KeySlot>,
    /// The validated consensus key.
    pub(crate) key: Arc<ValidatorKey>,
    /// How the node is found among the child's processes.
    pub(crate) node: NodeMatch,
}

/// The failover lease's part in a run.
pub(crate) enum LeaseRole {
    /// No lease configured.
    None,
    /// We hold the lease: renew it while the child runs, stop the node if it
    /// is lost, release it (with the final sign state) after the restore.
    Holder {
        client: LeaseClient,
        /// The lease.
        held: Held,
        /// The node's sign-state file, carried with each renewal.
        state: StateFile,
    },
    /// Another host holds it: run the child without the key and wait; once
    /// the lease is ours, stop the child and return [`Ended::Acquired`].
    Standby {
        client: LeaseClient,
        /// The node's sign-state file (a lease may raise it only so far).
        state: StateFile,
    },
}

/// How a run ended.
pub(crate) enum Ended {
    /// Exit with this code.
    Exit(u8),
    /// A standby got the lease and stopped its keyless child.
    Acquired(Box<(LeaseClient, Held)>),
}

/// Runs `program args` as our child and supervises it to the end.
pub(crate) fn run(
    signals: &Signals,
    cfg: &Config,
    program: &OsString,
    args: &[OsString],
    job: Option<KeyJob>,
    lease: LeaseRole,
) -> Result<Ended, SuperviseError> {
    let (tx, rx) = mpsc::channel::<Event>();
    crate::metrics::role(match (&job, &lease) {
        (Some(_), _) => crate::metrics::Role::Signer,
        (None, LeaseRole::Standby { .. }) => crate::metrics::Role::Standby,
        (None, _) => crate::metrics::Role::Off,
    });
    let attached = signals.attach(tx.clone());
    let watchdog = choose_watchdog(cfg, &lease);
    // The lease threads inherit the blocked signals (blocked since before
    // any thread existed).
    let lease = match start_lease(cfg, lease, &tx) {
        Ok(l) => l,
        Err(failed) => {
            let (lease, e) = *failed;
            return abandon(job, lease, attached, Err(e));
        }
    };
    // Orphaned descendants (a node whose cosmovisor died) are reparented to
    // us instead of init, so we can stop them.
    let subreaper = if crate::failpoint_hit!("subreaper") {
        Err(rustix::io::Errno::PERM)
    } else {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
    };
    if let Err(e) = subreaper {
        let e = internal("PR_SET_CHILD_SUBREAPER")(e);
        return abandon(job, lease, attached, Err(e));
    }
    // Arm before the child exists: the node may look for its key at once.
    let armed = match &job {
        Some(j) => match first_arm(j) {
            Ok(a) => Some(a),
            Err(e) => return abandon(job, lease, attached, Err(e.into())),
        },
        None => None,
    };
    // Stopped between runs (a standby's handover) or while setting up: no
    // new child.
    if let Some(sig) = signals.stop_requested() {
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested before the child started"
        );
        return abandon(job, lease, attached, Ok(Ended::Exit(0)));
    }
    let holder = match &lease {
        LeasePart::Held(h) => Some(h),
        _ => None,
    };
    let child = match child::Child::spawn(cfg, program, args, holder.is_some(), &tx) {
        Ok(c) => c,
        Err(e) => return abandon(job, lease, attached, Err(e)),
    };
    let fencer = holder.map(|h| {
        h.guard.fence.arm(child.pid().0 as u32);
        h.fencer()
    });
    attached.guard_child(child.pid(), cfg.node);
    let rules = core::Rules {
        key_timeout: cfg.key_timeout,
        child_is_node: job.as_ref().is_some_and(|j| j.node == NodeMatch::Child),
        key_path: job
            .as_ref()
            .map_or_else(|| cfg.key_path.clone(), |j| j.slot.path().to_path_buf()),
    };
    let live = driver::Live {
        cfg,
        key: key_part(cfg, job, &tx),
        policy: reader_policy(cfg, child.pid(), fencer),
        child,
        tx,
        notifier: crate::notify::Notifier::from_env(),
        fencer,
        attached,
    };
    let mut sup = core::Supervisor::new(live, rules, lease, watchdog);
    sup.start(armed);
    let status = driver::event_loop(&mut sup, &rx);
    driver::finish(sup, status, &rx)
}

/// The first arm of the key path, before the child exists.
fn first_arm(j: &KeyJob) -> Result<ArmedFifo, SlotError> {
    if crate::failpoint_hit!("first-arm") {
        return Err(SlotError::Io {
            op: "arm (failpoint first-arm)",
            path: j.slot.path().to_path_buf(),
            source: std::io::Error::other("failpoint"),
        });
    }
    let a = j.slot.arm()?;
    tracing::info!(event = "armed", path = %j.slot.path().display(), inode = a.ino, "key FIFO armed");
    Ok(a)
}

/// The key's part of a run: with a key job, the re-arm lock and the upgrade
/// marker's watcher (started here: the FIFO is armed).
fn key_part(cfg: &Config, job: Option<KeyJob>, tx: &mpsc::Sender<Event>) -> driver::KeyPart {
    let Some(job) = job else {
        return driver::KeyPart::Keyless;
    };
    let fast = rearm::FastRearm::new(job.slot.clone());
    // Without the sign state every marker counts as due (rearm.rs).
    let state = StateFile::of_home(&cfg.home, cfg.node)
        .map_err(|e| tracing::warn!(error = %e, "cannot find the node's sign state: every upgrade marker re-arms at once"))
        .ok();
    rearm::spawn_marker_thread(
        &cfg.home.join("data"),
        cfg.node,
        state,
        fast.clone(),
        tx.clone(),
    );
    driver::KeyPart::Keyed {
        job,
        fast,
        delivering: None,
    }
}

/// The lease's part of a run, as the supervisor holds it.
type RunLease = LeasePart<lease_part::HolderPart, Waiter>;

/// Starts the lease's part of a run: a holder's fencer (confirmed before
/// the node may exist) and renewal thread, or a standby's wait. On failure,
/// what was started is handed back with the error, for [`abandon`].
fn start_lease(
    cfg: &Config,
    role: LeaseRole,
    tx: &mpsc::Sender<Event>,
) -> Result<RunLease, Box<(RunLease, SuperviseError)>> {
    let (client, held, state) = match role {
        LeaseRole::None => return Ok(LeasePart::None),
        LeaseRole::Standby { client, state } => {
            return Waiter::start(client, state, lease_part::lease_news(tx))
                .map(LeasePart::Standby)
                .map_err(|e| Box::new((LeasePart::None, internal("lease thread")(e))));
        }
        LeaseRole::Holder {
            client,
            held,
            state,
        } => (client, held, state),
    };
    let guard = match lease_part::start_fence(cfg, &held, &client.settings, tx) {
        Ok(g) => g,
        Err(e) => {
            // No node ran under it: released as it stands, while still ours.
            if boot_time() < held.deadline.get() {
                crate::lease::release_logged(&client, &held, None);
            }
            let e = SuperviseError::Lease(format!("{e}; nothing was delivered"));
            return Err(Box::new((LeasePart::None, e)));
        }
    };
    let part = |guard, renewal, state| lease_part::HolderPart {
        guard,
        renewal,
        state,
    };
    if boot_time() >= guard.until() {
        // Renewals failed until now: the key must not go out.
        let e = SuperviseError::Lease("no renewal of the lease was confirmed before the node could start; nothing was delivered".into());
        let unstarted = lease_part::Renewal::Unstarted(Box::new((client, held)));
        return Err(Box::new((
            LeasePart::Held(part(guard, unstarted, state)),
            e,
        )));
    }
    match Keeper::start(client, held, state.clone(), lease_part::lease_news(tx)) {
        Ok(k) => Ok(LeasePart::Held(part(
            guard,
            lease_part::Renewal::Keeper(k),
            state,
        ))),
        Err(n) => {
            let n = *n;
            let unstarted = lease_part::Renewal::Unstarted(Box::new((n.client, n.held)));
            let e = internal("lease thread")(n.error);
            Err(Box::new((
                LeasePart::Held(part(guard, unstarted, state)),
                e,
            )))
        }
    }
}

/// The run ends before its child exists (a step failed, or a stop came):
/// the slot goes back to the safe key, the fencer is disarmed and a held
/// lease released (no node ran in this run, so nothing was signed under
/// it), a standby's wait ended, then `outcome`. The one way out of a run
/// before its child exists; after, it is the driver's `finish`.
fn abandon(
    job: Option<KeyJob>,
    lease: RunLease,
    attached: signals::Attached,
    outcome: Result<Ended, SuperviseError>,
) -> Result<Ended, SuperviseError> {
    drop(attached);
    let restored = match &job {
        Some(j) => j.slot.restore().map(drop),
        None => Ok(()),
    };
    match lease {
        LeasePart::Held(h) | LeasePart::Lost(h) => h.finish(true),
        LeasePart::Standby(w) => drop(lease_part::finish_standby(w, false)),
        LeasePart::None => {}
    }
    match (restored, outcome) {
        (Err(r), Err(e)) => {
            tracing::error!(event = "restore_failed", error = %r, "could not put the safe key back after the run failed");
            Err(e)
        }
        (Err(r), Ok(_)) => Err(r.into()),
        (Ok(()), outcome) => outcome,
    }
}

/// The watchdog of this run (watchdog.rs); warns where a lease has no fence
/// the node's uid cannot stop.
fn choose_watchdog(cfg: &Config, lease: &LeaseRole) -> watchdog::Watchdog {
    let held = match lease {
        LeaseRole::Holder { client, .. } => Some(&client.settings),
        _ => None,
    };
    let stoppable = !cfg.node.switches();
    let (w, unfenced) = watchdog::choose(crate::notify::watchdog_from_env(), held, stoppable);
    if let Some(why) = unfenced {
        tracing::warn!(
            event = "lease_fence_stoppable",
            why = %why,
            "the node's user can stop this tool and its fencer (SIGSTOP) and keep signing past the lease"
        );
    }
    w
}

/// Who may receive the key in this run: the node, under our child; and
/// whom the reader scans leave out: ourselves and our fencer.
fn reader_policy(cfg: &Config, root: Pid, fencer: Option<Pid>) -> ReaderPolicy {
    ReaderPolicy {
        root,
        node: cfg.node,
        ours: procfs::Ours {
            me: Pid(std::process::id() as i32),
            // Not yet reaped, so its pid is still its own.
            fencer: fencer.and_then(procfs::OwnProcess::of),
        },
    }
}

/// The children of ours other than `except`.
fn children_except(except: Option<Pid>) -> Vec<Pid> {
    procfs::children_of(Pid(std::process::id() as i32))
        .into_iter()
        .filter(|p| Some(*p) != except)
        .collect()
}
