//! Signed checkpoints: the gateway signs (Ed25519, ring) the chain hash at every
//! multiple of `checkpoint_every` and, when events are waiting, every
//! `checkpoint_secs`. A verifier holding only the public key can then tell that no
//! event up to a checkpoint was changed, removed, added or reordered.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use std::path::Path;

/// Domain separation for checkpoint signatures.
const CONTEXT: &[u8] = b"kakehashi-audit-checkpoint-v1";

/// The key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("audit signing key {path}: {message}")]
pub struct KeyError {
    /// Key file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The gateway's checkpoint signer.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Short id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Signer {
    /// Load the PKCS#8 key written by `kakehashi certs init`.
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        let err = |m: String| KeyError { path: path.display().to_string(), message: m };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| err(format!("not an Ed25519 PKCS#8 key ({e})")))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    /// The public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Sign a checkpoint over (`seq`, `hash`, `signed_at`).
    pub fn sign(&self, seq: i64, hash: &[u8], signed_at: i64) -> Vec<u8> {
        self.sign_raw(&message(seq, hash, signed_at))
    }

    /// Sign a message that carries its own domain separation (a witness line's).
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

fn message(seq: i64, hash: &[u8], signed_at: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 16 + hash.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&signed_at.to_be_bytes());
    m
}

/// The public keys a verifier trusts, oldest first: retired keys in the order they
/// were retired, then the current signer's. Order matters: once a newer key has signed
/// a checkpoint, an older (retired) key may sign nothing after it, so a leaked retired
/// key cannot re-sign a rewritten tail.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<(String, Vec<u8>)>);

impl TrustedKeys {
    /// Trust these public keys, oldest first.
    pub fn new(keys: impl IntoIterator<Item = Vec<u8>>) -> TrustedKeys {
        TrustedKeys(keys.into_iter().map(|k| (key_id(&k), k)).collect())
    }

    /// The retired public keys named in the configuration (hex files like the
    /// `audit-signing.pub` that `certs init` writes, oldest first), then the current
    /// signer's key.
    pub fn load(signer: &Signer, retired: &[std::path::PathBuf]) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for path in retired {
            let err = |m: String| KeyError { path: path.display().to_string(), message: m };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let key = unhex(text.trim())
                .filter(|k| k.len() == 32)
                .ok_or_else(|| err("not a hex Ed25519 public key (64 hex digits, as in audit-signing.pub)".into()))?;
            keys.push(key);
        }
        keys.push(signer.public_key());
        Ok(TrustedKeys::new(keys))
    }

    fn key(&self, key_id: &str) -> Option<&[u8]> {
        self.0.iter().find(|(id, _)| id == key_id).map(|(_, k)| k.as_slice())
    }

    /// Check a checkpoint signature made by the key `key_id`; false when that key is not trusted.
    pub fn verify(&self, key_id: &str, seq: i64, hash: &[u8], signed_at: i64, signature: &[u8]) -> bool {
        self.key(key_id).is_some_and(|k| verify(k, seq, hash, signed_at, signature))
    }

    /// Check a signature over a self-separated message (a witness line's).
    pub fn verify_raw(&self, key_id: &str, message: &[u8], signature: &[u8]) -> bool {
        self.key(key_id).is_some_and(|k| UnparsedPublicKey::new(&ED25519, k).verify(message, signature).is_ok())
    }

    /// Whether `key_id` is trusted.
    pub fn knows(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    /// The position of `key_id` from oldest (0) to current.
    pub fn rank(&self, key_id: &str) -> Option<usize> {
        self.0.iter().position(|(id, _)| id == key_id)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Check a checkpoint signature with a public key.
pub fn verify(public: &[u8], seq: i64, hash: &[u8], signed_at: i64, signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public).verify(&message(seq, hash, signed_at), signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_seq_hash_and_time() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let dir = std::env::temp_dir().join(format!("kk-signer-{}", std::process::id()));
        std::fs::write(&dir, pkcs8.as_ref()).unwrap();
        let s = Signer::load(&dir).unwrap();
        let sig = s.sign(10, &[7; 32], 1000);
        assert!(verify(&s.public_key(), 10, &[7; 32], 1000, &sig));
        assert!(!verify(&s.public_key(), 11, &[7; 32], 1000, &sig));
        assert!(!verify(&s.public_key(), 10, &[8; 32], 1000, &sig));
        assert!(!verify(&s.public_key(), 10, &[7; 32], 1001, &sig));
        std::fs::write(&dir, b"nope").unwrap();
        assert!(Signer::load(&dir).unwrap_err().to_string().contains("Ed25519"));
        std::fs::remove_file(&dir).unwrap();
    }
}
