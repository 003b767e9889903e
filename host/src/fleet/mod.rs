//! Fleet rollouts over the upstream broker: no server beyond the broker weir already forwards to.
//!
//! Topics (prefix `[fleet] topic_prefix`, default `weir/fleet`):
//! - `<prefix>/<id>/rollout`: the gateway's control topic; a retained, signed [`Envelope`] holding
//!   a [`Manifest`].
//! - `<prefix>/<id>/status`: the gateway's status, retained, JSON; a last will marks it offline.
//! - `<prefix>/artifacts/<sha256>/<i>`: chunk `i` of a plugin, retained, [`CHUNK_BYTES`] each.
//!
//! A manifest is signed with ed25519 over [`SIGNING_CONTEXT`] followed by the manifest's exact
//! bytes (the envelope carries them as a string, so nothing is re-serialized before checking).
//! A gateway verifies the signature against the public keys in its config before it looks at
//! anything else, refuses a sequence number at or below the last it accepted (kept in
//! `<data_dir>/fleet/state.json`), fetches the chunks, checks their sha256 against the manifest,
//! and then runs the plugin in the step's shadow for the policy's duration: the candidate is
//! promoted if its dead-letter and error rates stay within the policy's bounds, else discarded.
//!
//! [`agent`] is the gateway's side, [`client`] the operator's (`weir fleet`).

pub mod agent;
pub mod client;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// A plugin travels in retained messages of this many bytes (the last may be shorter).
pub const CHUNK_BYTES: usize = 256 << 10;
/// The largest rollout message a gateway reads.
pub const MAX_ENVELOPE_BYTES: usize = 64 << 10;
/// Signatures cover this, then the manifest's bytes: a signature made for anything else (another
/// protocol, another version of this one) never verifies as a rollout.
pub const SIGNING_CONTEXT: &[u8] = b"weir-fleet-rollout-v1\n";

/// What to roll out, to whom, and how to decide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Increases with every rollout from the signer: a gateway refuses one at or below the last
    /// it accepted (`weir fleet rollout` uses the time in milliseconds).
    pub seq: u64,
    /// The gateway ids it is for: a manifest copied to another gateway's topic is refused there.
    pub gateways: Vec<String>,
    pub pipeline: String,
    pub step: String,
    /// The plugin's kind: `decoder`, `transformer` or `aggregator`.
    pub world: String,
    /// sha256 of the plugin, hex.
    pub sha256: String,
    pub size: u64,
    pub chunks: u32,
    pub policy: Policy,
}

/// How long the candidate runs in the shadow, and what it must do there to be promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub shadow_ms: u64,
    /// Dead letters (rejections included) per event in, at most.
    pub max_dead_letter_rate: f64,
    /// Failures (traps, time and memory limits, bad output) per event in, at most.
    pub max_error_rate: f64,
    /// The candidate must have seen this many events; with fewer it is not promoted.
    pub min_events: u64,
}

/// What travels on a control topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The manifest's JSON text, exactly as signed.
    pub manifest: String,
    /// base64 of the 64-byte ed25519 signature; missing or empty: unsigned.
    #[serde(default)]
    pub signature: String,
}

/// The topics of one fleet.
#[derive(Clone, Debug)]
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn rollout(&self, id: &str) -> String {
        format!("{}/{id}/rollout", self.prefix)
    }

    pub fn status(&self, id: &str) -> String {
        format!("{}/{id}/status", self.prefix)
    }

    /// Every gateway's status.
    pub fn all_status(&self) -> String {
        format!("{}/+/status", self.prefix)
    }

    pub fn chunk(&self, sha256: &str, index: u32) -> String {
        format!("{}/artifacts/{sha256}/{index}", self.prefix)
    }

    pub fn chunks(&self, sha256: &str) -> String {
        format!("{}/artifacts/{sha256}/+", self.prefix)
    }

    /// The chunk index of `topic`, if it is a chunk of `sha256`.
    pub fn chunk_index(&self, topic: &str, sha256: &str) -> Option<u32> {
        let rest = topic.strip_prefix(&self.prefix)?;
        let rest = rest.strip_prefix("/artifacts/")?;
        let index = rest.strip_prefix(sha256)?.strip_prefix('/')?;
        index.parse().ok()
    }
}

/// Whether `level` can be one level of a topic: 1 to 64 bytes, no separators, wildcards or
/// control characters.
pub fn valid_level(level: &str) -> bool {
    !level.is_empty()
        && level.len() <= 64
        && !level
            .chars()
            .any(|c| c == '/' || c == '+' || c == '#' || c.is_control())
}

/// A public key as written in `[fleet] keys`: base64 of its 32 bytes.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64.decode(text.trim()).map_err(|_| {
        format!(
            "{:?} is not base64; copy the key `weir fleet keygen` printed",
            crate::fsutil::elide(text, 60)
        )
    })?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{} bytes; an ed25519 public key has 32 (copy the key `weir fleet keygen` printed)",
            b.len()
        )
    })?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| {
        "not an ed25519 public key (copy the key `weir fleet keygen` printed)".to_owned()
    })?;
    Ok(key)
}

/// The text form of a public key.
pub fn public_key_text(key: &[u8; 32]) -> String {
    BASE64.encode(key)
}

/// A signing key: 32 secret bytes.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new key from the system's randomness.
    pub fn generate() -> std::io::Result<Self> {
        use std::io::Read;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The key file's text: base64 of the secret, one line.
    pub fn to_text(&self) -> String {
        format!("{}\n", BASE64.encode(self.0.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| "not a key file of `weir fleet keygen` (not base64)".to_owned())?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "not a key file of `weir fleet keygen` (not 32 bytes)".to_owned())?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The envelope of `manifest`, signed.
    pub fn sign(&self, manifest: &Manifest) -> Envelope {
        use ed25519_dalek::Signer;
        let text = serde_json::to_string(manifest).expect("manifests serialize");
        let signature = self.0.sign(&signed_bytes(&text));
        Envelope {
            manifest: text,
            signature: BASE64.encode(signature.to_bytes()),
        }
    }
}

fn signed_bytes(manifest: &str) -> Vec<u8> {
    let mut bytes = SIGNING_CONTEXT.to_vec();
    bytes.extend_from_slice(manifest.as_bytes());
    bytes
}

/// Why a rollout message was refused before anything was fetched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("not a rollout message: {0}")]
    Malformed(String),
    #[error(
        "unsigned: a rollout must be signed by one of the keys in [fleet] keys (weir fleet rollout --key)"
    )]
    Unsigned,
    #[error(
        "the signature does not verify with any of the {0} key(s) in [fleet] keys: signed by another key, or altered on the way"
    )]
    BadSignature(usize),
}

/// Checks `payload`'s signature against `keys`, then reads its manifest.
pub fn open(payload: &[u8], keys: &[[u8; 32]]) -> Result<Manifest, Refusal> {
    if payload.len() > MAX_ENVELOPE_BYTES {
        return Err(Refusal::Malformed(format!(
            "{} bytes, more than the {MAX_ENVELOPE_BYTES} a rollout message may have",
            payload.len()
        )));
    }
    let envelope: Envelope = serde_json::from_slice(payload).map_err(|e| {
        Refusal::Malformed(format!(
            "{e}; expected {{\"manifest\": \"...\", \"signature\": \"...\"}}"
        ))
    })?;
    if envelope.signature.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let signature = BASE64
        .decode(envelope.signature.as_bytes())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .ok_or(Refusal::BadSignature(keys.len()))?;
    let message = signed_bytes(&envelope.manifest);
    let verified = keys.iter().any(|key| {
        ed25519_dalek::VerifyingKey::from_bytes(key)
            .is_ok_and(|k| k.verify_strict(&message, &signature).is_ok())
    });
    if !verified {
        return Err(Refusal::BadSignature(keys.len()));
    }
    serde_json::from_str(&envelope.manifest)
        .map_err(|e| Refusal::Malformed(format!("signed, but its manifest does not read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(seq: u64) -> Manifest {
        Manifest {
            seq,
            gateways: vec!["barn-1".into()],
            pipeline: "farm".into(),
            step: "range".into(),
            world: "transformer".into(),
            sha256: "00".repeat(32),
            size: 10,
            chunks: 1,
            policy: Policy {
                shadow_ms: 1000,
                max_dead_letter_rate: 0.0,
                max_error_rate: 0.0,
                min_events: 1,
            },
        }
    }

    #[test]
    fn a_signed_manifest_opens_with_its_key_only() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let envelope = key.sign(&manifest(7));
        let payload = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(open(&payload, &[key.public_key()]).unwrap(), manifest(7));
        assert_eq!(
            open(&payload, &[other.public_key(), key.public_key()])
                .unwrap()
                .seq,
            7
        );
        assert_eq!(
            open(&payload, &[other.public_key()]),
            Err(Refusal::BadSignature(1))
        );
    }

    #[test]
    fn altered_unsigned_and_malformed_messages_are_refused() {
        let key = SigningKey::generate().unwrap();
        let keys = [key.public_key()];
        let mut envelope = key.sign(&manifest(7));
        envelope.manifest = envelope.manifest.replace("\"seq\":7", "\"seq\":8");
        let altered = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(open(&altered, &keys), Err(Refusal::BadSignature(1)));
        envelope.signature.clear();
        let unsigned = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(open(&unsigned, &keys), Err(Refusal::Unsigned));
        assert!(matches!(open(b"{", &keys), Err(Refusal::Malformed(_))));
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(open(&big, &keys), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_text(&key.to_text()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let text = public_key_text(&key.public_key());
        assert_eq!(parse_public_key(&text).unwrap(), key.public_key());
        assert!(parse_public_key("abc").is_err());
        assert!(parse_public_key(&BASE64.encode([1u8; 31])).is_err());
    }

    #[test]
    fn chunk_topics_name_their_index() {
        let t = Topics::new("weir/fleet/");
        let sha = "ab".repeat(32);
        assert_eq!(t.chunk_index(&t.chunk(&sha, 12), &sha), Some(12));
        assert_eq!(t.chunk_index(&t.chunk(&sha, 12), &"cd".repeat(32)), None);
        assert_eq!(t.chunk_index("weir/fleet/x/status", &sha), None);
        assert!(
            valid_level("barn-3") && !valid_level("a/b") && !valid_level("") && !valid_level("#")
        );
    }
}
