//! Reading `/proc`: who holds an inode open, process ancestry, credentials.
//! Used to verify the FIFO's reader before the key is written.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::identity::NodeIdentity;

mod denied;
pub(crate) mod tree;
mod view;
use denied::{TaskState, Verdict};
pub use tree::{children_of, parent_of, OwnProcess};
pub(crate) use tree::{is_descendant_of, tree_of};
pub(crate) use view::verify_sees_all;
pub use view::HiddenError;

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(pub i32);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A process holding the FIFO open, and the task (thread) through whose
/// fd table it does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PipeHolder {
    /// Its pid (thread group).
    pub(crate) pid: Pid,
    /// The task whose fd table holds the FIFO (the pid itself, or a thread).
    pub(crate) tid: Pid,
    /// That task's real, effective, saved and filesystem uids.
    pub(crate) uids: [u32; 4],
    /// `/proc/<pid>/exe`, if readable.
    pub(crate) exe: Option<PathBuf>,
}

impl PipeHolder {
    /// Effective uid.
    pub(crate) fn euid(&self) -> u32 {
        self.uids[1]
    }
}

/// A task of the node's uid whose fd table we cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uninspectable {
    /// Its pid (thread group).
    pub(crate) pid: Pid,
    pub(crate) tid: Pid,
    /// Its name (`/proc/<pid>/comm`), for the operator.
    pub(crate) comm: String,
    /// Recognised as another instance of our own systemd unit (see
    /// `SiblingView`): skipped by the reader check.
    pub(crate) sibling: bool,
}

/// A `/proc` scan could not be completed; the caller must fail closed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A task that could hold the FIFO has an unreadable fd table.
    #[error("cannot inspect /proc/{pid}/task/{tid}/fd of {comm:?} ({source}): a process of the node's uid {uid} whose fd table cannot be read could hold the key FIFO, so the reader cannot be verified. Stop it, or give this node a dedicated uid (`ssm-cosmovisor check` lists every such process)")]
    Unreadable {
        /// The process.
        pid: Pid,
        /// The task.
        tid: Pid,
        /// Its name.
        comm: String,
        /// Its uid.
        uid: u32,
        /// Cause.
        source: io::Error,
    },
    /// `/proc` itself is unusable.
    #[error("cannot read /proc: {0}")]
    Proc(#[source] io::Error),
}

/// The processes of ours a scan leaves out: ourselves, and our fencer. The
/// fencer runs with the node's uid in the unprivileged mode and is not
/// dumpable, so its fd table is closed to us; were it scanned, every
/// delivery under a lease would fail closed on it (measured before this:
/// exit 5 at every start, a restart loop, without `ProtectProc=invisible`,
/// which used to hide it). It cannot hold the FIFO: it is started from our
/// own binary before the FIFO exists, with only its two pipes and stderr,
/// and it opens nothing. Known by its start time, so a process that gets
/// its pid after it died is scanned like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ours {
    pub(crate) me: Pid,
    pub(crate) fencer: Option<OwnProcess>,
}

impl Ours {
    /// Ourselves alone.
    pub fn me() -> Ours {
        Ours {
            me: Pid(std::process::id() as i32),
            fencer: None,
        }
    }

    fn excludes(&self, pid: Pid) -> bool {
        pid == self.me || self.fencer.is_some_and(|f| f.is(pid))
    }
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
    uids_from_status(&read_proc_text(&format!("/proc/{}/status", pid.0))?)
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

/// The argument vector of a process (`/proc/<pid>/cmdline`); empty for a
/// zombie or a kernel thread, `None` when it is gone or hidden.
pub(crate) fn cmdline_of(pid: Pid) -> Option<Vec<std::ffi::OsString>> {
    let b = fs::read(format!("/proc/{}/cmdline", pid.0)).ok()?;
    Some(
        b.split(|&c| c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsStr::from_bytes(a).to_os_string())
            .collect(),
    )
}

/// How many of a large fd table's newest fds [`scan_fd_dir`] looks at first.
const TAIL_FDS: i64 = 32;

/// The fd numbers in a `/proc/.../fd` directory from its position on,
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

/// `stat` of what fd `n` of the fd directory `fd_dir` refers to.
fn stat_fd(fd_dir: &OwnedFd, n: u32) -> rustix::io::Result<rustix::fs::Stat> {
    rustix::fs::statat(fd_dir, n.to_string().as_str(), AtFlags::empty())
}

/// Whether the fd table behind directory `path` (`/proc/<pid>/task/<tid>/fd`)
/// has an fd on inode (`dev`, `ino`). `Ok(None)` if the task vanished.
fn scan_fd_dir(path: &str, dev: u64, ino: u64) -> Result<Option<bool>, rustix::io::Errno> {
    let fd_dir = match rustix::fs::open(
        path,
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
    // size of an fd directory is the number of open fds (0 before: no tail).
    let open_fds = rustix::fs::fstat(&fd_dir).map(|st| st.st_size).unwrap_or(0);
    if open_fds > 2 * TAIL_FDS {
        if let Ok(mut tail) = rustix::fs::Dir::read_from(&fd_dir) {
            // The directory position of fd N is N + 2.
            if tail.seek(2 + open_fds - TAIL_FDS).is_ok() {
                for n in fd_numbers(&mut tail) {
                    match stat_fd(&fd_dir, n) {
                        Ok(st) if st.st_dev == dev && st.st_ino == ino => return Ok(Some(true)),
                        // As below: the whole table would be denied the same way.
                        Err(e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)) => {
                            return Err(e)
                        }
                        _ => {}
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

/// The task ids of a process (`/proc/<pid>/task`), or `None` if it is gone;
/// the thread-group leader first, then by tid. Listing this directory needs
/// no access to the process.
///
/// The leader first, because the first task found holding the inode names
/// the holder, and the delivery writes only after two scans name the same
/// holders: a thread picked by tid order alone changes from scan to scan in
/// a process whose threads come and go once tids have wrapped past its pid
/// (a thread then sorts before its leader), and the delivery was refused
/// ("the set of readers kept changing"). The leader stays for the life of
/// the process.
///
/// Most processes have one task; the link count of `/proc/<pid>/task` is
/// 2 + the number of tasks listed in it (a zombie leader stays listed, and
/// counted, as long as any thread of its group lives), so a count of 3
/// means the leader alone and spares the listing (one `statx` instead of
/// open, two `getdents` and close, for every process of every scan).
fn tasks_of(pid: Pid) -> Option<Vec<Pid>> {
    let path = format!("/proc/{}/task", pid.0);
    if rustix::fs::stat(path.as_str()).ok()?.st_nlink == 3 {
        return Some(vec![pid]);
    }
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut dir = rustix::fs::Dir::new(fd).ok()?;
    let mut out = Vec::new();
    while let Some(Ok(ent)) = dir.read() {
        if let Some(t) = parse_pid(OsStr::from_bytes(ent.file_name().to_bytes())) {
            out.push(t);
        }
    }
    out.sort_by_key(|&t| (t != pid, t));
    Some(out)
}

/// Whether a task has exited or is exiting ([`denied`]): a zombie (`Z`) or
/// dead (`X`) task has already released its fd table (`exit_files` runs
/// before the exit state is set), and one in `do_exit` never runs user code
/// again. Only ever asked of one task, never of a whole process: a zombie
/// thread-group leader with live threads is a process whose `/proc/<pid>/fd`
/// is empty while its threads hold fds. Its `stat` is readable whatever our
/// access to the task.
fn task_state(pid: Pid, tid: Pid) -> TaskState {
    denied::state_from_stat(task_stat(pid, tid).as_deref())
}

/// One task's `stat` text; readable whatever our access to the task.
fn task_stat(pid: Pid, tid: Pid) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{}/task/{}/stat", pid.0, tid.0)).ok()
}

/// Whether a task is stopped: by a stop signal (`T`, a group stop: every
/// thread of the process) or under a tracer (`t`). `false` for a task that
/// is gone. A reader stopped while the key sits in its pipe lets whoever
/// stopped it open the pipe through `/proc/<pid>/fd` and copy the key
/// before it runs again (`tee(2)` leaves the bytes for the node).
pub(crate) fn task_is_stopped(pid: Pid, tid: Pid) -> bool {
    task_stat(pid, tid)
        .as_deref()
        .and_then(denied::fields_after_comm)
        .and_then(|mut f| f.next())
        .is_some_and(|state| matches!(state, "T" | "t"))
}

/// The uids of one task (`/proc/<pid>/task/<tid>/status`: credentials are
/// per thread).
fn task_uids(pid: Pid, tid: Pid) -> Option<[u32; 4]> {
    uids_from_status(&read_proc_text(&format!(
        "/proc/{}/task/{}/status",
        pid.0, tid.0
    ))?)
}

fn uids_from_status(s: &str) -> Option<[u32; 4]> {
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let mut v = line[4..]
        .split_ascii_whitespace()
        .map(|x| x.parse::<u32>().ok());
    Some([v.next()??, v.next()??, v.next()??, v.next()??])
}

/// `/proc/<pid>/comm`, for messages.
pub fn comm_of(pid: Pid) -> String {
    read_proc_text(&format!("/proc/{}/comm", pid.0))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// What one task's fd table told us.
enum TaskScan {
    /// It holds the inode; the task's uids.
    Holds([u32; 4]),
    /// It does not.
    Clear,
    /// Exited, or of no concern: holds nothing that matters.
    Skip,
    /// Of no concern, and neither are the process's other tasks (root for
    /// a root node, denied by a process more privileged than itself).
    SkipProcess,
    /// A task of the node's uid whose fd table we may not read.
    Denied(rustix::io::Errno),
}

/// Everything a scan decides once, not per process.
struct Scan {
    dev: u64,
    ino: u64,
    node: NodeIdentity,
    am_root: bool,
    any_template: bool,
    /// Built at the first uninspectable task (it reads mountinfo and our
    /// cgroup): most scans never need it.
    siblings: std::cell::OnceCell<SiblingView>,
}

impl Scan {
    fn new(dev: u64, ino: u64, node: NodeIdentity, any_template: bool) -> Scan {
        Scan {
            dev,
            ino,
            node,
            am_root: rustix::process::geteuid().is_root(),
            any_template,
            siblings: std::cell::OnceCell::new(),
        }
    }

    /// Only processes running with the node's uid can open the FIFO (mode
    /// 0600, owned by the node) without privileges, and root is outside
    /// the trust boundary: a task of another uid, or running as root, is of
    /// no concern when we cannot read it.
    fn concerns(&self, uids: &[u32; 4]) -> bool {
        uids.contains(&self.node.uid()) && uids[1] != 0
    }

    fn task(&self, pid: Pid, tid: Pid) -> TaskScan {
        // The leader's table by its shorter name (the same directory; fewer lookups).
        let path = if tid == pid {
            format!("/proc/{}/fd", pid.0)
        } else {
            format!("/proc/{}/task/{}/fd", pid.0, tid.0)
        };
        let mut res = scan_fd_dir(&path, self.dev, self.ino);
        let uids = match res {
            Ok(None) => return TaskScan::Skip,
            Ok(Some(false)) => return TaskScan::Clear,
            // A process that root cannot inspect holds privileges we lack
            // (e.g. a VM's init with capabilities outside our bounding set).
            // When the node itself runs as root, such a process can read the
            // node's memory anyway: failing closed on it protects nothing and
            // would make delivery impossible wherever one exists. Its other
            // threads need no look either: whatever can open a root node's
            // 0600 FIFO is root, outside the boundary.
            Err(_) if self.am_root && self.node.uid() == 0 => return TaskScan::SkipProcess,
            _ => match task_uids(pid, tid) {
                Some(u) => u,
                None => return TaskScan::Skip,
            },
        };
        // Split trust (root without CAP_SYS_PTRACE): the node's own entries
        // open to the node's fs ids, on this thread only.
        if res.is_err() && self.node.switches() && self.concerns(&uids) {
            res = match self.node.as_node(|| scan_fd_dir(&path, self.dev, self.ino)) {
                // Absent to the node's ids though root was refused it, not
                // told it is gone: `hidepid=` hides it from the node
                // (`view.rs`). Kept as root's refusal: `denied_task` reads
                // its state as root and tells an exit from a hidden task.
                Ok(None) => res,
                seen => seen,
            };
        }
        match res {
            Ok(Some(true)) => TaskScan::Holds(uids),
            Ok(Some(false)) => TaskScan::Clear,
            Ok(None) => TaskScan::Skip,
            // Per task, not per process: another thread may hold other ids
            // (one that kept the node's as its effective uid, say).
            Err(_) if !self.concerns(&uids) => TaskScan::Skip,
            // Whether it exited, is exiting or stays closed: `denied_task`.
            Err(e) => TaskScan::Denied(e),
        }
    }

    /// A task of the node's uid whose fd table was denied to us (`e`):
    /// skipped if it exited or is exiting, looked at again a bounded number
    /// of times while it lives, and denied for good after that (the rule and
    /// why: [`denied`]). Checked after the failure: a task that died
    /// meanwhile holds nothing now. Another instance of our unit is skipped
    /// anyway (`sibling`): it is not read again, which would only slow
    /// every scan down.
    fn denied_task(&self, pid: Pid, tid: Pid, mut e: rustix::io::Errno, sibling: bool) -> TaskScan {
        let mut rereads = if sibling { denied::REREADS } else { 0 };
        loop {
            match denied::classify(task_state(pid, tid), rereads) {
                Verdict::Skip(why) => {
                    tracing::debug!(
                        event = "denied_task_skipped",
                        pid = pid.0,
                        tid = tid.0,
                        why = why.as_str(),
                        rereads,
                        "a task whose fd table was denied to us has exited or is exiting"
                    );
                    return TaskScan::Skip;
                }
                Verdict::Uninspectable => return TaskScan::Denied(e),
                Verdict::ReadAgain(pause) => {
                    std::thread::sleep(pause);
                    rereads += 1;
                    match self.task(pid, tid) {
                        TaskScan::Denied(again) => e = again,
                        read => return read,
                    }
                }
            }
        }
    }

    /// Scans every task of `pid`, skipping a task that shares the fd table
    /// of one already scanned (kcmp; when the kernel will not say, both are
    /// scanned). The first task holding the inode decides for the process.
    fn process(
        &self,
        pid: Pid,
        denied: &mut dyn FnMut(Uninspectable, rustix::io::Errno, u32) -> Result<(), ProcError>,
    ) -> Result<Option<PipeHolder>, ProcError> {
        let Some(tasks) = tasks_of(pid) else {
            return Ok(None);
        };
        let mut scanned: Vec<Pid> = Vec::new();
        // Asked once per process, at its first uninspectable task.
        let mut sibling: Option<bool> = None;
        for tid in tasks {
            if scanned
                .iter()
                .any(|s| crate::sys::same_fd_table(s.0, tid.0) == Some(true))
            {
                continue;
            }
            let mut scan = self.task(pid, tid);
            if let TaskScan::Denied(e) = scan {
                let sibling = *sibling.get_or_insert_with(|| {
                    self.siblings
                        .get_or_init(|| SiblingView::of_self(self.any_template))
                        .is_sibling(pid)
                });
                scan = self.denied_task(pid, tid, e, sibling);
            }
            match scan {
                TaskScan::Holds(uids) => {
                    let exe = exe_of(pid).or_else(|| {
                        (self.node.switches() && self.concerns(&uids))
                            .then(|| self.node.as_node(|| exe_of(pid)))
                            .flatten()
                    });
                    return Ok(Some(PipeHolder {
                        pid,
                        tid,
                        uids,
                        exe,
                    }));
                }
                TaskScan::Clear => scanned.push(tid),
                TaskScan::Skip => {}
                TaskScan::SkipProcess => return Ok(None),
                TaskScan::Denied(e) => {
                    let u = Uninspectable {
                        pid,
                        tid,
                        comm: comm_of(pid),
                        // Asked above, at the denial.
                        sibling: sibling == Some(true),
                    };
                    denied(u, e, self.node.uid())?;
                }
            }
        }
        Ok(None)
    }

    /// Walks every process but ours; `denied` decides what an
    /// uninspectable task of the node's uid means.
    fn walk(
        &self,
        ours: &Ours,
        denied: &mut dyn FnMut(Uninspectable, rustix::io::Errno, u32) -> Result<(), ProcError>,
    ) -> Result<Vec<PipeHolder>, ProcError> {
        let mut found = Vec::new();
        for pid in all_pids()? {
            if ours.excludes(pid) {
                continue;
            }
            if let Some(h) = self.process(pid, denied)? {
                found.push(h);
            }
        }
        found.sort();
        Ok(found)
    }
}

/// Finds every process (other than ours) that holds an fd to inode
/// (`dev`, `ino`) in the fd table of any of its tasks.
///
/// Every task's own table is read (`/proc/<pid>/task/<tid>/fd`): a thread
/// may have unshared its fd table (`unshare(CLONE_FILES)`), and a process
/// whose leader exited has an empty `/proc/<pid>/fd` while its threads
/// live on. A task whose table we cannot read fails the scan closed if it
/// runs with the node's uid (not as root), is alive and not exiting (read
/// again a few times first: `procfs/denied.rs`), and is not another
/// instance of our own unit (`SiblingView`). When we are root without
/// `CAP_SYS_PTRACE` (split-trust unit), node tasks are inspected with the
/// node's filesystem ids instead (see [`NodeIdentity::as_node`]).
pub fn holders(
    dev: u64,
    ino: u64,
    ours: &Ours,
    node: NodeIdentity,
) -> Result<Vec<PipeHolder>, ProcError> {
    let scan = Scan::new(dev, ino, node, false);
    scan.walk(ours, &mut |u, e, uid| {
        if u.sibling {
            return Ok(());
        }
        Err(ProcError::Unreadable {
            pid: u.pid,
            tid: u.tid,
            comm: u.comm,
            uid,
            source: e.into(),
        })
    })
}

/// Every task of the node's uid (other than `exclude`'s) whose fd table
/// cannot be read, siblings included (marked): what would fail a
/// delivery closed, for `check`. Run outside a unit (from a shell), an
/// instance of any template unit counts as a sibling, as the instances of
/// that template would see each other.
pub(crate) fn uninspectable(
    exclude: Pid,
    node: NodeIdentity,
) -> Result<Vec<Uninspectable>, ProcError> {
    // An inode no fd can refer to: only inspectability is asked.
    let scan = Scan::new(u64::MAX, u64::MAX, node, true);
    let mut out = Vec::new();
    let ours = Ours {
        me: exclude,
        fencer: None,
    };
    scan.walk(&ours, &mut |u, _, _| {
        if !out.iter().any(|o: &Uninspectable| o.pid == u.pid) {
            out.push(u);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Recognises another instance of our own systemd unit, whose fd table we
/// cannot read because it is not dumpable (as we are not): the main process
/// of a sibling cgroup of ours instantiated from the same template unit.
///
/// Nothing here can be claimed by a process of the node's uid: cgroup
/// membership is set by root (systemd) and a process can only be moved into
/// a cgroup by whoever may write its `cgroup.procs`, which for a system
/// service is root alone (checked); and within its cgroup only the process
/// systemd started has its parent outside it (the instance is the subreaper
/// of everything it starts). Its executable is the one its unit names, the
/// same template as ours. The name and the absence of a tracer are checked
/// as well. Outside such a unit (no systemd, or a unit that is not a
/// template instance) no sibling is recognised and nothing is skipped.
struct SiblingView {
    /// The cgroup2 mount point and our cgroup path.
    mount: Option<(PathBuf, String)>,
    /// Our unit's template prefix (`ssm-cosmovisor@`) when we run in an
    /// instance of one; `None` otherwise.
    template: Option<String>,
    /// Outside a template unit, accept an instance of any template (for
    /// `check`, run from a shell, predicting what the units will see).
    any_template: bool,
    /// Our own `comm`.
    comm: String,
}

impl SiblingView {
    fn of_self(any_template: bool) -> SiblingView {
        let mount = cgroup_of("self").and_then(|cg| Some((cgroup2_mount()?, cg)));
        let template = mount
            .as_ref()
            .and_then(|(_, cg)| unit_template(cg))
            .map(str::to_string);
        SiblingView {
            mount,
            template,
            any_template,
            comm: read_proc_text("/proc/self/comm")
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default(),
        }
    }

    /// Whether `pid` is the main process of another instance of our unit
    /// (or, for `check` outside any unit, of some template unit).
    fn is_sibling(&self, pid: Pid) -> bool {
        let Some((mount, ours)) = &self.mount else {
            return false;
        };
        let Some(theirs) = cgroup_of(&pid.0.to_string()) else {
            return false;
        };
        let slice_of = |c: &str| c.rsplit_once('/').map(|(a, _)| a.to_string());
        let same_unit_kind = match (&self.template, unit_template(&theirs)) {
            (Some(t), Some(u)) => t == u && slice_of(&theirs) == slice_of(ours),
            (None, Some(_)) => self.any_template,
            (_, None) => false,
        };
        theirs != *ours
            && same_unit_kind
            && cgroup_closed_to_users(mount, &theirs)
            && parent_of(pid)
                .and_then(|pp| cgroup_of(&pp.0.to_string()))
                .is_some_and(|pc| pc != theirs)
            && comm_of(pid) == self.comm
            && untraced(pid)
    }
}

/// The cgroup v2 path of a process (`0::/path` in `/proc/<pid>/cgroup`).
fn cgroup_of(pid: &str) -> Option<String> {
    let s = read_proc_text(&format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .filter(|c| c.starts_with('/'))
}

/// `ssm-cosmovisor@` for `/system.slice/system-x.slice/ssm-cosmovisor@a.service`;
/// `None` for anything but an instance of a template service.
fn unit_template(cgroup: &str) -> Option<&str> {
    let unit = cgroup.rsplit('/').next()?;
    let stem = unit.strip_suffix(".service")?;
    let at = stem.find('@')?;
    (at > 0 && at + 1 < stem.len()).then(|| &unit[..=at])
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host), with its root at ours.
fn cgroup2_mount() -> Option<PathBuf> {
    let s = read_proc_text_large("/proc/self/mountinfo")?;
    s.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_ascii_whitespace().next()?;
        let mut f = pre.split_ascii_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(point))
    })
}

/// Whether no user but root can move a process into cgroup `cg`: the
/// directory and its `cgroup.procs` belong to root and nobody else may
/// write them (nor the parent, where a cgroup of that name could be made).
fn cgroup_closed_to_users(mount: &std::path::Path, cg: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = mount.join(cg.trim_start_matches('/'));
    let root_only = |p: &std::path::Path| {
        fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
    };
    root_only(&dir) && root_only(&dir.join("cgroup.procs")) && dir.parent().is_some_and(root_only)
}

/// Whether no task of `pid` is being traced (`TracerPid: 0`).
fn untraced(pid: Pid) -> bool {
    let Some(tasks) = tasks_of(pid) else {
        return false;
    };
    tasks.iter().all(|t| {
        read_proc_text(&format!("/proc/{}/task/{}/status", pid.0, t.0)).is_some_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() == "0")
        })
    })
}

/// As [`read_proc_text`] for files that may exceed 4 KiB.
fn read_proc_text_large(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
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
            let ours = Ours {
                me: other,
                fencer: None,
            };
            let found = holders(m.dev(), m.ino(), &ours, NodeIdentity::ours()).unwrap();
            let me = Pid(std::process::id() as i32);
            assert_eq!(
                found.iter().map(|h| h.pid).collect::<Vec<_>>(),
                vec![me],
                "at_top={at_top}"
            );
            drop((low, filler, high));
        }
    }

    /// A child (`sh` become `sleep 5`) holding a temporary file open as fd 7;
    /// the directory, the file's metadata, the child.
    fn child_holding_a_file() -> (tempfile::TempDir, std::fs::Metadata, std::process::Child) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("held");
        std::fs::write(&f, b"x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 7<\"$1\"; exec sleep 5")
            .arg("sh")
            .arg(&f)
            .spawn()
            .unwrap();
        (d, m, child)
    }

    /// The fencer is left out by pid and start time; a process that only
    /// has its pid is not.
    #[test]
    fn our_fencer_is_left_out_and_only_it() {
        use std::os::unix::fs::MetadataExt;
        let (_d, m, mut child) = child_holding_a_file();
        let pid = Pid(child.id() as i32);
        let scan = |fencer| {
            let ours = Ours {
                me: Pid(std::process::id() as i32),
                fencer,
            };
            holders(m.dev(), m.ino(), &ours, NodeIdentity::ours()).unwrap()
        };
        let holds = || {
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                scan(None).iter().any(|h| h.pid == pid)
            })
        };
        assert!(holds(), "the child never opened the file");
        let fencer = OwnProcess::of(pid).unwrap();
        let found = scan(Some(fencer));
        let other_start = OwnProcess::started_at(pid, fencer.start() + 1);
        let impostor = scan(Some(other_start));
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().all(|h| h.pid != pid), "{found:?}");
        assert!(impostor.iter().any(|h| h.pid == pid), "{impostor:?}");
    }

    #[test]
    fn finds_holders_of_an_inode_in_a_child() {
        use std::os::unix::fs::MetadataExt;
        let (_d, m, mut child) = child_holding_a_file();
        let me = Pid(std::process::id() as i32);
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = holders(m.dev(), m.ino(), &Ours::me(), NodeIdentity::new(0, 0)).unwrap();
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

    #[test]
    fn unit_templates_and_cgroup_paths() {
        assert_eq!(
            unit_template(
                "/system.slice/system-ssm\\x2dcosmovisor.slice/ssm-cosmovisor@gaiad.service"
            ),
            Some("ssm-cosmovisor@")
        );
        assert_eq!(
            unit_template("/system.slice/ssm-cosmovisor-split@a.service"),
            Some("ssm-cosmovisor-split@")
        );
        for not in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/x@.service",
            "/a/@b.service",
            "/a/x@b.scope",
        ] {
            assert_eq!(unit_template(not), None, "{not}");
        }
        assert!(cgroup_of("self").is_some_and(|c| c.starts_with('/')));
    }

    /// An exited, unreaped child is a dead task (its fd table is gone);
    /// a live one is not; one reaped is gone.
    #[test]
    fn a_zombie_task_is_dead_a_live_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid(child.id() as i32);
        assert_eq!(task_state(pid, pid), TaskState::Live);
        child.kill().unwrap();
        // Not reaped yet: a zombie.
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            task_state(pid, pid) == TaskState::Dead
        });
        child.wait().unwrap();
        assert!(zombie, "the killed child never showed as dead");
        assert_eq!(task_state(pid, pid), TaskState::Gone);
    }

    /// Our own threads share one fd table, and the kernel says so.
    #[test]
    fn threads_sharing_the_fd_table_are_recognised() {
        let me = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let same = crate::sys::same_fd_table(me, tid);
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        // None only where the kernel has no kcmp; never "different".
        assert_ne!(same, Some(false));
    }
}
