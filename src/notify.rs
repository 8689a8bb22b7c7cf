//! systemd's notify protocol (`sd_notify`): readiness, status lines, stopping
//! and watchdog pings over the datagram socket in `$NOTIFY_SOCKET`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to systemd's notify socket, or nothing when not under systemd.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    sock: Option<(UnixDatagram, SocketAddr)>,
}

/// The unit's watchdog timeout (`WATCHDOG_USEC`, when `WATCHDOG_PID` is
/// unset or names us).
pub(crate) fn watchdog_from_env() -> Option<Duration> {
    let pid_ok = std::env::var("WATCHDOG_PID")
        .map(|p| p == std::process::id().to_string())
        .unwrap_or(true);
    std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&us| us > 0 && pid_ok)
        .map(Duration::from_micros)
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`.
    pub(crate) fn from_env() -> Notifier {
        let sock = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            let addr = if let Some(abs) = s.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abs.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&s).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { sock }
    }

    /// Sends one notify message (`KEY=value` lines); errors are ignored, as
    /// systemd's own `sd_notify` callers do.
    pub(crate) fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.sock {
            let _ = sock.send_to_addr(msg.as_bytes(), addr);
        }
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A status line.
    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG_USEC=`: changes the unit's watchdog timeout from now on
    /// (systemd takes it from the main process under `NotifyAccess=main`).
    pub(crate) fn set_watchdog_timeout(&self, timeout: Duration) {
        self.send(&format!("WATCHDOG_USEC={}", timeout.as_micros()));
    }

    /// `WATCHDOG=1`.
    pub(crate) fn ping(&self) {
        self.send("WATCHDOG=1");
    }
}
