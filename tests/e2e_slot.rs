//! The key slot from outside: the real binary as a process, real files, real stand-ins.
//!
//! - Bad input: every slot problem of issue 4 is refused with exit status 4 and a message
//!   that tells the operator what to do, by `run` and by `restore`, and the key directory
//!   is left exactly as it was (same names, inodes, modes, owners, bytes).
//! - Recovery: `restore` brings every state (ours and the Go tool's) back to idle and is
//!   idempotent; `run` with `USE_SSM_KEY=false` repairs a leftover FIFO before the node starts.
//! - Crash matrix: the tool SIGKILLs itself at every slot transition (failpoints feature);
//!   `restore`, and separately a fresh `run`, bring the slot back byte for byte while a
//!   watcher lstat()s the key path the whole time.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use serde_json::Value;
use support::*;

const PARAM: &str = "/validators/test/priv_validator_key";
/// Nothing listens here: if a refusal test ever got as far as fetching, it fails fast
/// (exit 3) instead of reaching for real AWS.
const NO_AWS: &str = "http://127.0.0.1:9";
const SLOT_EXIT: i32 = 4;

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// `ssm-cosmovisor run start --home <home>` as the active signer.
fn run_cmd(home: &NodeHome, endpoint: &str) -> Command {
    let mut c = tool_cmd(home, Some(endpoint));
    c.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_LOG_FORMAT", "json");
    c.args(["run", "start", "--home"]).arg(home.path());
    c
}

/// `ssm-cosmovisor restore` for the home (found through DAEMON_HOME).
fn restore_cmd(home: &NodeHome) -> Command {
    let mut c = tool_cmd(home, None);
    c.arg("restore");
    c
}

/// Replaces `p` with a 0600 file holding `bytes`.
fn write_0600(p: &Path, bytes: &[u8]) {
    let _ = fs::remove_file(p);
    write_file_0600(p, bytes);
}

fn mkfifo_0600(p: &Path) {
    nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .ino()
}

/// Temporary names our tool uses for an interrupted move.
fn temp_names(home: &NodeHome) -> (PathBuf, PathBuf) {
    let dir = home.key_path().parent().unwrap();
    let name = home
        .key_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (
        dir.join(format!(".{name}.ssm-cosmovisor-fifo.tmp")),
        dir.join(format!(".{name}.ssm-cosmovisor-stripped.tmp")),
    )
}

/// Runs `cmd`, expects exit status 4 and every needle in its output; returns the output.
fn expect_slot_refusal(cmd: &mut Command, needles: &[&str]) -> String {
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let text = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(SLOT_EXIT),
        "expected exit 4; output:\n{text}"
    );
    for n in needles {
        assert!(text.contains(n), "output lacks {n:?}:\n{text}");
    }
    text
}

/// The refusal contract for a slot problem: `run` (active signer) and `restore` both exit
/// 4 with the needles in their message, the node is never started, and `dirs` are left
/// exactly as they were.
fn assert_refused_untouched(home: &NodeHome, dirs: &[&Path], needles: &[&str]) {
    let before: Vec<_> = dirs.iter().map(|d| dir_snapshot(d)).collect();
    let run_text = expect_slot_refusal(&mut run_cmd(home, NO_AWS), needles);
    let restore_text = expect_slot_refusal(&mut restore_cmd(home), needles);
    for (d, b) in dirs.iter().zip(&before) {
        assert_eq!(
            &dir_snapshot(d),
            b,
            "{} changed by a refused run/restore\nrun:\n{run_text}\nrestore:\n{restore_text}",
            d.display()
        );
    }
    assert!(
        complete_reports(home).is_empty(),
        "the node was started: {:?}",
        complete_reports(home)
    );
    println!(
        "refused as expected:\n  run: {}\n  restore: {}",
        last_line(&run_text),
        last_line(&restore_text)
    );
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn config_dir(home: &NodeHome) -> PathBuf {
    home.key_path().parent().unwrap().to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Bad input and faults
// ---------------------------------------------------------------------------------------

#[test]
fn key_path_a_symlink_is_refused() {
    let home = NodeHome::new();
    // The safe key moves elsewhere; the key path becomes a symlink to it.
    let elsewhere = home.scratch("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    let target = elsewhere.join("priv_validator_key.json");
    fs::rename(home.key_path(), &target).unwrap();
    std::os::unix::fs::symlink(&target, home.key_path()).unwrap();
    assert_refused_untouched(&home, &[&config_dir(&home), &elsewhere], &["symbolic link"]);
    assert_eq!(fs::read(&target).unwrap(), home.safe_bytes);
}

/// A symlinked directory on the way to the key, named by `SSM_COSMOVISOR_KEY_FILE`.
#[test]
fn parent_directory_a_symlink_via_key_file_env_is_refused() {
    let home = NodeHome::new();
    let real = home.scratch("realkeys");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    write_0600(&real.join("priv_validator_key.json"), &home.safe_bytes);
    let link = home.path().join("keys");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let key_file = link.join("priv_validator_key.json");
    let before = dir_snapshot(&real);
    for mut cmd in [run_cmd(&home, NO_AWS), restore_cmd(&home)] {
        cmd.env("SSM_COSMOVISOR_KEY_FILE", &key_file);
        let text = expect_slot_refusal(&mut cmd, &["symbolic link", "keys"]);
        println!("refused: {}", last_line(&text));
    }
    assert_eq!(
        dir_snapshot(&real),
        before,
        "the symlinked directory was touched"
    );
    assert!(complete_reports(&home).is_empty());
}

/// The same through config.toml's `priv_validator_key_file` (relative to the home), and
/// through a DAEMON_HOME/--home that is itself a symlink.
#[test]
fn parent_directory_a_symlink_via_config_toml_or_home_is_refused() {
    let home = NodeHome::new();
    let real = home.scratch("realkeys");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    write_0600(&real.join("pv.json"), &home.safe_bytes);
    std::os::unix::fs::symlink(&real, home.path().join("keys")).unwrap();
    let cfg = home.path().join("config/config.toml");
    let mut toml = fs::read_to_string(&cfg).unwrap();
    toml.push_str("priv_validator_key_file = \"keys/pv.json\"\n");
    fs::write(&cfg, toml).unwrap();
    let before = dir_snapshot(&real);
    for mut cmd in [run_cmd(&home, NO_AWS), restore_cmd(&home)] {
        let text = expect_slot_refusal(&mut cmd, &["symbolic link"]);
        println!("refused: {}", last_line(&text));
    }
    assert_eq!(dir_snapshot(&real), before);

    // A second home reached only through a symlink (DAEMON_HOME and --home).
    let home2 = NodeHome::new();
    let link = home2.scratch("home-link");
    std::os::unix::fs::symlink(home2.path(), &link).unwrap();
    let before = dir_snapshot(&config_dir(&home2));
    let mut run = tool_cmd(&home2, Some(NO_AWS));
    run.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("DAEMON_HOME", &link)
        .args(["run", "start", "--home"])
        .arg(&link);
    let mut restore = restore_cmd(&home2);
    restore.env("DAEMON_HOME", &link);
    for cmd in [&mut run, &mut restore] {
        let text = expect_slot_refusal(cmd, &["symbolic link"]);
        println!("refused: {}", last_line(&text));
    }
    assert_eq!(dir_snapshot(&config_dir(&home2)), before);
    assert!(complete_reports(&home2).is_empty());
}

#[test]
fn key_path_missing_is_refused_because_cometbft_would_generate_a_key() {
    let home = NodeHome::new();
    fs::remove_file(home.key_path()).unwrap();
    assert_refused_untouched(
        &home,
        &[&config_dir(&home)],
        &["does not exist", "would generate"],
    );
    assert!(
        fs::symlink_metadata(home.key_path()).is_err(),
        "something was created at the key path"
    );
}

#[test]
fn key_path_a_fifo_without_orig_is_refused() {
    let home = NodeHome::new();
    fs::remove_file(home.key_path()).unwrap();
    mkfifo_0600(home.key_path());
    assert_refused_untouched(
        &home,
        &[&config_dir(&home)],
        &["a FIFO", ".orig", "safe key"],
    );
    assert!(is_fifo(home.key_path()));
    // Also as a standby: a FIFO would hang the node forever, so it is refused there too.
    let mut c = tool_cmd(&home, None);
    c.env("USE_SSM_KEY", "false")
        .args(["run", "start", "--home"])
        .arg(home.path());
    expect_slot_refusal(&mut c, &["a FIFO"]);
    assert!(
        complete_reports(&home).is_empty(),
        "standby started the node on a FIFO"
    );
}

#[test]
fn key_path_stripped_without_orig_is_refused() {
    let home = NodeHome::new();
    let consensus = TestKey::ed25519();
    fs::remove_file(home.key_path()).unwrap();
    write_0600(home.key_path(), consensus.stripped_json().as_bytes());
    assert_refused_untouched(&home, &[&config_dir(&home)], &["a stripped key", ".orig"]);
    let mut c = tool_cmd(&home, None);
    c.env("USE_SSM_KEY", "false")
        .args(["run", "start", "--home"])
        .arg(home.path());
    expect_slot_refusal(&mut c, &["a stripped key"]);
    assert!(
        complete_reports(&home).is_empty(),
        "standby started the node on a stripped key"
    );
}

#[test]
fn orig_different_from_a_regular_key_is_refused() {
    let home = NodeHome::new();
    let other = TestKey::ed25519();
    write_0600(&home.orig_path(), other.json.as_bytes());
    assert_refused_untouched(&home, &[&config_dir(&home)], &["differ", ".orig"]);
    assert_eq!(fs::read(home.key_path()).unwrap(), home.safe_bytes);
    assert_eq!(fs::read(home.orig_path()).unwrap(), other.json.as_bytes());
}

/// A FIFO planted at `P.orig` (only someone else makes one: ours is a hard link to the safe
/// key) is reported as what it is, by `run` and `restore`, whatever `P` holds; nothing
/// moves and nothing opens it, so the safe key at `P` stays. Before: reported as "a
/// stripped (public-only) key file" with `P` the safe key, and as a "non-regular file" at
/// the "key path" `P.orig` with `P` stripped.
#[test]
fn fifo_planted_at_orig_is_refused_as_a_fifo() {
    for p_stripped in [false, true] {
        let home = NodeHome::new();
        if p_stripped {
            fs::remove_file(home.key_path()).unwrap();
            write_0600(
                home.key_path(),
                TestKey::ed25519().stripped_json().as_bytes(),
            );
        }
        mkfifo_0600(&home.orig_path());
        let fix: &[&str] = if p_stripped {
            &["copy the host's safe key"]
        } else {
            &["Nothing was changed"]
        };
        let needles = [&[".orig is a FIFO, not a key file", "remove it"][..], fix].concat();
        assert_refused_untouched(&home, &[&config_dir(&home)], &needles);
        let text = expect_slot_refusal(&mut restore_cmd(&home), &[]);
        assert!(!text.contains("stripped (public-only)"), "{text}");
        assert!(is_fifo(&home.orig_path()));
        if !p_stripped {
            assert_eq!(fs::read(home.key_path()).unwrap(), home.safe_bytes);
        }
    }
}

#[test]
fn safe_key_equal_to_the_consensus_key_is_refused() {
    let moto = Moto::start();
    let home = NodeHome::new();
    put_key(&moto.endpoint(), PARAM, &home.safe_key);
    let before = dir_snapshot(&config_dir(&home));
    let text = expect_slot_refusal(
        &mut run_cmd(&home, &moto.endpoint()),
        &["IS the consensus key", &home.safe_key.address],
    );
    assert_eq!(dir_snapshot(&config_dir(&home)), before);
    assert_clean_idle(&home);
    assert!(complete_reports(&home).is_empty());
    assert_no_secret(&text, &home.safe_key);
    println!("refused: {}", last_line(&text));
}

#[test]
fn world_or_group_writable_key_directory_is_refused() {
    for mode in [0o777, 0o770, 0o702] {
        let home = NodeHome::new();
        let dir = config_dir(&home);
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        assert_refused_untouched(
            &home,
            &[&dir],
            &["unsafe", "writable by group or others", "chmod go-w"],
        );
        assert_clean_idle(&home);
    }
    // An ancestor writable by others (not sticky) is refused as well.
    let home = NodeHome::new();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused_untouched(
        &home,
        &[&config_dir(&home)],
        &["ancestor directory is writable"],
    );
    assert_clean_idle(&home);
}

#[test]
fn key_path_or_directory_owned_by_another_user_is_refused() {
    let home = NodeHome::new();
    nix::unistd::chown(
        home.key_path(),
        Some(nix::unistd::Uid::from_raw(12345)),
        Some(nix::unistd::Gid::from_raw(12345)),
    )
    .unwrap();
    assert_refused_untouched(
        &home,
        &[&config_dir(&home)],
        &["owned by uid 12345", "chown"],
    );
    assert_eq!(fs::read(home.key_path()).unwrap(), home.safe_bytes);
    assert!(slot_leftovers(&home).is_empty());

    let home = NodeHome::new();
    nix::unistd::chown(
        &config_dir(&home),
        Some(nix::unistd::Uid::from_raw(12345)),
        None,
    )
    .unwrap();
    assert_refused_untouched(&home, &[&config_dir(&home)], &["owned by uid 12345"]);
    assert_clean_idle(&home);
}

// ---------------------------------------------------------------------------------------
// Recovery: `restore` in every state, idempotent
// ---------------------------------------------------------------------------------------

/// Runs `restore` under an lstat watcher; expects exit 0, the idle state byte for byte,
/// nothing left behind, `found` in the output; then a second run that has nothing to do.
fn restore_ok(home: &NodeHome, found: &str) -> String {
    let w = LstatWatcher::start(home.key_path());
    let out = run_with_timeout(&mut restore_cmd(home), Duration::from_secs(30));
    let stats = w.stop();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("found {found};")),
        "expected 'found {found}' in:\n{text}"
    );
    assert!(
        !stats.saw_missing(),
        "key path missing {} of {} samples during restore",
        stats.missing,
        stats.samples
    );
    assert_clean_idle(home);
    // Idempotent.
    let out = run_with_timeout(&mut restore_cmd(home), Duration::from_secs(30));
    let text2 = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text2}");
    assert!(
        text2.contains("found idle; nothing to do"),
        "second restore:\n{text2}"
    );
    assert_clean_idle(home);
    text
}

#[test]
fn restore_armed_state() {
    let home = NodeHome::new();
    fs::rename(home.key_path(), home.orig_path()).unwrap();
    mkfifo_0600(home.key_path());
    let orig_ino = ino(&home.orig_path());
    restore_ok(&home, "armed");
    assert_eq!(
        ino(home.key_path()),
        orig_ino,
        "the backup itself was renamed back"
    );
}

#[test]
fn restore_delivered_state() {
    let home = NodeHome::new();
    let consensus = TestKey::ed25519();
    fs::rename(home.key_path(), home.orig_path()).unwrap();
    write_0600(home.key_path(), consensus.stripped_json().as_bytes());
    restore_ok(&home, "delivered");
}

/// Both names are hard links to one inode: `rename(P.orig, P)` would do nothing, so the
/// backup name must be unlinked.
#[test]
fn restore_backed_up_state_unlinks_the_second_link() {
    let home = NodeHome::new();
    fs::hard_link(home.key_path(), home.orig_path()).unwrap();
    let p_ino = ino(home.key_path());
    assert_eq!(fs::metadata(home.key_path()).unwrap().nlink(), 2);
    restore_ok(&home, "backed-up");
    assert_eq!(ino(home.key_path()), p_ino);
    assert_eq!(
        fs::metadata(home.key_path()).unwrap().nlink(),
        1,
        "a second link is still somewhere"
    );
}

/// The Go tool backs up by copying: `.orig` is a separate, complete copy.
#[test]
fn restore_go_tool_leftovers() {
    // Copy + FIFO at P.
    let home = NodeHome::new();
    write_0600(&home.orig_path(), &home.safe_bytes);
    fs::remove_file(home.key_path()).unwrap();
    mkfifo_0600(home.key_path());
    restore_ok(&home, "armed");

    // Copy + stripped file at P.
    let home = NodeHome::new();
    write_0600(&home.orig_path(), &home.safe_bytes);
    write_0600(
        home.key_path(),
        TestKey::ed25519().stripped_json().as_bytes(),
    );
    restore_ok(&home, "delivered");

    // Copy finished, P still the safe key (crash right after the copy).
    let home = NodeHome::new();
    write_0600(&home.orig_path(), &home.safe_bytes);
    restore_ok(&home, "backed-up");

    // Copy made, P already removed, FIFO not yet created (the Go tool's remove+mkfifo).
    let home = NodeHome::new();
    write_0600(&home.orig_path(), &home.safe_bytes);
    fs::remove_file(home.key_path()).unwrap();
    let out = run_with_timeout(&mut restore_cmd(&home), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_clean_idle(&home);
}

/// A `.orig` the Go tool never fsynced may be empty or cut short after a power loss: it
/// must not be renamed over P, and P must never be left missing.
#[test]
fn restore_refuses_a_truncated_orig_and_never_leaves_p_missing() {
    for (what, cut) in [
        ("empty", 0usize),
        ("truncated", 97),
        ("all but the last byte", usize::MAX),
    ] {
        let home = NodeHome::new();
        let cut = cut.min(home.safe_bytes.len() - 1);
        write_0600(&home.orig_path(), &home.safe_bytes[..cut]);
        fs::remove_file(home.key_path()).unwrap();
        mkfifo_0600(home.key_path());
        let fifo_ino = ino(home.key_path());
        let before = dir_snapshot(&config_dir(&home));
        let w = LstatWatcher::start(home.key_path());
        let run_text = expect_slot_refusal(&mut run_cmd(&home, NO_AWS), &["not a complete key"]);
        let text = expect_slot_refusal(
            &mut restore_cmd(&home),
            &["not a complete key", "truncated", "your own backup"],
        );
        let stats = w.stop();
        assert!(
            !stats.saw_missing(),
            "{what}: key path missing {} times",
            stats.missing
        );
        assert!(
            is_fifo(home.key_path()) && ino(home.key_path()) == fifo_ino,
            "{what}: P changed"
        );
        assert_eq!(
            dir_snapshot(&config_dir(&home)),
            before,
            "{what}: directory changed"
        );
        assert!(complete_reports(&home).is_empty());
        println!(
            "{what} .orig refused:\n  run: {}\n  restore: {}",
            last_line(&run_text),
            last_line(&text)
        );
    }
}

#[test]
fn restore_removes_leftover_temporary_names() {
    // Idle with both temporary names left by interrupted moves.
    let home = NodeHome::new();
    let (fifo_tmp, stripped_tmp) = temp_names(&home);
    mkfifo_0600(&fifo_tmp);
    write_0600(&stripped_tmp, TestKey::ed25519().stripped_json().as_bytes());
    let text = restore_ok(&home, "idle with leftovers");
    assert!(text.contains("removed leftover temporary files"), "{text}");

    // Armed, with both temporary names.
    let home = NodeHome::new();
    let (fifo_tmp, stripped_tmp) = temp_names(&home);
    fs::rename(home.key_path(), home.orig_path()).unwrap();
    mkfifo_0600(home.key_path());
    mkfifo_0600(&fifo_tmp);
    write_0600(&stripped_tmp, TestKey::ed25519().stripped_json().as_bytes());
    restore_ok(&home, "armed");
}

/// A standby (`USE_SSM_KEY=false`) repairs the slot before the node starts: a leftover
/// FIFO would hang its node, a stripped file would crash it.
#[test]
fn standby_run_repairs_a_leftover_fifo_or_stripped_file_before_starting_the_node() {
    for state in ["armed", "delivered"] {
        let home = NodeHome::new();
        let _reaper = StrayReaper(home.root.path().to_path_buf());
        fs::rename(home.key_path(), home.orig_path()).unwrap();
        if state == "armed" {
            mkfifo_0600(home.key_path());
        } else {
            write_0600(
                home.key_path(),
                TestKey::ed25519().stripped_json().as_bytes(),
            );
        }
        let mut c = tool_cmd(&home, None);
        c.env("USE_SSM_KEY", "false")
            .env("SSM_COSMOVISOR_LOG_FORMAT", "json")
            .args(["run", "start", "--home"])
            .arg(home.path());
        let w = LstatWatcher::start(home.key_path());
        let mut tool = Tool::spawn(&mut c, home.scratch("tool.log"));
        assert!(
            wait_for(
                || !complete_reports(&home).is_empty(),
                Duration::from_secs(30)
            ),
            "node never reported; log:\n{}",
            tool.log_text()
        );
        let r = &complete_reports(&home)[0];
        assert_eq!(r["outcome"], "ok", "{state}: {r}");
        assert_eq!(
            r["pub_key"],
            home.safe_key.pub_b64.as_str(),
            "{state}: node did not get the safe key"
        );
        let checked = tool.events("slot_checked");
        assert_eq!(checked.len(), 1, "{}", tool.log_text());
        assert_eq!(checked[0]["found"], state);
        assert_clean_idle(&home);
        let st = tool.stop(Signal::SIGTERM);
        assert_eq!(st.code(), Some(0), "{}", tool.log_text());
        assert!(!w.stop().saw_missing());
        assert_clean_idle(&home);
    }
}

// ---------------------------------------------------------------------------------------
// Crash matrix
// ---------------------------------------------------------------------------------------

/// Every failpoint the main job passes through, in order.
const FAILPOINTS: [&str; 9] = [
    "after-backup-link",
    "after-fifo-mknod",
    "after-arm-rename",
    "after-writer-open",
    "after-stripped-write",
    "after-strip-rename",
    "after-key-write",
    "before-restore-rename",
    "after-restore-rename",
];

/// Runs the main job until it SIGKILLs itself at `fp`. Returns what the slot looked like
/// right after the crash. Panics if the tool did not die by SIGKILL, or if stand-ins
/// outlived it (they get SIGTERM through PR_SET_PDEATHSIG and must go away by themselves).
fn crash_at(home: &NodeHome, endpoint: &str, fp: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = run_cmd(home, endpoint);
    cmd.env("SSM_COSMOVISOR_FAILPOINT", fp);
    let mut tool = Tool::spawn(&mut cmd, home.scratch(&format!("crash-{fp}.log")));
    let st = if fp.contains("restore-rename") {
        // The restore happens on shutdown: let the node get the key, then SIGTERM.
        assert!(
            wait_for(
                || !tool.events("delivered").is_empty(),
                Duration::from_secs(30)
            ),
            "{fp}: no delivery; log:\n{}",
            tool.log_text()
        );
        tool.stop(Signal::SIGTERM)
    } else {
        tool.wait(Duration::from_secs(30))
    };
    assert_eq!(
        st.signal(),
        Some(9),
        "{fp}: the tool did not crash at the failpoint ({st}); log:\n{}",
        tool.log_text()
    );
    let killed = reap_strays(home.root.path(), Duration::from_secs(5));
    assert!(
        killed.is_empty(),
        "{fp}: processes survived the crash (had to SIGKILL {killed:?}); log:\n{}",
        tool.log_text()
    );
    describe_slot(home)
}

fn describe_slot(home: &NodeHome) -> String {
    let d = |p: &Path| match fs::symlink_metadata(p) {
        Err(_) => "absent".to_string(),
        Ok(m) if m.file_type().is_file() => {
            let b = fs::read(p).unwrap_or_default();
            let kind = if b == home.safe_bytes {
                "safe".to_string()
            } else if serde_json::from_slice::<Value>(&b)
                .map(|v| v["priv_key"]["value"] == "")
                .unwrap_or(false)
            {
                "stripped".to_string()
            } else {
                format!("{} bytes", b.len())
            };
            format!("{kind} (ino {}, nlink {})", m.ino(), m.nlink())
        }
        Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => {
            format!("FIFO (ino {})", m.ino())
        }
        Ok(m) => format!("{:?} (ino {})", m.file_type(), m.ino()),
    };
    let mut s = format!("P={} orig={}", d(home.key_path()), d(&home.orig_path()));
    let (a, b) = temp_names(home);
    for t in [a, b] {
        if fs::symlink_metadata(&t).is_ok() {
            s.push_str(&format!(" +{}", t.file_name().unwrap().to_string_lossy()));
        }
    }
    s
}

struct CaseResult {
    fp: &'static str,
    recovery: &'static str,
    after_crash: String,
    byte_identical: bool,
    lstat_samples: u64,
    missing: u64,
    secs: f64,
}

fn crash_then_restore(endpoint: &str, fp: &'static str) -> CaseResult {
    let t = Instant::now();
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let w = LstatWatcher::start(home.key_path());
    let after_crash = crash_at(&home, endpoint, fp);
    let out = run_with_timeout(&mut restore_cmd(&home), Duration::from_secs(30));
    let stats = w.stop();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{fp}: restore failed:\n{text}");
    assert_clean_idle(&home);
    let out2 = run_with_timeout(&mut restore_cmd(&home), Duration::from_secs(30));
    assert_eq!(out2.status.code(), Some(0));
    assert!(
        output_text(&out2).contains("nothing to do"),
        "{fp}: second restore: {}",
        output_text(&out2)
    );
    assert!(
        !stats.saw_missing(),
        "{fp}: key path missing in {} of {} lstat samples",
        stats.missing,
        stats.samples
    );
    CaseResult {
        fp,
        recovery: "restore",
        after_crash,
        byte_identical: fs::read(home.key_path()).unwrap() == home.safe_bytes,
        lstat_samples: stats.samples,
        missing: stats.missing,
        secs: t.elapsed().as_secs_f64(),
    }
}

fn crash_then_fresh_run(endpoint: &str, key: &TestKey, fp: &'static str) -> CaseResult {
    let t = Instant::now();
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let w = LstatWatcher::start(home.key_path());
    let after_crash = crash_at(&home, endpoint, fp);
    let reports_before = complete_reports(&home).len();
    let mut tool = Tool::spawn(&mut run_cmd(&home, endpoint), home.scratch("fresh.log"));
    assert!(
        wait_for(
            || complete_reports(&home).len() > reports_before,
            Duration::from_secs(30)
        ),
        "{fp}: fresh run: node never reported; log:\n{}",
        tool.log_text()
    );
    let r = complete_reports(&home)[reports_before].clone();
    assert_eq!(
        r["outcome"],
        "ok",
        "{fp}: fresh run: {r}\nlog:\n{}",
        tool.log_text()
    );
    assert_eq!(
        r["pub_key"],
        key.pub_b64.as_str(),
        "{fp}: fresh run delivered another key"
    );
    assert!(
        tool.wait_log("\"delivered\"", Duration::from_secs(10)),
        "{}",
        tool.log_text()
    );
    let at_p: Value =
        serde_json::from_slice(&read_opt(home.key_path()).expect("stripped file at P")).unwrap();
    assert_eq!(
        at_p["priv_key"]["value"], "",
        "{fp}: P is not the stripped key while running"
    );
    assert_eq!(
        fs::read(home.orig_path()).unwrap(),
        home.safe_bytes,
        "{fp}: .orig is not the safe key"
    );
    let st = tool.stop(Signal::SIGTERM);
    let stats = w.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "{fp}: fresh run exit; log:\n{}",
        tool.log_text()
    );
    assert_clean_idle(&home);
    assert!(
        !stats.saw_missing(),
        "{fp}: key path missing in {} of {} lstat samples",
        stats.missing,
        stats.samples
    );
    assert_no_secret(&tool.log_text(), key);
    CaseResult {
        fp,
        recovery: "fresh run",
        after_crash,
        byte_identical: fs::read(home.key_path()).unwrap() == home.safe_bytes,
        lstat_samples: stats.samples,
        missing: stats.missing,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// Issue 4, Must show 2.
#[test]
fn crash_matrix_every_failpoint_recovers_byte_for_byte() {
    let (moto, key) = moto_with_key(PARAM);
    let started = Instant::now();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for fp in FAILPOINTS {
        for recovery in ["restore", "fresh run"] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if recovery == "restore" {
                    crash_then_restore(&moto.endpoint(), fp)
                } else {
                    crash_then_fresh_run(&moto.endpoint(), &key, fp)
                }
            }));
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{fp} / {recovery}: {msg}"));
                }
            }
        }
    }
    println!(
        "CRASH MATRIX ({} cases, {:.1} s)",
        results.len() + failures.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<22} {:<10} {:<70} {:>5} {:>10} {:>7} {:>6}",
        "failpoint", "recovery", "slot after kill -9", "bytes", "lstat", "missing", "secs"
    );
    for r in &results {
        println!(
            "  {:<22} {:<10} {:<70} {:>5} {:>10} {:>7} {:>6.2}",
            r.fp,
            r.recovery,
            r.after_crash,
            if r.byte_identical { "same" } else { "DIFF" },
            r.lstat_samples,
            r.missing,
            r.secs
        );
    }
    let identical = results
        .iter()
        .filter(|r| r.byte_identical && r.missing == 0)
        .count();
    println!(
        "  => {identical}/{} cases byte-identical with the key path present at every sample; {} failed",
        results.len() + failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "crash matrix failures:\n{}",
        failures.join("\n\n")
    );
    assert_eq!(identical, FAILPOINTS.len() * 2);
}
