//! The metrics textfile for node_exporter's textfile collector: replaced
//! whole on each change (a temporary file in the same directory, renamed
//! over it), so a scrape never sees half a file.
//!
//! We may run as root and the directory is often another user's
//! (node_exporter's). It is opened once, as the key's directory is
//! (`crate::safe_dir`): no symlink anywhere on the path, no ancestor the node
//! user owns or anyone could replace, the directory itself ours or root's
//! and, if others may write it, sticky. Every write goes through that fd.
//! Each rewrite's temporary name is random (128 bits from the kernel) and
//! created `O_EXCL|O_NOFOLLOW`: nobody can plant something at a name we
//! will use, and no link planted in the directory redirects a write. No
//! `fsync`: after a power loss an empty or old file costs one scrape's worth
//! of metrics, and the next change rewrites it.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::settings::MetricsError;
use crate::perms::{ancestor_replaceable, owner_trusted, shared_without_sticky};
use crate::safe_dir::DirError;

/// Tries at a fresh random name before a rewrite gives up (a collision of
/// 128-bit names means something else is wrong).
const TMP_TRIES: usize = 3;

/// An open metrics file location.
pub(super) struct TextFile {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
}

/// Why an ancestor of the textfile's directory is refused: anyone could
/// replace what is below it, or the node user (when we are not it) owns
/// it and could put a directory of its choosing there before a start.
fn ancestor_refused(st: &Stat, me: u32, node_uid: u32) -> Option<String> {
    if ancestor_replaceable(st) {
        return Some(format!(
            "an ancestor directory is writable by group/others (mode {:04o})",
            st.st_mode & 0o7777
        ));
    }
    (st.st_uid == node_uid && node_uid != me).then(|| {
        format!("an ancestor directory is owned by the node user (uid {node_uid}), who could replace what is below it")
    })
}

/// Why the textfile's own directory is refused: someone else's (they
/// could swap our file for theirs), or writable by others without the
/// sticky bit (they could rename ours away).
fn dir_refused(st: &Stat, me: u32) -> Option<String> {
    if !owner_trusted(st, me) {
        return Some(format!(
            "it is owned by uid {}, not root or this process's user (uid {me})",
            st.st_uid
        ));
    }
    shared_without_sticky(st).then(|| {
        format!(
            "it is writable by group or others without the sticky bit (mode {:04o})",
            st.st_mode & 0o7777
        )
    })
}

/// A random temporary name for `name`, never the same twice.
fn tmp_name(name: &OsString) -> OsString {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .expect("getrandom cannot fail for 16 bytes");
    let mut t = OsString::from(".");
    t.push(name);
    t.push(".");
    t.push(b.iter().map(|x| format!("{x:02x}")).collect::<String>());
    t.push(".tmp");
    t
}

/// What a failed open of the directory means for the operator.
fn dir_error(path: &Path, e: DirError) -> MetricsError {
    let why = match e {
        DirError::Io { source, .. } => {
            return MetricsError::Unwritable {
                path: path.to_path_buf(),
                hint: hint(Errno::from_io_error(&source).unwrap_or(Errno::IO)),
                source,
            }
        }
        DirError::Symlink { path } => format!("{path:?} is a symbolic link"),
        DirError::Ancestor { path, why } => format!("{path:?}: {why}"),
    };
    MetricsError::UnsafeDir {
        path: path.to_path_buf(),
        why,
    }
}

impl TextFile {
    /// Opens the directory of `path` (checked as the module says; `node_uid`
    /// is the node's user) and checks that the file can be replaced there
    /// (the first write is the proof).
    pub(super) fn open(path: &Path, node_uid: u32) -> Result<TextFile, MetricsError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(MetricsError::IsDirectory {
                path: path.to_path_buf(),
            });
        };
        let me = rustix::process::geteuid().as_raw();
        let (dir, st) =
            crate::safe_dir::open_nofollow(parent, |st| ancestor_refused(st, me, node_uid))
                .map_err(|e| dir_error(path, e))?;
        if let Some(why) = dir_refused(&st, me) {
            return Err(MetricsError::UnsafeDir {
                path: path.to_path_buf(),
                why: format!("{parent:?}: {why}"),
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
            Err(e) => {
                return Err(dir_error(
                    path,
                    DirError::Io {
                        op: "stat",
                        path: path.to_path_buf(),
                        source: e.into(),
                    },
                ))
            }
        }
        let tf = TextFile {
            dir,
            name: name.to_os_string(),
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
        let (tmp, fd) = self.create_tmp()?;
        let mut f = std::fs::File::from(fd);
        let r = f.write_all(text.as_bytes()).and_then(|()| {
            rustix::fs::renameat(&self.dir, &tmp, &self.dir, &self.name).map_err(Into::into)
        });
        if r.is_err() {
            // Ours: created exclusively under a name nobody could know.
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
        }
        r
    }

    /// A new temporary file under a fresh random name, readable by
    /// node_exporter (its own user) whatever our umask.
    fn create_tmp(&self) -> std::io::Result<(OsString, OwnedFd)> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o644);
        for _ in 0..TMP_TRIES {
            let tmp = tmp_name(&self.name);
            match rustix::fs::openat(&self.dir, &tmp, flags, mode) {
                Ok(fd) => {
                    if let Err(e) = rustix::fs::fchmod(&fd, mode) {
                        let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
                        return Err(e.into());
                    }
                    return Ok((tmp, fd));
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::EXIST.into())
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
    use std::os::unix::fs::PermissionsExt as _;

    /// A node user that is not us.
    const NODE: u32 = 65534;

    fn names(d: &Path) -> Vec<OsString> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(p: &Path) -> String {
        TextFile::open(p, NODE).err().expect("refused").to_string()
    }

    fn root_or_skip(test: &str) -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("{test}: not root, skipped (it needs chown)");
        }
        root
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.prom");
        let tf = TextFile::open(&p, NODE).unwrap();
        tf.write("a 1\n").unwrap();
        tf.write("a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(names(d.path()), vec![OsString::from("m.prom")]);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn temporary_names_are_random_so_nothing_planted_blocks_a_rewrite() {
        let name = OsString::from("m.prom");
        let (a, b) = (tmp_name(&name), tmp_name(&name));
        assert_ne!(a, b);
        let a = a.to_string_lossy().into_owned();
        assert!(
            a.starts_with(".m.prom.") && a.ends_with(".tmp") && a.len() == 44,
            "{a}"
        );
        // What blocked every rewrite before: a directory at the name
        // `.<name>.<pid>.tmp`, the one a rewrite of this process would use.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.prom");
        let tf = TextFile::open(&p, NODE).unwrap();
        let planted = d.path().join(format!(".m.prom.{}.tmp", std::process::id()));
        std::fs::create_dir(&planted).unwrap();
        tf.write("a 1\n").unwrap();
        tf.write("a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert!(planted.is_dir());
        assert_eq!(names(d.path()).len(), 2);
    }

    #[test]
    fn a_directory_others_may_write_without_the_sticky_bit_is_refused() {
        let d = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o775] {
            chmod(d.path(), mode);
            let e = refused(&d.path().join("m.prom"));
            assert!(e.contains("without the sticky bit"), "{e}");
            assert!(names(d.path()).is_empty());
        }
        chmod(d.path(), 0o1777);
        TextFile::open(&d.path().join("m.prom"), NODE).expect("sticky is fine");
    }

    #[test]
    fn a_symlink_at_the_name_or_on_the_path_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let p = d.path().join("m.prom");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = refused(&p);
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        let e = refused(&d.path().join("link/m.prom"));
        assert!(e.contains("symbolic link"), "{e}");
        assert!(names(&real).is_empty());
    }

    #[test]
    fn the_node_users_ancestors_are_trusted_only_when_we_are_the_node_user() {
        let d = tempfile::tempdir().unwrap();
        let mut st = rustix::fs::stat(d.path()).unwrap();
        st.st_mode = 0o40755;
        st.st_uid = NODE;
        // The plain unit: we are the node user, its tree is ours.
        assert_eq!(ancestor_refused(&st, NODE, NODE), None);
        // The split unit: root writes, the node user must not steer it.
        assert!(ancestor_refused(&st, 0, NODE).is_some());
        // Other owners are judged by mode only (Debian's
        // /var/lib/prometheus is prometheus:prometheus 0755).
        st.st_uid = 1234;
        assert_eq!(ancestor_refused(&st, 0, NODE), None);
        st.st_mode = 0o40775;
        assert!(ancestor_refused(&st, 0, NODE).is_some());
        st.st_mode = 0o41777;
        assert_eq!(ancestor_refused(&st, 0, NODE), None);
    }

    #[test]
    fn a_directory_of_another_user_or_below_one_of_the_node_users_is_refused() {
        if !root_or_skip("textfile owners") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        // The node user's directory, holding one of root's: the node user
        // could have put it there (renamed from anywhere it can write).
        let nodes = d.path().join("nodes");
        let roots = nodes.join("roots");
        std::fs::create_dir_all(&roots).unwrap();
        std::os::unix::fs::chown(&nodes, Some(NODE), Some(NODE)).unwrap();
        let e = refused(&roots.join("m.prom"));
        assert!(e.contains("owned by the node user"), "{e}");
        assert!(names(&roots).is_empty());
        // The directory itself someone else's: refused.
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(NODE), None).unwrap();
        let e = refused(&theirs.join("m.prom"));
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(names(&theirs).is_empty());
    }
}
