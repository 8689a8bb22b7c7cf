//! Configuration: the original tool's environment variables, our additions,
//! and command-line flags that override both. Every error names the variable
//! or file at fault and says what would be accepted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default wait for the node to open the key FIFO, as the original tool.
pub const DEFAULT_KEY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Name of CometBFT's key file under `<home>/config/`.
pub const DEFAULT_KEY_FILE: &str = "config/priv_validator_key.json";

/// A configuration problem: which setting, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A boolean setting with a value that is neither true nor false.
    #[error("{name}={value:?} is not a boolean: use true or false (also accepted: 1/0, yes/no, on/off, any case)")]
    Bool {
        /// Variable or flag.
        name: &'static str,
        /// What was given.
        value: String,
    },
    /// A required setting is missing.
    #[error("{name} is not set: {hint}")]
    Missing {
        /// Variable or flag.
        name: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// A setting has a value we cannot use.
    #[error("{name}={value:?} is invalid: {hint}")]
    Invalid {
        /// Variable or flag.
        name: &'static str,
        /// What was given.
        value: String,
        /// What would be accepted.
        hint: String,
    },
    /// The node home does not exist or is not a directory.
    #[error("DAEMON_HOME {path:?} is not a directory ({reason}); set DAEMON_HOME (or --daemon-home) to the node's home, e.g. /var/lib/gaia/.gaia")]
    Home {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `config/config.toml` could not be parsed.
    #[error("cannot parse {path:?}: {reason}; fix the file or set SSM_COSMOVISOR_KEY_FILE to the key path")]
    ConfigToml {
        /// The file.
        path: PathBuf,
        /// Parser message (line and column).
        reason: String,
    },
    /// The node user does not exist.
    #[error(
        "node user {0:?} not found in the user database (SSM_COSMOVISOR_NODE_USER / --node-user)"
    )]
    NoSuchUser(String),
}

/// Parses a boolean strictly: a typo must never silently pick a side.
pub fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Bool {
            name,
            value: value.to_string(),
        }),
    }
}

/// Parses `15m`, `30s`, `500ms`, `1h` or plain seconds.
pub fn parse_duration(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let invalid = || ConfigError::Invalid {
        name,
        value: value.to_string(),
        hint: "use a duration such as 900, 90s, 15m, 1h or 500ms".into(),
    };
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let n: u64 = num.parse().map_err(|_| invalid())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60).ok_or_else(invalid)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(invalid)?),
        _ => return Err(invalid()),
    };
    if d.is_zero() {
        return Err(invalid());
    }
    Ok(d)
}

/// Output format of our log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, one line per event (journald adds the timestamp).
    #[default]
    Text,
    /// One JSON object per line with stable field names.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(name: &'static str, v: &str) -> Result<Self, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ConfigError::Invalid {
                name,
                value: v.to_string(),
                hint: "use text or json".into(),
            }),
        }
    }
}

/// Where the consensus key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// An SSM parameter (SecureString unless explicitly overridden).
    Ssm {
        /// Parameter name or ARN.
        parameter: String,
        /// Accept a plain `String` parameter (warned).
        allow_plain_string: bool,
    },
    /// A systemd credential file in `$CREDENTIALS_DIRECTORY`.
    Credential {
        /// Credential name.
        name: String,
        /// `$CREDENTIALS_DIRECTORY`.
        dir: PathBuf,
    },
}

impl SourceSpec {
    /// A short description for logs and `check` (never secret).
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Ssm { parameter, .. } => format!("ssm parameter {parameter}"),
            SourceSpec::Credential { name, dir } => {
                format!("systemd credential {name} in {}", dir.display())
            }
        }
    }
}

/// The unprivileged user the child is switched to (split-trust mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUser {
    /// As configured.
    pub name: String,
    /// Resolved uid.
    pub uid: u32,
    /// Resolved primary gid.
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
}

impl NodeUser {
    /// Resolves a user name or numeric uid through the user database.
    pub fn resolve(spec: &str) -> Result<Self, ConfigError> {
        use nix::unistd::{Uid, User};
        let user = match spec.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(spec),
        }
        .ok()
        .flatten()
        .ok_or_else(|| ConfigError::NoSuchUser(spec.to_string()))?;
        let cname = std::ffi::CString::new(user.name.clone())
            .map_err(|_| ConfigError::NoSuchUser(spec.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(NodeUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        })
    }
}

/// Settings given on the command line; `None` falls back to the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--use-ssm-key`.
    pub use_ssm_key: Option<String>,
    /// `--parameter`.
    pub parameter: Option<String>,
    /// `--daemon-home`.
    pub daemon_home: Option<PathBuf>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--key-timeout`.
    pub key_timeout: Option<String>,
    /// `--node-user`.
    pub node_user: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--expected-address`.
    pub expected_address: Option<String>,
    /// `--always-armed`.
    pub always_armed: bool,
    /// `--allow-plain-string`.
    pub allow_plain_string: bool,
    /// `--key-source`.
    pub key_source: Option<String>,
    /// `--cosmovisor-bin`.
    pub cosmovisor_bin: Option<PathBuf>,
    /// `--lease-table`.
    pub lease_table: Option<String>,
    /// `--lease-name`.
    pub lease_name: Option<String>,
    /// `--lease-duration`.
    pub lease_duration: Option<String>,
    /// `--lease-region`.
    pub lease_region: Option<String>,
    /// `--lease-takeover-heights`.
    pub lease_takeover_heights: Option<String>,
    /// `--lease-max-height-jump`.
    pub lease_max_height_jump: Option<String>,
}

/// A source of environment variables (the process environment, or a map in tests).
pub trait Env {
    /// The variable's value, if set and valid UTF-8.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.is_empty())
    }
}

/// Settings every command needs, resolved once.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether this host is the active signer.
    pub use_ssm_key: bool,
    /// Where the key comes from (resolved even when `use_ssm_key` is false,
    /// if configured, so `check` can report it).
    pub source: Option<SourceSpec>,
    /// The node home whose key slot we manage.
    pub home: PathBuf,
    /// The key path `P`.
    pub key_path: PathBuf,
    /// How long to wait for the node to read the key.
    pub key_timeout: Duration,
    /// Optional uid switch for the child.
    pub node_user: Option<NodeUser>,
    /// Log format.
    pub log_format: LogFormat,
    /// Refuse a key with another address.
    pub expected_address: Option<String>,
    /// Keep a FIFO at the key path after every delivery instead of the stripped file.
    pub always_armed: bool,
    /// cosmovisor binary (or name to look up on PATH).
    pub cosmovisor_bin: OsString,
    /// Failover lease (docs/design.md); `None`: `USE_SSM_KEY` alone decides.
    pub lease: Option<crate::lease::LeaseSettings>,
}

fn pick(flag: Option<String>, env: &dyn Env, var: &str) -> Option<String> {
    flag.filter(|v| !v.is_empty()).or_else(|| env.get(var))
}

/// The cosmovisor program: `--cosmovisor-bin`, else `COSMOVISOR_BIN`, else
/// `cosmovisor` looked up on `PATH`.
pub fn cosmovisor_bin(ov: &Overrides, env: &dyn Env) -> OsString {
    ov.cosmovisor_bin
        .clone()
        .map(PathBuf::into_os_string)
        .or_else(|| env.get("COSMOVISOR_BIN").map(OsString::from))
        .unwrap_or_else(|| OsString::from("cosmovisor"))
}

/// Finds `--home <dir>` or `--home=<dir>` in the node's arguments: the node
/// reads its key under that home, which may differ from `DAEMON_HOME`.
pub fn node_home_from_args(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--home" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--home=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// A file the node finds through its `config/config.toml` (`setting`,
/// relative to the home or absolute; `default` when the setting or the file is
/// absent). `Err((config.toml, reason))` when the file cannot be used.
pub fn node_file_from_config(
    home: &Path,
    setting: &str,
    default: &str,
) -> Result<PathBuf, (PathBuf, String)> {
    let cfg = home.join("config/config.toml");
    let rel = match std::fs::read_to_string(&cfg) {
        Ok(text) => {
            let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                (
                    cfg.clone(),
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap_or("syntax error")
                        .to_string(),
                )
            })?;
            match doc.get(setting) {
                None => PathBuf::from(default),
                Some(toml::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
                Some(_) => return Err((cfg, format!("{setting} must be a non-empty string"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathBuf::from(default),
        Err(e) => return Err((cfg, e.to_string())),
    };
    Ok(if rel.is_absolute() {
        rel
    } else {
        home.join(rel)
    })
}

/// Resolves the key path from the node's `config/config.toml`.
pub fn key_path_for_home(home: &Path) -> Result<PathBuf, ConfigError> {
    node_file_from_config(home, "priv_validator_key_file", DEFAULT_KEY_FILE)
        .map_err(|(path, reason)| ConfigError::ConfigToml { path, reason })
}

impl Config {
    /// Resolves the configuration from flags, then environment, then defaults.
    /// `node_args` are the arguments for the node (to find its `--home`).
    pub fn resolve(
        ov: &Overrides,
        env: &dyn Env,
        node_args: &[OsString],
    ) -> Result<Config, ConfigError> {
        let use_ssm_key = match (ov.use_ssm_key.as_deref(), env.get("USE_SSM_KEY")) {
            (Some(v), _) => parse_bool("--use-ssm-key", v)?,
            (None, Some(v)) => parse_bool("USE_SSM_KEY", &v)?,
            (None, None) => false,
        };

        let key_source = pick(ov.key_source.clone(), env, "KEY_SOURCE");
        let source = match key_source.as_deref() {
            None | Some("ssm") => match pick(ov.parameter.clone(), env, "AWS_PARAMETER") {
                Some(parameter) => Some(SourceSpec::Ssm {
                    parameter,
                    allow_plain_string: ov.allow_plain_string
                        || match env.get("SSM_COSMOVISOR_ALLOW_PLAIN_STRING") {
                            Some(v) => parse_bool("SSM_COSMOVISOR_ALLOW_PLAIN_STRING", &v)?,
                            None => false,
                        },
                }),
                None if use_ssm_key => {
                    return Err(ConfigError::Missing {
                        name: "AWS_PARAMETER",
                        hint: "USE_SSM_KEY=true needs the SSM parameter name holding the key (or --parameter)",
                    })
                }
                None => None,
            },
            Some(s) if s.starts_with("credential:") && s.len() > "credential:".len() => {
                let name = s["credential:".len()..].to_string();
                if name.contains('/') || name == "." || name == ".." {
                    return Err(ConfigError::Invalid {
                        name: "KEY_SOURCE",
                        value: s.to_string(),
                        hint: "a credential name is a plain file name".into(),
                    });
                }
                let dir = env.get("CREDENTIALS_DIRECTORY").ok_or(ConfigError::Missing {
                    name: "CREDENTIALS_DIRECTORY",
                    hint: "KEY_SOURCE=credential:NAME needs systemd's LoadCredential=/LoadCredentialEncrypted= (which sets it)",
                })?;
                Some(SourceSpec::Credential {
                    name,
                    dir: PathBuf::from(dir),
                })
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "KEY_SOURCE",
                    value: other.to_string(),
                    hint: "use ssm or credential:NAME".into(),
                })
            }
        };

        let daemon_home = ov
            .daemon_home
            .clone()
            .or_else(|| env.get("DAEMON_HOME").map(PathBuf::from))
            .ok_or(ConfigError::Missing {
                name: "DAEMON_HOME",
                hint: "set it to the node's home directory (cosmovisor needs it too), or pass --daemon-home",
            })?;
        let home = node_home_from_args(node_args).unwrap_or(daemon_home);
        match std::fs::metadata(&home) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ConfigError::Home {
                    path: home,
                    reason: "not a directory".into(),
                })
            }
            Err(e) => {
                return Err(ConfigError::Home {
                    path: home,
                    reason: e.to_string(),
                })
            }
        }

        let node_user = pick(ov.node_user.clone(), env, "SSM_COSMOVISOR_NODE_USER")
            .map(|u| NodeUser::resolve(&u))
            .transpose()?;
        let key_path = match ov
            .key_file
            .clone()
            .or_else(|| env.get("SSM_COSMOVISOR_KEY_FILE").map(PathBuf::from))
        {
            Some(p) if p.is_absolute() => p,
            Some(p) => home.join(p),
            // In split-trust mode root may lack CAP_DAC_READ_SEARCH for the
            // node's private home: read config.toml as the node would.
            None => match (&node_user, key_path_for_home(&home)) {
                (Some(u), Err(ConfigError::ConfigToml { reason, .. }))
                    if reason.contains("ermission denied")
                        && rustix::process::geteuid().is_root() =>
                {
                    crate::sys::with_fs_ids(u.uid, u.gid, || key_path_for_home(&home))?
                }
                (_, r) => r?,
            },
        };

        let key_timeout = match pick(ov.key_timeout.clone(), env, "SSM_COSMOVISOR_KEY_TIMEOUT") {
            Some(v) => parse_duration("SSM_COSMOVISOR_KEY_TIMEOUT", &v)?,
            None => DEFAULT_KEY_TIMEOUT,
        };
        let log_format = match pick(ov.log_format.clone(), env, "SSM_COSMOVISOR_LOG_FORMAT") {
            Some(v) => LogFormat::parse("SSM_COSMOVISOR_LOG_FORMAT", &v)?,
            None => LogFormat::Text,
        };
        let expected_address = pick(ov.expected_address.clone(), env, "SSM_COSMOVISOR_EXPECTED_ADDRESS")
            .map(|a| {
                let up = a.trim().to_ascii_uppercase();
                if up.len() == 40 && up.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(up)
                } else {
                    Err(ConfigError::Invalid {
                        name: "SSM_COSMOVISOR_EXPECTED_ADDRESS",
                        value: a,
                        hint: "a validator consensus address is 40 hex digits (as in priv_validator_key.json)".into(),
                    })
                }
            })
            .transpose()?;
        let always_armed = ov.always_armed
            || match env.get("SSM_COSMOVISOR_ALWAYS_ARMED") {
                Some(v) => parse_bool("SSM_COSMOVISOR_ALWAYS_ARMED", &v)?,
                None => false,
            };
        let cosmovisor_bin = cosmovisor_bin(ov, env);
        let lease = resolve_lease(ov, env, source.as_ref())?;

        Ok(Config {
            use_ssm_key,
            source,
            home,
            key_path,
            key_timeout,
            node_user,
            log_format,
            expected_address,
            always_armed,
            cosmovisor_bin,
            lease,
        })
    }
}

/// The lease settings, if a lease table is configured.
fn resolve_lease(
    ov: &Overrides,
    env: &dyn Env,
    source: Option<&SourceSpec>,
) -> Result<Option<crate::lease::LeaseSettings>, ConfigError> {
    use crate::lease::{LeaseSettings, DEFAULT_DURATION, MAX_DURATION, MIN_DURATION};
    let Some(table) = pick(ov.lease_table.clone(), env, "SSM_COSMOVISOR_LEASE_TABLE") else {
        return Ok(None);
    };
    let name = match (pick(ov.lease_name.clone(), env, "SSM_COSMOVISOR_LEASE_NAME"), source) {
        (Some(n), _) => n,
        (None, Some(SourceSpec::Ssm { parameter, .. })) => {
            crate::lease::lease_name_for_parameter(parameter)
        }
        (None, _) => {
            return Err(ConfigError::Missing {
                name: "SSM_COSMOVISOR_LEASE_NAME",
                hint: "with a lease table and a key source other than SSM, name the lease (the same on every host that may sign with this key)",
            })
        }
    };
    let duration = match pick(
        ov.lease_duration.clone(),
        env,
        "SSM_COSMOVISOR_LEASE_DURATION",
    ) {
        Some(v) => {
            let d = parse_duration("SSM_COSMOVISOR_LEASE_DURATION", &v)?;
            if d < MIN_DURATION || d > MAX_DURATION {
                return Err(ConfigError::Invalid {
                    name: "SSM_COSMOVISOR_LEASE_DURATION",
                    value: v,
                    hint: format!(
                        "between {}s and {}m: the holder renews every third of it and needs the last third to stop its node",
                        MIN_DURATION.as_secs(),
                        MAX_DURATION.as_secs() / 60
                    ),
                });
            }
            d
        }
        None => DEFAULT_DURATION,
    };
    let takeover_heights = match pick(
        ov.lease_takeover_heights.clone(),
        env,
        "SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS",
    ) {
        Some(v) => {
            let least = crate::lease::default_takeover_heights(duration);
            v.trim()
                .parse::<u32>()
                .map(i64::from)
                .ok()
                .filter(|n| *n >= least)
                .ok_or_else(|| ConfigError::Invalid {
                    name: "SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS",
                    value: v.clone(),
                    hint: format!("a number of block heights, at least {least} (the lease in seconds + 1): a holder that stopped renewing may sign that many before it is stopped; raise it for blocks faster than 1 s"),
                })?
        }
        // One height per second of the lease and one more: covers what the
        // old holder can sign between its last renewal and its stop for
        // chains with blocks of 1 s or slower.
        None => crate::lease::default_takeover_heights(duration),
    };
    let max_height_jump = match pick(
        ov.lease_max_height_jump.clone(),
        env,
        "SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP",
    ) {
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| i64::from(*n) >= takeover_heights)
            .map(i64::from)
            .ok_or_else(|| ConfigError::Invalid {
                name: "SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP",
                value: v.clone(),
                hint: format!("a number of heights, at least the takeover skip ({takeover_heights}), at most {}", u32::MAX),
            })?,
        None => crate::lease::DEFAULT_MAX_HEIGHT_JUMP.max(takeover_heights),
    };
    Ok(Some(LeaseSettings {
        table,
        name,
        holder: crate::lease::holder_id(),
        duration,
        region: pick(ov.lease_region.clone(), env, "SSM_COSMOVISOR_LEASE_REGION"),
        takeover_heights,
        max_height_jump,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn strict_booleans() {
        for t in ["true", "TRUE", "True", "1", "yes", "on"] {
            assert!(parse_bool("USE_SSM_KEY", t).unwrap());
        }
        for f in ["false", "FALSE", "0", "no", "off"] {
            assert!(!parse_bool("USE_SSM_KEY", f).unwrap());
        }
        let e = parse_bool("USE_SSM_KEY", "treu").unwrap_err().to_string();
        assert!(e.contains("USE_SSM_KEY=\"treu\""), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("x", "15m").unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(parse_duration("x", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_duration("x", "0").is_err());
        assert!(parse_duration("x", "fast").is_err());
        assert!(parse_duration("x", "5d").is_err());
    }

    #[test]
    fn key_path_from_config_toml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("config")).unwrap();
        assert_eq!(
            key_path_for_home(d.path()).unwrap(),
            d.path().join(DEFAULT_KEY_FILE)
        );
        std::fs::write(
            d.path().join("config/config.toml"),
            "moniker = \"x\"\npriv_validator_key_file = \"keys/pv.json\"\n",
        )
        .unwrap();
        assert_eq!(
            key_path_for_home(d.path()).unwrap(),
            d.path().join("keys/pv.json")
        );
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_key_file = \"/run/x/pv.json\"\n",
        )
        .unwrap();
        assert_eq!(
            key_path_for_home(d.path()).unwrap(),
            PathBuf::from("/run/x/pv.json")
        );
        std::fs::write(d.path().join("config/config.toml"), "this is [not toml").unwrap();
        let e = key_path_for_home(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.toml"), "{e}");
    }

    #[test]
    fn resolve_requires_parameter_when_active() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        let e = Config::resolve(
            &Overrides::default(),
            &env(&[("USE_SSM_KEY", "true"), ("DAEMON_HOME", home)]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("AWS_PARAMETER"), "{e}");
        let c = Config::resolve(
            &Overrides::default(),
            &env(&[("USE_SSM_KEY", "false"), ("DAEMON_HOME", home)]),
            &[],
        )
        .unwrap();
        assert!(!c.use_ssm_key);
        let e = Config::resolve(&Overrides::default(), &env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("DAEMON_HOME"), "{e}");
    }

    #[test]
    fn flags_override_env_and_node_home_wins() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ov = Overrides {
            use_ssm_key: Some("false".into()),
            ..Default::default()
        };
        let c = Config::resolve(
            &ov,
            &env(&[
                ("USE_SSM_KEY", "true"),
                ("DAEMON_HOME", d.path().to_str().unwrap()),
            ]),
            &["start".into(), "--home".into(), other.path().into()],
        )
        .unwrap();
        assert!(!c.use_ssm_key);
        assert_eq!(c.home, other.path());
        assert_eq!(c.key_path, other.path().join(DEFAULT_KEY_FILE));
    }
}
