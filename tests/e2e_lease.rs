//! Failover lease (DESIGN §9) end to end: two "hosts" (two node homes, two
//! instances of the real binary) share one key in moto's SSM and one lease in
//! moto's DynamoDB. At most one of them may deliver the key at any instant,
//! and the one that takes over never signs below its predecessor.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

const PARAM: &str = "/validators/lease/priv_validator_key";
const TABLE: &str = "ssm-cosmovisor-lease";
/// Short, so a takeover after expiry takes seconds, yet with requests timing
/// out after 1 s, which Python moto on a loaded 2-core machine still meets:
/// renew every 2 s, the holder keeps its node 4 s past its last confirmed
/// renewal, SIGKILL 1 s later; a standby waits 6 s.
const DURATION_S: u64 = 6;
/// Heights skipped after an expiry takeover by default (duration in s + 1).
const TAKEOVER_HEIGHTS: i64 = DURATION_S as i64 + 1;
const T: Duration = Duration::from_secs(40);

fn create_table(endpoint: &str) {
    boto3(
        endpoint,
        &format!(
            "import boto3, os\n\
             c = boto3.client('dynamodb', endpoint_url=os.environ['MOTO_ENDPOINT'])\n\
             c.create_table(TableName='{TABLE}', KeySchema=[{{'AttributeName':'lease','KeyType':'HASH'}}],\n\
             \x20   AttributeDefinitions=[{{'AttributeName':'lease','AttributeType':'S'}}], BillingMode='PAY_PER_REQUEST')\n"
        ),
    );
}

/// The lease item as plain JSON (`{}` if absent).
fn lease_item(endpoint: &str) -> Value {
    let out = boto3(
        endpoint,
        &format!(
            "import boto3, os, json\n\
             c = boto3.client('dynamodb', endpoint_url=os.environ['MOTO_ENDPOINT'])\n\
             it = c.get_item(TableName='{TABLE}', Key={{'lease':{{'S':'{PARAM}'}}}}, ConsistentRead=True).get('Item', {{}})\n\
             print(json.dumps({{k: list(v.values())[0] for k, v in it.items()}}))\n"
        ),
    );
    serde_json::from_str(out.trim()).expect("lease item JSON")
}

fn item_height(endpoint: &str) -> i64 {
    lease_item(endpoint)["height"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .unwrap_or(-1)
}

/// One host: its node home and the command that runs our binary there.
struct Host {
    home: NodeHome,
    name: &'static str,
}

impl Host {
    fn new(name: &'static str) -> Host {
        Host {
            home: NodeHome::new(),
            name,
        }
    }

    /// Our binary with this host's environment (no arguments yet).
    fn base_cmd(&self, endpoint: &str) -> Command {
        let mut c = tool_cmd(&self.home, Some(endpoint));
        c.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_LOG_FORMAT", "json")
            .env("SSM_COSMOVISOR_LEASE_TABLE", TABLE)
            .env("SSM_COSMOVISOR_LEASE_DURATION", format!("{DURATION_S}s"));
        c
    }

    /// `run start --home <home>`.
    fn cmd(&self, endpoint: &str) -> Command {
        let mut c = self.base_cmd(endpoint);
        c.args(["run", "start", "--home"]).arg(self.home.path());
        c
    }

    fn spawn(&self, cmd: &mut Command) -> Tool {
        Tool::spawn(cmd, self.home.scratch(&format!("{}.log", self.name)))
    }

    /// Reports of nodes that got the consensus key.
    fn key_reports(&self, key: &TestKey) -> Vec<Value> {
        complete_reports(&self.home)
            .into_iter()
            .filter(|r| r["outcome"] == "ok" && r["pub_key"] == key.pub_b64.as_str())
            .collect()
    }

    /// Reports of nodes that started on the host's safe key (standby).
    fn safe_reports(&self) -> Vec<Value> {
        complete_reports(&self.home)
            .into_iter()
            .filter(|r| r["pub_key"] == self.home.safe_key.pub_b64.as_str())
            .collect()
    }

    fn state_path(&self) -> std::path::PathBuf {
        self.home.path().join("data/priv_validator_state.json")
    }

    /// What the node "signed": its sign-state file, as CometBFT would write it.
    fn sign(&self, height: i64, round: i32, step: i8) {
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

    fn sign_state(&self) -> (i64, i64, i64) {
        let v: Value = serde_json::from_slice(&std::fs::read(self.state_path()).unwrap()).unwrap();
        (
            v["height"].as_str().unwrap().parse().unwrap(),
            v["round"].as_i64().unwrap(),
            v["step"].as_i64().unwrap(),
        )
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `2026-11-25T10:11:01.464070Z` (our JSON log's timestamp) as µs since the epoch.
fn rfc3339_us(ts: &str) -> u64 {
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
fn event_us(tool: &Tool, event: &str) -> u64 {
    let ev = log_events(&tool.log_text(), event);
    let e = ev
        .first()
        .unwrap_or_else(|| panic!("no {event} in:\n{}", tool.log_text()));
    rfc3339_us(e["timestamp"].as_str().expect("timestamp"))
}

/// One lease version as an outside observer saw it appear: it landed after
/// `after_us` (a read sent then did not see it) and before `seen_us`.
#[derive(Debug, Clone)]
struct Version {
    rvn: String,
    holder: String,
    after_us: u64,
    seen_us: u64,
}

/// Reads the lease item every 10 ms with the SDK and records each new version.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Version>>>,
}

impl Poller {
    fn start(endpoint: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Version>>> = Arc::default();
        let (flag, out, ep) = (stop.clone(), seen.clone(), endpoint.to_string());
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let conf = aws_sdk_dynamodb::Config::builder()
                .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                .region(aws_sdk_dynamodb::config::Region::new(TEST_REGION))
                .endpoint_url(&ep)
                .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    TEST_ACCESS_KEY_ID,
                    TEST_SECRET_ACCESS_KEY,
                    None,
                    None,
                    "tests",
                ))
                .build();
            let c = aws_sdk_dynamodb::Client::from_conf(conf);
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

    fn versions(&self) -> Vec<Version> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The holder id a tool logged.
fn holder_of(tool: &Tool) -> String {
    log_events(&tool.log_text(), "lease_config")[0]["holder"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Watches host A's keyed node from outside, every 5 ms, until B's node has
/// the key. Returns when A's node was first seen dead (µs since the epoch),
/// `None` if it still ran when B's node had the key.
fn watch_takeover(a_node: i32, b: &Host, key: &TestKey, tb: &Tool, ta: &Tool) -> Option<u64> {
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

fn setup() -> (Moto, TestKey) {
    let moto = Moto::start();
    let key = TestKey::ed25519();
    put_key(&moto.endpoint(), PARAM, &key);
    create_table(&moto.endpoint());
    (moto, key)
}

/// Starts host A as the holder (its node has the key) and host B as the
/// standby (its node runs on the safe key and waits).
fn holder_and_standby(
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
    assert_eq!(log_events(&ta.log_text(), "lease_acquired").len(), 1);
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

/// A clean stop of the holder hands over at once: B's standby node is stopped,
/// B's node gets the key, and B's sign state is raised to what A signed.
#[test]
fn clean_stop_hands_over_and_carries_the_sign_state() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, mut tb) = holder_and_standby(&ep, &ep, &key, &a, &b, &[]);

    // A's node signs; the renewals carry it into the lease.
    a.sign(1234, 1, 3);
    assert!(
        wait_for(|| item_height(&ep) == 1234, T),
        "lease never carried height 1234: {}",
        lease_item(&ep)
    );
    // Longer than a whole lease: B must still be waiting with no key.
    thread::sleep(Duration::from_secs(DURATION_S + 1));
    assert!(
        b.key_reports(&key).is_empty(),
        "B got the key while A held the lease"
    );
    assert!(log_events(&tb.log_text(), "lease_acquired").is_empty());

    // A signs once more after its last renewal; the release carries it too.
    a.sign(1235, 0, 2);
    let st = ta.stop(Signal::SIGTERM);
    let a_gone = unix_us();
    assert_eq!(st.code(), Some(0), "A log:\n{}", ta.log_text());
    a.home.assert_idle();
    assert_eq!(std::fs::read(a.home.key_path()).unwrap(), a.home.safe_bytes);
    let released = log_events(&ta.log_text(), "lease_released");
    assert_eq!(released.len(), 1, "A log:\n{}", ta.log_text());
    // (The item itself is not read here: B may already have taken it.)

    let t0 = Instant::now();
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "B never got the key; log:\n{}",
        tb.log_text()
    );
    let handover = t0.elapsed();
    // Released, so taken at once, not after an expiry.
    assert!(
        log_events(&tb.log_text(), "lease_taking_over").is_empty(),
        "B waited for expiry instead of taking the released lease: {}",
        tb.log_text()
    );
    let acquired = log_events(&tb.log_text(), "lease_acquired");
    assert_eq!(acquired.len(), 1, "{}", tb.log_text());
    assert_eq!(
        acquired[0]["took_over_from"], "-",
        "a released lease is not a takeover"
    );
    let r = &b.key_reports(&key)[0];
    assert!(r["read_done_unix_us"].as_u64().unwrap() > a_gone);
    // The standby node (safe key) was stopped before the keyed one started.
    let safe_pids: Vec<i64> = b
        .safe_reports()
        .iter()
        .map(|r| r["pid"].as_i64().unwrap())
        .collect();
    for p in &safe_pids {
        assert!(!pid_alive(*p as i32), "B's standby node {p} still runs");
    }
    assert_eq!(b.sign_state(), (1235, 0, 2), "B's sign state not raised");
    assert_eq!(log_events(&tb.log_text(), "sign_state_raised").len(), 1);
    println!("MEASURE clean handover: A exited -> B's node has the key in {handover:?}");

    assert_eq!(
        tb.stop(Signal::SIGTERM).code(),
        Some(0),
        "{}",
        tb.log_text()
    );
    b.home.assert_idle();
    assert_no_secret(&ta.log_text(), &key);
    assert_no_secret(&tb.log_text(), &key);
}

/// The holder loses DynamoDB: it must stop its node (exit 8, safe key back)
/// before the standby even starts its takeover write, and the standby skips
/// ahead of the height the holder's last renewal carried. `blackhole`: the
/// holder's requests still go out but no reply ever comes back (its renewal
/// thread is stuck in requests: the supervisor must enforce the deadline
/// itself); otherwise connections are refused at once.
fn partition_scenario(blackhole: bool) {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let relay = Relay::start(moto.port());
    let (a, b) = (Host::new("a"), Host::new("b"));
    let relay_ep = relay.endpoint();
    let (mut ta, tb) = holder_and_standby(
        &ep,
        &ep,
        &key,
        &a,
        &b,
        &[("AWS_ENDPOINT_URL_DYNAMODB", relay_ep.as_str())],
    );
    let a_node = a.key_reports(&key)[0]["pid"].as_i64().unwrap() as i32;
    a.sign(500, 0, 3);
    assert!(
        wait_for(|| item_height(&ep) == 500, T),
        "{}",
        lease_item(&ep)
    );

    if blackhole {
        relay.drop_replies.store(true, Ordering::SeqCst);
    } else {
        relay.cut();
    }
    let cut_at = Instant::now();
    // Watch A's node from outside until B's node has the key.
    let a_node_dead_us = watch_takeover(a_node, &b, &key, &tb, &ta);
    let a_dead = a_node_dead_us.unwrap_or_else(|| {
        panic!(
            "B's node got the key while A's node {a_node} still ran; A log:\n{}",
            ta.log_text()
        )
    });
    // B logs `lease_taking_over` before it sends the takeover write.
    let b_taking = event_us(&tb, "lease_taking_over");
    assert!(
        a_dead < b_taking,
        "A's node seen alive until {a_dead} us, B started taking the lease at {b_taking} us"
    );
    let st = ta.wait(T);
    assert_eq!(st.code(), Some(8), "A log:\n{}", ta.log_text());
    let lost = log_events(&ta.log_text(), "lease_lost");
    assert_eq!(lost.len(), 1, "{}", ta.log_text());
    a.home.assert_idle();
    assert_eq!(std::fs::read(a.home.key_path()).unwrap(), a.home.safe_bytes);
    for ev in ["lease_released", "lease_release_failed"] {
        assert!(
            log_events(&ta.log_text(), ev).is_empty(),
            "a lost lease must not even be offered back ({ev}): {}",
            ta.log_text()
        );
    }

    let acquired = log_events(&tb.log_text(), "lease_acquired");
    assert_eq!(acquired.len(), 1, "{}", tb.log_text());
    assert_eq!(
        acquired[0]["took_over_from"].as_str(),
        Some(holder_of(&ta).as_str())
    );
    assert_eq!(
        b.sign_state(),
        (500 + TAKEOVER_HEIGHTS, 0, 0),
        "B's sign state is not the carried height plus the takeover skip"
    );
    println!(
        "MEASURE partition ({}): A's node dead {} ms before B began its takeover; B's node had the key {:?} after the cut",
        if blackhole { "no replies" } else { "refused" },
        b_taking.saturating_sub(a_dead) / 1000,
        cut_at.elapsed()
    );
    drop(tb);
}

#[test]
fn holder_cut_off_from_dynamodb_stops_its_node_before_the_standby_takes_over() {
    partition_scenario(false);
}

#[test]
fn holder_whose_requests_hang_stops_its_node_before_the_standby_takes_over() {
    partition_scenario(true);
}

/// The holder's renewal thread hangs in a renewal (it never returns): the
/// supervisor itself enforces the deadline, stops the node before the standby
/// starts its takeover, and exits 8.
#[test]
fn holder_whose_renewal_thread_hangs_is_stopped_by_the_supervisor_in_time() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, tb) = holder_and_standby(
        &ep,
        &ep,
        &key,
        &a,
        &b,
        &[("SSM_COSMOVISOR_FAILPOINT", "lease-renew-hangs")],
    );
    let a_node = a.key_reports(&key)[0]["pid"].as_i64().unwrap() as i32;
    let a_node_dead_us = watch_takeover(a_node, &b, &key, &tb, &ta);
    let b_taking = event_us(&tb, "lease_taking_over");
    let a_dead = a_node_dead_us.unwrap_or_else(|| {
        panic!(
            "B's node got the key while A's node ran; A log:\n{}",
            ta.log_text()
        )
    });
    assert!(
        a_dead < b_taking,
        "A's node seen alive at {a_dead} us, B took over at {b_taking} us"
    );
    assert_eq!(ta.wait(T).code(), Some(8), "{}", ta.log_text());
    a.home.assert_idle();
    println!(
        "MEASURE hung renewal thread: A's node dead {} ms before B began its takeover",
        b_taking.saturating_sub(a_dead) / 1000
    );
    drop(tb);
}

/// A holder killed outright (kill -9, no release): the standby must wait a
/// full duration after A's last version landed (seen by an outside poller),
/// A's node must be gone by then (parent-death signal), and `restore` cleans
/// up the dead host's slot.
#[test]
fn holder_killed_the_standby_waits_for_expiry_then_takes_over() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let poller = Poller::start(&ep);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, tb) = holder_and_standby(&ep, &ep, &key, &a, &b, &[]);
    let a_holder = holder_of(&ta);
    let a_node = a.key_reports(&key)[0]["pid"].as_i64().unwrap() as i32;
    let n = poller.versions().len();
    assert!(
        wait_for(|| poller.versions().len() > n, T),
        "A does not renew"
    );
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    let reaper = StrayReaper(a.home.path().to_path_buf());
    let a_node_dead_us = watch_takeover(a_node, &b, &key, &tb, &ta);
    let versions = poller.versions();
    let last_a = versions
        .iter()
        .rev()
        .find(|v| v.holder == a_holder)
        .expect("A's versions seen")
        .clone();
    let b_taking = event_us(&tb, "lease_taking_over");
    let waited_us = b_taking.saturating_sub(last_a.after_us);
    assert!(
        waited_us >= DURATION_S * 1_000_000,
        "B began its takeover {waited_us} us after A's last version could have landed: less than the lease ({DURATION_S} s); versions {versions:?}"
    );
    let a_dead = a_node_dead_us.expect("A's node outlived the takeover");
    assert!(
        a_dead < b_taking,
        "A's node seen alive at {a_dead} us, B took over at {b_taking} us"
    );
    let acquired = log_events(&tb.log_text(), "lease_acquired");
    assert_eq!(
        acquired[0]["took_over_from"].as_str(),
        Some(a_holder.as_str())
    );
    println!(
        "MEASURE kill -9 of the holder: B began its takeover {} ms after A's last renewal landed (at the latest {} ms); last seen rvn {}",
        b_taking.saturating_sub(last_a.seen_us) / 1000,
        waited_us / 1000,
        last_a.rvn
    );
    drop(reaper);
    reap_strays(a.home.path(), Duration::from_secs(5));
    let out = run_with_timeout(
        tool_cmd(&a.home, None).arg("restore"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    a.home.assert_idle();
    drop(tb);
}

/// SIGTERM while a standby hands over (lease won, its keyless node slow to
/// stop): no key is fetched for a node, the lease is released at once, the
/// slot stays idle, exit 0.
#[test]
fn stop_during_the_handover_delivers_nothing_and_releases_the_lease() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let mut ta = a.spawn(&mut a.cmd(&ep));
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    let mut cb = b.cmd(&ep);
    cb.env("NODE_STOP_DELAY_MS", "8000");
    let mut tb = b.spawn(&mut cb);
    assert!(
        wait_for(
            || tb.log_text().contains("lease_waiting") && !b.safe_reports().is_empty(),
            T
        ),
        "{}",
        tb.log_text()
    );
    assert_eq!(
        ta.stop(Signal::SIGTERM).code(),
        Some(0),
        "{}",
        ta.log_text()
    );
    assert!(tb.wait_log("lease_won", T), "{}", tb.log_text());
    // B's keyless node is now taking 8 s to stop.
    let st = tb.stop(Signal::SIGTERM);
    let log = tb.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    assert_eq!(log_events(&log, "stopped_before_start").len(), 1, "{log}");
    assert!(
        log_events(&log, "fetched").is_empty(),
        "B fetched the key: {log}"
    );
    assert!(b.key_reports(&key).is_empty(), "B's node got the key");
    assert_eq!(lease_item(&ep)["released"], true, "{log}");
    b.home.assert_idle();
}

/// Configuration faults are named, exit with the lease's code or the config
/// code, and leave the key path as it was.
#[test]
fn lease_misconfiguration_is_named_and_changes_nothing() {
    let moto = Moto::start();
    let key = TestKey::ed25519();
    put_key(&moto.endpoint(), PARAM, &key);
    let a = Host::new("a");
    // No table.
    let out = run_with_timeout(&mut a.cmd(&moto.endpoint()), T);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(
        text.contains(TABLE) && text.contains("not found") && text.contains("partition key"),
        "{text}"
    );
    a.home.assert_idle();
    assert!(complete_reports(&a.home).is_empty(), "a node ran: {text}");
    // Too short a duration.
    let out = run_with_timeout(
        a.cmd(&moto.endpoint())
            .env("SSM_COSMOVISOR_LEASE_DURATION", "1s"),
        T,
    );
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("SSM_COSMOVISOR_LEASE_DURATION"), "{text}");
    // A broken sign-state file: refuse rather than guess the height.
    create_table(&moto.endpoint());
    std::fs::write(a.state_path(), "{").unwrap();
    let out = run_with_timeout(&mut a.cmd(&moto.endpoint()), T);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(text.contains("priv_validator_state.json"), "{text}");
    a.home.assert_idle();
    assert!(complete_reports(&a.home).is_empty(), "a node ran: {text}");
    assert_eq!(
        lease_item(&moto.endpoint()),
        serde_json::json!({}),
        "lease taken"
    );
}

/// `check` reports the lease (free, then held by the running holder) and fails
/// when the table is missing; it never takes the lease itself.
#[test]
fn check_reports_the_lease_and_never_takes_it() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let key = TestKey::ed25519();
    put_key(&ep, PARAM, &key);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let check = |h: &Host| run_with_timeout(h.base_cmd(&ep).arg("check"), T);
    let out = check(&a);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  lease table") && text.contains(TABLE),
        "{text}"
    );

    create_table(&ep);
    let out = check(&a);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("the lease is free"), "{text}");
    assert_eq!(
        lease_item(&ep),
        serde_json::json!({}),
        "check took the lease"
    );

    let mut ta = a.spawn(&mut a.cmd(&ep));
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    let holder = log_events(&ta.log_text(), "lease_config")[0]["holder"]
        .as_str()
        .unwrap()
        .to_string();
    let out = check(&b);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("lease held by {holder}")), "{text}");
    assert_eq!(ta.stop(Signal::SIGTERM).code(), Some(0));
}

/// A renewal that lands in DynamoDB but whose reply is lost must not cost the
/// lease: the next conditional write fails, the holder finds its own id in the
/// record, adopts that version and carries on (no stop, no exit).
#[test]
fn renewal_whose_reply_is_lost_is_adopted_not_mistaken_for_a_takeover() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let key = TestKey::ed25519();
    put_key(&ep, PARAM, &key);
    create_table(&ep);
    let relay = Relay::start(moto.port());
    let a = Host::new("a");
    let mut cmd = a.cmd(&ep);
    // 6 s: renew every 2 s, attempts time out after 1 s, node kept 4 s.
    cmd.env("AWS_ENDPOINT_URL_DYNAMODB", relay.endpoint())
        .env("SSM_COSMOVISOR_LEASE_DURATION", "6s");
    let mut ta = a.spawn(&mut cmd);
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    let node = a.key_reports(&key)[0]["pid"].as_i64().unwrap() as i32;
    let rvn0 = lease_item(&ep)["rvn"].clone();

    relay.drop_replies.store(true, Ordering::SeqCst);
    assert!(
        wait_for(
            || relay.dropped.load(Ordering::SeqCst) > 0,
            Duration::from_secs(10)
        ),
        "no renewal passed the relay"
    );
    // Let the request land, then let replies through again.
    thread::sleep(Duration::from_millis(200));
    relay.drop_replies.store(false, Ordering::SeqCst);
    assert_ne!(
        lease_item(&ep)["rvn"],
        rvn0,
        "the swallowed renewal did not land"
    );
    assert!(
        ta.wait_log("lease_reply_lost", Duration::from_secs(10)),
        "{}",
        ta.log_text()
    );
    // Well past the node's 4 s: still the holder, node untouched.
    thread::sleep(Duration::from_secs(5));
    assert!(
        log_events(&ta.log_text(), "lease_lost").is_empty(),
        "{}",
        ta.log_text()
    );
    assert!(
        pid_alive(node),
        "the node was stopped; log:\n{}",
        ta.log_text()
    );
    let holder = log_events(&ta.log_text(), "lease_config")[0]["holder"].clone();
    assert_eq!(lease_item(&ep)["holder"], holder);
    assert_eq!(
        ta.stop(Signal::SIGTERM).code(),
        Some(0),
        "{}",
        ta.log_text()
    );
    a.home.assert_idle();
}

/// The standby's takeover write lands but its reply is lost: it finds its own
/// id in the record, reclaims the lease, and still treats it as a takeover
/// (the sign state skips ahead of the carried height).
#[test]
fn takeover_whose_reply_is_lost_still_skips_ahead() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let relay = Relay::start(moto.port());
    let (a, b) = (Host::new("a"), Host::new("b"));
    let relay_ep = relay.endpoint();
    let mut ta = a.spawn(&mut a.cmd(&ep));
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    a.sign(900, 1, 2);
    assert!(
        wait_for(|| item_height(&ep) == 900, T),
        "{}",
        lease_item(&ep)
    );
    let mut cb = b.cmd(&ep);
    cb.env("AWS_ENDPOINT_URL_DYNAMODB", &relay_ep);
    let tb = b.spawn(&mut cb);
    assert!(
        wait_for(|| tb.log_text().contains("lease_waiting"), T),
        "{}",
        tb.log_text()
    );
    // A standby only reads; its first PutItem is the takeover.
    relay.swallow_reply_to("PutItem");
    let a_holder = holder_of(&ta);
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    let _reaper = StrayReaper(a.home.path().to_path_buf());
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "B never took over; log:\n{}",
        tb.log_text()
    );
    assert!(
        relay.dropped.load(Ordering::SeqCst) > 0,
        "no reply was swallowed"
    );
    let log = tb.log_text();
    assert_eq!(log_events(&log, "lease_reply_lost").len(), 1, "{log}");
    let acquired = log_events(&log, "lease_acquired");
    assert_eq!(
        acquired[0]["took_over_from"].as_str(),
        Some(a_holder.as_str()),
        "{log}"
    );
    assert_eq!(b.sign_state(), (900 + TAKEOVER_HEIGHTS, 0, 0), "{log}");
    drop(tb);
}

/// Two validators configured with the same lease name: the second one's host
/// takes the (released) lease, fetches its key, sees the lease is bound to
/// another validator's address, and stops before touching its node's sign
/// state, the other validator's carried state, or delivering anything.
#[test]
fn a_lease_bound_to_another_validator_is_refused_before_anything_changes() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let other = TestKey::ed25519();
    put_key(&ep, "/validators/other/priv_validator_key", &other);
    let (a, c) = (Host::new("a"), Host::new("c"));
    let mut ta = a.spawn(&mut a.cmd(&ep));
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    a.sign(1000, 0, 3);
    assert!(
        wait_for(|| item_height(&ep) == 1000, T),
        "{}",
        lease_item(&ep)
    );
    assert_eq!(
        ta.stop(Signal::SIGTERM).code(),
        Some(0),
        "{}",
        ta.log_text()
    );
    assert_eq!(lease_item(&ep)["address"], key.address.as_str());

    let mut cc = c.cmd(&ep);
    cc.env("AWS_PARAMETER", "/validators/other/priv_validator_key")
        .env("SSM_COSMOVISOR_LEASE_NAME", PARAM);
    let out = run_with_timeout(&mut cc, T);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(
        text.contains(key.address.as_str())
            && text.contains(other.address.as_str())
            && text.contains("SSM_COSMOVISOR_LEASE_NAME"),
        "{text}"
    );
    assert!(complete_reports(&c.home).is_empty(), "a node ran: {text}");
    c.home.assert_idle();
    assert_eq!(c.sign_state(), (0, 0, 0), "C's sign state was changed");
    let item = lease_item(&ep);
    assert_eq!(item["address"], key.address.as_str(), "{item}");
    assert_eq!(
        item["height"], "1000",
        "the other validator's state was changed: {item}"
    );
    assert_eq!(item["released"], true, "{item}");
}
