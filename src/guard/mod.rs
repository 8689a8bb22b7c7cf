//! The guard against signing where the key already signs (issue 22): before
//! the key goes out, ask the chain whether a signer outside this host and
//! its lease uses the key ([`rule`] decides, without I/O; [`rpc`] reads the
//! operator's CometBFT endpoints). Runs at every start as signer, after the
//! lease is taken and the sign state raised, before the slot changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::identity::NodeIdentity;
use crate::metrics::{self, GuardVerdict};

mod rpc;
pub(crate) mod rule;
mod settings;

pub(crate) use settings::{GuardSettings, OnUnknown};

use rule::{Address, Allowance, Seen, Verdict};

/// Why the key did not go out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GuardError {
    /// A believed endpoint shows our key signing above what this host allows.
    #[error("THE KEY SIGNS ELSEWHERE: {endpoint} shows a {flag} signature of validator {address} at height {height} (vote time {time}), above what this host's sign state allows ({allowance}); nothing was delivered. Find and stop the other signer before this host signs")]
    Foreign {
        endpoint: String,
        address: String,
        height: i64,
        flag: &'static str,
        time: String,
        allowance: String,
    },
    /// No endpoint could be believed.
    #[error("the guard could not ask the chain: {0}; nothing was delivered. Fix the endpoints (SSM_COSMOVISOR_GUARD_RPC), or set SSM_COSMOVISOR_GUARD_ON_UNKNOWN=deliver to deliver without the check")]
    Unknown(String),
    /// The node's chain id could not be read.
    #[error("cannot read the chain id from {path:?} ({reason}); the guard believes only endpoints of the node's own chain")]
    ChainId { path: PathBuf, reason: String },
    /// The guard could not start (runtime, CA store).
    #[error("the guard could not start: {0}")]
    Setup(String),
}

/// What this host allows the key to have signed: its sign state (raised
/// to the lease's), and after an expiry takeover the carried height and
/// when the old holder was fenced.
pub(crate) fn allowance(state_height: i64, takeover: Option<Takeover>) -> Allowance {
    match takeover {
        None => Allowance::UpTo {
            height: state_height,
        },
        Some(t) => Allowance::TakenOver {
            carried: t.carried,
            raised: state_height,
            fenced_by_ms: t.fenced_by_ms,
        },
    }
}

/// A takeover of an expired lease, as the guard needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Takeover {
    /// The height the old holder's record carried.
    pub(crate) carried: i64,
    /// By when its node was fenced (Unix ms): the moment of our take.
    pub(crate) fenced_by_ms: i64,
}

/// Asks every endpoint (at once, within the total timeout) and judges.
/// `Ok` means the key may go out; the verdict is logged and counted.
pub(crate) fn check(
    s: &GuardSettings,
    chain_id: &str,
    me: Address,
    allowance: Allowance,
) -> Result<(), GuardError> {
    let began = Instant::now();
    let (seen, verdict) = ask(s, chain_id, me, allowance)?;
    let unusable = seen
        .iter()
        .filter(|(_, v)| matches!(v, Seen::Unusable(_)))
        .count();
    for (ep, v) in &seen {
        match v {
            Seen::Unusable(u) => {
                tracing::warn!(event = "guard_endpoint", endpoint = %ep, verdict = "unusable", why = %u, "guard: endpoint not believed")
            }
            Seen::Clean {
                tip,
                checked,
                in_set,
            } => {
                tracing::debug!(endpoint = %ep, tip, from = checked.start(), to = checked.end(), in_set = ?in_set, "guard: endpoint clean")
            }
            Seen::Foreign(_) => {}
        }
    }
    let took_ms = began.elapsed().as_millis() as u64;
    match verdict {
        Verdict::Clean { tip, outside_set } => {
            metrics::guard_checked(GuardVerdict::Clean, unusable);
            tracing::info!(event = "guard_clean", tip, lookback = s.lookback, endpoints = seen.len(), unusable, outside_set, took_ms, allowance = %describe(&allowance), "guard: no signature of the key elsewhere");
            if outside_set {
                tracing::warn!(event = "guard_outside_set", "guard: the validator is in no endpoint's validator set: a signer elsewhere could not show in the commits");
            }
            Ok(())
        }
        Verdict::Foreign(f) => {
            metrics::guard_checked(GuardVerdict::Foreign, unusable);
            let e = GuardError::Foreign {
                endpoint: f.endpoint,
                address: me.to_string(),
                height: f.height,
                flag: match f.flag {
                    rule::Flag::Nil => "NIL",
                    _ => "COMMIT",
                },
                time: rpc::unix_ms_rfc3339(f.unix_ms),
                allowance: describe(&allowance),
            };
            tracing::error!(event = "guard_foreign", error = %e, took_ms, "THE KEY SIGNS ELSEWHERE: no key delivered");
            Err(e)
        }
        Verdict::Unknown(why) if s.on_unknown == OnUnknown::Deliver => {
            metrics::guard_checked(GuardVerdict::UnknownDelivered, unusable);
            tracing::warn!(event = "guard_unknown_delivered", why = %why, took_ms, "guard: could not ask the chain; delivering anyway (SSM_COSMOVISOR_GUARD_ON_UNKNOWN=deliver)");
            Ok(())
        }
        Verdict::Unknown(why) => {
            metrics::guard_checked(GuardVerdict::Unknown, unusable);
            tracing::error!(event = "guard_unknown", why = %why, took_ms, "guard: could not ask the chain: no key delivered");
            Err(GuardError::Unknown(why))
        }
    }
}

/// Every endpoint's verdict and the verdict over them, nothing logged or
/// counted (`check` prints them).
pub(crate) fn ask(
    s: &GuardSettings,
    chain_id: &str,
    me: Address,
    allowance: Allowance,
) -> Result<(Vec<(String, Seen)>, Verdict), GuardError> {
    let rs = Arc::new(rule_settings(s, chain_id));
    let seen = observe_all(s, &rs, me, allowance)?;
    let verdict = rule::judge(&seen, &rs);
    Ok((seen, verdict))
}

pub(crate) fn describe(a: &Allowance) -> String {
    match *a {
        Allowance::UpTo { height } => format!("up to height {height}"),
        Allowance::TakenOver {
            carried,
            raised,
            fenced_by_ms,
        } => format!(
            "up to height {carried}, and to {raised} before the old holder's fence at {}",
            rpc::unix_ms_rfc3339(fenced_by_ms)
        ),
    }
}

fn rule_settings(s: &GuardSettings, chain_id: &str) -> rule::Settings {
    rule::Settings {
        chain_id: chain_id.to_string(),
        lookback: s.lookback,
        max_tip_age: s.max_tip_age,
        max_spread: settings::MAX_SPREAD,
        fence_margin: settings::FENCE_MARGIN,
    }
}

/// Every endpoint's verdict, each read on its own task of one runtime.
fn observe_all(
    s: &GuardSettings,
    rs: &Arc<rule::Settings>,
    me: Address,
    allowance: Allowance,
) -> Result<Vec<(String, Seen)>, GuardError> {
    let rt = crate::aws::runtime().map_err(|e| GuardError::Setup(e.to_string()))?;
    let rpc = Arc::new(rpc::Rpc::new(s.request_timeout).map_err(GuardError::Setup)?);
    let by = Instant::now() + s.timeout;
    let seen = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ep) in s.endpoints.iter().cloned().enumerate() {
            let (rpc, rs) = (rpc.clone(), rs.clone());
            tasks.spawn(async move {
                let o = rpc
                    .observe(&ep, me, |tip| rs.window(tip, &allowance), by)
                    .await;
                (
                    i,
                    rule::judge_endpoint(&o, me, &allowance, &rs, crate::sys::unix_ms()),
                )
            });
        }
        let mut seen: Vec<Option<Seen>> = vec![None; s.endpoints.len()];
        let deadline = tokio::time::Instant::from_std(by);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
            if let Ok((i, v)) = r {
                seen[i] = Some(v);
            }
        }
        seen
    });
    rt.shutdown_background();
    Ok(s.endpoints
        .iter()
        .zip(seen)
        .map(|(ep, v)| {
            let v = v.unwrap_or_else(|| {
                Seen::Unusable(rule::Unusable::Unreachable(format!(
                    "no answer within the guard's {:?}",
                    s.timeout
                )))
            });
            (ep.base.clone(), v)
        })
        .collect())
}

/// The node's chain id: `chain_id` of its genesis file (`genesis_file` of
/// `config.toml`, default `config/genesis.json`), read as the node.
pub(crate) fn chain_id(home: &Path, node: NodeIdentity) -> Result<String, GuardError> {
    #[derive(serde::Deserialize)]
    struct Genesis {
        chain_id: String,
    }
    let path =
        crate::config::node_file_from_config_as(home, "genesis_file", "config/genesis.json", node)
            .map(|(p, _)| p)
            .map_err(|(path, reason)| GuardError::ChainId { path, reason })?;
    let err = |reason: String| GuardError::ChainId {
        path: path.clone(),
        reason,
    };
    // A genesis file can be hundreds of MB: read it as a stream, keeping
    // only the chain id.
    let g: Genesis = node
        .as_node(|| {
            let f = std::fs::File::open(&path)?;
            serde_json::from_reader(std::io::BufReader::new(f)).map_err(std::io::Error::other)
        })
        .map_err(|e: std::io::Error| err(e.to_string()))?;
    if g.chain_id.is_empty() {
        return Err(err("chain_id is empty".into()));
    }
    Ok(g.chain_id)
}
