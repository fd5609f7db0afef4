//! What-if: every logged decision re-decided under a proposed rule set
//! (Cedar sources and trust weights and thresholds) with the inputs it
//! recorded, and the transitions between outcomes it would make — counted,
//! with the identities, grants and nodes they touch and sample requests
//! with the rules that made the difference. A shadow report tallies the
//! same way between each decision and the shadow verdict it recorded.
//! Enforcement is untouched: this only reads the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mintguard_policy::decision::{DecisionInput, EciExplained, IssuerKind};
use mintguard_policy::eci::{BlastRadius, EciReport};

use mintguard_policy::rules::RuleSet;
use mintguard_policy::{Verdict, decide};
use serde::{Deserialize, Serialize};

use mintguard_policy::eci::graph::{ExposureGraph, NodeKind};

use crate::ci::CiRuntime;
use crate::config::Config;
use crate::log::decode::{Decided, Undecodable, decided_str};
use crate::store::{DecisionRow, LogCursor, LogQuery, Store, StoreError, decisions_after};

/// Sample requests kept per transition.
pub const SAMPLES: usize = 5;
/// Identities, grants and nodes named per transition (all are counted).
pub const NAMED: usize = 50;
/// Most decision records one what-if reads (re-decided, compared, or not);
/// past it the report is truncated.
pub const MAX_DECISIONS: u64 = 5_000_000;

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
    /// Decisions whose identity, grant or node was beyond the `NAMED` each
    /// map holds (counted once per map).
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

/// A proposed exposure graph's ECI inputs, standing in for the recorded
/// ones as issuance would have computed them.
pub struct ProposedEci {
    /// ECI of the proposed effective graph.
    pub eci: EciReport,
    /// Each node's blast radius under it.
    pub blast_radius: HashMap<String, BlastRadius>,
    /// Each CI issuer's: the highest exposure of its policies' grants.
    pub ci_radius: HashMap<String, f64>,
}

impl ProposedEci {
    /// `input`'s ECI values under the proposed graph (as `Issuer::issue` reads them).
    fn apply(&self, input: &mut DecisionInput) {
        let node = self.eci.get(&input.identity);
        input.eci.identity_effective = node.and_then(|n| n.eci_raw).unwrap_or(300.0);
        input.eci.grant_exposure = self.eci.grant_exposure(&input.grant.name).unwrap_or(100.0);
        input.eci.issuer_blast_radius = match input.issuer.kind {
            IssuerKind::Node => self
                .blast_radius
                .get(&input.issuer.id)
                .map_or(100.0, |r| r.max),
            IssuerKind::CiIssuer => self.ci_radius.get(&input.issuer.id).copied().unwrap_or(0.0),
        };
        input.eci.explained = node.and_then(EciExplained::of);
    }
}

/// How an identity's ECI moves under a proposed graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EciChange {
    /// The identity.
    pub identity: String,
    /// Its effective ECI (capped) now; `None` outside the computed ECI.
    pub before: Option<f64>,
    /// Under the proposed graph.
    pub after: Option<f64>,
}

/// The identities whose ECI a proposed graph moves, most moved first (at
/// most `limit`), and how many there are.
pub fn eci_changes(
    running: &EciReport,
    proposed: &EciReport,
    identities: &BTreeSet<String>,
    limit: usize,
) -> (Vec<EciChange>, u64) {
    let mut changes: Vec<EciChange> = identities
        .iter()
        .map(|id| EciChange {
            identity: id.clone(),
            before: running.identity_eci(id),
            after: proposed.identity_eci(id),
        })
        .filter(|c| match (c.before, c.after) {
            (Some(a), Some(b)) => (a - b).abs() > 1e-9,
            (a, b) => a.is_some() != b.is_some(),
        })
        .collect();
    let moved = |c: &EciChange| (c.after.unwrap_or(100.0) - c.before.unwrap_or(100.0)).abs();
    changes.sort_by(|a, b| {
        moved(b)
            .total_cmp(&moved(a))
            .then(a.identity.cmp(&b.identity))
    });
    let total = changes.len() as u64;
    changes.truncate(limit);
    (changes, total)
}

/// A record no reader could decode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    /// Its chain.
    pub chain: String,
    /// Its seq.
    pub seq: i64,
    /// Its request.
    pub request_id: String,
    /// Why.
    pub reason: String,
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
    /// The first undecodable records.
    pub findings: Vec<Finding>,
    /// Whether it stopped at `MAX_DECISIONS` (narrow it with a time or filter).
    pub truncated: bool,
    /// Outcome transitions, most frequent first.
    pub transitions: Vec<Transition>,
    /// With a proposed graph: the identities whose ECI it moves (the most
    /// moved first), and how many.
    #[serde(default)]
    pub eci_changes: Vec<EciChange>,
    /// How many identities' ECI it moves.
    #[serde(default)]
    pub eci_changed: u64,
    /// A shadow report: the shadow rule sets that decided, with how many
    /// decisions each (`rule_set` is the last one's).
    #[serde(default)]
    pub shadow_rule_sets: BTreeMap<String, u64>,
    /// A shadow report: decisions with no shadow verdict (made while no
    /// shadow set was configured), not compared.
    #[serde(default)]
    pub unshadowed: u64,
}

impl WhatIfReport {
    /// Whether any transition ends in one of `outcomes`.
    pub fn reaches(&self, outcomes: &[String]) -> bool {
        self.transitions.iter().any(|t| outcomes.contains(&t.to))
    }
}

/// What each logged decision is compared with.
enum Against {
    /// Proposed rules (and perhaps a proposed graph): each decision is
    /// re-decided under them with its recorded input.
    Proposal {
        rules: Arc<RuleSet>,
        eci: Option<Arc<ProposedEci>>,
    },
    /// The shadow rule set's verdict the record holds (a shadow report).
    Shadow,
}

/// Compares logged decisions, one at a time, with proposed rules or with
/// their shadow verdicts, and tallies the transitions.
pub struct WhatIf {
    against: Against,
    /// Decision records read (all count toward `MAX_DECISIONS`, compared or not).
    scanned: u64,
    report: WhatIfReport,
    by: BTreeMap<(String, String), Transition>,
}

fn fired(v: &Verdict) -> BTreeSet<&str> {
    v.rules.iter().map(String::as_str).collect()
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

impl WhatIf {
    /// A what-if under `rules` (and `eci`, a proposed graph's).
    pub fn new(rules: Arc<RuleSet>, eci: Option<Arc<ProposedEci>>) -> Self {
        Self {
            report: WhatIfReport {
                rule_set: rules.hash().to_owned(),
                ..WhatIfReport::default()
            },
            by: BTreeMap::new(),
            scanned: 0,
            against: Against::Proposal { rules, eci },
        }
    }

    /// A shadow report: each decision against the shadow verdict it holds.
    pub fn shadow() -> Self {
        Self {
            report: WhatIfReport::default(),
            by: BTreeMap::new(),
            scanned: 0,
            against: Against::Shadow,
        }
    }

    /// Whether it has re-decided all it may (`MAX_DECISIONS`).
    pub fn full(&self) -> bool {
        self.report.truncated
    }

    /// Re-decides the decision of `row` (a `decision` or `intent` record,
    /// its body as stored); one that cannot be decoded is counted, kept
    /// among the findings, and returned.
    pub fn observe(&mut self, row: &DecisionRow) -> Result<(), Undecodable> {
        if self.report.truncated {
            return Ok(());
        }
        if self.scanned >= MAX_DECISIONS {
            self.report.truncated = true;
            return Ok(());
        }
        self.scanned += 1;
        let decoded = match &row.body {
            Ok(text) => decided_str(text),
            Err(why) => Err(Undecodable(why.clone())),
        };
        let parts = match decoded {
            Ok(Decided::Decision(parts)) => parts,
            Ok(Decided::RefusedAtTheDoor) => return Ok(()),
            Err(why) => {
                self.report.undecodable += 1;
                if self.report.findings.len() < SAMPLES * 4 {
                    self.report.findings.push(Finding {
                        chain: row.chain.clone(),
                        seq: row.seq,
                        request_id: row.request_id.clone(),
                        reason: why.0.clone(),
                    });
                }
                return Err(why);
            }
        };
        let logged = Verdict::of(&parts.decision);
        let again = match &self.against {
            Against::Proposal { rules, eci } => {
                let mut input = parts.input;
                if let Some(eci) = eci {
                    eci.apply(&mut input);
                }
                Verdict::of(&decide(&input, rules))
            }
            Against::Shadow => {
                let Some(shadow) = parts.shadow else {
                    self.report.unshadowed += 1;
                    return Ok(());
                };
                if shadow.rule_set_hash != self.report.rule_set {
                    self.report.rule_set.clone_from(&shadow.rule_set_hash);
                }
                *self
                    .report
                    .shadow_rule_sets
                    .entry(shadow.rule_set_hash.clone())
                    .or_default() += 1;
                shadow
            }
        };
        self.report.decisions += 1;
        let (from, to) = (logged.outcome.as_str(), again.outcome.as_str());
        if from == to {
            if again.reasons != logged.reasons || again.ttl_seconds != logged.ttl_seconds {
                self.report.changed_details += 1;
            }
            return Ok(());
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
        let e = row;
        count(&mut t.identities, e.identity.as_ref(), &mut t.unnamed);
        count(&mut t.grants, e.grant.as_ref(), &mut t.unnamed);
        count(&mut t.nodes, e.node.as_ref(), &mut t.unnamed);
        if t.samples.len() < SAMPLES {
            let (before, after) = (fired(&logged), fired(&again));
            t.samples.push(Sample {
                request_id: e.request_id.clone(),
                chain: row.chain.clone(),
                seq: row.seq,
                time_ms: e.time_ms,
                reasons_before: logged.reasons.iter().map(|r| r.code().to_owned()).collect(),
                reasons_after: again.reasons.iter().map(|r| r.code().to_owned()).collect(),
                rules_added: after.difference(&before).map(|r| (*r).to_owned()).collect(),
                rules_removed: before.difference(&after).map(|r| (*r).to_owned()).collect(),
            });
        }
        Ok(())
    }

    /// The report, transitions most frequent first.
    pub fn finish(mut self) -> WhatIfReport {
        let mut transitions: Vec<Transition> = self.by.into_values().collect();
        transitions.sort_by(|a, b| b.count.cmp(&a.count).then(a.from.cmp(&b.from)));
        self.report.transitions = transitions;
        self.report
    }
}

/// Feeds the decisions `query` selects (its time and identity, grant and
/// node filters) from `store` to `whatif`, in time order a page at a time,
/// bodies decoded off the async workers, until the last page or
/// `MAX_DECISIONS`; each undecodable record is passed to `undecodable`
/// (its seq and why) as well as kept in the report.
pub async fn scan(
    store: &dyn Store,
    query: &LogQuery,
    mut whatif: WhatIf,
    mut undecodable: impl FnMut(i64, &Undecodable),
) -> Result<WhatIfReport, StoreError> {
    let selects = |row: &DecisionRow| {
        [
            (&query.identity, &row.identity),
            (&query.grant, &row.grant),
            (&query.node, &row.node),
        ]
        .iter()
        .all(|(want, have)| want.is_none() || want == have)
    };
    let mut after = LogCursor::default();
    loop {
        let page = decisions_after(store, &after, query.since_ms, query.limit).await?;
        for row in &page {
            after.advance(&row.chain, row.seq);
        }
        let last = page.len() < query.limit;
        let mut rows = page;
        rows.retain(|r| selects(r));
        let (back, found) = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for row in &rows {
                if let Err(why) = whatif.observe(row) {
                    found.push((row.seq, why));
                }
            }
            (whatif, found)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("re-deciding failed: {e}")))?;
        whatif = back;
        for (seq, why) in &found {
            undecodable(*seq, why);
        }
        if last || whatif.full() {
            return Ok(whatif.finish());
        }
    }
}

/// Identities whose ECI change a report lists.
const ECI_CHANGES_LISTED: usize = 100;

/// The ECI inputs `graph` gives under `config`'s grants and CI policies
/// (`ci`) and the store's entries, and the identities whose ECI it moves
/// from `running`.
pub async fn proposed_eci(
    config: &Config,
    ci: &CiRuntime,
    running: &EciReport,
    graph: &ExposureGraph,
    store: &dyn Store,
) -> Result<(ProposedEci, (Vec<EciChange>, u64)), String> {
    let exposure = crate::state::exposure(config, graph, store).await?;
    let ci_radius = config
        .ci
        .issuers
        .iter()
        .map(|i| {
            let radius = crate::doors::ci::blast_radius_under(ci, &exposure.eci, &i.url);
            (i.url.clone(), radius)
        })
        .collect();
    let identities: BTreeSet<String> = running
        .nodes()
        .iter()
        .chain(exposure.eci.nodes())
        .filter(|n| n.kind == NodeKind::Identity)
        .map(|n| n.id.clone())
        .collect();
    let changes = eci_changes(running, &exposure.eci, &identities, ECI_CHANGES_LISTED);
    Ok((
        ProposedEci {
            eci: exposure.eci,
            blast_radius: exposure.blast_radius,
            ci_radius,
        },
        changes,
    ))
}
