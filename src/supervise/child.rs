//! Our child (cosmovisor, or the node command): started hardened, waited
//! for on its own thread, signalled by pidfd; and the orphans we adopt as
//! subreaper.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, Instant};

use super::{Event, SuperviseError};
use crate::config::Config;
use crate::harden;
use crate::procfs::{self, Pid};

/// The child we started.
pub(super) struct Child {
    pid: Pid,
    pidfd: Option<OwnedFd>,
}

impl Child {
    /// Starts `program args` hardened (as the node user if configured), in
    /// a process group of its own if `own_group` (the fencer kills it as a
    /// whole), and a thread that reports its exit to `tx`.
    pub(super) fn spawn(
        cfg: &Config,
        program: &OsString,
        args: &[OsString],
        own_group: bool,
        tx: &Sender<Event>,
    ) -> Result<Child, SuperviseError> {
        let creds = harden::child_creds(cfg.node_user.as_ref());
        let mut cmd = Command::new(program);
        cmd.args(args);
        harden::prepare(&mut cmd, creds);
        harden::give_aws_profile(&mut cmd, cfg.child_aws_profile.as_deref());
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        // Spawned from the main thread, which lives as long as we do: the
        // child's parent-death signal fires when the *spawning thread* exits.
        let mut child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = Pid(child.id() as i32);
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid.0).expect("positive pid"),
            rustix::process::PidfdFlags::empty(),
        )
        .ok();
        tracing::info!(event = "child_started", pid = pid.0, program = %Path::new(program).display(), "started child");
        crate::metrics::child_started();
        let tx = tx.clone();
        thread::Builder::new()
            .name("child-wait".into())
            .spawn(move || {
                let _ = tx.send(Event::ChildExited(child.wait()));
            })
            .map_err(super::internal("child wait thread"))?;
        Ok(Child { pid, pidfd })
    }

    /// Its pid.
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends it `sig` (through its pidfd: never a recycled pid), logged.
    pub(super) fn signal(&self, sig: i32) {
        let s =
            rustix::process::Signal::from_named_raw(sig).unwrap_or(rustix::process::Signal::TERM);
        let r = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd.as_fd(), s),
            None => rustix::process::kill_process(
                rustix::process::Pid::from_raw(self.pid.0).expect("positive pid"),
                s,
            ),
        };
        tracing::info!(
            event = "signal_forwarded",
            signal = sig,
            pid = self.pid.0,
            ok = r.is_ok(),
            "forwarded signal to child"
        );
    }

    /// Stops it cleanly for a stop signal we `received`: SIGTERM, whatever
    /// came (signals.rs [`super::signals::for_child`]).
    pub(super) fn forward_stop(&self, received: i32) {
        let sig = super::signals::for_child(received);
        tracing::info!(
            event = "stop_signal",
            received,
            sent = sig,
            "stop requested: stopping the child with SIGTERM"
        );
        self.signal(sig);
    }

    /// SIGKILL to its whole tree for a lost lease, with the fencer's own
    /// kill (one function, so the two cannot differ): its process group and
    /// every descendant of ours but the fencer, until none is left; then to
    /// the child through its pidfd, in case it was not seen.
    pub(super) fn kill_tree(&self, fencer: Option<Pid>, node: crate::identity::NodeIdentity) {
        kill_descendants(Some(self.pid), fencer, node);
        self.signal(libc::SIGKILL);
    }
}

/// SIGKILLs the process group `pgid` (cosmovisor's) and every descendant of
/// ours but the fencer, until none is left (`procfs::tree::kill_tree`, the
/// fencer's own kill), and logs what it did. The one kill of the lost
/// lease, the watchdog abort and the orphan reaper.
pub(super) fn kill_descendants(
    pgid: Option<Pid>,
    fencer: Option<Pid>,
    node: crate::identity::NodeIdentity,
) {
    let me = std::process::id() as i32;
    let k = crate::procfs::tree::kill_tree(&crate::procfs::tree::Tree {
        tool: Some(me),
        pgid: pgid.map(|p| p.0),
        spare: [me, fencer.map_or(me, |f| f.0)],
        node,
    });
    for (pid, e) in &k.denied {
        tracing::error!(event = "kill_denied", pid, error = %e, "not allowed to SIGKILL a process of the child's tree (the unit needs CAP_KILL)");
    }
    tracing::warn!(
        event = "tree_killed",
        killed = k.count,
        scans = k.scans,
        left = ?k.left,
        "SIGKILLed the child's process tree"
    );
}

/// Maps a child's status to our exit code (128+N for a signal death).
pub(crate) fn status_code(st: &ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Stops every process we adopted (orphans of the child): TERM, then KILL
/// after the grace period. Returns once none is left.
pub(super) fn stop_orphans(
    me: Pid,
    fencer: Option<Pid>,
    deadline: Instant,
    node: crate::identity::NodeIdentity,
) {
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
            kill_descendants(None, fencer, node);
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
pub(super) fn reap_others(keep: Option<Pid>) {
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
