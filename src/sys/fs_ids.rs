//! Per-thread filesystem ids (`setfsuid`/`setfsgid`), to open what only the
//! node's uid may open.

/// Runs `f` with this thread's filesystem uid/gid switched to `uid`/`gid`,
/// then switches back.
///
/// `/proc/<pid>/fd` and `/proc/<pid>/exe` are guarded by a ptrace access check
/// on the filesystem credentials. In split-trust mode we are root without
/// `CAP_SYS_PTRACE`, so the node's entries are closed to us as root but open
/// to the node's own uid. fsuid/fsgid are per-thread in the kernel and the
/// raw syscalls (unlike glibc's set*id wrappers) are not broadcast to other
/// threads, so nothing else in the process runs with the node's identity.
/// Called only by [`crate::identity`], which decides when to switch.
pub(crate) fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    /// Restores the previous fs ids even if `f` panics.
    struct Restore(u32, u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: integer arguments only.
            unsafe { libc::syscall(libc::SYS_setfsuid, self.0) };
            // SAFETY: integer arguments only.
            unsafe { libc::syscall(libc::SYS_setfsgid, self.1) };
        }
    }
    // SAFETY: integer arguments only; setfsgid returns the previous value.
    // (If the switch is refused the ids stay ours and `f` fails closed with
    // EACCES; nothing becomes more permissive.)
    let old_gid = unsafe { libc::syscall(libc::SYS_setfsgid, gid) } as u32;
    // SAFETY: as above.
    let old_uid = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
    let _restore = Restore(old_uid, old_gid);
    f()
}
