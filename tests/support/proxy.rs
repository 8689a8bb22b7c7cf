//! A fault proxy between one "host" and moto: an HTTP/1.1-aware relay, so a fault applies
//! to whole requests and replies (a keep-alive connection carries many of them) and the
//! proxy can answer a request itself.
//!
//! Faults ([`Fault`]), switchable at run time with [`Relay::set_fault`]:
//! - `Refuse`: the listening socket is closed (connects get RST) and open connections are
//!   broken;
//! - `Blackhole`: connections are accepted and requests read, but nothing reaches moto and
//!   nothing comes back;
//! - `DropReplies`: requests reach moto (writes land), their replies are swallowed;
//! - `Delay(d)`: each request is held `d` before it is forwarded;
//! - `KmsDenied`: SSM `GetParameter` is answered by the proxy with the 400
//!   `AccessDeniedException` SSM returns when KMS refuses `kms:Decrypt`; everything else
//!   (DynamoDB) passes.
//!
//! Every request is recorded ([`ProxyRecord`]: operation, what the proxy did, the reply's
//! status, and for a DynamoDB `PutItem` the lease record it carried), for timelines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay everything.
    Pass,
    /// Connection refused; open connections broken.
    Refuse,
    /// Accept and read, never forward, never answer.
    Blackhole,
    /// Forward requests (they land), swallow the replies.
    DropReplies,
    /// Hold each request this long before forwarding it.
    Delay(Duration),
    /// Answer SSM GetParameter with a KMS access-denied error; pass the rest.
    KmsDenied,
}

impl Fault {
    /// Short name for logs and summaries.
    pub fn label(&self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Refuse => "refuse".into(),
            Fault::Blackhole => "blackhole".into(),
            Fault::DropReplies => "drop_replies".into(),
            Fault::Delay(d) => format!("delay_{}ms", d.as_millis()),
            Fault::KmsDenied => "kms_denied".into(),
        }
    }
}

/// One request as the proxy handled it.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    /// When the request had been read (µs since the epoch).
    pub unix_us: u64,
    /// `X-Amz-Target` without the service prefix (`PutItem`, `GetParameter`, …).
    pub op: String,
    /// `passed`, `blackholed`, `reply_dropped`, `kms_denied`, `refused`.
    pub action: &'static str,
    /// Status of moto's reply, when there was one.
    pub status: Option<u16>,
    /// For PutItem: the record's holder, released flag and carried height.
    pub put: Option<(String, bool, i64)>,
}

/// The body SSM returns when the parameter's KMS key refuses the caller `kms:Decrypt`.
const KMS_DENIED_BODY: &str = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/validator/chaos is not authorized to perform: kms:Decrypt on resource: arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000 because no identity-based policy allows the kms:Decrypt action (Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)"}"#;

struct Shared {
    upstream_port: u16,
    fault: Mutex<Fault>,
    /// Open streams (both sides) by connection id, broken on Refuse.
    conns: Mutex<Vec<(u64, TcpStream)>>,
    next_conn: AtomicU64,
    /// The accept thread closed its listener (Refuse in force).
    listener_closed: AtomicBool,
    /// The Relay was dropped: the accept thread ends.
    gone: AtomicBool,
    swallow_marker: Mutex<Option<Vec<u8>>>,
    records: Mutex<Vec<ProxyRecord>>,
    drop_replies: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Shared {
    /// The fault in force: the `drop_replies` switch overrides a passing proxy.
    fn fault(&self) -> Fault {
        let f = *self.fault.lock().unwrap();
        if f == Fault::Pass && self.drop_replies.load(Ordering::SeqCst) {
            Fault::DropReplies
        } else {
            f
        }
    }

    fn record(&self, r: ProxyRecord) {
        self.records.lock().unwrap().push(r);
    }

    fn break_connections(&self) {
        for (_, c) in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn register(&self, id: u64, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.conns.lock().unwrap().push((id, c));
        }
    }

    /// Forgets a finished connection's streams (their fds close here).
    fn forget(&self, id: u64) {
        self.conns.lock().unwrap().retain(|(i, _)| *i != id);
    }
}

/// The fault proxy. Point one process at it with `AWS_ENDPOINT_URL` (or
/// `AWS_ENDPOINT_URL_<SERVICE>`).
pub struct Relay {
    port: u16,
    shared: Arc<Shared>,
    /// While set, replies from moto are swallowed (the requests still land).
    pub drop_replies: Arc<AtomicBool>,
    /// Replies swallowed so far.
    pub dropped: Arc<AtomicU64>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Relay {
    /// Starts relaying a fresh loopback port to `upstream_port`.
    pub fn start(upstream_port: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = l.local_addr().expect("proxy addr").port();
        let drop_replies: Arc<AtomicBool> = Arc::default();
        let dropped: Arc<AtomicU64> = Arc::default();
        let shared = Arc::new(Shared {
            upstream_port,
            fault: Mutex::new(Fault::Pass),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
            listener_closed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            swallow_marker: Mutex::default(),
            records: Mutex::default(),
            drop_replies: drop_replies.clone(),
            dropped: dropped.clone(),
        });
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(Some(l), port, sh))
            .expect("proxy thread");
        Relay {
            port,
            shared,
            drop_replies,
            dropped,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches the fault; `Refuse` returns once the port refuses connections.
    pub fn set_fault(&self, f: Fault) {
        *self.shared.fault.lock().unwrap() = f;
        match f {
            Fault::Refuse => {
                let closed = super::wait_for(
                    || self.shared.listener_closed.load(Ordering::SeqCst),
                    Duration::from_secs(10),
                );
                assert!(closed, "proxy {} did not close its listener", self.port);
                self.shared.break_connections();
            }
            _ => {
                // Rebinding the same port after a Refuse can take a few tries.
                super::wait_for(
                    || !self.shared.listener_closed.load(Ordering::SeqCst),
                    Duration::from_secs(10),
                );
            }
        }
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Refuses new connections and breaks the open ones (for good, unless
    /// [`Relay::set_fault`] says otherwise later).
    pub fn cut(&self) {
        self.set_fault(Fault::Refuse);
    }

    /// Swallows the reply to the next request containing `marker` (the request itself
    /// reaches moto), and everything after it on that connection.
    pub fn swallow_reply_to(&self, marker: &str) {
        *self.shared.swallow_marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// Every request handled so far.
    pub fn records(&self) -> Vec<ProxyRecord> {
        self.shared.records.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.gone.store(true, Ordering::SeqCst);
        self.shared.break_connections();
    }
}

/// Accepts while the fault allows it. Polls with a short timeout so a switch to Refuse
/// closes the socket promptly without a busy loop.
fn accept_loop(mut listener: Option<TcpListener>, port: u16, sh: Arc<Shared>) {
    while !sh.gone.load(Ordering::SeqCst) {
        let refusing = *sh.fault.lock().unwrap() == Fault::Refuse;
        if refusing {
            if listener.take().is_some() {
                sh.listener_closed.store(true, Ordering::SeqCst);
            }
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    sh.listener_closed.store(false, Ordering::SeqCst);
                    listener.insert(l)
                }
                Err(_) => {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let mut fds = [rustix::event::PollFd::new(l, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok((down, _)) = l.accept() else { continue };
        let sh = sh.clone();
        thread::spawn(move || {
            let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
            sh.register(id, &down);
            serve(down, id, &sh);
            sh.forget(id);
        });
    }
}

/// One HTTP message as read off the wire: the exact bytes and what we need from the head.
struct Message {
    raw: Vec<u8>,
    /// `X-Amz-Target` (requests).
    target: Option<String>,
    /// Status code (responses).
    status: Option<u16>,
    body: Vec<u8>,
    /// `Connection: close`, or a reply framed by the end of the stream.
    close: bool,
}

/// Reads one request or response. `Ok(None)`: the stream ended before a message began.
fn read_message<R: BufRead>(r: &mut R, response: bool) -> std::io::Result<Option<Message>> {
    let mut raw = Vec::new();
    let mut head_lines: Vec<String> = Vec::new();
    loop {
        let start = raw.len();
        if r.read_until(b'\n', &mut raw)? == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&raw[start..])
            .trim_end()
            .to_string();
        if line.is_empty() {
            // An interim 100 Continue: the real reply follows.
            if response && head_lines.first().is_some_and(|l| l.contains(" 100 ")) {
                head_lines.clear();
                continue;
            }
            break;
        }
        head_lines.push(line);
    }
    let header = |name: &str| {
        head_lines.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let status = if response {
        head_lines
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
    } else {
        None
    };
    let target = header("x-amz-target");
    let mut close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if chunked {
        loop {
            let start = raw.len();
            r.read_until(b'\n', &mut raw)?;
            let size_line = String::from_utf8_lossy(&raw[start..]).trim().to_string();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let s = raw.len();
                    if r.read_until(b'\n', &mut raw)? == 0 || raw[s..].trim_ascii().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
            raw.extend_from_slice(&chunk);
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0u8; n];
        r.read_exact(&mut body)?;
        raw.extend_from_slice(&body);
    } else if response && !matches!(status, Some(204 | 304)) {
        r.read_to_end(&mut body)?;
        raw.extend_from_slice(&body);
        close = true;
    }
    Ok(Some(Message {
        raw,
        target,
        status,
        body,
        close,
    }))
}

/// The lease record a DynamoDB PutItem carries: holder, released, height.
fn put_item_record(body: &[u8]) -> Option<(String, bool, i64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let item = v.get("Item")?;
    let holder = item.pointer("/holder/S")?.as_str()?.to_string();
    let released = item
        .pointer("/released/BOOL")
        .and_then(|b| b.as_bool())
        .unwrap_or(false);
    let height = item
        .pointer("/height/N")
        .and_then(|n| n.as_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    Some((holder, released, height))
}

fn kms_denied_reply() -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 00000000-0000-0000-0000-00000000c4a0\r\nx-amzn-ErrorType: AccessDeniedException\r\nContent-Length: {}\r\n\r\n{KMS_DENIED_BODY}",
        KMS_DENIED_BODY.len()
    )
    .into_bytes()
}

/// Reads until the client gives up (it timed out waiting for an answer that never comes).
fn drain(mut down: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(down.read(&mut buf), Ok(n) if n > 0) {}
}

/// Serves one client connection, one request at a time (the SDK does not pipeline).
fn serve(down: TcpStream, id: u64, sh: &Shared) {
    let Ok(read_half) = down.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut up: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut down = down;
    while let Ok(Some(req)) = read_message(&mut reader, false) {
        let unix_us = unix_us();
        let op = req
            .target
            .as_deref()
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| "?".into());
        let put = (op == "PutItem")
            .then(|| put_item_record(&req.body))
            .flatten();
        let rec = |action, status| ProxyRecord {
            unix_us,
            op: op.clone(),
            action,
            status,
            put: put.clone(),
        };
        let fault = sh.fault();
        match fault {
            Fault::Refuse => {
                sh.record(rec("refused", None));
                break;
            }
            Fault::Blackhole => {
                sh.record(rec("blackholed", None));
                drain(down);
                return;
            }
            Fault::KmsDenied if op == "GetParameter" => {
                sh.record(rec("kms_denied", Some(400)));
                if down.write_all(&kms_denied_reply()).is_err() {
                    break;
                }
                continue;
            }
            Fault::Delay(d) => thread::sleep(d),
            _ => {}
        }
        // The marked request's reply is swallowed.
        let marked = {
            let mut g = sh.swallow_marker.lock().unwrap();
            let hit = g
                .as_ref()
                .is_some_and(|m| req.raw.windows(m.len()).any(|w| w == m.as_slice()));
            if hit {
                *g = None;
            }
            hit
        };
        if up.is_none() {
            let Ok(s) = TcpStream::connect(("127.0.0.1", sh.upstream_port)) else {
                break;
            };
            let Ok(r) = s.try_clone() else { break };
            sh.register(id, &s);
            up = Some((s, BufReader::new(r)));
        }
        let (up_w, up_r) = up.as_mut().expect("connected above");
        if up_w.write_all(&req.raw).is_err() {
            break;
        }
        let reply = match read_message(up_r, true) {
            Ok(Some(m)) => m,
            _ => break,
        };
        // A fault switched on while moto answered applies to this reply too.
        let now = sh.fault();
        let swallow = marked
            || fault == Fault::DropReplies
            || matches!(now, Fault::DropReplies | Fault::Blackhole | Fault::Refuse);
        if swallow {
            sh.dropped.fetch_add(1, Ordering::SeqCst);
            sh.record(rec("reply_dropped", reply.status));
            drain(down);
            return;
        }
        sh.record(rec("passed", reply.status));
        if down.write_all(&reply.raw).is_err() || reply.close {
            break;
        }
    }
    let _ = down.shutdown(Shutdown::Both);
    if let Some((s, _)) = up {
        let _ = s.shutdown(Shutdown::Both);
    }
}
