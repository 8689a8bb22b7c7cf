//! Processes from outside, through `/proc` (listing and ancestry via the library's own
//! `procfs`, the same code the tool uses), other users, cgroups, and killing what a test
//! left behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use ssm_cosmovisor::procfs::{self, Pid};

use super::{repo_dir, venv_python, wait_for, which, KillOnDrop};

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether the tests run as root; if not, says the test is skipped and why (`why`).
pub fn root_or_skip(why: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("SKIP: {why}");
    }
    root
}

/// Whether the tests run as root with `setpriv` (util-linux) at hand to bound root's
/// capabilities; if not, says the test is skipped.
pub fn root_with_setpriv() -> bool {
    let ok = is_root() && which("setpriv").is_some();
    if !ok {
        eprintln!("SKIP: needs root and setpriv (util-linux) to bound root's capabilities");
    }
    ok
}

/// Every pid in `/proc` now (none if `/proc` cannot be read).
pub fn all_pids() -> Vec<i32> {
    procfs::all_pids()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.0)
        .collect()
}

/// Direct children of `pid` (zombies included).
pub fn children(pid: i32) -> Vec<i32> {
    procfs::children_of(Pid(pid))
        .into_iter()
        .map(|p| p.0)
        .collect()
}

/// Every descendant of `pid` now (zombies included), children first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = children(pid);
    let mut i = 0;
    while i < out.len() {
        let more = children(out[i]);
        out.extend(
            more.into_iter()
                .filter(|c| !out.contains(c))
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    out
}

/// The parent of `pid`, if it still exists.
pub fn parent_of(pid: i32) -> Option<i32> {
    procfs::parent_of(Pid(pid)).map(|p| p.0)
}

/// The file name of `pid`'s executable (empty if unreadable).
pub fn exe_name(pid: i32) -> String {
    procfs::exe_of(Pid(pid))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// `/proc/<pid>/status` as a map (empty if the process is gone).
pub fn status_fields(pid: i32) -> BTreeMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (state, ppid, pgrp, …); the
/// name may hold spaces and parentheses, so split after the last `)`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The one-letter state of `pid` from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, …).
pub fn pid_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    pid_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.first().is_some_and(|s| s != "Z")
                    && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// Whether `pid`'s command line contains `needle`.
pub fn cmdline_contains(pid: i32, needle: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
}

/// Pids of live (non-zombie) processes other than this one whose command line contains
/// `needle`. With a test's temporary directory as the needle this finds exactly the
/// stand-ins that test started, never another test's.
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&pid| pid != me && cmdline_contains(pid, needle) && pid_alive(pid))
        .collect();
    out.sort();
    out
}

/// Waits up to `grace` for every process mentioning `needle` to go away by itself, then
/// SIGKILLs what is left. Returns the pids that had to be killed.
pub fn reap_strays(needle: &Path, grace: Duration) -> Vec<i32> {
    if wait_for(|| pids_mentioning(needle).is_empty(), grace) {
        return Vec::new();
    }
    let mut left = Vec::new();
    // Repeated: a stray that forks (a fork chain, NODE_ESCAPE_CHAIN) shows a new pid
    // after each pass.
    wait_for(
        || {
            let now = pids_mentioning(needle);
            for &p in &now {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if !left.contains(&p) {
                    left.push(p);
                }
            }
            now.is_empty()
        },
        Duration::from_secs(5),
    );
    left
}

/// Kills (SIGKILL, by pid) every process still mentioning its path when dropped, so a
/// failing test leaves no stand-in running.
pub struct StrayReaper(pub PathBuf);

impl Drop for StrayReaper {
    fn drop(&mut self) {
        reap_strays(&self.0, Duration::ZERO);
    }
}

/// Whether process `pid` has an fd open on inode (`dev`, `ino`). Written apart from
/// `procfs::holders` on purpose: it is the oracle the tests check that scan against.
pub fn pid_holds_inode(pid: i32, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.flatten().any(|e| {
        fs::metadata(e.path())
            .map(|m| m.dev() == dev && m.ino() == ino)
            .unwrap_or(false)
    })
}

/// The hidden-reader stand-in (`tests/standins/rogue_reader.py`), run with [`venv_python`].
pub fn rogue_reader_script() -> PathBuf {
    repo_dir().join("tests/standins/rogue_reader.py")
}

/// A Python 3 that every user may run (the virtualenv's may live under a home only its
/// owner can enter): the system's, else the virtualenv's. Standard library only.
pub fn python_for_any_user() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(venv_python)
}

/// The node user of the attack tests (name, uid, gid): `games` where it exists, else
/// `nobody`. Not `nobody` by choice: other test files run their unprivileged tools as
/// `nobody`, and a non-dumpable tool of the node's uid is exactly what the reader check
/// fails closed on, so tests sharing that uid must never overlap (tests of one file run in
/// parallel; other checkouts on the same machine may run theirs at the same time).
pub fn attack_user() -> (String, u32, u32) {
    for name in ["games", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return (u.name, u.uid.as_raw(), u.gid.as_raw());
        }
    }
    panic!("neither a games nor a nobody user exists");
}

/// The node user of a long-running test (name, uid, gid): `irc` where it exists, else
/// `nobody`. As for [`attack_user`], not `nobody` by choice: for the tens of seconds it runs,
/// every non-dumpable tool of its node's uid that another test (of this checkout or another)
/// starts fails its deliveries closed, as it must; no other test runs as `irc`.
pub fn long_test_user() -> (String, u32, u32) {
    for name in ["irc", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return (u.name, u.uid.as_raw(), u.gid.as_raw());
        }
    }
    panic!("neither an irc nor a nobody user exists");
}

/// uid and gid of `nobody`, the node user of the tests that need one.
pub fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody")
        .expect("user database")
        .expect("a nobody user");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `chown -R uid:gid path`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R {uid}:{gid} {}", path.display());
}

/// `cmd` (its program, arguments and environment) run as `uid:gid` with no supplementary
/// groups, after joining cgroup `cg` if given: `sh` (still root) writes its pid to the
/// cgroup's `cgroup.procs`, then execs `setpriv`, which execs the program. The process
/// keeps the pid, and its parent (the test) stays outside the cgroup, as systemd is for a
/// unit's main process.
pub fn as_user_in_cgroup(cmd: &Command, cg: Option<&Path>, uid: u32, gid: u32) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(
        "if [ -n \"$0\" ]; then echo $$ > \"$0/cgroup.procs\" || exit 97; fi\n\
         u=$1 g=$2 p=$3; shift 3\n\
         exec setpriv --reuid=\"$u\" --regid=\"$g\" --clear-groups -- \"$p\" \"$@\"",
    );
    c.arg(cg.map(|p| p.as_os_str().to_owned()).unwrap_or_default());
    c.arg(uid.to_string()).arg(gid.to_string());
    run_after(c, cmd)
}

/// `cmd` (its program, arguments and environment) run by root bounded as the split unit
/// bounds it: only CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL in the bounding set,
/// nothing inheritable (`setpriv` execs the program, which keeps the pid).
pub fn as_split_unit_root(cmd: &Command) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--bounding-set=-all,+setuid,+setgid,+chown,+kill",
        "--inh-caps=-all",
        "--",
    ]);
    run_after(c, cmd)
}

/// `c` followed by `cmd`'s program and arguments, with `cmd`'s environment only and no
/// stdin: how the wrappers above (`setpriv`, a shell) run the command they bound.
fn run_after(mut c: Command, cmd: &Command) -> Command {
    c.arg(cmd.get_program());
    c.args(cmd.get_args());
    c.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Where the cgroup v2 hierarchy is mounted with its root at ours, if anywhere.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let s = fs::read_to_string("/proc/self/mountinfo").ok()?;
    s.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut f = pre.split_ascii_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (post.split_ascii_whitespace().next()? == "cgroup2" && root == "/")
            .then(|| PathBuf::from(point))
    })
}

/// A slice of cgroups made by the test (root-owned, as systemd's are), removed on drop
/// once the processes in it are gone.
pub struct TestSlice {
    pub dir: PathBuf,
}

impl TestSlice {
    /// `<cgroup2>/ssmcv-<pid>-<n>.slice`; `None` (with the reason printed) where cgroup v2
    /// is not mounted or not writable.
    pub fn new() -> Option<TestSlice> {
        static N: AtomicU64 = AtomicU64::new(0);
        let Some(mount) = cgroup2_mount() else {
            eprintln!("SKIP: no cgroup v2 hierarchy mounted");
            return None;
        };
        let dir = mount.join(format!(
            "ssmcv-{}-{}.slice",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        if let Err(e) = fs::create_dir(&dir) {
            eprintln!(
                "SKIP: cannot create a cgroup under {}: {e}",
                mount.display()
            );
            return None;
        }
        Some(TestSlice { dir })
    }

    /// A child cgroup, e.g. `ssm-cosmovisor@a.service`.
    pub fn unit(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }
}

impl Drop for TestSlice {
    fn drop(&mut self) {
        // cgroups can only be removed empty; their processes are killed by their tests.
        for _ in 0..200 {
            let mut left = false;
            if let Ok(rd) = fs::read_dir(&self.dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) && fs::remove_dir(e.path()).is_err()
                    {
                        left = true;
                    }
                }
            }
            if !left && fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(25));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

/// Starts `cat <path>` (a process outside our child's tree) with its output captured.
pub fn spawn_stranger(path: &Path) -> KillOnDrop {
    let mut c = Command::new("cat");
    c.arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    KillOnDrop::spawn(&mut c)
}

/// Waits for the stranger to finish and returns how many bytes it read.
pub fn stranger_bytes(s: &mut KillOnDrop) -> usize {
    let st = s
        .wait_timeout(Duration::from_secs(15))
        .expect("stranger still blocked");
    assert!(st.success(), "cat: {st}");
    let mut out = Vec::new();
    s.0.stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .unwrap();
    // Never print what it read: it could be the key.
    out.len()
}

/// Two CPU-bound processes competing for the 2 cores; killed when dropped.
pub fn cpu_hogs() -> Vec<KillOnDrop> {
    (0..2)
        .map(|_| {
            KillOnDrop::spawn(
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(std::process::Stdio::null()),
            )
        })
        .collect()
}

/// How many sockets `pid` has open (its `/proc/<pid>/fd` links to `socket:[…]`).
pub fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}
