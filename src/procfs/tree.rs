//! The process tree, read from `/proc`: one reading of a process's `stat`,
//! its parent, children and descendants, a process of ours known by its
//! start time, and the kill-until-empty of a child's whole tree. One module
//! for the fencer, the supervisor's lost-lease kill, the watchdog abort and
//! the orphan reaper, so the most safety-relevant kill is the same
//! everywhere (docs/design.md §7.4).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, Instant};

use rustix::process::{Pid as RPid, Signal};

use super::{all_pids, Pid};
use crate::identity::NodeIdentity;

/// One `/proc/<pid>/stat` line, the fields the process tree needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) ppid: i32,
    pub(crate) pgid: i32,
    /// Start time (clock ticks since boot): with the pid, names one process
    /// for good, so a pid freed and reused between scan and kill is spared.
    pub(crate) start: u64,
    /// A zombie whose every thread is gone holds nothing and cannot sign.
    pub(crate) dead: bool,
}

/// A process's `stat` (readable whatever our access to it), through the
/// one parser of that line (`denied::fields_after_comm`: the command name
/// may hold anything).
pub(crate) fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = super::denied::fields_after_comm(&text)?.collect();
    // f[0] is field 3 (state); ppid 4, pgrp 5, num_threads 20, starttime 22.
    let state = *f.first()?;
    let threads: i64 = f.get(17)?.parse().ok()?;
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
        dead: state == "Z" && threads <= 1 || state == "X",
    })
}

/// The parent of a process (`None` when it is gone).
pub fn parent_of(pid: Pid) -> Option<Pid> {
    read_stat(pid.0).map(|s| Pid(s.ppid))
}

/// A process of ours known by more than its pid: its start time (`stat`
/// field 22, clock ticks after boot), which a process that later gets the
/// same pid does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnProcess {
    pid: Pid,
    start: u64,
}

impl OwnProcess {
    /// `pid` as it is now (`None` if it is gone). Called for a child of ours
    /// right after it was started: its pid stays its own until we reap it.
    pub(crate) fn of(pid: Pid) -> Option<OwnProcess> {
        Some(OwnProcess {
            pid,
            start: start_of(pid)?,
        })
    }

    /// Its start time.
    #[cfg(test)]
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// A process of this pid that started at `start` (tests: an impostor).
    #[cfg(test)]
    pub(crate) fn started_at(pid: Pid, start: u64) -> OwnProcess {
        OwnProcess { pid, start }
    }

    /// Whether `pid` is this process (still).
    pub(crate) fn is(&self, pid: Pid) -> bool {
        pid == self.pid && start_of(pid) == Some(self.start)
    }
}

fn start_of(pid: Pid) -> Option<u64> {
    read_stat(pid.0).map(|s| s.start)
}

/// Whether `pid` is `ancestor` or one of its descendants.
pub(crate) fn is_descendant_of(pid: Pid, ancestor: Pid) -> bool {
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

/// Direct children of `parent`.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    all_pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| parent_of(p) == Some(parent))
        .collect()
}

/// `root` and its descendants, through each task's `children` file (no walk
/// of all of `/proc`; cheap enough to repeat every few hundred
/// milliseconds); from a full snapshot where the kernel has no such file.
pub(crate) fn tree_of(root: Pid) -> Vec<Pid> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < 65_536 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", out[i].0)) else {
            i += 1;
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(text) = fs::read_to_string(&path) else {
                if i == 0 && !path.exists() {
                    // No CONFIG_PROC_CHILDREN.
                    let mut all = descendants_of(root);
                    all.insert(0, root);
                    return all;
                }
                continue;
            };
            for p in text.split_ascii_whitespace().filter_map(|p| p.parse().ok()) {
                if !out.contains(&Pid(p)) {
                    out.push(Pid(p));
                }
            }
        }
        i += 1;
    }
    out
}

/// All descendants of `root` (children first), from one snapshot of `/proc`.
pub(crate) fn descendants_of(root: Pid) -> Vec<Pid> {
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

fn all_stats() -> HashMap<i32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, read_stat(p)?)))
        .collect()
}

/// The processes to kill: the group `pgid`, the descendants of `tool`, and
/// all their descendants, less `spare` and the tool itself.
fn victims(
    stats: &HashMap<i32, Stat>,
    tool: Option<i32>,
    pgid: Option<i32>,
    spare: &[i32],
) -> Vec<i32> {
    let mut set: HashSet<i32> = stats
        .iter()
        .filter(|(_, s)| Some(s.pgid) == pgid)
        .map(|(p, _)| *p)
        .collect();
    let mut roots: Vec<i32> = set.iter().copied().chain(tool).collect();
    while let Some(r) = roots.pop() {
        for (p, s) in stats {
            if s.ppid == r && set.insert(*p) {
                roots.push(*p);
            }
        }
    }
    set.into_iter()
        .filter(|p| !spare.contains(p) && Some(*p) != tool && stats.get(p).is_some_and(|s| !s.dead))
        .collect()
}

/// The tool's children in a scan, zombies included: a process of the tree
/// that dies hands its children to the tool (a child subreaper) before it
/// shows as a zombie, so a pid new here since the last scan may have been
/// missed by it.
fn children_in(stats: &HashMap<i32, Stat>, tool: Option<i32>) -> HashSet<i32> {
    stats
        .iter()
        .filter(|(_, s)| Some(s.ppid) == tool)
        .map(|(p, _)| *p)
        .collect()
}

/// Whose tree [`kill_tree`] kills.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    /// The tool, a child subreaper: every orphan of the child's tree is
    /// reparented to it (stopped or not) and stays its descendant, whatever
    /// session or group it made. `None` once it is gone.
    pub(crate) tool: Option<i32>,
    /// cosmovisor's process group (cosmovisor's pid).
    pub(crate) pgid: Option<i32>,
    /// Never killed: the fencer, the caller.
    pub(crate) spare: [i32; 2],
    /// Whose file-system ids read the node's `/proc` entries.
    pub(crate) node: NodeIdentity,
}

/// What [`kill_tree`] did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Killed {
    /// Distinct processes SIGKILLed, the group's members included.
    pub(crate) count: u64,
    /// Scans of `/proc` it took.
    pub(crate) scans: u32,
    /// Still alive when the time ran out (empty when it converged).
    pub(crate) left: Vec<i32>,
    /// Processes the kernel would not let us signal, with the error.
    pub(crate) denied: Vec<(i32, rustix::io::Errno)>,
}

/// How long [`kill_tree`] keeps scanning for a tree that keeps forking. A
/// fork chain whose links live longer than a scan (milliseconds) is caught
/// within a few scans; this bounds the pathological one.
const KILL_BUDGET: Duration = Duration::from_secs(2);

/// SIGKILLs `pid` only if it is still the process that started at `start`
/// (through a pidfd, so not a pid reused since the scan).
fn kill_exact(pid: i32, start: u64) -> Result<bool, rustix::io::Errno> {
    let Some(p) = RPid::from_raw(pid) else {
        return Ok(false);
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e),
    };
    if read_stat(pid).map(|s| s.start) != Some(start) {
        return Ok(false);
    }
    match rustix::process::pidfd_send_signal(&fd, Signal::KILL) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// SIGKILLs the child's whole tree (docs/design.md, "Fencing"): every
/// process of cosmovisor's group or descending from the tool, scanned again
/// and again until a scan finds none alive *and* no child of the tool
/// appeared since the scan before (one that did may have been born after
/// that scan's listing of `/proc`, from a process that died before it was
/// read: a `setsid` fork-and-exit chain), or [`KILL_BUDGET`] has passed.
pub(crate) fn kill_tree(t: &Tree) -> Killed {
    let began = Instant::now();
    let mut out = Killed::default();
    let mut killed: HashSet<(i32, u64)> = HashSet::new();
    let mut last_children: Option<HashSet<i32>> = None;
    loop {
        // Root without CAP_SYS_PTRACE sees the node's /proc entries only
        // with the node's file-system ids (ProtectProc=invisible).
        let stats = t.node.as_node(all_stats);
        out.scans += 1;
        let v = victims(&stats, t.tool, t.pgid, &t.spare);
        for &p in &v {
            let Some(st) = stats.get(&p) else { continue };
            match kill_exact(p, st.start) {
                Ok(true) => {
                    killed.insert((p, st.start));
                }
                Ok(false) => {}
                Err(e) => out.denied.push((p, e)),
            }
        }
        if out.scans == 1 {
            // Members born after the listing.
            if let Some(g) = t.pgid.and_then(RPid::from_raw) {
                let _ = rustix::process::kill_process_group(g, Signal::KILL);
            }
        }
        let children = children_in(&stats, t.tool);
        let settled = last_children
            .as_ref()
            .is_some_and(|last| children.is_subset(last));
        if v.is_empty() && settled {
            break;
        }
        if began.elapsed() >= KILL_BUDGET {
            out.left = v;
            break;
        }
        last_children = Some(children);
        std::thread::yield_now();
    }
    out.denied.sort_unstable_by_key(|d| d.0);
    out.denied.dedup_by_key(|d| d.0);
    out.count = killed.len() as u64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_are_the_group_the_tools_descendants_and_theirs() {
        let s = |ppid, pgid, dead| Stat {
            ppid,
            pgid,
            start: 1,
            dead,
        };
        let stats: HashMap<i32, Stat> = [
            (10, s(1, 10, false)),  // the tool
            (11, s(10, 10, false)), // the fencer
            (20, s(10, 20, false)), // cosmovisor, group leader
            (21, s(20, 20, false)), // the node
            (22, s(21, 22, false)), // a child of the node in a group of its own
            (30, s(10, 30, false)), // an orphan reparented to the tool
            (40, s(1, 20, false)),  // in the group, reparented to init
            (41, s(40, 41, false)), // its child
            (50, s(1, 50, false)),  // unrelated
            (23, s(20, 20, true)),  // a dead zombie
        ]
        .into_iter()
        .collect();
        let mut v = victims(&stats, Some(10), Some(20), &[11, 11]);
        v.sort();
        assert_eq!(v, vec![20, 21, 22, 30, 40, 41]);
        let mut c: Vec<i32> = children_in(&stats, Some(10)).into_iter().collect();
        c.sort();
        assert_eq!(c, vec![11, 20, 30]);
        // The tool gone: the group and its descendants still.
        let mut v = victims(&stats, None, Some(20), &[11, 11]);
        v.sort();
        assert_eq!(v, vec![20, 21, 22, 40, 41]);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let me = std::process::id() as i32;
        let st = read_stat(me).expect("own stat");
        assert_eq!(
            st.ppid,
            rustix::process::getppid().unwrap().as_raw_nonzero().get()
        );
        assert!(!st.dead);
    }
}
