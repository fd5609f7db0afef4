//! The broker's side of the issuance log: its instance id (which names its
//! chain and its exported lines), and the checkpoints and statements it
//! signs and exports.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::Broker;
use crate::clock::now_ms;
use crate::log::checkpoint::{self, LogSigner, StatementKind};

/// Reads this broker's instance id from `<data_dir>/instance.id`, creating
/// it (128 random bits, hex) on first start.
pub(super) fn instance_id(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("instance.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if crate::ids::is_hex_id(id.trim()) => return Ok(id.trim().to_owned()),
        Ok(_) => return Err(format!("{}: not an instance id", path.display())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", path.display()));
        }
        Err(_) => {}
    }
    let id = crate::ids::secret_hex::<16>().map_err(|e| e.to_string())?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new is O_EXCL: a symlink planted at the path is not followed.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(id.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(id)
}

/// Signs and exports checkpoints every N records or T seconds.
pub struct LogWriter {
    pub(super) signer: LogSigner,
    pub(super) export: std::path::PathBuf,
    /// This broker's instance id (`<data_dir>/instance.id`): its exported
    /// lines name it, so its `logs verify` knows which of the store's
    /// checkpoints its own file must hold (replicas export to files of their own).
    pub(super) instance: String,
    pub(super) every: i64,
    pub(super) last: Mutex<(i64, i64)>, // (seq checkpointed, time ms)
    /// The other replicas' chains' heads this broker last signed (see
    /// [`Broker::checkpoint_if_due`]), from its export file at start.
    pub(super) witnessed: Mutex<HashMap<String, (i64, String)>>,
}

impl Broker {
    /// Signs, stores and exports a checkpoint of this replica's chain's head
    /// when `every` records were added since the last one, or `force` (the
    /// interval timer) and any were.
    pub async fn checkpoint_if_due(&self, seq: i64, hash: &str, force: bool) {
        let due = {
            let Ok(mut last) = self.log.last.lock() else {
                return;
            };
            let due = seq > last.0 && (force || seq - last.0 >= self.log.every);
            if due {
                *last = (seq, now_ms());
            }
            due
        };
        if !due {
            return;
        }
        let result = self.checkpoint(self.store.chain(), seq, hash).await;
        if let Err(e) = result {
            tracing::error!(seq, %e, "checkpoint failed; it will be retried");
            if let Ok(mut last) = self.log.last.lock() {
                *last = (0, now_ms());
            }
            return;
        }
        self.witness_other_chains().await;
    }

    /// The other chains' heads this broker's export file signed last.
    pub(super) fn witnessed_in(export: &Path, own_chain: &str) -> HashMap<String, (i64, String)> {
        let mut witnessed: HashMap<String, (i64, String)> = HashMap::new();
        for cp in checkpoint::read_file(export).unwrap_or_default() {
            if cp.chain == own_chain || cp.kind != StatementKind::Checkpoint {
                continue;
            }
            if witnessed
                .get(&cp.chain)
                .is_none_or(|(seq, _)| cp.seq > *seq)
            {
                witnessed.insert(cp.chain.clone(), (cp.seq, cp.hash.clone()));
            }
        }
        witnessed
    }

    /// Signs every other chain's head that moved since this broker last
    /// did, into its own export (and the store): so every replica's file
    /// anchors every chain, and a chain deleted or cut back is caught by
    /// any replica's `logs verify`, not only by its own replica's file
    /// (which a decommissioned replica no longer has).
    async fn witness_other_chains(&self) {
        let Ok(chains) = self.store.chains().await else {
            return;
        };
        for chain in chains {
            // A retired chain is closed by its final statement; its head
            // row moving on is for `logs verify` to find, not to sign.
            if chain.chain == self.store.chain() || chain.retired_at_ms.is_some() {
                continue;
            }
            let seen = self
                .log
                .witnessed
                .lock()
                .ok()
                .and_then(|w| w.get(&chain.chain).cloned());
            if let Some((seq, hash)) = &seen {
                // A head behind, or another hash at the same record, than
                // this broker signed: the chain was cut back or rewritten.
                // Signing it would put a second history in the export.
                if chain.seq < *seq || (chain.seq == *seq && chain.hash != *hash) {
                    tracing::error!(
                        chain = chain.chain,
                        witnessed_seq = seq,
                        witnessed_hash = hash,
                        head_seq = chain.seq,
                        head_hash = chain.hash,
                        "another chain's head moved back or changed since this broker signed it: not signed; run `mintguard logs verify`"
                    );
                    continue;
                }
                if chain.seq == *seq {
                    continue;
                }
            }
            match self.checkpoint(&chain.chain, chain.seq, &chain.hash).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(chain = chain.chain, %e, "signing another chain's head failed; it will be retried");
                }
            }
        }
    }

    /// Signs a checkpoint of `(seq, hash)` of `chain`, exports it (fsync'd)
    /// and stores it.
    async fn checkpoint(&self, chain: &str, seq: i64, hash: &str) -> Result<(), String> {
        let cp = self
            .log
            .signer
            .sign_statement(
                StatementKind::Checkpoint,
                Some(&self.log.instance),
                chain,
                seq,
                hash,
                now_ms(),
            )
            .map_err(|e| e.to_string())?;
        checkpoint::export(&self.log.export, &cp).map_err(|e| e.to_string())?;
        // Signed and exported: another chain's head counts as witnessed
        // from here, whether or not the store takes the statement.
        if chain != self.store.chain()
            && let Ok(mut w) = self.log.witnessed.lock()
        {
            w.insert(chain.to_owned(), (seq, hash.to_owned()));
        }
        self.store
            .add_checkpoint(&cp)
            .await
            .map_err(|e| e.to_string())
    }

    pub fn log_public_key(&self) -> &mintguard_certs::jwt::Jwk {
        self.log.signer.public_jwk()
    }

    /// This broker's instance id (see [`LogWriter`]).
    pub fn instance_id(&self) -> &str {
        &self.log.instance
    }

    /// Signs and exports (fsync'd) a statement of `kind` about `(seq, hash)`
    /// of `chain`: that the records through it are about to be pruned
    /// (written before they are deleted, so a pruned base is never without
    /// it), or that the chain was retired there.
    pub fn export_statement(
        &self,
        kind: StatementKind,
        chain: &str,
        seq: i64,
        hash: &str,
    ) -> Result<checkpoint::Checkpoint, String> {
        let statement = self
            .log
            .signer
            .sign_statement(kind, Some(&self.log.instance), chain, seq, hash, now_ms())
            .map_err(|e| e.to_string())?;
        checkpoint::export(&self.log.export, &statement).map_err(|e| e.to_string())?;
        Ok(statement)
    }
}
