//! The crate's one error type, and the exit statuses it maps to.
//!
//! Every command ends in [`Error`]; [`Error::exit_code`] is the one place an
//! error becomes a status, so a call site never picks a code. Where one
//! module's error means different things at different call sites (a lease
//! failure before the key was delivered, a key that fails to parse as input
//! or to encode in memory), that difference is a variant here.
//!
//! The table of our own statuses is [`Exit`]; the `--help` text is made from
//! it and the README repeats it (a unit test keeps the two in step). Any
//! other status is the child's, passed through.

use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::guard::GuardError;
use crate::install::InstallError;
use crate::key::KeyError;
use crate::lease::{LeaseError, SignState};
use crate::metrics::MetricsError;
use crate::secret::SecretError;
use crate::slot::SlotError;
use crate::source::child_aws::ChildAwsError;
use crate::source::ssm::SsmError;
use crate::source::SourceError;
use crate::supervise::SuperviseError;

/// Our own exit statuses; any other is the child's (128+N if it died of signal N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// An internal failure (threads, hardening, secret memory), or `check` found a problem.
    Failure = 1,
    /// Usage or configuration error: the same settings fail the same way at every start.
    Config = 2,
    /// The key source (SSM, KMS, network, credential) failed or held an invalid key.
    Source = 3,
    /// The key slot needs an operator.
    Slot = 4,
    /// The node never read the key (timeout) or delivery failed.
    Delivery = 5,
    /// A stranger may have read the key from the pipe: rotate the key.
    Exposed = 6,
    /// The child could not be started.
    Spawn = 7,
    /// The failover lease was lost (node stopped) or cannot be used.
    Lease = 8,
    /// The guard refused: the key signs elsewhere, or the chain could not be asked.
    Guard = 9,
}

impl Exit {
    /// Every status, in order.
    pub(crate) const ALL: [Exit; 9] = [
        Exit::Failure,
        Exit::Config,
        Exit::Source,
        Exit::Slot,
        Exit::Delivery,
        Exit::Exposed,
        Exit::Spawn,
        Exit::Lease,
        Exit::Guard,
    ];

    /// The process exit status.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// How `--help` and the README name it.
    fn summary(self) -> &'static str {
        match self {
            Exit::Failure => "internal error or a failed check",
            Exit::Config => "configuration",
            Exit::Source => "key source or invalid key",
            Exit::Slot => "key slot needs an operator",
            Exit::Delivery => "delivery failed or timed out",
            Exit::Exposed => "key may be exposed (rotate it)",
            Exit::Spawn => "cannot start the child",
            Exit::Lease => "failover lease lost (node stopped) or unusable",
            Exit::Guard => {
                "the guard refused: the key signs elsewhere or the chain could not be asked"
            }
        }
    }
}

/// The exit-status paragraph of `--help` (the README carries the same sentence).
pub(crate) fn exit_status_help() -> String {
    let codes: Vec<String> = Exit::ALL
        .iter()
        .map(|e| format!("{} {}", e.code(), e.summary()))
        .collect();
    format!(
        "Exit status: the child's status (128+N if killed by signal N); {}.",
        codes.join(", ")
    )
}

/// What `import` reads the key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImportInput {
    /// Standard input (`-f -` or no `-f`).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl std::fmt::Display for ImportInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportInput::Stdin => f.write_str("standard input"),
            ImportInput::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a command failed. Each message names the setting, path or parameter
/// at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `run`'s arguments or cosmovisor's config file cannot be used.
    #[error(transparent)]
    Cosmovisor(#[from] crate::cosmovisor::CosmovisorError),
    /// The key is wanted but no source is configured.
    #[error("no key source configured")]
    NoKeySource,
    /// The key could not be fetched, or the source holds no valid key.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// cosmovisor's AWS profile can read the key, does not resolve, or
    /// could not be checked.
    #[error(transparent)]
    ChildAws(#[from] ChildAwsError),
    /// `import` could not store the key in SSM.
    #[error(transparent)]
    Store(#[from] SsmError),
    /// `import`: the key file cannot be opened.
    #[error("cannot read {}: {source}", path.display())]
    ImportOpen { path: PathBuf, source: io::Error },
    /// `import`: reading the key failed.
    #[error("reading {input}: {source}")]
    ImportRead {
        /// File or standard input.
        input: ImportInput,
        source: io::Error,
    },
    /// `import`: what was read is not a valid key.
    #[error("{input} is not a valid key, nothing stored: {source}")]
    ImportInvalid {
        /// File or standard input.
        input: ImportInput,
        /// What is wrong with it.
        source: KeyError,
    },
    /// The key slot needs an operator.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// `install-safe-key` could not install the safe key.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Supervising the child failed.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The failover lease cannot be used.
    #[error("failover lease: {0}")]
    Lease(#[from] LeaseError),
    /// The lease was taken, but preparing it for the key (binding our
    /// address, raising the sign state, renewing) failed.
    #[error("failover lease: {0}; the key was not delivered")]
    LeasePrepare(#[source] LeaseError),
    /// The guard did not let the key out.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// `accept-lease-state`: there is no lease record.
    #[error("lease {name} does not exist: nothing to accept")]
    NoLeaseToAccept { name: String },
    /// `accept-lease-state`: the lease no longer carries the height the
    /// operator confirmed.
    #[error("lease {name} now carries {carried} (holder {holder}), not height {height}: nothing changed; check again and confirm the height it carries")]
    LeaseMoved {
        name: String,
        /// What the lease carries now.
        carried: SignState,
        /// Who wrote it.
        holder: String,
        /// The height the operator confirmed.
        height: i64,
    },
    /// The child run as a standby (without the key) exited on its own.
    #[error("the standby child exited with status {status}")]
    StandbyExited {
        /// Its exit status, which becomes ours.
        status: u8,
    },
    /// A pass-through command could not be executed.
    #[error("cannot run {}: {source}; set COSMOVISOR_BIN or put cosmovisor on PATH", program.display())]
    Exec {
        /// The cosmovisor binary.
        program: PathBuf,
        source: io::Error,
    },
    /// The process could not be made non-dumpable or core-less.
    #[error("cannot harden the process (PR_SET_DUMPABLE/RLIMIT_CORE): {0}")]
    Harden(#[source] io::Error),
    /// Secret memory could not be had.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A parsed key could not be encoded again (secret memory).
    #[error(transparent)]
    Encode(KeyError),
    /// The supervisor handed back a lease when none was being waited for.
    #[error("internal error: lease acquired twice")]
    AcquiredTwice,
    /// A metrics setting cannot be used (checked before anything changes).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// `/proc` hides processes from the reader check (its mount options do
    /// not change between starts).
    #[error(transparent)]
    ProcHidden(#[from] crate::procfs::HiddenError),
}

impl Error {
    /// The process exit status for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        let exit = match self {
            Error::StandbyExited { status } => return *status,
            Error::Config(_)
            | Error::Cosmovisor(_)
            | Error::NoKeySource
            | Error::ImportOpen { .. }
            | Error::ImportRead { .. }
            | Error::ProcHidden(_) => Exit::Config,
            Error::Metrics(MetricsError::Thread { .. } | MetricsError::Twice) => Exit::Failure,
            Error::Metrics(_) => Exit::Config,
            Error::ChildAws(e) if e.is_configuration() => Exit::Config,
            Error::Source(_)
            | Error::Store(_)
            | Error::ImportInvalid { .. }
            | Error::ChildAws(_) => Exit::Source,
            Error::Slot(_) | Error::Install(_) => Exit::Slot,
            Error::Supervise(e) => supervise_exit(e),
            Error::Lease(_)
            | Error::LeasePrepare(_)
            | Error::NoLeaseToAccept { .. }
            | Error::LeaseMoved { .. } => Exit::Lease,
            Error::Exec { .. } => Exit::Spawn,
            Error::Guard(GuardError::ChainId { .. }) => Exit::Config,
            Error::Guard(GuardError::Setup(_)) => Exit::Failure,
            Error::Guard(_) => Exit::Guard,
            Error::Harden(_) | Error::Secret(_) | Error::Encode(_) | Error::AcquiredTwice => {
                Exit::Failure
            }
        };
        exit.code()
    }
}

fn supervise_exit(e: &SuperviseError) -> Exit {
    match e {
        SuperviseError::Slot(_) => Exit::Slot,
        SuperviseError::Spawn { .. } => Exit::Spawn,
        SuperviseError::Deliver(_) | SuperviseError::Timeout { .. } => Exit::Delivery,
        SuperviseError::Exposed(_) => Exit::Exposed,
        SuperviseError::Lease(_) => Exit::Lease,
        SuperviseError::Internal { .. } | SuperviseError::SignalsStartedTwice => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses systemd units (`RestartPreventExitStatus=2 4 6`), the
    /// tests and operators' monitoring rely on.
    #[test]
    fn the_table() {
        let codes: Vec<(Exit, u8)> = Exit::ALL.iter().map(|e| (*e, e.code())).collect();
        assert_eq!(
            codes,
            [
                (Exit::Failure, 1),
                (Exit::Config, 2),
                (Exit::Source, 3),
                (Exit::Slot, 4),
                (Exit::Delivery, 5),
                (Exit::Exposed, 6),
                (Exit::Spawn, 7),
                (Exit::Lease, 8),
                (Exit::Guard, 9),
            ]
        );
    }

    #[test]
    fn errors_map_to_the_table() {
        let io = || io::Error::from(io::ErrorKind::NotFound);
        let cases = [
            (Error::NoKeySource, 2),
            (
                Error::ImportOpen {
                    path: "/k.json".into(),
                    source: io(),
                },
                2,
            ),
            (
                Error::ImportInvalid {
                    input: ImportInput::Stdin,
                    source: KeyError::Stripped,
                },
                3,
            ),
            (Error::LeasePrepare(LeaseError::NoRegion), 8),
            (Error::Guard(GuardError::Unknown("down".into())), 9),
            (
                Error::Guard(GuardError::ChainId {
                    path: "/g.json".into(),
                    reason: "missing".into(),
                }),
                2,
            ),
            (Error::Lease(LeaseError::NoRegion), 8),
            (Error::Supervise(SuperviseError::Exposed("held".into())), 6),
            (
                Error::Supervise(SuperviseError::Timeout {
                    timeout: std::time::Duration::from_secs(1),
                    pid: 9,
                    after: std::time::Duration::from_secs(1),
                    path: "/k".into(),
                }),
                5,
            ),
            (
                Error::Supervise(SuperviseError::Internal {
                    what: "signal thread",
                    source: io(),
                }),
                1,
            ),
            (Error::Supervise(SuperviseError::SignalsStartedTwice), 1),
            (
                Error::Exec {
                    program: "cosmovisor".into(),
                    source: io(),
                },
                7,
            ),
            (Error::StandbyExited { status: 42 }, 42),
            (
                Error::ChildAws(ChildAwsError::CanReadKey {
                    profile: "cv".into(),
                    parameter: "/k".into(),
                }),
                2,
            ),
            (
                Error::ChildAws(ChildAwsError::Unresolved {
                    profile: "cv".into(),
                    detail: "not defined".into(),
                    files: "~/.aws/config".into(),
                }),
                2,
            ),
            (
                Error::ChildAws(ChildAwsError::Incomplete {
                    profile: "cv".into(),
                    parameter: "/k".into(),
                    cause: Box::new(crate::source::child_aws::Incomplete::CredentialSource(
                        "timed out",
                    )),
                }),
                3,
            ),
            (Error::Harden(io()), 1),
            (
                Error::ProcHidden(crate::procfs::HiddenError::Unknown("x".into())),
                2,
            ),
            (Error::Metrics(MetricsError::Twice), 1),
            (
                Error::Metrics(MetricsError::NonLoopback {
                    addr: "0.0.0.0:1".parse().unwrap(),
                }),
                2,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }

    #[test]
    fn messages_name_what_is_at_fault() {
        let e = Error::ImportRead {
            input: ImportInput::File("/tmp/key.json".into()),
            source: io::Error::from(io::ErrorKind::InvalidData),
        };
        assert!(e.to_string().starts_with("reading /tmp/key.json: "), "{e}");
        let e = Error::ImportInvalid {
            input: ImportInput::Stdin,
            source: KeyError::Stripped,
        };
        assert!(
            e.to_string()
                .starts_with("standard input is not a valid key, nothing stored: "),
            "{e}"
        );
        let e = Error::LeasePrepare(LeaseError::NoRegion);
        assert!(e.to_string().starts_with("failover lease: no AWS region"));
        assert!(e.to_string().ends_with("; the key was not delivered"));
    }

    #[test]
    fn help_lists_the_table() {
        let help = exit_status_help();
        for e in Exit::ALL {
            let item = format!("{} {}", e.code(), e.summary());
            assert!(help.contains(&item), "--help lacks {item:?}: {help}");
        }
    }

    /// The README's summary sentence is the `--help` one, and its restart
    /// table has one row per status of ours.
    #[test]
    fn readme_lists_the_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&exit_status_help()),
            "README does not say: {}",
            exit_status_help()
        );
        let table = readme
            .split("| exit | meaning | after it |")
            .nth(1)
            .expect("README restart table");
        let rows: Vec<u8> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.trim_start_matches('|').split('|').next())
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let want: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(rows, want, "README restart table rows");
    }
}
