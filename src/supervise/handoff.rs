//! The hand-offs of one run: each on its own thread ([`crate::deliver`]
//! does the work), reported back as an [`Event::Delivery`], and logged
//! with one audit line per outcome.

use std::sync::mpsc::Sender;
use std::thread;

use super::{Event, KeyJob, SuperviseError};
use crate::config::Config;
use crate::deliver::{
    Canceller, DeliverError, Exposure, Next, Outcome, Pending, ReaderPolicy, DRAIN_BOUND,
};
use crate::notify::Notifier;
use crate::procfs::{self, PipeHolder};
use crate::slot::ArmedFifo;

/// A hand-off under way.
pub(super) struct Delivering {
    pub(super) canceller: Canceller,
    pub(super) inode: u64,
}

/// Starts the hand-off of `armed` on its own thread, and tells systemd that
/// we wait for the node.
pub(super) fn start_delivery(
    job: &KeyJob,
    armed: ArmedFifo,
    policy: &ReaderPolicy,
    next: Next,
    tx: &Sender<Event>,
    notifier: &Notifier,
) -> Delivering {
    notifier.status("waiting for the node to read the key");
    let pending = Pending::new(armed, policy);
    let d = Delivering {
        canceller: pending.canceller(),
        inode: pending.inode(),
    };
    let (slot, key, policy, tx) = (
        job.slot.clone(),
        job.key.clone(),
        policy.clone(),
        tx.clone(),
    );
    thread::Builder::new()
        .name("deliver".into())
        .spawn(move || {
            let r = pending.run(&slot, &key, &policy, next);
            let _ = tx.send(Event::Delivery(r));
        })
        .expect("spawn delivery thread");
    d
}

fn holders_text(h: &[procfs::PipeHolder]) -> String {
    h.iter()
        .map(|h| {
            format!(
                "pid {} uid {} exe {}",
                h.pid,
                h.euid(),
                // Quoted: the path is the other process's to choose.
                h.exe
                    .as_deref()
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Logs a hand-off's outcome (one audit line per outcome). Returns the
/// error that must end the run, if any: a delivery failure, or a stranger on
/// the pipe after the key was written.
pub(super) fn log_outcome(
    r: Result<Outcome, DeliverError>,
) -> (Option<Outcome>, Option<SuperviseError>) {
    let o = match r {
        Ok(o) => {
            count(&o);
            o
        }
        Err(e) => {
            tracing::error!(event = "delivery_failed", error = %e, "key delivery failed");
            return (None, Some(e.into()));
        }
    };
    match &o {
        Outcome::Delivered {
            reader, latency, ..
        } => tracing::info!(
            event = "delivered",
            pid = reader.pid.0,
            uid = reader.euid(),
            exe = %reader.exe.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            latency_us = latency.as_micros() as u64,
            "key was read from named pipe by the node"
        ),
        Outcome::Refused {
            holders, reason, ..
        } => {
            tracing::error!(event = "refused_reader", holders = %holders_text(holders), reason = %reason, "refused to hand the key over: nothing was written")
        }
        Outcome::NotRead { reader, reason, .. } => {
            tracing::warn!(
                event = "not_read",
                pid = reader.pid.0,
                reason,
                "the node did not take the key"
            )
        }
        Outcome::Exposed {
            reader,
            exposure,
            pulled_back,
        } => {
            let text = exposure_text(reader, exposure);
            tracing::error!(event = "key_exposed", detail = %text, pulled_back, "KEY MAY BE EXPOSED: rotate the consensus key");
            return (None, Some(SuperviseError::Exposed(text)));
        }
        Outcome::Cancelled => {}
    }
    (Some(o), None)
}

/// What an exposure was, for the log line and the exit error.
fn exposure_text(reader: &PipeHolder, e: &Exposure) -> String {
    let pid = reader.pid;
    match e {
        Exposure::Strangers(s) => format!(
            "after the key was written to pid {pid}, the pipe was also held by {}",
            holders_text(s)
        ),
        Exposure::ReaderStopped => format!(
            "the node (pid {pid}) was stopped while the key was in its pipe: whoever stopped it could copy the key through /proc/{pid}/fd"
        ),
        Exposure::Uninspectable(e) => format!(
            "while the key written to pid {pid} was in its pipe, or after: {e}"
        ),
        Exposure::NotDrained => format!(
            "the node (pid {pid}) held the key's pipe for {DRAIN_BOUND:?} without reading the key, which sat there for anyone who can reach its fds"
        ),
    }
}

/// Counts a hand-off's outcome in the metrics.
fn count(o: &Outcome) {
    use crate::metrics::{delivery, DeliveryOutcome as D};
    match o {
        Outcome::Delivered { latency, .. } => delivery(D::Delivered, Some(*latency)),
        Outcome::Refused { .. } => delivery(D::Refused, None),
        Outcome::NotRead { .. } => delivery(D::NotRead, None),
        Outcome::Exposed { .. } => delivery(D::Exposed, None),
        Outcome::Cancelled => {}
    }
}

/// What follows a delivery at the key path.
pub(super) fn next_mode(cfg: &Config) -> Next {
    if cfg.always_armed {
        Next::Fifo
    } else {
        Next::Stripped
    }
}
