//! `ssm-cosmovisor`: runs cosmovisor with the validator's consensus key
//! fetched from AWS SSM (or a systemd credential) and handed to the node once
//! per start through a verified FIFO at the key path, never written to disk.
//!
//! The library's interface is small: [`cli`] (what the binary runs),
//! [`secret::ZeroizingAlloc`] (the binary's allocator), and the `/proc` scan
//! ([`procfs`], [`identity`]) that `bench/scan.rs` and the tests share.
//! Everything else is crate-private; `docs/design.md` §1 names the one file
//! that owns each concept (the key slot, the delivery, the lease, the fencer,
//! the supervisor, the error type with the exit statuses, …); all `unsafe`
//! lives in `sys/`.

#![deny(unsafe_op_in_unsafe_fn)]
// All `unsafe` in `sys/`, each block with its `// SAFETY:` comment: a
// compiler fact, not a convention (`sys` alone allows it).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub(crate) mod aws;
pub(crate) mod check;
pub mod cli;
pub(crate) mod config;
pub(crate) mod cosmovisor;
pub(crate) mod deliver;
pub(crate) mod error;
pub(crate) mod fence;
pub(crate) mod guard;
pub(crate) mod harden;
pub mod identity;
pub(crate) mod install;
pub(crate) mod key;
pub(crate) mod lease;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod node_file;
pub(crate) mod notify;
pub(crate) mod perms;
pub mod procfs;
pub(crate) mod run;
pub(crate) mod safe_dir;
pub mod secret;
pub(crate) mod slot;
pub(crate) mod source;
pub(crate) mod supervise;
#[allow(unsafe_code)]
pub(crate) mod sys;

/// Test-only crash injection: with the `failpoints` feature, a process whose
/// `SSM_COSMOVISOR_FAILPOINT` equals the name kills itself with SIGKILL at
/// that point, exactly like an external `kill -9` would.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if std::env::var("SSM_COSMOVISOR_FAILPOINT").as_deref() == Ok($name) {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
        }
    };
}

/// Test-only error injection: with the `failpoints` feature, `true` when
/// `SSM_COSMOVISOR_FAILPOINT` equals the name, so the caller takes its error
/// path there (a step that fails, not a crash); `false` without the feature.
#[macro_export]
macro_rules! failpoint_hit {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let hit = std::env::var("SSM_COSMOVISOR_FAILPOINT").as_deref() == Ok($name);
        #[cfg(not(feature = "failpoints"))]
        let hit = false;
        hit
    }};
}

/// Test-only hang injection: with the `failpoints` feature, the calling
/// thread blocks forever at this point when `SSM_COSMOVISOR_FAILPOINT` equals
/// the name (a request that never returns, a thread that is stuck).
#[macro_export]
macro_rules! failpoint_hang {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if std::env::var("SSM_COSMOVISOR_FAILPOINT").as_deref() == Ok($name) {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
    };
}
