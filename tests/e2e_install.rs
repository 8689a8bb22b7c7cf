//! `install-safe-key` (the split-trust unit's `ExecStartPre=`) and the backup link of a safe
//! key root does not own, run as the real binary.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const PARAM: &str = "/validators/install/key";

/// A node home whose key path lies in an empty directory of its own (like the split unit's
/// runtime directory), and the safe key kept elsewhere as the source.
struct Setup {
    home: NodeHome,
    key_dir: PathBuf,
    source: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let home = NodeHome::with_options(NodeHomeOptions {
            key_file: Some(
                std::env::temp_dir()
                    .join(format!(
                        "ssmcv-install-{}-{}",
                        std::process::id(),
                        rand_suffix()
                    ))
                    .join("priv_validator_key.json")
                    .display()
                    .to_string(),
            ),
            upgrades: 0,
        });
        let key_dir = home.key_path().parent().unwrap().to_path_buf();
        let source = home.scratch("safe.json");
        fs::rename(home.key_path(), &source).unwrap();
        Setup {
            home,
            key_dir,
            source,
        }
    }

    fn install(&self) -> Command {
        let mut c = tool_cmd(&self.home, None);
        c.env("SSM_COSMOVISOR_KEY_FILE", self.home.key_path())
            .arg("install-safe-key")
            .arg(&self.source);
        c
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.key_dir);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let o = run_with_timeout(cmd, Duration::from_secs(30));
    (o.status.code(), output_text(&o))
}

#[test]
fn fills_an_empty_key_directory_once_and_leaves_it_alone_after() {
    let s = Setup::new();
    let (code, out) = run(&mut s.install());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("event=\"safe_key_installed\""), "{out}");
    assert_eq!(fs::read(s.home.key_path()).unwrap(), s.home.safe_bytes);
    let md = fs::metadata(s.home.key_path()).unwrap();
    assert_eq!(
        md.mode() & 0o7777,
        0o600,
        "run as the node user: its own file, 0600"
    );
    // No temporary name left behind.
    let names: Vec<String> = fs::read_dir(&s.key_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["priv_validator_key.json"], "{names:?}");

    // A second start finds the key there (or a slot in any other state): nothing changes.
    fs::write(&s.source, TestKey::ed25519().json).unwrap();
    let (code, out) = run(&mut s.install());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("event=\"safe_key_present\""), "{out}");
    assert_eq!(fs::read(s.home.key_path()).unwrap(), s.home.safe_bytes);
}

#[test]
fn a_backup_alone_is_left_for_repair_to_restore() {
    let s = Setup::new();
    fs::copy(&s.source, s.home.orig_path()).unwrap();
    let (code, out) = run(&mut s.install());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("event=\"safe_key_present\""), "{out}");
    assert!(!s.home.key_path().exists(), "installed next to a backup");
    let mut restore = tool_cmd(&s.home, None);
    restore
        .env("SSM_COSMOVISOR_KEY_FILE", s.home.key_path())
        .arg("restore");
    let (code, out) = run(&mut restore);
    assert_eq!(code, Some(0), "{out}");
    s.home.assert_idle();
}

/// Makes the source file bad in one way.
type Spoil = Box<dyn Fn(&Path)>;

#[test]
fn refuses_missing_unsafe_or_invalid_sources_and_creates_nothing() {
    let s = Setup::new();
    let good = fs::read(&s.source).unwrap();
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "missing",
            Box::new(|p: &Path| fs::remove_file(p).unwrap()),
            "cannot read the safe key",
        ),
        (
            "symlink",
            Box::new(|p: &Path| {
                let real = p.with_extension("real");
                fs::rename(p, &real).unwrap();
                std::os::unix::fs::symlink(&real, p).unwrap();
            }),
            "it is a symbolic link",
        ),
        (
            "group-writable",
            Box::new(|p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o620)).unwrap()),
            "writable by group or others",
        ),
        (
            "stripped",
            Box::new(|p: &Path| {
                let stripped = TestKey::ed25519().stripped_json();
                fs::write(p, stripped).unwrap()
            }),
            "is not a complete key file",
        ),
        (
            "not json",
            Box::new(|p: &Path| fs::write(p, "hello").unwrap()),
            "is not a complete key file",
        ),
    ];
    for (what, spoil, needle) in cases {
        let _ = fs::remove_file(&s.source);
        let _ = fs::remove_file(s.source.with_extension("real"));
        fs::write(&s.source, &good).unwrap();
        fs::set_permissions(&s.source, fs::Permissions::from_mode(0o600)).unwrap();
        spoil(&s.source);
        let (code, out) = run(&mut s.install());
        assert_eq!(code, Some(4), "{what}: {out}");
        assert!(out.contains(needle), "{what}: {out}");
        assert!(
            out.contains(&s.source.display().to_string()),
            "{what}: names the file: {out}"
        );
        assert_eq!(
            fs::read_dir(&s.key_dir).unwrap().count(),
            0,
            "{what}: something was created"
        );
    }
}

/// The split-trust unit as root with exactly its bounding set (no CAP_FOWNER, no DAC
/// override): the safe key goes in as root:<node group> 0640, the node can read it as a
/// standby, root can hard-link it as the backup, and with CAP_SETPCAP the child's bounding
/// set is emptied (without it, the tool says so).
#[test]
fn split_trust_installs_for_the_node_group_and_delivers_under_the_units_capabilities() {
    if !root_with_setpriv() {
        return;
    }
    let (moto, key) = moto_with_key(PARAM);
    let s = Setup::new();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    fs::set_permissions(&s.key_dir, fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(s.home.root.path(), fs::Permissions::from_mode(0o711)).unwrap();
    assert!(Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", nobody.uid, nobody.gid))
        .arg(s.home.path())
        .status()
        .unwrap()
        .success());
    fs::write(s.home.report_path(), b"").unwrap();
    nix::unistd::chown(&s.home.report_path(), Some(nobody.uid), Some(nobody.gid)).unwrap();

    let bounded = |bounding: &str, inner: &mut Command| -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--bounding-set=-all,{bounding}"),
            "--inh-caps=-all",
            "--",
        ])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    };
    let unit_caps = "+setuid,+setgid,+chown,+kill,+setpcap";
    let mut install = s.install();
    install.env("SSM_COSMOVISOR_NODE_USER", "nobody");
    let (code, out) = run(&mut bounded(unit_caps, &mut install));
    assert_eq!(code, Some(0), "{out}");
    let md = fs::metadata(s.home.key_path()).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (0, nobody.gid.as_raw(), 0o640),
        "owner, group and mode of the installed safe key"
    );

    for (bounding, child_bnd) in [
        (unit_caps, Some("0000000000000000")),
        ("+setuid,+setgid,+chown,+kill", None),
    ] {
        let mut cmd = tool_cmd(&s.home, Some(&moto.endpoint()));
        cmd.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_NODE_USER", "nobody")
            .env("SSM_COSMOVISOR_KEY_FILE", s.home.key_path())
            .args(["run", "start"]);
        let reports_before = s.home.reports().len();
        let mut tool = Tool::spawn(&mut bounded(bounding, &mut cmd), s.home.scratch("tool.log"));
        assert!(
            tool.wait_log("event=\"delivered\"", Duration::from_secs(30)),
            "no delivery (bounding set {bounding}); log:\n{}",
            tool.log_text()
        );
        assert!(
            wait_for(
                || s.home.reports().len() > reports_before,
                Duration::from_secs(10)
            ),
            "the node did not report"
        );
        let r = s.home.reports()[reports_before].clone();
        assert_eq!(r["pub_key"], key.pub_b64.as_str(), "{r}");
        assert_eq!(r["uid"], nobody.uid.as_raw());
        let node = r["pid"].as_i64().unwrap();
        let bnd = status_fields(node as i32)["CapBnd"].clone();
        match child_bnd {
            Some(want) => {
                assert_eq!(bnd, want, "node's bounding set with CAP_SETPCAP");
                assert!(!tool.log_text().contains("bounding_set_kept"));
            }
            None => {
                assert_ne!(bnd, "0000000000000000");
                assert!(
                    tool.log_text().contains("event=\"bounding_set_kept\""),
                    "{}",
                    tool.log_text()
                );
            }
        }
        assert_eq!(
            tool.stop(Signal::SIGTERM).code(),
            Some(0),
            "{}",
            tool.log_text()
        );
        assert_eq!(fs::read(s.home.key_path()).unwrap(), s.home.safe_bytes);
        assert!(!s.home.orig_path().exists());
    }
}

/// A node-owned safe key put by hand into the split unit's root-owned key directory: root
/// without CAP_FOWNER may not hard-link it (fs.protected_hardlinks), and the node may not
/// write there. Refused before anything is delivered, with the fix in the message, and the
/// slot left idle.
#[test]
fn node_owned_safe_key_in_a_root_directory_is_refused_with_the_fix() {
    if !root_with_setpriv() {
        return;
    }
    let (moto, _key) = moto_with_key(PARAM);
    let s = Setup::new();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // The node's home is the node's (split trust reads its config.toml as the node); only
    // the key directory is root's.
    chown_tree(s.home.root.path(), nobody.uid.as_raw(), nobody.gid.as_raw());
    fs::set_permissions(&s.key_dir, fs::Permissions::from_mode(0o711)).unwrap();
    fs::copy(&s.source, s.home.key_path()).unwrap();
    nix::unistd::chown(s.home.key_path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let mut cmd = tool_cmd(&s.home, Some(&moto.endpoint()));
    cmd.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_NODE_USER", "nobody")
        .env("SSM_COSMOVISOR_KEY_FILE", s.home.key_path());
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            "--bounding-set=-all,+setuid,+setgid,+chown,+kill,+setpcap",
            "--inh-caps=-all",
            "--",
        ])
        .arg(ssm_cosmovisor_bin())
        .args(["run", "start"])
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let (code, out) = run(&mut wrapped);
    assert_eq!(code, Some(4), "{out}");
    assert!(
        out.contains("may not hard-link another user's file") && out.contains("chown root:"),
        "{out}"
    );
    assert_eq!(fs::read(s.home.key_path()).unwrap(), s.home.safe_bytes);
    assert!(!s.home.orig_path().exists());
    assert!(s.home.reports().is_empty(), "a node was started");
}
