//! Small, faithful cosmovisor stand-in for the end-to-end tests (cargo example
//! `cosmovisor-standin`). It does not use the `ssm_cosmovisor` library.
//!
//! What it shares with cosmovisor (`DAEMON_RESTART_AFTER_UPGRADE=true`):
//! - `run <args…>` runs `$DAEMON_HOME/cosmovisor/current/bin/$DAEMON_NAME <args…>`
//!   (`genesis` when `current` is missing) with the environment and stdio inherited.
//! - SIGINT/SIGTERM/SIGHUP/SIGQUIT are forwarded to the node.
//! - When the node exits and `data/upgrade-info.json` names an upgrade not applied yet, the
//!   `current` symlink is atomically switched to `upgrades/<name>` and the node restarted at
//!   once. Otherwise it exits with the node's status (128+signal if killed).
//! - Any other first argument (`version`, `add-upgrade`, …) just echoes the arguments.
//!
//! Environment:
//! - `DAEMON_HOME`, `DAEMON_NAME` (required for `run`).
//! - `STANDIN_ARGS_FILE` write the JSON array of our arguments there (tests check that
//!   arguments reach cosmovisor untouched).
//! - `STANDIN_RESTART_ALWAYS=1` restart the node even without a new upgrade marker (a
//!   supervisor that restarts without a marker).
//! - `STANDIN_MAX_STARTS` bound on node starts (default 1000).
//!
//! Exit codes: the node's status, 2 for usage/environment errors, 127 if the node binary
//! cannot be started.

/// `eprintln!`/`println!` issue one `write` per formatting piece (stderr is
/// unbuffered; stdout's line buffer flushes before the newline part), so
/// lines from several processes sharing one log file can interleave
/// mid-line. Tests parse that file line by line: write each line at once.
macro_rules! say_line {
    ($stream:ident, $($t:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($t)*);
        line.push('\n');
        let _ = std::io::$stream().write_all(line.as_bytes());
    }};
}

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{self, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;

const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Write end of the self-pipe; the signal handler only reads this (an atomic load once set).
static SIGNAL_PIPE: OnceLock<OwnedFd> = OnceLock::new();

/// The running node's pid, `None` between exit (observed with `WNOWAIT`) and the next
/// start. Guarding it with the same lock the forwarder takes means a forwarded signal can
/// never hit a reaped (and possibly reused) pid.
static NODE: Mutex<Option<Pid>> = Mutex::new(None);

/// Set once SIGINT/SIGTERM arrived: do not restart after the node exits.
static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: a lock-free OnceLock read and one raw write(2). rustix issues the
    // syscall directly, so errno of the interrupted code is not disturbed.
    if let Some(fd) = SIGNAL_PIPE.get() {
        let _ = rustix::io::write(fd, &[sig as u8]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args_json = serde_json::to_string(&args).expect("serialize args");
    say_line!(stdout, "cosmovisor-standin args: {args_json}");
    let _ = std::io::stdout().flush();

    if args.first().map(String::as_str) != Some("run") {
        return;
    }
    if let Some(path) = std::env::var_os("STANDIN_ARGS_FILE") {
        if let Err(e) = fs::write(&path, &args_json) {
            die(&format!(
                "write STANDIN_ARGS_FILE {}: {e}",
                PathBuf::from(path).display()
            ));
        }
    }

    let home = PathBuf::from(
        std::env::var_os("DAEMON_HOME").unwrap_or_else(|| die("DAEMON_HOME is not set")),
    );
    let name = std::env::var("DAEMON_NAME").unwrap_or_else(|_| die("DAEMON_NAME is not set"));
    let restart_always = std::env::var("STANDIN_RESTART_ALWAYS").is_ok_and(|v| v == "1");
    let max_starts: u64 = match std::env::var("STANDIN_MAX_STARTS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| die(&format!("STANDIN_MAX_STARTS={v:?} is not a number"))),
        Err(_) => 1000,
    };

    install_signal_forwarding();

    let root = home.join("cosmovisor");
    let mut applied = current_upgrade_name(&root);
    let mut starts: u64 = 0;
    loop {
        starts += 1;
        let bin = current_dir(&root).join("bin").join(&name);
        let status = run_node(&bin, &args[1..], starts);

        if STOPPING.load(Ordering::SeqCst) {
            exit_with(status);
        }
        let marker = upgrade_marker(&home);
        let restart = match marker {
            Some(m) if Some(&m) != applied.as_ref() => {
                apply_upgrade(&root, &name, &m);
                applied = Some(m);
                true
            }
            _ => restart_always,
        };
        if !restart {
            exit_with(status);
        }
        if starts >= max_starts {
            say_line!(
                stderr,
                "cosmovisor-standin: STANDIN_MAX_STARTS={max_starts} reached; not restarting"
            );
            exit_with(status);
        }
    }
}

/// Starts the node, waits for it, and returns its status. The pid is published for the
/// signal forwarder only while the process exists (until `WNOWAIT` says it exited).
fn run_node(bin: &Path, args: &[String], start: u64) -> ExitStatus {
    let mut guard = NODE.lock().expect("node lock");
    if STOPPING.load(Ordering::SeqCst) {
        // A TERM/INT arrived while no node was running: do not start another.
        drop(guard);
        exit_with(ExitStatus::from_raw(0));
    }
    let mut child = match Command::new(bin).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            say_line!(
                stderr,
                "cosmovisor-standin: cannot start {}: {e}",
                bin.display()
            );
            process::exit(127);
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    *guard = Some(pid);
    drop(guard);
    say_line!(
        stdout,
        "cosmovisor-standin: starting node pid={pid} start={start}"
    );
    let _ = std::io::stdout().flush();

    // Peek without reaping so the pid stays ours until the forwarder can no longer use it.
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => die(&format!("waitid: {e}")),
        }
    }
    *NODE.lock().expect("node lock") = None;
    child.wait().unwrap_or_else(|e| die(&format!("wait: {e}")))
}

/// Installs handlers that write the signal number into a self-pipe, and a thread that
/// forwards each one to the node.
fn install_signal_forwarding() {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .unwrap_or_else(|e| die(&format!("pipe: {e}")));
    SIGNAL_PIPE.set(wr).expect("signal pipe set once");

    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in FORWARDED {
        // SAFETY: `on_signal` is async-signal-safe (atomic read of an initialised OnceLock,
        // one write(2) syscall, no allocation or locking). Handled dispositions reset to
        // default across execve, so the node starts with default signal handling.
        if let Err(e) = unsafe { signal::sigaction(sig, &action) } {
            die(&format!("sigaction {sig}: {e}"));
        }
    }

    thread::spawn(move || {
        let mut rd = fs::File::from(rd);
        let mut b = [0u8; 1];
        while rd.read_exact(&mut b).is_ok() {
            let Ok(sig) = Signal::try_from(i32::from(b[0])) else {
                continue;
            };
            if matches!(sig, Signal::SIGINT | Signal::SIGTERM) {
                STOPPING.store(true, Ordering::SeqCst);
            }
            let guard = NODE.lock().expect("node lock");
            if let Some(pid) = *guard {
                say_line!(
                    stderr,
                    "cosmovisor-standin: forwarding {sig} to node pid={pid}"
                );
                let _ = signal::kill(pid, sig);
            }
        }
    });
}

/// `cosmovisor/current`, or `cosmovisor/genesis` when `current` does not exist.
fn current_dir(root: &Path) -> PathBuf {
    let current = root.join("current");
    if current.symlink_metadata().is_ok() {
        current
    } else {
        root.join("genesis")
    }
}

/// Name of the upgrade `current` points at (`genesis`, `upgrade-1`, …), if any.
fn current_upgrade_name(root: &Path) -> Option<String> {
    let target = fs::read_link(root.join("current")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The `name` in `data/upgrade-info.json`, if the file exists and parses.
fn upgrade_marker(home: &Path) -> Option<String> {
    let path = home.join("data/upgrade-info.json");
    let text = fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v.get("name").and_then(|n| n.as_str()).map(str::to_string),
        Err(e) => {
            say_line!(
                stderr,
                "cosmovisor-standin: ignoring unparsable {}: {e}",
                path.display()
            );
            None
        }
    }
}

/// Points `current` at `upgrades/<name>` with a temp symlink renamed over it (atomic), or
/// warns and keeps `current` when the upgrade binary is absent.
fn apply_upgrade(root: &Path, daemon: &str, name: &str) {
    let bin = root.join("upgrades").join(name).join("bin").join(daemon);
    if !bin.exists() {
        say_line!(
            stderr,
            "cosmovisor-standin: WARNING upgrade {name:?} has no binary at {}; keeping current",
            bin.display()
        );
        return;
    }
    let tmp = root.join(format!("current.tmp-{}", process::id()));
    let _ = fs::remove_file(&tmp);
    let res = std::os::unix::fs::symlink(Path::new("upgrades").join(name), &tmp)
        .and_then(|()| fs::rename(&tmp, root.join("current")));
    if let Err(e) = res {
        die(&format!("switch current to upgrades/{name}: {e}"));
    }
    say_line!(stdout, "cosmovisor-standin: applied upgrade {name}");
    let _ = std::io::stdout().flush();
}

fn exit_with(status: ExitStatus) -> ! {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    process::exit(code);
}

fn die(msg: &str) -> ! {
    say_line!(stderr, "cosmovisor-standin: {msg}");
    process::exit(2);
}
