//! CometBFT node stand-in for the end-to-end tests (cargo example `node-standin`).
//!
//! It reads the validator key exactly the way CometBFT's `privval.LoadFilePV` does, so the
//! tests exercise the real consumer behaviour without needing a chain binary:
//!
//! 1. `os.Stat(path)`: if the path is missing CometBFT would *generate and save a new key*.
//!    We never do that: we report `"missing"` and exit 3 so a test can flag it.
//! 2. `os.ReadFile(path)`: open + read to EOF. On a FIFO this blocks until a writer appears.
//! 3. JSON-decode `{address, pub_key, priv_key}`, then CometBFT *overwrites* the public key
//!    and address with ones computed from `priv_key` (`pvKey.PubKey = pvKey.PrivKey.PubKey()`):
//!    - ed25519: the public key is bytes 32..64 of the private key value; a shorter value
//!      panics on the slice (a stripped key crashes the node).
//!    - secp256k1: the public key is derived from the 32-byte scalar; a stripped (empty)
//!      value gives a bogus identity in a real node; we flag it as `"stripped"`.
//!
//! It deliberately does not use the `ssm_cosmovisor` library: it is an independent reader.
//!
//! What it models, and from where (each option below says more):
//! - the key read: CometBFT `privval/file.go` (`LoadFilePV`, `loadFilePV`), v0.38 and v1.0;
//! - the upgrade halt: the Cosmos SDK's x/upgrade `PreBlocker` writes
//!   `data/upgrade-info.json` (keeper `DumpUpgradeInfoToDisk`: truncate and rewrite in place)
//!   and logs `UPGRADE "<name>" NEEDED at height: <h>`; the process then keeps running
//!   without producing blocks until its supervisor stops it (`NODE_UPGRADE_HALT`);
//! - stop signals: the SDK's `server.ListenForQuitSignals` handles INT and TERM; QUIT keeps
//!   Go's default (a goroutine dump and exit 2);
//! - `status`, `pre-upgrade`, `version --long`: the SDK commands cosmovisor 1.7 runs
//!   (sources with each below).
//!
//! Simplifications against a real node, each harmless for what the tests check (how the key
//! is read, when the process starts and ends, which files it writes):
//! - no consensus, P2P, RPC server or block store; it signs only in `NODE_SIGN_*` mode, on
//!   a shared clock (`node_sign.rs`), never through a remote signer;
//! - "the chain's height" is the sign state file, which the tests rewrite; `status` reads
//!   it even while no node runs (a real one asks the RPC and fails then);
//! - a missing key path is reported, never generated (a real node writes a new key);
//!   a stripped secp256k1 key is flagged `"stripped"` instead of yielding a bogus identity;
//! - upgrades, exits, slow reads, stops, thread churn, escape chains and held fds happen
//!   when an environment option says so, at the times it gives, not from chain events;
//! - `version` prints fixed values besides the CometBFT version it is given.
//!
//! Environment (all optional):
//! - `DAEMON_HOME` home directory unless `--home <dir>` / `--home=<dir>` is given.
//! - `NODE_KEY_FILE` key path override (else `config.toml`'s `priv_validator_key_file`,
//!   else `<home>/config/priv_validator_key.json`).
//! - `NODE_REPORT` file to append one JSON line per start to.
//! - `NODE_READ_DELAY_MS` sleep before stat/open.
//! - `NODE_OPEN_HOLD_MS` after opening the key path, wait this long before reading it (a
//!   slow reader: the key then sits in the pipe, where a hidden reader can copy it).
//! - `NODE_OPEN_STOP=<file>`: after opening the key path, write `<pid> <fd>` to that file
//!   (through a temporary name) and stop itself with SIGSTOP before reading: a node stopped
//!   by someone else the moment it attached (security round 3, item 2). Not a behaviour of
//!   CometBFT: an attack on it.
//! - `NODE_HOLD_FDS` open this many extra fds (`/dev/null`) before reading the key (the
//!   soft `RLIMIT_NOFILE` is raised to the hard one when it would not allow them).
//! - `NODE_THREADS` keep this many extra threads alive for the whole life of the process,
//!   each replaced without pause: every thread lives `NODE_THREAD_LIFE_US` (default 2000),
//!   starts its successor and exits, so tasks of the node are being created and are exiting
//!   at every instant (a busy node's runtime does this; the reader check then meets tasks
//!   in the middle of `exit`, issue 20 item 5). Started before the key is read. Not a model
//!   of a real node's rate: 100 threads at the default life are 50,000 thread exits a
//!   second, far more than a Go runtime's, to make the exit window likely in a short test.
//! - `NODE_PREUPGRADE_MS`: each `pre-upgrade` call takes this long (a migration).
//! - `NODE_UPGRADE_AHEAD_MS`: with `NODE_UPGRADE_AFTER_MS`, write the marker as a plan ahead
//!   of the chain (at `100 + 10 * start`, the sign state five heights below it), then after
//!   this long raise the state to
//!   the plan's height (the chain reaches it; cosmovisor's `status` check then fires); logged
//!   as `height_reached_unix_us` in `NODE_MARKER_LOG`.
//! - `NODE_UPGRADE_STATE=keep`: with `NODE_UPGRADE_AFTER_MS`, leave the sign state as it is
//!   (by default it is raised to the marker's height first: a validator halting at the upgrade
//!   height has signed it).
//! - `NODE_UPGRADE_AFTER_MS` after an ok read, sleep, write `data/upgrade-info.json` in
//!   place and exit 1; only for starts `n <= NODE_UPGRADES` (default 1).
//!   `NODE_UPGRADE_HALT=1`: after writing the marker stay alive instead of exiting, as an
//!   SDK node does at an upgrade height (consensus halts with `UPGRADE NEEDED`, the process
//!   keeps running until its supervisor stops it); it then signs nothing more.
//! - `NODE_EXIT_AFTER_MS` after an ok read, sleep then exit 0 without a marker; only for
//!   starts `n <= NODE_EXITS` (default 1). Checked after the upgrade rule.
//! - `NODE_STOP_DELAY_MS` on SIGTERM/SIGINT, wait this long before exiting (a slow stop).
//!   Every stop signal (SIGTERM, SIGINT, SIGQUIT) also appends
//!   `{"stopped_by":"SIGTERM","pid":…,"unix_us":…}` to `NODE_REPORT` when it arrives (tests
//!   tell a forwarded stop from a SIGKILL, which leaves no line). SIGQUIT is a Go program's
//!   default: a goroutine dump on stderr and exit 2 at once, no stop delay. SIGHUP keeps its
//!   default action (the process dies), as in an SDK node, which handles only INT and TERM.
//! - `NODE_MARKER_LOG` file to append one JSON line to when the upgrade marker has been
//!   written (`{"marker_written_unix_us":…}`, after the file is closed) and right before a
//!   planned exit (`{"exit_unix_us":…}`); `scripts/bench` pairs these with the tool's
//!   `re_armed` log lines.
//!
//! - `NODE_SIGN_LEDGER` (with `NODE_SIGN_ADDRESS`, `NODE_SIGN_EPOCH_MS`, optional
//!   `NODE_SIGN_HOST`, `NODE_SIGN_BLOCK_MS`, `NODE_SIGN_CATCHUP_MS`) a node that read the
//!   validator's key signs on a shared chain clock: see `node_sign.rs`.
//! - `NODE_ESCAPE_CHAIN=1`: after an ok read, start a descendant that tries to outlive any
//!   kill of the node's tree (issue 20): it calls `setsid` (leaving the node's session and
//!   process group), then forever sleeps `NODE_ESCAPE_CHAIN_MS` (default 20), forks, and
//!   exits in the parent, the child calling `setsid` again: one live link at a time, each a
//!   new pid in a new session whose parent is gone, so neither a process-group kill nor a
//!   one-pass walk of the node's descendants finds it. Each link runs as
//!   `<node> escape-chain --home <home>` (tests find the links by the home in their command
//!   line) and appends `{"escape_link":pid,"unix_us":…}` to `NODE_REPORT` as it starts, so
//!   a test can tell a chain that lives on (new links appear) from one that was killed. It
//!   never signs and holds no key; it is only a process that must not survive.
//! - `NODE_COMETBFT_VERSION` (e.g. `v0.38.17`) and `NODE_VERSION_HANG`: only when the first
//!   argument is exactly `version`, the stand-in reads no key and prints what a Cosmos SDK
//!   app prints for `version --long` (the SDK's `version.NewVersionCommand` YAML-marshals
//!   `version.Info`: `name`, `server_name`, `version`, `commit`, `build_tags`, `go`,
//!   `build_deps` as `- <module>@<version>` lines from the Go build info,
//!   `cosmos_sdk_version`; cosmos/cosmos-sdk `version/version.go`, `version/command.go`),
//!   with a `github.com/cometbft/cometbft@<NODE_COMETBFT_VERSION>` dependency line, none
//!   when unset; `NODE_VERSION_HANG=1` sleeps forever instead (a binary that never answers).
//!
//! Subcommands that cosmovisor runs (neither reads the key nor handles signals):
//! - `status [--home H]`: what `<app> status` prints (CometBFT's `/status` result, snake
//!   case since SDK v0.47): `{"node_info":{…},"sync_info":{"latest_block_height":"<h>",
//!   "catching_up":false}}` on stdout, exit 0. cosmovisor 1.7 runs it to learn the chain's
//!   height (tools/cosmovisor scanner.go `checkHeight`, see tests/standins/cosmovisor.rs).
//!   `h` is the `height` of the node's sign state file (`priv_validator_state_file` from
//!   config.toml, else `data/priv_validator_state.json`; home from `--home`, else
//!   `DAEMON_HOME`): for a synced signing validator the height it last signed is the chain's
//!   tip within one, so tests move "the chain" by rewriting that file. Simplification: a
//!   real `status` asks the running node's RPC (`localhost:26657`), so it fails while the
//!   node is down; this one reads the file and answers whether a node runs or not. A
//!   missing or unparsable state file prints an error and exits 1, and
//!   `NODE_STATUS_FAIL=1` always does (a node whose RPC is down). Each call appends
//!   `{"status_unix_us":…,"pid":…,"argv":[…],"cwd":"…"}` to `NODE_STATUS_LOG` if set.
//! - `pre-upgrade`: the SDK's pre-upgrade hook that cosmovisor 1.7 runs on the new binary.
//!   Its exit codes come from `NODE_PREUPGRADE_EXITS` (comma list, one per call, counted in
//!   the file `NODE_PREUPGRADE_STATE`, else `$DAEMON_HOME/data/.preupgrade-calls`); past
//!   the list's end, or without it, it exits 1, the code of an app without the command
//!   (cosmovisor takes 1 as "no pre-upgrade command, carry on"). Each call appends
//!   `{"pre_upgrade":<n, from 1>,"exit":<code>,"unix_us":…}` to `NODE_REPORT` if set.
//!
//! Lines in `NODE_REPORT` without `"outcome"` (`stopped_by`, `pre_upgrade`) are events, not
//! starts: `start_index` counts only start lines.
//!
//! Each report line also carries `read_done_unix_us`: the wall-clock time (µs since the
//! epoch) at which the key had been read and parsed, for time-to-key measurements.
//!
//! Exit codes: 0 ok (signal or planned exit), 1 upgrade needed, 2 stripped key (CometBFT
//! panic / bogus identity), 3 key path missing (CometBFT would generate a key), 4 invalid key
//! file or read error (CometBFT panic), 5 empty read (EOF without data), 6 usage/env error.

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

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[path = "node_sign.rs"]
mod sign;

const ED25519_PRIV: &str = "tendermint/PrivKeyEd25519";
const SECP256K1_PRIV: &str = "tendermint/PrivKeySecp256k1";

const EXIT_UPGRADE: i32 = 1;
const EXIT_STRIPPED: i32 = 2;
const EXIT_MISSING: i32 = 3;
const EXIT_INVALID: i32 = 4;
const EXIT_EMPTY: i32 = 5;
const EXIT_USAGE: i32 = 6;

/// What the read produced; becomes one report line.
struct Report {
    outcome: &'static str,
    key_type: Option<String>,
    pub_key: Option<String>,
    address: Option<String>,
    file_address: Option<String>,
    derived_ok: Option<bool>,
    bytes_read: usize,
    elapsed_read_us: u128,
    detail: Option<String>,
}

impl Report {
    fn new(outcome: &'static str) -> Self {
        Report {
            outcome,
            key_type: None,
            pub_key: None,
            address: None,
            file_address: None,
            derived_ok: None,
            bytes_read: 0,
            elapsed_read_us: 0,
            detail: None,
        }
    }
}

/// Lets the process open `want` fds if the hard limit allows (`NODE_HOLD_FDS`).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(want.max(soft)), hard);
        }
    }
}

/// `NODE_THREADS` (see the header): that many threads alive at every moment, each
/// starting its successor and exiting after `NODE_THREAD_LIFE_US`.
fn start_churning_threads() {
    let n = env_u64("NODE_THREADS").unwrap_or(0);
    let life = Duration::from_micros(env_u64("NODE_THREAD_LIFE_US").unwrap_or(2000));
    fn generation(life: Duration) {
        thread::sleep(life);
        // Detached: the successor outlives us; a failed spawn (thread limit) ends the line.
        let _ = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || generation(life));
    }
    for _ in 0..n {
        let _ = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || generation(life));
    }
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "version") {
        print_version();
        return;
    }
    match std::env::args_os().nth(1) {
        Some(a) if a == "status" => node_status(),
        Some(a) if a == "pre-upgrade" => pre_upgrade(),
        Some(a) if a == "escape-chain" => escape_chain(),
        _ => {}
    }
    // Block TERM/INT/QUIT before any other thread exists so every thread inherits the mask
    // and the dedicated waiter below is the only place they are delivered. This keeps the
    // handling free of async-signal-safety concerns (and of `unsafe`).
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.add(Signal::SIGINT);
    term.add(Signal::SIGQUIT);
    if let Err(e) = term.thread_block() {
        fatal_usage(&format!("cannot block signals: {e}"));
    }
    thread::spawn(move || {
        if let Ok(sig) = term.wait() {
            report_event(json!({
                "stopped_by": sig.as_str(),
                "pid": process::id(),
                "unix_us": unix_us(),
            }));
            if sig == Signal::SIGQUIT {
                // The Go runtime's SIGQUIT: dump every goroutine, exit 2.
                say_line!(
                    stderr,
                    "SIGQUIT: quit\n\ngoroutine 1 [running]:\n(node-standin: no Go stack)"
                );
                process::exit(2);
            }
            say_line!(stdout, "node-standin: got {}", sig.as_str());
            let _ = std::io::stdout().flush();
            if let Some(ms) = env_u64("NODE_STOP_DELAY_MS") {
                thread::sleep(Duration::from_millis(ms));
            }
            process::exit(0);
        }
    });

    let home = home_dir();
    let key_path = key_path(home.as_deref());

    if let Some(ms) = env_u64("NODE_READ_DELAY_MS") {
        thread::sleep(Duration::from_millis(ms));
    }

    // Keep the extra fds open for the whole life of the process.
    let hold = env_u64("NODE_HOLD_FDS").unwrap_or(0);
    raise_nofile(hold + 64);
    let _held: Vec<File> = (0..hold)
        .map(|_| {
            File::open("/dev/null").unwrap_or_else(|e| fatal_usage(&format!("open /dev/null: {e}")))
        })
        .collect();

    start_churning_threads();

    let (report, exit_code) = load_file_pv(&key_path);
    let read_done_unix_us = unix_us();
    let start_index = write_report(&report, home.as_deref(), &key_path, read_done_unix_us);

    if let Some(code) = exit_code {
        process::exit(code);
    }
    // LoadFilePV reads the sign state together with the key.
    let signer =
        sign::Signer::from_env(home.as_deref(), report.address.as_deref()).unwrap_or_else(|e| {
            say_line!(stderr, "NODE-PANIC: {e}");
            process::exit(EXIT_INVALID);
        });
    say_line!(
        stdout,
        "node-standin: pid={} read key {}",
        process::id(),
        report.address.as_deref().unwrap_or("")
    );
    let _ = std::io::stdout().flush();

    if std::env::var_os("NODE_ESCAPE_CHAIN").is_some_and(|v| v == "1") {
        start_escape_chain(home.as_deref());
    }
    let start_no = start_index + 1;
    if let Some(ms) = env_u64("NODE_UPGRADE_AFTER_MS") {
        if start_no <= env_u64("NODE_UPGRADES").unwrap_or(1) {
            thread::sleep(Duration::from_millis(ms));
            let home = home.unwrap_or_else(|| {
                fatal_usage("NODE_UPGRADE_AFTER_MS needs a home (--home or DAEMON_HOME)")
            });
            let name = format!("upgrade-{start_no}");
            // A validator halting at the upgrade height H has signed H (x/upgrade's
            // PreBlocker runs on the block the validators just committed); a node whose
            // state lags (not in the active set) keeps it with NODE_UPGRADE_STATE=keep.
            let ahead = env_u64("NODE_UPGRADE_AHEAD_MS");
            // Plans ahead are ten heights apart, so each is ahead of the last one reached.
            let h = 100 + start_index * if ahead.is_some() { 10 } else { 1 };
            if ahead.is_some() {
                // A plan written ahead (as cosmovisor's batch watcher writes it): the
                // chain is five blocks short of it.
                raise_state(&home, h - 5);
            } else if std::env::var_os("NODE_UPGRADE_STATE").map_or(true, |v| v != "keep") {
                raise_state(&home, h);
            }
            write_upgrade_info(&home, &name, h);
            marker_log("marker_written_unix_us");
            if let Some(ms) = ahead {
                // Then the chain reaches it.
                thread::sleep(Duration::from_millis(ms));
                raise_state(&home, h);
                marker_log("height_reached_unix_us");
            }
            say_line!(
                stdout,
                "UPGRADE \"{name}\" NEEDED at height: {}",
                100 + start_index
            );
            let _ = std::io::stdout().flush();
            if std::env::var_os("NODE_UPGRADE_HALT").is_some_and(|v| v == "1") {
                // Halted: no more blocks, no more signatures; only a signal ends it.
                loop {
                    thread::park();
                }
            }
            process::exit(EXIT_UPGRADE);
        }
    }
    if let Some(ms) = env_u64("NODE_EXIT_AFTER_MS") {
        if start_no <= env_u64("NODE_EXITS").unwrap_or(1) {
            thread::sleep(Duration::from_millis(ms));
            say_line!(stdout, "node-standin: planned exit without upgrade marker");
            let _ = std::io::stdout().flush();
            marker_log("exit_unix_us");
            process::exit(0);
        }
    }

    if let Some(signer) = signer {
        signer.run();
    }
    // Run "forever"; the signal thread ends the process.
    loop {
        thread::park();
    }
}

/// `--home <dir>` / `--home=<dir>` anywhere in argv (CometBFT's persistent flag), else
/// `$DAEMON_HOME`.
fn home_dir() -> Option<PathBuf> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--home" {
            if let Some(v) = it.next() {
                return Some(PathBuf::from(v));
            }
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--home=")) {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("DAEMON_HOME").map(PathBuf::from)
}

/// The path CometBFT would load: `$NODE_KEY_FILE`, else `priv_validator_key_file` from
/// `config/config.toml` (rootified against the home like CometBFT's `rootify`), else the
/// default `config/priv_validator_key.json`.
fn key_path(home: Option<&Path>) -> PathBuf {
    if let Some(p) = std::env::var_os("NODE_KEY_FILE") {
        return PathBuf::from(p);
    }
    let home = home.unwrap_or_else(|| {
        fatal_usage("no home: pass --home or set DAEMON_HOME (or NODE_KEY_FILE)")
    });
    let configured = fs::read_to_string(home.join("config/config.toml"))
        .ok()
        .and_then(|toml| configured_key_file(&toml))
        .unwrap_or_else(|| "config/priv_validator_key.json".to_string());
    let p = PathBuf::from(configured);
    if p.is_absolute() {
        p
    } else {
        home.join(p)
    }
}

/// Minimal line parser for `priv_validator_key_file = "..."` (top-level key in CometBFT's
/// config.toml). Good enough for test homes; not a TOML parser.
fn configured_key_file(toml: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("priv_validator_key_file")?;
        let rest = rest.trim_start().strip_prefix('=')?.trim();
        let rest = rest.strip_prefix('"')?;
        let end = rest.find('"')?;
        Some(rest[..end].to_string())
    })
}

/// The CometBFT `LoadFilePV` steps. Returns the report and, unless the key is usable, the
/// exit code.
fn load_file_pv(path: &Path) -> (Report, Option<i32>) {
    // cmtos.FileExists: only "does not exist" counts as missing; other stat errors fall
    // through to the read, which then fails.
    if let Err(e) = fs::metadata(path) {
        if e.kind() == ErrorKind::NotFound {
            say_line!(
                stderr,
                "NODE-FATAL: key path {} missing: CometBFT would generate a NEW key here",
                path.display()
            );
            return (Report::new("missing"), Some(EXIT_MISSING));
        }
    }

    let started = Instant::now();
    let mut buf = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        if let Some(file) = std::env::var_os("NODE_OPEN_STOP") {
            use std::os::fd::AsRawFd;
            let tmp = format!("{}.tmp", Path::new(&file).display());
            fs::write(&tmp, format!("{} {}", process::id(), f.as_raw_fd()))?;
            fs::rename(&tmp, &file)?;
            let _ = nix::sys::signal::raise(Signal::SIGSTOP);
        }
        if let Some(ms) = env_u64("NODE_OPEN_HOLD_MS") {
            thread::sleep(Duration::from_millis(ms));
        }
        f.read_to_end(&mut buf)
    });
    let elapsed_read_us = started.elapsed().as_micros();
    if let Err(e) = read {
        say_line!(
            stderr,
            "NODE-PANIC: error reading PrivValidator key from {}: {e}",
            path.display()
        );
        let mut r = Report::new("invalid");
        r.elapsed_read_us = elapsed_read_us;
        r.detail = Some(format!("read error: {e}"));
        return (r, Some(EXIT_INVALID));
    }

    let (mut report, code) = parse_key(&buf);
    report.bytes_read = buf.len();
    report.elapsed_read_us = elapsed_read_us;
    (report, code)
}

fn parse_key(buf: &[u8]) -> (Report, Option<i32>) {
    if buf.is_empty() {
        // A refused reader gets EOF without data; CometBFT would panic on the JSON decode.
        say_line!(
            stderr,
            "NODE-PANIC: empty PrivValidator key file (EOF without data)"
        );
        return (Report::new("empty"), Some(EXIT_EMPTY));
    }
    let invalid = |why: String| {
        say_line!(stderr, "NODE-PANIC: error reading PrivValidator key: {why}");
        let mut r = Report::new("invalid");
        r.detail = Some(why);
        (r, Some(EXIT_INVALID))
    };
    let v: Value = match serde_json::from_slice(buf) {
        Ok(v) => v,
        Err(e) => return invalid(format!("json: {e}")),
    };
    let file_address = v.get("address").and_then(Value::as_str).map(str::to_string);
    let Some(key_type) = v.pointer("/priv_key/type").and_then(Value::as_str) else {
        return invalid("priv_key.type missing".into());
    };
    let Some(value_b64) = v.pointer("/priv_key/value").and_then(Value::as_str) else {
        return invalid("priv_key.value missing".into());
    };
    let value = match B64.decode(value_b64) {
        Ok(b) => b,
        Err(e) => return invalid(format!("priv_key.value base64: {e}")),
    };

    let mut report = Report::new("ok");
    report.key_type = Some(key_type.to_string());
    report.file_address = file_address;

    match key_type {
        ED25519_PRIV => {
            // ed25519.PrivKey.PubKey() slices privKey[32:]: a stripped or short value panics
            // (we treat every value shorter than 64 bytes as the stripped crash).
            if value.len() < 64 {
                say_line!(
                    stderr,
                    "NODE-PANIC: stripped or short ed25519 priv_key (len {})",
                    value.len()
                );
                report.outcome = "stripped";
                return (report, Some(EXIT_STRIPPED));
            }
            if value.len() > 64 {
                return invalid(format!("ed25519 priv_key too long (len {})", value.len()));
            }
            let embedded: [u8; 32] = value[32..64].try_into().expect("32-byte slice");
            if embedded.iter().all(|&b| b == 0) {
                // CometBFT: "Expected ed25519 PrivKey to include concatenated pubkey bytes".
                say_line!(
                    stderr,
                    "NODE-PANIC: ed25519 priv_key has no concatenated public key"
                );
                report.outcome = "stripped";
                return (report, Some(EXIT_STRIPPED));
            }
            let seed: [u8; 32] = value[..32].try_into().expect("32-byte slice");
            let derived = ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes();
            report.derived_ok = Some(derived == embedded);
            report.pub_key = Some(B64.encode(embedded));
            report.address = Some(hex_upper(&Sha256::digest(embedded)[..20]));
        }
        SECP256K1_PRIV => {
            if value.len() < 32 {
                say_line!(stderr,
                    "NODE-PANIC: stripped or short secp256k1 priv_key (len {}): a real node would run with a bogus identity",
                    value.len()
                );
                report.outcome = "stripped";
                return (report, Some(EXIT_STRIPPED));
            }
            if value.len() > 32 {
                return invalid(format!("secp256k1 priv_key too long (len {})", value.len()));
            }
            let sk = match k256::SecretKey::from_slice(&value) {
                Ok(sk) => sk,
                Err(_) => return invalid("secp256k1 scalar out of range".into()),
            };
            let point = compressed_sec1(&sk.public_key());
            report.derived_ok = Some(true);
            report.pub_key = Some(B64.encode(&point));
            let sha = Sha256::digest(&point);
            report.address = Some(hex_upper(&ripemd::Ripemd160::digest(sha)));
        }
        other => return invalid(format!("unsupported key type {other}")),
    }
    (report, None)
}

/// CometBFT uses the 33-byte compressed SEC1 point; be explicit about compression.
fn compressed_sec1(pk: &k256::PublicKey) -> Vec<u8> {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    pk.to_encoded_point(true).as_bytes().to_vec()
}

/// Appends the report line (one `write` on an `O_APPEND` fd so concurrent starts never
/// interleave) and returns how many lines were already there.
fn write_report(r: &Report, home: Option<&Path>, key_path: &Path, read_done_unix_us: u64) -> u64 {
    let Some(report_path) = std::env::var_os("NODE_REPORT") else {
        return 0;
    };
    // Event lines (`stopped_by`, `pre_upgrade`) are not starts.
    let start_index = fs::read_to_string(&report_path)
        .map(|t| t.lines().filter(|l| l.contains("\"outcome\"")).count() as u64)
        .unwrap_or(0);
    let line = json!({
        "pid": process::id(),
        "ppid": nix::unistd::getppid().as_raw(),
        "uid": nix::unistd::getuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "outcome": r.outcome,
        "key_type": r.key_type,
        "pub_key": r.pub_key,
        "address": r.address,
        "file_address": r.file_address,
        "derived_ok": r.derived_ok,
        "bytes_read": r.bytes_read,
        "start_index": start_index,
        "elapsed_read_us": r.elapsed_read_us as u64,
        "read_done_unix_us": read_done_unix_us,
        "key_path": key_path.display().to_string(),
        "home": home.map(|h| h.display().to_string()),
        // Lets tests check that arguments reach the node untouched through the supervisors.
        "argv": std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "detail": r.detail,
    });
    let mut text = line.to_string();
    text.push('\n');
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&report_path)
        .unwrap_or_else(|e| fatal_usage(&format!("open NODE_REPORT: {e}")));
    match f.write(text.as_bytes()) {
        Ok(n) if n == text.len() => {}
        Ok(n) => fatal_usage(&format!(
            "short write to NODE_REPORT ({n} of {})",
            text.len()
        )),
        Err(e) => fatal_usage(&format!("write NODE_REPORT: {e}")),
    }
    start_index
}

/// Raises the sign state file to `height` (round 0, step 3: a precommit), if lower; written
/// to a temporary file and renamed, as CometBFT writes it.
fn raise_state(home: &Path, height: u64) {
    let path = sign::state_path(home);
    let now = fs::read(&path)
        .ok()
        .and_then(|b| sign::parse_state(&b).ok())
        .map_or(0, |(h, _, _)| h);
    if now >= height as i64 {
        return;
    }
    let tmp = path.with_extension("standin-tmp");
    let body = format!("{{\"height\":\"{height}\",\"round\":0,\"step\":3}}");
    if let Err(e) = fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, &path)) {
        fatal_usage(&format!("raise {}: {e}", path.display()));
    }
}

/// Writes `data/upgrade-info.json` the way the Cosmos SDK x/upgrade keeper does: truncate
/// and rewrite the existing file in place (so a watcher sees no create event after the
/// first upgrade), then close.
fn write_upgrade_info(home: &Path, name: &str, height: u64) {
    let data = home.join("data");
    if let Err(e) = fs::create_dir_all(&data) {
        fatal_usage(&format!("create {}: {e}", data.display()));
    }
    let body = json!({ "name": name, "height": height }).to_string();
    let path = data.join("upgrade-info.json");
    let res = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(body.as_bytes()));
    if let Err(e) = res {
        fatal_usage(&format!("write {}: {e}", path.display()));
    }
}

/// `<app> status` (see the header): the height of the sign state file as the chain's tip.
fn node_status() -> ! {
    if let Some(log) = std::env::var_os("NODE_STATUS_LOG") {
        let line = json!({
            "status_unix_us": unix_us(),
            "pid": process::id(),
            "argv": std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>(),
            "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        });
        append_line(Path::new(&log), &line, "NODE_STATUS_LOG");
    }
    // What the SDK's `status` prints when nothing listens on the node's RPC port.
    let rpc_down = || -> ! {
        say_line!(
            stderr,
            "Error: post failed: Post \"http://localhost:26657\": dial tcp 127.0.0.1:26657: connect: connection refused"
        );
        process::exit(1);
    };
    if std::env::var_os("NODE_STATUS_FAIL").is_some_and(|v| v == "1") {
        rpc_down();
    }
    let Some(home) = home_dir() else {
        say_line!(
            stderr,
            "node-standin: status: no home (--home or DAEMON_HOME)"
        );
        process::exit(1);
    };
    let path = sign::state_path(&home);
    let height = fs::read(&path)
        .map_err(|e| format!("read {}: {e}", path.display()))
        .and_then(|b| sign::parse_state(&b).map_err(|e| format!("{}: {e}", path.display())));
    match height {
        Ok((h, _, _)) => {
            let out = json!({
                "node_info": {
                    "id": "0000000000000000000000000000000000000000",
                    "network": "standin-chain",
                    "version": "0.38.17",
                    "moniker": "node-standin",
                },
                "sync_info": {
                    "latest_block_height": h.to_string(),
                    "catching_up": false,
                },
            });
            say_line!(stdout, "{out}");
            let _ = std::io::stdout().flush();
            process::exit(0);
        }
        Err(e) => {
            // A node without a readable state does not run: its RPC would not answer.
            say_line!(stderr, "node-standin: status: {e}");
            rpc_down();
        }
    }
}

/// Starts the first link of the escape chain (see the header), as a new process rather
/// than a fork of this multi-threaded one.
fn start_escape_chain(home: Option<&Path>) {
    let mut c = process::Command::new("/proc/self/exe");
    c.arg("escape-chain");
    if let Some(h) = home {
        c.arg("--home").arg(h);
    }
    c.stdin(process::Stdio::null());
    match c.spawn() {
        // Never waited for: its first link exits at once, and the rest are not ours.
        Ok(child) => say_line!(
            stdout,
            "node-standin: escape chain started, pid={}",
            child.id()
        ),
        Err(e) => fatal_usage(&format!("cannot start the escape chain: {e}")),
    }
}

/// `escape-chain` (see the header): setsid, then sleep, fork, exit in the parent, forever.
/// Single-threaded from its start, so forking is sound.
fn escape_chain() -> ! {
    let period = Duration::from_millis(env_u64("NODE_ESCAPE_CHAIN_MS").unwrap_or(20));
    loop {
        // Fails only for a group leader, which no forked child is.
        let _ = nix::unistd::setsid();
        report_event(json!({"escape_link": process::id(), "unix_us": unix_us()}));
        thread::sleep(period);
        // SAFETY: this process has one thread (it was exec'd for this loop and starts
        // none), so the child may run any code.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { .. }) => process::exit(0),
            Ok(nix::unistd::ForkResult::Child) => {}
            // Out of processes: keep trying as this link.
            Err(_) => {}
        }
    }
}

/// `<app> pre-upgrade` (see the header): the next exit code of `NODE_PREUPGRADE_EXITS`.
fn pre_upgrade() -> ! {
    let counter = std::env::var_os("NODE_PREUPGRADE_STATE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("DAEMON_HOME").map(|h| PathBuf::from(h).join("data/.preupgrade-calls"))
        })
        .unwrap_or_else(|| fatal_usage("pre-upgrade needs NODE_PREUPGRADE_STATE or DAEMON_HOME"));
    let done: usize = fs::read_to_string(&counter)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if let Err(e) = fs::write(&counter, (done + 1).to_string()) {
        fatal_usage(&format!("write {}: {e}", counter.display()));
    }
    let code = std::env::var("NODE_PREUPGRADE_EXITS")
        .ok()
        .and_then(|list| {
            let v = list.split(',').nth(done)?.trim().to_string();
            Some(v.parse::<i32>().unwrap_or_else(|_| {
                fatal_usage(&format!(
                    "NODE_PREUPGRADE_EXITS={list:?}: {v:?} is not a number"
                ))
            }))
        })
        .unwrap_or(1);
    // A real pre-upgrade runs the app's migrations of its home: it takes time.
    if let Some(ms) = env_u64("NODE_PREUPGRADE_MS") {
        thread::sleep(Duration::from_millis(ms));
    }
    report_event(json!({ "pre_upgrade": done + 1, "exit": code, "unix_us": unix_us() }));
    if code == 1 {
        // What a Cosmos SDK app without the command prints (cobra), on stderr.
        say_line!(
            stderr,
            "Error: unknown command \"pre-upgrade\" for \"noded\""
        );
    } else {
        say_line!(
            stdout,
            "node-standin: pre-upgrade call {} exits {code}",
            done + 1
        );
    }
    process::exit(code);
}

/// Appends an event line (not a start) to `NODE_REPORT`, if set.
fn report_event(v: Value) {
    if let Some(p) = std::env::var_os("NODE_REPORT") {
        append_line(Path::new(&p), &v, "NODE_REPORT");
    }
}

/// One JSON line in one `write` on an `O_APPEND` fd (concurrent writers never interleave).
fn append_line(path: &Path, v: &Value, what: &str) {
    let mut line = v.to_string();
    line.push('\n');
    let res = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        fatal_usage(&format!("write {what}: {e}"));
    }
}

/// Wall-clock microseconds since the Unix epoch (comparable across processes).
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Appends `{"<field>": <now in µs>}` to `$NODE_MARKER_LOG`, if set (one `write` on an
/// `O_APPEND` fd, like the report).
fn marker_log(field: &str) {
    let Some(path) = std::env::var_os("NODE_MARKER_LOG") else {
        return;
    };
    let mut line = json!({ field: unix_us(), "pid": process::id() }).to_string();
    line.push('\n');
    let res = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        fatal_usage(&format!("write NODE_MARKER_LOG: {e}"));
    }
}

/// `<app> version --long` as the Cosmos SDK prints it (see the header).
fn print_version() {
    if std::env::var_os("NODE_VERSION_HANG").is_some_and(|v| v == "1") {
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
    // `--output json` (the SDK's version command takes it; cosmovisor's `version -o json`
    // runs the app with `version --long --output json`): the same fields as JSON.
    let json_out = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| (w[0] == "--output" || w[0] == "-o") && w[1] == "json");
    if json_out {
        let mut deps = vec!["cosmossdk.io/api@v0.7.6".to_string()];
        if let Ok(v) = std::env::var("NODE_COMETBFT_VERSION") {
            deps.push(format!("github.com/cometbft/cometbft@{v}"));
        }
        deps.push("github.com/cosmos/cosmos-sdk@v0.50.10".into());
        println!(
            "{}",
            json!({"name": "noded", "server_name": "noded", "version": "v1.0.0-standin",
                "commit": "", "build_tags": "netgo", "go": "go version go1.22.5 linux/amd64",
                "build_deps": deps, "cosmos_sdk_version": "v0.50.10"})
        );
        return;
    }
    let comet = std::env::var("NODE_COMETBFT_VERSION")
        .map(|v| format!("- github.com/cometbft/cometbft@{v}\n"))
        .unwrap_or_default();
    print!(
        "name: noded\nserver_name: noded\nversion: v1.0.0-standin\ncommit: \"\"\nbuild_tags: netgo\n\
         go: go version go1.22.5 linux/amd64\nbuild_deps:\n- cosmossdk.io/api@v0.7.6\n\
         {comet}- github.com/cosmos/cosmos-sdk@v0.50.10\ncosmos_sdk_version: v0.50.10\n\n"
    );
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => fatal_usage(&format!("{name}={v:?} is not a non-negative integer")),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn fatal_usage(msg: &str) -> ! {
    say_line!(stderr, "node-standin: {msg}");
    process::exit(EXIT_USAGE);
}
