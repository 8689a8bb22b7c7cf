//! Sandbox probe for the real-systemd test (cargo example `sandbox-probe`): run inside a unit,
//! it reports what that unit's sandbox lets a process do, as one JSON line on stdout
//! (`sandbox-probe: {...}`, so it lands in the journal) and, if `PROBE_REPORT` is set, appended
//! to that file. It does not use the `ssm_cosmovisor` library.
//!
//! Modes:
//! - `sandbox-probe writes DIR...` (an `ExecStartPre=` of the unit, so it runs in exactly
//!   ssm-cosmovisor's context: same user, capabilities, syscall filter, mount namespace):
//!   tries to create a file in each DIR, lists the writable mounts it sees and the processes
//!   `/proc` shows it, and its own `/proc/self/status` lines. Exits 0.
//! - `sandbox-probe run ...` (as `COSMOVISOR_BIN`, so ssm-cosmovisor starts it as its child,
//!   hardened exactly as cosmovisor would be): the same, with the directories from
//!   `PROBE_WRITE_DIRS` (colon-separated), plus system calls that must fail (`ptrace`,
//!   `process_vm_readv`, `setuid`, `chown`, `unshare`) and ones that must work
//!   (`memfd_secret`, `mlock`). Each call is made so that it would succeed without the
//!   sandbox; the result is `ok` or the errno's name. Then waits for SIGTERM, like a node.
//! - `PROBE_MODE=slow-reader sandbox-probe run ...`: opens `PROBE_KEY_FILE` (the key FIFO) as
//!   a node would, writes `<pid> <fd>` to `PROBE_PIDFILE`, waits `PROBE_READ_DELAY_MS`
//!   (default 3000) before reading it to the end, writes the byte count to
//!   `PROBE_PIDFILE.read`, then waits for SIGTERM. For the exposure alarm: a stranger joins
//!   the pipe while it waits.
//!
//! The file created to test a directory is removed at once, except in /tmp, /var/tmp,
//! /dev/shm and /dev/mqueue, which get a marker `ssmcv-probe-marker`: the test checks that it is not visible
//! outside the unit (those directories are the unit's private ones).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use serde_json::{json, Value};

const MARKER: &str = "ssmcv-probe-marker";
/// Where a marker is left (see the module doc).
const PRIVATE: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = std::env::var("PROBE_MODE").unwrap_or_default();
    let report = match (args.first().map(String::as_str), mode.as_str()) {
        (Some("writes"), _) => context_report(&args[1..]),
        (Some("run"), "slow-reader") => slow_reader(),
        (Some("run"), _) => {
            let dirs: Vec<String> = std::env::var("PROBE_WRITE_DIRS")
                .unwrap_or_default()
                .split(':')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
            let mut r = context_report(&dirs);
            r["syscalls"] = syscalls();
            emit(&r);
            // Like a node: run until stopped (SIGTERM's default action ends us), so the unit
            // is active and its processes can be looked at from outside.
            wait_forever()
        }
        _ => {
            eprintln!("usage: sandbox-probe writes DIR... | sandbox-probe run ...");
            std::process::exit(2);
        }
    };
    emit(&report);
}

fn emit(report: &Value) {
    let line = format!("sandbox-probe: {report}\n");
    let _ = std::io::stdout().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("PROBE_REPORT") {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open PROBE_REPORT {path:?}: {e}"));
        f.write_all(line.trim_start_matches("sandbox-probe: ").as_bytes())
            .expect("write PROBE_REPORT");
    }
}

fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

fn outcome<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e),
    }
}

/// What a process in this context can write and see.
fn context_report(dirs: &[String]) -> Value {
    let mut writes = BTreeMap::new();
    for d in dirs {
        writes.insert(d.clone(), try_write(Path::new(d)));
    }
    json!({
        "pid": std::process::id(),
        "uid": nix::unistd::getuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "status": status_lines(),
        "writes": writes,
        "rw_mounts": rw_mounts(),
        "visible": visible_processes(),
    })
}

/// Creates a file in `dir`; `ok` (a marker is left there) or the errno.
fn try_write(dir: &Path) -> String {
    let probe = dir.join(format!("ssmcv-probe-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            if PRIVATE.iter().any(|p| Path::new(p) == dir) {
                let _ = fs::write(dir.join(MARKER), b"written by sandbox-probe\n");
            }
            "ok".into()
        }
        Err(e) => e
            .raw_os_error()
            .map(|n| errno_name(Errno::from_raw(n)))
            .unwrap_or_else(|| e.to_string()),
    }
}

fn status_lines() -> BTreeMap<String, String> {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            k.starts_with("Cap") || ["NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups"].contains(k)
        })
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Mount points whose per-mount options are read-write (`/proc/self/mountinfo` field 6),
/// with their file-system type.
fn rw_mounts() -> BTreeMap<String, String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let (point, opts) = (f.get(4)?, f.get(5)?);
            let fstype = post.split(' ').next()?;
            opts.split(',')
                .any(|o| o == "rw")
                .then(|| (unescape(point), fstype.to_owned()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `pid: comm` of every process `/proc` lists.
fn visible_processes() -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|e| format!("<{e}>"));
        out.insert(pid, comm);
    }
    out
}

/// Each call is one that would succeed in an unconfined process of this uid.
fn syscalls() -> Value {
    let me = nix::unistd::getuid();
    let mut r = BTreeMap::new();
    r.insert("ptrace", ptrace_own_child());
    r.insert("process_vm_readv", process_vm_readv_self());
    // To root: needs CAP_SETUID. To ourselves: allowed to anyone, so only a syscall filter
    // refuses it.
    r.insert(
        "setuid",
        outcome(nix::unistd::setuid(nix::unistd::Uid::from_raw(0))),
    );
    r.insert("setuid_to_self", outcome(nix::unistd::setuid(me)));
    let (chown, chown_self) = chown_own_file();
    r.insert("chown", chown);
    r.insert("chown_to_self", chown_self);
    // Unprivileged users may create user namespaces (and with them the others) here.
    r.insert(
        "unshare",
        outcome(nix::sched::unshare(
            nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS,
        )),
    );
    r.insert("memfd_secret", memfd_secret());
    r.insert("mlock", mlock_page());
    json!(r)
}

/// `PTRACE_ATTACH` to a child of ours: Yama (scope 1) and the uid checks allow it.
fn ptrace_own_child() -> String {
    let Ok(mut child) = Command::new("sleep").arg("30").spawn() else {
        return "cannot spawn sleep".into();
    };
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr/data; no memory is passed.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            child.id() as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let result = if rc == -1 {
        errno_name(Errno::last())
    } else {
        "ok".into()
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Reads our own memory through `process_vm_readv`, which needs no privilege for oneself.
fn process_vm_readv_self() -> String {
    let src = [0x5au8; 64];
    let mut dst = [0u8; 64];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: src.as_ptr() as usize,
        len: src.len(),
    }];
    let mut local = [std::io::IoSliceMut::new(&mut dst)];
    outcome(nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::this(),
        &mut local,
        &remote,
    ))
}

/// chown of a file we create, to root (needs CAP_CHOWN) and to our own ids (no-op, allowed
/// to the owner, refused only by a syscall filter).
fn chown_own_file() -> (String, String) {
    let dir = std::env::var("DAEMON_HOME").unwrap_or_else(|_| "/tmp".into());
    let path = Path::new(&dir).join(format!("ssmcv-probe-chown-{}", std::process::id()));
    if let Err(e) = fs::write(&path, b"") {
        let e = format!("cannot create {}: {e}", path.display());
        return (e.clone(), e);
    }
    let root = nix::unistd::chown(
        &path,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    );
    let own = nix::unistd::chown(
        &path,
        Some(nix::unistd::getuid()),
        Some(nix::unistd::getgid()),
    );
    let _ = fs::remove_file(&path);
    (outcome(root), outcome(own))
}

fn memfd_secret() -> String {
    // SAFETY: memfd_secret takes one integer flags argument and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if fd < 0 {
        return errno_name(Errno::last());
    }
    // SAFETY: `fd` is a descriptor we just got and own; closing it once.
    unsafe { libc::close(fd as libc::c_int) };
    "ok".into()
}

fn mlock_page() -> String {
    let buf = vec![0u8; 4096];
    // SAFETY: locking (then unlocking) the pages of a live allocation we own.
    let rc = unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) };
    if rc == -1 {
        return errno_name(Errno::last());
    }
    // SAFETY: as above.
    unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
    "ok".into()
}

/// The slow reader: holds the pipe open for a while before reading (see the module doc).
fn slow_reader() -> ! {
    let key = std::env::var("PROBE_KEY_FILE").expect("PROBE_KEY_FILE");
    let pidfile = std::env::var("PROBE_PIDFILE").expect("PROBE_PIDFILE");
    let delay = std::env::var("PROBE_READ_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut f = fs::File::open(&key).unwrap_or_else(|e| panic!("open {key}: {e}"));
    let tmp = format!("{pidfile}.tmp");
    fs::write(&tmp, format!("{} {}", std::process::id(), f.as_raw_fd())).expect("pidfile");
    fs::rename(&tmp, &pidfile).expect("pidfile rename");
    std::thread::sleep(Duration::from_millis(delay));
    let mut bytes = Vec::new();
    let n = f.read_to_end(&mut bytes).unwrap_or(0);
    fs::write(format!("{pidfile}.read"), n.to_string()).expect("read count");
    emit(&json!({"slow_reader_read": n}));
    wait_forever()
}

fn wait_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
