//! The metrics textfile for node_exporter's textfile collector: replaced
//! whole on each change (a temporary file in the same directory, renamed
//! over it), so a scrape never sees half a file.
//!
//! We run as root and the directory is usually another user's
//! (node_exporter's): the temporary file is created `O_EXCL|O_NOFOLLOW`
//! through a directory fd, so no link planted in the directory redirects a
//! write. No `fsync`: after a power loss an empty or old file costs one
//! scrape's worth of metrics, and the next change rewrites it.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::settings::MetricsError;
use crate::perms::{sticky, world_writable};

/// An open metrics file location.
pub(super) struct TextFile {
    dir: OwnedFd,
    name: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
}

impl TextFile {
    /// Opens the directory of `path` and checks that the file can be
    /// replaced there (the first write is the proof).
    pub(super) fn open(path: &Path) -> Result<TextFile, MetricsError> {
        let unwritable = |e: Errno| MetricsError::Unwritable {
            path: path.to_path_buf(),
            hint: hint(e),
            source: e.into(),
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(MetricsError::IsDirectory {
                path: path.to_path_buf(),
            });
        };
        let dir = rustix::fs::open(
            parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(unwritable)?;
        let st = rustix::fs::fstat(&dir).map_err(unwritable)?;
        if world_writable(&st) && !sticky(&st) {
            return Err(MetricsError::Unwritable {
                path: path.to_path_buf(),
                source: std::io::Error::other("its directory is world-writable without the sticky bit"),
                hint: "anyone could replace the metrics there; use a directory only root and node_exporter can write",
            });
        }
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => {
                    return Err(MetricsError::IsDirectory {
                        path: path.to_path_buf(),
                    })
                }
                _ => {
                    return Err(MetricsError::Unwritable {
                        path: path.to_path_buf(),
                        source: std::io::Error::other("it exists and is not a regular file"),
                        hint: "remove it (a symlink or special file there is never followed)",
                    })
                }
            },
            Err(Errno::NOENT) => {}
            Err(e) => return Err(unwritable(e)),
        }
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tf = TextFile {
            dir,
            name: PathBuf::from(name),
            tmp: PathBuf::from(tmp),
            path: path.to_path_buf(),
        };
        tf.write("").map_err(|source| MetricsError::Unwritable {
            path: path.to_path_buf(),
            hint: hint(Errno::from_io_error(&source).unwrap_or(Errno::IO)),
            source,
        })?;
        Ok(tf)
    }

    /// The file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `text`.
    pub(super) fn write(&self, text: &str) -> std::io::Result<()> {
        let r = self.write_tmp(text).and_then(|()| {
            rustix::fs::renameat(&self.dir, &self.tmp, &self.dir, &self.name).map_err(Into::into)
        });
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, &self.tmp, AtFlags::empty());
        }
        r
    }

    fn write_tmp(&self, text: &str) -> std::io::Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o644);
        let fd = match rustix::fs::openat(&self.dir, &self.tmp, flags, mode) {
            // Left by a crash of ours (the name carries our pid).
            Err(Errno::EXIST) => {
                rustix::fs::unlinkat(&self.dir, &self.tmp, AtFlags::empty())?;
                rustix::fs::openat(&self.dir, &self.tmp, flags, mode)?
            }
            r => r?,
        };
        // node_exporter runs as its own user: readable whatever our umask.
        rustix::fs::fchmod(&fd, mode)?;
        let mut f = std::fs::File::from(fd);
        f.write_all(text.as_bytes())
    }
}

/// What to do about a write that failed with `e`.
fn hint(e: Errno) -> &'static str {
    match e {
        Errno::ROFS => "the file system is read-only there; under systemd (ProtectSystem=strict) add the directory to ReadWritePaths= in the unit",
        Errno::ACCESS | Errno::PERM => "no permission to create files in that directory; under systemd check ReadWritePaths= and the directory's owner and mode",
        Errno::NOENT => "its directory does not exist: create it (the directory node_exporter's --collector.textfile.directory names)",
        Errno::NOTDIR => "a component of the path is not a directory",
        _ => "check the directory and the file system",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.prom");
        let tf = TextFile::open(&p).unwrap();
        tf.write("a 1\n").unwrap();
        tf.write("a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.prom")]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn a_world_writable_directory_without_the_sticky_bit_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = TextFile::open(&d.path().join("m.prom"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("world-writable"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        TextFile::open(&d.path().join("m.prom")).expect("sticky is fine");
    }

    #[test]
    fn a_symlink_at_the_name_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let p = d.path().join("m.prom");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = TextFile::open(&p).err().expect("refused").to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
