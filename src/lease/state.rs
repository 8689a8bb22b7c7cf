//! The node's sign state (`priv_validator_state.json`): read, carried in
//! the lease, and raised before the node may sign.

use std::path::{Path, PathBuf};

use super::LeaseError;
use crate::identity::NodeIdentity;

/// The last height/round/step a validator signed (CometBFT's
/// `FilePVLastSignState` without the signature), ordered as CometBFT orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub(crate) struct SignState {
    /// Block height.
    pub(crate) height: i64,
    pub(crate) round: i32,
    /// Step (1 propose, 2 prevote, 3 precommit).
    pub(crate) step: i8,
}

impl std::fmt::Display for SignState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.height, self.round, self.step)
    }
}

impl SignState {
    /// As the metrics report it.
    pub(crate) fn hrs(self) -> crate::metrics::Hrs {
        crate::metrics::Hrs {
            height: self.height,
            round: self.round,
            step: self.step,
        }
    }

    /// Parses `priv_validator_state.json` (`height` is a JSON string there).
    pub(crate) fn parse(bytes: &[u8]) -> Result<SignState, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let height = match &v["height"] {
            serde_json::Value::String(s) => s.parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .filter(|h| *h >= 0)
        .ok_or("height missing or not a non-negative integer")?;
        let round = v["round"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok())
            .filter(|r| *r >= 0)
            .ok_or("round missing or invalid")?;
        let step = v["step"]
            .as_i64()
            .and_then(|s| i8::try_from(s).ok())
            .filter(|s| (0..=3).contains(s))
            .ok_or("step missing or not 0..3")?;
        Ok(SignState {
            height,
            round,
            step,
        })
    }

    /// The state `heights` above this one, at its first round and step (the
    /// target after a takeover skip; saturating, never wrapping).
    pub(crate) fn skipped(self, heights: i64) -> SignState {
        SignState {
            height: self.height.saturating_add(heights),
            round: 0,
            step: 0,
        }
    }

    /// The file's content for this state: no signature, so CometBFT signs
    /// nothing at this very height/round/step either ("no SignBytes found").
    pub(crate) fn to_json(self) -> String {
        format!(
            "{{\n  \"height\": \"{}\",\n  \"round\": {},\n  \"step\": {}\n}}",
            self.height, self.round, self.step
        )
    }
}

/// Where the node keeps its sign state, from `config.toml`'s
/// `priv_validator_state_file` (default `data/priv_validator_state.json`).
/// A `config.toml` we cannot parse is an error: raising a file the node does
/// not read would protect nothing.
pub(crate) fn state_path_for_home(home: &Path) -> Result<PathBuf, LeaseError> {
    crate::config::node_file_from_config(
        home,
        "priv_validator_state_file",
        "data/priv_validator_state.json",
    )
    .map_err(|(path, reason)| LeaseError::State {
        path,
        reason: format!("cannot use it to find priv_validator_state_file: {reason}"),
    })
}

/// A sign-state file larger than this is not CometBFT's (it holds one
/// signature and the bytes signed).
const MAX_STATE_FILE: u64 = 1 << 20;

/// The node's sign-state file, read and written as the node's user.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    pub(crate) path: PathBuf,
    /// The node, as whom it is read and written.
    pub(crate) node: NodeIdentity,
}

impl StateFile {
    /// The sign-state file of the node at `home` (from its `config.toml`),
    /// read and written as `node` when we run as root for it: root without
    /// `CAP_DAC_READ_SEARCH` may not read the node's files otherwise, and the
    /// node-owned `config.toml` must not make root reach further than the
    /// node could.
    pub(crate) fn of_home(home: &Path, node: NodeIdentity) -> Result<StateFile, LeaseError> {
        let path = node.as_node(|| state_path_for_home(home))?;
        Ok(StateFile { path, node })
    }

    /// Where the file is (`priv_validator_state_file` of `config.toml`).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn as_node<T>(&self, f: impl FnOnce() -> T) -> T {
        self.node.as_node(f)
    }

    /// The current state; `None` if the file does not exist yet.
    pub(crate) fn read(&self) -> Result<Option<SignState>, LeaseError> {
        let read = || {
            let fd = crate::node_file::open_nonblocking(&self.path)?;
            crate::node_file::read_regular(fd, MAX_STATE_FILE)
        };
        match self.as_node(read) {
            Ok(b) => SignState::parse(&b)
                .map(Some)
                .map_err(|reason| LeaseError::State {
                    path: self.path.clone(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaseError::State {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Raises the file to `to` if it is lower (atomic replace, fsynced).
    pub(crate) fn raise_to(&self, to: SignState) -> Result<Raised, LeaseError> {
        let now = self.read()?;
        if now.is_some_and(|n| n >= to) {
            return Ok(Raised::Unchanged);
        }
        let err = |reason: String| LeaseError::State {
            path: self.path.clone(),
            reason,
        };
        let dir = self
            .path
            .parent()
            .ok_or_else(|| err("no parent directory".into()))?;
        let tmp = dir.join(".priv_validator_state.json.ssm-cosmovisor");
        self.as_node(|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            if self.node.switches() {
                // setfsuid does not report a refusal: check who owns what we made.
                let uid = self.node.uid();
                let owner = rustix::fs::fstat(&f)?.st_uid;
                if owner != uid {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(std::io::Error::other(format!(
                        "it would be owned by uid {owner}, not the node's uid {uid}"
                    )));
                }
            }
            f.write_all(to.to_json().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .map_err(|e| err(format!("cannot write it: {e}")))?;
        Ok(Raised::From(now))
    }
}

/// What [`StateFile::raise_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raised {
    /// The file was already at or above the state.
    Unchanged,
    /// The file was raised from this state (`None`: there was no file).
    From(Option<SignState>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_state_parses_cometbft_files_and_orders_by_height_round_step() {
        let a = SignState::parse(br#"{"height":"0","round":0,"step":0}"#).unwrap();
        assert_eq!(a, SignState::default());
        let b = SignState::parse(
            br#"{"height":"36","round":0,"step":3,"signature":"x","signbytes":"AB"}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            SignState {
                height: 36,
                round: 0,
                step: 3
            }
        );
        let c = SignState {
            height: 36,
            round: 1,
            step: 1,
        };
        let d = SignState {
            height: 37,
            round: 0,
            step: 0,
        };
        assert!(a < b && b < c && c < d);
        for bad in [
            &br#"{"height":"-1","round":0,"step":0}"#[..],
            br#"{"height":"x","round":0,"step":0}"#,
            br#"{"height":"1","round":0,"step":4}"#,
            br#"{"height":"1","step":1}"#,
            b"not json",
        ] {
            assert!(
                SignState::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(SignState::parse(c.to_json().as_bytes()).unwrap(), c);
    }

    /// A FIFO at the state file (the node user's to place) is an error naming
    /// it, at once: reading it used to wait for a writer, with the lease.
    #[test]
    fn a_fifo_as_the_state_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("priv_validator_state.json");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = StateFile {
            path: path.clone(),
            node: NodeIdentity::ours(),
        };
        let t0 = std::time::Instant::now();
        let e = f.read().unwrap_err();
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        let LeaseError::State { path: p, reason } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(p, &path);
        assert!(reason.contains("is a FIFO, not a regular file"), "{e}");
        assert!(f.raise_to(SignState::default()).is_err());
    }

    #[test]
    fn raise_to_only_ever_raises_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile {
            path: dir.path().join("priv_validator_state.json"),
            node: NodeIdentity::ours(),
        };
        let s10 = SignState {
            height: 10,
            round: 0,
            step: 2,
        };
        assert_eq!(f.raise_to(s10).unwrap(), Raised::From(None));
        assert_eq!(f.read().unwrap(), Some(s10));
        let s9 = SignState {
            height: 9,
            round: 5,
            step: 3,
        };
        assert_eq!(f.raise_to(s9).unwrap(), Raised::Unchanged, "lowered");
        assert_eq!(f.read().unwrap(), Some(s10));
        let s11 = SignState { height: 11, ..s9 };
        assert_eq!(f.raise_to(s11).unwrap(), Raised::From(Some(s10)));
        assert_eq!(f.read().unwrap(), Some(s11));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left: {names:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn state_path_follows_config_toml_and_refuses_a_broken_one() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            state_path_for_home(d.path()).unwrap(),
            d.path().join("data/priv_validator_state.json")
        );
        std::fs::create_dir(d.path().join("config")).unwrap();
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_state_file = \"/srv/state.json\"\n",
        )
        .unwrap();
        assert_eq!(
            state_path_for_home(d.path()).unwrap(),
            PathBuf::from("/srv/state.json")
        );
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_state_file = [",
        )
        .unwrap();
        let e = state_path_for_home(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("priv_validator_state_file"),
            "{e}"
        );
    }
}
