//! Metrics from outside (issue 14): the real binary with its textfile and its
//! `/metrics` endpoint, scraped while real things happen (a delivery, an
//! upgrade re-arm, a refused reader, a lease handover between two hosts),
//! parsed by the Python client's parsers, never by our code. Bad settings
//! fail at start, naming the variable, and change nothing.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::lease::{self as lease_support, Host};
use support::*;

const PARAM: &str = "/validators/metrics/priv_validator_key";
const T: Duration = Duration::from_secs(40);

/// Every metric family the README's Monitoring table lists, as sample names
/// (counters with `_total`; the histograms by their `_count`).
const ALWAYS: &[&str] = &[
    "ssm_cosmovisor_build_info",
    "ssm_cosmovisor_start_time_seconds",
    "ssm_cosmovisor_role",
    "ssm_cosmovisor_signer_since_timestamp_seconds",
    "ssm_cosmovisor_lease_remaining_seconds",
    "ssm_cosmovisor_lease_deadline_timestamp_seconds",
    "ssm_cosmovisor_lease_renewals_total",
    "ssm_cosmovisor_lease_renewal_failures_total",
    "ssm_cosmovisor_lease_losses_total",
    "ssm_cosmovisor_lease_record_impersonations_total",
    "ssm_cosmovisor_lease_takeovers_total",
    "ssm_cosmovisor_sign_state_height",
    "ssm_cosmovisor_sign_state_round",
    "ssm_cosmovisor_sign_state_step",
    "ssm_cosmovisor_sign_state_raises_total",
    "ssm_cosmovisor_guard_checks_total",
    "ssm_cosmovisor_guard_endpoints_unusable",
    "ssm_cosmovisor_guard_last_check_timestamp_seconds",
    "ssm_cosmovisor_key_deliveries_total",
    "ssm_cosmovisor_key_delivery_duration_seconds_count",
    "ssm_cosmovisor_last_delivery_timestamp_seconds",
    "ssm_cosmovisor_fetch_duration_seconds_count",
    "ssm_cosmovisor_fetch_errors_total",
    "ssm_cosmovisor_child_starts_total",
    "ssm_cosmovisor_child_exits_total",
    "ssm_cosmovisor_slot_state",
    "ssm_cosmovisor_metrics_write_errors_total",
];

/// A free loopback address for the endpoint.
fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Both views of one process: its textfile and its endpoint.
struct Views {
    file: PathBuf,
    addr: String,
}

impl Views {
    fn new(home: &NodeHome) -> Views {
        let dir = home.scratch("textfile");
        std::fs::create_dir_all(&dir).unwrap();
        Views {
            file: dir.join("ssm-cosmovisor.prom"),
            addr: free_addr(),
        }
    }

    fn env(&self, c: &mut Command) {
        c.env("SSM_COSMOVISOR_METRICS_FILE", &self.file)
            .env("SSM_COSMOVISOR_METRICS_ADDR", &self.addr);
    }

    fn file(&self) -> Scrape {
        read_textfile(&self.file)
    }

    fn endpoint(&self) -> Scrape {
        scrape_endpoint(&self.addr)
    }

    /// Waits until `cond` holds in the file *and* the endpoint.
    fn wait(&self, what: &str, tool: &Tool, cond: impl Fn(&Scrape) -> bool) -> (Scrape, Scrape) {
        // Neither exists for the first instants of the process.
        let ok = wait_for(
            || {
                self.file.exists()
                    && http_get(&self.addr, "/metrics", None).is_ok()
                    && cond(&self.file())
                    && cond(&self.endpoint())
            },
            T,
        );
        assert!(
            ok,
            "{what}: never seen in both;\nfile:\n{}\nlog:\n{}",
            std::fs::read_to_string(&self.file).unwrap_or_default(),
            tool.log_text()
        );
        (self.file(), self.endpoint())
    }
}

/// The families scraped are those of the README's table, with its types
/// (`absent`: families that cannot exist in this run).
fn assert_families_are_the_readmes(s: &Scrape, absent: &[&str]) {
    let mut want: Vec<(String, String)> = readme_metrics()
        .into_iter()
        .filter(|(n, _)| !absent.contains(&n.as_str()))
        .map(|(n, k)| {
            // The text parser names a counter's family without `_total`.
            let fam = match k.as_str() {
                "counter" => n
                    .strip_suffix("_total")
                    .expect("counter named _total")
                    .to_string(),
                _ => n,
            };
            (fam, k)
        })
        .collect();
    let mut got: Vec<(String, String)> = s
        .types
        .iter()
        .filter(|(n, _)| n.starts_with("ssm_cosmovisor_"))
        .map(|(n, k)| (n.clone(), k.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "scraped families vs README Monitoring table");
}

fn deliveries(s: &Scrape, outcome: &str) -> f64 {
    s.val(
        "ssm_cosmovisor_key_deliveries_total",
        &[("outcome", outcome)],
    )
}

fn slot_is(s: &Scrape, state: &str) -> bool {
    s.get("ssm_cosmovisor_slot_state", &[("state", state)]) == Some(1.0)
}

/// Neither view carries anything of the key (or the safe key's secret).
fn assert_no_secrets(v: &Views, key: &TestKey, home: &NodeHome) {
    for text in [
        std::fs::read_to_string(&v.file).unwrap(),
        http_get(&v.addr, "/metrics", None).unwrap().body,
        http_get(&v.addr, "/metrics", Some("application/openmetrics-text"))
            .unwrap()
            .body,
    ] {
        assert_no_key_material(&text, key);
        assert_no_key_material(&text, &home.safe_key);
        assert!(
            !text.contains("AKID") && !text.contains("test-secret"),
            "{text}"
        );
    }
}

/// `run start` as the signer with JSON logs and both metrics views.
fn signer_cmd(home: &NodeHome, moto: &Moto, v: &Views) -> Command {
    let mut cmd = tool_cmd(home, Some(&moto.endpoint()));
    cmd.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_LOG_FORMAT", "json")
        .args(["run", "start", "--home"])
        .arg(home.path());
    v.env(&mut cmd);
    cmd
}

#[test]
fn metrics_follow_a_refused_reader_a_delivery_and_an_upgrade_re_arm() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::with_options(NodeHomeOptions {
        upgrades: 1,
        ..Default::default()
    });
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let v = Views::new(&home);
    let mut cmd = signer_cmd(&home, &moto, &v);
    // Each node start waits before it opens the key: time for a stranger
    // first, and a re-armed FIFO that stays long enough to be scraped.
    cmd.env("NODE_READ_DELAY_MS", "5000")
        .env("NODE_UPGRADE_AFTER_MS", "1500")
        .env("STANDIN_INSTANT_UPGRADE", "1");
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));

    // Armed, waiting for the node: a signer, one fetch, nothing delivered.
    let (f, e) = v.wait("armed", &tool, |s| slot_is(s, "armed"));
    for s in [&f, &e] {
        assert_eq!(s.val("ssm_cosmovisor_role", &[("role", "signer")]), 1.0);
        assert_eq!(s.val("ssm_cosmovisor_role", &[("role", "standby")]), 0.0);
        assert!(s.val("ssm_cosmovisor_signer_since_timestamp_seconds", &[]) > 1.7e9);
        assert_eq!(
            s.val("ssm_cosmovisor_fetch_duration_seconds_count", &[]),
            1.0
        );
        assert_eq!(
            s.val("ssm_cosmovisor_fetch_errors_total", &[("class", "denied")]),
            0.0
        );
        assert_eq!(s.val("ssm_cosmovisor_child_starts_total", &[]), 1.0);
        assert_eq!(deliveries(s, "refused"), 0.0);
        assert_eq!(deliveries(s, "delivered"), 0.0);
        assert_eq!(
            s.val("ssm_cosmovisor_last_delivery_timestamp_seconds", &[]),
            0.0
        );
        assert!(s
            .get("ssm_cosmovisor_seconds_since_last_delivery", &[])
            .is_none());
        for name in ALWAYS {
            assert!(
                s.names().iter().any(|n| n == name),
                "{name} missing:\n{}",
                s.raw
            );
        }
        // The classic text keeps counters typed (node_exporter reads it so).
        assert_eq!(
            s.types["ssm_cosmovisor_key_deliveries"], "counter",
            "{:?}",
            s.types
        );
        assert_eq!(
            s.types["ssm_cosmovisor_key_delivery_duration_seconds"],
            "histogram"
        );
    }
    assert!(f
        .get("ssm_cosmovisor_lease_held", &[("lease", "x")])
        .is_none());

    // A stranger opens the FIFO first: refused 0 -> 1, nothing delivered.
    let mut rogue = spawn_stranger(home.key_path());
    assert_eq!(stranger_bytes(&mut rogue), 0, "the stranger got bytes");
    let (f, e) = v.wait("refused", &tool, |s| deliveries(s, "refused") == 1.0);
    for s in [&f, &e] {
        // The node (its read delayed) may have read by now, never twice.
        let delivered = deliveries(s, "delivered");
        assert!(delivered <= 1.0, "{}", s.raw);
        assert_eq!(
            s.val("ssm_cosmovisor_key_delivery_duration_seconds_count", &[]),
            delivered
        );
    }

    // The node reads: delivered 0 -> 1, the stripped key at the path.
    let (f, e) = v.wait("delivered", &tool, |s| deliveries(s, "delivered") == 1.0);
    for s in [&f, &e] {
        assert_families_are_the_readmes(s, &["ssm_cosmovisor_lease_held"]);
        assert_eq!(
            s.val("ssm_cosmovisor_key_delivery_duration_seconds_count", &[]),
            1.0
        );
        assert!(s.val("ssm_cosmovisor_last_delivery_timestamp_seconds", &[]) > 1.7e9);
        assert!(s
            .get("ssm_cosmovisor_seconds_since_last_delivery", &[])
            .is_some());
    }

    // Its upgrade marker re-arms the FIFO (seen while the restarted node
    // waits), then the upgraded node reads: delivered 1 -> 2.
    v.wait("re-armed for the upgraded node", &tool, |s| {
        slot_is(s, "armed") && deliveries(s, "delivered") == 1.0
    });
    let (f, e) = v.wait("delivered to the upgraded node", &tool, |s| {
        deliveries(s, "delivered") == 2.0 && slot_is(s, "delivered")
    });
    for s in [&f, &e] {
        assert_eq!(deliveries(s, "refused"), 1.0);
        assert_eq!(deliveries(s, "exposed"), 0.0);
        // cosmovisor restarted the node itself: still one child start.
        assert_eq!(s.val("ssm_cosmovisor_child_starts_total", &[]), 1.0);
    }
    assert_no_secrets(&v, &key, &home);

    // Stopped: the file outlives the process and says the slot is idle.
    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tool.log_text());
    assert_clean_idle(&home);
    let f = v.file();
    assert!(slot_is(&f, "idle"), "{}", f.raw);
    assert_eq!(
        f.val("ssm_cosmovisor_child_exits_total", &[("status", "success")]),
        1.0
    );
    assert_eq!(deliveries(&f, "delivered"), 2.0);
    assert!(
        http_get(&v.addr, "/metrics", None).is_err(),
        "the endpoint outlived the process"
    );
    // No temporary file was left in the textfile directory.
    let names: Vec<_> = std::fs::read_dir(v.file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["ssm-cosmovisor.prom".to_string()]);

    // What a real node_exporter makes of the file: read without error, the
    // counters still counters.
    let Some(bin) = node_exporter_bin() else {
        eprintln!("node_exporter not fetched (scripts/test does it when apt-get can): the textfile was checked by the Python parser only");
        return;
    };
    let (_ne, ne_addr) = start_node_exporter(&bin, v.file.parent().unwrap());
    let body = http_get(&ne_addr, "/metrics", None).unwrap().body;
    let ne = parse_metrics(&body, PromFormat::Text);
    assert_eq!(ne.val("node_textfile_scrape_error", &[]), 0.0, "{body}");
    assert_eq!(deliveries(&ne, "delivered"), 2.0, "{body}");
    assert_eq!(
        ne.types["ssm_cosmovisor_key_deliveries"], "counter",
        "{body}"
    );
    assert_eq!(
        ne.types["ssm_cosmovisor_key_delivery_duration_seconds"],
        "histogram"
    );
    println!(
        "node_exporter read the textfile: {} ssm_cosmovisor samples",
        ne.names()
            .iter()
            .filter(|n| n.starts_with("ssm_cosmovisor_"))
            .count()
    );
}

#[test]
fn a_lease_handover_moves_lease_held_from_the_old_holder_to_the_new_one() {
    let (moto, key) = lease_support::setup();
    let ep = moto.endpoint();
    let a = Host::new("a");
    let b = Host::new("b");
    let _ra = StrayReaper(a.home.root.path().to_path_buf());
    let _rb = StrayReaper(b.home.root.path().to_path_buf());
    let (va, vb) = (Views::new(&a.home), Views::new(&b.home));

    let mut ca = a.cmd(&ep);
    va.env(&mut ca);
    let (mut ta, _) = a.start_holder(&mut ca, &key);
    let lease = ta.events("lease_config")[0]["lease"]
        .as_str()
        .unwrap()
        .to_string();
    let held = |s: &Scrape| s.get("ssm_cosmovisor_lease_held", &[("lease", lease.as_str())]);
    let (fa, _) = va.wait("A holds and renews", &ta, |s| {
        held(s) == Some(1.0) && s.val("ssm_cosmovisor_lease_renewals_total", &[]) >= 1.0
    });
    assert_eq!(
        fa.val("ssm_cosmovisor_lease_takeovers_total", &[("kind", "free")]),
        1.0
    );
    let left = fa.val("ssm_cosmovisor_lease_remaining_seconds", &[]);
    assert!(
        left > 0.0 && left <= lease_support::DURATION_S as f64,
        "{left}"
    );
    assert!(fa.val("ssm_cosmovisor_lease_deadline_timestamp_seconds", &[]) > 1.7e9);

    let mut cb = b.cmd(&ep);
    vb.env(&mut cb);
    let mut tb = b.spawn(&mut cb);
    let (fb, _) = vb.wait("B stands by", &tb, |s| {
        s.val("ssm_cosmovisor_role", &[("role", "standby")]) == 1.0
    });
    assert_ne!(held(&fb), Some(1.0), "{}", fb.raw);
    assert_eq!(deliveries(&fb, "delivered"), 0.0);

    // A's node signs height 40; the renewal carries it into the lease.
    a.sign_carried(&ep, 40);
    va.wait("A's carried state", &ta, |s| {
        s.val("ssm_cosmovisor_sign_state_height", &[("which", "carried")]) == 40.0
    });

    // A stops and releases: lease held 1 -> 0 on A, 0 -> 1 on B, which
    // raises its state to what A carried and gets the key.
    let st = ta.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", ta.log_text());
    let fa = va.file();
    assert_eq!(held(&fa), Some(0.0), "{}", fa.raw);
    assert_eq!(fa.val("ssm_cosmovisor_lease_remaining_seconds", &[]), 0.0);
    assert_eq!(fa.val("ssm_cosmovisor_lease_losses_total", &[]), 0.0);
    let (fb, eb) = vb.wait("B took over", &tb, |s| {
        held(s) == Some(1.0) && deliveries(s, "delivered") == 1.0
    });
    for s in [&fb, &eb] {
        assert_eq!(
            s.val(
                "ssm_cosmovisor_lease_takeovers_total",
                &[("kind", "released")]
            ),
            1.0
        );
        assert_eq!(
            s.val(
                "ssm_cosmovisor_lease_takeovers_total",
                &[("kind", "expired")]
            ),
            0.0
        );
        assert_eq!(s.val("ssm_cosmovisor_role", &[("role", "signer")]), 1.0);
        assert_eq!(s.val("ssm_cosmovisor_role", &[("role", "standby")]), 0.0);
        assert_eq!(
            s.val("ssm_cosmovisor_sign_state_height", &[("which", "carried")]),
            40.0
        );
        assert_eq!(
            s.val("ssm_cosmovisor_sign_state_height", &[("which", "raised")]),
            40.0
        );
        assert_eq!(s.val("ssm_cosmovisor_sign_state_raises_total", &[]), 1.0);
        // The keyless child made way for the keyed one.
        assert_eq!(s.val("ssm_cosmovisor_child_starts_total", &[]), 2.0);
    }
    assert_families_are_the_readmes(&fb, &[]);
    assert_no_secrets(&vb, &key, &b.home);
    let st = tb.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tb.log_text());
    assert_eq!(held(&vb.file()), Some(0.0));
}

/// `cmd` run in a mount namespace where `dir` is mounted read-only (what
/// `ProtectSystem=strict` does to a path not in `ReadWritePaths=`).
fn with_read_only(cmd: &Command, dir: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind -o ro \"$0\" \"$0\" && exec \"$@\"")
        .arg(dir)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

#[test]
fn bad_metrics_settings_fail_at_start_naming_the_variable_and_change_nothing() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let ro = home.scratch("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    let dir = home.scratch("a-directory.prom");
    std::fs::create_dir_all(&dir).unwrap();
    let base = || {
        let mut c = tool_cmd(&home, Some(&moto.endpoint()));
        c.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .args(["run", "start", "--home"])
            .arg(home.path());
        c
    };
    let file = |p: &Path| {
        let mut c = base();
        c.env("SSM_COSMOVISOR_METRICS_FILE", p);
        c
    };
    let addr = |a: &str| {
        let mut c = base();
        c.env("SSM_COSMOVISOR_METRICS_ADDR", a);
        c
    };
    let mut cases: Vec<(&str, Command, &[&str])> = vec![
        (
            "missing directory",
            file(&home.scratch("no-such-dir/m.prom")),
            &["SSM_COSMOVISOR_METRICS_FILE", "does not exist"],
        ),
        (
            "a directory",
            file(&dir),
            &["SSM_COSMOVISOR_METRICS_FILE", "is a directory"],
        ),
        (
            "not .prom",
            file(&home.scratch("m.txt")),
            &["SSM_COSMOVISOR_METRICS_FILE", ".prom"],
        ),
        (
            "non-loopback",
            addr("0.0.0.0:9464"),
            &[
                "SSM_COSMOVISOR_METRICS_ADDR",
                "SSM_COSMOVISOR_METRICS_ALLOW_REMOTE",
            ],
        ),
        (
            "host name",
            addr("localhost:9464"),
            &["SSM_COSMOVISOR_METRICS_ADDR", "IP:PORT"],
        ),
    ];
    if is_root() && Command::new("unshare").arg("--help").output().is_ok() {
        cases.push((
            "read-only directory",
            with_read_only(&file(&ro.join("m.prom")), &ro),
            &[
                "SSM_COSMOVISOR_METRICS_FILE",
                "read-only",
                "ReadWritePaths=",
            ],
        ));
    } else {
        eprintln!("not root or no unshare: the read-only mount case is skipped");
    }
    let before = dir_snapshot(home.key_path().parent().unwrap());
    for (what, mut c, want) in cases {
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        for w in want {
            assert!(err.contains(w), "{what}: no {w:?} in: {err}");
        }
        // Nothing else happened: no child, no fetch, the slot untouched.
        assert!(
            !err.contains("child_started") && !err.contains("fetched"),
            "{what}: {err}"
        );
        assert_eq!(
            dir_snapshot(home.key_path().parent().unwrap()),
            before,
            "{what}"
        );
        home.assert_idle();
    }
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);

    // `check` reports the same refusal (and binds or writes nothing).
    let mut c = tool_cmd(&home, Some(&moto.endpoint()));
    c.env("USE_SSM_KEY", "true")
        .env("AWS_PARAMETER", PARAM)
        .env("SSM_COSMOVISOR_METRICS_ADDR", "0.0.0.0:9464")
        .arg("check");
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("metrics"))
        .unwrap_or_else(|| panic!("no metrics line in:\n{text}"));
    assert!(
        line.contains("SSM_COSMOVISOR_METRICS_ALLOW_REMOTE"),
        "{line}"
    );
}

/// A metrics write that never returns (a hung file system) stalls only the
/// writer thread: the node still gets its key, the endpoint still answers,
/// and a stop still restores the slot (the exit waits 2 s for the file).
#[test]
fn a_hung_metrics_write_does_not_hold_up_the_key() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let v = Views::new(&home);
    let mut cmd = signer_cmd(&home, &moto, &v);
    cmd.env("SSM_COSMOVISOR_FAILPOINT", "metrics-write-hangs");
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));
    assert!(
        wait_for(
            || complete_reports(&home)
                .iter()
                .any(|r| r["pub_key"] == key.pub_b64.as_str()),
            T
        ),
        "the node never got the key; log:\n{}",
        tool.log_text()
    );
    let e = v.endpoint();
    assert_eq!(deliveries(&e, "delivered"), 1.0);
    // The file still holds what init wrote: nothing since.
    let f = v.file();
    assert_eq!(deliveries(&f, "delivered"), 0.0);
    assert!(!slot_is(&f, "delivered"), "{}", f.raw);
    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tool.log_text());
    assert_clean_idle(&home);
    assert!(
        tool.log_text().contains("was not rewritten in time"),
        "{}",
        tool.log_text()
    );
}

/// A fetch that fails ends the run (exit 3); the textfile, flushed before
/// the exit, keeps the error by class for the alert that counts restarts.
#[test]
fn a_failed_fetch_is_in_the_textfile_after_the_exit() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let v = Views::new(&home);
    let mut cmd = signer_cmd(&home, &moto, &v);
    cmd.env("AWS_PARAMETER", "/validators/metrics/no-such-parameter");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = v.file();
    assert_eq!(
        f.val(
            "ssm_cosmovisor_fetch_errors_total",
            &[("class", "not_found")]
        ),
        1.0,
        "{}",
        f.raw
    );
    assert_eq!(
        f.val("ssm_cosmovisor_fetch_errors_total", &[("class", "denied")]),
        0.0
    );
    assert_eq!(
        f.val("ssm_cosmovisor_fetch_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(f.val("ssm_cosmovisor_child_starts_total", &[]), 0.0);
    assert!(slot_is(&f, "idle"), "{}", f.raw);
    home.assert_idle();
}

/// Issue 20 (a): any local user can bind the metrics port first. That must
/// not stop signing: the run goes on, logs the address and what to do, the
/// textfile says the endpoint is down, and the endpoint comes up once the
/// port is free. (Before: exit 2, which the units never restart.)
#[test]
fn a_taken_metrics_port_does_not_stop_signing_and_is_served_once_free() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let v = Views::new(&home);
    let squatter = TcpListener::bind(&v.addr).unwrap();
    let mut tool = Tool::spawn(&mut signer_cmd(&home, &moto, &v), home.scratch("tool.log"));
    let got_key = || {
        complete_reports(&home)
            .iter()
            .any(|r| r["pub_key"] == key.pub_b64.as_str())
    };
    assert!(
        wait_for(got_key, T),
        "the node never got the key; log:\n{}",
        tool.log_text()
    );
    let down = tool.events("metrics_endpoint_down");
    assert_eq!(down.len(), 1, "{}", tool.log_text());
    assert_eq!(down[0]["addr"], v.addr.as_str(), "{}", down[0]);
    assert_eq!(down[0]["level"], "ERROR", "{}", down[0]);
    assert!(
        wait_for(
            || {
                let f = v.file();
                f.get("ssm_cosmovisor_metrics_endpoint_up", &[]) == Some(0.0)
                    && deliveries(&f, "delivered") == 1.0
            },
            T
        ),
        "{}",
        std::fs::read_to_string(&v.file).unwrap_or_default()
    );

    // The port is freed: the endpoint comes up by itself, and says so.
    drop(squatter);
    let (f, e) = v.wait("endpoint up", &tool, |s| {
        s.get("ssm_cosmovisor_metrics_endpoint_up", &[]) == Some(1.0)
    });
    assert_eq!(deliveries(&e, "delivered"), 1.0);
    assert_families_are_the_readmes(&f, &["ssm_cosmovisor_lease_held"]);
    assert_eq!(tool.events("metrics_endpoint").len(), 1);
    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tool.log_text());
    assert_clean_idle(&home);
}

/// Issue 20 (b): a client trickling a byte every 1.5 s, then 300 idle
/// connections, while a scraper scrapes. Each connection has 2 s in all and
/// they are served side by side: every scrape is answered; the trickler is
/// cut off; the process holds at most 32 of the idle connections. (Before:
/// 2 s per read, one connection at a time: the scrapes time out.)
#[test]
fn slow_and_idle_clients_do_not_hold_up_a_scrape() {
    let (moto, key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let v = Views::new(&home);
    let mut tool = Tool::spawn(&mut signer_cmd(&home, &moto, &v), home.scratch("tool.log"));
    v.wait("delivered", &tool, |s| deliveries(s, "delivered") == 1.0);
    let pid = tool.child.pid();

    let slow = Trickler::start(&v.addr, Duration::from_millis(1500));
    let under_trickle = timed_scrapes(&v.addr, 5, Duration::from_secs(1));
    println!("scrapes while a client trickles a byte every 1.5 s: {under_trickle:?}");
    assert!(under_trickle.iter().all(Result::is_ok), "{under_trickle:?}");
    assert!(
        wait_for(|| slow.closed_after().is_some(), T),
        "the trickling client was never cut off ({} bytes sent)",
        slow.sent()
    );
    println!(
        "the trickler was closed after {:?}, {} header bytes sent",
        slow.closed_after().unwrap(),
        slow.sent()
    );

    let before = socket_fds(pid);
    let idle = idle_connections(&v.addr, 300);
    let under_idle = timed_scrapes(&v.addr, 5, Duration::from_millis(200));
    let held = socket_fds(pid).saturating_sub(before);
    println!("scrapes with 300 idle connections open: {under_idle:?}; the tool holds {held} more sockets");
    assert!(under_idle.iter().all(Result::is_ok), "{under_idle:?}");
    assert!(held <= 32, "{held} sockets held for 300 idle connections");
    drop(idle);
    let e = v.endpoint();
    assert_eq!(deliveries(&e, "delivered"), 1.0);
    assert_no_secrets(&v, &key, &home);
    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tool.log_text());
}

/// Issue 20 (c): the textfile's temporary name was `.<name>.<pid>.tmp`, so
/// whoever can write the directory could plant a directory there once the
/// pid was known: every later rewrite failed and the file kept showing a
/// healthy, stale state. Now the name is random and the delivery that comes
/// after the planting is in the file, with no write error.
#[test]
fn a_directory_planted_at_the_predictable_temporary_name_does_not_freeze_the_textfile() {
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let v = Views::new(&home);
    let mut cmd = signer_cmd(&home, &moto, &v);
    // The node opens the key 4 s after it starts: time to plant first.
    cmd.env("NODE_READ_DELAY_MS", "4000");
    let mut tool = Tool::spawn(&mut cmd, home.scratch("tool.log"));
    assert!(wait_for(|| v.file.exists(), T), "{}", tool.log_text());
    let dir = v.file.parent().unwrap();
    let planted = dir.join(format!(".ssm-cosmovisor.prom.{}.tmp", tool.child.pid()));
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("x"), "keeps it non-empty").unwrap();
    assert!(
        wait_for(
            || http_get(&v.addr, "/metrics", None).is_ok()
                && deliveries(&v.endpoint(), "delivered") == 1.0,
            T
        ),
        "{}",
        tool.log_text()
    );
    let recorded = wait_for(
        || deliveries(&v.file(), "delivered") == 1.0 && slot_is(&v.file(), "delivered"),
        Duration::from_secs(10),
    );
    let e = v.endpoint();
    let errors = e.val("ssm_cosmovisor_metrics_write_errors_total", &[]);
    println!("with a directory planted at the old temporary name: delivery in the file: {recorded}, write errors: {errors}");
    assert!(
        recorded,
        "the file never showed the delivery:\n{}",
        v.file().raw
    );
    assert_eq!(errors, 0.0, "{}", e.raw);
    assert!(planted.is_dir(), "the planted directory was touched");
    let st = tool.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", tool.log_text());
    assert!(slot_is(&v.file(), "idle"));
    // Nothing of ours is left beside the file and what was planted.
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// Issue 20 (c): the textfile's directory is opened as the key's is. A
/// directory another user may write holds what the tool will write into:
/// a symlink to a directory of their choosing, or a directory of their own.
/// Before, root followed either and wrote the `.prom` file there; now the
/// start is refused (exit 2, naming what is wrong) and nothing is written.
#[test]
fn a_textfile_directory_another_user_chose_is_refused_at_start() {
    if !root_or_skip("the chosen directories belong to another user") {
        return;
    }
    let (moto, _key) = moto_with_key(PARAM);
    let home = NodeHome::new();
    let _reaper = StrayReaper(home.root.path().to_path_buf());
    let (uid, gid) = nobody();
    // Theirs: they may create and rename what is in it.
    let theirs = home.scratch("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    let chosen = home.scratch("chosen-by-them");
    std::fs::create_dir_all(&chosen).unwrap();
    std::os::unix::fs::symlink(&chosen, theirs.join("via-link")).unwrap();
    std::fs::create_dir(theirs.join("own")).unwrap();
    chown_tree(&theirs, uid, gid);
    for (i, (what, dir, want)) in [
        (
            "a symlink they made",
            theirs.join("via-link"),
            "symbolic link",
        ),
        ("a directory of theirs", theirs.join("own"), "owned by uid"),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.join("ssm-cosmovisor.prom");
        let mut c = tool_cmd(&home, Some(&moto.endpoint()));
        c.env("USE_SSM_KEY", "true")
            .env("AWS_PARAMETER", PARAM)
            .env("SSM_COSMOVISOR_METRICS_FILE", &file)
            .args(["run", "start", "--home"])
            .arg(home.path());
        let mut tool = Tool::spawn(&mut c, home.scratch(&format!("tool-{i}.log")));
        let st = tool.child.wait_timeout(Duration::from_secs(20));
        let log = tool.log_text();
        let written: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        println!(
            "{what}: exit {st:?}, {} entries written in the chosen directory",
            written.len()
        );
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{what}: {log}");
        assert!(
            log.contains("SSM_COSMOVISOR_METRICS_FILE") && log.contains(want),
            "{what}: {log}"
        );
        assert!(written.is_empty(), "{what}: written there: {written:?}");
        home.assert_idle();
    }
}
