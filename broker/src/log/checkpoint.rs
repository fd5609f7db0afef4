//! Signed checkpoints: every N records or T seconds the broker signs
//! `(seq, hash)` with a log-signing key that lives in a file, never in the
//! database, and appends the checkpoint to a JSON-lines file outside it.
//! `mintguard logs verify --checkpoints FILE` checks the chain against them.
//!
//! The same stream carries **prune statements**: before retention deletes
//! the records through a checkpoint, the broker signs and exports a
//! statement that it did. A log whose base (the pruned prefix's end) no
//! signed statement covers does not verify, so someone with write access to
//! the database cannot delete history and forge the prune record inside it.
//!
//! Each line is signed over its kind and the exporting broker's instance id
//! as well, so a checkpoint cannot be passed off as a prune statement, and
//! a broker can tell which of the store's checkpoints its own file must hold.
//!
//! Each statement names the chain it is about (a replica's instance id;
//! absent for the unnamed chain). A **final** statement closes a retired
//! replica's chain: its head is signed, so the chain can be neither
//! extended nor cut back afterwards without `logs verify` noticing.

use std::io::Write;
use std::path::{Path, PathBuf};

use mintguard_certs::jwt::{Expiring, Jwk, JwtAlgorithm, SigningKey};
use mintguard_certs::svid::PrivateKey;
use serde::{Deserialize, Serialize};

/// What a line of the export stream states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    /// The chain reached `(seq, hash)`.
    #[default]
    Checkpoint,
    /// The records through `(seq, hash)` were deleted by retention.
    Prune,
    /// The chain was retired at `(seq, hash)`: it has no record after it.
    Final,
}

impl StatementKind {
    /// Whether it is a checkpoint (not a prune or final statement).
    pub fn is_checkpoint(&self) -> bool {
        *self == StatementKind::Checkpoint
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Checkpoint => "checkpoint",
            StatementKind::Prune => "prune",
            StatementKind::Final => "final",
        }
    }
}

/// A signed checkpoint (or prune or final statement), one JSON line in the export file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain (absent: the unnamed chain).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
    /// The last record covered.
    pub seq: i64,
    /// That record's hash.
    pub hash: String,
    /// When it was signed, ms since the epoch.
    pub time_ms: i64,
    /// A checkpoint or a prune statement (absent: a checkpoint).
    #[serde(default, skip_serializing_if = "StatementKind::is_checkpoint")]
    pub kind: StatementKind,
    /// The instance id of the broker that exported it (absent in lines
    /// written before brokers had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter: Option<String>,
    /// A compact JWS (EdDSA) by the log-signing key over
    /// `{"seq","hash","time_ms"}` and, when present, `kind`, `exporter`
    /// and `chain`.
    pub jws: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    chain: String,
    seq: i64,
    hash: String,
    time_ms: i64,
    #[serde(default, skip_serializing_if = "StatementKind::is_checkpoint")]
    kind: StatementKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exporter: Option<String>,
}

impl Expiring for Payload {
    fn expires_at(&self) -> i64 {
        i64::MAX
    }
}

/// Errors of checkpoint signing, export and checking.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The key file could not be read, created or parsed.
    #[error("log-signing key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The export file could not be written or read.
    #[error("checkpoint file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The last line of the export file is incomplete (a write cut short).
    #[error("checkpoint file {}: the last line ({line}) is torn (incomplete): {reason}", path.display())]
    TornTail {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why it does not parse.
        reason: String,
    },
    /// A line of the export file is malformed.
    #[error("checkpoint file {}, line {line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// The log-signing key (Ed25519, a PKCS#8 PEM file, 0600).
pub struct LogSigner {
    key: SigningKey,
}

impl LogSigner {
    /// Loads the key from `path`, creating it (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, CheckpointError> {
        let err = |reason: String| CheckpointError::Key {
            path: path.to_path_buf(),
            reason,
        };
        if path.exists() {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "accessible to other users (mode {:o}); run chmod 600",
                    meta.permissions().mode() & 0o777
                )));
            }
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?,
            );
            let key = PrivateKey::from_pem(&pem).map_err(|e| err(e.to_string()))?;
            let key =
                SigningKey::from_pkcs8(JwtAlgorithm::EdDsa, key).map_err(|e| err(e.to_string()))?;
            Ok(Self { key })
        } else {
            let key = SigningKey::generate(JwtAlgorithm::EdDsa).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(key.private_key().to_pem().as_bytes())
                .map_err(|e| err(e.to_string()))?;
            file.sync_all().map_err(|e| err(e.to_string()))?;
            Ok(Self { key })
        }
    }

    /// The public key, to verify checkpoints with.
    pub fn public_jwk(&self) -> &Jwk {
        self.key.jwk()
    }

    /// Signs a checkpoint of `(seq, hash)` of the unnamed chain at `time_ms`.
    pub fn sign(&self, seq: i64, hash: &str, time_ms: i64) -> Result<Checkpoint, CheckpointError> {
        self.sign_statement(StatementKind::Checkpoint, None, "", seq, hash, time_ms)
    }

    /// Signs a statement of `kind` about `(seq, hash)` of `chain` at
    /// `time_ms`, naming the broker instance `exporter` that exports it.
    pub fn sign_statement(
        &self,
        kind: StatementKind,
        exporter: Option<&str>,
        chain: &str,
        seq: i64,
        hash: &str,
        time_ms: i64,
    ) -> Result<Checkpoint, CheckpointError> {
        let payload = Payload {
            chain: chain.to_owned(),
            seq,
            hash: hash.to_owned(),
            time_ms,
            kind,
            exporter: exporter.map(str::to_owned),
        };
        let jws = self.key.sign(&payload).map_err(|e| CheckpointError::Key {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        Ok(Checkpoint {
            chain: chain.to_owned(),
            seq,
            hash: hash.to_owned(),
            time_ms,
            kind,
            exporter: exporter.map(str::to_owned),
            jws,
        })
    }
}

impl Checkpoint {
    /// Whether the JWS is valid under `key` and says what the fields say.
    pub fn verify(&self, key: &Jwk) -> bool {
        match key.verify(&self.jws) {
            Ok(payload) => serde_json::from_value::<Payload>(payload).is_ok_and(|p| {
                p.chain == self.chain
                    && p.seq == self.seq
                    && p.hash == self.hash
                    && p.time_ms == self.time_ms
                    && p.kind == self.kind
                    && p.exporter == self.exporter
            }),
            Err(_) => false,
        }
    }

    /// The store keeps `seq, hash, time_ms, jws` (and the chain, to key
    /// them by); the rest is read back out of the JWS payload (signed;
    /// checked when the checkpoint is verified).
    pub fn from_stored(seq: i64, hash: String, time_ms: i64, jws: String) -> Self {
        let payload = jws
            .split('.')
            .nth(1)
            .and_then(|p| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Payload>(&bytes).ok());
        let (kind, exporter, chain) = payload
            .map_or((StatementKind::Checkpoint, None, String::new()), |p| {
                (p.kind, p.exporter, p.chain)
            });
        Self {
            chain,
            seq,
            hash,
            time_ms,
            kind,
            exporter,
            jws,
        }
    }
}

/// Appends checkpoints to a JSON-lines file (fsync'd per line). A last
/// line left torn by a crash mid-write (no newline) is cut off first — it
/// never completed, so nothing else holds it — and the cut is logged;
/// otherwise every later line would sit behind a malformed one.
pub fn export(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    // One export at a time in this process: another's line still being
    // written must never look torn to this one's tail check.
    static EXPORTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = EXPORTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    cut_torn_tail(&file, path).map_err(io)?;
    let mut line = serde_json::to_string(checkpoint).unwrap_or_default();
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Truncates `file` back to its last newline when it does not end in one.
fn cut_torn_tail(file: &std::fs::File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 || (file.read_at(&mut last, len - 1)? == 1 && last[0] == b'\n') {
        return Ok(());
    }
    // Scan back for the last complete line, a block at a time.
    let mut end = len;
    let mut block = vec![0u8; 4096];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(block.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(0);
        file.read_exact_at(&mut block[..n], start)?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    tracing::warn!(
        file = %path.display(),
        bytes = len - keep,
        "cut off a torn last line (a write cut short) before appending"
    );
    file.set_len(keep)?;
    file.sync_all()
}

/// Reads an exported checkpoint file. Every failure is an error: a file
/// that cannot be read, any line that does not parse, and a last line
/// without its newline that does not parse (torn, reported as such).
pub fn read_file(path: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let lines = text.split_inclusive('\n').count();
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l.trim_end_matches('\n')).map_err(|e| {
                let (path, line, reason) = (path.to_path_buf(), i + 1, e.to_string());
                if i + 1 == lines && !l.ends_with('\n') {
                    CheckpointError::TornTail { path, line, reason }
                } else {
                    CheckpointError::Malformed { path, line, reason }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_export() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let first = signer.sign(1, "a", 1).unwrap();
        export(&path, &first).unwrap();
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"seq\": 2, \"ha")).unwrap();
        assert!(matches!(
            read_file(&path),
            Err(CheckpointError::TornTail { line: 2, .. })
        ));
        let second = signer.sign(3, "c", 2).unwrap();
        export(&path, &second).unwrap();
        assert_eq!(read_file(&path).unwrap(), vec![first, second.clone()]);
        // A file that is nothing but a torn line starts over.
        std::fs::write(&path, "{\"seq\"").unwrap();
        export(&path, &second).unwrap();
        assert_eq!(read_file(&path).unwrap(), vec![second]);
    }
}
