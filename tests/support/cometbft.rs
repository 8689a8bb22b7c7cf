//! The CometBFT RPC stand-in (`tests/standins/cometbft_rpc.py`) for the guard's tests: a
//! scripted chain in a JSON file the stand-in re-reads at every request.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{repo_dir, venv_python, wait_for, KillOnDrop};

/// The chain id every test home's genesis names.
pub const CHAIN_ID: &str = "guardtest-1";

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A chain at `tip`, its latest block 2 s old, no signature of ours.
pub fn chain(tip: i64) -> Value {
    json!({
        "chain_id": CHAIN_ID,
        "tip": tip,
        "tip_time_ms": unix_ms() - 2000,
        "earliest": 1,
        "signatures": {},
    })
}

/// `address` signed `heights` (COMMIT, or NIL with `nil`), timestamped `at_ms`.
pub fn signed(
    c: &mut Value,
    address: &str,
    heights: impl IntoIterator<Item = i64>,
    nil: bool,
    at_ms: i64,
) {
    for h in heights {
        c["signatures"][h.to_string()] = json!([
            {"flag": 2, "address": "0000000000000000000000000000000000000001", "time_ms": at_ms},
            {"flag": if nil { 3 } else { 2 }, "address": address, "time_ms": at_ms},
        ]);
    }
}

/// One running stand-in endpoint.
pub struct RpcStandin {
    pub url: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
    _proc: KillOnDrop,
}

impl RpcStandin {
    pub fn start(c: &Value) -> RpcStandin {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("chain.json");
        let port_file = dir.path().join("port");
        std::fs::write(&file, c.to_string()).expect("write chain");
        let proc = KillOnDrop::spawn(
            Command::new(venv_python())
                .arg(repo_dir().join("tests/standins/cometbft_rpc.py"))
                .arg(&file)
                .arg(&port_file),
        );
        assert!(
            wait_for(|| port_file.exists(), Duration::from_secs(20)),
            "the CometBFT RPC stand-in did not start"
        );
        let port = std::fs::read_to_string(&port_file).expect("port");
        RpcStandin {
            url: format!("http://127.0.0.1:{}", port.trim()),
            file,
            _dir: dir,
            _proc: proc,
        }
    }

    /// Replaces the chain it serves.
    pub fn set(&self, c: &Value) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, c.to_string()).expect("write chain");
        std::fs::rename(&tmp, &self.file).expect("rename chain");
    }
}

/// Writes the node's genesis: its chain id, where the guard reads it.
pub fn write_genesis(home: &std::path::Path) {
    std::fs::write(
        home.join("config/genesis.json"),
        json!({"genesis_time": "2024-01-01T00:00:00Z", "chain_id": CHAIN_ID, "app_state": {"big": [1, 2, 3]}}).to_string(),
    )
    .expect("genesis");
}

/// Writes the node's genesis and its sign state (`state_height`, step 3).
pub fn guard_home(home: &std::path::Path, state_height: i64) {
    write_genesis(home);
    std::fs::write(
        home.join("data/priv_validator_state.json"),
        format!("{{\n  \"height\": \"{state_height}\",\n  \"round\": 0,\n  \"step\": 3\n}}"),
    )
    .expect("state");
}

/// The chain of the chaos harness's ledger (the stand-in's ledger mode): signatures of
/// `address` as the node stand-ins append them, the tip from the chain clock.
pub fn ledger_chain(
    ledger: &std::path::Path,
    address: &str,
    epoch_ms: u64,
    block_ms: u64,
) -> Value {
    json!({
        "chain_id": CHAIN_ID,
        "tip": 0,
        "tip_time_ms": 0,
        "earliest": 1,
        "signatures": {},
        "ledger": {"path": ledger, "address": address, "epoch_ms": epoch_ms, "block_ms": block_ms},
    })
}
