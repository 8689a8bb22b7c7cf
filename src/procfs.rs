//! Reading `/proc`: who holds an inode open, process ancestry, credentials.
//! Used to verify the FIFO's reader before the key is written.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags};

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(pub i32);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A process holding the FIFO open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// Its pid.
    pub pid: Pid,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// `/proc/<pid>/exe`, if readable.
    pub exe: Option<PathBuf>,
}

impl Holder {
    /// Effective uid.
    pub fn euid(&self) -> u32 {
        self.uids[1]
    }
}

/// A `/proc` scan could not be completed; the caller must fail closed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A process that could hold the FIFO has an unreadable fd table.
    #[error("cannot inspect /proc/{pid}/fd ({source}); a process of uid {uid} could hold the key FIFO, so the reader cannot be verified")]
    Unreadable {
        /// The process.
        pid: Pid,
        /// Its uid.
        uid: u32,
        /// Cause.
        source: io::Error,
    },
    /// `/proc` itself is unusable.
    #[error("cannot read /proc: {0}")]
    Proc(#[source] io::Error),
}

/// Parses `/proc/<pid>/stat` for the parent pid (the comm field may contain
/// spaces and parentheses, so split after the last `)`).
pub fn parent_of(pid: Pid) -> Option<Pid> {
    let s = fs::read(format!("/proc/{}/stat", pid.0)).ok()?;
    let close = s.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&s[close + 1..]).ok()?;
    let mut it = rest.split_ascii_whitespace();
    let _state = it.next()?;
    it.next()?.parse().ok().map(Pid)
}

/// Whether `pid` is `ancestor` or one of its descendants.
pub fn is_descendant_of(pid: Pid, ancestor: Pid) -> bool {
    let mut cur = pid;
    // Bounded walk: pid chains are short; a cycle is impossible but a bound
    // costs nothing.
    for _ in 0..4096 {
        if cur == ancestor {
            return true;
        }
        match parent_of(cur) {
            Some(p) if p.0 > 0 && p != cur => cur = p,
            _ => return false,
        }
    }
    false
}

/// The uids of a process from `/proc/<pid>/status` (real, effective, saved, fs).
pub fn uids_of(pid: Pid) -> Option<[u32; 4]> {
    let s = fs::read_to_string(format!("/proc/{}/status", pid.0)).ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let mut v = line[4..]
        .split_ascii_whitespace()
        .map(|x| x.parse::<u32>().ok());
    Some([v.next()??, v.next()??, v.next()??, v.next()??])
}

fn cap_permitted(pid: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("CapPrm:"))?;
    u64::from_str_radix(line[7..].trim(), 16).ok()
}

/// Whether `pid` holds a permitted capability that we do not.
pub fn more_privileged_than_us(pid: Pid) -> bool {
    match (cap_permitted(&pid.0.to_string()), cap_permitted("self")) {
        (Some(theirs), Some(ours)) => theirs & !ours != 0,
        _ => false,
    }
}

/// The executable of a process.
pub fn exe_of(pid: Pid) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{}/exe", pid.0)).ok()
}

/// All pids currently in `/proc`.
pub fn all_pids() -> Result<Vec<Pid>, ProcError> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").map_err(ProcError::Proc)? {
        let e = e.map_err(ProcError::Proc)?;
        if let Some(pid) = parse_pid(&e.file_name()) {
            out.push(pid);
        }
    }
    Ok(out)
}

fn parse_pid(name: &OsStr) -> Option<Pid> {
    let b = name.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok().map(Pid)
}

/// Direct children of `parent`.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    all_pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| parent_of(p) == Some(parent))
        .collect()
}

/// The node's identity, whose processes must be inspectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIds {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Whether `pid` has an fd on inode (`dev`, `ino`). `Ok(None)` if it vanished.
fn scan_pid(pid: Pid, dev: u64, ino: u64) -> Result<Option<bool>, rustix::io::Errno> {
    let fd_dir = match rustix::fs::open(
        format!("/proc/{}/fd", pid.0).as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    let dir = match rustix::fs::Dir::read_from(&fd_dir) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    for ent in dir {
        let Ok(ent) = ent else { break };
        let name = ent.file_name();
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        // stat follows the magic link to the open file itself.
        match rustix::fs::statat(&fd_dir, name, AtFlags::empty()) {
            Ok(st) if st.st_dev == dev && st.st_ino == ino => return Ok(Some(true)),
            Ok(_) | Err(rustix::io::Errno::NOENT) => {}
            // An fd we may not inspect must not be assumed harmless.
            Err(e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(Some(false))
}

/// Finds every process (other than `exclude`) holding an fd to inode
/// (`dev`, `ino`).
///
/// Only processes running with the node's uid can open the FIFO (mode 0600,
/// owned by the node) without root privileges, and root is outside the trust
/// boundary; so a process whose fd table we cannot read is skipped unless one
/// of its uids is the node's, in which case the scan fails closed. When we are
/// root without `CAP_SYS_PTRACE` (split-trust unit), node processes are
/// inspected with the node's filesystem ids instead (see [`crate::sys::with_fs_ids`]).
pub fn holders(dev: u64, ino: u64, exclude: Pid, node: NodeIds) -> Result<Vec<Holder>, ProcError> {
    let am_root = rustix::process::geteuid().is_root();
    let mut found = Vec::new();
    for pid in all_pids()? {
        if pid == exclude {
            continue;
        }
        let Some(uids) = uids_of(pid) else { continue };
        let relevant = uids.contains(&node.uid);
        let as_node = am_root && node.uid != 0 && relevant;
        let res = match scan_pid(pid, dev, ino) {
            Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) if as_node => {
                crate::sys::with_fs_ids(node.uid, node.gid, || scan_pid(pid, dev, ino))
            }
            r => r,
        };
        match res {
            Ok(Some(true)) => {
                let exe = exe_of(pid).or_else(|| {
                    as_node
                        .then(|| crate::sys::with_fs_ids(node.uid, node.gid, || exe_of(pid)))
                        .flatten()
                });
                found.push(Holder { pid, uids, exe });
            }
            Ok(_) => {}
            // A process that root cannot inspect holds privileges we lack
            // (e.g. a VM's init with capabilities outside our bounding set).
            // When the node itself runs as root, such a process can read the
            // node's memory anyway: failing closed on it protects nothing and
            // would make delivery impossible wherever one exists.
            Err(_) if am_root && node.uid == 0 => {}
            Err(e) if relevant => {
                return Err(ProcError::Unreadable {
                    pid,
                    uid: node.uid,
                    source: e.into(),
                })
            }
            Err(_) => {}
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_and_uids_of_self() {
        let me = Pid(std::process::id() as i32);
        let parent = parent_of(me).unwrap();
        assert!(is_descendant_of(me, parent));
        assert!(is_descendant_of(me, Pid(1)) || parent_of(parent).is_none());
        assert!(!is_descendant_of(parent, me));
        let uids = uids_of(me).unwrap();
        assert_eq!(uids[1], rustix::process::geteuid().as_raw());
    }

    #[test]
    fn finds_holders_of_an_inode_in_a_child() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("held");
        std::fs::write(&f, b"x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 7<\"$1\"; exec sleep 5")
            .arg("sh")
            .arg(&f)
            .spawn()
            .unwrap();
        let me = Pid(std::process::id() as i32);
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = holders(m.dev(), m.ino(), me, NodeIds { uid: 0, gid: 0 }).unwrap();
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let descends = seen.first().map(|h| is_descendant_of(h.pid, me));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].pid.0 as u32, child.id());
        assert_eq!(descends, Some(true));
    }
}
