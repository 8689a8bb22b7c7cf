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
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, ResolveFlags, Stat};

use crate::identity::NodeIdentity;
use crate::key::{KeyError, KeyFile, PublicIdentity};

/// Suffix of the backup, as the original tool names it.
pub const ORIG_SUFFIX: &str = ".orig";

/// The states the slot can be in while we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// `P` is the safe key; no backup.
    Idle,
    /// `P` and `P.orig` are hard links to the safe key.
    BackedUp,
    /// `P` is a FIFO; `P.orig` is the safe key.
    Armed,
    /// `P` is the stripped key; `P.orig` is the safe key.
    Delivered,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotState::Idle => "idle",
            SlotState::BackedUp => "backed-up",
            SlotState::Armed => "armed",
            SlotState::Delivered => "delivered",
        })
    }
}

/// A slot problem. Each message names the path and says what the operator should do.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A symlink where none may be.
    #[error("{path:?} is or passes through a symbolic link; the key slot must be reached without symlinks (a symlink lets whoever controls its target redirect the key). Use the real path (e.g. in priv_validator_key_file or DAEMON_HOME)")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// A directory others can write to or that belongs to someone else.
    #[error("directory {path:?} is unsafe: {why}. Fix with: chown <node user> {path:?} && chmod go-w {path:?}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The key file belongs to another user.
    #[error("{path:?} is owned by uid {uid}, not by root or the node user (uid {expected}); someone else controls the key path. Fix ownership: chown <node user> {path:?}")]
    ForeignOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The node user.
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
        /// Why.
        source: KeyError,
    },
    /// `P` is something other than a file or FIFO.
    #[error("key path {path:?} is a {kind}, not a key file")]
    WrongType {
        /// `P`.
        path: PathBuf,
        /// What it is.
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
    Locked {
        /// The directory.
        path: PathBuf,
    },
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

/// Trusted owners: root and the node user.
fn owner_trusted(st: &Stat, node_uid: u32) -> bool {
    st.st_uid == 0 || st.st_uid == node_uid
}

fn group_or_world_writable(st: &Stat) -> bool {
    st.st_mode & 0o022 != 0
}

fn sticky(st: &Stat) -> bool {
    st.st_mode & 0o1000 != 0
}

fn kind_of(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "unknown file type",
    }
}

fn same_inode(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Opens the directory holding the key without following any symlink, and
/// checks each ancestor on its fd: none may be writable by group/others
/// unless sticky, and the key's own directory must belong to root or the node
/// user and be writable by nobody else.
fn open_dir_secure(dir: &Path, node_uid: u32) -> Result<OwnedFd, SlotError> {
    let io = |op, source| SlotError::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    if !dir.is_absolute() {
        return Err(io(
            "resolve",
            io::Error::other("key directory must be absolute"),
        ));
    }
    // Walk component by component with O_NOFOLLOW so every ancestor is checked
    // on the fd we actually traverse.
    let mut cur = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open /", e.into()))?;
    let mut walked = PathBuf::from("/");
    for comp in dir.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => {
                return Err(io(
                    "resolve",
                    io::Error::other("key path must not contain . or .."),
                ))
            }
        };
        walked.push(name);
        let next = rustix::fs::openat(
            &cur,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR
                if rustix::fs::statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| kind_of(&s) == FileType::Symlink)
                    .unwrap_or(false) =>
            {
                SlotError::Symlink {
                    path: walked.clone(),
                }
            }
            e => SlotError::Io {
                op: "open directory",
                path: walked.clone(),
                source: e.into(),
            },
        })?;
        let st = rustix::fs::fstat(&next).map_err(|e| io("fstat", e.into()))?;
        // Whoever may write to an ancestor (without the sticky bit) can rename
        // the directories below it and put their own in place, whoever owns
        // it: a world-writable one is refused even when root owns it (only a
        // root-owned group-writable one is tolerated, its group trusted like root).
        let others_write = st.st_mode & 0o002 != 0;
        if walked != dir
            && !sticky(&st)
            && (others_write || (group_or_world_writable(&st) && st.st_uid != 0))
        {
            return Err(SlotError::UnsafeDir {
                path: walked.clone(),
                why: format!(
                    "an ancestor directory is writable by group/others (mode {:04o})",
                    st.st_mode & 0o7777
                ),
            });
        }
        cur = next;
    }
    // The authoritative open: openat2 refuses symlinks in the kernel, closing
    // the window between the walk above and this open.
    let fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(SlotError::Symlink { path: dir.into() }),
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(
            &cur,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", e.into()))?,
        Err(e) => return Err(io("open directory", e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io("fstat", e.into()))?;
    let walked_st = rustix::fs::fstat(&cur).map_err(|e| io("fstat", e.into()))?;
    if !same_inode(&st, &walked_st) {
        return Err(io(
            "open directory",
            io::Error::other("directory changed while being opened"),
        ));
    }
    if !owner_trusted(&st, node_uid) {
        return Err(SlotError::UnsafeDir {
            path: dir.into(),
            why: format!(
                "owned by uid {}, not root or the node user (uid {node_uid})",
                st.st_uid
            ),
        });
    }
    if group_or_world_writable(&st) {
        return Err(SlotError::UnsafeDir {
            path: dir.into(),
            why: format!(
                "writable by group or others (mode {:04o})",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(fd)
}

/// An armed FIFO: the `O_PATH` fd through which the writer end is opened,
/// and its identity.
pub struct ArmedFifo {
    /// `O_PATH` fd of the FIFO inode.
    pub path_fd: OwnedFd,
    /// Device of the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl fmt::Debug for ArmedFifo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArmedFifo(dev {}, ino {})", self.dev, self.ino)
    }
}

/// The key slot, with its directory opened once and locked.
pub struct KeySlot {
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
pub enum Installed {
    /// The safe key was put at `P`; its identity.
    Placed(Box<PublicIdentity>),
    /// `P` or `P.orig` was there already; nothing was changed.
    AlreadyPresent,
}

/// Outcome of [`KeySlot::repair`]: what was found and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The state found (after leftovers were recognised).
    pub found: &'static str,
    /// What was done, if anything.
    pub action: Option<&'static str>,
}

impl KeySlot {
    /// Opens the slot for key path `path`. `node` owns the FIFO and stripped
    /// file (the node must be able to open them).
    pub fn open(path: &Path, node: NodeIdentity) -> Result<KeySlot, SlotError> {
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
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backup path `P.orig`.
    pub fn orig_path(&self) -> PathBuf {
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
                    Ok(KeyFile::Stripped(_)) => Entry::Stripped,
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
    pub fn repair(&self) -> Result<(Repair, PublicIdentity), SlotError> {
        self.repair_inner(true)
    }

    /// What [`KeySlot::repair`] would find and do, without changing anything.
    pub fn diagnose(&self) -> Result<(Repair, PublicIdentity), SlotError> {
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
        let path = self.path.clone();
        // A usable backup: a complete key owned by a trusted user.
        let restore_from_orig =
            |found: &'static str| -> Result<(Repair, PublicIdentity), SlotError> {
                match &o {
                    Entry::Complete(_, id, _) if !apply => Ok((
                        Repair {
                            found,
                            action: Some("would rename .orig over the key path"),
                        },
                        (**id).clone(),
                    )),
                    Entry::Complete(_, id, _) => {
                        crate::failpoint!("before-restore-rename");
                        rustix::fs::renameat(&self.dir, &self.orig, &self.dir, &self.name)
                            .map_err(self.io("rename backup over", &self.name))?;
                        crate::failpoint!("after-restore-rename");
                        self.sync_dir()?;
                        tracing::info!(event = "restored", path = %path.display(), address = %id.address_hex(), "restored original key file");
                        Ok((
                            Repair {
                                found,
                                action: Some("renamed .orig over the key path"),
                            },
                            (**id).clone(),
                        ))
                    }
                    Entry::Invalid(e) => Err(SlotError::BadBackup {
                        path: path.clone(),
                        what: found,
                        source: e.clone(),
                    }),
                    Entry::Stripped => Err(SlotError::BadBackup {
                        path: path.clone(),
                        what: found,
                        source: KeyError::Stripped,
                    }),
                    Entry::Fifo | Entry::Other(_) => Err(SlotError::WrongType {
                        path: self.orig_path(),
                        kind: "non-regular file",
                    }),
                    Entry::Absent => unreachable!("checked by caller"),
                }
            };
        match (&p, &o) {
            (Entry::Complete(_, id, _), Entry::Absent) => Ok((
                Repair {
                    found: if temps { "idle with leftovers" } else { "idle" },
                    action: temps.then_some(if apply {
                        "removed leftover temporary files"
                    } else {
                        "would remove leftover temporary files"
                    }),
                },
                (**id).clone(),
            )),
            (Entry::Complete(pst, id, pbytes), Entry::Complete(ost, _, obytes)) => {
                if (same_inode(pst, ost) || pbytes == obytes) && !apply {
                    Ok((
                        Repair {
                            found: "backed-up",
                            action: Some("would remove the redundant .orig link"),
                        },
                        (**id).clone(),
                    ))
                } else if same_inode(pst, ost) || pbytes == obytes {
                    // Backed-up (two links to one inode), or the Go tool's
                    // finished copy. rename() between two links of one inode
                    // is a no-op, so unlink the backup name instead.
                    rustix::fs::unlinkat(&self.dir, self.orig.as_os_str(), AtFlags::empty())
                        .map_err(self.io("unlink", &self.orig))?;
                    self.sync_dir()?;
                    tracing::info!(event = "restored", path = %path.display(), "removed redundant backup link");
                    Ok((
                        Repair {
                            found: "backed-up",
                            action: Some("removed the redundant .orig link"),
                        },
                        (**id).clone(),
                    ))
                } else {
                    Err(SlotError::Conflict { path })
                }
            }
            (Entry::Complete(..), _) => Err(SlotError::BadBackup {
                path: path.clone(),
                what: "a complete key",
                source: match &o {
                    Entry::Invalid(e) => e.clone(),
                    _ => KeyError::Stripped,
                },
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
            (Entry::Fifo, _) => restore_from_orig("armed"),
            (Entry::Stripped, _) => restore_from_orig("delivered"),
            (Entry::Absent, _) => restore_from_orig("missing key path with a backup"),
            (Entry::Invalid(..), _) => restore_from_orig("a truncated or invalid key file"),
        }
    }

    /// Refuses a safe key that is the consensus key itself.
    pub fn ensure_safe_differs(
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
    pub fn backup(&self) -> Result<(), SlotError> {
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
    pub fn install_safe(
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
            Ok(KeyFile::Stripped(_)) => {
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
        let _ = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.io("create", tmp))?;
        let filled = (|| {
            if let Some(gid) = group {
                rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid)))
                    .map_err(self.io("chown", tmp))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(self.io("chmod", tmp))?;
            let mut written = 0;
            while written < safe.len() {
                written +=
                    rustix::io::write(&fd, &safe[written..]).map_err(self.io("write", tmp))?;
            }
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
    pub fn arm(&self) -> Result<ArmedFifo, SlotError> {
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
        Ok(ArmedFifo {
            path_fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// armed → delivered: the stripped key, written and fsynced under a
    /// temporary name, renamed over `P`.
    pub fn strip(&self, stripped: &[u8]) -> Result<(), SlotError> {
        let tmp = self.stripped_tmp.as_os_str();
        let _ = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.io("create", tmp))?;
        self.chown_to_node(&fd, tmp)?;
        let mut written = 0;
        while written < stripped.len() {
            written +=
                rustix::io::write(&fd, &stripped[written..]).map_err(self.io("write", tmp))?;
        }
        crate::failpoint!("after-stripped-write");
        rustix::fs::fsync(&fd).map_err(self.io("fsync", tmp))?;
        drop(fd);
        rustix::fs::renameat(&self.dir, tmp, &self.dir, self.name.as_os_str())
            .map_err(self.io("rename stripped key over", &self.name))?;
        crate::failpoint!("after-strip-rename");
        self.sync_dir()?;
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
    pub fn restore(&self) -> Result<Repair, SlotError> {
        self.repair().map(|(r, _)| r)
    }

    /// Whether `P` is, right now, a regular file: while we run, the stripped
    /// key (a reader attached and no FIFO was armed since).
    pub fn holds_regular_file(&self) -> bool {
        rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| kind_of(&st) == FileType::RegularFile)
            .unwrap_or(false)
    }
}
