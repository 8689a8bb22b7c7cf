//! Secret memory: the one buffer type that may hold key bytes, and a global
//! allocator that wipes every heap block when it is freed.

use std::fmt;
use std::io;

use secrecy::{ExposeSecret, ExposeSecretMut};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::sys::{SecretMapping, SecretMemFallback};

/// Largest value we accept: SSM's advanced tier stores at most 8 KiB.
pub(crate) const MAX_SECRET_LEN: usize = 8192;

/// A fixed-capacity byte buffer in secret memory (see `sys::SecretMemKind`).
///
/// It cannot be printed (`Debug` is redacted, no `Display`), cannot be cloned,
/// and is zeroed before its pages are unmapped. Reading it takes an explicit
/// [`ExposeSecret::expose_secret`], which makes every use easy to audit.
pub(crate) struct SecretBuf {
    map: SecretMapping,
    len: usize,
}

/// Raised when a secret does not fit or secret memory cannot be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    /// More bytes than the buffer was created for.
    #[error("secret is larger than {cap} bytes")]
    TooLarge {
        /// The buffer's capacity.
        cap: usize,
    },
    /// Neither memfd_secret nor locked memory could be mapped.
    #[error("cannot allocate secret memory: {0}")]
    Alloc(#[source] io::Error),
}

impl SecretBuf {
    /// An empty buffer able to hold `cap` bytes.
    pub(crate) fn with_capacity(cap: usize) -> Result<Self, SecretError> {
        let (map, fallback) = SecretMapping::new(cap).map_err(SecretError::Alloc)?;
        if let Some(SecretMemFallback { step, error }) = fallback {
            tracing::warn!(
                step,
                error = %error,
                "memfd_secret unavailable; key kept in mlocked memory excluded from core dumps"
            );
        }
        Ok(SecretBuf { map, len: 0 })
    }

    /// Copies `bytes` into a new buffer.
    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Self, SecretError> {
        let mut b = Self::with_capacity(bytes.len())?;
        b.extend_from_slice(bytes)?;
        Ok(b)
    }

    /// Appends bytes.
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), SecretError> {
        let end = self.len + bytes.len();
        if end > self.map.len() {
            return Err(SecretError::TooLarge {
                cap: self.map.len(),
            });
        }
        self.map.as_mut_slice()[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Lets `f` write into the unused capacity and returns how much it wrote,
    /// so encoders can produce output directly in secret memory.
    pub(crate) fn append_with<E>(
        &mut self,
        f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let spare = &mut self.map.as_mut_slice()[self.len..];
        let n = f(spare)?;
        assert!(
            n <= spare.len(),
            "append_with writer claimed more than it had"
        );
        self.len += n;
        Ok(n)
    }

    /// Number of bytes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Kind of memory behind the buffer.
    #[cfg(test)]
    pub(crate) fn mem_kind(&self) -> crate::sys::SecretMemKind {
        self.map.kind()
    }

    /// Address of the mapping (for `/proc/<pid>/maps` checks in tests).
    #[cfg(test)]
    pub(crate) fn mapping_addr(&self) -> usize {
        self.map.addr()
    }
}

impl ExposeSecret<[u8]> for SecretBuf {
    fn expose_secret(&self) -> &[u8] {
        &self.map.as_slice()[..self.len]
    }
}

impl ExposeSecretMut<[u8]> for SecretBuf {
    fn expose_secret_mut(&mut self) -> &mut [u8] {
        &mut self.map.as_mut_slice()[..self.len]
    }
}

impl Zeroize for SecretBuf {
    fn zeroize(&mut self) {
        self.map.as_mut_slice().zeroize();
        self.len = 0;
    }
}

// The mapping zeroes itself in its own Drop.
impl ZeroizeOnDrop for SecretBuf {}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretBuf([REDACTED {} bytes, {}])",
            self.len,
            self.map.kind()
        )
    }
}

/// A global allocator that zeroes every heap block when it is freed.
///
/// The AWS SDK copies the parameter value through HTTP, TLS and JSON buffers
/// we never see; wiping on free means those copies are gone once the SDK
/// drops them, instead of lingering in freed heap until reused. Measured: the
/// memory scan in `tests/e2e_hardening.rs` finds the key's base64 once without
/// it, never with it.
pub use crate::sys::ZeroizingAlloc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SecretMemKind;

    #[test]
    fn debug_is_redacted() {
        let b = SecretBuf::from_slice(b"super secret bytes").unwrap();
        let s = format!("{b:?}");
        assert!(!s.contains("super"), "{s}");
        assert!(s.contains("REDACTED 18 bytes"), "{s}");
    }

    #[test]
    fn capacity_is_enforced_and_append_works() {
        let mut b = SecretBuf::with_capacity(10).unwrap();
        // Capacity is rounded up to a page; filling past it must fail.
        let page = rustix::param::page_size();
        b.extend_from_slice(&vec![1u8; page]).unwrap();
        assert!(matches!(
            b.extend_from_slice(&[1]),
            Err(SecretError::TooLarge { .. })
        ));
        let mut c = SecretBuf::with_capacity(16).unwrap();
        let n = c
            .append_with(|spare| -> Result<usize, ()> {
                spare[..3].copy_from_slice(b"abc");
                Ok(3)
            })
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(c.expose_secret(), b"abc");
    }

    #[test]
    fn buffer_lives_in_secret_or_locked_memory() {
        let b = SecretBuf::from_slice(b"x").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let addr = format!("{:x}-", b.mapping_addr());
        let line = maps
            .lines()
            .find(|l| l.starts_with(&addr))
            .expect("mapping listed in /proc/self/maps");
        match b.mem_kind() {
            SecretMemKind::MemfdSecret => assert!(line.contains("secretmem"), "{line}"),
            SecretMemKind::LockedAnonymous => {
                let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
                let block: String = smaps
                    .split_inclusive('\n')
                    .skip_while(|l| !l.starts_with(&addr))
                    .take(30)
                    .collect();
                let locked = block.lines().find(|l| l.starts_with("Locked:")).unwrap();
                assert!(!locked.contains(" 0 kB"), "{locked}");
            }
        }
    }
}
