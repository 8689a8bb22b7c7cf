//! Permission predicates on an `fstat` result: checked on the opened fd,
//! never on a path (the key slot's ancestors and files, the metrics
//! textfile's directory and its ancestors).

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

/// Whoever may write to an ancestor (without the sticky bit) can rename the
/// directories below it and put their own in place, whoever owns it: a
/// world-writable one is refused even when root owns it (only a root-owned
/// group-writable one is tolerated, its group trusted like root).
pub(crate) fn ancestor_replaceable(st: &Stat) -> bool {
    !sticky(st) && (world_writable(st) || (group_or_world_writable(st) && st.st_uid != 0))
}

/// Trusted owners: root and `uid` (the node user for the key slot; this
/// process's own user for the metrics textfile's directory).
pub(crate) fn owner_trusted(st: &Stat, uid: u32) -> bool {
    st.st_uid == 0 || st.st_uid == uid
}

/// Others than the owner may write, and may so rename or remove entries
/// that are not theirs (no sticky bit).
pub(crate) fn shared_without_sticky(st: &Stat) -> bool {
    group_or_world_writable(st) && !sticky(st)
}
