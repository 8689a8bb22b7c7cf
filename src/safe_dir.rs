//! Opening a directory by its absolute path without following any symlink,
//! each ancestor judged on the fd actually traversed: the key slot's
//! directory and the metrics textfile's. What an ancestor may be is the
//! caller's predicate (`crate::perms`); what the directory itself may be is
//! checked by the caller on the `Stat` returned, from the same fd.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Why a directory could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirError {
    /// A component is a symlink.
    #[error("{path:?} is a symbolic link")]
    Symlink {
        /// The path up to that component.
        path: PathBuf,
    },
    /// An ancestor refused by the caller's predicate.
    #[error("{path:?}: {why}")]
    Ancestor {
        /// The ancestor.
        path: PathBuf,
        /// The predicate's reason.
        why: String,
    },
    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn dir_io(path: &Path, op: &'static str, source: io::Error) -> DirError {
    DirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Same file: same device and inode.
pub(crate) fn same_inode(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Opens `dir` (absolute, no `.` or `..`) for reading, refusing any symlink
/// on the way and any ancestor for which `refused` gives a reason; returns
/// the fd and its `fstat`.
pub(crate) fn open_nofollow(
    dir: &Path,
    refused: impl Fn(&Stat) -> Option<String>,
) -> Result<(OwnedFd, Stat), DirError> {
    if !dir.is_absolute() {
        return Err(dir_io(
            dir,
            "resolve",
            io::Error::other("the directory must be absolute"),
        ));
    }
    let walked = walk_nofollow(dir, refused)?;
    let fd = open_walked(dir, &walked)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| dir_io(dir, "fstat", e.into()))?;
    Ok((fd, st))
}

/// Walks `dir` component by component with `O_NOFOLLOW`, so every ancestor
/// is checked on the fd we actually traverse. Returns the `O_PATH` fd of `dir`.
fn walk_nofollow(
    dir: &Path,
    refused: impl Fn(&Stat) -> Option<String>,
) -> Result<OwnedFd, DirError> {
    let mut cur = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dir_io(dir, "open /", e.into()))?;
    let mut walked = PathBuf::from("/");
    for comp in dir.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => {
                return Err(dir_io(
                    dir,
                    "resolve",
                    io::Error::other("the path must not contain . or .."),
                ))
            }
        };
        walked.push(name);
        let next = open_component(&cur, name, &walked)?;
        let st = rustix::fs::fstat(&next).map_err(|e| dir_io(dir, "fstat", e.into()))?;
        if walked != dir {
            if let Some(why) = refused(&st) {
                return Err(DirError::Ancestor { path: walked, why });
            }
        }
        cur = next;
    }
    Ok(cur)
}

/// One step of the walk: `name` under `cur`, refused if it is a symlink.
fn open_component(cur: &OwnedFd, name: &OsStr, walked: &Path) -> Result<OwnedFd, DirError> {
    rustix::fs::openat(
        cur,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR
            if rustix::fs::statat(cur, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink)
                .unwrap_or(false) =>
        {
            DirError::Symlink {
                path: walked.to_path_buf(),
            }
        }
        e => dir_io(walked, "open directory", e.into()),
    })
}

/// The authoritative open: openat2 refuses symlinks in the kernel, closing
/// the window between the walk and this open; the result must be the
/// directory the walk reached.
fn open_walked(dir: &Path, walked: &OwnedFd) -> Result<OwnedFd, DirError> {
    let io = |op, source| dir_io(dir, op, source);
    let fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(DirError::Symlink { path: dir.into() }),
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(
            walked,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", e.into()))?,
        Err(e) => return Err(io("open directory", e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io("fstat", e.into()))?;
    let walked_st = rustix::fs::fstat(walked).map_err(|e| io("fstat", e.into()))?;
    if !same_inode(&st, &walked_st) {
        return Err(io(
            "open directory",
            io::Error::other("directory changed while being opened"),
        ));
    }
    Ok(fd)
}
