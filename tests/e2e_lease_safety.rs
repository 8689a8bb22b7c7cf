//! Failover safety under attack: the ways a lease double-signed or could be
//! abused, each replayed against the real binary on moto (issue 10).
//!
//! - a standby that took over an *expired* lease and stops before signing
//!   must not release it without the takeover skip (defect 1);
//! - a stalled tool, or a stalled or dead fencer, must not leave the node
//!   signing past the lease (defect 2);
//! - a record anyone with `dynamodb:PutItem` could write (huge height, huge
//!   duration, wrong types, no version) and a table with the wrong key schema
//!   are refused with a clear error, and the node never gets the key.

mod support;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use nix::sys::signal::Signal;
use support::lease::*;
use support::*;

/// A lease item's attributes.
type Item = HashMap<String, AttributeValue>;

/// Overwrites the lease item with `item` (its attributes, without the key).
fn forge(endpoint: &str, mut item: Item) {
    item.insert("lease".into(), AttributeValue::S(PARAM.into()));
    dynamodb_put_item(endpoint, TABLE, item);
}

/// A record as our writes make it, released or held, with these values.
fn record(released: bool, height: &str, duration_ms: &str) -> Item {
    let (s, n) = (
        |v: &str| AttributeValue::S(v.into()),
        |v: &str| AttributeValue::N(v.into()),
    );
    [
        ("holder", s("forger/1/x")),
        ("rvn", s("f0")),
        ("duration_ms", n(duration_ms)),
        ("released", AttributeValue::Bool(released)),
        ("height", n(height)),
        ("round", n("0")),
        ("step", n("0")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The pid of a tool's fencer, from its `fence_started` event.
fn fencer_of(tool: &Tool) -> i32 {
    assert!(tool.wait_log("fence_started", T), "{}", tool.log_text());
    tool.events("fence_started")[0]["pid"].as_i64().unwrap() as i32
}

/// A holds the lease and has signed 900 (carried by a renewal); B stands by.
fn signed_holder_and_standby(ep: &str, key: &TestKey, a: &Host, b: &Host) -> (Tool, Tool, i32) {
    let (ta, tb) = holder_and_standby(ep, ep, key, a, b, &[]);
    a.sign_carried(ep, 900);
    let a_node = a.key_reports(key)[0]["pid"].as_i64().unwrap() as i32;
    (ta, tb, a_node)
}

/// Defect 1, replayed: A holds and signs 900, is killed; B takes the expired
/// lease over and is stopped at once (SIGTERM the moment it logs
/// `lease_won`). B must release the lease *with* the skip: C, taking the
/// released lease, starts above anything A may have signed.
#[test]
fn standby_stopped_right_after_an_expiry_takeover_releases_the_skip() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b, c) = (Host::new("a"), Host::new("b"), Host::new("c"));
    let (mut ta, mut tb, a_node) = signed_holder_and_standby(&ep, &key, &a, &b);
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    let _reaper = StrayReaper(a.home.path().to_path_buf());
    assert!(tb.wait_log("lease_won", T), "{}", tb.log_text());
    let st = tb.stop(Signal::SIGTERM);
    let log = tb.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(
        b.key_reports(&key).is_empty(),
        "B's node got the key: {log}"
    );
    let item = lease_item(&ep);
    assert_eq!(item["released"], true, "{item}");
    let released = log_events(&log, "lease_released");
    assert_eq!(released.len(), 1, "{log}");
    assert_eq!(released[0]["takeover_skip"], TAKEOVER_HEIGHTS, "{log}");
    assert_eq!(item_height(&ep), 900 + TAKEOVER_HEIGHTS, "{item}");
    assert!(!pid_alive(a_node), "A's node outlived A");
    let mut tc = c.spawn(&mut c.cmd(&ep));
    assert!(
        wait_for(|| !c.key_reports(&key).is_empty(), T),
        "{}",
        tc.log_text()
    );
    assert_eq!(
        c.sign_state(),
        (900 + TAKEOVER_HEIGHTS, 0, 0),
        "{}",
        tc.log_text()
    );
    assert_eq!(tc.stop(Signal::SIGTERM).code(), Some(0));
    c.home.assert_idle();
    b.home.assert_idle();
}

/// Defect 1 through a failed fetch: the new holder cannot reach SSM (as when
/// KMS denies the decrypt), exits 3, and its release still carries the skip.
#[test]
fn new_holder_whose_fetch_fails_releases_the_skip() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, _) = a.start_holder(&mut a.cmd(&ep), &key);
    a.sign_carried(&ep, 900);
    let mut cb = b.cmd(&ep);
    cb.env(
        "AWS_ENDPOINT_URL_SSM",
        format!("http://127.0.0.1:{}", free_port()),
    );
    let mut tb = b.spawn(&mut cb);
    assert!(tb.wait_log("lease_waiting", T), "{}", tb.log_text());
    ta.child.signal(Signal::SIGKILL);
    let _ = ta.wait(T);
    let _reaper = StrayReaper(a.home.path().to_path_buf());
    let st = tb.wait(Duration::from_secs(120));
    let log = tb.log_text();
    assert_eq!(st.code(), Some(3), "{log}");
    assert!(b.key_reports(&key).is_empty(), "{log}");
    assert_eq!(lease_item(&ep)["released"], true, "{log}");
    assert_eq!(item_height(&ep), 900 + TAKEOVER_HEIGHTS, "{log}");
    b.home.assert_idle();
}

/// Watches `pid` from outside; returns when it was first seen dead (µs since
/// the epoch), or `None` if it still lived after `timeout`.
fn death_of(pid: i32, timeout: Duration) -> Option<u64> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !pid_alive(pid) {
            return Some(unix_us());
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Defect 2: SIGSTOP of the tool alone (its node runs freely) for three lease
/// durations. The fencer kills the node before the lease can expire for the
/// standby; B starts above A's state; A, resumed, exits 8 and restores.
#[test]
fn tool_stopped_alone_its_fencer_kills_the_node_before_the_lease_expires() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let poller = Poller::start(&ep);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, tb, a_node) = signed_holder_and_standby(&ep, &key, &a, &b);
    let a_holder = holder_of(&ta);
    fencer_of(&ta);
    let stopped_at = Instant::now();
    ta.child.signal(Signal::SIGSTOP);
    let a_dead = death_of(a_node, Duration::from_secs(DURATION_S * 2))
        .unwrap_or_else(|| panic!("A's node still ran 2 leases after its tool stopped"));
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "B never took over: {}",
        tb.log_text()
    );
    let b_taking = event_us(&tb, "lease_taking_over");
    let last_a = poller
        .versions()
        .into_iter()
        .rev()
        .find(|v| v.holder == a_holder)
        .expect("A's versions");
    assert!(
        a_dead < b_taking,
        "A's node alive at {a_dead} us, B began its takeover at {b_taking} us"
    );
    // Dead before the lease could expire at all, from its last renewal.
    let expiry = last_a.after_us + DURATION_S * 1_000_000;
    assert!(
        a_dead < expiry,
        "A's node died {} ms after the lease expired",
        (a_dead - expiry) / 1000
    );
    assert_eq!(b.sign_state(), (900 + TAKEOVER_HEIGHTS, 0, 0));
    let remaining = Duration::from_secs(3 * DURATION_S).saturating_sub(stopped_at.elapsed());
    thread::sleep(remaining);
    ta.child.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    let st = ta.wait(T);
    let exit_after = resumed.elapsed();
    let log = ta.log_text();
    assert_eq!(st.code(), Some(8), "{log}");
    // Its own fired fencer is no orphan of the child: no orphan grace.
    assert!(
        exit_after < Duration::from_secs(3),
        "A exited {exit_after:?} after it was resumed: {log}"
    );
    let fired = log_events(&log, "fence_fired");
    assert_eq!(fired.len(), 1, "{log}");
    assert_eq!(fired[0]["cause"], "Deadline", "{log}");
    assert!(log_events(&log, "lease_released").is_empty(), "{log}");
    a.home.assert_idle();
    println!(
        "MEASURE tool SIGSTOPped: A's node killed {} ms after A's last renewal could have landed ({} ms before the lease expired, {} ms before B began its takeover); A exited {} ms after it was resumed",
        a_dead.saturating_sub(last_a.after_us) / 1000,
        (expiry - a_dead) / 1000,
        (b_taking - a_dead) / 1000,
        exit_after.as_millis()
    );
    drop(tb);
}

/// SIGSTOP of the fencer alone: it stops acknowledging deadlines, so the
/// tool itself stops the node before the lease can expire, and exits 8.
#[test]
fn fencer_stopped_alone_the_tool_stops_the_node_before_the_lease_expires() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (mut ta, tb, a_node) = signed_holder_and_standby(&ep, &key, &a, &b);
    let fencer = fencer_of(&ta);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(fencer), Signal::SIGSTOP).unwrap();
    let stopped = unix_us();
    let a_dead = death_of(a_node, Duration::from_secs(DURATION_S * 2))
        .expect("A's node outlived its stalled fencer");
    assert!(
        a_dead - stopped < DURATION_S * 1_000_000,
        "A's node died {} ms after the fencer stopped",
        (a_dead - stopped) / 1000
    );
    let st = ta.wait(T);
    let log = ta.log_text();
    assert_eq!(st.code(), Some(8), "{log}");
    assert!(log.contains("fencer process stopped confirming"), "{log}");
    a.home.assert_idle();
    assert!(!pid_alive(fencer), "the stalled fencer was left behind");
    assert!(
        wait_for(|| !b.key_reports(&key).is_empty(), T),
        "{}",
        tb.log_text()
    );
    let b_taking = event_us(&tb, "lease_taking_over");
    assert!(a_dead < b_taking);
    assert_eq!(b.sign_state(), (900 + TAKEOVER_HEIGHTS, 0, 0));
    println!(
        "MEASURE fencer SIGSTOPped: A's node stopped by the tool {} ms after, {} ms before B began its takeover",
        (a_dead - stopped) / 1000,
        (b_taking - a_dead) / 1000
    );
}

/// kill -9 of the fencer: the tool stops the node at once and exits 8.
#[test]
fn fencer_killed_the_tool_stops_the_node() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let a = Host::new("a");
    let (mut ta, a_node) = a.start_holder(&mut a.cmd(&ep), &key);
    let fencer = fencer_of(&ta);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(fencer), Signal::SIGKILL).unwrap();
    let killed = unix_us();
    let a_dead =
        death_of(a_node, Duration::from_secs(DURATION_S)).expect("node outlived its fencer");
    let st = ta.wait(T);
    let log = ta.log_text();
    assert_eq!(st.code(), Some(8), "{log}");
    assert!(log.contains("the fencer process exited"), "{log}");
    a.home.assert_idle();
    println!(
        "MEASURE fencer killed: node stopped {} ms later",
        (a_dead - killed) / 1000
    );
}

/// kill -9 of the tool alone: its fencer sees it go and kills the node tree
/// at once (the parent-death signal alone reaches only cosmovisor).
#[test]
fn tool_killed_alone_the_fencer_kills_the_node_tree() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let a = Host::new("a");
    let mut ca = a.cmd(&ep);
    // A node that ignores its cosmovisor's death for a long time.
    ca.env("NODE_STOP_DELAY_MS", "30000");
    let (mut ta, a_node) = a.start_holder(&mut ca, &key);
    let fencer = fencer_of(&ta);
    ta.child.signal(Signal::SIGKILL);
    let killed = unix_us();
    let _ = ta.wait(T);
    let _reaper = StrayReaper(a.home.path().to_path_buf());
    let a_dead = death_of(a_node, Duration::from_secs(5)).expect("node outlived the tool by 5 s");
    assert!(
        death_of(fencer, Duration::from_secs(5)).is_some(),
        "fencer left running"
    );
    println!(
        "MEASURE tool killed: its node killed by the fencer {} ms later",
        (a_dead - killed) / 1000
    );
}

/// What is left of a fenced holder's tree: every live process that mentions the host's
/// home in its command line (cosmovisor, the node, the escape chain's links) or descends
/// from the tool, other than the tool and its fencer.
fn left_of_tree(a: &Host, tool: i32, fencer: i32) -> Vec<(i32, String, Option<char>)> {
    let mut pids = pids_mentioning(a.home.path());
    pids.extend(descendants(tool));
    pids.sort();
    pids.dedup();
    pids.into_iter()
        .filter(|&p| p != tool && p != fencer && pid_alive(p))
        .map(|p| (p, exe_name(p), pid_state(p)))
        .collect()
}

/// Issue 20 item 4: a split-trust holder (root bounded as the split unit, node user
/// `nobody`) whose tool is SIGSTOPped. At the fence deadline nothing of the child's tree
/// may be left: cosmovisor, the node and, with `escape`, a node descendant that `setsid`s
/// and forks-and-exits in a chain (`NODE_ESCAPE_CHAIN`). Returns the fencer's `killed`.
fn split_holder_stopped_is_fenced_whole(escape: bool) -> u64 {
    if !root_with_setpriv() {
        return u64::MAX;
    }
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let a = Host::split("a");
    let mut ca = a.cmd(&ep);
    if escape {
        ca.env("NODE_ESCAPE_CHAIN", "1");
    }
    let (mut ta, a_node) = a.start_holder(&mut ca, &key);
    let _reaper = StrayReaper(a.home.path().to_path_buf());
    let fencer = fencer_of(&ta);
    let tool = ta.child.pid();
    let link = |p: &i32| cmdline_contains(*p, b"escape-chain");
    if escape {
        // A link that has already left the node's session and been reparented.
        assert!(
            wait_for(
                || pids_mentioning(a.home.path())
                    .iter()
                    .any(|p| link(p) && parent_of(*p) == Some(tool)),
                T
            ),
            "no escape-chain link outside the node's tree; log:\n{}",
            ta.log_text()
        );
    }
    let cosmovisor = parent_of(a_node).expect("the node's parent");
    assert_eq!(parent_of(cosmovisor), Some(tool), "{}", ta.log_text());
    ta.child.signal(Signal::SIGSTOP);
    if !escape {
        // As the issue found it: cosmovisor stopped with the tool.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(cosmovisor), Signal::SIGSTOP).unwrap();
    }
    assert!(
        ta.wait_log("fence_fired", Duration::from_secs(DURATION_S * 2)),
        "the fencer never fired; log:\n{}",
        ta.log_text()
    );
    let fired_us = event_us(&ta, "fence_fired");
    // A chain that lives on starts a link every 20 ms: 1 s after the fence (50 of its
    // periods, and ample for SIGKILLed processes to be torn down) none may have appeared
    // since, and nothing of the tree may be alive. A scan of /proc alone could miss a
    // chain between two links; its own record of each link cannot.
    thread::sleep(Duration::from_secs(1));
    let born_after: Vec<u64> = read_report(&a.home.report_path())
        .iter()
        .filter(|r| r["unix_us"].as_u64().is_some_and(|t| t > fired_us))
        .filter_map(|r| r["escape_link"].as_u64())
        .collect();
    let left = left_of_tree(&a, tool, fencer);
    let fired = ta.events("fence_fired");
    let killed = fired[0]["killed"].as_u64().expect("killed");
    println!(
        "MEASURE split trust, tool SIGSTOPped{}: fence fired {} ms after its deadline, killed={killed}, scans={}, alive 1 s later: {left:?}, links born after the fence: {}",
        if escape { ", escape chain" } else { "" },
        fired[0]["late_ms"],
        fired[0]["scans"],
        born_after.len(),
    );
    if std::env::var_os("DEBUG_FENCE").is_some() {
        println!("LOG:\n{}", ta.log_text());
    }
    ta.child.signal(Signal::SIGCONT);
    assert!(
        left.is_empty() && born_after.is_empty(),
        "alive after the fence (pid, exe, state): {left:?}; chain links born after it: {born_after:?}; cosmovisor {cosmovisor}, node {a_node}; log:\n{}",
        ta.log_text()
    );
    assert!(!pid_alive(cosmovisor) && !pid_alive(a_node));
    let resumed = Instant::now();
    let st = ta.wait(T);
    let exit_after = resumed.elapsed();
    let log = ta.log_text();
    assert_eq!(st.code(), Some(8), "{log}");
    // Its fired fencer is no orphan of the child: no orphan grace.
    assert!(
        exit_after < Duration::from_secs(3),
        "A exited {exit_after:?} after it was resumed: {log}"
    );
    println!(
        "MEASURE split trust: exit 8 {} ms after the tool was resumed",
        exit_after.as_millis()
    );
    a.home.assert_idle();
    killed
}

#[test]
fn split_trust_tool_stopped_the_fence_kills_cosmovisor_the_node_and_all_below() {
    let killed = split_holder_stopped_is_fenced_whole(false);
    // cosmovisor and the node at least, the group kill counted.
    assert!(killed >= 2, "killed={killed}");
}

#[test]
fn split_trust_tool_stopped_the_fence_kills_a_setsid_fork_chain() {
    let killed = split_holder_stopped_is_fenced_whole(true);
    // cosmovisor, the node and at least one link of the chain.
    assert!(killed >= 3, "killed={killed}");
}

/// Runs a host against a forged or broken lease and expects exit 8 with
/// `needle` in the output, no key delivered, the slot idle and the sign
/// state untouched.
fn refused(endpoint: &str, needle: &str) -> String {
    let a = Host::new("a");
    let before = std::fs::read(a.state_path()).unwrap();
    let out = run_with_timeout(&mut a.cmd(endpoint), Duration::from_secs(60));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(text.contains(needle), "wanted {needle:?} in:\n{text}");
    assert!(
        complete_reports(&a.home)
            .iter()
            .all(|r| r["outcome"] != "ok" || r["pub_key"] == a.home.safe_key.pub_b64.as_str()),
        "the node got the key: {text}"
    );
    a.home.assert_idle();
    assert_eq!(
        std::fs::read(a.state_path()).unwrap(),
        before,
        "sign state changed"
    );
    text
}

/// Forged records: a released one carrying height 2^63-1 (taking it would
/// stop this validator from signing for good), a held one with a duration of
/// 2^63-1 ms (every standby would wait for ever), wrong types, no version.
#[test]
fn forged_and_malformed_lease_records_are_refused_and_the_node_never_gets_the_key() {
    let (moto, _key) = setup();
    let ep = moto.endpoint();
    forge(&ep, record(true, &i64::MAX.to_string(), "6000"));
    let t = refused(&ep, "SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP");
    assert!(
        t.contains("accept-lease-state --height 9223372036854775807"),
        "{t}"
    );
    forge(&ep, record(false, "10", &i64::MAX.to_string()));
    refused(&ep, "duration_ms");
    forge(&ep, record(false, "10", "100"));
    refused(&ep, "duration_ms");
    let mut wrong_type = record(true, "10", "6000");
    wrong_type.insert("height".into(), AttributeValue::S("10".into()));
    forge(&ep, wrong_type);
    refused(&ep, "`height` is not a number");
    let mut no_rvn = record(true, "10", "6000");
    no_rvn.remove("rvn");
    forge(&ep, no_rvn);
    refused(&ep, "no `rvn`");
    forge(&ep, record(true, "-5", "6000"));
    refused(&ep, "`height` = -5");
}

/// A genuine jump (this host has not signed for long) is confirmed by the
/// operator with `accept-lease-state`, which refuses a height the lease no
/// longer carries; then the host takes the lease at that state.
#[test]
fn a_large_but_genuine_height_jump_is_accepted_by_the_operator() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    forge(&ep, record(true, "500000", "6000"));
    refused(&ep, "jump of 500000 heights");
    let a = Host::new("a");
    let out = run_with_timeout(a.base_cmd(&ep).arg("check"), T);
    let text = output_text(&out);
    assert!(
        text.contains("WARN  lease sign state")
            && text.contains("accept-lease-state --height 500000"),
        "{text}"
    );
    let out = run_with_timeout(
        a.base_cmd(&ep)
            .args(["accept-lease-state", "--height", "499999"]),
        T,
    );
    assert_eq!(out.status.code(), Some(8), "{}", output_text(&out));
    assert!(output_text(&out).contains("not height 499999"));
    assert_eq!(a.sign_state(), (0, 0, 0));
    let out = run_with_timeout(
        a.base_cmd(&ep)
            .args(["accept-lease-state", "--height", "500000"]),
        T,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(a.sign_state(), (500000, 0, 0));
    let mut ta = a.spawn(&mut a.cmd(&ep));
    assert!(
        wait_for(|| !a.key_reports(&key).is_empty(), T),
        "{}",
        ta.log_text()
    );
    assert_eq!(ta.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(item_height(&ep), 500000);
}

/// A table whose partition key is not `lease`: named as such, nothing done.
#[test]
fn a_table_with_another_key_schema_is_named() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let key = TestKey::ed25519();
    put_key(&ep, PARAM, &key);
    dynamodb_create_table(&ep, TABLE, "id");
    let t = refused(&ep, "does not have the lease key schema");
    assert!(t.contains(TABLE), "{t}");
}

/// Issue 20 item 7: a record naming the current holder's own id (every
/// record shows it) with a raised state. Before: the holder's next renewal
/// failed its condition, took the record for one of its own writes whose
/// reply was lost, adopted its state without the jump check and renewed and
/// released it further. Now: the holder sees a state it never sent, says
/// so, and treats the lease as lost (node stopped, exit 8); its state file
/// is never raised to the forged height.
#[test]
fn a_record_naming_the_holder_with_a_state_it_never_sent_is_not_adopted() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    let a = Host::new("a");
    let (mut ta, a_node) = a.start_holder(&mut a.cmd(&ep), &key);
    a.sign_carried(&ep, 900);
    let holder = lease_item(&ep)["holder"].as_str().unwrap().to_string();
    let mut item = record(false, "100899", "6000");
    item.insert("holder".into(), AttributeValue::S(holder.clone()));
    forge(&ep, item);
    let st = ta.wait(T);
    let log = ta.log_text();
    assert_eq!(st.code(), Some(8), "{log}");
    let ev = log_events(&log, "lease_record_impersonated");
    assert_eq!(ev.len(), 1, "{log}");
    assert_eq!(ev[0]["holder"], holder.as_str(), "{log}");
    assert!(log_events(&log, "lease_reply_lost").is_empty(), "{log}");
    assert!(!pid_alive(a_node), "A's node outlived the lost lease");
    assert_eq!(a.sign_state().0, 900, "{log}");
    // Nothing of ours overwrote the forgery (a release would have carried it).
    assert_eq!(item_height(&ep), 100_899);
    a.home.assert_idle();
}

/// Issue 20 item 7: a holder id with a line break forged whole lines in the
/// text log (`event="delivered"` among them). Such a record is refused as
/// one our writes never produce, and no line of the log holds the forgery.
#[test]
fn a_holder_id_with_a_line_break_is_refused_and_forges_no_log_line() {
    let (moto, _key) = setup();
    let ep = moto.endpoint();
    let mut item = record(false, "10", "6000");
    let forged = "x\nINFO event=\"delivered\" pub_key=\"forged\"";
    item.insert("holder".into(), AttributeValue::S(forged.into()));
    forge(&ep, item);
    let text = refused(&ep, "`holder` holds a control character");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("INFO event=\"delivered\"")),
        "{text}"
    );
}

/// Issue 20 item 7: a released record far above this host's state (just
/// under the jump limit) is taken — an honest one looks the same — but the
/// raise is logged with its size and counted, for the alert
/// `SsmCosmovisorSignStateRaisedByLease` (contrib/prometheus).
#[test]
fn a_raise_by_a_record_is_logged_with_its_size_and_counted() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    forge(&ep, record(true, "99999", "6000"));
    let a = Host::new("a");
    let dir = a.home.scratch("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let prom = dir.join("ssm-cosmovisor.prom");
    let mut cmd = a.cmd(&ep);
    cmd.env("SSM_COSMOVISOR_METRICS_FILE", &prom);
    let (mut ta, _) = a.start_holder(&mut cmd, &key);
    let log = ta.log_text();
    let raised = log_events(&log, "sign_state_raised");
    assert_eq!(raised.len(), 1, "{log}");
    assert_eq!(raised[0]["heights"], 99_999, "{log}");
    assert_eq!(a.sign_state(), (99_999, 0, 0));
    assert!(
        wait_for(
            || std::fs::read_to_string(&prom)
                .unwrap_or_default()
                .lines()
                .any(|l| l == "ssm_cosmovisor_sign_state_raises_total 1"),
            T
        ),
        "{}",
        std::fs::read_to_string(&prom).unwrap_or_default()
    );
    assert_eq!(ta.stop(Signal::SIGTERM).code(), Some(0));
}
