//! The chaos test's checker: what was observed during a run ([`Observations`]) and the
//! verdict on it ([`Verdict`]). Pure functions of the observations, so they are tested on
//! made-up histories too (tests/chaos.rs).
//!
//! Safety checks are exact (no timing tolerance):
//! - no height signed by two node processes (the ledger);
//! - no two hosts' key-holding intervals overlap: from the moment a node had read the key
//!   (its own report, or the tool's `delivered` event, whichever is earlier) to its death
//!   as seen from outside (a pidfd that became readable; if the node was already gone
//!   when it was first seen, the moment it was seen, which only lengthens the interval);
//! - every `restore` succeeded and left the safe key byte for byte, no secret in any log.
//!
//! Liveness, the only check with a time bound: no stretch of `4 × lease` without a new
//! height while at least one host was healthy (no fault on it) throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One signature from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub host: String,
    pub pid: u32,
    pub height: i64,
    pub round: i64,
    pub step: i64,
    pub unix_us: u64,
}

impl Signature {
    /// Parses one ledger line.
    pub fn parse(line: &str) -> Option<Signature> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Signature {
            host: v["host"].as_str()?.to_string(),
            pid: v["pid"].as_u64()? as u32,
            height: v["height"].as_i64()?,
            round: v["round"].as_i64()?,
            step: v["step"].as_i64()?,
            unix_us: v["unix_us"].as_u64()?,
        })
    }
}

/// A node that held the validator's key, from its read to its death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHold {
    pub host: String,
    pub pid: i32,
    pub read_us: u64,
    /// When its death was seen (`None`: it never died during the run).
    pub death_us: Option<u64>,
    /// False when the node was already gone when first seen (death_us is an upper bound).
    pub death_exact: bool,
}

/// A fault the nemesis applied.
#[derive(Debug, Clone)]
pub struct FaultRec {
    pub id: usize,
    /// Kind, for the summary (`kill9_tree_holder`, `sigstop_tool/long`, …).
    pub kind: String,
    /// What exactly was done.
    pub detail: String,
    /// Hosts the fault made unhealthy for its duration (empty: an instant fault).
    pub unhealthy: Vec<String>,
    /// Hosts acted on.
    pub targets: Vec<String>,
    pub start_us: u64,
    pub end_us: u64,
    /// The key-holding node (host, pid) when the fault began.
    pub holder: Option<(String, i32)>,
    /// Hosts whose whole process tree (tool, fencer, cosmovisor, node) was SIGSTOPped
    /// from `start_us` to `end_us`.
    pub frozen: Vec<String>,
}

/// One `ssm-cosmovisor restore` run by the harness after a tool exited.
#[derive(Debug, Clone)]
pub struct RestoreRec {
    pub host: String,
    pub unix_us: u64,
    /// `None`: restore succeeded and the slot held the safe key byte for byte.
    pub problem: Option<String>,
}

/// A line for the timeline (tool log events, proxy writes, the harness's own notes).
#[derive(Debug, Clone)]
pub struct Entry {
    pub unix_us: u64,
    pub host: String,
    pub what: String,
}

/// Everything a run observed.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub seed: u64,
    pub hosts: Vec<String>,
    pub lease_us: u64,
    pub start_us: u64,
    pub end_us: u64,
    pub signatures: Vec<Signature>,
    pub holds: Vec<KeyHold>,
    pub faults: Vec<FaultRec>,
    pub restores: Vec<RestoreRec>,
    /// Other safety problems the harness saw (a secret in a log, a node alive after
    /// teardown, a slot not idle at the end).
    pub problems: Vec<String>,
    pub entries: Vec<Entry>,
}

/// A height signed by more than one node process.
#[derive(Debug, Clone)]
pub struct DoubleSign {
    pub height: i64,
    pub signers: Vec<Signature>,
}

/// Two hosts' nodes holding the key at the same time.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub a: KeyHold,
    pub b: KeyHold,
    pub overlap_us: u64,
    /// Set when the later node got the key while the earlier one's whole tree was frozen.
    pub frozen: Option<Frozen>,
}

/// An overlap no lease can prevent: the older holder's whole process tree was SIGSTOPped
/// (nothing of it could run to stop its node) when the new node got the key.
#[derive(Debug, Clone)]
pub struct Frozen {
    pub fault_id: usize,
    /// SIGCONT.
    pub resumed_us: u64,
    /// How long the frozen node lived after SIGCONT.
    pub ran_after_resume_us: u64,
    /// Signatures the frozen node made after SIGCONT.
    pub signed_after_resume: usize,
}

/// No new height for a long healthy stretch.
#[derive(Debug, Clone)]
pub struct Stall {
    pub from_us: u64,
    pub to_us: u64,
    /// The longest stretch inside it during which some host was healthy.
    pub healthy_us: u64,
}

/// The checker's findings.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub double_signs: Vec<DoubleSign>,
    /// Overlaps any fencing could have prevented: failures.
    pub overlaps: Vec<Overlap>,
    /// Overlaps during a whole-tree freeze of the older holder: reported, not failures
    /// (the double-sign check still covers what the resumed node signs).
    pub frozen_overlaps: Vec<Overlap>,
    pub restore_failures: Vec<RestoreRec>,
    pub stalls: Vec<Stall>,
    pub problems: Vec<String>,
}

impl Verdict {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        !(self.double_signs.is_empty()
            && self.overlaps.is_empty()
            && self.restore_failures.is_empty()
            && self.stalls.is_empty()
            && self.problems.is_empty())
    }
}

/// Runs every check.
pub fn check(o: &Observations) -> Verdict {
    let (frozen_overlaps, overlaps): (Vec<Overlap>, Vec<Overlap>) = overlaps(&o.holds, o.end_us)
        .into_iter()
        .map(|ov| classify_frozen(o, ov))
        .partition(|ov| ov.frozen.is_some());
    Verdict {
        double_signs: double_signs(&o.signatures),
        overlaps,
        frozen_overlaps,
        restore_failures: o
            .restores
            .iter()
            .filter(|r| r.problem.is_some())
            .cloned()
            .collect(),
        stalls: stalls(o),
        problems: o.problems.clone(),
    }
}

/// Heights signed by more than one (host, pid).
pub fn double_signs(sigs: &[Signature]) -> Vec<DoubleSign> {
    let mut by_height: BTreeMap<i64, Vec<&Signature>> = BTreeMap::new();
    for s in sigs {
        by_height.entry(s.height).or_default().push(s);
    }
    by_height
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(height, v)| {
            let mut signers: Vec<Signature> = v.into_iter().cloned().collect();
            signers.sort_by_key(|s| s.unix_us);
            DoubleSign { height, signers }
        })
        .collect()
}

/// Pairs of different hosts' key-holding intervals that intersect (a node still alive at
/// the end holds until `end_us`).
pub fn overlaps(holds: &[KeyHold], end_us: u64) -> Vec<Overlap> {
    let end = |h: &KeyHold| h.death_us.unwrap_or(end_us.max(h.read_us));
    let mut out = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if a.host == b.host {
                continue;
            }
            let lo = a.read_us.max(b.read_us);
            let hi = end(a).min(end(b));
            if lo < hi {
                let (a, b) = if a.read_us <= b.read_us {
                    (a, b)
                } else {
                    (b, a)
                };
                out.push(Overlap {
                    a: a.clone(),
                    b: b.clone(),
                    overlap_us: hi - lo,
                    frozen: None,
                });
            }
        }
    }
    out
}

/// Marks an overlap (`a` the older hold) that began while `a`'s whole tree was frozen.
pub fn classify_frozen(o: &Observations, mut ov: Overlap) -> Overlap {
    let f = o.faults.iter().find(|f| {
        f.frozen.contains(&ov.a.host)
            && f.start_us >= ov.a.read_us
            && f.start_us <= ov.b.read_us
            && ov.b.read_us <= f.end_us
    });
    if let Some(f) = f {
        ov.frozen = Some(Frozen {
            fault_id: f.id,
            resumed_us: f.end_us,
            ran_after_resume_us: ov.a.death_us.unwrap_or(o.end_us).saturating_sub(f.end_us),
            signed_after_resume: o
                .signatures
                .iter()
                .filter(|s| {
                    s.host == ov.a.host && s.pid as i32 == ov.a.pid && s.unix_us >= f.end_us
                })
                .count(),
        });
    }
    ov
}

/// Intervals during which at least one host had no fault, merged.
fn healthy_intervals(o: &Observations) -> Vec<(u64, u64)> {
    // Per host, its unhealthy intervals; a host is healthy outside them.
    let mut per_host: BTreeMap<&str, Vec<(u64, u64)>> =
        o.hosts.iter().map(|h| (h.as_str(), Vec::new())).collect();
    for f in &o.faults {
        for h in &f.unhealthy {
            if let Some(v) = per_host.get_mut(h.as_str()) {
                v.push((f.start_us, f.end_us.max(f.start_us)));
            }
        }
    }
    let mut healthy = Vec::new();
    for bad in per_host.values_mut() {
        bad.sort_unstable();
        let mut t = o.start_us;
        for &(s, e) in bad.iter() {
            if s > t {
                healthy.push((t, s));
            }
            t = t.max(e);
        }
        if t < o.end_us {
            healthy.push((t, o.end_us));
        }
    }
    healthy.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in healthy {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Stretches of at least 4 lease durations without a new height, during which some host
/// was healthy the whole time.
pub fn stalls(o: &Observations) -> Vec<Stall> {
    let bound = 4 * o.lease_us;
    // Moments the highest signed height went up.
    let mut sigs: Vec<&Signature> = o.signatures.iter().collect();
    sigs.sort_by_key(|s| s.unix_us);
    let mut progress = vec![o.start_us];
    let mut max = i64::MIN;
    for s in sigs {
        if s.height > max {
            max = s.height;
            progress.push(s.unix_us);
        }
    }
    progress.push(o.end_us);
    let healthy = healthy_intervals(o);
    let mut out = Vec::new();
    for w in progress.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.saturating_sub(a) < bound {
            continue;
        }
        let longest = healthy
            .iter()
            .map(|&(s, e)| e.min(b).saturating_sub(s.max(a)))
            .max()
            .unwrap_or(0);
        if longest >= bound {
            out.push(Stall {
                from_us: a,
                to_us: b,
                healthy_us: longest,
            });
        }
    }
    out
}

/// Median and maximum of a list of µs values, as milliseconds.
fn med_max_ms(v: &mut [u64]) -> (u64, u64) {
    v.sort_unstable();
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (med / 1000, v[n - 1] / 1000)
}

/// For each fault that found a key-holding node, the time until another node process
/// (any host) had the key, if that happened before the next fault began.
pub fn handover_times(o: &Observations) -> BTreeMap<String, Vec<u64>> {
    let mut faults: Vec<&FaultRec> = o.faults.iter().collect();
    faults.sort_by_key(|f| f.start_us);
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, f) in faults.iter().enumerate() {
        let Some((host, pid)) = &f.holder else {
            continue;
        };
        let next_start = faults.get(i + 1).map(|n| n.start_us).unwrap_or(u64::MAX);
        let new = o
            .holds
            .iter()
            .filter(|h| h.read_us > f.start_us && h.read_us < next_start)
            .filter(|h| !(h.host == *host && h.pid == *pid))
            .map(|h| h.read_us)
            .min();
        if let Some(t) = new {
            out.entry(f.kind.clone()).or_default().push(t - f.start_us);
        }
    }
    out
}

/// The run's numbers and findings, as printed at the end of every run.
pub fn summary(o: &Observations, v: &Verdict) -> String {
    let mut s = String::new();
    let secs = (o.end_us.saturating_sub(o.start_us)) as f64 / 1e6;
    let _ = writeln!(
        s,
        "chaos run: seed {} ({} hosts, lease {} s, {:.0} s of chaos)",
        o.seed,
        o.hosts.len(),
        o.lease_us / 1_000_000,
        secs
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &o.faults {
        *kinds.entry(f.kind.as_str()).or_default() += 1;
    }
    let _ = writeln!(s, "faults: {} in all", o.faults.len());
    for (k, n) in &kinds {
        let _ = writeln!(s, "  {k:<36} {n}");
    }
    let mut holds = o.holds.clone();
    holds.sort_by_key(|h| h.read_us);
    let cross = holds.windows(2).filter(|w| w[0].host != w[1].host).count();
    let _ = writeln!(
        s,
        "handovers: {} key-holding node starts after the first, {} to another host",
        holds.len().saturating_sub(1),
        cross
    );
    let heights: BTreeSet<i64> = o.signatures.iter().map(|x| x.height).collect();
    let _ = writeln!(
        s,
        "heights signed: {} (signatures {}, highest {})",
        heights.len(),
        o.signatures.len(),
        heights.last().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "double-signed heights: {}", v.double_signs.len());
    let _ = writeln!(s, "overlapping key holds: {}", v.overlaps.len());
    if !v.frozen_overlaps.is_empty() {
        let ran = v
            .frozen_overlaps
            .iter()
            .filter_map(|x| x.frozen.as_ref())
            .map(|f| f.ran_after_resume_us)
            .max()
            .unwrap_or(0);
        let signed: usize = v
            .frozen_overlaps
            .iter()
            .filter_map(|x| x.frozen.as_ref())
            .map(|f| f.signed_after_resume)
            .sum();
        let _ = writeln!(
            s,
            "  and {} while the older holder's whole tree was frozen (no lease can fence that): its node died at most {:.1} ms after SIGCONT and signed {signed} times after it",
            v.frozen_overlaps.len(),
            ran as f64 / 1000.0
        );
    }
    let _ = writeln!(
        s,
        "restores: {} ({} failed)",
        o.restores.len(),
        v.restore_failures.len()
    );
    let _ = writeln!(
        s,
        "stalls (no new height for 4 leases while a host was healthy): {}",
        v.stalls.len()
    );
    let _ = writeln!(s, "other problems: {}", v.problems.len());
    let _ = writeln!(
        s,
        "handover times by fault kind (fault -> another node has the key):"
    );
    for (k, mut t) in handover_times(o) {
        let (med, max) = med_max_ms(&mut t);
        let _ = writeln!(
            s,
            "  {k:<36} n={:<3} median {med} ms, max {max} ms",
            t.len()
        );
    }
    s
}

/// The faults that began before `t` (the last `n`).
pub fn faults_before(o: &Observations, t: u64, n: usize) -> Vec<&FaultRec> {
    let mut f: Vec<&FaultRec> = o.faults.iter().filter(|f| f.start_us <= t).collect();
    f.sort_by_key(|f| f.start_us);
    let k = f.len().saturating_sub(n);
    f.split_off(k)
}

fn fmt_t(o: &Observations, t: u64) -> String {
    format!("{:>9.3}s", (t as f64 - o.start_us as f64) / 1e6)
}

/// Everything that happened in `[from, to]`, one line each, times from the run's start:
/// faults, tool events, key reads and deaths, and signatures as ranges per node.
pub fn timeline(o: &Observations, from: u64, to: u64) -> String {
    let mut lines: Vec<(u64, String)> = Vec::new();
    for f in &o.faults {
        if f.start_us >= from && f.start_us <= to {
            lines.push((
                f.start_us,
                format!("NEMESIS  fault #{} {} — {}", f.id, f.kind, f.detail),
            ));
        }
        if f.end_us > f.start_us && f.end_us >= from && f.end_us <= to {
            lines.push((f.end_us, format!("NEMESIS  fault #{} healed", f.id)));
        }
    }
    for e in &o.entries {
        if e.unix_us >= from && e.unix_us <= to {
            lines.push((e.unix_us, format!("{:<8} {}", e.host, e.what)));
        }
    }
    for h in &o.holds {
        if h.read_us >= from && h.read_us <= to {
            lines.push((
                h.read_us,
                format!("{:<8} KEY node pid {} has the key", h.host, h.pid),
            ));
        }
        if let Some(d) = h.death_us.filter(|d| *d >= from && *d <= to) {
            lines.push((
                d,
                format!(
                    "{:<8} KEY node pid {} dead{}",
                    h.host,
                    h.pid,
                    if h.death_exact { "" } else { " (seen gone)" }
                ),
            ));
        }
    }
    // Signatures per node process in the window, as runs of consecutive heights.
    let mut per_node: BTreeMap<(String, u32), Vec<&Signature>> = BTreeMap::new();
    for s in o
        .signatures
        .iter()
        .filter(|s| s.unix_us >= from && s.unix_us <= to)
    {
        per_node.entry((s.host.clone(), s.pid)).or_default().push(s);
    }
    for ((host, pid), mut v) in per_node {
        v.sort_by_key(|s| s.height);
        let mut i = 0;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1].height == v[j].height + 1 {
                j += 1;
            }
            lines.push((
                v[i].unix_us,
                format!(
                    "{host:<8} SIGNED pid {pid} heights {}..={} (until {})",
                    v[i].height,
                    v[j].height,
                    fmt_t(o, v[j].unix_us).trim()
                ),
            ));
            i = j + 1;
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    let mut s = String::new();
    for (t, l) in lines {
        let _ = writeln!(s, "{} {l}", fmt_t(o, t));
    }
    s
}

/// The findings in detail: each double-signed run of heights with its signers, the faults
/// before it and the timeline around it; each overlap; each other failure.
pub fn report(o: &Observations, v: &Verdict) -> String {
    let mut s = String::new();
    // Consecutive double-signed heights are one incident.
    let mut incidents: Vec<Vec<&DoubleSign>> = Vec::new();
    for d in &v.double_signs {
        match incidents.last_mut() {
            Some(last) if last.last().is_some_and(|p| p.height + 1 == d.height) => last.push(d),
            _ => incidents.push(vec![d]),
        }
    }
    for inc in &incidents {
        let first = inc[0];
        let last = inc[inc.len() - 1];
        let hosts: BTreeSet<String> = inc
            .iter()
            .flat_map(|d| d.signers.iter().map(|x| format!("{}/{}", x.host, x.pid)))
            .collect();
        let t = first.signers[1].unix_us;
        let _ = writeln!(
            s,
            "\nDOUBLE-SIGNED heights {}..={} ({} heights) by {:?}; first second signature at {}",
            first.height,
            last.height,
            inc.len(),
            hosts,
            fmt_t(o, t).trim()
        );
        for f in faults_before(o, t, 3) {
            let _ = writeln!(
                s,
                "  after fault #{} {} at {}: {}",
                f.id,
                f.kind,
                fmt_t(o, f.start_us).trim(),
                f.detail
            );
        }
        let _ = write!(
            s,
            "{}",
            timeline(o, t.saturating_sub(40_000_000), t + 3_000_000)
        );
    }
    for ov in v.overlaps.iter().chain(&v.frozen_overlaps) {
        let t = ov.a.read_us.max(ov.b.read_us);
        let label = match &ov.frozen {
            None => "OVERLAP".to_string(),
            Some(f) => format!(
                "(not a failure) FROZEN-TREE OVERLAP (fault #{}; the frozen node lived {:.1} ms after SIGCONT, signed {} times after it)",
                f.fault_id,
                f.ran_after_resume_us as f64 / 1000.0,
                f.signed_after_resume
            ),
        };
        let _ = writeln!(
            s,
            "\n{label} {} ms: {}/{} held the key [{}, {}] and {}/{} [{}, {}]",
            ov.overlap_us / 1000,
            ov.a.host,
            ov.a.pid,
            fmt_t(o, ov.a.read_us).trim(),
            ov.a.death_us
                .map(|d| fmt_t(o, d))
                .unwrap_or_else(|| "end".into())
                .trim(),
            ov.b.host,
            ov.b.pid,
            fmt_t(o, ov.b.read_us).trim(),
            ov.b.death_us
                .map(|d| fmt_t(o, d))
                .unwrap_or_else(|| "end".into())
                .trim(),
        );
        for f in faults_before(o, t, 2) {
            let _ = writeln!(
                s,
                "  after fault #{} {} at {}: {}",
                f.id,
                f.kind,
                fmt_t(o, f.start_us).trim(),
                f.detail
            );
        }
    }
    for r in &v.restore_failures {
        let _ = writeln!(
            s,
            "\nRESTORE FAILED on {} at {}: {}",
            r.host,
            fmt_t(o, r.unix_us).trim(),
            r.problem.as_deref().unwrap_or("")
        );
    }
    for st in &v.stalls {
        let _ = writeln!(
            s,
            "\nSTALL: no new height from {} to {} although a host was healthy for {} ms of it",
            fmt_t(o, st.from_us).trim(),
            fmt_t(o, st.to_us).trim(),
            st.healthy_us / 1000
        );
        let _ = write!(s, "{}", timeline(o, st.from_us, st.to_us));
    }
    for p in &v.problems {
        let _ = writeln!(s, "\nPROBLEM: {p}");
    }
    s
}
