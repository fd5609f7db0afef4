//! `POST /admin/v1/replay`: every logged decision re-decided under its
//! recorded input and rule set — and, where a shadow rule set decided
//! beside it, under that one too — with the differences listed.

use std::collections::HashMap;

use super::logs::RecordPages;
use super::*;
use mintguard_policy::Verdict;

use crate::log::rule_sets::RuleSetProblem;

#[derive(Deserialize)]
pub(super) struct ReplayParams {
    since_ms: Option<i64>,
    /// Only this request's decisions.
    request_id: Option<String>,
}

/// Differences `replay` lists (all are counted).
pub(super) const MAX_LISTED_DIFFERENCES: usize = 1000;

/// What `replay` found: the first `MAX_LISTED_DIFFERENCES`, and how many.
#[derive(Default)]
struct Differences {
    listed: Vec<Value>,
    total: usize,
}

impl Differences {
    fn note(&mut self, difference: Value) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED_DIFFERENCES {
            self.listed.push(difference);
        }
    }

    /// A rule set (`what`: the enforced one's, the shadow's) that cannot be used.
    fn rule_set(&mut self, at: &Value, what: &str, problem: &RuleSetProblem) {
        let mut d = at.clone();
        d["difference"] = json!(what);
        d["problem"] = json!(problem);
        d["message"] = json!(problem.to_string());
        self.note(d);
    }

    /// A verdict (`what`: the decision, the shadow's) replayed otherwise.
    fn outcome(&mut self, at: &Value, what: &str, logged: &Verdict, again: &Verdict) {
        let mut d = at.clone();
        d["difference"] = json!(what);
        d["logged"] = json!({"outcome": logged.outcome, "reasons": logged.reasons});
        d["replayed"] = json!({"outcome": again.outcome, "reasons": again.reasons});
        self.note(d);
    }
}

/// Re-decides every logged decision under its recorded input and rule set,
/// reading the log a page at a time; the first `MAX_LISTED_DIFFERENCES`
/// differences are listed, all are counted.
pub(super) async fn replay(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<ReplayParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let _job = whatif::log_job(&broker)?;
    let mut rule_sets = RuleSets::default();
    let (mut replayed, mut differences) = (0usize, Differences::default());
    let (mut undecodable, mut shadows) = (0usize, 0usize);
    // One request's records, or the whole log a page at a time.
    let mut one = match &p.request_id {
        Some(id) if id.is_empty() || id.len() > 128 => {
            return Err(ApiError::bad_request(
                "bad_request_id",
                "a request id is 1 to 128 characters",
            ));
        }
        Some(id) => Some(broker.store.log_for_request(id).await?),
        None => None,
    };
    let mut pages = RecordPages::new(&broker);
    loop {
        let page = match one.take() {
            Some(records) => records,
            None if p.request_id.is_some() => break,
            None => match pages.next().await? {
                Some(page) => page,
                None => break,
            },
        };
        for record in page {
            if !record.entry.kind.has_decision()
                || p.since_ms.is_some_and(|s| record.entry.time_ms < s)
            {
                continue;
            }
            let parts = match crate::log::decode::decided(&record.entry) {
                Ok(Some(Decided::Decision(parts))) => parts,
                Ok(_) => continue,
                Err(why) => {
                    broker.metrics.undecodable("replay", record.seq, &why);
                    undecodable += 1;
                    differences.note(json!({"seq": record.seq, "request_id": record.entry.request_id, "difference": "undecodable", "reason": why.0}));
                    continue;
                }
            };
            let (input, logged) = (parts.input, parts.decision);
            let at = json!({"seq": record.seq, "request_id": record.entry.request_id});
            match rule_sets.get(&broker, &logged.rule_set_hash).await? {
                Ok(rules) => {
                    replayed += 1;
                    let again = decide(&input, rules);
                    if again != logged {
                        differences.outcome(
                            &at,
                            "decision",
                            &Verdict::of(&logged),
                            &Verdict::of(&again),
                        );
                    }
                }
                Err(problem) => differences.rule_set(&at, "rule_set", problem),
            }
            // The shadow's verdict, re-decided under the shadow's rule set.
            let Some(shadow) = parts.shadow else { continue };
            match rule_sets.get(&broker, &shadow.rule_set_hash).await? {
                Ok(rules) => {
                    shadows += 1;
                    let again = Verdict::of(&decide(&input, rules));
                    if again != shadow {
                        differences.outcome(&at, "shadow", &shadow, &again);
                    }
                }
                Err(problem) => differences.rule_set(&at, "shadow_rule_set", problem),
            }
        }
    }
    Ok(axum::Json(
        json!({"replayed": replayed, "shadow_replayed": shadows, "differences": differences.listed, "differences_total": differences.total, "undecodable": undecodable}),
    ))
}

/// The rule sets records name, loaded from the store once each (re-hashed,
/// so a replaced one is a finding).
#[derive(Default)]
struct RuleSets(HashMap<String, Result<RuleSet, RuleSetProblem>>);

impl RuleSets {
    async fn get(
        &mut self,
        broker: &Broker,
        hash: &str,
    ) -> Result<&Result<RuleSet, RuleSetProblem>, ApiError> {
        if !self.0.contains_key(hash) {
            let stored = broker.store.rule_set(hash).await?;
            self.0.insert(
                hash.to_owned(),
                crate::log::rule_sets::load(hash, stored.as_deref()),
            );
        }
        Ok(&self.0[hash])
    }
}
