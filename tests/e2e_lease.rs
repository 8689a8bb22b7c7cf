//! Failover lease (DESIGN §9) end to end: two "hosts" (two node homes, two
//! instances of the real binary) share one key in moto's SSM and one lease in
//! moto's DynamoDB. At most one of them may deliver the key at any instant,
//! and the one that takes over never signs below its predecessor.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
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
/// Short, so a takeover after expiry takes seconds: renew every 1 s, the
/// holder keeps its node 2 s past its last successful renewal, SIGKILL 0.5 s later.
const DURATION_S: u64 = 3;
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
    // Several renewal periods: B must still be waiting with no key.
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
    assert_eq!(lease_item(&ep)["released"], true);

    let t0 = Instant::now();
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "B never got the key; log:\n{}",
        tb.log_text()
    );
    let handover = t0.elapsed();
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

/// A TCP relay to moto that the test can cut, as a network partition between
/// one host and DynamoDB.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// While set, replies from moto are swallowed (the requests still land).
    drop_replies: Arc<AtomicBool>,
    /// Reply chunks swallowed so far.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn start(upstream_port: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let drop_replies = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c2, k2) = (cut.clone(), conns.clone());
        let (d2, n2) = (drop_replies.clone(), dropped.clone());
        thread::spawn(move || {
            while !c2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                            continue;
                        };
                        let mut g = k2.lock().unwrap();
                        g.push(down.try_clone().unwrap());
                        g.push(up.try_clone().unwrap());
                        drop(g);
                        pipe(down.try_clone().unwrap(), up.try_clone().unwrap(), None);
                        pipe(up, down, Some((d2.clone(), n2.clone())));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: new connections are refused.
        });
        Relay {
            port,
            cut,
            conns,
            drop_replies,
            dropped,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuses new connections and breaks the open ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

type Swallow = Option<(Arc<AtomicBool>, Arc<std::sync::atomic::AtomicU64>)>;

fn pipe(mut from: TcpStream, mut to: TcpStream, swallow: Swallow) {
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some((on, count)) = &swallow {
                        if on.load(Ordering::SeqCst) {
                            count.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The holder loses DynamoDB: it must stop its node (exit 8, safe key back)
/// before the standby can take over, and the standby starts from the height
/// the holder's last renewal carried.
#[test]
fn holder_cut_off_from_dynamodb_stops_its_node_before_the_standby_takes_over() {
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

    relay.cut();
    let cut_at = Instant::now();
    // Watch A's node and B's key delivery from outside, side by side.
    let mut a_node_dead_us = None;
    let deadline = Instant::now() + T;
    while b.key_reports(&key).is_empty() {
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
    let b_read_us = b.key_reports(&key)[0]["read_done_unix_us"]
        .as_u64()
        .unwrap();
    let a_dead = a_node_dead_us.unwrap_or_else(|| {
        panic!(
            "B's node got the key while A's node {a_node} still ran; A log:\n{}",
            ta.log_text()
        )
    });
    assert!(
        a_dead < b_read_us,
        "A's node seen dead at {a_dead} us, B's node had the key at {b_read_us} us"
    );
    let st = ta.wait(T);
    assert_eq!(st.code(), Some(8), "A log:\n{}", ta.log_text());
    let lost = log_events(&ta.log_text(), "lease_lost");
    assert_eq!(lost.len(), 1, "{}", ta.log_text());
    a.home.assert_idle();
    assert_eq!(std::fs::read(a.home.key_path()).unwrap(), a.home.safe_bytes);

    let acquired = log_events(&tb.log_text(), "lease_acquired");
    assert_eq!(acquired.len(), 1, "{}", tb.log_text());
    assert!(
        acquired[0]["took_over_from"].as_str().unwrap_or("-") != "-",
        "an expired lease must be a takeover: {}",
        acquired[0]
    );
    let (h, _, _) = b.sign_state();
    assert!(
        h >= 500,
        "B's sign state {h} is below what A's lease carried"
    );
    println!(
        "MEASURE partition: A's node dead {} ms before B's node had the key; B had it {:?} after the cut",
        (b_read_us - a_dead) / 1000,
        cut_at.elapsed()
    );
    drop(tb);
}

/// A holder killed outright (kill -9, no release): the standby must wait for
/// the lease to expire, then take over; `restore` cleans up the dead host's slot.
#[test]
fn holder_killed_the_standby_waits_for_expiry_then_takes_over() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, tb) = holder_and_standby(&ep, &ep, &key, &a, &b, &[]);
    let rvn_before = lease_item(&ep)["rvn"].clone();
    assert!(
        wait_for(|| lease_item(&ep)["rvn"] != rvn_before, T),
        "A does not renew"
    );
    let killed = Instant::now();
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    let reaper = StrayReaper(a.home.path().to_path_buf());
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "B never took over; log:\n{}",
        tb.log_text()
    );
    let waited = killed.elapsed();
    // A's last renewal was at most one renewal period (1 s) before the kill;
    // B may take over only a full duration after it saw that renewal.
    assert!(
        waited >= Duration::from_secs(DURATION_S - 1),
        "B took over {waited:?} after the kill: before the lease could expire"
    );
    let acquired = log_events(&tb.log_text(), "lease_acquired");
    assert!(
        acquired[0]["took_over_from"].as_str().unwrap_or("-") != "-",
        "{}",
        tb.log_text()
    );
    println!("MEASURE kill -9 of the holder -> standby's node has the key: {waited:?}");
    reap_strays(a.home.path(), Duration::from_secs(5));
    drop(reaper);
    let out = run_with_timeout(
        tool_cmd(&a.home, None).arg("restore"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    a.home.assert_idle();
    drop(tb);
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
