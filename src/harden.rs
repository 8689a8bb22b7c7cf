//! Process hardening: our own process (not dumpable, no core files) and the
//! child's (no capabilities, no new privileges, optional uid switch, scrubbed
//! environment, no inherited descriptors).

use std::process::Command;

use crate::config::NodeUser;
use crate::sys::{self, ChildCreds};

/// Applies `PR_SET_DUMPABLE 0` and `RLIMIT_CORE 0` to this process; call
/// before any secret is fetched.
pub(crate) fn harden_self() -> std::io::Result<()> {
    sys::harden_self()
}

/// Environment variables never passed to the child: AWS credentials and
/// settings (the node needs none), our own settings, systemd's notify socket
/// and credentials directory (meant for us only).
pub(crate) fn is_scrubbed(name: &str) -> bool {
    name.starts_with("AWS_")
        || name.starts_with("SSM_COSMOVISOR_")
        || matches!(
            name,
            "USE_SSM_KEY"
                | "KEY_SOURCE"
                | "COSMOVISOR_BIN"
                | "CREDENTIALS_DIRECTORY"
                | "NOTIFY_SOCKET"
                | "WATCHDOG_USEC"
                | "WATCHDOG_PID"
        )
}

/// Computes the child's credentials before `fork`, so that `pre_exec` only
/// issues syscalls.
pub(crate) fn child_creds(node_user: Option<&NodeUser>) -> ChildCreds {
    // Dropping from the bounding set needs CAP_SETPCAP; without it even an
    // absent capability gives EPERM. An unprivileged parent cannot drop it
    // (under the unprivileged unit the set is empty anyway), and
    // `no_new_privs` already stops the child from gaining anything; a root
    // parent without it (split trust bounded without CAP_SETPCAP) leaves its
    // bounding set to the child, which is said once, before the first spawn.
    let can_setpcap = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .unwrap_or(false);
    let bounding: Vec<u32> = caps::read(None, caps::CapSet::Bounding)
        .map(|set| set.into_iter().map(|c| c.index() as u32).collect())
        .unwrap_or_default();
    let bounding_to_drop = if can_setpcap {
        bounding
    } else {
        // Any process has a full bounding set outside a sandbox: only root's
        // (which the child may keep after the uid switch) is worth a word.
        if !bounding.is_empty() && rustix::process::geteuid().is_root() {
            warn_bounding_kept(bounding.len());
        }
        Vec::new()
    };
    ChildCreds {
        bounding_to_drop,
        switch_to: node_user.map(|u| (u.uid, u.gid, u.groups.clone())),
        clear_caps: true,
        parent_death_signal: Some(libc::SIGTERM),
        parent: std::process::id() as i32,
    }
}

fn warn_bounding_kept(n: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            event = "bounding_set_kept",
            capabilities = n,
            "no CAP_SETPCAP: the child keeps this process's capability bounding set (its other capability sets are still cleared); give the unit CAP_SETPCAP to drop it"
        )
    });
}

/// Configures `cmd` to start hardened: environment scrubbed, and the
/// `pre_exec` hook applying `creds`.
pub(crate) fn prepare(cmd: &mut Command, creds: ChildCreds) {
    scrub_env(cmd);
    sys::install_child_hardening(cmd, creds);
}

/// Removes every [`is_scrubbed`] variable of our environment from `cmd`'s.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if is_scrubbed(&k.to_string_lossy()) {
            cmd.env_remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_list() {
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_PARAMETER",
            "USE_SSM_KEY",
            "SSM_COSMOVISOR_NODE_USER",
            "NOTIFY_SOCKET",
        ] {
            assert!(is_scrubbed(v), "{v}");
        }
        for v in [
            "DAEMON_HOME",
            "DAEMON_NAME",
            "PATH",
            "HOME",
            "DAEMON_RESTART_AFTER_UPGRADE",
        ] {
            assert!(!is_scrubbed(v), "{v}");
        }
    }
}
