//! AWS for the tests: moto's server (the only Python left: `scripts/lib/moto.sh` installs
//! it), and every request to it through the Rust SDK (SSM, DynamoDB, IAM, KMS) with the
//! static test credentials.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_ssm::error::DisplayErrorContext;
use rand_core::{OsRng, RngCore};
use serde_json::Value;

use super::{repo_dir, TestKey};

/// A client of `$sdk` (a crate of the AWS SDK) for the server at `$endpoint` with the given
/// static credentials: nothing comes from the host (profiles, IMDS, environment).
macro_rules! sdk_client {
    ($sdk:ident, $endpoint:expr, $id:expr, $secret:expr) => {{
        let creds = $sdk::config::Credentials::new($id, $secret, None, None, "tests");
        let conf = $sdk::Config::builder()
            .behavior_version($sdk::config::BehaviorVersion::latest())
            .region($sdk::config::Region::new(TEST_REGION))
            .endpoint_url($endpoint)
            .credentials_provider(creds)
            .build();
        $sdk::Client::from_conf(conf)
    }};
}

/// moto's server: `$MOTO_SERVER_BIN` or `<repo>/.venv/bin/moto_server`.
pub fn moto_server_bin() -> PathBuf {
    std::env::var_os("MOTO_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join(".venv/bin/moto_server"))
}

/// The Python of moto's virtualenv: `$MOTO_PYTHON`, else the `python` beside
/// `moto_server`. Test programs (a partial reader) run with it; AWS is never called from it.
pub fn venv_python() -> PathBuf {
    std::env::var_os("MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| moto_server_bin().with_file_name("python"))
}

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
    sdk_client!(aws_sdk_ssm, endpoint, access_key_id, secret)
}

/// Runs one SDK call to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
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
    .map_err(|e| sdk_error(&e))
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
    .map_err(|e| sdk_error(&e))?;
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

/// A DynamoDB client for `endpoint` with the test credentials.
pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    sdk_client!(
        aws_sdk_dynamodb,
        endpoint,
        TEST_ACCESS_KEY_ID,
        TEST_SECRET_ACCESS_KEY
    )
}

/// An SDK error with its whole chain of causes (the AWS error code included).
fn sdk_error(e: &impl std::error::Error) -> String {
    DisplayErrorContext(e).to_string()
}

/// Creates an on-demand table whose partition key is the string attribute `hash_key`.
pub fn dynamodb_create_table(endpoint: &str, table: &str, hash_key: &str) {
    let key = KeySchemaElement::builder()
        .attribute_name(hash_key)
        .key_type(KeyType::Hash)
        .build()
        .expect("key schema");
    let attr = AttributeDefinition::builder()
        .attribute_name(hash_key)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute definition");
    let c = dynamodb_client(endpoint);
    block_on(
        c.create_table()
            .table_name(table)
            .key_schema(key)
            .attribute_definitions(attr)
            .billing_mode(BillingMode::PayPerRequest)
            .send(),
    )
    .unwrap_or_else(|e| panic!("dynamodb create_table {table}: {}", sdk_error(&e)));
}

/// The name DescribeTable gives for `table` (an error carries the AWS error code).
pub fn dynamodb_describe_table(endpoint: &str, table: &str) -> Result<String, String> {
    let c = dynamodb_client(endpoint);
    let out = block_on(c.describe_table().table_name(table).send()).map_err(|e| sdk_error(&e))?;
    Ok(out
        .table()
        .and_then(|t| t.table_name())
        .unwrap_or_default()
        .to_string())
}

/// The item whose string partition key `hash_key` is `key` (consistent read), `None` if absent.
pub fn dynamodb_get_item(
    endpoint: &str,
    table: &str,
    hash_key: &str,
    key: &str,
) -> Option<HashMap<String, AttributeValue>> {
    let c = dynamodb_client(endpoint);
    block_on(
        c.get_item()
            .table_name(table)
            .key(hash_key, AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send(),
    )
    .unwrap_or_else(|e| panic!("dynamodb get_item {table}/{key}: {}", sdk_error(&e)))
    .item
}

/// Writes (overwriting) `item` into `table`.
pub fn dynamodb_put_item(endpoint: &str, table: &str, item: HashMap<String, AttributeValue>) {
    let c = dynamodb_client(endpoint);
    block_on(c.put_item().table_name(table).set_item(Some(item)).send())
        .unwrap_or_else(|e| panic!("dynamodb put_item {table}: {}", sdk_error(&e)));
}

/// An item as plain JSON: each attribute's value without its type (numbers stay strings,
/// as DynamoDB sends them).
pub fn item_json(item: &HashMap<String, AttributeValue>) -> Value {
    let plain = |v: &AttributeValue| match v {
        AttributeValue::S(s) | AttributeValue::N(s) => Value::String(s.clone()),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(n) => Value::Bool(*n),
        other => panic!("no plain JSON for the attribute value {other:?}"),
    };
    Value::Object(item.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
}

/// An IAM policy that lets a user read SSM parameters (and decrypt them): what the tool's
/// own identity needs.
pub fn policy_ssm_read_allowed() -> Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "ssm:GetParameter", "ssm:DescribeParameters", "kms:Decrypt"], "Resource": "*"},
        ],
    })
}

/// An IAM policy that explicitly denies reading SSM parameters (describing them is allowed).
pub fn policy_ssm_read_denied() -> Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "ssm:DescribeParameters"], "Resource": "*"},
            {"Effect": "Deny", "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"], "Resource": "*"},
        ],
    })
}

/// Creates one IAM user per policy (each with that policy alone and an access key), then
/// turns moto's IAM enforcement on. Returns each user's `(access_key_id, secret_access_key)`,
/// in the order of `policies`.
///
/// After this call the `testing` credentials no longer work on this moto: store the
/// parameters you need first. Three AWS actions per user (create user, put policy, create
/// key).
pub fn moto_users_then_enforce(endpoint: &str, policies: &[Value]) -> Vec<(String, String)> {
    let iam = sdk_client!(
        aws_sdk_iam,
        endpoint,
        TEST_ACCESS_KEY_ID,
        TEST_SECRET_ACCESS_KEY
    );
    let keys = policies
        .iter()
        .map(|policy| {
            let name = format!("user-{:08x}", OsRng.next_u32());
            let key = block_on(async {
                iam.create_user().user_name(&name).send().await?;
                iam.put_user_policy()
                    .user_name(&name)
                    .policy_name("policy")
                    .policy_document(policy.to_string())
                    .send()
                    .await?;
                let k = iam.create_access_key().user_name(&name).send().await?;
                Ok::<_, aws_sdk_iam::Error>(k.access_key.expect("access key in the answer"))
            })
            .unwrap_or_else(|e| panic!("iam user {name}: {}", sdk_error(&e)));
            (key.access_key_id, key.secret_access_key)
        })
        .collect();
    enable_iam_auth(endpoint);
    keys
}

/// Creates an IAM user whose only policy explicitly denies reading SSM parameters, then
/// turns moto's IAM enforcement on. Returns `(access_key_id, secret_access_key)`.
///
/// After this call the `testing` credentials no longer work on this moto: store the
/// parameters you need first. Three AWS actions (create user, put policy, create key).
pub fn moto_user_without_ssm_access(endpoint: &str) -> (String, String) {
    moto_users_then_enforce(endpoint, &[policy_ssm_read_denied()])
        .pop()
        .expect("one user")
}

/// Creates a customer-managed KMS key in moto and returns its key id.
pub fn kms_create_key(endpoint: &str) -> String {
    let kms = sdk_client!(
        aws_sdk_kms,
        endpoint,
        TEST_ACCESS_KEY_ID,
        TEST_SECRET_ACCESS_KEY
    );
    let out = block_on(kms.create_key().description("ssm-cosmovisor test").send())
        .unwrap_or_else(|e| panic!("kms create_key: {}", sdk_error(&e)));
    out.key_metadata()
        .expect("key metadata in the answer")
        .key_id()
        .to_string()
}

/// A fresh moto holding a fresh ed25519 key as the SecureString `param`.
pub fn moto_with_key(param: &str) -> (Moto, TestKey) {
    let moto = Moto::start();
    let key = TestKey::ed25519();
    put_key(&moto.endpoint(), param, &key);
    (moto, key)
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
