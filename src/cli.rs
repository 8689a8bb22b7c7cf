//! Command line: argument definitions and the body of each command.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Env, LogFormat, Overrides, ProcessEnv};
use crate::key::ValidatorKey;
use crate::lease::{Held, LeaseClient, Raised, SignState, StateFile};
use crate::secret::{SecretBuf, MAX_SECRET_LEN};
use crate::slot::KeySlot;
use crate::source::{self, Origin};
use crate::supervise::{self, exit, Ended, KeyJob, LeaseRole};

/// Runs cosmovisor with the validator key fetched from AWS SSM and handed to
/// the node once, through a verified FIFO, never written to disk.
#[derive(Debug, Parser)]
#[command(name = "ssm-cosmovisor", version, about, long_about = None, allow_external_subcommands = true)]
#[command(
    after_help = "Any other subcommand (version, add-upgrade, config, ...) is passed to cosmovisor unchanged.\n\nExit status: the child's status (128+N if killed by signal N); 2 configuration, 3 key source, 4 key slot needs an operator, 5 delivery failed or timed out, 6 key may be exposed (rotate it), 7 cannot start the child, 8 failover lease lost (node stopped) or unusable."
)]
pub struct Cli {
    /// Whether this host is the active signer [env: USE_SSM_KEY] (true/false, 1/0, yes/no).
    #[arg(long, global = true, value_name = "BOOL")]
    pub use_ssm_key: Option<String>,
    /// SSM parameter holding the key [env: AWS_PARAMETER].
    #[arg(long, global = true, value_name = "NAME")]
    pub parameter: Option<String>,
    /// Key source: `ssm` or `credential:NAME` [env: KEY_SOURCE].
    #[arg(long, global = true, value_name = "SOURCE")]
    pub key_source: Option<String>,
    /// Node home [env: DAEMON_HOME].
    #[arg(long, global = true, value_name = "DIR")]
    pub daemon_home: Option<PathBuf>,
    /// Key path, overriding config.toml's priv_validator_key_file [env: SSM_COSMOVISOR_KEY_FILE].
    #[arg(long, global = true, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// How long the node may take to read the key, e.g. 15m [env: SSM_COSMOVISOR_KEY_TIMEOUT].
    #[arg(long, global = true, value_name = "DURATION")]
    pub key_timeout: Option<String>,
    /// Run the child as this user (split-trust mode, needs root) [env: SSM_COSMOVISOR_NODE_USER].
    #[arg(long, global = true, value_name = "USER")]
    pub node_user: Option<String>,
    /// Log format: text or json [env: SSM_COSMOVISOR_LOG_FORMAT].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Refuse a key with any other address [env: SSM_COSMOVISOR_EXPECTED_ADDRESS].
    #[arg(long, global = true, value_name = "HEX")]
    pub expected_address: Option<String>,
    /// Keep a fresh FIFO at the key path after every delivery instead of the stripped file [env: SSM_COSMOVISOR_ALWAYS_ARMED].
    #[arg(long, global = true)]
    pub always_armed: bool,
    /// Accept a plain String parameter (unencrypted in SSM) [env: SSM_COSMOVISOR_ALLOW_PLAIN_STRING].
    #[arg(long, global = true)]
    pub allow_plain_string: bool,
    /// cosmovisor binary [env: COSMOVISOR_BIN; default: cosmovisor on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    pub cosmovisor_bin: Option<PathBuf>,
    /// DynamoDB table for the failover lease; unset: no lease [env: SSM_COSMOVISOR_LEASE_TABLE].
    #[arg(long, global = true, value_name = "TABLE")]
    pub lease_table: Option<String>,
    /// Lease name, the same on every host of this validator [env: SSM_COSMOVISOR_LEASE_NAME; default: the parameter name].
    #[arg(long, global = true, value_name = "NAME")]
    pub lease_name: Option<String>,
    /// Lease duration, e.g. 30s [env: SSM_COSMOVISOR_LEASE_DURATION; default 30s, 3s to 10m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub lease_duration: Option<String>,
    /// Region of the lease table [env: SSM_COSMOVISOR_LEASE_REGION; default: AWS_REGION].
    #[arg(long, global = true, value_name = "REGION")]
    pub lease_region: Option<String>,
    /// Heights skipped after taking over an expired lease [env: SSM_COSMOVISOR_LEASE_TAKEOVER_HEIGHTS; default: duration in seconds + 1].
    #[arg(long, global = true, value_name = "N")]
    pub lease_takeover_heights: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The main job: `cosmovisor run <ARGS>` with the key delivered to the node.
    #[command(disable_help_flag = true)]
    Run {
        /// Arguments for `cosmovisor run` (e.g. `start --home /var/lib/node`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The same key handling around any node command (hosts without cosmovisor).
    Exec {
        /// The node command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
    /// Preflight: configuration, AWS access, the key, key-path safety, limits. Prints no secret.
    Check,
    /// Put the safe key back and clear a left-over FIFO or stripped file (idempotent).
    Restore,
    /// Validate a priv_validator_key.json and store it in SSM as a SecureString.
    Import {
        /// Key file to read; `-` or absent reads standard input.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// KMS key id or alias for the SecureString (default: the account's aws/ssm key).
        #[arg(long, value_name = "KEY")]
        kms_key_id: Option<String>,
        /// Replace an existing parameter.
        #[arg(long)]
        overwrite: bool,
    },
    /// Passed to cosmovisor unchanged.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            use_ssm_key: self.use_ssm_key.clone(),
            parameter: self.parameter.clone(),
            daemon_home: self.daemon_home.clone(),
            key_file: self.key_file.clone(),
            key_timeout: self.key_timeout.clone(),
            node_user: self.node_user.clone(),
            log_format: self.log_format.clone(),
            expected_address: self.expected_address.clone(),
            always_armed: self.always_armed,
            allow_plain_string: self.allow_plain_string,
            key_source: self.key_source.clone(),
            cosmovisor_bin: self.cosmovisor_bin.clone(),
            lease_table: self.lease_table.clone(),
            lease_name: self.lease_name.clone(),
            lease_duration: self.lease_duration.clone(),
            lease_region: self.lease_region.clone(),
            lease_takeover_heights: self.lease_takeover_heights.clone(),
        }
    }
}

/// An error at the command level, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// What to tell the operator.
    pub message: String,
}

impl CliError {
    fn new(code: u8, e: impl std::fmt::Display) -> Self {
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::new(exit::CONFIG, e)
    }
}

impl From<supervise::SuperviseError> for CliError {
    fn from(e: supervise::SuperviseError) -> Self {
        CliError::new(e.exit_code(), e)
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<u8, CliError> {
    let ov = cli.overrides();
    let fmt = match ov
        .log_format
        .as_deref()
        .map(str::to_string)
        .or_else(|| ProcessEnv.get("SSM_COSMOVISOR_LOG_FORMAT"))
    {
        Some(v) => LogFormat::parse("SSM_COSMOVISOR_LOG_FORMAT", &v)?,
        None => LogFormat::Text,
    };
    crate::logging::init(fmt);
    match cli.command {
        Cmd::Run { args } => {
            let cfg = Config::resolve(&ov, &ProcessEnv, &args)?;
            cfg.check_before_run(&ProcessEnv)?;
            let mut child_args = vec![OsString::from("run")];
            child_args.extend(args);
            let program = cfg.cosmovisor_bin.clone();
            run_with_key(&cfg, &program, &child_args)
        }
        Cmd::Exec { command } => {
            let cfg = Config::resolve(&ov, &ProcessEnv, &command[1..])?;
            cfg.check_before_run(&ProcessEnv)?;
            run_with_key(&cfg, &command[0], &command[1..])
        }
        Cmd::Check => crate::check::run(&ov),
        Cmd::Restore => restore(&ov),
        Cmd::Import {
            file,
            kms_key_id,
            overwrite,
        } => import(&ov, file, kms_key_id.as_deref(), overwrite),
        Cmd::External(args) => passthrough(&ov, args),
    }
}

fn node_ids(cfg: &Config) -> (u32, u32) {
    match &cfg.node_user {
        Some(u) => (u.uid, u.gid),
        None => (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
    }
}

/// Opens and repairs the slot, fetches the key (when active), and supervises.
fn run_with_key(cfg: &Config, program: &OsString, args: &[OsString]) -> Result<u8, CliError> {
    // Before any other thread exists (runtimes, lease threads): they all
    // inherit the blocked signals, so only our sigwait thread ever takes one.
    // Until the slot is first changed, a stop signal ends the process at once.
    supervise::start_signal_handling()?;
    // Before any secret exists in this process.
    crate::harden::harden_self().map_err(|e| {
        CliError::new(
            1,
            format!("cannot harden the process (PR_SET_DUMPABLE/RLIMIT_CORE): {e}"),
        )
    })?;
    let (uid, gid) = node_ids(cfg);
    let slot = KeySlot::open(&cfg.key_path, uid, gid).map_err(|e| CliError::new(exit::SLOT, e))?;
    // Repair runs on every start, also as a standby: a FIFO left by a crash
    // would hang the node, a stripped file would crash it.
    let (repair, safe) = slot.repair().map_err(|e| CliError::new(exit::SLOT, e))?;
    tracing::info!(event = "slot_checked", path = %slot.path().display(), found = repair.found, action = repair.action.unwrap_or("none"), safe_address = %safe.address_hex(), "key slot ready");
    if !cfg.use_ssm_key {
        if cfg.lease.is_some() {
            tracing::info!("USE_SSM_KEY is false: the failover lease is not used");
        }
        tracing::info!(
            event = "standby",
            "USE_SSM_KEY is false: running without the consensus key"
        );
        drop(slot);
        return ended(supervise::run(cfg, program, args, None, LeaseRole::None)?);
    }
    let spec = cfg
        .source
        .as_ref()
        .ok_or_else(|| CliError::new(exit::CONFIG, "no key source configured"))?;
    // With a lease, nothing below happens before this host holds it.
    let mut lease = match &cfg.lease {
        Some(settings) => match acquire_lease(cfg, settings, program, args)? {
            Some(l) => Some(l),
            None => return Ok(0),
        },
        None => None,
    };
    let release_on_error = |lease: &Option<(LeaseClient, Held, StateFile)>| {
        if let Some((c, h, _)) = lease {
            supervise::release_lease(c, h, None);
        }
    };
    tracing::info!(event = "fetching", source = %spec.describe(), "attempting to fetch consensus key");
    let fetched = match source::fetch(spec, cfg.expected_address.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            release_on_error(&lease);
            return Err(CliError::new(exit::SOURCE, e));
        }
    };
    log_fetched(&fetched.origin, fetched.key.identity());
    if let Err(e) = slot.ensure_safe_differs(&safe, fetched.key.identity()) {
        release_on_error(&lease);
        return Err(CliError::new(exit::SLOT, e));
    }
    if let Some((client, held, state)) = &mut lease {
        let fail = |e: crate::lease::LeaseError| {
            CliError::new(
                exit::LEASE,
                format!("failover lease: {e}; the key was not delivered"),
            )
        };
        // First make sure the lease is this validator's; only then touch the
        // node's sign state or put ours into the lease.
        if let Err(e) = client.bind_address(held, &fetched.key.identity().address_hex()) {
            release_on_error(&lease);
            return Err(fail(e));
        }
        if let Err(e) = raise_sign_state(client, held, state) {
            release_on_error(&lease);
            return Err(fail(e));
        }
        // The fetch may have taken a while: make sure the lease is still ours
        // before the key goes anywhere.
        match client.renew(held, state.read().ok().flatten()) {
            Ok(()) => {}
            Err(e) if e.is_transient() && std::time::Instant::now() < held.deadline.get() => {
                tracing::warn!(error = %e, "lease renewal failed; the renewal thread retries");
            }
            Err(e) => return Err(fail(e)),
        }
    }
    // From here on the slot changes: a stop must restore it, not just exit.
    supervise::defer_stop_signals();
    if let Some(sig) = supervise::stop_requested() {
        release_on_error(&lease);
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested before the key was delivered"
        );
        return Ok(0);
    }
    if let Err(e) = slot.backup() {
        release_on_error(&lease);
        return Err(CliError::new(exit::SLOT, e));
    }
    // The SDK is done: give its code pages back (most of our RSS otherwise).
    if let Err(e) = crate::sys::page_out_own_executable() {
        tracing::debug!(error = %e, "MADV_PAGEOUT of the executable failed");
    }
    let job = KeyJob {
        slot: Arc::new(slot),
        key: Arc::new(fetched.key),
    };
    let role = match lease {
        Some((client, held, state)) => LeaseRole::Holder {
            client,
            held,
            state,
        },
        None => LeaseRole::None,
    };
    ended(supervise::run(cfg, program, args, Some(job), role)?)
}

fn ended(e: Ended) -> Result<u8, CliError> {
    match e {
        Ended::Exit(code) => Ok(code),
        Ended::Acquired(..) => Err(CliError::new(1, "internal error: lease acquired twice")),
    }
}

/// Raises the node's sign state to what the lease carries, and after taking
/// over an *expired* lease further: the old holder may have signed after its
/// last renewal, until it stopped its node.
fn raise_sign_state(
    client: &LeaseClient,
    held: &Held,
    state: &StateFile,
) -> Result<(), crate::lease::LeaseError> {
    let skip = client.settings.takeover_heights;
    let target = match &held.took_over_from {
        Some(_) if skip > 0 => SignState {
            height: held.state.height.saturating_add(skip),
            round: 0,
            step: 0,
        },
        _ => held.state,
    };
    if let Raised::From(prev) = state.raise_to(target)? {
        tracing::info!(
            event = "sign_state_raised",
            path = %state.path.display(),
            from = %prev.map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
            to = %target,
            carried = %held.state,
            "raised the node's sign state: it will not sign at or below it"
        );
    }
    Ok(())
}

/// Takes the failover lease: at once if it is free, else as a standby
/// running the child without the key until the lease is ours. `None`: the
/// standby's child ended (or we were stopped) before that.
fn acquire_lease(
    cfg: &Config,
    settings: &crate::lease::LeaseSettings,
    program: &OsString,
    args: &[OsString],
) -> Result<Option<(LeaseClient, Held, StateFile)>, CliError> {
    let lease_err =
        |e: crate::lease::LeaseError| CliError::new(exit::LEASE, format!("failover lease: {e}"));
    let state = StateFile {
        path: crate::lease::state_path_for_home(&cfg.home).map_err(lease_err)?,
        node: cfg.node_user.as_ref().map(|u| (u.uid, u.gid)),
    };
    // Refuse a sign state we cannot read before taking anything.
    let local = state.read().map_err(lease_err)?.unwrap_or_default();
    tracing::info!(event = "lease_config", table = %settings.table, lease = %settings.name, holder = %settings.holder, duration_ms = settings.duration.as_millis() as u64, sign_state = %local, "using the failover lease");
    let client = LeaseClient::new(settings.clone()).map_err(lease_err)?;
    let now = match client.try_acquire_now() {
        Ok(h) => h,
        Err(e) if e.is_transient() => {
            tracing::warn!(event = "lease_unreachable", error = %e, "cannot reach the lease table; standing by");
            None
        }
        Err(e) => return Err(lease_err(e)),
    };
    let (client, held) = match now {
        Some(h) => (client, h),
        None => {
            tracing::info!(
                event = "standby",
                "another host holds the failover lease: running without the consensus key until it is ours"
            );
            match supervise::run(cfg, program, args, None, LeaseRole::Standby { client })? {
                Ended::Exit(code) => {
                    return if code == 0 {
                        Ok(None)
                    } else {
                        Err(CliError::new(
                            code,
                            format!("the standby child exited with status {code}"),
                        ))
                    }
                }
                Ended::Acquired(l) => {
                    let (client, mut held) = *l;
                    if let Some(sig) = supervise::stop_requested() {
                        supervise::release_lease(&client, &held, None);
                        tracing::info!(
                            event = "stopped_before_start",
                            signal = sig,
                            "stop requested during the handover"
                        );
                        return Ok(None);
                    }
                    // Stopping the keyless node took time: confirm the lease.
                    if let Err(e) = client.renew(&mut held, None) {
                        if !e.is_transient() || std::time::Instant::now() >= held.deadline.get() {
                            return Err(lease_err(e));
                        }
                    }
                    (client, held)
                }
            }
        }
    };
    tracing::info!(
        event = "lease_acquired",
        lease = %settings.name,
        took_over_from = held.took_over_from.as_deref().unwrap_or("-"),
        carried_state = %held.state,
        "holding the failover lease"
    );
    Ok(Some((client, held, state)))
}

fn log_fetched(origin: &Origin, id: &crate::key::PublicIdentity) {
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

fn restore(ov: &Overrides) -> Result<u8, CliError> {
    let cfg = Config::resolve(ov, &ProcessEnv, &[])?;
    let (uid, gid) = node_ids(&cfg);
    let slot = KeySlot::open(&cfg.key_path, uid, gid).map_err(|e| CliError::new(exit::SLOT, e))?;
    let (r, safe) = slot.repair().map_err(|e| CliError::new(exit::SLOT, e))?;
    println!(
        "{}: found {}; {}; safe key {} in place",
        slot.path().display(),
        r.found,
        r.action.unwrap_or("nothing to do"),
        safe.address_hex()
    );
    Ok(0)
}

fn import(
    ov: &Overrides,
    file: Option<PathBuf>,
    kms: Option<&str>,
    overwrite: bool,
) -> Result<u8, CliError> {
    use secrecy::ExposeSecret;
    crate::harden::harden_self().map_err(|e| CliError::new(1, e))?;
    let name = ov
        .parameter
        .clone()
        .filter(|p| !p.is_empty())
        .map_or_else(|| ProcessEnv.setting("AWS_PARAMETER"), |p| Ok(Some(p)))?
        .ok_or_else(|| {
            CliError::new(
                exit::CONFIG,
                "AWS_PARAMETER is not set: name the SSM parameter to create (or --parameter)",
            )
        })?;
    let what = match &file {
        Some(p) if p.as_os_str() != "-" => p.display().to_string(),
        _ => "standard input".to_string(),
    };
    let mut reader: Box<dyn Read> = match &file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::fs::File::open(p).map_err(|e| {
            CliError::new(exit::CONFIG, format!("cannot read {}: {e}", p.display()))
        })?),
        _ => Box::new(std::io::stdin()),
    };
    let mut buf = SecretBuf::with_capacity(MAX_SECRET_LEN + 1).map_err(|e| CliError::new(1, e))?;
    loop {
        let n = buf
            .append_with(|spare| {
                let n = spare.len().min(MAX_SECRET_LEN + 1);
                reader.read(&mut spare[..n])
            })
            .map_err(|e| CliError::new(exit::CONFIG, format!("reading {what}: {e}")))?;
        if n == 0 || buf.len() > MAX_SECRET_LEN {
            break;
        }
    }
    let key = ValidatorKey::parse(buf.expose_secret()).map_err(|e| {
        CliError::new(
            exit::SOURCE,
            format!("{what} is not a valid key, nothing stored: {e}"),
        )
    })?;
    drop(buf);
    let canonical = key.to_secret_json().map_err(|e| CliError::new(1, e))?;
    let version = crate::source::ssm::put(&name, &canonical, kms, overwrite)
        .map_err(|e| CliError::new(exit::SOURCE, e))?;
    let id = key.identity();
    tracing::info!(event = "imported", parameter = %name, version, address = %id.address_hex(), "stored key as SecureString");
    println!(
        "stored {name} version {version} ({} address {} pub_key {})",
        id.key_type(),
        id.address_hex(),
        id.pub_key_b64()
    );
    Ok(0)
}

fn passthrough(ov: &Overrides, args: Vec<OsString>) -> Result<u8, CliError> {
    use std::os::unix::process::CommandExt;
    let program = crate::config::cosmovisor_bin(ov, &ProcessEnv)?;
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args);
    crate::harden::scrub_env(&mut cmd);
    let e = cmd.exec();
    Err(CliError::new(
        exit::SPAWN,
        format!(
            "cannot run {}: {e}; set COSMOVISOR_BIN or put cosmovisor on PATH",
            PathBuf::from(program).display()
        ),
    ))
}
