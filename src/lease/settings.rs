//! Lease settings and the identities that go into the record.

use std::time::Duration;

/// Default lease duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Shortest lease duration accepted (the tests use 3 s to 6 s).
pub const MIN_DURATION: Duration = Duration::from_secs(3);

/// Longest lease duration accepted, also for a duration read from a record:
/// a record claiming more would make every standby wait that long.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// Default for the largest rise of this host's sign state a lease record
/// may cause without the operator confirming it (`accept-lease-state`).
/// A host that signed last more than this many heights ago must be brought
/// up to date once, as when a validator moves host (copy its state file).
pub const DEFAULT_MAX_HEIGHT_JUMP: i64 = 100_000;

/// Name of the table's partition key attribute.
pub const KEY_ATTR: &str = "lease";

/// Lease settings, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// DynamoDB table.
    pub table: String,
    /// The item's key: one lease per validator key.
    pub name: String,
    /// This process's holder id (host, pid, random suffix).
    pub holder: String,
    /// Lease duration.
    pub duration: Duration,
    /// Region of the table (`None`: the standard chain's region).
    pub region: Option<String>,
    /// Heights a host skips after taking over an *expired* lease (the old
    /// holder may have signed after its last renewal carried its state).
    pub takeover_heights: i64,
    /// Largest rise of our own sign state a record may cause unconfirmed.
    pub max_height_jump: i64,
}

impl LeaseSettings {
    /// Time between renewals.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long after sending its last successful write the holder keeps its
    /// node; the last third of the duration is for stopping it.
    pub fn keep_for(&self) -> Duration {
        self.duration - self.duration / 3
    }

    /// How long the stop may take before SIGKILL (by the supervisor and, if
    /// it is stalled, by the fencer).
    pub fn stop_grace(&self) -> Duration {
        self.duration / 6
    }

    /// Heights to skip when taking over from a holder whose lease ran out
    /// with this duration: the configured skip, and at least one height per
    /// second of *its* duration and one more (a holder with a longer lease
    /// than ours kept its node longer).
    pub fn skip_after(&self, their_duration: Duration) -> i64 {
        self.takeover_heights
            .max(default_takeover_heights(their_duration.min(MAX_DURATION)))
    }
}

/// The default takeover skip for a lease duration: one height per second of
/// it and one more, for chains with blocks of 1 s or slower.
pub fn default_takeover_heights(duration: Duration) -> i64 {
    duration.as_secs() as i64 + 1
}

/// The lease name for an SSM parameter given by name or by ARN: both forms
/// must name the same lease, or two hosts could each hold "their" lease.
pub fn lease_name_for_parameter(parameter: &str) -> String {
    let name = match parameter.split_once(":parameter") {
        Some((head, tail)) if head.starts_with("arn:") => tail,
        _ => parameter,
    };
    // A flat name's ARN has a slash the name itself does not.
    match name.strip_prefix('/') {
        Some(rest) if !rest.contains('/') => rest.to_string(),
        _ => name.to_string(),
    }
}

/// A holder id: hostname, pid and a random suffix, so a restarted process on
/// the same host is a different holder (it cannot know whether its previous
/// life's node is really gone).
pub fn holder_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host}/{}/{}", std::process::id(), &random_hex()[..8])
}

/// 32 random hex digits (record versions, holder suffixes).
pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .expect("getrandom cannot fail for 16 bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
pub(crate) fn test_settings(duration_s: u64) -> LeaseSettings {
    let duration = Duration::from_secs(duration_s);
    LeaseSettings {
        table: "t".into(),
        name: "n".into(),
        holder: holder_id(),
        duration,
        region: None,
        takeover_heights: default_takeover_heights(duration),
        max_height_jump: DEFAULT_MAX_HEIGHT_JUMP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_name_and_arn_give_the_same_lease() {
        for (given, lease) in [
            ("/validators/a/key", "/validators/a/key"),
            (
                "arn:aws:ssm:eu-west-1:123456789012:parameter/validators/a/key",
                "/validators/a/key",
            ),
            ("flatkey", "flatkey"),
            (
                "arn:aws:ssm:eu-west-1:123456789012:parameter/flatkey",
                "flatkey",
            ),
        ] {
            assert_eq!(lease_name_for_parameter(given), lease, "{given}");
        }
    }

    #[test]
    fn lease_timing_leaves_the_holder_a_sixth_after_the_kill() {
        let s = test_settings(30);
        assert_eq!(s.renew_every(), Duration::from_secs(10));
        assert_eq!(s.keep_for(), Duration::from_secs(20));
        assert_eq!(s.stop_grace(), Duration::from_secs(5));
        assert!(s.keep_for() + s.stop_grace() < s.duration);
        assert_ne!(holder_id(), holder_id());
    }

    #[test]
    fn the_skip_covers_the_old_holders_longer_lease() {
        let s = test_settings(30);
        assert_eq!(s.skip_after(Duration::from_secs(30)), 31);
        assert_eq!(s.skip_after(Duration::from_secs(6)), 31, "never below ours");
        assert_eq!(s.skip_after(Duration::from_secs(120)), 121);
        assert_eq!(s.skip_after(Duration::from_secs(10_000)), 601, "bounded");
    }
}
