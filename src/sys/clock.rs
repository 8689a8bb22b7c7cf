//! `CLOCK_BOOTTIME`, the clock lease deadlines are measured on, and the wall
//! clock, for what is compared with other machines' clocks (vote times).

/// Now on `CLOCK_BOOTTIME`: like the monotonic clock, but it also counts
/// time the system spent suspended, so a lease deadline measured on it
/// passes during a suspend as it does for the other hosts.
pub(crate) fn boot_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Now on the wall clock, in Unix milliseconds (0 before 1970).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
