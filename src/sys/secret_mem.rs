//! Memory for secrets: `memfd_secret` mappings (with an mlocked anonymous
//! fallback) and the allocator that wipes every block it frees.

use super::cvt;
use std::io;
use std::ptr::NonNull;

/// Which kind of memory backs a secret mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretMemKind {
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
pub(crate) struct SecretMapping {
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
pub(crate) struct SecretMemFallback {
    /// The step that failed (`memfd_secret`, `ftruncate`, `mmap`).
    pub(crate) step: &'static str,
    /// The kernel's answer.
    pub(crate) error: String,
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
    pub(crate) fn new(min_len: usize) -> io::Result<(Self, Option<SecretMemFallback>)> {
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
    pub(crate) fn kind(&self) -> SecretMemKind {
        self.kind
    }

    /// Size of the mapping in bytes (a whole number of pages).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start address, for tests that look the mapping up in `/proc/self/maps`.
    #[cfg(test)]
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The whole mapping.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at creation), mapped
        // bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole mapping, writable.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
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

/// Whether `memfd_secret` works here (for `check`): tries it and closes the fd.
pub(crate) fn memfd_secret_available() -> io::Result<()> {
    memfd_secret().map(drop)
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
