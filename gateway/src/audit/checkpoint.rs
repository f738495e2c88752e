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
        self.pair.sign(&message(seq, hash, signed_at)).as_ref().to_vec()
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
