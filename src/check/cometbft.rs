//! The node's CometBFT version, read for `check`'s advice on `[consensus]
//! double_sign_check_height`: what a setting of N covers depends on it.
//!
//! CometBFT's `checkDoubleSigningRisk` looped `for i := 1; i < N` over the
//! last blocks, so N looked back over N − 1 of them and 1 over none.
//! cometbft#5668 made it `i <= N` (N blocks, 1 a working check); it shipped in
//! v0.38.24 (re-tagged as v0.38.25 the same day, only to fix the version
//! string), v0.39.4 and v0.40.0. The v1.x and v2.x branches (v1.0.1,
//! v2.0.0-rc1, and the branch heads as of August 2026) and v0.37 and older
//! still have the old loop, and so does any version not named here: a version
//! we do not know of gets the conservative N − 1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long `<node> version --long` may take: a node binary that hangs must
/// not hang the preflight.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of each output stream kept (the rest is read and dropped, so the
/// child never blocks on a full pipe).
const OUTPUT_CAP: usize = 64 * 1024;

const COMETBFT: &str = "github.com/cometbft/cometbft";
const TENDERMINT: &str = "github.com/tendermint/tendermint";

/// A CometBFT (or Tendermint) version as the node binary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CometVersion {
    /// As printed, e.g. `v0.38.17`, or `github.com/x/cometbft@v0.38.12-x` for a fork.
    pub(super) text: String,
    /// (major, minor, patch).
    numbers: (u64, u64, u64),
    /// A pre-release or pseudo-version (`-rc1`, `-0.2026…-abcdef`): it comes
    /// *before* its patch release, so it may predate a fix made in it.
    pre: bool,
    module: Module,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Module {
    CometBft,
    Tendermint,
    /// Replaced by another module (a chain's fork, or a local directory):
    /// its version number says nothing about CometBFT's fixes.
    Fork,
}

/// How many of the last blocks a setting of N makes the node check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookback {
    /// N (cometbft#5668 is in this version).
    N,
    /// N − 1 (the old loop).
    NMinusOne,
    /// Either: the version is unknown or a fork's.
    Unknown,
}

impl Lookback {
    /// How this lookback is explained after the version it was read from.
    pub(super) fn rule(self) -> &'static str {
        match self {
            Lookback::N => "a setting of N looks back over N blocks (cometbft#5668, from v0.38.24, v0.39.4 and v0.40.0 on)",
            Lookback::NMinusOne => "a setting of N looks back over N - 1 blocks (only v0.38.24+, v0.39.4+ and v0.40+ look back over N, cometbft#5668)",
            Lookback::Unknown => "a setting of N looks back over N - 1 blocks on CometBFT v0.37 and older, v0.38 before .24, v0.39 before .4, v1.x and v2.x, and over N from v0.38.24, v0.39.4 and v0.40.0 on (cometbft#5668)",
        }
    }
}

/// What a setting of `n` checks: (blocks for certain, blocks at most). The
/// two differ only when the version is unknown; the setting is a working
/// check only if the first is at least 1.
pub(super) fn blocks_checked(n: i64, lookback: Lookback) -> (i64, i64) {
    let n = n.max(0);
    let old = (n - 1).max(0);
    match lookback {
        Lookback::N => (n, n),
        Lookback::NMinusOne => (old, old),
        Lookback::Unknown => (old, n),
    }
}

/// What a setting of N checks on `v`.
pub(super) fn lookback(v: &CometVersion) -> Lookback {
    match v.module {
        Module::Fork => return Lookback::Unknown,
        // Tendermint (archived) never had the fix.
        Module::Tendermint => return Lookback::NMinusOne,
        Module::CometBft => {}
    }
    let fixed_from = match v.numbers {
        (0, 38, _) => (0, 38, 24),
        (0, 39, _) => (0, 39, 4),
        (0, minor, _) if minor >= 40 => (0, 40, 0),
        _ => return Lookback::NMinusOne,
    };
    // A pre-release of the first fixed patch may predate the fix.
    if v.numbers > fixed_from || (v.numbers == fixed_from && !v.pre) {
        Lookback::N
    } else {
        Lookback::NMinusOne
    }
}

/// `v0.38.17`, `0.38.17`, `v0.38.25-rc1`, `v0.38.24-0.20260727-abcdef`:
/// (major, minor, patch) and whether it is a pre-release.
fn parse_semver(s: &str) -> Option<((u64, u64, u64), bool)> {
    let s = s.trim().trim_matches('"');
    let s = s.strip_prefix('v').unwrap_or(s);
    let s = s.split('+').next()?;
    let (core, pre) = match s.split_once('-') {
        Some((core, _)) => (core, true),
        None => (s, false),
    };
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let numbers = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some((numbers, pre))
}

/// One `build_deps` entry of the SDK's `version --long`:
/// `<path>@<version>` or `<path>@<version> => <replacement path>@<version>`.
fn from_dep(dep: &str) -> Option<CometVersion> {
    let (main, replaced) = match dep.split_once(" => ") {
        Some((m, r)) => (m.trim(), Some(r.trim())),
        None => (dep.trim(), None),
    };
    let (path, version) = main.split_once('@')?;
    let module = match path {
        COMETBFT => Module::CometBft,
        TENDERMINT => Module::Tendermint,
        _ => return None,
    };
    let Some(r) = replaced else {
        let (numbers, pre) = parse_semver(version)?;
        return Some(CometVersion {
            text: version.to_string(),
            numbers,
            pre,
            module,
        });
    };
    // The code that runs is the replacement's.
    let (rpath, rversion) = r.split_once('@').unwrap_or((r, ""));
    let parsed = parse_semver(rversion);
    let module = match rpath {
        COMETBFT if parsed.is_some() => Module::CometBft,
        TENDERMINT if parsed.is_some() => Module::Tendermint,
        _ => Module::Fork,
    };
    let (numbers, pre) = parsed.unwrap_or(((0, 0, 0), true));
    let text = if module == Module::Fork {
        r.to_string()
    } else {
        rversion.to_string()
    };
    Some(CometVersion {
        text,
        numbers,
        pre,
        module,
    })
}

/// `cometbft_version: v0.38.17` (some apps print it, e.g. in `extra_info`).
fn from_key(line: &str, key: &str, module: Module) -> Option<CometVersion> {
    let value = line
        .strip_prefix(key)
        .or_else(|| line.strip_prefix(&format!("\"{key}\"")))?
        .trim_start()
        .strip_prefix(':')?
        .trim()
        .trim_end_matches(',')
        .trim_matches('"');
    let (numbers, pre) = parse_semver(value)?;
    Some(CometVersion {
        text: value.to_string(),
        numbers,
        pre,
        module,
    })
}

/// The CometBFT version in `<node> version --long`'s output, YAML (the
/// SDK's default: `build_deps:` then `- <module>@<version>` lines, indented
/// or not) or JSON (`-o json`, one line). In order of trust: the cometbft
/// module of the build info, then Tendermint's, then a `cometbft_version` or
/// `tendermint_version` field.
pub(super) fn parse_version_output(out: &str) -> Option<CometVersion> {
    let mut items: Vec<String> = Vec::new();
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(out.trim()) {
        if let Some(serde_json::Value::Array(deps)) = doc.get("build_deps") {
            items.extend(deps.iter().filter_map(|d| d.as_str()).map(str::to_string));
        }
        for key in ["cometbft_version", "tendermint_version"] {
            let found = doc.get(key).or_else(|| doc.get("extra_info")?.get(key));
            if let Some(v) = found.and_then(|v| v.as_str()) {
                items.push(format!("{key}: {v}"));
            }
        }
    } else {
        items.extend(out.lines().map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("- ").unwrap_or(l);
            l.trim_matches(|c| c == '"' || c == '\'').to_string()
        }));
    }
    let dep = |prefix: &str| {
        items
            .iter()
            .filter(|l| l.starts_with(&format!("{prefix}@")))
            .find_map(|l| from_dep(l))
    };
    let key = |k: &str, m: Module| items.iter().find_map(|l| from_key(l, k, m.clone()));
    dep(COMETBFT)
        .or_else(|| dep(TENDERMINT))
        .or_else(|| key("cometbft_version", Module::CometBft))
        .or_else(|| key("tendermint_version", Module::Tendermint))
}

/// Why the version was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unread {
    #[error("DAEMON_NAME is not set, so the node binary is not known")]
    NoName,
    #[error("no node binary at {0}")]
    NoBinary(PathBuf),
    #[error("not run: we are root and no node user (SSM_COSMOVISOR_NODE_USER) is set, and the node binary is not run as root")]
    AsRoot,
    #[error("`{path} version --long` could not start: {source}", path = .0.display(), source = .1)]
    Spawn(PathBuf, std::io::Error),
    #[error("`{path} version --long` did not finish within {secs} s (killed)", path = .0.display(), secs = VERSION_TIMEOUT.as_secs())]
    TimedOut(PathBuf),
    #[error("no CometBFT or Tendermint version in the output of `{path} version --long` ({status}{stderr})", path = .0.display(), status = .1, stderr = .2)]
    NotInOutput(PathBuf, std::process::ExitStatus, String),
}

/// The node binary cosmovisor would start: `cosmovisor/current/bin/<DAEMON_NAME>`,
/// or `genesis` before the first upgrade made `current`.
fn node_binary(home: &Path) -> Result<PathBuf, Unread> {
    let name = std::env::var_os("DAEMON_NAME")
        .filter(|n| !n.is_empty())
        .ok_or(Unread::NoName)?;
    let current = home.join("cosmovisor/current");
    let dir = if current.exists() {
        current
    } else {
        home.join("cosmovisor/genesis")
    };
    let bin = dir.join("bin").join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Unread::NoBinary(bin))
    }
}

/// Reads the node's CometBFT version from `<node binary> version --long`,
/// run the way `run` runs the node: as the node user when we are root
/// (split trust), never as root, hardened and with the scrubbed environment.
/// Returns the version and the binary it came from.
pub(super) fn read(cfg: &Config) -> Result<(CometVersion, PathBuf), Unread> {
    let bin = node_binary(&cfg.home)?;
    let root = rustix::process::geteuid().is_root();
    if root && cfg.node_user.is_none() {
        return Err(Unread::AsRoot);
    }
    // A non-root tool cannot switch users (check reports that apart): it runs
    // the binary as itself, the user `run` would run the node as.
    let creds = crate::harden::child_creds(cfg.node_user.as_ref().filter(|_| root));
    let mut cmd = Command::new(&bin);
    // `--home`: the SDK's root command reads (and writes any missing default
    // config files into) its home before any subcommand; the node's own home
    // is the one its start uses anyway, where the default ($HOME/.<app>) may
    // be another user's directory after the uid switch, or not exist.
    cmd.arg("version")
        .arg("--long")
        .arg("--home")
        .arg(&cfg.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so that a timeout kills whatever it started too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    crate::harden::prepare(&mut cmd, creds);
    let (status, out, err) = run_bounded(cmd, &bin)?;
    match parse_version_output(&out) {
        Some(v) => Ok((v, bin)),
        None => {
            let first = err.lines().map(str::trim).find(|l| !l.is_empty());
            let stderr = first.map(|l| format!("; stderr: {l}")).unwrap_or_default();
            Err(Unread::NotInOutput(bin, status, stderr))
        }
    }
}

/// Runs `cmd` for at most [`VERSION_TIMEOUT`], killing its process group when
/// it takes longer; returns its status, stdout and stderr.
fn run_bounded(
    mut cmd: Command,
    bin: &Path,
) -> Result<(std::process::ExitStatus, String, String), Unread> {
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let mut child = cmd.spawn().map_err(|e| Unread::Spawn(bin.into(), e))?;
    // Readers on threads: a child that fills a pipe must not stall, and one
    // that leaves a descendant holding the pipe must not hold us past the
    // deadline (the receive below gives up; the thread ends with the process).
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let pgid = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(Unread::TimedOut(bin.into()));
            }
        }
    };
    let grace = deadline.saturating_duration_since(Instant::now());
    let out = out.recv_timeout(grace).unwrap_or_default();
    let err = err
        .recv_timeout(Duration::from_millis(10))
        .unwrap_or_default();
    Ok((status, out, err))
}

/// Reads `stream` to its end on a thread, keeping the first [`OUTPUT_CAP`] bytes.
fn drain(stream: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut s) = stream {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = OUTPUT_CAP.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(out: &str) -> CometVersion {
        parse_version_output(out).unwrap_or_else(|| panic!("no version in {out:?}"))
    }

    /// The SDK's `version --long` (yaml.v2: a list under its key, unindented).
    const SDK_YAML: &str = "name: gaia\nserver_name: gaiad\nversion: v21.0.0\ncommit: abc\nbuild_tags: netgo,ledger\ngo: go version go1.22.5 linux/amd64\nbuild_deps:\n- cosmossdk.io/api@v0.7.6\n- github.com/cometbft/cometbft@v0.38.17\n- github.com/cometbft/cometbft-db@v0.14.1\n- github.com/cosmos/cosmos-sdk@v0.50.10\ncosmos_sdk_version: v0.50.10\n";

    #[test]
    fn reads_the_cometbft_module_of_the_sdk_build_deps() {
        let got = v(SDK_YAML);
        assert_eq!(got.text, "v0.38.17");
        assert_eq!((got.numbers, got.pre), ((0, 38, 17), false));
        assert_eq!(got.module, Module::CometBft);
        // cometbft-db is not cometbft.
        let db_only = "build_deps:\n- github.com/cometbft/cometbft-db@v0.14.1\n";
        assert_eq!(parse_version_output(db_only), None);
        // yaml.v3 / sigs.k8s.io/yaml indent the list; quotes are dropped.
        let indented = "build_deps:\n    - \"github.com/cometbft/cometbft@v0.39.4\"\n";
        assert_eq!(v(indented).numbers, (0, 39, 4));
    }

    #[test]
    fn reads_replacements_json_keys_and_tendermint() {
        let same =
            "- github.com/cometbft/cometbft@v0.38.17 => github.com/cometbft/cometbft@v0.38.25";
        assert_eq!(v(same).text, "v0.38.25");
        let fork = "- github.com/cometbft/cometbft@v0.38.17 => github.com/osmosis-labs/cometbft@v0.38.12-v26-osmo-1";
        let got = v(fork);
        assert_eq!(got.module, Module::Fork);
        assert_eq!(
            got.text,
            "github.com/osmosis-labs/cometbft@v0.38.12-v26-osmo-1"
        );
        let local = "- github.com/cometbft/cometbft@v0.38.17 => ../cometbft@";
        assert_eq!(v(local).module, Module::Fork);
        let tm_to_comet =
            "- github.com/tendermint/tendermint@v0.34.24 => github.com/cometbft/cometbft@v0.34.27";
        assert_eq!(
            (v(tm_to_comet).module, v(tm_to_comet).numbers),
            (Module::CometBft, (0, 34, 27))
        );
        assert_eq!(
            v("- github.com/tendermint/tendermint@v0.34.21").module,
            Module::Tendermint
        );
        assert_eq!(v("cometbft_version: v0.38.17").text, "v0.38.17");
        assert_eq!(
            v("extra_info:\n  cometbft_version: 0.39.4\n").numbers,
            (0, 39, 4)
        );
        assert_eq!(v("tendermint_version: v0.34.24").module, Module::Tendermint);
        let json = r#"{"name":"gaia","build_deps":["cosmossdk.io/api@v0.7.6","github.com/cometbft/cometbft@v1.0.1"],"cosmos_sdk_version":"v0.52.0"}"#;
        assert_eq!(v(json).numbers, (1, 0, 1));
        // The module line wins over a field.
        let both =
            "cometbft_version: v0.38.25\nbuild_deps:\n- github.com/cometbft/cometbft@v0.38.17\n";
        assert_eq!(v(both).text, "v0.38.17");
    }

    #[test]
    fn no_version_without_a_parsable_one() {
        for out in [
            "",
            "v21.0.0\n",
            "build_deps:\n- cosmossdk.io/api@v0.7.6\n",
            "- github.com/cometbft/cometbft@latest\n",
            "- github.com/cometbft/cometbft@v0.38\n",
            "cometbft_version: \n",
        ] {
            assert_eq!(parse_version_output(out), None, "{out:?}");
        }
    }

    #[test]
    fn semver_and_prereleases() {
        assert_eq!(parse_semver("v0.38.17"), Some(((0, 38, 17), false)));
        assert_eq!(parse_semver("0.38.17"), Some(((0, 38, 17), false)));
        assert_eq!(parse_semver("v0.38.25-rc1"), Some(((0, 38, 25), true)));
        assert_eq!(
            parse_semver("v0.38.24-0.20260727161051-5adf46c51a3b"),
            Some(((0, 38, 24), true))
        );
        assert_eq!(
            parse_semver("v2.0.0+incompatible"),
            Some(((2, 0, 0), false))
        );
        assert_eq!(parse_semver("v0.38.17.1"), None);
        assert_eq!(parse_semver("vx.y.z"), None);
    }

    fn lb(version: &str) -> Lookback {
        lookback(&v(&format!("- github.com/cometbft/cometbft@{version}")))
    }

    #[test]
    fn which_versions_look_back_over_n_blocks() {
        for fixed in [
            "v0.38.24",
            "v0.38.25",
            "v0.38.25-rc1",
            "v0.38.30",
            "v0.39.4",
            "v0.39.9",
            "v0.40.0",
            "v0.41.2",
        ] {
            assert_eq!(lb(fixed), Lookback::N, "{fixed}");
        }
        for old in [
            "v0.34.27",
            "v0.37.18",
            "v0.38.0",
            "v0.38.17",
            "v0.38.23",
            "v0.39.0",
            "v0.39.3",
            "v1.0.0",
            "v1.0.1",
            "v2.0.0-rc1",
            "v2.0.0",
            "v3.0.0",
            // Pre-releases and pseudo-versions before the first fixed patch.
            "v0.38.24-rc1",
            "v0.38.24-0.20260727161051-5adf46c51a3b",
            "v0.39.4-rc1",
            "v0.40.0-rc1",
        ] {
            assert_eq!(lb(old), Lookback::NMinusOne, "{old}");
        }
        let fork = v("- github.com/cometbft/cometbft@v0.38.17 => github.com/x/cometbft@v0.38.30");
        assert_eq!(lookback(&fork), Lookback::Unknown);
        assert_eq!(
            lookback(&v("tendermint_version: v0.40.0")),
            Lookback::NMinusOne
        );
    }

    #[test]
    fn what_a_setting_checks() {
        assert_eq!(blocks_checked(0, Lookback::N), (0, 0));
        assert_eq!(blocks_checked(1, Lookback::N), (1, 1));
        assert_eq!(blocks_checked(10, Lookback::N), (10, 10));
        assert_eq!(blocks_checked(0, Lookback::NMinusOne), (0, 0));
        assert_eq!(blocks_checked(1, Lookback::NMinusOne), (0, 0));
        assert_eq!(blocks_checked(2, Lookback::NMinusOne), (1, 1));
        assert_eq!(blocks_checked(10, Lookback::NMinusOne), (9, 9));
        assert_eq!(blocks_checked(0, Lookback::Unknown), (0, 0));
        assert_eq!(blocks_checked(1, Lookback::Unknown), (0, 1));
        assert_eq!(blocks_checked(10, Lookback::Unknown), (9, 10));
    }
}
