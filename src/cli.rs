//! Command line: argument definitions and the body of each command.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Env, LogFormat, Overrides, ProcessEnv};
use crate::error::{Error, ImportInput};
use crate::key::ValidatorKey;
use crate::lease::{self, LeaseError, LeaseSettings, Raised, StateFile};
use crate::metrics::MetricsSettings;
use crate::secret::{SecretBuf, MAX_SECRET_LEN};
use crate::slot::KeySlot;
use crate::supervise::NodeMatch;

/// Runs cosmovisor with the validator key fetched from AWS SSM and handed to
/// the node once, through a verified FIFO, never written to disk.
#[derive(Debug, Parser)]
#[command(name = "ssm-cosmovisor", version, about, long_about = None, allow_external_subcommands = true)]
#[command(after_help = after_help())]
pub struct Cli {
    /// Settings that override the environment.
    #[command(flatten)]
    pub(crate) overrides: Overrides,
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
        /// The safe key kept by root, e.g. `/etc/ssm-cosmovisor/<node>.safe.json`.
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
    let ov = cli.overrides;
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
            let guard = crate::guard::GuardSettings::resolve(&ov, &ProcessEnv)?;
            let metrics = MetricsSettings::from_env(&ProcessEnv)?;
            cfg.check_before_run(&ProcessEnv)?;
            let mut child_args = vec![OsString::from("run")];
            child_args.extend(args);
            let program = cfg.cosmovisor_bin.clone();
            let node = NodeMatch::Args(run.node);
            crate::run::run(
                &cfg,
                lease.as_ref(),
                guard.as_ref(),
                &metrics,
                crate::run::Child {
                    program: &program,
                    args: &child_args,
                    node,
                },
            )
        }
        Cmd::Exec { command } => {
            let cfg = Config::resolve(&ov, &ProcessEnv, &command[1..])?;
            let lease = LeaseSettings::resolve(&ov, &ProcessEnv, cfg.source.as_ref())?;
            let guard = crate::guard::GuardSettings::resolve(&ov, &ProcessEnv)?;
            let metrics = MetricsSettings::from_env(&ProcessEnv)?;
            cfg.check_before_run(&ProcessEnv)?;
            crate::run::run(
                &cfg,
                lease.as_ref(),
                guard.as_ref(),
                &metrics,
                crate::run::Child {
                    program: &command[0],
                    args: &command[1..],
                    node: NodeMatch::Child,
                },
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
                holder: rec.holder_id,
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
        rec.holder_id,
        rec.state
    );
    Ok(0)
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
    fn a_bare_boolean_flag_means_true_and_never_takes_the_command_as_its_value() {
        use clap::Parser;
        let parse = |v: &[&str]| super::Cli::try_parse_from(v).unwrap();
        let c = parse(&["t", "--always-armed", "run", "start"]);
        assert_eq!(c.overrides.always_armed.as_deref(), Some("true"));
        assert!(matches!(c.command, super::Cmd::Run { ref args } if args == &["start"]));
        let c = parse(&["t", "--always-armed=false", "--allow-plain-string", "check"]);
        assert_eq!(c.overrides.always_armed.as_deref(), Some("false"));
        assert_eq!(c.overrides.allow_plain_string.as_deref(), Some("true"));
        // --use-ssm-key takes its value as the Go tool's did, also after a space.
        let c = parse(&["t", "--use-ssm-key", "false", "check"]);
        assert_eq!(c.overrides.use_ssm_key.as_deref(), Some("false"));
        assert!(matches!(c.command, super::Cmd::Check));
    }

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
