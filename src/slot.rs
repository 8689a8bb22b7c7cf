//! The key slot: the key path `P`, its backup `P.orig`, and the atomic moves
//! between the states of docs/design.md §2.
//!
//! | state     | `P`                     | `P.orig`              |
//! |-----------|-------------------------|-----------------------|
//! | idle      | safe key                | absent                |
//! | backed-up | safe key                | hard link to the same |
//! | armed     | FIFO (0600, node's uid) | safe key              |
//! | delivered | stripped key (0600)     | safe key              |
//!
//! Every move is one `linkat`/`renameat` inside a directory opened once
//! without following symlinks, followed by `fsync` of the directory, so `P`
//! exists at every instant and any crash leaves a state that [`KeySlot::repair`]
//! recognises. The safe key is never under a temporary name: temporary names
//! only ever hold a FIFO, a stripped file or, while [`KeySlot::install_safe`]
//! fills an empty key directory, a copy of a safe key whose source stays where
//! it was, so deleting them is always safe.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat};

use crate::identity::NodeIdentity;
use crate::key::{KeyError, KeyFile, PublicIdentity};
use crate::node_file::kind_name;
use crate::perms::{ancestor_replaceable, group_or_world_writable, owner_trusted};
use crate::safe_dir::{same_inode, DirError};

/// Suffix of the backup, as the original tool names it.
pub(crate) const ORIG_SUFFIX: &str = ".orig";

/// The states the slot can be in while we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// `P` is the safe key; no backup.
    Idle,
    /// `P` and `P.orig` are hard links to the safe key.
    BackedUp,
    /// `P` is a FIFO; `P.orig` is the safe key.
    Armed,
    /// `P` is the stripped key; `P.orig` is the safe key.
    Delivered,
}

impl SlotState {
    /// The state's name in reports and logs (`slot_checked found=...`).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            SlotState::Idle => "idle",
            SlotState::BackedUp => "backed-up",
            SlotState::Armed => "armed",
            SlotState::Delivered => "delivered",
        }
    }
}

/// Tells the metrics where the slot is now.
fn moved(s: SlotState) {
    use crate::metrics::SlotLabel;
    crate::metrics::slot(match s {
        SlotState::Idle => SlotLabel::Idle,
        SlotState::BackedUp => SlotLabel::BackedUp,
        SlotState::Armed => SlotLabel::Armed,
        SlotState::Delivered => SlotLabel::Delivered,
    });
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot problem. Each message names the path and says what the operator should do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotError {
    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A symlink where none may be.
    #[error("{path:?} is or passes through a symbolic link; the key slot must be reached without symlinks (a symlink lets whoever controls its target redirect the key). Use the real path (e.g. in priv_validator_key_file or DAEMON_HOME)")]
    Symlink { path: PathBuf },
    /// A directory others can write to or that belongs to someone else.
    #[error("directory {path:?} is unsafe: {why}. Fix with: chown <node user> {path:?} && chmod go-w {path:?}")]
    UnsafeDir { path: PathBuf, why: String },
    /// The key file belongs to another user.
    #[error("{path:?} is owned by uid {uid}, not by root or the node user (uid {expected}); someone else controls the key path. Fix ownership: chown <node user> {path:?}")]
    ForeignOwner {
        path: PathBuf,
        /// Its owner.
        uid: u32,
        expected: u32,
    },
    /// `P` is missing and there is no backup.
    #[error("key path {path:?} does not exist and there is no {path:?}.orig: refusing to start, because CometBFT would generate and save a NEW key there. Put the host's safe (throwaway) key at that path first")]
    Missing {
        /// `P`.
        path: PathBuf,
    },
    /// `P` is a FIFO or stripped file with no backup.
    #[error("key path {path:?} is {what} left by an interrupted run, and there is no {path:?}.orig to restore: copy the host's safe key (never the consensus key) to {path:?}, then start again")]
    Orphaned {
        /// `P`.
        path: PathBuf,
        /// "a FIFO" / "a stripped key".
        what: &'static str,
    },
    /// `P.orig` exists and differs from `P`.
    #[error("both {path:?} and {path:?}.orig hold complete keys and they differ: cannot tell which is the safe key. Compare them, keep the safe one at {path:?} and remove {path:?}.orig")]
    Conflict {
        /// `P`.
        path: PathBuf,
    },
    /// `P.orig` is not a complete key.
    #[error("{path:?}.orig is not a complete key ({source}); it may be a truncated copy from a power loss. {path:?} is {what}. Restore the safe key from your own backup to {path:?} and remove {path:?}.orig")]
    BadBackup {
        /// `P`.
        path: PathBuf,
        /// What `P` currently is.
        what: &'static str,
        /// Why the backup is unusable.
        source: KeyError,
    },
    /// `P` is not a key at all and there is no backup.
    #[error("key path {path:?} is not a valid key file ({source}) and there is no {path:?}.orig; put the host's safe key there")]
    Invalid {
        /// `P`.
        path: PathBuf,
        source: KeyError,
    },
    /// `P.orig` is not a regular file: we only ever make it a hard link to
    /// the safe key, so someone else put it there.
    #[error("{path:?}.orig is a {kind}, not a key file: ssm-cosmovisor only ever makes it a hard link to the safe key, so something else put it there. Nothing was changed and nothing delivered; {path:?} is {what}. Find out who created {path:?}.orig, remove it{}, then start again", if *safe_at_path { "" } else { ", and copy the host's safe key (never the consensus key) to the key path" })]
    BackupNotAFile {
        /// `P`.
        path: PathBuf,
        /// What `P.orig` is.
        kind: &'static str,
        /// What `P` is.
        what: &'static str,
        /// Whether `P` holds a complete key (the safe key stays there).
        safe_at_path: bool,
    },
    /// `P` is something other than a file or FIFO.
    #[error("key path {path:?} is a {kind}, not a key file")]
    WrongType {
        /// `P`.
        path: PathBuf,
        kind: &'static str,
    },
    /// The safe key is the consensus key.
    #[error("the safe key at {path:?} IS the consensus key from the key source (address {address}): the real key would stay on disk. Replace {path:?} with a throwaway key (e.g. from `<node> init` in a scratch home)")]
    SafeIsConsensus {
        /// `P`.
        path: PathBuf,
        /// The shared address.
        address: String,
    },
    /// Root may not hard-link the node's safe key as the backup.
    #[error("cannot keep a backup of the safe key {path:?}: it belongs to the node user, and root without CAP_FOWNER may not hard-link another user's file (fs.protected_hardlinks). Give the safe key to root: chown root:{node_gid} {path:?} && chmod 0640 {path:?} (in the split-trust unit, install-safe-key does this from /etc/ssm-cosmovisor/<node>.safe.json)")]
    BackupRefused {
        /// `P`.
        path: PathBuf,
        /// The node's group, which keeps read access.
        node_gid: u32,
    },
    /// Another instance holds the slot.
    #[error(
        "another ssm-cosmovisor is managing {path:?} (lock held on its directory); stop it first"
    )]
    Locked { path: PathBuf },
}

/// What was found at a name.
#[derive(Debug)]
enum Entry {
    Absent,
    Fifo,
    Complete(Stat, Box<PublicIdentity>, Vec<u8>),
    Stripped,
    Invalid(KeyError),
    Other(&'static str),
}

impl Entry {
    /// What a non-regular entry is, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Entry::Fifo => kind_name(FileType::Fifo),
            Entry::Other(kind) => kind,
            Entry::Absent => "missing file",
            _ => kind_name(FileType::RegularFile),
        }
    }
}

fn kind_of(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Opens the directory holding the key without following any symlink, and
/// checks each ancestor on its fd: none may be writable by group/others
/// unless sticky, and the key's own directory must belong to root or the node
/// user and be writable by nobody else.
fn open_dir_secure(dir: &Path, node_uid: u32) -> Result<OwnedFd, SlotError> {
    let (fd, st) = crate::safe_dir::open_nofollow(dir, |st| {
        ancestor_replaceable(st).then(|| {
            format!(
                "an ancestor directory is writable by group/others (mode {:04o})",
                st.st_mode & 0o7777
            )
        })
    })?;
    check_key_dir(dir, &st, node_uid)?;
    Ok(fd)
}

impl From<DirError> for SlotError {
    fn from(e: DirError) -> SlotError {
        match e {
            DirError::Symlink { path } => SlotError::Symlink { path },
            DirError::Ancestor { path, why } => SlotError::UnsafeDir { path, why },
            DirError::Io { op, path, source } => SlotError::Io { op, path, source },
        }
    }
}

/// The key's own directory: owned by root or the node user, writable by
/// nobody else.
fn check_key_dir(dir: &Path, st: &Stat, node_uid: u32) -> Result<(), SlotError> {
    if !owner_trusted(st, node_uid) {
        return Err(SlotError::UnsafeDir {
            path: dir.into(),
            why: format!(
                "owned by uid {}, not root or the node user (uid {node_uid})",
                st.st_uid
            ),
        });
    }
    if group_or_world_writable(st) {
        return Err(SlotError::UnsafeDir {
            path: dir.into(),
            why: format!(
                "writable by group or others (mode {:04o})",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// The move that brings a recognised slot back to idle.
#[derive(Debug, PartialEq, Eq)]
enum Move<'e> {
    /// `P` is the safe key and there is no backup: nothing to move.
    Stay(&'e PublicIdentity),
    /// `P.orig` is the same safe key as `P` (a second link, or a copy): unlink it.
    DropOrig(&'e PublicIdentity),
    /// `P` is not the safe key and `P.orig` is (the state found is named): rename it over `P`.
    RestoreOrig(&'static str, &'e PublicIdentity),
}

/// Judges what is at `P` (`p`) and `P.orig` (`o`): the move back to idle, or
/// why an operator must decide. Reads and changes nothing, so `repair` and
/// `diagnose` cannot disagree.
fn judge<'e>(path: &Path, p: &'e Entry, o: &'e Entry) -> Result<Move<'e>, SlotError> {
    let path = path.to_path_buf();
    match (p, o) {
        (Entry::Complete(_, id, _), Entry::Absent) => Ok(Move::Stay(id)),
        (Entry::Complete(pst, id, pbytes), Entry::Complete(ost, _, obytes)) => {
            if same_inode(pst, ost) || pbytes == obytes {
                Ok(Move::DropOrig(id))
            } else {
                Err(SlotError::Conflict { path })
            }
        }
        (Entry::Complete(..), Entry::Invalid(e)) => Err(SlotError::BadBackup {
            path,
            what: "a complete key",
            source: e.clone(),
        }),
        (Entry::Complete(..), Entry::Stripped) => Err(SlotError::BadBackup {
            path,
            what: "a complete key",
            source: KeyError::Stripped,
        }),
        (Entry::Complete(..), Entry::Fifo | Entry::Other(_)) => Err(SlotError::BackupNotAFile {
            path,
            kind: o.kind(),
            what: "a complete key",
            safe_at_path: true,
        }),
        (Entry::Fifo, Entry::Absent) => Err(SlotError::Orphaned {
            path,
            what: "a FIFO",
        }),
        (Entry::Stripped, Entry::Absent) => Err(SlotError::Orphaned {
            path,
            what: "a stripped key",
        }),
        (Entry::Absent, Entry::Absent) => Err(SlotError::Missing { path }),
        (Entry::Invalid(e), Entry::Absent) => Err(SlotError::Invalid {
            path,
            source: e.clone(),
        }),
        (Entry::Other(kind), _) => Err(SlotError::WrongType { path, kind }),
        (Entry::Fifo, _) => restorable(path, SlotState::Armed.as_str(), o),
        (Entry::Stripped, _) => restorable(path, SlotState::Delivered.as_str(), o),
        (Entry::Absent, _) => restorable(path, "missing key path with a backup", o),
        (Entry::Invalid(..), _) => restorable(path, "a truncated or invalid key file", o),
    }
}

/// A present `P.orig` as the safe key to restore: usable only when it is a
/// complete key (owned by a trusted user: [`KeySlot::inspect`] checked that).
fn restorable<'e>(path: PathBuf, found: &'static str, o: &'e Entry) -> Result<Move<'e>, SlotError> {
    match o {
        Entry::Complete(_, id, _) => Ok(Move::RestoreOrig(found, id)),
        Entry::Invalid(e) => Err(SlotError::BadBackup {
            path,
            what: found,
            source: e.clone(),
        }),
        Entry::Stripped => Err(SlotError::BadBackup {
            path,
            what: found,
            source: KeyError::Stripped,
        }),
        Entry::Fifo | Entry::Other(_) => Err(SlotError::BackupNotAFile {
            path,
            kind: o.kind(),
            what: found,
            safe_at_path: false,
        }),
        Entry::Absent => unreachable!("judge handles an absent backup"),
    }
}

/// An armed FIFO: the `O_PATH` fd through which the writer end is opened,
/// and its identity.
pub(crate) struct ArmedFifo {
    /// `O_PATH` fd of the FIFO inode.
    pub(crate) path_fd: OwnedFd,
    /// Device of the inode.
    pub(crate) dev: u64,
    /// Inode number.
    pub(crate) ino: u64,
}

impl fmt::Debug for ArmedFifo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArmedFifo(dev {}, ino {})", self.dev, self.ino)
    }
}

/// The key slot, with its directory opened once and locked.
pub(crate) struct KeySlot {
    dir: OwnedFd,
    path: PathBuf,
    name: OsString,
    orig: OsString,
    fifo_tmp: OsString,
    stripped_tmp: OsString,
    safe_tmp: OsString,
    node: NodeIdentity,
}

impl fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySlot({:?})", self.path)
    }
}

fn with_suffix(name: &OsStr, prefix: &str, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(name);
    s.push(suffix);
    s
}

/// Outcome of [`KeySlot::install_safe`].
#[derive(Debug)]
pub(crate) enum Installed {
    /// The safe key was put at `P`; its identity.
    Placed(Box<PublicIdentity>),
    /// `P` or `P.orig` was there already; nothing was changed.
    AlreadyPresent,
}

/// Outcome of [`KeySlot::repair`]: what was found and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repair {
    /// The state found (after leftovers were recognised).
    pub(crate) found: &'static str,
    /// What was done, if anything.
    pub(crate) action: Option<&'static str>,
}

impl KeySlot {
    /// Opens the slot for key path `path`. `node` owns the FIFO and stripped
    /// file (the node must be able to open them).
    pub(crate) fn open(path: &Path, node: NodeIdentity) -> Result<KeySlot, SlotError> {
        let dir_path = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir_path = if dir_path.is_absolute() {
            dir_path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| SlotError::Io {
                    op: "getcwd",
                    path: dir_path.into(),
                    source: e,
                })?
                .join(dir_path)
        };
        let name = path
            .file_name()
            .ok_or_else(|| SlotError::WrongType {
                path: path.into(),
                kind: "path without a file name",
            })?
            .to_os_string();
        let dir = open_dir_secure(&dir_path, node.uid())?;
        match rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(SlotError::Locked { path: dir_path }),
            Err(e) => {
                return Err(SlotError::Io {
                    op: "flock",
                    path: dir_path,
                    source: e.into(),
                })
            }
        }
        Ok(KeySlot {
            dir,
            path: dir_path.join(&name),
            orig: with_suffix(&name, "", ORIG_SUFFIX),
            fifo_tmp: with_suffix(&name, ".", ".ssm-cosmovisor-fifo.tmp"),
            stripped_tmp: with_suffix(&name, ".", ".ssm-cosmovisor-stripped.tmp"),
            safe_tmp: with_suffix(&name, ".", ".ssm-cosmovisor-safe.tmp"),
            name,
            node,
        })
    }

    /// The key path `P`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The backup path `P.orig`.
    pub(crate) fn orig_path(&self) -> PathBuf {
        self.path.with_file_name(&self.orig)
    }

    fn io(&self, op: &'static str, name: &OsStr) -> impl FnOnce(rustix::io::Errno) -> SlotError {
        let path = self.path.with_file_name(name);
        move |e| SlotError::Io {
            op,
            path,
            source: e.into(),
        }
    }

    fn sync_dir(&self) -> Result<(), SlotError> {
        rustix::fs::fsync(&self.dir).map_err(self.io("fsync directory of", &self.name))
    }

    /// Reads what is at `name` without following symlinks and without ever
    /// opening a FIFO.
    fn inspect(&self, name: &OsStr) -> Result<Entry, SlotError> {
        let st = match rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(Entry::Absent),
            Err(e) => return Err(self.io("lstat", name)(e)),
        };
        match kind_of(&st) {
            FileType::Fifo => Ok(Entry::Fifo),
            FileType::RegularFile => {
                let bytes = self.read_regular(name, &st)?;
                Ok(match KeyFile::parse(&bytes) {
                    Ok(KeyFile::Complete(k)) => {
                        Entry::Complete(st, Box::new(k.identity().clone()), bytes)
                    }
                    Ok(KeyFile::Stripped) => Entry::Stripped,
                    Err(e) => Entry::Invalid(e),
                })
            }
            FileType::Symlink => Err(SlotError::Symlink {
                path: self.path.with_file_name(name),
            }),
            other => Ok(Entry::Other(kind_name(other))),
        }
    }

    /// Reads a regular file by name, verifying on the opened fd that it is the
    /// inode we looked at and that it belongs to a trusted owner.
    fn read_regular(&self, name: &OsStr, expect: &Stat) -> Result<Vec<u8>, SlotError> {
        use std::io::Read;
        let open = || {
            rustix::fs::openat(
                &self.dir,
                name,
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
                Mode::empty(),
            )
        };
        // Split-trust: the stripped file is the node's (0600) and root may
        // lack CAP_DAC_OVERRIDE; read it as its owner.
        let fd = if expect.st_uid == self.node.uid() {
            self.node.retry_as_node_on_eacces(open)
        } else {
            open()
        }
        .map_err(self.io("open", name))?;
        let st = rustix::fs::fstat(&fd).map_err(self.io("fstat", name))?;
        if kind_of(&st) != FileType::RegularFile || !same_inode(&st, expect) {
            return Err(self.io("open", name)(rustix::io::Errno::AGAIN));
        }
        if !owner_trusted(&st, self.node.uid()) {
            return Err(SlotError::ForeignOwner {
                path: self.path.with_file_name(name),
                uid: st.st_uid,
                expected: self.node.uid(),
            });
        }
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::with_capacity(st.st_size.clamp(0, 16384) as usize);
        // Bounded: a key is small; anything larger is rejected by the parser.
        (&mut f)
            .take(crate::secret::MAX_SECRET_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| SlotError::Io {
                op: "read",
                path: self.path.with_file_name(name),
                source: e,
            })?;
        Ok(buf)
    }

    fn temps(&self) -> [&OsString; 3] {
        [&self.fifo_tmp, &self.stripped_tmp, &self.safe_tmp]
    }

    fn has_leftover_temps(&self) -> bool {
        self.temps().iter().any(|t| {
            rustix::fs::statat(&self.dir, t.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
        })
    }

    fn remove_leftover_temps(&self) -> Result<bool, SlotError> {
        let mut removed = false;
        for tmp in self.temps() {
            match rustix::fs::unlinkat(&self.dir, tmp.as_os_str(), AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(event = "leftover_removed", path = %self.path.with_file_name(tmp).display(), "removed leftover temporary file from an interrupted move");
                    removed = true;
                }
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(self.io("unlink", tmp)(e)),
            }
        }
        Ok(removed)
    }

    /// Recognises any state (ours, leftovers, the Go tool's) and brings the
    /// slot back to idle, or explains why an operator must decide.
    /// Returns the safe key's identity on success.
    pub(crate) fn repair(&self) -> Result<(Repair, PublicIdentity), SlotError> {
        let r = self.repair_inner(true)?;
        moved(SlotState::Idle);
        Ok(r)
    }

    /// What [`KeySlot::repair`] would find and do, without changing anything.
    pub(crate) fn diagnose(&self) -> Result<(Repair, PublicIdentity), SlotError> {
        self.repair_inner(false)
    }

    fn repair_inner(&self, apply: bool) -> Result<(Repair, PublicIdentity), SlotError> {
        let temps = if apply {
            self.remove_leftover_temps()?
        } else {
            self.has_leftover_temps()
        };
        let p = self.inspect(&self.name)?;
        let o = self.inspect(&self.orig)?;
        let (repair, id) = match judge(&self.path, &p, &o)? {
            Move::Stay(id) => {
                let found = if temps {
                    "idle with leftovers"
                } else {
                    SlotState::Idle.as_str()
                };
                let action = temps.then_some(if apply {
                    "removed leftover temporary files"
                } else {
                    "would remove leftover temporary files"
                });
                (Repair { found, action }, id)
            }
            Move::DropOrig(id) => (self.drop_orig(apply)?, id),
            Move::RestoreOrig(found, id) => (self.restore_orig(found, id, apply)?, id),
        };
        Ok((repair, id.clone()))
    }

    /// backed-up → idle. Two links to one inode, or the Go tool's finished
    /// copy: rename() between two links of one inode is a no-op, so the
    /// backup name is unlinked instead.
    fn drop_orig(&self, apply: bool) -> Result<Repair, SlotError> {
        let found = SlotState::BackedUp.as_str();
        if !apply {
            let action = Some("would remove the redundant .orig link");
            return Ok(Repair { found, action });
        }
        rustix::fs::unlinkat(&self.dir, self.orig.as_os_str(), AtFlags::empty())
            .map_err(self.io("unlink", &self.orig))?;
        self.sync_dir()?;
        tracing::info!(event = "restored", path = %self.path.display(), "removed redundant backup link");
        let action = Some("removed the redundant .orig link");
        Ok(Repair { found, action })
    }

    /// armed/delivered/… → idle: the backup renamed over `P`.
    fn restore_orig(
        &self,
        found: &'static str,
        id: &PublicIdentity,
        apply: bool,
    ) -> Result<Repair, SlotError> {
        if !apply {
            let action = Some("would rename .orig over the key path");
            return Ok(Repair { found, action });
        }
        crate::failpoint!("before-restore-rename");
        rustix::fs::renameat(&self.dir, &self.orig, &self.dir, &self.name)
            .map_err(self.io("rename backup over", &self.name))?;
        crate::failpoint!("after-restore-rename");
        self.sync_dir()?;
        tracing::info!(event = "restored", path = %self.path.display(), address = %id.address_hex(), "restored original key file");
        let action = Some("renamed .orig over the key path");
        Ok(Repair { found, action })
    }

    /// Refuses a safe key that is the consensus key itself.
    pub(crate) fn ensure_safe_differs(
        &self,
        safe: &PublicIdentity,
        consensus: &PublicIdentity,
    ) -> Result<(), SlotError> {
        if safe.pub_key() == consensus.pub_key() {
            return Err(SlotError::SafeIsConsensus {
                path: self.path.clone(),
                address: consensus.address_hex(),
            });
        }
        Ok(())
    }

    /// idle → backed-up: hard-link the safe key as `P.orig`.
    pub(crate) fn backup(&self) -> Result<(), SlotError> {
        let linked = rustix::fs::linkat(
            &self.dir,
            self.name.as_os_str(),
            &self.dir,
            self.orig.as_os_str(),
            AtFlags::empty(),
        );
        // fs.protected_hardlinks: without CAP_FOWNER (and CAP_DAC_OVERRIDE, as
        // in the split-trust unit) root may hard-link only files it owns. The
        // node's fs ids would not help: the node cannot write to a key
        // directory it does not own, and a directory both may write to is
        // refused as unsafe. So a node-owned safe key there is an operator's fix.
        match linked {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS)
                if self.safe_key_is_the_nodes() =>
            {
                return Err(SlotError::BackupRefused {
                    path: self.path.clone(),
                    node_gid: self.node.gid(),
                })
            }
            Err(e) => return Err(self.io("link backup", &self.orig)(e)),
        }
        crate::failpoint!("after-backup-link");
        self.sync_dir()?;
        tracing::info!(event = "backup", path = %self.orig_path().display(), "original key saved as hard link");
        moved(SlotState::BackedUp);
        Ok(())
    }

    /// Whether we are root and `P` belongs to the node user (not to us).
    fn safe_key_is_the_nodes(&self) -> bool {
        self.node.switches()
            && rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_uid == self.node.uid())
    }

    /// absent → idle, for a key directory that starts empty at every start
    /// (the split-trust unit's tmpfs `RuntimeDirectory=`): puts `safe`, which
    /// must be a complete key, at `P` with `group` (if given) and `mode`, in
    /// one `renameat(RENAME_NOREPLACE)` of a fsynced temporary file. Changes
    /// nothing when `P` or `P.orig` exists, whatever they hold: that is a
    /// slot from an earlier start, and [`KeySlot::repair`] judges it.
    pub(crate) fn install_safe(
        &self,
        safe: &[u8],
        group: Option<u32>,
        mode: u32,
    ) -> Result<Installed, SlotError> {
        let present =
            |name: &OsStr| rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        if present(&self.name) || present(&self.orig) {
            return Ok(Installed::AlreadyPresent);
        }
        let identity = match KeyFile::parse(safe) {
            Ok(KeyFile::Complete(k)) => k.identity().clone(),
            Ok(KeyFile::Stripped) => {
                return Err(SlotError::Invalid {
                    path: self.path.clone(),
                    source: KeyError::Stripped,
                })
            }
            Err(source) => {
                return Err(SlotError::Invalid {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let tmp = self.safe_tmp.as_os_str();
        let fd = self.create_temporary(tmp)?;
        let filled = (|| {
            if let Some(gid) = group {
                rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid)))
                    .map_err(self.io("chown", tmp))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(self.io("chmod", tmp))?;
            self.write_all(&fd, safe, tmp)?;
            rustix::fs::fsync(&fd).map_err(self.io("fsync", tmp))
        })();
        drop(fd);
        let placed = filled.and_then(|()| {
            rustix::fs::renameat_with(
                &self.dir,
                tmp,
                &self.dir,
                self.name.as_os_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(self.io("rename safe key to", &self.name))
        });
        if let Err(e) = placed {
            let _ = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty());
            return match e {
                SlotError::Io { source, .. }
                    if source.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) =>
                {
                    Ok(Installed::AlreadyPresent)
                }
                e => Err(e),
            };
        }
        self.sync_dir()?;
        Ok(Installed::Placed(Box::new(identity)))
    }

    /// backed-up/delivered/armed → armed: a fresh FIFO renamed over `P`.
    pub(crate) fn arm(&self) -> Result<ArmedFifo, SlotError> {
        let tmp = self.fifo_tmp.as_os_str();
        // A leftover of ours from a crash is removed first (it can only ever be a FIFO).
        let _ = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty());
        rustix::fs::mknodat(
            &self.dir,
            tmp,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(self.io("mkfifo", tmp))?;
        crate::failpoint!("after-fifo-mknod");
        let path_fd = rustix::fs::openat(
            &self.dir,
            tmp,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io("open", tmp))?;
        let st = rustix::fs::fstat(&path_fd).map_err(self.io("fstat", tmp))?;
        if kind_of(&st) != FileType::Fifo {
            return Err(SlotError::WrongType {
                path: self.path.with_file_name(tmp),
                kind: kind_name(kind_of(&st)),
            });
        }
        self.chown_to_node(&path_fd, tmp)?;
        rustix::fs::renameat(&self.dir, tmp, &self.dir, self.name.as_os_str())
            .map_err(self.io("rename FIFO over", &self.name))?;
        crate::failpoint!("after-arm-rename");
        self.sync_dir()?;
        moved(SlotState::Armed);
        Ok(ArmedFifo {
            path_fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// armed → delivered: the stripped key, written and fsynced under a
    /// temporary name, renamed over `P`.
    pub(crate) fn strip(&self, stripped: &[u8]) -> Result<(), SlotError> {
        let tmp = self.stripped_tmp.as_os_str();
        let fd = self.create_temporary(tmp)?;
        self.chown_to_node(&fd, tmp)?;
        self.write_all(&fd, stripped, tmp)?;
        crate::failpoint!("after-stripped-write");
        rustix::fs::fsync(&fd).map_err(self.io("fsync", tmp))?;
        drop(fd);
        rustix::fs::renameat(&self.dir, tmp, &self.dir, self.name.as_os_str())
            .map_err(self.io("rename stripped key over", &self.name))?;
        crate::failpoint!("after-strip-rename");
        self.sync_dir()?;
        moved(SlotState::Delivered);
        Ok(())
    }

    /// A fresh 0600 file at a temporary name (only ever ours: a leftover of
    /// a crash is removed first), never following a link.
    fn create_temporary(&self, tmp: &OsStr) -> Result<OwnedFd, SlotError> {
        let _ = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty());
        rustix::fs::openat(
            &self.dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.io("create", tmp))
    }

    fn write_all(&self, fd: &OwnedFd, bytes: &[u8], tmp: &OsStr) -> Result<(), SlotError> {
        let mut written = 0;
        while written < bytes.len() {
            written += rustix::io::write(fd, &bytes[written..]).map_err(self.io("write", tmp))?;
        }
        Ok(())
    }

    fn chown_to_node<Fd: AsFd>(&self, fd: Fd, name: &OsStr) -> Result<(), SlotError> {
        if self.node.switches() {
            // AT_EMPTY_PATH on the fd itself: works for O_PATH fds (where
            // fchown gives EBADF) and never re-resolves the name.
            rustix::fs::chownat(
                fd,
                "",
                Some(rustix::fs::Uid::from_raw(self.node.uid())),
                Some(rustix::fs::Gid::from_raw(self.node.gid())),
                AtFlags::EMPTY_PATH,
            )
            .map_err(self.io("chown", name))?;
        }
        Ok(())
    }

    /// Whatever the state: back to idle (the safe key at `P`, no backup).
    pub(crate) fn restore(&self) -> Result<Repair, SlotError> {
        self.repair().map(|(r, _)| r)
    }

    /// Whether `P` is, right now, a regular file: while we run, the stripped
    /// key (a reader attached and no FIFO was armed since).
    pub(crate) fn holds_regular_file(&self) -> bool {
        rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| kind_of(&st) == FileType::RegularFile)
            .unwrap_or(false)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Every state `repair`/`diagnose` recognise and every move, on real files in
    //! a temporary directory, checked name by name: type, mode, owner, inode,
    //! link count and bytes.

    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::key::ValidatorKey;

    /// The host's safe key (ed25519, seed 0x11…).
    pub(crate) const SAFE: &str = r#"{"address":"10BA682C8AD13513971E8B56881AAB8BD702BB80","pub_key":{"type":"tendermint/PubKeyEd25519","value":"0EqyMnQrtKs6E2i9RhXk5tAiSrcaAWuvhSCjMsl3hzc="},"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"ERERERERERERERERERERERERERERERERERERERERERHQSrIydCu0qzoTaL1GFeTm0CJKtxoBa6+FIKMyyXeHNw=="}}"#;
    /// Another complete key (seed 0x22…): the consensus key, or a conflicting backup.
    pub(crate) const OTHER: &str = r#"{"address":"1325B850C2871916EAE203F0EFC3C8987F64E5E3","pub_key":{"type":"tendermint/PubKeyEd25519","value":"oJql9HpnWYAv+VX43C0qFKXJnSO+l/hkEn/5ODRVpPA="},"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiKgmqX0emdZgC/5VfjcLSoUpcmdI76X+GQSf/k4NFWk8A=="}}"#;
    /// An unprivileged uid/gid for the node when the tests run as root.
    const NOBODY: u32 = 65534;
    const NAME: &str = "priv_validator_key.json";

    fn safe_id() -> PublicIdentity {
        ValidatorKey::parse(SAFE.as_bytes())
            .unwrap()
            .identity()
            .clone()
    }

    fn stripped(json: &str) -> Vec<u8> {
        ValidatorKey::parse(json.as_bytes())
            .unwrap()
            .stripped_json()
    }

    /// A safe key cut short, as a power loss leaves an unsynced copy.
    fn truncated() -> &'static [u8] {
        &SAFE.as_bytes()[..97]
    }

    fn am_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Whether a root-only test may run; prints why it is skipped otherwise.
    fn root_or_skip(test: &str) -> bool {
        if !am_root() {
            eprintln!("skipping {test}: needs root (files owned by another uid)");
        }
        am_root()
    }

    /// A key directory in a fresh tempdir and the slot opened on it.
    struct Fx {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        slot: KeySlot,
    }

    impl Fx {
        /// The node is whoever runs the test.
        fn new() -> Fx {
            let me = rustix::process::geteuid().as_raw();
            Fx::with_node(me, rustix::process::getegid().as_raw())
        }

        fn with_node(uid: u32, gid: u32) -> Fx {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().to_path_buf();
            let slot = KeySlot::open(&dir.join(NAME), NodeIdentity::new(uid, gid)).unwrap();
            Fx {
                _tmp: tmp,
                dir,
                slot,
            }
        }

        fn p(&self) -> PathBuf {
            self.dir.join(NAME)
        }

        fn orig(&self) -> PathBuf {
            self.dir.join(format!("{NAME}.orig"))
        }

        fn tmp(&self, which: &str) -> PathBuf {
            self.dir.join(format!(".{NAME}.ssm-cosmovisor-{which}.tmp"))
        }

        fn snapshot(&self) -> BTreeMap<String, Found> {
            snapshot(&self.dir)
        }
    }

    /// One name in the key directory, as found without following or opening it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Found {
        kind: &'static str,
        mode: u32,
        uid: u32,
        gid: u32,
        ino: u64,
        nlink: u64,
        /// A regular file's bytes, a symlink's target.
        bytes: Vec<u8>,
    }

    fn snapshot(dir: &Path) -> BTreeMap<String, Found> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let t = md.file_type();
            let (kind, bytes) = if t.is_file() {
                ("file", fs::read(e.path()).unwrap())
            } else if t.is_symlink() {
                let target = fs::read_link(e.path()).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if t.is_dir() {
                ("dir", vec![])
            } else if rustix::fs::FileType::from_raw_mode(md.mode()) == FileType::Fifo {
                ("fifo", vec![])
            } else {
                ("other", vec![])
            };
            let found = Found {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                ino: md.ino(),
                nlink: md.nlink(),
                bytes,
            };
            out.insert(e.file_name().into_string().unwrap(), found);
        }
        out
    }

    fn put(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().ino()
    }

    /// What `diagnose` says it would do for what `repair` did.
    fn would(done: &'static str) -> &'static str {
        match done {
            "removed leftover temporary files" => "would remove leftover temporary files",
            "removed the redundant .orig link" => "would remove the redundant .orig link",
            "renamed .orig over the key path" => "would rename .orig over the key path",
            other => panic!("repair reported an action with no diagnose form: {other}"),
        }
    }

    /// Runs `diagnose` (which must change nothing), then `repair`, and checks
    /// that they agree: the same state found and identity and the same move
    /// (announced, then done), or the same refusal, which changes nothing.
    fn diagnose_then_repair(fx: &Fx) -> Result<Repair, SlotError> {
        diagnose_then_repair_on(fx, &|call| call())
    }

    type Judged = Result<(Repair, PublicIdentity), SlotError>;

    /// [`diagnose_then_repair`], each call made through `on` (on a thread of
    /// its own, say); the directory is looked at from the test's thread.
    fn diagnose_then_repair_on(
        fx: &Fx,
        on: &dyn Fn(&(dyn Fn() -> Judged + Sync)) -> Judged,
    ) -> Result<Repair, SlotError> {
        let before = fx.snapshot();
        let diag = on(&|| fx.slot.diagnose());
        assert_eq!(fx.snapshot(), before, "diagnose changed the directory");
        let rep = on(&|| fx.slot.repair());
        match (diag, rep) {
            (Ok((d, did)), Ok((r, rid))) => {
                assert_eq!(
                    d.found, r.found,
                    "diagnose and repair found different states"
                );
                assert_eq!(d.action, r.action.map(would), "for found {}", r.found);
                assert_eq!(did, rid);
                assert_eq!(rid, safe_id(), "repair returned another identity");
                Ok(r)
            }
            (Err(d), Err(r)) => {
                assert_eq!(d.to_string(), r.to_string());
                assert_eq!(
                    fx.snapshot(),
                    before,
                    "a refused repair changed the directory"
                );
                Err(r)
            }
            (d, r) => panic!("diagnose and repair disagree: {d:?} / {r:?}"),
        }
    }

    /// The idle state, exactly: `P` alone, the safe key's inode `ino` with one
    /// link, `mode`, and the safe key's bytes; a second repair has nothing to do.
    fn assert_idle(fx: &Fx, ino: u64, mode: u32) {
        let snap = fx.snapshot();
        assert_eq!(snap.keys().collect::<Vec<_>>(), [NAME], "{snap:#?}");
        let p = &snap[NAME];
        assert_eq!((p.kind, p.mode, p.nlink), ("file", mode, 1), "{p:?}");
        assert_eq!(p.ino, ino, "P is not the safe key's inode");
        assert_eq!(p.bytes, SAFE.as_bytes());
        let again = diagnose_then_repair(fx).unwrap();
        assert_eq!((again.found, again.action), ("idle", None));
    }

    // -- repair and diagnose: the states that come back to idle -------------------------

    #[test]
    fn repair_idle_changes_nothing() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o640);
        let i = ino(&fx.p());
        let r = diagnose_then_repair(&fx).unwrap();
        assert_eq!((r.found, r.action), ("idle", None));
        assert_idle(&fx, i, 0o640);
    }

    #[test]
    fn repair_idle_removes_each_leftover_temporary_name() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        let i = ino(&fx.p());
        mkfifo(&fx.tmp("fifo"));
        put(&fx.tmp("stripped"), &stripped(SAFE), 0o600);
        put(&fx.tmp("safe"), SAFE.as_bytes(), 0o600);
        let r = diagnose_then_repair(&fx).unwrap();
        assert_eq!(
            (r.found, r.action),
            (
                "idle with leftovers",
                Some("removed leftover temporary files")
            )
        );
        assert_idle(&fx, i, 0o600);
    }

    #[test]
    fn repair_backed_up_unlinks_the_second_link() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o640);
        fs::hard_link(fx.p(), fx.orig()).unwrap();
        let i = ino(&fx.p());
        let r = diagnose_then_repair(&fx).unwrap();
        assert_eq!(
            (r.found, r.action),
            ("backed-up", Some("removed the redundant .orig link"))
        );
        assert_idle(&fx, i, 0o640);
    }

    /// The Go tool backs up by copying: an identical `.orig` on its own inode.
    #[test]
    fn repair_backed_up_by_copy_keeps_p_and_drops_the_copy() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        put(&fx.orig(), SAFE.as_bytes(), 0o600);
        let i = ino(&fx.p());
        assert_ne!(i, ino(&fx.orig()));
        let r = diagnose_then_repair(&fx).unwrap();
        assert_eq!(r.found, "backed-up");
        assert_idle(&fx, i, 0o600);
    }

    /// Each state whose `P` is not the safe key and whose `.orig` is: the
    /// backup itself (its inode) goes back to `P`.
    fn restores_orig(found: &str, make_p: impl FnOnce(&Path), with_leftovers: bool) {
        let fx = Fx::new();
        put(&fx.orig(), SAFE.as_bytes(), 0o640);
        let i = ino(&fx.orig());
        make_p(&fx.p());
        if with_leftovers {
            mkfifo(&fx.tmp("fifo"));
            put(&fx.tmp("stripped"), &stripped(SAFE), 0o600);
        }
        let r = diagnose_then_repair(&fx).unwrap();
        assert_eq!(
            (r.found, r.action),
            (found, Some("renamed .orig over the key path"))
        );
        assert_idle(&fx, i, 0o640);
    }

    #[test]
    fn repair_armed_renames_the_backup_over_the_fifo() {
        restores_orig("armed", mkfifo, false);
    }

    #[test]
    fn repair_armed_with_leftovers_removes_them_too() {
        restores_orig("armed", mkfifo, true);
    }

    #[test]
    fn repair_delivered_renames_the_backup_over_the_stripped_key() {
        restores_orig("delivered", |p| put(p, &stripped(OTHER), 0o600), false);
    }

    /// The Go tool's remove + mkfifo, interrupted between the two.
    #[test]
    fn repair_missing_key_path_with_a_backup_restores_it() {
        restores_orig("missing key path with a backup", |_| {}, false);
    }

    #[test]
    fn repair_truncated_key_path_with_a_backup_restores_it() {
        restores_orig(
            "a truncated or invalid key file",
            |p| put(p, truncated(), 0o600),
            false,
        );
    }

    // -- repair and diagnose: the states an operator must decide ------------------------

    #[test]
    fn repair_refuses_two_different_complete_keys() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        put(&fx.orig(), OTHER.as_bytes(), 0o600);
        match diagnose_then_repair(&fx) {
            Err(SlotError::Conflict { path }) => assert_eq!(path, fx.p()),
            other => panic!("{other:?}"),
        }
    }

    /// `P` a complete key and `.orig` anything but one.
    #[test]
    fn repair_refuses_a_complete_key_with_an_unusable_backup() {
        for (what, make_orig) in [
            (
                "truncated",
                &(|o: &Path| put(o, truncated(), 0o600)) as &dyn Fn(&Path),
            ),
            ("stripped", &|o: &Path| put(o, &stripped(SAFE), 0o600)),
        ] {
            let fx = Fx::new();
            put(&fx.p(), SAFE.as_bytes(), 0o600);
            make_orig(&fx.orig());
            match diagnose_then_repair(&fx) {
                Err(SlotError::BadBackup {
                    path,
                    what: "a complete key",
                    source,
                }) => {
                    assert_eq!(path, fx.p(), "{what}");
                    assert_eq!(source == KeyError::Stripped, what != "truncated", "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn repair_refuses_a_fifo_or_stripped_key_without_a_backup() {
        for (what, make_p) in [
            ("a FIFO", &(|p: &Path| mkfifo(p)) as &dyn Fn(&Path)),
            ("a stripped key", &|p: &Path| put(p, &stripped(SAFE), 0o600)),
        ] {
            let fx = Fx::new();
            make_p(&fx.p());
            match diagnose_then_repair(&fx) {
                Err(SlotError::Orphaned { path, what: w }) => {
                    assert_eq!((path, w), (fx.p(), what));
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// CometBFT would generate a new key at an empty key path.
    #[test]
    fn repair_refuses_an_empty_slot() {
        let fx = Fx::new();
        match diagnose_then_repair(&fx) {
            Err(SlotError::Missing { path }) => assert_eq!(path, fx.p()),
            other => panic!("{other:?}"),
        }
        assert!(fx.snapshot().is_empty());
    }

    #[test]
    fn repair_refuses_an_invalid_key_without_a_backup() {
        let fx = Fx::new();
        put(&fx.p(), truncated(), 0o600);
        match diagnose_then_repair(&fx) {
            Err(SlotError::Invalid { path, source }) => {
                assert_eq!(path, fx.p());
                assert_ne!(source, KeyError::Stripped);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repair_refuses_a_key_path_of_another_type_with_or_without_a_backup() {
        for backup in [false, true] {
            let fx = Fx::new();
            fs::create_dir(fx.p()).unwrap();
            if backup {
                put(&fx.orig(), SAFE.as_bytes(), 0o600);
            }
            match diagnose_then_repair(&fx) {
                Err(SlotError::WrongType { path, kind }) => {
                    assert_eq!((path, kind), (fx.p(), "directory"), "backup {backup}");
                }
                other => panic!("backup {backup}: {other:?}"),
            }
        }
    }

    /// `P` needs the backup (armed, here) and the backup is not a complete key.
    #[test]
    fn repair_refuses_to_restore_an_unusable_backup() {
        let fx = Fx::new();
        mkfifo(&fx.p());
        put(&fx.orig(), truncated(), 0o600);
        match diagnose_then_repair(&fx) {
            Err(SlotError::BadBackup { path, what, source }) => {
                assert_eq!((path, what), (fx.p(), "armed"));
                assert_ne!(source, KeyError::Stripped);
            }
            other => panic!("{other:?}"),
        }

        let fx = Fx::new();
        put(&fx.p(), truncated(), 0o600);
        put(&fx.orig(), &stripped(SAFE), 0o600);
        match diagnose_then_repair(&fx) {
            Err(SlotError::BadBackup { path, what, source }) => {
                assert_eq!((path, what), (fx.p(), "a truncated or invalid key file"));
                assert_eq!(source, KeyError::Stripped);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A backup that is no file at all (only someone else makes one) is
    /// reported as what it is, whatever `P` holds; nothing moves, so a safe
    /// key at `P` stays there.
    #[test]
    fn repair_refuses_a_backup_that_is_not_a_regular_file() {
        for (p_is, make_p, safe_at_path) in [
            (
                "a complete key",
                &(|p: &Path| put(p, SAFE.as_bytes(), 0o600)) as &dyn Fn(&Path),
                true,
            ),
            ("armed", &|p: &Path| mkfifo(p), false),
            (
                "delivered",
                &|p: &Path| put(p, &stripped(SAFE), 0o600),
                false,
            ),
        ] {
            for (kind, make_orig) in [
                ("FIFO", &(|o: &Path| mkfifo(o)) as &dyn Fn(&Path)),
                ("directory", &|o: &Path| fs::create_dir(o).unwrap()),
            ] {
                let fx = Fx::new();
                make_p(&fx.p());
                make_orig(&fx.orig());
                match diagnose_then_repair(&fx) {
                    Err(e @ SlotError::BackupNotAFile { .. }) => {
                        let msg = e.to_string();
                        let SlotError::BackupNotAFile {
                            path,
                            kind: k,
                            what,
                            safe_at_path: s,
                        } = e
                        else {
                            unreachable!()
                        };
                        assert_eq!((path, k, what, s), (fx.p(), kind, p_is, safe_at_path));
                        assert!(!msg.contains("stripped"), "{msg}");
                        assert_eq!(msg.contains("copy the host's safe key"), !safe_at_path);
                    }
                    other => panic!("{p_is}, {kind}: {other:?}"),
                }
                if safe_at_path {
                    assert_eq!(fs::read(fx.p()).unwrap(), SAFE.as_bytes());
                }
            }
        }
    }

    #[test]
    fn repair_refuses_a_symlink_at_p_or_at_the_backup() {
        let fx = Fx::new();
        put(&fx.dir.join("elsewhere.json"), SAFE.as_bytes(), 0o600);
        std::os::unix::fs::symlink("elsewhere.json", fx.p()).unwrap();
        match diagnose_then_repair(&fx) {
            Err(SlotError::Symlink { path }) => assert_eq!(path, fx.p()),
            other => panic!("{other:?}"),
        }

        let fx = Fx::new();
        mkfifo(&fx.p());
        put(&fx.dir.join("elsewhere.json"), SAFE.as_bytes(), 0o600);
        std::os::unix::fs::symlink("elsewhere.json", fx.orig()).unwrap();
        match diagnose_then_repair(&fx) {
            Err(SlotError::Symlink { path }) => assert_eq!(path, fx.orig()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repair_refuses_a_key_or_backup_owned_by_another_user() {
        if !root_or_skip("repair_refuses_a_key_or_backup_owned_by_another_user") {
            return;
        }
        let stranger = 12345;
        let fx = Fx::with_node(NOBODY, NOBODY);
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        std::os::unix::fs::lchown(fx.p(), Some(stranger), None).unwrap();
        match diagnose_then_repair(&fx) {
            Err(SlotError::ForeignOwner {
                path,
                uid,
                expected,
            }) => assert_eq!((path, uid, expected), (fx.p(), stranger, NOBODY)),
            other => panic!("{other:?}"),
        }

        let fx = Fx::with_node(NOBODY, NOBODY);
        mkfifo(&fx.p());
        put(&fx.orig(), SAFE.as_bytes(), 0o600);
        std::os::unix::fs::lchown(fx.orig(), Some(stranger), None).unwrap();
        match diagnose_then_repair(&fx) {
            Err(SlotError::ForeignOwner { path, uid, .. }) => {
                assert_eq!((path, uid), (fx.orig(), stranger))
            }
            other => panic!("{other:?}"),
        }
    }

    // -- the moves --------------------------------------------------------------------------

    /// What `diagnose` reports for the state the moves just left.
    fn state_found(fx: &Fx) -> &'static str {
        fx.slot.diagnose().unwrap().0.found
    }

    /// idle → backed-up → armed → delivered → armed (re-arm) → idle, with the
    /// directory checked after each move.
    #[test]
    fn each_move_leaves_exactly_its_state() {
        let fx = Fx::new();
        let (uid, gid) = (fx.slot.node.uid(), fx.slot.node.gid());
        put(&fx.p(), SAFE.as_bytes(), 0o640);
        let safe = fx.snapshot()[NAME].clone();
        assert_eq!(state_found(&fx), SlotState::Idle.to_string());

        fx.slot.backup().unwrap();
        let snap = fx.snapshot();
        let linked = Found {
            nlink: 2,
            ..safe.clone()
        };
        assert_eq!(snap.len(), 2, "{snap:#?}");
        assert_eq!(snap[NAME], linked);
        assert_eq!(snap[&format!("{NAME}.orig")], linked);
        assert_eq!(state_found(&fx), SlotState::BackedUp.to_string());

        let armed = fx.slot.arm().unwrap();
        assert_fifo_at_p(&fx, &armed, &safe, uid, gid);
        assert!(!fx.slot.holds_regular_file());
        assert_eq!(state_found(&fx), SlotState::Armed.to_string());

        fx.slot.strip(&stripped(SAFE)).unwrap();
        let snap = fx.snapshot();
        assert_eq!(snap.len(), 2, "{snap:#?}");
        let p = &snap[NAME];
        assert_eq!(
            (p.kind, p.mode, p.uid, p.gid, p.nlink),
            ("file", 0o600, uid, gid, 1)
        );
        assert_eq!(p.bytes, stripped(SAFE));
        assert_eq!(snap[&format!("{NAME}.orig")], safe);
        let fifo = rustix::fs::fstat(&armed.path_fd).unwrap();
        assert_eq!(fifo.st_nlink, 0, "the delivered FIFO kept a name");
        assert!(fx.slot.holds_regular_file());
        assert_eq!(state_found(&fx), SlotState::Delivered.to_string());

        let rearmed = fx.slot.arm().unwrap();
        assert_ne!(rearmed.ino, armed.ino, "re-arm must make a fresh FIFO");
        assert_fifo_at_p(&fx, &rearmed, &safe, uid, gid);
        assert_eq!(state_found(&fx), SlotState::Armed.to_string());

        let r = fx.slot.restore().unwrap();
        assert_eq!(r.found, "armed");
        assert_idle(&fx, safe.ino, 0o640);
    }

    /// Armed: `P` the FIFO `armed` (0600, the node's), `.orig` the safe key alone.
    fn assert_fifo_at_p(fx: &Fx, armed: &ArmedFifo, safe: &Found, uid: u32, gid: u32) {
        let snap = fx.snapshot();
        assert_eq!(snap.len(), 2, "temporary names left: {snap:#?}");
        let p = &snap[NAME];
        assert_eq!(
            (p.kind, p.mode, p.uid, p.gid, p.nlink),
            ("fifo", 0o600, uid, gid, 1)
        );
        let md = fs::symlink_metadata(fx.p()).unwrap();
        assert_eq!((md.dev(), md.ino()), (armed.dev, armed.ino));
        assert_eq!(snap[&format!("{NAME}.orig")], *safe);
    }

    /// The temporary names of a crashed move are taken over, not tripped on.
    #[test]
    fn arm_and_strip_replace_their_leftover_temporary_names() {
        let fx = Fx::new();
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        fx.slot.backup().unwrap();
        mkfifo(&fx.tmp("fifo"));
        let armed = fx.slot.arm().unwrap();
        put(&fx.tmp("stripped"), b"half a stripped key", 0o600);
        fx.slot.strip(&stripped(SAFE)).unwrap();
        let snap = fx.snapshot();
        assert_eq!(snap.len(), 2, "{snap:#?}");
        assert_eq!(snap[NAME].bytes, stripped(SAFE));
        assert_eq!(rustix::fs::fstat(&armed.path_fd).unwrap().st_nlink, 0);
    }

    #[test]
    fn moves_give_the_fifo_and_the_stripped_key_to_the_node() {
        if !root_or_skip("moves_give_the_fifo_and_the_stripped_key_to_the_node") {
            return;
        }
        let fx = Fx::with_node(NOBODY, NOBODY);
        put(&fx.p(), SAFE.as_bytes(), 0o640);
        let safe = fx.snapshot()[NAME].clone();
        fx.slot.backup().unwrap();
        let armed = fx.slot.arm().unwrap();
        assert_fifo_at_p(&fx, &armed, &safe, NOBODY, NOBODY);
        fx.slot.strip(&stripped(SAFE)).unwrap();
        let p = &fx.snapshot()[NAME];
        assert_eq!(
            (p.kind, p.mode, p.uid, p.gid),
            ("file", 0o600, NOBODY, NOBODY)
        );
        assert_eq!(fx.slot.restore().unwrap().found, "delivered");
        assert_idle(&fx, safe.ino, 0o640);
    }

    /// Runs `f` on a thread of its own that has lost `caps` (effective and
    /// permitted: a return to fsuid 0 would otherwise raise them again), as
    /// root runs in the split-trust unit.
    fn without_caps<T: Send>(caps: &[caps::Capability], f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                for &c in caps {
                    caps::drop(None, caps::CapSet::Effective, c).unwrap();
                    caps::drop(None, caps::CapSet::Permitted, c).unwrap();
                }
                f()
            })
            .join()
            .unwrap()
        })
    }

    const SPLIT_TRUST: [caps::Capability; 3] = [
        caps::Capability::CAP_DAC_OVERRIDE,
        caps::Capability::CAP_DAC_READ_SEARCH,
        caps::Capability::CAP_FOWNER,
    ];

    /// fs.protected_hardlinks: root without CAP_FOWNER may not link the node's file.
    #[test]
    fn backup_of_a_node_owned_safe_key_is_refused_with_the_fix() {
        if !root_or_skip("backup_of_a_node_owned_safe_key_is_refused_with_the_fix") {
            return;
        }
        if fs::read_to_string("/proc/sys/fs/protected_hardlinks")
            .unwrap()
            .trim()
            != "1"
        {
            eprintln!("skipping: fs.protected_hardlinks is off here");
            return;
        }
        let fx = Fx::with_node(NOBODY, NOBODY);
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        std::os::unix::fs::lchown(fx.p(), Some(NOBODY), Some(NOBODY)).unwrap();
        let before = fx.snapshot();
        match without_caps(&SPLIT_TRUST, || fx.slot.backup()) {
            Err(SlotError::BackupRefused { path, node_gid }) => {
                assert_eq!((path, node_gid), (fx.p(), NOBODY))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fx.snapshot(), before);
    }

    /// Split trust: the stripped key is the node's 0600 file, which root
    /// without CAP_DAC_OVERRIDE reads as the node.
    #[test]
    fn repair_reads_the_nodes_stripped_key_without_dac_override() {
        if !root_or_skip("repair_reads_the_nodes_stripped_key_without_dac_override") {
            return;
        }
        let fx = Fx::with_node(NOBODY, NOBODY);
        put(&fx.p(), SAFE.as_bytes(), 0o600);
        let i = ino(&fx.p());
        fx.slot.backup().unwrap();
        fx.slot.arm().unwrap();
        fx.slot.strip(&stripped(SAFE)).unwrap();
        let r = diagnose_then_repair_on(&fx, &|call| without_caps(&SPLIT_TRUST, call)).unwrap();
        assert_eq!(r.found, "delivered");
        assert_idle(&fx, i, 0o600);
    }

    // -- install-safe, the consensus check, opening ------------------------------------

    #[test]
    fn install_safe_places_the_key_with_its_group_and_mode() {
        let fx = Fx::new();
        let gid = if am_root() {
            NOBODY
        } else {
            rustix::process::getegid().as_raw()
        };
        match fx
            .slot
            .install_safe(SAFE.as_bytes(), Some(gid), 0o640)
            .unwrap()
        {
            Installed::Placed(id) => assert_eq!(*id, safe_id()),
            other => panic!("{other:?}"),
        }
        let snap = fx.snapshot();
        assert_eq!(snap.keys().collect::<Vec<_>>(), [NAME], "{snap:#?}");
        let p = &snap[NAME];
        assert_eq!((p.kind, p.mode, p.gid, p.nlink), ("file", 0o640, gid, 1));
        assert_eq!(p.bytes, SAFE.as_bytes());
        assert_eq!(state_found(&fx), "idle");
    }

    /// Whatever is at `P` or `P.orig` is a slot from an earlier start: repair judges it.
    #[test]
    fn install_safe_changes_nothing_when_p_or_the_backup_exists() {
        for (what, make) in [
            ("a FIFO at P", &(|fx: &Fx| mkfifo(&fx.p())) as &dyn Fn(&Fx)),
            ("another key at P", &|fx: &Fx| {
                put(&fx.p(), OTHER.as_bytes(), 0o600)
            }),
            ("a backup only", &|fx: &Fx| {
                put(&fx.orig(), OTHER.as_bytes(), 0o600)
            }),
        ] {
            let fx = Fx::new();
            make(&fx);
            let before = fx.snapshot();
            let r = fx.slot.install_safe(SAFE.as_bytes(), None, 0o600).unwrap();
            assert!(matches!(r, Installed::AlreadyPresent), "{what}: {r:?}");
            assert_eq!(fx.snapshot(), before, "{what}");
        }
    }

    #[test]
    fn install_safe_refuses_anything_but_a_complete_key_and_leaves_nothing() {
        for (what, bytes) in [
            ("stripped", stripped(SAFE)),
            ("truncated", truncated().to_vec()),
        ] {
            let fx = Fx::new();
            match fx.slot.install_safe(&bytes, None, 0o600) {
                Err(SlotError::Invalid { path, source }) => {
                    assert_eq!(path, fx.p(), "{what}");
                    assert_eq!(source == KeyError::Stripped, what == "stripped");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert!(fx.snapshot().is_empty(), "{what}");
        }
    }

    #[test]
    fn ensure_safe_differs_refuses_the_consensus_key_itself() {
        let fx = Fx::new();
        let other = ValidatorKey::parse(OTHER.as_bytes()).unwrap();
        fx.slot
            .ensure_safe_differs(&safe_id(), other.identity())
            .unwrap();
        match fx.slot.ensure_safe_differs(&safe_id(), &safe_id()) {
            Err(SlotError::SafeIsConsensus { path, address }) => {
                assert_eq!((path, address), (fx.p(), safe_id().address_hex()))
            }
            other => panic!("{other:?}"),
        }
    }

    fn open_in(dir: &Path) -> Result<KeySlot, SlotError> {
        let me = rustix::process::geteuid().as_raw();
        KeySlot::open(
            &dir.join(NAME),
            NodeIdentity::new(me, rustix::process::getegid().as_raw()),
        )
    }

    #[test]
    fn open_refuses_a_second_instance() {
        let fx = Fx::new();
        match open_in(&fx.dir) {
            Err(SlotError::Locked { path }) => assert_eq!(path, fx.dir),
            other => panic!("{other:?}"),
        }
        drop(fx.slot);
        open_in(&fx.dir).unwrap();
    }

    #[test]
    fn open_refuses_a_symlink_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for dir in [link.clone(), link.join("below")] {
            if dir != link {
                fs::create_dir(real.join("below")).unwrap();
            }
            match open_in(&dir) {
                Err(SlotError::Symlink { path }) => assert_eq!(path, link),
                other => panic!("{dir:?}: {other:?}"),
            }
        }
        open_in(&real).unwrap();
    }

    #[test]
    fn open_refuses_a_key_directory_writable_by_group_or_others() {
        for mode in [0o770, 0o707, 0o1777] {
            let tmp = tempfile::tempdir().unwrap();
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).unwrap();
            match open_in(tmp.path()) {
                Err(SlotError::UnsafeDir { path, why }) => {
                    assert_eq!(path, tmp.path(), "{mode:o}");
                    assert!(why.contains("writable by group or others"), "{why}");
                }
                other => panic!("{mode:o}: {other:?}"),
            }
        }
    }

    /// Whoever may write to an ancestor can swap the directories below it,
    /// unless it is sticky; a group-writable one is trusted only when root's.
    #[test]
    fn open_refuses_an_ancestor_others_may_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path().join("up");
        let keys = up.join("keys");
        fs::create_dir_all(&keys).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
        let group_ok = am_root();
        for (mode, ok) in [
            (0o757, false),
            (0o777, false),
            (0o1777, true),
            (0o775, group_ok),
        ] {
            fs::set_permissions(&up, fs::Permissions::from_mode(mode)).unwrap();
            match open_in(&keys) {
                Ok(_) if ok => {}
                Err(SlotError::UnsafeDir { path, why }) if !ok => {
                    assert_eq!(path, up, "{mode:o}");
                    assert!(why.contains("ancestor"), "{why}");
                }
                other => panic!("ancestor {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn open_refuses_a_key_directory_owned_by_a_stranger() {
        if !root_or_skip("open_refuses_a_key_directory_owned_by_a_stranger") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::lchown(tmp.path(), Some(12345), None).unwrap();
        match KeySlot::open(&tmp.path().join(NAME), NodeIdentity::new(NOBODY, NOBODY)) {
            Err(SlotError::UnsafeDir { path, why }) => {
                assert_eq!(path, tmp.path());
                assert!(why.contains("owned by uid 12345"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The node's own directory is fine.
        KeySlot::open(&tmp.path().join(NAME), NodeIdentity::new(12345, NOBODY)).unwrap();
    }

    #[test]
    fn open_refuses_dot_dot_in_the_key_path() {
        let fx = Fx::new();
        let sub = fx.dir.join("sub");
        fs::create_dir(&sub).unwrap();
        let path = sub.join("..").join("sub").join(NAME);
        match KeySlot::open(&path, NodeIdentity::new(0, 0)) {
            Err(SlotError::Io { op: "resolve", .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
