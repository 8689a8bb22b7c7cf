//! Failover lease end to end: two "hosts" (two node homes, two
//! instances of the real binary) share one key in moto's SSM and one lease in
//! moto's DynamoDB. At most one of them may deliver the key at any instant,
//! and the one that takes over never signs below its predecessor.

mod support;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::lease::*;
use support::*;

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
    assert!(tb.events("lease_acquired").is_empty());

    // A signs once more after its last renewal; the release carries it too.
    a.sign(1235, 0, 2);
    let st = ta.stop(Signal::SIGTERM);
    let a_gone = unix_us();
    assert_eq!(st.code(), Some(0), "A log:\n{}", ta.log_text());
    a.home.assert_idle();
    assert_eq!(std::fs::read(a.home.key_path()).unwrap(), a.home.safe_bytes);
    let released = ta.events("lease_released");
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
        tb.events("lease_taking_over").is_empty(),
        "B waited for expiry instead of taking the released lease: {}",
        tb.log_text()
    );
    let acquired = tb.events("lease_acquired");
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
    assert_eq!(tb.events("sign_state_raised").len(), 1);
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
    let lost = ta.events("lease_lost");
    assert_eq!(lost.len(), 1, "{}", ta.log_text());
    a.home.assert_idle();
    assert_eq!(std::fs::read(a.home.key_path()).unwrap(), a.home.safe_bytes);
    for ev in ["lease_released", "lease_release_failed"] {
        assert!(
            ta.events(ev).is_empty(),
            "a lost lease must not even be offered back ({ev}): {}",
            ta.log_text()
        );
    }

    let acquired = tb.events("lease_acquired");
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
    let acquired = tb.events("lease_acquired");
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

/// Issue 21 step 1: every way a run can fail after taking the lease and backing up the slot
/// but before its child exists (the fencer does not start, the renewal thread does not
/// start, `PR_SET_CHILD_SUBREAPER` fails, the first arm fails) leaves through one cleanup:
/// the safe key is back at the key path and the lease is released, so a standby takes it at
/// once instead of waiting a full duration. Before, the last three returned with `?`: no
/// restore, no release (and the renewal thread went on renewing until the process ended);
/// the first dropped the lease unreleased.
#[test]
fn every_early_exit_restores_the_slot_and_releases_the_lease() {
    let (moto, key) = setup();
    let ep = moto.endpoint();
    for (point, code) in [
        ("fence-start", 8),
        ("keeper-start", 1),
        ("subreaper", 1),
        ("first-arm", 4),
    ] {
        let a = Host::new("a");
        let mut c = a.cmd(&ep);
        c.env("SSM_COSMOVISOR_FAILPOINT", point);
        let mut t = a.spawn(&mut c);
        let st = t.wait(T);
        let log = t.log_text();
        assert_eq!(st.code(), Some(code), "{point}: {log}");
        assert_eq!(t.events("lease_acquired").len(), 1, "{point}: {log}");
        assert_eq!(
            t.events("lease_released").len(),
            1,
            "{point}: the lease was not released: {log}"
        );
        assert_eq!(lease_item(&ep)["released"], true, "{point}: {log}");
        a.home.assert_idle();
        assert!(
            a.key_reports(&key).is_empty(),
            "{point}: a node got the key"
        );
        println!("early exit at {point}: exit {code}, slot idle, lease released");
    }
}

/// Configuration faults are named, exit with the lease's code or the config
/// code, and leave the key path as it was.
#[test]
fn lease_misconfiguration_is_named_and_changes_nothing() {
    let (moto, _key) = moto_with_key(PARAM);
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
    let holder = ta.events("lease_config")[0]["holder"]
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
    // 12 s: renew every 4 s, attempts time out after 2 s, node kept 8 s. The
    // swallowed renewal costs one attempt timeout, then the retry, the read
    // that adopts it and the write must all land before the deadline: with
    // 6 s that left 0.9 s, and it failed once under CPU load (moto slow).
    cmd.env("AWS_ENDPOINT_URL_DYNAMODB", relay.endpoint())
        .env("SSM_COSMOVISOR_LEASE_DURATION", "12s");
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
    // Well past the node's 8 s: still the holder, node untouched.
    thread::sleep(Duration::from_secs(9));
    assert!(ta.events("lease_lost").is_empty(), "{}", ta.log_text());
    assert!(
        pid_alive(node),
        "the node was stopped; log:\n{}",
        ta.log_text()
    );
    let holder = ta.events("lease_config")[0]["holder"].clone();
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
    let (mut ta, _) = a.start_holder(&mut a.cmd(&ep), &key);
    a.sign_carried(&ep, 900);
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
