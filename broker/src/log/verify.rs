//! `logs verify`: the hash chain, and the chain against exported checkpoints.
//!
//! Detects an edited record (its hash), a deleted or inserted record (a gap in
//! `seq` or a broken `prev_hash` link), a chain recomputed after an edit (a
//! checkpoint's hash no longer matches), a truncated tail (the log ends
//! before the last exported checkpoint), a pruned prefix no signed prune
//! statement covers, a decision record its readers cannot decode, and a
//! rule set a decision names that is missing or was replaced. Records after
//! the last checkpoint are covered by the chain alone: the window is the
//! checkpoint interval.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use mintguard_certs::jwt::Jwk;
use serde::Serialize;

use super::checkpoint::{Checkpoint, StatementKind};
use super::decode::{self, Decided};
use super::rule_sets::RuleSetProblem;
use super::{GENESIS, LogRecord, RecordKind};

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: i64,
    /// The last record's hash (the chain head).
    pub head: String,
    /// Checkpoints matched against the chain.
    pub checkpoints: usize,
    /// The last checkpointed sequence number, if any.
    pub last_checkpoint: Option<i64>,
    /// Decision records decoded (each one readable by every reader).
    pub decisions: i64,
    /// Distinct rule sets the decisions name, each present and re-hashed.
    pub rule_sets: usize,
    /// Admin intents with no outcome record (the broker stopped between
    /// the change and its outcome): the change may or may not have been
    /// made; the intent record says what it was.
    pub unfinished_admin_actions: usize,
    /// The first such intent record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_unfinished_admin_action: Option<i64>,
}

/// The first problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum VerifyFailure {
    /// A record's content does not match its hash (edited).
    #[error("record {seq}: content does not match its hash (edited)")]
    BadHash {
        /// The record.
        seq: i64,
    },
    /// A record does not name its predecessor's hash (deleted, inserted or reordered).
    #[error("record {seq}: prev_hash does not match record {}'s hash (a record was deleted, inserted or replaced)", seq - 1)]
    BrokenLink {
        /// The record.
        seq: i64,
    },
    /// Sequence numbers are not contiguous from 1.
    #[error("expected record {expected}, found {found} (records missing or inserted)")]
    Gap {
        /// The sequence number expected.
        expected: i64,
        /// The one found.
        found: i64,
    },
    /// A checkpoint's signature does not verify under the log-signing key.
    #[error("checkpoint at record {seq}: bad signature")]
    BadSignature {
        /// The checkpointed record.
        seq: i64,
    },
    /// The chain's hash at a checkpoint differs from the exported one (recomputed chain).
    #[error(
        "record {seq}: hash differs from the exported checkpoint (the chain was rewritten up to here)"
    )]
    CheckpointMismatch {
        /// The checkpointed record.
        seq: i64,
    },
    /// The pruned prefix ends at a record no signed prune statement covers.
    #[error(
        "the log resumes after record {seq}, but no signed prune statement (in the checkpoint stream or carried by the log_pruned record) covers it (records were removed from the start)"
    )]
    UnanchoredBase {
        /// The last pruned record.
        seq: i64,
    },
    /// A decision record no reader can decode.
    #[error(
        "record {seq} carries a decision no reader can decode ({reason}); {count} such record(s) in all"
    )]
    Undecodable {
        /// The first such record.
        seq: i64,
        /// Why it does not decode.
        reason: String,
        /// How many there are.
        count: i64,
    },
    /// A rule set a decision names is missing, unreadable or replaced.
    #[error("{rule_set}")]
    RuleSet {
        /// What is wrong with it.
        rule_set: RuleSetProblem,
    },
    /// The checkpoint export cannot be read, or part of it is malformed.
    #[error("{reason}")]
    CheckpointFile {
        /// Why.
        reason: String,
    },
    /// The store holds a checkpoint this broker exported that its export
    /// file lacks (the file was truncated, replaced or lost).
    #[error(
        "the store holds checkpoint {seq}, signed by the broker that exports this file, that the checkpoint file lacks (cut back, replaced or lost)"
    )]
    ExportMissing {
        /// The checkpointed record.
        seq: i64,
    },
    /// The log resumes after a base, but no record says it was pruned there.
    #[error(
        "the log resumes after record {seq}, but no log_pruned record accounts for the removed records"
    )]
    UnrecordedPrune {
        /// The last pruned record.
        seq: i64,
    },
    /// The log ends before an exported checkpoint (truncated).
    #[error(
        "the log ends at record {last} but a checkpoint covers record {checkpoint} (records were removed from the end)"
    )]
    Truncated {
        /// The last record present.
        last: i64,
        /// The checkpoint beyond it.
        checkpoint: i64,
    },
}

/// Verifies records (in `seq` order) against each other and against the
/// checkpoints, whose signatures are checked with `key` when given.
pub fn verify_chain(
    records: impl IntoIterator<Item = LogRecord>,
    checkpoints: &[Checkpoint],
    key: Option<&Jwk>,
) -> Result<VerifyReport, VerifyFailure> {
    verify_chain_from(None, records, checkpoints, key)
}

/// [`verify_chain`] for a log whose records through `base.0` were exported
/// and pruned: the chain resumes after `base` (seq, hash), which must itself
/// be an exported checkpoint when checkpoints are given.
pub fn verify_chain_from(
    base: Option<(i64, &str)>,
    records: impl IntoIterator<Item = LogRecord>,
    checkpoints: &[Checkpoint],
    key: Option<&Jwk>,
) -> Result<VerifyReport, VerifyFailure> {
    let mut verifier = ChainVerifier::new(base, checkpoints, key)?;
    for record in records {
        verifier.push(&record)?;
    }
    verifier.finish(&[])
}

/// The first checkpoint the store holds that an export file lacks though
/// one of `exporters` signed it (the file was cut back, replaced or lost
/// lines). A broker passes its own instance id; offline, the exporters the
/// file names. Checkpoints from before exporters were named cannot be
/// attributed to a file and are not counted.
pub fn missing_export(
    stored: &[Checkpoint],
    file: &[Checkpoint],
    exporters: &[&str],
) -> Option<i64> {
    let exported: HashSet<(i64, &str)> = file.iter().map(|c| (c.seq, c.hash.as_str())).collect();
    stored
        .iter()
        .filter(|c| {
            c.exporter
                .as_deref()
                .is_some_and(|e| exporters.contains(&e))
        })
        .find(|c| !exported.contains(&(c.seq, c.hash.as_str())))
        .map(|c| c.seq)
}

/// The chain checked one record at a time, so a log of any length is
/// verified page by page in constant memory: [`ChainVerifier::push`] each
/// record in `seq` order, then [`ChainVerifier::finish`].
pub struct ChainVerifier<'a> {
    checkpoints: BTreeMap<i64, &'a Checkpoint>,
    base: Option<i64>,
    base_hash: Option<String>,
    /// The base is covered by a signed prune statement (in the export, or
    /// carried by the chain's own `log_pruned` record).
    anchored: bool,
    key: Option<&'a Jwk>,
    prev_hash: String,
    expected: i64,
    matched: usize,
    prune_recorded: bool,
    decisions: i64,
    rule_sets: BTreeSet<String>,
    /// The first undecodable decision record (seq, why) and how many.
    undecodable: Option<(i64, String)>,
    undecodable_count: i64,
    /// Admin intents not yet followed by their outcome: request id → seq.
    intents: BTreeMap<String, i64>,
}

impl<'a> ChainVerifier<'a> {
    /// Starts at `base` (see [`verify_chain_from`]), the checkpoints'
    /// signatures checked with `key` when given.
    pub fn new(
        base: Option<(i64, &str)>,
        checkpoints: &'a [Checkpoint],
        key: Option<&'a Jwk>,
    ) -> Result<Self, VerifyFailure> {
        let mut expected_cp: BTreeMap<i64, &Checkpoint> = BTreeMap::new();
        let mut prunes: HashSet<(i64, &str)> = HashSet::new();
        for cp in checkpoints {
            if let Some(key) = key
                && !cp.verify(key)
            {
                return Err(VerifyFailure::BadSignature { seq: cp.seq });
            }
            match cp.kind {
                StatementKind::Checkpoint => {
                    expected_cp.insert(cp.seq, cp);
                }
                StatementKind::Prune => {
                    prunes.insert((cp.seq, cp.hash.as_str()));
                }
            }
        }
        let mut verifier = Self {
            checkpoints: expected_cp,
            base: None,
            base_hash: None,
            anchored: base.is_none(),
            key,
            prev_hash: GENESIS.to_owned(),
            expected: 1,
            matched: 0,
            prune_recorded: base.is_none(),
            decisions: 0,
            rule_sets: BTreeSet::new(),
            undecodable: None,
            undecodable_count: 0,
            intents: BTreeMap::new(),
        };
        if let Some((seq, hash)) = base {
            // Only a signed prune statement vouches for a base: a record in
            // the database (`log_pruned`) can be forged by whoever can write
            // it; the statement it carries cannot (see `push`).
            verifier.anchored = prunes.contains(&(seq, hash));
            verifier.base = Some(seq);
            verifier.base_hash = Some(hash.to_owned());
            verifier.prev_hash = hash.to_owned();
            verifier.expected = seq + 1;
            verifier.matched += 1;
        }
        Ok(verifier)
    }

    /// Checks the next record.
    pub fn push(&mut self, record: &LogRecord) -> Result<(), VerifyFailure> {
        if record.seq != self.expected {
            return Err(VerifyFailure::Gap {
                expected: self.expected,
                found: record.seq,
            });
        }
        if record.prev_hash != self.prev_hash {
            return Err(VerifyFailure::BrokenLink { seq: record.seq });
        }
        if !record.hash_is_valid() {
            return Err(VerifyFailure::BadHash { seq: record.seq });
        }
        if let Some(cp) = self.checkpoints.get(&record.seq) {
            if cp.hash != record.hash {
                return Err(VerifyFailure::CheckpointMismatch { seq: record.seq });
            }
            self.matched += 1;
        }
        match decode::decided(&record.entry) {
            Ok(Some(Decided::Decision(parts))) => {
                self.decisions += 1;
                if !self.rule_sets.contains(&parts.decision.rule_set_hash) {
                    self.rule_sets.insert(parts.decision.rule_set_hash.clone());
                }
            }
            Ok(_) => {}
            Err(why) => {
                self.undecodable_count += 1;
                self.undecodable.get_or_insert((record.seq, why.0));
            }
        }
        if record.entry.kind == RecordKind::Admin {
            if record.entry.outcome.as_deref() == Some("admin_intent") {
                self.intents
                    .insert(record.entry.request_id.clone(), record.seq);
            } else {
                self.intents.remove(&record.entry.request_id);
            }
        }
        // The prune's record, or its intent (written before the delete, so
        // a crash before the outcome still leaves the prune accounted for).
        let prune_record = match record.entry.outcome.as_deref() {
            Some("log_pruned") => true,
            Some("admin_intent") => record.entry.body["action"] == "log_pruned",
            _ => false,
        };
        if let Some(seq) = self.base
            && prune_record
            && record.entry.body["details"]["through_seq"].as_i64() == Some(seq)
        {
            self.prune_recorded = true;
            // The signed statement the pruning broker exported, carried in
            // the chain so every replica (each with its own export file)
            // can check the base against it.
            if !self.anchored
                && let Some(key) = self.key
                && let Ok(statement) = serde_json::from_value::<Checkpoint>(
                    record.entry.body["details"]["statement"].clone(),
                )
            {
                self.anchored = statement.kind == StatementKind::Prune
                    && statement.seq == seq
                    && self.base_hash.as_deref() == Some(statement.hash.as_str())
                    && statement.verify(key);
            }
        }
        self.prev_hash.clone_from(&record.hash);
        self.expected += 1;
        Ok(())
    }

    /// The rule sets the decisions pushed so far name: the caller loads
    /// each ([`super::rule_sets::check`]) and passes the problems to
    /// [`Self::finish`].
    pub fn rule_set_hashes(&self) -> impl Iterator<Item = &str> {
        self.rule_sets.iter().map(String::as_str)
    }

    /// The report, once every record was pushed and every rule set named
    /// was checked (`rule_set_problems`: what that check found).
    pub fn finish(
        self,
        rule_set_problems: &[RuleSetProblem],
    ) -> Result<VerifyReport, VerifyFailure> {
        if let (false, Some(seq)) = (self.anchored, self.base) {
            return Err(VerifyFailure::UnanchoredBase { seq });
        }
        if let (false, Some(seq)) = (self.prune_recorded, self.base) {
            return Err(VerifyFailure::UnrecordedPrune { seq });
        }
        if let Some((seq, reason)) = self.undecodable {
            return Err(VerifyFailure::Undecodable {
                seq,
                reason,
                count: self.undecodable_count,
            });
        }
        if let Some(problem) = rule_set_problems.first() {
            return Err(VerifyFailure::RuleSet {
                rule_set: problem.clone(),
            });
        }
        let last = self.expected - 1;
        let last_checkpoint = self.checkpoints.keys().next_back().copied();
        if let Some(cp) = last_checkpoint
            && cp > last
        {
            return Err(VerifyFailure::Truncated {
                last,
                checkpoint: cp,
            });
        }
        Ok(VerifyReport {
            records: last,
            head: self.prev_hash,
            checkpoints: self.matched,
            last_checkpoint,
            decisions: self.decisions,
            rule_sets: self.rule_sets.len(),
            unfinished_admin_actions: self.intents.len(),
            first_unfinished_admin_action: self.intents.values().min().copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::LogEntry;
    use super::super::checkpoint::LogSigner;
    use super::*;

    fn chain(n: i64) -> Vec<LogRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let entry = LogEntry {
                    time_ms: seq,
                    kind: RecordKind::Admin,
                    request_id: format!("r{seq}"),
                    identity: None,
                    grant: None,
                    node: None,
                    outcome: Some("allow".into()),
                    body: serde_json::json!({"n": seq}),
                };
                let r = LogRecord::seal(seq, entry, prev.clone());
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn detects_each_kind_of_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
        let records = chain(10);
        let cps = vec![
            signer.sign(5, &records[4].hash, 1).unwrap(),
            signer.sign(8, &records[7].hash, 2).unwrap(),
        ];
        let key = signer.public_jwk();
        let ok = verify_chain(records.clone(), &cps, Some(key)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.last_checkpoint),
            (10, 2, Some(8))
        );

        let mut edited = records.clone();
        edited[2].entry.body = serde_json::json!({"n": 99});
        assert_eq!(
            verify_chain(edited, &cps, Some(key)),
            Err(VerifyFailure::BadHash { seq: 3 })
        );

        let mut deleted = records.clone();
        deleted.remove(3);
        assert_eq!(
            verify_chain(deleted, &cps, Some(key)),
            Err(VerifyFailure::Gap {
                expected: 4,
                found: 5
            })
        );

        // Recompute the whole chain after an edit: only the checkpoint catches it.
        let mut rewritten = chain(10);
        rewritten[1].entry.outcome = Some("deny".into());
        let mut prev = GENESIS.to_owned();
        for r in &mut rewritten {
            *r = LogRecord::seal(r.seq, r.entry.clone(), prev.clone());
            prev = r.hash.clone();
        }
        assert!(verify_chain(rewritten.clone(), &[], None).is_ok());
        assert_eq!(
            verify_chain(rewritten, &cps, Some(key)),
            Err(VerifyFailure::CheckpointMismatch { seq: 5 })
        );

        let truncated = records[..6].to_vec();
        assert_eq!(
            verify_chain(truncated, &cps, Some(key)),
            Err(VerifyFailure::Truncated {
                last: 6,
                checkpoint: 8
            })
        );

        let mut forged = cps.clone();
        forged[0].hash = records[3].hash.clone();
        assert_eq!(
            verify_chain(records, &forged, Some(key)),
            Err(VerifyFailure::BadSignature { seq: 5 })
        );
    }

    /// The tail after `base`, re-chained, with a `log_pruned` record for it
    /// (as someone with write access to the database could forge it).
    fn pruned_tail(records: &[LogRecord], base: usize) -> Vec<LogRecord> {
        pruned_tail_with(records, base, serde_json::Value::Null)
    }

    /// [`pruned_tail`] whose `log_pruned` record carries `statement`.
    fn pruned_tail_with(
        records: &[LogRecord],
        base: usize,
        statement: serde_json::Value,
    ) -> Vec<LogRecord> {
        let mut prev = records[base - 1].hash.clone();
        records[base..]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut entry = r.entry.clone();
                if i == 0 {
                    entry.outcome = Some("log_pruned".into());
                    entry.body = serde_json::json!({"details": {"through_seq": base, "statement": statement}});
                }
                let sealed = LogRecord::seal(r.seq, entry, prev.clone());
                prev = sealed.hash.clone();
                sealed
            })
            .collect()
    }

    #[test]
    fn a_base_needs_a_signed_prune_statement() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
        let key = signer.public_jwk();
        let records = chain(10);
        let cp5 = signer.sign(5, &records[4].hash, 1).unwrap();
        let cp8 = signer.sign(8, &records[7].hash, 2).unwrap();
        let tail = pruned_tail(&records, 8);
        let base = Some((8, records[7].hash.as_str()));
        // History before the last checkpoint deleted, the base set there and
        // a log_pruned record forged: refused without a prune statement.
        assert_eq!(
            verify_chain_from(base, tail.clone(), &[cp5.clone(), cp8.clone()], Some(key)),
            Err(VerifyFailure::UnanchoredBase { seq: 8 })
        );
        // A checkpoint re-labelled as a prune statement does not verify.
        let mut relabelled = cp8.clone();
        relabelled.kind = StatementKind::Prune;
        assert_eq!(
            verify_chain_from(base, tail.clone(), &[cp5.clone(), relabelled], Some(key)),
            Err(VerifyFailure::BadSignature { seq: 8 })
        );
        // The broker's own prune statement covers it.
        let statement = signer
            .sign_statement(StatementKind::Prune, Some("b1"), 8, &records[7].hash, 3)
            .unwrap();
        let ok = verify_chain_from(
            base,
            tail,
            &[cp5.clone(), cp8.clone(), statement.clone()],
            Some(key),
        )
        .unwrap();
        assert_eq!(ok.records, 10);
        // A replica whose own export lacks it finds it in the chain's
        // log_pruned record; a statement signed by another key, for
        // another base, or a checkpoint passed off as one, does not count.
        let carried = pruned_tail_with(&records, 8, serde_json::to_value(&statement).unwrap());
        let ok = verify_chain_from(base, carried, &[cp5.clone(), cp8.clone()], Some(key)).unwrap();
        assert_eq!(ok.records, 10);
        let other = LogSigner::load_or_create(&dir.path().join("other.key")).unwrap();
        let forged = [
            other
                .sign_statement(StatementKind::Prune, Some("b1"), 8, &records[7].hash, 3)
                .unwrap(),
            signer
                .sign_statement(StatementKind::Prune, Some("b1"), 5, &records[4].hash, 3)
                .unwrap(),
            cp8.clone(),
        ];
        for statement in forged {
            let tail = pruned_tail_with(&records, 8, serde_json::to_value(&statement).unwrap());
            assert_eq!(
                verify_chain_from(base, tail, &[cp5.clone(), cp8.clone()], Some(key)),
                Err(VerifyFailure::UnanchoredBase { seq: 8 })
            );
        }
    }

    #[test]
    fn an_undecodable_decision_fails_after_the_chain_is_checked() {
        let mut records = chain(3);
        records[1].entry.kind = RecordKind::Decision;
        records[1].entry.body = serde_json::json!({"request": {"grant": "g", "ttl_seconds": 1.5}});
        let mut prev = GENESIS.to_owned();
        for r in &mut records {
            *r = LogRecord::seal(r.seq, r.entry.clone(), prev.clone());
            prev = r.hash.clone();
        }
        assert!(matches!(
            verify_chain(records, &[], None),
            Err(VerifyFailure::Undecodable {
                seq: 2,
                count: 1,
                ..
            })
        ));
    }
}
