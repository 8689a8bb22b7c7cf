//! Reading a CometBFT RPC endpoint for the guard: `/status`, the canonical
//! commits of a window of heights (`/commit?height=H` below the tip, which
//! CometBFT loads from block H+1's `last_commit`), and whether our address
//! is in the validator set. JSON over HTTP GET, http or https; v0.38 paths,
//! and v1's `/v1/` paths when the unprefixed ones are gone.
//!
//! An endpoint is the operator's own sentry, but its answers are still
//! input: each is bounded in size and time, parsed strictly, and nothing of
//! it reaches a log but the fields the rule reads.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::Value;

use super::rule::{Address, Commit, Flag, Observation, Signature, Status};
use super::settings::Endpoint;

/// No answer we read is larger (a commit of a few hundred validators is
/// tens of KiB).
const MAX_ANSWER: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP(S) client for the endpoints, on the caller's runtime.
pub(crate) struct Rpc {
    client: Client<Https, Empty<Bytes>>,
    request_timeout: Duration,
}

impl Rpc {
    /// A client trusting the system's CA store for https.
    pub(crate) fn new(request_timeout: Duration) -> Result<Rpc, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Rpc {
            client,
            request_timeout,
        })
    }

    /// `GET base+path` → the JSON-RPC `result`, or why not.
    async fn get(&self, base: &str, path: &str) -> Result<Value, String> {
        let uri: hyper::Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| format!("bad URL: {e}"))?;
        let fetch = async {
            let res = self
                .client
                .get(uri)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("answer unreadable or over {MAX_ANSWER} bytes: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.request_timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {:?}", self.request_timeout))??;
        if status == hyper::StatusCode::NOT_FOUND {
            return Err(NOT_FOUND.into());
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("HTTP {}: not JSON", status.as_u16()))?;
        if let Some(e) = v.get("error") {
            let said = e
                .get("data")
                .and_then(Value::as_str)
                .or_else(|| e.get("message").and_then(Value::as_str))
                .unwrap_or("an error");
            return Err(format!("it answered: {}", clean(said)));
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| format!("HTTP {}: no result", status.as_u16()))
    }

    /// What `ep` shows: its status, the canonical commits of `window(tip)`,
    /// and whether `me` is in its validator set at the tip. Stops asking at
    /// `by`.
    pub(crate) async fn observe(
        &self,
        ep: &Endpoint,
        me: Address,
        window: impl Fn(i64) -> std::ops::RangeInclusive<i64>,
        by: Instant,
    ) -> Observation {
        let mut o = Observation {
            endpoint: ep.base.clone(),
            status: Err("not asked".into()),
            commits: Ok(Vec::new()),
            in_set: None,
        };
        // v1 serves both; a later release serves only /v1/.
        let (prefix, status) = match self.get(&ep.base, "/status").await {
            Err(e) if e == NOT_FOUND => ("/v1", self.get(&ep.base, "/v1/status").await),
            r => ("", r),
        };
        o.status = status.and_then(|v| parse_status(&v));
        let Ok(st) = &o.status else {
            return o;
        };
        let tip = st.latest_height;
        let mut commits = Vec::new();
        for h in window(tip) {
            if Instant::now() >= by {
                tracing::warn!(endpoint = %ep.base, height = h, "guard: out of time before every height was read");
                break;
            }
            match self
                .get(&ep.base, &format!("{prefix}/commit?height={h}"))
                .await
                .and_then(|v| parse_commit(&v, h))
            {
                Ok(c) => commits.push(c),
                Err(e) => {
                    tracing::warn!(endpoint = %ep.base, height = h, error = %e, "guard: a height could not be read");
                    break;
                }
            }
        }
        o.commits = Ok(commits);
        if Instant::now() < by {
            o.in_set = self.in_set(&ep.base, prefix, tip, me).await;
        }
        o
    }

    /// Whether `me` is in the validator set at `height` (`None`: no answer).
    async fn in_set(&self, base: &str, prefix: &str, height: i64, me: Address) -> Option<bool> {
        let mut seen = 0u64;
        for page in 1..=20 {
            let v = self
                .get(
                    base,
                    &format!("{prefix}/validators?height={height}&page={page}&per_page=100"),
                )
                .await
                .ok()?;
            let vals = v.get("validators")?.as_array()?;
            if vals.iter().any(|x| {
                x.get("address")
                    .and_then(Value::as_str)
                    .and_then(Address::from_hex)
                    == Some(me)
            }) {
                return Some(true);
            }
            seen += vals.len() as u64;
            let total: u64 = v.get("total")?.as_str()?.parse().ok()?;
            if vals.is_empty() || seen >= total {
                return Some(false);
            }
        }
        None
    }
}

const NOT_FOUND: &str = "HTTP 404";

/// An error and its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    clean(&s)
}

/// Printable ASCII only, capped: text from the endpoint goes into our log.
fn clean(s: &str) -> String {
    crate::aws::clean(s, 200)
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .ok_or_else(|| format!("no {} in the answer", path.join(".")))
}

fn int_string(v: &Value, path: &[&str]) -> Result<i64, String> {
    let f = field(v, path)?;
    f.as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .or_else(|| f.as_i64())
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{} is not a height", path.join(".")))
}

fn time(v: &Value, path: &[&str]) -> Result<i64, String> {
    let s = field(v, path)?
        .as_str()
        .ok_or_else(|| format!("{} is not a time", path.join(".")))?;
    rfc3339_unix_ms(s).ok_or_else(|| format!("{} is not a time: {:?}", path.join("."), clean(s)))
}

/// `/status`'s `result`.
pub(crate) fn parse_status(v: &Value) -> Result<Status, String> {
    Ok(Status {
        network: field(v, &["node_info", "network"])?
            .as_str()
            .ok_or("node_info.network is not text")?
            .to_string(),
        catching_up: field(v, &["sync_info", "catching_up"])?
            .as_bool()
            .ok_or("sync_info.catching_up is not a boolean")?,
        latest_height: int_string(v, &["sync_info", "latest_block_height"])?,
        latest_unix_ms: time(v, &["sync_info", "latest_block_time"])?,
        earliest_height: int_string(v, &["sync_info", "earliest_block_height"])?,
    })
}

/// `/commit?height=H`'s `result`: the canonical commit for `height` only.
pub(crate) fn parse_commit(v: &Value, height: i64) -> Result<Commit, String> {
    if field(v, &["canonical"])?.as_bool() != Some(true) {
        return Err("not the canonical commit (the node's own seen commit at its tip)".into());
    }
    let got = int_string(v, &["signed_header", "commit", "height"])?;
    if got != height {
        return Err(format!("asked for height {height}, got {got}"));
    }
    let sigs = field(v, &["signed_header", "commit", "signatures"])?
        .as_array()
        .ok_or("signatures is not a list")?;
    let signatures = sigs
        .iter()
        .map(|s| {
            let code = s.get("block_id_flag").and_then(Value::as_u64);
            let flag = code
                .and_then(Flag::from_code)
                .ok_or_else(|| format!("unknown block_id_flag {code:?}"))?;
            let address = match s.get("validator_address").and_then(Value::as_str) {
                Some("") | None if flag == Flag::Absent => None,
                Some(a) => {
                    Some(Address::from_hex(a).ok_or("a validator_address is not 40 hex digits")?)
                }
                None => return Err("a signature without validator_address".to_string()),
            };
            let unix_ms = match flag {
                Flag::Absent => 0,
                _ => time(s, &["timestamp"])?,
            };
            Ok(Signature {
                flag,
                address,
                unix_ms,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Commit { height, signatures })
}

/// `2024-05-01T12:34:56.789012345Z` (or with `+hh:mm`) → Unix milliseconds.
pub(crate) fn rfc3339_unix_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (y, mo, d) = (num_in(s, 0..4)?, num_in(s, 5..7)?, num_in(s, 8..10)?);
    let (h, mi, se) = (num_in(s, 11..13)?, num_in(s, 14..16)?, num_in(s, 17..19)?);
    if b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let digits = &frac[..n];
        ms = format!("{:0<3}", &digits[..n.min(3)]).parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(o.as_bytes()[0], b'+' | b'-') && o.as_bytes()[3] == b':' => {
            let m = num_in(o, 1..3)? * 60 + num_in(o, 4..6)?;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Unix milliseconds as `2024-05-01T12:34:56.789Z` (for our messages).
pub(crate) fn unix_ms_rfc3339(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn num_in(s: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let t = s.get(r)?;
    t.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| t.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_as_cometbft_writes_them() {
        assert_eq!(rfc3339_unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_unix_ms("2024-05-01T12:34:56.789012345Z"),
            Some(1_714_566_896_789)
        );
        assert_eq!(
            rfc3339_unix_ms("2024-05-01T14:34:56.7+02:00"),
            Some(1_714_566_896_700)
        );
        assert_eq!(
            rfc3339_unix_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        // The zero time of an ABSENT entry.
        assert!(rfc3339_unix_ms("0001-01-01T00:00:00Z").unwrap() < 0);
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T00:00:00",
            "2024-05-01T00:00:00.Z",
            "x024-05-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339_unix_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_and_commit_as_v0_38_answers_them() {
        let st = json!({
            "node_info": {"network": "testchain-1"},
            "sync_info": {"latest_block_height": "120", "latest_block_time": "2024-05-01T12:34:56Z",
                          "earliest_block_height": "1", "catching_up": false}
        });
        let s = parse_status(&st).unwrap();
        assert_eq!(
            (s.latest_height, s.earliest_height, s.catching_up),
            (120, 1, false)
        );
        let me = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678";
        let c = json!({"canonical": true, "signed_header": {"commit": {"height": "119", "signatures": [
            {"block_id_flag": 2, "validator_address": me, "timestamp": "2024-05-01T12:34:50Z", "signature": "AA=="},
            {"block_id_flag": 1, "validator_address": "", "timestamp": "0001-01-01T00:00:00Z", "signature": null},
            {"block_id_flag": 3, "validator_address": me, "timestamp": "2024-05-01T12:34:51Z", "signature": "AA=="}
        ]}}});
        let c = parse_commit(&c, 119).unwrap();
        assert_eq!(c.signatures.len(), 3);
        assert_eq!(c.signatures[1].address, None);
        assert_eq!(c.signatures[2].flag, Flag::Nil);
        assert_eq!(c.signatures[2].address, Address::from_hex(me));
    }

    #[test]
    fn an_answer_that_is_not_what_was_asked_is_refused() {
        let c = |canonical, height: &str, sig: Value| json!({"canonical": canonical, "signed_header": {"commit": {"height": height, "signatures": [sig]}}});
        let ok = json!({"block_id_flag": 2, "validator_address": "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678", "timestamp": "2024-05-01T12:34:50Z"});
        assert!(parse_commit(&c(true, "119", ok.clone()), 119).is_ok());
        assert!(parse_commit(&c(false, "119", ok.clone()), 119)
            .unwrap_err()
            .contains("canonical"));
        assert!(parse_commit(&c(true, "118", ok.clone()), 119)
            .unwrap_err()
            .contains("118"));
        let flag9 = json!({"block_id_flag": 9, "validator_address": "", "timestamp": ""});
        assert!(parse_commit(&c(true, "119", flag9), 119)
            .unwrap_err()
            .contains("block_id_flag"));
        let bad_addr = json!({"block_id_flag": 2, "validator_address": "zz", "timestamp": "2024-05-01T12:34:50Z"});
        assert!(parse_commit(&c(true, "119", bad_addr), 119).is_err());
        assert!(parse_status(&json!({"node_info": {}}))
            .unwrap_err()
            .contains("network"));
    }
}
