//! Configuration: the original tool's environment variables, our additions,
//! and command-line flags that override both. Every error names the variable
//! or file at fault and says what would be accepted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::NodeIdentity;

/// Default wait for the node to open the key FIFO, as the original tool.
pub(crate) const DEFAULT_KEY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Name of CometBFT's key file under `<home>/config/`.
pub(crate) const DEFAULT_KEY_FILE: &str = "config/priv_validator_key.json";

/// A configuration problem: which setting, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
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
    Home { path: PathBuf, reason: String },
    /// The node's arguments give `--home` more than once.
    #[error("the node arguments give --home {} times ({}): the node would use the last one, and the key slot guarded must be the node's; give --home once", homes.len(), homes.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", "))]
    HomeRepeated {
        /// Every home given, in order.
        homes: Vec<PathBuf>,
    },
    /// `config/config.toml` could not be parsed.
    #[error("cannot parse {path:?}: {reason}; fix the file or set SSM_COSMOVISOR_KEY_FILE to the key path")]
    ConfigToml {
        path: PathBuf,
        /// Parser message (line and column).
        reason: String,
    },
    /// The node user does not exist.
    #[error(
        "node user {0:?} not found in the user database (SSM_COSMOVISOR_NODE_USER / --node-user)"
    )]
    NoSuchUser(String),
    /// A variable is set, but its value is not valid UTF-8.
    #[error("{name} is set but its value is not valid UTF-8 (read as {lossy:?}): a setting that cannot be read must not count as unset; give it a UTF-8 value or unset it")]
    NotUtf8 {
        /// Variable.
        name: &'static str,
        /// The value with invalid bytes replaced (at most 64 characters).
        lossy: String,
    },
    /// A security setting is set to an empty value.
    #[error("{name} is set to an empty value: {hint}. Give it a value, or remove it if you mean it to be unset")]
    Empty {
        /// Variable or flag.
        name: &'static str,
        /// What an empty value would have meant.
        hint: &'static str,
    },
    /// The AWS SDK's body logging is switched on.
    #[error("{SDK_BODY_LOGGING} is set in the environment: with it the AWS SDK writes HTTP bodies to the trace log, and ours carry the consensus key (GetParameter, PutParameter) and AWS credentials. Refusing to run; unset it (SSM_COSMOVISOR_LOG=debug shows every request and retry without their bodies)")]
    SdkBodyLogging,
    /// Split trust without a key path from root's configuration.
    #[error("split-trust mode (root running the node as {user:?}): the key path must come from root's configuration, never from the node-owned config.toml. Set SSM_COSMOVISOR_KEY_FILE (or --key-file) to the key path, e.g. /run/ssm-cosmovisor/<node>/priv_validator_key.json, and priv_validator_key_file in the node's config.toml to the same path")]
    SplitKeyFile { user: String },
    /// Split trust: the node's config.toml names another key path than root's.
    #[error("the node reads its key from {node_reads:?} ({why} {config_toml:?}) but SSM_COSMOVISOR_KEY_FILE / --key-file is {key_file:?}: the node would never read the key FIFO. Set priv_validator_key_file = {key_file:?} in config.toml (root's setting decides the key path; config.toml is only checked against it)")]
    KeyPathMismatch {
        /// The node's config.toml.
        config_toml: PathBuf,
        /// Where the node would read its key.
        node_reads: PathBuf,
        /// Whether config.toml sets it or the default applies.
        why: &'static str,
        /// Root's key path.
        key_file: PathBuf,
    },
}

/// Parses a boolean strictly: a typo must never silently pick a side.
pub(crate) fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
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
pub(crate) fn parse_duration(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
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
pub(crate) enum LogFormat {
    /// Human-readable, one line per event (journald adds the timestamp).
    #[default]
    Text,
    /// One JSON object per line with stable field names.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub(crate) fn parse(name: &'static str, v: &str) -> Result<Self, ConfigError> {
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
pub(crate) enum SourceSpec {
    /// An SSM parameter (SecureString unless explicitly overridden).
    Ssm {
        /// Parameter name or ARN.
        parameter: String,
        /// Accept a plain `String` parameter (warned).
        allow_plain_string: bool,
    },
    /// A systemd credential file in `$CREDENTIALS_DIRECTORY`.
    Credential {
        name: String,
        /// `$CREDENTIALS_DIRECTORY`.
        dir: PathBuf,
    },
}

impl SourceSpec {
    /// A short description for logs and `check` (never secret).
    pub(crate) fn describe(&self) -> String {
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
pub(crate) struct NodeUser {
    /// As configured.
    pub(crate) name: String,
    /// Resolved uid.
    pub(crate) uid: u32,
    /// Resolved primary gid.
    pub(crate) gid: u32,
    /// Supplementary groups (including the primary one).
    pub(crate) groups: Vec<u32>,
}

impl NodeUser {
    /// Resolves a user name or numeric uid through the user database.
    pub(crate) fn resolve(spec: &str) -> Result<Self, ConfigError> {
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

/// Settings given on the command line (global flags of every command);
/// `None` falls back to the environment. A boolean flag is parsed as its
/// variable is (`parse_bool`) and wins over it either way; `--always-armed`
/// and `--allow-plain-string` alone mean `=true`.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct Overrides {
    /// Whether this host is the active signer [env: USE_SSM_KEY] (true/false, 1/0, yes/no).
    #[arg(long, global = true, value_name = "BOOL")]
    pub(crate) use_ssm_key: Option<String>,
    /// SSM parameter holding the key [env: AWS_PARAMETER].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) parameter: Option<String>,
    /// Key source: `ssm` or `credential:NAME` [env: KEY_SOURCE].
    #[arg(long, global = true, value_name = "SOURCE")]
    pub(crate) key_source: Option<String>,
    /// Node home [env: DAEMON_HOME].
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) daemon_home: Option<PathBuf>,
    /// Key path, overriding config.toml's priv_validator_key_file [env: SSM_COSMOVISOR_KEY_FILE].
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// How long the node may take to read the key, e.g. 15m [env: SSM_COSMOVISOR_KEY_TIMEOUT].
    #[arg(long, global = true, value_name = "DURATION")]
    pub(crate) key_timeout: Option<String>,
    /// Run the child as this user (split-trust mode, needs root) [env: SSM_COSMOVISOR_NODE_USER].
    #[arg(long, global = true, value_name = "USER")]
    pub(crate) node_user: Option<String>,
    /// Log format: text or json [env: SSM_COSMOVISOR_LOG_FORMAT].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Refuse a key with any other address [env: SSM_COSMOVISOR_EXPECTED_ADDRESS].
    #[arg(long, global = true, value_name = "HEX")]
    pub(crate) expected_address: Option<String>,
    /// Keep a fresh FIFO at the key path after every delivery instead of the stripped file [env: SSM_COSMOVISOR_ALWAYS_ARMED].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) always_armed: Option<String>,
    /// Accept a plain String parameter (unencrypted in SSM) [env: SSM_COSMOVISOR_ALLOW_PLAIN_STRING].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) allow_plain_string: Option<String>,
    /// cosmovisor binary [env: COSMOVISOR_BIN; default: cosmovisor on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) cosmovisor_bin: Option<PathBuf>,
    /// DynamoDB table for the failover lease; unset: no lease [env: SSM_COSMOVISOR_LEASE_TABLE].
    #[arg(long, global = true, value_name = "TABLE")]
    pub(crate) lease_table: Option<String>,
    /// Lease name, the same on every host of this validator [env: SSM_COSMOVISOR_LEASE_NAME; default: the parameter name].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) lease_name: Option<String>,
    /// Lease duration, e.g. 30s [env: SSM_COSMOVISOR_LEASE_DURATION; default 30s, 3s to 10m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub(crate) lease_duration: Option<String>,
    /// Region of the lease table [env: SSM_COSMOVISOR_LEASE_REGION; default: AWS_REGION].
    #[arg(long, global = true, value_name = "REGION")]
    pub(crate) lease_region: Option<String>,
    /// Heights skipped after taking over an expired lease [env: SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS; default: duration in seconds + 1].
    #[arg(long, global = true, value_name = "N")]
    pub(crate) lease_takeover_heights: Option<String>,
    /// Largest rise of this host's sign state a lease may cause unconfirmed [env: SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP; default 100000].
    #[arg(long, global = true, value_name = "N")]
    pub(crate) lease_max_height_jump: Option<String>,
    /// AWS profile for cosmovisor (AWS_PROFILE in its environment); refused if it can read the key [env: SSM_COSMOVISOR_CHILD_AWS_PROFILE; default: no AWS variable for the child].
    #[arg(long, global = true, value_name = "PROFILE")]
    pub(crate) child_aws_profile: Option<String>,
    /// CometBFT RPC base URLs the guard asks before the key goes out, comma-separated; unset: no guard [env: SSM_COSMOVISOR_GUARD_RPC].
    #[arg(long, global = true, value_name = "URLS")]
    pub(crate) guard_rpc: Option<String>,
}

/// The AWS SDK's switch that puts request and response bodies into its trace log.
pub(crate) const SDK_BODY_LOGGING: &str = "LOG_SENSITIVE_BODIES";

/// Refuses the SDK's body logging: set to any value, it is an error (the
/// SDK honours `true` in any case; no value of it is ever needed here).
pub(crate) fn refuse_sdk_body_logging(env: &dyn Env) -> Result<(), ConfigError> {
    match env.var_os(SDK_BODY_LOGGING) {
        Some(_) => Err(ConfigError::SdkBodyLogging),
        None => Ok(()),
    }
}

/// A source of environment variables (the process environment, or a map in tests).
pub(crate) trait Env {
    /// The variable's raw value, if set (also when empty or not UTF-8).
    fn var_os(&self, name: &str) -> Option<OsString>;

    /// Lenient: the value if set, non-empty and UTF-8, else `None`. Only for
    /// what is read before a configuration error can be reported (the log
    /// format); everything else goes through [`Env::setting`].
    fn get(&self, name: &str) -> Option<String> {
        self.var_os(name)?
            .into_string()
            .ok()
            .filter(|v| !v.is_empty())
    }

    /// A setting: `None` when unset or empty (the default applies), an
    /// error naming the variable when its value is not valid UTF-8.
    fn setting(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(utf8(name, self.var_os(name))?.filter(|v| !v.is_empty()))
    }

    /// A security setting: `None` only when unset; empty or non-UTF-8 is an
    /// error naming the variable (an empty value must never silently
    /// switch a check off or pick a default).
    fn security_setting(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match utf8(name, self.var_os(name))? {
            Some(v) if v.is_empty() => Err(ConfigError::Empty {
                name,
                hint: empty_means(name),
            }),
            v => Ok(v),
        }
    }
}

fn utf8(name: &'static str, v: Option<OsString>) -> Result<Option<String>, ConfigError> {
    v.map(|v| {
        v.into_string().map_err(|raw| ConfigError::NotUtf8 {
            name,
            lossy: raw.to_string_lossy().chars().take(64).collect(),
        })
    })
    .transpose()
}

/// What an empty value of a security setting would have done, for its error.
fn empty_means(name: &str) -> &'static str {
    match name {
        "USE_SSM_KEY" | "--use-ssm-key" => {
            "an empty value must not decide whether this host signs; use true or false"
        }
        "SSM_COSMOVISOR_NODE_USER" | "--node-user" => {
            "an empty node user would leave the node running as this process's user (root in split-trust mode)"
        }
        "SSM_COSMOVISOR_EXPECTED_ADDRESS" | "--expected-address" => {
            "an empty expected address would switch the address check off"
        }
        "SSM_COSMOVISOR_KEY_FILE" | "--key-file" => {
            "an empty key path would fall back to another key path"
        }
        "SSM_COSMOVISOR_LEASE_TABLE" | "--lease-table" => {
            "an empty lease table would switch the failover lease off"
        }
        "SSM_COSMOVISOR_LEASE_NAME" | "--lease-name" => {
            "an empty lease name would fall back to the default, possibly another lease than the other hosts hold"
        }
        "SSM_COSMOVISOR_LEASE_REGION" | "--lease-region" => {
            "an empty lease region would fall back to AWS_REGION, possibly another lease table than the other hosts use"
        }
        "SSM_COSMOVISOR_CHILD_AWS_PROFILE" | "--child-aws-profile" => {
            "an empty profile name would leave cosmovisor's AWS identity to the SDKs' defaults, which the check that it cannot read the key does not cover"
        }
        "--always-armed" | "--allow-plain-string" => {
            "give the flag alone for true, or =true / =false"
        }
        _ => "this setting has no safe meaning when empty",
    }
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var_os(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var_os(&self, name: &str) -> Option<OsString> {
        std::collections::HashMap::get(self, name).map(OsString::from)
    }
}

impl Env for std::collections::HashMap<String, OsString> {
    fn var_os(&self, name: &str) -> Option<OsString> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Settings every command needs, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Whether this host is the active signer.
    pub(crate) use_ssm_key: bool,
    /// Where the key comes from (resolved even when `use_ssm_key` is false,
    /// if configured, so `check` can report it).
    pub(crate) source: Option<SourceSpec>,
    /// The node home whose key slot we manage.
    pub(crate) home: PathBuf,
    /// The key path `P`.
    pub(crate) key_path: PathBuf,
    /// How long to wait for the node to read the key.
    pub(crate) key_timeout: Duration,
    /// Optional uid switch for the child.
    pub(crate) node_user: Option<NodeUser>,
    /// The node's uid/gid (the node user's, else ours), for what we do as the node.
    pub(crate) node: NodeIdentity,
    pub(crate) log_format: LogFormat,
    /// Refuse a key with another address.
    pub(crate) expected_address: Option<String>,
    /// Keep a FIFO at the key path after every delivery instead of the stripped file.
    pub(crate) always_armed: bool,
    /// cosmovisor binary (or name to look up on PATH).
    pub(crate) cosmovisor_bin: OsString,
    /// The AWS profile the child gets as `AWS_PROFILE` (else no AWS variable at all).
    pub(crate) child_aws_profile: Option<String>,
}

/// A flag's value, else the variable's; an empty one counts as unset (the
/// setting's documented default applies).
pub(crate) fn pick(
    flag: Option<String>,
    env: &dyn Env,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match flag.filter(|v| !v.is_empty()) {
        Some(v) => Ok(Some(v)),
        None => env.setting(var),
    }
}

/// As [`pick`] for a security setting: an empty flag or variable is an error.
pub(crate) fn pick_strict(
    flag: Option<String>,
    flag_name: &'static str,
    env: &dyn Env,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match flag {
        Some(v) if v.is_empty() => Err(ConfigError::Empty {
            name: flag_name,
            hint: empty_means(flag_name),
        }),
        Some(v) => Ok(Some(v)),
        None => env.security_setting(var),
    }
}

/// A boolean setting, one rule for all: the flag wins over the variable
/// either way, both are read by [`parse_bool`], an empty flag is an error,
/// and the error names whichever was given. `var` is the variable's value as
/// its class reads it ([`Env::security_setting`] refuses an empty one,
/// [`Env::setting`] takes it as unset).
pub(crate) fn boolean(
    flag: Option<String>,
    flag_name: &'static str,
    var: (&'static str, Option<String>),
) -> Result<Option<bool>, ConfigError> {
    match (flag, var) {
        (Some(f), _) if f.is_empty() => Err(ConfigError::Empty {
            name: flag_name,
            hint: empty_means(flag_name),
        }),
        (Some(f), _) => parse_bool(flag_name, &f).map(Some),
        (None, (name, Some(v))) => parse_bool(name, &v).map(Some),
        (None, (_, None)) => Ok(None),
    }
}

const ALWAYS_ARMED: &str = "SSM_COSMOVISOR_ALWAYS_ARMED";
const PLAIN: &str = "SSM_COSMOVISOR_ALLOW_PLAIN_STRING";

/// The cosmovisor program: `--cosmovisor-bin`, else `COSMOVISOR_BIN`, else
/// `cosmovisor` looked up on `PATH`.
pub(crate) fn cosmovisor_bin(ov: &Overrides, env: &dyn Env) -> Result<OsString, ConfigError> {
    if let Some(p) = ov
        .cosmovisor_bin
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
    {
        return Ok(p.into_os_string());
    }
    Ok(env
        .setting("COSMOVISOR_BIN")?
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("cosmovisor")))
}

/// The AWS profile given to the child (`--child-aws-profile`, else
/// `SSM_COSMOVISOR_CHILD_AWS_PROFILE`): a security setting, so empty is an
/// error. A name that could not be a profile's (blank, surrounding white
/// space, control characters) is refused here rather than by a child
/// that would silently fall back to the default profile.
pub(crate) fn child_aws_profile(
    ov: &Overrides,
    env: &dyn Env,
) -> Result<Option<String>, ConfigError> {
    let Some(name) = pick_strict(
        ov.child_aws_profile.clone(),
        "--child-aws-profile",
        env,
        "SSM_COSMOVISOR_CHILD_AWS_PROFILE",
    )?
    else {
        return Ok(None);
    };
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(ConfigError::Invalid {
            name: "SSM_COSMOVISOR_CHILD_AWS_PROFILE",
            value: name,
            hint: "the name of a profile in the AWS config/credentials files, without white space around it or control characters".into(),
        });
    }
    Ok(Some(name))
}

/// Finds `--home <dir>` or `--home=<dir>` in the node's arguments: the node
/// reads its key under that home, which may differ from `DAEMON_HOME`.
/// Given twice, the node (cobra/pflag) takes the last one: guarding either
/// would be a guess, so it is an error naming both. After `--` nothing is a
/// flag for pflag, so nothing there is looked at.
pub(crate) fn node_home_from_args(args: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let mut homes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--home" {
            homes.extend(it.next().map(PathBuf::from));
        } else if let Some(v) = s.strip_prefix("--home=") {
            homes.push(PathBuf::from(v));
        }
    }
    match homes.len() {
        0 | 1 => Ok(homes.pop()),
        _ => Err(ConfigError::HomeRepeated { homes }),
    }
}

/// `config/config.toml` under the node home.
const CONFIG_TOML: [&str; 2] = ["config", "config.toml"];

/// A config.toml larger than this is not a node's configuration.
const MAX_CONFIG_TOML: u64 = 1 << 20;

/// Reads `<home>/config/config.toml`; `Ok(None)` if it does not exist.
///
/// Never blocks: a FIFO (or any non-regular file) there is an error, judged
/// on the opened fd ([`crate::node_file`]). With `no_symlinks` (whenever we
/// are root: the file belongs to the node user, who must not steer root's
/// reads) each component below the home is opened relative to the previous
/// one with `O_NOFOLLOW`, so neither `config/` nor `config.toml` may be a
/// symlink, however fast the node user swaps them. Without it (the tool runs
/// as the node user, who owns the home anyway) symlinks are followed.
fn read_config_toml(home: &Path, no_symlinks: bool) -> std::io::Result<Option<String>> {
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let res = (|| {
        let fd = if no_symlinks {
            open_config_toml_nofollow(home)?
        } else {
            crate::node_file::open_nonblocking(&home.join(CONFIG_TOML.join("/")))?
        };
        let bytes = crate::node_file::read_regular(fd, MAX_CONFIG_TOML)?;
        String::from_utf8(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
    })();
    match res {
        Ok(t) => Ok(Some(t)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `<home>/config/config.toml` component by component with
/// `O_NOFOLLOW`, without blocking on a FIFO.
fn open_config_toml_nofollow(home: &Path) -> std::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let symlink = || {
        std::io::Error::other(
            "it is or passes through a symbolic link below the home; as root, ssm-cosmovisor reads the node's config.toml only without following symlinks",
        )
    };
    let open = |dir: &dyn rustix::fd::AsFd, name: &str, flags: OFlags| {
        rustix::fs::openat(
            dir,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => symlink(),
            e => e.into(),
        })
    };
    let home_fd = rustix::fs::open(
        home,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dir = open(&home_fd, CONFIG_TOML[0], OFlags::PATH | OFlags::DIRECTORY)?;
    open(
        &dir,
        CONFIG_TOML[1],
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
    )
}

/// A file the node finds through its `config/config.toml` (`setting`,
/// relative to the home or absolute; `default` when the setting or the file is
/// absent). `Err((config.toml, reason))` when the file cannot be used. As
/// root, config.toml is read without following symlinks below the home.
pub(crate) fn node_file_from_config(
    home: &Path,
    setting: &str,
    default: &str,
) -> Result<PathBuf, (PathBuf, String)> {
    node_file_from_config_as(home, setting, default, NodeIdentity::ours()).map(|(p, _)| p)
}

/// The node's `config/config.toml` (its path, and the table when it exists),
/// read as `node`; `Err((config.toml, reason))` when it cannot be used.
fn node_config_table(
    home: &Path,
    node: NodeIdentity,
) -> Result<(PathBuf, Option<toml::Table>), (PathBuf, String)> {
    let cfg = home.join(CONFIG_TOML.join("/"));
    let am_root = rustix::process::geteuid().is_root();
    let text = node
        .as_node(|| read_config_toml(home, am_root))
        .map_err(|e| (cfg.clone(), e.to_string()))?;
    let Some(text) = text else {
        return Ok((cfg, None));
    };
    let doc = text.parse().map_err(|e: toml::de::Error| {
        (
            cfg.clone(),
            e.to_string()
                .lines()
                .next()
                .unwrap_or("syntax error")
                .to_string(),
        )
    })?;
    Ok((cfg, Some(doc)))
}

/// The node's `[consensus] double_sign_check_height` (`None`: not set, or no
/// config.toml; CometBFT's default is then 0).
pub(crate) fn double_sign_check_height(
    home: &Path,
    node: NodeIdentity,
) -> Result<Option<i64>, (PathBuf, String)> {
    let (cfg, doc) = node_config_table(home, node)?;
    let value = doc
        .as_ref()
        .and_then(|d| d.get("consensus"))
        .and_then(|c| c.get("double_sign_check_height"));
    match value {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Some(*n)),
        Some(_) => Err((
            cfg,
            "[consensus] double_sign_check_height must be a number of blocks (0 or more)".into(),
        )),
    }
}

/// As [`node_file_from_config`], reading config.toml as `node` (with its
/// filesystem ids when we are root for another user). Also says whether
/// config.toml set it (`true`) or the default applied.
pub(crate) fn node_file_from_config_as(
    home: &Path,
    setting: &str,
    default: &str,
    node: NodeIdentity,
) -> Result<(PathBuf, bool), (PathBuf, String)> {
    let (cfg, doc) = node_config_table(home, node)?;
    let (rel, set) = match doc {
        Some(doc) => match doc.get(setting) {
            None => (PathBuf::from(default), false),
            Some(toml::Value::String(s)) if !s.is_empty() => (PathBuf::from(s), true),
            Some(_) => return Err((cfg, format!("{setting} must be a non-empty string"))),
        },
        None => (PathBuf::from(default), false),
    };
    Ok((
        if rel.is_absolute() {
            rel
        } else {
            home.join(rel)
        },
        set,
    ))
}

/// Resolves the key path from the node's `config/config.toml`.
pub(crate) fn key_path_for_home(home: &Path) -> Result<PathBuf, ConfigError> {
    node_file_from_config(home, "priv_validator_key_file", DEFAULT_KEY_FILE)
        .map_err(|(path, reason)| ConfigError::ConfigToml { path, reason })
}

/// The key path: root's (or the operator's) `--key-file` /
/// `SSM_COSMOVISOR_KEY_FILE`, else config.toml's — except in split-trust
/// mode (`split`: root running the node as another user), where the node
/// user owns config.toml and so must not choose the directory root works in.
fn resolve_key_path(
    ov: &Overrides,
    env: &dyn Env,
    home: &Path,
    split: Option<&NodeUser>,
) -> Result<PathBuf, ConfigError> {
    let configured = match &ov.key_file {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(ConfigError::Empty {
                name: "--key-file",
                hint: empty_means("--key-file"),
            })
        }
        Some(p) => Some(p.clone()),
        None => env
            .security_setting("SSM_COSMOVISOR_KEY_FILE")?
            .map(PathBuf::from),
    };
    match (configured, split) {
        (Some(p), _) if p.is_absolute() => Ok(p),
        (Some(p), _) => Ok(home.join(p)),
        (None, Some(u)) => Err(ConfigError::SplitKeyFile {
            user: u.name.clone(),
        }),
        (None, None) => key_path_for_home(home),
    }
}

/// Whether two paths name the same file lexically (`a//b`, `a/./b/` and
/// `a/b` do); nothing is resolved on disk.
fn same_path(a: &Path, b: &Path) -> bool {
    a.components().eq(b.components())
}

impl Config {
    /// The node user when we are root running the node as that user
    /// (split-trust mode).
    pub(crate) fn split_trust_user(&self) -> Option<&NodeUser> {
        self.node_user
            .as_ref()
            .filter(|_| rustix::process::geteuid().is_root())
    }

    /// Split trust: the node-owned config.toml (read as the node user,
    /// without following symlinks) must name root's key path, or the node
    /// would read something else. Not checked by `restore`, which must put
    /// the safe key back whatever the node user did to its files.
    pub(crate) fn verify_node_key_path(&self) -> Result<(), ConfigError> {
        if self.split_trust_user().is_none() {
            return Ok(());
        }
        let (node_reads, set) = node_file_from_config_as(
            &self.home,
            "priv_validator_key_file",
            DEFAULT_KEY_FILE,
            self.node,
        )
        .map_err(|(path, reason)| ConfigError::ConfigToml { path, reason })?;
        if same_path(&node_reads, &self.key_path) {
            return Ok(());
        }
        Err(ConfigError::KeyPathMismatch {
            config_toml: self.home.join(CONFIG_TOML.join("/")),
            node_reads,
            why: if set {
                "priv_validator_key_file in"
            } else {
                "the default: no priv_validator_key_file in"
            },
            key_file: self.key_path.clone(),
        })
    }

    /// What `run` and `exec` refuse before anything changes: the SDK's body
    /// logging, and in split trust a config.toml naming another key path.
    pub(crate) fn check_before_run(&self, env: &dyn Env) -> Result<(), ConfigError> {
        refuse_sdk_body_logging(env)?;
        self.verify_node_key_path()
    }

    /// Resolves the configuration from flags, then environment, then defaults.
    /// `node_args` are the arguments for the node (to find its `--home`).
    pub(crate) fn resolve(
        ov: &Overrides,
        env: &dyn Env,
        node_args: &[OsString],
    ) -> Result<Config, ConfigError> {
        let use_ssm_key = boolean(
            ov.use_ssm_key.clone(),
            "--use-ssm-key",
            ("USE_SSM_KEY", env.security_setting("USE_SSM_KEY")?),
        )?
        .unwrap_or(false);
        let source = resolve_source(ov, env, use_ssm_key)?;
        let daemon_home = match ov.daemon_home.clone().filter(|p| !p.as_os_str().is_empty()) {
            Some(h) => h,
            None => env
                .setting("DAEMON_HOME")?
                .map(PathBuf::from)
                .ok_or(ConfigError::Missing {
                    name: "DAEMON_HOME",
                    hint: "set it to the node's home directory (cosmovisor needs it too), or pass --daemon-home",
                })?,
        };
        let home = node_home_from_args(node_args)?.unwrap_or(daemon_home);
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

        let node_user = pick_strict(
            ov.node_user.clone(),
            "--node-user",
            env,
            "SSM_COSMOVISOR_NODE_USER",
        )?
        .map(|u| NodeUser::resolve(&u))
        .transpose()?;
        let split = node_user
            .as_ref()
            .filter(|_| rustix::process::geteuid().is_root());
        let key_path = resolve_key_path(ov, env, &home, split)?;
        let node = node_user
            .as_ref()
            .map_or_else(NodeIdentity::ours, |u| NodeIdentity::new(u.uid, u.gid));

        let key_timeout = match pick(ov.key_timeout.clone(), env, "SSM_COSMOVISOR_KEY_TIMEOUT")? {
            Some(v) => parse_duration("SSM_COSMOVISOR_KEY_TIMEOUT", &v)?,
            None => DEFAULT_KEY_TIMEOUT,
        };
        let log_format = match pick(ov.log_format.clone(), env, "SSM_COSMOVISOR_LOG_FORMAT")? {
            Some(v) => LogFormat::parse("SSM_COSMOVISOR_LOG_FORMAT", &v)?,
            None => LogFormat::Text,
        };
        let expected_address = pick_strict(
            ov.expected_address.clone(),
            "--expected-address",
            env,
            "SSM_COSMOVISOR_EXPECTED_ADDRESS",
        )?
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
        let always_armed = boolean(
            ov.always_armed.clone(),
            "--always-armed",
            (ALWAYS_ARMED, env.setting(ALWAYS_ARMED)?),
        )?
        .unwrap_or(false);
        let cosmovisor_bin = cosmovisor_bin(ov, env)?;
        let child_aws_profile = child_aws_profile(ov, env)?;

        Ok(Config {
            use_ssm_key,
            source,
            home,
            key_path,
            key_timeout,
            node_user,
            node,
            log_format,
            expected_address,
            always_armed,
            cosmovisor_bin,
            child_aws_profile,
        })
    }
}

/// Where the key comes from (`KEY_SOURCE`, `AWS_PARAMETER`), if configured.
fn resolve_source(
    ov: &Overrides,
    env: &dyn Env,
    use_ssm_key: bool,
) -> Result<Option<SourceSpec>, ConfigError> {
    let key_source = pick(ov.key_source.clone(), env, "KEY_SOURCE")?;
    match key_source.as_deref() {
        None | Some("ssm") => match pick(ov.parameter.clone(), env, "AWS_PARAMETER")? {
            Some(parameter) => Ok(Some(SourceSpec::Ssm {
                parameter,
                allow_plain_string: boolean(
                    ov.allow_plain_string.clone(),
                    "--allow-plain-string",
                    (PLAIN, env.setting(PLAIN)?),
                )?
                .unwrap_or(false),
            })),
            None if use_ssm_key => Err(ConfigError::Missing {
                name: "AWS_PARAMETER",
                hint:
                    "USE_SSM_KEY=true needs the SSM parameter name holding the key (or --parameter)",
            }),
            None => Ok(None),
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
            let dir = env
                .setting("CREDENTIALS_DIRECTORY")?
                .ok_or(ConfigError::Missing {
                    name: "CREDENTIALS_DIRECTORY",
                    hint: "KEY_SOURCE=credential:NAME needs systemd's LoadCredential=/LoadCredentialEncrypted= (which sets it)",
                })?;
            Ok(Some(SourceSpec::Credential {
                name,
                dir: PathBuf::from(dir),
            }))
        }
        Some(other) => Err(ConfigError::Invalid {
            name: "KEY_SOURCE",
            value: other.to_string(),
            hint: "use ssm or credential:NAME".into(),
        }),
    }
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
    fn every_boolean_flag_wins_over_its_variable_either_way_and_errors_name_the_one_given() {
        let var = "SSM_COSMOVISOR_ALWAYS_ARMED";
        let b = |flag: Option<&str>, v: Option<&str>| {
            boolean(
                flag.map(String::from),
                "--always-armed",
                (var, v.map(String::from)),
            )
        };
        assert_eq!(b(None, None).unwrap(), None);
        assert_eq!(b(None, Some("yes")).unwrap(), Some(true));
        assert_eq!(b(Some("false"), Some("true")).unwrap(), Some(false));
        assert_eq!(b(Some("true"), Some("0")).unwrap(), Some(true));
        let e = b(Some("ja"), Some("true")).unwrap_err().to_string();
        assert!(e.contains("--always-armed") && !e.contains(var), "{e}");
        let e = b(None, Some("ja")).unwrap_err().to_string();
        assert!(e.contains(var), "{e}");
        // An empty flag is an error, not false.
        let e = b(Some(""), Some("true")).unwrap_err().to_string();
        assert!(e.contains("--always-armed") && e.contains("=false"), "{e}");
        // Through resolve: --always-armed=false over the variable's true.
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        let ov = Overrides {
            always_armed: Some("false".into()),
            ..Default::default()
        };
        let c = Config::resolve(&ov, &env(&[("DAEMON_HOME", home), (var, "true")]), &[]).unwrap();
        assert!(!c.always_armed);
        let c = Config::resolve(
            &Overrides::default(),
            &env(&[("DAEMON_HOME", home), (var, "true")]),
            &[],
        )
        .unwrap();
        assert!(c.always_armed);
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

    #[test]
    fn node_home_given_twice_is_refused_in_every_spelling() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(node_home_from_args(&os(&["start"])).unwrap(), None);
        for one in [&["start", "--home", "/a"][..], &["start", "--home=/a"][..]] {
            assert_eq!(
                node_home_from_args(&os(one)).unwrap(),
                Some(PathBuf::from("/a"))
            );
        }
        for two in [
            &["start", "--home", "/a", "--home", "/b"][..],
            &["start", "--home=/a", "--home", "/b"][..],
            &["--home", "/a", "start", "--home=/b"][..],
            &["start", "--home=/a", "--home=/a"][..],
        ] {
            let e = node_home_from_args(&os(two)).unwrap_err().to_string();
            assert!(e.contains("--home 2 times") && e.contains("\"/a\""), "{e}");
            assert!(e.contains("give --home once"), "{e}");
        }
        // After `--` it is an argument, not the node's flag.
        assert_eq!(
            node_home_from_args(&os(&["start", "--home", "/a", "--", "--home", "/b"])).unwrap(),
            Some(PathBuf::from("/a"))
        );
    }

    fn os_env(pairs: &[(&str, &[u8])]) -> HashMap<String, OsString> {
        use std::os::unix::ffi::OsStringExt;
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from_vec(v.to_vec())))
            .collect()
    }

    /// A set value that is not UTF-8 is an error naming the variable, never "unset".
    #[test]
    fn non_utf8_values_are_errors_naming_the_variable() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap().as_bytes();
        for var in [
            "SSM_COSMOVISOR_NODE_USER",
            "USE_SSM_KEY",
            "SSM_COSMOVISOR_EXPECTED_ADDRESS",
            "SSM_COSMOVISOR_KEY_FILE",
            "AWS_PARAMETER",
            "SSM_COSMOVISOR_KEY_TIMEOUT",
            "DAEMON_HOME",
            "COSMOVISOR_BIN",
        ] {
            let mut pairs: Vec<(&str, &[u8])> = vec![("DAEMON_HOME", home)];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, b"ro\xffot"));
            let e = Config::resolve(&Overrides::default(), &os_env(&pairs), &[]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::NotUtf8 { name, .. } if *name == var),
                "{var}: {e}"
            );
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    /// An empty security setting is an error; an empty ordinary one is unset.
    #[test]
    fn empty_security_settings_are_errors_other_empty_values_unset() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        for var in [
            "USE_SSM_KEY",
            "SSM_COSMOVISOR_NODE_USER",
            "SSM_COSMOVISOR_EXPECTED_ADDRESS",
            "SSM_COSMOVISOR_KEY_FILE",
        ] {
            let e = Config::resolve(
                &Overrides::default(),
                &env(&[("DAEMON_HOME", home), (var, "")]),
                &[],
            )
            .unwrap_err();
            assert!(
                matches!(&e, ConfigError::Empty { name, .. } if *name == var),
                "{var}: {e}"
            );
        }
        let e = Config::resolve(
            &Overrides::default(),
            &env(&[
                ("DAEMON_HOME", home),
                ("SSM_COSMOVISOR_CHILD_AWS_PROFILE", ""),
            ]),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Empty {
                    name: "SSM_COSMOVISOR_CHILD_AWS_PROFILE",
                    ..
                }
            ),
            "{e}"
        );
        // The lease's own settings: lease::settings::tests.
        // An explicitly empty flag is no way around it.
        let ov = Overrides {
            node_user: Some(String::new()),
            ..Default::default()
        };
        let e = Config::resolve(&ov, &env(&[("DAEMON_HOME", home)]), &[]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Empty {
                    name: "--node-user",
                    ..
                }
            ),
            "{e}"
        );
        // Empty ordinary settings take their documented defaults.
        let c = Config::resolve(
            &Overrides::default(),
            &env(&[
                ("DAEMON_HOME", home),
                ("SSM_COSMOVISOR_KEY_TIMEOUT", ""),
                ("SSM_COSMOVISOR_ALWAYS_ARMED", ""),
                ("KEY_SOURCE", ""),
                ("COSMOVISOR_BIN", ""),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.key_timeout, DEFAULT_KEY_TIMEOUT);
        assert!(!c.always_armed && !c.use_ssm_key);
        assert_eq!(c.cosmovisor_bin, OsString::from("cosmovisor"));
    }

    /// Split trust: the key path comes only from root's setting; without it,
    /// an error naming the variable, whatever config.toml says.
    #[test]
    fn split_trust_key_path_only_from_roots_setting() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("config")).unwrap();
        std::fs::write(
            d.path().join("config/config.toml"),
            "priv_validator_key_file = \"/etc/elsewhere/pv.json\"\n",
        )
        .unwrap();
        let user = NodeUser {
            name: "node".into(),
            uid: 1234,
            gid: 1234,
            groups: vec![1234],
        };
        let e =
            resolve_key_path(&Overrides::default(), &env(&[]), d.path(), Some(&user)).unwrap_err();
        assert!(e.to_string().contains("SSM_COSMOVISOR_KEY_FILE"), "{e}");
        let p = resolve_key_path(
            &Overrides::default(),
            &env(&[("SSM_COSMOVISOR_KEY_FILE", "/run/x/pv.json")]),
            d.path(),
            Some(&user),
        )
        .unwrap();
        assert_eq!(p, PathBuf::from("/run/x/pv.json"));
        // Without split trust config.toml still decides when nothing else does.
        let p = resolve_key_path(&Overrides::default(), &env(&[]), d.path(), None).unwrap();
        assert_eq!(p, PathBuf::from("/etc/elsewhere/pv.json"));
        assert!(same_path(
            Path::new("/run//x/./pv.json"),
            Path::new("/run/x/pv.json")
        ));
        assert!(!same_path(
            Path::new("/run/y/pv.json"),
            Path::new("/run/x/pv.json")
        ));
    }

    /// Read as root, config.toml is opened without following any symlink
    /// below the home, and only as a regular file.
    #[test]
    fn config_toml_read_without_symlinks_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("config.toml"), "moniker = \"x\"\n").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink(&real, home.join("config")).unwrap();
        assert!(read_config_toml(&home, false).unwrap().is_some());
        let e = read_config_toml(&home, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(home.join("config")).unwrap();
        std::fs::create_dir(home.join("config")).unwrap();
        std::os::unix::fs::symlink(real.join("config.toml"), home.join("config/config.toml"))
            .unwrap();
        let e = read_config_toml(&home, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(home.join("config/config.toml")).unwrap();
        nix::unistd::mkfifo(
            &home.join("config/config.toml"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        // A FIFO is refused at once, as root and as the node user alike
        // (this used to wait for a writer when not root).
        for no_symlinks in [true, false] {
            let t0 = std::time::Instant::now();
            let e = read_config_toml(&home, no_symlinks)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is a FIFO, not a regular file"), "{e}");
            assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        }
        std::fs::remove_file(home.join("config/config.toml")).unwrap();
        assert_eq!(read_config_toml(&home, true).unwrap(), None);
        assert_eq!(read_config_toml(&home, false).unwrap(), None);
    }

    /// The child's AWS profile: the flag wins, empty is an error for both,
    /// a name no profile could have is refused, unset is none.
    #[test]
    fn child_aws_profile_setting() {
        let var = "SSM_COSMOVISOR_CHILD_AWS_PROFILE";
        let ov = |v: Option<&str>| Overrides {
            child_aws_profile: v.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(child_aws_profile(&ov(None), &env(&[])).unwrap(), None);
        assert_eq!(
            child_aws_profile(&ov(None), &env(&[(var, "cosmovisor")])).unwrap(),
            Some("cosmovisor".into())
        );
        assert_eq!(
            child_aws_profile(&ov(Some("s3-reader")), &env(&[(var, "cosmovisor")])).unwrap(),
            Some("s3-reader".into())
        );
        let e = child_aws_profile(&ov(Some("")), &env(&[(var, "cosmovisor")])).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Empty {
                    name: "--child-aws-profile",
                    ..
                }
            ),
            "{e}"
        );
        for bad in [" cosmovisor", "cosmovisor\n", "a\u{7}b", " "] {
            let e = child_aws_profile(&ov(None), &env(&[(var, bad)])).unwrap_err();
            assert!(e.to_string().contains(var), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sdk_body_logging_refused() {
        assert!(refuse_sdk_body_logging(&env(&[])).is_ok());
        for v in ["true", "TRUE", "false", ""] {
            let e = refuse_sdk_body_logging(&env(&[("LOG_SENSITIVE_BODIES", v)])).unwrap_err();
            assert!(e.to_string().contains("LOG_SENSITIVE_BODIES"), "{e}");
        }
    }
}
