//! Lease settings and the identities that go into the record.

use std::time::Duration;

use crate::config::{parse_duration, pick, pick_strict, ConfigError, Env, Overrides, SourceSpec};

/// Default lease duration.
pub(crate) const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Shortest lease duration accepted (the tests use 3 s to 6 s).
pub(crate) const MIN_DURATION: Duration = Duration::from_secs(3);

/// Longest lease duration accepted, also for a duration read from a record:
/// a record claiming more would make every standby wait that long.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(600);

/// Default for the largest rise of this host's sign state a lease record
/// may cause without the operator confirming it (`accept-lease-state`).
/// A host that signed last more than this many heights ago must be brought
/// up to date once, as when a validator moves host (copy its state file).
pub(crate) const DEFAULT_MAX_HEIGHT_JUMP: i64 = 100_000;

/// Name of the table's partition key attribute.
pub(crate) const KEY_ATTR: &str = "lease";

/// Lease settings, resolved from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    /// DynamoDB table.
    pub(crate) table: String,
    /// The item's key: one lease per validator key.
    pub(crate) name: String,
    /// This process's holder id (host, pid, random suffix).
    pub(crate) holder_id: String,
    /// Lease duration.
    pub(crate) duration: Duration,
    /// Region of the table (`None`: the standard chain's region).
    pub(crate) region: Option<String>,
    /// Heights a host skips after taking over an *expired* lease (the old
    /// holder may have signed after its last renewal carried its state).
    pub(crate) takeover_heights: i64,
    /// Largest rise of our own sign state a record may cause unconfirmed.
    pub(crate) max_height_jump: i64,
}

impl LeaseSettings {
    /// Time between renewals.
    pub(crate) fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long after sending its last successful write the holder keeps its
    /// node; the last third of the duration is for stopping it.
    pub(crate) fn keep_for(&self) -> Duration {
        self.duration - self.duration / 3
    }

    /// How long the stop may take before SIGKILL (by the supervisor and, if
    /// it is stalled, by the fencer).
    pub(crate) fn stop_grace(&self) -> Duration {
        self.duration / 6
    }

    /// Heights to skip when taking over from a holder whose lease ran out
    /// with this duration: the configured skip, and at least one height per
    /// second of *its* duration and one more (a holder with a longer lease
    /// than ours kept its node longer).
    pub(crate) fn skip_after(&self, their_duration: Duration) -> i64 {
        self.takeover_heights
            .max(default_takeover_heights(their_duration.min(MAX_DURATION)))
    }
}

impl LeaseSettings {
    /// The lease settings from flags, then environment, then defaults; `None`
    /// when no lease table is configured (`USE_SSM_KEY` alone decides).
    pub(crate) fn resolve(
        ov: &Overrides,
        env: &dyn Env,
        source: Option<&SourceSpec>,
    ) -> Result<Option<LeaseSettings>, ConfigError> {
        let Some(table) = pick_strict(
            ov.lease_table.clone(),
            "--lease-table",
            env,
            "SSM_COSMOVISOR_LEASE_TABLE",
        )?
        else {
            return Ok(None);
        };
        let name = resolve_name(ov, env, source)?;
        let duration = resolve_duration(ov, env)?;
        let takeover_heights = resolve_takeover_heights(ov, env, duration)?;
        let max_height_jump = resolve_max_height_jump(ov, env, takeover_heights)?;
        Ok(Some(LeaseSettings {
            table,
            name,
            holder_id: holder_id(),
            duration,
            region: pick_strict(
                ov.lease_region.clone(),
                "--lease-region",
                env,
                "SSM_COSMOVISOR_LEASE_REGION",
            )?,
            takeover_heights,
            max_height_jump,
        }))
    }
}

/// The lease's name: given, else derived from the SSM parameter.
fn resolve_name(
    ov: &Overrides,
    env: &dyn Env,
    source: Option<&SourceSpec>,
) -> Result<String, ConfigError> {
    let given = pick_strict(
        ov.lease_name.clone(),
        "--lease-name",
        env,
        "SSM_COSMOVISOR_LEASE_NAME",
    )?;
    match (given, source) {
        (Some(n), _) => Ok(n),
        (None, Some(SourceSpec::Ssm { parameter, .. })) => Ok(lease_name_for_parameter(parameter)),
        (None, _) => Err(ConfigError::Missing {
            name: "SSM_COSMOVISOR_LEASE_NAME",
            hint: "with a lease table and a key source other than SSM, name the lease (the same on every host that may sign with this key)",
        }),
    }
}

fn resolve_duration(ov: &Overrides, env: &dyn Env) -> Result<Duration, ConfigError> {
    const VAR: &str = "SSM_COSMOVISOR_LEASE_DURATION";
    let Some(v) = pick(ov.lease_duration.clone(), env, VAR)? else {
        return Ok(DEFAULT_DURATION);
    };
    let d = parse_duration(VAR, &v)?;
    if d < MIN_DURATION || d > MAX_DURATION {
        return Err(ConfigError::Invalid {
            name: VAR,
            value: v,
            hint: format!(
                "between {}s and {}m: the holder renews every third of it and needs the last third to stop its node",
                MIN_DURATION.as_secs(),
                MAX_DURATION.as_secs() / 60
            ),
        });
    }
    Ok(d)
}

fn resolve_takeover_heights(
    ov: &Overrides,
    env: &dyn Env,
    duration: Duration,
) -> Result<i64, ConfigError> {
    const VAR: &str = "SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS";
    // One height per second of the lease and one more: covers what the old
    // holder can sign between its last renewal and its stop for chains with
    // blocks of 1 s or slower. Never less.
    let least = default_takeover_heights(duration);
    let Some(v) = pick(ov.lease_takeover_heights.clone(), env, VAR)? else {
        return Ok(least);
    };
    v.trim()
        .parse::<u32>()
        .map(i64::from)
        .ok()
        .filter(|n| *n >= least)
        .ok_or_else(|| ConfigError::Invalid {
            name: VAR,
            value: v.clone(),
            hint: format!("a number of block heights, at least {least} (the lease in seconds + 1): a holder that stopped renewing may sign that many before it is stopped; raise it for blocks faster than 1 s"),
        })
}

fn resolve_max_height_jump(
    ov: &Overrides,
    env: &dyn Env,
    takeover_heights: i64,
) -> Result<i64, ConfigError> {
    const VAR: &str = "SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP";
    let Some(v) = pick(ov.lease_max_height_jump.clone(), env, VAR)? else {
        return Ok(DEFAULT_MAX_HEIGHT_JUMP.max(takeover_heights));
    };
    v.trim()
        .parse::<u32>()
        .ok()
        .map(i64::from)
        .filter(|n| *n >= takeover_heights)
        .ok_or_else(|| ConfigError::Invalid {
            name: VAR,
            value: v.clone(),
            hint: format!(
                "a number of heights, at least the takeover skip ({takeover_heights}), at most {}",
                u32::MAX
            ),
        })
}

/// The default takeover skip for a lease duration: one height per second of
/// it and one more, for chains with blocks of 1 s or slower.
pub(crate) fn default_takeover_heights(duration: Duration) -> i64 {
    duration.as_secs() as i64 + 1
}

/// The lease name for an SSM parameter given by name or by ARN: both forms
/// must name the same lease, or two hosts could each hold "their" lease.
pub(crate) fn lease_name_for_parameter(parameter: &str) -> String {
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
pub(crate) fn holder_id() -> String {
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
        holder_id: holder_id(),
        duration,
        region: None,
        takeover_heights: default_takeover_heights(duration),
        max_height_jump: DEFAULT_MAX_HEIGHT_JUMP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolved(pairs: &[(&str, &str)]) -> Result<Option<LeaseSettings>, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let source = SourceSpec::Ssm {
            parameter: "arn:aws:ssm:eu-west-1:1:parameter/validators/a/key".into(),
            allow_plain_string: false,
        };
        LeaseSettings::resolve(&Overrides::default(), &env, Some(&source))
    }

    fn invalid_var(r: Result<Option<LeaseSettings>, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::Invalid { name, .. }) => name,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn no_table_no_lease_and_defaults_follow_the_duration() {
        assert!(resolved(&[]).unwrap().is_none());
        let s = resolved(&[("SSM_COSMOVISOR_LEASE_TABLE", "t")])
            .unwrap()
            .unwrap();
        assert_eq!(s.name, "/validators/a/key");
        assert_eq!(s.duration, DEFAULT_DURATION);
        assert_eq!(s.takeover_heights, 31);
        assert_eq!(s.max_height_jump, DEFAULT_MAX_HEIGHT_JUMP);
        let s = resolved(&[
            ("SSM_COSMOVISOR_LEASE_TABLE", "t"),
            ("SSM_COSMOVISOR_LEASE_DURATION", "6s"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.duration, s.takeover_heights),
            (Duration::from_secs(6), 7)
        );
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let t = ("SSM_COSMOVISOR_LEASE_TABLE", "t");
        for d in ["2s", "11m"] {
            let r = resolved(&[t, ("SSM_COSMOVISOR_LEASE_DURATION", d)]);
            assert_eq!(invalid_var(r), "SSM_COSMOVISOR_LEASE_DURATION", "{d}");
        }
        // The skip may not go below the lease in seconds + 1.
        let r = resolved(&[
            t,
            ("SSM_COSMOVISOR_LEASE_DURATION", "6s"),
            ("SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS", "6"),
        ]);
        assert_eq!(invalid_var(r), "SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS");
        // Nor the jump below the skip.
        let r = resolved(&[
            t,
            ("SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS", "50"),
            ("SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP", "49"),
        ]);
        assert_eq!(invalid_var(r), "SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP");
        let s = resolved(&[
            t,
            ("SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS", "50"),
            ("SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP", "50"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((s.takeover_heights, s.max_height_jump), (50, 50));
    }

    /// An empty lease setting is an error, never "no lease" or a default.
    #[test]
    fn empty_lease_settings_are_errors() {
        for (var, with_table) in [
            ("SSM_COSMOVISOR_LEASE_TABLE", false),
            ("SSM_COSMOVISOR_LEASE_NAME", true),
            ("SSM_COSMOVISOR_LEASE_REGION", true),
        ] {
            let mut pairs = vec![(var, "")];
            if with_table {
                pairs.push(("SSM_COSMOVISOR_LEASE_TABLE", "t"));
            }
            match resolved(&pairs) {
                Err(ConfigError::Empty { name, .. }) => assert_eq!(name, var),
                other => panic!("{var}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_non_utf8_lease_table_is_an_error_naming_it() {
        use std::os::unix::ffi::OsStrExt;
        let env: HashMap<String, std::ffi::OsString> = [(
            "SSM_COSMOVISOR_LEASE_TABLE".to_string(),
            std::ffi::OsStr::from_bytes(b"t\xff").to_os_string(),
        )]
        .into();
        match LeaseSettings::resolve(&Overrides::default(), &env, None) {
            Err(ConfigError::NotUtf8 { name, .. }) => {
                assert_eq!(name, "SSM_COSMOVISOR_LEASE_TABLE")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lease_without_an_ssm_parameter_must_be_named() {
        let env: HashMap<String, String> =
            [("SSM_COSMOVISOR_LEASE_TABLE".to_string(), "t".to_string())].into();
        let cred = SourceSpec::Credential {
            name: "k".into(),
            dir: "/run/credentials/x".into(),
        };
        match LeaseSettings::resolve(&Overrides::default(), &env, Some(&cred)) {
            Err(ConfigError::Missing { name, .. }) => assert_eq!(name, "SSM_COSMOVISOR_LEASE_NAME"),
            other => panic!("{other:?}"),
        }
    }

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
