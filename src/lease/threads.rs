//! The lease's threads: the holder's renewals ([`Keeper`]) and the
//! standby's wait ([`Waiter`]). Both report to the supervisor through a
//! callback, so this module knows nothing about supervision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{boot_time, Held, LeaseClient, LeaseError, Record, StateFile};

/// A stop flag a thread can sleep on: it wakes at the timeout or at once when
/// stopped, with no polling (an idle holder must not wake every few ms).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Stop {
    /// Sets the flag and wakes the sleeper.
    pub(crate) fn stop(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.notify_all();
    }

    /// Whether it was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`; true if stopped.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let (m, c) = &*self.0;
        let end = Instant::now() + d;
        let mut stopped = m.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= end {
                break;
            }
            stopped = c
                .wait_timeout(stopped, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}

/// What a lease thread tells the supervisor.
#[derive(Debug)]
pub(crate) enum LeaseNews {
    /// The standby got the lease.
    Acquired,
    /// The holder could not keep the lease: stop the node now.
    Lost(String),
    /// The standby cannot wait for the lease (configuration, permissions).
    Failed(String),
}

/// A renewal thread that could not be started; the lease is handed back so
/// that it can still be released.
pub(crate) struct NotStarted {
    pub(crate) error: std::io::Error,
    pub(crate) client: LeaseClient,
    pub(crate) held: Held,
}

/// The renewal thread of a held lease.
pub(crate) struct Keeper {
    stop: Stop,
    done: std::sync::mpsc::Receiver<(LeaseClient, Held, bool)>,
    /// How long `stop` waits for the thread (it may be inside a request).
    patience: Duration,
}

impl Keeper {
    /// Starts renewing; `news` is called once if the lease is lost. The
    /// supervisor enforces [`Held::deadline`] itself as well: this thread
    /// may be stuck in a request when it passes.
    pub(crate) fn start(
        client: LeaseClient,
        held: Held,
        state: StateFile,
        news: Box<dyn Fn(LeaseNews) + Send>,
    ) -> Result<Keeper, Box<NotStarted>> {
        let stop = Stop::default();
        let flag = stop.clone();
        let patience = client.settings.renew_every() + Duration::from_secs(1);
        let (tx, done) = std::sync::mpsc::channel();
        // The lease goes to the thread once it runs: if it cannot be
        // started, the caller still has it to release.
        let (give, take) = std::sync::mpsc::channel::<(LeaseClient, Held)>();
        let spawned = if crate::failpoint_hit!("keeper-start") {
            Err(std::io::Error::other("failpoint keeper-start"))
        } else {
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || {
                let Ok((client, mut held)) = take.recv() else {
                    return;
                };
                let every = client.settings.renew_every();
                let retry = (every / 4).max(Duration::from_millis(200));
                // Due one period after the last confirmed write, which may be
                // long past (a slow fetch): then at once.
                let mut next = held.sent() + every;
                let mut last_error: Option<String> = None;
                let mut lost = false;
                loop {
                    let now = boot_time();
                    let deadline = held.deadline.get();
                    if now >= deadline {
                        lost = true;
                        news(LeaseNews::Lost(format!(
                            "no renewal of lease {} in table {} was confirmed for {:?} (last error: {})",
                            client.settings.name,
                            client.settings.table,
                            client.settings.keep_for(),
                            last_error.as_deref().unwrap_or("none")
                        )));
                        break;
                    }
                    if flag.sleep(next.min(deadline).saturating_sub(now)) {
                        break;
                    }
                    if boot_time() < next {
                        continue;
                    }
                    crate::failpoint_hang!("lease-renew-hangs");
                    let local = || {
                        state.read().unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the sign state; carrying the last known");
                            None
                        })
                    };
                    match client.renew(&mut held, local) {
                        Ok(()) => {
                            tracing::debug!(state = %held.state, "lease renewed");
                            last_error = None;
                            next = held.sent() + every;
                        }
                        Err(e @ LeaseError::Lost { .. }) => {
                            lost = true;
                            news(LeaseNews::Lost(e.to_string()));
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(event = "lease_renew_failed", error = %e, remaining_ms = held.deadline.get().saturating_sub(boot_time()).as_millis() as u64, "lease renewal failed; retrying");
                            last_error = Some(e.to_string());
                            next = boot_time() + retry;
                        }
                    }
                }
                let _ = tx.send((client, held, lost));
            })
            .map(drop)
        };
        if let Err(error) = spawned {
            return Err(Box::new(NotStarted {
                error,
                client,
                held,
            }));
        }
        // The thread waits for this; its receiver lives as long as it does.
        let _ = give.send((client, held));
        Ok(Keeper {
            stop,
            done,
            patience,
        })
    }

    /// Stops renewing; returns the client and the lease, unless it was lost,
    /// or the thread died or is stuck (then the lease simply expires).
    pub(crate) fn stop(self) -> Option<(LeaseClient, Held)> {
        self.stop.stop();
        match self.done.recv_timeout(self.patience) {
            Ok((c, h, false)) if boot_time() < h.deadline.get() => Some((c, h)),
            Ok(_) => None,
            Err(_) => {
                tracing::warn!(
                    "the lease thread did not stop in time; the lease will expire by itself"
                );
                None
            }
        }
    }
}

/// The thread a standby waits for the lease in.
pub(crate) struct Waiter {
    cancel: Stop,
    done: std::sync::mpsc::Receiver<Result<(LeaseClient, Held), LeaseError>>,
    patience: Duration,
}

impl Waiter {
    /// Starts waiting; `news` is called with [`LeaseNews::Acquired`] once the
    /// lease is ours.
    pub(crate) fn start(
        client: LeaseClient,
        state: StateFile,
        news: Box<dyn Fn(LeaseNews) + Send>,
    ) -> std::io::Result<Waiter> {
        let cancel = Stop::default();
        let flag = cancel.clone();
        // A read and a take-over write may be under way.
        let patience = client.settings.renew_every() * 2 + Duration::from_secs(1);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lease-wait".into())
            .spawn(move || {
                // The supervisor's signals are blocked already: this thread
                // is started after its signal thread, and inherits the mask.
                let r = state
                    .read()
                    .and_then(|local| client.acquire(&flag, local, log_waiting));
                let r = match r {
                    Ok(h) => {
                        news(LeaseNews::Acquired);
                        Ok((client, h))
                    }
                    Err(e) => {
                        if !matches!(e, LeaseError::Cancelled) {
                            news(LeaseNews::Failed(e.to_string()));
                        }
                        Err(e)
                    }
                };
                let _ = tx.send(r);
            })?;
        Ok(Waiter {
            cancel,
            done,
            patience,
        })
    }

    /// Stops waiting; returns the lease if it was acquired meanwhile.
    pub(crate) fn finish(self) -> Result<(LeaseClient, Held), LeaseError> {
        self.cancel.stop();
        self.done
            .recv_timeout(self.patience)
            .unwrap_or(Err(LeaseError::Cancelled))
    }
}

/// Logs who holds the lease we wait for (called when the holder changes).
pub(crate) fn log_waiting(r: &Record) {
    tracing::info!(
        event = "lease_waiting",
        holder = %r.holder_id,
        duration_ms = r.duration.as_millis() as u64,
        state = %r.state,
        "the lease is held by another host; standing by"
    );
}
