//! The `/metrics` endpoint: one thread blocked in `accept` (no timer, no
//! poll: an unscraped process never wakes for it), one request per
//! connection, answered and closed.
//!
//! This runs inside the process that holds the key, so it parses as little
//! as it can: the request line and whether an `Accept` header asks for
//! OpenMetrics, from at most 8 KiB read within a 2 s timeout. It only ever
//! answers with the encoded registry.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::format::to_prometheus_text;
use super::settings::MetricsError;

const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the endpoint (a non-loopback address was allowed by the settings).
pub(super) fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    // std sets SOCK_CLOEXEC: the child never inherits the socket.
    TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `encode()` (OpenMetrics text) on `l` from its own thread.
pub(super) fn serve(
    l: TcpListener,
    encode: impl Fn() -> String + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &encode) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    // EMFILE and the like: do not spin on it.
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
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

fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    while n < buf.len() {
        let got = s.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn answer(mut s: TcpStream, encode: &impl Fn() -> String) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut s)?;
    let (status, ctype, body) = match parse(&head) {
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
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn serves_over_a_real_socket() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, || "# TYPE a counter\na_total 1\n# EOF\n".to_string()).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
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
}
