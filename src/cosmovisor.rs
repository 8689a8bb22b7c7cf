//! What the tool reads of cosmovisor 1.7's own interface: the config file
//! `run` may be given, and the arguments `run` passes on to the node.
//!
//! Facts (cosmos/cosmos-sdk `tools/cosmovisor`, v1.7.x):
//! - `run` parses no flags (`DisableFlagParsing`); it takes exactly
//!   `--cosmovisor-config <path>` (or `-cosmovisor-config`, any case) out of
//!   its arguments and passes every other argument to the node; `-c` and
//!   `--cosmovisor-config=<path>` are not recognised there and reach the node
//!   (cmd/cosmovisor/run.go, `parseCosmovisorConfig`).
//! - No config file is read unless one is named; `$DAEMON_HOME/cosmovisor/
//!   config.toml` is only where `init` writes one (args.go `GetConfigFromFile`,
//!   init.go).
//! - With a file, viper reads its keys (`daemon_home`, …) and an environment
//!   variable of the upper-cased name overrides a key *present in the file*;
//!   a key missing from the file is not taken from the environment, and no
//!   default applies (args.go `GetConfigFromFile`: `AutomaticEnv`,
//!   `Unmarshal`).
//!
//! The tool needs one value from there: the home whose key slot it guards.
//! It resolves it the way cosmovisor does, so the two never disagree, and
//! refuses what cosmovisor would read differently.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A config file larger than this is not cosmovisor's.
const MAX_FILE: u64 = 1 << 20;

/// Why `run`'s arguments or cosmovisor's config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CosmovisorError {
    /// A flag spelling cosmovisor 1.7's `run` passes to the node.
    #[error("`run {flag}`: cosmovisor 1.7's run does not read {flag}, it would pass it to the node; write `run --cosmovisor-config <file> <node args>`")]
    Unrecognised {
        /// The argument as given.
        flag: String,
    },
    /// `-c FILE` before a command of ours.
    #[error("-c/--cosmovisor-config before the command is only for the commands passed to cosmovisor (config, add-upgrade, …); cosmovisor 1.7's run would hand it to the node: write `run --cosmovisor-config <file> <node args>`")]
    BeforeCommand,
    /// `--cosmovisor-config` without a path.
    #[error(
        "`run --cosmovisor-config` needs a file: `run --cosmovisor-config <file> <node args>`"
    )]
    NoPath,
    /// The file cannot be read or parsed.
    #[error("cosmovisor config file {path:?}: {reason}")]
    File { path: PathBuf, reason: String },
    /// The file does not name the home.
    #[error("cosmovisor config file {path:?} has no daemon_home: with --cosmovisor-config, cosmovisor 1.7 takes DAEMON_HOME only from a key present in the file (the environment can only override it); add daemon_home = \"/var/lib/<node>\" to the file")]
    NoHome { path: PathBuf },
}

/// `run`'s arguments split as cosmovisor 1.7 splits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunArgs {
    /// The config file named with `--cosmovisor-config`.
    pub(crate) config: Option<PathBuf>,
    /// What the node gets.
    pub(crate) node: Vec<OsString>,
}

/// Splits `run`'s arguments: the first `--cosmovisor-config <path>` (any
/// case, one or two dashes) is cosmovisor's, the rest the node's. The
/// spellings cosmovisor would hand to the node by mistake are refused.
pub(crate) fn split_run_args(args: &[OsString]) -> Result<RunArgs, CosmovisorError> {
    let is_flag = |a: &OsString| {
        let s = a.to_string_lossy().to_ascii_lowercase();
        s == "--cosmovisor-config" || s == "-cosmovisor-config"
    };
    for a in args {
        let s = a.to_string_lossy();
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("--cosmovisor-config=") || lower.starts_with("-cosmovisor-config=") {
            return Err(CosmovisorError::Unrecognised {
                flag: s.into_owned(),
            });
        }
    }
    // `-c` is only cosmovisor's when it comes first: further on it is a
    // node flag as far as cosmovisor knows, and it is one for some nodes.
    if args.first().is_some_and(|a| a == "-c") {
        return Err(CosmovisorError::Unrecognised { flag: "-c".into() });
    }
    let Some(i) = args.iter().position(is_flag) else {
        return Ok(RunArgs {
            config: None,
            node: args.to_vec(),
        });
    };
    let path = args.get(i + 1).ok_or(CosmovisorError::NoPath)?;
    let mut node = args[..i].to_vec();
    node.extend_from_slice(&args[i + 2..]);
    Ok(RunArgs {
        config: Some(PathBuf::from(path)),
        node,
    })
}

/// The home cosmovisor 1.7 uses with config file `path`: `DAEMON_HOME` from
/// the environment (`env_home`) when the file has `daemon_home`, else the
/// file's.
pub(crate) fn home_from_file(
    path: &Path,
    env_home: Option<String>,
) -> Result<PathBuf, CosmovisorError> {
    let err = |reason: String| CosmovisorError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = read_small(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e| err(format!("not TOML: {e}")))?;
    match table.get("daemon_home") {
        None => Err(CosmovisorError::NoHome {
            path: path.to_path_buf(),
        }),
        Some(toml::Value::String(h)) => Ok(PathBuf::from(env_home.unwrap_or_else(|| h.clone()))),
        Some(v) => Err(err(format!(
            "daemon_home is a {}, not a string",
            v.type_str()
        ))),
    }
}

/// Reads a regular file of at most [`MAX_FILE`] bytes (a FIFO would hang).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_args_split_as_cosmovisor_1_7_splits_them() {
        let r = split_run_args(&os(&["start", "--home", "/h"])).unwrap();
        assert_eq!(r.config, None);
        assert_eq!(r.node, os(&["start", "--home", "/h"]));
        for flag in [
            "--cosmovisor-config",
            "-cosmovisor-config",
            "--Cosmovisor-Config",
        ] {
            let r = split_run_args(&os(&[flag, "/c.toml", "start", "--home", "/h"])).unwrap();
            assert_eq!(r.config, Some(PathBuf::from("/c.toml")));
            assert_eq!(r.node, os(&["start", "--home", "/h"]));
        }
        // Anywhere in the arguments, as cosmovisor looks.
        let r = split_run_args(&os(&["start", "--cosmovisor-config", "/c", "--x"])).unwrap();
        assert_eq!(r.node, os(&["start", "--x"]));
        assert!(matches!(
            split_run_args(&os(&["start", "--cosmovisor-config"])),
            Err(CosmovisorError::NoPath)
        ));
        for bad in [
            &["--cosmovisor-config=/c", "start"][..],
            &["-c", "/c", "start"][..],
        ] {
            let e = split_run_args(&os(bad)).unwrap_err().to_string();
            assert!(e.contains("does not read"), "{e}");
        }
        // A node flag -c after the node command is the node's.
        assert!(split_run_args(&os(&["start", "-c", "x"])).is_ok());
    }

    #[test]
    fn the_home_comes_from_the_file_and_the_environment_overrides_it_only_when_present() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.toml");
        std::fs::write(
            &f,
            "daemon_home = \"/from/file\"\ndaemon_name = \"noded\"\n",
        )
        .unwrap();
        assert_eq!(home_from_file(&f, None).unwrap(), Path::new("/from/file"));
        assert_eq!(
            home_from_file(&f, Some("/from/env".into())).unwrap(),
            Path::new("/from/env")
        );
        std::fs::write(&f, "daemon_name = \"noded\"\n").unwrap();
        let e = home_from_file(&f, Some("/from/env".into())).unwrap_err();
        assert!(e.to_string().contains("has no daemon_home"), "{e}");
        std::fs::write(&f, "daemon_home = 3\n").unwrap();
        assert!(home_from_file(&f, None)
            .unwrap_err()
            .to_string()
            .contains("not a string"));
        std::fs::write(&f, "daemon_home = \n").unwrap();
        assert!(home_from_file(&f, None)
            .unwrap_err()
            .to_string()
            .contains("not TOML"));
        let e = home_from_file(&d.path().join("missing.toml"), None).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        // A FIFO is refused, not waited on.
        let fifo = d.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(home_from_file(&fifo, None)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }
}
