//! Checks that the test stand-ins (node, cosmovisor) and the shared helpers behave as the
//! end-to-end tests assume, before anything relies on them.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(20);

/// Runs the node stand-in against `key_file` (via NODE_KEY_FILE) and returns its output
/// and its single report line. `NODE_EXIT_AFTER_MS=0` makes an ok node exit 0 at once.
fn run_node_on(h: &NodeHome, key_file: &std::path::Path) -> (std::process::Output, Value) {
    let before = h.reports().len();
    let out = run_with_timeout(
        h.node_cmd()
            .env("NODE_KEY_FILE", key_file)
            .env("NODE_EXIT_AFTER_MS", "0")
            .env("NODE_EXITS", "1000"),
        T,
    );
    let reports = h.reports();
    assert_eq!(
        reports.len(),
        before + 1,
        "one report line per start: {}",
        output_text(&out)
    );
    (out, reports[before].clone())
}

fn write_key(h: &NodeHome, name: &str, text: &str) -> std::path::PathBuf {
    let p = h.scratch(name);
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn node_reads_ed25519_key_like_cometbft() {
    let h = NodeHome::new();
    let key = TestKey::ed25519();
    let p = write_key(&h, "k.json", &key.json);
    let (out, r) = run_node_on(&h, &p);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["key_type"], "tendermint/PrivKeyEd25519");
    assert_eq!(r["address"], key.address.as_str());
    assert_eq!(r["file_address"], key.address.as_str());
    assert_eq!(r["pub_key"], key.pub_b64.as_str());
    assert_eq!(r["derived_ok"], true);
    assert_eq!(r["bytes_read"], key.json.len());
    assert_eq!(r["start_index"], 0);
    assert_eq!(r["ppid"], std::process::id());
    assert_eq!(r["uid"], nix::unistd::getuid().as_raw());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("read key {}", key.address)),
        "{stdout}"
    );
}

#[test]
fn node_reads_secp256k1_key_like_cometbft() {
    let h = NodeHome::new();
    let key = TestKey::secp256k1();
    let p = write_key(&h, "k.json", &key.json);
    let (out, r) = run_node_on(&h, &p);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["key_type"], "tendermint/PrivKeySecp256k1");
    assert_eq!(r["address"], key.address.as_str());
    assert_eq!(r["pub_key"], key.pub_b64.as_str());
}

/// Known-answer vectors checked outside Rust: RFC 8032 test 1 for ed25519, and secp256k1
/// scalar 1 (the generator; its hash160 is a well-known Bitcoin value).
#[test]
fn key_generation_matches_known_answers() {
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
    let ed = TestKey::ed25519_from_seed(seed);
    assert_eq!(ed.pub_b64, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    assert_eq!(ed.address, "21FE31DFA154A261626BF854046FD2271B7BED4B");

    let mut one = [0u8; 32];
    one[31] = 1;
    let secp = TestKey::secp256k1_from_scalar(one);
    assert_eq!(secp.pub_b64, "Anm+Zn753LusVaBilc6HCwcCm/zbLc4o2VnygVsW+BeY");
    assert_eq!(secp.address, "751E76E8199196D454941C45D1B3A323F1433BD6");

    // The node stand-in derives the same identities.
    let h = NodeHome::new();
    for k in [&ed, &secp] {
        let p = write_key(&h, "kat.json", &k.json);
        let (out, r) = run_node_on(&h, &p);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(r["address"], k.address.as_str());
        assert_eq!(r["pub_key"], k.pub_b64.as_str());
    }
}

#[test]
fn generated_json_has_cometbft_layout() {
    let k = TestKey::ed25519();
    let v = k.json_value();
    assert_eq!(v["address"], k.address.as_str());
    assert_eq!(v["pub_key"]["type"], "tendermint/PubKeyEd25519");
    assert_eq!(v["priv_key"]["value"], k.priv_b64.as_str());
    assert!(k.json.starts_with("{\n  \"address\": "), "{}", k.json);
    let order: Vec<usize> = ["\"address\"", "\"pub_key\"", "\"priv_key\""]
        .iter()
        .map(|f| k.json.find(f).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "field order");
    let s: Value = serde_json::from_str(&k.stripped_json()).unwrap();
    assert_eq!(s["priv_key"]["value"], "");
    assert_eq!(s["pub_key"], v["pub_key"]);
}

#[test]
fn node_flags_stripped_ed25519_as_cometbft_panic() {
    let h = NodeHome::new();
    let key = TestKey::ed25519();
    let p = write_key(&h, "stripped.json", &key.stripped_json());
    let (out, r) = run_node_on(&h, &p);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert_eq!(r["outcome"], "stripped");
    assert!(output_text(&out).contains("NODE-PANIC: stripped or short ed25519 priv_key (len 0)"));
}

#[test]
fn node_flags_stripped_secp256k1() {
    let h = NodeHome::new();
    let key = TestKey::secp256k1();
    let p = write_key(&h, "stripped.json", &key.stripped_json());
    let (out, r) = run_node_on(&h, &p);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert_eq!(r["outcome"], "stripped");
}

#[test]
fn node_flags_missing_key_and_never_creates_one() {
    let h = NodeHome::new();
    let p = h.scratch("absent.json");
    let (out, r) = run_node_on(&h, &p);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert_eq!(r["outcome"], "missing");
    assert!(output_text(&out).contains("CometBFT would generate a NEW key"));
    assert!(!p.exists(), "stand-in must never generate a key");
}

#[test]
fn node_reports_invalid_json() {
    let h = NodeHome::new();
    let p = write_key(&h, "bad.json", "{\"address\": ");
    let (out, r) = run_node_on(&h, &p);
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));
    assert_eq!(r["outcome"], "invalid");
}

/// `NODE_THREADS`: that many threads besides the node's own, replaced all the time (the
/// reader check's e2e test of exiting tasks relies on both), already while it waits for
/// the key; `NODE_HOLD_FDS` beyond the soft fd limit is honoured.
#[test]
fn node_threads_come_and_go_while_it_waits_for_the_key() {
    let h = NodeHome::new();
    let fifo = h.scratch("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut cmd = h.node_cmd();
    cmd.env("NODE_KEY_FILE", &fifo)
        .env("NODE_THREADS", "20")
        .env("NODE_HOLD_FDS", "1500");
    // A soft limit below the fds asked for: the stand-in raises it (hard limit permitting).
    with_soft_nofile(&mut cmd, 1024);
    let node = KillOnDrop::spawn(&mut cmd);
    let tasks = || -> std::collections::BTreeSet<i32> {
        fs::read_dir(format!("/proc/{}/task", node.pid()))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_for(|| tasks().len() >= 20, T),
        "never 20 threads: {:?}",
        tasks()
    );
    let first = tasks();
    // Each lives 2 ms by default: soon only the node's own threads are left of them.
    assert!(
        wait_for(|| first.intersection(&tasks()).count() <= 3, T),
        "threads did not come and go: {first:?} then {:?}",
        tasks()
    );
    assert!(tasks().len() >= 20, "{:?}", tasks());
    let fds = fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .unwrap()
        .count();
    assert!(fds >= 1500, "NODE_HOLD_FDS not honoured: {fds} fds");
}

/// Runs `cmd` with a soft `RLIMIT_NOFILE` of `soft` (through the shell's `ulimit -S -n`,
/// which needs no `unsafe` `pre_exec`), so the stand-in has to raise it itself.
fn with_soft_nofile(cmd: &mut std::process::Command, soft: u64) {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -S -n {soft} && exec \"$0\" \"$@\""))
        .arg(prog)
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        sh.current_dir(d);
    }
    *cmd = sh;
}

/// The FIFO case: the node blocks in open() until a writer appears, then reads to EOF.
#[test]
fn node_blocks_on_fifo_until_writer_and_reads_to_eof() {
    let h = NodeHome::new();
    let key = TestKey::ed25519();
    let fifo = h.scratch("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut node = KillOnDrop::spawn(
        h.node_cmd()
            .env("NODE_KEY_FILE", &fifo)
            .env("NODE_HOLD_FDS", "40"),
    );

    // It must be waiting, not failing, and hold the extra fds meanwhile.
    thread::sleep(Duration::from_millis(200));
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "node must block on the FIFO"
    );
    let fds = fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .unwrap()
        .count();
    assert!(fds >= 40 + 3, "NODE_HOLD_FDS not honoured: {fds} fds");
    assert!(h.reports().is_empty());

    fs::write(&fifo, &key.json).unwrap();
    assert!(
        wait_for(|| !h.reports().is_empty(), T),
        "no report after write"
    );
    let r = &h.reports()[0];
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["address"], key.address.as_str());
    // Timed from just before open(): it spans the wait for our write.
    assert!(r["elapsed_read_us"].as_u64().unwrap() >= 50_000, "{r}");

    // Stays up until SIGTERM, then exits 0.
    assert!(node.0.try_wait().unwrap().is_none());
    node.signal(Signal::SIGTERM);
    let st = node.wait_timeout(T).expect("node exits on SIGTERM");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn node_reports_empty_when_writer_closes_without_data() {
    let h = NodeHome::new();
    let fifo = h.scratch("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut node = KillOnDrop::spawn(h.node_cmd().env("NODE_KEY_FILE", &fifo));
    // Opening the write end blocks until the node has opened the read end.
    drop(fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    let st = node.wait_timeout(T).expect("node exits");
    assert_eq!(st.code(), Some(5));
    assert_eq!(h.reports()[0]["outcome"], "empty");
}

#[test]
fn node_home_layout_and_configured_key_paths() {
    let h = NodeHome::new();
    h.assert_idle();
    let cfg = fs::metadata(h.path().join("config")).unwrap();
    assert_eq!(cfg.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        fs::metadata(h.key_path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(h.current_target(), std::path::PathBuf::from("genesis"));
    assert!(h.path().join("data/priv_validator_state.json").is_file());
    assert!(h
        .path()
        .join("cosmovisor/genesis/bin")
        .join(DAEMON_NAME)
        .is_file());
    assert_eq!(
        h.orig_path().file_name().unwrap(),
        "priv_validator_key.json.orig"
    );

    // Default path, then relative and absolute `priv_validator_key_file`: the node stand-in
    // finds the safe key through config.toml like CometBFT.
    let abs_dir = tempfile::tempdir().unwrap();
    let abs = abs_dir.path().join("keys/pv.json");
    for opts in [
        NodeHomeOptions::default(),
        NodeHomeOptions {
            key_file: Some("keys/relocated.json".into()),
            ..Default::default()
        },
        NodeHomeOptions {
            key_file: Some(abs.display().to_string()),
            ..Default::default()
        },
    ] {
        let h = NodeHome::with_options(opts.clone());
        h.assert_idle();
        let out = run_with_timeout(h.node_cmd().env("NODE_EXIT_AFTER_MS", "0"), T);
        assert!(out.status.success(), "{opts:?}: {}", output_text(&out));
        let r = &h.reports()[0];
        assert_eq!(r["address"], h.safe_key.address.as_str(), "{opts:?}");
        assert_eq!(r["key_path"], h.key_path().display().to_string());
    }
}

/// The SDK rewrites upgrade-info.json in place (same inode), which the re-arm watcher
/// depends on; the stand-in must do the same.
#[test]
fn node_writes_upgrade_info_in_place() {
    let h = NodeHome::new();
    fs::write(h.upgrade_info_path(), "{\"name\":\"old\",\"height\":1}").unwrap();
    let ino = fs::metadata(h.upgrade_info_path()).unwrap().ino();
    let out = run_with_timeout(h.node_cmd().env("NODE_UPGRADE_AFTER_MS", "0"), T);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("UPGRADE \"upgrade-1\" NEEDED"));
    assert_eq!(
        fs::metadata(h.upgrade_info_path()).unwrap().ino(),
        ino,
        "rewritten in place"
    );
    let v: Value = serde_json::from_slice(&fs::read(h.upgrade_info_path()).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"name": "upgrade-1", "height": 100}));
}

// ---------------------------------------------------------------------------------------
// The node stand-in's subcommands for cosmovisor, its stop report, a halted node
// ---------------------------------------------------------------------------------------

/// The node report's start lines (those with an `outcome`); event lines are not starts.
fn starts(h: &NodeHome) -> Vec<Value> {
    read_report(&h.report_path())
        .into_iter()
        .filter(|v| v.get("outcome").is_some())
        .collect()
}

/// The node report's event lines carrying `key` (`stopped_by`, `pre_upgrade`).
fn node_events(h: &NodeHome, key: &str) -> Vec<Value> {
    read_report(&h.report_path())
        .into_iter()
        .filter(|v| v.get(key).is_some())
        .collect()
}

/// Moves "the chain": the sign state's height, which the node stand-in's `status` reports.
fn set_height(h: &NodeHome, height: u64) {
    let state = h.path().join("data/priv_validator_state.json");
    let tmp = h.path().join("data/.state.tmp");
    fs::write(
        &tmp,
        format!("{{\"height\":\"{height}\",\"round\":0,\"step\":3}}"),
    )
    .unwrap();
    fs::rename(&tmp, &state).unwrap();
}

/// The pid of the `i`-th node start.
fn node_pid(h: &NodeHome, i: usize) -> i32 {
    starts(h)[i]["pid"].as_i64().unwrap() as i32
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

/// `status` prints the sign state's height as CometBFT's `sync_info`; it fails like a node
/// whose RPC is down when asked to or when the state is unreadable.
#[test]
fn node_status_reports_the_sign_state_height() {
    let h = NodeHome::new();
    let log = h.scratch("status.jsonl");
    set_height(&h, 1234);
    let out = run_with_timeout(
        Command::new(node_standin_bin())
            .args(["status", "--home"])
            .arg(h.path())
            .env("NODE_STATUS_LOG", &log),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sync_info"]["latest_block_height"], "1234");
    assert_eq!(v["sync_info"]["catching_up"], false);
    assert!(v["node_info"].is_object());
    assert_eq!(
        read_report(&log).len(),
        1,
        "one NODE_STATUS_LOG line per call"
    );

    let out = run_with_timeout(
        Command::new(node_standin_bin())
            .args(["status", "--home"])
            .arg(h.path())
            .env("NODE_STATUS_FAIL", "1"),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection refused"));
    fs::write(h.path().join("data/priv_validator_state.json"), "{").unwrap();
    let out = run_with_timeout(
        Command::new(node_standin_bin())
            .arg("status")
            .env("DAEMON_HOME", h.path()),
        T,
    );
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(h.reports().is_empty(), "status reads no key");
}

#[test]
fn node_pre_upgrade_exits_from_the_list_then_1() {
    let h = NodeHome::new();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let out = run_with_timeout(
            Command::new(node_standin_bin())
                .arg("pre-upgrade")
                .env("DAEMON_HOME", h.path())
                .env("NODE_REPORT", h.report_path())
                .env("NODE_PREUPGRADE_EXITS", "31,30,0"),
            T,
        );
        codes.push(out.status.code().unwrap());
    }
    assert_eq!(codes, [31, 30, 0, 1]);
    let ev = node_events(&h, "pre_upgrade");
    let got: Vec<(u64, i64)> = ev
        .iter()
        .map(|e| {
            (
                e["pre_upgrade"].as_u64().unwrap(),
                e["exit"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(1, 31), (2, 30), (3, 0), (4, 1)]);
    assert_eq!(
        fs::read_to_string(h.path().join("data/.preupgrade-calls")).unwrap(),
        "4"
    );
}

/// A stop signal leaves a `stopped_by` line; QUIT is a Go node's dump and exit 2.
#[test]
fn node_records_how_it_was_stopped() {
    for (sig, code) in [
        (Signal::SIGTERM, 0),
        (Signal::SIGINT, 0),
        (Signal::SIGQUIT, 2),
    ] {
        let h = NodeHome::new();
        let mut node = KillOnDrop::spawn(&mut h.node_cmd());
        assert!(wait_for(|| !starts(&h).is_empty(), T));
        node.signal(sig);
        let st = node.wait_timeout(T).expect("node exits");
        assert_eq!(st.code(), Some(code), "{sig:?}");
        let ev = node_events(&h, "stopped_by");
        assert_eq!(ev.len(), 1, "{sig:?}: {ev:?}");
        assert_eq!(ev[0]["stopped_by"], sig.as_str());
        assert_eq!(ev[0]["pid"].as_i64(), Some(node.pid() as i64));
        assert_eq!(starts(&h).len(), 1, "an event line is not a start");
    }
    // The next start still counts starts only.
    let h = NodeHome::new();
    let mut node = KillOnDrop::spawn(&mut h.node_cmd());
    assert!(wait_for(|| !starts(&h).is_empty(), T));
    node.signal(Signal::SIGTERM);
    node.wait_timeout(T).expect("exit");
    run_with_timeout(
        h.node_cmd()
            .env("NODE_EXIT_AFTER_MS", "0")
            .env("NODE_EXITS", "10"),
        T,
    );
    assert_eq!(starts(&h)[1]["start_index"], 1);
}

/// `NODE_UPGRADE_HALT=1`: the marker is written and the node stays up.
#[test]
fn node_halts_at_the_upgrade_height() {
    let h = NodeHome::new();
    let mut node = KillOnDrop::spawn(
        h.node_cmd()
            .env("NODE_UPGRADE_AFTER_MS", "0")
            .env("NODE_UPGRADE_HALT", "1"),
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    thread::sleep(Duration::from_millis(200));
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "a halted node keeps running"
    );
    node.signal(Signal::SIGTERM);
    assert_eq!(node.wait_timeout(T).unwrap().code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// The cosmovisor stand-in: cosmovisor 1.7
// ---------------------------------------------------------------------------------------

/// Fast polling for the tests.
const POLL: (&str, &str) = ("DAEMON_POLL_INTERVAL", "50ms");

/// cosmovisor in the background, its stdout+stderr in a file.
fn spawn_cv(h: &NodeHome, args: &[&str], env: &[(&str, &str)]) -> Tool {
    let mut cmd = h.cosmovisor_cmd(args);
    cmd.env(POLL.0, POLL.1);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Tool::spawn(&mut cmd, h.scratch("cosmovisor.log"))
}

/// Position of `needle` in `log` after `from`, panicking with the log if absent.
fn pos_after(log: &str, from: usize, needle: &str) -> usize {
    from + log[from..]
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} missing after byte {from}:\n{log}"))
}

#[test]
fn cosmovisor_passes_args_untouched() {
    let h = NodeHome::new();
    let args = [
        "version",
        "--long",
        "a b",
        "quote\"d",
        "ünï",
        "",
        "--home=/x y",
    ];
    let out = run_with_timeout(&mut h.cosmovisor_cmd(&args), T);
    // cobra parses `version`'s flags: 1.7 has no `--long`.
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error: unknown flag: --long"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("cosmovisor-standin args: ")
        .expect("args line first");
    assert_eq!(serde_json::from_str::<Vec<String>>(json).unwrap(), args);

    // `run`: the args file holds them all and the node gets everything after `run`,
    // `-c` and `--cosmovisor-config=…` included (run parses no flags of its own).
    let args_file = h.scratch("args.json");
    let run_args = [
        "run",
        "start",
        "--home",
        h.path().to_str().unwrap(),
        "x y",
        "--flag=",
        "-c",
        "cfg",
        "--cosmovisor-config=cfg",
    ];
    let out = run_with_timeout(
        h.cosmovisor_cmd(&run_args)
            .env("STANDIN_ARGS_FILE", &args_file)
            .env("NODE_EXIT_AFTER_MS", "0"),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let got: Vec<String> = serde_json::from_slice(&fs::read(&args_file).unwrap()).unwrap();
    assert_eq!(got, run_args);
    let r = &starts(&h)[0];
    let argv: Vec<String> = serde_json::from_value(r["argv"].clone()).unwrap();
    assert_eq!(argv, run_args[1..]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cosmovisor-standin: INF running app"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cosmovisor-standin: starting node pid="),
        "{stdout}"
    );
}

/// The node's exit: 0 ends cosmovisor with 0 and no restart; anything else is exit 1
/// with cobra's `Error: exit status N` (no upgrade pending).
#[test]
fn cosmovisor_exit_status_as_1_7() {
    let h = NodeHome::new();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["run", "start"])
            .env("NODE_EXIT_AFTER_MS", "10")
            .env("NODE_EXITS", "5"),
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(starts(&h).len(), 1, "no restart after exit 0");

    // A stripped key: the node "panics" with 2; cosmovisor says so and exits 1.
    let h = NodeHome::new();
    fs::write(h.key_path(), h.safe_key.stripped_json()).unwrap();
    let out = run_with_timeout(&mut h.cosmovisor_cmd(&["run", "start"]), T);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Error: exit status 2\n"), "{err}");
    assert!(
        err.contains("ERR error=\"exit status 2\" module=cosmovisor"),
        "{err}"
    );
    assert_eq!(starts(&h).len(), 1, "no restart after an error");
}

/// 1.7 creates `current -> genesis` (relative) when `current` is missing, and needs
/// `data/`.
#[test]
fn cosmovisor_creates_a_relative_current_link_and_needs_data() {
    let h = NodeHome::new();
    fs::remove_file(h.path().join("cosmovisor/current")).unwrap();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["run", "start"])
            .env("NODE_EXIT_AFTER_MS", "0"),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(starts(&h).len(), 1);
    assert_eq!(h.current_target(), PathBuf::from("genesis"));

    fs::rename(h.path().join("data"), h.path().join("data.moved")).unwrap();
    let out = run_with_timeout(&mut h.cosmovisor_cmd(&["run", "start"]), T);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an existing directory"));
    assert_eq!(starts(&h).len(), 1, "no node without data/");
}

/// SIGINT and SIGHUP are not handled by 1.7: cosmovisor dies by them, nothing is
/// forwarded, the node keeps running (an orphan).
#[test]
fn cosmovisor_int_and_hup_kill_it_and_leave_the_node() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        let h = NodeHome::new();
        let mut cv = spawn_cv(&h, &["run", "start"], &[]);
        assert!(wait_for(|| !starts(&h).is_empty(), T));
        let node = node_pid(&h, 0);
        cv.child.signal(sig);
        let st = cv.child.wait_timeout(T).expect("cosmovisor dies");
        assert_eq!(
            st.signal(),
            Some(sig as i32),
            "{sig:?}: {st:?}\n{}",
            cv.log_text()
        );
        thread::sleep(Duration::from_millis(200));
        let alive = pid_alive(node);
        kill_pid(node);
        assert!(alive, "{sig:?}: the node must be left running");
        assert!(
            node_events(&h, "stopped_by").is_empty(),
            "{sig:?}: forwarded"
        );
    }
}

/// SIGTERM is forwarded (after the batch watcher's step, ≤ ~1 s), once; a second one is
/// swallowed. SIGQUIT too: the Go node dumps and exits 2, so cosmovisor exits 1.
#[test]
fn cosmovisor_forwards_term_and_quit_once() {
    let h = NodeHome::new();
    let mut cv = spawn_cv(&h, &["run", "start"], &[("NODE_STOP_DELAY_MS", "600")]);
    assert!(wait_for(|| !starts(&h).is_empty(), T));
    let node = node_pid(&h, 0);
    let t = Instant::now();
    cv.child.signal(Signal::SIGTERM);
    assert!(wait_for(|| !node_events(&h, "stopped_by").is_empty(), T));
    let lag = t.elapsed();
    cv.child.signal(Signal::SIGTERM);
    let st = cv.child.wait_timeout(T).expect("exit");
    let log = cv.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(lag < Duration::from_millis(1500), "forward lag {lag:?}");
    println!("MEASURE cosmovisor stand-in SIGTERM forward lag: {lag:?}");
    let ev = node_events(&h, "stopped_by");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["stopped_by"], "SIGTERM");
    assert_eq!(ev[0]["pid"].as_i64(), Some(node as i64));
    assert_eq!(
        log.matches("forwarding SIGTERM to node pid=").count(),
        1,
        "{log}"
    );

    let h = NodeHome::new();
    let mut cv = spawn_cv(&h, &["run", "start"], &[]);
    assert!(wait_for(|| !starts(&h).is_empty(), T));
    cv.child.signal(Signal::SIGQUIT);
    let st = cv.child.wait_timeout(T).expect("exit");
    assert_eq!(st.code(), Some(1), "{}", cv.log_text());
    assert!(cv.log_text().contains("Error: exit status 2"));
    assert_eq!(node_events(&h, "stopped_by")[0]["stopped_by"], "SIGQUIT");
}

/// A governance upgrade the 1.7 way: the node halts at the plan height with the marker
/// written; nothing happens until `status` reports the height; then kill, backup, switch,
/// pre-upgrade, relaunch, in that order.
#[test]
fn cosmovisor_upgrades_when_status_reaches_the_plan_height() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let status_log = h.scratch("status.jsonl");
    let status_log_s = status_log.display().to_string();
    let mut cv = spawn_cv(
        &h,
        &["run", "start"],
        &[
            ("NODE_UPGRADE_AFTER_MS", "0"),
            ("NODE_UPGRADE_HALT", "1"),
            // The state stays at 0 until the test raises it to the plan's height.
            ("NODE_UPGRADE_STATE", "keep"),
            ("NODE_STATUS_LOG", &status_log_s),
        ],
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    thread::sleep(Duration::from_millis(400));
    // The chain is below the plan (the sign state says 0): every tick asks `status`.
    assert_eq!(starts(&h).len(), 1);
    assert_eq!(h.current_target(), PathBuf::from("genesis"));
    let calls = read_report(&status_log);
    assert!(calls.len() >= 3, "status called each tick: {calls:?}");
    assert_eq!(calls[0]["argv"][0], "status");
    assert_eq!(calls[0]["argv"][1], "--home");
    assert_eq!(
        calls[0]["cwd"].as_str().unwrap(),
        h.path().join("cosmovisor").display().to_string()
    );
    let first = node_pid(&h, 0);

    set_height(&h, 100);
    assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
    assert!(!pid_alive(first), "the halted node was killed");
    assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-1"));
    assert_eq!(
        fs::read_to_string(
            h.path()
                .join("cosmovisor/upgrades/upgrade-1/upgrade-info.json")
        )
        .unwrap(),
        r#"{"name":"upgrade-1","time":"0001-01-01T00:00:00Z","height":100}"#
    );
    // The backup: $DAEMON_HOME/data-backup-Y-M-D (not zero-padded), a copy of data/.
    let backups: Vec<String> = fs::read_dir(h.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let ymd: Vec<&str> = backups[0]["data-backup-".len()..].split('-').collect();
    assert_eq!(ymd.len(), 3, "{backups:?}");
    assert!(ymd.iter().all(|p| !p.starts_with('0')), "{backups:?}");
    let backup = h.path().join(&backups[0]);
    assert!(backup.join("priv_validator_state.json").is_file());
    assert!(backup.join("upgrade-info.json").is_file());
    assert_eq!(
        fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o700,
        "modes kept"
    );

    let log = cv.log_text();
    let mut at = pos_after(&log, 0, "daemon shutting down in an attempt to restart");
    for needle in [
        "starting to take backup of data directory",
        "backup completed",
        "cosmovisor-standin: applied upgrade upgrade-1",
        "pre-upgrade command does not exist. continuing the upgrade.",
        "upgrade detected, relaunching app=noded",
        "running app",
        "starting node pid=",
    ] {
        at = pos_after(&log, at, needle);
    }
    let pre = node_events(&h, "pre_upgrade");
    assert_eq!(pre.len(), 1, "{pre:?}");
    assert_eq!(pre[0]["exit"], 1);
    assert!(
        node_events(&h, "stopped_by").is_empty(),
        "SIGKILL leaves no line"
    );

    assert_eq!(
        cv.stop(Signal::SIGTERM).code(),
        Some(0),
        "{}",
        cv.log_text()
    );
    let ev = node_events(&h, "stopped_by");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["pid"].as_i64(), Some(node_pid(&h, 1) as i64));
}

/// #22528: a failing `status` (RPC down) means no upgrade, neither while the node runs
/// nor when it dies; cosmovisor then exits 1.
#[test]
fn cosmovisor_never_upgrades_while_status_fails() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    set_height(&h, 150);
    let mut cv = spawn_cv(
        &h,
        &["run", "start"],
        &[
            ("NODE_UPGRADE_AFTER_MS", "0"),
            ("NODE_UPGRADE_HALT", "1"),
            ("NODE_STATUS_FAIL", "1"),
        ],
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(starts(&h).len(), 1);
    assert_eq!(h.current_target(), PathBuf::from("genesis"));
    kill_pid(node_pid(&h, 0));
    let st = cv.child.wait_timeout(T).expect("exit");
    let log = cv.log_text();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("Error: signal: killed"), "{log}");
    assert_eq!(h.current_target(), PathBuf::from("genesis"));
    assert_eq!(starts(&h).len(), 1);
}

/// The batch watcher writes `upgrade-info.json` well ahead (chain below the plan), the
/// file watcher switches once `status` reaches the height.
#[test]
fn cosmovisor_batch_file_written_ahead_then_switched() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let batch = h.path().join("data/upgrade-info.json.batch");
    fs::write(&batch, r#"[{"name":"upgrade-1","height":100}]"#).unwrap();
    let mut cv = spawn_cv(&h, &["run", "start"], &[("UNSAFE_SKIP_BACKUP", "true")]);
    assert!(
        wait_for(|| h.upgrade_info_path().exists(), T),
        "{}",
        cv.log_text()
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        fs::read_to_string(h.upgrade_info_path()).unwrap(),
        r#"{"name":"upgrade-1","time":"0001-01-01T00:00:00Z","height":100}"#
    );
    assert_eq!(
        fs::metadata(h.upgrade_info_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(fs::read_to_string(&batch).unwrap(), "[]");
    // The watcher may write before the node has read its key on a loaded machine.
    assert!(wait_for(|| !starts(&h).is_empty(), T), "{}", cv.log_text());
    assert_eq!(starts(&h).len(), 1, "written while the node runs");
    assert!(cv.log_text().contains("starting the batch watcher loop"));
    assert_eq!(h.current_target(), PathBuf::from("genesis"));

    set_height(&h, 100);
    assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
    assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-1"));
    assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));

    // A plan the chain has passed blocks it and all later ones (1.7).
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 2,
        ..Default::default()
    });
    set_height(&h, 150);
    let batch = h.path().join("data/upgrade-info.json.batch");
    let plans = r#"[{"name":"upgrade-2","height":200},{"name":"upgrade-1","height":100}]"#;
    fs::write(&batch, plans).unwrap();
    let mut cv = spawn_cv(&h, &["run", "start"], &[]);
    assert!(wait_for(|| !starts(&h).is_empty(), T));
    thread::sleep(Duration::from_millis(1500));
    assert!(!h.upgrade_info_path().exists(), "{}", cv.log_text());
    assert_eq!(fs::read_to_string(&batch).unwrap(), plans);
    assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));
}

/// `DAEMON_SHUTDOWN_GRACE`: SIGINT first; a node that stops in time is not killed, one
/// that does not is killed when the grace is over.
#[test]
fn cosmovisor_shutdown_grace() {
    for (grace, stop_delay, killed) in [("3s", "0", false), ("300ms", "5000", true)] {
        let h = NodeHome::with_options(NodeHomeOptions {
            upgrades: 1,
            ..Default::default()
        });
        let cv = spawn_cv(
            &h,
            &["run", "start"],
            &[
                ("NODE_UPGRADE_AFTER_MS", "0"),
                ("NODE_UPGRADE_HALT", "1"),
                ("NODE_STOP_DELAY_MS", stop_delay),
                ("DAEMON_SHUTDOWN_GRACE", grace),
                ("UNSAFE_SKIP_BACKUP", "true"),
            ],
        );
        assert!(wait_for(|| h.upgrade_info_path().exists(), T));
        set_height(&h, 100);
        assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
        let log = cv.log_text();
        let at = pos_after(&log, 0, "sent interrupt to app, waiting for exit");
        let ev = node_events(&h, "stopped_by");
        assert_eq!(ev[0]["stopped_by"], "SIGINT", "{ev:?}");
        assert_eq!(ev[0]["pid"].as_i64(), Some(node_pid(&h, 0) as i64));
        if killed {
            pos_after(&log, at, "DAEMON_SHUTDOWN_GRACE exceeded, killing app");
            assert!(!log.contains("app exited normally"), "{log}");
        } else {
            pos_after(&log, at, "app exited normally");
            assert!(!log.contains("exceeded"), "{log}");
        }
        assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-1"));
        kill_pid(node_pid(&h, 1));
        drop(cv);
    }
}

/// `DAEMON_RESTART_DELAY`: after the kill, before anything else.
#[test]
fn cosmovisor_restart_delay() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let mut cv = spawn_cv(
        &h,
        &["run", "start"],
        &[
            ("NODE_UPGRADE_AFTER_MS", "0"),
            ("NODE_UPGRADE_HALT", "1"),
            ("DAEMON_RESTART_DELAY", "800ms"),
            ("UNSAFE_SKIP_BACKUP", "true"),
        ],
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    let first = node_pid(&h, 0);
    set_height(&h, 100);
    assert!(wait_for(|| !pid_alive(first), T), "{}", cv.log_text());
    let t = Instant::now();
    assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
    let gap = t.elapsed();
    println!("MEASURE cosmovisor stand-in: node killed -> next node reports after {gap:?} (DAEMON_RESTART_DELAY=800ms)");
    assert!(gap >= Duration::from_millis(750), "{gap:?}");
    assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));
}

/// `DAEMON_PREUPGRADE_MAX_RETRIES` counts retries: 31, 31, 0 with 2 → three calls, then
/// the node; 31, 31, 31 → exit 1 with `current` already switched; 30 → exit 1 at once.
#[test]
fn cosmovisor_pre_upgrade_exit_codes_and_retries() {
    for (exits, ok, calls) in [
        ("31,31,0", true, 3),
        ("31,31,31", false, 3),
        ("30", false, 1),
    ] {
        let h = NodeHome::with_options(NodeHomeOptions {
            upgrades: 1,
            ..Default::default()
        });
        let mut cv = spawn_cv(
            &h,
            &["run", "start"],
            &[
                ("NODE_UPGRADE_AFTER_MS", "0"),
                ("NODE_UPGRADE_HALT", "1"),
                ("NODE_PREUPGRADE_EXITS", exits),
                ("DAEMON_PREUPGRADE_MAX_RETRIES", "2"),
                ("UNSAFE_SKIP_BACKUP", "true"),
            ],
        );
        assert!(wait_for(|| h.upgrade_info_path().exists(), T));
        set_height(&h, 100);
        let pre = || node_events(&h, "pre_upgrade");
        if ok {
            assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
            let log = cv.log_text();
            assert_eq!(
                log.matches("pre-upgrade command failed. retrying").count(),
                2,
                "{log}"
            );
            let at = pos_after(&log, 0, "pre-upgrade result");
            pos_after(&log, at, "pre-upgrade successful. continuing the upgrade.");
            assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));
        } else {
            let st = cv.child.wait_timeout(T).expect("exit");
            let log = cv.log_text();
            assert_eq!(st.code(), Some(1), "{exits}: {log}");
            let want = if calls == 3 {
                "Error: pre-upgrade command failed. reached max attempt of retries - 2"
            } else {
                "Error: pre-upgrade command failed : exit status 30"
            };
            assert!(log.contains(want), "{exits}: {log}");
            assert_eq!(starts(&h).len(), 1, "{exits}");
        }
        assert_eq!(
            h.current_target(),
            PathBuf::from("upgrades/upgrade-1"),
            "{exits}"
        );
        let got: Vec<i64> = pre().iter().map(|e| e["exit"].as_i64().unwrap()).collect();
        assert_eq!(got.len(), calls, "{exits}: {got:?}");
    }
}

/// `DAEMON_RESTART_AFTER_UPGRADE=false`: all the steps, then exit 0 without a new node.
#[test]
fn cosmovisor_no_relaunch_when_restart_after_upgrade_is_off() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let mut cv = spawn_cv(
        &h,
        &["run", "start"],
        &[
            ("NODE_UPGRADE_AFTER_MS", "0"),
            ("NODE_UPGRADE_HALT", "1"),
            ("DAEMON_RESTART_AFTER_UPGRADE", "false"),
            ("UNSAFE_SKIP_BACKUP", "true"),
        ],
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    set_height(&h, 100);
    let st = cv.child.wait_timeout(T).expect("exit");
    let log = cv.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains(
        "upgrade detected, DAEMON_RESTART_AFTER_UPGRADE is off. Verify new upgrade and start cosmovisor again."
    ));
    assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-1"));
    assert_eq!(starts(&h).len(), 1);
}

/// `COSMOVISOR_CUSTOM_PREUPGRADE`: run with the name as written and the height, in
/// `DAEMON_HOME`; its failure ends cosmovisor before the switch. Also: a pending upgrade
/// found at start (no `current/upgrade-info.json`) fires at the first tick, the name
/// lower-cased for the switch.
#[test]
fn cosmovisor_custom_preupgrade_script() {
    for fails in [false, true] {
        let h = NodeHome::with_options(NodeHomeOptions {
            upgrades: 1,
            ..Default::default()
        });
        set_height(&h, 100);
        fs::write(
            h.upgrade_info_path(),
            r#"{"name":"UPGRADE-1","height":100}"#,
        )
        .unwrap();
        let out = h.scratch("custom.txt");
        let script = h.path().join("cosmovisor/pre.sh");
        let body = format!(
            "#!/bin/sh\necho \"$1 $2 $PWD\" > {}\necho hello\nexit {}\n",
            out.display(),
            if fails { 3 } else { 0 }
        );
        fs::write(&script, body).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let mut cv = spawn_cv(
            &h,
            &["run", "start"],
            &[
                ("COSMOVISOR_CUSTOM_PREUPGRADE", "pre.sh"),
                ("UNSAFE_SKIP_BACKUP", "true"),
            ],
        );
        if fails {
            let st = cv.child.wait_timeout(T).expect("exit");
            assert_eq!(st.code(), Some(1), "{}", cv.log_text());
            assert!(cv.log_text().contains("Error: exit status 3"));
            assert_eq!(h.current_target(), PathBuf::from("genesis"));
        } else {
            assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
            let log = cv.log_text();
            let at = pos_after(&log, 0, "looking for COSMOVISOR_CUSTOM_PREUPGRADE file");
            pos_after(&log, at, "COSMOVISOR_CUSTOM_PREUPGRADE result");
            assert!(log.contains("argv1=UPGRADE-1 argv2=100"), "{log}");
            assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-1"));
            assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));
        }
        assert_eq!(
            fs::read_to_string(&out).unwrap().trim(),
            format!("UPGRADE-1 100 {}", h.path().display())
        );
        assert_eq!(
            fs::metadata(&script).unwrap().permissions().mode() & 0o100,
            0o100,
            "u+x added"
        );
    }
}

/// No upgrade for the one already applied (first read, same name as
/// `current/upgrade-info.json`); `--unsafe-skip-upgrades H` kills the node and exits 0.
#[test]
fn cosmovisor_applied_and_skipped_upgrades() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    set_height(&h, 100);
    let info = r#"{"name":"upgrade-1","time":"0001-01-01T00:00:00Z","height":100}"#;
    fs::write(h.upgrade_info_path(), info).unwrap();
    fs::write(
        h.path()
            .join("cosmovisor/upgrades/upgrade-1/upgrade-info.json"),
        info,
    )
    .unwrap();
    fs::remove_file(h.path().join("cosmovisor/current")).unwrap();
    std::os::unix::fs::symlink("upgrades/upgrade-1", h.path().join("cosmovisor/current")).unwrap();
    let mut cv = spawn_cv(&h, &["run", "start"], &[]);
    assert!(wait_for(|| !starts(&h).is_empty(), T));
    thread::sleep(Duration::from_millis(400));
    assert_eq!(starts(&h).len(), 1, "{}", cv.log_text());
    assert!(!cv.log_text().contains("daemon shutting down"));
    assert_eq!(cv.stop(Signal::SIGTERM).code(), Some(0));

    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    set_height(&h, 100);
    fs::write(
        h.upgrade_info_path(),
        r#"{"name":"upgrade-1","height":100}"#,
    )
    .unwrap();
    let mut cv = spawn_cv(
        &h,
        &["run", "start", "--unsafe-skip-upgrades", "99", "100", "--x"],
        &[],
    );
    let st = cv.child.wait_timeout(T).expect("exit");
    assert_eq!(st.code(), Some(0), "{}", cv.log_text());
    assert!(cv.log_text().contains("daemon shutting down"));
    assert_eq!(h.current_target(), PathBuf::from("genesis"));
    // cosmovisor may kill the node before it reads its key (and reports its start) on a
    // loaded machine; a node that did start must be dead.
    if let Some(first) = starts(&h).first() {
        let pid = first["pid"].as_i64().unwrap() as i32;
        assert!(wait_for(|| !pid_alive(pid), T));
    }
    assert!(!h.path().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("data-backup-")));
}

/// `STANDIN_LEAKED_SIGNAL_EXIT=1`: after an in-process upgrade, SIGTERM meets the first
/// launch's leaked goroutine: `terminated`, exit 1, the new node not signalled.
#[test]
fn cosmovisor_leaked_signal_goroutine_after_an_upgrade() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let mut cv = spawn_cv(
        &h,
        &["run", "start"],
        &[
            ("NODE_UPGRADE_AFTER_MS", "0"),
            ("NODE_UPGRADE_HALT", "1"),
            ("UNSAFE_SKIP_BACKUP", "true"),
            ("STANDIN_LEAKED_SIGNAL_EXIT", "1"),
        ],
    );
    assert!(wait_for(|| h.upgrade_info_path().exists(), T));
    set_height(&h, 100);
    assert!(wait_for(|| starts(&h).len() >= 2, T), "{}", cv.log_text());
    let second = node_pid(&h, 1);
    let st = cv.stop(Signal::SIGTERM);
    let log = cv.log_text();
    thread::sleep(Duration::from_millis(200));
    let alive = pid_alive(second);
    kill_pid(second);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("ERR terminated error=\"os: process already finished\""),
        "{log}"
    );
    assert!(alive, "the new node must not have been signalled");
    assert!(node_events(&h, "stopped_by").is_empty());
}

/// Configuration errors are collected; a config file is read with env overrides.
#[test]
fn cosmovisor_configuration_as_1_7() {
    let h = NodeHome::new();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["run", "start"])
            .env("DAEMON_HOME", "relative/home")
            .env_remove("DAEMON_NAME")
            .env("DAEMON_RESTART_AFTER_UPGRADE", "yes")
            .env("DAEMON_POLL_INTERVAL", "0s")
            .env("DAEMON_RESTART_DELAY", "5")
            .env("DAEMON_PREUPGRADE_MAX_RETRIES", "x"),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "env variable \"DAEMON_RESTART_AFTER_UPGRADE\" must have a boolean value (\"true\" or \"false\"), got \"yes\"",
        "invalid: DAEMON_POLL_INTERVAL: must be greater than 0",
        "invalid: DAEMON_RESTART_DELAY: could not parse '5' into a duration: time: missing unit in duration \"5\"",
        "DAEMON_PREUPGRADE_MAX_RETRIES could not be parsed to int",
        "DAEMON_NAME is not set",
        "DAEMON_HOME must be an absolute path",
        "relative/home must be an absolute path",
    ] {
        assert!(err.contains(needle), "{needle:?} missing:\n{err}");
    }
    assert_eq!(err.matches("cosmovisor-standin: ERR").count(), 7, "{err}");
    assert!(starts(&h).is_empty());

    // A config file: only its keys, env overriding those it has; `-cosmovisor-config`
    // in any case is taken, the rest reaches the node.
    let cfg = h.scratch("cv.toml");
    fs::write(
        &cfg,
        format!(
            "daemon_home = {:?}\ndaemon_name = \"wrong\"\ndaemon_poll_interval = \"50ms\"\nunsafe_skip_backup = true\n",
            h.path().display().to_string()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["run", "start", "-COSMOVISOR-config"])
            .arg(&cfg)
            .args(["--x", "y"])
            .env("NODE_EXIT_AFTER_MS", "0"),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let argv: Vec<String> = serde_json::from_value(starts(&h)[0]["argv"].clone()).unwrap();
    assert_eq!(argv, ["start", "--x", "y"]);
    let out = run_with_timeout(&mut h.cosmovisor_cmd(&["run", "--cosmovisor-config"]), T);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("failed to parse cosmovisor config: --cosmovisor-config requires an argument"));

    // `config -c`: no defaults from a file (restart-after-upgrade false, no 300ms).
    let out = run_with_timeout(h.cosmovisor_cmd(&["config", "-c"]).arg(&cfg), T);
    assert!(out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("  DAEMON_NAME: noded\n"),
        "env overrides the file: {err}"
    );
    assert!(
        err.contains("  DAEMON_RESTART_AFTER_UPGRADE: false\n"),
        "{err}"
    );
    assert!(err.contains("  DAEMON_POLL_INTERVAL: 50ms\n"), "{err}");
    assert!(err.contains("  COSMOVISOR_TIMEFORMAT_LOGS: \n"), "{err}");
}

/// The other subcommands, as modelled: (args, extra env, exit code, stdout needles,
/// stderr needles).
#[test]
fn cosmovisor_subcommands() {
    let h = NodeHome::new();
    // An app that answers `version` (text, and JSON for `--long --output json`).
    let app = h.scratch("app.sh");
    write_script(
        &app,
        "#!/bin/sh\nif [ \"$1 $2 $3 $4\" = \"version --long --output json\" ]; then\n\
         echo '{\"name\": \"noded\", \"version\": \"1.0\"}'\nelse echo \"app-version $*\"; fi\n",
    );
    let genesis = h.path().join("cosmovisor/genesis/bin/noded");
    fs::remove_file(&genesis).unwrap();
    fs::copy(&app, &genesis).unwrap();
    let node = node_standin_bin().display().to_string();
    let home = h.path().display().to_string();
    let list = format!("v3:{node}:60,v4:{node}:70");
    type Case<'a> = (
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        i32,
        Vec<String>,
        Vec<String>,
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<Case> = vec![
        (vec![], vec![], 0, s(&["Usage:\n  cosmovisor [command]", "Available Commands:"]), vec![]),
        (vec!["help"], vec![], 0, s(&["show-upgrade-info Show upgrade-info.json into stdout."]), vec![]),
        (vec!["--help"], vec![], 0, s(&["Use \"cosmovisor [command] --help\""]), vec![]),
        (
            vec!["start", "--home", "/x"],
            vec![],
            1,
            vec![],
            s(&[
                "Error: unknown command \"start\" for \"cosmovisor\"\n",
                "Run 'cosmovisor --help' for usage.\n",
            ]),
        ),
        (
            vec!["version"],
            vec![],
            0,
            s(&["INF running app", "app-version version\n"]),
            s(&["cosmovisor version: v1.7.3-standin\n"]),
        ),
        (vec!["version", "--cosmovisor-only"], vec![], 0, vec![], s(&["cosmovisor version: v1.7.3-standin\n"])),
        (
            vec!["version", "-o", "json", "--cosmovisor-only"],
            vec![],
            0,
            vec![],
            s(&["{\"cosmovisor_version\":\"v1.7.3-standin\"}\n"]),
        ),
        (
            vec!["version", "--output", "json"],
            vec![],
            1,
            vec![],
            s(&["can't print version output, expected valid json from APP, got: cosmovisor-standin: INF running app"]),
        ),
        (
            vec!["version", "--output=json"],
            vec![("COSMOVISOR_DISABLE_LOGS", "true")],
            0,
            vec![],
            s(&["{\"cosmovisor_version\":\"v1.7.3-standin\",\"app_version\":{\"name\":\"noded\",\"version\":\"1.0\"}}\n"]),
        ),
        (vec!["version", "--long"], vec![], 1, vec![], s(&["Error: unknown flag: --long\n"])),
        (
            vec!["config"],
            vec![],
            0,
            vec![],
            vec![
                format!("Configurable Values:\n  DAEMON_HOME: {home}\n  DAEMON_NAME: noded\n"),
                "  DAEMON_POLL_INTERVAL: 300ms\n".into(),
                "  DAEMON_RESTART_DELAY: 0s\n".into(),
                "  COSMOVISOR_TIMEFORMAT_LOGS: 3:04PM\n".into(),
                format!("Derived Values:\n         Root Dir: {home}/cosmovisor\n"),
                format!("  Data Backup Dir: {home}\n"),
            ],
        ),
        (
            vec!["add-upgrade", "V2", &node, "--upgrade-height", "50"],
            vec![],
            0,
            vec![format!(
                "{home}/data/upgrade-info.json created, v2 upgrade binary will switch at height 50"
            )],
            vec![],
        ),
        (
            vec!["add-upgrade", "v2", &node],
            vec![],
            1,
            vec![],
            vec![format!("Error: file already exists at {home}/cosmovisor/upgrades/v2/bin/noded\n")],
        ),
        (vec!["add-upgrade", "v2"], vec![], 1, vec![], s(&["Error: accepts 2 arg(s), received 1\n"])),
        (
            vec!["show-upgrade-info"],
            vec![],
            0,
            s(&["{\"name\":\"v2\",\"time\":\"0001-01-01T00:00:00Z\",\"height\":50}\n"]),
            vec![],
        ),
        (
            vec!["show-upgrade-info", "extra"],
            vec![],
            1,
            vec![],
            s(&["Error: unknown command \"extra\" for \"cosmovisor show-upgrade-info\"", "Usage:"]),
        ),
        (
            vec!["add-batch-upgrade", "--upgrade-list", &list],
            vec![],
            0,
            vec![],
            vec![],
        ),
        (
            vec!["add-batch-upgrade"],
            vec![],
            1,
            vec![],
            s(&["Error: either --upgrade-file or --upgrade-list must be provided\n"]),
        ),
        (
            vec!["prepare-upgrade"],
            vec![],
            0,
            s(&["INF Using gRPC address address=localhost:9090", "INF No active upgrade plan found"]),
            vec![],
        ),
        (vec!["completion", "bash"], vec![], 1, vec![], s(&["not modelled"])),
    ];
    for (args, env, code, outs, errs) in &cases {
        let mut cmd = h.cosmovisor_cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run_with_timeout(&mut cmd, T);
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(*code), "{args:?}\n{so}\n{se}");
        for n in outs {
            assert!(
                so.contains(n.as_str()),
                "{args:?}: stdout lacks {n:?}:\n{so}"
            );
        }
        for n in errs {
            assert!(
                se.contains(n.as_str()),
                "{args:?}: stderr lacks {n:?}:\n{se}"
            );
        }
    }
    // add-upgrade: the binary copied, the marker written at once, 0755.
    let bin = h.path().join("cosmovisor/upgrades/v2/bin/noded");
    assert_eq!(
        fs::read(&bin).unwrap(),
        fs::read(node_standin_bin()).unwrap()
    );
    assert_eq!(
        fs::metadata(h.upgrade_info_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o100,
        0o100
    );
    // add-batch-upgrade: per-upgrade files and the batch, pretty-printed, sorted as given.
    assert!(h.path().join("data/upgrade-info.json.v3").is_file());
    let batch = h.path().join("data/upgrade-info.json.batch");
    let text = fs::read_to_string(&batch).unwrap();
    assert!(
        text.starts_with("[\n  {\n    \"name\": \"v3\",\n    \"time\""),
        "{text}"
    );
    let v: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1]["height"], 70);
    // --upgrade-file: a headerless CSV; the batch is replaced, not merged.
    let csv = h.scratch("batch.csv");
    fs::write(&csv, format!("v5, {node}, 80\n")).unwrap();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["add-batch-upgrade", "--upgrade-file"])
            .arg(&csv),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let v: Vec<Value> = serde_json::from_str(&fs::read_to_string(&batch).unwrap()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["name"], "v5");
    // show-upgrade-info without the file: 1.7 panics (index out of range), exit 2.
    fs::remove_file(h.upgrade_info_path()).unwrap();
    let out = run_with_timeout(&mut h.cosmovisor_cmd(&["show-upgrade-info"]), T);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("panic: runtime error: index out of range")
    );

    // init: a fresh home, the genesis binary copied, `current -> genesis`, config.toml;
    // `run --cosmovisor-config` then works from that file alone.
    let fresh = tempfile::tempdir().unwrap();
    let fhome = fresh.path().join("home");
    fs::create_dir_all(fhome.join("data")).unwrap();
    let out = run_with_timeout(
        Command::new(cosmovisor_standin_bin())
            .args(["init", &node])
            .env("DAEMON_HOME", &fhome)
            .env("DAEMON_NAME", "noded")
            .env("DAEMON_POLL_INTERVAL", "70ms")
            .stdin(std::process::Stdio::null()),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        so.contains("INF checking on the genesis/bin directory"),
        "{so}"
    );
    assert!(so.contains("cosmovisor config.toml created at:"), "{so}");
    assert!(fhome.join("cosmovisor/genesis/bin/noded").is_file());
    assert_eq!(
        fs::read_link(fhome.join("cosmovisor/current")).unwrap(),
        PathBuf::from("genesis")
    );
    let cfg = fhome.join("cosmovisor/config.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("daemon_poll_interval = \"70ms\""), "{text}");
    assert!(
        text.contains("cosmovisor_timeformat_logs = \"kitchen\""),
        "{text}"
    );
    // The key the node reads: the standard path under the fresh home.
    fs::create_dir_all(fhome.join("config")).unwrap();
    fs::write(
        fhome.join("config/priv_validator_key.json"),
        &h.safe_key.json,
    )
    .unwrap();
    let report = fresh.path().join("report.jsonl");
    let out = run_with_timeout(
        Command::new(cosmovisor_standin_bin())
            .args(["run", "--cosmovisor-config"])
            .arg(&cfg)
            .args(["start", "--home"])
            .arg(&fhome)
            .env("NODE_EXIT_AFTER_MS", "0")
            .env("NODE_REPORT", &report)
            .stdin(std::process::Stdio::null()),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(read_report(&report)[0]["outcome"], "ok");
}

// ---------------------------------------------------------------------------------------
// The cosmovisor stand-in's test modes (not cosmovisor 1.7)
// ---------------------------------------------------------------------------------------

/// `STANDIN_INSTANT_UPGRADE=1`: a marker naming a new upgrade switches `current`
/// atomically and restarts the node at once (the load tests' restart race).
#[test]
fn cosmovisor_instant_upgrade_mode_restarts_node_and_switches_current() {
    let h = NodeHome::with_options(NodeHomeOptions {
        upgrades: 3,
        ..Default::default()
    });
    let mut cv = KillOnDrop::spawn(
        h.cosmovisor_cmd(&["run", "start"])
            .env("STANDIN_INSTANT_UPGRADE", "1")
            .env("NODE_UPGRADE_AFTER_MS", "30")
            .env("NODE_UPGRADES", "3"),
    );
    // Three upgrades, then a fourth start that keeps running.
    assert!(
        wait_for(|| starts(&h).len() >= 4, T),
        "reports: {:?}",
        h.reports()
    );
    thread::sleep(Duration::from_millis(100));
    let reports = starts(&h);
    assert_eq!(reports.len(), 4, "{reports:?}");
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["start_index"], i);
        assert_eq!(r["ppid"], cv.pid(), "node is cosmovisor's child");
        assert_eq!(r["address"], h.safe_key.address.as_str());
    }
    let pids: std::collections::HashSet<_> = reports.iter().map(|r| r["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 4, "each start is a new process");
    assert_eq!(h.current_target(), PathBuf::from("upgrades/upgrade-3"));
    let info: Value = serde_json::from_slice(&fs::read(h.upgrade_info_path()).unwrap()).unwrap();
    assert_eq!(info["name"], "upgrade-3");

    cv.signal(Signal::SIGTERM);
    let st = cv.wait_timeout(T).expect("cosmovisor exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "node exits 0 on the forwarded SIGTERM");
    assert_eq!(starts(&h).len(), 4, "no restart after SIGTERM");
}

#[test]
fn cosmovisor_instant_upgrade_mode_keeps_current_when_binary_missing() {
    let h = NodeHome::new();
    let mut cv = KillOnDrop::spawn(
        h.cosmovisor_cmd(&["run", "start"])
            .env("STANDIN_INSTANT_UPGRADE", "1")
            .env("NODE_UPGRADE_AFTER_MS", "0"),
    );
    assert!(wait_for(|| starts(&h).len() >= 2, T));
    assert_eq!(h.current_target(), PathBuf::from("genesis"));
    cv.signal(Signal::SIGTERM);
    assert_eq!(cv.wait_timeout(T).expect("exit").code(), Some(0));
}

#[test]
fn cosmovisor_restart_always_mode_and_max_starts() {
    // With it, the node is restarted (2 planned exits, then a third start that stays up).
    let h = NodeHome::new();
    let mut cv = KillOnDrop::spawn(
        h.cosmovisor_cmd(&["run", "start"])
            .env("NODE_EXIT_AFTER_MS", "10")
            .env("NODE_EXITS", "2")
            .env("STANDIN_RESTART_ALWAYS", "1"),
    );
    assert!(wait_for(|| starts(&h).len() >= 3, T));
    assert!(!h.upgrade_info_path().exists(), "no marker involved");
    cv.signal(Signal::SIGTERM);
    assert_eq!(cv.wait_timeout(T).expect("exit").code(), Some(0));

    // STANDIN_MAX_STARTS bounds restarts.
    let h = NodeHome::new();
    let out = run_with_timeout(
        h.cosmovisor_cmd(&["run", "start"])
            .env("NODE_EXIT_AFTER_MS", "0")
            .env("NODE_EXITS", "100")
            .env("STANDIN_RESTART_ALWAYS", "1")
            .env("STANDIN_MAX_STARTS", "3"),
        T,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(starts(&h).len(), 3);
}

#[test]
fn lstat_watcher_sees_a_gap() {
    let h = NodeHome::new();
    let p = h.scratch("watched");
    fs::write(&p, "x").unwrap();
    let w = LstatWatcher::start(&p);
    fs::remove_file(&p).unwrap();
    assert!(
        wait_for(|| w.missing_so_far() > 0, Duration::from_secs(30)),
        "the watcher never saw the gap"
    );
    fs::write(&p, "y").unwrap();
    let st = w.stop();
    assert!(st.saw_missing() && st.samples > st.missing, "{st:?}");

    // An atomic rename over the path never shows a gap.
    let w = LstatWatcher::start(&p);
    for i in 0..200 {
        let tmp = h.scratch("watched.tmp");
        fs::write(&tmp, i.to_string()).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }
    let st = w.stop();
    assert!(!st.saw_missing(), "{st:?}");
}

#[test]
#[should_panic(expected = "secret leaked")]
fn assert_no_secret_catches_hex_seed() {
    let k = TestKey::ed25519();
    assert_no_secret(&format!("debug: {}", hex::encode_upper(&k.seed)), &k);
}

#[test]
fn assert_no_secret_accepts_public_parts() {
    let k = TestKey::secp256k1();
    assert_no_secret(
        &format!("{} {} {}", k.address, k.pub_b64, k.stripped_json()),
        &k,
    );
}

#[test]
fn moto_ssm_round_trip_and_stop_on_drop() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let key = TestKey::ed25519();
    assert_eq!(
        ssm_put(&ep, "/validator/key", &key.json, "SecureString", None),
        1
    );
    let p = ssm_get_raw(&ep, "/validator/key").unwrap();
    assert_eq!(p.value, key.json);
    assert_eq!(p.r#type, "SecureString");
    assert_eq!(p.version, 1);

    let kms = kms_create_key(&ep);
    assert_eq!(
        ssm_put(&ep, "/validator/key", &key.json, "SecureString", Some(&kms)),
        2
    );
    assert_eq!(ssm_get_raw(&ep, "/validator/key").unwrap().version, 2);

    let err = ssm_get_raw(&ep, "/nope").unwrap_err();
    assert!(err.contains("ParameterNotFound"), "{err}");

    let port = moto.port();
    drop(moto);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still listening after drop"
    );
}

#[test]
fn moto_denies_user_without_ssm_access() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    ssm_put(&ep, "/validator/key", "x", "SecureString", None);
    let (id, secret) = moto_user_without_ssm_access(&ep);
    let err = ssm_get_raw_with(&ep, "/validator/key", &id, &secret).unwrap_err();
    // moto answers IAM denials with a query-protocol XML body (real AWS: JSON
    // AccessDeniedException), so match the text, not a modeled error.
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(
        err.contains("not authorized to perform: ssm:GetParameter"),
        "{err}"
    );
    // Unknown credentials are rejected too once enforcement is on.
    let err = ssm_get_raw(&ep, "/validator/key").unwrap_err();
    assert!(err.contains("InvalidClientTokenId"), "{err}");
}

#[test]
fn moto_auth_budget_from_env() {
    let moto = Moto::start_with_auth_budget(1);
    let ep = moto.endpoint();
    ssm_put(&ep, "/p", "v", "String", None); // the one unchecked action
    let err = ssm_get_raw(&ep, "/p").unwrap_err();
    assert!(err.contains("InvalidClientTokenId"), "{err}");
}

/// The helpers find every binary the end-to-end tests need.
#[test]
fn binaries_are_found() {
    assert!(ssm_cosmovisor_bin().is_file());
    assert!(node_standin_bin().is_file());
    assert!(cosmovisor_standin_bin().is_file());
}
