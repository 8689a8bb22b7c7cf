//! `scripts/bench` helper (cargo example `scan-bench`): times the reader check's `/proc`
//! scan as the tool runs it now (`ssm_cosmovisor::procfs::holders`: every task's fd table,
//! tasks sharing one skipped via kcmp) against the per-pid scan it replaced (every
//! `/proc/<pid>/fd`, kept below as it was in commit ce0a855), interleaved, on the same
//! `/proc`.
//!
//! usage: scan-bench ROUNDS [NODE_UID NODE_GID]
//!
//! The node's ids default to ours; run as root without `CAP_SYS_PTRACE` with another node
//! uid, both scans work as in the split-trust unit (the node's entries read with its
//! filesystem ids).
//!
//! The inode looked for is a fresh file nobody holds, so every process is scanned to the
//! end, as in the scans of a hand-off that find only the node (whose own scan ends early).
//! Prints one JSON object: `per_task_us` and `per_pid_us` (one scan each per round), and the
//! processes and tasks seen.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use rustix::fs::{AtFlags, Mode, OFlags};
use ssm_cosmovisor::identity::NodeIdentity;
use ssm_cosmovisor::procfs::{self, Pid};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let f = tempfile::NamedTempFile::new().expect("temp file");
    let m = std::fs::metadata(f.path()).expect("stat");
    let me = Pid(std::process::id() as i32);
    let arg = |i: usize| std::env::args().nth(i).and_then(|a| a.parse::<u32>().ok());
    let ours = NodeIdentity::ours();
    let node = NodeIdentity::new(arg(2).unwrap_or(ours.uid()), arg(3).unwrap_or(ours.gid()));
    let (mut per_task, mut per_pid) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first: neither gets the warmer caches every time.
        for which in [r % 2, 1 - r % 2] {
            let t = Instant::now();
            if which == 0 {
                let h = procfs::holders(m.dev(), m.ino(), &procfs::Ours::me(), node);
                per_task.push(t.elapsed().as_micros() as u64);
                assert!(matches!(h, Ok(ref v) if v.is_empty()), "{h:?}");
            } else {
                let h = old::holders(m.dev(), m.ino(), me, node);
                per_pid.push(t.elapsed().as_micros() as u64);
                assert!(matches!(h, Ok(ref v) if v.is_empty()), "{h:?}");
            }
        }
    }
    let pids = procfs::all_pids().map(|p| p.len()).unwrap_or(0);
    let tasks: usize = procfs::all_pids()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            std::fs::read_dir(format!("/proc/{}/task", p.0))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "per_task_us": per_task,
            "per_pid_us": per_pid,
            "pids": pids,
            "tasks": tasks,
        })
    );
}

/// The per-pid scan of commit ce0a855 (`procfs::holders`), the baseline.
mod old {
    use super::*;

    const TAIL_FDS: i64 = 32;

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

    fn stat_fd(fd_dir: &OwnedFd, n: u32) -> rustix::io::Result<rustix::fs::Stat> {
        rustix::fs::statat(fd_dir, n.to_string().as_str(), AtFlags::empty())
    }

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
        let open_fds = rustix::fs::fstat(&fd_dir).map(|st| st.st_size).unwrap_or(0);
        if open_fds > 2 * TAIL_FDS {
            if let Ok(mut tail) = rustix::fs::Dir::read_from(&fd_dir) {
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
        for n in fd_numbers(&mut dir) {
            match stat_fd(&fd_dir, n) {
                Ok(st) if st.st_dev == dev && st.st_ino == ino => return Ok(Some(true)),
                Ok(_) | Err(rustix::io::Errno::NOENT) => {}
                Err(e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(Some(false))
    }

    /// Holders' pids; `Err(pid)` where the old scan failed closed.
    pub fn holders(dev: u64, ino: u64, exclude: Pid, node: NodeIdentity) -> Result<Vec<Pid>, Pid> {
        let am_root = rustix::process::geteuid().is_root();
        let mut found = Vec::new();
        for pid in procfs::all_pids().unwrap_or_default() {
            if pid == exclude {
                continue;
            }
            let mut res = scan_pid(pid, dev, ino);
            if let Ok(None | Some(false)) = res {
                continue;
            }
            let Some(uids) = procfs::uids_of(pid) else {
                continue;
            };
            let relevant = uids.contains(&node.uid());
            if let (Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM), true) =
                (&res, node.switches() && relevant)
            {
                res = node.as_node(|| scan_pid(pid, dev, ino));
            }
            match res {
                Ok(Some(true)) => {
                    let _ = procfs::exe_of(pid);
                    found.push(pid);
                }
                Ok(_) => {}
                Err(_) if am_root && node.uid() == 0 => {}
                Err(_) if relevant => return Err(pid),
                Err(_) => {}
            }
        }
        Ok(found)
    }
}
