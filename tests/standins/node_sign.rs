//! Signing mode of the node stand-in (for the chaos test, tests/chaos.rs).
//!
//! A validator's node signs one vote per height. Here a shared chain clock makes the
//! heights: height `h` begins at `epoch + (h-1)·block` (`NODE_SIGN_EPOCH_MS`,
//! `NODE_SIGN_BLOCK_MS`, default 1000). A node holding the validator's key
//! (`NODE_SIGN_ADDRESS`) signs, in order, every height above its sign state, as CometBFT's
//! FilePV would let it: for each it first persists `priv_validator_state.json` (atomic
//! replace, fsynced file and directory, as CometBFT saves its last sign state before it
//! releases a signature), then appends one line to the shared ledger (`NODE_SIGN_LEDGER`,
//! one `write` on an `O_APPEND` fd): host (`NODE_SIGN_HOST`), pid, height, round, step,
//! time. It refuses a height/round/step at or below its state, like CometBFT.
//!
//! The sign state is read once, when the key is loaded (CometBFT's `LoadFilePV` reads the
//! key and the state together and keeps the state in memory from then on): a state raised
//! on disk after the node started is not seen, as with the real node.
//!
//! Adversarial on purpose: a node behind the chain's tip signs every height it missed, one
//! per `NODE_SIGN_CATCHUP_MS` (default 50; a node catching up must fetch each missed
//! block). So the sign state carried between hosts is the only thing that keeps a new
//! signer off heights an old one signed, and every gap in it shows as a double-signed
//! height; a node at the tip signs each height as it begins.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// CometBFT's last sign state without the signature: height, round, step, ordered.
type Hrs = (i64, i64, i64);

/// The signing loop's settings and the state it carries.
pub struct Signer {
    ledger: PathBuf,
    host: String,
    epoch_ms: u64,
    block_ms: u64,
    catchup_ms: u64,
    state_path: PathBuf,
    last: Hrs,
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_num(name: &str, default: Option<u64>) -> Result<u64, String> {
    match env_str(name) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
        None => default.ok_or_else(|| format!("{name} is required with NODE_SIGN_LEDGER")),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `priv_validator_state_file` from `config/config.toml` (rootified against the home),
/// else `data/priv_validator_state.json`.
pub fn state_path(home: &Path) -> PathBuf {
    let configured = fs::read_to_string(home.join("config/config.toml"))
        .ok()
        .and_then(|toml| {
            toml.lines().find_map(|line| {
                let rest = line.trim().strip_prefix("priv_validator_state_file")?;
                let rest = rest.trim_start().strip_prefix('=')?.trim();
                let rest = rest.strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_string())
            })
        })
        .unwrap_or_else(|| "data/priv_validator_state.json".to_string());
    let p = PathBuf::from(configured);
    if p.is_absolute() {
        p
    } else {
        home.join(p)
    }
}

/// Parses `priv_validator_state.json` as CometBFT writes it (`height` is a string).
pub fn parse_state(bytes: &[u8]) -> Result<Hrs, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let height = match &v["height"] {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .ok_or("height missing")?;
    let round = v["round"].as_i64().ok_or("round missing")?;
    let step = v["step"].as_i64().ok_or("step missing")?;
    Ok((height, round, step))
}

impl Signer {
    /// The signer if signing is configured (`NODE_SIGN_LEDGER`) and the key just read is the
    /// validator's; reads the sign state now. `Err`: a configuration or state-file fault.
    pub fn from_env(home: Option<&Path>, address: Option<&str>) -> Result<Option<Signer>, String> {
        let Some(ledger) = env_str("NODE_SIGN_LEDGER") else {
            return Ok(None);
        };
        let validator = env_str("NODE_SIGN_ADDRESS")
            .ok_or("NODE_SIGN_ADDRESS is required with NODE_SIGN_LEDGER")?;
        // A full node on another key is not in the validator set: it signs nothing.
        if address != Some(validator.as_str()) {
            return Ok(None);
        }
        let home = home.ok_or("signing needs a home (--home or DAEMON_HOME)")?;
        let state_path = state_path(home);
        let bytes = fs::read(&state_path)
            .map_err(|e| format!("cannot read {}: {e}", state_path.display()))?;
        let last = parse_state(&bytes).map_err(|e| format!("{}: {e}", state_path.display()))?;
        Ok(Some(Signer {
            ledger: PathBuf::from(ledger),
            host: env_str("NODE_SIGN_HOST").unwrap_or_else(|| "?".into()),
            epoch_ms: env_num("NODE_SIGN_EPOCH_MS", None)?,
            block_ms: env_num("NODE_SIGN_BLOCK_MS", Some(1000))?.max(1),
            catchup_ms: env_num("NODE_SIGN_CATCHUP_MS", Some(50))?,
            state_path,
            last,
        }))
    }

    /// The chain's current height (0 before the epoch).
    fn tip(&self) -> i64 {
        let now = unix_ms();
        if now < self.epoch_ms {
            return 0;
        }
        ((now - self.epoch_ms) / self.block_ms) as i64 + 1
    }

    /// Signs forever (the signal thread ends the process).
    pub fn run(mut self) -> ! {
        let mut next = self.last.0.max(1);
        loop {
            let tip = self.tip();
            if next > tip {
                let begins = self.epoch_ms + (next as u64 - 1) * self.block_ms;
                let wait = begins.saturating_sub(unix_ms()).max(1);
                thread::sleep(Duration::from_millis(wait));
                continue;
            }
            let vote = (next, 0, 3);
            if vote > self.last {
                self.persist(vote);
                self.append(vote);
                self.last = vote;
            }
            next += 1;
            if next <= tip {
                thread::sleep(Duration::from_millis(self.catchup_ms));
            }
        }
    }

    /// Saves the sign state before the signature leaves (atomic, fsynced).
    fn persist(&self, (h, r, s): Hrs) {
        let started = std::time::Instant::now();
        let dir = self.state_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(".priv_validator_state.json.node-standin");
        let body = format!(
            "{{\n  \"height\": \"{h}\",\n  \"round\": {r},\n  \"step\": {s},\n  \"signature\": \"c2lnbmF0dXJl\",\n  \"signbytes\": \"AB\"\n}}"
        );
        let res = (|| -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.state_path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = res {
            // CometBFT panics when it cannot save its sign state: no signature goes out.
            let _ = writeln!(
                std::io::stderr(),
                "NODE-PANIC: cannot save sign state {}: {e}",
                self.state_path.display()
            );
            process::exit(4);
        }
        if started.elapsed() > Duration::from_millis(500) {
            // Worth knowing when a host stalls: fsync on a busy disk can take seconds.
            let _ = writeln!(
                std::io::stdout(),
                "node-standin: saving the sign state for height {h} took {} ms",
                started.elapsed().as_millis()
            );
        }
    }

    /// One ledger line per signature, in one write.
    fn append(&self, (h, r, s): Hrs) {
        let mut line = json!({
            "host": self.host,
            "pid": process::id(),
            "height": h,
            "round": r,
            "step": s,
            "unix_us": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0),
        })
        .to_string();
        line.push('\n');
        let res = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.ledger)
            .and_then(|mut f| match f.write(line.as_bytes())? {
                n if n == line.len() => Ok(()),
                n => Err(std::io::Error::other(format!("short write {n}"))),
            });
        if let Err(e) = res {
            let _ = writeln!(
                std::io::stderr(),
                "NODE-PANIC: cannot append to the ledger {}: {e}",
                self.ledger.display()
            );
            process::exit(4);
        }
    }
}
