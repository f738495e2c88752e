//! The witness: the audit chain anchored outside its database. Every signed
//! checkpoint, every start and clean stop of the audit writer, every pruning anchor and
//! every append the writer did not make is also written, signed, as one line of an
//! append-only file (ideally on another volume, or another host's mount) and, when
//! `[audit.forward]` is configured, sent to the ATNA repository. An insider who can
//! rewrite the database cannot rewrite those: `audit verify --witness FILE` then proves
//! that no event up to the newest witnessed one was removed, reordered or changed, and
//! that nothing was appended while the gateway was stopped.
//!
//! A line is JSON: `{"kind","seq","hash","at","key_id","signature"}`, the signature
//! (Ed25519, the audit key) over a domain-separated message binding all of them, so a
//! witnessed checkpoint cannot be turned into a start or a prune.

use super::checkpoint::{Signer, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a witness line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A checkpoint signed into the database (at `seq`, hash `hash`).
    Checkpoint,
    /// The audit writer started with the chain head at `seq` (0: an empty log).
    Start,
    /// The audit writer stopped cleanly with the head at `seq`: nothing may follow
    /// until the next start.
    Shutdown,
    /// `audit prune` left the anchor at `seq`: events up to it were removed on purpose.
    Prune,
    /// The writer found events up to `seq` it had not written (appended behind its back).
    Foreign,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Checkpoint => "checkpoint",
            Kind::Start => "start",
            Kind::Shutdown => "shutdown",
            Kind::Prune => "prune",
            Kind::Foreign => "foreign",
        }
    }
}

/// One witnessed fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What happened.
    pub kind: Kind,
    /// Sequence number of the chain head it concerns.
    pub seq: i64,
    /// That event's chain hash, hex (64 zeros for an empty log).
    pub hash: String,
    /// When, Unix seconds.
    pub at: i64,
    /// Id of the signing key.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// Domain separation for witness lines (checkpoints in the database use their own).
const CONTEXT: &[u8] = b"kakehashi-audit-witness-v1";

fn message(kind: Kind, seq: i64, hash: &[u8], at: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 16 + 16 + hash.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(kind.code().as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at.to_be_bytes());
    m
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex, or None.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

impl Record {
    /// A record signed by `signer`.
    pub fn signed(signer: &Signer, kind: Kind, seq: i64, hash: &[u8], at: i64) -> Record {
        Record {
            kind,
            seq,
            hash: hex(hash),
            at,
            key_id: signer.key_id().to_string(),
            signature: hex(&signer.sign_raw(&message(kind, seq, hash, at))),
        }
    }

    /// The chain hash it names.
    pub fn hash_bytes(&self) -> Option<Vec<u8>> {
        unhex(&self.hash).filter(|h| h.len() == 32)
    }

    /// Why the signature is not acceptable, if it is not.
    pub fn refused(&self, keys: &TrustedKeys) -> Option<String> {
        let Some(hash) = self.hash_bytes() else { return Some("its hash is not 64 hex digits".into()) };
        let Some(sig) = unhex(&self.signature) else { return Some("its signature is not hex".into()) };
        if !keys.knows(&self.key_id) {
            return Some(format!("signed by key {}, which is not among the trusted keys", self.key_id));
        }
        (!keys.verify_raw(&self.key_id, &message(self.kind, self.seq, &hash, self.at), &sig))
            .then(|| "the signature is forged or does not match its key".into())
    }
}

/// Why the witness file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The file could not be opened, read or written.
    #[error("witness {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not a witness record.
    #[error("witness {path} line {line}: {why}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The writing side: appends signed lines and flushes each to disk before returning.
pub struct Witness {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// Also sent to the ATNA repository, when configured.
    forward: Option<super::forward::Forwarder>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Witness {
    /// Open (creating, mode 0600, its directory 0700 when made here) the witness file.
    pub fn open(path: &Path, forward: Option<super::forward::Forwarder>) -> Result<Witness, WitnessError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| WitnessError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(io)?;
        Ok(Witness { path: path.to_path_buf(), file: Mutex::new(file), forward })
    }

    /// Append `record` and flush it to disk; also offer it to the forwarder.
    pub fn append(&self, record: &Record) -> Result<(), WitnessError> {
        let io = |source| WitnessError::Io { path: self.path.display().to_string(), source };
        let mut line = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        {
            let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f.write_all(&line).and_then(|()| f.sync_data()).map_err(io)?;
        }
        if let Some(fw) = &self.forward {
            line.pop();
            fw.offer_message("AuditWitness", String::from_utf8_lossy(&line).into_owned());
        }
        Ok(())
    }

    /// Sign and append a record; failures are logged (the database still holds the
    /// chain and its signed checkpoints) and returned for the caller's counters.
    pub fn witness(&self, signer: &Signer, kind: Kind, seq: i64, hash: &[u8]) -> bool {
        let at = super::now_micros() / 1_000_000;
        match self.append(&Record::signed(signer, kind, seq, hash, at)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, kind = kind.code(), seq, "the audit witness could not be written");
                false
            }
        }
    }
}

/// Read every record of a witness file, in order. A partial last line (a crash while
/// appending) is ignored; any other bad line is an error.
pub fn read(path: &Path) -> Result<Vec<Record>, WitnessError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| WitnessError::Io { path: p.clone(), source })?;
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || (i + 1 == lines.len() && !complete) {
            continue;
        }
        let r: Record = serde_json::from_slice(line).map_err(|e| WitnessError::Line {
            path: p.clone(),
            line: i + 1,
            why: e.to_string(),
        })?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(dir: &Path) -> Signer {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        std::fs::write(dir.join("k.pk8"), pkcs8.as_ref()).unwrap();
        Signer::load(&dir.join("k.pk8")).unwrap()
    }

    #[test]
    fn lines_are_signed_over_their_kind_seq_hash_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path());
        let keys = TrustedKeys::new([s.public_key()]);
        let path = dir.path().join("w/witness.log");
        let w = Witness::open(&path, None).unwrap();
        assert!(w.witness(&s, Kind::Checkpoint, 10, &[7; 32]));
        assert!(w.witness(&s, Kind::Shutdown, 12, &[8; 32]));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let rs = read(&path).unwrap();
        assert_eq!(rs.len(), 2);
        assert!(rs.iter().all(|r| r.refused(&keys).is_none()));
        for forged in [
            Record { kind: Kind::Start, ..rs[1].clone() },
            Record { seq: 13, ..rs[1].clone() },
            Record { hash: hex(&[9; 32]), ..rs[1].clone() },
            Record { at: rs[1].at + 1, ..rs[1].clone() },
        ] {
            assert!(forged.refused(&keys).is_some(), "{forged:?}");
        }
        // A line cut short by a crash is ignored; a damaged line in the middle is not.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"kind\":\"chec").unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        let text = std::fs::read_to_string(&path).unwrap().replacen("\"seq\"", "\"sq\"", 1);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(read(&path), Err(WitnessError::Line { line: 1, .. })));
    }
}
