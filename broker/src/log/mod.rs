//! The issuance log's records and their hash chain.
//!
//! Every record is `hash = SHA-256(JCS(record without hash))` (RFC 8785
//! canonical JSON) and names the previous record's hash in `prev_hash`
//! (genesis: 64 zeros), so an edited, deleted or inserted record breaks the
//! chain. A recomputed chain is caught by the signed checkpoints exported
//! outside the database ([`checkpoint`]); records after the last exported
//! checkpoint are covered by the chain alone.
//!
//! A store shared by several broker replicas (PostgreSQL) holds one chain
//! per replica, named by its instance id, so replicas never wait on each
//! other's appends; a chain's records name it in `chain`, which their hash
//! covers. The one chain of a store no replica shares (SQLite), and every
//! chain written before replicas had chains of their own, is the unnamed
//! chain `""`, whose records hash exactly as before.

pub mod checkpoint;
pub mod decode;
pub mod jcs;
pub mod rule_sets;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A decision (and, for local credentials, its issuance).
    Decision,
    /// An upstream mint is about to be attempted.
    Intent,
    /// The result of an upstream mint (or its failure and refund).
    Outcome,
    /// A lease was revoked.
    Revocation,
    /// An operator action (entry, suspension, top-up, token …).
    Admin,
}

impl RecordKind {
    /// Whether the record carries a decision (its input and outcome): a
    /// `decision`, or the `intent` of an upstream grant that was allowed.
    pub fn has_decision(self) -> bool {
        matches!(self, RecordKind::Decision | RecordKind::Intent)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Decision => "decision",
            RecordKind::Intent => "intent",
            RecordKind::Outcome => "outcome",
            RecordKind::Revocation => "revocation",
            RecordKind::Admin => "admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "decision" => RecordKind::Decision,
            "intent" => RecordKind::Intent,
            "outcome" => RecordKind::Outcome,
            "revocation" => RecordKind::Revocation,
            "admin" => RecordKind::Admin,
            _ => return None,
        })
    }
}

/// What the pipeline asks to log; the store assigns `seq`, `prev_hash`, `hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When, milliseconds since the Unix epoch. The store moves it forward
    /// (never back, at most [`MAX_TIME_SHIFT_MS`]) to its chain's previous
    /// record's time when appends commit out of order, so each chain is in
    /// time order and readers merge the chains by time
    /// ([`crate::store::read_log`]); the decision's own clock reading is in
    /// its input.
    pub time_ms: i64,
    /// What the record is.
    pub kind: RecordKind,
    /// The request it belongs to.
    pub request_id: String,
    /// The identity (SPIFFE ID), when there is one.
    pub identity: Option<String>,
    /// The grant, when there is one.
    pub grant: Option<String>,
    /// The vouching node or CI issuer, when there is one.
    pub node: Option<String>,
    /// The final outcome (`allow`, …, `budget_exhausted`, `minted`, `mint_failed`).
    pub outcome: Option<String>,
    /// Everything else: decision input, decision, lease, backend result. Never a credential.
    pub body: serde_json::Value,
}

/// A record as stored: the entry with its place in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The chain it belongs to: a replica's instance id, or `""` (the
    /// unnamed chain) — see the module documentation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
    /// Position in its chain, from 1.
    pub seq: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: LogEntry,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// The record as hashed (tests check the assembled form against it).
#[cfg(test)]
#[derive(Serialize)]
struct Hashed<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    chain: &'a str,
    seq: i64,
    #[serde(flatten)]
    entry: &'a LogEntry,
    prev_hash: &'a str,
}

/// The RFC 8785 (JCS) form of a record body; it is also what the store keeps.
pub fn canonical_body(body: &serde_json::Value) -> String {
    jcs::to_string(body)
}

fn push_jcs_str(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => jcs::write_str(out, v),
        None => out.push_str("null"),
    }
}

/// SHA-256 (hex) of the JCS form of `entry` at `seq` of `chain` after `prev_hash`.
pub fn record_hash(chain: &str, seq: i64, entry: &LogEntry, prev_hash: &str) -> String {
    record_hash_canonical(chain, seq, entry, &canonical_body(&entry.body), prev_hash)
}

/// [`record_hash`] with the body already in JCS form: the record's JCS is
/// assembled around it (its members are fixed and already in JCS order), so
/// the expensive canonicalization of the body can run before, and outside,
/// the store's serial writer. The unnamed chain's records have no `chain`
/// member.
pub fn record_hash_canonical(
    chain: &str,
    seq: i64,
    entry: &LogEntry,
    body_jcs: &str,
    prev_hash: &str,
) -> String {
    let mut out = String::with_capacity(body_jcs.len() + 512);
    out.push_str("{\"body\":");
    out.push_str(body_jcs);
    if !chain.is_empty() {
        out.push_str(",\"chain\":");
        jcs::write_str(&mut out, chain);
    }
    out.push_str(",\"grant\":");
    push_jcs_str(&mut out, entry.grant.as_deref());
    out.push_str(",\"identity\":");
    push_jcs_str(&mut out, entry.identity.as_deref());
    out.push_str(",\"kind\":");
    push_jcs_str(&mut out, Some(entry.kind.as_str()));
    out.push_str(",\"node\":");
    push_jcs_str(&mut out, entry.node.as_deref());
    out.push_str(",\"outcome\":");
    push_jcs_str(&mut out, entry.outcome.as_deref());
    out.push_str(",\"prev_hash\":");
    push_jcs_str(&mut out, Some(prev_hash));
    out.push_str(",\"request_id\":");
    push_jcs_str(&mut out, Some(&entry.request_id));
    out.push_str(&format!(",\"seq\":{seq},\"time_ms\":{}}}", entry.time_ms));
    crate::ids::hex(&Sha256::digest(out.as_bytes()))
}

/// The most a record's time is moved forward to its predecessor's.
pub const MAX_TIME_SHIFT_MS: i64 = 1_000;

/// A chain's last record, where its writer appends the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its seq (0: the chain is empty).
    pub seq: i64,
    /// Its hash ([`GENESIS`] when empty).
    pub hash: String,
    /// Its time (0 when empty).
    pub time_ms: i64,
}

impl Head {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
            time_ms: 0,
        }
    }

    /// Seals `entry` (its body's JCS form computed beforehand) as the next
    /// record of `chain`, no earlier than this head when the two are within
    /// [`MAX_TIME_SHIFT_MS`] (appends that commit out of order), and moves
    /// the head to it. A head later than that (a clock that jumped, or a
    /// head row someone edited) moves no record: each keeps its own time.
    pub fn seal_next(&mut self, chain: &str, mut entry: LogEntry, body_jcs: &str) -> LogRecord {
        if self.time_ms > entry.time_ms && self.time_ms - entry.time_ms <= MAX_TIME_SHIFT_MS {
            entry.time_ms = self.time_ms;
        }
        let record =
            LogRecord::seal_canonical(chain, self.seq + 1, entry, body_jcs, self.hash.clone());
        *self = Self {
            seq: record.seq,
            hash: record.hash.clone(),
            time_ms: record.entry.time_ms,
        };
        record
    }
}

impl LogRecord {
    /// Seals `entry` as record `seq` of the unnamed chain after `prev_hash`.
    pub fn seal(seq: i64, entry: LogEntry, prev_hash: String) -> Self {
        let hash = record_hash("", seq, &entry, &prev_hash);
        Self {
            chain: String::new(),
            seq,
            entry,
            prev_hash,
            hash,
        }
    }

    /// Seals `entry` as record `seq` of `chain` after `prev_hash`, with the
    /// body's JCS form computed beforehand.
    pub fn seal_canonical(
        chain: &str,
        seq: i64,
        entry: LogEntry,
        body_jcs: &str,
        prev_hash: String,
    ) -> Self {
        let hash = record_hash_canonical(chain, seq, &entry, body_jcs, &prev_hash);
        Self {
            chain: chain.to_owned(),
            seq,
            entry,
            prev_hash,
            hash,
        }
    }

    /// Whether the stored hash matches the record's content.
    pub fn hash_is_valid(&self) -> bool {
        record_hash(&self.chain, self.seq, &self.entry, &self.prev_hash) == self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> LogEntry {
        LogEntry {
            time_ms: 1000 + n,
            kind: RecordKind::Decision,
            request_id: format!("req-{n}"),
            identity: Some("spiffe://example.org/a".into()),
            grant: Some("g".into()),
            node: None,
            outcome: Some("allow".into()),
            body: serde_json::json!({"z": 1, "a": [1.5, "x"], "m": {"b": null, "a": true}}),
        }
    }

    #[test]
    fn hash_is_canonical_and_chained() {
        let first = LogRecord::seal(1, entry(1), GENESIS.into());
        assert!(first.hash_is_valid());
        // Key order in the body does not matter (JCS).
        let mut reordered = entry(1);
        reordered.body =
            serde_json::from_str(r#"{"m": {"a": true, "b": null}, "a": [1.5, "x"], "z": 1}"#)
                .unwrap();
        assert_eq!(
            LogRecord::seal(1, reordered, GENESIS.into()).hash,
            first.hash
        );
        // Any field change changes the hash.
        let mut edited = first.clone();
        edited.entry.outcome = Some("deny".into());
        assert!(!edited.hash_is_valid());
        let second = LogRecord::seal(2, entry(2), first.hash.clone());
        // The assembled JCS equals serde_jcs over the whole record.
        for (chain, seq, mut e) in [("", 1, entry(1)), ("", 77, entry(2)), ("0a1b", 3, entry(3))] {
            e.identity = Some("spiffe://x/\u{1}\"é\\\u{2028}".into());
            e.node = None;
            e.body = serde_json::json!({"b": [1e-7, 3.5, -0.0, 1234567890123u64], "a": "\t\n\u{7f}", "é": {"z": null}});
            let whole = serde_jcs::to_vec(&Hashed {
                chain,
                seq,
                entry: &e,
                prev_hash: GENESIS,
            })
            .unwrap();
            assert_eq!(
                record_hash(chain, seq, &e, GENESIS),
                crate::ids::hex(&Sha256::digest(&whole))
            );
        }
        assert_ne!(second.hash, first.hash);
        // A record of a named chain does not hash as the unnamed chain's.
        let named = LogRecord::seal_canonical(
            "0a1b",
            1,
            entry(1),
            &canonical_body(&entry(1).body),
            GENESIS.into(),
        );
        assert!(named.hash_is_valid());
        assert_ne!(named.hash, first.hash);
        let mut moved = named.clone();
        moved.chain = "0a1c".into();
        assert!(!moved.hash_is_valid(), "a record moved to another chain");
        assert_eq!(first.hash.len(), 64);
    }
}
