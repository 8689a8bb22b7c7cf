//! The node's identity: the uid and primary gid the node runs as, resolved
//! once from the configuration, and the one place that acts with the node's
//! filesystem ids.
//!
//! In split trust (root running the node as another user, bounded without
//! `CAP_DAC_*` and `CAP_SYS_PTRACE`), the node's private files, its FIFO and
//! its `/proc` entries are closed to root but open to the node's own ids.
//! [`NodeIdentity::as_node`] switches the calling thread's fsuid/fsgid for one
//! operation; nothing else in the process, and nothing after it, runs with
//! them. Reading node-owned files this way also keeps root from reaching
//! further on the node's behalf than the node itself could (its
//! `config.toml` names the files root then works on).
//!
//! Part of the library interface: the `/proc` scan benchmark builds one.

use std::io;

/// Who the node runs as: the configured node user, else ourselves.
///
/// Whether acting as the node switches ids is decided once, at construction
/// (our effective uid does not change while we run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIdentity {
    uid: u32,
    gid: u32,
    switches: bool,
}

impl NodeIdentity {
    /// A node running as `uid` with primary group `gid`.
    pub fn new(uid: u32, gid: u32) -> NodeIdentity {
        NodeIdentity {
            uid,
            gid,
            switches: rustix::process::geteuid().is_root() && uid != 0,
        }
    }

    /// A node running with our own effective ids (no node user configured):
    /// acting as it is a plain call.
    pub fn ours() -> NodeIdentity {
        NodeIdentity::new(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    /// The node's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The node's primary gid.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Whether we are root acting for a node of another uid: then
    /// [`NodeIdentity::as_node`] switches ids, and the node's files are the
    /// node's, not ours.
    pub fn switches(&self) -> bool {
        self.switches
    }

    /// Runs `f` as the node: with this thread's fsuid/fsgid switched to the
    /// node's when [`NodeIdentity::switches`], restored afterwards (also if
    /// `f` panics); otherwise a plain call. A thread `f` spawns starts with
    /// the node's ids (a new thread copies its creator's credentials), so
    /// `f` spawns none.
    pub fn as_node<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.switches {
            crate::sys::with_fs_ids(self.uid, self.gid, f)
        } else {
            f()
        }
    }

    /// Runs `f` with our own ids and, if the kernel refused it for
    /// permissions (EACCES or EPERM) and acting as the node switches ids,
    /// once more as the node. Any other result is returned as it is.
    pub fn retry_as_node_on_eacces<T, E: PermissionDenied>(
        &self,
        mut f: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        match f() {
            Err(e) if self.switches && e.is_permission_denied() => self.as_node(f),
            r => r,
        }
    }
}

/// An error that says, by its errno, whether the kernel refused an
/// operation for permissions.
pub trait PermissionDenied {
    /// EACCES or EPERM.
    fn is_permission_denied(&self) -> bool;
}

impl PermissionDenied for rustix::io::Errno {
    fn is_permission_denied(&self) -> bool {
        matches!(*self, rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)
    }
}

impl PermissionDenied for io::Error {
    fn is_permission_denied(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::EACCES | libc::EPERM))
            || self.kind() == io::ErrorKind::PermissionDenied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `nobody`: a uid other than ours and root's.
    const NODE: u32 = 65534;

    /// This thread's filesystem uid and gid: the fourth field of the `Uid:`
    /// and `Gid:` lines of `/proc/thread-self/status`.
    fn fs_ids() -> (u32, u32) {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |key: &str| -> u32 {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} line in {status}"));
            line.split_whitespace().nth(4).unwrap().parse().unwrap()
        };
        (field("Uid:"), field("Gid:"))
    }

    fn am_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn skip(why: &str) -> bool {
        eprintln!("skipped: {why}");
        true
    }

    #[test]
    fn as_node_switches_only_this_thread_and_restores_after() {
        if !am_root() && skip("needs root to switch fs ids") {
            return;
        }
        let node = NodeIdentity::new(NODE, NODE);
        assert!(node.switches());
        let before = fs_ids();
        // A thread that exists already, asked while we act as the node.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            while asked.recv().is_ok() {
                tell.send(fs_ids()).unwrap();
            }
        });
        let (inside, other_thread) = node.as_node(|| {
            ask.send(()).unwrap();
            (fs_ids(), told.recv().unwrap())
        });
        drop(ask);
        other.join().unwrap();
        assert_eq!(inside, (NODE, NODE));
        assert_eq!(
            other_thread, before,
            "another thread ran with the node's ids"
        );
        assert_eq!(fs_ids(), before);
    }

    #[test]
    fn as_node_restores_after_a_panic() {
        if !am_root() && skip("needs root to switch fs ids") {
            return;
        }
        let before = fs_ids();
        let r = std::panic::catch_unwind(|| {
            NodeIdentity::new(NODE, NODE).as_node(|| panic!("inside"));
        });
        assert!(r.is_err());
        assert_eq!(fs_ids(), before);
    }

    #[test]
    fn as_node_is_a_plain_call_for_a_root_node_or_our_own_ids() {
        let before = fs_ids();
        for node in [NodeIdentity::new(0, 0), NodeIdentity::ours()] {
            assert!(!node.switches(), "{node:?}");
            assert_eq!(node.as_node(fs_ids), before, "{node:?}");
        }
        if !am_root() {
            // Unprivileged, another uid cannot be switched to: not tried.
            let node = NodeIdentity::new(before.0.wrapping_add(1), before.1);
            assert!(!node.switches());
            assert_eq!(node.as_node(fs_ids), before);
        }
    }

    /// A 0600 file of the node's in a directory the node may search.
    fn node_only_file(d: &tempfile::TempDir) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let f = d.path().join("node-only");
        std::fs::write(&f, b"node's").unwrap();
        std::os::unix::fs::chown(&f, Some(NODE), Some(NODE)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        f
    }

    /// Runs `f` on a thread of its own whose effective set lacks
    /// `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` (capabilities are per
    /// thread): root as in the split-trust unit.
    fn without_dac_caps<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            use caps::{CapSet, Capability};
            for c in [
                Capability::CAP_DAC_OVERRIDE,
                Capability::CAP_DAC_READ_SEARCH,
            ] {
                caps::drop(None, CapSet::Effective, c).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    }

    /// The split-trust case for real: root without the DAC capabilities
    /// cannot read the node's 0600 file, the node can.
    #[test]
    fn retries_as_the_node_when_root_without_dac_caps_is_refused() {
        if !am_root() && skip("needs root to drop capabilities and switch fs ids") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = node_only_file(&d);
        let (first, calls, read, fs_in_retry) = without_dac_caps(move || {
            let first = std::fs::read(&f).unwrap_err();
            let calls = Cell::new(0);
            let ids = Cell::new((0, 0));
            let read = NodeIdentity::new(NODE, NODE).retry_as_node_on_eacces(|| {
                calls.set(calls.get() + 1);
                ids.set(fs_ids());
                std::fs::read(&f)
            });
            (first, calls.get(), read, ids.get())
        });
        assert!(first.is_permission_denied(), "{first}");
        assert_eq!(calls, 2);
        assert_eq!(read.unwrap(), b"node's");
        assert_eq!(fs_in_retry, (NODE, NODE));
    }

    #[test]
    fn does_not_retry_on_other_errors() {
        if !am_root() && skip("needs root: only then is a retry possible at all") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing");
        let calls = Cell::new(0);
        let r = NodeIdentity::new(NODE, NODE).retry_as_node_on_eacces(|| {
            calls.set(calls.get() + 1);
            std::fs::read(&missing)
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(calls.get(), 1);
        // A raw errno too: EISDIR from opening a directory for writing.
        let calls = Cell::new(0);
        let r = NodeIdentity::new(NODE, NODE).retry_as_node_on_eacces(|| {
            calls.set(calls.get() + 1);
            rustix::fs::open(
                d.path(),
                rustix::fs::OFlags::WRONLY,
                rustix::fs::Mode::empty(),
            )
        });
        assert_eq!(r.unwrap_err(), rustix::io::Errno::ISDIR);
        assert_eq!(calls.get(), 1);
    }

    /// Refused for permissions, but acting as the node would change nothing
    /// (a root node as root, or no switch possible unprivileged): one call,
    /// the refusal returned.
    #[test]
    fn does_not_retry_when_acting_as_the_node_switches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let attempt = |node: NodeIdentity, f: std::path::PathBuf| {
            let calls = Cell::new(0);
            let r = node.retry_as_node_on_eacces(|| {
                calls.set(calls.get() + 1);
                std::fs::read(&f)
            });
            (r.map_err(|e| e.kind()), calls.get())
        };
        let (r, calls) = if am_root() {
            let f = node_only_file(&d);
            without_dac_caps(move || attempt(NodeIdentity::new(0, 0), f))
        } else {
            use std::os::unix::fs::PermissionsExt;
            let f = d.path().join("closed");
            std::fs::write(&f, b"x").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
            attempt(NodeIdentity::ours(), f)
        };
        assert_eq!(r, Err(io::ErrorKind::PermissionDenied));
        assert_eq!(calls, 1);
    }

    #[test]
    fn permission_errors_are_told_by_errno_not_text() {
        assert!(io::Error::from_raw_os_error(libc::EACCES).is_permission_denied());
        assert!(io::Error::from_raw_os_error(libc::EPERM).is_permission_denied());
        assert!(!io::Error::from_raw_os_error(libc::ENOENT).is_permission_denied());
        assert!(!io::Error::other("Permission denied").is_permission_denied());
        assert!(rustix::io::Errno::ACCESS.is_permission_denied());
        assert!(rustix::io::Errno::PERM.is_permission_denied());
        assert!(!rustix::io::Errno::ROFS.is_permission_denied());
    }
}
