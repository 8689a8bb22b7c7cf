//! Chain upgrades under cosmovisor 1.7 (the stand-in in tests/standins/cosmovisor.rs models
//! it: status height check, kill or SIGINT + grace, restart delay, data backup, pre-upgrade
//! with retries, the batch watcher writing plans ahead), with the real binary, moto as AWS
//! and the node stand-in. Issue 19: the key timeout must run only while a started node has
//! not read its key; a plan written ahead must not stop a healthy node nor leave a FIFO at the
//! key path while the node runs.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

const PARAM: &str = "/validators/upgrade/priv_validator_key";

struct Setup {
    _moto: Moto,
    key: TestKey,
    home: NodeHome,
    tool_cmd: std::process::Command,
    _reaper: StrayReaper,
}

/// A node home with one upgrade, the node's sign state at `height` (the stand-in node
/// reports it as the chain's height to cosmovisor's `status` check), and the tool's
/// command: signer, JSON logs, a key timeout of `timeout`, cosmovisor polling every 100 ms.
fn setup(height: u64, timeout: &str, upgrades: usize) -> Setup {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::with_options(NodeHomeOptions {
        upgrades,
        ..Default::default()
    });
    set_height(&home, height);
    let mut c = tool_cmd(&home, Some(&moto.endpoint()));
    c.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_LOG_FORMAT", "json")
        .env("SSM_COSMOVISOR_KEY_TIMEOUT", timeout)
        .env("DAEMON_POLL_INTERVAL", "100ms");
    c.args(["run", "start", "--home"]).arg(home.path());
    let reaper = StrayReaper(home.root.path().to_path_buf());
    Setup {
        _moto: moto,
        key,
        home,
        tool_cmd: c,
        _reaper: reaper,
    }
}

/// Moves "the chain": the node's sign state (atomically, as CometBFT writes it).
fn set_height(home: &NodeHome, h: u64) {
    let p = home.path().join("data/priv_validator_state.json");
    let tmp = p.with_extension("tmp");
    fs::write(
        &tmp,
        format!("{{\"height\":\"{h}\",\"round\":0,\"step\":3}}"),
    )
    .unwrap();
    fs::rename(&tmp, &p).unwrap();
}

impl Setup {
    fn spawn(&mut self) -> Tool {
        Tool::spawn(&mut self.tool_cmd, self.home.scratch("tool.log"))
    }

    fn wait_reports(&self, tool: &Tool, n: usize, timeout: Duration) -> Vec<Value> {
        assert!(
            wait_for(|| complete_reports(&self.home).len() >= n, timeout),
            "expected {n} node starts with a key, have {:?}; log:\n{}",
            complete_reports(&self.home),
            tool.log_text()
        );
        let r = complete_reports(&self.home);
        for x in &r {
            assert_eq!(x["outcome"], "ok", "{x}");
            assert_eq!(x["pub_key"], self.key.pub_b64.as_str(), "{x}");
        }
        r
    }

    fn stop_and_check(&self, tool: &mut Tool) {
        let st = tool.stop(Signal::SIGTERM);
        assert_eq!(st.code(), Some(0), "log:\n{}", tool.log_text());
        assert_clean_idle(&self.home);
        assert_no_secret(&tool.log_text(), &self.key);
    }
}

fn still_running(tool: &mut Tool) -> bool {
    matches!(tool.child.0.try_wait(), Ok(None))
}

/// Microseconds since the epoch of the node report's read time.
fn read_at_us(r: &Value) -> i64 {
    r["read_done_unix_us"].as_i64().expect("read_done_unix_us")
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A governance upgrade (the node writes the marker at the upgrade height and halts) whose
/// data backup (8 s) outlasts the key timeout (3 s) many times over: cosmovisor is never
/// stopped, the new node gets the key. Before the fix the timeout ran from the re-arm at the
/// marker: exit 5 with cosmovisor killed in its backup.
#[test]
fn governance_upgrade_whose_backup_outlasts_the_key_timeout_reaches_the_new_node() {
    let mut s = setup(100, "3s", 1);
    let marker_log = s.home.scratch("marker.jsonl");
    s.tool_cmd
        .env("NODE_UPGRADE_AFTER_MS", "300")
        .env("NODE_UPGRADE_HALT", "1")
        .env("NODE_MARKER_LOG", &marker_log)
        .env("STANDIN_BACKUP_EXTRA_MS", "8000");
    let mut tool = s.spawn();
    let reports = s.wait_reports(&tool, 2, Duration::from_secs(60));
    assert!(still_running(&mut tool), "log:\n{}", tool.log_text());
    let log = tool.log_text();
    assert!(log_events(&log, "fatal").is_empty(), "log:\n{log}");
    let reasons: Vec<_> = log_events(&log, "re_armed")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "upgrade marker written"),
        "the marker of a due upgrade must re-arm at once: {reasons:?}"
    );
    assert!(
        log.contains("starting to take backup of data directory"),
        "cosmovisor made no backup; log:\n{log}"
    );
    assert!(
        s.home
            .path()
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("data-backup-")),
        "no data-backup-* directory in DAEMON_HOME"
    );
    assert_eq!(
        s.home.current_target(),
        Path::new("upgrades").join("upgrade-1")
    );
    let marker_at = read_report(&marker_log)
        .iter()
        .find_map(|m| m["marker_written_unix_us"].as_i64())
        .expect("marker time");
    let to_key = Duration::from_micros((read_at_us(&reports[1]) - marker_at) as u64);
    assert!(to_key >= Duration::from_secs(8), "{to_key:?}");
    println!(
        "MEASURE governance upgrade, 8 s backup, 3 s key timeout: marker written -> new node has the key: {:.2} s; nothing stopped",
        to_key.as_secs_f64()
    );
    s.stop_and_check(&mut tool);
}

/// A batch plan (cosmovisor ≥ 1.6's `add-batch-upgrade`, passed through by the tool) is
/// written to upgrade-info.json far ahead of its height while the node runs: the tool logs
/// it, leaves the stripped key at the key path (an operator's `show-validator` reads it)
/// and stops nothing, however long past the key timeout. At the height cosmovisor stops the
/// node; the FIFO is back when the node exits and the new node gets the key.
#[test]
fn a_batch_plan_written_ahead_stops_nothing_and_the_key_reaches_the_node_after_the_upgrade() {
    let mut s = setup(10, "2s", 0);
    // Through the tool, as an operator would (it passes the subcommand to cosmovisor).
    let mut add = tool_cmd(&s.home, None);
    add.args(["add-batch-upgrade", "--upgrade-list"])
        .arg(format!("upgrade-1:{}:50", node_standin_bin().display()));
    let out = run_with_timeout(&mut add, Duration::from_secs(30));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(s.home.path().join("data/upgrade-info.json.batch").exists());
    s.tool_cmd.env("UNSAFE_SKIP_BACKUP", "true");
    let mut tool = s.spawn();
    s.wait_reports(&tool, 1, Duration::from_secs(30));
    assert!(
        wait_for(
            || !tool.events("upgrade_planned").is_empty(),
            Duration::from_secs(15)
        ),
        "the batch watcher's plan was not seen; log:\n{}",
        tool.log_text()
    );
    let planned = &tool.events("upgrade_planned")[0];
    assert_eq!(planned["height"], 50, "{planned}");
    assert_eq!(planned["signed_height"], 10, "{planned}");
    // Three key timeouts with the plan pending: nothing happens.
    std::thread::sleep(Duration::from_secs(6));
    assert!(still_running(&mut tool), "log:\n{}", tool.log_text());
    assert!(
        !is_fifo(s.home.key_path()),
        "a FIFO at the key path while the node runs"
    );
    let stripped: Value =
        serde_json::from_slice(&read_opt(s.home.key_path()).expect("a file")).unwrap();
    assert_eq!(stripped["priv_key"]["value"], "");
    assert_eq!(stripped["address"], s.key.address.as_str());
    assert!(tool.events("re_armed").is_empty(), "{}", tool.log_text());
    assert_eq!(complete_reports(&s.home).len(), 1);
    // The chain reaches the plan's height: cosmovisor stops the node and upgrades.
    let at = now_us();
    set_height(&s.home, 50);
    let reports = s.wait_reports(&tool, 2, Duration::from_secs(30));
    let log = tool.log_text();
    assert!(log_events(&log, "fatal").is_empty(), "log:\n{log}");
    let reasons: Vec<_> = log_events(&log, "re_armed")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reasons, ["node exited"], "log:\n{log}");
    assert_eq!(
        s.home.current_target(),
        Path::new("upgrades").join("upgrade-1")
    );
    println!(
        "MEASURE batch plan: height reached -> new node has the key: {:.2} s (poll 100 ms, no backup)",
        (read_at_us(&reports[1]) - at) as f64 / 1e6
    );
    s.stop_and_check(&mut tool);
}

/// One upgrade with `extra` settings; returns the tool (still running, two deliveries).
fn upgrade_with(s: &mut Setup, extra: &[(&str, &str)]) -> (Tool, Vec<Value>) {
    s.tool_cmd
        .env("NODE_UPGRADE_AFTER_MS", "300")
        .env("NODE_UPGRADE_HALT", "1")
        .env("UNSAFE_SKIP_BACKUP", "true");
    for (k, v) in extra {
        s.tool_cmd.env(k, v);
    }
    let mut tool = s.spawn();
    let reports = s.wait_reports(&tool, 2, Duration::from_secs(60));
    assert!(still_running(&mut tool), "log:\n{}", tool.log_text());
    assert!(
        log_events(&tool.log_text(), "fatal").is_empty(),
        "log:\n{}",
        tool.log_text()
    );
    (tool, reports)
}

/// `DAEMON_SHUTDOWN_GRACE`: cosmovisor sends SIGINT and waits; the node stops by itself
/// (1.5 s) within the grace; the new node gets the key.
#[test]
fn shutdown_grace_the_node_stops_on_sigint_and_the_new_node_gets_the_key() {
    let mut s = setup(100, "1s", 1);
    let (mut tool, _) = upgrade_with(
        &mut s,
        &[
            ("DAEMON_SHUTDOWN_GRACE", "10s"),
            ("NODE_STOP_DELAY_MS", "1500"),
        ],
    );
    let stops = stop_reports(&s.home);
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["stopped_by"], "SIGINT", "{stops:?}");
    assert!(tool.log_text().contains("app exited normally"));
    s.stop_and_check(&mut tool);
}

/// `DAEMON_RESTART_DELAY` (4 s) longer than the key timeout (1 s): not counted.
#[test]
fn restart_delay_longer_than_the_key_timeout_is_not_counted() {
    let mut s = setup(100, "1s", 1);
    let marker_log = s.home.scratch("marker.jsonl");
    let (mut tool, reports) = upgrade_with(
        &mut s,
        &[
            ("DAEMON_RESTART_DELAY", "4s"),
            ("NODE_MARKER_LOG", marker_log.to_str().unwrap()),
        ],
    );
    let marker_at = read_report(&marker_log)
        .iter()
        .find_map(|m| m["marker_written_unix_us"].as_i64())
        .unwrap();
    assert!(read_at_us(&reports[1]) - marker_at >= 4_000_000);
    s.stop_and_check(&mut tool);
}

/// `<new bin> pre-upgrade` exits 31 twice (retry) then 0, with
/// `DAEMON_PREUPGRADE_MAX_RETRIES=2`: three calls of 700 ms each (a migration), longer
/// together than the key timeout (1 s) and not counted; then the new node gets the key.
#[test]
fn pre_upgrade_retried_on_31_then_the_new_node_gets_the_key() {
    let mut s = setup(100, "1s", 1);
    let (mut tool, _) = upgrade_with(
        &mut s,
        &[
            ("NODE_PREUPGRADE_EXITS", "31,31,0"),
            ("NODE_PREUPGRADE_MS", "700"),
            ("DAEMON_PREUPGRADE_MAX_RETRIES", "2"),
        ],
    );
    let calls: Vec<_> = read_report(&s.home.report_path())
        .into_iter()
        .filter(|v| v.get("pre_upgrade").is_some())
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    s.stop_and_check(&mut tool);
}

/// `DAEMON_RESTART_AFTER_UPGRADE=false`: cosmovisor switches the binary and exits 0; so do
/// we, with the safe key back (no timeout, no error).
#[test]
fn no_restart_after_upgrade_ends_the_run_cleanly() {
    let mut s = setup(100, "1s", 1);
    s.tool_cmd
        .env("NODE_UPGRADE_AFTER_MS", "300")
        .env("NODE_UPGRADE_HALT", "1")
        .env("UNSAFE_SKIP_BACKUP", "true")
        .env("DAEMON_RESTART_AFTER_UPGRADE", "false");
    let mut tool = s.spawn();
    let st = tool.wait(Duration::from_secs(30));
    let log = tool.log_text();
    assert_eq!(st.code(), Some(0), "log:\n{log}");
    assert!(log.contains("DAEMON_RESTART_AFTER_UPGRADE is off"), "{log}");
    assert_eq!(complete_reports(&s.home).len(), 1);
    assert_eq!(
        s.home.current_target(),
        Path::new("upgrades").join("upgrade-1")
    );
    assert_clean_idle(&s.home);
}

/// A node that starts after the upgrade and never reads its key still fails the run
/// within the timeout, counted from its start: not from the marker (a 4 s backup comes
/// first), and not never.
#[test]
fn a_new_node_that_never_reads_fails_within_the_timeout_of_its_start() {
    let mut s = setup(100, "2s", 1);
    let marker_log = s.home.scratch("marker.jsonl");
    // The upgraded binary: the node stand-in that waits ten minutes before it reads.
    let bin = s
        .home
        .path()
        .join("cosmovisor/upgrades/upgrade-1/bin/noded");
    fs::remove_file(&bin).unwrap();
    write_script(
        &bin,
        &format!(
            "#!/bin/sh\nNODE_READ_DELAY_MS=600000 exec '{}' \"$@\"\n",
            node_standin_bin().display()
        ),
    );
    s.tool_cmd
        .env("NODE_UPGRADE_AFTER_MS", "300")
        .env("NODE_UPGRADE_HALT", "1")
        .env("NODE_MARKER_LOG", &marker_log)
        .env("STANDIN_BACKUP_EXTRA_MS", "4000");
    let t = Instant::now();
    let mut tool = s.spawn();
    let st = tool.wait(Duration::from_secs(60));
    let log = tool.log_text();
    assert_eq!(st.code(), Some(5), "log:\n{log}");
    assert!(log.contains("did not read the key within 2s"), "{log}");
    // The first node read its key before a look saw it; the upgraded one is seen and timed.
    let started = log_events(&log, "node_started");
    let nodes = node_pids_from_log(&log);
    assert_eq!(nodes.len(), 2, "log:\n{log}");
    assert_eq!(
        started.last().and_then(|e| e["pid"].as_i64()),
        Some(nodes[1] as i64),
        "log:\n{log}"
    );
    let marker_at = read_report(&marker_log)
        .iter()
        .find_map(|m| m["marker_written_unix_us"].as_i64())
        .unwrap();
    let since_marker = Duration::from_micros((now_us() - marker_at) as u64);
    assert!(
        since_marker >= Duration::from_secs(6),
        "failed {since_marker:?} after the marker: the clock ran during the backup"
    );
    println!(
        "MEASURE a new node that never reads: exit 5 {:.2} s after the tool started, {:.2} s after the marker (4 s backup + 2 s timeout)",
        t.elapsed().as_secs_f64(),
        since_marker.as_secs_f64()
    );
    assert_clean_idle(&s.home);
    assert_no_secret(&log, &s.key);
}

/// How a run of back-to-back upgrades went: starts that read the real key, and what the
/// first start that did not read it found.
type Race = (
    usize,
    Option<Value>,
    f64,
    std::collections::BTreeMap<String, usize>,
);

fn upgrade_race(s: &mut Setup, rounds: usize, extra: &[(&str, &str)]) -> Race {
    s.tool_cmd
        .env("NODE_UPGRADE_AFTER_MS", "20")
        .env("NODE_UPGRADES", rounds.to_string())
        .env("UNSAFE_SKIP_BACKUP", "true");
    for (k, v) in extra {
        s.tool_cmd.env(k, v);
    }
    let hogs = cpu_hogs();
    let t = Instant::now();
    let mut tool = s.spawn();
    wait_for(
        || {
            complete_reports(&s.home).len() > rounds
                || complete_reports(&s.home)
                    .iter()
                    .any(|r| r["outcome"] != "ok")
                || !still_running(&mut tool)
        },
        Duration::from_secs(240),
    );
    let took = t.elapsed().as_secs_f64();
    drop(hogs);
    let reports = complete_reports(&s.home);
    let ok = reports.iter().take_while(|r| r["outcome"] == "ok").count();
    let first_bad = reports.iter().find(|r| r["outcome"] != "ok").cloned();
    let _ = tool.stop(Signal::SIGTERM);
    let reasons = tool.events("re_armed").iter().fold(
        std::collections::BTreeMap::<String, usize>::new(),
        |mut m, e| {
            *m.entry(e["reason"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            m
        },
    );
    (ok, first_bad, took, reasons)
}

/// The measurement behind the re-arm rule (docs/design.md §4), not a pass/fail test: run
/// with `cargo test --features failpoints --test e2e_upgrade -- --ignored --nocapture`.
/// 100 back-to-back upgrades under two CPU hogs, the FIFO put back only when the node exits
/// (what a plan written ahead gets), against (a) a supervisor that restarts the node the
/// instant it exits (the old stand-in's `STANDIN_INSTANT_UPGRADE`) and (b) cosmovisor 1.7 at
/// its fastest (no backup, no delay, `pre-upgrade` exec, status poll 50 ms); and (c) the due
/// marker's re-arm against (a).
#[test]
#[ignore = "a measurement: prints how many of 100 upgrades read the real key per re-arm rule"]
fn measure_rearm_at_node_exit_against_instant_and_1_7_restarts() {
    const ROUNDS: usize = 100;
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "(a) plan ahead, FIFO back at node exit, instant restart",
            vec![
                ("STANDIN_INSTANT_UPGRADE", "1"),
                ("NODE_UPGRADE_AHEAD_MS", "30"),
            ],
        ),
        (
            "(b) plan ahead, FIFO back at node exit, cosmovisor 1.7 fastest",
            vec![
                ("NODE_UPGRADE_HALT", "1"),
                ("NODE_UPGRADE_AHEAD_MS", "30"),
                ("DAEMON_POLL_INTERVAL", "50ms"),
            ],
        ),
        (
            "(c) due marker, FIFO back at the marker, instant restart",
            vec![("STANDIN_INSTANT_UPGRADE", "1")],
        ),
    ];
    for (what, extra) in cases {
        let mut s = setup(0, "30s", ROUNDS);
        let (ok, bad, took, reasons) = upgrade_race(&mut s, ROUNDS, &extra);
        println!(
            "MEASURE {what}: {ok} of {} starts read the real key in {took:.1} s; re-arms {reasons:?}{}",
            ROUNDS + 1,
            bad.map(|b| format!("; then a node found {:?}", b["outcome"]))
                .unwrap_or_default()
        );
    }
}

/// `add-upgrade --upgrade-height` (through the tool) writes upgrade-info.json at once, far
/// ahead: from its start cosmovisor runs `<bin> status` every poll (50 ms here), short-lived
/// node-uid processes in our child's tree around the delivery. They are neither taken for
/// the node (no key timeout for them, no refusal) nor let near the key; the stripped key
/// stays at the key path while the plan is pending; at the height the upgrade goes through.
#[test]
fn status_checks_of_a_pending_plan_around_the_delivery_change_nothing() {
    let mut s = setup(10, "2s", 0);
    let status_log = s.home.scratch("status.log");
    let mut add = tool_cmd(&s.home, None);
    add.args(["add-upgrade", "upgrade-1"])
        .arg(node_standin_bin())
        .args(["--upgrade-height", "40"]);
    let out = run_with_timeout(&mut add, Duration::from_secs(30));
    assert!(out.status.success(), "{}", output_text(&out));
    s.tool_cmd
        .env("DAEMON_POLL_INTERVAL", "50ms")
        .env("UNSAFE_SKIP_BACKUP", "true")
        .env("NODE_STATUS_LOG", &status_log);
    let mut tool = s.spawn();
    s.wait_reports(&tool, 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(4));
    let calls = fs::read_to_string(&status_log)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(calls >= 20, "only {calls} status checks in 4 s");
    assert!(still_running(&mut tool), "log:\n{}", tool.log_text());
    assert!(!is_fifo(s.home.key_path()));
    let log = tool.log_text();
    for e in ["refused_reader", "not_read", "re_armed", "fatal"] {
        assert!(log_events(&log, e).is_empty(), "{e}; log:\n{log}");
    }
    set_height(&s.home, 40);
    s.wait_reports(&tool, 2, Duration::from_secs(30));
    let log = tool.log_text();
    for e in ["refused_reader", "not_read", "fatal"] {
        assert!(log_events(&log, e).is_empty(), "{e}; log:\n{log}");
    }
    println!("MEASURE pending plan: {calls} status checks by cosmovisor in 4 s around the delivery; no refusal, no timeout");
    s.stop_and_check(&mut tool);
}
