//! Shared helpers for the end-to-end tests; each test file includes it with `mod support;`.
//!
//! Everything here uses real parts: moto's server for AWS, freshly generated keys checked
//! against an independent implementation (tendermint-rs), and the node/cosmovisor stand-ins
//! built as cargo examples.

// Each integration test crate uses only part of these helpers.
#![allow(dead_code)]

pub mod lease;
pub mod systemd;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// The repository root (where Cargo.toml is).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_dir().join(d)
            }
        }
        None => repo_dir().join("target"),
    }
}

/// Our binary. `CARGO_BIN_EXE_*` is set by cargo when it compiles integration tests, which
/// is the only place this module is compiled. `SSMCV_BIN_UNDER_TEST` runs the same tests
/// against another build (e.g. the base commit's, to show that a test fails there).
pub fn ssm_cosmovisor_bin() -> PathBuf {
    std::env::var_os("SSMCV_BIN_UNDER_TEST")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ssm-cosmovisor")))
}

/// The CometBFT node stand-in (`tests/standins/node.rs`).
pub fn node_standin_bin() -> PathBuf {
    example_bin("node-standin", "tests/standins/node.rs")
}

/// The cosmovisor stand-in (`tests/standins/cosmovisor.rs`).
pub fn cosmovisor_standin_bin() -> PathBuf {
    example_bin("cosmovisor-standin", "tests/standins/cosmovisor.rs")
}

/// Path of a built example. `cargo test` (no target selection) and `scripts/test` build
/// examples; `cargo test --test X` does not, and calling cargo from inside a test would wait
/// on the build lock the outer cargo holds, so a missing or stale binary is an explicit
/// failure with the command that fixes it.
fn example_bin(name: &str, source: &str) -> PathBuf {
    let bin = target_dir().join("debug/examples").join(name);
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo build --examples` (or scripts/test) first",
                bin.display()
            )
        });
    let src_mtime = fs::metadata(repo_dir().join(source))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    assert!(
        src_mtime <= built,
        "{} is older than {source}: run `cargo build --examples` (or scripts/test) first",
        bin.display()
    );
    bin
}

/// moto's server: `$MOTO_SERVER_BIN` or `<repo>/.venv/bin/moto_server`.
pub fn moto_server_bin() -> PathBuf {
    std::env::var_os("MOTO_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join(".venv/bin/moto_server"))
}

/// The Python next to moto_server (boto3 is installed with moto): `$MOTO_PYTHON`, else the
/// `python` beside `moto_server`.
pub fn venv_python() -> PathBuf {
    std::env::var_os("MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| moto_server_bin().with_file_name("python"))
}

// ---------------------------------------------------------------------------------------
// Moto (AWS emulator)
// ---------------------------------------------------------------------------------------

pub const TEST_REGION: &str = "us-east-1";
pub const TEST_ACCESS_KEY_ID: &str = "testing";
pub const TEST_SECRET_ACCESS_KEY: &str = "testing";

/// A moto server on a free loopback port, killed and reaped on drop (also when a test
/// panics). Its output goes to a log file (a pipe nobody reads could fill up and stall it),
/// shown if start-up fails.
pub struct Moto {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto with IAM enforcement off (any credentials work).
    pub fn start() -> Moto {
        Self::start_inner(None)
    }

    /// Starts moto with `INITIAL_NO_AUTH_ACTION_COUNT=n`: the first `n` AWS actions are not
    /// checked, every later one must be signed by an IAM user created in this moto and be
    /// allowed by its policies.
    pub fn start_with_auth_budget(n: u32) -> Moto {
        Self::start_inner(Some(n))
    }

    fn start_inner(no_auth_budget: Option<u32>) -> Moto {
        let bin = moto_server_bin();
        assert!(
            bin.exists(),
            "moto server not found at {}: run `scripts/test` once to create the virtualenv \
             (or set MOTO_SERVER_BIN)",
            bin.display()
        );
        // The port is free when we pick it but another process may take it before moto binds;
        // moto then exits at once, so retry with a new port.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().expect("moto log file");
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("reopen log"))
                .stderr(log.reopen().expect("reopen log"));
            if let Some(n) = no_auth_budget {
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut moto = Moto { child, port, log };
            match moto.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return moto,
                Err(e) => {
                    last_log = format!("{e}\n--- moto log ---\n{}", moto.log_text());
                    // Drop kills and reaps it.
                }
            }
        }
        panic!("moto server did not start: {last_log}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("moto exited early with {status}"));
            }
            if let Ok((status, _)) = http_request(self.port, "GET", "/moto-api/", "") {
                if status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("moto not ready after {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Turns IAM enforcement on from now on (moto's `/moto-api/reset-auth`): every later
    /// request must be signed by an IAM user of this moto; `testing`/`testing` stops working.
    pub fn enable_iam_auth(&self) {
        enable_iam_auth(&self.endpoint());
    }

    /// Everything moto printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Turns on moto's IAM enforcement for the server at `endpoint` (see [`Moto::enable_iam_auth`]).
pub fn enable_iam_auth(endpoint: &str) {
    let port = port_of(endpoint);
    let (status, body) = http_request(port, "POST", "/moto-api/reset-auth", "0")
        .unwrap_or_else(|e| panic!("moto reset-auth: {e}"));
    assert_eq!(status, 200, "moto reset-auth failed: {body}");
}

/// A port that was free a moment ago (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in endpoint {endpoint}"))
}

/// Minimal HTTP/1.0 client for moto's control API (no HTTP client crate is a dependency).
fn http_request(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {resp:.200}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------
// SSM through the real AWS SDK
// ---------------------------------------------------------------------------------------

/// Environment for a child that must talk to this moto with the static test credentials,
/// and must not pick up anything from the host (profiles, IMDS).
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    aws_env_with(endpoint, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY)
}

/// As [`aws_env`] with given credentials (e.g. from [`moto_user_without_ssm_access`]).
pub fn aws_env_with(endpoint: &str, access_key_id: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", TEST_REGION),
        ("AWS_ACCESS_KEY_ID", access_key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A parameter as moto stores it.
#[derive(Debug, Clone)]
pub struct SsmParam {
    pub value: String,
    pub r#type: String,
    pub version: i64,
}

fn ssm_client(endpoint: &str, access_key_id: &str, secret: &str) -> aws_sdk_ssm::Client {
    let creds = aws_sdk_ssm::config::Credentials::new(access_key_id, secret, None, None, "tests");
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(TEST_REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Stores (overwriting) a parameter; `ty` is `"SecureString"` or `"String"`. Returns its
/// new version.
pub fn ssm_put(endpoint: &str, name: &str, value: &str, ty: &str, kms_key_id: Option<&str>) -> i64 {
    put_parameter(endpoint, name, value, ty, kms_key_id)
        .unwrap_or_else(|e| panic!("ssm put_parameter {name}: {e}"))
}

/// One PutParameter (overwriting) with the test credentials.
fn put_parameter(
    endpoint: &str,
    name: &str,
    value: &str,
    ty: &str,
    kms_key_id: Option<&str>,
) -> Result<i64, String> {
    let client = ssm_client(endpoint, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY);
    block_on(
        client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::from(ty))
            .overwrite(true)
            .set_key_id(kms_key_id.map(str::to_string))
            .send(),
    )
    .map(|out| out.version())
    .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(&e).to_string())
}

/// Reads a parameter back (decrypted) with the test credentials.
pub fn ssm_get_raw(endpoint: &str, name: &str) -> Result<SsmParam, String> {
    ssm_get_raw_with(endpoint, name, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY)
}

/// Reads a parameter back (decrypted) with the given credentials; the error text carries
/// the AWS error code (e.g. `ParameterNotFound`, `AccessDeniedException`).
pub fn ssm_get_raw_with(
    endpoint: &str,
    name: &str,
    access_key_id: &str,
    secret: &str,
) -> Result<SsmParam, String> {
    let client = ssm_client(endpoint, access_key_id, secret);
    let out = block_on(
        client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send(),
    )
    .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(&e).to_string())?;
    let p = out.parameter().ok_or("no parameter in response")?;
    Ok(SsmParam {
        value: p.value().unwrap_or_default().to_string(),
        r#type: p
            .r#type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        version: p.version(),
    })
}

/// Runs an inline boto3 script with the virtualenv's Python against `endpoint` (test
/// credentials in its environment) and returns its stdout. boto3 comes with moto; there is
/// no IAM/KMS crate among our dependencies.
pub fn boto3(endpoint: &str, script: &str) -> String {
    let py = venv_python();
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .envs(aws_env(endpoint))
        // botocore reads AWS_DEFAULT_REGION, not AWS_REGION; set it only here so tests of our
        // binary's region handling are not masked.
        .env("AWS_DEFAULT_REGION", TEST_REGION)
        .env("MOTO_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (run scripts/test to create .venv)",
                py.display()
            )
        });
    assert!(
        out.status.success(),
        "boto3 script failed ({}):\n{}\n--- stderr ---\n{}",
        out.status,
        script,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from python")
}

/// Creates an IAM user whose only policy explicitly denies reading SSM parameters, then
/// turns moto's IAM enforcement on. Returns `(access_key_id, secret_access_key)`.
///
/// After this call the `testing` credentials no longer work on this moto: store the
/// parameters you need first.
pub fn moto_user_without_ssm_access(endpoint: &str) -> (String, String) {
    let script = r#"
import json, os, uuid, boto3
iam = boto3.client("iam", endpoint_url=os.environ["MOTO_ENDPOINT"])
name = "no-ssm-" + uuid.uuid4().hex[:8]
iam.create_user(UserName=name)
iam.put_user_policy(UserName=name, PolicyName="deny-ssm-read", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "ssm:DescribeParameters"], "Resource": "*"},
        {"Effect": "Deny", "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"], "Resource": "*"},
    ],
}))
k = iam.create_access_key(UserName=name)["AccessKey"]
print(k["AccessKeyId"])
print(k["SecretAccessKey"])
"#;
    let out = boto3(endpoint, script);
    let mut lines = out.lines();
    let id = lines.next().expect("access key id").trim().to_string();
    let secret = lines.next().expect("secret access key").trim().to_string();
    enable_iam_auth(endpoint);
    (id, secret)
}

/// Creates a customer-managed KMS key in moto and returns its key id.
pub fn kms_create_key(endpoint: &str) -> String {
    let script = r#"
import os, boto3
kms = boto3.client("kms", endpoint_url=os.environ["MOTO_ENDPOINT"])
print(kms.create_key(Description="ssm-cosmovisor test")["KeyMetadata"]["KeyId"])
"#;
    boto3(endpoint, script).trim().to_string()
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    Secp256k1,
}

impl KeyType {
    pub fn pub_type(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "tendermint/PubKeyEd25519",
            KeyType::Secp256k1 => "tendermint/PubKeySecp256k1",
        }
    }
    pub fn priv_type(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "tendermint/PrivKeyEd25519",
            KeyType::Secp256k1 => "tendermint/PrivKeySecp256k1",
        }
    }
}

/// A freshly generated validator key in CometBFT's JSON form.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub key_type: KeyType,
    /// `priv_validator_key.json` content, formatted like CometBFT writes it.
    pub json: String,
    /// Uppercase hex address.
    pub address: String,
    /// Base64 public key (32 bytes ed25519, 33 bytes compressed secp256k1).
    pub pub_b64: String,
    /// Raw secret: the 32-byte ed25519 seed or the 32-byte secp256k1 scalar.
    pub seed: Vec<u8>,
    /// The `priv_key.value` (ed25519: seed ‖ public key).
    pub priv_b64: String,
}

impl TestKey {
    pub fn ed25519() -> TestKey {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let k = Self::ed25519_from_seed(seed);
        k.cross_check();
        k
    }

    pub fn secp256k1() -> TestKey {
        loop {
            let mut scalar = [0u8; 32];
            OsRng.fill_bytes(&mut scalar);
            // Astronomically rare: zero or >= the group order; draw again.
            if k256::SecretKey::from_slice(&scalar).is_ok() {
                let k = Self::secp256k1_from_scalar(scalar);
                k.cross_check();
                return k;
            }
        }
    }

    /// Deterministic ed25519 key (for known-answer vectors).
    pub fn ed25519_from_seed(seed: [u8; 32]) -> TestKey {
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let mut keypair = seed.to_vec();
        keypair.extend_from_slice(&public);
        let address = hex::encode_upper(&Sha256::digest(public)[..20]);
        Self::assemble(
            KeyType::Ed25519,
            address,
            B64.encode(public),
            seed.to_vec(),
            B64.encode(&keypair),
        )
    }

    /// Deterministic secp256k1 key (for known-answer vectors). Panics on an invalid scalar.
    pub fn secp256k1_from_scalar(scalar: [u8; 32]) -> TestKey {
        use k256::elliptic_curve::sec1::ToEncodedPoint;
        let sk = k256::SecretKey::from_slice(&scalar).expect("valid secp256k1 scalar");
        let point = sk.public_key().to_encoded_point(true);
        let public = point.as_bytes();
        let address = hex::encode_upper(ripemd::Ripemd160::digest(Sha256::digest(public)));
        Self::assemble(
            KeyType::Secp256k1,
            address,
            B64.encode(public),
            scalar.to_vec(),
            B64.encode(scalar),
        )
    }

    fn assemble(
        key_type: KeyType,
        address: String,
        pub_b64: String,
        seed: Vec<u8>,
        priv_b64: String,
    ) -> TestKey {
        let json = cometbft_json(key_type, &address, &pub_b64, &priv_b64);
        TestKey {
            key_type,
            json,
            address,
            pub_b64,
            seed,
            priv_b64,
        }
    }

    /// The same key with the private value emptied (what the original tool leaves at the
    /// key path after delivery).
    pub fn stripped_json(&self) -> String {
        cometbft_json(self.key_type, &self.address, &self.pub_b64, "")
    }

    pub fn json_value(&self) -> Value {
        serde_json::from_str(&self.json).expect("own json parses")
    }

    /// Checks the key with an implementation we did not write (tendermint-rs). Its build here
    /// lacks the `secp256k1` feature, so secp256k1 keys are checked by the known-answer test
    /// in `standins_selftest` instead.
    fn cross_check(&self) {
        if self.key_type != KeyType::Ed25519 {
            return;
        }
        let parsed = tendermint_config::PrivValidatorKey::parse_json(&self.json)
            .unwrap_or_else(|e| panic!("tendermint-rs rejects generated key: {e}"));
        assert_eq!(
            parsed.address.to_string(),
            self.address,
            "address (tendermint-rs)"
        );
        assert_eq!(
            B64.encode(parsed.pub_key.to_bytes()),
            self.pub_b64,
            "pub_key (tendermint-rs)"
        );
        assert_eq!(
            parsed.priv_key.public_key(),
            parsed.pub_key,
            "pub from priv (tendermint-rs)"
        );
        let derived = same_type(&parsed.address, parsed.pub_key.into());
        assert_eq!(derived, parsed.address, "address from pub (tendermint-rs)");
    }
}

/// Type-inference helper: lets us name tendermint-rs types we cannot import directly.
fn same_type<T>(_: &T, v: T) -> T {
    v
}

/// CometBFT's `cmtjson.MarshalIndent(key, "", "  ")` layout: field order address, pub_key,
/// priv_key; no trailing newline.
fn cometbft_json(t: KeyType, address: &str, pub_b64: &str, priv_b64: &str) -> String {
    format!(
        "{{\n  \"address\": \"{address}\",\n  \"pub_key\": {{\n    \"type\": \"{}\",\n    \"value\": \"{pub_b64}\"\n  }},\n  \"priv_key\": {{\n    \"type\": \"{}\",\n    \"value\": \"{priv_b64}\"\n  }}\n}}",
        t.pub_type(),
        t.priv_type()
    )
}

/// Asserts that `output` holds no form of the key's secret: the `priv_key` value, the
/// seed/scalar in base64 (unpadded, so a padded or embedded copy matches too) and in lower-
/// and uppercase hex.
pub fn assert_no_secret(output: &str, key: &TestKey) {
    if let Some(what) = secret_in(output, key) {
        panic!("secret leaked: output contains the {what}\n--- output ---\n{output}");
    }
}

/// Which form of the key's secret `output` contains, if any (see [`assert_no_secret`]).
pub fn secret_in(output: &str, key: &TestKey) -> Option<&'static str> {
    let forms = [
        ("priv_key value (base64)", key.priv_b64.clone()),
        ("seed (base64)", B64_NO_PAD.encode(&key.seed)),
        ("seed (hex)", hex::encode(&key.seed)),
        ("seed (HEX)", hex::encode_upper(&key.seed)),
    ];
    forms
        .into_iter()
        .find(|(_, needle)| output.contains(needle))
        .map(|(what, _)| what)
}

// ---------------------------------------------------------------------------------------
// Node home
// ---------------------------------------------------------------------------------------

pub const DAEMON_NAME: &str = "noded";
pub const PRIV_VALIDATOR_STATE: &str = "{\n  \"height\": \"0\",\n  \"round\": 0,\n  \"step\": 0\n}";

/// Options for [`NodeHome`].
#[derive(Debug, Clone, Default)]
pub struct NodeHomeOptions {
    /// `priv_validator_key_file` in config.toml (relative to the home, or absolute). The
    /// safe key is placed there (parent directories created 0700).
    pub key_file: Option<String>,
    /// Create `cosmovisor/upgrades/upgrade-1..=N/bin/<DAEMON_NAME>`.
    pub upgrades: usize,
}

/// A temporary node home laid out like a real validator's:
///
/// ```text
/// <root>/                       tempdir (report and scratch files live here, outside the home)
/// <root>/home/config/           0700
///             priv_validator_key.json   the "safe" key (or at `key_file`)
///             config.toml
/// <root>/home/data/priv_validator_state.json
/// <root>/home/cosmovisor/genesis/bin/noded   the node stand-in
/// <root>/home/cosmovisor/current -> genesis
/// ```
pub struct NodeHome {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    /// The host's own throwaway key at the key path (never the consensus key).
    pub safe_key: TestKey,
    /// Exact bytes of the safe key file, for byte-for-byte comparisons.
    pub safe_bytes: Vec<u8>,
    key_path: PathBuf,
}

impl NodeHome {
    pub fn new() -> NodeHome {
        Self::with_options(NodeHomeOptions::default())
    }

    pub fn with_options(opts: NodeHomeOptions) -> NodeHome {
        let root = tempfile::Builder::new()
            .prefix("ssmcv-")
            .tempdir()
            .expect("tempdir");
        let home = root.path().join("home");
        mkdir_0700(&home.join("config"));
        mkdir_0700(&home.join("data"));

        let mut config = String::from(
            "# Minimal CometBFT config.toml for tests.\nproxy_app = \"tcp://127.0.0.1:26658\"\nmoniker = \"standin\"\n",
        );
        let key_path = match &opts.key_file {
            Some(k) => {
                writeln!(config, "priv_validator_key_file = \"{k}\"").expect("fmt");
                let p = PathBuf::from(k);
                if p.is_absolute() {
                    p
                } else {
                    home.join(p)
                }
            }
            None => home.join("config/priv_validator_key.json"),
        };
        config.push_str("priv_validator_state_file = \"data/priv_validator_state.json\"\n");
        fs::write(home.join("config/config.toml"), config).expect("write config.toml");
        fs::write(
            home.join("data/priv_validator_state.json"),
            PRIV_VALIDATOR_STATE,
        )
        .expect("write state");

        let safe_key = TestKey::ed25519();
        let parent = key_path.parent().expect("key path has a parent");
        if !parent.exists() {
            mkdir_0700(parent);
        }
        write_file_0600(&key_path, safe_key.json.as_bytes());
        let safe_bytes = safe_key.json.clone().into_bytes();

        let h = NodeHome {
            root,
            home,
            safe_key,
            safe_bytes,
            key_path,
        };
        h.install_node(&h.home.join("cosmovisor/genesis/bin"));
        std::os::unix::fs::symlink("genesis", h.home.join("cosmovisor/current"))
            .expect("current symlink");
        h.add_upgrades(opts.upgrades);
        h
    }

    /// Places the node stand-in at `<dir>/<DAEMON_NAME>`: a hard link (same filesystem; the
    /// node's /proc/<pid>/exe then names the path in the home, as with a real install), else
    /// a copy.
    fn install_node(&self, dir: &Path) {
        fs::create_dir_all(dir).expect("create bin dir");
        let dst = dir.join(DAEMON_NAME);
        let src = node_standin_bin();
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).expect("copy node stand-in");
        }
    }

    /// Creates `cosmovisor/upgrades/upgrade-1..=n/bin/<DAEMON_NAME>`.
    pub fn add_upgrades(&self, n: usize) {
        for i in 1..=n {
            self.install_node(
                &self
                    .home
                    .join(format!("cosmovisor/upgrades/upgrade-{i}/bin")),
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.home
    }

    /// The key path `P` (as configured).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// `P.orig`
    pub fn orig_path(&self) -> PathBuf {
        let mut s = OsString::from(self.key_path.as_os_str());
        s.push(".orig");
        PathBuf::from(s)
    }

    /// Scratch file outside the home (e.g. `report.jsonl`, `args.json`).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Where the node stand-in appends its reports when run with [`NodeHome::env`].
    pub fn report_path(&self) -> PathBuf {
        self.scratch("node-report.jsonl")
    }

    pub fn reports(&self) -> Vec<Value> {
        read_report(&self.report_path())
    }

    pub fn upgrade_info_path(&self) -> PathBuf {
        self.home.join("data/upgrade-info.json")
    }

    /// Target of `cosmovisor/current` (`genesis`, `upgrades/upgrade-1`, …).
    pub fn current_target(&self) -> PathBuf {
        fs::read_link(self.home.join("cosmovisor/current")).expect("read cosmovisor/current")
    }

    /// Environment for cosmovisor (real or stand-in) and the node stand-in.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DAEMON_HOME".into(), self.home.display().to_string()),
            ("DAEMON_NAME".into(), DAEMON_NAME.into()),
            ("DAEMON_RESTART_AFTER_UPGRADE".into(), "true".into()),
            (
                "NODE_REPORT".into(),
                self.report_path().display().to_string(),
            ),
        ]
    }

    /// `cosmovisor-standin <args>` with [`NodeHome::env`].
    pub fn cosmovisor_cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(cosmovisor_standin_bin());
        c.args(args).envs(self.env()).stdin(Stdio::null());
        c
    }

    /// `node-standin --home <home>` with [`NodeHome::env`].
    pub fn node_cmd(&self) -> Command {
        let mut c = Command::new(node_standin_bin());
        c.arg("--home")
            .arg(&self.home)
            .envs(self.env())
            .stdin(Stdio::null());
        c
    }

    /// Asserts the idle state: `P` is a regular file holding exactly the safe key and
    /// `P.orig` is absent.
    pub fn assert_idle(&self) {
        let md = fs::symlink_metadata(&self.key_path)
            .unwrap_or_else(|e| panic!("key path {} missing: {e}", self.key_path.display()));
        assert!(
            md.file_type().is_file(),
            "key path is not a regular file: {:?}",
            md.file_type()
        );
        let bytes = fs::read(&self.key_path).expect("read key path");
        assert!(
            bytes == self.safe_bytes,
            "key path does not hold the safe key byte for byte"
        );
        assert!(
            fs::symlink_metadata(self.orig_path()).is_err(),
            "{} still exists",
            self.orig_path().display()
        );
    }
}

impl Default for NodeHome {
    fn default() -> Self {
        Self::new()
    }
}

fn mkdir_0700(p: &Path) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    // `recursive` leaves existing directories alone and the umask may clear bits: be exact.
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
}

/// Creates `p` (which must not exist) with mode 0600, writes and fsyncs `bytes`.
pub fn write_file_0600(p: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(bytes).expect("write key");
    f.sync_all().expect("fsync key");
}

// ---------------------------------------------------------------------------------------
// Processes, polling, reports
// ---------------------------------------------------------------------------------------

/// The node stand-in's report lines (empty if the file does not exist yet).
pub fn read_report(path: &Path) -> Vec<Value> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l:?}: {e}"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A child that is killed and reaped when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends a signal (e.g. `nix::sys::signal::Signal::SIGTERM`).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits up to `timeout`; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with captured stdout/stderr; kills it and panics (showing what it printed)
/// if it runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes concurrently so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().expect("stdout")));
    let err_t = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().expect("stdout reader");
    let stderr = err_t.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// stdout + stderr as one string, for assertions and [`assert_no_secret`].
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// lstat watcher (crash tests: "the key path exists at every instant")
// ---------------------------------------------------------------------------------------

/// What an [`LstatWatcher`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct LstatStats {
    pub samples: u64,
    /// lstat() returned ENOENT this many times.
    pub missing: u64,
    /// Any other error.
    pub other_errors: u64,
}

impl LstatStats {
    pub fn saw_missing(&self) -> bool {
        self.missing > 0
    }
}

/// lstat()s a path in a tight loop on its own thread until stopped.
pub struct LstatWatcher {
    stop: Arc<AtomicBool>,
    /// ENOENT results so far, readable while the loop runs.
    missing: Arc<AtomicU64>,
    handle: Option<JoinHandle<LstatStats>>,
}

impl LstatWatcher {
    /// Starts the loop and returns once it has taken its first sample, so whatever the caller
    /// does next is watched even on a loaded machine that schedules the thread late.
    pub fn start(path: &Path) -> LstatWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(AtomicU64::new(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        let flag = Arc::clone(&stop);
        let live_missing = Arc::clone(&missing);
        let handle = thread::spawn(move || {
            let mut st = LstatStats::default();
            let mut started = Some(started_tx);
            while !flag.load(Ordering::Relaxed) {
                st.samples += 1;
                match fs::symlink_metadata(&path) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        st.missing += 1;
                        live_missing.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => st.other_errors += 1,
                }
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
            st
        });
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("lstat watcher thread never ran");
        LstatWatcher {
            stop,
            missing,
            handle: Some(handle),
        }
    }

    /// ENOENT results seen so far.
    pub fn missing_so_far(&self) -> u64 {
        self.missing.load(Ordering::Relaxed)
    }

    /// Stops the loop and returns what it saw.
    pub fn stop(mut self) -> LstatStats {
        self.finish()
    }

    fn finish(&mut self) -> LstatStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("lstat watcher thread"))
            .unwrap_or_default()
    }
}

impl Drop for LstatWatcher {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Reads a regular file, `None` if it does not exist. Refuses anything else (opening a
/// FIFO at the key path would block the test, or worse, consume the key).
pub fn read_opt(path: &Path) -> Option<Vec<u8>> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_file() => {}
        Ok(md) => panic!(
            "{} is not a regular file: {:?}",
            path.display(),
            md.file_type()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("lstat {}: {e}", path.display()),
    }
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Some(v)
}

// ---------------------------------------------------------------------------------------
// Running ssm-cosmovisor itself
// ---------------------------------------------------------------------------------------

/// A command for our binary with a clean environment: the node home's
/// variables, the cosmovisor stand-in as `COSMOVISOR_BIN`, and (if given) the
/// emulator's endpoint and test credentials. Nothing leaks in from the test
/// runner's own environment except `PATH`.
pub fn tool_cmd(home: &NodeHome, endpoint: Option<&str>) -> Command {
    let mut c = Command::new(ssm_cosmovisor_bin());
    c.env_clear();
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c.envs(home.env());
    c.env("COSMOVISOR_BIN", cosmovisor_standin_bin());
    if let Some(e) = endpoint {
        c.envs(aws_env(e));
    }
    c.stdin(Stdio::null());
    c
}

/// Our binary running in the background, its stdout+stderr going to a file.
pub struct Tool {
    pub child: KillOnDrop,
    pub log: PathBuf,
}

impl Tool {
    /// Spawns `cmd` with output to `log`.
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Tool {
        let f = File::create(&log).expect("create log");
        cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        Tool {
            child: KillOnDrop::spawn(cmd),
            log,
        }
    }

    /// Everything it printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(|| self.log_text().contains(needle), timeout)
    }

    /// Sends a signal and waits for the exit status (panics after 30 s).
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        self.child.signal(sig);
        self.child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("did not exit after {sig:?}; log:\n{}", self.log_text()))
    }

    /// Waits for it to exit by itself (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .wait_timeout(timeout)
            .unwrap_or_else(|| panic!("still running after {timeout:?}; log:\n{}", self.log_text()))
    }
}

/// Whether `path` is currently a FIFO (lstat, never opens it).
pub fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Stores `key` in the emulator under `name` as a SecureString.
pub fn put_key(endpoint: &str, name: &str, key: &TestKey) -> i64 {
    ssm_put(endpoint, name, &key.json, "SecureString", None)
}

/// As [`ssm_put`] but returns the emulator's refusal instead of panicking (for values SSM
/// may refuse: empty, oversize). `ty` is `"SecureString"` or `"String"`.
pub fn ssm_try_put(endpoint: &str, name: &str, value: &str, ty: &str) -> Result<i64, String> {
    put_parameter(endpoint, name, value, ty, None)
}

// ---------------------------------------------------------------------------------------
// Slot and delivery tests (e2e_slot, e2e_delivery): leftovers, stray processes, stats
// ---------------------------------------------------------------------------------------

/// Names in the key's directory that must not outlive a run: `P.orig`, our temporary
/// names (`.<name>.ssm-cosmovisor-*.tmp`), and any FIFO. Empty when the slot is clean.
pub fn slot_leftovers(home: &NodeHome) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let dir = home.key_path().parent().expect("key dir");
    let key_name = home
        .key_path()
        .file_name()
        .expect("key file name")
        .to_string_lossy()
        .into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().expect("file type");
        if name == format!("{key_name}.orig")
            || (name.starts_with(&format!(".{key_name}.ssm-cosmovisor-")) && name.ends_with(".tmp"))
            || name.contains("ssm-cosmovisor")
        {
            out.push(name);
        } else if ft.is_fifo() {
            out.push(format!("{name} (FIFO)"));
        }
    }
    out.sort();
    out
}

/// Asserts the idle state ([`NodeHome::assert_idle`]) and that nothing else was left in the
/// key's directory ([`slot_leftovers`]).
pub fn assert_clean_idle(home: &NodeHome) {
    home.assert_idle();
    let left = slot_leftovers(home);
    assert!(
        left.is_empty(),
        "left behind in the key directory: {left:?}"
    );
}

/// What [`dir_snapshot`] records: name → (file type, inode, mode, uid, content of regular
/// files).
pub type DirSnapshot = std::collections::BTreeMap<String, (String, u64, u32, u32, Vec<u8>)>;

/// A directory listing precise enough to prove a refusal changed nothing: name → (file
/// type, inode, mode, uid, content of regular files).
pub fn dir_snapshot(dir: &Path) -> DirSnapshot {
    use std::os::unix::fs::MetadataExt;
    let mut m = std::collections::BTreeMap::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let md = fs::symlink_metadata(e.path()).expect("lstat");
        let bytes = if md.file_type().is_file() {
            fs::read(e.path()).expect("read regular file")
        } else {
            Vec::new()
        };
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            (
                format!("{:?}", md.file_type()),
                md.ino(),
                md.mode(),
                md.uid(),
                bytes,
            ),
        );
    }
    m
}

/// Pids of live (non-zombie) processes other than this one whose command line contains
/// `needle`. With a test's temporary directory as the needle this finds exactly the
/// stand-ins that test started, never another test's.
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let Some(close) = s.iter().rposition(|&b| b == b')') else {
                return false;
            };
            let state = s.get(close + 2).copied().unwrap_or(b'?');
            state != b'Z' && state != b'X'
        }
        Err(_) => false,
    }
}

/// The one-letter state of `pid` from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, …).
pub fn pid_state(pid: i32) -> Option<char> {
    let s = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|&b| b == b')')?;
    s.get(close + 2).map(|&b| b as char)
}

/// Waits up to `grace` for every process mentioning `needle` to go away by itself, then
/// SIGKILLs what is left. Returns the pids that had to be killed.
pub fn reap_strays(needle: &Path, grace: Duration) -> Vec<i32> {
    if wait_for(|| pids_mentioning(needle).is_empty(), grace) {
        return Vec::new();
    }
    let left = pids_mentioning(needle);
    for &p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_for(
        || pids_mentioning(needle).is_empty(),
        Duration::from_secs(5),
    );
    left
}

/// Kills (SIGKILL, by pid) every process still mentioning its path when dropped, so a
/// failing test leaves no stand-in running.
pub struct StrayReaper(pub PathBuf);

impl Drop for StrayReaper {
    fn drop(&mut self) {
        reap_strays(&self.0, Duration::ZERO);
    }
}

/// Whether process `pid` has an fd open on inode (`dev`, `ino`).
pub fn pid_holds_inode(pid: i32, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.flatten().any(|e| {
        fs::metadata(e.path())
            .map(|m| m.dev() == dev && m.ino() == ino)
            .unwrap_or(false)
    })
}

/// The JSON log lines (`SSM_COSMOVISOR_LOG_FORMAT=json`) whose `event` is `event`; other
/// lines (the stand-ins' output) are skipped.
pub fn log_events(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Pids the cosmovisor stand-in announced (`starting node pid=N`), in order.
pub fn node_pids_from_log(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.split("starting node pid=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Median and maximum (0, 0 for an empty set).
pub fn median_max(values: &[u64]) -> (u64, u64) {
    if values.is_empty() {
        return (0, 0);
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    (v[v.len() / 2], v[v.len() - 1])
}

/// Writes an executable shell script (closed before it is run).
pub fn write_script(path: &Path, body: &str) {
    fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// The node stand-in's complete report lines. Unlike [`read_report`], safe while a node may
/// be writing: a line read half-written (a read can overlap an append) is left for the next
/// poll instead of failing the parse.
pub fn complete_reports(home: &NodeHome) -> Vec<Value> {
    let text = match fs::read_to_string(home.report_path()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", home.report_path().display()),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A fault proxy to moto, to break the network between one "host" and AWS (proxy.rs)
// ---------------------------------------------------------------------------------------

mod proxy;
#[allow(unused_imports)]
pub use proxy::{Fault, ProxyRecord, Relay};

// ---------------------------------------------------------------------------------------
// The chaos test: cluster of hosts, nemesis, checker
// ---------------------------------------------------------------------------------------

pub mod checker;
pub mod cluster;
pub mod nemesis;

// ---------------------------------------------------------------------------------------
// Attacks (e2e_attacks): other users, cgroups, a fake SSM endpoint
// ---------------------------------------------------------------------------------------

/// The hidden-reader stand-in (`tests/standins/rogue_reader.py`), run with [`venv_python`].
pub fn rogue_reader_script() -> PathBuf {
    repo_dir().join("tests/standins/rogue_reader.py")
}

/// A Python 3 that every user may run (the virtualenv's may live under a home only its
/// owner can enter): the system's, else the virtualenv's. Standard library only.
pub fn python_for_any_user() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(venv_python)
}

/// The node user of the attack tests (name, uid, gid): `games` where it exists, else
/// `nobody`. Not `nobody` by choice: other test files run their unprivileged tools as
/// `nobody`, and a non-dumpable tool of the node's uid is exactly what the reader check
/// fails closed on, so tests sharing that uid must never overlap (tests of one file run in
/// parallel; other checkouts on the same machine may run theirs at the same time).
pub fn attack_user() -> (String, u32, u32) {
    for name in ["games", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return (u.name, u.uid.as_raw(), u.gid.as_raw());
        }
    }
    panic!("neither a games nor a nobody user exists");
}

/// uid and gid of `nobody`, the node user of the tests that need one.
pub fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody")
        .expect("user database")
        .expect("a nobody user");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `chown -R uid:gid path`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R {uid}:{gid} {}", path.display());
}

/// `cmd` (its program, arguments and environment) run as `uid:gid` with no supplementary
/// groups, after joining cgroup `cg` if given: `sh` (still root) writes its pid to the
/// cgroup's `cgroup.procs`, then execs `setpriv`, which execs the program. The process
/// keeps the pid, and its parent (the test) stays outside the cgroup, as systemd is for a
/// unit's main process.
pub fn as_user_in_cgroup(cmd: &Command, cg: Option<&Path>, uid: u32, gid: u32) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(
        "if [ -n \"$0\" ]; then echo $$ > \"$0/cgroup.procs\" || exit 97; fi\n\
         u=$1 g=$2 p=$3; shift 3\n\
         exec setpriv --reuid=\"$u\" --regid=\"$g\" --clear-groups -- \"$p\" \"$@\"",
    );
    c.arg(cg.map(|p| p.as_os_str().to_owned()).unwrap_or_default());
    c.arg(uid.to_string()).arg(gid.to_string());
    c.arg(cmd.get_program());
    c.args(cmd.get_args());
    c.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Where the cgroup v2 hierarchy is mounted with its root at ours, if anywhere.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let s = fs::read_to_string("/proc/self/mountinfo").ok()?;
    s.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut f = pre.split_ascii_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (post.split_ascii_whitespace().next()? == "cgroup2" && root == "/")
            .then(|| PathBuf::from(point))
    })
}

/// A slice of cgroups made by the test (root-owned, as systemd's are), removed on drop
/// once the processes in it are gone.
pub struct TestSlice {
    pub dir: PathBuf,
}

impl TestSlice {
    /// `<cgroup2>/ssmcv-<pid>-<n>.slice`; `None` (with the reason printed) where cgroup v2
    /// is not mounted or not writable.
    pub fn new() -> Option<TestSlice> {
        static N: AtomicU64 = AtomicU64::new(0);
        let Some(mount) = cgroup2_mount() else {
            eprintln!("SKIP: no cgroup v2 hierarchy mounted");
            return None;
        };
        let dir = mount.join(format!(
            "ssmcv-{}-{}.slice",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        if let Err(e) = fs::create_dir(&dir) {
            eprintln!(
                "SKIP: cannot create a cgroup under {}: {e}",
                mount.display()
            );
            return None;
        }
        Some(TestSlice { dir })
    }

    /// A child cgroup, e.g. `ssm-cosmovisor@a.service`.
    pub fn unit(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }
}

impl Drop for TestSlice {
    fn drop(&mut self) {
        // cgroups can only be removed empty; their processes are killed by their tests.
        for _ in 0..200 {
            let mut left = false;
            if let Ok(rd) = fs::read_dir(&self.dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) && fs::remove_dir(e.path()).is_err()
                    {
                        left = true;
                    }
                }
            }
            if !left && fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(25));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

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

/// A JSON string's content for `s` (quotes, backslashes, control characters escaped).
pub fn json_escaped(s: &str) -> Vec<u8> {
    let q = serde_json::to_string(s).expect("string to json");
    q.as_bytes()[1..q.len() - 1].to_vec()
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

/// Every form of the key's secret an output must not hold: [`assert_no_secret`]'s, and
/// the key document itself, raw and JSON-escaped (as it sits in an SSM answer).
pub fn assert_no_key_material(output: &str, key: &TestKey) {
    assert_no_secret(output, key);
    let escaped = String::from_utf8(json_escaped(&key.json)).expect("utf-8");
    for (what, needle) in [
        ("key JSON", key.json.as_str()),
        ("escaped key JSON", &escaped),
    ] {
        assert!(
            !output.contains(needle),
            "secret leaked: output contains the {what}\n--- output ---\n{output}"
        );
    }
}

/// Watches directories on its own thread (names, file types, inodes, modes, owners, every
/// millisecond) and remembers the first change it sees, so a change that is undone before
/// the end (a link made and removed again) is still caught.
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    first_change: Arc<Mutex<Option<String>>>,
    handle: Option<JoinHandle<u64>>,
}

fn dir_listing(dir: &Path) -> Vec<(String, u64, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = fs::symlink_metadata(e.path()).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        m.ino(),
                        m.mode(),
                        m.uid(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl DirWatch {
    pub fn start(dirs: &[PathBuf]) -> DirWatch {
        let dirs = dirs.to_vec();
        let before: Vec<_> = dirs.iter().map(|d| dir_listing(d)).collect();
        let stop: Arc<AtomicBool> = Arc::default();
        let first_change: Arc<Mutex<Option<String>>> = Arc::default();
        let (st, fc) = (stop.clone(), first_change.clone());
        let handle = thread::spawn(move || {
            let mut samples = 0;
            while !st.load(Ordering::Relaxed) {
                samples += 1;
                for (d, b) in dirs.iter().zip(&before) {
                    let now = dir_listing(d);
                    if &now != b {
                        let mut g = fc.lock().unwrap();
                        if g.is_none() {
                            *g = Some(format!("{}: {b:?} became {now:?}", d.display()));
                        }
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
            samples
        });
        DirWatch {
            stop,
            first_change,
            handle: Some(handle),
        }
    }

    /// The first change seen so far, if any.
    pub fn change(&self) -> Option<String> {
        self.first_change.lock().unwrap().clone()
    }

    /// Stops watching; returns the samples taken and the first change seen.
    pub fn stop(mut self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.handle.take().map(|h| h.join().unwrap()).unwrap_or(0);
        (n, self.change())
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
