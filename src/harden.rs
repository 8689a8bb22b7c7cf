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

/// Our AWS settings the child keeps when it is given a profile of its own
/// (`SSM_COSMOVISOR_CHILD_AWS_PROFILE`): where that profile is defined,
/// which region, and which endpoint (tests, private endpoints; the child is
/// meant to reach S3 and its own services, so the service-specific
/// `AWS_ENDPOINT_URL_SSM` and `_DYNAMODB` of the key and the lease stay
/// ours). None of them is a credential: keys, session tokens, web-identity
/// and container-credential variables, and our own `AWS_PROFILE`, never
/// reach the child.
pub(crate) const CHILD_AWS_LOCATION: [&str; 6] = [
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
];

/// Whether our variable `name` reaches the child: not when [`is_scrubbed`],
/// except the [`CHILD_AWS_LOCATION`] settings when the child has an AWS
/// profile of its own (its `AWS_PROFILE` is set apart, never inherited).
pub(crate) fn reaches_child(name: &str, child_aws_profile: bool) -> bool {
    !is_scrubbed(name) || (child_aws_profile && CHILD_AWS_LOCATION.contains(&name))
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
        default_signals: sys::catchable_signals(),
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

/// Configures `cmd` to start hardened: environment scrubbed (no AWS
/// variable at all), and the `pre_exec` hook applying `creds`.
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

/// After [`prepare`] or [`scrub_env`], with a child profile: puts our
/// [`CHILD_AWS_LOCATION`] settings back and sets `AWS_PROFILE` to the
/// profile (`run`/`exec` check first that it cannot read the key). Without
/// one the child keeps no `AWS_*` at all.
pub(crate) fn give_aws_profile(cmd: &mut Command, child_aws_profile: Option<&str>) {
    let Some(profile) = child_aws_profile else {
        return;
    };
    for (k, v) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if is_scrubbed(&name) && reaches_child(&name, true) {
            cmd.env(&k, &v);
        }
    }
    cmd.env("AWS_PROFILE", profile);
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

    /// Without a child profile no AWS variable reaches the child; with one,
    /// only the location settings do (and `AWS_PROFILE`, set apart), never
    /// a credential or our own settings.
    #[test]
    fn child_aws_filter() {
        let credentials = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_ROLE_SESSION_NAME",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_EC2_METADATA_DISABLED",
            "AWS_ENDPOINT_URL_SSM",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_PARAMETER",
            "SSM_COSMOVISOR_CHILD_AWS_PROFILE",
            "USE_SSM_KEY",
            "NOTIFY_SOCKET",
        ];
        for v in credentials {
            assert!(!reaches_child(v, false), "{v} without a profile");
            assert!(!reaches_child(v, true), "{v} with a profile");
        }
        for v in CHILD_AWS_LOCATION {
            assert!(v.starts_with("AWS_"), "{v}");
            assert!(!reaches_child(v, false), "{v} without a profile");
            assert!(reaches_child(v, true), "{v} with a profile");
        }
        for v in [
            "PATH",
            "HOME",
            "DAEMON_HOME",
            "DAEMON_ALLOW_DOWNLOAD_BINARIES",
        ] {
            assert!(reaches_child(v, false) && reaches_child(v, true), "{v}");
        }
    }

    /// `AWS_PROFILE` is the configured one, whatever ours is.
    #[test]
    fn child_gets_its_own_profile() {
        let profile_of = |cmd: &Command| {
            cmd.get_envs()
                .find(|(k, _)| *k == "AWS_PROFILE")
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        let mut cmd = Command::new("true");
        scrub_env(&mut cmd);
        give_aws_profile(&mut cmd, Some("cosmovisor"));
        assert_eq!(profile_of(&cmd).as_deref(), Some("cosmovisor"));
        let mut cmd = Command::new("true");
        scrub_env(&mut cmd);
        give_aws_profile(&mut cmd, None);
        assert_eq!(profile_of(&cmd), None);
    }
}
