//! The child's setup between `fork` and `exec`: capability drops, the uid
//! switch and the parent-death signal, as raw async-signal-safe syscalls on
//! data computed before the fork.

use super::cvt;
use std::io;

/// Everything the child needs after `fork`, computed beforehand so that the
/// `pre_exec` hook allocates nothing and takes no lock.
#[derive(Debug, Clone)]
pub(crate) struct ChildCreds {
    /// Capabilities to drop from the bounding set (those present before spawn).
    pub(crate) bounding_to_drop: Vec<u32>,
    /// Switch to this uid/gid/supplementary groups, if a node user is set.
    pub(crate) switch_to: Option<(u32, u32, Vec<u32>)>,
    /// Whether `capset` to all-zero should run.
    pub(crate) clear_caps: bool,
    /// Signal the child gets if we die (set after the uid switch, which clears it).
    pub(crate) parent_death_signal: Option<i32>,
    /// Our pid, to detect that we died before the death signal was armed.
    pub(crate) parent: i32,
    /// Signals set back to their default action ([`catchable_signals`]).
    pub(crate) default_signals: Vec<i32>,
}

/// Every signal whose disposition can be set: all up to the last real-time
/// one but SIGKILL and SIGSTOP, 32 and 33 included (glibc keeps those two for
/// itself, but an ignored one passes exec like any other).
pub(crate) fn catchable_signals() -> Vec<i32> {
    (1..=libc::SIGRTMAX())
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .collect()
}

/// Hardens the freshly forked child before `exec`. Call only from `pre_exec`.
///
/// Only raw syscalls run here: no allocation (the `Vec`s in `creds` were
/// allocated before `fork` and are only read), no locks, no formatting.
/// Order matters and was measured: bounding set, ambient set, credentials,
/// then `capset` to zero (the inheritable set survives `setuid`), then
/// default signal dispositions and an empty mask, `no_new_privs`, the
/// parent-death signal, core limit, and close-on-exec for every fd above 2.
///
/// # Safety
/// Must only be called in the child between `fork` and `exec`.
unsafe fn harden_child_after_fork(creds: &ChildCreds) -> io::Result<()> {
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
    // SAFETY: we are that child (this function's own precondition).
    unsafe { default_signal_state(&creds.default_signals) }?;
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

/// The kernel's `sigset_t` on the 64-bit targets we build for (`_NSIG` 64).
const KERNEL_SIGSET_BYTES: usize = 8;

/// Sets `signals` to their default action and empties the signal mask.
///
/// # Safety
/// Must only be called in the child between `fork` and `exec` (it undoes the
/// supervisor's own signal setup).
unsafe fn default_signal_state(signals: &[i32]) -> io::Result<()> {
    // An ignored signal stays ignored across exec: started under `nohup` or
    // `trap "" TERM`, cosmovisor and its node would ignore the SIGTERM we
    // forward (and the parent-death signal), and an ignored SIGCHLD would
    // reap their children behind their back. Handled signals are reset by
    // exec itself; setting them to default here changes nothing for them.
    // std resets SIGPIPE alone (and the mask). Before the death signal is
    // armed, so that its `raise` is not ignored.
    // The raw syscall: glibc's sigaction refuses 32 and 33. All zero is
    // SIG_DFL, no flags, no restorer and an empty mask in the kernel's
    // layout; the buffer is larger than that struct on every architecture.
    let dfl = [0u64; 8];
    for &sig in signals {
        // SAFETY: rt_sigaction is async-signal-safe; `dfl` is a live buffer
        // the kernel only reads; no old action is asked for.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET_BYTES,
            )
        })?;
    }
    // The supervisor blocks the signals it waits for; the child must start
    // with an empty mask or it would ignore SIGTERM. std empties it too before
    // this hook runs; ours does not depend on that.
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
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

/// Installs the child's hardening as its `pre_exec` hook.
pub(crate) fn install_child_hardening(cmd: &mut std::process::Command, creds: ChildCreds) {
    use std::os::unix::process::CommandExt;
    // Between fork and exec in a multi-threaded process only async-signal-safe
    // work is allowed. SAFETY: the hook runs raw syscalls on data computed
    // before fork (`creds`, moved in, only read): no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || harden_child_after_fork(&creds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catchable_signals_are_all_but_kill_and_stop() {
        let s = catchable_signals();
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            assert!(s.contains(&sig), "{sig} missing");
        }
        assert!(s.contains(&libc::SIGRTMIN()) && s.contains(&libc::SIGRTMAX()));
        assert!(
            s.contains(&32) && s.contains(&33),
            "libc's own signals pass exec too"
        );
        for sig in [libc::SIGKILL, libc::SIGSTOP] {
            assert!(!s.contains(&sig), "{sig} listed");
        }
    }

    /// SigIgn of a `cat /proc/self/status` started with or without the hook.
    fn child_sig_ign(hook: bool) -> u64 {
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/status");
        if hook {
            let creds = ChildCreds {
                bounding_to_drop: Vec::new(),
                switch_to: None,
                clear_caps: false,
                parent_death_signal: None,
                parent: std::process::id() as i32,
                default_signals: catchable_signals(),
            };
            install_child_hardening(&mut cmd, creds);
        }
        let out = cmd.output().expect("cat");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .expect("SigIgn line");
        u64::from_str_radix(hex.trim(), 16).expect("hex")
    }

    #[test]
    fn an_ignored_signal_is_not_passed_on_to_the_child() {
        // SIGURG: its default action is to ignore, so ignoring it here for a
        // moment changes nothing for the other tests of this process.
        let bit = 1u64 << (libc::SIGURG - 1);
        // SAFETY: setting a disposition to SIG_IGN, restored below.
        let old = unsafe { libc::signal(libc::SIGURG, libc::SIG_IGN) };
        let (without, with) = (child_sig_ign(false), child_sig_ign(true));
        // SAFETY: restores the disposition saved above.
        unsafe { libc::signal(libc::SIGURG, old) };
        assert_ne!(without & bit, 0, "the test's own setup: {without:x}");
        assert_eq!(with & bit, 0, "SigIgn {with:x}");
    }
}
