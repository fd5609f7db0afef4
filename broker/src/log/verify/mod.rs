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
    /// Records checked, on every chain.
    pub records: i64,
    /// The last record's hash (the chain head) of a log of one chain;
    /// empty when there are several (see `chains`).
    pub head: String,
    /// Checkpoints matched against the chains.
    pub checkpoints: usize,
    /// The last checkpointed sequence number of a log of one chain, if any.
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
    /// Each chain, by name.
    pub chains: Vec<ChainReport>,
}

/// What a verification covered of one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The chain (`""`: the unnamed one).
    pub chain: String,
    /// Its last seq (records pruned from its start included).
    pub records: i64,
    /// Its last record's hash.
    pub head: String,
    /// Checkpoints matched against it.
    pub checkpoints: usize,
    /// Its last checkpointed seq, if any.
    pub last_checkpoint: Option<i64>,
    /// Whether it was retired, closed by a signed final statement.
    pub retired: bool,
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
    /// What the store reads record bodies with (SQLite's dictionaries) was
    /// edited, replaced or removed.
    #[error("{reason}")]
    Codec {
        /// What is wrong.
        reason: String,
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
    /// A failure on a named chain (a replica's).
    #[error("chain {chain}: {failure}")]
    InChain {
        /// The chain.
        chain: String,
        /// What is wrong with it.
        failure: Box<VerifyFailure>,
    },
    /// A signed statement (or a record) names a chain the store does not
    /// hold: the chain was removed.
    #[error(
        "a signed statement names chain {chain:?} (at record {seq}), which the store does not hold (a replica's chain was removed)"
    )]
    MissingChain {
        /// The chain.
        chain: String,
        /// The record the statement is about.
        seq: i64,
    },
    /// The chain's records end before (or differ at) the head the store records.
    #[error(
        "the chain's records end at record {last}, but the store records its head at record {head} (records were removed from the end, or replaced)"
    )]
    HeadMismatch {
        /// The last record present.
        last: i64,
        /// The head the store records.
        head: i64,
    },
    /// A record no chain the store holds accounts for: of an unregistered
    /// chain, or beyond its chain's head. Readers never see it; someone
    /// wrote it into the database.
    #[error(
        "record {seq} of chain {chain:?} is beyond any head the store records (of an unknown chain, or past its chain's head): it was written into the database, not appended"
    )]
    StrayRecord {
        /// Its chain.
        chain: String,
        /// Its seq.
        seq: i64,
    },
    /// A record follows the chain's signed final statement.
    #[error(
        "record {seq} follows the chain's final statement at record {closed_at} (a retired chain was extended)"
    )]
    AfterFinal {
        /// The record.
        seq: i64,
        /// Where the final statement closed the chain.
        closed_at: i64,
    },
    /// The store says the chain was retired, but no signed final statement closes it.
    #[error(
        "the chain is retired but no signed final statement closes it (its last record is {last}): it may have been cut back"
    )]
    UnsealedRetirement {
        /// The chain's last record.
        last: i64,
        /// Its hash, as the records give it (the head a final statement
        /// closing it would name).
        head: String,
    },
    /// Two signed statements about one record of a chain name different
    /// hashes: a signer was shown two histories (a witness signed a head
    /// someone rewrote), or one history was rewritten and re-signed.
    #[error(
        "two signed statements about record {seq} name different hashes ({first} and {second}): the chain was shown or rewritten two ways"
    )]
    Equivocation {
        /// The record.
        seq: i64,
        /// One statement's hash.
        first: String,
        /// The other's.
        second: String,
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

/// Where a chain starts and how it ends, as the store says: what
/// [`ChainVerifier::for_chains`] checks each chain's records against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainStart {
    /// The chain.
    pub chain: String,
    /// The base left by retention (seq, hash), if it was pruned.
    pub base: Option<(i64, String)>,
    /// Its head as the store records it (seq, hash): the chain's records
    /// must reach it (records appended while verifying may pass it).
    pub head: Option<(i64, String)>,
    /// Whether the store says an operator retired it.
    pub retired: bool,
}

/// One chain's part of a verification.
struct ChainState<'a> {
    checkpoints: BTreeMap<i64, &'a Checkpoint>,
    /// The chain's signed final statement, if it was retired.
    closed_at: Option<&'a Checkpoint>,
    /// The head the store records.
    head: Option<(i64, String)>,
    retired: bool,
    base: Option<i64>,
    base_hash: Option<String>,
    /// The base is covered by a signed prune statement (in the export, or
    /// carried by a `log_pruned` record).
    anchored: bool,
    prune_recorded: bool,
    prev_hash: String,
    expected: i64,
    matched: usize,
}

/// The log checked one record at a time, so a log of any length is
/// verified page by page in constant memory: [`ChainVerifier::push`] each
/// chain's records in `seq` order (the chains one after another, or
/// interleaved), then [`ChainVerifier::finish`].
pub struct ChainVerifier<'a> {
    chains: BTreeMap<String, ChainState<'a>>,
    key: Option<&'a Jwk>,
    decisions: i64,
    rule_sets: BTreeSet<String>,
    /// The first undecodable decision record (chain, seq, why) and how many.
    undecodable: Option<(String, i64, String)>,
    undecodable_count: i64,
    /// Admin intents not yet followed by their outcome: request id → seq.
    intents: BTreeMap<String, i64>,
}

/// `failure` as found on `chain`: the unnamed chain's failures read as
/// they did before chains had names.
fn on_chain(chain: &str, failure: VerifyFailure) -> VerifyFailure {
    if chain.is_empty() {
        failure
    } else {
        VerifyFailure::InChain {
            chain: chain.to_owned(),
            failure: Box::new(failure),
        }
    }
}

impl<'a> ChainVerifier<'a> {
    /// Starts a log of one chain, the unnamed one, at `base` (see
    /// [`verify_chain_from`]), the checkpoints' signatures checked with
    /// `key` when given.
    pub fn new(
        base: Option<(i64, &str)>,
        checkpoints: &'a [Checkpoint],
        key: Option<&'a Jwk>,
    ) -> Result<Self, VerifyFailure> {
        let start = ChainStart {
            chain: String::new(),
            base: base.map(|(seq, hash)| (seq, hash.to_owned())),
            head: None,
            retired: false,
        };
        Self::for_chains(&[start], checkpoints, key)
    }

    /// Starts a segment of `chain` that continues after `from` (a record
    /// already verified: its base is not checked again), against
    /// `checkpoints` whose signatures were checked before. What `logs
    /// prune` checks of the records it exports.
    pub fn continuing(
        chain: &str,
        from: Option<(i64, &str)>,
        checkpoints: &'a [Checkpoint],
    ) -> Result<Self, VerifyFailure> {
        let start = ChainStart {
            chain: chain.to_owned(),
            base: from.map(|(seq, hash)| (seq, hash.to_owned())),
            head: None,
            retired: false,
        };
        let mut verifier = Self::for_chains(&[start], checkpoints, None)?;
        for state in verifier.chains.values_mut() {
            state.anchored = true;
            state.prune_recorded = true;
        }
        Ok(verifier)
    }

    /// Starts a log of the chains `chains` (every chain the store holds).
    /// A statement about a chain that is not among them fails: the chain
    /// is missing.
    pub fn for_chains(
        chains: &[ChainStart],
        checkpoints: &'a [Checkpoint],
        key: Option<&'a Jwk>,
    ) -> Result<Self, VerifyFailure> {
        let mut states: BTreeMap<String, ChainState<'a>> = chains
            .iter()
            .map(|start| {
                let mut state = ChainState {
                    checkpoints: BTreeMap::new(),
                    closed_at: None,
                    head: start.head.clone(),
                    retired: start.retired,
                    base: None,
                    base_hash: None,
                    anchored: start.base.is_none(),
                    prune_recorded: start.base.is_none(),
                    prev_hash: GENESIS.to_owned(),
                    expected: 1,
                    matched: 0,
                };
                if let Some((seq, hash)) = &start.base {
                    state.base = Some(*seq);
                    state.base_hash = Some(hash.clone());
                    state.prev_hash.clone_from(hash);
                    state.expected = seq + 1;
                    state.matched += 1;
                }
                (start.chain.clone(), state)
            })
            .collect();
        let mut prunes: HashSet<(&str, i64, &str)> = HashSet::new();
        for cp in checkpoints {
            if let Some(key) = key
                && !cp.verify(key)
            {
                return Err(on_chain(
                    &cp.chain,
                    VerifyFailure::BadSignature { seq: cp.seq },
                ));
            }
            let Some(state) = states.get_mut(&cp.chain) else {
                return Err(VerifyFailure::MissingChain {
                    chain: cp.chain.clone(),
                    seq: cp.seq,
                });
            };
            // The same statement may come twice (the export file and the
            // store); two about one record must agree.
            let agree = |state: &ChainState<'a>| match state.checkpoints.get(&cp.seq) {
                Some(known) if known.hash != cp.hash => Err(on_chain(
                    &cp.chain,
                    VerifyFailure::Equivocation {
                        seq: cp.seq,
                        first: known.hash.clone(),
                        second: cp.hash.clone(),
                    },
                )),
                _ => Ok(()),
            };
            match cp.kind {
                StatementKind::Checkpoint => {
                    agree(state)?;
                    state.checkpoints.insert(cp.seq, cp);
                }
                StatementKind::Prune => {
                    prunes.insert((cp.chain.as_str(), cp.seq, cp.hash.as_str()));
                }
                StatementKind::Final => {
                    agree(state)?;
                    if let Some(other) = state.closed_at
                        && (other.seq, &other.hash) != (cp.seq, &cp.hash)
                    {
                        return Err(on_chain(
                            &cp.chain,
                            VerifyFailure::Equivocation {
                                seq: cp.seq,
                                first: format!("final at {}: {}", other.seq, other.hash),
                                second: format!("final at {}: {}", cp.seq, cp.hash),
                            },
                        ));
                    }
                    state.checkpoints.insert(cp.seq, cp);
                    state.closed_at = Some(cp);
                }
            }
        }
        // Only a signed prune statement vouches for a base: a record in the
        // database (`log_pruned`) can be forged by whoever can write it;
        // the statement it carries cannot (see `push`).
        for (chain, state) in &mut states {
            if let (Some(seq), Some(hash)) = (state.base, state.base_hash.as_deref()) {
                state.anchored = prunes.contains(&(chain.as_str(), seq, hash));
            }
        }
        Ok(Self {
            chains: states,
            key,
            decisions: 0,
            rule_sets: BTreeSet::new(),
            undecodable: None,
            undecodable_count: 0,
            intents: BTreeMap::new(),
        })
    }

    /// Checks the next record of its chain.
    pub fn push(&mut self, record: &LogRecord) -> Result<(), VerifyFailure> {
        let fail = |failure| on_chain(&record.chain, failure);
        let Some(state) = self.chains.get_mut(&record.chain) else {
            return Err(VerifyFailure::MissingChain {
                chain: record.chain.clone(),
                seq: record.seq,
            });
        };
        if record.seq != state.expected {
            return Err(fail(VerifyFailure::Gap {
                expected: state.expected,
                found: record.seq,
            }));
        }
        if record.prev_hash != state.prev_hash {
            return Err(fail(VerifyFailure::BrokenLink { seq: record.seq }));
        }
        if !record.hash_is_valid() {
            return Err(fail(VerifyFailure::BadHash { seq: record.seq }));
        }
        if let Some(cp) = state.checkpoints.get(&record.seq) {
            if cp.hash != record.hash {
                return Err(fail(VerifyFailure::CheckpointMismatch { seq: record.seq }));
            }
            state.matched += 1;
        }
        if let Some(closed) = state.closed_at
            && record.seq > closed.seq
        {
            return Err(fail(VerifyFailure::AfterFinal {
                seq: record.seq,
                closed_at: closed.seq,
            }));
        }
        state.prev_hash.clone_from(&record.hash);
        state.expected += 1;
        match decode::decided(&record.entry) {
            Ok(Some(Decided::Decision(parts))) => {
                self.decisions += 1;
                // The enforced rule set, and a shadow set's: each must be
                // stored and hash to its name.
                let shadow = parts.shadow.as_ref().map(|s| &s.rule_set_hash);
                for hash in std::iter::once(&parts.decision.rule_set_hash).chain(shadow) {
                    if !self.rule_sets.contains(hash) {
                        self.rule_sets.insert(hash.clone());
                    }
                }
            }
            Ok(_) => {}
            Err(why) => {
                self.undecodable_count += 1;
                self.undecodable
                    .get_or_insert((record.chain.clone(), record.seq, why.0));
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
        self.note_prune(record);
        Ok(())
    }

    /// A prune's record, or its intent (written before the delete, so a
    /// crash before the outcome still leaves the prune accounted for): it
    /// accounts for the base of the chain it names (`details.chain`; none:
    /// the unnamed chain), whichever chain it is on.
    fn note_prune(&mut self, record: &LogRecord) {
        let prune_record = match record.entry.outcome.as_deref() {
            Some("log_pruned") => true,
            Some("admin_intent") => record.entry.body["action"] == "log_pruned",
            _ => false,
        };
        if !prune_record {
            return;
        }
        let details = &record.entry.body["details"];
        let pruned = details["chain"].as_str().unwrap_or("");
        let Some(state) = self.chains.get_mut(pruned) else {
            return;
        };
        let Some(seq) = state.base else {
            return;
        };
        if details["through_seq"].as_i64() != Some(seq) {
            return;
        }
        state.prune_recorded = true;
        // The signed statement the pruning broker exported, carried in the
        // chain so every replica (each with its own export file) can check
        // the base against it.
        if !state.anchored
            && let Some(key) = self.key
            && let Ok(statement) =
                serde_json::from_value::<Checkpoint>(details["statement"].clone())
        {
            state.anchored = statement.kind == StatementKind::Prune
                && statement.chain == pruned
                && statement.seq == seq
                && state.base_hash.as_deref() == Some(statement.hash.as_str())
                && statement.verify(key);
        }
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
        for (chain, state) in &self.chains {
            let fail = |failure| on_chain(chain, failure);
            if let (false, Some(seq)) = (state.anchored, state.base) {
                return Err(fail(VerifyFailure::UnanchoredBase { seq }));
            }
            if let (false, Some(seq)) = (state.prune_recorded, state.base) {
                return Err(fail(VerifyFailure::UnrecordedPrune { seq }));
            }
        }
        if let Some((chain, seq, reason)) = self.undecodable {
            return Err(on_chain(
                &chain,
                VerifyFailure::Undecodable {
                    seq,
                    reason,
                    count: self.undecodable_count,
                },
            ));
        }
        if let Some(problem) = rule_set_problems.first() {
            return Err(VerifyFailure::RuleSet {
                rule_set: problem.clone(),
            });
        }
        let mut chains = Vec::with_capacity(self.chains.len());
        // A retirement without its final statement is reported only once
        // every chain passed every other check: `logs retire` completes
        // it, and must never seal a chain something else is wrong with.
        let mut unsealed = None;
        for (chain, state) in self.chains {
            let fail = |failure| on_chain(&chain, failure);
            let last = state.expected - 1;
            let last_checkpoint = state.checkpoints.keys().next_back().copied();
            if let Some(cp) = last_checkpoint
                && cp > last
            {
                return Err(fail(VerifyFailure::Truncated {
                    last,
                    checkpoint: cp,
                }));
            }
            if let Some((head, hash)) = &state.head
                && (last < *head || (last == *head && state.prev_hash != *hash))
            {
                return Err(fail(VerifyFailure::HeadMismatch { last, head: *head }));
            }
            if state.retired && state.closed_at.is_none() {
                unsealed.get_or_insert(fail(VerifyFailure::UnsealedRetirement {
                    last,
                    head: state.prev_hash.clone(),
                }));
            }
            chains.push(ChainReport {
                chain,
                records: last,
                head: state.prev_hash,
                checkpoints: state.matched,
                last_checkpoint,
                retired: state.closed_at.is_some(),
            });
        }
        if let Some(failure) = unsealed {
            return Err(failure);
        }
        // A log of one chain reports as it did before chains had names.
        let only = (chains.len() == 1).then(|| chains[0].clone());
        Ok(VerifyReport {
            records: chains.iter().map(|c| c.records).sum(),
            head: only.as_ref().map(|c| c.head.clone()).unwrap_or_default(),
            checkpoints: chains.iter().map(|c| c.checkpoints).sum(),
            last_checkpoint: only.and_then(|c| c.last_checkpoint),
            decisions: self.decisions,
            rule_sets: self.rule_sets.len(),
            unfinished_admin_actions: self.intents.len(),
            first_unfinished_admin_action: self.intents.values().min().copied(),
            chains,
        })
    }
}

#[cfg(test)]
mod tests;
