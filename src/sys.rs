//! The only place with `unsafe` and raw syscalls. Everything here is wrapped in
//! a safe function whose preconditions are stated next to the `unsafe` block.
//!
//! `rustix` covers most syscalls safely; what remains here is what it does not
//! offer (`memfd_secret`, raw capability and credential syscalls for the child
//! after `fork`) and the memory mapping behind the secret buffer.

use std::io;
use std::ptr::NonNull;

/// Turns a C-style return value (-1 with `errno` set) into an `io::Result`.
pub fn cvt<T: Into<i64> + Copy>(ret: T) -> io::Result<T> {
    if ret.into() == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Which kind of memory backs a secret mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMemKind {
    /// `memfd_secret(2)`: pages removed from the kernel's direct map, unreadable
    /// through `/proc/<pid>/mem` and `ptrace`, never swapped.
    MemfdSecret,
    /// Anonymous mapping, `mlock`ed, excluded from core dumps, wiped in forks.
    LockedAnonymous,
}

impl std::fmt::Display for SecretMemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecretMemKind::MemfdSecret => "memfd_secret",
            SecretMemKind::LockedAnonymous => "mlock+MADV_DONTDUMP",
        })
    }
}

/// A page-aligned, read-write mapping for secret bytes. Zeroed and unmapped on drop.
pub struct SecretMapping {
    ptr: NonNull<u8>,
    len: usize,
    kind: SecretMemKind,
}

// SAFETY: the mapping is owned exclusively by this value (no aliasing pointers
// escape except through `&self`/`&mut self` borrows), so moving it to another
// thread or sharing `&` references is as safe as for a `Box<[u8]>`.
unsafe impl Send for SecretMapping {}
// SAFETY: see `Send`; shared access only hands out `&[u8]`.
unsafe impl Sync for SecretMapping {}

/// Why `memfd_secret` could not be used (kept so `check` can report it).
#[derive(Debug, Clone)]
pub struct SecretMemFallback {
    /// The step that failed (`memfd_secret`, `ftruncate`, `mmap`).
    pub step: &'static str,
    /// The kernel's answer.
    pub error: String,
}

fn page_size() -> usize {
    rustix::param::page_size()
}

fn memfd_secret() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_secret takes one integer flags argument and returns a new fd
    // or -1; no memory is passed to the kernel.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) })?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor that nothing
    // else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl SecretMapping {
    /// Maps at least `min_len` bytes of secret memory: `memfd_secret` when the
    /// kernel allows it, otherwise locked anonymous memory.
    pub fn new(min_len: usize) -> io::Result<(Self, Option<SecretMemFallback>)> {
        let ps = page_size();
        let len = min_len.max(1).div_ceil(ps) * ps;
        match Self::new_memfd_secret(len) {
            Ok(m) => Ok((m, None)),
            Err(fallback) => {
                let m = Self::new_locked_anonymous(len)?;
                Ok((m, Some(fallback)))
            }
        }
    }

    fn new_memfd_secret(len: usize) -> Result<Self, SecretMemFallback> {
        let fail = |step, e: io::Error| SecretMemFallback {
            step,
            error: e.to_string(),
        };
        let fd = memfd_secret().map_err(|e| fail("memfd_secret", e))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| fail("ftruncate", e.into()))?;
        // SAFETY: a fresh shared mapping of a file we just sized to `len`; the
        // kernel chooses the address, so it aliases nothing of ours.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| fail("mmap", e.into()))?;
        // The mapping keeps the memory alive; the fd is closed here so no child
        // can inherit it (it is O_CLOEXEC as well).
        drop(fd);
        let mapping = SecretMapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL on success"),
            len,
            kind: SecretMemKind::MemfdSecret,
        };
        // secretmem pages are never swapped and cannot be mlocked (ENOMEM);
        // WIPEONFORK is EINVAL on a shared mapping, so DONTFORK keeps it out of
        // any fork (the child process is spawned with fork/exec).
        // SAFETY: advising on exactly the range we mapped above.
        unsafe {
            rustix::mm::madvise(
                mapping.ptr.as_ptr().cast(),
                len,
                rustix::mm::Advice::LinuxDontFork,
            )
        }
        .map_err(|e| fail("madvise(MADV_DONTFORK)", e.into()))?;
        // Touch the pages now: secretmem faults can fail (RLIMIT_MEMLOCK) and a
        // SIGBUS later, while the key is being copied in, would be worse.
        // SAFETY: the range is mapped read-write and owned by us.
        unsafe { std::ptr::write_bytes(mapping.ptr.as_ptr(), 0, len) };
        Ok(mapping)
    }

    fn new_locked_anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping at a kernel-chosen address.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        let mapping = SecretMapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL on success"),
            len,
            kind: SecretMemKind::LockedAnonymous,
        };
        // SAFETY: locking exactly the range mapped above; on error `mapping`
        // is dropped, which unmaps it.
        unsafe { rustix::mm::mlock(mapping.ptr.as_ptr().cast(), len) }.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mlock of {len} bytes failed ({e}); raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=) to at least 64K"),
            )
        })?;
        // SAFETY: advising on exactly the range mapped above.
        unsafe {
            rustix::mm::madvise(
                mapping.ptr.as_ptr().cast(),
                len,
                rustix::mm::Advice::LinuxDontDump,
            )
        }?;
        // SAFETY: advising on exactly the range mapped above.
        unsafe {
            rustix::mm::madvise(
                mapping.ptr.as_ptr().cast(),
                len,
                rustix::mm::Advice::LinuxWipeOnFork,
            )
        }?;
        Ok(mapping)
    }

    /// The kind of memory behind this mapping.
    pub fn kind(&self) -> SecretMemKind {
        self.kind
    }

    /// Size of the mapping in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start address, for tests that look the mapping up in `/proc/self/maps`.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The whole mapping.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at creation), mapped
        // bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole mapping, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SecretMapping {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.as_mut_slice());
        // SAFETY: unmapping exactly the range we mapped; no borrow outlives self.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Everything the child needs after `fork`, computed beforehand so that the
/// `pre_exec` hook allocates nothing and takes no lock.
#[derive(Debug, Clone)]
pub struct ChildCreds {
    /// Capabilities to drop from the bounding set (those present before spawn).
    pub bounding_to_drop: Vec<u32>,
    /// Switch to this uid/gid/supplementary groups, if a node user is set.
    pub switch_to: Option<(u32, u32, Vec<u32>)>,
    /// Whether `capset` to all-zero should run.
    pub clear_caps: bool,
    /// Signal the child gets if we die (set after the uid switch, which clears it).
    pub parent_death_signal: Option<i32>,
    /// Our pid, to detect that we died before the death signal was armed.
    pub parent: i32,
}

/// Hardens the freshly forked child before `exec`. Call only from `pre_exec`.
///
/// Only raw syscalls run here: no allocation (the `Vec`s in `creds` were
/// allocated before `fork` and are only read), no locks, no formatting.
/// Order matters and was measured: bounding set, ambient set, credentials,
/// then `capset` to zero (the inheritable set survives `setuid`), then
/// `no_new_privs`, core limit, and close-on-exec for every fd above 2.
///
/// # Safety
/// Must only be called in the child between `fork` and `exec`.
pub unsafe fn harden_child_after_fork(creds: &ChildCreds) -> io::Result<()> {
    for &cap in &creds.bounding_to_drop {
        // SAFETY: prctl with integer arguments only.
        cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
    }
    // SAFETY: prctl with integer arguments only. EINVAL means a kernel without
    // ambient capabilities (pre-4.3): nothing to clear.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    if let Some((uid, gid, groups)) = &creds.switch_to {
        // Raw syscalls, not the libc wrappers: glibc's setuid/setgid broadcast
        // to all threads with signals (setxid), which is not what we want in a
        // forked child and is not async-signal-safe in every libc.
        // SAFETY: `groups` is a live, initialised slice of gid_t-sized values.
        cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) })?;
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) })?;
    }
    if creds.clear_caps {
        let mut header = libc_cap_header();
        let data = [CapData::default(); 2];
        // SAFETY: header and data point to live structs of the layout the
        // kernel expects for _LINUX_CAPABILITY_VERSION_3 (two data elements).
        cvt(unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        })?;
    }
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    if let Some(sig) = creds.parent_death_signal {
        // SAFETY: prctl with integer arguments only.
        cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
        // SAFETY: getppid has no arguments. If we already died, the signal
        // was never armed: behave as if it had fired.
        if unsafe { libc::getppid() } != creds.parent {
            // SAFETY: raising a signal in our own (child) process.
            unsafe { libc::raise(sig) };
        }
    }
    // The supervisor blocks the signals it waits for; the child must start
    // with an empty mask or it would ignore SIGTERM.
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a live rlimit struct. EPERM (a seccomp filter
    // denying @resources) is harmless: the parent made sure its own limit is
    // 0 before spawning, and the child inherits it.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } == -1
        && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        return Err(io::Error::last_os_error());
    }
    // Mark, do not close: std's exec-error pipe must stay open until exec.
    // SAFETY: integer arguments only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    }
}

/// Forks nothing, reads nothing secret: sets this process non-dumpable and its
/// core limit to zero, so neither a crash nor `gcore`-style reads by the same
/// uid (without CAP_SYS_PTRACE) can capture the key.
pub fn harden_self() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    if let Err(e) = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        // Under a systemd filter denying @resources, setrlimit fails with
        // EPERM; the unit's LimitCORE=0 has then already done the job, which
        // /proc (no syscall filter involved) can confirm.
        if !core_limit_is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot set RLIMIT_CORE to 0 ({e}) and it is not 0 already; set LimitCORE=0 in the unit"),
            ));
        }
    }
    Ok(())
}

/// Reads our core-file limit from `/proc/self/limits` (soft and hard both 0).
pub fn core_limit_is_zero() -> bool {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max core file size"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 6 && f[4] == "0" && f[5] == "0"
                })
        })
        .unwrap_or(false)
}

/// Whether `memfd_secret` works here (for `check`): tries it and closes the fd.
pub fn memfd_secret_available() -> io::Result<()> {
    memfd_secret().map(drop)
}

/// Blocks `signals` in the calling thread (and so in every thread spawned
/// after it), so they can be received synchronously with [`wait_signal`].
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    // SAFETY: `set` is initialised by sigemptyset; `sig` is a live i32.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let mut sig: libc::c_int = 0;
        let rc = libc::sigwait(&set, &mut sig);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

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

/// Whether tasks `a` and `b` (thread ids) share one file descriptor table:
/// `kcmp(2)` with `KCMP_FILES`. `None` when the kernel will not say (built
/// without kcmp, or no ptrace read access to either task: kcmp checks the
/// *real* credentials, so not through [`with_fs_ids`]); the caller must then
/// look at both tables.
pub fn same_fd_table(a: i32, b: i32) -> Option<bool> {
    /// `KCMP_FILES` from `<linux/kcmp.h>`.
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: kcmp takes five integer arguments here (idx1/idx2 unused for
    // KCMP_FILES); no memory is passed to the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a as libc::c_long,
            b as libc::c_long,
            KCMP_FILES,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    match r {
        0 => Some(true),
        1..=3 => Some(false),
        _ => None,
    }
}

/// Puts the calling thread in the lowest real-time class (`SCHED_FIFO` 1,
/// reset on fork). For the threads that re-arm the key FIFO when the node
/// halts for an upgrade or exits: at normal priority, with the CPUs busy,
/// their wake-up lost the race with a cosmovisor that restarts the node at
/// once (measured by tests/e2e_delivery.rs). Needs `CAP_SYS_NICE` or
/// `RLIMIT_RTPRIO` >= 1 and is refused under systemd's `RestrictRealtime=yes`
/// or a seccomp filter denying `@resources`; then the thread stays as it was.
pub fn make_thread_realtime() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs the child's hardening as its `pre_exec` hook.
pub fn install_child_hardening(cmd: &mut std::process::Command, creds: ChildCreds) {
    use std::os::unix::process::CommandExt;
    // Between fork and exec in a multi-threaded process only async-signal-safe
    // work is allowed. SAFETY: the hook runs raw syscalls on data computed
    // before fork (`creds`, moved in, only read): no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || harden_child_after_fork(&creds));
    }
}

/// A global allocator that zeroes every block before handing it back to the
/// system allocator (see `secret::ZeroizingAlloc`, the name the binary uses).
pub struct ZeroizingAlloc;

// SAFETY: every method forwards to `System` with the caller's layout; the only
// addition is writing zeroes over a block the caller is giving up, which is
// still owned by us until `System.dealloc` returns. `realloc` keeps the
// default (alloc, copy, dealloc), so a moved block is wiped too.
unsafe impl std::alloc::GlobalAlloc for ZeroizingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes that the
        // caller is releasing, so nothing else reads it concurrently.
        unsafe {
            let block = std::slice::from_raw_parts_mut(ptr, layout.size());
            zeroize::Zeroize::zeroize(block);
            std::alloc::System.dealloc(ptr, layout)
        }
    }
}

/// Asks the kernel to reclaim the resident pages of our own executable's
/// mappings (`MADV_PAGEOUT`). The AWS SDK and TLS code run once, for the
/// fetch; afterwards the supervisor needs a small fraction of the binary, and
/// clean file pages left resident would be most of its RSS. Pages still
/// needed simply fault back in. Returns the bytes advised.
pub fn page_out_own_executable() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3);
        // Only our own read-only/executable file mappings: clean pages that
        // the file can give back. Never writable ones (data, relro) or anything
        // anonymous.
        if path != Some(exe.as_os_str().to_str().unwrap_or("")) || perms.contains('w') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // MADV_PAGEOUT only drops clean pages, re-read from the file on the next
        // access. SAFETY: the range is a live mapping of this process (from
        // /proc/self/maps) and no memory is invalidated.
        if unsafe { rustix::mm::madvise(a as *mut _, b - a, rustix::mm::Advice::LinuxPageOut) }
            .is_ok()
        {
            advised += b - a;
        }
    }
    Ok(advised)
}

/// Now on `CLOCK_BOOTTIME`: like the monotonic clock, but it also counts
/// time the system spent suspended, so a lease deadline measured on it
/// passes during a suspend as it does for the other hosts.
pub fn boot_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
