//! The evaluation harness: a scenario file describes identities with their
//! rhythms, the nodes they run on, grants with their exposure, hard
//! negatives and attacks; [`run`] replays the simulated weeks through the
//! real decision path — the broker's trust signals
//! ([`crate::issue::inputs::observed_signals`]), `decide()` with the scenario's
//! Cedar policy, the [`Analyzer`] and the graduated responses of
//! [`ResponseConfig`](super::respond::ResponseConfig) (signals, step-ups, suspensions) — on a simulated
//! clock, and reports per attack whether and when it was detected and how
//! many credentials the attacker got before containment, and the false
//! positives on benign identity-days.
//!
//! The scenario format (TOML) is documented in `examples/anomaly/README.md`.

use std::collections::{BTreeMap, HashMap, HashSet};

use mintguard_policy::decision::{EciInput, IssuerContext, IssuerKind, PrincipalKind, Suspension};
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::{DecisionInput, decide};
use serde::Serialize;

use super::analyzer::{Analyzer, Subject};
use crate::config::{GrantConfig, SignalsConfig};
use crate::issue::Observed;
use crate::store::SignalRecord;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

mod scenario;
mod traffic;

pub use scenario::*;
use traffic::*;

/// What happened to one attack.
#[derive(Clone, Debug, Serialize)]
pub struct AttackResult {
    /// Name.
    pub name: String,
    /// Shape.
    pub kind: String,
    /// Detected during the attack (or within an hour after).
    pub detected: bool,
    /// Minutes from the attack's start to the first detection.
    pub minutes_to_detect: Option<f64>,
    /// Minutes from the start to the first refused attack request.
    pub minutes_to_contain: Option<f64>,
    /// Credentials the attacker got before containment.
    pub issued_before_containment: u64,
    /// Attack requests in all.
    pub requests: u64,
    /// The detectors that fired.
    pub detectors: Vec<String>,
    /// The strongest response applied.
    pub response: String,
}

/// The harness's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Decisions replayed.
    pub decisions: u64,
    /// Benign identities.
    pub identities: usize,
    /// Benign identity-days counted (after warm-up, while the identity exists).
    pub identity_days: u64,
    /// Benign identity-days with a detection.
    pub false_positive_days: u64,
    /// Their share.
    pub false_positive_rate: f64,
    /// Benign requests refused (step-up, deny, suspend) after warm-up.
    pub benign_refusals: u64,
    /// Benign identities' requests refused because their node was
    /// suspended or anomalous (a contained compromised node).
    pub collateral_refusals: u64,
    /// Benign node-days with an issuer detection.
    pub issuer_false_positive_days: u64,
    /// Detections about benign subjects after warm-up, by detector.
    pub false_positives_by_detector: BTreeMap<String, u64>,
    /// Per attack.
    pub attacks: Vec<AttackResult>,
}

/// Replays `scenario` and reports.
pub fn run(scenario: &Scenario) -> Result<Report, String> {
    let t0 = start_ms(&scenario.start)?;
    let (requests, entries) = traffic(scenario, t0)?;
    let exposure: HashMap<&str, f64> = scenario
        .grants
        .iter()
        .map(|g| (g.name.as_str(), g.exposure))
        .collect();
    let grants: HashMap<String, GrantConfig> = scenario
        .grants
        .iter()
        .map(|g| {
            let grant = GrantConfig {
                name: g.name.clone(),
                kind: crate::lease::LeaseKind::Jwt,
                max_ttl: crate::setting::Dur(std::time::Duration::from_secs(900)),
                eci_targets: Vec::new(),
                budget: None,
                reduced: None,
                spec: crate::mint::GrantSpec::Jwt(crate::mint::jwt::JwtGrant {
                    audience: "sim".into(),
                    claims: BTreeMap::new(),
                }),
                allowed_hours: None,
            };
            (g.name.clone(), grant)
        })
        .collect();
    let policy = scenario.policy.clone().unwrap_or_else(|| {
        "@id(\"entries-decide\")\npermit (principal, action, resource);\n".into()
    });
    let rules = RuleSet::new(
        vec![PolicySource {
            name: "scenario.cedar".into(),
            text: policy,
        }],
        mintguard_policy::trust::TrustConfig::default(),
    )
    .map_err(|e| format!("policy: {e}"))?;
    let signals_config = SignalsConfig::default();
    let responses = scenario.responses.clone();
    let mut analyzer = Analyzer::new(scenario.detectors.clone());
    let mut signals: HashMap<String, Vec<SignalRecord>> = HashMap::new();
    let mut suspended: HashSet<String> = HashSet::new();

    let warm_ms = t0 + i64::from(scenario.warmup_days) * DAY_MS;
    let attack_targets: HashMap<String, (usize, i64)> = scenario
        .attacks
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let subject = match a.kind {
                AttackKind::Fanout => format!("spiffe://sim/mintguard/node/{}", a.target),
                _ => {
                    let (p, k) = a.target.split_once('/').unwrap_or_default();
                    identity_name(p, k.parse().unwrap_or(0))
                }
            };
            (subject, (i, t0 + (a.day * DAY_MS as f64) as i64))
        })
        .collect();
    let mut results: Vec<AttackResult> = scenario
        .attacks
        .iter()
        .map(|a| AttackResult {
            name: a.name.clone(),
            kind: format!("{:?}", a.kind).to_lowercase(),
            detected: false,
            minutes_to_detect: None,
            minutes_to_contain: None,
            issued_before_containment: 0,
            requests: 0,
            detectors: Vec::new(),
            response: "none".into(),
        })
        .collect();
    let mut active_days: BTreeMap<(String, i64), bool> = BTreeMap::new();
    let mut node_fp: HashSet<(String, i64)> = HashSet::new();
    let mut benign_refusals = 0u64;
    let mut collateral_refusals = 0u64;
    let mut decisions = 0u64;
    let mut fp_by_detector: BTreeMap<String, u64> = BTreeMap::new();

    for r in &requests {
        let now = r.time_ms;
        let day = (now - t0).div_euclid(DAY_MS);
        let Some(grant) = grants.get(&r.grant) else {
            return Err(format!("unknown grant {}", r.grant));
        };
        let listed = entries
            .get(&r.identity)
            .is_some_and(|g| g.contains(&r.grant));
        let mut external: Vec<SignalRecord> = Vec::new();
        for subject in [&r.identity, &r.node] {
            if let Some(list) = signals.get(subject) {
                external.extend(list.iter().cloned());
            }
        }
        let observed = Observed {
            posture: (100, "sim"),
            attestation: (100, "sim"),
            network: None,
        };
        let input = DecisionInput {
            identity: r.identity.clone(),
            principal: PrincipalKind::Workload,
            issuer: IssuerContext {
                kind: IssuerKind::Node,
                id: r.node.clone(),
                may_vouch: listed,
                suspended: suspended.contains(&r.node),
                anomalous: responses.issuer_anomalous(&r.node, &external, now),
            },
            grant: crate::issue::inputs::grant_input(grant),
            requested_ttl_seconds: Some(300),
            purpose: None,
            now_ms: now,
            signals: crate::issue::inputs::observed_signals(
                &signals_config,
                grant,
                &observed,
                &external,
                crate::health::Behaviour::Fresh,
                now,
            ),
            eci: EciInput {
                identity_effective: 30.0,
                grant_exposure: exposure.get(r.grant.as_str()).copied().unwrap_or(100.0),
                issuer_blast_radius: 30.0,
                explained: None,
            },
            budgets: Vec::new(),
            evidence: Vec::new(),
            suspension: suspended.contains(&r.identity).then(|| Suspension {
                evidence: mintguard_policy::decision::Evidence {
                    kind: mintguard_policy::decision::EvidenceKind::Detection,
                    detail: "anomaly".into(),
                },
            }),
            approved: false,
            anomaly: responses.anomaly_input(&r.identity, &external, now),
            ci_claims: BTreeMap::new(),
        };
        let decision = decide(&input, &rules);
        decisions += 1;
        let minted = decision.outcome.mints();
        if let Some(i) = r.attack {
            let res = &mut results[i];
            res.requests += 1;
            if res.minutes_to_contain.is_none() {
                if minted {
                    res.issued_before_containment += 1;
                } else {
                    let start = attack_targets
                        .values()
                        .find(|(x, _)| *x == i)
                        .map_or(now, |v| v.1);
                    res.minutes_to_contain = Some((now - start) as f64 / 60_000.0);
                }
            }
        } else if now >= warm_ms {
            active_days
                .entry((r.identity.clone(), day))
                .or_insert(false);
            let attacked = attack_targets
                .get(&r.identity)
                .is_some_and(|(_, start)| now >= *start);
            if attacked {
                // The target's own traffic once it is compromised.
            } else if input.issuer.suspended || input.issuer.anomalous {
                collateral_refusals += 1;
            } else if !minted {
                benign_refusals += 1;
            }
        }
        let event = super::analyzer::Event {
            time_ms: now,
            identity: r.identity.clone(),
            issuer: r.node.clone(),
            grant: r.grant.clone(),
            denied: matches!(decision.outcome.as_str(), "deny" | "suspend")
                && !decision.reasons.iter().any(|r| {
                    matches!(
                        r,
                        mintguard_policy::Reason::IssuerSuspended
                            | mintguard_policy::Reason::IssuerAnomalous
                    )
                }),
            ttl_seconds: 300,
            exposure: input.eci.grant_exposure,
        };
        for d in analyzer.observe(&event) {
            let subject = d.subject.id().to_owned();
            let response = responses.respond(&d);
            let list = signals.entry(subject.clone()).or_default();
            list.retain(|s| s.source != response.signal.source);
            list.push(response.signal.clone());
            if response.suspend {
                suspended.insert(subject.clone());
            }
            match attack_targets.get(&subject) {
                Some((i, start)) if now >= *start && now <= attack_end(scenario, *i, *start) => {
                    let res = &mut results[*i];
                    if !res.detected {
                        res.detected = true;
                        res.minutes_to_detect = Some((now - start) as f64 / 60_000.0);
                    }
                    for (x, _) in &d.detectors {
                        if !res.detectors.contains(&x.code().to_owned()) {
                            res.detectors.push(x.code().to_owned());
                        }
                    }
                    if rank(response.level) > rank(&res.response) {
                        res.response = response.level.into();
                    }
                }
                // An attack target after its attack began is not benign.
                Some((_, start)) if now >= *start => {}
                _ if now >= warm_ms => {
                    for (x, _) in &d.detectors {
                        *fp_by_detector.entry(x.code().to_owned()).or_default() += 1;
                    }
                    match d.subject {
                        Subject::Identity(_) => {
                            active_days.insert((subject, day), true);
                        }
                        Subject::Issuer(_) => {
                            node_fp.insert((subject, day));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Attack targets' days from their attack on are not benign days, nor
    // those of identities on an attacked node.
    let node_of: HashMap<&str, &str> = requests
        .iter()
        .filter(|r| r.attack.is_none())
        .map(|r| (r.identity.as_str(), r.node.as_str()))
        .collect();
    active_days.retain(|(identity, day), _| {
        let node = node_of.get(identity.as_str()).copied().unwrap_or_default();
        [identity.as_str(), node].iter().all(|subject| {
            attack_targets
                .get(*subject)
                .is_none_or(|(_, start)| t0 + (day + 1) * DAY_MS <= *start)
        })
    });
    let identity_days = active_days.len() as u64;
    let false_positive_days = active_days.values().filter(|fp| **fp).count() as u64;
    Ok(Report {
        scenario: scenario.name.clone(),
        decisions,
        identities: scenario.populations.iter().map(|p| p.count as usize).sum(),
        identity_days,
        false_positive_days,
        false_positive_rate: false_positive_days as f64 / identity_days.max(1) as f64,
        benign_refusals,
        collateral_refusals,
        issuer_false_positive_days: node_fp.len() as u64,
        false_positives_by_detector: fp_by_detector,
        attacks: results,
    })
}

fn attack_end(s: &Scenario, i: usize, start: i64) -> i64 {
    let a = &s.attacks[i];
    let campaign = match a.kind {
        AttackKind::Accumulation => a.every_hours * a.grants.len() as f64 * 60.0,
        _ => a.duration_minutes,
    };
    start + ((campaign + 60.0) * 60_000.0) as i64
}

fn rank(level: &str) -> u8 {
    match level {
        "signal" => 1,
        "reduce" => 2,
        "step_up" | "deny" => 3,
        "suspend" => 4,
        _ => 0,
    }
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Anomaly evaluation: {}\n\n{} decisions replayed; {} benign identities, {} identity-days after warm-up.\n\n\
             **False positives**: {} identity-days with a detection ({:.3} %); {} benign requests refused (and {} on a contained node); {} node-days with an issuer detection; detections by detector: {:?}.\n\n\
             | attack | shape | detected | minutes to detect | minutes to contain | credentials before containment | attack requests | detectors | strongest response |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.scenario,
            self.decisions,
            self.identities,
            self.identity_days,
            self.false_positive_days,
            100.0 * self.false_positive_rate,
            self.benign_refusals,
            self.collateral_refusals,
            self.issuer_false_positive_days,
            self.false_positives_by_detector,
        );
        let minutes = |m: Option<f64>| m.map_or("—".to_owned(), |m| format!("{m:.1}"));
        for a in &self.attacks {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                a.name,
                a.kind,
                if a.detected { "yes" } else { "**no**" },
                minutes(a.minutes_to_detect),
                minutes(a.minutes_to_contain),
                a.issued_before_containment,
                a.requests,
                a.detectors.join(", "),
                a.response,
            ));
        }
        out
    }
}
