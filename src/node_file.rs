//! Reading the files of the node's home that we parse (`config.toml`, the
//! sign-state file). The node user owns them and may put a FIFO or a device
//! there: opening a FIFO for reading waits for a writer, reading one waits
//! for data, so a plain open would stall the tool at start (or a lease
//! renewal) for as long as that user likes. Opened with `O_NONBLOCK`, judged
//! by type on the opened fd, read only when it is a regular file.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, Stat};

/// The file is what it claims to be: a regular file (not a FIFO, device,
/// socket or directory).
pub(crate) fn is_regular_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Opens `path` for reading without blocking on a FIFO and without making a
/// terminal ours (symlinks are followed: callers that must not follow them
/// walk the components themselves and hand the fd to [`read_regular`]).
pub(crate) fn open_nonblocking(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Reads `fd` whole if it is a regular file of at most `max` bytes; the
/// error says what it is otherwise (the caller names the path).
pub(crate) fn read_regular(fd: OwnedFd, max: u64) -> io::Result<Vec<u8>> {
    let st = rustix::fs::fstat(&fd)?;
    if !is_regular_file(&st) {
        return Err(io::Error::other(format!(
            "it is a {}, not a regular file: nothing is read from it",
            kind_name(FileType::from_raw_mode(st.st_mode))
        )));
    }
    if st.st_size as u64 > max {
        return Err(io::Error::other(format!(
            "{} bytes, more than any such file ({max})",
            st.st_size
        )));
    }
    let mut out = Vec::new();
    std::fs::File::from(fd).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The name of a file type, for messages.
pub(crate) fn kind_name(t: FileType) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fifo_or_directory_is_refused_at_once_and_a_file_is_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("config.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let t0 = Instant::now();
        let e = read_regular(open_nonblocking(&fifo).unwrap(), 100).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(
            e.to_string().contains("is a FIFO, not a regular file"),
            "{e}"
        );
        let e = read_regular(open_nonblocking(d.path()).unwrap(), 100).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let f = d.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            read_regular(open_nonblocking(&f).unwrap(), 3).unwrap(),
            b"abc"
        );
        let e = read_regular(open_nonblocking(&f).unwrap(), 2).unwrap_err();
        assert!(e.to_string().contains("3 bytes"), "{e}");
    }
}
