//! The guard's settings: which CometBFT RPC endpoints to ask, how far back,
//! how long to wait, and what to do when none can be believed.

use std::time::Duration;

use crate::config::{parse_duration, pick_strict, ConfigError, Env, Overrides};

const RPC: &str = "SSM_COSMOVISOR_GUARD_RPC";
const LOOKBACK: &str = "SSM_COSMOVISOR_GUARD_LOOKBACK";
const REQUEST_TIMEOUT: &str = "SSM_COSMOVISOR_GUARD_REQUEST_TIMEOUT";
const TIMEOUT: &str = "SSM_COSMOVISOR_GUARD_TIMEOUT";
const MAX_TIP_AGE: &str = "SSM_COSMOVISOR_GUARD_MAX_TIP_AGE";
const ON_UNKNOWN: &str = "SSM_COSMOVISOR_GUARD_ON_UNKNOWN";

/// Heights below the tip read by default: an active signer shows in nearly
/// every commit, so a few dozen blocks find it.
pub(crate) const DEFAULT_LOOKBACK: i64 = 30;
const MAX_LOOKBACK: i64 = 1000;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_TIP_AGE: Duration = Duration::from_secs(60);
/// How far apart the believed endpoints' tips may be.
pub(crate) const MAX_SPREAD: i64 = 2;
/// Clock error allowed between a takeover's fence time (our clock) and the
/// old holder's vote timestamps (its clock): NTP keeps wall clocks far
/// closer; a lease's stop margin (a sixth of it) is larger still.
pub(crate) const FENCE_MARGIN: Duration = Duration::from_secs(5);

/// A CometBFT RPC base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// As configured, without a trailing slash (for logs and requests).
    pub(crate) base: String,
    pub(crate) tls: bool,
}

/// What happens when no endpoint can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnUnknown {
    /// No key (the default).
    Refuse,
    /// The key goes out, warned and counted.
    Deliver,
}

/// The guard's settings.
#[derive(Debug, Clone)]
pub(crate) struct GuardSettings {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) lookback: i64,
    pub(crate) request_timeout: Duration,
    /// The whole check, every endpoint and request included.
    pub(crate) timeout: Duration,
    pub(crate) max_tip_age: Duration,
    pub(crate) on_unknown: OnUnknown,
}

impl GuardSettings {
    /// The guard's settings; `None` when no endpoint is configured (no
    /// guard). An empty value is an error, as for every security setting.
    pub(crate) fn resolve(
        ov: &Overrides,
        env: &dyn Env,
    ) -> Result<Option<GuardSettings>, ConfigError> {
        let Some(list) = pick_strict(ov.guard_rpc.clone(), "--guard-rpc", env, RPC)? else {
            return Ok(None);
        };
        let name = if ov.guard_rpc.is_some() {
            "--guard-rpc"
        } else {
            RPC
        };
        let endpoints = list
            .split(',')
            .map(|u| parse_endpoint(name, u.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let lookback = match env.security_setting(LOOKBACK)? {
            None => DEFAULT_LOOKBACK,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if (1..=MAX_LOOKBACK).contains(&n) => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: LOOKBACK,
                        value: v,
                        hint: format!("a number of blocks from 1 to {MAX_LOOKBACK}"),
                    })
                }
            },
        };
        let duration = |name, default| -> Result<Duration, ConfigError> {
            match env.security_setting(name)? {
                None => Ok(default),
                Some(v) => parse_duration(name, &v),
            }
        };
        let request_timeout = duration(REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)?;
        let timeout = duration(TIMEOUT, DEFAULT_TIMEOUT)?;
        if timeout < request_timeout {
            return Err(ConfigError::Invalid {
                name: TIMEOUT,
                value: format!("{timeout:?}"),
                hint: format!(
                    "the whole check cannot be shorter than one request ({REQUEST_TIMEOUT}={request_timeout:?})"
                ),
            });
        }
        let on_unknown = match env.security_setting(ON_UNKNOWN)?.as_deref() {
            None | Some("refuse") => OnUnknown::Refuse,
            Some("deliver") => OnUnknown::Deliver,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    name: ON_UNKNOWN,
                    value: v.into(),
                    hint: "refuse (no key when no endpoint can be believed; the default) or deliver (the key goes out, warned)".into(),
                })
            }
        };
        Ok(Some(GuardSettings {
            endpoints,
            lookback,
            request_timeout,
            timeout,
            max_tip_age: duration(MAX_TIP_AGE, DEFAULT_MAX_TIP_AGE)?,
            on_unknown,
        }))
    }
}

/// `http://host[:port][/path]` or `https://...`, nothing after the path.
fn parse_endpoint(name: &'static str, url: &str) -> Result<Endpoint, ConfigError> {
    let invalid = |why: &str| {
        ConfigError::Invalid {
        name,
        value: url.to_string(),
        hint: format!(
            "{why}; give the base URL of a CometBFT RPC, e.g. http://sentry-1:26657, comma-separated for several"
        ),
    }
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(invalid("not an http:// or https:// URL"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(invalid("no host (user information is not accepted)"));
    }
    if rest.contains(['?', '#', ' ']) {
        return Err(invalid("a query, fragment or space"));
    }
    if url.parse::<hyper::Uri>().is_err() {
        return Err(invalid("not a valid URL"));
    }
    Ok(Endpoint {
        base: url.trim_end_matches('/').to_string(),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<Option<GuardSettings>, ConfigError> {
        GuardSettings::resolve(&Overrides::default(), &env(pairs))
    }

    #[test]
    fn unset_is_no_guard_empty_is_an_error_and_defaults_fail_closed() {
        assert!(resolve(&[]).unwrap().is_none());
        let e = resolve(&[(RPC, "")]).unwrap_err().to_string();
        assert!(e.contains(RPC), "{e}");
        let s = resolve(&[(RPC, "http://a:26657, https://b.example/rpc/")])
            .unwrap()
            .unwrap();
        assert_eq!(
            s.endpoints,
            [
                Endpoint {
                    base: "http://a:26657".into(),
                    tls: false
                },
                Endpoint {
                    base: "https://b.example/rpc".into(),
                    tls: true
                }
            ]
        );
        assert_eq!(s.on_unknown, OnUnknown::Refuse);
        assert_eq!(s.lookback, DEFAULT_LOOKBACK);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (pairs, name) in [
            (vec![(RPC, "ftp://a")], RPC),
            (vec![(RPC, "http://")], RPC),
            (vec![(RPC, "http://a:26657,")], RPC),
            (vec![(RPC, "http://u:p@a:26657")], RPC),
            (vec![(RPC, "http://a/status?x=1")], RPC),
            (vec![(RPC, "http://a"), (LOOKBACK, "0")], LOOKBACK),
            (vec![(RPC, "http://a"), (LOOKBACK, "")], LOOKBACK),
            (vec![(RPC, "http://a"), (ON_UNKNOWN, "maybe")], ON_UNKNOWN),
            (vec![(RPC, "http://a"), (TIMEOUT, "1s")], TIMEOUT),
            (vec![(RPC, "http://a"), (MAX_TIP_AGE, "soon")], MAX_TIP_AGE),
        ] {
            let e = resolve(&pairs).unwrap_err().to_string();
            assert!(e.contains(name), "{pairs:?}: {e}");
        }
        let s = resolve(&[(RPC, "http://a"), (ON_UNKNOWN, "deliver")])
            .unwrap()
            .unwrap();
        assert_eq!(s.on_unknown, OnUnknown::Deliver);
    }
}
