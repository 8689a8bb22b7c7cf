//! The guard's rule, without I/O: from what each CometBFT endpoint showed
//! (its status and the commits of a window of recent heights), whether the
//! consensus key signs somewhere else right now.
//!
//! A signature of our validator address at a height above what this host's
//! own sign state allows was made by someone else: CometBFT persists the
//! state before it returns a signature, so this host signed nothing above
//! its file, and a lease's earlier holders nothing above what the lease
//! carried. After a takeover of an *expired* lease the old holder may have
//! signed above the carried state until it was fenced; its signatures up to
//! the height our state was raised to, timestamped before the fence, are
//! not a rogue's. Our own earlier signatures never count, so a healthy
//! signer's restart waits for nothing.
//!
//! What it cannot see: votes that never reached a commit (a commit holds
//! the precommits seen when it was made; prevotes never appear), a signer
//! that starts after the check, one that signed only before the window, and
//! anything while the validator is outside the active set.

use std::time::Duration;

/// A validator address: the first 20 bytes of SHA-256 of its ed25519
/// public key, shown as upper-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Address(pub(crate) [u8; 20]);

impl Address {
    /// Parses 40 hex digits (either case); `None` for anything else,
    /// the empty address of an ABSENT entry included.
    pub(crate) fn from_hex(s: &str) -> Option<Address> {
        if s.len() != 40 {
            return None;
        }
        let mut a = [0u8; 20];
        for (i, b) in a.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Address(a))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// What a commit entry says about its validator (`block_id_flag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    /// 1: no vote was received; the entry names nobody.
    Absent,
    /// 2: a precommit for the block.
    Commit,
    /// 3: a precommit for nil: still a signature by that key.
    Nil,
}

impl Flag {
    pub(crate) fn from_code(code: u64) -> Option<Flag> {
        match code {
            1 => Some(Flag::Absent),
            2 => Some(Flag::Commit),
            3 => Some(Flag::Nil),
            _ => None,
        }
    }
}

/// One signature of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    pub(crate) flag: Flag,
    /// `None` for an ABSENT entry.
    pub(crate) address: Option<Address>,
    /// The vote's own timestamp (the signer's clock), Unix milliseconds.
    pub(crate) unix_ms: i64,
}

/// The commit for one height (from the `last_commit` of the block above).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    pub(crate) height: i64,
    pub(crate) signatures: Vec<Signature>,
}

/// What this host allows the key to have signed before this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowance {
    /// Every signature at or below `height` may be this host's or a
    /// previous holder's that released the lease (its node was gone):
    /// `height` is this host's sign state (raised to what the lease
    /// carried, with a lease).
    UpTo { height: i64 },
    /// This host took over an expired lease: up to `carried` as above;
    /// above it, up to `raised` (the state our file was raised to, the
    /// takeover skip included), only the old holder's signatures made
    /// before it was fenced, by `fenced_by_ms` (Unix ms).
    TakenOver {
        carried: i64,
        raised: i64,
        fenced_by_ms: i64,
    },
}

impl Allowance {
    /// The heights above which a signature may be someone else's.
    pub(crate) fn lowest_suspect(&self) -> i64 {
        match *self {
            Allowance::UpTo { height } => height + 1,
            Allowance::TakenOver { carried, .. } => carried + 1,
        }
    }

    /// Whether our key's signature at `height`, timestamped `unix_ms`, was
    /// made by a signer outside this host and the lease.
    pub(crate) fn is_foreign(&self, height: i64, unix_ms: i64, margin: Duration) -> bool {
        match *self {
            Allowance::UpTo { height: up_to } => height > up_to,
            Allowance::TakenOver {
                carried,
                raised,
                fenced_by_ms,
            } => {
                height > raised
                    || (height > carried
                        && unix_ms > fenced_by_ms.saturating_add(margin.as_millis() as i64))
            }
        }
    }
}

/// What an endpoint's `/status` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// `node_info.network`: the chain id.
    pub(crate) network: String,
    pub(crate) catching_up: bool,
    pub(crate) latest_height: i64,
    pub(crate) latest_unix_ms: i64,
    /// The lowest height its block store still has.
    pub(crate) earliest_height: i64,
}

/// What one endpoint showed, or why it showed nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The endpoint, as configured (for the log and the error).
    pub(crate) endpoint: String,
    pub(crate) status: Result<Status, String>,
    /// The commits of the heights asked for ([`Settings::window`]), in any
    /// order; an error for a height it would not give.
    pub(crate) commits: Result<Vec<Commit>, String>,
    /// Whether our address is in the validator set at the tip (`None`:
    /// not asked, or no answer).
    pub(crate) in_set: Option<bool>,
}

/// The guard's settings that the rule reads.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The chain id our node is on.
    pub(crate) chain_id: String,
    /// How many heights below the tip are read.
    pub(crate) lookback: i64,
    /// How old the endpoint's latest block may be.
    pub(crate) max_tip_age: Duration,
    /// How far apart the healthy endpoints' tips may be.
    pub(crate) max_spread: i64,
    /// Clock error allowed between the old holder's fence and the vote
    /// timestamps (after a takeover).
    pub(crate) fence_margin: Duration,
}

impl Settings {
    /// The heights whose commits decide, for an endpoint at `tip`: the
    /// window below the tip, from above what this host allows. Empty when
    /// the tip is not above the allowance (nothing can be foreign yet).
    pub(crate) fn window(&self, tip: i64, allowance: &Allowance) -> std::ops::RangeInclusive<i64> {
        let from = (tip - self.lookback).max(allowance.lowest_suspect()).max(1);
        // A commit for the tip is only the node's own seen commit.
        from..=tip - 1
    }
}

/// Why an endpoint is not believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unusable {
    Unreachable(String),
    OtherChain {
        theirs: String,
    },
    CatchingUp,
    Stale {
        age: Duration,
    },
    /// It no longer has the heights the window needs.
    Pruned {
        earliest: i64,
        needed: i64,
    },
    /// It did not give every height of the window.
    Incomplete(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Unreachable(e) => write!(f, "unreachable: {e}"),
            Unusable::OtherChain { theirs } => write!(f, "on another chain ({theirs:?})"),
            Unusable::CatchingUp => write!(f, "catching up"),
            Unusable::Stale { age } => write!(f, "its latest block is {}s old", age.as_secs()),
            Unusable::Pruned { earliest, needed } => write!(
                f,
                "pruned: its lowest height is {earliest}, the check needs {needed}"
            ),
            Unusable::Incomplete(e) => write!(f, "incomplete answer: {e}"),
        }
    }
}

/// A signature of our key that this host does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sighting {
    pub(crate) endpoint: String,
    pub(crate) height: i64,
    pub(crate) flag: Flag,
    pub(crate) unix_ms: i64,
}

/// One endpoint's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Unusable(Unusable),
    /// No foreign signature in `checked` (empty: nothing to check yet).
    Clean {
        tip: i64,
        checked: std::ops::RangeInclusive<i64>,
        in_set: Option<bool>,
    },
    Foreign(Sighting),
}

/// The guard's verdict over every endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No healthy endpoint shows a foreign signature, at least one checked,
    /// and the healthy ones agree on the tip.
    Clean {
        /// The highest tip among them.
        tip: i64,
        /// No healthy endpoint lists our address in the validator set: a
        /// signer elsewhere could not show (this proves nothing).
        outside_set: bool,
    },
    /// Someone else signs with the key: never deliver.
    Foreign(Sighting),
    /// Nothing to believe: every endpoint unusable, or their tips apart.
    Unknown(String),
}

/// One endpoint's verdict, judged at `now_ms` (Unix ms).
pub(crate) fn judge_endpoint(
    o: &Observation,
    me: Address,
    allowance: &Allowance,
    s: &Settings,
    now_ms: i64,
) -> Seen {
    let st = match &o.status {
        Ok(st) => st,
        Err(e) => return Seen::Unusable(Unusable::Unreachable(e.clone())),
    };
    if st.network != s.chain_id {
        return Seen::Unusable(Unusable::OtherChain {
            theirs: st.network.clone(),
        });
    }
    if st.catching_up {
        return Seen::Unusable(Unusable::CatchingUp);
    }
    let age = Duration::from_millis(now_ms.saturating_sub(st.latest_unix_ms).max(0) as u64);
    if age > s.max_tip_age {
        return Seen::Unusable(Unusable::Stale { age });
    }
    let window = s.window(st.latest_height, allowance);
    if window.is_empty() {
        return Seen::Clean {
            tip: st.latest_height,
            checked: window,
            in_set: o.in_set,
        };
    }
    if *window.start() < st.earliest_height {
        return Seen::Unusable(Unusable::Pruned {
            earliest: st.earliest_height,
            needed: *window.start(),
        });
    }
    let commits = match &o.commits {
        Ok(c) => c,
        Err(e) => return Seen::Unusable(Unusable::Incomplete(e.clone())),
    };
    // Any foreign signature vetoes, even in an answer missing heights.
    let foreign = commits
        .iter()
        .filter(|c| window.contains(&c.height))
        .flat_map(|c| c.signatures.iter().map(move |sig| (c.height, sig)))
        .find(|(h, sig)| {
            sig.address == Some(me)
                && matches!(sig.flag, Flag::Commit | Flag::Nil)
                && allowance.is_foreign(*h, sig.unix_ms, s.fence_margin)
        });
    if let Some((height, sig)) = foreign {
        return Seen::Foreign(Sighting {
            endpoint: o.endpoint.clone(),
            height,
            flag: sig.flag,
            unix_ms: sig.unix_ms,
        });
    }
    if let Some(h) = window
        .clone()
        .find(|h| !commits.iter().any(|c| c.height == *h))
    {
        return Seen::Unusable(Unusable::Incomplete(format!("no commit for height {h}")));
    }
    Seen::Clean {
        tip: st.latest_height,
        checked: window,
        in_set: o.in_set,
    }
}

/// The verdict over every endpoint: any healthy endpoint's foreign
/// signature vetoes; a clean verdict needs one clean endpoint and the
/// clean ones' tips within the spread.
pub(crate) fn judge(seen: &[(String, Seen)], s: &Settings) -> Verdict {
    if let Some(f) = seen.iter().find_map(|(_, v)| match v {
        Seen::Foreign(f) => Some(f.clone()),
        _ => None,
    }) {
        return Verdict::Foreign(f);
    }
    let clean: Vec<(i64, Option<bool>)> = seen
        .iter()
        .filter_map(|(_, v)| match v {
            Seen::Clean { tip, in_set, .. } => Some((*tip, *in_set)),
            _ => None,
        })
        .collect();
    if clean.is_empty() {
        let why = seen
            .iter()
            .map(|(e, v)| match v {
                Seen::Unusable(u) => format!("{e}: {u}"),
                _ => format!("{e}: ?"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Verdict::Unknown(format!("no usable endpoint ({why})"));
    }
    let hi = clean.iter().map(|c| c.0).max().unwrap_or(0);
    let lo = clean.iter().map(|c| c.0).min().unwrap_or(0);
    if hi - lo > s.max_spread {
        return Verdict::Unknown(format!(
            "the endpoints' tips are {lo} to {hi}, more than {} apart: one of them is on a fork or stuck",
            s.max_spread
        ));
    }
    Verdict::Clean {
        tip: hi,
        outside_set: !clean.iter().any(|c| c.1 == Some(true)),
    }
}

#[cfg(test)]
mod tests;
