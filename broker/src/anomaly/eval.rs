//! The evaluation harness: a scenario file describes identities with their
//! rhythms, the nodes they run on, grants with their exposure, hard
//! negatives and attacks; [`run`] replays the simulated weeks through the
//! real decision path — the broker's trust signals
//! ([`crate::issue::inputs::observed_signals`]), `decide()` with the scenario's
//! Cedar policy, the [`Analyzer`] and the graduated responses of
//! [`ResponseConfig`] (signals, step-ups, suspensions) — on a simulated
//! clock, and reports per attack whether and when it was detected and how
//! many credentials the attacker got before containment, and the false
//! positives on benign identity-days.
//!
//! The scenario format (TOML) is documented in `examples/anomaly/README.md`.

use std::collections::{BTreeMap, HashMap, HashSet};

use mintguard_policy::decision::{EciInput, IssuerContext, IssuerKind, PrincipalKind, Suspension};
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::{DecisionInput, decide};
use serde::{Deserialize, Serialize};

use super::analyzer::{Analyzer, AnalyzerConfig, Subject};
use super::respond::ResponseConfig;
use crate::config::{GrantConfig, SignalsConfig};
use crate::issue::Observed;
use crate::store::SignalRecord;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    pub name: String,
    /// The random seed (the same seed replays the same traffic).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated days.
    pub days: u32,
    /// Days of history before false positives are counted.
    #[serde(default = "default_warmup")]
    pub warmup_days: u32,
    /// The first simulated day (a date, UTC). Default 2026-03-02, a Monday.
    #[serde(default = "default_start")]
    pub start: String,
    /// Analyzer settings (as `[anomaly.detectors]`).
    #[serde(default)]
    pub detectors: AnalyzerConfig,
    /// Responses (as `[anomaly.responses]`).
    #[serde(default)]
    pub responses: ResponseConfig,
    /// Cedar policy text; default permits every grant an identity's entry lists.
    #[serde(default)]
    pub policy: Option<String>,
    /// Grants and their exposure.
    pub grants: Vec<SimGrant>,
    /// Groups of benign identities.
    pub populations: Vec<Population>,
    /// Attacks.
    #[serde(default)]
    pub attacks: Vec<Attack>,
}

fn default_seed() -> u64 {
    7
}
fn default_warmup() -> u32 {
    7
}
fn default_start() -> String {
    "2026-03-02".into()
}

/// A grant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimGrant {
    /// Name.
    pub name: String,
    /// Exposure 0–100.
    pub exposure: f64,
}

/// When a population is active.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rhythm {
    /// Monday–Friday, 08–18 (a trickle at weekends).
    Business,
    /// Every day, busier 08–20.
    Daily,
    /// Every night, 01–04 (batch jobs).
    Nightly,
    /// One weekday, 09–12.
    Weekly,
}

/// A weekly burst (a release day).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// 0 = Monday.
    pub weekday: u32,
    /// Hour (UTC).
    pub hour: u32,
    /// Requests per identity within 20 minutes.
    pub requests: u32,
}

/// Off-hours fixes by whoever is on call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCall {
    /// One fix every this many days, by one identity of the population.
    pub every_days: f64,
    /// Requests per fix.
    pub requests: u32,
}

/// A group of benign identities `spiffe://sim/<name>/<i>`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// Name.
    pub name: String,
    /// Identities.
    pub count: u32,
    /// Nodes they are spread over (`node-<name>-<k>`).
    pub nodes: u32,
    /// The grants their entries list (each request picks one).
    pub grants: Vec<String>,
    /// When they are active.
    pub rhythm: Rhythm,
    /// Mean requests per active hour (each identity ×0.5–1.5).
    pub per_hour: f64,
    /// The weekday of a `weekly` rhythm (0 = Monday).
    #[serde(default)]
    pub weekday: u32,
    /// The day they appear (a new service onboarding).
    #[serde(default)]
    pub start_day: u32,
    /// A weekly release burst.
    #[serde(default)]
    pub release: Option<Release>,
    /// Off-hours on-call fixes.
    #[serde(default)]
    pub oncall: Option<OnCall>,
}

/// The shape of an attack.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// The target identity asks for its own grants at `per_minute`.
    Burst,
    /// The target node mints for `identities` identities it never minted for.
    Fanout,
    /// The target identity adds one of `grants` every `every_hours`, in its
    /// working hours, at its usual pace otherwise.
    Accumulation,
    /// The target identity uses `grants` (high exposure) `requests` times
    /// at night.
    OffHours,
    /// The target identity asks for `grants` its entry does not list.
    Probing,
}

/// An attack.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    /// Name.
    pub name: String,
    /// Shape.
    pub kind: AttackKind,
    /// `population/index` (an identity) or a node name (fan-out).
    pub target: String,
    /// Start, in days since the scenario start (the fraction is the time of day).
    pub day: f64,
    /// How long, minutes (accumulation: the whole campaign).
    #[serde(default = "default_duration")]
    pub duration_minutes: f64,
    /// Requests per minute (burst, fan-out, probing).
    #[serde(default = "default_per_minute")]
    pub per_minute: f64,
    /// Grants used (accumulation, off-hours, probing).
    #[serde(default)]
    pub grants: Vec<String>,
    /// Identities (fan-out).
    #[serde(default = "default_identities")]
    pub identities: u32,
    /// Requests (off-hours).
    #[serde(default = "default_requests")]
    pub requests: u32,
    /// Hours between new grants (accumulation).
    #[serde(default = "default_every_hours")]
    pub every_hours: f64,
}

fn default_duration() -> f64 {
    60.0
}
fn default_per_minute() -> f64 {
    10.0
}
fn default_identities() -> u32 {
    30
}
fn default_requests() -> u32 {
    5
}
fn default_every_hours() -> f64 {
    24.0
}

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

/// A request in the simulation.
#[derive(Clone, Debug)]
struct Request {
    time_ms: i64,
    identity: String,
    node: String,
    grant: String,
    attack: Option<usize>,
}

/// splitmix64: small, deterministic, good enough for traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    /// A Poisson draw (Knuth; fine for the small means used here).
    fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 50.0 {
            // Normal approximation.
            let u = self.unit().max(1e-12);
            let v = self.unit();
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            return (mean + z * mean.sqrt()).round().max(0.0) as u32;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.unit();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

fn start_ms(date: &str) -> Result<i64, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(date, &format).map_err(|e| format!("start {date:?}: {e}"))?;
    Ok(day.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Intensity (0–1) of a rhythm at an hour of a weekday.
fn intensity(p: &Population, weekday: u32, hour: u32) -> f64 {
    match p.rhythm {
        Rhythm::Business if weekday < 5 && (8..18).contains(&hour) => 1.0,
        Rhythm::Business if (10..16).contains(&hour) => 0.03,
        Rhythm::Daily if (8..20).contains(&hour) => 1.0,
        Rhythm::Daily => 0.25,
        Rhythm::Nightly if (1..4).contains(&hour) => 1.0,
        Rhythm::Weekly if weekday == p.weekday && (9..12).contains(&hour) => 1.0,
        _ => 0.0,
    }
}

fn identity_name(population: &str, i: u32) -> String {
    format!("spiffe://sim/{population}/{i}")
}

fn node_name(population: &str, k: u32) -> String {
    format!("spiffe://sim/mintguard/node/{population}-{k}")
}

/// Generates the traffic, sorted by time.
/// Each identity's entry: the grants it lists.
type Entries = HashMap<String, Vec<String>>;

fn traffic(s: &Scenario, t0: i64) -> Result<(Vec<Request>, Entries), String> {
    let mut rng = Rng(s.seed);
    let first_weekday = u32::try_from((t0.div_euclid(DAY_MS) + 3).rem_euclid(7)).unwrap_or(0);
    let mut out = Vec::new();
    let mut entries: Entries = HashMap::new();
    let at = |rng: &mut Rng, base: i64, span: i64| base + (rng.unit() * span as f64) as i64;
    for p in &s.populations {
        if p.grants.is_empty() || p.nodes == 0 {
            return Err(format!("population {}: needs grants and nodes", p.name));
        }
        for i in 0..p.count {
            let identity = identity_name(&p.name, i);
            let node = node_name(&p.name, i % p.nodes);
            entries.insert(identity.clone(), p.grants.clone());
            let pace = p.per_hour * (0.5 + rng.unit());
            for day in p.start_day..s.days {
                let weekday = (first_weekday + day) % 7;
                for hour in 0..24 {
                    let mean = pace * intensity(p, weekday, hour);
                    let base = t0 + i64::from(day) * DAY_MS + i64::from(hour) * HOUR_MS;
                    for _ in 0..rng.poisson(mean) {
                        let grant = p.grants[rng.below(p.grants.len())].clone();
                        out.push(Request {
                            time_ms: at(&mut rng, base, HOUR_MS),
                            identity: identity.clone(),
                            node: node.clone(),
                            grant,
                            attack: None,
                        });
                    }
                }
                if let Some(r) = &p.release
                    && weekday == r.weekday
                {
                    let base = t0 + i64::from(day) * DAY_MS + i64::from(r.hour) * HOUR_MS;
                    for _ in 0..r.requests {
                        out.push(Request {
                            time_ms: at(&mut rng, base, 20 * 60_000),
                            identity: identity.clone(),
                            node: node.clone(),
                            grant: p.grants[rng.below(p.grants.len())].clone(),
                            attack: None,
                        });
                    }
                }
            }
        }
        if let Some(o) = &p.oncall {
            let mut day = f64::from(p.start_day) + o.every_days * rng.unit();
            while day < f64::from(s.days) {
                let i = u32::try_from(rng.below(p.count as usize)).unwrap_or(0);
                let base = t0 + (day.floor() as i64) * DAY_MS + (rng.below(5) as i64) * HOUR_MS;
                for _ in 0..o.requests {
                    out.push(Request {
                        time_ms: at(&mut rng, base, 30 * 60_000),
                        identity: identity_name(&p.name, i),
                        node: node_name(&p.name, i % p.nodes),
                        grant: p.grants[rng.below(p.grants.len())].clone(),
                        attack: None,
                    });
                }
                day += o.every_days * (0.5 + rng.unit());
            }
        }
    }
    for (index, a) in s.attacks.iter().enumerate() {
        let start = t0 + (a.day * DAY_MS as f64) as i64;
        let span = (a.duration_minutes * 60_000.0) as i64;
        let target = || -> Result<(String, String, Vec<String>), String> {
            let (population, i) = a
                .target
                .split_once('/')
                .ok_or_else(|| format!("attack {}: target is population/index", a.name))?;
            let p = s
                .populations
                .iter()
                .find(|p| p.name == population)
                .ok_or_else(|| format!("attack {}: no population {population}", a.name))?;
            let i: u32 = i
                .parse()
                .map_err(|_| format!("attack {}: bad index", a.name))?;
            Ok((
                identity_name(population, i),
                node_name(population, i % p.nodes),
                p.grants.clone(),
            ))
        };
        let mut push = |time_ms, identity: &str, node: &str, grant: &str| {
            out.push(Request {
                time_ms,
                identity: identity.to_owned(),
                node: node.to_owned(),
                grant: grant.to_owned(),
                attack: Some(index),
            });
        };
        match a.kind {
            AttackKind::Burst | AttackKind::Probing => {
                let (identity, node, own) = target()?;
                let grants = if a.kind == AttackKind::Burst {
                    own
                } else {
                    a.grants.clone()
                };
                let n = (a.per_minute * a.duration_minutes).round() as u64;
                for k in 0..n {
                    let t = start
                        + span * i64::try_from(k).unwrap_or(0) / i64::try_from(n).unwrap_or(1);
                    push(t, &identity, &node, &grants[rng.below(grants.len())]);
                }
            }
            AttackKind::Fanout => {
                let node = format!("spiffe://sim/mintguard/node/{}", a.target);
                let n = (a.per_minute * a.duration_minutes).round() as u64;
                for k in 0..n {
                    let who = k % u64::from(a.identities.max(1));
                    let identity = format!("spiffe://sim/dormant/{}/{who}", a.target);
                    entries.insert(identity.clone(), vec![s.grants[0].name.clone()]);
                    let t = start
                        + span * i64::try_from(k).unwrap_or(0) / i64::try_from(n).unwrap_or(1);
                    push(t, &identity, &node, &s.grants[0].name);
                }
            }
            AttackKind::Accumulation => {
                let (identity, node, _) = target()?;
                if let Some(list) = entries.get_mut(&identity) {
                    list.extend(a.grants.iter().cloned());
                }
                let mut t = start;
                for grant in &a.grants {
                    for _ in 0..3 {
                        push(at(&mut rng, t, HOUR_MS), &identity, &node, grant);
                    }
                    t += (a.every_hours * HOUR_MS as f64) as i64;
                }
            }
            AttackKind::OffHours => {
                let (identity, node, _) = target()?;
                if let Some(list) = entries.get_mut(&identity) {
                    list.extend(a.grants.iter().cloned());
                }
                for k in 0..a.requests {
                    let grant = &a.grants[(k as usize) % a.grants.len().max(1)];
                    push(at(&mut rng, start, span.max(1)), &identity, &node, grant);
                }
            }
        }
    }
    out.sort_by_key(|r| r.time_ms);
    Ok((out, entries))
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
            let text = format!(
                "name = {:?}\nkind = \"jwt\"\nmax_ttl = \"15m\"\njwt = {{ audience = \"sim\" }}\n",
                g.name
            );
            toml::from_str::<GrantConfig>(&text)
                .map(|c| (g.name.clone(), c))
                .map_err(|e| format!("grant {}: {e}", g.name))
        })
        .collect::<Result<_, _>>()?;
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
