//! Whether `/proc` shows us every process that could hold the key FIFO.
//!
//! The reader check finds the FIFO's holders by listing `/proc`. The mount
//! option `hidepid=` (systemd's `ProtectProc=`) takes out of that listing
//! every process the viewer may not ptrace-read (`has_pid_permissions` in
//! the kernel's fs/proc/base.c): a process of the node's uid that calls
//! `prctl(PR_SET_DUMPABLE, 0)` is then not uninspectable, which fails the
//! delivery closed, but absent, and copies the key unseen. Measured before
//! this check (issue 20 item 1): 100 copies in 100 deliveries, no alarm,
//! with `/proc` mounted as `ProtectProc=invisible` mounts it.
//!
//! The kernel's rule, per mount (`hidepid=` and `gid=`, the latter 0 when
//! not shown):
//! - `off`: every process is listed and its directory can be entered;
//! - `noaccess`: every process is listed, but the directory of one the
//!   viewer may not ptrace-read cannot be entered (the scan would take it
//!   for gone), unless the viewer is in the mount's group;
//! - `invisible`: such a process is not listed at all, unless the viewer is
//!   in the mount's group;
//! - `ptraceable`: such a process is not listed, for every viewer.
//!
//! "In the group" is the kernel's `in_group_p`: the viewer's filesystem gid
//! or one of its supplementary groups. The split-trust tool lists `/proc` as
//! root (gid 0, the default `gid=`), and enters a node's entries with the
//! node's ids only where root was refused (`Scan::task` treats "absent to
//! the node" after "refused to root" as hidden, not gone).

use std::fmt;

/// The `hidepid=` setting of a procfs mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HidePid {
    /// `0` / `off`.
    Off,
    /// `1` / `noaccess`.
    NoAccess,
    /// `2` / `invisible`.
    Invisible,
    /// `4` / `ptraceable`.
    Ptraceable,
}

impl HidePid {
    /// The option's value in either spelling the kernel accepts (numbers
    /// before Linux 5.8, names after; mountinfo shows names on 5.8+).
    fn parse(v: &str) -> Option<HidePid> {
        Some(match v {
            "0" | "off" => HidePid::Off,
            "1" | "noaccess" => HidePid::NoAccess,
            "2" | "invisible" => HidePid::Invisible,
            "4" | "ptraceable" => HidePid::Ptraceable,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            HidePid::Off => "off",
            HidePid::NoAccess => "noaccess",
            HidePid::Invisible => "invisible",
            HidePid::Ptraceable => "ptraceable",
        }
    }
}

/// How the `/proc` we see is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcMount {
    pub(crate) hidepid: HidePid,
    /// The `gid=` option (0 when the kernel does not show it).
    pub(crate) gid: u32,
}

impl ProcMount {
    /// The procfs mounted at `/proc` in a mountinfo text: the last such line,
    /// the mount on top. `None` if there is none, or its `hidepid=` has a
    /// value we do not know (the caller fails closed on both).
    pub(crate) fn from_mountinfo(text: &str) -> Option<ProcMount> {
        let line = text.lines().rev().find(|l| {
            let Some((pre, post)) = l.split_once(" - ") else {
                return false;
            };
            pre.split_ascii_whitespace().nth(4) == Some("/proc")
                && post.split_ascii_whitespace().next() == Some("proc")
        })?;
        let (_, post) = line.split_once(" - ")?;
        let supers = post.split_ascii_whitespace().nth(2).unwrap_or("");
        let mut m = ProcMount {
            hidepid: HidePid::Off,
            gid: 0,
        };
        for opt in supers.split(',') {
            if let Some(v) = opt.strip_prefix("hidepid=") {
                m.hidepid = HidePid::parse(v)?;
            } else if let Some(v) = opt.strip_prefix("gid=") {
                m.gid = v.parse().ok()?;
            }
        }
        Some(m)
    }

    /// Whether this mount keeps some processes the viewer may not
    /// ptrace-read out of its scan; `in_group` tells whether the viewer is
    /// in a group.
    pub(crate) fn hides_from(&self, in_group: impl Fn(u32) -> bool) -> bool {
        match self.hidepid {
            HidePid::Off => false,
            HidePid::Ptraceable => true,
            HidePid::NoAccess | HidePid::Invisible => !in_group(self.gid),
        }
    }
}

/// `/proc` hides processes from the reader check; or we cannot tell.
#[derive(Debug, thiserror::Error)]
pub enum HiddenError {
    /// The mount hides what the check must see.
    #[error("/proc is mounted with hidepid={hidepid}{gid}: it hides from this process every process of the node's uid that made itself non-dumpable, so the reader check cannot see who holds the key FIFO and a hidden process could copy the key unseen. Mount /proc for this service without hidepid= (the package's units keep ProtectProc=default for this reason: do not set ProtectProc= in a drop-in), or, for a host-wide hidepid=invisible or noaccess, run ssm-cosmovisor in the group its gid= option names (SupplementaryGroups=)")]
    Hides {
        /// The option's value.
        hidepid: &'static str,
        /// `,gid=N` where the mount names a group.
        gid: GidOption,
    },
    /// No procfs at `/proc`, or options we do not know.
    #[error("cannot tell how /proc is mounted ({0}): the reader check needs to know that /proc lists every process; refusing to deliver the key")]
    Unknown(String),
}

/// The `gid=` part of the message.
#[derive(Debug)]
pub struct GidOption(u32);

impl fmt::Display for GidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            g => write!(f, ",gid={g}"),
        }
    }
}

/// Checks that `/proc`, as this process sees it, lists every process for the
/// reader check (see the module's text).
pub(crate) fn verify_sees_all() -> Result<ProcMount, HiddenError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| HiddenError::Unknown(format!("/proc/self/mountinfo: {e}")))?;
    let m = ProcMount::from_mountinfo(&text).ok_or_else(|| {
        HiddenError::Unknown(
            "no procfs mounted at /proc in /proc/self/mountinfo, or a hidepid= value this build does not know".into(),
        )
    })?;
    if m.hides_from(in_our_groups) {
        return Err(HiddenError::Hides {
            hidepid: m.hidepid.name(),
            gid: GidOption(m.gid),
        });
    }
    Ok(m)
}

/// The kernel's `in_group_p` for us: our effective (here also filesystem)
/// gid, or a supplementary group.
fn in_our_groups(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw\n";

    fn line(supers: &str) -> String {
        format!("{HOST}600 500 0:77 / /proc rw,nosuid,nodev,noexec,relatime - proc proc {supers}\n")
    }

    #[test]
    fn the_mount_on_top_decides() {
        assert_eq!(
            ProcMount::from_mountinfo(HOST),
            Some(ProcMount {
                hidepid: HidePid::Off,
                gid: 0
            })
        );
        // systemd's ProtectProc=invisible mounts a second procfs over /proc.
        let m = ProcMount::from_mountinfo(&line("rw,hidepid=invisible")).unwrap();
        assert_eq!(m.hidepid, HidePid::Invisible);
        assert_eq!(
            ProcMount::from_mountinfo(&line("rw,gid=44,hidepid=2")),
            Some(ProcMount {
                hidepid: HidePid::Invisible,
                gid: 44
            })
        );
        // Something else mounted below /proc is not /proc.
        let binfmt = format!(
            "{HOST}30 22 0:25 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw\n"
        );
        assert_eq!(
            ProcMount::from_mountinfo(&binfmt).unwrap().hidepid,
            HidePid::Off
        );
    }

    #[test]
    fn unknown_or_missing_is_none() {
        assert_eq!(ProcMount::from_mountinfo(&line("rw,hidepid=8")), None);
        assert_eq!(
            ProcMount::from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
    }

    #[test]
    fn who_is_hidden_from() {
        let m = |hidepid| ProcMount { hidepid, gid: 0 };
        let root_group = |g: u32| g == 0;
        let node_groups = |g: u32| g == 1000;
        assert!(!m(HidePid::Off).hides_from(node_groups));
        // The unprivileged tool (the node's uid) under ProtectProc=invisible: blind.
        assert!(m(HidePid::Invisible).hides_from(node_groups));
        assert!(m(HidePid::NoAccess).hides_from(node_groups));
        // The split-trust tool lists /proc as gid 0, the default gid=.
        assert!(!m(HidePid::Invisible).hides_from(root_group));
        // ptraceable exempts no group.
        assert!(m(HidePid::Ptraceable).hides_from(root_group));
        let with_gid = ProcMount {
            hidepid: HidePid::Invisible,
            gid: 1000,
        };
        assert!(!with_gid.hides_from(node_groups));
        assert!(with_gid.hides_from(root_group));
    }

    #[test]
    fn the_message_names_the_option_and_the_fix() {
        let e = HiddenError::Hides {
            hidepid: "invisible",
            gid: GidOption(44),
        };
        let s = e.to_string();
        assert!(s.contains("hidepid=invisible,gid=44"), "{s}");
        assert!(s.contains("ProtectProc=default"), "{s}");
    }
}
