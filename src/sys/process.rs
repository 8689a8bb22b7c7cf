//! This process and its tasks: non-dumpable with no core, real-time
//! scheduling for the re-arm threads, paging out our own executable, and
//! `kcmp` to tell whether two tasks share a file descriptor table.

use std::io;

/// Forks nothing, reads nothing secret: sets this process non-dumpable and its
/// core limit to zero, so neither a crash nor `gcore`-style reads by the same
/// uid (without CAP_SYS_PTRACE) can capture the key.
pub(crate) fn harden_self() -> io::Result<()> {
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
pub(crate) fn core_limit_is_zero() -> bool {
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

/// Whether tasks `a` and `b` (thread ids) share one file descriptor table:
/// `kcmp(2)` with `KCMP_FILES`. `None` when the kernel will not say (built
/// without kcmp, or no ptrace read access to either task: kcmp checks the
/// *real* credentials, so not through `with_fs_ids`); the caller must then
/// look at both tables.
pub(crate) fn same_fd_table(a: i32, b: i32) -> Option<bool> {
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
pub(crate) fn make_thread_realtime() -> io::Result<()> {
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

/// Asks the kernel to reclaim the resident pages of our own executable's
/// mappings (`MADV_PAGEOUT`). The AWS SDK and TLS code run once, for the
/// fetch; afterwards the supervisor needs a small fraction of the binary, and
/// clean file pages left resident would be most of its RSS. Pages still
/// needed simply fault back in. Returns the bytes advised.
pub(crate) fn page_out_own_executable() -> io::Result<usize> {
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
