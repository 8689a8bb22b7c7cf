//! A systemd credential (`LoadCredential=` / `LoadCredentialEncrypted=`):
//! the key is read from `$CREDENTIALS_DIRECTORY/<name>`, which systemd places
//! on a private, non-swappable mount readable only by the service.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::secret::{SecretBuf, MAX_SECRET_LEN};

/// Why the credential could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// Open/read failed.
    #[error(
        "cannot read credential {path:?}: {source}; check LoadCredentialEncrypted= in the unit"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Permissions let others read it.
    #[error("credential {path:?} has mode {mode:04o}: group or others could read the key; systemd creates credentials 0400 in a 0500 directory, so this is not a systemd credential directory or it was tampered with")]
    Permissive {
        /// The file or directory.
        path: PathBuf,
        mode: u32,
    },
    /// Not a regular file (or a symlink).
    #[error("credential {path:?} is not a regular file")]
    NotRegular { path: PathBuf },
    /// Larger than any key.
    #[error("credential {path:?} is larger than {MAX_SECRET_LEN} bytes; it cannot be a priv_validator_key.json")]
    TooLarge { path: PathBuf },
    /// Secret memory failure.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
}

/// Reads credential `name` from `dir` into secret memory after checking that
/// neither the directory nor the file is accessible to group or others.
pub(crate) fn read(dir: &Path, name: &str) -> Result<SecretBuf, CredentialError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CredentialError::Io { path, source }
    };
    let dmeta = std::fs::metadata(dir).map_err(io(dir))?;
    if dmeta.mode() & 0o077 != 0 {
        return Err(CredentialError::Permissive {
            path: dir.to_path_buf(),
            mode: dmeta.mode() & 0o7777,
        });
    }
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&path)
        .map_err(io(&path))?;
    // Checked on the open fd, not the path, so a swap after the check is moot.
    let meta = f.metadata().map_err(io(&path))?;
    if !meta.file_type().is_file() {
        return Err(CredentialError::NotRegular { path });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(CredentialError::Permissive {
            path,
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.len() > MAX_SECRET_LEN as u64 {
        return Err(CredentialError::TooLarge { path });
    }
    let mut buf = SecretBuf::with_capacity(MAX_SECRET_LEN + 1)?;
    loop {
        let n = buf
            .append_with(|spare| {
                let n = spare.len().min(MAX_SECRET_LEN + 1);
                f.read(&mut spare[..n])
            })
            .map_err(io(&path))?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_SECRET_LEN {
            return Err(CredentialError::TooLarge { path });
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_readable_dir_or_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, b"{}").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            read(d.path(), "k"),
            Err(CredentialError::Permissive { .. })
        ));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&read(d.path(), "k").unwrap()),
            b"{}"
        );
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(matches!(
            read(d.path(), "k"),
            Err(CredentialError::Permissive { .. })
        ));
        std::os::unix::fs::symlink(&f, d.path().join("l")).unwrap();
        assert!(matches!(
            read(d.path(), "l"),
            Err(CredentialError::Io { .. })
        ));
    }
}
