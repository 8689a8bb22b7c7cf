//! The chaos test's cluster: several "hosts" on one moto (SSM + DynamoDB), each with its
//! own node home, its own fault proxy in front of moto, and its own `ssm-cosmovisor run`
//! (USE_SSM_KEY=true, the same parameter and lease table) whose signing node stand-ins
//! append to one shared ledger.
//!
//! The harness plays systemd for each host (`KillMode=mixed`, `ExecStopPost=… restore`,
//! `Restart=always` with a short `RestartSec`): when the tool exits, whatever is left of
//! its process group is SIGKILLed at once (what `mixed` does once the main process is
//! gone), `restore` runs and the slot is checked (idle, the safe key byte for byte), and the
//! tool is started again.
//!
//! From outside it watches: each tool's JSON log (read from a pipe as it is written, so a
//! fault can fire the moment a lease event is logged), each node's report (a node that read
//! the validator's key gets a pidfd, and a thread blocked in poll on it records the moment
//! it dies), and the ledger (progress).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::checker::{Entry, FaultRec, KeyHold, Observations, RestoreRec, Signature};
use super::{
    children, cmdline_contains, group_members, ledger_chain, pid_alive, pids_mentioning, put_key,
    run_with_timeout, secret_in, slot_leftovers, tool_cmd, write_file_0600, write_genesis, Fault,
    KillOnDrop, Moto, NodeHome, Relay, RpcStandin, TestKey,
};

/// The validator key's SSM parameter.
pub const PARAM: &str = "/validators/chaos/priv_validator_key";
pub use super::lease::{create_table, rfc3339_us, unix_us, TABLE};

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub hosts: usize,
    /// Lease duration (whole seconds).
    pub lease: Duration,
    /// Chain block time: the takeover skip (lease s + 1 heights) assumes 1 s or slower.
    pub block: Duration,
    /// How long a node catching up takes per missed height.
    pub catchup: Duration,
    /// systemd's RestartSec (the units say 15 s; shortened so faults come back quickly).
    pub restart_delay: Duration,
    /// The guard (issue 22) with this look-back, against a CometBFT RPC stand-in serving
    /// the ledger; `None`: no guard.
    pub guard_lookback: Option<u64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            hosts: 3,
            lease: Duration::from_secs(6),
            block: Duration::from_secs(1),
            catchup: Duration::from_millis(50),
            restart_delay: Duration::from_secs(1),
            guard_lookback: None,
        }
    }
}

/// What to do to a host's tool when a trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM to the tool (systemd's stop with KillMode=mixed).
    TermTool,
    /// SIGKILL to the tool alone.
    KillTool,
    /// SIGKILL to the tool's whole process tree.
    KillTree,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::TermTool => "sigterm",
            Action::KillTool => "kill9_tool",
            Action::KillTree => "kill9_tree",
        }
    }
}

/// A fault armed to fire the moment any host logs one of `events`.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub events: Vec<&'static str>,
    pub action: Action,
    pub fault_id: usize,
    pub expires_us: u64,
}

/// One run of the tool on a host.
struct Run {
    id: u64,
    pid: i32,
}

/// One host.
pub struct Host {
    pub idx: usize,
    pub name: String,
    pub home: NodeHome,
    pub proxy: Relay,
    run: Mutex<Option<Run>>,
    stopping: AtomicBool,
    log_path: PathBuf,
    log: Mutex<File>,
    /// Pids we SIGSTOPped and have not SIGCONTed yet.
    stopped: Mutex<Vec<i32>>,
}

#[derive(Default)]
struct JournalInner {
    entries: Vec<Entry>,
    holds: Vec<KeyHold>,
    known_nodes: HashSet<(usize, i32)>,
    faults: Vec<FaultRec>,
    restores: Vec<RestoreRec>,
    problems: Vec<String>,
    trigger: Option<Trigger>,
}

/// What the harness observed, shared by its threads.
#[derive(Default)]
pub struct Journal {
    inner: Mutex<JournalInner>,
    /// Highest height in the ledger so far, and when it was first seen.
    max_height: AtomicI64,
    progress_us: AtomicU64,
    runs: AtomicU64,
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, JournalInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The cluster: moto, the hosts, the ledger, and the harness threads.
pub struct Cluster {
    pub cfg: ClusterConfig,
    pub moto: Moto,
    pub key: TestKey,
    pub hosts: Vec<Arc<Host>>,
    pub journal: Arc<Journal>,
    pub ledger: PathBuf,
    pub epoch_ms: u64,
    pub start_us: u64,
    /// The CometBFT RPC stand-in the guard asks, with a guard.
    pub rpc: Option<RpcStandin>,
    dir: Option<tempfile::TempDir>,
    systemd: Vec<JoinHandle<()>>,
    deaths: Arc<Mutex<Vec<JoinHandle<()>>>>,
    watcher_stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

/// The fencer the tool `tool` started: its child whose command line says `__fence`.
fn fencer_of(tool: i32) -> Option<i32> {
    children(tool)
        .into_iter()
        .find(|&pid| cmdline_contains(pid, b"__fence"))
}

impl Host {
    fn note(&self, line: &str) {
        let mut f = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
        let _ = f.write_all(b"\n");
    }

    /// The host's whole "cgroup": its tool's process group and anything mentioning its
    /// directory (a helper that left the group is still caught).
    fn tree(&self, pgid: Option<i32>) -> Vec<i32> {
        let mut v = pgid.map(group_members).unwrap_or_default();
        for p in pids_mentioning(self.home.root.path()) {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// The current tool's pid, if one runs.
    pub fn tool_pid(&self) -> Option<i32> {
        self.run.lock().unwrap().as_ref().map(|r| r.pid)
    }

    /// Signals the tool alone. False if no tool runs.
    pub fn signal_tool(&self, sig: Signal) -> bool {
        let g = self.run.lock().unwrap();
        let Some(r) = g.as_ref() else { return false };
        let ok = kill(Pid::from_raw(r.pid), sig).is_ok();
        if ok && sig == Signal::SIGSTOP {
            self.stopped.lock().unwrap().push(r.pid);
        }
        ok
    }

    /// Signals the tool's whole tree (its process group first, in one call). False if no
    /// tool runs.
    pub fn signal_tree(&self, sig: Signal) -> bool {
        let g = self.run.lock().unwrap();
        let Some(r) = g.as_ref() else { return false };
        let _ = killpg(Pid::from_raw(r.pid), sig);
        let tree = self.tree(Some(r.pid));
        for &p in &tree {
            let _ = kill(Pid::from_raw(p), sig);
        }
        if sig == Signal::SIGSTOP {
            let mut st = self.stopped.lock().unwrap();
            st.push(-r.pid);
            st.extend(tree);
        }
        true
    }

    /// Signals the tool's fencer (its child running `__fence`) alone. False if there is
    /// none (no tool, or a tool without a fencer).
    pub fn signal_fencer(&self, sig: Signal) -> bool {
        let g = self.run.lock().unwrap();
        let Some(r) = g.as_ref() else { return false };
        let Some(f) = fencer_of(r.pid) else {
            return false;
        };
        let ok = kill(Pid::from_raw(f), sig).is_ok();
        if ok && sig == Signal::SIGSTOP {
            self.stopped.lock().unwrap().push(f);
        }
        ok
    }

    /// SIGCONTs everything we stopped on this host.
    pub fn cont(&self) {
        for p in self.stopped.lock().unwrap().drain(..) {
            if p < 0 {
                let _ = killpg(Pid::from_raw(-p), Signal::SIGCONT);
            } else {
                let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
            }
        }
    }
}

impl Cluster {
    /// Starts moto, stores the key, creates the table, and starts every host's tool.
    pub fn start(cfg: ClusterConfig) -> Cluster {
        let moto = Moto::start();
        let key = TestKey::ed25519();
        put_key(&moto.endpoint(), PARAM, &key);
        create_table(&moto.endpoint());
        let dir = tempfile::Builder::new()
            .prefix("chaos-")
            .tempdir()
            .expect("chaos dir");
        let ledger = dir.path().join("ledger.jsonl");
        let start_us = unix_us();
        let epoch_ms = start_us / 1000;
        let hosts: Vec<Arc<Host>> = (0..cfg.hosts)
            .map(|i| {
                let name = format!("h{}", i + 1);
                let log_path = dir.path().join(format!("{name}.log"));
                Arc::new(Host {
                    idx: i,
                    home: NodeHome::new(),
                    proxy: Relay::start(moto.port()),
                    run: Mutex::new(None),
                    stopping: AtomicBool::new(false),
                    log: Mutex::new(File::create(&log_path).expect("host log")),
                    log_path,
                    stopped: Mutex::new(Vec::new()),
                    name,
                })
            })
            .collect();
        let journal: Arc<Journal> = Arc::default();
        journal.progress_us.store(start_us, Ordering::SeqCst);
        let rpc = cfg.guard_lookback.map(|_| {
            for h in &hosts {
                write_genesis(h.home.path());
            }
            RpcStandin::start(&ledger_chain(
                &ledger,
                &key.address,
                epoch_ms,
                cfg.block.as_millis() as u64,
            ))
        });
        let mut c = Cluster {
            cfg,
            moto,
            key,
            hosts,
            journal,
            ledger,
            epoch_ms,
            start_us,
            rpc,
            dir: Some(dir),
            systemd: Vec::new(),
            deaths: Arc::default(),
            watcher_stop: Arc::default(),
            watcher: None,
        };
        c.start_watcher();
        for h in c.hosts.clone() {
            let env = c.tool_env(&h);
            let (j, cfg, deaths) = (c.journal.clone(), c.cfg.clone(), c.deaths.clone());
            c.systemd.push(
                thread::Builder::new()
                    .name(format!("systemd-{}", h.name))
                    .spawn(move || systemd_loop(&h, &env, &cfg, &j, &deaths))
                    .expect("systemd thread"),
            );
        }
        c
    }

    /// The environment of a host's tool (and through it, its node), besides the AWS
    /// settings [`tool_cmd`] gives it.
    fn tool_env(&self, h: &Host) -> Vec<(String, String)> {
        let s = |x: &str| x.to_string();
        vec![
            (s("USE_SSM_KEY"), s("true")),
            (s("AWS_PARAMETER"), s(PARAM)),
            (s("SSM_COSMOVISOR_LOG_FORMAT"), s("json")),
            (s("SSM_COSMOVISOR_LEASE_TABLE"), s(TABLE)),
            (
                s("SSM_COSMOVISOR_LEASE_DURATION"),
                format!("{}s", self.cfg.lease.as_secs()),
            ),
            (s("NODE_SIGN_LEDGER"), self.ledger.display().to_string()),
            (s("NODE_SIGN_ADDRESS"), self.key.address.clone()),
            (s("NODE_SIGN_HOST"), h.name.clone()),
            (s("NODE_SIGN_EPOCH_MS"), self.epoch_ms.to_string()),
            (
                s("NODE_SIGN_BLOCK_MS"),
                self.cfg.block.as_millis().to_string(),
            ),
            (
                s("NODE_SIGN_CATCHUP_MS"),
                self.cfg.catchup.as_millis().to_string(),
            ),
        ]
        .into_iter()
        .chain(self.rpc.iter().flat_map(|rpc| {
            [
                (s("SSM_COSMOVISOR_GUARD_RPC"), rpc.url.clone()),
                (
                    s("SSM_COSMOVISOR_GUARD_LOOKBACK"),
                    self.cfg.guard_lookback.unwrap_or(30).to_string(),
                ),
                (s("SSM_COSMOVISOR_GUARD_REQUEST_TIMEOUT"), s("2s")),
                (s("SSM_COSMOVISOR_GUARD_TIMEOUT"), s("5s")),
            ]
        }))
        .collect()
    }

    /// A rogue signer (issue 22): a node stand-in holding the consensus key in a plain file
    /// of its own home, outside the lease and the tool, signing into the ledger as host
    /// `rogue` from the chain's current height on (it joins at the tip, as a copy of the
    /// validator started on another machine would).
    pub fn start_rogue(&self) -> (NodeHome, KillOnDrop) {
        let home = NodeHome::new();
        let key_file = home.scratch("consensus-key.json");
        write_file_0600(&key_file, self.key.json.as_bytes());
        let tip = (unix_us() / 1000).saturating_sub(self.epoch_ms)
            / self.cfg.block.as_millis() as u64
            + 1;
        std::fs::write(
            home.path().join("data/priv_validator_state.json"),
            format!("{{\"height\":\"{tip}\",\"round\":0,\"step\":3}}"),
        )
        .expect("rogue state");
        let mut cmd = home.node_cmd();
        cmd.env("NODE_KEY_FILE", &key_file)
            .env("NODE_SIGN_LEDGER", &self.ledger)
            .env("NODE_SIGN_ADDRESS", &self.key.address)
            .env("NODE_SIGN_HOST", "rogue")
            .env("NODE_SIGN_EPOCH_MS", self.epoch_ms.to_string())
            .env("NODE_SIGN_BLOCK_MS", self.cfg.block.as_millis().to_string())
            .env(
                "NODE_SIGN_CATCHUP_MS",
                self.cfg.catchup.as_millis().to_string(),
            )
            .stdout(Stdio::null());
        let p = KillOnDrop::spawn(&mut cmd);
        (home, p)
    }

    /// Watches node reports (new key-holding nodes) and the ledger (progress).
    fn start_watcher(&mut self) {
        let (hosts, j, stop, deaths, ledger, addr) = (
            self.hosts.clone(),
            self.journal.clone(),
            self.watcher_stop.clone(),
            self.deaths.clone(),
            self.ledger.clone(),
            self.key.address.clone(),
        );
        self.watcher = Some(
            thread::Builder::new()
                .name("chaos-watcher".into())
                .spawn(move || {
                    let mut report_at = vec![0u64; hosts.len()];
                    let mut ledger_at = 0u64;
                    loop {
                        let last = stop.load(Ordering::SeqCst);
                        for h in &hosts {
                            for line in read_new_lines(&h.home.report_path(), &mut report_at[h.idx])
                            {
                                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                                    continue;
                                };
                                if v["outcome"] == "ok" && v["address"] == addr.as_str() {
                                    let pid = v["pid"].as_i64().unwrap_or(0) as i32;
                                    let read =
                                        v["read_done_unix_us"].as_u64().unwrap_or_else(unix_us);
                                    register_node(h, &j, &deaths, pid, read);
                                }
                            }
                        }
                        for line in read_new_lines(&ledger, &mut ledger_at) {
                            if let Some(s) = Signature::parse(&line) {
                                if s.height > j.max_height.load(Ordering::SeqCst) {
                                    j.max_height.store(s.height, Ordering::SeqCst);
                                    j.progress_us.store(s.unix_us, Ordering::SeqCst);
                                }
                            }
                        }
                        if last {
                            return;
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                })
                .expect("watcher thread"),
        );
    }

    /// The host whose node holds the key now (the first if, wrongly, several do).
    pub fn holder(&self) -> Option<usize> {
        let g = self.journal.lock();
        g.holds
            .iter()
            .filter(|h| h.death_us.is_none())
            .filter_map(|h| self.hosts.iter().position(|x| x.name == h.host))
            .next()
    }

    /// The key-holding node (host name, pid), if any.
    pub fn holder_node(&self) -> Option<(String, i32)> {
        let g = self.journal.lock();
        g.holds
            .iter()
            .find(|h| h.death_us.is_none())
            .map(|h| (h.host.clone(), h.pid))
    }

    /// Highest height signed so far and when it was signed.
    pub fn progress(&self) -> (i64, u64) {
        (
            self.journal.max_height.load(Ordering::SeqCst),
            self.journal.progress_us.load(Ordering::SeqCst),
        )
    }

    /// Records a fault; returns its id.
    pub fn record_fault(&self, mut f: FaultRec) -> usize {
        let mut g = self.journal.lock();
        f.id = g.faults.len() + 1;
        let id = f.id;
        g.faults.push(f);
        id
    }

    /// Marks a fault healed now.
    pub fn end_fault(&self, id: usize) {
        let mut g = self.journal.lock();
        if let Some(f) = g.faults.iter_mut().find(|f| f.id == id) {
            f.end_us = unix_us();
        }
    }

    /// Adds to a fault's description.
    pub fn annotate_fault(&self, id: usize, text: &str) {
        let mut g = self.journal.lock();
        if let Some(f) = g.faults.iter_mut().find(|f| f.id == id) {
            f.detail.push_str(text);
        }
    }

    /// Arms a trigger (replacing any armed one).
    pub fn arm(&self, t: Trigger) {
        self.journal.lock().trigger = Some(t);
    }

    /// Whether a trigger is still armed (expired ones are dropped here).
    pub fn trigger_pending(&self) -> bool {
        let mut g = self.journal.lock();
        if g.trigger.as_ref().is_some_and(|t| unix_us() > t.expires_us) {
            let t = g.trigger.take().expect("checked");
            if let Some(f) = g.faults.iter_mut().find(|f| f.id == t.fault_id) {
                f.detail.push_str("; trigger expired unfired");
            }
        }
        g.trigger.is_some()
    }

    /// Stops the chaos: heals every proxy, SIGCONTs everything stopped, stops every tool
    /// (all at once, so no host takes a lease another just released), waits for the
    /// harness's restores, and returns what was observed.
    pub fn shutdown(mut self, seed: u64) -> (Observations, ChaosArtifacts) {
        let end_us = unix_us();
        self.journal.lock().trigger = None;
        for h in &self.hosts {
            h.proxy.set_fault(Fault::Pass);
            h.cont();
            h.stopping.store(true, Ordering::SeqCst);
        }
        for h in &self.hosts {
            h.signal_tool(Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for t in std::mem::take(&mut self.systemd) {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let mut problems = Vec::new();
        for h in &self.hosts {
            if let Some(pid) = h.tool_pid() {
                problems.push(format!(
                    "{}: the tool (pid {pid}) did not exit within 60 s of SIGTERM",
                    h.name
                ));
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let left = h.tree(None);
            if !left.is_empty() {
                problems.push(format!(
                    "{}: processes left after the tool stopped: {left:?}",
                    h.name
                ));
                for p in left {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if let Some(p) = slot_problem(&h.home) {
                problems.push(format!("{}: slot not idle at the end: {p}", h.name));
            }
        }
        self.watcher_stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        // Every keyed node is dead by now; their death threads end.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for t in std::mem::take(&mut *self.deaths.lock().unwrap()) {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let mut signatures = Vec::new();
        if let Ok(text) = fs::read_to_string(&self.ledger) {
            for l in text.lines() {
                match Signature::parse(l) {
                    Some(s) => signatures.push(s),
                    None => problems.push(format!("unparsable ledger line {l:?}")),
                }
            }
        }
        for h in &self.hosts {
            let log = fs::read_to_string(&h.log_path).unwrap_or_default();
            if let Some(what) = secret_in(&log, &self.key) {
                problems.push(format!("{}: its log contains the key's {what}", h.name));
            }
        }
        let mut g = self.journal.lock();
        for hold in g.holds.iter().filter(|h| h.death_us.is_none()) {
            if pid_alive(hold.pid) {
                problems.push(format!(
                    "{}: keyed node {} still alive after the tools stopped",
                    hold.host, hold.pid
                ));
            }
        }
        problems.append(&mut g.problems);
        let mut entries = std::mem::take(&mut g.entries);
        for h in &self.hosts {
            for r in h.proxy.records() {
                if r.op == "PutItem" {
                    if let Some((holder, released, height)) = &r.put {
                        entries.push(Entry {
                            unix_us: r.unix_us,
                            host: h.name.clone(),
                            what: format!(
                                "PROXY PutItem holder={holder} released={released} height={height} -> {} {}",
                                r.action,
                                r.status.map(|s| s.to_string()).unwrap_or_default()
                            ),
                        });
                    }
                } else if r.action != "passed" {
                    entries.push(Entry {
                        unix_us: r.unix_us,
                        host: h.name.clone(),
                        what: format!("PROXY {} -> {}", r.op, r.action),
                    });
                }
            }
        }
        entries.sort_by_key(|e| e.unix_us);
        let obs = Observations {
            seed,
            hosts: self.hosts.iter().map(|h| h.name.clone()).collect(),
            lease_us: self.cfg.lease.as_micros() as u64,
            start_us: self.start_us,
            end_us,
            signatures,
            holds: std::mem::take(&mut g.holds),
            faults: std::mem::take(&mut g.faults),
            restores: std::mem::take(&mut g.restores),
            problems,
            entries,
        };
        drop(g);
        let dir = self.dir.take().expect("shutdown runs once");
        let mut files = vec![self.ledger.clone()];
        for h in &self.hosts {
            files.push(h.log_path.clone());
            let report = dir.path().join(format!("{}-node-report.jsonl", h.name));
            let _ = fs::copy(h.home.report_path(), &report);
            files.push(report);
        }
        (obs, ChaosArtifacts { files, _dir: dir })
    }
}

impl Drop for Cluster {
    /// After a panic (no shutdown): no host may go on running, or restarting, its tool.
    fn drop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        for h in &self.hosts {
            h.stopping.store(true, Ordering::SeqCst);
            let pgid = h.tool_pid();
            for p in h.tree(pgid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            if let Some(p) = pgid {
                let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

/// The run's files (ledger, host logs, node reports), alive as long as this is.
pub struct ChaosArtifacts {
    pub files: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl ChaosArtifacts {
    /// Copies the files into `dir` (created).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        for f in &self.files {
            if let Some(n) = f.file_name() {
                fs::copy(f, dir.join(n))?;
            }
        }
        Ok(())
    }
}

/// Lines appended to `path` since `offset` (complete lines only; the offset moves past them).
fn read_new_lines(path: &Path, offset: &mut u64) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    *offset += end as u64 + 1;
    String::from_utf8_lossy(&buf[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Why the slot is not idle with the safe key, if it is not.
pub fn slot_problem(home: &NodeHome) -> Option<String> {
    let md = match fs::symlink_metadata(home.key_path()) {
        Ok(m) => m,
        Err(e) => return Some(format!("key path missing: {e}")),
    };
    if !md.file_type().is_file() {
        return Some(format!(
            "key path is a {:?}, not a regular file",
            md.file_type()
        ));
    }
    match fs::read(home.key_path()) {
        Ok(b) if b == home.safe_bytes => {}
        Ok(_) => return Some("the key path no longer holds the safe key byte for byte".into()),
        Err(e) => return Some(format!("cannot read the key path: {e}")),
    }
    let left = slot_leftovers(home);
    (!left.is_empty()).then(|| format!("left in the key directory: {left:?}"))
}

/// Starts watching a node that read the validator's key: a pidfd and a thread blocked in
/// poll on it record its death.
fn register_node(
    h: &Host,
    j: &Arc<Journal>,
    deaths: &Arc<Mutex<Vec<JoinHandle<()>>>>,
    pid: i32,
    read_us: u64,
) {
    {
        let mut g = j.lock();
        if !g.known_nodes.insert((h.idx, pid)) {
            // Seen already (report and `delivered` both name it): keep the earlier read.
            if let Some(k) = g
                .holds
                .iter_mut()
                .find(|k| k.host == h.name && k.pid == pid)
            {
                k.read_us = k.read_us.min(read_us);
            }
            return;
        }
    }
    let root = h.home.root.path().as_os_str().as_encoded_bytes().to_vec();
    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
        // The pidfd pins the process: if its command line names this host, it is our node.
        .filter(|_| cmdline_contains(pid, &root));
    let mut g = j.lock();
    let idx = g.holds.len();
    g.holds.push(KeyHold {
        host: h.name.clone(),
        pid,
        read_us,
        death_us: None,
        death_exact: pidfd.is_some(),
    });
    let Some(fd) = pidfd else {
        g.holds[idx].death_us = Some(unix_us());
        return;
    };
    drop(g);
    let j = j.clone();
    let t = thread::spawn(move || {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        while let Err(rustix::io::Errno::INTR) = rustix::event::poll(&mut fds, None) {}
        let now = unix_us();
        if let Some(k) = j.lock().holds.get_mut(idx) {
            k.death_us = Some(now);
        }
    });
    deaths.lock().unwrap().push(t);
}

/// Reads one tool run's output (stdout and stderr share the pipe) until every writer is
/// gone: appends it to the host's log, records its JSON events, fires an armed trigger.
fn read_tool_output(
    pipe: File,
    h: &Host,
    run_id: u64,
    j: &Arc<Journal>,
    deaths: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        h.note(&line);
        if !line.starts_with('{') {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(event) = v["event"].as_str() else {
            continue;
        };
        let t = v["timestamp"]
            .as_str()
            .map(rfc3339_us)
            .unwrap_or_else(unix_us);
        // Fire first: "the moment it logs" is now.
        let fire = {
            let mut g = j.lock();
            match &g.trigger {
                Some(tr) if tr.events.contains(&event) && unix_us() <= tr.expires_us => {
                    g.trigger.take()
                }
                _ => None,
            }
        };
        if let Some(tr) = fire {
            let done = {
                let r = h.run.lock().unwrap();
                match r.as_ref().filter(|r| r.id == run_id) {
                    Some(r) => {
                        match tr.action {
                            Action::TermTool => {
                                let _ = kill(Pid::from_raw(r.pid), Signal::SIGTERM);
                            }
                            Action::KillTool => {
                                let _ = kill(Pid::from_raw(r.pid), Signal::SIGKILL);
                            }
                            Action::KillTree => {
                                let _ = killpg(Pid::from_raw(r.pid), Signal::SIGKILL);
                                for p in h.tree(Some(r.pid)) {
                                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                                }
                            }
                        }
                        true
                    }
                    None => false,
                }
            };
            let mut g = j.lock();
            if let Some(f) = g.faults.iter_mut().find(|f| f.id == tr.fault_id) {
                let _ = std::fmt::Write::write_fmt(
                    &mut f.detail,
                    format_args!(
                        "; fired {} on {} at its {event}{}",
                        tr.action.label(),
                        h.name,
                        if done { "" } else { " (tool already gone)" }
                    ),
                );
                f.targets.push(h.name.clone());
            }
        }
        let what = event_summary(event, &v);
        j.lock().entries.push(Entry {
            unix_us: t,
            host: h.name.clone(),
            what,
        });
        if event == "delivered" {
            if let Some(pid) = v["pid"].as_i64() {
                register_node(h, j, deaths, pid as i32, t);
            }
        }
    }
}

/// One timeline line for a tool event: its name and the fields that matter.
fn event_summary(event: &str, v: &Value) -> String {
    let mut s = format!("tool {event}");
    for k in [
        "took_over_from",
        "carried_state",
        "state",
        "from",
        "to",
        "holder",
        "pid",
        "signal",
        "error",
        "reason",
        "exit_code",
        "message",
    ] {
        if let Some(x) = v.get(k) {
            let val = x
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string());
            let val: String = val.chars().take(160).collect();
            s.push_str(&format!(" {k}={val}"));
        }
    }
    s
}

/// Kills what is left of a stopped tool's tree (KillMode=mixed: SIGKILL to the cgroup once
/// the main process is gone) and waits until it is gone.
fn kill_remaining(h: &Host, pgid: i32) {
    for _ in 0..250 {
        let left = h.tree(Some(pgid));
        if left.is_empty() {
            return;
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        for p in left {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// systemd for one host: start, wait, kill the rest, restore and check, restart.
fn systemd_loop(
    h: &Arc<Host>,
    env: &[(String, String)],
    cfg: &ClusterConfig,
    j: &Arc<Journal>,
    deaths: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !h.stopping.load(Ordering::SeqCst) {
        let run_id = j.runs.fetch_add(1, Ordering::SeqCst) + 1;
        // Close-on-exec: another host's tool, spawned meanwhile, must not inherit the write
        // end (this run's output would then never reach its end).
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let mut cmd = tool_cmd(&h.home, Some(&h.proxy.endpoint()));
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .args(["run", "start", "--home"])
            .arg(h.home.path())
            .stdout(Stdio::from(w.try_clone().expect("dup pipe")))
            .stderr(Stdio::from(w))
            .process_group(0);
        let mut child: Child = {
            // Under the run lock, so no signal can go to a pid that is not this run's, and
            // a shutdown that found no run to stop sees no new one started.
            let mut g = h.run.lock().unwrap();
            if h.stopping.load(Ordering::SeqCst) {
                return;
            }
            let c = cmd.spawn().expect("spawn ssm-cosmovisor");
            *g = Some(Run {
                id: run_id,
                pid: c.id() as i32,
            });
            c
        };
        drop(cmd);
        let pid = child.id() as i32;
        h.note(&format!(
            "=== harness: run {run_id} pid {pid} started at {}",
            unix_us()
        ));
        let reader = {
            let (h2, j2, d2) = (h.clone(), j.clone(), deaths.clone());
            thread::spawn(move || read_tool_output(File::from(r), &h2, run_id, &j2, &d2))
        };
        // Wait without reaping, so the pid cannot be reused while others may signal it.
        let _ = nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(Pid::from_raw(pid)),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        );
        let status = {
            let mut g = h.run.lock().unwrap();
            *g = None;
            child.wait().expect("reap the tool")
        };
        h.stopped.lock().unwrap().clear();
        kill_remaining(h, pid);
        let _ = reader.join();
        let now = unix_us();
        h.note(&format!(
            "=== harness: run {run_id} pid {pid} exited {status} at {now}"
        ));
        j.lock().entries.push(Entry {
            unix_us: now,
            host: h.name.clone(),
            what: format!("HARNESS tool pid {pid} exited: {status}"),
        });
        // ExecStopPost=ssm-cosmovisor restore, then the slot must be idle with the safe key.
        let out = run_with_timeout(
            tool_cmd(&h.home, None).arg("restore"),
            Duration::from_secs(60),
        );
        let text = super::output_text(&out);
        h.note(&format!(
            "=== harness: restore: {} {}",
            out.status,
            text.trim()
        ));
        let problem = if !out.status.success() {
            Some(format!("restore exited {}: {}", out.status, text.trim()))
        } else {
            slot_problem(&h.home)
        };
        if let Some(p) = &problem {
            h.note(&format!("=== harness: RESTORE PROBLEM: {p}"));
        }
        j.lock().restores.push(RestoreRec {
            host: h.name.clone(),
            unix_us: unix_us(),
            problem,
        });
        let until = std::time::Instant::now() + cfg.restart_delay;
        while std::time::Instant::now() < until && !h.stopping.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}
