//! `check`: the preflight an operator or auditor runs before `run`. It
//! changes nothing, prints no secret, and exits 0 only if `run` can work.

use std::path::Path;

use crate::config::{Config, Overrides, ProcessEnv, SourceSpec};
use crate::error::Exit;
use crate::lease::LeaseSettings;
use crate::slot::KeySlot;
use crate::source::{self, Origin};

mod cometbft;
use cometbft::Lookback;

#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn pass(&mut self, item: &str, detail: impl std::fmt::Display) {
        println!("PASS  {item}: {detail}");
    }
    fn warn(&mut self, item: &str, detail: impl std::fmt::Display) {
        println!("WARN  {item}: {detail}");
    }
    fn fail(&mut self, item: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        println!("FAIL  {item}: {detail}");
    }
    fn info(&mut self, item: &str, detail: impl std::fmt::Display) {
        println!("INFO  {item}: {detail}");
    }
}

fn find_on_path(program: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

fn kernel_checks(r: &mut Report) {
    let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    let cur = memlock.current;
    match cur {
        Some(b) if b < 16 * 1024 => r.fail(
            "RLIMIT_MEMLOCK",
            format!("{b} bytes: too low for secret memory (memfd_secret and mlock both count against it); set LimitMEMLOCK=64K or more"),
        ),
        Some(b) => r.pass("RLIMIT_MEMLOCK", format!("{} KiB", b / 1024)),
        None => r.pass("RLIMIT_MEMLOCK", "unlimited"),
    }
    match crate::sys::memfd_secret_available() {
        Ok(()) => r.pass("memfd_secret", "available: the key is kept out of the kernel's direct map"),
        Err(e) => r.warn(
            "memfd_secret",
            format!("unavailable ({e}); falling back to mlock+MADV_DONTDUMP (if under a seccomp filter, allow memfd_secret by name)"),
        ),
    }
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(s) => {
            let v = s.trim();
            let meaning = match v {
                "0" => "classic: same-uid processes may ptrace each other (the node's uid could read the node's memory)",
                "1" => "restricted: only ancestors may ptrace",
                "2" => "admin-only ptrace",
                "3" => "no ptrace",
                _ => "unknown",
            };
            if v == "0" {
                r.warn("Yama ptrace_scope", format!("{v} ({meaning})"));
            } else {
                r.pass("Yama ptrace_scope", format!("{v} ({meaning})"));
            }
        }
        Err(_) => r.warn(
            "Yama ptrace_scope",
            "Yama not present: same-uid ptrace is governed by dumpable only",
        ),
    }
}

/// The reader check at delivery fails closed on any live task of the
/// node's uid whose fd table cannot be read (a non-dumpable program of the
/// node's user, e.g. ssh-agent, or a process hiding its fds): name each one
/// now, rather than in a delivery that fails at start. Other instances of our
/// own systemd unit are recognised and only warned about.
fn reader_check(r: &mut Report, node: crate::identity::NodeIdentity) {
    use crate::procfs::{self, Pid};
    let uid = node.uid();
    // As this process sees /proc: run from a shell, not the unit's own view
    // (the unit's ProtectProc= is checked at every start of `run`).
    match procfs::verify_sees_all() {
        Ok(_) => r.pass(
            "/proc",
            "lists every process (no hidepid= hides any from this check)",
        ),
        Err(e) => r.fail("/proc", e),
    }
    let me = Pid(std::process::id() as i32);
    let found = match procfs::uninspectable(me, node) {
        Ok(f) => f,
        Err(e) => {
            r.fail("reader check", e);
            return;
        }
    };
    let (siblings, others): (Vec<_>, Vec<_>) = found.into_iter().partition(|u| u.sibling);
    for s in &siblings {
        r.warn(
            "reader check",
            format!(
                "pid {} ({}) is another instance of this unit under the same uid {uid}: it is not dumpable, so its fds cannot be read; it is recognised by its systemd unit and skipped. Validators sharing a uid can read each other's keys from their nodes: a dedicated uid per node is the boundary",
                s.pid, s.comm
            ),
        );
    }
    for o in &others {
        r.fail(
            "reader check",
            format!(
                "pid {} ({}, task {}) runs as the node's uid {uid} and its fd table cannot be read (not dumpable, or more privileged than this check): every delivery fails closed while it runs. Stop it, or run this node under a dedicated uid that nothing else uses",
                o.pid, o.comm, o.tid
            ),
        );
    }
    if others.is_empty() {
        r.pass(
            "reader check",
            format!(
                "every other process of uid {uid} can be inspected{}",
                if siblings.is_empty() {
                    String::new()
                } else {
                    format!(" ({} recognised instance(s) of this unit)", siblings.len())
                }
            ),
        );
    }
}

/// The node's sign state where the node keeps it (`priv_validator_state_file`
/// of `config.toml`, as the lease reads it), not at a fixed path.
fn sign_state_check(r: &mut Report, cfg: &Config) {
    const ITEM: &str = "sign state";
    match crate::lease::StateFile::of_home(&cfg.home, cfg.node) {
        Err(e) => r.fail(ITEM, e),
        Ok(f) => match f.read() {
            Ok(Some(s)) => r.pass(ITEM, format!("{} at {}", s, f.path().display())),
            Ok(None) => r.warn(
                ITEM,
                format!(
                    "{} missing: CometBFT needs it to start (and to avoid double-signing)",
                    f.path().display()
                ),
            ),
            Err(e) => r.fail(ITEM, e),
        },
    }
}

/// The metrics settings as `run` reads them (nothing is written or bound).
fn metrics_check(r: &mut Report) {
    match crate::metrics::MetricsSettings::from_env(&ProcessEnv) {
        Ok(m) if m.is_off() => r.info("metrics", "off (SSM_COSMOVISOR_METRICS_FILE / _ADDR unset)"),
        Ok(m) => {
            if let Some(f) = &m.file {
                r.pass("metrics file", f.display());
            }
            if let Some(a) = &m.addr {
                r.pass("metrics endpoint", format!("http://{a}/metrics"));
            }
        }
        Err(e) => r.fail("metrics", e),
    }
}

/// CometBFT's own guard against a second signer: `[consensus]
/// double_sign_check_height = N` makes the node look for its key's
/// signatures in the last blocks before it joins consensus (a start after
/// another signer's takeover, or a lagging state file, docs/design.md §7.6).
/// 0 is no check; how many blocks N covers depends on the node's CometBFT
/// version ([`cometbft`]: N − 1 before cometbft#5668, so 1 checked nothing),
/// which is read from the node binary and said with the verdict.
fn double_sign_check(r: &mut Report, cfg: &Config) {
    const ITEM: &str = "double_sign_check_height";
    let value = match crate::config::double_sign_check_height(&cfg.home, cfg.node) {
        Ok(v) => v,
        Err((path, why)) => {
            r.warn(
                ITEM,
                format!("cannot read it from {}: {why}", path.display()),
            );
            return;
        }
    };
    let n = value.unwrap_or(0);
    let shown = match value {
        Some(n) => n.to_string(),
        None => "not set (CometBFT's default: 0)".into(),
    };
    let (lookback, version, basis) = version_basis(cfg);
    let (sure, most) = cometbft::blocks_checked(n, lookback);
    let exact = (lookback != Lookback::Unknown).then_some(sure);
    if sure >= 1 {
        let last = if sure == 1 {
            "the last block".to_string()
        } else {
            format!("one of the last {sure} blocks")
        };
        let or_more = if most > sure {
            format!(", or {most} with cometbft#5668's fix")
        } else {
            String::new()
        };
        r.pass(
            ITEM,
            format!("{n}: the node will not join consensus while its key signed {last}{or_more} ({basis})"),
        );
        tracing::info!(
            event = "double_sign_check_height",
            double_sign_check_height = n,
            cometbft_version = version,
            lookback_blocks = exact,
            "node's double-sign check is on"
        );
        return;
    }
    let why = match (n, lookback) {
        (0, _) => "0: the node never looks for its own recent signatures",
        (_, Lookback::NMinusOne) => "1 looks back over 0 blocks: no check at all",
        _ => "1 looks back over 0 blocks (no check at all) unless the node's CometBFT has cometbft#5668's fix",
    };
    if !cfg.use_ssm_key {
        r.info(
            ITEM,
            format!("{shown} ({why}; matters on the signer; {basis})"),
        );
        return;
    }
    let (at_least, covers) = match lookback {
        Lookback::N => (1, "N blocks"),
        Lookback::NMinusOne => (2, "N - 1 blocks"),
        Lookback::Unknown => (2, "N - 1 blocks (N with cometbft#5668's fix)"),
    };
    let advice = format!("set [consensus] double_sign_check_height = 10 ({at_least} or more) in config/config.toml: the node then refuses to join consensus while its key signed one of the last {covers}, which stops a second signer the lease could not (README, \"Failover lease\"; security.md); the price is that a node restarted right after signing waits about N blocks");
    r.warn(ITEM, format!("{shown}: {why} ({basis}); {advice}"));
    tracing::warn!(
        event = "double_sign_check_height",
        double_sign_check_height = n,
        cometbft_version = version,
        lookback_blocks = exact,
        recommended = 10,
        "{why}; {advice}"
    );
}

/// What a setting covers on the node's CometBFT, the version for the log
/// (`unknown` when not read), and the words saying which version was read
/// from where, or why none was.
fn version_basis(cfg: &Config) -> (Lookback, String, String) {
    match cometbft::read(cfg) {
        Ok((v, bin)) => {
            let lookback = cometbft::lookback(&v);
            let what = if lookback == Lookback::Unknown {
                format!("CometBFT replaced by {} (a fork: whether it has cometbft#5668's fix is not known)", v.text)
            } else {
                format!("CometBFT {}", v.text)
            };
            let basis = format!(
                "{what}, from `{} version --long`: {}",
                bin.display(),
                lookback.rule()
            );
            (lookback, v.text, basis)
        }
        Err(e) => {
            let basis = format!(
                "CometBFT version unknown ({e}): {}",
                Lookback::Unknown.rule()
            );
            (Lookback::Unknown, "unknown".into(), basis)
        }
    }
}

/// The failover lease: settings, the sign state it would carry, the table and
/// who holds the lease now (read only: `check` never takes it).
fn lease_checks(r: &mut Report, cfg: &Config, lease: Option<&LeaseSettings>) {
    use crate::lease::{LeaseClient, StateFile};
    let Some(s) = lease else {
        r.info(
            "failover lease",
            "none (SSM_COSMOVISOR_LEASE_TABLE unset): USE_SSM_KEY alone decides whether this host signs",
        );
        return;
    };
    r.pass(
        "failover lease",
        format!(
            "table {} (region {}) lease {} duration {:?} (renew every {:?}, node stopped {:?} after the last renewal sent; {} heights skipped after a takeover)",
            s.table,
            s.region.as_deref().unwrap_or("from AWS_REGION"),
            s.name,
            s.duration,
            s.renew_every(),
            s.keep_for(),
            s.takeover_heights
        ),
    );
    let state = match StateFile::of_home(&cfg.home, cfg.node) {
        Ok(s) => s,
        Err(e) => {
            r.fail("sign state", e);
            return;
        }
    };
    let local = state.read();
    match &local {
        Ok(st) => r.pass(
            "sign state",
            format!(
                "{} at {}",
                st.map(|x| x.to_string())
                    .unwrap_or_else(|| "none yet".into()),
                state.path.display()
            ),
        ),
        Err(e) => r.fail("sign state", e),
    }
    match LeaseClient::new(s.clone()).and_then(|c| c.read()) {
        Ok(None) => r.pass("lease table", "reachable; the lease is free"),
        Ok(Some(rec)) => {
            r.pass(
                "lease table",
                format!(
                    "reachable; lease {} by {} (carries {}, duration {:?})",
                    if rec.released { "released" } else { "held" },
                    rec.holder_id,
                    rec.state,
                    rec.duration
                ),
            );
            // What a takeover now would do to this host's sign state.
            let ours = local.ok().flatten();
            let jump = rec
                .state
                .height
                .saturating_sub(ours.unwrap_or_default().height);
            if jump > s.max_height_jump {
                r.warn(
                    "lease sign state",
                    format!(
                        "the lease carries {}, {jump} heights above this host's state: more than SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP ({}), so this host would refuse to take it. If this host simply has not signed for that long, run `ssm-cosmovisor accept-lease-state --height {}` (or copy the signer's priv_validator_state.json)",
                        rec.state, s.max_height_jump, rec.state.height
                    ),
                );
            }
        }
        Err(e) => r.fail("lease table", e),
    }
}

/// cosmovisor's AWS profile (`SSM_COSMOVISOR_CHILD_AWS_PROFILE`): `run`
/// refuses to start the child while it can read the key parameter.
fn child_aws_check(r: &mut Report, cfg: &Config) {
    const ITEM: &str = "cosmovisor AWS profile";
    let Some(profile) = &cfg.child_aws_profile else {
        r.info(
            ITEM,
            "none (SSM_COSMOVISOR_CHILD_AWS_PROFILE unset): cosmovisor and the node get no AWS_* variable",
        );
        return;
    };
    let Some(SourceSpec::Ssm { parameter, .. }) = &cfg.source else {
        r.info(
            ITEM,
            format!("{profile} (AWS_PROFILE for cosmovisor and the node); not checked: the key is not read from an SSM parameter"),
        );
        return;
    };
    match crate::source::child_aws::verify(profile, parameter) {
        Ok(refusal) => r.pass(
            ITEM,
            format!("{profile} (AWS_PROFILE for cosmovisor and the node) cannot read {parameter}: {refusal}"),
        ),
        Err(e) => r.fail(ITEM, e),
    }
}

/// The key source: fetch, validate, compare with the safe key.
/// The key source's checks; the validator's address when the key was read.
fn source_checks(
    r: &mut Report,
    cfg: &Config,
    safe: Option<&crate::key::PublicIdentity>,
) -> Option<String> {
    let mut address = None;
    match &cfg.source {
        None => r.info("key source", "none configured (AWS_PARAMETER unset)"),
        Some(spec) => {
            crate::harden::harden_self().ok();
            match source::fetch(spec, cfg.expected_address.as_deref()) {
                Ok(f) => {
                    let id = f.key.identity();
                    match &f.origin {
                        Origin::Ssm(p) => {
                            r.pass(
                                "parameter",
                                format!(
                                    "{} version {} type {}{}",
                                    p.name,
                                    p.version,
                                    p.kind,
                                    p.arn
                                        .as_deref()
                                        .map(|a| format!(" ({a})"))
                                        .unwrap_or_default()
                                ),
                            );
                            if let SourceSpec::Ssm { parameter, .. } = spec {
                                match source::ssm::describe(parameter) {
                                    Ok(m) => r.pass(
                                        "KMS key",
                                        format!(
                                            "{} (tier {}; parameter last modified by {})",
                                            m.kms_key_id.as_deref().unwrap_or("unknown"),
                                            m.tier.as_deref().unwrap_or("unknown"),
                                            m.last_modified_user.as_deref().unwrap_or("unknown")
                                        ),
                                    ),
                                    Err(e) => r.warn(
                                        "KMS key",
                                        format!("cannot describe the parameter: {e}"),
                                    ),
                                }
                            }
                        }
                        Origin::Credential { name } => r.pass("credential", name),
                    }
                    r.pass(
                        "key",
                        format!(
                            "valid {} key (public key and address derived from the private key)",
                            id.key_type()
                        ),
                    );
                    r.pass("address", id.address_hex());
                    address = Some(id.address_hex());
                    r.pass("pub_key", id.pub_key_b64());
                    if let Some(safe) = safe {
                        if safe.pub_key() == id.pub_key() {
                            r.fail("safe key", "the key at the key path IS the consensus key: replace it with a throwaway key");
                        } else {
                            r.pass("safe key", "differs from the consensus key");
                        }
                    }
                }
                Err(e) => r.fail("key source", e),
            }
        }
    }
    address
}

/// The guard, run once as `run` would before a delivery (without a lease
/// takeover: against this host's sign state), each endpoint's verdict shown.
fn guard_check(r: &mut Report, cfg: &Config, ov: &Overrides, address: Option<&str>) {
    use crate::guard::rule::{Seen, Verdict};
    let settings = match crate::guard::GuardSettings::resolve(ov, &ProcessEnv) {
        Ok(Some(s)) => s,
        Ok(None) => {
            r.info("guard", "off (SSM_COSMOVISOR_GUARD_RPC unset): nothing asks the chain whether the key signs elsewhere");
            return;
        }
        Err(e) => return r.fail("guard", e),
    };
    let Some(me) = address.and_then(crate::guard::rule::Address::from_hex) else {
        return r.warn(
            "guard",
            "not run: the key's address is unknown (the key could not be read)",
        );
    };
    let chain_id = match crate::guard::chain_id(&cfg.home, cfg.node) {
        Ok(c) => c,
        Err(e) => return r.fail("guard", e),
    };
    let height = crate::lease::StateFile::of_home(&cfg.home, cfg.node)
        .and_then(|s| s.read())
        .map(|s| s.map_or(0, |s| s.height));
    let height = match height {
        Ok(h) => h,
        Err(e) => return r.fail("guard", e),
    };
    let allowance = crate::guard::allowance(height, None);
    let (seen, verdict) = match crate::guard::ask(&settings, &chain_id, me, allowance) {
        Ok(v) => v,
        Err(e) => return r.fail("guard", e),
    };
    for (ep, v) in &seen {
        match v {
            Seen::Clean {
                tip,
                checked,
                in_set,
            } => r.pass(
                "guard endpoint",
                format!(
                    "{ep}: clean (tip {tip}, heights {}..={} read{})",
                    checked.start(),
                    checked.end(),
                    match in_set {
                        Some(false) => ", the validator is not in its validator set",
                        _ => "",
                    }
                ),
            ),
            Seen::Unusable(u) => r.warn("guard endpoint", format!("{ep}: not believed: {u}")),
            Seen::Foreign(f) => r.fail(
                "guard endpoint",
                format!(
                    "{ep}: THE KEY SIGNS ELSEWHERE: a signature at height {}",
                    f.height
                ),
            ),
        }
    }
    let of = crate::guard::describe(&allowance);
    match verdict {
        Verdict::Clean { tip, .. } => r.pass(
            "guard",
            format!("clean on chain {chain_id} at tip {tip}: no signature of {me} above this host's sign state ({of})"),
        ),
        Verdict::Foreign(f) => r.fail(
            "guard",
            format!("{} shows {me} signing at height {}, above this host's sign state ({of}): run would refuse (exit 9)", f.endpoint, f.height),
        ),
        Verdict::Unknown(why) => match settings.on_unknown {
            crate::guard::OnUnknown::Refuse => {
                r.fail("guard", format!("{why}: run would refuse (exit 9)"))
            }
            crate::guard::OnUnknown::Deliver => r.warn(
                "guard",
                format!("{why}: run would deliver anyway (SSM_COSMOVISOR_GUARD_ON_UNKNOWN=deliver)"),
            ),
        },
    }
}

/// Runs the preflight; returns the exit status: 0 when every check passes
/// (warnings allowed), [`Exit::Config`] when the configuration cannot be
/// resolved, [`Exit::Failure`] when any check fails.
pub(crate) fn run(ov: &Overrides) -> u8 {
    let mut r = Report::default();
    let resolved = Config::resolve(ov, &ProcessEnv, &[])
        .and_then(|c| LeaseSettings::resolve(ov, &ProcessEnv, c.source.as_ref()).map(|l| (c, l)));
    let (cfg, lease) = match resolved {
        Ok(both) => both,
        Err(e) => {
            r.fail("configuration", &e);
            return Exit::Config.code();
        }
    };
    match cfg.check_before_run(&ProcessEnv) {
        Ok(()) => {}
        Err(e) => r.fail("run would refuse", e),
    }
    r.pass(
        "USE_SSM_KEY",
        if cfg.use_ssm_key {
            "true (active signer)"
        } else {
            "false (standby: no key is fetched by run)"
        },
    );
    r.pass("node home", cfg.home.display());
    r.pass("key path", cfg.key_path.display());
    r.info("key read timeout", format!("{:?}", cfg.key_timeout));
    match find_on_path(&cfg.cosmovisor_bin) {
        Some(p) => r.pass("cosmovisor", p.display()),
        None => r.warn(
            "cosmovisor",
            format!(
                "{:?} not found (set COSMOVISOR_BIN); needed by run, not by exec",
                cfg.cosmovisor_bin
            ),
        ),
    }
    if let Some(u) = &cfg.node_user {
        if rustix::process::geteuid().is_root() {
            r.pass(
                "node user",
                format!("{} (uid {}, gid {})", u.name, u.uid, u.gid),
            );
        } else {
            r.fail(
                "node user",
                "switching the child to another user needs root (split-trust mode)",
            );
        }
    }
    kernel_checks(&mut r);
    metrics_check(&mut r);
    sign_state_check(&mut r, &cfg);

    reader_check(&mut r, cfg.node);
    let safe = match KeySlot::open(&cfg.key_path, cfg.node).and_then(|s| s.diagnose()) {
        Ok((rep, safe)) => {
            r.pass(
                "key slot",
                format!(
                    "{}; {}; safe key {} {}",
                    rep.found,
                    rep.action.unwrap_or("nothing to repair"),
                    safe.key_type(),
                    safe.address_hex()
                ),
            );
            Some(safe)
        }
        Err(e) => {
            r.fail("key slot", e);
            None
        }
    };

    // The SDK is not used at all while its body logging is on (reported above).
    if crate::config::refuse_sdk_body_logging(&ProcessEnv).is_ok() {
        let address = source_checks(&mut r, &cfg, safe.as_ref());
        lease_checks(&mut r, &cfg, lease.as_ref());
        guard_check(&mut r, &cfg, ov, address.as_deref());
        child_aws_check(&mut r, &cfg);
        double_sign_check(&mut r, &cfg);
    }
    if r.failures == 0 {
        println!("check passed");
        0
    } else {
        println!("check FAILED: {} problem(s)", r.failures);
        Exit::Failure.code()
    }
}
