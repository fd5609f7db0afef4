//! Reading decisions back out of the log: the one decoder every reader of
//! decision records uses (anomaly analysis, `replay`, `explain`, `logs
//! verify`).
//!
//! A record that carries a decision (a `decision` or an `intent`) either
//! decodes into its typed input, decision and request, or is a refusal made
//! before any decision (a CI token refused at the door). Anything else is
//! **undecodable**, and that is a finding, never a skip: a record its
//! readers cannot read is one anomaly analysis never saw. Each reader counts
//! it in `mintguard_undecodable_records_total{reader}` and logs it, and
//! `logs verify` fails on it.

use mintguard_api::CredentialRequest;
use mintguard_policy::{Decision, DecisionInput};
use serde::Deserialize;

use super::{LogEntry, RecordKind};

/// What a decision-bearing record holds.
#[derive(Debug)]
pub enum Decided {
    /// A decision, with everything `replay` needs to re-decide it.
    Decision(Box<DecidedParts>),
    /// A refusal before any decision was made (`body.ci.refused`).
    RefusedAtTheDoor,
}

/// The typed parts of a decision record.
#[derive(Debug, Deserialize)]
pub struct DecidedParts {
    /// The decision's input, exactly as decided.
    pub input: DecisionInput,
    /// The decision.
    pub decision: Decision,
    /// The request as the caller made it.
    pub request: CredentialRequest,
    /// The shadow rule set's verdict, when one was configured.
    #[serde(default)]
    pub shadow: Option<mintguard_policy::Verdict>,
}

/// Why a decision-bearing record cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// Decodes the decision `entry` carries; `Ok(None)` for a record kind that
/// carries none.
pub fn decided(entry: &LogEntry) -> Result<Option<Decided>, Undecodable> {
    if !entry.kind.has_decision() {
        return Ok(None);
    }
    decided_body(&entry.body).map(Some)
}

/// [`decided`] for the body of a record known to carry a decision.
pub fn decided_body(body: &serde_json::Value) -> Result<Decided, Undecodable> {
    if body.get("input").is_none() && body["ci"]["refused"].is_string() {
        return Ok(Decided::RefusedAtTheDoor);
    }
    DecidedParts::deserialize(body)
        .map(|parts| Decided::Decision(Box::new(parts)))
        .map_err(|e| Undecodable(e.to_string()))
}

/// [`decided_body`] for the stored text of a record known to carry a
/// decision, decoded straight into its typed parts (no JSON tree) unless it
/// is not a decision's.
pub fn decided_str(body: &str) -> Result<Decided, Undecodable> {
    match serde_json::from_str::<DecidedParts>(body) {
        Ok(parts) => Ok(Decided::Decision(Box::new(parts))),
        // A refusal at the door, or a finding: the tree says which.
        Err(_) => {
            let value: serde_json::Value =
                serde_json::from_str(body).map_err(|e| Undecodable(format!("not JSON: {e}")))?;
            decided_body(&value)
        }
    }
}

/// [`decided_body`] for a body still in its stored text form.
pub fn decided_text(kind: RecordKind, body: &str) -> Result<Option<Decided>, Undecodable> {
    if !kind.has_decision() {
        return Ok(None);
    }
    decided_str(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_at_the_door_is_not_a_finding_but_anything_unreadable_is() {
        let door =
            serde_json::json!({"ci": {"refused": "bad_token", "message": "m", "detail": null}});
        assert!(matches!(decided_body(&door), Ok(Decided::RefusedAtTheDoor)));
        for body in [
            serde_json::json!({}),
            serde_json::json!({"input": 1, "decision": {}, "request": {}}),
            serde_json::json!({"request": {"grant": "g", "ttl_seconds": 1.8446744073709552e19}}),
        ] {
            assert!(decided_body(&body).is_err(), "{body}");
        }
        assert!(decided_text(RecordKind::Decision, "{").is_err());
        assert!(decided_text(RecordKind::Admin, "{").unwrap().is_none());
    }
}
