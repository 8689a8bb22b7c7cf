//! End to end: the guard (issue 22) against the CometBFT RPC stand-in, with the real
//! binary, moto as SSM and the node/cosmovisor stand-ins.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const PARAM: &str = "/validators/test/priv_validator_key";
const T: Duration = Duration::from_secs(60);

/// A signer run of `home` asking `endpoints`; `extra` environment on top.
fn guarded(home: &NodeHome, moto: &Moto, endpoints: &[&str], extra: &[(&str, &str)]) -> Tool {
    let mut cmd = tool_cmd(home, Some(&moto.endpoint()));
    cmd.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_GUARD_RPC", endpoints.join(","))
        .env("SSM_COSMOVISOR_GUARD_REQUEST_TIMEOUT", "2s")
        .env("SSM_COSMOVISOR_GUARD_TIMEOUT", "6s")
        .env("SSM_COSMOVISOR_LOG_FORMAT", "json");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.args(["run", "start", "--home"]).arg(home.path());
    Tool::spawn(&mut cmd, home.scratch("tool.log"))
}

/// The tool exits with `code` before any node got a key; the slot is as it was.
fn refused(home: &NodeHome, tool: &mut Tool, code: i32, event: &str) -> serde_json::Value {
    let st = tool.wait(T);
    let log = tool.log_text();
    assert_eq!(st.code(), Some(code), "{log}");
    let ev = log_events(&log, event);
    assert_eq!(ev.len(), 1, "no {event} in:\n{log}");
    assert!(log_events(&log, "fetched").len() == 1, "{log}");
    assert!(
        log_events(&log, "armed").is_empty(),
        "the slot was armed:\n{log}"
    );
    assert!(
        home.reports().is_empty(),
        "a node ran: {:?}",
        home.reports()
    );
    home.assert_idle();
    ev[0].clone()
}

#[test]
fn a_signature_of_the_key_above_the_state_keeps_the_key_in_nil_included() {
    let (moto, key) = moto_with_key(PARAM);
    for nil in [false, true] {
        let home = NodeHome::new();
        guard_home(home.path(), 100);
        let mut c = chain(130);
        // Our own signatures up to the state, then a rogue's at 117.
        signed(&mut c, &key.address, 90..=100, false, unix_ms() - 60_000);
        signed(&mut c, &key.address, [117], nil, unix_ms() - 20_000);
        let rpc = RpcStandin::start(&c);
        let prom = home.scratch("metrics.prom");
        let mut tool = guarded(
            &home,
            &moto,
            &[&rpc.url],
            &[("SSM_COSMOVISOR_METRICS_FILE", prom.to_str().unwrap())],
        );
        let ev = refused(&home, &mut tool, 9, "guard_foreign");
        // The textfile outlives the run: the alert reads the foreign verdict from it.
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l == "ssm_cosmovisor_guard_checks_total{verdict=\"foreign\"} 1"),
            "{text}"
        );
        let err = ev["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains("height 117")
                && err.contains(&key.address)
                && err.contains(if nil { "NIL" } else { "COMMIT" }),
            "{err}"
        );
        let log = tool.log_text();
        assert!(log.contains("THE KEY SIGNS ELSEWHERE"), "{log}");
        assert_no_secret(&log, &key);
    }
}

#[test]
fn only_our_own_signatures_at_or_below_the_state_deliver_at_once() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    guard_home(home.path(), 100);
    let mut c = chain(104);
    signed(&mut c, &key.address, 70..=100, false, unix_ms() - 10_000);
    let rpc = RpcStandin::start(&c);
    let began = Instant::now();
    let mut tool = guarded(&home, &moto, &[&rpc.url], &[]);
    assert!(
        wait_for(|| !home.reports().is_empty(), T),
        "no node start; log:\n{}",
        tool.log_text()
    );
    let took = began.elapsed();
    assert_eq!(home.reports()[0]["address"], key.address.as_str());
    let clean = tool.events("guard_clean");
    assert_eq!(clean.len(), 1, "{}", tool.log_text());
    assert_eq!(clean[0]["tip"], 104);
    assert_eq!(clean[0]["outside_set"], true);
    println!(
        "MEASURE guard clean on a restart: key read {} ms after the start, the check {} ms",
        took.as_millis(),
        clean[0]["took_ms"]
    );
    assert_eq!(tool.stop(Signal::SIGTERM).code(), Some(0));
    home.assert_idle();
}

#[test]
fn no_endpoint_to_believe_refuses_by_default_and_delivers_with_the_opt_out() {
    let (moto, _key) = moto_with_key(PARAM);
    // A port nothing listens on, and an endpoint that never answers.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut hang = chain(50);
    hang["hang"] = serde_json::json!(true);
    let hanging = RpcStandin::start(&hang);
    let home = NodeHome::new();
    guard_home(home.path(), 10);
    let began = Instant::now();
    let mut tool = guarded(&home, &moto, &[&closed, &hanging.url], &[]);
    let ev = refused(&home, &mut tool, 9, "guard_unknown");
    let why = ev["why"].as_str().unwrap_or_default();
    assert!(why.contains(&closed) && why.contains(&hanging.url), "{why}");
    // Bounded by the guard's total timeout (6 s), not the hanging endpoint.
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );

    let home = NodeHome::new();
    guard_home(home.path(), 10);
    let mut tool = guarded(
        &home,
        &moto,
        &[&closed],
        &[("SSM_COSMOVISOR_GUARD_ON_UNKNOWN", "deliver")],
    );
    assert!(
        wait_for(|| !home.reports().is_empty(), T),
        "{}",
        tool.log_text()
    );
    assert_eq!(
        tool.events("guard_unknown_delivered").len(),
        1,
        "{}",
        tool.log_text()
    );
    assert_eq!(tool.stop(Signal::SIGTERM).code(), Some(0));
}

#[test]
fn an_endpoint_of_another_chain_stale_or_pruned_is_not_believed_and_a_lone_liar_vetoes() {
    let (moto, key) = moto_with_key(PARAM);
    let good = RpcStandin::start(&chain(60));
    let mut other = chain(60);
    other["chain_id"] = serde_json::json!("otherchain-9");
    let other = RpcStandin::start(&other);
    let mut stale = chain(60);
    stale["tip_time_ms"] = serde_json::json!(unix_ms() - 600_000);
    let stale = RpcStandin::start(&stale);
    let mut pruned = chain(60);
    pruned["earliest"] = serde_json::json!(58);
    let pruned = RpcStandin::start(&pruned);
    // v1 only (the unprefixed paths gone): believed.
    let mut v1 = chain(61);
    v1["v1_only"] = serde_json::json!(true);
    let v1 = RpcStandin::start(&v1);
    let home = NodeHome::new();
    guard_home(home.path(), 40);
    let mut tool = guarded(
        &home,
        &moto,
        &[&other.url, &stale.url, &pruned.url, &v1.url, &good.url],
        &[],
    );
    assert!(
        wait_for(|| !home.reports().is_empty(), T),
        "{}",
        tool.log_text()
    );
    let log = tool.log_text();
    let unusable: Vec<String> = log_events(&log, "guard_endpoint")
        .iter()
        .map(|e| e["why"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(unusable.len(), 3, "{log}");
    assert!(
        unusable.iter().any(|w| w.contains("otherchain-9")),
        "{unusable:?}"
    );
    assert!(unusable.iter().any(|w| w.contains("old")), "{unusable:?}");
    assert!(
        unusable.iter().any(|w| w.contains("pruned")),
        "{unusable:?}"
    );
    assert_eq!(log_events(&log, "guard_clean")[0]["unusable"], 3);
    assert_eq!(tool.stop(Signal::SIGTERM).code(), Some(0));

    // One endpoint alone shows a signature of ours above the state: veto.
    let mut liar = chain(60);
    signed(&mut liar, &key.address, [55], false, unix_ms() - 5_000);
    let liar = RpcStandin::start(&liar);
    let home = NodeHome::new();
    guard_home(home.path(), 40);
    let mut tool = guarded(&home, &moto, &[&good.url, &liar.url], &[]);
    let ev = refused(&home, &mut tool, 9, "guard_foreign");
    assert!(
        ev["error"].as_str().unwrap_or_default().contains(&liar.url),
        "{ev}"
    );
}

#[test]
fn bad_guard_settings_stop_before_anything_changes() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    guard_home(home.path(), 10);
    for (k, v, needle) in [
        ("SSM_COSMOVISOR_GUARD_RPC", "", "SSM_COSMOVISOR_GUARD_RPC"),
        (
            "SSM_COSMOVISOR_GUARD_RPC",
            "sentry:26657",
            "SSM_COSMOVISOR_GUARD_RPC",
        ),
        (
            "SSM_COSMOVISOR_GUARD_ON_UNKNOWN",
            "perhaps",
            "SSM_COSMOVISOR_GUARD_ON_UNKNOWN",
        ),
    ] {
        let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
        cmd.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_GUARD_RPC", "http://127.0.0.1:9")
            .env(k, v)
            .args(["run", "start", "--home"])
            .arg(home.path());
        let out = run_with_timeout(&mut cmd, T);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{k}={v:?}: {text}");
        assert!(text.contains(needle), "{k}={v:?}: {text}");
        home.assert_idle();
    }
    // A node without a genesis file: the chain id cannot be known.
    std::fs::remove_file(home.path().join("config/genesis.json")).unwrap();
    let rpc = RpcStandin::start(&chain(20));
    let mut tool = guarded(&home, &moto, &[&rpc.url], &[]);
    let st = tool.wait(T);
    let log = tool.log_text();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("genesis.json"), "{log}");
    home.assert_idle();
}

/// What a takeover test keeps alive: moto, the endpoint, host B and its tool.
struct Takeover {
    _moto: Moto,
    _rpc: RpcStandin,
    b: support::lease::Host,
    tb: Tool,
    key: TestKey,
}

/// After a takeover of an expired lease: host A held it (no guard), its renewal carried
/// height 1000, and it was killed; B (guarded) takes over with the skip (raised to 1007).
/// A's signatures above 1000 timestamped before it died are the old holder's; with
/// `rogue`, one above the carried state timestamped 30 s after A died (later than B's
/// check can be, so after the fence whenever B takes over) is someone else's.
fn takeover(rogue: bool) -> Takeover {
    use support::lease::{setup, Host};
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, _a_node) = a.start_holder(&mut a.cmd(&ep), &key);
    a.sign_carried(&ep, 1000);
    guard_home(b.home.path(), 900);
    let killed_at = unix_ms();
    let mut c = chain(1010);
    signed(&mut c, &key.address, 995..=1004, false, killed_at - 500);
    if rogue {
        signed(&mut c, &key.address, [1006], false, killed_at + 30_000);
    }
    let rpc = RpcStandin::start(&c);
    let mut cb = b.cmd(&ep);
    cb.env("SSM_COSMOVISOR_GUARD_RPC", &rpc.url);
    let tb = b.spawn(&mut cb);
    assert!(
        wait_for(
            || tb.log_text().contains("lease_waiting"),
            support::lease::T
        ),
        "{}",
        tb.log_text()
    );
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    Takeover {
        _moto: moto,
        _rpc: rpc,
        b,
        tb,
        key,
    }
}

#[test]
fn after_a_takeover_the_old_holders_signatures_before_its_fence_do_not_count() {
    let mut t = takeover(false);
    assert!(
        wait_for(|| !t.b.key_reports(&t.key).is_empty(), T),
        "B never got the key; log:\n{}",
        t.tb.log_text()
    );
    let taking = t.tb.events("lease_taking_over");
    assert_eq!(taking.len(), 1, "{}", t.tb.log_text());
    let clean = t.tb.events("guard_clean");
    assert_eq!(clean.len(), 1, "{}", t.tb.log_text());
    assert!(
        clean[0]["allowance"]
            .as_str()
            .unwrap_or_default()
            .contains("before the old holder's fence"),
        "{}",
        clean[0]
    );
    assert_eq!(t.tb.stop(Signal::SIGTERM).code(), Some(0));
    t.b.home.assert_idle();
}

#[test]
fn after_a_takeover_a_rogue_signing_above_the_carried_state_keeps_the_key_in() {
    let mut t = takeover(true);
    let st = t.tb.wait(Duration::from_secs(90));
    let log = t.tb.log_text();
    assert_eq!(st.code(), Some(9), "{log}");
    let f = log_events(&log, "guard_foreign");
    assert_eq!(f.len(), 1, "{log}");
    assert!(
        f[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("height 1006"),
        "{}",
        f[0]
    );
    assert!(t.b.key_reports(&t.key).is_empty(), "B's node got the key");
    // Nothing ran under the lease: released.
    assert_eq!(log_events(&log, "lease_released").len(), 1, "{log}");
    t.b.home.assert_idle();
}

#[test]
fn check_runs_the_guard_once_and_prints_each_endpoints_verdict() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    guard_home(home.path(), 100);
    let clean = RpcStandin::start(&chain(104));
    let mut other = chain(104);
    other["chain_id"] = serde_json::json!("otherchain-9");
    let other = RpcStandin::start(&other);
    let check = |urls: &[&str]| {
        let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
        cmd.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_GUARD_RPC", urls.join(","))
            .arg("check");
        let out = run_with_timeout(&mut cmd, T);
        (out.status.code(), output_text(&out))
    };
    let (_, text) = check(&[&clean.url, &other.url]);
    assert!(
        text.contains(&format!(
            "{}: clean (tip 104, heights 101..=103 read",
            clean.url
        )),
        "{text}"
    );
    assert!(text.contains("otherchain-9"), "{text}");
    assert!(
        text.contains(&format!("clean on chain {CHAIN_ID} at tip 104")),
        "{text}"
    );
    let mut c = chain(104);
    signed(&mut c, &key.address, [102], true, unix_ms());
    clean.set(&c);
    let (code, text) = check(&[&clean.url]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("THE KEY SIGNS ELSEWHERE: a signature at height 102"),
        "{text}"
    );
    assert!(text.contains("run would refuse (exit 9)"), "{text}");
    home.assert_idle();
}
