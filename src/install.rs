//! `install-safe-key`: fills a key directory that starts empty at every start
//! with the host's safe key.
//!
//! The split-trust unit relocates the key path to its tmpfs
//! `RuntimeDirectory=` (root-owned, so the node user can create nothing
//! there), which systemd creates empty at each start and removes after the
//! stop. The safe key is kept by root in `/etc/ssm-cosmovisor/<node>.safe.json`
//! and copied in by this step (`ExecStartPre=`) before `run` opens the slot.
//!
//! Owner and mode of the copy, as root for a node user: `root:<node group>`,
//! 0640. Root without `CAP_FOWNER` may hard-link only files it owns
//! (`fs.protected_hardlinks`), which the backup `P.orig` needs; the node must
//! read it when this host is a standby; nobody but root can change it. Run as
//! the node user itself: the node's own file, 0600.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::config::Config;
use crate::key::{KeyError, KeyFile};
use crate::slot::{Installed, KeySlot, SlotError};

/// Why the safe key could not be installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// The source file cannot be opened or read.
    #[error("cannot read the safe key {path:?}: {source}. Put the host's safe (throwaway) key there, owned by root, mode 0600 (never the consensus key)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The source is not a file root alone controls.
    #[error("refusing the safe key {path:?}: {why}. Fix with: chown root:root {path:?} && chmod 0600 {path:?}")]
    Unsafe { path: PathBuf, why: String },
    /// The source is not a complete key.
    #[error("{path:?} is not a complete key file ({source}): put the host's safe (throwaway) key there, e.g. from `<node> init` in a scratch home")]
    NotAKey { path: PathBuf, source: KeyError },
    /// The key slot refused it.
    #[error(transparent)]
    Slot(#[from] SlotError),
}

/// Owners we accept for the source: root, or ourselves when run unprivileged.
fn owned_by_root_or_us(st: &rustix::fs::Stat) -> bool {
    st.st_uid == 0 || st.st_uid == rustix::process::geteuid().as_raw()
}

fn writable_by_others(st: &rustix::fs::Stat) -> bool {
    st.st_mode & 0o022 != 0
}

/// Reads the source without following a symlink at its last component,
/// checking on the opened fd that it is a small regular file that only its
/// owner (root, or we) can change.
fn read_source(path: &Path) -> Result<Vec<u8>, InstallError> {
    let read_err = |source: std::io::Error| InstallError::Read {
        path: path.into(),
        source,
    };
    let unsafe_err = |why: String| InstallError::Unsafe {
        path: path.into(),
        why,
    };
    let fd: OwnedFd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => unsafe_err("it is a symbolic link".into()),
        e => read_err(e.into()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(unsafe_err("it is not a regular file".into()));
    }
    if !owned_by_root_or_us(&st) {
        return Err(unsafe_err(format!("it is owned by uid {}", st.st_uid)));
    }
    if writable_by_others(&st) {
        return Err(unsafe_err(format!(
            "it is writable by group or others (mode {:04o})",
            st.st_mode & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(crate::secret::MAX_SECRET_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    match KeyFile::parse(&bytes) {
        Ok(KeyFile::Complete(_)) => Ok(bytes),
        Ok(KeyFile::Stripped) => Err(InstallError::NotAKey {
            path: path.into(),
            source: KeyError::Stripped,
        }),
        Err(source) => Err(InstallError::NotAKey {
            path: path.into(),
            source,
        }),
    }
}

/// Puts the safe key from `source` at the configured key path unless the slot
/// already holds something there (then [`KeySlot::repair`] at `run` decides).
pub(crate) fn install(cfg: &Config, source: &Path) -> Result<Installed, InstallError> {
    let bytes = read_source(source)?;
    let (group, mode) = if cfg.node.switches() {
        (Some(cfg.node.gid()), 0o640)
    } else {
        (None, 0o600)
    };
    let slot = KeySlot::open(&cfg.key_path, cfg.node)?;
    let done = slot.install_safe(&bytes, group, mode)?;
    match &done {
        Installed::Placed(id) => tracing::info!(
            event = "safe_key_installed",
            path = %slot.path().display(),
            source = %source.display(),
            address = %id.address_hex(),
            mode = %format!("{mode:04o}"),
            "put the host's safe key at the key path"
        ),
        Installed::AlreadyPresent => tracing::info!(
            event = "safe_key_present",
            path = %slot.path().display(),
            "the key path or its backup exists already: left as it is"
        ),
    }
    Ok(done)
}
