//! End to end, the command line: every bad input of issue 3 against the real binary (moto
//! as AWS, the cosmovisor/node stand-ins as the child), `check`, `import`, the standby
//! pass-through, `--help`/`--version`, flag-over-environment precedence and the systemd
//! credential key source.
//!
//! Every refusal asserts four things: the documented exit code, a message naming the fault
//! (parameter, variable, field, path), nothing changed on disk (the node home is byte-for-
//! byte as before, the key path holds the safe key, no `.orig`, neither cosmovisor nor the
//! node was started), and no secret in the output.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

const PARAM: &str = "/validators/test/priv_validator_key";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Exit codes from the table in `src/error.rs` (also in `--help` and the README).
const EXIT_CONFIG: i32 = 2;
const EXIT_SOURCE: i32 = 3;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Everything under the node home: type, mode, size and (for small files) the bytes, so a
/// refused run can be shown to have changed nothing (no `.orig`, no temporary file, no
/// FIFO, no rewritten key).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot(BTreeMap<PathBuf, Entry>);

/// File type, mode, size and (small files) content.
type Entry = (String, u32, u64, Option<Vec<u8>>);

impl Snapshot {
    fn of(home: &NodeHome) -> Snapshot {
        let mut m = BTreeMap::new();
        walk(home.path(), home.path(), &mut m);
        Snapshot(m)
    }
}

fn walk(root: &Path, dir: &Path, m: &mut BTreeMap<PathBuf, Entry>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let p = e.path();
        let md = fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let kind = format!("{ft:?}");
        let bytes = if ft.is_file() && md.len() <= 64 * 1024 {
            Some(fs::read(&p).expect("read"))
        } else if ft.is_symlink() {
            Some(
                fs::read_link(&p)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            None
        };
        m.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            (kind, md.mode(), md.len(), bytes),
        );
        if ft.is_dir() {
            walk(root, &p, m);
        }
    }
}

fn args_file(home: &NodeHome) -> PathBuf {
    home.scratch("standin-args.json")
}

/// `ssm-cosmovisor <flags> run start` for `home` (the cosmovisor stand-in records its
/// arguments in [`args_file`]).
fn run_start(home: &NodeHome, endpoint: Option<&str>, flags: &[&str]) -> Command {
    let mut c = tool_cmd(home, endpoint);
    c.env("STANDIN_ARGS_FILE", args_file(home));
    c.args(flags).args(["run", "start"]);
    c
}

/// `run start` as the active signer for [`PARAM`] on moto.
fn active_run(home: &NodeHome, endpoint: &str, flags: &[&str]) -> Command {
    let mut c = run_start(home, Some(endpoint), flags);
    c.env("USE_SSM_KEY", "true").env("AWS_PARAMETER", PARAM);
    c
}

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, TIMEOUT)
}

/// Asserts a refusal: exit `code`, every needle in the output, nothing changed on disk,
/// neither cosmovisor nor the node started, no secret of `keys` (nor of the safe key) in
/// the output.
fn assert_refused(
    home: &NodeHome,
    before: &Snapshot,
    out: &Output,
    code: i32,
    needles: &[&str],
    keys: &[&TestKey],
) {
    let text = output_text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}\n--- output ---\n{text}",
        out.status
    );
    for n in needles {
        assert!(
            text.contains(n),
            "message does not name {n:?}\n--- output ---\n{text}"
        );
    }
    home.assert_idle();
    assert!(
        Snapshot::of(home) == *before,
        "the node home changed\n--- output ---\n{text}"
    );
    assert!(
        home.reports().is_empty(),
        "the node was started: {:?}\n--- output ---\n{text}",
        home.reports()
    );
    assert!(
        !args_file(home).exists(),
        "cosmovisor was started\n--- output ---\n{text}"
    );
    for k in keys {
        assert_no_secret(&text, k);
    }
    assert_no_secret(&text, &home.safe_key);
}

/// Stores `value` (SecureString) in a fresh moto, runs `run start` as the active signer and
/// asserts the refusal (exit 3) naming the parameter and every needle.
fn refuses_parameter_value(value: &str, needles: &[&str], keys: &[&TestKey]) -> Output {
    let moto = Moto::start();
    ssm_put(&moto.endpoint(), PARAM, value, "SecureString", None);
    refused_run(&moto, needles, keys)
}

/// As [`refuses_parameter_value`] for a value real SSM would not store: when moto stores
/// it, the run must refuse it; when moto refuses it too, its error.
fn refuses_stored_value(value: &str, needles: &[&str], keys: &[&TestKey]) -> Result<(), String> {
    let moto = Moto::start();
    ssm_try_put(&moto.endpoint(), PARAM, value, "SecureString")?;
    refused_run(&moto, needles, keys);
    Ok(())
}

/// An active run against `moto` is refused with exit `EXIT_SOURCE` naming the parameter
/// and every needle, and changes nothing ([`assert_refused`]).
fn refused_run(moto: &Moto, needles: &[&str], keys: &[&TestKey]) -> Output {
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let out = run(&mut active_run(&home, &moto.endpoint(), &[]));
    let mut all = vec![PARAM];
    all.extend_from_slice(needles);
    assert_refused(&home, &before, &out, EXIT_SOURCE, &all, keys);
    out
}

/// `key`'s JSON with `edit` applied.
fn edited(key: &TestKey, edit: impl FnOnce(&mut Value)) -> String {
    let mut v = key.json_value();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

/// A pipe holding `bytes`, closed for writing, as a child's stdin.
fn stdin_with(bytes: &[u8]) -> Stdio {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut w = fs::File::from(w);
    w.write_all(bytes).expect("write pipe");
    drop(w);
    Stdio::from(r)
}

/// Writes a 0600 file in the home's scratch area.
fn scratch_file(home: &NodeHome, name: &str, bytes: &[u8]) -> PathBuf {
    let p = home.scratch(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .expect("create scratch file");
    f.write_all(bytes).expect("write scratch file");
    p
}

fn import_cmd(home: &NodeHome, endpoint: &str, args: &[&str]) -> Command {
    let mut c = tool_cmd(home, Some(endpoint));
    c.env("AWS_PARAMETER", PARAM).arg("import").args(args);
    c
}

fn check_cmd(home: &NodeHome, endpoint: &str) -> Command {
    let mut c = tool_cmd(home, Some(endpoint));
    c.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .arg("check");
    c
}

fn assert_absent(endpoint: &str) {
    match ssm_get_raw(endpoint, PARAM) {
        Err(e) => assert!(e.contains("ParameterNotFound"), "{e}"),
        Ok(p) => panic!(
            "parameter was stored: version {} type {}",
            p.version, p.r#type
        ),
    }
}

fn assert_ok(out: &Output) -> String {
    let text = output_text(out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

// ---------------------------------------------------------------------------------------
// Bad input: the parameter
// ---------------------------------------------------------------------------------------

#[test]
fn parameter_missing() {
    let moto = Moto::start();
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let out = run(&mut active_run(&home, &moto.endpoint(), &[]));
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[PARAM, "not found", TEST_REGION, "AWS_PARAMETER"],
        &[],
    );
}

#[test]
fn aws_region_unset() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let mut cmd = active_run(&home, &moto.endpoint(), &[]);
    cmd.env_remove("AWS_REGION");
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &["no AWS region", "AWS_REGION"],
        &[&key],
    );
}

#[test]
fn access_denied() {
    let (moto, key) = moto_with_key(PARAM);
    let (id, secret) = moto_user_without_ssm_access(&moto.endpoint());
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let mut cmd = run_start(&home, None, &[]);
    cmd.envs(aws_env_with(&moto.endpoint(), &id, &secret))
        .env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM);
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[PARAM, "access denied", "ssm:GetParameter"],
        &[&key],
    );
}

#[test]
fn plain_string_parameter_refused() {
    let key = TestKey::ed25519();
    let moto = Moto::start();
    ssm_put(&moto.endpoint(), PARAM, &key.json, "String", None);
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let out = run(&mut active_run(&home, &moto.endpoint(), &[]));
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[PARAM, "String", "not SecureString", "--allow-plain-string"],
        &[&key],
    );
}

#[test]
fn plain_string_parameter_accepted_with_override_and_warning() {
    let key = TestKey::ed25519();
    let moto = Moto::start();
    ssm_put(&moto.endpoint(), PARAM, &key.json, "String", None);
    let home = NodeHome::new();
    let mut cmd = active_run(&home, &moto.endpoint(), &["--allow-plain-string"]);
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));
    assert!(
        wait_for(|| !home.reports().is_empty(), Duration::from_secs(60)),
        "node never reported; log:\n{}",
        tool.log_text()
    );
    let r = &home.reports()[0];
    assert_eq!(r["outcome"], "ok", "{r}\nlog:\n{}", tool.log_text());
    assert_eq!(r["pub_key"], key.pub_b64.as_str(), "{r}");
    let st = tool.stop(Signal::SIGTERM);
    let log = tool.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    home.assert_idle();
    assert!(
        log.contains("WARN") && log.contains("not a SecureString") && log.contains(PARAM),
        "no warning naming the parameter:\n{log}"
    );
    assert_no_secret(&log, &key);
}

#[test]
fn value_not_json() {
    refuses_parameter_value(
        "this is not a key, just some text",
        &["not a valid JSON key document", "line 1"],
        &[],
    );
}

#[test]
fn json_without_priv_key() {
    let key = TestKey::ed25519();
    let v = edited(&key, |v| {
        v.as_object_mut().unwrap().remove("priv_key");
    });
    refuses_parameter_value(&v, &["`priv_key` is missing"], &[&key]);
}

#[test]
fn unknown_key_type() {
    let key = TestKey::ed25519();
    let v = edited(&key, |v| {
        v["priv_key"]["type"] = "tendermint/PrivKeySr25519".into()
    });
    refuses_parameter_value(
        &v,
        &[
            "unknown key type",
            "tendermint/PrivKeySr25519",
            "priv_key.type",
        ],
        &[&key],
    );
}

#[test]
fn base64_invalid() {
    let key = TestKey::ed25519();
    // The real private value with one character replaced: the message must not echo it.
    let mut bad = key.priv_b64.clone();
    bad.replace_range(10..11, "*");
    let v = edited(&key, |v| v["priv_key"]["value"] = bad.clone().into());
    let out = refuses_parameter_value(&v, &["priv_key.value", "not valid base64"], &[&key]);
    let text = output_text(&out);
    assert!(
        !text.contains(&bad[..20]),
        "message echoes the value:\n{text}"
    );
}

#[test]
fn wrong_private_key_length() {
    let key = TestKey::ed25519();
    // The 32-byte seed alone, without the public half CometBFT stores after it.
    let v = edited(&key, |v| {
        v["priv_key"]["value"] = B64.encode(&key.seed).into()
    });
    refuses_parameter_value(&v, &["priv_key.value", "32 bytes", "64"], &[&key]);
}

/// A key whose public key (and address) are another key's of the same type: refused,
/// and neither private value shown.
fn pub_key_of_another_key_is_refused(generate: fn() -> TestKey) {
    let (key, other) = (generate(), generate());
    let v = edited(&key, |v| {
        v["pub_key"]["value"] = other.pub_b64.clone().into();
        v["address"] = other.address.clone().into();
    });
    refuses_parameter_value(
        &v,
        &["pub_key.value is not the public key of priv_key"],
        &[&key, &other],
    );
}

#[test]
fn pub_key_not_derived_from_priv_key() {
    pub_key_of_another_key_is_refused(TestKey::ed25519);
}

#[test]
fn address_not_derived_from_pub_key() {
    let key = TestKey::ed25519();
    let other = TestKey::ed25519();
    let v = edited(&key, |v| v["address"] = other.address.clone().into());
    refuses_parameter_value(
        &v,
        &[
            "address",
            &other.address,
            "not derived from pub_key",
            &key.address,
        ],
        &[&key],
    );
}

#[test]
fn secp256k1_pub_key_not_derived_from_priv_key() {
    pub_key_of_another_key_is_refused(TestKey::secp256k1);
}

#[test]
fn value_over_8_kib() {
    let key = TestKey::ed25519();
    // A valid key padded with whitespace past SSM's 8 KiB (advanced tier) limit.
    let mut big = key.json.clone();
    big.push_str(&" ".repeat(9000 - big.len()));
    // When moto stores it (real SSM would not), the parser must refuse it.
    let stored = refuses_stored_value(
        &big,
        &["9000 bytes", "larger than the 8192-byte maximum"],
        &[&key],
    );
    if let Err(e) = stored {
        eprintln!("moto refuses a 9000-byte value ({e}); tested through import only");
    }
    // The same through `import -f`: refused before any AWS call.
    import_file_is_refused(
        "big.json",
        big.as_bytes(),
        &["larger than the 8192-byte maximum"],
        &[&key],
    );
}

#[test]
fn value_with_nul_bytes() {
    let key = TestKey::ed25519();
    let mut v = key.json.clone();
    v.insert(1, '\0');
    if let Err(e) = refuses_stored_value(&v, &["NUL bytes", "offset 1"], &[&key]) {
        eprintln!("moto refuses a value with NUL ({e}); tested through import only");
    }
    import_file_is_refused("nul.json", v.as_bytes(), &["NUL bytes"], &[&key]);
}

#[test]
fn empty_value() {
    if let Err(e) = refuses_stored_value("", &["empty"], &[]) {
        // As real SSM: a value has at least one character.
        assert!(
            e.contains("ValidationException") || e.contains("length"),
            "{e}"
        );
        eprintln!("moto refuses an empty value; testing a blank one and an empty import");
    }
    // What SSM can hold: whitespace only.
    refuses_parameter_value(" \n", &["the value is empty"], &[]);
    // An empty file through import.
    import_file_is_refused("empty.json", b"", &["the value is empty"], &[]);
}

/// `import -f` of a file holding `bytes` is refused naming the file and the
/// fault, leaves the node home as it was, and stores nothing (checked on a
/// fresh emulator).
fn import_file_is_refused(file: &str, bytes: &[u8], fault: &[&str], secrets: &[&TestKey]) {
    let moto = Moto::start();
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let f = scratch_file(&home, file, bytes);
    let out = run(&mut import_cmd(
        &home,
        &moto.endpoint(),
        &["-f", f.to_str().unwrap()],
    ));
    let mut needles = vec![f.to_str().unwrap()];
    needles.extend_from_slice(fault);
    needles.push("nothing stored");
    assert_refused(&home, &before, &out, EXIT_SOURCE, &needles, secrets);
    assert_absent(&moto.endpoint());
}

#[test]
fn expected_address_not_matching() {
    let key = TestKey::ed25519();
    let other = TestKey::ed25519();
    let moto = Moto::start();
    put_key(&moto.endpoint(), PARAM, &key);
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let out = run(&mut active_run(
        &home,
        &moto.endpoint(),
        &["--expected-address", &other.address.to_ascii_lowercase()],
    ));
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[PARAM, &key.address, &other.address, "--expected-address"],
        &[&key],
    );

    // The environment variable does the same, and a malformed address is a config error.
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let mut cmd = active_run(&home, &moto.endpoint(), &[]);
    cmd.env("SSM_COSMOVISOR_EXPECTED_ADDRESS", "ABCDEF");
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_CONFIG,
        &["SSM_COSMOVISOR_EXPECTED_ADDRESS", "ABCDEF", "40 hex digits"],
        &[&key],
    );

    // The matching address is accepted (check, so nothing runs).
    let out = run(check_cmd(&home, &moto.endpoint()).args(["--expected-address", &key.address]));
    let text = assert_ok(&out);
    assert_no_secret(&text, &key);
}

// ---------------------------------------------------------------------------------------
// Bad input: the environment and the node home
// ---------------------------------------------------------------------------------------

/// `run start` (AWS unreachable) with `edit` applied is refused as a configuration error
/// naming every needle, and changes nothing ([`assert_refused`]).
fn config_refused(home: &NodeHome, edit: impl FnOnce(&mut Command), needles: &[&str]) {
    let before = Snapshot::of(home);
    let mut cmd = run_start(home, Some("http://127.0.0.1:1"), &[]);
    edit(&mut cmd);
    let out = run(&mut cmd);
    assert_refused(home, &before, &out, EXIT_CONFIG, needles, &[]);
}

#[test]
fn aws_parameter_unset_while_active() {
    config_refused(
        &NodeHome::new(),
        |c| {
            c.env("USE_SSM_KEY", "true");
        },
        &["AWS_PARAMETER is not set", "USE_SSM_KEY=true"],
    );
}

#[test]
fn use_ssm_key_typo() {
    let home = NodeHome::new();
    config_refused(
        &home,
        |c| {
            c.env("USE_SSM_KEY", "treu").env("AWS_PARAMETER", PARAM);
        },
        &["USE_SSM_KEY", "\"treu\"", "not a boolean"],
    );
    // The flag is as strict, and names itself.
    let before = Snapshot::of(&home);
    let out = run(&mut run_start(&home, None, &["--use-ssm-key", "ja"]));
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_CONFIG,
        &["--use-ssm-key", "\"ja\"", "not a boolean"],
        &[],
    );
}

#[test]
fn daemon_home_unset() {
    config_refused(
        &NodeHome::new(),
        |c| {
            c.env_remove("DAEMON_HOME")
                .env("USE_SSM_KEY", "true")
                .env("AWS_PARAMETER", PARAM);
        },
        &["DAEMON_HOME is not set", "--daemon-home"],
    );
}

#[test]
fn daemon_home_missing_directory() {
    let home = NodeHome::new();
    let missing = home.scratch("no-such-home");
    config_refused(
        &home,
        |c| {
            c.env("DAEMON_HOME", &missing)
                .env("USE_SSM_KEY", "true")
                .env("AWS_PARAMETER", PARAM);
        },
        &["DAEMON_HOME", missing.to_str().unwrap(), "not a directory"],
    );
    assert!(!missing.exists(), "the missing home was created");
}

/// The node takes the last of several `--home`s (cobra/pflag), so with `--home A --home B`
/// the tool guarded A's key slot while the node read B's. Refused in every spelling, naming
/// both homes, before either slot is touched. Before: accepted, A's slot guarded.
#[test]
fn node_home_given_twice_is_refused() {
    let (a, b) = (NodeHome::new(), NodeHome::new());
    let (pa, pb) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    let (ea, eb) = (format!("--home={pa}"), format!("--home={pb}"));
    for homes in [
        vec!["--home", pa, "--home", pb],
        vec![ea.as_str(), "--home", pb],
        vec!["--home", pa, eb.as_str()],
    ] {
        let before_b = Snapshot::of(&b);
        config_refused(
            &a,
            |c| {
                c.env("USE_SSM_KEY", "true")
                    .env("AWS_PARAMETER", PARAM)
                    .args(&homes);
            },
            &["--home 2 times", pa, pb, "give --home once"],
        );
        b.assert_idle();
        assert!(Snapshot::of(&b) == before_b, "{homes:?}: B's home changed");
    }
}

#[test]
fn config_toml_unparsable() {
    let home = NodeHome::new();
    let cfg = home.path().join("config/config.toml");
    fs::write(
        &cfg,
        "moniker = \"standin\"\npriv_validator_key_file = [unterminated\n",
    )
    .unwrap();
    for active in ["true", "false"] {
        config_refused(
            &home,
            |c| {
                c.env("USE_SSM_KEY", active).env("AWS_PARAMETER", PARAM);
            },
            &["cannot parse", cfg.to_str().unwrap(), "line 2"],
        );
    }
}

/// A FIFO as the node's `config.toml`, with the tool running as the node user (the
/// unprivileged unit): `run` and `restore` refuse it at once as a configuration error naming
/// the file. Before: both opened it and waited for a writer (still waiting after 10 s).
#[test]
fn config_toml_a_fifo_is_refused_without_blocking() {
    let home = NodeHome::new();
    let cfg = home.path().join("config/config.toml");
    fs::remove_file(&cfg).unwrap();
    nix::unistd::mkfifo(
        &cfg,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    if is_root() {
        give_home_to_nobody(&home);
    }
    let before = Snapshot::of(&home);
    let restore = {
        let mut c = tool_cmd(&home, None);
        c.arg("restore");
        c
    };
    let mut run_cmd = run_start(&home, Some("http://127.0.0.1:1"), &[]);
    run_cmd
        .env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM);
    for cmd in [run_cmd, restore] {
        let mut cmd = if is_root() {
            let (uid, gid) = nobody();
            as_user_in_cgroup(&cmd, None, uid, gid)
        } else {
            cmd
        };
        let t0 = Instant::now();
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        println!("MEASURE refused after {:?}", t0.elapsed());
        assert_refused(
            &home,
            &before,
            &out,
            EXIT_CONFIG,
            &[cfg.to_str().unwrap(), "is a FIFO, not a regular file"],
            &[],
        );
    }
    assert!(is_fifo(&cfg));
}

// ---------------------------------------------------------------------------------------
// Must show 2: check
// ---------------------------------------------------------------------------------------

/// `check` reads the node's `[consensus] double_sign_check_height`: on a signer 0 (or unset,
/// CometBFT's default) and 1 (a look-back over 0 blocks unless the node's CometBFT is known
/// to have the fix, which the next test covers) are warnings that say what to set; the JSON
/// log carries the value as a field; a standby only notes it.
#[test]
fn check_warns_about_a_double_sign_check_that_does_nothing() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let config = home.home.join("config/config.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    for (setting, want) in [
        ("", "WARN  double_sign_check_height: not set (CometBFT's default: 0): 0:"),
        ("0", "WARN  double_sign_check_height: 0: 0: the node never looks"),
        ("1", "WARN  double_sign_check_height: 1: 1 looks back over 0 blocks"),
        ("10", "PASS  double_sign_check_height: 10: the node will not join consensus while its key signed one of the last 9 blocks"),
        ("\"ten\"", "WARN  double_sign_check_height: cannot read it from"),
    ] {
        let text = if setting.is_empty() {
            base.clone()
        } else {
            format!("{base}\n[consensus]\ndouble_sign_check_height = {setting}\n")
        };
        std::fs::write(&config, text).unwrap();
        let out = run(&mut check_cmd(&home, &moto.endpoint()));
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{setting}: {text}");
        assert!(text.contains(want), "{setting}: {text}");
        if setting == "0" || setting == "1" {
            assert!(text.contains("set [consensus] double_sign_check_height = 10"), "{text}");
        }
    }
    // The JSON log carries it as a field.
    std::fs::write(
        &config,
        format!("{base}\n[consensus]\ndouble_sign_check_height = 1\n"),
    )
    .unwrap();
    let mut cmd = check_cmd(&home, &moto.endpoint());
    cmd.env("SSM_COSMOVISOR_LOG_FORMAT", "json");
    let out = run(&mut cmd);
    let field = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "double_sign_check_height")
        .unwrap_or_else(|| panic!("no double_sign_check_height event: {}", output_text(&out)));
    assert_eq!(field["double_sign_check_height"], 1, "{field}");
    assert_eq!(field["level"], "WARN", "{field}");
    // A standby only notes it.
    let mut cmd = check_cmd(&home, &moto.endpoint());
    cmd.env("USE_SSM_KEY", "false");
    let text = output_text(&run(&mut cmd));
    assert!(
        text.contains("INFO  double_sign_check_height: 1 (1 looks back over 0 blocks"),
        "{text}"
    );
}

/// Hands the node home to `nobody`, the node user of the tests that need one. The stand-in
/// becomes a copy: `chown` of the hard link would change target/'s own binary.
fn give_home_to_nobody(home: &NodeHome) {
    let bin = home.path().join("cosmovisor/genesis/bin").join(DAEMON_NAME);
    fs::remove_file(&bin).unwrap();
    fs::copy(node_standin_bin(), &bin).unwrap();
    let (uid, gid) = nobody();
    chown_tree(home.root.path(), uid, gid);
}

/// `check` as the node user: root's `check` runs the node binary only as a configured node
/// user, so as root this runs the whole tool as `nobody` (the unprivileged unit's layout).
fn check_as_node_user(home: &NodeHome, moto: &Moto, env: &[(&str, &str)]) -> Output {
    let mut cmd = check_cmd(home, &moto.endpoint());
    cmd.envs(env.iter().copied());
    if is_root() {
        let (uid, gid) = nobody();
        cmd = as_user_in_cgroup(&cmd, None, uid, gid);
    }
    run(&mut cmd)
}

/// The `double_sign_check_height` line of `check`'s output.
fn double_sign_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains(" double_sign_check_height: "))
        .unwrap_or_else(|| panic!("no double_sign_check_height line:\n{text}"))
}

/// What a setting covers depends on the node's CometBFT (cometbft#5668: N − 1 blocks before
/// v0.38.24, v0.39.4 and v0.40.0, and still on v1.x/v2.x; N from those on): `check` reads
/// the version from `<node> version --long` (the stand-in prints the SDK's format) and says
/// which it read, from where, and what N covers there; without a version in the output it
/// says so and gives both cases. The JSON log carries the version and the look-back.
#[test]
fn check_double_sign_advice_follows_the_nodes_cometbft_version() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    if is_root() {
        give_home_to_nobody(&home);
    }
    let config = home.path().join("config/config.toml");
    let base = fs::read_to_string(&config).unwrap();
    let set = |n: u32| {
        fs::write(
            &config,
            format!("{base}\n[consensus]\ndouble_sign_check_height = {n}\n"),
        )
        .unwrap()
    };
    let bin = home.path().join("cosmovisor/current/bin").join(DAEMON_NAME);
    let from = format!(", from `{} version --long`: ", bin.display());
    let old = "a setting of N looks back over N - 1 blocks (only";
    let fixed = "a setting of N looks back over N blocks (cometbft#5668";
    let warn_1 = "WARN  double_sign_check_height: 1: 1 looks back over 0 blocks: no check at all";
    let pass_1 = "PASS  double_sign_check_height: 1: the node will not join consensus while its key signed the last block";
    let pass_9 = "PASS  double_sign_check_height: 10: the node will not join consensus while its key signed one of the last 9 blocks";
    let pass_10 = "PASS  double_sign_check_height: 10: the node will not join consensus while its key signed one of the last 10 blocks";
    for (version, n, want, rule, advice) in [
        ("v0.38.17", 1, warn_1, old, Some("= 10 (2 or more)")),
        ("v0.38.17", 10, pass_9, old, None),
        ("v1.0.1", 1, warn_1, old, Some("= 10 (2 or more)")),
        ("v1.0.1", 10, pass_9, old, None),
        ("v0.38.24", 1, pass_1, fixed, None),
        ("v0.38.25", 1, pass_1, fixed, None),
        ("v0.38.25", 10, pass_10, fixed, None),
        ("v0.39.4", 1, pass_1, fixed, None),
        ("v0.39.4", 10, pass_10, fixed, None),
        (
            "v0.39.4",
            0,
            "WARN  double_sign_check_height: 0: 0: the node never looks",
            fixed,
            Some("= 10 (1 or more)"),
        ),
    ] {
        set(n);
        let out = check_as_node_user(&home, &moto, &[("NODE_COMETBFT_VERSION", version)]);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{version} {n}: {text}");
        let line = double_sign_line(&text);
        assert!(line.starts_with(want), "{version} {n}: {line}");
        let said = format!("(CometBFT {version}{from}{rule}");
        assert!(
            line.contains(&said),
            "{version} {n}: {said:?} not in {line}"
        );
        match advice {
            Some(a) => assert!(line.contains(a), "{version} {n}: {a:?} not in {line}"),
            None => assert!(!line.contains("set [consensus]"), "{line}"),
        }
    }
    // No version in the output: said, and both cases given.
    let unknown = format!(
        "(CometBFT version unknown (no CometBFT or Tendermint version in the output of `{} version --long` (exit status: 0)): a setting of N looks back over N - 1 blocks on CometBFT v0.37 and older",
        bin.display()
    );
    for (n, want) in [
        (1, "WARN  double_sign_check_height: 1: 1 looks back over 0 blocks (no check at all) unless the node's CometBFT has cometbft#5668's fix"),
        (10, "PASS  double_sign_check_height: 10: the node will not join consensus while its key signed one of the last 9 blocks, or 10 with cometbft#5668's fix (CometBFT version unknown"),
    ] {
        set(n);
        let text = output_text(&check_as_node_user(&home, &moto, &[]));
        let line = double_sign_line(&text);
        assert!(line.starts_with(want), "unknown {n}: {line}");
        assert!(line.contains(&unknown), "unknown {n}: {unknown:?} not in {line}");
    }
    // The JSON log: the version read and the blocks covered (none when unknown).
    set(1);
    for (version, level, lookback) in [
        (Some("v0.39.4"), "INFO", Value::from(1)),
        (Some("v0.38.17"), "WARN", Value::from(0)),
        (None, "WARN", Value::Null),
    ] {
        let mut env = vec![("SSM_COSMOVISOR_LOG_FORMAT", "json")];
        env.extend(version.map(|v| ("NODE_COMETBFT_VERSION", v)));
        let out = check_as_node_user(&home, &moto, &env);
        let field = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "double_sign_check_height")
            .unwrap_or_else(|| panic!("no double_sign_check_height event: {}", output_text(&out)));
        assert_eq!(field["level"], level, "{field}");
        assert_eq!(field["double_sign_check_height"], 1, "{field}");
        assert_eq!(
            field["cometbft_version"],
            version.unwrap_or("unknown"),
            "{field}"
        );
        assert_eq!(field["lookback_blocks"], lookback, "{field}");
    }
}

/// A node binary whose `version --long` never returns costs `check` its 5 s timeout, no
/// more: the version is then unknown (said, with the timeout), and the binary is killed. As
/// root (split trust, a node user set) it runs as the node user; as root without one it is
/// not run at all.
#[test]
fn check_bounds_a_hanging_node_version_and_never_runs_it_as_root() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let hang = [
        ("NODE_VERSION_HANG", "1"),
        ("NODE_COMETBFT_VERSION", "v0.39.4"),
    ];
    let mut cmd = check_cmd(&home, &moto.endpoint());
    cmd.envs(hang);
    if is_root() {
        give_home_to_nobody(&home);
        cmd.env("SSM_COSMOVISOR_NODE_USER", "nobody")
            .env("SSM_COSMOVISOR_KEY_FILE", home.key_path());
    }
    let t0 = std::time::Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The hanging `version --long` (its command line names the home): as the node user.
    let mut hung = Vec::new();
    let seen = wait_for(
        || {
            hung = pids_mentioning(home.path());
            !hung.is_empty()
        },
        Duration::from_secs(20),
    );
    if !seen {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the node binary was never run:
{}",
            output_text(&out)
        );
    }
    let (uid, _) = if is_root() {
        nobody()
    } else {
        (nix::unistd::geteuid().as_raw(), 0)
    };
    for pid in &hung {
        let st = status_fields(*pid);
        assert!(
            st["Uid"].split_whitespace().all(|u| u == uid.to_string()),
            "{st:?}"
        );
    }
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let text = output_text(&out);
    assert!(
        took < Duration::from_secs(20),
        "check took {took:?}: {text}"
    );
    let line = double_sign_line(&text);
    assert!(
        line.contains("(CometBFT version unknown (`")
            && line.contains("version --long` did not finish within 5 s (killed))"),
        "{line}"
    );
    assert!(
        pids_mentioning(home.path()).is_empty(),
        "the node binary outlived check"
    );
    if !is_root() {
        return;
    }
    // Root without a node user: the node binary is not run.
    let mut cmd = check_cmd(&home, &moto.endpoint());
    cmd.envs(hang);
    let t0 = std::time::Instant::now();
    let text = output_text(&run(&mut cmd));
    assert!(t0.elapsed() < Duration::from_secs(5), "{text}");
    let line = double_sign_line(&text);
    assert!(
        line.contains("(CometBFT version unknown (not run: we are root and no node user (SSM_COSMOVISOR_NODE_USER) is set"),
        "{line}"
    );
}

#[test]
fn check_prints_identity_and_version_never_the_secret() {
    let moto = Moto::start();
    let key = TestKey::ed25519();
    put_key(&moto.endpoint(), PARAM, &TestKey::ed25519());
    let version = put_key(&moto.endpoint(), PARAM, &key);
    assert_eq!(version, 2);
    let home = NodeHome::new();
    let before = Snapshot::of(&home);

    let variants: [&[(&str, &str)]; 3] = [
        &[],
        &[("SSM_COSMOVISOR_LOG_FORMAT", "json")],
        // Everything the SDK and its HTTP stack can log.
        &[("SSM_COSMOVISOR_LOG", "trace")],
    ];
    for env in variants {
        let mut cmd = check_cmd(&home, &moto.endpoint());
        cmd.envs(env.iter().copied());
        let out = run(&mut cmd);
        let text = output_text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check failed ({env:?}):\n{text}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for needle in [
            format!("address: {}", key.address),
            format!("pub_key: {}", key.pub_b64),
            format!("{PARAM} version {version} type SecureString"),
            "check passed".to_string(),
        ] {
            assert!(
                stdout.contains(&needle),
                "missing {needle:?} ({env:?}):\n{text}"
            );
        }
        assert_no_secret(&text, &key);
        assert_no_secret(&text, &home.safe_key);
        if env == [("SSM_COSMOVISOR_LOG_FORMAT", "json")] {
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                if !line.trim().is_empty() {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                }
            }
        }
    }
    // check changes nothing.
    home.assert_idle();
    assert!(Snapshot::of(&home) == before, "check changed the node home");
    assert!(home.reports().is_empty());
}

/// Issue 21: `check` reads the sign state where `config.toml` puts it
/// (`priv_validator_state_file`), as the lease does. Before, it looked at
/// `data/priv_validator_state.json` whatever the node used: here it warned that the file was
/// missing while the node's real one was elsewhere.
#[test]
fn check_reads_the_sign_state_where_config_toml_puts_it() {
    let moto = Moto::start();
    put_key(&moto.endpoint(), PARAM, &TestKey::ed25519());
    let home = NodeHome::new();
    let config = home.path().join("config/config.toml");
    let text = fs::read_to_string(&config).unwrap().replace(
        "priv_validator_state_file = \"data/priv_validator_state.json\"",
        "priv_validator_state_file = \"state/signed.json\"",
    );
    fs::write(&config, text).unwrap();
    fs::create_dir(home.path().join("state")).unwrap();
    fs::rename(
        home.path().join("data/priv_validator_state.json"),
        home.path().join("state/signed.json"),
    )
    .unwrap();
    let out = run(&mut check_cmd(&home, &moto.endpoint()));
    let text = output_text(&out);
    let line = text
        .lines()
        .find(|l| l.contains("sign state"))
        .unwrap_or_else(|| panic!("no sign state line:\n{text}"));
    assert!(
        line.starts_with("PASS") && line.contains("state/signed.json"),
        "{line}\n{text}"
    );
    fs::remove_file(home.path().join("state/signed.json")).unwrap();
    let text = output_text(&run(&mut check_cmd(&home, &moto.endpoint())));
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("state/signed.json missing")),
        "{text}"
    );
}

#[test]
fn check_fails_on_bad_parameter() {
    let moto = Moto::start();
    let home = NodeHome::new();
    let out = run(&mut check_cmd(&home, &moto.endpoint()));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL") && text.contains(PARAM) && text.contains("not found"),
        "{text}"
    );
    home.assert_idle();
}

// ---------------------------------------------------------------------------------------
// Must show 3: import
// ---------------------------------------------------------------------------------------

#[test]
fn import_then_check_round_trip_and_no_overwrite() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    let f = scratch_file(&home, "key.json", key.json.as_bytes());

    let out = run(&mut import_cmd(&home, &ep, &["-f", f.to_str().unwrap()]));
    let text = assert_ok(&out);
    assert!(
        text.contains(&format!("stored {PARAM} version 1")),
        "{text}"
    );
    assert!(
        text.contains(&key.address) && text.contains(&key.pub_b64),
        "{text}"
    );
    assert_no_secret(&text, &key);
    let stored = ssm_get_raw(&ep, PARAM).unwrap();
    assert_eq!(stored.r#type, "SecureString");
    assert_eq!(stored.version, 1);
    let sv: Value = serde_json::from_str(&stored.value).unwrap();
    assert_eq!(sv, key.json_value(), "stored value is not the key");

    let out = run(&mut check_cmd(&home, &ep));
    let text = assert_ok(&out);
    assert!(
        text.contains(&format!("address: {}", key.address)),
        "{text}"
    );
    assert!(text.contains(&format!("{PARAM} version 1")), "{text}");
    assert_no_secret(&text, &key);

    // A second import without --overwrite is refused and changes nothing.
    let other = TestKey::ed25519();
    let g = scratch_file(&home, "other.json", other.json.as_bytes());
    let out = run(&mut import_cmd(&home, &ep, &["-f", g.to_str().unwrap()]));
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(EXIT_SOURCE), "{text}");
    assert!(
        text.contains(PARAM) && text.contains("already exists") && text.contains("--overwrite"),
        "{text}"
    );
    assert_no_secret(&text, &other);
    let now = ssm_get_raw(&ep, PARAM).unwrap();
    assert_eq!((now.version, now.value), (1, stored.value.clone()));

    // With --overwrite it replaces it, and check shows the new key.
    let out = run(&mut import_cmd(
        &home,
        &ep,
        &["-f", g.to_str().unwrap(), "--overwrite"],
    ));
    let text = assert_ok(&out);
    assert!(
        text.contains(&format!("stored {PARAM} version 2")),
        "{text}"
    );
    let out = run(&mut check_cmd(&home, &ep));
    let text = assert_ok(&out);
    assert!(
        text.contains(&format!("address: {}", other.address)),
        "{text}"
    );
    assert_no_secret(&text, &other);
    home.assert_idle();
}

#[test]
fn import_from_stdin() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    // No -f: standard input.
    let mut cmd = import_cmd(&home, &ep, &[]);
    cmd.stdin(stdin_with(key.json.as_bytes()));
    let text = assert_ok(&run(&mut cmd));
    assert!(text.contains(&key.address), "{text}");
    assert_no_secret(&text, &key);
    assert_eq!(
        serde_json::from_str::<Value>(&ssm_get_raw(&ep, PARAM).unwrap().value).unwrap(),
        key.json_value()
    );
    // `-f -`: standard input too.
    let other = TestKey::secp256k1();
    let mut cmd = import_cmd(&home, &ep, &["-f", "-", "--overwrite"]);
    cmd.stdin(stdin_with(other.json.as_bytes()));
    let text = assert_ok(&run(&mut cmd));
    assert!(
        text.contains(&other.address) && text.contains("version 2"),
        "{text}"
    );
    assert_no_secret(&text, &other);
    let text = assert_ok(&run(&mut check_cmd(&home, &ep)));
    assert!(
        text.contains(&format!("address: {}", other.address)),
        "{text}"
    );
    // An invalid document on stdin stores nothing.
    let mut cmd = import_cmd(&home, &ep, &["--overwrite"]);
    cmd.stdin(stdin_with(b"{\"address\": \"00\"}"));
    let out = run(&mut cmd);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(EXIT_SOURCE), "{text}");
    assert!(
        text.contains("standard input") && text.contains("nothing stored"),
        "{text}"
    );
    assert_eq!(ssm_get_raw(&ep, PARAM).unwrap().version, 2);
}

#[test]
fn import_invalid_key_stores_nothing() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    let other = TestKey::ed25519();
    let cases: Vec<(&str, String, &str)> = vec![
        ("not-json", "hello".into(), "not a valid JSON key document"),
        (
            "no-priv",
            edited(&key, |v| {
                v.as_object_mut().unwrap().remove("priv_key");
            }),
            "`priv_key` is missing",
        ),
        (
            "pub-mismatch",
            edited(&key, |v| {
                v["pub_key"]["value"] = other.pub_b64.clone().into()
            }),
            "pub_key.value is not the public key",
        ),
        (
            "addr-mismatch",
            edited(&key, |v| v["address"] = other.address.clone().into()),
            "not derived from pub_key",
        ),
        ("stripped", key.stripped_json(), "stripped"),
    ];
    for (name, body, needle) in &cases {
        let f = scratch_file(&home, &format!("{name}.json"), body.as_bytes());
        let out = run(&mut import_cmd(&home, &ep, &["-f", f.to_str().unwrap()]));
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(EXIT_SOURCE), "{name}: {text}");
        for n in [f.to_str().unwrap(), "nothing stored", needle] {
            assert!(text.contains(n), "{name}: missing {n:?} in {text}");
        }
        assert_no_secret(&text, &key);
        assert_absent(&ep);
    }
    // A missing file is named.
    let out = run(&mut import_cmd(
        &home,
        &ep,
        &["-f", "/nonexistent/key.json"],
    ));
    let text = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("/nonexistent/key.json"), "{text}");
    assert_absent(&ep);

    // Over an existing parameter, even with --overwrite, an invalid key changes nothing.
    put_key(&ep, PARAM, &key);
    let f = home.scratch("no-priv.json");
    let out = run(&mut import_cmd(
        &home,
        &ep,
        &["-f", f.to_str().unwrap(), "--overwrite"],
    ));
    assert_eq!(
        out.status.code(),
        Some(EXIT_SOURCE),
        "{}",
        output_text(&out)
    );
    let p = ssm_get_raw(&ep, PARAM).unwrap();
    assert_eq!((p.version, p.value.as_str()), (1, key.json.as_str()));
    home.assert_idle();
}

#[test]
fn import_without_parameter_name() {
    let moto = Moto::start();
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    let f = scratch_file(&home, "key.json", key.json.as_bytes());
    let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
    cmd.args(["import", "-f", f.to_str().unwrap()]);
    let out = run(&mut cmd);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{text}");
    assert!(
        text.contains("AWS_PARAMETER") && text.contains("--parameter"),
        "{text}"
    );
    assert_no_secret(&text, &key);
    // --parameter names it instead.
    let mut cmd = tool_cmd(&home, Some(&moto.endpoint()));
    cmd.args([
        "--parameter",
        "/other/name",
        "import",
        "-f",
        f.to_str().unwrap(),
    ]);
    let text = assert_ok(&run(&mut cmd));
    assert!(text.contains("stored /other/name version 1"), "{text}");
}

#[test]
fn import_and_check_secp256k1() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let home = NodeHome::new();
    let key = TestKey::secp256k1();
    let f = scratch_file(&home, "secp.json", key.json.as_bytes());
    let text = assert_ok(&run(&mut import_cmd(
        &home,
        &ep,
        &["-f", f.to_str().unwrap()],
    )));
    assert!(
        text.contains("secp256k1") && text.contains(&key.address),
        "{text}"
    );
    assert_no_secret(&text, &key);
    let text = assert_ok(&run(&mut check_cmd(&home, &ep)));
    assert!(
        text.contains(&format!("address: {}", key.address)),
        "{text}"
    );
    assert!(
        text.contains(&format!("pub_key: {}", key.pub_b64)),
        "{text}"
    );
    assert!(text.contains("valid secp256k1 key"), "{text}");
    assert_no_secret(&text, &key);
}

#[test]
fn import_with_kms_key_id() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let kms = kms_create_key(&ep);
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    let f = scratch_file(&home, "key.json", key.json.as_bytes());
    assert_ok(&run(&mut import_cmd(
        &home,
        &ep,
        &["-f", f.to_str().unwrap(), "--kms-key-id", &kms],
    )));
    let text = assert_ok(&run(&mut check_cmd(&home, &ep)));
    assert!(text.contains(&format!("KMS key: {kms}")), "{text}");
    assert!(text.contains(&key.address), "{text}");
    assert_no_secret(&text, &key);
}

// ---------------------------------------------------------------------------------------
// Must show 5: standby is plain cosmovisor
// ---------------------------------------------------------------------------------------

/// `run start --x y` as a standby: the arguments reach cosmovisor untouched, the node
/// reads the safe key, and it all works with AWS unreachable.
fn standby_run(
    home: &NodeHome,
    endpoint: &str,
    use_ssm_key: Option<&str>,
    flags: &[&str],
) -> Output {
    let mut cmd = tool_cmd(home, None);
    cmd.envs(aws_env(endpoint))
        .env("AWS_PARAMETER", PARAM)
        .env("STANDIN_ARGS_FILE", args_file(home))
        .env("NODE_EXIT_AFTER_MS", "100")
        .args(flags)
        .args(["run", "start", "--x", "y"]);
    if let Some(v) = use_ssm_key {
        cmd.env("USE_SSM_KEY", v);
    }
    let out = run(&mut cmd);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let args: Vec<String> =
        serde_json::from_slice(&fs::read(args_file(home)).expect("cosmovisor was not started"))
            .unwrap();
    assert_eq!(args, ["run", "start", "--x", "y"]);
    let reports = home.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["outcome"], "ok", "{}", reports[0]);
    assert_eq!(reports[0]["pub_key"], home.safe_key.pub_b64.as_str());
    home.assert_idle();
    out
}

#[test]
fn standby_runs_cosmovisor_with_args_untouched_aws_unreachable() {
    let home = NodeHome::new();
    let out = standby_run(&home, "http://127.0.0.1:1", Some("false"), &[]);
    let text = output_text(&out);
    assert!(text.contains("USE_SSM_KEY is false"), "{text}");
    assert!(!text.contains("attempting to fetch"), "{text}");
}

#[test]
fn standby_makes_no_aws_connection() {
    // An endpoint that records every connection attempt (the kernel completes the
    // handshake into the backlog even if nobody calls accept).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Control: a connection is seen without anyone accepting it in time.
    drop(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    assert!(
        listener.accept().is_ok(),
        "the listener does not see connections"
    );
    for use_ssm_key in [Some("false"), Some("NO"), Some("0"), None] {
        let home = NodeHome::new();
        standby_run(&home, &endpoint, use_ssm_key, &[]);
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, peer)) => {
                panic!("USE_SSM_KEY={use_ssm_key:?}: an AWS connection was made from {peer}")
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn use_ssm_key_flag_overrides_environment() {
    // USE_SSM_KEY=true in the environment, --use-ssm-key false on the command line: a
    // standby, no AWS needed.
    let home = NodeHome::new();
    let mut cmd = tool_cmd(&home, None);
    cmd.envs(aws_env("http://127.0.0.1:1"))
        .env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("STANDIN_ARGS_FILE", args_file(&home))
        .env("NODE_EXIT_AFTER_MS", "100")
        .args(["--use-ssm-key", "false", "run", "start"]);
    let out = run(&mut cmd);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("USE_SSM_KEY is false"), "{text}");
    assert_eq!(home.reports().len(), 1);
    assert_eq!(home.reports()[0]["pub_key"], home.safe_key.pub_b64.as_str());
    home.assert_idle();

    // And the reverse: --use-ssm-key true over USE_SSM_KEY=false needs a parameter.
    let home = NodeHome::new();
    let before = Snapshot::of(&home);
    let mut cmd = run_start(
        &home,
        Some("http://127.0.0.1:1"),
        &["--use-ssm-key", "true"],
    );
    cmd.env("USE_SSM_KEY", "false");
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_CONFIG,
        &["AWS_PARAMETER is not set"],
        &[],
    );

    // --parameter overrides AWS_PARAMETER.
    let moto = Moto::start();
    let key = TestKey::ed25519();
    ssm_put(
        &moto.endpoint(),
        "/flag/param",
        &key.json,
        "SecureString",
        None,
    );
    let out = run(check_cmd(&home, &moto.endpoint()).args(["--parameter", "/flag/param"]));
    let text = assert_ok(&out);
    assert!(
        text.contains("/flag/param version 1") && text.contains(&key.address),
        "{text}"
    );
}

/// Issue 19 item 5: every cosmovisor 1.7 subcommand goes through the tool unchanged. Each
/// runs twice on two identical homes, once as `ssm-cosmovisor <args>` and once as
/// `cosmovisor <args>` (the 1.7 stand-in) directly: the same exit status, the same stdout and
/// stderr (the home's path aside) and the same files afterwards; and the stand-in saw the
/// arguments as given.
#[test]
fn every_cosmovisor_subcommand_passes_through_unchanged() {
    let via_tool = NodeHome::new();
    let direct = NodeHome::new();
    let bin = node_standin_bin();
    let bin = bin.to_str().unwrap();
    let cfg = |h: &NodeHome| h.path().join("cosmovisor/config.toml");
    let steps: Vec<(&str, Vec<String>)> = vec![
        ("init", vec!["init".into(), bin.into()]),
        ("config", vec!["config".into()]),
        (
            "add-upgrade --upgrade-height",
            vec![
                "add-upgrade".into(),
                "v2".into(),
                bin.into(),
                "--upgrade-height".into(),
                "500".into(),
            ],
        ),
        ("show-upgrade-info", vec!["show-upgrade-info".into()]),
        // Before the batch file exists: `version` is a full launch, and its batch watcher
        // may or may not get a step (and write `data/upgrade-info.json`) before the app
        // exits — a race in cosmovisor 1.7 as in the stand-in.
        (
            "version -o json",
            vec!["version".into(), "-o".into(), "json".into()],
        ),
        (
            "version --cosmovisor-only",
            vec!["version".into(), "--cosmovisor-only".into()],
        ),
        (
            "add-batch-upgrade",
            vec![
                "add-batch-upgrade".into(),
                "--upgrade-list".into(),
                format!("v3:{bin}:600,v4:{bin}:700"),
            ],
        ),
        ("prepare-upgrade", vec!["prepare-upgrade".into()]),
        (
            "config -c FILE",
            vec!["config".into(), "-c".into(), "CFG".into()],
        ),
        // Ours before the command, as cosmovisor's persistent flag (see below).
        (
            "-c FILE config",
            vec!["-c".into(), "CFG".into(), "config".into()],
        ),
        ("an unknown command", vec!["start".into()]),
    ];
    // What cosmovisor gets: a leading `-c FILE` moves after the command name (cobra takes
    // it there in every version; the stand-in only there).
    let to_cosmovisor = |a: Vec<String>| -> Vec<String> {
        if a.first().map(String::as_str) == Some("-c") {
            let mut v = vec![a[2].clone(), a[0].clone(), a[1].clone()];
            v.extend_from_slice(&a[3..]);
            v
        } else {
            a
        }
    };
    // Paths and pids aside.
    let norm = |text: &[u8], h: &NodeHome| {
        let t = String::from_utf8_lossy(text)
            .replace(&h.path().display().to_string(), "<home>")
            .replace(&h.root.path().display().to_string(), "<root>");
        let mut out = String::new();
        for (i, part) in t.split("pid=").enumerate() {
            if i > 0 {
                out.push_str("pid=N");
            }
            out.push_str(part.trim_start_matches(|c: char| c.is_ascii_digit() && i > 0));
        }
        out
    };
    for (what, args) in &steps {
        let args_for = |h: &NodeHome| -> Vec<String> {
            args.iter()
                .map(|a| {
                    if a == "CFG" {
                        cfg(h).display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect()
        };
        let mut t = tool_cmd(&via_tool, None);
        t.env("COSMOVISOR_DISABLE_LOGS", "true")
            .args(args_for(&via_tool));
        let a = run(&mut t);
        let mut d = direct.cosmovisor_cmd(&to_cosmovisor(args_for(&direct)));
        d.env("COSMOVISOR_DISABLE_LOGS", "true");
        let b = run(&mut d);
        let (ta, tb) = (output_text(&a), output_text(&b));
        assert_eq!(
            a.status.code(),
            b.status.code(),
            "{what}: via the tool\n{ta}\ndirect\n{tb}"
        );
        assert_eq!(
            norm(&a.stdout, &via_tool),
            norm(&b.stdout, &direct),
            "{what}: stdout"
        );
        assert_eq!(
            norm(&a.stderr, &via_tool),
            norm(&b.stderr, &direct),
            "{what}: stderr"
        );
        let seen = serde_json::to_string(&to_cosmovisor(args_for(&via_tool))).unwrap();
        assert!(
            String::from_utf8_lossy(&a.stdout)
                .contains(&format!("cosmovisor-standin args: {seen}")),
            "{what}: arguments changed on the way\n{ta}"
        );
        println!("subcommand {what}: exit {:?} through both", a.status.code());
    }
    // The files the subcommands wrote, the same in both homes.
    for f in [
        "cosmovisor/config.toml",
        "data/upgrade-info.json",
        "data/upgrade-info.json.batch",
        "cosmovisor/upgrades/v2/bin/noded",
        "cosmovisor/upgrades/v4/bin/noded",
    ] {
        let (x, y) = (
            read_opt(&via_tool.path().join(f)),
            read_opt(&direct.path().join(f)),
        );
        assert!(x.is_some(), "{f} not written");
        assert_eq!(
            x.map(|b| norm(&b, &via_tool)),
            y.map(|b| norm(&b, &direct)),
            "{f} differs"
        );
    }
    // `-c` before `run` (cosmovisor 1.7 would hand it to the node) is refused, naming the
    // spelling that works; so is `run -c`.
    for args in [
        &["-c", "/x.toml", "run", "start"][..],
        &["run", "-c", "/x.toml", "start"][..],
        &["run", "--cosmovisor-config=/x.toml", "start"][..],
    ] {
        let out = run(tool_cmd(&via_tool, None).args(args));
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{args:?}: {text}");
        assert!(
            text.contains("run --cosmovisor-config <file>"),
            "{args:?}: {text}"
        );
        assert!(
            !text.contains("cosmovisor-standin args"),
            "{args:?}: {text}"
        );
    }
    via_tool.assert_idle();
}

#[test]
fn help_and_version() {
    let home = NodeHome::new();
    let out = run(tool_cmd(&home, None).arg("--help"));
    let text = assert_ok(&out);
    for n in [
        "Usage",
        "run",
        "exec",
        "check",
        "restore",
        "import",
        "--use-ssm-key",
        "Exit status",
    ] {
        assert!(text.contains(n), "--help lacks {n:?}:\n{text}");
    }
    let out = run(tool_cmd(&home, None).arg("--version"));
    let text = assert_ok(&out);
    assert!(
        text.contains(&format!("ssm-cosmovisor {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // Subcommand help too.
    let text = assert_ok(&run(tool_cmd(&home, None).args(["import", "--help"])));
    assert!(
        text.contains("--overwrite") && text.contains("--kms-key-id"),
        "{text}"
    );
    home.assert_idle();
}

// ---------------------------------------------------------------------------------------
// KEY_SOURCE=credential:NAME
// ---------------------------------------------------------------------------------------

/// A `$CREDENTIALS_DIRECTORY` as systemd makes it; made writable again on drop so the
/// temporary directory can be removed.
struct CredDir(PathBuf);

impl CredDir {
    fn new(home: &NodeHome, dir_mode: u32, name: &str, file_mode: u32, bytes: &[u8]) -> CredDir {
        let d = home.scratch("credentials");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        let f = d.join(name);
        fs::write(&f, bytes).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(file_mode)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(dir_mode)).unwrap();
        CredDir(d)
    }
}

impl Drop for CredDir {
    fn drop(&mut self) {
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o700));
    }
}

#[test]
fn credential_source_delivers_key() {
    for dir_mode in [0o500, 0o700] {
        let home = NodeHome::new();
        let key = TestKey::ed25519();
        let creds = CredDir::new(&home, dir_mode, "validator_key", 0o400, key.json.as_bytes());
        let mut cmd = run_start(&home, None, &[]);
        cmd.env("USE_SSM_KEY", "true")
            .env("KEY_SOURCE", "credential:validator_key")
            .env("CREDENTIALS_DIRECTORY", &creds.0);
        let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));
        assert!(
            wait_for(|| !home.reports().is_empty(), Duration::from_secs(60)),
            "node never reported; log:\n{}",
            tool.log_text()
        );
        let r = &home.reports()[0];
        assert_eq!(r["outcome"], "ok", "{r}\nlog:\n{}", tool.log_text());
        assert_eq!(r["pub_key"], key.pub_b64.as_str(), "{r}");
        assert_eq!(r["address"], key.address.as_str(), "{r}");
        let st = tool.stop(Signal::SIGTERM);
        let log = tool.log_text();
        assert_eq!(st.code(), Some(0), "{log}");
        home.assert_idle();
        assert!(
            log.contains("validator_key") && log.contains(&key.address),
            "{log}"
        );
        assert_no_secret(&log, &key);
        // The credential is left as systemd made it.
        assert_eq!(
            fs::read(creds.0.join("validator_key")).unwrap(),
            key.json.as_bytes()
        );
    }
}

#[test]
fn credential_source_refuses_readable_file() {
    let home = NodeHome::new();
    let key = TestKey::ed25519();
    let creds = CredDir::new(&home, 0o700, "validator_key", 0o644, key.json.as_bytes());
    let path = creds.0.join("validator_key");
    let before = Snapshot::of(&home);
    let mut cmd = run_start(&home, None, &[]);
    cmd.env("USE_SSM_KEY", "true")
        .env("KEY_SOURCE", "credential:validator_key")
        .env("CREDENTIALS_DIRECTORY", &creds.0);
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[path.to_str().unwrap(), "0644"],
        &[&key],
    );

    // A group/world-readable directory is refused too, and names the directory.
    drop(creds);
    let home = NodeHome::new();
    let creds = CredDir::new(&home, 0o755, "validator_key", 0o400, key.json.as_bytes());
    let before = Snapshot::of(&home);
    let mut cmd = run_start(&home, None, &[]);
    cmd.env("USE_SSM_KEY", "true")
        .env("KEY_SOURCE", "credential:validator_key")
        .env("CREDENTIALS_DIRECTORY", &creds.0);
    let out = run(&mut cmd);
    assert_refused(
        &home,
        &before,
        &out,
        EXIT_SOURCE,
        &[creds.0.to_str().unwrap(), "0755"],
        &[&key],
    );

    // A missing credential names its path; an invalid one names the credential.
    let home = NodeHome::new();
    let bad = edited(&key, |v| v["address"] = TestKey::ed25519().address.into());
    let creds = CredDir::new(&home, 0o500, "validator_key", 0o400, bad.as_bytes());
    let before = Snapshot::of(&home);
    for (name, needles) in [
        ("other_key", vec!["other_key", "cannot read credential"]),
        (
            "validator_key",
            vec!["validator_key", "not derived from pub_key"],
        ),
    ] {
        let mut cmd = run_start(&home, None, &[]);
        cmd.env("USE_SSM_KEY", "true")
            .env("KEY_SOURCE", format!("credential:{name}"))
            .env("CREDENTIALS_DIRECTORY", &creds.0);
        let out = run(&mut cmd);
        assert_refused(&home, &before, &out, EXIT_SOURCE, &needles, &[&key]);
    }
}
