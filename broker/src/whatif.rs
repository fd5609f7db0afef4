//! What-if: every logged decision re-decided under a proposed rule set
//! (Cedar sources and trust weights and thresholds) with the inputs it
//! recorded, and the transitions between outcomes it would make — counted,
//! with the identities, grants and nodes they touch and sample requests
//! with the rules that made the difference. Enforcement is untouched: this
//! only reads the log.

use std::collections::{BTreeMap, BTreeSet};

use mintguard_policy::rules::RuleSet;
use mintguard_policy::{Decision, decide};
use serde::{Deserialize, Serialize};

use crate::log::LogRecord;
use crate::log::decode::{Decided, decided};

/// Sample requests kept per transition.
pub const SAMPLES: usize = 5;
/// Identities, grants and nodes named per transition (all are counted).
pub const NAMED: usize = 50;

/// One transition's tally.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transition {
    /// The logged outcome.
    pub from: String,
    /// The proposed rules' outcome.
    pub to: String,
    /// Decisions that move so.
    pub count: u64,
    /// By identity (the first `NAMED`).
    pub identities: BTreeMap<String, u64>,
    /// By grant.
    pub grants: BTreeMap<String, u64>,
    /// By node or CI issuer.
    pub nodes: BTreeMap<String, u64>,
    /// Distinct identities, grants and nodes beyond those named.
    pub unnamed: u64,
    /// The first `SAMPLES` requests.
    pub samples: Vec<Sample>,
}

/// One decision that changed, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Its request.
    pub request_id: String,
    /// Its record: chain and seq.
    pub chain: String,
    /// Its seq.
    pub seq: i64,
    /// When it was decided.
    pub time_ms: i64,
    /// The logged reasons.
    pub reasons_before: Vec<String>,
    /// The proposed rules' reasons.
    pub reasons_after: Vec<String>,
    /// Policy `@id`s that fired only under the proposed rules.
    pub rules_added: Vec<String>,
    /// Policy `@id`s that fired only under the logged rules.
    pub rules_removed: Vec<String>,
}

/// What the proposal would have done to the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WhatIfReport {
    /// The proposed rule set's hash.
    pub rule_set: String,
    /// Decisions re-decided.
    pub decisions: u64,
    /// Those whose outcome changed.
    pub changed: u64,
    /// Those whose outcome held but whose reasons or TTL changed.
    pub changed_details: u64,
    /// Decision records no reader could decode (each a finding).
    pub undecodable: u64,
    /// The first undecodable records: seq and why.
    pub findings: Vec<(i64, String)>,
    /// Outcome transitions, most frequent first.
    pub transitions: Vec<Transition>,
}

impl WhatIfReport {
    /// Whether any transition ends in one of `outcomes`.
    pub fn reaches(&self, outcomes: &[String]) -> bool {
        self.transitions.iter().any(|t| outcomes.contains(&t.to))
    }
}

/// Re-decides records one at a time under `rules`.
pub struct WhatIf<'a> {
    rules: &'a RuleSet,
    report: WhatIfReport,
    by: BTreeMap<(String, String), Transition>,
}

fn fired(d: &Decision) -> BTreeSet<String> {
    d.rules.iter().map(|r| r.id.clone()).collect()
}

fn count(map: &mut BTreeMap<String, u64>, key: Option<&String>, unnamed: &mut u64) {
    let Some(key) = key else { return };
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < NAMED {
        map.insert(key.clone(), 1);
    } else {
        *unnamed += 1;
    }
}

impl<'a> WhatIf<'a> {
    /// A what-if under `rules`.
    pub fn new(rules: &'a RuleSet) -> Self {
        Self {
            rules,
            report: WhatIfReport {
                rule_set: rules.hash().to_owned(),
                ..WhatIfReport::default()
            },
            by: BTreeMap::new(),
        }
    }

    /// Re-decides `record` if it holds a decision.
    pub fn observe(&mut self, record: &LogRecord) {
        if !record.entry.kind.has_decision() {
            return;
        }
        let parts = match decided(&record.entry) {
            Ok(Some(Decided::Decision(parts))) => parts,
            Ok(_) => return,
            Err(why) => {
                self.report.undecodable += 1;
                if self.report.findings.len() < SAMPLES * 4 {
                    self.report.findings.push((record.seq, why.0));
                }
                return;
            }
        };
        let (input, logged) = (parts.input, parts.decision);
        let again = decide(&input, self.rules);
        self.report.decisions += 1;
        let (from, to) = (logged.outcome.as_str(), again.outcome.as_str());
        if from == to {
            if again.reasons != logged.reasons || again.ttl_seconds != logged.ttl_seconds {
                self.report.changed_details += 1;
            }
            return;
        }
        self.report.changed += 1;
        let t = self
            .by
            .entry((from.to_owned(), to.to_owned()))
            .or_insert_with(|| Transition {
                from: from.to_owned(),
                to: to.to_owned(),
                ..Transition::default()
            });
        t.count += 1;
        let e = &record.entry;
        count(&mut t.identities, e.identity.as_ref(), &mut t.unnamed);
        count(&mut t.grants, e.grant.as_ref(), &mut t.unnamed);
        count(&mut t.nodes, e.node.as_ref(), &mut t.unnamed);
        if t.samples.len() < SAMPLES {
            let (before, after) = (fired(&logged), fired(&again));
            t.samples.push(Sample {
                request_id: e.request_id.clone(),
                chain: record.chain.clone(),
                seq: record.seq,
                time_ms: e.time_ms,
                reasons_before: logged.reasons.iter().map(|r| r.code().to_owned()).collect(),
                reasons_after: again.reasons.iter().map(|r| r.code().to_owned()).collect(),
                rules_added: after.difference(&before).cloned().collect(),
                rules_removed: before.difference(&after).cloned().collect(),
            });
        }
    }

    /// The report, transitions most frequent first.
    pub fn finish(mut self) -> WhatIfReport {
        let mut transitions: Vec<Transition> = self.by.into_values().collect();
        transitions.sort_by(|a, b| b.count.cmp(&a.count).then(a.from.cmp(&b.from)));
        self.report.transitions = transitions;
        self.report
    }
}
