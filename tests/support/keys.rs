//! Validator keys for the tests: freshly generated, in CometBFT's JSON layout, checked
//! against an implementation we did not write (tendermint-rs); and the assertions that an
//! output holds no form of a key's secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// A JSON string's content for `s` (quotes, backslashes, control characters escaped).
pub fn json_escaped(s: &str) -> Vec<u8> {
    let q = serde_json::to_string(s).expect("string to json");
    q.as_bytes()[1..q.len() - 1].to_vec()
}
