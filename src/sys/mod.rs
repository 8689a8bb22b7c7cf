//! The only place with `unsafe` and raw syscalls. Everything here is wrapped in
//! a safe function whose preconditions are stated next to the `unsafe` block.
//!
//! `rustix` covers most syscalls safely; what remains here is what it does not
//! offer (`memfd_secret`, raw capability and credential syscalls for the child
//! after `fork`) and the memory mapping behind the secret buffer.
//!
//! One file per concern: [`secret_mem`] (secret memory and the wiping
//! allocator), [`child`] (the child's setup after `fork`), [`process`] (this
//! process and its tasks), [`signals`], [`fs_ids`] (the node's filesystem ids,
//! used only through [`crate::identity`]), [`clock`]. Callers use the re-exports below.

mod child;
mod clock;
mod fs_ids;
mod process;
mod secret_mem;
mod signals;

pub(crate) use child::{catchable_signals, install_child_hardening, ChildCreds};
pub(crate) use clock::{boot_time, unix_ms};
pub(crate) use fs_ids::with_fs_ids;
pub(crate) use process::{
    harden_self, make_thread_realtime, page_out_own_executable, same_fd_table,
};
#[cfg(test)]
pub(crate) use secret_mem::SecretMemKind;
pub use secret_mem::ZeroizingAlloc;
pub(crate) use secret_mem::{memfd_secret_available, SecretMapping, SecretMemFallback};
pub(crate) use signals::{block_signals, wait_signal};

use std::io;

/// Turns a C-style return value (-1 with `errno` set) into an `io::Result`.
pub(crate) fn cvt<T: Into<i64> + Copy>(ret: T) -> io::Result<T> {
    if ret.into() == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
