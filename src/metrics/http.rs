//! The `/metrics` endpoint: one thread, blocked in `poll` (no timer while no
//! connection is open: an unscraped process never wakes for it), one request
//! per connection, answered and closed.
//!
//! This runs inside the process that holds the key, so it parses as little
//! as it can: the request line and whether an `Accept` header asks for
//! OpenMetrics, from at most 8 KiB. Each connection has 2 s *in all* (read,
//! answer, write): a client trickling bytes is cut off like a silent one.
//! Connections are served side by side, non-blocking, at most
//! [`MAX_CONNS`] at once; one more closes the oldest (a scraper sends its
//! request at once, so the oldest open connection is the one least likely
//! to be a scraper). It only ever answers with the encoded registry.
//!
//! A port that cannot be bound never stops the run (monitoring must not
//! stop signing): the error is logged, the `metrics_endpoint_up` gauge says
//! so, and the bind is retried every [`RETRY`] until it works.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use super::format::to_prometheus_text;
use super::settings::MetricsError;

const MAX_REQUEST: usize = 8192;
/// The whole life of one connection, from `accept` to close.
pub(super) const DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once (each holds at most 8 KiB plus its answer).
pub(super) const MAX_CONNS: usize = 32;
/// Between two binds of an address that could not be bound.
pub(super) const RETRY: Duration = Duration::from_secs(5);

/// Binds the endpoint (a non-loopback address was allowed by the settings).
pub(super) fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    // std sets SOCK_CLOEXEC: the child never inherits the socket.
    let l = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(l)
}

/// Serves `encode()` (OpenMetrics text) at `addr` from its own thread. If
/// `first` (the bind done at start) failed, that thread retries the bind
/// until it works; `up` is told each change (true once serving).
pub(super) fn start(
    addr: SocketAddr,
    first: Result<TcpListener, MetricsError>,
    up: impl Fn(bool) + Send + 'static,
    encode: impl Fn() -> String + Send + 'static,
) -> std::io::Result<()> {
    let mut last = match first {
        Ok(l) => return spawn(move || serve(l, &encode)),
        Err(e) => {
            report_down(addr, &e);
            up(false);
            e.to_string()
        }
    };
    spawn(move || loop {
        std::thread::sleep(RETRY);
        match bind(addr) {
            Ok(l) => {
                tracing::info!(event = "metrics_endpoint", addr = %addr, "serving metrics at http://{addr}/metrics (the address is free again)");
                up(true);
                serve(l, &encode);
            }
            // The same error again is no news: one line per change.
            Err(e) if e.to_string() == last => {}
            Err(e) => {
                report_down(addr, &e);
                last = e.to_string();
            }
        }
    })
}

fn spawn(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(f)
        .map(drop)
}

fn report_down(addr: SocketAddr, e: &MetricsError) {
    tracing::error!(event = "metrics_endpoint_down", addr = %addr, error = %e, "the metrics endpoint is not serving; the run goes on without it (the textfile, if set, says metrics_endpoint_up 0). Retrying every {}s: free {addr} or set SSM_COSMOVISOR_METRICS_ADDR to a free port and restart at a convenient time", RETRY.as_secs());
}

/// One open connection: reading its request, then writing its answer.
struct Conn {
    s: TcpStream,
    deadline: Instant,
    head: Vec<u8>,
    /// The answer and how much of it is written (once the request is in).
    out: Option<(Vec<u8>, usize)>,
}

/// Whether a connection is still open after a step.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Open,
    Done,
}

/// The serving loop: never returns.
fn serve(l: TcpListener, encode: &impl Fn() -> String) -> ! {
    let mut conns: VecDeque<Conn> = VecDeque::new();
    loop {
        let now = Instant::now();
        // Past its deadline: dropped, so closed, whatever it was doing.
        conns.retain(|c| c.deadline > now);
        let timeout = conns
            .iter()
            .map(|c| c.deadline - now)
            .min()
            .map(|d| Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()) + 1,
            });
        let (accept, ready) = {
            let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&l, PollFlags::IN))
                .chain(conns.iter().map(|c| {
                    let want = if c.out.is_some() {
                        PollFlags::OUT
                    } else {
                        PollFlags::IN
                    };
                    PollFd::new(&c.s, want)
                }))
                .collect();
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready: Vec<bool> = fds[1..].iter().map(|f| !f.revents().is_empty()).collect();
            (!fds[0].revents().is_empty(), ready)
        };
        let mut i = 0;
        conns.retain_mut(|c| {
            let r = ready[i];
            i += 1;
            !r || step(c, encode) == Step::Open
        });
        if accept {
            accept_all(&l, &mut conns);
        }
    }
}

/// Takes every pending connection; past [`MAX_CONNS`] the oldest is closed.
fn accept_all(l: &TcpListener, conns: &mut VecDeque<Conn>) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                if s.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNS {
                    conns.pop_front();
                }
                conns.push_back(Conn {
                    s,
                    deadline: Instant::now() + DEADLINE,
                    head: Vec::new(),
                    out: None,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EMFILE and the like: do not spin on it.
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
    }
}

/// Reads what has arrived, answers once the request is in, writes what the
/// socket takes; never blocks.
fn step(c: &mut Conn, encode: &impl Fn() -> String) -> Step {
    if c.out.is_none() {
        let mut buf = [0u8; 2048];
        let room = MAX_REQUEST - c.head.len();
        match c.s.read(&mut buf[..room.min(2048)]) {
            Ok(0) => {}
            Ok(n) => {
                c.head.extend_from_slice(&buf[..n]);
                let complete = c.head.windows(4).any(|w| w == b"\r\n\r\n");
                if !complete && c.head.len() < MAX_REQUEST {
                    return Step::Open;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return Step::Open
            }
            Err(_) => return Step::Done,
        }
        let head = String::from_utf8_lossy(&c.head);
        c.out = Some((answer(&head, encode), 0));
    }
    let Some((out, done)) = &mut c.out else {
        return Step::Done;
    };
    while *done < out.len() {
        match c.s.write(&out[*done..]) {
            Ok(0) => return Step::Done,
            Ok(n) => *done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return Step::Open
            }
            Err(_) => return Step::Done,
        }
    }
    Step::Done
}

/// A parsed request: what to answer.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { openmetrics: bool },
    NotFound,
    BadMethod,
    Bad,
}

fn parse(head: &str) -> Request {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    if method != "GET" {
        return Request::BadMethod;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Request::NotFound;
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    Request::Metrics { openmetrics }
}

/// The whole answer (head and body) to the request `head`.
fn answer(head: &str, encode: &impl Fn() -> String) -> Vec<u8> {
    let (status, ctype, body) = match parse(head) {
        Request::Metrics { openmetrics: true } => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(),
        ),
        Request::Metrics { openmetrics: false } => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            to_prometheus_text(&encode()),
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n".into(),
        ),
        Request::BadMethod => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
        Request::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;

    const TEXT: &str = "# TYPE a counter\na_total 1\n# EOF\n";

    #[test]
    fn only_get_metrics_is_served_and_accept_picks_the_format() {
        assert_eq!(
            parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { openmetrics: false }
        );
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"),
            Request::Metrics { openmetrics: true }
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Request::BadMethod);
        assert_eq!(parse("garbage"), Request::Bad);
        assert_eq!(parse(""), Request::Bad);
    }

    /// A served endpoint on a free loopback port.
    fn served() -> SocketAddr {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        start(addr, Ok(l), |_| {}, || TEXT.to_string()).unwrap();
        addr
    }

    fn scrape(addr: SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    /// Reads until the server closes (EOF or reset); what was read.
    fn until_closed(c: &mut TcpStream) -> Vec<u8> {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => panic!("never closed"),
                Err(_) => return got,
            }
        }
    }

    #[test]
    fn serves_over_a_real_socket() {
        let addr = served();
        let out = scrape(addr);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.ends_with("# TYPE a_total counter\na_total 1\n"),
            "{out}"
        );
        // A taken port is an error naming the address.
        let e = bind(addr).unwrap_err().to_string();
        assert!(
            e.contains("SSM_COSMOVISOR_METRICS_ADDR") && e.contains("another process"),
            "{e}"
        );
    }

    #[test]
    fn a_trickling_client_is_cut_off_and_does_not_hold_up_a_scrape() {
        let addr = served();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let trickle = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut t = trickle;
            // A header byte every 500 ms: each read gets something.
            while t.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
        // Its request never completed: closed at the deadline, unanswered.
        assert_eq!(until_closed(&mut slow), b"");
    }

    #[test]
    fn idle_connections_past_the_limit_close_the_oldest_and_a_scrape_is_served() {
        let addr = served();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // The scraper is the newest: it pushes out the oldest idle one.
        assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
        assert_eq!(until_closed(&mut idle[0]), b"");
        // 300 more, then a scrape: still served.
        let more: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
        drop(more);
    }

    #[test]
    fn a_taken_port_is_reported_down_then_served_once_free() {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap();
        let state = Arc::new(AtomicU8::new(9));
        let s = state.clone();
        start(
            addr,
            bind(addr),
            move |up| s.store(u8::from(up), Ordering::SeqCst),
            || TEXT.to_string(),
        )
        .expect("a taken port is no error of the start");
        assert_eq!(state.load(Ordering::SeqCst), 0);
        drop(squatter);
        let until = Instant::now() + RETRY * 6;
        while state.load(Ordering::SeqCst) != 1 {
            assert!(Instant::now() < until, "never bound");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
    }
}
