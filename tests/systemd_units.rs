//! The systemd units in `systemd/`, checked with systemd's own tools.
//!
//! * `systemd-analyze verify` must print nothing about our units (unknown or misspelled
//!   directives, bad values and unknown syscall names are all warnings there, not errors).
//! * `systemd-analyze security --offline=yes` scores the exposure of each unit: the
//!   unprivileged unit must stay at or below 1.2, the split-trust unit below a bound measured
//!   with systemd 252 plus a margin.
//! * The syscall filter of each unit, evaluated against this systemd's own group table, must
//!   allow what ssm-cosmovisor and a Go node call and deny what they must not; and the facts
//!   the units' comments rest on (`memfd_secret` in no group, `capset` in `@privileged`,
//!   `prlimit64` outside `@resources`) must still hold, so a systemd upgrade that changes
//!   them fails here rather than in production.
//!
//! Without `systemd-analyze` on PATH each test prints why it is skipped and passes.
//! Offline: `verify` insists that `ExecStart=` binaries exist, so the units are copied into a
//! temporary directory with `/usr/bin/ssm-cosmovisor` pointing at the binary cargo built for
//! this test run; templates are verified through an instance name, as systemd loads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNPRIVILEGED: &str = "ssm-cosmovisor@.service";
const SPLIT: &str = "ssm-cosmovisor-split@.service";
const CREDENTIAL_DROPIN: &str = "credential.conf";
const INSTANCE: &str = "gaiad";
const INSTALLED_BIN: &str = "/usr/bin/ssm-cosmovisor";

/// The requirement for the unprivileged unit: 1.2 until issue 20 took `ProtectProc=invisible`
/// out (it hid from the tool's reader check the processes it must see), 1.4 since.
const UNPRIVILEGED_MAX_EXPOSURE: f64 = 1.4;
/// The requirement for the split-trust unit, which runs as root with capabilities and
/// uid-changing syscalls and without a private user namespace (systemd 252 scores it 2.3).
const SPLIT_MAX_EXPOSURE: f64 = 2.3;

/// Syscalls ssm-cosmovisor (and a Go/CosmWasm node) need in either mode.
const NEEDED_ALWAYS: &[&str] = &[
    // secret memory, and its fallback
    "memfd_secret",
    "mmap",
    "munmap",
    "mlock",
    "madvise",
    // supervision of cosmovisor
    "pidfd_open",
    "pidfd_send_signal",
    "waitid",
    "kill",
    "prctl",
    "clone3",
    "execve",
    // the child's pre_exec: capabilities cleared, core limit, fds marked close-on-exec
    "capget",
    "capset",
    "prlimit64",
    "rt_sigprocmask",
    "close_range",
    // the key slot
    "openat2",
    "mknodat",
    "renameat2",
    "linkat",
    "unlinkat",
    "fsync",
    "readlinkat",
    "getdents64",
    "ioctl",
    "ppoll",
    "inotify_init1",
    "inotify_add_watch",
    // SSM over HTTPS, sd_notify
    "socket",
    "connect",
    "sendmsg",
    // a Go node
    "futex",
    "epoll_pwait",
    "sched_getaffinity",
    "mprotect",
    "sigaltstack",
];

/// Additionally needed by the split-trust unit: the child's switch to the node user (the
/// `pre_exec` hook issues raw setgroups, setresgid, setresuid), chown of the FIFO and the
/// stripped key, looking at the node with the node's file-system uid.
const NEEDED_SPLIT: &[&str] = &[
    "setgroups",
    "setresgid",
    "setresuid",
    "setuid",
    "setgid",
    "fchown",
    "fchownat",
    "setfsuid",
    "setfsgid",
];

/// Denied by both units.
const DENIED_ALWAYS: &[&str] = &[
    "mount",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "bpf",
    "init_module",
    "reboot",
    "kexec_load",
    "swapon",
    "settimeofday",
    "setrlimit",
    "sched_setscheduler",
    "fanotify_init",
];

/// Denied by the unprivileged unit only.
const DENIED_UNPRIVILEGED: &[&str] = &[
    "setuid",
    "setgroups",
    "setresuid",
    "chown",
    "fchown",
    "setfsuid",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze` from PATH, or `None` after printing why the test is skipped.
fn systemd_analyze(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: systemd-analyze is not on PATH (Debian: `apt-get install systemd`)"
        );
    }
    found
}

struct Output {
    ok: bool,
    text: String,
}

/// Runs systemd-analyze in the C locale, so that its glyphs are plain ASCII.
fn run(analyze: &Path, args: &[&str]) -> Output {
    let out = Command::new(analyze)
        .args(args)
        .env("LC_ALL", "C")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", analyze.display()));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Output {
        ok: out.status.success(),
        text,
    }
}

fn version(analyze: &Path) -> String {
    let out = run(analyze, &["--version"]);
    out.text.lines().next().unwrap_or("").trim().to_owned()
}

/// A temporary unit directory holding a unit (binary path pointed at this build's binary)
/// and, optionally, the credential drop-in for it, as an administrator would install them.
struct UnitDir {
    dir: tempfile::TempDir,
    instance: String,
}

impl UnitDir {
    fn new(template: &str, with_credential: bool) -> UnitDir {
        let dir = tempfile::tempdir().expect("temp dir");
        // A symlink under the temp dir, so the substituted path has no spaces even if the
        // target directory's path does.
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let bin = bin_dir.join("ssm-cosmovisor");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ssm-cosmovisor"), &bin).unwrap();
        let bin = bin.to_str().expect("utf-8 temp path");
        assert!(
            !bin.contains(char::is_whitespace),
            "temp path {bin:?} has whitespace"
        );

        let text = read_unit(template);
        assert!(
            text.contains(&format!("ExecStart={INSTALLED_BIN} run start")),
            "{template}: ExecStart= must run `{INSTALLED_BIN} run start`"
        );
        assert!(
            text.contains(&format!("ExecStopPost={INSTALLED_BIN} restore")),
            "{template}: ExecStopPost= must run `{INSTALLED_BIN} restore`"
        );
        std::fs::write(dir.path().join(template), text.replace(INSTALLED_BIN, bin)).unwrap();

        if with_credential {
            let dropins = dir.path().join(format!("{template}.d"));
            std::fs::create_dir(&dropins).unwrap();
            std::fs::copy(
                repo().join("systemd").join(CREDENTIAL_DROPIN),
                dropins.join(CREDENTIAL_DROPIN),
            )
            .unwrap();
        }
        let instance = template.replace("@.", &format!("@{INSTANCE}."));
        UnitDir { dir, instance }
    }

    /// The instance's path: it does not exist as a file; systemd finds the template beside it.
    fn unit_path(&self) -> String {
        self.dir
            .path()
            .join(&self.instance)
            .to_str()
            .unwrap()
            .to_owned()
    }
}

fn read_unit(name: &str) -> String {
    let path = repo().join("systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn verify(analyze: &Path, template: &str, with_credential: bool) {
    let units = UnitDir::new(template, with_credential);
    // --recursive-errors=no: judge our unit, not whatever the host's own units say.
    let out = run(
        analyze,
        &[
            "verify",
            "--man=no",
            "--recursive-errors=no",
            &units.unit_path(),
        ],
    );
    let dir = units.dir.path().to_str().unwrap();
    let ours: Vec<&str> = out
        .text
        .lines()
        .filter(|l| l.contains(dir) || l.contains("ssm-cosmovisor"))
        .collect();
    if !out.text.trim().is_empty() {
        eprintln!("systemd-analyze verify {}:\n{}", units.instance, out.text);
    }
    assert!(
        out.ok && ours.is_empty(),
        "systemd-analyze verify {} (credential drop-in: {with_credential}) is not clean:\n{}",
        units.instance,
        out.text
    );
}

/// The table of `systemd-analyze security` and its overall exposure level.
struct Security {
    exposure: f64,
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
    text: String,
}

fn security(analyze: &Path, template: &str) -> Security {
    let units = UnitDir::new(template, false);
    let out = run(analyze, &["security", "--offline=yes", &units.unit_path()]);
    assert!(
        out.ok,
        "systemd-analyze security {} failed:\n{}",
        units.instance, out.text
    );
    let mut passed = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut exposure = None;
    for line in out.text.lines() {
        // "-> Overall exposure level for NAME: 1.2 OK :-)" (or with UTF-8 glyphs)
        if let Some(rest) = line.split("Overall exposure level for ").nth(1) {
            let value = rest.rsplit_once(": ").map_or("", |(_, v)| v);
            let number = value.split_whitespace().next().unwrap_or("");
            exposure = Some(
                number
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("cannot read the exposure level in {line:?}")),
            );
            continue;
        }
        // "+ Name   description" (passed) or "- Name   description   0.2" (failed)
        let mut words = line.split_whitespace();
        let (Some(mark), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        match mark {
            "+" | "\u{2713}" => {
                passed.insert(name.to_owned());
            }
            "-" | "\u{2717}" => {
                failed.insert(name.to_owned());
            }
            _ => {}
        }
    }
    let exposure = exposure.unwrap_or_else(|| {
        panic!(
            "no overall exposure level for {} in:\n{}",
            units.instance, out.text
        )
    });
    Security {
        exposure,
        passed,
        failed,
        text: out.text,
    }
}

fn require_passed(sec: &Security, unit: &str, checks: &[&str]) {
    for check in checks {
        assert!(
            sec.passed.contains(*check),
            "{unit}: systemd-analyze security no longer passes {check}:\n{}",
            sec.text
        );
    }
}

#[test]
fn units_verify_cleanly() {
    let Some(analyze) = systemd_analyze("units_verify_cleanly") else {
        return;
    };
    eprintln!("{}", version(&analyze));
    for template in [UNPRIVILEGED, SPLIT] {
        verify(&analyze, template, false);
        verify(&analyze, template, true);
    }
}

#[test]
fn unprivileged_unit_exposure() {
    let Some(analyze) = systemd_analyze("unprivileged_unit_exposure") else {
        return;
    };
    let sec = security(&analyze, UNPRIVILEGED);
    eprintln!(
        "{}: {UNPRIVILEGED} overall exposure {:.1} (limit {UNPRIVILEGED_MAX_EXPOSURE}); not passed: {:?}",
        version(&analyze),
        sec.exposure,
        sec.failed
    );
    assert!(
        sec.exposure <= UNPRIVILEGED_MAX_EXPOSURE,
        "{UNPRIVILEGED}: exposure {} > {UNPRIVILEGED_MAX_EXPOSURE}:\n{}",
        sec.exposure,
        sec.text
    );
    require_passed(
        &sec,
        UNPRIVILEGED,
        &[
            "User=/DynamicUser=",
            "PrivateUsers=",
            // Not ProtectProc=: hidepid= hides from the tool (the node's uid) what its
            // reader check must see (the unit's comment).
            "NoNewPrivileges=",
            "NotifyAccess=",
            "CapabilityBoundingSet=~CAP_SYS_ADMIN",
            "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
            "SystemCallFilter=~@resources",
            "SystemCallFilter=~@mount",
            "SystemCallFilter=~@debug",
            "ProtectSystem=",
            "ProtectHome=",
            "UMask=",
        ],
    );
}

#[test]
fn split_trust_unit_exposure() {
    let Some(analyze) = systemd_analyze("split_trust_unit_exposure") else {
        return;
    };
    let sec = security(&analyze, SPLIT);
    eprintln!(
        "{}: {SPLIT} overall exposure {:.1} (limit {SPLIT_MAX_EXPOSURE}); not passed: {:?}",
        version(&analyze),
        sec.exposure,
        sec.failed
    );
    assert!(
        sec.exposure <= SPLIT_MAX_EXPOSURE,
        "{SPLIT}: exposure {} > {SPLIT_MAX_EXPOSURE}:\n{}",
        sec.exposure,
        sec.text
    );
    require_passed(
        &sec,
        SPLIT,
        &[
            "NoNewPrivileges=",
            "NotifyAccess=",
            "AmbientCapabilities=",
            "ProtectProc=",
            "CapabilityBoundingSet=~CAP_SYS_ADMIN",
            "CapabilityBoundingSet=~CAP_SYS_PTRACE",
            "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
            "SystemCallFilter=~@resources",
            "SystemCallFilter=~@mount",
            "SystemCallFilter=~@debug",
            "ProtectSystem=",
            "ProtectHome=",
            "UMask=",
        ],
    );
}

/// Syscall groups as this systemd defines them (`systemd-analyze syscall-filter`).
struct Groups(BTreeMap<String, Vec<String>>);

impl Groups {
    fn load(analyze: &Path) -> Groups {
        let out = run(analyze, &["syscall-filter"]);
        assert!(
            out.ok,
            "systemd-analyze syscall-filter failed:\n{}",
            out.text
        );
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in out.text.lines() {
            if line.starts_with('@') {
                let name = line.trim().to_owned();
                groups.entry(name.clone()).or_default();
                current = Some(name);
            } else if line.starts_with('#') {
                // "# Unlisted system calls ...": the groups are over.
                current = None;
            } else {
                let item = line.trim();
                if item.is_empty() || item.starts_with('#') {
                    continue;
                }
                if let Some(group) = &current {
                    groups.get_mut(group).unwrap().push(item.to_owned());
                }
            }
        }
        for needed in ["@system-service", "@privileged", "@resources", "@known"] {
            assert!(
                groups.contains_key(needed),
                "no {needed} in `systemd-analyze syscall-filter`:\n{}",
                out.text
            );
        }
        Groups(groups)
    }

    /// A group with its nested groups expanded, or a single syscall name.
    fn expand(&self, item: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut seen = BTreeSet::new();
        self.expand_into(item, &mut out, &mut seen);
        out
    }

    fn expand_into(&self, item: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
        if !item.starts_with('@') {
            out.insert(item.to_owned());
            return;
        }
        if !seen.insert(item.to_owned()) {
            return;
        }
        let members = self
            .0
            .get(item)
            .unwrap_or_else(|| panic!("unknown syscall group {item}"));
        for member in members {
            self.expand_into(member, out, seen);
        }
    }

    /// The syscalls a unit's `SystemCallFilter=` lines allow, evaluated as systemd does: the
    /// first line decides allow-list or deny-list, each later line adds to or takes from the
    /// set, an empty assignment resets it. Only the allow-list form is used by our units.
    fn allowed_by(&self, unit: &str, text: &str) -> BTreeSet<String> {
        let mut allowed: Option<BTreeSet<String>> = None;
        for line in text.lines() {
            let Some(value) = line.trim().strip_prefix("SystemCallFilter=") else {
                continue;
            };
            if value.trim().is_empty() {
                allowed = None;
                continue;
            }
            let (deny, items) = match value.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, value),
            };
            let set = allowed.get_or_insert_with(|| {
                assert!(
                    !deny,
                    "{unit}: the first SystemCallFilter= must be an allow list"
                );
                BTreeSet::new()
            });
            for item in items.split_whitespace() {
                // "name:errno" sets a per-call error number; the name is what matters here.
                let name = item.split(':').next().unwrap();
                let calls = self.expand(name);
                if deny {
                    set.retain(|c| !calls.contains(c));
                } else {
                    set.extend(calls);
                }
            }
        }
        allowed.unwrap_or_else(|| panic!("{unit}: no SystemCallFilter= allow list"))
    }
}

#[test]
fn syscall_filter_facts_and_coverage() {
    let Some(analyze) = systemd_analyze("syscall_filter_facts_and_coverage") else {
        return;
    };
    let groups = Groups::load(&analyze);
    let in_group = |call: &str, group: &str| groups.expand(group).contains(call);

    // The facts the units rest on. If one changes, revisit the units' SystemCallFilter= lines
    // (and their comments) before changing this test.
    assert!(
        in_group("memfd_secret", "@known"),
        "this systemd does not know memfd_secret: naming it in SystemCallFilter= is an error"
    );
    assert!(
        !in_group("memfd_secret", "@system-service"),
        "memfd_secret is now in @system-service: the explicit name in the units is redundant"
    );
    for group in ["@privileged", "@resources"] {
        assert!(
            !in_group("memfd_secret", group),
            "memfd_secret is now in {group}"
        );
    }
    assert!(
        in_group("capset", "@privileged"),
        "capset is no longer in @privileged: the units' extra capset line is redundant"
    );
    for call in ["setuid", "setgroups", "fchown", "setfsuid"] {
        assert!(
            in_group(call, "@privileged"),
            "{call} is no longer in @privileged"
        );
    }
    assert!(
        !in_group("prlimit64", "@resources") && in_group("setrlimit", "@resources"),
        "RLIMIT_CORE is set with prlimit64, which the units allow because it is outside \
         @resources; that no longer holds"
    );
    assert!(
        !in_group("fanotify_init", "@system-service"),
        "fanotify_init is now in @system-service: update the split unit's fanotify comment"
    );

    for (template, needed, denied) in [
        (
            UNPRIVILEGED,
            vec![NEEDED_ALWAYS],
            vec![DENIED_ALWAYS, DENIED_UNPRIVILEGED],
        ),
        (
            SPLIT,
            vec![NEEDED_ALWAYS, NEEDED_SPLIT],
            vec![DENIED_ALWAYS],
        ),
    ] {
        let allowed = groups.allowed_by(template, &read_unit(template));
        let missing: Vec<&str> = needed
            .iter()
            .flat_map(|l| l.iter().copied())
            .filter(|c| !allowed.contains(*c))
            .collect();
        assert!(
            missing.is_empty(),
            "{template} denies needed syscalls: {missing:?}"
        );
        let leaked: Vec<&str> = denied
            .iter()
            .flat_map(|l| l.iter().copied())
            .filter(|c| allowed.contains(*c))
            .collect();
        assert!(
            leaked.is_empty(),
            "{template} allows syscalls it must not: {leaked:?}"
        );
    }
}

/// Directives whose values the design depends on, read from the unit text (the tools above do
/// not judge these).
#[test]
fn unit_settings_the_design_depends_on() {
    let settings = |name: &str| -> Vec<(String, String)> {
        read_unit(name)
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    };
    let last = |all: &[(String, String)], key: &str| -> Option<String> {
        all.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    for unit in [UNPRIVILEGED, SPLIT] {
        let s = settings(unit);
        let want = |key: &str, value: &str| {
            assert_eq!(last(&s, key).as_deref(), Some(value), "{unit}: {key}=");
        };
        want("Type", "notify");
        want("NotifyAccess", "main");
        want("KillMode", "mixed");
        want("SystemCallErrorNumber", "EPERM");
        want("LimitCORE", "0");
        // The key must not reach swap through the node either (security.md).
        want("MemorySwapMax", "0");
        want("NoNewPrivileges", "yes");
        want("EnvironmentFile", "/etc/ssm-cosmovisor/%i.env");
        // Secret memory counts against RLIMIT_MEMLOCK; 0 breaks it.
        let memlock = last(&s, "LimitMEMLOCK").expect("LimitMEMLOCK= set");
        assert!(
            memlock != "0",
            "{unit}: LimitMEMLOCK=0 breaks secret memory"
        );
        // Configuration errors, a slot that needs an operator and a possibly exposed key stay
        // failed; everything else is retried (reasons in the units).
        want("RestartPreventExitStatus", "2 4 6");
        want("Restart", "on-failure");
        // /run read-only stated explicitly (systemd 252 left it writable with ProtectProc= and
        // friends), a private /dev/shm, no host hugepages; tests/systemd_real.rs measures it.
        want("ReadOnlyPaths", "/run");
        want(
            "TemporaryFileSystem",
            "/dev/shm:mode=1777,nosuid,nodev,noexec",
        );
        want("InaccessiblePaths", "-/dev/hugepages");
        // CosmWasm's JIT needs writable-then-executable memory.
        assert!(
            last(&s, "MemoryDenyWriteExecute").is_none(),
            "{unit}: breaks CosmWasm"
        );
    }
    let split = settings(SPLIT);
    assert!(
        last(&split, "User").is_none(),
        "{SPLIT}: must start as root"
    );
    assert_ne!(
        last(&split, "PrivateUsers").as_deref(),
        Some("yes"),
        "{SPLIT}: uid switch"
    );
    assert_eq!(
        last(&split, "RuntimeDirectory").as_deref(),
        Some("ssm-cosmovisor/%i"),
        "{SPLIT}: relocated key slot on tmpfs"
    );
    let caps = last(&split, "CapabilityBoundingSet").unwrap_or_default();
    let caps: BTreeSet<&str> = caps.split_whitespace().collect();
    assert_eq!(
        caps,
        [
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_SETPCAP"
        ]
        .into_iter()
        .collect(),
        "{SPLIT}: capability bounding set (CAP_SETPCAP: the child's bounding set is emptied)"
    );
    // Root's configuration names the key path; the runtime directory gets its safe key from
    // /etc, and a failure there must reach the main process as exit 4 (`-`), because systemd
    // restarts after a failed ExecStartPre= whatever RestartPreventExitStatus= says.
    assert_eq!(
        last(&split, "Environment").as_deref(),
        Some("SSM_COSMOVISOR_KEY_FILE=/run/ssm-cosmovisor/%i/priv_validator_key.json"),
        "{SPLIT}: key path from root's configuration"
    );
    assert_eq!(
        last(&split, "ExecStartPre").as_deref(),
        Some(&*format!(
            "-{INSTALLED_BIN} install-safe-key /etc/ssm-cosmovisor/%i.safe.json"
        )),
        "{SPLIT}: safe key into the runtime directory"
    );
    let unpriv = settings(UNPRIVILEGED);
    assert_eq!(last(&unpriv, "CapabilityBoundingSet").as_deref(), Some(""));
    assert_eq!(last(&unpriv, "PrivateUsers").as_deref(), Some("yes"));

    let dropin = settings(CREDENTIAL_DROPIN);
    assert_eq!(
        last(&dropin, "LoadCredentialEncrypted").as_deref(),
        Some("validator-key:/etc/ssm-cosmovisor/%i.key.cred")
    );
    assert_eq!(
        last(&dropin, "Environment").as_deref(),
        Some("KEY_SOURCE=credential:validator-key")
    );
}
