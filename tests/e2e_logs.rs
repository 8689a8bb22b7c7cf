//! Audit logs: `--log-format json` gives one JSON object per line, with a
//! stable `event` field for every milestone, and never any key material.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn json_logs_parse_line_by_line_and_carry_every_milestone_without_key_material() {
    let moto = Moto::start();
    let key = TestKey::secp256k1();
    put_key(&moto.endpoint(), "/audit/key", &key);
    let home = NodeHome::with_options(NodeHomeOptions {
        key_file: None,
        upgrades: 1,
    });
    let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
    cmd.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", "/audit/key")
        .env("NODE_UPGRADE_AFTER_MS", "50")
        .env("STANDIN_INSTANT_UPGRADE", "1")
        .env("NODE_UPGRADES", "1")
        .args(["--log-format", "json", "run", "start"]);
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));
    // Two starts: the first upgrades (re-arm), the second stays up.
    assert!(
        wait_for(|| home.reports().len() >= 2, Duration::from_secs(30)),
        "log:\n{}",
        tool.log_text()
    );
    assert!(tool.wait_log("\"event\":\"delivered\"", Duration::from_secs(10)));
    assert_eq!(tool.stop(Signal::SIGTERM).code(), Some(0));
    home.assert_idle();

    let text = tool.log_text();
    let mut events = BTreeSet::new();
    let mut delivered = 0;
    for line in text.lines() {
        // The stand-ins print plain text to the same stream; ours are JSON.
        if line.starts_with("cosmovisor-standin")
            || line.starts_with("node-standin")
            || line.starts_with("UPGRADE")
        {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if let Some(ev) = v["event"].as_str() {
            events.insert(ev.to_string());
            if ev == "delivered" {
                delivered += 1;
                assert!(
                    v["pid"].is_number() && v["uid"].is_number() && v["exe"].is_string(),
                    "{line}"
                );
            }
            if ev == "fetched" {
                assert_eq!(v["parameter"], "/audit/key");
                assert_eq!(v["version"], 1);
                assert_eq!(v["address"], key.address.as_str());
                assert_eq!(v["pub_key"], key.pub_b64.as_str());
            }
            if ev == "armed" || ev == "re_armed" {
                assert!(v["inode"].is_number(), "{line}");
            }
        }
    }
    for ev in [
        "slot_checked",
        "fetching",
        "fetched",
        "backup",
        "armed",
        "child_started",
        "stripped",
        "delivered",
        "re_armed",
        "signal_forwarded",
        "child_exited",
        "restored",
        "restore_done",
    ] {
        assert!(
            events.contains(ev),
            "milestone {ev} missing; got {events:?}\n{text}"
        );
    }
    assert_eq!(delivered, 2, "{text}");
    assert_no_secret(&text, &key);
}
