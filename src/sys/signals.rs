//! Synchronous signal handling: block signals in a thread and wait for them.

use std::io;

/// Blocks `signals` in the calling thread (and so in every thread spawned
/// after it), so they can be received synchronously with [`wait_signal`].
pub(crate) fn block_signals(signals: &[i32]) -> io::Result<()> {
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
pub(crate) fn wait_signal(signals: &[i32]) -> io::Result<i32> {
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
