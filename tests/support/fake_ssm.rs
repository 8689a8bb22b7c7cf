//! A stand-in for the SSM endpoint that gives one crafted answer to every request (a broken
//! proxy, a tampered path), for the attack tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What a [`FakeSsm`] answers to every request.
#[derive(Clone)]
pub enum FakeAnswer {
    /// A complete answer: status, body, and whether it is sent chunked (no Content-Length).
    Body {
        status: u16,
        body: Arc<Vec<u8>>,
        chunked: bool,
    },
    /// Headers announcing `len` bytes and the first `head` bytes of the body, then nothing
    /// more (a stalled proxy).
    Stall { head: Vec<u8>, len: usize },
}

/// A GetParameter answer (`application/x-amz-json-1.1`) for a SecureString whose `Value`
/// member holds `value` as it appears between the quotes (already escaped), followed by
/// `extra` members (e.g. `,"X":[...]`) and `trailer` after the envelope.
pub fn get_parameter_answer(name: &str, value: &[u8], extra: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "{{\"Parameter\":{{\"ARN\":\"arn:aws:ssm:us-east-1:123456789012:parameter{name}\",\"DataType\":\"text\",\"LastModifiedDate\":1.7E9,\"Name\":\"{name}\",\"Type\":\"SecureString\",\"Value\":\""
    )
    .into_bytes();
    b.extend_from_slice(value);
    b.extend_from_slice(b"\",\"Version\":1");
    b.extend_from_slice(extra);
    b.extend_from_slice(b"}}");
    b.extend_from_slice(trailer);
    b
}

/// A stand-in for the SSM endpoint (a broken proxy, a tampered path) that gives the same
/// crafted answer to every request, on a loopback port. HTTP/1.1 with keep-alive, as the
/// SDK speaks it; stops when dropped.
pub struct FakeSsm {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Requests received so far.
    pub requests: Arc<AtomicU64>,
}

impl FakeSsm {
    pub fn start(answer: FakeAnswer) -> FakeSsm {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind fake SSM");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop: Arc<AtomicBool> = Arc::default();
        let requests: Arc<AtomicU64> = Arc::default();
        let (st, rq) = (stop.clone(), requests.clone());
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => {
                        let (a, st, rq) = (answer.clone(), st.clone(), rq.clone());
                        thread::spawn(move || serve_fake(conn, &a, &st, &rq));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeSsm {
            port,
            stop,
            requests,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeSsm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request (headers, then Content-Length bytes); false at EOF.
fn read_fake_request(conn: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).is_ok()
}

fn serve_fake(mut conn: TcpStream, answer: &FakeAnswer, stop: &AtomicBool, requests: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    while read_fake_request(&mut conn) {
        requests.fetch_add(1, Ordering::SeqCst);
        let ok = match answer {
            FakeAnswer::Body {
                status,
                body,
                chunked,
            } => {
                let framing = if *chunked {
                    "transfer-encoding: chunked".to_string()
                } else {
                    format!("content-length: {}", body.len())
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: 11111111-2222-3333-4444-555555555555\r\n{framing}\r\n\r\n"
                );
                conn.write_all(head.as_bytes()).is_ok()
                    && if *chunked {
                        body.chunks(1 << 20).all(|c| {
                            conn.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                                .is_ok()
                                && conn.write_all(c).is_ok()
                                && conn.write_all(b"\r\n").is_ok()
                        }) && conn.write_all(b"0\r\n\r\n").is_ok()
                    } else {
                        conn.write_all(body).is_ok()
                    }
            }
            FakeAnswer::Stall { head, len } => {
                let h = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: 11111111-2222-3333-4444-555555555555\r\ncontent-length: {len}\r\n\r\n"
                );
                let _ = conn.write_all(h.as_bytes());
                let _ = conn.write_all(head);
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(50));
                }
                false
            }
        };
        if !ok {
            return;
        }
    }
}
