//! Re-arming the key path before the node may need the key again
//! (docs/design.md §4): the upgrade-marker watcher and the node-exit watcher
//! re-arm the FIFO themselves, under one lock, the moment the reason shows.
//! A marker re-arms only when its upgrade is due ([`judge_marker`]): a plan
//! written ahead of its height leaves the stripped key in place until the
//! node exits.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;

use super::Event;
use crate::identity::NodeIdentity;
use crate::lease::StateFile;
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

/// The upgrade marker's name in `<home>/data/`.
const MARKER: &str = "upgrade-info.json";

/// A marker larger than this is not an upgrade plan.
const MAX_MARKER: u64 = 64 * 1024;

/// What a written upgrade marker means for the key path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MarkerVerdict {
    /// The upgrade is at (or one block past) the height the node signed, or
    /// we cannot tell: cosmovisor may stop the node at any moment and
    /// restart it at once, so the FIFO goes back now.
    Due,
    /// A plan written ahead of its height (cosmovisor ≥ 1.6's batch watcher
    /// writes it as soon as the chain is below the next planned height,
    /// hours or days before it): the node keeps running, and whoever reads
    /// the key path meanwhile (`<bin> tendermint show-validator`) must find
    /// the stripped key, not a FIFO. The node-exit watcher re-arms.
    Ahead {
        /// The plan's name.
        name: String,
        /// The plan's height.
        plan: i64,
        /// The highest height the node signed.
        signed: i64,
    },
}

/// Judges a marker's bytes against the height in the node's sign state
/// (`None`: no state file, or unreadable).
pub(super) fn judge_marker(marker: &[u8], signed: Option<i64>) -> MarkerVerdict {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(marker) else {
        return MarkerVerdict::Due;
    };
    // The SDK writes the height as a JSON number; protobuf's JSON mapping of
    // an int64 (a Plan) is a string: accept both.
    let plan = match &v["height"] {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match (plan, signed) {
        (Some(plan), Some(signed)) if plan > signed.saturating_add(1) => MarkerVerdict::Ahead {
            name: v["name"].as_str().unwrap_or("?").to_string(),
            plan,
            signed,
        },
        _ => MarkerVerdict::Due,
    }
}

/// Whether a marker event is to be passed over: the file was just created
/// and holds no plan yet. The SDK and cosmovisor's batch watcher create it
/// and then write it; the close that follows at once is judged. Judging
/// the empty file would re-arm for a plan that may be days ahead (found by
/// `e2e_upgrade`, 1 run in 5).
fn awaits_its_write(events: rustix::fs::inotify::ReadFlags, bytes: &[u8]) -> bool {
    use rustix::fs::inotify::ReadFlags;
    let created_only = events.contains(ReadFlags::CREATE)
        && !events.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::MOVED_TO);
    created_only && serde_json::from_slice::<serde_json::Value>(bytes).is_err()
}

/// The marker's bytes (empty when it cannot be read: judged due). Read as
/// the node, without following a symlink, only from a regular file.
fn read_marker(path: &Path, node: NodeIdentity) -> Vec<u8> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    node.as_node(|| {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return None;
        }
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_MARKER)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    })
    .unwrap_or_default()
}

/// Watches `<home>/data/` for the upgrade marker. The SDK rewrites
/// `upgrade-info.json` in place, so close-after-write matters as much as create.
pub(super) fn spawn_marker_thread(
    data_dir: &Path,
    node: NodeIdentity,
    state: Option<StateFile>,
    rearm: Arc<FastRearm>,
    tx: Sender<Event>,
) {
    let marker = data_dir.join(MARKER);
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
                            .map(|n| n.to_bytes() == MARKER.as_bytes())
                            .unwrap_or(false);
                        if !is_marker {
                            continue;
                        }
                        let bytes = read_marker(&marker, node);
                        if awaits_its_write(ev.events(), &bytes) {
                            continue;
                        }
                        let signed = state
                            .as_ref()
                            .and_then(|s| s.read().ok().flatten())
                            .map(|s| s.height);
                        match judge_marker(&bytes, signed) {
                            MarkerVerdict::Due => rearm.trigger("upgrade marker written", &tx),
                            MarkerVerdict::Ahead { name, plan, signed } => tracing::info!(
                                event = "upgrade_planned",
                                name = %name,
                                height = plan,
                                signed_height = signed,
                                "upgrade plan written ahead of its height: the key FIFO goes back when the node exits"
                            ),
                        }
                        if tx.send(Event::Marker).is_err() {
                            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_just_created_waits_for_its_write_and_a_written_one_is_judged() {
        use rustix::fs::inotify::ReadFlags as F;
        assert!(awaits_its_write(F::CREATE, b""));
        assert!(awaits_its_write(F::CREATE, b"{\"name\":\"v2\",\"hei"));
        // Created and written before we read: judged at once.
        assert!(!awaits_its_write(F::CREATE, br#"{"name":"v2","height":5}"#));
        // A closed or moved-in marker is always judged (unreadable: due).
        assert!(!awaits_its_write(F::CLOSE_WRITE, b""));
        assert!(!awaits_its_write(F::MOVED_TO, b"garbage"));
    }

    #[test]
    fn a_marker_re_arms_at_once_unless_its_plan_is_ahead_of_the_signed_height() {
        let gov = br#"{"name":"v2","time":"0001-01-01T00:00:00Z","height":1000,"info":""}"#;
        // Written by the node at the upgrade height (it signed 1000 or 999).
        assert_eq!(judge_marker(gov, Some(1000)), MarkerVerdict::Due);
        assert_eq!(judge_marker(gov, Some(999)), MarkerVerdict::Due);
        // A plan written ahead: the node keeps running.
        assert_eq!(
            judge_marker(gov, Some(998)),
            MarkerVerdict::Ahead {
                name: "v2".into(),
                plan: 1000,
                signed: 998
            }
        );
        // A Plan in protobuf's JSON (height as a string), as a batch writes it.
        let batch = br#"{"name":"v3","height":"5000","info":"{}"}"#;
        assert!(matches!(
            judge_marker(batch, Some(10)),
            MarkerVerdict::Ahead { plan: 5000, .. }
        ));
        // When we cannot tell, re-arm: a node restarted onto the stripped
        // key is a crash, a FIFO too early only waits.
        assert_eq!(judge_marker(gov, None), MarkerVerdict::Due);
        assert_eq!(judge_marker(b"", Some(10)), MarkerVerdict::Due);
        assert_eq!(judge_marker(b"{not json", Some(10)), MarkerVerdict::Due);
        assert_eq!(
            judge_marker(br#"{"name":"x","height":true}"#, Some(10)),
            MarkerVerdict::Due
        );
        assert_eq!(
            judge_marker(br#"{"name":"x","height":"12x"}"#, Some(10)),
            MarkerVerdict::Due
        );
        // No overflow at the extremes.
        assert_eq!(
            judge_marker(
                br#"{"name":"x","height":9223372036854775807}"#,
                Some(i64::MAX)
            ),
            MarkerVerdict::Due
        );
    }
}
