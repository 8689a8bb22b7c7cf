//! End to end: the real binary, moto as AWS, the node and cosmovisor stand-ins.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const PARAM: &str = "/validators/test/priv_validator_key";

#[test]
fn main_job_delivers_strips_and_restores_byte_for_byte() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
    cmd.env("USE_SSM_KEY", "true").env("AWS_PARAMETER", PARAM);
    cmd.args(["run", "start", "--home"]).arg(home.path());
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));

    assert!(
        wait_for(|| !home.reports().is_empty(), Duration::from_secs(30)),
        "node never reported; log:\n{}",
        tool.log_text()
    );
    let r = &home.reports()[0];
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["pub_key"], key.pub_b64.as_str());
    assert_eq!(r["address"], key.address.as_str());
    assert!(
        tool.wait_log("\"delivered\"", Duration::from_secs(10))
            || tool.wait_log("key was read from named pipe", Duration::from_secs(10)),
        "{}",
        tool.log_text()
    );

    // While running: stripped key at P, safe key at P.orig.
    let at_p = read_opt(home.key_path()).expect("regular file at key path");
    let v: serde_json::Value = serde_json::from_slice(&at_p).unwrap();
    assert_eq!(v["priv_key"]["value"], "");
    assert_eq!(v["pub_key"]["value"], key.pub_b64.as_str());
    assert_eq!(std::fs::read(home.orig_path()).unwrap(), home.safe_bytes);

    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "log:\n{}", tool.log_text());
    home.assert_idle();
    assert_eq!(std::fs::read(home.key_path()).unwrap(), home.safe_bytes);
    assert!(!home.orig_path().exists());
    let log = tool.log_text();
    for milestone in [
        "retrieved consensus key",
        "original key saved",
        "key FIFO armed",
        "wrote stripped key file",
        "restored original key file",
    ] {
        assert!(
            log.contains(milestone),
            "missing {milestone:?} in log:\n{log}"
        );
    }
    assert_no_secret(&log, &key);
}
