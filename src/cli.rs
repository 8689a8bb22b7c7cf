//! Command line: argument definitions and the body of each command.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Env, LogFormat, Overrides, ProcessEnv};
use crate::error::{Error, ImportInput};
use crate::key::ValidatorKey;
use crate::lease::{self, LeaseError, LeaseSettings, Raised, StateFile};
use crate::metrics::{self, MetricsSettings};
use crate::secret::{SecretBuf, MAX_SECRET_LEN};
use crate::slot::KeySlot;
use crate::source::{self, Origin};
use crate::supervise::{self, Ended, KeyJob, LeaseRole, NodeMatch};

/// Runs cosmovisor with the validator key fetched from AWS SSM and handed to
/// the node once, through a verified FIFO, never written to disk.
#[derive(Debug, Parser)]
#[command(name = "ssm-cosmovisor", version, about, long_about = None, allow_external_subcommands = true)]
#[command(after_help = after_help())]
pub struct Cli {
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
    #[arg(long, global = true)]
    pub(crate) always_armed: bool,
    /// Accept a plain String parameter (unencrypted in SSM) [env: SSM_COSMOVISOR_ALLOW_PLAIN_STRING].
    #[arg(long, global = true)]
    pub(crate) allow_plain_string: bool,
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
    /// cosmovisor's config file, for the subcommands passed to cosmovisor (as
    /// cosmovisor's own `-c`); `run` takes it as `run --cosmovisor-config FILE ARGS`.
    #[arg(short = 'c', long = "cosmovisor-config", value_name = "FILE")]
    pub(crate) cosmovisor_config: Option<OsString>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
    /// Copy the host's safe key to an empty key directory, e.g. the split-trust unit's RuntimeDirectory= (ExecStartPre=).
    InstallSafeKey {
        /// The safe key kept by root, e.g. /etc/ssm-cosmovisor/<node>.safe.json.
        #[arg(value_name = "FILE")]
        source: PathBuf,
    },
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
    /// Confirm a failover lease's sign state: raise this host's
    /// priv_validator_state.json to the height the lease carries, which was
    /// refused as too large a jump (SSM_COSMOVISOR_LEASE_MAX_HEIGHT_JUMP).
    AcceptLeaseState {
        /// The height the lease carries, as the refusal named it.
        #[arg(long, value_name = "HEIGHT")]
        height: i64,
    },
    /// Internal: the fencer process of a lease holder (started by `run`).
    #[command(name = "__fence", hide = true)]
    Fence {
        /// The node's uid:gid, when the tool runs as root for another user.
        #[arg(long, value_name = "UID:GID")]
        node_ids: Option<String>,
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
            lease_max_height_jump: self.lease_max_height_jump.clone(),
            child_aws_profile: self.child_aws_profile.clone(),
        }
    }
}

fn after_help() -> String {
    format!(
        "Any other subcommand (version, add-upgrade, config, ...) is passed to cosmovisor unchanged.\n\n{}",
        crate::error::exit_status_help()
    )
}

/// Runs the parsed command line; returns the process exit status, after
/// reporting a fatal error (its status from the table in `error.rs`).
pub fn main(cli: Cli) -> std::process::ExitCode {
    let r = dispatch(cli);
    crate::metrics::stopped();
    match r {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            let code = e.exit_code();
            // Also through tracing when it is set up, so JSON logs carry it.
            tracing::error!(event = "fatal", exit_code = code, error = %e, "stopping");
            // One write, so the line cannot interleave with the child's output.
            use std::io::Write as _;
            let line = format!("ssm-cosmovisor: error: {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            std::process::ExitCode::from(code)
        }
    }
}

/// The command, up to its exit status or the error that ends it.
fn dispatch(cli: Cli) -> Result<u8, Error> {
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
    let cosmovisor_config = cli.cosmovisor_config;
    if cosmovisor_config.is_some() && !matches!(cli.command, Cmd::External(_)) {
        return Err(crate::cosmovisor::CosmovisorError::BeforeCommand.into());
    }
    match cli.command {
        Cmd::Run { args } => {
            let run = crate::cosmovisor::split_run_args(&args)?;
            let ov = with_cosmovisor_home(ov, run.config.as_deref())?;
            let cfg = Config::resolve(&ov, &ProcessEnv, &run.node)?;
            let lease = LeaseSettings::resolve(&ov, &ProcessEnv, cfg.source.as_ref())?;
            let metrics = MetricsSettings::from_env(&ProcessEnv)?;
            cfg.check_before_run(&ProcessEnv)?;
            let mut child_args = vec![OsString::from("run")];
            child_args.extend(args);
            let program = cfg.cosmovisor_bin.clone();
            let node = NodeMatch::Args(run.node);
            run_with_key(
                &cfg,
                lease.as_ref(),
                &metrics,
                (&program, &child_args),
                node,
            )
        }
        Cmd::Exec { command } => {
            let cfg = Config::resolve(&ov, &ProcessEnv, &command[1..])?;
            let lease = LeaseSettings::resolve(&ov, &ProcessEnv, cfg.source.as_ref())?;
            let metrics = MetricsSettings::from_env(&ProcessEnv)?;
            cfg.check_before_run(&ProcessEnv)?;
            run_with_key(
                &cfg,
                lease.as_ref(),
                &metrics,
                (&command[0], &command[1..]),
                NodeMatch::Child,
            )
        }
        Cmd::Check => Ok(crate::check::run(&ov)),
        Cmd::Restore => restore(&ov),
        Cmd::InstallSafeKey { source } => {
            let cfg = Config::resolve(&ov, &ProcessEnv, &[])?;
            crate::install::install(&cfg, &source)?;
            Ok(0)
        }
        Cmd::Import {
            file,
            kms_key_id,
            overwrite,
        } => import(&ov, file, kms_key_id.as_deref(), overwrite),
        Cmd::AcceptLeaseState { height } => accept_lease_state(&ov, height),
        Cmd::Fence { node_ids } => Ok(crate::fence::fencer_main(
            node_ids.as_deref().and_then(parse_ids),
        )),
        Cmd::External(args) => passthrough(&ov, with_config_flag(args, cosmovisor_config)),
    }
}

/// With `run --cosmovisor-config <file>`, the home comes from where
/// cosmovisor takes it (cosmovisor.rs); a `--daemon-home` that disagrees is
/// refused, as the tool would guard another home than cosmovisor runs.
fn with_cosmovisor_home(
    mut ov: Overrides,
    file: Option<&std::path::Path>,
) -> Result<Overrides, Error> {
    let Some(file) = file else {
        return Ok(ov);
    };
    let home = crate::cosmovisor::home_from_file(file, ProcessEnv.setting("DAEMON_HOME")?)?;
    match &ov.daemon_home {
        Some(flag) if !flag.as_os_str().is_empty() && *flag != home => Err(ConfigError::Invalid {
            name: "--daemon-home",
            value: flag.display().to_string(),
            hint: format!(
                "cosmovisor takes its home from {} ({}); drop --daemon-home or make them equal",
                file.display(),
                home.display()
            ),
        }
        .into()),
        _ => {
            ov.daemon_home = Some(home);
            Ok(ov)
        }
    }
}

/// Opens and repairs the slot, fetches the key (when active), and supervises.
fn run_with_key(
    cfg: &Config,
    lease: Option<&LeaseSettings>,
    metrics: &MetricsSettings,
    (program, args): (&OsString, &[OsString]),
    node: NodeMatch,
) -> Result<u8, Error> {
    // Before any other thread exists (runtimes, lease threads): they all
    // inherit the blocked signals, so only our sigwait thread ever takes one.
    // Until the slot is first changed, a stop signal ends the process at once.
    let signals = supervise::Signals::start()?;
    // Before any secret exists in this process (a child profile that can
    // read the key brings it in with the check below).
    crate::harden::harden_self().map_err(Error::Harden)?;
    // Before anything changes: the child must not get an AWS identity that
    // can read the key (cosmovisor hands its environment to the node).
    crate::source::child_aws::verify_before_start(cfg)?;
    // After the signal thread (the endpoint's thread inherits the blocked
    // signals), before the slot is touched (a bad setting changes nothing).
    crate::metrics::init(metrics, cfg.node.uid())?;
    // The reader check must see every process that could open the FIFO,
    // also for a standby that may take the lease later.
    if cfg.use_ssm_key {
        let m = crate::procfs::verify_sees_all()?;
        tracing::debug!(hidepid = ?m.hidepid, gid = m.gid, "/proc lists every process for the reader check");
    }
    let slot = KeySlot::open(&cfg.key_path, cfg.node)?;
    // Repair runs on every start, also as a standby: a FIFO left by a crash
    // would hang the node, a stripped file would crash it.
    let (repair, safe) = slot.repair()?;
    tracing::info!(event = "slot_checked", path = %slot.path().display(), found = repair.found, action = repair.action.unwrap_or("none"), safe_address = %safe.address_hex(), "key slot ready");
    if !cfg.use_ssm_key {
        metrics::role(metrics::Role::Off);
        if lease.is_some() {
            tracing::info!("USE_SSM_KEY is false: the failover lease is not used");
        }
        tracing::info!(
            event = "standby",
            "USE_SSM_KEY is false: running without the consensus key"
        );
        drop(slot);
        return ended(supervise::run(
            &signals,
            cfg,
            program,
            args,
            None,
            LeaseRole::None,
        )?);
    }
    let spec = cfg.source.as_ref().ok_or(Error::NoKeySource)?;
    // With a lease, nothing below happens before this host holds it; every
    // error from here on releases it (HeldLease is released on drop).
    let mut lease = match lease {
        Some(settings) => match take_lease(&signals, cfg, settings, program, args)? {
            lease::Acquired::Held(l) => Some(l),
            lease::Acquired::Ended(0) => return Ok(0),
            lease::Acquired::Ended(status) => return Err(Error::StandbyExited { status }),
        },
        None => None,
    };
    tracing::info!(event = "fetching", source = %spec.describe(), "attempting to fetch consensus key");
    let began = std::time::Instant::now();
    let fetched = source::fetch(spec, cfg.expected_address.as_deref());
    metrics::fetched(
        began.elapsed(),
        fetched.as_ref().map(drop).map_err(|e| e.metrics_class()),
    );
    let fetched = fetched?;
    log_fetched(&fetched.origin, fetched.key.identity());
    slot.ensure_safe_differs(&safe, fetched.key.identity())?;
    if let Some(l) = &mut lease {
        l.prepare(&fetched.key.identity().address_hex())
            .map_err(Error::LeasePrepare)?;
    }
    // From here on the slot changes: a stop must restore it, not just exit.
    signals.defer_stop();
    if let Some(sig) = signals.stop_requested() {
        tracing::info!(
            event = "stopped_before_start",
            signal = sig,
            "stop requested before the key was delivered"
        );
        return Ok(0);
    }
    slot.backup()?;
    // The SDK is done: give its code pages back (most of our RSS otherwise).
    if let Err(e) = crate::sys::page_out_own_executable() {
        tracing::debug!(error = %e, "MADV_PAGEOUT of the executable failed");
    }
    let job = KeyJob {
        slot: Arc::new(slot),
        key: Arc::new(fetched.key),
        node,
    };
    let role = match lease.map(|l| l.into_parts()) {
        Some((client, held, state)) => LeaseRole::Holder {
            client,
            held,
            state,
        },
        None => LeaseRole::None,
    };
    ended(supervise::run(
        &signals,
        cfg,
        program,
        args,
        Some(job),
        role,
    )?)
}

fn ended(e: Ended) -> Result<u8, Error> {
    match e {
        Ended::Exit(code) => Ok(code),
        Ended::Acquired(..) => Err(Error::AcquiredTwice),
    }
}

/// Takes the failover lease, as a standby running the child without the
/// key until the lease is ours if another host holds it.
fn take_lease(
    signals: &supervise::Signals,
    cfg: &Config,
    settings: &lease::LeaseSettings,
    program: &OsString,
    args: &[OsString],
) -> Result<lease::Acquired, Error> {
    let state = state_file(cfg)?;
    lease::acquire(
        settings,
        state,
        || signals.stop_requested(),
        |client, state| {
            let role = LeaseRole::Standby { client, state };
            match supervise::run(signals, cfg, program, args, None, role)? {
                Ended::Exit(code) => Ok(lease::StandbyEnd::Exited(code)),
                Ended::Acquired(l) => Ok(lease::StandbyEnd::Won(l)),
            }
        },
    )
}

/// The node's sign-state file, found through its `config.toml`.
fn state_file(cfg: &Config) -> Result<StateFile, LeaseError> {
    StateFile::of_home(&cfg.home, cfg.node)
}

fn parse_ids(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// `accept-lease-state`: the operator confirms the state a lease carries
/// after a refusal for too large a jump. Raises this host's sign state to it
/// only if the lease still carries exactly that height.
fn accept_lease_state(ov: &Overrides, height: i64) -> Result<u8, Error> {
    let cfg = Config::resolve(ov, &ProcessEnv, &[])?;
    let settings = LeaseSettings::resolve(ov, &ProcessEnv, cfg.source.as_ref())?.ok_or(
        ConfigError::Missing {
            name: "SSM_COSMOVISOR_LEASE_TABLE",
            hint: "there is no lease whose state to accept",
        },
    )?;
    let state = state_file(&cfg)?;
    let (rec, before, raised) = match lease::accept_state(&settings, &state, height)? {
        lease::Acceptance::NoLease => {
            return Err(Error::NoLeaseToAccept {
                name: settings.name,
            })
        }
        lease::Acceptance::Moved(rec) => {
            return Err(Error::LeaseMoved {
                name: settings.name,
                carried: rec.state,
                holder: rec.holder,
                height,
            })
        }
        lease::Acceptance::Accepted {
            record,
            before,
            raised,
        } => (record, before, raised),
    };
    tracing::info!(event = "lease_state_accepted", lease = %settings.name, from = %before.map(|s| s.to_string()).unwrap_or_else(|| "none".into()), to = %rec.state, "sign state raised to the lease's, as the operator confirmed");
    println!(
        "{}: {} (lease {} by {} carries {})",
        state.path.display(),
        match raised {
            Raised::Unchanged => "already at or above it, unchanged".to_string(),
            Raised::From(_) => format!("raised to {}", rec.state),
        },
        settings.name,
        rec.holder,
        rec.state
    );
    Ok(0)
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

fn restore(ov: &Overrides) -> Result<u8, Error> {
    let cfg = Config::resolve(ov, &ProcessEnv, &[])?;
    let slot = KeySlot::open(&cfg.key_path, cfg.node)?;
    let (r, safe) = slot.repair()?;
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
) -> Result<u8, Error> {
    use secrecy::ExposeSecret;
    crate::harden::harden_self().map_err(Error::Harden)?;
    let name = ov
        .parameter
        .clone()
        .filter(|p| !p.is_empty())
        .map_or_else(|| ProcessEnv.setting("AWS_PARAMETER"), |p| Ok(Some(p)))?
        .ok_or(ConfigError::Missing {
            name: "AWS_PARAMETER",
            hint: "name the SSM parameter to create (or --parameter)",
        })?;
    let input = match file {
        Some(p) if p.as_os_str() != "-" => ImportInput::File(p),
        _ => ImportInput::Stdin,
    };
    let mut reader: Box<dyn Read> = match &input {
        ImportInput::File(p) => {
            Box::new(std::fs::File::open(p).map_err(|source| Error::ImportOpen {
                path: p.clone(),
                source,
            })?)
        }
        ImportInput::Stdin => Box::new(std::io::stdin()),
    };
    let mut buf = SecretBuf::with_capacity(MAX_SECRET_LEN + 1)?;
    loop {
        let n = buf
            .append_with(|spare| {
                let n = spare.len().min(MAX_SECRET_LEN + 1);
                reader.read(&mut spare[..n])
            })
            .map_err(|source| Error::ImportRead {
                input: input.clone(),
                source,
            })?;
        if n == 0 || buf.len() > MAX_SECRET_LEN {
            break;
        }
    }
    let key = ValidatorKey::parse(buf.expose_secret())
        .map_err(|source| Error::ImportInvalid { input, source })?;
    drop(buf);
    let canonical = key.to_secret_json().map_err(Error::Encode)?;
    let version = crate::source::ssm::put(&name, &canonical, kms, overwrite)?;
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

/// `<command> -c FILE <rest>`: cosmovisor's persistent `-c`, placed after
/// the command name, where every cobra version takes it.
fn with_config_flag(mut args: Vec<OsString>, file: Option<OsString>) -> Vec<OsString> {
    if let (Some(f), false) = (file, args.is_empty()) {
        args.splice(1..1, [OsString::from("-c"), f]);
    }
    args
}

fn passthrough(ov: &Overrides, args: Vec<OsString>) -> Result<u8, Error> {
    use std::os::unix::process::CommandExt;
    let program = crate::config::cosmovisor_bin(ov, &ProcessEnv)?;
    let profile = crate::config::child_aws_profile(ov, &ProcessEnv)?;
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args);
    // No check that the profile cannot read the key here: these commands
    // start no node, and every `run` checks it before the node starts.
    crate::harden::scrub_env(&mut cmd);
    crate::harden::give_aws_profile(&mut cmd, profile.as_deref());
    let e = cmd.exec();
    Err(Error::Exec {
        program: PathBuf::from(program),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn a_leading_config_flag_goes_after_the_cosmovisor_command() {
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            super::with_config_flag(os(&["config", "--x"]), Some("/c".into())),
            os(&["config", "-c", "/c", "--x"])
        );
        assert_eq!(
            super::with_config_flag(os(&["config"]), None),
            os(&["config"])
        );
    }

    #[test]
    fn help_carries_the_exit_status_table() {
        let after = super::Cli::command()
            .get_after_help()
            .expect("after_help")
            .to_string();
        let table = crate::error::exit_status_help();
        assert!(after.contains(&table), "{after}");
    }
}
