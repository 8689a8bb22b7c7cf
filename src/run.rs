//! The order of a run (`run` and `exec`), top to bottom: set the process
//! up, check the slot, take the lease (standing by with the keyless node
//! while another host holds it), fetch the key, bind the lease to it and
//! raise the sign state, back the slot up, and supervise the node.

use std::ffi::OsString;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::guard::rule::Address;
use crate::guard::GuardSettings;
use crate::key::PublicIdentity;
use crate::lease::{self, FirstLook, HeldLease, LeaseSettings, StateFile};
use crate::metrics::{self, MetricsSettings};
use crate::slot::KeySlot;
use crate::source::{self, Origin};
use crate::supervise::{self, Ended, KeyJob, LeaseRole, NodeMatch, Signals};

/// The child to run: cosmovisor (or the node itself) and its arguments.
pub(crate) struct Child<'a> {
    pub(crate) program: &'a OsString,
    pub(crate) args: &'a [OsString],
    /// How the node is found among the child's processes.
    pub(crate) node: NodeMatch,
}

/// Runs the child with the key handed to each node start; the exit code.
pub(crate) fn run(
    cfg: &Config,
    lease: Option<&LeaseSettings>,
    guard: Option<&GuardSettings>,
    metrics: &MetricsSettings,
    child: Child<'_>,
) -> Result<u8, Error> {
    let signals = set_up(cfg, metrics)?;
    let slot = KeySlot::open(&cfg.key_path, cfg.node)?;
    // Repair runs on every start, also as a standby: a FIFO left by a crash
    // would hang the node, a stripped file would crash it.
    let (repair, safe) = slot.repair()?;
    tracing::info!(event = "slot_checked", path = %slot.path().display(), found = repair.found, action = repair.action.unwrap_or("none"), safe_address = %safe.address_hex(), "key slot ready");
    if !cfg.use_ssm_key {
        return run_keyless(&signals, cfg, lease, child);
    }
    let spec = cfg.source.as_ref().ok_or(Error::NoKeySource)?;
    // With a lease, nothing below happens before this host holds it; every
    // error from here on releases it (a HeldLease is released on drop).
    let mut lease = match lease {
        Some(settings) => match take_lease(&signals, cfg, settings, &child)? {
            Taken::Held(l) => Some(l),
            Taken::Ended(code) => return Ok(code),
        },
        None => None,
    };
    tracing::info!(event = "fetching", source = %spec.describe(), "attempting to fetch consensus key");
    let began = std::time::Instant::now();
    let fetched = source::fetch(spec, cfg.expected_address.as_deref());
    metrics::fetched(
        began.elapsed(),
        fetched.as_ref().map(drop).map_err(|e| e.metrics_class()),
    );
    let fetched = fetched?;
    log_fetched(&fetched.origin, fetched.key.identity());
    slot.ensure_safe_differs(&safe, fetched.key.identity())?;
    if let Some(l) = &mut lease {
        l.prepare(&fetched.key.identity().address_hex())
            .map_err(Error::LeasePrepare)?;
    }
    // The sign state is final now (raised to the lease's): ask the chain
    // whether the key signs above it elsewhere.
    if let Some(g) = guard {
        ask_the_chain(cfg, g, fetched.key.identity(), lease.as_deref())?;
    }
    // From here on the slot changes: a stop must restore it, not just exit.
    signals.defer_stop();
    if let Some(sig) = signals.stop_requested() {
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested before the key was delivered"
        );
        return Ok(0);
    }
    slot.backup()?;
    // The SDK is done: give its code pages back (most of our RSS otherwise).
    if let Err(e) = crate::sys::page_out_own_executable() {
        tracing::debug!(error = %e, "MADV_PAGEOUT of the executable failed");
    }
    let job = KeyJob {
        slot: Arc::new(slot),
        key: Arc::new(fetched.key),
        node: child.node,
    };
    let role = match lease.map(|l| l.into_parts()) {
        Some((client, held, state)) => LeaseRole::Holder {
            client,
            held,
            state,
        },
        None => LeaseRole::None,
    };
    ended(supervise::run(
        &signals,
        cfg,
        child.program,
        child.args,
        Some(job),
        role,
    )?)
}

/// The guard (guard/): a signature of the key above what this host's sign
/// state allows, on the operator's endpoints, keeps the key in.
fn ask_the_chain(
    cfg: &Config,
    g: &GuardSettings,
    id: &PublicIdentity,
    lease: Option<&HeldLease>,
) -> Result<(), Error> {
    let chain_id = crate::guard::chain_id(&cfg.home, cfg.node)?;
    let me = Address::from_hex(&id.address_hex()).ok_or(Error::Guard(
        crate::guard::GuardError::Setup("the key's address is not 20 bytes".into()),
    ))?;
    let state = StateFile::of_home(&cfg.home, cfg.node)?;
    let height = state.read()?.map_or(0, |s| s.height);
    let takeover = lease
        .and_then(HeldLease::expiry_takeover)
        .map(|(carried, at)| crate::guard::Takeover {
            carried,
            fenced_by_ms: at,
        });
    crate::guard::check(g, &chain_id, me, crate::guard::allowance(height, takeover))?;
    Ok(())
}

/// What a run does before anything else: the signal thread, hardening,
/// the checks that refuse a host where the key would not be safe, metrics.
fn set_up(cfg: &Config, metrics: &MetricsSettings) -> Result<Signals, Error> {
    // Before any other thread exists (runtimes, lease threads): they all
    // inherit the blocked signals, so only our sigwait thread ever takes one.
    // Until the slot is first changed, a stop signal ends the process at once.
    let signals = Signals::start()?;
    // Before any secret exists in this process (a child profile that can
    // read the key brings it in with the check below).
    crate::harden::harden_self().map_err(Error::Harden)?;
    // Before anything changes: the child must not get an AWS identity that
    // can read the key (cosmovisor hands its environment to the node).
    source::child_aws::verify_before_start(cfg)?;
    // After the signal thread (the endpoint's thread inherits the blocked
    // signals), before the slot is touched (a bad setting changes nothing).
    metrics::init(metrics, cfg.node.uid())?;
    // The reader check must see every process that could open the FIFO,
    // also for a standby that may take the lease later.
    if cfg.use_ssm_key {
        let m = crate::procfs::verify_sees_all()?;
        tracing::debug!(hidepid = ?m.hidepid, gid = m.gid, "/proc lists every process for the reader check");
    }
    Ok(signals)
}

/// `USE_SSM_KEY=false`: the child runs like plain cosmovisor.
fn run_keyless(
    signals: &Signals,
    cfg: &Config,
    lease: Option<&LeaseSettings>,
    child: Child<'_>,
) -> Result<u8, Error> {
    metrics::role(metrics::Role::Off);
    if lease.is_some() {
        tracing::info!("USE_SSM_KEY is false: the failover lease is not used");
    }
    tracing::info!(
        event = "standby",
        "USE_SSM_KEY is false: running without the consensus key"
    );
    ended(supervise::run(
        signals,
        cfg,
        child.program,
        child.args,
        None,
        LeaseRole::None,
    )?)
}

/// What taking the lease came to.
enum Taken {
    Held(Box<HeldLease>),
    /// The standby's child ended first (its exit code), or a stop came
    /// during the handover (0).
    Ended(u8),
}

/// Takes the failover lease: at once if it is free, else as a standby
/// running the child without the key until the lease is ours.
fn take_lease(
    signals: &Signals,
    cfg: &Config,
    settings: &LeaseSettings,
    child: &Child<'_>,
) -> Result<Taken, Error> {
    let state = StateFile::of_home(&cfg.home, cfg.node)?;
    let (client, state) = match lease::take_or_stand_by(settings, state)? {
        FirstLook::Held(l) => return Ok(Taken::Held(Box::new(l))),
        FirstLook::Standby(client, state) => (client, state),
    };
    let role = LeaseRole::Standby {
        client,
        state: state.clone(),
    };
    let won = match supervise::run(signals, cfg, child.program, child.args, None, role)? {
        Ended::Exit(0) => return Ok(Taken::Ended(0)),
        Ended::Exit(status) => return Err(Error::StandbyExited { status }),
        Ended::Acquired(won) => won,
    };
    let (client, held) = *won;
    let mut lease = Box::new(HeldLease::new(client, held, state));
    if let Some(sig) = signals.stop_requested() {
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested during the handover"
        );
        // Released as it drops: no node ran under it.
        return Ok(Taken::Ended(0));
    }
    lease.confirm()?;
    Ok(Taken::Held(lease))
}

fn ended(e: Ended) -> Result<u8, Error> {
    match e {
        Ended::Exit(code) => Ok(code),
        Ended::Acquired(..) => Err(Error::AcquiredTwice),
    }
}

fn log_fetched(origin: &Origin, id: &PublicIdentity) {
    match origin {
        Origin::Ssm(p) => tracing::info!(
            event = "fetched",
            parameter = %p.name,
            version = p.version,
            kind = %p.kind,
            key_type = %id.key_type(),
            address = %id.address_hex(),
            pub_key = %id.pub_key_b64(),
            "retrieved consensus key from parameter store"
        ),
        Origin::Credential { name } => tracing::info!(
            event = "fetched",
            credential = %name,
            key_type = %id.key_type(),
            address = %id.address_hex(),
            pub_key = %id.pub_key_b64(),
            "read consensus key from systemd credential"
        ),
    }
}
