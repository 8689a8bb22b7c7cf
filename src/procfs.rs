//! Reading `/proc`: who holds an inode open, process ancestry, credentials.
//! Used to verify the FIFO's reader before the key is written.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
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

/// Reads a small `/proc` text file. `fs::read_to_string` sizes its buffer
/// from `st_size`, which is 0 here, and so needs ~7 `read` calls for a
/// status file; one 4 KiB buffer takes it in one (the reader scan does this
/// for every process, several times per hand-off).
fn read_proc_text(path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::with_capacity(4096);
    fs::File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}

/// The uids of a process from `/proc/<pid>/status` (real, effective, saved, fs).
pub fn uids_of(pid: Pid) -> Option<[u32; 4]> {
    let s = read_proc_text(&format!("/proc/{}/status", pid.0))?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let mut v = line[4..]
        .split_ascii_whitespace()
        .map(|x| x.parse::<u32>().ok());
    Some([v.next()??, v.next()??, v.next()??, v.next()??])
}

fn cap_permitted(pid: &str) -> Option<u64> {
    let s = read_proc_text(&format!("/proc/{pid}/status"))?;
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

/// All descendants of `root` (children first), from one snapshot of `/proc`.
pub fn descendants_of(root: Pid) -> Vec<Pid> {
    let all: Vec<(Pid, Option<Pid>)> = all_pids()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p, parent_of(p)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &all {
            if *pp == Some(parent) && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// The node's identity, whose processes must be inspectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIds {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// How many of a large fd table's newest fds [`scan_pid`] looks at first.
const TAIL_FDS: i64 = 32;

/// The fd numbers in a `/proc/<pid>/fd` directory from its position on,
/// highest first.
fn fd_numbers(dir: &mut rustix::fs::Dir) -> Vec<u32> {
    let mut fds: Vec<u32> = Vec::new();
    while let Some(Ok(ent)) = dir.read() {
        if let Some(n) = std::str::from_utf8(ent.file_name().to_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
        {
            fds.push(n);
        }
    }
    fds.sort_unstable_by(|a, b| b.cmp(a));
    fds
}

/// `stat` of what fd `n` of the process whose fd directory is `fd_dir` refers to.
fn stat_fd(fd_dir: &OwnedFd, n: u32) -> rustix::io::Result<rustix::fs::Stat> {
    rustix::fs::statat(fd_dir, n.to_string().as_str(), AtFlags::empty())
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
    // A large table is first looked at from its newest fds, reading the
    // directory from near its end: a node opens its key file after what it
    // holds at start-up, so its scan ends here without listing all its fds
    // (that listing was most of a scan's cost). Only a hit ends the scan
    // early; everything else gets the full scan below. Since Linux 6.2 the
    // size of /proc/<pid>/fd is the number of open fds (0 before: no tail).
    let open_fds = rustix::fs::fstat(&fd_dir).map(|st| st.st_size).unwrap_or(0);
    if open_fds > 2 * TAIL_FDS {
        if let Ok(mut tail) = rustix::fs::Dir::read_from(&fd_dir) {
            // The directory position of fd N is N + 2.
            if tail.seek(2 + open_fds - TAIL_FDS).is_ok() {
                for n in fd_numbers(&mut tail) {
                    if matches!(stat_fd(&fd_dir, n), Ok(st) if st.st_dev == dev && st.st_ino == ino)
                    {
                        return Ok(Some(true));
                    }
                }
            }
        }
    }
    let mut dir = match rustix::fs::Dir::read_from(&fd_dir) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Newest first here too; the answer does not depend on the order.
    for n in fd_numbers(&mut dir) {
        // stat follows the magic link to the open file itself.
        match stat_fd(&fd_dir, n) {
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
        // The fd table first, uids only where they matter (holders, and
        // processes we cannot inspect): rendering /proc/<pid>/status for
        // every process was a large part of each scan's cost.
        let mut res = scan_pid(pid, dev, ino);
        if let Ok(None | Some(false)) = res {
            continue;
        }
        let Some(uids) = uids_of(pid) else { continue };
        let relevant = uids.contains(&node.uid);
        let as_node = am_root && node.uid != 0 && relevant;
        if let (Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM), true) = (&res, as_node) {
            res = crate::sys::with_fs_ids(node.uid, node.gid, || scan_pid(pid, dev, ino));
        }
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

    /// The scan reads a large fd table from its newest fds first; a holder
    /// is found wherever its fd is (here: ourselves, not excluded).
    #[test]
    fn finds_a_holder_at_a_low_or_the_highest_fd_of_a_large_table() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let other = Pid(i32::MAX);
        for (i, at_top) in [(0, false), (1, true)] {
            let f = d.path().join(format!("held-{i}"));
            std::fs::write(&f, b"x").unwrap();
            let m = std::fs::metadata(&f).unwrap();
            let low = (!at_top).then(|| std::fs::File::open(&f).unwrap());
            let filler: Vec<_> = (0..200)
                .map(|_| std::fs::File::open("/dev/null").unwrap())
                .collect();
            let high = at_top.then(|| std::fs::File::open(&f).unwrap());
            let ids = NodeIds {
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            };
            let found = holders(m.dev(), m.ino(), other, ids).unwrap();
            let me = Pid(std::process::id() as i32);
            assert_eq!(
                found.iter().map(|h| h.pid).collect::<Vec<_>>(),
                vec![me],
                "at_top={at_top}"
            );
            drop((low, filler, high));
        }
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
