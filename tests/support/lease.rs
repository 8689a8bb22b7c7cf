//! Failover-lease helpers shared by the lease test files: hosts (a node
//! home plus the command that runs our binary there with the lease), the
//! lease table on moto, an outside poller of the lease item, and timing
//! from our JSON log.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;

pub const PARAM: &str = "/validators/lease/priv_validator_key";
pub const TABLE: &str = "ssm-cosmovisor-lease";
/// Short, so a takeover after expiry takes seconds, yet with requests timing
/// out after 1 s, which Python moto on a loaded 2-core machine still meets:
/// renew every 2 s, the holder keeps its node 4 s past its last confirmed
/// renewal, SIGKILL 1 s later; a standby waits 6 s.
pub const DURATION_S: u64 = 6;
/// Heights skipped after an expiry takeover by default (duration in s + 1).
pub const TAKEOVER_HEIGHTS: i64 = DURATION_S as i64 + 1;
pub const T: Duration = Duration::from_secs(40);

/// Creates the lease table (partition key `lease`).
pub fn create_table(endpoint: &str) {
    dynamodb_create_table(endpoint, TABLE, "lease");
}

/// The lease item as plain JSON (`{}` if absent).
pub fn lease_item(endpoint: &str) -> Value {
    dynamodb_get_item(endpoint, TABLE, "lease", PARAM)
        .map(|item| item_json(&item))
        .unwrap_or_else(|| Value::Object(Default::default()))
}

pub fn item_height(endpoint: &str) -> i64 {
    lease_item(endpoint)["height"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .unwrap_or(-1)
}

/// One host: its node home and the command that runs our binary there.
pub struct Host {
    pub home: NodeHome,
    pub name: &'static str,
    /// Split trust only: the root-owned directory of the relocated key path.
    split: Option<tempfile::TempDir>,
}

impl Host {
    pub fn new(name: &'static str) -> Host {
        Host {
            home: NodeHome::new(),
            name,
            split: None,
        }
    }

    /// A host in split trust as `ssm-cosmovisor-split@.service` runs it: the tool is root
    /// bounded to the unit's capabilities (no CAP_SYS_PTRACE, no CAP_DAC_*), the node runs
    /// as `nobody`, owns its home (mode 0700) and report file, and the key path is
    /// relocated to a root-owned directory named by `SSM_COSMOVISOR_KEY_FILE`. The caller
    /// must be root with `setpriv` ([`root_with_setpriv`]).
    pub fn split(name: &'static str) -> Host {
        use std::os::unix::fs::PermissionsExt;
        let outer = tempfile::Builder::new()
            .prefix("ssmcv-split-")
            .tempdir()
            .unwrap();
        let slot_dir = outer.path().join("run");
        std::fs::create_dir(&slot_dir).unwrap();
        for d in [outer.path(), slot_dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let key_file = slot_dir.join("priv_validator_key.json");
        let home = NodeHome::with_options(NodeHomeOptions {
            key_file: Some(key_file.display().to_string()),
            upgrades: 0,
        });
        let (uid, gid) = nobody();
        chown_tree(home.path(), uid, gid);
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(home.root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::write(home.report_path(), b"").unwrap();
        nix::unistd::chown(
            &home.report_path(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
        Host {
            home,
            name,
            split: Some(outer),
        }
    }

    /// Our binary with this host's environment (no arguments yet).
    pub fn base_cmd(&self, endpoint: &str) -> Command {
        let mut c = tool_cmd(&self.home, Some(endpoint));
        c.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_LOG_FORMAT", "json")
            .env("SSM_COSMOVISOR_LEASE_TABLE", TABLE)
            .env("SSM_COSMOVISOR_LEASE_DURATION", format!("{DURATION_S}s"));
        c
    }

    /// `run start --home <home>` (in split trust: as bounded root, for the node user).
    pub fn cmd(&self, endpoint: &str) -> Command {
        let mut c = self.base_cmd(endpoint);
        if self.split.is_some() {
            c.env("SSM_COSMOVISOR_NODE_USER", "nobody")
                .env("SSM_COSMOVISOR_KEY_FILE", self.home.key_path());
        }
        c.args(["run", "start", "--home"]).arg(self.home.path());
        match self.split {
            Some(_) => as_split_unit_root(&c),
            None => c,
        }
    }

    pub fn spawn(&self, cmd: &mut Command) -> Tool {
        Tool::spawn(cmd, self.home.scratch(&format!("{}.log", self.name)))
    }

    /// Reports of nodes that got the consensus key.
    pub fn key_reports(&self, key: &TestKey) -> Vec<Value> {
        complete_reports(&self.home)
            .into_iter()
            .filter(|r| r["outcome"] == "ok" && r["pub_key"] == key.pub_b64.as_str())
            .collect()
    }

    /// Reports of nodes that started on the host's safe key (standby).
    pub fn safe_reports(&self) -> Vec<Value> {
        complete_reports(&self.home)
            .into_iter()
            .filter(|r| r["pub_key"] == self.home.safe_key.pub_b64.as_str())
            .collect()
    }

    pub fn state_path(&self) -> std::path::PathBuf {
        self.home.path().join("data/priv_validator_state.json")
    }

    /// What the node "signed": its sign-state file, as CometBFT would write it.
    pub fn sign(&self, height: i64, round: i32, step: i8) {
        let tmp = self.home.path().join("data/.state.tmp");
        write_file_0600(
            &tmp,
            format!(
                "{{\"height\":\"{height}\",\"round\":{round},\"step\":{step},\"signature\":\"c2ln\",\"signbytes\":\"AB\"}}"
            )
            .as_bytes(),
        );
        std::fs::rename(&tmp, self.state_path()).unwrap();
    }

    /// Spawns `cmd` and waits until this host's node has `key`; returns the
    /// tool and the keyed node's pid.
    pub fn start_holder(&self, cmd: &mut Command, key: &TestKey) -> (Tool, i32) {
        let t = self.spawn(cmd);
        assert!(
            wait_for(|| !self.key_reports(key).is_empty(), T),
            "{} never got the key; log:\n{}",
            self.name,
            t.log_text()
        );
        let node = self.key_reports(key)[0]["pid"].as_i64().unwrap() as i32;
        (t, node)
    }

    /// "Signs" `height` (round 1, step 2) and waits until a renewal carried
    /// it into the lease.
    pub fn sign_carried(&self, endpoint: &str, height: i64) {
        self.sign(height, 1, 2);
        assert!(
            wait_for(|| item_height(endpoint) == height, T),
            "{}'s renewal did not carry its state: {}",
            self.name,
            lease_item(endpoint)
        );
    }

    pub fn sign_state(&self) -> (i64, i64, i64) {
        let v: Value = serde_json::from_slice(&std::fs::read(self.state_path()).unwrap()).unwrap();
        (
            v["height"].as_str().unwrap().parse().unwrap(),
            v["round"].as_i64().unwrap(),
            v["step"].as_i64().unwrap(),
        )
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `2026-11-25T10:11:01.464070Z` (our JSON log's timestamp) as µs since the epoch.
pub fn rfc3339_us(ts: &str) -> u64 {
    let (date, time) = ts
        .trim_end_matches('Z')
        .split_once('T')
        .expect("T in timestamp");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    let micros: i64 = format!("{frac:0<6}")[..6].parse().unwrap();
    (secs * 1_000_000 + micros) as u64
}

/// When (µs since the epoch) `event` was logged by a JSON-logging tool.
pub fn event_us(tool: &Tool, event: &str) -> u64 {
    let ev = tool.events(event);
    let e = ev
        .first()
        .unwrap_or_else(|| panic!("no {event} in:\n{}", tool.log_text()));
    rfc3339_us(e["timestamp"].as_str().expect("timestamp"))
}

/// One lease version as an outside observer saw it appear: it landed after
/// `after_us` (a read sent then did not see it) and before `seen_us`.
#[derive(Debug, Clone)]
pub struct Version {
    pub rvn: String,
    pub holder: String,
    pub after_us: u64,
    pub seen_us: u64,
}

/// Reads the lease item every 10 ms with the SDK and records each new version.
pub struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Version>>>,
}

impl Poller {
    pub fn start(endpoint: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Version>>> = Arc::default();
        let (flag, out, ep) = (stop.clone(), seen.clone(), endpoint.to_string());
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let c = dynamodb_client(&ep);
            let mut last_sent = 0u64;
            let mut last_rvn = String::new();
            while !flag.load(Ordering::SeqCst) {
                let sent = unix_us();
                let r = rt.block_on(
                    c.get_item()
                        .table_name(TABLE)
                        .key(
                            "lease",
                            aws_sdk_dynamodb::types::AttributeValue::S(PARAM.into()),
                        )
                        .consistent_read(true)
                        .send(),
                );
                let got = unix_us();
                if let Ok(Some(item)) = r.map(|o| o.item) {
                    let s = |k: &str| {
                        item.get(k)
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                            .unwrap_or_default()
                    };
                    if s("rvn") != last_rvn {
                        last_rvn = s("rvn");
                        out.lock().unwrap().push(Version {
                            rvn: last_rvn.clone(),
                            holder: s("holder"),
                            after_us: last_sent,
                            seen_us: got,
                        });
                    }
                }
                last_sent = sent;
                thread::sleep(Duration::from_millis(10));
            }
        });
        Poller { stop, seen }
    }

    pub fn versions(&self) -> Vec<Version> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The holder id a tool logged.
pub fn holder_of(tool: &Tool) -> String {
    tool.events("lease_config")[0]["holder"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Watches host A's keyed node from outside, every 5 ms, until B's node has
/// the key. Returns when A's node was first seen dead (µs since the epoch),
/// `None` if it still ran when B's node had the key.
pub fn watch_takeover(a_node: i32, b: &Host, key: &TestKey, tb: &Tool, ta: &Tool) -> Option<u64> {
    let mut a_node_dead_us = None;
    let deadline = Instant::now() + T;
    while b.key_reports(key).is_empty() {
        if a_node_dead_us.is_none() && !pid_alive(a_node) {
            a_node_dead_us = Some(unix_us());
        }
        assert!(
            Instant::now() < deadline,
            "B never took over; B log:\n{}\nA log:\n{}",
            tb.log_text(),
            ta.log_text()
        );
        thread::sleep(Duration::from_millis(5));
    }
    a_node_dead_us
}

/// moto with the consensus key at [`PARAM`] and the lease table.
pub fn setup() -> (Moto, TestKey) {
    let (moto, key) = moto_with_key(PARAM);
    create_table(&moto.endpoint());
    (moto, key)
}

/// Starts host A as the holder (its node has the key) and host B as the
/// standby (its node runs on the safe key and waits).
pub fn holder_and_standby(
    endpoint_a: &str,
    endpoint_b: &str,
    key: &TestKey,
    a: &Host,
    b: &Host,
    extra_a: &[(&str, &str)],
) -> (Tool, Tool) {
    let mut ca = a.cmd(endpoint_a);
    ca.envs(extra_a.iter().copied());
    let ta = a.spawn(&mut ca);
    assert!(
        wait_for(|| !a.key_reports(key).is_empty(), T),
        "A never got the key; log:\n{}",
        ta.log_text()
    );
    assert_eq!(ta.events("lease_acquired").len(), 1);
    let tb = b.spawn(&mut b.cmd(endpoint_b));
    assert!(
        wait_for(
            || !b.safe_reports().is_empty() && tb.log_text().contains("lease_waiting"),
            T
        ),
        "B did not stand by on its safe key; log:\n{}",
        tb.log_text()
    );
    (ta, tb)
}
