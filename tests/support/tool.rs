//! Running programs from the tests: our binary (with a clean environment) and the stand-ins
//! built as cargo examples, children that die with the test, bounded waits, our JSON log.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::{aws_env, NodeHome};

/// The repository root (where Cargo.toml is).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_dir().join(d)
            }
        }
        None => repo_dir().join("target"),
    }
}

/// Our binary. `CARGO_BIN_EXE_*` is set by cargo when it compiles integration tests, which
/// is the only place this module is compiled. `SSMCV_BIN_UNDER_TEST` runs the same tests
/// against another build (e.g. the base commit's, to show that a test fails there).
pub fn ssm_cosmovisor_bin() -> PathBuf {
    std::env::var_os("SSMCV_BIN_UNDER_TEST")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ssm-cosmovisor")))
}

/// The CometBFT node stand-in (`tests/standins/node.rs`).
pub fn node_standin_bin() -> PathBuf {
    example_bin("node-standin", "tests/standins/node.rs")
}

/// The cosmovisor stand-in (`tests/standins/cosmovisor.rs`).
pub fn cosmovisor_standin_bin() -> PathBuf {
    example_bin("cosmovisor-standin", "tests/standins/cosmovisor.rs")
}

/// The sandbox probe (`tests/standins/probe.rs`).
pub fn sandbox_probe_bin() -> PathBuf {
    example_bin("sandbox-probe", "tests/standins/probe.rs")
}

/// Path of a built example. `cargo test` (no target selection) and `scripts/test` build
/// examples; `cargo test --test X` does not, and calling cargo from inside a test would wait
/// on the build lock the outer cargo holds, so a missing or stale binary is an explicit
/// failure with the command that fixes it.
fn example_bin(name: &str, source: &str) -> PathBuf {
    let bin = target_dir().join("debug/examples").join(name);
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo build --examples` (or scripts/test) first",
                bin.display()
            )
        });
    let src_mtime = fs::metadata(repo_dir().join(source))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    assert!(
        src_mtime <= built,
        "{} is older than {source}: run `cargo build --examples` (or scripts/test) first",
        bin.display()
    );
    bin
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A child that is killed and reaped when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends a signal (e.g. `nix::sys::signal::Signal::SIGTERM`).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits up to `timeout`; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with captured stdout/stderr; kills it and panics (showing what it printed)
/// if it runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes concurrently so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().expect("stdout")));
    let err_t = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().expect("stdout reader");
    let stderr = err_t.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// stdout + stderr as one string, for assertions and [`assert_no_secret`].
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A command for our binary with a clean environment: the node home's
/// variables, the cosmovisor stand-in as `COSMOVISOR_BIN`, and (if given) the
/// emulator's endpoint and test credentials. Nothing leaks in from the test
/// runner's own environment except `PATH`.
pub fn tool_cmd(home: &NodeHome, endpoint: Option<&str>) -> Command {
    let mut c = Command::new(ssm_cosmovisor_bin());
    c.env_clear();
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c.envs(home.env());
    c.env("COSMOVISOR_BIN", cosmovisor_standin_bin());
    if let Some(e) = endpoint {
        c.envs(aws_env(e));
    }
    c.stdin(Stdio::null());
    c
}

/// Our binary running in the background, its stdout+stderr going to a file.
pub struct Tool {
    pub child: KillOnDrop,
    pub log: PathBuf,
}

impl Tool {
    /// Spawns `cmd` with output to `log`.
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Tool {
        let f = File::create(&log).expect("create log");
        cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        Tool {
            child: KillOnDrop::spawn(cmd),
            log,
        }
    }

    /// Everything it printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its JSON log lines whose `event` is `event` (see [`log_events`]).
    pub fn events(&self, event: &str) -> Vec<Value> {
        log_events(&self.log_text(), event)
    }

    /// Waits until its output contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(|| self.log_text().contains(needle), timeout)
    }

    /// Sends a signal and waits for the exit status (panics after 30 s).
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        self.child.signal(sig);
        self.child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("did not exit after {sig:?}; log:\n{}", self.log_text()))
    }

    /// Waits for it to exit by itself (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .wait_timeout(timeout)
            .unwrap_or_else(|| panic!("still running after {timeout:?}; log:\n{}", self.log_text()))
    }
}

/// The JSON log lines (`SSM_COSMOVISOR_LOG_FORMAT=json`) whose `event` is `event`; other
/// lines (the stand-ins' output) are skipped.
pub fn log_events(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Pids the cosmovisor stand-in announced (`starting node pid=N`), in order.
pub fn node_pids_from_log(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.split("starting node pid=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Median and maximum (0, 0 for an empty set).
pub fn median_max(values: &[u64]) -> (u64, u64) {
    if values.is_empty() {
        return (0, 0);
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    (v[v.len() / 2], v[v.len() - 1])
}

/// Writes an executable shell script (closed before it is run).
pub fn write_script(path: &Path, body: &str) {
    fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// `prog` found on `$PATH`, if it is there.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}
