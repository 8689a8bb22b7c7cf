//! The consensus key: CometBFT's `priv_validator_key.json`, parsed and checked.
//!
//! Validation is stricter than CometBFT's own loader, which copies the public
//! key out of the private key bytes without checking it: we derive the public
//! key from the private key and the address from the public key, and require
//! both to match what the file says. Private bytes only ever live in a
//! [`SecretBuf`]; the JSON handed to the node is assembled inside one.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::secret::{SecretBuf, SecretError, MAX_SECRET_LEN};

/// The key algorithms CometBFT validators use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    /// `tendermint/PrivKeyEd25519`: 64 bytes, seed ‖ public key.
    Ed25519,
    /// `tendermint/PrivKeySecp256k1`: a 32-byte scalar; 33-byte compressed public key.
    Secp256k1,
}

impl KeyType {
    fn from_priv_type(s: &str) -> Option<Self> {
        match s {
            "tendermint/PrivKeyEd25519" => Some(KeyType::Ed25519),
            "tendermint/PrivKeySecp256k1" => Some(KeyType::Secp256k1),
            _ => None,
        }
    }

    /// The `priv_key.type` string.
    pub(crate) fn priv_type(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "tendermint/PrivKeyEd25519",
            KeyType::Secp256k1 => "tendermint/PrivKeySecp256k1",
        }
    }

    /// The `pub_key.type` string.
    pub(crate) fn pub_type(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "tendermint/PubKeyEd25519",
            KeyType::Secp256k1 => "tendermint/PubKeySecp256k1",
        }
    }

    fn priv_len(self) -> usize {
        match self {
            KeyType::Ed25519 => 64,
            KeyType::Secp256k1 => 32,
        }
    }

    fn pub_len(self) -> usize {
        match self {
            KeyType::Ed25519 => 32,
            KeyType::Secp256k1 => 33,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Secp256k1 => "secp256k1",
        })
    }
}

/// Why a key file or parameter value was rejected. Messages never contain
/// key material: serde's and base64's own messages can echo input, so they
/// are replaced by positions and field names.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Zero bytes.
    #[error("the value is empty (expected a CometBFT priv_validator_key.json document)")]
    Empty,
    /// More than SSM can store.
    #[error("the value is larger than the {MAX_SECRET_LEN}-byte maximum SSM can store ({len} bytes read); it cannot be a priv_validator_key.json")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// NUL bytes never occur in a key file and usually mean a binary upload.
    #[error("the value contains NUL bytes (offset {offset}); expected a JSON text document")]
    Nul {
        /// First NUL.
        offset: usize,
    },
    /// Not JSON, or not an object of the right shape.
    #[error("not a valid JSON key document ({what} at line {line}, column {column})")]
    Json {
        /// Syntax error, unexpected end, or wrong structure.
        what: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A required field is missing.
    #[error("field `{0}` is missing (a CometBFT key has address, pub_key{{type,value}}, priv_key{{type,value}})")]
    Missing(&'static str),
    /// `priv_key.type` is not one we know.
    #[error("unknown key type `{0}` in priv_key.type (supported: tendermint/PrivKeyEd25519, tendermint/PrivKeySecp256k1)")]
    UnknownType(String),
    /// `pub_key.type` does not match the private key's algorithm.
    #[error("pub_key.type is `{found}` but priv_key.type needs `{expected}`")]
    PubTypeMismatch {
        /// What the file says.
        found: String,
        /// What the private key type implies.
        expected: &'static str,
    },
    /// A base64 field does not decode.
    #[error("`{0}` is not valid base64")]
    Base64(&'static str),
    /// The private key value is empty: a stripped key file.
    #[error(
        "priv_key.value is empty: this is a stripped (public-only) key file, not a usable key"
    )]
    Stripped,
    /// Wrong number of private key bytes.
    #[error("priv_key.value decodes to {found} bytes; a {key_type} private key has {expected}")]
    PrivLength {
        key_type: KeyType,
        /// Decoded length.
        found: usize,
        /// Required length.
        expected: usize,
    },
    /// Wrong number of public key bytes.
    #[error("pub_key.value decodes to {found} bytes; a {key_type} public key has {expected}")]
    PubLength {
        key_type: KeyType,
        /// Decoded length.
        found: usize,
        /// Required length.
        expected: usize,
    },
    /// The private key is not a valid scalar/seed.
    #[error("priv_key.value is not a valid {0} private key")]
    InvalidPrivate(KeyType),
    /// The public half stored inside an ed25519 private key is not the seed's.
    #[error("priv_key.value's embedded public key (bytes 32..64) is not derived from its seed (corrupt or spliced key)")]
    EmbeddedPubMismatch,
    /// `pub_key` is not derived from `priv_key`.
    #[error(
        "pub_key.value is not the public key of priv_key (derived {derived}, file says {found})"
    )]
    PubMismatch {
        /// Base64 of the derived public key.
        derived: String,
        /// Base64 of the public key in the file.
        found: String,
    },
    /// `address` is not derived from `pub_key`.
    #[error("address {found} is not derived from pub_key (expected {derived})")]
    AddressMismatch {
        /// Derived address.
        derived: String,
        /// Address in the file.
        found: String,
    },
    /// `address` is not 20 bytes of hex.
    #[error("address `{0}` is not 40 hex digits")]
    AddressFormat(String),
    /// Secret memory could not be had (message of the underlying error).
    #[error("{0}")]
    Secret(String),
}

impl From<SecretError> for KeyError {
    fn from(e: SecretError) -> Self {
        KeyError::Secret(e.to_string())
    }
}

/// The public identity of a key: algorithm, public key and address.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PublicIdentity {
    key_type: KeyType,
    pub_key: Vec<u8>,
    address: [u8; 20],
}

impl PublicIdentity {
    /// Algorithm.
    pub(crate) fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Address as CometBFT prints it (uppercase hex).
    pub(crate) fn address_hex(&self) -> String {
        hex_upper(&self.address)
    }

    /// Public key in base64, as in the key file.
    pub(crate) fn pub_key_b64(&self) -> String {
        B64.encode(&self.pub_key)
    }

    /// Raw public key bytes.
    pub(crate) fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.key_type,
            self.address_hex(),
            self.pub_key_b64()
        )
    }
}

/// A complete, validated consensus key. The only way to get one is
/// [`ValidatorKey::parse`], so holding one means every check passed.
pub(crate) struct ValidatorKey {
    identity: PublicIdentity,
    /// Raw private key bytes exactly as CometBFT stores them.
    private: SecretBuf,
}

impl fmt::Debug for ValidatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValidatorKey({:?}, private: [REDACTED])", self.identity)
    }
}

/// What a key file turned out to be.
#[derive(Debug)]
pub(crate) enum KeyFile {
    /// A complete key with its private half.
    Complete(ValidatorKey),
    /// A stripped key: public half only, `priv_key.value` empty (its address
    /// checked against its public key).
    Stripped,
}

#[derive(Deserialize)]
struct RawKey<'a> {
    #[serde(borrow, default)]
    address: Option<&'a str>,
    #[serde(borrow, default)]
    pub_key: Option<RawTyped<'a>>,
    #[serde(borrow, default)]
    priv_key: Option<RawTyped<'a>>,
}

#[derive(Deserialize)]
struct RawTyped<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a str>,
    #[serde(borrow, default)]
    value: Option<&'a str>,
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn parse_hex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn truncate_for_message(s: &str) -> String {
    let mut t: String = s.chars().take(64).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

fn derive_address(key_type: KeyType, pub_key: &[u8]) -> [u8; 20] {
    let sha = Sha256::digest(pub_key);
    let mut out = [0u8; 20];
    match key_type {
        KeyType::Ed25519 => out.copy_from_slice(&sha[..20]),
        KeyType::Secp256k1 => {
            use ripemd::Ripemd160;
            out.copy_from_slice(&Ripemd160::digest(sha));
        }
    }
    out
}

/// Derives the public key from raw CometBFT private key bytes of the right length.
fn derive_public(key_type: KeyType, private: &[u8]) -> Result<Vec<u8>, KeyError> {
    match key_type {
        KeyType::Ed25519 => {
            let seed: &[u8; 32] = private[..32].try_into().expect("length checked");
            // SigningKey zeroizes itself on drop (ed25519-dalek "zeroize").
            let sk = ed25519_dalek::SigningKey::from_bytes(seed);
            let derived = sk.verifying_key().to_bytes();
            if derived[..] != private[32..64] {
                return Err(KeyError::EmbeddedPubMismatch);
            }
            Ok(derived.to_vec())
        }
        KeyType::Secp256k1 => {
            use k256::elliptic_curve::sec1::ToEncodedPoint;
            // SecretKey zeroizes itself on drop.
            let sk = k256::SecretKey::from_slice(private)
                .map_err(|_| KeyError::InvalidPrivate(KeyType::Secp256k1))?;
            Ok(sk.public_key().to_encoded_point(true).as_bytes().to_vec())
        }
    }
}

fn json_error(e: &serde_json::Error) -> KeyError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "unexpected structure or escaped string",
        Category::Io => "read error",
    };
    KeyError::Json {
        what,
        line: e.line(),
        column: e.column(),
    }
}

fn decode_pub(key_type: KeyType, value: &str) -> Result<Vec<u8>, KeyError> {
    let pub_key = B64
        .decode(value)
        .map_err(|_| KeyError::Base64("pub_key.value"))?;
    if pub_key.len() != key_type.pub_len() {
        return Err(KeyError::PubLength {
            key_type,
            found: pub_key.len(),
            expected: key_type.pub_len(),
        });
    }
    Ok(pub_key)
}

fn check_size(bytes: &[u8]) -> Result<(), KeyError> {
    if bytes.is_empty() || bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_SECRET_LEN {
        return Err(KeyError::TooLarge { len: bytes.len() });
    }
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(KeyError::Nul { offset });
    }
    Ok(())
}

impl KeyFile {
    /// Parses a key document and classifies it as complete or stripped.
    /// Complete keys pass every check of [`ValidatorKey::parse`].
    pub(crate) fn parse(bytes: &[u8]) -> Result<KeyFile, KeyError> {
        check_size(bytes)?;
        let raw: RawKey<'_> = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
        let priv_key = raw.priv_key.ok_or(KeyError::Missing("priv_key"))?;
        let priv_type = priv_key.ty.ok_or(KeyError::Missing("priv_key.type"))?;
        let key_type = KeyType::from_priv_type(priv_type)
            .ok_or_else(|| KeyError::UnknownType(truncate_for_message(priv_type)))?;
        let priv_value = priv_key.value.ok_or(KeyError::Missing("priv_key.value"))?;
        let pub_key = raw.pub_key.ok_or(KeyError::Missing("pub_key"))?;
        let pub_type = pub_key.ty.ok_or(KeyError::Missing("pub_key.type"))?;
        if pub_type != key_type.pub_type() {
            return Err(KeyError::PubTypeMismatch {
                found: truncate_for_message(pub_type),
                expected: key_type.pub_type(),
            });
        }
        let pub_value = pub_key.value.ok_or(KeyError::Missing("pub_key.value"))?;
        let address = raw.address.ok_or(KeyError::Missing("address"))?;
        let file_address = parse_hex20(address)
            .ok_or_else(|| KeyError::AddressFormat(truncate_for_message(address)))?;
        let file_pub = decode_pub(key_type, pub_value)?;

        if priv_value.is_empty() {
            check_address(key_type, &file_pub, file_address)?;
            return Ok(KeyFile::Stripped);
        }

        // Decode straight into secret memory.
        let mut private = SecretBuf::with_capacity(priv_value.len())?;
        private
            .append_with(|spare| B64.decode_slice(priv_value.as_bytes(), spare))
            .map_err(|_| KeyError::Base64("priv_key.value"))?;
        let found = private.len();
        if found != key_type.priv_len() {
            return Err(KeyError::PrivLength {
                key_type,
                found,
                expected: key_type.priv_len(),
            });
        }
        let derived = derive_public(key_type, private.expose_secret())?;
        if derived != file_pub {
            return Err(KeyError::PubMismatch {
                derived: B64.encode(&derived),
                found: B64.encode(&file_pub),
            });
        }
        let address = check_address(key_type, &derived, file_address)?;
        Ok(KeyFile::Complete(ValidatorKey {
            identity: PublicIdentity {
                key_type,
                pub_key: derived,
                address,
            },
            private,
        }))
    }
}

fn check_address(key_type: KeyType, pub_key: &[u8], found: [u8; 20]) -> Result<[u8; 20], KeyError> {
    let derived = derive_address(key_type, pub_key);
    if derived != found {
        return Err(KeyError::AddressMismatch {
            derived: hex_upper(&derived),
            found: hex_upper(&found),
        });
    }
    Ok(derived)
}

impl ValidatorKey {
    /// Parses and validates a complete key; a stripped key is an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<ValidatorKey, KeyError> {
        match KeyFile::parse(bytes)? {
            KeyFile::Complete(k) => Ok(k),
            KeyFile::Stripped => Err(KeyError::Stripped),
        }
    }

    /// The public identity.
    pub(crate) fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// Serialises the complete key, in CometBFT's layout, inside secret memory.
    pub(crate) fn to_secret_json(&self) -> Result<SecretBuf, KeyError> {
        let (head, tail) = self.json_parts();
        let b64_len = self.private.len().div_ceil(3) * 4;
        let mut out = SecretBuf::with_capacity(head.len() + b64_len + tail.len())?;
        out.extend_from_slice(head.as_bytes())?;
        out.append_with(|spare| B64.encode_slice(self.private.expose_secret(), spare))
            .map_err(|_| KeyError::from(SecretError::TooLarge { cap: b64_len }))?;
        out.extend_from_slice(tail.as_bytes())?;
        Ok(out)
    }

    /// The stripped form: address and public key kept, `priv_key.value` empty,
    /// as the original tool writes it. Contains nothing secret.
    pub(crate) fn stripped_json(&self) -> Vec<u8> {
        let (head, tail) = self.json_parts();
        let mut v = head.into_bytes();
        v.extend_from_slice(tail.as_bytes());
        v
    }

    /// The JSON before and after the private key's base64 value.
    fn json_parts(&self) -> (String, &'static str) {
        let id = &self.identity;
        let head = format!(
            "{{\n  \"address\": \"{}\",\n  \"pub_key\": {{\n    \"type\": \"{}\",\n    \"value\": \"{}\"\n  }},\n  \"priv_key\": {{\n    \"type\": \"{}\",\n    \"value\": \"",
            id.address_hex(),
            id.key_type.pub_type(),
            id.pub_key_b64(),
            id.key_type.priv_type(),
        );
        (head, "\"\n  }\n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_SEED: [u8; 32] = [7u8; 32];

    fn ed_json(seed: [u8; 32]) -> String {
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pk = sk.verifying_key().to_bytes();
        let mut priv64 = seed.to_vec();
        priv64.extend_from_slice(&pk);
        let addr = hex_upper(&Sha256::digest(pk)[..20]);
        format!(
            r#"{{"address":"{addr}","pub_key":{{"type":"tendermint/PubKeyEd25519","value":"{}"}},"priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{}"}}}}"#,
            B64.encode(pk),
            B64.encode(priv64)
        )
    }

    fn secp_json(scalar: [u8; 32]) -> String {
        use k256::elliptic_curve::sec1::ToEncodedPoint;
        let sk = k256::SecretKey::from_slice(&scalar).unwrap();
        let pk = sk.public_key().to_encoded_point(true).as_bytes().to_vec();
        let addr = hex_upper(&derive_address(KeyType::Secp256k1, &pk));
        format!(
            r#"{{"address":"{addr}","pub_key":{{"type":"tendermint/PubKeySecp256k1","value":"{}"}},"priv_key":{{"type":"tendermint/PrivKeySecp256k1","value":"{}"}}}}"#,
            B64.encode(&pk),
            B64.encode(scalar)
        )
    }

    #[test]
    fn ed25519_round_trip_and_strip() {
        let j = ed_json(ED_SEED);
        let k = ValidatorKey::parse(j.as_bytes()).unwrap();
        assert_eq!(k.identity().key_type(), KeyType::Ed25519);
        let out = k.to_secret_json().unwrap();
        let again = ValidatorKey::parse(out.expose_secret()).unwrap();
        assert_eq!(again.identity(), k.identity());
        let stripped = k.stripped_json();
        match KeyFile::parse(&stripped).unwrap() {
            KeyFile::Stripped => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ValidatorKey::parse(&stripped).unwrap_err(),
            KeyError::Stripped
        );
        let seed_b64 = B64.encode(ED_SEED);
        assert!(!String::from_utf8_lossy(&stripped).contains(&seed_b64[..20]));
    }

    #[test]
    fn secp256k1_round_trip() {
        let j = secp_json([3u8; 32]);
        let k = ValidatorKey::parse(j.as_bytes()).unwrap();
        assert_eq!(k.identity().key_type(), KeyType::Secp256k1);
        assert_eq!(k.identity().pub_key().len(), 33);
        let out = k.to_secret_json().unwrap();
        assert!(ValidatorKey::parse(out.expose_secret()).is_ok());
    }

    #[test]
    fn rejects_each_defect_with_its_own_error() {
        let good = ed_json(ED_SEED);
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v.clone();
            f(&mut v);
            ValidatorKey::parse(v.to_string().as_bytes()).unwrap_err()
        };
        assert_eq!(ValidatorKey::parse(b"").unwrap_err(), KeyError::Empty);
        assert!(matches!(
            ValidatorKey::parse(b"not json").unwrap_err(),
            KeyError::Json { .. }
        ));
        assert_eq!(
            with(&|v| {
                v.as_object_mut().unwrap().remove("priv_key");
            }),
            KeyError::Missing("priv_key")
        );
        assert!(matches!(
            with(&|v| v["priv_key"]["type"] = "tendermint/PrivKeySr25519".into()),
            KeyError::UnknownType(_)
        ));
        assert_eq!(
            with(&|v| v["priv_key"]["value"] = "!!!notbase64".into()),
            KeyError::Base64("priv_key.value")
        );
        assert!(matches!(
            with(&|v| v["priv_key"]["value"] = B64.encode([1u8; 32]).into()),
            KeyError::PrivLength {
                found: 32,
                expected: 64,
                ..
            }
        ));
        let other = ed_json([9u8; 32]);
        let ov: serde_json::Value = serde_json::from_str(&other).unwrap();
        assert!(matches!(
            with(&|v| v["pub_key"]["value"] = ov["pub_key"]["value"].clone()),
            KeyError::PubMismatch { .. }
        ));
        assert!(matches!(
            with(&|v| v["address"] = ov["address"].clone()),
            KeyError::AddressMismatch { .. }
        ));
        assert!(matches!(
            with(&|v| v["pub_key"]["type"] = "tendermint/PubKeySecp256k1".into()),
            KeyError::PubTypeMismatch { .. }
        ));
        let mut nul = good.clone().into_bytes();
        nul.push(0);
        assert!(matches!(
            ValidatorKey::parse(&nul).unwrap_err(),
            KeyError::Nul { .. }
        ));
        let big = vec![b' '; MAX_SECRET_LEN + 1];
        let mut big2 = big.clone();
        big2[0] = b'{';
        assert!(matches!(
            ValidatorKey::parse(&big2).unwrap_err(),
            KeyError::TooLarge { .. }
        ));
    }

    #[test]
    fn spliced_ed25519_key_is_rejected() {
        // Seed of one key with the public half of another: CometBFT would
        // accept this and sign with a key that is not the one it advertises.
        let a: serde_json::Value = serde_json::from_str(&ed_json([1u8; 32])).unwrap();
        let b: serde_json::Value = serde_json::from_str(&ed_json([2u8; 32])).unwrap();
        let pa = B64
            .decode(a["priv_key"]["value"].as_str().unwrap())
            .unwrap();
        let pb = B64
            .decode(b["priv_key"]["value"].as_str().unwrap())
            .unwrap();
        let mut spliced = pa[..32].to_vec();
        spliced.extend_from_slice(&pb[32..]);
        let mut v = b.clone();
        v["priv_key"]["value"] = B64.encode(spliced).into();
        assert_eq!(
            ValidatorKey::parse(v.to_string().as_bytes()).unwrap_err(),
            KeyError::EmbeddedPubMismatch
        );
    }

    #[test]
    fn error_messages_never_echo_the_private_value() {
        let j = ed_json(ED_SEED);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let priv_b64 = v["priv_key"]["value"].as_str().unwrap().to_string();
        // A number where a string belongs makes serde quote the value in its
        // own message; ours must not.
        let bad = j.replace(&format!("\"{priv_b64}\""), "123456789");
        let e = ValidatorKey::parse(bad.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains("123456789"), "{e}");
        let truncated = &j[..j.len() - 10];
        let e = ValidatorKey::parse(truncated.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&priv_b64[..16]), "{e}");
    }
}
