//! A node home laid out like a validator's (config, safe key, state, cosmovisor tree with
//! the node stand-in), the node stand-in's reports, and what a test checks of the key slot
//! afterwards (idle, leftovers, a directory snapshot).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{cosmovisor_standin_bin, node_standin_bin, TestKey};

pub const DAEMON_NAME: &str = "noded";
pub const PRIV_VALIDATOR_STATE: &str = "{\n  \"height\": \"0\",\n  \"round\": 0,\n  \"step\": 0\n}";

/// Options for [`NodeHome`].
#[derive(Debug, Clone, Default)]
pub struct NodeHomeOptions {
    /// `priv_validator_key_file` in config.toml (relative to the home, or absolute). The
    /// safe key is placed there (parent directories created 0700).
    pub key_file: Option<String>,
    /// Create `cosmovisor/upgrades/upgrade-1..=N/bin/<DAEMON_NAME>`.
    pub upgrades: usize,
}

/// A temporary node home laid out like a real validator's:
///
/// ```text
/// <root>/                       tempdir (report and scratch files live here, outside the home)
/// <root>/home/config/           0700
///             priv_validator_key.json   the "safe" key (or at `key_file`)
///             config.toml
/// <root>/home/data/priv_validator_state.json
/// <root>/home/cosmovisor/genesis/bin/noded   the node stand-in
/// <root>/home/cosmovisor/current -> genesis
/// ```
pub struct NodeHome {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    /// The host's own throwaway key at the key path (never the consensus key).
    pub safe_key: TestKey,
    /// Exact bytes of the safe key file, for byte-for-byte comparisons.
    pub safe_bytes: Vec<u8>,
    key_path: PathBuf,
}

impl NodeHome {
    pub fn new() -> NodeHome {
        Self::with_options(NodeHomeOptions::default())
    }

    pub fn with_options(opts: NodeHomeOptions) -> NodeHome {
        let root = tempfile::Builder::new()
            .prefix("ssmcv-")
            .tempdir()
            .expect("tempdir");
        let home = root.path().join("home");
        mkdir_0700(&home.join("config"));
        mkdir_0700(&home.join("data"));

        let mut config = String::from(
            "# Minimal CometBFT config.toml for tests.\nproxy_app = \"tcp://127.0.0.1:26658\"\nmoniker = \"standin\"\n",
        );
        let key_path = match &opts.key_file {
            Some(k) => {
                writeln!(config, "priv_validator_key_file = \"{k}\"").expect("fmt");
                let p = PathBuf::from(k);
                if p.is_absolute() {
                    p
                } else {
                    home.join(p)
                }
            }
            None => home.join("config/priv_validator_key.json"),
        };
        config.push_str("priv_validator_state_file = \"data/priv_validator_state.json\"\n");
        fs::write(home.join("config/config.toml"), config).expect("write config.toml");
        fs::write(
            home.join("data/priv_validator_state.json"),
            PRIV_VALIDATOR_STATE,
        )
        .expect("write state");

        let safe_key = TestKey::ed25519();
        let parent = key_path.parent().expect("key path has a parent");
        if !parent.exists() {
            mkdir_0700(parent);
        }
        write_file_0600(&key_path, safe_key.json.as_bytes());
        let safe_bytes = safe_key.json.clone().into_bytes();

        let h = NodeHome {
            root,
            home,
            safe_key,
            safe_bytes,
            key_path,
        };
        h.install_node(&h.home.join("cosmovisor/genesis/bin"));
        std::os::unix::fs::symlink("genesis", h.home.join("cosmovisor/current"))
            .expect("current symlink");
        h.add_upgrades(opts.upgrades);
        h
    }

    /// Places the node stand-in at `<dir>/<DAEMON_NAME>`: a hard link (same filesystem; the
    /// node's /proc/<pid>/exe then names the path in the home, as with a real install), else
    /// a copy.
    fn install_node(&self, dir: &Path) {
        fs::create_dir_all(dir).expect("create bin dir");
        let dst = dir.join(DAEMON_NAME);
        let src = node_standin_bin();
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).expect("copy node stand-in");
        }
    }

    /// Creates `cosmovisor/upgrades/upgrade-1..=n/bin/<DAEMON_NAME>`.
    pub fn add_upgrades(&self, n: usize) {
        for i in 1..=n {
            self.install_node(
                &self
                    .home
                    .join(format!("cosmovisor/upgrades/upgrade-{i}/bin")),
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.home
    }

    /// The key path `P` (as configured).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// `P.orig`
    pub fn orig_path(&self) -> PathBuf {
        let mut s = OsString::from(self.key_path.as_os_str());
        s.push(".orig");
        PathBuf::from(s)
    }

    /// Scratch file outside the home (e.g. `report.jsonl`, `args.json`).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Where the node stand-in appends its reports when run with [`NodeHome::env`].
    pub fn report_path(&self) -> PathBuf {
        self.scratch("node-report.jsonl")
    }

    /// The node starts' reports (see [`complete_reports`] for the
    /// lines being written).
    pub fn reports(&self) -> Vec<Value> {
        read_report(&self.report_path())
            .into_iter()
            .filter(is_start_report)
            .collect()
    }

    pub fn upgrade_info_path(&self) -> PathBuf {
        self.home.join("data/upgrade-info.json")
    }

    /// Target of `cosmovisor/current` (`genesis`, `upgrades/upgrade-1`, …).
    pub fn current_target(&self) -> PathBuf {
        fs::read_link(self.home.join("cosmovisor/current")).expect("read cosmovisor/current")
    }

    /// Environment for cosmovisor (real or stand-in) and the node stand-in.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DAEMON_HOME".into(), self.home.display().to_string()),
            ("DAEMON_NAME".into(), DAEMON_NAME.into()),
            ("DAEMON_RESTART_AFTER_UPGRADE".into(), "true".into()),
            (
                "NODE_REPORT".into(),
                self.report_path().display().to_string(),
            ),
        ]
    }

    /// `cosmovisor-standin <args>` with [`NodeHome::env`].
    pub fn cosmovisor_cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(cosmovisor_standin_bin());
        c.args(args).envs(self.env()).stdin(Stdio::null());
        default_stop_signals(&mut c);
        c
    }

    /// `node-standin --home <home>` with [`NodeHome::env`].
    pub fn node_cmd(&self) -> Command {
        let mut c = Command::new(node_standin_bin());
        c.arg("--home")
            .arg(&self.home)
            .envs(self.env())
            .stdin(Stdio::null());
        default_stop_signals(&mut c);
        c
    }

    /// Asserts the idle state: `P` is a regular file holding exactly the safe key and
    /// `P.orig` is absent.
    pub fn assert_idle(&self) {
        let md = fs::symlink_metadata(&self.key_path)
            .unwrap_or_else(|e| panic!("key path {} missing: {e}", self.key_path.display()));
        assert!(
            md.file_type().is_file(),
            "key path is not a regular file: {:?}",
            md.file_type()
        );
        let bytes = fs::read(&self.key_path).expect("read key path");
        assert!(
            bytes == self.safe_bytes,
            "key path does not hold the safe key byte for byte"
        );
        assert!(
            fs::symlink_metadata(self.orig_path()).is_err(),
            "{} still exists",
            self.orig_path().display()
        );
    }
}

impl Default for NodeHome {
    fn default() -> Self {
        Self::new()
    }
}

fn mkdir_0700(p: &Path) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    // `recursive` leaves existing directories alone and the umask may clear bits: be exact.
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
}

/// Creates `p` (which must not exist) with mode 0600, writes and fsyncs `bytes`.
pub fn write_file_0600(p: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(bytes).expect("write key");
    f.sync_all().expect("fsync key");
}

/// The node stand-in's report lines (empty if the file does not exist yet).
pub fn read_report(path: &Path) -> Vec<Value> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l:?}: {e}"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Reads a regular file, `None` if it does not exist. Refuses anything else (opening a
/// FIFO at the key path would block the test, or worse, consume the key).
pub fn read_opt(path: &Path) -> Option<Vec<u8>> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_file() => {}
        Ok(md) => panic!(
            "{} is not a regular file: {:?}",
            path.display(),
            md.file_type()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("lstat {}: {e}", path.display()),
    }
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Some(v)
}

/// Whether `path` is currently a FIFO (lstat, never opens it).
pub fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Names in the key's directory that must not outlive a run: `P.orig`, our temporary
/// names (`.<name>.ssm-cosmovisor-*.tmp`), and any FIFO. Empty when the slot is clean.
pub fn slot_leftovers(home: &NodeHome) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let dir = home.key_path().parent().expect("key dir");
    let key_name = home
        .key_path()
        .file_name()
        .expect("key file name")
        .to_string_lossy()
        .into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().expect("file type");
        if name == format!("{key_name}.orig")
            || (name.starts_with(&format!(".{key_name}.ssm-cosmovisor-")) && name.ends_with(".tmp"))
            || name.contains("ssm-cosmovisor")
        {
            out.push(name);
        } else if ft.is_fifo() {
            out.push(format!("{name} (FIFO)"));
        }
    }
    out.sort();
    out
}

/// Asserts the idle state ([`NodeHome::assert_idle`]) and that nothing else was left in the
/// key's directory ([`slot_leftovers`]).
pub fn assert_clean_idle(home: &NodeHome) {
    home.assert_idle();
    let left = slot_leftovers(home);
    assert!(
        left.is_empty(),
        "left behind in the key directory: {left:?}"
    );
}

/// What [`dir_snapshot`] records: name → (file type, inode, mode, uid, content of regular
/// files).
pub type DirSnapshot = std::collections::BTreeMap<String, (String, u64, u32, u32, Vec<u8>)>;

/// A directory listing precise enough to prove a refusal changed nothing: name → (file
/// type, inode, mode, uid, content of regular files).
pub fn dir_snapshot(dir: &Path) -> DirSnapshot {
    use std::os::unix::fs::MetadataExt;
    let mut m = std::collections::BTreeMap::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let md = fs::symlink_metadata(e.path()).expect("lstat");
        let bytes = if md.file_type().is_file() {
            fs::read(e.path()).expect("read regular file")
        } else {
            Vec::new()
        };
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            (
                format!("{:?}", md.file_type()),
                md.ino(),
                md.mode(),
                md.uid(),
                bytes,
            ),
        );
    }
    m
}

/// The node stand-in's complete report lines. Unlike [`read_report`], safe while a node may
/// be writing: a line read half-written (a read can overlap an append) is left for the next
/// poll instead of failing the parse.
pub fn complete_reports(home: &NodeHome) -> Vec<Value> {
    let text = match fs::read_to_string(home.report_path()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", home.report_path().display()),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l:?}: {e}")))
        .filter(is_start_report)
        .collect()
}

/// A node start's report (it has an `outcome`), not a line about how a node
/// stopped or a `pre-upgrade` call.
fn is_start_report(v: &Value) -> bool {
    v.get("outcome").is_some()
}

/// The node's `{"stopped_by": …, "pid": …}` lines: how each node stopped.
pub fn stop_reports(home: &NodeHome) -> Vec<Value> {
    read_report(&home.report_path())
        .into_iter()
        .filter(|v| v.get("stopped_by").is_some())
        .collect()
}

/// Starts `c` with the stop signals at their default action, as systemd or ssm-cosmovisor
/// start cosmovisor and the node. An ignored disposition survives `exec`, and a test run
/// from a non-interactive shell's background job has SIGINT and SIGQUIT ignored; cosmovisor
/// 1.7 (like any Go program) and its stand-in leave an inherited SIG_IGN as it is, so
/// without this a stand-in tested for dying of SIGINT would not.
pub fn default_stop_signals(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only `signal(2)`, which is async-signal-safe, and no
    // allocation.
    unsafe {
        c.pre_exec(|| {
            for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}
