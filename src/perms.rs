//! Permission predicates on an `fstat` result: checked on the opened fd,
//! never on a path (the key slot's ancestors and files, the metrics
//! textfile's directory).

use rustix::fs::Stat;

/// Group or others may write.
pub(crate) fn group_or_world_writable(st: &Stat) -> bool {
    st.st_mode & 0o022 != 0
}

/// Others may write.
pub(crate) fn world_writable(st: &Stat) -> bool {
    st.st_mode & 0o002 != 0
}

/// The sticky bit: in a directory, only an entry's owner may rename or remove it.
pub(crate) fn sticky(st: &Stat) -> bool {
    st.st_mode & 0o1000 != 0
}
