//! Metrics as a scraper sees them: the textfile, the `/metrics` endpoint over
//! a plain TCP socket, and the text parsed by the official Python client's
//! parsers (`prometheus_client`, in the test venv), not by our own code.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::venv_python;

/// Which text format a parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromFormat {
    /// The classic Prometheus text format (0.0.4): node_exporter's textfile.
    Text,
    /// OpenMetrics 1.0.
    OpenMetrics,
}

/// Parsed metrics: sample values by name and labels, family types by name.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    pub types: BTreeMap<String, String>,
    pub raw: String,
}

impl Scrape {
    /// The value of sample `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// Like [`Scrape::get`], panicking with the text if absent.
    pub fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.raw))
    }

    /// Every sample name.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.samples.keys().map(|(n, _)| n.clone()).collect();
        v.dedup();
        v
    }
}

const PARSER: &str = r#"
import json, sys
fmt = sys.argv[1]
text = sys.stdin.read()
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}, "samples": []}
for fam in text_string_to_metric_families(text):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Parses `text` with the Python client's parser for `fmt`; panics (with
/// the text) if it does not parse.
pub fn parse_metrics(text: &str, fmt: PromFormat) -> Scrape {
    let mut child = Command::new(venv_python())
        .args(["-c", PARSER])
        .arg(match fmt {
            PromFormat::Text => "text",
            PromFormat::OpenMetrics => "openmetrics",
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("venv python (scripts/test installs prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {fmt:?} parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut s = Scrape {
        raw: text.to_string(),
        ..Default::default()
    };
    for (k, t) in v["types"].as_object().unwrap() {
        s.types.insert(k.clone(), t.as_str().unwrap().to_string());
    }
    for smp in v["samples"].as_array().unwrap() {
        let labels = smp[1]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let name = smp[0].as_str().unwrap().to_string();
        s.samples
            .insert((name, labels), smp[2].as_f64().unwrap_or(f64::NAN));
    }
    s
}

/// An HTTP answer: status line, content type, body.
#[derive(Debug, Clone)]
pub struct Http {
    pub status: String,
    pub content_type: String,
    pub body: String,
}

/// `GET path` from `addr` with an optional Accept header, over a plain socket.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> std::io::Result<Http> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    // HTTP/1.0: no chunked answer (node_exporter chunks a 1.1 one).
    write!(
        c,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok(Http {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// The endpoint at `addr`, in both formats, parsed; the two must agree on
/// every sample (the classic text is derived from the OpenMetrics text).
pub fn scrape_endpoint(addr: &str) -> Scrape {
    let text = http_get(addr, "/metrics", None).expect("scrape");
    assert!(text.status.contains("200"), "{text:?}");
    assert!(
        text.content_type.starts_with("text/plain; version=0.0.4"),
        "{text:?}"
    );
    let om = http_get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .expect("scrape");
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{om:?}"
    );
    let a = parse_metrics(&text.body, PromFormat::Text);
    let b = parse_metrics(&om.body, PromFormat::OpenMetrics);
    // Values may move between the two requests only for the clock gauges.
    for ((name, labels), v) in &a.samples {
        if name.contains("seconds_since") || name.contains("remaining") {
            continue;
        }
        // The OpenMetrics parser names counter samples with `_total` too,
        // and reads `_created` separately; compare what both have.
        if let Some(w) = b.samples.get(&(name.clone(), labels.clone())) {
            assert_eq!(v, w, "{name}{labels:?}: text {v}, OpenMetrics {w}");
        }
    }
    a
}

/// The textfile, parsed as node_exporter's text format.
pub fn read_textfile(p: &Path) -> Scrape {
    let text = std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read metrics file {}: {e}", p.display()));
    parse_metrics(&text, PromFormat::Text)
}

/// node_exporter as scripts/test fetches it (`.cache/prometheus/bin`), if there.
pub fn node_exporter_bin() -> Option<std::path::PathBuf> {
    let p = super::repo_dir().join(".cache/prometheus/bin/node_exporter");
    p.exists().then_some(p)
}

/// A real node_exporter with only its textfile collector, reading `dir`;
/// returns it (killed on drop) and its scrape address.
pub fn start_node_exporter(bin: &Path, dir: &Path) -> (super::KillOnDrop, String) {
    let addr = format!("127.0.0.1:{}", super::free_port());
    let mut c = Command::new(bin);
    c.args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let ne = super::KillOnDrop::spawn(&mut c);
    assert!(
        super::wait_for(
            || http_get(&addr, "/metrics", None).is_ok(),
            Duration::from_secs(20)
        ),
        "node_exporter did not start on {addr}"
    );
    (ne, addr)
}

/// The README's Monitoring table: each metric's full name and type (the
/// `sign_state_height`, `_round`, `_step` row expanded).
pub fn readme_metrics() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(super::repo_dir().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Monitoring\n")
        .nth(1)
        .expect("README has a Monitoring section");
    let section = section.split("\n## ").next().unwrap();
    let mut out = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, kind) = (cells[1], cells[2]);
        let mut base = String::new();
        for n in names.split(", ") {
            let n = n.trim_matches('`');
            let full = if let Some(suffix) = n.strip_prefix('_') {
                format!("{base}{suffix}")
            } else {
                base = n
                    .rsplit_once('_')
                    .map(|(b, _)| format!("{b}_"))
                    .unwrap_or_default();
                n.to_string()
            };
            out.push((format!("ssm_cosmovisor_{full}"), kind.to_string()));
        }
    }
    out
}

/// A client that sends a request's first line, then one header byte every
/// `every`, never finishing it (the trickle of issue 20); a reader on the
/// same connection notes when the server closed it.
pub struct Trickler {
    closed: std::sync::Arc<std::sync::Mutex<Option<Duration>>>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trickler {
    pub fn start(addr: &str, every: Duration) -> Trickler {
        use std::sync::atomic::Ordering;
        let mut w = TcpStream::connect(addr).expect("connect");
        w.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
        let mut r = w.try_clone().unwrap();
        let t = Trickler {
            closed: Default::default(),
            sent: Default::default(),
        };
        let sent = t.sent.clone();
        std::thread::spawn(move || {
            while w.write_all(b"x").is_ok() {
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(every);
            }
        });
        let closed = t.closed.clone();
        let t0 = std::time::Instant::now();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            // Returns at the server's close (EOF or reset), never by itself.
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
            *closed.lock().unwrap() = Some(t0.elapsed());
        });
        t
    }

    /// After how long the server closed the connection, if it did.
    pub fn closed_after(&self) -> Option<Duration> {
        *self.closed.lock().unwrap()
    }

    /// Header bytes sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `n` connections to `addr` that send nothing.
pub fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

/// `n` scrapes of `addr`, `gap` apart: each one's time to a complete 200
/// answer, or why it failed (the read gives up after 10 s).
pub fn timed_scrapes(addr: &str, n: usize, gap: Duration) -> Vec<Result<Duration, String>> {
    (0..n)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(gap);
            }
            let t0 = std::time::Instant::now();
            match http_get(addr, "/metrics", None) {
                Ok(h) if h.status.contains("200") => Ok(t0.elapsed()),
                Ok(h) => Err(format!("answered {h:?}")),
                Err(e) => Err(format!("after {:?}: {e}", t0.elapsed())),
            }
        })
        .collect()
}
