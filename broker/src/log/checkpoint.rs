//! Signed checkpoints: every N records or T seconds the broker signs
//! `(seq, hash)` with a log-signing key that lives in a file, never in the
//! database, and appends the checkpoint to a JSON-lines file outside it.
//! `mintguard logs verify --checkpoints FILE` checks the chain against them.

use std::io::Write;
use std::path::{Path, PathBuf};

use mintguard_certs::jwt::{Expiring, Jwk, JwtAlgorithm, SigningKey};
use mintguard_certs::svid::PrivateKey;
use serde::{Deserialize, Serialize};

/// A signed checkpoint, one JSON line in the export file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: i64,
    /// That record's hash.
    pub hash: String,
    /// When it was signed, ms since the epoch.
    pub time_ms: i64,
    /// A compact JWS (EdDSA) over `{"seq","hash","time_ms"}` by the log-signing key.
    pub jws: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    seq: i64,
    hash: String,
    time_ms: i64,
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

    /// Signs a checkpoint of `(seq, hash)` at `time_ms`.
    pub fn sign(&self, seq: i64, hash: &str, time_ms: i64) -> Result<Checkpoint, CheckpointError> {
        let payload = Payload {
            seq,
            hash: hash.to_owned(),
            time_ms,
        };
        let jws = self.key.sign(&payload).map_err(|e| CheckpointError::Key {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            time_ms,
            jws,
        })
    }
}

impl Checkpoint {
    /// Whether the JWS is valid under `key` and says what the fields say.
    pub fn verify(&self, key: &Jwk) -> bool {
        match key.verify(&self.jws) {
            Ok(payload) => serde_json::from_value::<Payload>(payload).is_ok_and(|p| {
                p.seq == self.seq && p.hash == self.hash && p.time_ms == self.time_ms
            }),
            Err(_) => false,
        }
    }
}

/// Appends checkpoints to a JSON-lines file (fsync'd per line).
pub fn export(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut line = serde_json::to_string(checkpoint).unwrap_or_default();
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads an exported checkpoint file.
pub fn read_file(path: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| CheckpointError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}
