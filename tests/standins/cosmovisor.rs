//! cosmovisor stand-in for the end-to-end tests (cargo example `cosmovisor-standin`): a
//! model of **cosmovisor v1.7.x** (`cosmossdk.io/tools/cosmovisor`, cosmos/cosmos-sdk
//! `tools/cosmovisor`). It does not use the `ssm_cosmovisor` library.
//!
//! A stand-in is a model of a real program at a version: below, each behaviour names its
//! source (`file@commit` in cosmos/cosmos-sdk `tools/cosmovisor/`; `id=` where the code
//! search gave no commit), then every simplification, then the test modes that are not
//! cosmovisor behaviour at all.
//!
//! # Sources (which file versions are 1.7)
//!
//! `CHANGELOG.md`@3f115fe (v1.7.0 … v1.7.3). `process.go`@cb8a4fb, `args.go`@d4503c4,
//! `scanner.go` id=201156891 (has #22528, not #23720), `upgrade.go`@05b99f2 (v1.7.1+),
//! `cmd/cosmovisor/run.go` id=776700283, `root.go` id=482784528, `main.go` id=1118389520,
//! `init.go` id=1002665551, `config.go`@4562206, `add_upgrade.go` id=508060435,
//! `batch_upgrade.go`@63df7a8, `show_upgrade.go`@c2a099e, `prepare_upgrade.go`@ffea6a6,
//! `help.go`@5769d1f, `flags.go`@c1ede7b, `version.go`@bc47513 (the closest found: the 1.7
//! file itself was not found).
//!
//! # Behaviours modelled
//!
//! `run [args…]` (cmd run.go, process.go):
//! - Arguments: the first argument equal, ignoring case, to `--cosmovisor-config` or
//!   `-cosmovisor-config` takes the next one as the config file; both are removed, the rest
//!   goes to the node untouched. `-c` and `--cosmovisor-config=x` go to the node (run has
//!   `DisableFlagParsing`). A missing value: `--cosmovisor-config requires an argument`.
//! - Configuration (args.go `GetConfigFromEnv`, `GetConfigFromFile`, `validate`): without a
//!   file, from the environment, strictly: `DAEMON_HOME` set, absolute, and
//!   `$DAEMON_HOME/cosmovisor` an existing directory; `DAEMON_NAME` set; booleans only
//!   `""`/`true`/`false` in any case; `DAEMON_POLL_INTERVAL` (default 300ms),
//!   `DAEMON_RESTART_DELAY`, `DAEMON_SHUTDOWN_GRACE` Go durations (`300ms`, `1m30s`) that
//!   must be > 0 when set; `DAEMON_PREUPGRADE_MAX_RETRIES` an int; unless
//!   `UNSAFE_SKIP_BACKUP`, `DAEMON_DATA_BACKUP_DIR` (default `DAEMON_HOME`) absolute and an
//!   existing directory; `COSMOVISOR_TIMEFORMAT_LOGS` one of Go's layout names. Every
//!   error is collected and the lot is reported (cobra's `Error: …` on stderr, then one
//!   `ERR` line per error), exit 1. With a file: TOML with the keys of `Config`'s tags
//!   (`daemon_home` … `cosmovisor_disable_recase`); for a key present in the file, a set,
//!   non-empty environment variable named as the upper-cased key overrides it (viper
//!   `AutomaticEnv`); no defaults (no 300ms, no backup dir = home), lenient conversions
//!   (`1`/`t` are true), no `> 0` check; a poll interval of 0 then panics in
//!   `time.NewTicker` (exit 2), as 1.7 does.
//! - `os.Chdir($DAEMON_HOME/cosmovisor)`: the node, `status` and `pre-upgrade` run there.
//!   `$DAEMON_HOME/data` must exist (`invalid path: … must be an existing directory`).
//!   `current` is created as the relative symlink `current -> genesis` when it is missing
//!   or not a symlink (args.go `CurrentBin`, #21891). That binary, resolved once, is the one
//!   the file watcher runs `status` with for the whole process, even after upgrades.
//! - Launch (process.go `Run`): `EvalSymlinks(current)/bin/$DAEMON_NAME`, made `a+x`
//!   (`EnsureBinary`), `running app` logged, started with the same args, the inherited
//!   environment (all `DAEMON_*` included), stdin/stdout/stderr, in our process group.
//! - Signals (process.go `Run`): only SIGTERM and SIGQUIT are handled. The first one is
//!   forwarded, the same signal, to the node's pid only after this launch's batch watcher
//!   has been cancelled and has returned (`cancel(); wg.Wait()`); that watcher sleeps in
//!   1 s steps, so the forward lags by up to the rest of its current 1 s step (here too: the
//!   same loop, the same sleeps). Later ones are ignored (the goroutine took one signal; the
//!   channel swallows the rest). SIGINT and SIGHUP are not handled at all: the stand-in
//!   dies by them (default action) and the node keeps running (a terminal's Ctrl-C still
//!   reaches the node through the process group). A signal the node can no longer receive
//!   (reaped) logs `terminated` and exits 1.
//! - Upgrade detection (scanner.go): every `DAEMON_POLL_INTERVAL` (a Go ticker: first check
//!   one interval after the launch, a tick missed during a slow check fires at once),
//!   `data/upgrade-info.json` is checked: absent → nothing; size 0 → re-stat after 2 ms,
//!   still empty → nothing (1.7's loop breaks on the first empty re-stat; a non-empty one
//!   goes on re-statting up to 10 times); not newer (mtime) than the last accepted one →
//!   nothing; then parsed (`name` non-empty, `height` a JSON number > 0, no time): a
//!   parse error panics (exit 2, the node is left running); the name is lower-cased unless
//!   `COSMOVISOR_DISABLE_RECASE`. Then the height check of #22528: `<binary resolved at
//!   start> status --home $DAEMON_HOME`, combined output parsed as JSON
//!   `sync_info.latest_block_height` (a string) or `SyncInfo.…`; unless it succeeds with a
//!   height >= the plan's, nothing (and all of it is repeated every tick while the file is
//!   newer). First accepted read: trigger unless its name equals (ignoring case) the
//!   current upgrade's (`cosmovisor/current/upgrade-info.json`); later reads: trigger only
//!   for a higher height.
//! - The upgrade, in order (process.go, upgrade.go, args.go `SetCurrentUpgrade`):
//!   `daemon shutting down in an attempt to restart`; SIGKILL at once, or with
//!   `DAEMON_SHUTDOWN_GRACE` SIGINT, wait up to the grace (`app exited normally`), else
//!   `DAEMON_SHUTDOWN_GRACE exceeded, killing app` and SIGKILL; the killed node is not
//!   waited for before going on (a thread reaps it); if the plan height is listed after
//!   `--unsafe-skip-upgrades` in the node's args, stop here and exit 0; sleep
//!   `DAEMON_RESTART_DELAY`; unless `UNSAFE_SKIP_BACKUP`, copy `$DAEMON_HOME/data` into
//!   `$DAEMON_DATA_BACKUP_DIR/data-backup-Y-M-D` (local date, not zero-padded; in process,
//!   like otiai10/copy: directories, files, symlinks as symlinks, FIFOs as new FIFOs,
//!   modes kept) between `starting to take backup of data directory` and `backup
//!   completed`; `COSMOVISOR_CUSTOM_PREUPGRADE` (a file under `$DAEMON_HOME/cosmovisor/`,
//!   made `u+x`, run with the plan's name as written and its height, cwd `DAEMON_HOME`,
//!   stdout captured and logged; a failure ends cosmovisor with exit 1 before the switch);
//!   switch `current` (remove, then create the relative symlink `upgrades/<name>`: not
//!   atomic) and write `cosmovisor/upgrades/<name>/upgrade-info.json`; a missing upgrade
//!   binary: `binary not present, downloading disabled`, exit 1; `<new binary>
//!   pre-upgrade` (no args, cwd `cosmovisor/`): exit 1 = no such command, go on; 30 =
//!   fail (after the switch); 31 = retry at once, `DAEMON_PREUPGRADE_MAX_RETRIES` counting
//!   retries (max+1 calls); any other code = success; then `upgrade detected, relaunching`
//!   and the node again with the same args, or with `DAEMON_RESTART_AFTER_UPGRADE=false`
//!   `upgrade detected, DAEMON_RESTART_AFTER_UPGRADE is off. …` and exit 0.
//! - Node exit (process.go `WaitForUpgradeOrExit`, run.go, main.go): 0 → exit 0, no
//!   restart. Non-zero or a signal → one more check (as above, with its `status` call): an
//!   upgrade → the steps above from the skip check on; otherwise exit 1 with cobra's
//!   `Error: exit status N` (`Error: signal: killed`) on stderr. So in 1.7 a node that halts
//!   at an upgrade height H (`status` says H-1) or has died (`status` fails) is not
//!   upgraded (issues #22731, #23676, #25097).
//! - Batch upgrades (process.go `BatchUpgradeWatcher`): every launch starts a watcher
//!   (`starting the batch watcher loop`) over `data/upgrade-info.json.batch` (a JSON array
//!   of plans, sorted by height; a load error logs `failed to load batch upgrade file` and
//!   counts as empty). While it is non-empty, once a second: the latest height `h`; when
//!   `h > previous plan's height && h < next plan's height`, write the next plan to
//!   `data/upgrade-info.json` (in place, 0600 when created, compact
//!   `{"name":…,"time":"0001-01-01T00:00:00Z","height":N}`) and the rest back to the batch
//!   file. A plan the chain has already reached blocks it and every later one. The switch
//!   itself is the file watcher's.
//! - `STANDIN_LEAKED_SIGNAL_EXIT=1` (off by default): 1.7 never calls `signal.Stop` nor
//!   `cancel()` on the upgrade path, so each launch's signal goroutine (and batch watcher)
//!   outlives it. With the switch on, a SIGTERM/SIGQUIT after an in-process upgrade reaches
//!   the old goroutine, which signals its reaped node, logs `terminated` and exits 1
//!   without the new node being signalled (left running). Off by default because it is a
//!   code-reading finding, not seen in a run. The real outcome is a race between the
//!   goroutines' batch-watcher steps; with the switch on the stand-in always lets the
//!   leaked one win. Off: a launch's listener ends with it (as `signal.Stop` would), so a
//!   stop signal between two launches (restart delay, backup, pre-upgrade) meets no
//!   listener and takes Go's default action (SIGTERM: death by the signal; SIGQUIT: exit
//!   2); the old batch watchers keep running either way, as in 1.7.
//!
//! Other subcommands (cobra, cmd/cosmovisor): `version [-o json|--output json]
//! [--cosmovisor-only]` (text: `cosmovisor version: v1.7.3-standin` on stderr, then the
//! app's `version` through a full launch; json: `{"cosmovisor_version":…,"app_version":
//! <the app's JSON>}` on stderr, the app run with `version --long --output json` and its
//! stdout captured, and since 1.7 logs into that same buffer, invalid JSON (`can't print
//! version output, expected valid json from APP`) unless `COSMOVISOR_DISABLE_LOGS=true`);
//! `init <path>`; `config` (`DetailString` on stderr); `add-upgrade <name> <path>
//! [--upgrade-height H] [--force]` (copies the binary; with a height writes
//! `data/upgrade-info.json` at once, mode 0755); `add-batch-upgrade --upgrade-list
//! name:path:height,… | --upgrade-file <headerless CSV>` (per-upgrade
//! `data/upgrade-info.json.<name>`, then the batch file, pretty-printed, replaced);
//! `prepare-upgrade`; `show-upgrade-info` (the file plus a newline on stdout; a missing
//! file panics, exit 2, as 1.7 indexes an empty `args`); `help`/`-h`/`--help`/no args
//! (help on stdout, exit 0); an unknown command: `Error: unknown command "X" for
//! "cosmovisor"` and `Run 'cosmovisor --help' for usage.` on stderr, exit 1 (1.7 has no
//! fallback to `run`). `-c`/`--cosmovisor-config <file>` for `config`, `add-upgrade`,
//! `add-batch-upgrade`, `show-upgrade-info` and `prepare-upgrade`. Flags are parsed like
//! pflag (`--x v`, `--x=v`, `-c v`, `-cv`, `--`), unknown ones are `unknown flag: --x`.
//!
//! Logging (`cfg.Logger`, cosmossdk.io/log): `run`'s own lines go to stdout (between the
//! node's), errors from `main` to stderr; `COSMOVISOR_DISABLE_LOGS=true` silences both.
//!
//! Exit codes: 0 (success, node exit 0, no restart after an upgrade), 1 (any error,
//! including a node's non-zero exit), 2 (a Go panic: unparsable `upgrade-info.json`,
//! `show-upgrade-info` without the file, a zero poll interval from a file, an unexpected
//! stat error), death by SIGINT/SIGHUP (and SIGTERM with no launch to forward it to).
//!
//! # Simplifications
//!
//! - Log format: `cosmovisor-standin: INF <msg> key=value … module=cosmovisor` (also `WRN`,
//!   `ERR`): no time, no colour, fields in the order the code passes them (zerolog sorts
//!   them). The prefix is ours: the end-to-end tests read the tool's JSON log from the same
//!   stream and skip lines that start with it. The messages are 1.7's, exactly.
//! - The batch watcher gets the latest height from `<launch binary> status --home
//!   $DAEMON_HOME` (the file watcher's way), not from gRPC `GetLatestBlock` at
//!   `DAEMON_GRPC_ADDRESS`; it reloads the batch file when the file changes (mtime, size or
//!   inode), not on any fsnotify write/create event in `data/` (the same list results).
//! - No downloads: an absent upgrade binary with `DAEMON_ALLOW_DOWNLOAD_BINARIES=true`
//!   (and no `upgrades/<name>` directory) logs that the stand-in cannot download and exits
//!   1. `prepare-upgrade` has no gRPC client: it logs `Using gRPC address` and `No active
//!   upgrade plan found` and exits 0.
//! - `STANDIN_BACKUP_EXTRA_MS`: sleep that long after copying the data directory, before
//!   `backup completed`: a test's data directory is a few files, a validator's is hundreds
//!   of GB (minutes of copying, during which no node runs).
//! - Config files are TOML only (viper would also read JSON/YAML by extension); conversion
//!   errors are worded like mapstructure's, not identically. `init` writes durations as Go
//!   duration strings (go-toml's own encoding of `time.Duration` was not checked) and asks
//!   before overwriting like 1.7.
//! - cobra: the subcommand must be the first argument (no root flags before it); help and
//!   usage texts are shortened; `completion` is not modelled (exit 1); typo suggestions are
//!   cobra's (Levenshtein ≤ 2 or prefix) only roughly.
//! - The `version` number is `v1.7.3-standin`. Go panics print `panic: <message>` and no
//!   goroutine dump.
//!
//! # Test modes (not cosmovisor 1.7 behaviour)
//!
//! - `STANDIN_ARGS_FILE`: `run` writes the JSON array of all its arguments there. Every
//!   invocation first prints `cosmovisor-standin args: <JSON array>` on stdout. Each launch
//!   prints `cosmovisor-standin: starting node pid=<pid> start=<n>` (stdout), each switch
//!   `cosmovisor-standin: applied upgrade <name>` (stdout), each forward
//!   `cosmovisor-standin: forwarding <SIG> to node pid=<pid>` (stderr): tests parse these.
//! - `STANDIN_INSTANT_UPGRADE=1`: the stand-in's old model, kept as the harshest restart
//!   race for the load tests: when the node exits and `upgrade-info.json` names an upgrade
//!   not applied yet (compared with the name `current` points at), `current` is switched
//!   atomically (a temporary symlink renamed over it) and the node restarted at once: no
//!   file watcher, no batch watcher, no `status`, no backup, no pre-upgrade, no delay.
//! - `STANDIN_RESTART_ALWAYS=1`: a supervisor that restarts the node at once after any exit,
//!   with or without a marker (used by the always-armed and re-arm-race tests), at most
//!   `STANDIN_MAX_STARTS` starts (default 1000). Combinable with the previous one.
//! - In these two modes TERM/QUIT are forwarded at once (no batch watcher to wait for) and
//!   no node is started after one; INT/HUP still kill the stand-in. The configuration is
//!   still read and checked as 1.7 does.

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

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use serde_json::Value;

const VERSION: &str = "v1.7.3-standin";
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// The batch watcher's step (process.go: `time.Sleep(time.Second)`).
const BATCH_STEP: Duration = Duration::from_secs(1);

/// An error as cosmovisor returns it: usually one message, several for `errors.Join`.
type Errs = Vec<String>;

fn err1(msg: impl Into<String>) -> Errs {
    vec![msg.into()]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args_json = serde_json::to_string(&args).expect("serialize args");
    say_line!(stdout, "cosmovisor-standin args: {args_json}");
    let _ = std::io::stdout().flush();
    let code = cli(&args, &args_json);
    let _ = std::io::stdout().flush();
    process::exit(code);
}

// ---------------------------------------------------------------------------------------
// cobra: the command table, flag parsing, errors
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Str,
    Int64,
    StrSlice,
}

struct Flag {
    long: &'static str,
    short: Option<char>,
    kind: Kind,
    help: &'static str,
}

/// The root's persistent flag (root.go).
const CONFIG_FLAG: Flag = Flag {
    long: "cosmovisor-config",
    short: Some('c'),
    kind: Kind::Str,
    help: "path to cosmovisor config file",
};

enum Arity {
    Exact(usize),
    None,
    Any,
}

struct Cmd {
    name: &'static str,
    usage: &'static str,
    short: &'static str,
    arity: Arity,
    flags: &'static [Flag],
    /// cobra prints the usage after an error unless `SilenceUsage`.
    silence_usage: bool,
}

const CMDS: &[Cmd] = &[
    Cmd {
        name: "add-batch-upgrade",
        usage: "add-batch-upgrade [flags]",
        short: "Add multiple upgrade binaries at specified heights to cosmovisor",
        arity: Arity::None,
        flags: &[
            Flag {
                long: "upgrade-file",
                short: None,
                kind: Kind::Str,
                help: "Path to a batch upgrade file which is a JSON array of upgrade-info objects",
            },
            Flag {
                long: "upgrade-list",
                short: None,
                kind: Kind::StrSlice,
                help: "List of comma-separated upgrades in the format 'name:path/to/binary:height'",
            },
        ],
        silence_usage: true,
    },
    Cmd {
        name: "add-upgrade",
        usage: "add-upgrade <upgrade-name> <path to executable> [flags]",
        short: "Add APP upgrade binary to cosmovisor",
        arity: Arity::Exact(2),
        flags: &[
            Flag {
                long: "force",
                short: None,
                kind: Kind::Bool,
                help: "overwrite existing upgrade binary / upgrade-info.json file",
            },
            Flag {
                long: "upgrade-height",
                short: None,
                kind: Kind::Int64,
                help: "define a height at which to upgrade the binary automatically (without governance proposal)",
            },
        ],
        silence_usage: true,
    },
    Cmd {
        name: "config",
        usage: "config [flags]",
        short: "Display cosmovisor config.",
        arity: Arity::Any,
        flags: &[],
        silence_usage: true,
    },
    Cmd {
        name: "init",
        usage: "init <path to executable> [flags]",
        short: "Initialize a cosmovisor daemon home directory.",
        arity: Arity::Exact(1),
        flags: &[],
        silence_usage: true,
    },
    Cmd {
        name: "prepare-upgrade",
        usage: "prepare-upgrade [flags]",
        short: "Prepare for the next upgrade",
        arity: Arity::None,
        flags: &[],
        silence_usage: false,
    },
    Cmd {
        name: "run",
        usage: "run [flags]",
        short: "Run an APP command.",
        arity: Arity::Any,
        flags: &[],
        silence_usage: true,
    },
    Cmd {
        name: "show-upgrade-info",
        usage: "show-upgrade-info [flags]",
        short: "Show upgrade-info.json into stdout.",
        arity: Arity::None,
        flags: &[],
        silence_usage: false,
    },
    Cmd {
        name: "version",
        usage: "version [flags]",
        short: "Display cosmovisor and APP version.",
        arity: Arity::Any,
        flags: &[
            Flag {
                long: "output",
                short: Some('o'),
                kind: Kind::Str,
                help: "Output format (text|json)",
            },
            Flag {
                long: "cosmovisor-only",
                short: None,
                kind: Kind::Bool,
                help: "Print cosmovisor version only",
            },
        ],
        silence_usage: true,
    },
];

/// Flags as pflag leaves them: values by long name, and the positional arguments.
#[derive(Default)]
struct Parsed {
    vals: HashMap<&'static str, Vec<String>>,
    args: Vec<String>,
    help: bool,
}

impl Parsed {
    fn str(&self, name: &str) -> Option<&str> {
        self.vals
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn bool(&self, name: &str) -> bool {
        self.str(name)
            .is_some_and(|v| parse_go_bool(v) == Some(true))
    }

    fn set(&self, name: &str) -> bool {
        self.vals.contains_key(name)
    }
}

/// pflag's parsing of `args` against `flags` plus `--cosmovisor-config`/`-c`.
fn parse_flags(cmd: &Cmd, args: &[String]) -> Result<Parsed, String> {
    let all: Vec<&Flag> = cmd.flags.iter().chain([&CONFIG_FLAG]).collect();
    let mut p = Parsed::default();
    let mut i = 0;
    let store = |p: &mut Parsed, f: &Flag, v: String, shown: &str| -> Result<(), String> {
        let bad = |why: String| format!("invalid argument {v:?} for {shown:?} flag: {why}");
        match f.kind {
            Kind::Bool if parse_go_bool(&v).is_none() => {
                return Err(bad(format!(
                    "strconv.ParseBool: parsing {v:?}: invalid syntax"
                )))
            }
            Kind::Int64 if v.parse::<i64>().is_err() => {
                return Err(bad(format!(
                    "strconv.ParseInt: parsing {v:?}: invalid syntax"
                )))
            }
            Kind::StrSlice => {
                // pflag reads a StringSlice value as one CSV record.
                let e = p.vals.entry(f.long).or_default();
                e.extend(v.split(',').map(str::to_string));
                return Ok(());
            }
            _ => {}
        }
        p.vals.entry(f.long).or_default().push(v);
        Ok(())
    };
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.args.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if name == "help" {
                p.help = true;
                continue;
            }
            let Some(f) = all.iter().find(|f| f.long == name) else {
                return Err(format!("unknown flag: --{name}"));
            };
            let shown = format!("--{name}");
            let v = match (inline, f.kind) {
                (Some(v), _) => v,
                (None, Kind::Bool) => "true".into(),
                (None, _) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => return Err(format!("flag needs an argument: {shown}")),
                },
            };
            store(&mut p, f, v, &shown)?;
        } else if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            for (at, c) in body.char_indices() {
                if c == 'h' {
                    p.help = true;
                    continue;
                }
                let Some(f) = all.iter().find(|f| f.short == Some(c)) else {
                    return Err(format!("unknown shorthand flag: '{c}' in {a}"));
                };
                let rest = &body[at + c.len_utf8()..];
                let shown = format!("-{c}");
                if f.kind == Kind::Bool {
                    let v = rest.strip_prefix('=').map(str::to_string);
                    store(
                        &mut p,
                        f,
                        v.clone().unwrap_or_else(|| "true".into()),
                        &shown,
                    )?;
                    if v.is_some() {
                        break;
                    }
                    continue;
                }
                let v = if !rest.is_empty() {
                    rest.strip_prefix('=').unwrap_or(rest).to_string()
                } else {
                    match args.get(i) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => return Err(format!("flag needs an argument: '{c}' in -{c}")),
                    }
                };
                store(&mut p, f, v, &shown)?;
                break;
            }
        } else {
            p.args.push(a.clone());
        }
    }
    Ok(p)
}

fn usage_text(cmd: &Cmd) -> String {
    let mut s = format!("Usage:\n  cosmovisor {}\n\nFlags:\n", cmd.usage);
    for f in cmd.flags {
        let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let ty = match f.kind {
            Kind::Bool => "",
            Kind::Str => " string",
            Kind::Int64 => " int",
            Kind::StrSlice => " strings",
        };
        s.push_str(&format!("  {short}--{}{ty}   {}\n", f.long, f.help));
    }
    s.push_str(&format!(
        "  -h, --help   help for {}\n\nGlobal Flags:\n  -c, --cosmovisor-config string   {}\n",
        cmd.name, CONFIG_FLAG.help
    ));
    s
}

fn root_help() -> String {
    let mut s = String::from(
        "Cosmovisor - A process manager for Cosmos SDK application binaries.\n\n\
Cosmovisor is a wrapper for a Cosmos SDK based App (set using the required DAEMON_NAME env variable).\n\
It starts the App by passing all provided arguments and monitors the DAEMON_HOME/data/upgrade-info.json\n\
file to perform an update. The upgrade-info.json file is created by the App x/upgrade module\n\
when the blockchain height reaches an approved upgrade proposal. The file includes data from\n\
the proposal. Cosmovisor interprets that data to perform an update: switch a current binary\n\
and restart the App.\n\n\
Configuration of Cosmovisor is done through environment variables, which are\n\
documented in: https://docs.cosmos.network/main/build/tooling/cosmovisor\n\n\
Usage:\n  cosmovisor [command]\n\nAvailable Commands:\n"
    );
    let mut names: Vec<(&str, &str)> = CMDS.iter().map(|c| (c.name, c.short)).collect();
    names.push((
        "completion",
        "Generate the autocompletion script for the specified shell",
    ));
    names.push(("help", "Help about any command"));
    names.sort();
    for (n, short) in names {
        s.push_str(&format!("  {n:<17} {short}\n"));
    }
    s.push_str(
        "\nFlags:\n  -c, --cosmovisor-config string   path to cosmovisor config file\n  \
-h, --help                       help for cosmovisor\n\n\
Use \"cosmovisor [command] --help\" for more information about a command.\n",
    );
    s
}

/// What cobra and main.go do with a returned error: `Error: <msg>` (joined errors on
/// several lines), the usage unless silenced, then main's logger: one `ERR` line per error
/// on stderr (unless `COSMOVISOR_DISABLE_LOGS=true`). Exit 1.
fn fail(errs: &Errs, usage: Option<String>) -> i32 {
    say_line!(stderr, "Error: {}", errs.join("\n"));
    if let Some(u) = usage {
        say_line!(stderr, "{u}");
    }
    // main.go: `getConfigForInitCmd()` — the environment, unvalidated.
    let log = Logger::new(
        Sink::Stderr,
        std::env::var("COSMOVISOR_DISABLE_LOGS").is_ok_and(|v| v.eq_ignore_ascii_case("true")),
    );
    for e in errs {
        log.error("", &[("error", e.clone())]);
    }
    1
}

fn cli(args: &[String], args_json: &str) -> i32 {
    let Some(first) = args.first() else {
        print!("{}", root_help());
        return 0;
    };
    let rest = &args[1..];
    match first.as_str() {
        "help" | "-h" | "--help" => {
            match rest.first().and_then(|n| CMDS.iter().find(|c| c.name == n)) {
                Some(c) => print!("{}\n\n{}", c.short, usage_text(c)),
                None => print!("{}", root_help()),
            }
            return 0;
        }
        "run" => {
            if let Some(path) = std::env::var_os("STANDIN_ARGS_FILE") {
                if let Err(e) = fs::write(&path, args_json) {
                    say_line!(
                        stderr,
                        "cosmovisor-standin: write STANDIN_ARGS_FILE {}: {e}",
                        Path::new(&path).display()
                    );
                    return 2;
                }
            }
            return match cmd_run(rest) {
                Ok(()) => 0,
                Err(e) => fail(&e, None),
            };
        }
        "completion" => {
            say_line!(
                stderr,
                "cosmovisor-standin: `completion` is not modelled by the stand-in"
            );
            return 1;
        }
        _ => {}
    }
    let Some(cmd) = CMDS.iter().find(|c| c.name == first) else {
        if first.starts_with('-') {
            return fail(&err1(format!("unknown flag: {first}")), None);
        }
        // cobra's legacyArgs: a root with subcommands and no Run of its own.
        let mut msg = format!("unknown command {first:?} for \"cosmovisor\"");
        let near: Vec<&str> = CMDS
            .iter()
            .map(|c| c.name)
            .chain(["completion", "help"])
            .filter(|n| levenshtein(n, first) <= 2 || n.starts_with(first.as_str()))
            .collect();
        if !near.is_empty() {
            msg.push_str("\n\nDid you mean this?\n");
            for n in near {
                msg.push_str(&format!("\t{n}\n"));
            }
        }
        say_line!(stderr, "Error: {msg}");
        say_line!(stderr, "Run 'cosmovisor --help' for usage.");
        let log = Logger::new(
            Sink::Stderr,
            std::env::var("COSMOVISOR_DISABLE_LOGS").is_ok_and(|v| v.eq_ignore_ascii_case("true")),
        );
        log.error("", &[("error", msg)]);
        return 1;
    };
    let usage = || (!cmd.silence_usage).then(|| usage_text(cmd));
    let p = match parse_flags(cmd, rest) {
        Ok(p) => p,
        Err(e) => return fail(&err1(e), usage()),
    };
    if p.help {
        print!("{}\n\n{}", cmd.short, usage_text(cmd));
        return 0;
    }
    let arity = match cmd.arity {
        Arity::Exact(n) if p.args.len() != n => {
            Some(format!("accepts {n} arg(s), received {}", p.args.len()))
        }
        Arity::None if !p.args.is_empty() => Some(format!(
            "unknown command {:?} for \"cosmovisor {}\"",
            p.args[0], cmd.name
        )),
        _ => None,
    };
    if let Some(e) = arity {
        return fail(&err1(e), usage());
    }
    let cfg_path = p.str("cosmovisor-config").unwrap_or("").to_string();
    let res = match cmd.name {
        "version" => cmd_version(&p),
        "init" => cmd_init(&p.args[0]),
        "config" => Config::from_file(&cfg_path).map(|cfg| {
            eprint!("{}", cfg.detail_string());
        }),
        "add-upgrade" => cmd_add_upgrade(&p, &cfg_path),
        "add-batch-upgrade" => cmd_add_batch_upgrade(&p, &cfg_path),
        "prepare-upgrade" => cmd_prepare_upgrade(&cfg_path),
        "show-upgrade-info" => cmd_show_upgrade_info(&cfg_path),
        other => unreachable!("command {other} in the table but not dispatched"),
    };
    match res {
        Ok(()) => 0,
        Err(e) => fail(&e, usage()),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// Logging (cosmossdk.io/log as configured by args.go `Logger`), Go's texts
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum Sink {
    Stdout,
    Stderr,
    /// `version -o json`: the app's stdout and, in 1.7, the logger too.
    Buf(Arc<Mutex<Vec<u8>>>),
}

#[derive(Clone)]
struct Logger {
    sink: Sink,
    /// `COSMOVISOR_DISABLE_LOGS`: `log.NewNopLogger()`.
    nop: bool,
}

impl Logger {
    fn new(sink: Sink, nop: bool) -> Logger {
        Logger { sink, nop }
    }

    fn info(&self, msg: &str, kv: &[(&str, String)]) {
        self.line("INF", msg, kv);
    }

    fn warn(&self, msg: &str, kv: &[(&str, String)]) {
        self.line("WRN", msg, kv);
    }

    fn error(&self, msg: &str, kv: &[(&str, String)]) {
        self.line("ERR", msg, kv);
    }

    fn line(&self, level: &str, msg: &str, kv: &[(&str, String)]) {
        if self.nop {
            return;
        }
        let mut s = format!("cosmovisor-standin: {level}");
        if !msg.is_empty() {
            s.push(' ');
            s.push_str(msg);
        }
        for (k, v) in kv {
            s.push_str(&format!(" {k}={}", quote_value(v)));
        }
        s.push_str(" module=cosmovisor\n");
        match &self.sink {
            Sink::Stdout => {
                let _ = std::io::stdout().write_all(s.as_bytes());
            }
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(s.as_bytes());
            }
            Sink::Buf(b) => b
                .lock()
                .expect("log buffer")
                .extend_from_slice(s.as_bytes()),
        }
    }
}

/// zerolog's console writer quotes values that would not read back as one token.
fn quote_value(v: &str) -> String {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\' || c.is_control())
    {
        serde_json::to_string(v).expect("quote")
    } else {
        v.to_string()
    }
}

/// Go's text for an errno (`syscall.Errno.Error()`): glibc's, first letter lower-cased.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = std::io::Error::from_raw_os_error(n).to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

/// Go's `*PathError` text: `<op> <path>: <errno>`.
fn path_err(op: &str, path: &Path, e: &std::io::Error) -> String {
    format!("{op} {}: {}", path.display(), errno_text(e))
}

/// Go's `*exec.ExitError` text.
fn exit_text(st: &ExitStatus) -> String {
    if let Some(c) = st.code() {
        return format!("exit status {c}");
    }
    let sig = st.signal().unwrap_or(0);
    let name = match sig {
        1 => "hangup".to_string(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    };
    let core = if st.core_dumped() {
        " (core dumped)"
    } else {
        ""
    };
    format!("signal: {name}{core}")
}

/// A Go panic: the message on stderr, exit 2 (children keep running).
fn go_panic(msg: &str) -> ! {
    say_line!(
        stderr,
        "panic: {msg}\n\ngoroutine 1 [running]:\n(cosmovisor-standin: no Go stack)"
    );
    process::exit(2);
}

fn parse_go_bool(v: &str) -> Option<bool> {
    // strconv.ParseBool (viper/cast, pflag).
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `time.ParseDuration`, in nanoseconds.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let (neg, mut s) = match orig.as_bytes().first() {
        Some(b'-') => (true, &orig[1..]),
        Some(b'+') => (false, &orig[1..]),
        _ => (false, orig),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(r) = s.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            s = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let mult: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = int.checked_mul(mult).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(30) as u32;
            let f: i128 = frac_part[..digits as usize]
                .parse()
                .map_err(|_| invalid())?;
            v += f * mult / 10i128.pow(digits);
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
    }
    let total = total as i64;
    Ok(if neg { -total } else { total })
}

/// `time.Duration.String()`.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let frac = |v: u64, div: u64| {
        let (i, f) = (v / div, v % div);
        if f == 0 {
            i.to_string()
        } else {
            let width = div.to_string().len() - 1;
            let fs = format!("{f:0width$}");
            format!("{i}.{}", fs.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let h = u / 3_600_000_000_000;
    let m = (u % 3_600_000_000_000) / 60_000_000_000;
    let s = frac(u % 60_000_000_000, 1_000_000_000);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

fn nanos(ns: i64) -> Duration {
    Duration::from_nanos(ns.max(0) as u64)
}

/// Local date and time (Go's `time.Now()` is local).
fn local_now() -> libc::tm {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: `tm` is plain data; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

fn local_time_text() -> String {
    let tm = local_now();
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

// ---------------------------------------------------------------------------------------
// Configuration (args.go)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Config {
    home: String,
    name: String,
    allow_download: bool,
    must_checksum: bool,
    restart_after_upgrade: bool,
    /// Durations in nanoseconds (a file may give 0 or negative values: no check then).
    restart_delay: i64,
    shutdown_grace: i64,
    poll_interval: i64,
    skip_backup: bool,
    backup_dir: String,
    preupgrade_max_retries: i64,
    grpc_address: String,
    disable_logs: bool,
    color_logs: bool,
    /// The Go layout string (`3:04PM` for `kitchen`), as `DetailString` shows it.
    time_format: String,
    custom_preupgrade: String,
    disable_recase: bool,
}

const TIME_FORMATS: &[(&str, &str)] = &[
    ("layout", "01/02 03:04:05PM '06 -0700"),
    ("ansic", "Mon Jan _2 15:04:05 2006"),
    ("unixdate", "Mon Jan _2 15:04:05 MST 2006"),
    ("rubydate", "Mon Jan 02 15:04:05 -0700 2006"),
    ("rfc822", "02 Jan 06 15:04 MST"),
    ("rfc822z", "02 Jan 06 15:04 -0700"),
    ("rfc850", "Monday, 02-Jan-06 15:04:05 MST"),
    ("rfc1123", "Mon, 02 Jan 2006 15:04:05 MST"),
    ("rfc1123z", "Mon, 02 Jan 2006 15:04:05 -0700"),
    ("rfc3339", "2006-01-02T15:04:05Z07:00"),
    ("rfc3339nano", "2006-01-02T15:04:05.999999999Z07:00"),
    ("kitchen", "3:04PM"),
];

fn time_format_option(val: &str) -> Result<String, String> {
    if val.is_empty() {
        return Ok(String::new());
    }
    TIME_FORMATS
        .iter()
        .find(|(n, _)| *n == val)
        .map(|(_, layout)| layout.to_string())
        .ok_or_else(|| {
            format!(
                "env variable \"COSMOVISOR_TIMEFORMAT_LOGS\" must have a timeformat value \
(\"layout|ansic|unixdate|rubydate|rfc822|rfc822z|rfc850|rfc1123|rfc1123z|rfc3339|rfc3339nano|kitchen\"), got {val:?}"
            )
        })
}

/// The keys of a config file, in `Config`'s order (its `toml`/`mapstructure` tags).
const FILE_KEYS: &[&str] = &[
    "daemon_home",
    "daemon_name",
    "daemon_allow_download_binaries",
    "daemon_download_must_have_checksum",
    "daemon_restart_after_upgrade",
    "daemon_restart_delay",
    "daemon_shutdown_grace",
    "daemon_poll_interval",
    "unsafe_skip_backup",
    "daemon_data_backup_dir",
    "daemon_preupgrade_max_retries",
    "daemon_grpc_address",
    "cosmovisor_disable_logs",
    "cosmovisor_color_logs",
    "cosmovisor_timeformat_logs",
    "cosmovisor_custom_preupgrade",
    "cosmovisor_disable_recase",
];

/// `BooleanOption`: only "", "true", "false", in any case.
fn boolean_option(name: &str, default: bool, errs: &mut Errs) -> bool {
    let p = std::env::var(name).unwrap_or_default().to_lowercase();
    match p.as_str() {
        "" => default,
        "false" => false,
        "true" => true,
        _ => {
            errs.push(format!(
                "env variable {name:?} must have a boolean value (\"true\" or \"false\"), got {p:?}"
            ));
            false
        }
    }
}

/// `parseEnvDuration`: a Go duration, > 0.
fn env_duration(name: &str, errs: &mut Errs) -> Option<i64> {
    let v = std::env::var(name).unwrap_or_default();
    if v.is_empty() {
        return None;
    }
    match parse_go_duration(&v) {
        Err(e) => {
            errs.push(format!(
                "invalid: {name}: could not parse '{v}' into a duration: {e}"
            ));
            None
        }
        Ok(d) if d <= 0 => {
            errs.push(format!("invalid: {name}: must be greater than 0"));
            None
        }
        Ok(d) => Some(d),
    }
}

impl Config {
    /// `GetConfigFromEnv(skipValidate)`: with `skip_validate` the parse errors are dropped
    /// too (1.7 returns them only on the validating path).
    fn from_env(skip_validate: bool) -> Result<Config, Errs> {
        let env = |n: &str| std::env::var(n).unwrap_or_default();
        let mut errs = Errs::new();
        let mut cfg = Config {
            home: env("DAEMON_HOME"),
            name: env("DAEMON_NAME"),
            backup_dir: env("DAEMON_DATA_BACKUP_DIR"),
            custom_preupgrade: env("COSMOVISOR_CUSTOM_PREUPGRADE"),
            ..Config::default()
        };
        if cfg.backup_dir.is_empty() {
            cfg.backup_dir = cfg.home.clone();
        }
        cfg.allow_download = boolean_option("DAEMON_ALLOW_DOWNLOAD_BINARIES", false, &mut errs);
        cfg.must_checksum = boolean_option("DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM", false, &mut errs);
        cfg.restart_after_upgrade = boolean_option("DAEMON_RESTART_AFTER_UPGRADE", true, &mut errs);
        cfg.skip_backup = boolean_option("UNSAFE_SKIP_BACKUP", false, &mut errs);
        cfg.disable_logs = boolean_option("COSMOVISOR_DISABLE_LOGS", false, &mut errs);
        cfg.color_logs = boolean_option("COSMOVISOR_COLOR_LOGS", true, &mut errs);
        cfg.time_format = match std::env::var("COSMOVISOR_TIMEFORMAT_LOGS") {
            Err(_) => "3:04PM".into(),
            Ok(v) => time_format_option(&v).unwrap_or_else(|e| {
                errs.push(e);
                String::new()
            }),
        };
        cfg.disable_recase = boolean_option("COSMOVISOR_DISABLE_RECASE", false, &mut errs);
        cfg.poll_interval = if env("DAEMON_POLL_INTERVAL").is_empty() {
            300_000_000
        } else {
            env_duration("DAEMON_POLL_INTERVAL", &mut errs).unwrap_or(0)
        };
        cfg.restart_delay = env_duration("DAEMON_RESTART_DELAY", &mut errs).unwrap_or(0);
        cfg.shutdown_grace = env_duration("DAEMON_SHUTDOWN_GRACE", &mut errs).unwrap_or(0);
        let retries = env("DAEMON_PREUPGRADE_MAX_RETRIES");
        if !retries.is_empty() {
            match retries.parse::<i64>() {
                Ok(n) => cfg.preupgrade_max_retries = n,
                Err(_) => errs.push(format!(
                    "DAEMON_PREUPGRADE_MAX_RETRIES could not be parsed to int: strconv.Atoi: parsing {retries:?}: invalid syntax"
                )),
            }
        }
        cfg.grpc_address = env("DAEMON_GRPC_ADDRESS");
        if cfg.grpc_address.is_empty() {
            cfg.grpc_address = "localhost:9090".into();
        }
        if !skip_validate {
            errs.extend(cfg.validate());
            if !errs.is_empty() {
                return Err(errs);
            }
        }
        Ok(cfg)
    }

    /// `GetConfigFromFile(path)`: the environment when `path` is empty.
    fn from_file(path: &str) -> Result<Config, Errs> {
        if path.is_empty() {
            return Config::from_env(false);
        }
        let p = Path::new(path);
        if let Err(e) = fs::metadata(p) {
            return Err(err1(format!(
                "config not found: at {path} : {}",
                path_err("stat", p, &e)
            )));
        }
        match p.extension().and_then(|e| e.to_str()) {
            Some("toml") => {}
            Some(other) => {
                return Err(err1(format!(
                    "failed to read config file: the stand-in reads only TOML config files (viper would read {other:?})"
                )))
            }
            None => {
                return Err(err1(
                    "failed to read config file: Unsupported Config Type \"\"",
                ))
            }
        }
        let text = fs::read_to_string(p).map_err(|e| {
            err1(format!(
                "failed to read config file: {}",
                path_err("open", p, &e)
            ))
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| err1(format!("failed to read config file: {e}")))?;
        // viper AutomaticEnv: for a key the file has, a set, non-empty variable named as
        // the upper-cased key wins.
        let mut vals: HashMap<&str, toml::Value> = HashMap::new();
        for key in FILE_KEYS {
            let Some(v) = table.get(*key) else { continue };
            let v = match std::env::var(key.to_uppercase()) {
                Ok(e) if !e.is_empty() => toml::Value::String(e),
                _ => v.clone(),
            };
            vals.insert(key, v);
        }
        let mut cfg = Config::default();
        let decode = |key: &str, what: &str, detail: String| {
            err1(format!(
                "failed to unmarshal configuration: 1 error(s) decoding:\n\n* cannot parse '{key}' as {what}: {detail}"
            ))
        };
        let get_str = |key: &str| -> String {
            match vals.get(key) {
                None => String::new(),
                Some(toml::Value::String(s)) => s.clone(),
                Some(toml::Value::Boolean(b)) => if *b { "1" } else { "0" }.into(),
                Some(other) => other.to_string(),
            }
        };
        let get_bool = |key: &str| -> Result<bool, Errs> {
            match vals.get(key) {
                None => Ok(false),
                Some(toml::Value::Boolean(b)) => Ok(*b),
                Some(toml::Value::Integer(i)) => Ok(*i != 0),
                Some(toml::Value::String(s)) if s.is_empty() => Ok(false),
                Some(toml::Value::String(s)) => parse_go_bool(s).ok_or_else(|| {
                    decode(
                        key,
                        "bool",
                        format!("strconv.ParseBool: parsing {s:?}: invalid syntax"),
                    )
                }),
                Some(other) => Err(decode(key, "bool", format!("{other}"))),
            }
        };
        let get_dur = |key: &str| -> Result<i64, Errs> {
            match vals.get(key) {
                None => Ok(0),
                Some(toml::Value::Integer(i)) => Ok(*i),
                Some(toml::Value::String(s)) => {
                    parse_go_duration(s).map_err(|e| decode(key, "time.Duration", e))
                }
                Some(other) => Err(decode(key, "time.Duration", format!("{other}"))),
            }
        };
        let get_int = |key: &str| -> Result<i64, Errs> {
            match vals.get(key) {
                None => Ok(0),
                Some(toml::Value::Integer(i)) => Ok(*i),
                Some(toml::Value::String(s)) if s.is_empty() => Ok(0),
                Some(toml::Value::String(s)) => s.parse().map_err(|_| {
                    decode(
                        key,
                        "int",
                        format!("strconv.ParseInt: parsing {s:?}: invalid syntax"),
                    )
                }),
                Some(other) => Err(decode(key, "int", format!("{other}"))),
            }
        };
        cfg.home = get_str("daemon_home");
        cfg.name = get_str("daemon_name");
        cfg.allow_download = get_bool("daemon_allow_download_binaries")?;
        cfg.must_checksum = get_bool("daemon_download_must_have_checksum")?;
        cfg.restart_after_upgrade = get_bool("daemon_restart_after_upgrade")?;
        cfg.restart_delay = get_dur("daemon_restart_delay")?;
        cfg.shutdown_grace = get_dur("daemon_shutdown_grace")?;
        cfg.poll_interval = get_dur("daemon_poll_interval")?;
        cfg.skip_backup = get_bool("unsafe_skip_backup")?;
        cfg.backup_dir = get_str("daemon_data_backup_dir");
        cfg.preupgrade_max_retries = get_int("daemon_preupgrade_max_retries")?;
        cfg.grpc_address = get_str("daemon_grpc_address");
        cfg.disable_logs = get_bool("cosmovisor_disable_logs")?;
        cfg.color_logs = get_bool("cosmovisor_color_logs")?;
        cfg.custom_preupgrade = get_str("cosmovisor_custom_preupgrade");
        cfg.disable_recase = get_bool("cosmovisor_disable_recase")?;
        let mut errs = Errs::new();
        match time_format_option(&get_str("cosmovisor_timeformat_logs")) {
            Ok(f) => cfg.time_format = f,
            Err(e) => errs.push(e),
        }
        errs.extend(cfg.validate());
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// `validate`.
    fn validate(&self) -> Errs {
        let mut errs = Errs::new();
        if self.name.is_empty() {
            errs.push("DAEMON_NAME is not set".into());
        }
        if self.home.is_empty() {
            errs.push("DAEMON_HOME is not set".into());
        } else if !Path::new(&self.home).is_absolute() {
            errs.push("DAEMON_HOME must be an absolute path".into());
        } else {
            match fs::metadata(self.root()) {
                Err(e) => errs.push(format!(
                    "cannot stat home dir: {}",
                    path_err("stat", &self.root(), &e)
                )),
                Ok(md) if !md.is_dir() => {
                    errs.push(format!("{} is not a directory", self.root().display()))
                }
                Ok(_) => {}
            }
        }
        if self.skip_backup {
            return errs;
        }
        let b = Path::new(&self.backup_dir);
        if self.backup_dir.is_empty() {
            errs.push("DAEMON_DATA_BACKUP_DIR must not be empty".into());
        } else if !b.is_absolute() {
            errs.push(format!("{} must be an absolute path", self.backup_dir));
        } else {
            match fs::metadata(b) {
                Err(e) => errs.push(format!(
                    "{:?} must be a valid directory: {}",
                    self.backup_dir,
                    path_err("stat", b, &e)
                )),
                Ok(md) if !md.is_dir() => {
                    errs.push(format!("{:?} must be a valid directory", self.backup_dir))
                }
                Ok(_) => {}
            }
        }
        errs
    }

    fn root(&self) -> PathBuf {
        Path::new(&self.home).join("cosmovisor")
    }

    fn genesis_bin(&self) -> PathBuf {
        self.root().join("genesis/bin").join(&self.name)
    }

    fn upgrade_dir(&self, name: &str) -> PathBuf {
        self.root().join("upgrades").join(path_escape(name))
    }

    fn upgrade_bin(&self, name: &str) -> PathBuf {
        self.upgrade_dir(name).join("bin").join(&self.name)
    }

    fn upgrade_info_path(&self) -> PathBuf {
        Path::new(&self.home).join("data/upgrade-info.json")
    }

    fn batch_path(&self) -> PathBuf {
        Path::new(&self.home).join("data/upgrade-info.json.batch")
    }

    fn logger(&self, sink: Sink) -> Logger {
        Logger::new(sink, self.disable_logs)
    }

    /// `DetailString`.
    fn detail_string(&self) -> String {
        let entries = [
            ("DAEMON_HOME", self.home.clone()),
            ("DAEMON_NAME", self.name.clone()),
            (
                "DAEMON_ALLOW_DOWNLOAD_BINARIES",
                self.allow_download.to_string(),
            ),
            (
                "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM",
                self.must_checksum.to_string(),
            ),
            (
                "DAEMON_RESTART_AFTER_UPGRADE",
                self.restart_after_upgrade.to_string(),
            ),
            ("DAEMON_RESTART_DELAY", go_duration(self.restart_delay)),
            ("DAEMON_SHUTDOWN_GRACE", go_duration(self.shutdown_grace)),
            ("DAEMON_POLL_INTERVAL", go_duration(self.poll_interval)),
            ("UNSAFE_SKIP_BACKUP", self.skip_backup.to_string()),
            ("DAEMON_DATA_BACKUP_DIR", self.backup_dir.clone()),
            (
                "DAEMON_PREUPGRADE_MAX_RETRIES",
                self.preupgrade_max_retries.to_string(),
            ),
            ("COSMOVISOR_DISABLE_LOGS", self.disable_logs.to_string()),
            ("COSMOVISOR_COLOR_LOGS", self.color_logs.to_string()),
            ("COSMOVISOR_TIMEFORMAT_LOGS", self.time_format.clone()),
            (
                "COSMOVISOR_CUSTOM_PREUPGRADE",
                self.custom_preupgrade.clone(),
            ),
            ("COSMOVISOR_DISABLE_RECASE", self.disable_recase.to_string()),
        ];
        let derived = [
            ("Root Dir", self.root()),
            ("Upgrade Dir", self.root().join("upgrades")),
            ("Genesis Bin", self.genesis_bin()),
            ("Monitored File", self.upgrade_info_path()),
            ("Data Backup Dir", PathBuf::from(&self.backup_dir)),
        ];
        let mut s = String::from("Configurable Values:\n");
        for (k, v) in entries {
            s.push_str(&format!("  {k}: {v}\n"));
        }
        s.push_str("Derived Values:\n");
        let w = derived.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in derived {
            s.push_str(&format!("  {k:>w$}: {}\n", v.display()));
        }
        s
    }

    /// `Export`: `$DAEMON_HOME/cosmovisor/config.toml`, asking before overwriting.
    fn export(&self) -> Result<PathBuf, String> {
        let path = self.root().join("config.toml");
        if path.exists() {
            print!(
                "file {} already exists, do you want to overwrite it? [y/n]: ",
                path.display()
            );
            let _ = std::io::stdout().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            // fmt.Scanln: one token; EOF or an empty line is "no".
            let token = answer.split_whitespace().next().unwrap_or("");
            if !token.eq_ignore_ascii_case("y") {
                self.logger(Sink::Stdout)
                    .info("file already exists, not overriding", &[]);
                return Ok(path);
            }
        }
        let fmt_name = TIME_FORMATS
            .iter()
            .find(|(_, l)| *l == self.time_format)
            .map(|(n, _)| *n)
            .unwrap_or("");
        let q = |s: &str| serde_json::to_string(s).expect("quote");
        let text = format!(
            "daemon_home = {}\ndaemon_name = {}\ndaemon_allow_download_binaries = {}\n\
daemon_download_must_have_checksum = {}\ndaemon_restart_after_upgrade = {}\n\
daemon_restart_delay = {}\ndaemon_shutdown_grace = {}\ndaemon_poll_interval = {}\n\
unsafe_skip_backup = {}\ndaemon_data_backup_dir = {}\ndaemon_preupgrade_max_retries = {}\n\
daemon_grpc_address = {}\ncosmovisor_disable_logs = {}\ncosmovisor_color_logs = {}\n\
cosmovisor_timeformat_logs = {}\ncosmovisor_custom_preupgrade = {}\ncosmovisor_disable_recase = {}\n",
            q(&self.home),
            q(&self.name),
            self.allow_download,
            self.must_checksum,
            self.restart_after_upgrade,
            q(&go_duration(self.restart_delay)),
            q(&go_duration(self.shutdown_grace)),
            q(&go_duration(self.poll_interval)),
            self.skip_backup,
            q(&self.backup_dir),
            self.preupgrade_max_retries,
            q(&self.grpc_address),
            self.disable_logs,
            self.color_logs,
            q(fmt_name),
            q(&self.custom_preupgrade),
            self.disable_recase,
        );
        fs::write(&path, text).map_err(|e| {
            format!(
                "failed to create configuration file: {}",
                path_err("open", &path, &e)
            )
        })?;
        Ok(path)
    }
}

/// `url.PathEscape`: escapes all but unreserved characters and `$&+:=@`.
fn path_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `plan.EnsureBinary`: a regular file, then `chmod a+x`.
fn ensure_binary(path: &Path) -> Result<(), String> {
    let md = fs::metadata(path).map_err(|e| {
        format!(
            "cannot stat dir {}: {}",
            path.display(),
            path_err("stat", path, &e)
        )
    })?;
    if !md.is_file() {
        let f = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(format!("{f} is not a regular file"));
    }
    let mode = md.permissions().mode() | 0o111;
    if mode != md.permissions().mode() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| {
            format!(
                "could not add execute permission to {}: {}",
                path.display(),
                path_err("chmod", path, &e)
            )
        })?;
    }
    Ok(())
}

/// `CurrentBin`: `EvalSymlinks(current)/bin/<name>`; `current -> genesis` (relative) is
/// created first when `current` is missing, not a symlink, or dangling.
fn current_bin(cfg: &Config) -> Result<PathBuf, String> {
    let cur = cfg.root().join("current");
    if let Ok(md) = fs::symlink_metadata(&cur) {
        if md.file_type().is_symlink() {
            if let Ok(res) = fs::canonicalize(&cur) {
                return Ok(res.join("bin").join(&cfg.name));
            }
        }
    }
    std::os::unix::fs::symlink("genesis", &cur)
        .map_err(|e| format!("symlink genesis current: {}", errno_text(&e)))?;
    let gen = cfg.genesis_bin();
    fs::canonicalize(&gen).map_err(|e| path_err("lstat", &gen, &e))
}

// ---------------------------------------------------------------------------------------
// Upgrade plans (x/upgrade `types.Plan` through encoding/json)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq)]
struct Plan {
    name: String,
    height: i64,
    info: String,
    /// `time` as written; only the zero time is valid.
    time: Option<String>,
    /// `upgraded_client_state` was present and not null.
    client_state: bool,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `json.Unmarshal` into a `Plan`: field names match ignoring case, unknown ones are
/// ignored, `height` must be an integer JSON number.
fn plan_from_value(v: &Value) -> Result<Plan, String> {
    let mut p = Plan::default();
    let obj = match v {
        Value::Null => return Ok(p),
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type types.Plan",
                json_type(other)
            ))
        }
    };
    let field_err = |f: &str, t: &str, v: &Value| {
        format!(
            "json: cannot unmarshal {} into Go struct field Plan.{f} of type {t}",
            json_type(v)
        )
    };
    for (k, val) in obj {
        match k.to_lowercase().as_str() {
            "name" => match val {
                Value::String(s) => p.name = s.clone(),
                Value::Null => {}
                other => return Err(field_err("name", "string", other)),
            },
            "height" => match val {
                Value::Number(n) => {
                    p.height = n.as_i64().ok_or_else(|| {
                        format!("json: cannot unmarshal number {n} into Go struct field Plan.height of type int64")
                    })?
                }
                Value::Null => {}
                other => return Err(field_err("height", "int64", other)),
            },
            "info" => match val {
                Value::String(s) => p.info = s.clone(),
                Value::Null => {}
                other => return Err(field_err("info", "string", other)),
            },
            "time" => match val {
                Value::String(s) => p.time = Some(s.clone()),
                Value::Null => {}
                other => return Err(field_err("time", "time.Time", other)),
            },
            "upgraded_client_state" => p.client_state = !val.is_null(),
            _ => {}
        }
    }
    Ok(p)
}

fn unmarshal_plan(bytes: &[u8]) -> Result<Plan, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    plan_from_value(&v)
}

/// `Plan.ValidateBasic`.
fn validate_basic(p: &Plan) -> Result<(), String> {
    if p.time.as_deref().is_some_and(|t| t != ZERO_TIME) {
        return Err("time-based upgrades have been deprecated in the SDK: invalid request".into());
    }
    if p.client_state {
        return Err(
            "upgrade logic for IBC has been moved to the IBC module: invalid request".into(),
        );
    }
    if p.name.is_empty() {
        return Err("name cannot be empty: invalid request".into());
    }
    if p.height <= 0 {
        return Err("height must be greater than 0: invalid request".into());
    }
    Ok(())
}

/// `json.Marshal(plan)`: fields in the struct's order, `time` always, `info` if set.
fn plan_json(p: &Plan) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("quote");
    let info = if p.info.is_empty() {
        String::new()
    } else {
        format!(",\"info\":{}", q(&p.info))
    };
    format!(
        "{{\"name\":{},\"time\":\"{ZERO_TIME}\",\"height\":{}{info}}}",
        q(&p.name),
        p.height
    )
}

/// `parseUpgradeInfoFile`: unmarshal, `ValidateBasic`, lower-case the name unless asked not to.
fn parse_upgrade_info_file(path: &Path, disable_recase: bool) -> Result<Plan, String> {
    let bytes = fs::read(path).map_err(|e| path_err("open", path, &e))?;
    if bytes.is_empty() {
        return Err(format!("empty upgrade-info.json in {:?}", path.display()));
    }
    let mut p = unmarshal_plan(&bytes)?;
    validate_basic(&p).map_err(|e| {
        format!(
            "invalid upgrade-info.json content: {e}, got: {{{} {} {} {}}}",
            p.name, ZERO_TIME, p.height, p.info
        )
    })?;
    if !disable_recase {
        p.name = p.name.to_lowercase();
    }
    Ok(p)
}

/// `loadBatchUpgradeFile`: a missing file is an empty list; sorted by height.
fn load_batch(cfg: &Config) -> Result<Vec<Plan>, String> {
    let path = cfg.batch_path();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "error while reading {}: {}",
                path.display(),
                path_err("open", &path, &e)
            ))
        }
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let mut plans = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(plan_from_value)
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type []types.Plan",
                json_type(&other)
            ))
        }
    };
    plans.sort_by_key(|p| p.height);
    Ok(plans)
}

/// `os.WriteFile(path, data, mode)`: truncate in place, `mode` only when created.
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?
        .write_all(data)
}

/// `<bin> status --home <home>` with stdout and stderr combined, parsed as 1.7's
/// `checkHeight` does.
fn status_height(bin: &Path, home: &str) -> Result<i64, String> {
    let (rd, wr) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
    let wr2 = wr.try_clone().map_err(|e| format!("dup: {e}"))?;
    let mut child = Command::new(bin)
        .args(["status", "--home", home])
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::from(wr2))
        .spawn()
        .map_err(|e| format!("fork/exec {}: {}", bin.display(), errno_text(&e)))?;
    let mut out = Vec::new();
    let _ = fs::File::from(rd).read_to_end(&mut out);
    let st = child.wait().map_err(|e| format!("wait: {e}"))?;
    if !st.success() {
        return Err(exit_text(&st));
    }
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    let h = |key: &str| -> Result<Option<String>, String> {
        match v.get(key).and_then(|s| s.get("latest_block_height")) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "json: cannot unmarshal {} into Go struct field .{key}.latest_block_height of type string",
                json_type(other)
            )),
        }
    };
    let text = match (h("sync_info")?, h("SyncInfo")?) {
        (Some(s), _) if !s.is_empty() => s,
        (_, Some(s)) if !s.is_empty() => s,
        _ => return Err("latest block height is empty".into()),
    };
    text.parse()
        .map_err(|_| format!("strconv.ParseInt: parsing {text:?}: invalid syntax"))
}

// ---------------------------------------------------------------------------------------
// The node process, signals
// ---------------------------------------------------------------------------------------

/// A launched node. `reaped` is set under the lock when the waiter reaps it, so a signal
/// sent under the same lock never reaches a reaped (possibly reused) pid; Go reports
/// `os: process already finished` then.
struct NodeProc {
    pid: Pid,
    reaped: Mutex<bool>,
}

impl NodeProc {
    fn signal(&self, sig: Signal) -> Result<(), String> {
        let reaped = self.reaped.lock().expect("node lock");
        if *reaped {
            return Err("os: process already finished".into());
        }
        signal::kill(self.pid, sig).map_err(|e| e.desc().to_lowercase())
    }
}

/// Waits for `child` without reaping it, then reaps it under the node lock, then waits for
/// the output pump (Go's `cmd.Wait` waits for its copying goroutines).
fn wait_node(
    node: &NodeProc,
    mut child: process::Child,
    pump: Option<JoinHandle<()>>,
) -> ExitStatus {
    loop {
        match waitid(
            Id::Pid(node.pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => die(&format!("waitid: {e}")),
        }
    }
    let mut reaped = node.reaped.lock().expect("node lock");
    let st = child.wait().unwrap_or_else(|e| die(&format!("wait: {e}")));
    *reaped = true;
    drop(reaped);
    if let Some(p) = pump {
        let _ = p.join();
    }
    st
}

/// A launch's batch watcher, cancellable: `stop` is 1.7's `cancel(); wg.Wait()`.
struct BatchHandle {
    cancel: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl BatchHandle {
    fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let t = self.thread.lock().expect("batch lock").take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// One launch's signal goroutine (process.go `Run`).
struct Listener {
    node: Arc<NodeProc>,
    bin: PathBuf,
    batch: Arc<BatchHandle>,
    log: Logger,
    /// It took its one signal.
    fired: AtomicBool,
    /// Still registered with `signal.Notify` (1.7 never unregisters; see the header).
    registered: AtomicBool,
    /// Its launch ended in an upgrade: a leaked goroutine.
    leaked: AtomicBool,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    V17 { leak: bool },
    Legacy,
}

static MODE: OnceLock<Mode> = OnceLock::new();
/// Write end of the self-pipe; the signal handler only reads this (an atomic load once set).
static SIGNAL_PIPE: OnceLock<OwnedFd> = OnceLock::new();
static LISTENERS: Mutex<Vec<Arc<Listener>>> = Mutex::new(Vec::new());
/// Legacy modes: the running node (None between exit and the next start).
static LEGACY_NODE: Mutex<Option<Arc<NodeProc>>> = Mutex::new(None);
/// Legacy modes: a TERM/QUIT arrived, start no node any more.
static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: a lock-free OnceLock read and one raw write(2). rustix issues the
    // syscall directly, so errno of the interrupted code is not disturbed.
    if let Some(fd) = SIGNAL_PIPE.get() {
        let _ = rustix::io::write(fd, &[sig as u8]);
    }
}

/// `signal.Notify(sigs, SIGQUIT, SIGTERM)`: handlers for those two only (INT and HUP keep
/// their disposition: default, or ignored if we were started with them ignored, as Go
/// does), and the dispatcher thread.
fn install_signals(mode: Mode) {
    let _ = MODE.set(mode);
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .unwrap_or_else(|e| die(&format!("pipe: {e}")));
    SIGNAL_PIPE.set(wr).expect("signal pipe set once");
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGQUIT] {
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
            if let Ok(sig) = Signal::try_from(i32::from(b[0])) {
                dispatch(sig);
            }
        }
    });
}

fn dispatch(sig: Signal) {
    let mode = *MODE.get().expect("mode");
    if mode == Mode::Legacy {
        STOPPING.store(true, Ordering::SeqCst);
        if let Some(node) = LEGACY_NODE.lock().expect("node lock").as_ref() {
            say_line!(
                stderr,
                "cosmovisor-standin: forwarding {sig} to node pid={}",
                node.pid
            );
            let _ = node.signal(sig);
        }
        return;
    }
    let registered: Vec<Arc<Listener>> = LISTENERS
        .lock()
        .expect("listeners")
        .iter()
        .filter(|l| l.registered.load(Ordering::SeqCst))
        .cloned()
        .collect();
    if registered.is_empty() {
        go_default_action(sig);
    }
    let waiting: Vec<Arc<Listener>> = registered
        .into_iter()
        .filter(|l| !l.fired.swap(true, Ordering::SeqCst))
        .collect();
    // With the leak switch on, the oldest leaked goroutine wins the race (see the header).
    if let Some(old) = waiting.iter().find(|l| l.leaked.load(Ordering::SeqCst)) {
        forward(old, sig);
        return;
    }
    for l in waiting {
        thread::spawn(move || forward(&l, sig));
    }
}

/// The signal goroutine: `cancel(); wg.Wait(); cmd.Process.Signal(sig)`, and on error
/// `terminated` and `os.Exit(1)`.
fn forward(l: &Listener, sig: Signal) {
    l.batch.stop();
    if !*l.node.reaped.lock().expect("node lock") {
        say_line!(
            stderr,
            "cosmovisor-standin: forwarding {sig} to node pid={}",
            l.node.pid
        );
    }
    if let Err(e) = l.node.signal(sig) {
        l.log.error(
            "terminated",
            &[("error", e), ("bin", l.bin.display().to_string())],
        );
        let _ = std::io::stdout().flush();
        process::exit(1);
    }
}

/// What Go does with a SIGTERM/SIGQUIT that no `signal.Notify` channel takes.
fn go_default_action(sig: Signal) -> ! {
    let _ = std::io::stdout().flush();
    if sig == Signal::SIGQUIT {
        // The Go runtime's own SIGQUIT: a goroutine dump, exit 2.
        say_line!(
            stderr,
            "SIGQUIT: quit\n\ngoroutine 1 [running]:\n(cosmovisor-standin: no Go stack)"
        );
        process::exit(2);
    }
    // SAFETY: restoring the default disposition of one signal; no handler runs after it.
    unsafe {
        let _ = signal::signal(sig, SigHandler::SigDfl);
    }
    let _ = signal::raise(sig);
    process::exit(128 + sig as i32);
}

fn die(msg: &str) -> ! {
    say_line!(stderr, "cosmovisor-standin: {msg}");
    process::exit(2);
}

// ---------------------------------------------------------------------------------------
// The file watcher (scanner.go)
// ---------------------------------------------------------------------------------------

struct FileWatcher {
    home: String,
    filename: PathBuf,
    /// The binary resolved when the launcher was created (`fw.currentBin`).
    current_bin: PathBuf,
    current_info: Plan,
    last_mod: Option<SystemTime>,
    needs_update: bool,
    initialized: bool,
    disable_recase: bool,
}

impl FileWatcher {
    fn stat(&self) -> Option<fs::Metadata> {
        match fs::metadata(&self.filename) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => go_panic(&format!(
                "failed to stat upgrade info file: {}",
                path_err("stat", &self.filename, &e)
            )),
        }
    }

    /// `CheckUpdate`.
    fn check_update(&mut self, current: &Plan) -> bool {
        if self.needs_update {
            return true;
        }
        let Some(mut md) = self.stat() else {
            return false;
        };
        // #21086: wait for a write in progress. 1.7's loop breaks on the first re-stat
        // that is still empty, and keeps re-statting (up to 10 times) one that is not.
        if md.len() == 0 {
            for _ in 0..10 {
                thread::sleep(Duration::from_millis(2));
                match self.stat() {
                    Some(m) => md = m,
                    None => return false,
                }
                if md.len() == 0 {
                    break;
                }
            }
        }
        if md.len() == 0 {
            return false;
        }
        let mtime = md.modified().unwrap_or(UNIX_EPOCH);
        if self.last_mod.is_some_and(|last| mtime <= last) {
            return false;
        }
        let info = parse_upgrade_info_file(&self.filename, self.disable_recase)
            .unwrap_or_else(|e| go_panic(&format!("failed to parse upgrade info file: {e}")));
        // #22528: only when `status` works and the chain has reached the height.
        match status_height(&self.current_bin, &self.home) {
            Ok(h) if h >= info.height => {}
            _ => return false,
        }
        if !self.initialized {
            self.initialized = true;
            self.current_info = info.clone();
            self.last_mod = Some(mtime);
            if !current.name.eq_ignore_ascii_case(&self.current_info.name) {
                self.needs_update = true;
                return true;
            }
        }
        if info.height > self.current_info.height {
            self.current_info = info;
            self.last_mod = Some(mtime);
            self.needs_update = true;
            return true;
        }
        false
    }
}

enum Ev {
    Upgrade,
    Exited(ExitStatus),
}

/// `MonitorUpdate`: a ticker goroutine calling `CheckUpdate`; drop the returned sender to
/// stop it (`fw.Stop()`).
fn monitor_update(
    fw: Arc<Mutex<FileWatcher>>,
    interval: Duration,
    current: Plan,
    tx: mpsc::Sender<Ev>,
) -> mpsc::Sender<()> {
    fw.lock().expect("fw").needs_update = false;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let mut next = Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match stop_rx.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if fw.lock().expect("fw").check_update(&current) {
                let _ = tx.send(Ev::Upgrade);
                return;
            }
            // A Go ticker keeps its grid and buffers one tick: one due during a slow check
            // fires at once, the others are dropped.
            let now = Instant::now();
            next += interval;
            while next + interval <= now {
                next += interval;
            }
        }
    });
    stop_tx
}

// ---------------------------------------------------------------------------------------
// The batch watcher (process.go `BatchUpgradeWatcher`)
// ---------------------------------------------------------------------------------------

/// What changes when the batch file is written (the stand-in's reload trigger).
fn batch_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()))
}

fn batch_watcher(cfg: Arc<Config>, log: Logger, bin: PathBuf, cancel: Arc<AtomicBool>) {
    let batch = cfg.batch_path();
    let mut infos = load_batch(&cfg).unwrap_or_else(|e| {
        log.warn("failed to load batch upgrade file", &[("error", e)]);
        Vec::new()
    });
    let mut seen = batch_stamp(&batch);
    log.info("starting the batch watcher loop", &[]);
    let mut prev: i64 = -1;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return;
        }
        let stamp = batch_stamp(&batch);
        if stamp != seen {
            seen = stamp;
            match load_batch(&cfg) {
                Ok(v) => infos = v,
                Err(e) => {
                    log.warn("failed to load batch upgrade file", &[("error", e)]);
                    infos = Vec::new();
                    continue;
                }
            }
        }
        if infos.is_empty() {
            thread::sleep(BATCH_STEP);
            continue;
        }
        let h = match status_height(&bin, &cfg.home) {
            Ok(h) => h,
            Err(e) => {
                log.warn("error getting latest block", &[("error", e)]);
                thread::sleep(BATCH_STEP);
                continue;
            }
        };
        let upcoming = infos[0].height;
        if h > prev && h < upcoming {
            if let Err(e) = write_file(
                &cfg.upgrade_info_path(),
                plan_json(&infos[0]).as_bytes(),
                0o600,
            ) {
                log.warn(
                    "error writing upgrade-info.json",
                    &[("error", path_err("open", &cfg.upgrade_info_path(), &e))],
                );
                continue;
            }
            infos.remove(0);
            let rest = format!(
                "[{}]",
                infos.iter().map(plan_json).collect::<Vec<_>>().join(",")
            );
            if let Err(e) = write_file(&batch, rest.as_bytes(), 0o600) {
                log.warn(
                    "error writing upgrade-info.json.batch",
                    &[("error", path_err("open", &batch, &e))],
                );
                if let Err(e) = fs::remove_file(&batch) {
                    if e.kind() != ErrorKind::NotFound {
                        log.warn(
                            "error removing upgrade-info.json.batch",
                            &[("error", path_err("remove", &batch, &e))],
                        );
                        return;
                    }
                }
                continue;
            }
            prev = upcoming;
        }
        thread::sleep(BATCH_STEP);
    }
}

// ---------------------------------------------------------------------------------------
// The launcher (process.go, upgrade.go, cmd run.go)
// ---------------------------------------------------------------------------------------

struct Launcher {
    cfg: Arc<Config>,
    log: Logger,
    fw: Arc<Mutex<FileWatcher>>,
    /// `cfg.currentUpgrade`, the cache behind `UpgradeInfo()`.
    current_upgrade: Option<Plan>,
    /// Where the node's stdout goes: inherited, or a buffer (`version -o json`).
    capture: Option<Arc<Mutex<Vec<u8>>>>,
    leak: bool,
    starts: u64,
}

impl Launcher {
    /// `NewLauncher` → `newUpgradeFileWatcher`.
    fn new(
        cfg: Arc<Config>,
        log: Logger,
        capture: Option<Arc<Mutex<Vec<u8>>>>,
    ) -> Result<Launcher, Errs> {
        let filename = cfg.upgrade_info_path();
        let dir = filename.parent().expect("data dir").to_path_buf();
        match fs::metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(err1(format!(
                    "invalid path: {} must be an existing directory: <nil>",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(err1(format!(
                    "invalid path: {} must be an existing directory: {}",
                    dir.display(),
                    path_err("stat", &dir, &e)
                )))
            }
        }
        let bin = current_bin(&cfg)
            .map_err(|e| err1(format!("error creating symlink to genesis: {e}")))?;
        if cfg.poll_interval <= 0 {
            go_panic("non-positive interval for NewTicker");
        }
        let fw = FileWatcher {
            home: cfg.home.clone(),
            filename,
            current_bin: bin,
            current_info: Plan::default(),
            last_mod: None,
            needs_update: false,
            initialized: false,
            disable_recase: cfg.disable_recase,
        };
        Ok(Launcher {
            cfg,
            log,
            fw: Arc::new(Mutex::new(fw)),
            current_upgrade: None,
            capture,
            leak: std::env::var("STANDIN_LEAKED_SIGNAL_EXIT").is_ok_and(|v| v == "1"),
            starts: 0,
        })
    }

    /// `cfg.UpgradeInfo()`: the cache, else `current/upgrade-info.json`; on error the cache
    /// becomes `_` and this call sees an empty plan (`WaitForUpgradeOrExit`).
    fn upgrade_info(&mut self) -> Plan {
        if let Some(p) = &self.current_upgrade {
            if !p.name.is_empty() {
                return p.clone();
            }
        }
        let path = self.cfg.root().join("current/upgrade-info.json");
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| unmarshal_plan(&b))
        {
            Ok(p) => {
                self.current_upgrade = Some(p.clone());
                p
            }
            Err(_) => {
                self.current_upgrade = Some(Plan {
                    name: "_".into(),
                    ..Plan::default()
                });
                Plan::default()
            }
        }
    }

    /// One `Run`: launch, watch, and on an upgrade do its steps. `Ok(true)`: upgraded.
    fn run_once(&mut self, args: &[String]) -> Result<bool, Errs> {
        let bin = current_bin(&self.cfg)
            .map_err(|e| err1(format!("error creating symlink to genesis: {e}")))?;
        ensure_binary(&bin).map_err(|e| err1(format!("current binary is invalid: {e}")))?;
        self.log.info(
            "running app",
            &[
                ("path", bin.display().to_string()),
                ("args", serde_json::to_string(args).expect("args")),
            ],
        );
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        if self.capture.is_some() {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| {
            err1(format!(
                "launching process {} {} failed: fork/exec {}: {}",
                bin.display(),
                args.join(" "),
                bin.display(),
                errno_text(&e)
            ))
        })?;
        let pump = match (&self.capture, child.stdout.take()) {
            (Some(buf), Some(mut out)) => {
                let buf = buf.clone();
                Some(thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = out.read_to_end(&mut v);
                    buf.lock().expect("buffer").extend_from_slice(&v);
                }))
            }
            _ => None,
        };
        let node = Arc::new(NodeProc {
            pid: Pid::from_raw(child.id() as i32),
            reaped: Mutex::new(false),
        });
        self.starts += 1;
        say_line!(
            stdout,
            "cosmovisor-standin: starting node pid={} start={}",
            node.pid,
            self.starts
        );
        let _ = std::io::stdout().flush();

        let (tx, rx) = mpsc::channel::<Ev>();
        {
            let node = node.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                let st = wait_node(&node, child, pump);
                let _ = tx.send(Ev::Exited(st));
            });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let batch = Arc::new(BatchHandle {
            cancel: cancel.clone(),
            thread: Mutex::new(None),
        });
        {
            let (cfg, log, bin) = (self.cfg.clone(), self.log.clone(), bin.clone());
            let t = thread::spawn(move || batch_watcher(cfg, log, bin, cancel));
            *batch.thread.lock().expect("batch lock") = Some(t);
        }
        let listener = Arc::new(Listener {
            node: node.clone(),
            bin: bin.clone(),
            batch: batch.clone(),
            log: self.log.clone(),
            fired: AtomicBool::new(false),
            registered: AtomicBool::new(true),
            leaked: AtomicBool::new(false),
        });
        LISTENERS.lock().expect("listeners").push(listener.clone());

        if !self.wait_for_upgrade_or_exit(&node, &rx, tx)? {
            return Ok(false);
        }
        let info = self.fw.lock().expect("fw").current_info.clone();
        if is_skip_upgrade_height(args, info.height) {
            batch.stop();
            return Ok(false);
        }
        if self.cfg.restart_delay > 0 {
            thread::sleep(nanos(self.cfg.restart_delay));
        }
        self.do_backup()?;
        self.do_custom_preupgrade()?;
        self.upgrade_binary(&info)?;
        self.do_pre_upgrade()?;
        // The launch's signal goroutine outlives it in 1.7; without the switch it ends here.
        listener.leaked.store(true, Ordering::SeqCst);
        if !self.leak {
            listener.registered.store(false, Ordering::SeqCst);
        }
        Ok(true)
    }

    /// `WaitForUpgradeOrExit`: `Ok(true)` when an upgrade is due (the node is gone or
    /// being killed), `Ok(false)` after a clean exit, the exit as an error otherwise.
    fn wait_for_upgrade_or_exit(
        &mut self,
        node: &NodeProc,
        rx: &mpsc::Receiver<Ev>,
        tx: mpsc::Sender<Ev>,
    ) -> Result<bool, Errs> {
        let current = self.upgrade_info();
        let stop = monitor_update(
            self.fw.clone(),
            nanos(self.cfg.poll_interval),
            current.clone(),
            tx,
        );
        match rx.recv().expect("event") {
            Ev::Upgrade => {
                self.log
                    .info("daemon shutting down in an attempt to restart", &[]);
                if self.cfg.shutdown_grace > 0 {
                    self.log
                        .info("sent interrupt to app, waiting for exit", &[]);
                    let _ = node.signal(Signal::SIGINT);
                    let deadline = Instant::now() + nanos(self.cfg.shutdown_grace);
                    loop {
                        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                            Ok(Ev::Exited(_)) => {
                                self.log.info("app exited normally", &[]);
                                break;
                            }
                            Ok(Ev::Upgrade) => continue,
                            Err(_) => {
                                self.log
                                    .info("DAEMON_SHUTDOWN_GRACE exceeded, killing app", &[]);
                                let _ = node.signal(Signal::SIGKILL);
                                break;
                            }
                        }
                    }
                } else {
                    let _ = node.signal(Signal::SIGKILL);
                }
                // Not waited for: the waiter thread reaps it whenever it goes.
                Ok(true)
            }
            Ev::Exited(st) => {
                drop(stop);
                if st.success() {
                    return Ok(false);
                }
                // x/upgrade may kill the app before the poll saw the file: check once more.
                if !self.fw.lock().expect("fw").check_update(&current) {
                    return Err(err1(exit_text(&st)));
                }
                Ok(true)
            }
        }
    }

    /// `doBackup`.
    fn do_backup(&self) -> Result<(), Errs> {
        if self.cfg.skip_backup {
            return Ok(());
        }
        let path = self.cfg.upgrade_info_path();
        let bytes = fs::read(&path).map_err(|e| {
            err1(format!(
                "error while reading upgrade-info.json: {}",
                path_err("open", &path, &e)
            ))
        })?;
        let info = unmarshal_plan(&bytes).map_err(err1)?;
        if info.name.is_empty() {
            return Err(err1("upgrade-info.json is empty"));
        }
        let tm = local_now();
        let ymd = format!("{}-{}-{}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        let dst = Path::new(&self.cfg.backup_dir).join(format!("data-backup-{ymd}"));
        let started = Instant::now();
        self.log.info(
            "starting to take backup of data directory",
            &[("backup start time", local_time_text())],
        );
        copy_tree(&Path::new(&self.cfg.home).join("data"), &dst)
            .map_err(|e| err1(format!("error while taking data backup: {e}")))?;
        if let Some(ms) = std::env::var("STANDIN_BACKUP_EXTRA_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
        }
        self.log.info(
            "backup completed",
            &[
                ("backup saved at", dst.display().to_string()),
                ("backup completion time", local_time_text()),
                (
                    "time taken to complete backup",
                    go_duration(started.elapsed().as_nanos() as i64),
                ),
            ],
        );
        Ok(())
    }

    /// `doCustomPreUpgrade`.
    fn do_custom_preupgrade(&self) -> Result<(), Errs> {
        if self.cfg.custom_preupgrade.is_empty() {
            return Ok(());
        }
        let path = self.cfg.upgrade_info_path();
        let bytes = fs::read(&path).map_err(|e| {
            err1(format!(
                "error while reading upgrade-info.json: {}",
                path_err("open", &path, &e)
            ))
        })?;
        let plan = unmarshal_plan(&bytes).map_err(err1)?;
        validate_basic(&plan).map_err(|e| err1(format!("invalid upgrade plan: {e}")))?;
        let file = self.cfg.root().join(&self.cfg.custom_preupgrade);
        self.log.info(
            "looking for COSMOVISOR_CUSTOM_PREUPGRADE file",
            &[("file", file.display().to_string())],
        );
        let md = match fs::metadata(&file) {
            Ok(md) => md,
            Err(e) => {
                self.log.error(
                    "COSMOVISOR_CUSTOM_PREUPGRADE file missing",
                    &[("file", file.display().to_string())],
                );
                return Err(err1(path_err("stat", &file, &e)));
            }
        };
        if !md.is_file() {
            let f = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(err1(format!(
                "COSMOVISOR_CUSTOM_PREUPGRADE: {f} is not a regular file"
            )));
        }
        let old = md.permissions().mode() & 0o7777;
        if old | 0o100 != old
            && fs::set_permissions(&file, fs::Permissions::from_mode(old | 0o100)).is_err()
        {
            self.log.info(
                "COSMOVISOR_CUSTOM_PREUPGRADE could not add execute permission",
                &[],
            );
            return Err(err1(
                "COSMOVISOR_CUSTOM_PREUPGRADE could not add execute permission",
            ));
        }
        let height = plan.height.to_string();
        let out = Command::new(&file)
            .args([plan.name.as_str(), height.as_str()])
            .current_dir(&self.cfg.home)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| err1(format!("fork/exec {}: {}", file.display(), errno_text(&e))))?;
        if !out.status.success() {
            return Err(err1(exit_text(&out.status)));
        }
        self.log.info(
            "COSMOVISOR_CUSTOM_PREUPGRADE result",
            &[
                ("command", file.display().to_string()),
                ("argv1", plan.name.clone()),
                ("argv2", height),
                ("result", String::from_utf8_lossy(&out.stdout).into_owned()),
            ],
        );
        Ok(())
    }

    /// `UpgradeBinary` (v1.7.1+: no `ValidateFull`).
    fn upgrade_binary(&mut self, p: &Plan) -> Result<(), Errs> {
        match ensure_binary(&self.cfg.upgrade_bin(&p.name)) {
            Ok(()) => self.set_current_upgrade(p),
            Err(e) => {
                if !self.cfg.allow_download {
                    return Err(err1(format!(
                        "binary not present, downloading disabled: {e}"
                    )));
                }
                if fs::metadata(self.cfg.upgrade_dir(&p.name)).is_ok() {
                    return Err(err1("upgrade dir already exists, won't overwrite"));
                }
                self.log.error(
                    "cosmovisor-standin cannot download upgrade binaries (not modelled)",
                    &[("upgrade", p.name.clone())],
                );
                Err(err1(
                    "cannot download binary. the cosmovisor stand-in does not download",
                ))
            }
        }
    }

    /// `SetCurrentUpgrade`: not atomic (remove, then symlink), relative target.
    fn set_current_upgrade(&mut self, p: &Plan) -> Result<(), Errs> {
        ensure_binary(&self.cfg.upgrade_bin(&p.name)).map_err(err1)?;
        let rel = Path::new("upgrades").join(path_escape(&p.name));
        let cur = self.cfg.root().join("current");
        if fs::metadata(&cur).is_ok() {
            fs::remove_file(&cur).map_err(|e| {
                err1(format!(
                    "failed to remove existing link: {}",
                    path_err("remove", &cur, &e)
                ))
            })?;
        }
        std::os::unix::fs::symlink(&rel, &cur).map_err(|e| {
            err1(format!(
                "creating current symlink: symlink {} current: {}",
                rel.display(),
                errno_text(&e)
            ))
        })?;
        self.current_upgrade = Some(p.clone());
        let info = self.cfg.root().join(&rel).join("upgrade-info.json");
        fs::write(&info, plan_json(p)).map_err(|e| err1(path_err("open", &info, &e)))?;
        say_line!(stdout, "cosmovisor-standin: applied upgrade {}", p.name);
        let _ = std::io::stdout().flush();
        Ok(())
    }

    /// `doPreUpgrade`: `<new binary> pre-upgrade`, by exit code.
    fn do_pre_upgrade(&self) -> Result<(), Errs> {
        let max = self.cfg.preupgrade_max_retries;
        let mut counter: i64 = 0;
        loop {
            if counter > max {
                return Err(err1(format!(
                    "pre-upgrade command failed. reached max attempt of retries - {max}"
                )));
            }
            let out = current_bin(&self.cfg).and_then(|bin| {
                Command::new(&bin)
                    .arg("pre-upgrade")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("fork/exec {}: {}", bin.display(), errno_text(&e)))
            });
            match out {
                Ok(o) if o.status.success() => {
                    self.log.info(
                        "pre-upgrade result",
                        &[("result", String::from_utf8_lossy(&o.stdout).into_owned())],
                    );
                }
                Ok(o) => {
                    counter += 1;
                    match o.status.code() {
                        Some(1) => {
                            self.log.info(
                                "pre-upgrade command does not exist. continuing the upgrade.",
                                &[],
                            );
                            return Ok(());
                        }
                        Some(30) => {
                            return Err(err1(format!(
                                "pre-upgrade command failed : {}",
                                exit_text(&o.status)
                            )))
                        }
                        Some(31) => {
                            self.log.error(
                                "pre-upgrade command failed. retrying",
                                &[
                                    ("error", exit_text(&o.status)),
                                    ("attempt", counter.to_string()),
                                ],
                            );
                            continue;
                        }
                        // Any other failure falls through to "successful" in 1.7.
                        _ => {}
                    }
                }
                // Not an exit status (it could not run): 1.7 counts it as success too.
                Err(_) => {}
            }
            self.log
                .info("pre-upgrade successful. continuing the upgrade.", &[]);
            return Ok(());
        }
    }
}

/// `IsSkipUpgradeHeight`: heights after `--unsafe-skip-upgrades`, up to the next flag.
fn is_skip_upgrade_height(args: &[String], height: i64) -> bool {
    let Some(i) = args.iter().position(|a| a == "--unsafe-skip-upgrades") else {
        return false;
    };
    args[i + 1..]
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse::<i64>().ok())
        .any(|h| h == height)
}

/// otiai10/copy `Copy` with its defaults: directories merged, files overwritten, modes
/// kept, symlinks copied as symlinks, FIFOs recreated (never opened).
fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    let md = fs::symlink_metadata(src).map_err(|e| path_err("lstat", src, &e))?;
    let ft = md.file_type();
    let mode = md.permissions().mode() & 0o7777;
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| path_err("readlink", src, &e))?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| {
            format!(
                "symlink {} {}: {}",
                target.display(),
                dst.display(),
                errno_text(&e)
            )
        })
    } else if ft.is_dir() {
        fs::create_dir_all(dst).map_err(|e| path_err("mkdir", dst, &e))?;
        for entry in fs::read_dir(src).map_err(|e| path_err("open", src, &e))? {
            let entry = entry.map_err(|e| path_err("readdirent", src, &e))?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| path_err("chmod", dst, &e))
    } else if ft.is_fifo() {
        nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(mode))
            .map_err(|e| format!("mkfifo {}: {}", dst.display(), e.desc().to_lowercase()))
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(|e| path_err("open", dst, &e))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| path_err("chmod", dst, &e))
    } else {
        Err(format!(
            "{}: the stand-in copies no sockets or devices",
            src.display()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Subcommands
// ---------------------------------------------------------------------------------------

/// `parseCosmovisorConfig` (cmd run.go).
fn parse_cosmovisor_config(args: &[String]) -> Result<(String, Vec<String>), Errs> {
    let mut args = args.to_vec();
    let Some(i) = args.iter().position(|a| {
        a.eq_ignore_ascii_case("--cosmovisor-config")
            || a.eq_ignore_ascii_case("-cosmovisor-config")
    }) else {
        return Ok((String::new(), args));
    };
    if i + 1 >= args.len() {
        return Err(err1(
            "failed to parse cosmovisor config: --cosmovisor-config requires an argument",
        ));
    }
    let path = args[i + 1].clone();
    args.drain(i..i + 2);
    Ok((path, args))
}

fn cmd_run(args: &[String]) -> Result<(), Errs> {
    let (cfg_path, args) = parse_cosmovisor_config(args)?;
    run(&cfg_path, &args, None)
}

/// cmd run.go `run`: configuration, chdir, launcher, the relaunch loop.
fn run(cfg_path: &str, args: &[String], capture: Option<Arc<Mutex<Vec<u8>>>>) -> Result<(), Errs> {
    let cfg = Arc::new(Config::from_file(cfg_path)?);
    std::env::set_current_dir(cfg.root()).map_err(|e| err1(path_err("chdir", &cfg.root(), &e)))?;
    let sink = match &capture {
        Some(b) => Sink::Buf(b.clone()),
        None => Sink::Stdout,
    };
    let log = cfg.logger(sink);
    let mut launcher = Launcher::new(cfg.clone(), log.clone(), capture)?;
    let instant = std::env::var("STANDIN_INSTANT_UPGRADE").is_ok_and(|v| v == "1");
    let always = std::env::var("STANDIN_RESTART_ALWAYS").is_ok_and(|v| v == "1");
    if instant || always {
        install_signals(Mode::Legacy);
        return run_legacy(&cfg, &log, args, instant, always);
    }
    install_signals(Mode::V17 {
        leak: launcher.leak,
    });
    let mut upgraded = launcher.run_once(args)?;
    while cfg.restart_after_upgrade && upgraded {
        log.info(
            "upgrade detected, relaunching",
            &[("app", cfg.name.clone())],
        );
        upgraded = launcher.run_once(args)?;
    }
    if upgraded {
        log.info(
            "upgrade detected, DAEMON_RESTART_AFTER_UPGRADE is off. Verify new upgrade and start cosmovisor again.",
            &[],
        );
    }
    Ok(())
}

/// The test modes `STANDIN_INSTANT_UPGRADE` / `STANDIN_RESTART_ALWAYS` (see the header).
fn run_legacy(
    cfg: &Config,
    log: &Logger,
    args: &[String],
    instant: bool,
    always: bool,
) -> Result<(), Errs> {
    let max_starts: u64 = match std::env::var("STANDIN_MAX_STARTS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| die(&format!("STANDIN_MAX_STARTS={v:?} is not a number"))),
        Err(_) => 1000,
    };
    let root = cfg.root();
    let mut applied = fs::read_link(root.join("current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut starts: u64 = 0;
    loop {
        starts += 1;
        let bin = current_bin(cfg)
            .map_err(|e| err1(format!("error creating symlink to genesis: {e}")))?;
        log.info(
            "running app",
            &[
                ("path", bin.display().to_string()),
                ("args", serde_json::to_string(args).expect("args")),
            ],
        );
        let mut guard = LEGACY_NODE.lock().expect("node lock");
        if STOPPING.load(Ordering::SeqCst) {
            // A TERM/QUIT arrived while no node was running: start no other.
            return Ok(());
        }
        let child = Command::new(&bin).args(args).spawn().map_err(|e| {
            err1(format!(
                "launching process {} {} failed: fork/exec {}: {}",
                bin.display(),
                args.join(" "),
                bin.display(),
                errno_text(&e)
            ))
        })?;
        let node = Arc::new(NodeProc {
            pid: Pid::from_raw(child.id() as i32),
            reaped: Mutex::new(false),
        });
        *guard = Some(node.clone());
        drop(guard);
        say_line!(
            stdout,
            "cosmovisor-standin: starting node pid={} start={starts}",
            node.pid
        );
        let _ = std::io::stdout().flush();
        let st = wait_node(&node, child, None);
        *LEGACY_NODE.lock().expect("node lock") = None;

        let end = || {
            if st.success() {
                Ok(())
            } else {
                Err(err1(exit_text(&st)))
            }
        };
        if STOPPING.load(Ordering::SeqCst) {
            return end();
        }
        let restart = match instant.then(|| upgrade_marker(cfg)).flatten() {
            Some(m) if Some(&m) != applied.as_ref() => {
                apply_upgrade_atomically(&root, &cfg.name, &m);
                applied = Some(m);
                true
            }
            _ => always,
        };
        if !restart {
            return end();
        }
        if starts >= max_starts {
            say_line!(
                stderr,
                "cosmovisor-standin: STANDIN_MAX_STARTS={max_starts} reached; not restarting"
            );
            return end();
        }
    }
}

/// Legacy: the `name` in `data/upgrade-info.json`, if it exists and parses (no checks).
fn upgrade_marker(cfg: &Config) -> Option<String> {
    let path = cfg.upgrade_info_path();
    let text = fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<Value>(&text) {
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

/// Legacy: points `current` at `upgrades/<name>` with a temporary symlink renamed over it
/// (atomic), or warns and keeps `current` when the upgrade binary is absent.
fn apply_upgrade_atomically(root: &Path, daemon: &str, name: &str) {
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

/// `version` (version.go@bc47513): cobra's `cmd.Printf`/`Println` write to stderr.
fn cmd_version(p: &Parsed) -> Result<(), Errs> {
    let only = p.bool("cosmovisor-only");
    let fail = |e: Errs| err1(format!("failed to run version command: {}", e.join("\n")));
    if p.str("output") == Some("json") {
        if only {
            say_line!(stderr, "{{\"cosmovisor_version\":\"{VERSION}\"}}");
            return Ok(());
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let args: Vec<String> = ["version", "--long", "--output", "json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run("", &args, Some(buf.clone())).map_err(fail)?;
        let text = String::from_utf8_lossy(&buf.lock().expect("buffer")).into_owned();
        // json.Marshal validates and compacts the app's raw message.
        let app = compact_json(&text).map_err(|e| {
            err1(format!(
                "can't print version output, expected valid json from APP, got: {text} - json: error calling MarshalJSON for type json.RawMessage: {e}"
            ))
        })?;
        say_line!(
            stderr,
            "{{\"cosmovisor_version\":\"{VERSION}\",\"app_version\":{app}}}"
        );
        return Ok(());
    }
    say_line!(stderr, "cosmovisor version: {VERSION}");
    if only {
        return Ok(());
    }
    let mut args = vec!["version".to_string()];
    args.extend(p.args.iter().cloned());
    run("", &args, None).map_err(fail)
}

/// Validates `text` as one JSON value and removes the whitespace outside strings (key order
/// and number spelling kept, as Go's `json.Compact`).
fn compact_json(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let (mut in_str, mut esc) = (false, false);
    for c in text.chars() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    Ok(out)
}

/// `init <path>` (init.go `InitializeCosmovisor`).
fn cmd_init(exe: &str) -> Result<(), Errs> {
    if exe.is_empty() {
        return Err(err1("no <path to executable> provided"));
    }
    let exe_path = Path::new(exe);
    match fs::metadata(exe_path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(err1(format!(
                "executable file not found: {}",
                path_err("stat", exe_path, &e)
            )))
        }
        Err(e) => {
            return Err(err1(format!(
                "could not stat executable: {}",
                path_err("stat", exe_path, &e)
            )))
        }
        Ok(md) if md.is_dir() => {
            return Err(err1("invalid path to executable: must not be a directory"))
        }
        Ok(_) => {}
    }
    let cfg = Config::from_env(true)?;
    let mut errs = Errs::new();
    if cfg.name.is_empty() {
        errs.push("DAEMON_NAME is not set".into());
    }
    if cfg.home.is_empty() {
        errs.push("DAEMON_HOME is not set".into());
    } else if !Path::new(&cfg.home).is_absolute() {
        errs.push("DAEMON_HOME must be an absolute path".into());
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let log = cfg.logger(Sink::Stdout);
    log.info("checking on the genesis/bin directory", &[]);
    let gen_bin = cfg.genesis_bin();
    let gen_dir = gen_bin.parent().expect("genesis/bin").to_path_buf();
    match fs::metadata(&gen_dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            log.info(
                &format!(
                    "creating directory (and any parents): {:?}",
                    gen_dir.display().to_string()
                ),
                &[],
            );
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&gen_dir)
                .map_err(|e| err1(path_err("mkdir", &gen_dir, &e)))?;
        }
        Err(e) => {
            return Err(err1(format!(
                "error getting info on genesis/bin directory: {}",
                path_err("stat", &gen_dir, &e)
            )))
        }
        Ok(md) if !md.is_dir() => {
            return Err(err1(format!(
                "the path {:?} already exists but is not a directory",
                gen_dir.display().to_string()
            )))
        }
        Ok(_) => log.info(
            &format!(
                "the {:?} directory already exists",
                gen_dir.display().to_string()
            ),
            &[],
        ),
    }
    log.info("checking on the genesis/bin executable", &[]);
    if fs::metadata(&gen_bin).is_err() {
        log.info(
            &format!(
                "copying executable into place: {:?}",
                gen_bin.display().to_string()
            ),
            &[],
        );
        fs::copy(exe_path, &gen_bin).map_err(|e| err1(path_err("open", &gen_bin, &e)))?;
    } else {
        log.info(
            &format!(
                "the {:?} file already exists",
                gen_bin.display().to_string()
            ),
            &[],
        );
    }
    log.info(
        &format!(
            "making sure {:?} is executable",
            gen_bin.display().to_string()
        ),
        &[],
    );
    ensure_binary(&gen_bin).map_err(err1)?;
    std::env::set_current_dir(cfg.root()).map_err(|e| {
        err1(format!(
            "failed to change directory to {}: {}",
            cfg.root().display(),
            path_err("chdir", &cfg.root(), &e)
        ))
    })?;
    log.info(
        "checking on the current symlink and creating it if needed",
        &[],
    );
    let cur = current_bin(&cfg).map_err(err1)?;
    log.info(
        &format!(
            "the current symlink points to: {:?}",
            cur.display().to_string()
        ),
        &[],
    );
    let path = cfg
        .export()
        .map_err(|e| err1(format!("failed to export configuration: {e}")))?;
    log.info(
        &format!("cosmovisor config.toml created at: {}", path.display()),
        &[],
    );
    Ok(())
}

/// add_upgrade.go `addUpgrade`.
fn add_upgrade(
    cfg: &Config,
    force: bool,
    height: i64,
    name: &str,
    exe: &str,
    info_path: &Path,
) -> Result<(), Errs> {
    let log = cfg.logger(Sink::Stdout);
    let name = if cfg.disable_recase {
        name.to_string()
    } else {
        name.to_lowercase()
    };
    let exe_path = Path::new(exe);
    if let Err(e) = fs::metadata(exe_path) {
        return Err(err1(if e.kind() == ErrorKind::NotFound {
            format!(
                "invalid executable path: {}",
                path_err("stat", exe_path, &e)
            )
        } else {
            format!(
                "failed to load executable path: {}",
                path_err("stat", exe_path, &e)
            )
        }));
    }
    let bin_dir = cfg.upgrade_dir(&name).join("bin");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&bin_dir)
        .map_err(|e| {
            err1(format!(
                "failed to create upgrade directory: {}",
                path_err("mkdir", &bin_dir, &e)
            ))
        })?;
    let data = fs::read(exe_path).map_err(|e| {
        err1(format!(
            "failed to read binary: {}",
            path_err("open", exe_path, &e)
        ))
    })?;
    save_or_abort(&cfg.upgrade_bin(&name), &data, force)?;
    log.info(&format!("Using {exe} for {name} upgrade"), &[]);
    log.info(
        &format!(
            "Upgrade binary located at {}",
            cfg.upgrade_bin(&name).display()
        ),
        &[],
    );
    if height > 0 {
        let plan = Plan {
            name: name.clone(),
            height,
            ..Plan::default()
        };
        save_or_abort(info_path, plan_json(&plan).as_bytes(), force)?;
        log.info(
            &format!(
                "{} created, {name} upgrade binary will switch at height {height}",
                info_path.display()
            ),
            &[],
        );
    }
    Ok(())
}

/// `saveOrAbort`: refuse an existing file without `--force`; `os.WriteFile(…, 0o755)`.
fn save_or_abort(path: &Path, data: &[u8], force: bool) -> Result<(), Errs> {
    match fs::metadata(path) {
        Ok(_) if !force => return Err(err1(format!("file already exists at {}", path.display()))),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(err1(format!(
                "failed to check if file exists: {}",
                path_err("stat", path, &e)
            )))
        }
    }
    write_file(path, data, 0o755).map_err(|e| {
        err1(format!(
            "failed to write binary to location: {}",
            path_err("open", path, &e)
        ))
    })
}

fn cmd_add_upgrade(p: &Parsed, cfg_path: &str) -> Result<(), Errs> {
    let cfg = Config::from_file(cfg_path)?;
    let height = p
        .str("upgrade-height")
        .map(|v| v.parse::<i64>().expect("checked by the flag parser"))
        .unwrap_or(0);
    add_upgrade(
        &cfg,
        p.bool("force"),
        height,
        &p.args[0],
        &p.args[1],
        &cfg.upgrade_info_path(),
    )
}

/// batch_upgrade.go `addBatchUpgrade`.
fn cmd_add_batch_upgrade(p: &Parsed, cfg_path: &str) -> Result<(), Errs> {
    if p.set("upgrade-file") && p.set("upgrade-list") {
        return Err(err1(
            "if any flags in the group [upgrade-file upgrade-list] are set none of the others can be; [upgrade-file upgrade-list] were all set",
        ));
    }
    let cfg = Config::from_file(cfg_path)?;
    if let Some(file) = p.str("upgrade-file").filter(|f| !f.is_empty()) {
        let path = Path::new(file);
        let text = fs::read_to_string(path).map_err(|e| {
            err1(format!(
                "error opening upgrade CSV file {file}: {}",
                path_err("open", path, &e)
            ))
        })?;
        // encoding/csv, FieldsPerRecord = 3, TrimLeadingSpace; quoting not modelled.
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let rec: Vec<String> = line
                .split(',')
                .map(|f| f.trim_start().to_string())
                .collect();
            if rec.len() != 3 {
                return Err(err1(format!(
                    "error parsing upgrade CSV file {file}: record on line {}: wrong number of fields",
                    i + 1
                )));
            }
            records.push(rec);
        }
        return process_upgrade_list(&cfg, &records);
    }
    let list: Vec<Vec<String>> = p
        .vals
        .get("upgrade-list")
        .map(|v| {
            v.iter()
                .map(|u| u.split(':').map(str::to_string).collect())
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        return Err(err1(
            "either --upgrade-file or --upgrade-list must be provided",
        ));
    }
    process_upgrade_list(&cfg, &list)
}

fn process_upgrade_list(cfg: &Config, list: &[Vec<String>]) -> Result<(), Errs> {
    let mut info_paths = Vec::new();
    for (i, u) in list.iter().enumerate() {
        if u.len() != 3 {
            return Err(err1(format!(
                "argument at position {i} ([{}]) is invalid",
                u.join(" ")
            )));
        }
        let name = Path::new(&u[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| u[0].clone());
        let height: i64 = u[2].parse().map_err(|_| {
            err1(format!(
                "upgrade height at position {i} ({}) is invalid",
                u[2]
            ))
        })?;
        let mut ip = cfg.upgrade_info_path().into_os_string();
        ip.push(format!(".{name}"));
        let ip = PathBuf::from(ip);
        info_paths.push(ip.clone());
        add_upgrade(cfg, true, height, &name, &u[1], &ip)?;
    }
    let mut parts = Vec::new();
    for ip in &info_paths {
        let bytes = fs::read(ip).map_err(|e| {
            err1(format!(
                "error reading file {}: {}",
                ip.display(),
                path_err("open", ip, &e)
            ))
        })?;
        let text = String::from_utf8_lossy(&bytes);
        compact_json(&text).map_err(|e| {
            err1(format!(
                "error parsing JSON from file {}: {e}",
                ip.display()
            ))
        })?;
        parts.push(indent_plan(&text));
    }
    // json.MarshalIndent(allData, "", "  ") of the raw plans.
    let batch = if parts.is_empty() {
        "null".to_string()
    } else {
        format!("[\n{}\n]", parts.join(",\n"))
    };
    write_file(&cfg.batch_path(), batch.as_bytes(), 0o600).map_err(|e| {
        err1(format!(
            "error writing combined JSON to file: {}",
            path_err("open", &cfg.batch_path(), &e)
        ))
    })
}

/// A compact plan object as an element of `MarshalIndent(…, "", "  ")`: one field a line.
fn indent_plan(compact: &str) -> String {
    let v: serde_json::Map<String, Value> = serde_json::from_str(compact).unwrap_or_default();
    // Field order as written (name, time, height, info): re-emit by the struct's order.
    let mut lines = Vec::new();
    for key in ["name", "time", "height", "info"] {
        if let Some(val) = v.get(key) {
            lines.push(format!("    {:?}: {}", key, val));
        }
    }
    format!("  {{\n{}\n  }}", lines.join(",\n"))
}

fn cmd_prepare_upgrade(cfg_path: &str) -> Result<(), Errs> {
    let cfg = Config::from_file(cfg_path)
        .map_err(|e| err1(format!("failed to get config: {}", e.join("\n"))))?;
    let log = cfg.logger(Sink::Stdout);
    log.info(
        "Using gRPC address",
        &[("address", cfg.grpc_address.clone())],
    );
    if cfg.grpc_address.is_empty() {
        return Err(err1("failed to query upgrade info: gRPC address is empty"));
    }
    // No gRPC client in the stand-in: no chain ever has a plan (see the header).
    log.info("No active upgrade plan found", &[]);
    Ok(())
}

fn cmd_show_upgrade_info(cfg_path: &str) -> Result<(), Errs> {
    let cfg = Config::from_file(cfg_path)?;
    let path = cfg.upgrade_info_path();
    match fs::read(&path) {
        Ok(data) => {
            let mut out = data;
            out.push(b'\n');
            let _ = std::io::stdout().write_all(&out);
            Ok(())
        }
        // 1.7 formats this error with args[0] of an empty slice: a panic.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            go_panic("runtime error: index out of range [0] with length 0")
        }
        Err(e) => Err(err1(format!(
            "failed to read upgrade-info.json: {}",
            path_err("open", &path, &e)
        ))),
    }
}
