//! `[log]`: checkpoints of the issuance log.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Invalid};

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Sign a checkpoint every this many records. Default 100.
    pub checkpoint_every: u64,
    /// … or every this often, if records were added. Default 10 s.
    pub checkpoint_interval: Dur,
    /// The JSON-lines file checkpoints are exported to (outside the database).
    /// Default `<data_dir>/checkpoints.jsonl`.
    pub checkpoints_file: Option<PathBuf>,
    /// The log-signing key (Ed25519 PKCS#8 PEM, 0600; created if absent).
    /// Default `<data_dir>/log-signing.key`. Never stored in the database.
    pub signing_key: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 100,
            checkpoint_interval: Dur(Duration::from_secs(10)),
            checkpoints_file: None,
            signing_key: None,
        }
    }
}

impl LogConfig {
    /// Checkpoints at a positive count and interval.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.checkpoint_every == 0 || self.checkpoint_interval.0.is_zero() {
            return Err(Invalid::new(
                "log.checkpoint_every",
                "checkpoint_every and checkpoint_interval must be positive",
            ));
        }
        Ok(())
    }
}
