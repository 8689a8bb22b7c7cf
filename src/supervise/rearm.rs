//! Re-arming the key path before the node may need the key again
//! (docs/design.md §4): the upgrade-marker watcher and the node-exit watcher
//! re-arm the FIFO themselves, under one lock, the moment the reason shows.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;

use super::Event;
use crate::identity::NodeIdentity;
use crate::procfs::Pid;
use crate::slot::{ArmedFifo, KeySlot, SlotError};

/// Lets the watcher threads (upgrade marker, node exit) re-arm the key path
/// themselves, the moment the reason shows, also while the main loop has not
/// yet heard how the last hand-off ended (its verification can take tens of
/// milliseconds under load). Going through the main loop cost wake-ups, and
/// with the CPUs busy that lost the race with a cosmovisor restarting the
/// node at once: the new node read the stripped file (tests/e2e_delivery.rs,
/// 100 upgrades with two CPU hogs). The lock keeps re-arms to one thread at a
/// time; the main loop takes a FIFO armed this way for its next hand-off.
pub(super) struct FastRearm {
    slot: Arc<KeySlot>,
    state: Mutex<FastState>,
}

pub(super) struct FastState {
    /// Watchers may re-arm (false once we stop).
    enabled: bool,
    /// A FIFO armed by a watcher, for the main loop's next hand-off.
    armed: Option<ArmedFifo>,
}

impl FastRearm {
    /// Re-arms `slot` on request, until disabled.
    pub(super) fn new(slot: Arc<KeySlot>) -> Arc<FastRearm> {
        Arc::new(FastRearm {
            slot,
            state: Mutex::new(FastState {
                enabled: true,
                armed: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-arms now if the stripped file is at the key path, and tells the
    /// main loop. The stripped file is there only from a reader attaching to
    /// the next re-arm: exactly when a starting node must not find it.
    pub(super) fn trigger(&self, reason: &'static str, tx: &Sender<Event>) {
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
    pub(super) fn take(&self) -> Option<ArmedFifo> {
        self.lock().armed.take()
    }

    /// For the main loop's next hand-off: the FIFO a watcher armed (`false`),
    /// else a new one (`true`).
    pub(super) fn take_or_arm(&self) -> Result<(ArmedFifo, bool), SlotError> {
        let mut st = self.lock();
        match st.armed.take() {
            Some(a) => Ok((a, false)),
            None => self.slot.arm().map(|a| (a, true)),
        }
    }

    /// No more re-arms (shutdown); a FIFO armed meanwhile is dropped, the
    /// restore that follows takes the slot back to idle.
    pub(super) fn disable(&self) {
        let mut st = self.lock();
        st.enabled = false;
        st.armed = None;
    }
}

/// Watches `<home>/data/` for the upgrade marker. The SDK rewrites
/// `upgrade-info.json` in place, so close-after-write matters as much as create.
pub(super) fn spawn_marker_thread(
    data_dir: &Path,
    node: NodeIdentity,
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
    // Split-trust: the node's data/ may be closed to root without
    // CAP_DAC_READ_SEARCH; the watch only needs read access, as the node.
    let watched = node.retry_as_node_on_eacces(|| inotify::add_watch(&fd, data_dir, flags));
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

pub(super) fn spawn_reader_exit_thread(pid: Pid, rearm: Arc<FastRearm>, tx: Sender<Event>) {
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
