//! Baselines and detectors over the stream of decisions.
//!
//! The analyzer is pure: it is fed decisions in time order ([`Event`]) and
//! keeps, per identity and per issuer (node or CI issuer), a baseline built
//! from exponentially decayed counters — so it is maintained incrementally,
//! rebuilt by replaying the log, and driven by a simulated clock in the
//! evaluation harness exactly as by the log's timestamps in the broker.
//!
//! Each event is scored by every detector (0–100, documented on
//! [`Detector`]); scores combine as a noisy-OR, and anything at or above
//! `detect_at` is a [`Detection`] with its evidence.
//!
//! **Cold start**: an identity with fewer than `cold_start_events` decisions,
//! or first seen less than `cold_start_age` ago, has no baseline to deviate
//! from. Only the detectors that need none run for it (a burst of denials,
//! and a rate above `cold_start_rate_per_minute`); everything relative to its
//! own history is skipped, and its `behaviour` signal stays at the
//! configured neutral value. Issuers have the same rule.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::config::anomaly::AnalyzerConfig;

const MINUTE: f64 = 60_000.0;
const HOUR: f64 = 60.0 * MINUTE;
const DAY: f64 = 24.0 * HOUR;

/// One decision, as the analyzer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When it was decided, ms since the epoch (the log's time).
    pub time_ms: i64,
    /// The identity (SPIFFE ID).
    pub identity: String,
    /// The node or CI issuer that vouched.
    pub issuer: String,
    /// The grant asked for.
    pub grant: String,
    /// Whether the decision refused (deny or suspend; a step-up is a hold).
    pub denied: bool,
    /// The TTL asked for, seconds.
    pub ttl_seconds: u64,
    /// The grant's exposure, 0–100.
    pub exposure: f64,
}

/// What a detector found unusual. Scores are 0–100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Decisions in the short horizon against the identity's own expected
    /// count (the larger of its baseline rate and its hour-of-day and
    /// hour-of-week profiles, at least 1): with `n` observed and `λ`
    /// expected, `z = (n − λ) / √(λ + 1 + λ²/4)` (overdispersed: traffic is
    /// burstier than Poisson); it fires when `n ≥ min_burst`
    /// and `n ≥ 3λ`, scoring `10 + 7z` (z = 5 → 45, z = 13 → 100). In cold
    /// start: a rate above `cold_start_rate_per_minute` scores 60. A spike
    /// that lasts adds `10 × p`, p the short horizons it has lasted (≤ 3).
    RateSpike,
    /// A grant this identity never asked for: `25 + 50 × exposure / 100`.
    NewGrant,
    /// A node or issuer never seen for this identity, when it has used at
    /// most three before: 35 (not a detection alone).
    NewNode,
    /// An hour of the day and of the week holding less than
    /// `off_hours_share` of the identity's activity: `25 + 45 × exposure /
    /// 100`, halved exposure term for a grant that is at least a fifth of
    /// its requests; for any other grant, plus 10 per further off-hours
    /// request within the hour.
    OffHours,
    /// Denials in the short horizon ≥ `denial_burst` and ≥ 4 × the usual
    /// plus 3: `40 + 6 × (d − denial_burst)`. Runs in cold start.
    DenialBurst,
    /// Grants first used within `accumulation_days` (k ≥ 2): `15k + 0.25 ×`
    /// the sum of their exposures.
    PrivilegeAccumulation,
    /// An issuer minting for `n` distinct identities in the short horizon
    /// against its usual `λ`: when `n ≥ fanout_min_identities` and `n ≥
    /// 4λ + 5`, `20 + 2 × (n − 4λ − 5)`, plus 10 per identity new to the
    /// issuer (dormant entries suddenly used weigh most).
    IssuerFanout,
}

impl Detector {
    /// The reason code.
    pub fn code(self) -> &'static str {
        match self {
            Detector::RateSpike => "rate_spike",
            Detector::NewGrant => "new_grant",
            Detector::NewNode => "new_node",
            Detector::OffHours => "off_hours",
            Detector::DenialBurst => "denial_burst",
            Detector::PrivilegeAccumulation => "privilege_accumulation",
            Detector::IssuerFanout => "issuer_fanout",
        }
    }
}

/// Whom a detection is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Subject {
    /// A workload or CI identity.
    Identity(String),
    /// A node or CI issuer.
    Issuer(String),
}

impl Subject {
    /// The SPIFFE ID or issuer URL.
    pub fn id(&self) -> &str {
        match self {
            Subject::Identity(id) | Subject::Issuer(id) => id,
        }
    }
}

/// A detection: a subject, its combined score, and each detector's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// When (the triggering decision's time), ms.
    pub time_ms: i64,
    /// Whom it is about.
    pub subject: Subject,
    /// The combined score, 0–100.
    pub score: u8,
    /// Each detector that scored, with its score.
    pub detectors: Vec<(Detector, u8)>,
    /// The numbers behind the scores.
    pub evidence: Value,
}

impl Detection {
    /// The detectors' codes joined with `+` (the signal's source).
    pub fn codes(&self) -> String {
        let codes: Vec<&str> = self.detectors.iter().map(|(d, _)| d.code()).collect();
        codes.join("+")
    }
}

/// An exponentially decayed counter: `value` as of `at_ms`.
#[derive(Clone, Copy, Debug, Default)]
struct Decayed {
    value: f64,
    at_ms: i64,
}

impl Decayed {
    fn at(&self, now_ms: i64, tau_ms: f64) -> f64 {
        let dt = (now_ms - self.at_ms).max(0) as f64;
        self.value * (-dt / tau_ms).exp()
    }

    fn add(&mut self, now_ms: i64, tau_ms: f64, x: f64) {
        self.value = self.at(now_ms, tau_ms) + x;
        self.at_ms = self.at_ms.max(now_ms);
    }
}

/// The time an exponentially decayed counter of horizon `tau` has been
/// integrating over after `age` (so `value / effective` is a rate).
fn effective(age_ms: f64, tau_ms: f64) -> f64 {
    tau_ms * (1.0 - (-age_ms / tau_ms).exp())
}

const HOD_TAU: f64 = 14.0 * DAY;
const HOW_TAU: f64 = 28.0 * DAY;
const OFF_HOURS_TAU: f64 = HOUR;

#[derive(Clone, Debug)]
struct GrantSeen {
    first_ms: i64,
    count: u64,
    exposure: f64,
}

/// An identity's baseline.
#[derive(Clone, Debug)]
struct IdentityBaseline {
    first_ms: i64,
    events: u64,
    short: Decayed,
    long: Decayed,
    hour_of_day: [Decayed; 24],
    hour_of_week: [Decayed; 168],
    grants: HashMap<String, GrantSeen>,
    issuers: HashMap<String, i64>,
    denials_short: Decayed,
    denials_long: Decayed,
    off_hours: Decayed,
    spiking: Decayed,
    ttl_mean: f64,
}

impl IdentityBaseline {
    fn new(now_ms: i64) -> Self {
        Self {
            first_ms: now_ms,
            events: 0,
            short: Decayed::default(),
            long: Decayed::default(),
            hour_of_day: [Decayed::default(); 24],
            hour_of_week: [Decayed::default(); 168],
            grants: HashMap::new(),
            issuers: HashMap::new(),
            denials_short: Decayed::default(),
            denials_long: Decayed::default(),
            off_hours: Decayed::default(),
            spiking: Decayed::default(),
            ttl_mean: 0.0,
        }
    }
}

/// An issuer's baseline: the identities it mints for.
#[derive(Clone, Debug)]
struct IssuerBaseline {
    first_ms: i64,
    events: u64,
    last_seen: HashMap<String, i64>,
    fresh: Decayed,
    fresh_long: Decayed,
    new_identities: Decayed,
}

/// The analyzer: baselines for every identity and issuer.
#[derive(Debug)]
pub struct Analyzer {
    config: AnalyzerConfig,
    identities: HashMap<String, IdentityBaseline>,
    issuers: HashMap<String, IssuerBaseline>,
}

/// Hour of the day and of the week (Monday 00:00 UTC = 0) of a time.
fn hours(time_ms: i64) -> (usize, usize) {
    let hours_since_epoch = time_ms.div_euclid(3_600_000);
    // 1970-01-01 was a Thursday: shift so Monday is 0.
    let how = (hours_since_epoch + 3 * 24).rem_euclid(168);
    (
        usize::try_from(hours_since_epoch.rem_euclid(24)).unwrap_or(0),
        usize::try_from(how).unwrap_or(0),
    )
}

fn clamp_score(x: f64) -> u8 {
    if x.is_nan() {
        0
    } else {
        x.round().clamp(0.0, 100.0) as u8
    }
}

/// Noisy-OR of scores in 0–100.
fn combine(parts: &[(Detector, u8)]) -> u8 {
    let miss: f64 = parts
        .iter()
        .map(|(_, s)| 1.0 - f64::from(*s) / 100.0)
        .product();
    clamp_score(100.0 * (1.0 - miss))
}

impl Analyzer {
    /// An analyzer with no history.
    pub fn new(config: AnalyzerConfig) -> Self {
        Self {
            config,
            identities: HashMap::new(),
            issuers: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AnalyzerConfig {
        &self.config
    }

    /// Identities and issuers with a baseline.
    pub fn tracked(&self) -> (usize, usize) {
        (self.identities.len(), self.issuers.len())
    }

    /// Whether `identity` is still in cold start at `now_ms`.
    pub fn cold(&self, identity: &str, now_ms: i64) -> bool {
        self.identities
            .get(identity)
            .is_none_or(|b| self.is_cold(b.events, b.first_ms, now_ms))
    }

    fn is_cold(&self, events: u64, first_ms: i64, now_ms: i64) -> bool {
        events < self.config.cold_start_events
            || ((now_ms - first_ms) as f64) < self.config.cold_start_hours * HOUR
    }

    /// Scores `event` against the baselines as they stood, then learns from
    /// it. Returns the detections (identity and/or issuer) at or above
    /// `detect_at`.
    pub fn observe(&mut self, event: &Event) -> Vec<Detection> {
        let mut out = Vec::new();
        let identity = self.score_identity(event);
        let spiking = identity
            .as_ref()
            .is_some_and(|d| d.detectors.iter().any(|(x, _)| *x == Detector::RateSpike));
        out.extend(identity);
        out.extend(self.score_issuer(event));
        self.learn(event, spiking);
        out
    }

    fn score_identity(&self, e: &Event) -> Option<Detection> {
        let c = &self.config;
        let now = e.time_ms;
        let short_tau = c.short_minutes * MINUTE;
        let long_tau = c.baseline_hours * HOUR;
        let fresh = IdentityBaseline::new(now);
        let b = self.identities.get(&e.identity).unwrap_or(&fresh);
        let cold = self.is_cold(b.events, b.first_ms, now);
        let mut parts = Vec::new();
        let mut evidence = serde_json::Map::new();
        evidence.insert("cold_start".into(), cold.into());
        evidence.insert("history_events".into(), b.events.into());

        // Rates, counting this decision.
        let n = b.short.at(now, short_tau) + 1.0;
        let age = (now - b.first_ms).max(0) as f64;
        let (hod, how) = hours(now);
        if cold {
            let per_minute = n / c.short_minutes;
            if per_minute > c.cold_start_rate_per_minute {
                parts.push((Detector::RateSpike, 60));
                evidence.insert(
                    "rate_spike".into(),
                    json!({"per_minute": per_minute, "cold_start_limit": c.cold_start_rate_per_minute}),
                );
            }
        } else {
            // Rates per ms times the horizon; an hour slot holds 1/24 (of
            // the day) or 1/168 (of the week) of the time.
            // The baseline is the history before the short horizon, so a
            // spike does not become its own baseline as it goes on.
            let age = age.max(short_tau);
            let before = (b.long.at(now, long_tau) - b.short.at(now, short_tau)).max(0.0);
            let span = (effective(age, long_tau) - short_tau).max(short_tau);
            let baseline = before / span * short_tau;
            // The profiles speak once the identity has lived through a day
            // (a week) — before that every slot looks like its only hour.
            let day = if age >= DAY {
                b.hour_of_day[hod].at(now, HOD_TAU) / effective(age, HOD_TAU) * 24.0 * short_tau
            } else {
                0.0
            };
            let week = if age >= 7.0 * DAY {
                b.hour_of_week[how].at(now, HOW_TAU) / effective(age, HOW_TAU) * 168.0 * short_tau
            } else {
                0.0
            };
            let lambda = baseline.max(day).max(week).max(1.0);
            // Overdispersed (negative-binomial) variance: real traffic is
            // burstier than Poisson within an hour slot.
            let z = (n - lambda) / (lambda + 1.0 + 0.25 * lambda * lambda).sqrt();
            if n >= c.min_burst && n >= 3.0 * lambda {
                // Persistence: how many short horizons the spike has lasted.
                let persistence = (b.spiking.at(now, 3.0 * short_tau) / n).min(3.0);
                let score = clamp_score(10.0 + 7.0 * z + 10.0 * persistence);
                parts.push((Detector::RateSpike, score));
                evidence.insert(
                    "rate_spike".into(),
                    json!({"observed": round2(n), "expected": round2(lambda), "z": round2(z),
                           "persistence": round2(persistence),
                           "baseline": round2(baseline), "hour_of_day": round2(day), "hour_of_week": round2(week)}),
                );
            }

            // A grant never asked for; privilege accumulation.
            if !b.grants.contains_key(&e.grant) {
                parts.push((
                    Detector::NewGrant,
                    clamp_score(25.0 + 50.0 * e.exposure / 100.0),
                ));
                evidence.insert(
                    "new_grant".into(),
                    json!({"grant": e.grant, "exposure": round2(e.exposure), "known_grants": b.grants.len()}),
                );
            }
            let window = c.accumulation_days * DAY;
            let mut recent: Vec<(&str, f64)> = b
                .grants
                .iter()
                .filter(|(_, g)| {
                    ((now - g.first_ms) as f64) < window
                        && ((g.first_ms - b.first_ms) as f64) > c.cold_start_hours * HOUR
                })
                .map(|(name, g)| (name.as_str(), g.exposure))
                .collect();
            if !b.grants.contains_key(&e.grant) {
                recent.push((e.grant.as_str(), e.exposure));
            }
            if recent.len() >= 2 {
                let k = recent.len() as f64;
                let sum: f64 = recent.iter().map(|(_, x)| x).sum();
                parts.push((
                    Detector::PrivilegeAccumulation,
                    clamp_score(15.0 * k + 0.25 * sum),
                ));
                recent.sort_by(|a, b| a.0.cmp(b.0));
                evidence.insert(
                    "privilege_accumulation".into(),
                    json!({"new_grants": recent.iter().map(|(g, _)| g).collect::<Vec<_>>(),
                           "exposure_sum": round2(sum), "window_days": c.accumulation_days}),
                );
            }

            // A node never seen, for an identity that stays on few.
            if !b.issuers.contains_key(&e.issuer) && b.issuers.len() <= 3 {
                parts.push((Detector::NewNode, 35));
                evidence.insert(
                    "new_node".into(),
                    json!({"issuer": e.issuer, "known_issuers": b.issuers.len()}),
                );
            }

            // Off its hour-of-day and hour-of-week profile.
            let total: f64 = b.hour_of_day.iter().map(|h| h.at(now, HOD_TAU)).sum();
            let total_week: f64 = b.hour_of_week.iter().map(|h| h.at(now, HOW_TAU)).sum();
            let share_day = b.hour_of_day[hod].at(now, HOD_TAU) / total.max(1e-9);
            let share_week = if age >= 7.0 * DAY {
                b.hour_of_week[how].at(now, HOW_TAU) / total_week.max(1e-9)
            } else {
                0.0
            };
            if age >= DAY && share_day < c.off_hours_share && share_week < c.off_hours_share {
                let usual = b
                    .grants
                    .get(&e.grant)
                    .is_some_and(|g| g.count as f64 >= 0.2 * b.events as f64);
                let weight = if usual { 22.5 } else { 45.0 };
                // Repeated off-hours use of an unusual grant adds up.
                let repeats = if usual {
                    0.0
                } else {
                    b.off_hours.at(now, OFF_HOURS_TAU)
                };
                parts.push((
                    Detector::OffHours,
                    clamp_score(25.0 + weight * e.exposure / 100.0 + 10.0 * repeats),
                ));
                evidence.insert(
                    "off_hours".into(),
                    json!({"hour_of_day": hod, "share_of_day": round4(share_day),
                           "share_of_week": round4(share_week), "usual_grant": usual,
                           "off_hours_recently": round2(repeats)}),
                );
            }
        }

        // Probing: a burst of denials (no baseline needed).
        if e.denied {
            let d = b.denials_short.at(now, short_tau) + 1.0;
            // In cold start there is no usual to speak of.
            let usual = if cold {
                0.0
            } else {
                let before = (b.denials_long.at(now, long_tau)
                    - b.denials_short.at(now, short_tau))
                .max(0.0);
                before / (effective(age.max(short_tau), long_tau) - short_tau).max(short_tau)
                    * short_tau
            };
            if d >= c.denial_burst && d >= 4.0 * usual + 3.0 {
                parts.push((
                    Detector::DenialBurst,
                    clamp_score(40.0 + 6.0 * (d - c.denial_burst)),
                ));
                evidence.insert(
                    "denial_burst".into(),
                    json!({"denials": round2(d), "usual": round2(usual)}),
                );
            }
        }
        self.detection(now, Subject::Identity(e.identity.clone()), parts, evidence)
    }

    fn score_issuer(&self, e: &Event) -> Option<Detection> {
        let c = &self.config;
        let now = e.time_ms;
        let b = self.issuers.get(&e.issuer)?;
        if self.is_cold(b.events, b.first_ms, now) {
            return None;
        }
        let short_tau = c.short_minutes * MINUTE;
        let long_tau = c.baseline_hours * HOUR;
        let age = (now - b.first_ms).max(0) as f64;
        let reappears = b
            .last_seen
            .get(&e.identity)
            .is_none_or(|last| ((now - last) as f64) > short_tau);
        let n = b.fresh.at(now, short_tau) + f64::from(u8::from(reappears));
        let before = (b.fresh_long.at(now, long_tau) - b.fresh.at(now, short_tau)).max(0.0);
        let span = (effective(age.max(short_tau), long_tau) - short_tau).max(short_tau);
        let lambda = before / span * short_tau;
        let new = b.new_identities.at(now, short_tau)
            + f64::from(u8::from(!b.last_seen.contains_key(&e.identity)));
        if n >= c.fanout_min_identities && n >= 4.0 * lambda + 5.0 {
            let score = clamp_score(20.0 + 2.0 * (n - 4.0 * lambda - 5.0) + 10.0 * new);
            let evidence = json!({"identities": round2(n), "usual": round2(lambda),
                                  "new_identities": round2(new), "known_identities": b.last_seen.len()});
            return self.detection(
                now,
                Subject::Issuer(e.issuer.clone()),
                vec![(Detector::IssuerFanout, score)],
                json!({"issuer_fanout": evidence}).as_object().cloned()?,
            );
        }
        None
    }

    fn detection(
        &self,
        now: i64,
        subject: Subject,
        parts: Vec<(Detector, u8)>,
        evidence: serde_json::Map<String, Value>,
    ) -> Option<Detection> {
        let score = combine(&parts);
        (score >= self.config.detect_at).then(|| Detection {
            time_ms: now,
            subject,
            score,
            detectors: parts.into_iter().filter(|(_, s)| *s > 0).collect(),
            evidence: Value::Object(evidence),
        })
    }

    fn learn(&mut self, e: &Event, spiking: bool) {
        let c = &self.config;
        let now = e.time_ms;
        let short_tau = c.short_minutes * MINUTE;
        let long_tau = c.baseline_hours * HOUR;
        let (hod, how) = hours(now);
        let off_hours_share = c.off_hours_share;
        let b = self
            .identities
            .entry(e.identity.clone())
            .or_insert_with(|| IdentityBaseline::new(now));
        // Off-hours repeats, judged before this decision joins the profile.
        let total: f64 = b.hour_of_day.iter().map(|h| h.at(now, HOD_TAU)).sum();
        if b.events > 0 && b.hour_of_day[hod].at(now, HOD_TAU) / total.max(1e-9) < off_hours_share {
            b.off_hours.add(now, OFF_HOURS_TAU, 1.0);
        }
        b.events += 1;
        if spiking {
            b.spiking.add(now, 3.0 * short_tau, 1.0);
        }
        b.short.add(now, short_tau, 1.0);
        b.long.add(now, long_tau, 1.0);
        b.hour_of_day[hod].add(now, HOD_TAU, 1.0);
        b.hour_of_week[how].add(now, HOW_TAU, 1.0);
        let g = b.grants.entry(e.grant.clone()).or_insert(GrantSeen {
            first_ms: now,
            count: 0,
            exposure: e.exposure,
        });
        g.count += 1;
        g.exposure = e.exposure;
        b.issuers.entry(e.issuer.clone()).or_insert(now);
        if e.denied {
            b.denials_short.add(now, short_tau, 1.0);
            b.denials_long.add(now, long_tau, 1.0);
        }
        let ttl = e.ttl_seconds as f64;
        b.ttl_mean = if b.events == 1 {
            ttl
        } else {
            0.95 * b.ttl_mean + 0.05 * ttl
        };

        let i = self
            .issuers
            .entry(e.issuer.clone())
            .or_insert_with(|| IssuerBaseline {
                first_ms: now,
                events: 0,
                last_seen: HashMap::new(),
                fresh: Decayed::default(),
                fresh_long: Decayed::default(),
                new_identities: Decayed::default(),
            });
        i.events += 1;
        let previous = i.last_seen.insert(e.identity.clone(), now);
        if previous.is_none_or(|last| ((now - last) as f64) > short_tau) {
            i.fresh.add(now, short_tau, 1.0);
            i.fresh_long.add(now, long_tau, 1.0);
        }
        if previous.is_none() {
            i.new_identities.add(now, short_tau, 1.0);
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01 00:00 UTC, a Thursday

    fn event(t: i64, identity: &str, grant: &str) -> Event {
        Event {
            time_ms: t,
            identity: identity.into(),
            issuer: "spiffe://example.org/mintguard/node/n1".into(),
            grant: grant.into(),
            denied: false,
            ttl_seconds: 300,
            exposure: 30.0,
        }
    }

    /// Two weeks of one request every 10 minutes during working hours.
    fn warmed(a: &mut Analyzer, identity: &str) -> i64 {
        let mut t = T0;
        while t < T0 + 14 * DAY as i64 {
            let (hod, _) = hours(t);
            if (8..18).contains(&hod) {
                assert!(a.observe(&event(t, identity, "db")).is_empty(), "t={t}");
            }
            t += 10 * 60_000;
        }
        t
    }

    #[test]
    fn a_steady_identity_raises_nothing_and_a_burst_is_a_rate_spike() {
        let mut a = Analyzer::new(AnalyzerConfig::default());
        let end = warmed(&mut a, "w");
        // Next working day, 10:00: a burst of 60 in a minute.
        let t = end - end.rem_euclid(DAY as i64) + 10 * HOUR as i64;
        let mut best = 0;
        for k in 0..60 {
            for d in a.observe(&event(t + k * 1000, "w", "db")) {
                assert!(d.detectors.iter().any(|(x, _)| *x == Detector::RateSpike));
                best = best.max(d.score);
            }
        }
        assert!(best >= 90, "{best}");
    }

    #[test]
    fn cold_start_is_neutral_except_for_absolute_limits() {
        let mut a = Analyzer::new(AnalyzerConfig::default());
        // A new identity asking for a new grant at 03:00: nothing.
        assert!(
            a.observe(&event(T0 + 3 * HOUR as i64, "new", "x"))
                .is_empty()
        );
        assert!(a.cold("new", T0 + 3 * HOUR as i64));
        // … but 800 requests in two minutes are over the cold-start limit.
        let detections: Vec<_> = (0..800)
            .flat_map(|k| a.observe(&event(T0 + 4 * HOUR as i64 + k * 150, "new", "x")))
            .collect();
        assert!(!detections.is_empty());
    }

    #[test]
    fn new_grants_off_hours_and_accumulation_score_with_exposure() {
        let mut a = Analyzer::new(AnalyzerConfig::default());
        let end = warmed(&mut a, "w");
        let night = end - end.rem_euclid(DAY as i64) + 3 * HOUR as i64;
        let mut e = event(night, "w", "prod-admin");
        e.exposure = 90.0;
        let d = a.observe(&e).pop().unwrap();
        let codes = d.codes();
        assert!(
            codes.contains("new_grant") && codes.contains("off_hours"),
            "{codes}"
        );
        assert!(d.score >= 80, "{}", d.score);
        // Working hours, one more new grant: accumulation.
        let mut e = event(night + 8 * HOUR as i64, "w", "billing-admin");
        e.exposure = 60.0;
        let d = a.observe(&e).pop().unwrap();
        assert!(
            d.codes().contains("privilege_accumulation"),
            "{}",
            d.codes()
        );
    }

    #[test]
    fn probing_is_a_denial_burst_even_in_cold_start() {
        let mut a = Analyzer::new(AnalyzerConfig::default());
        let mut found = false;
        for k in 0..8 {
            let mut e = event(T0 + k * 5_000, "p", &format!("g{k}"));
            e.denied = true;
            found |= a
                .observe(&e)
                .iter()
                .any(|d| d.codes().contains("denial_burst"));
        }
        assert!(found);
    }

    #[test]
    fn an_issuer_minting_for_many_identities_is_a_fanout() {
        let mut a = Analyzer::new(AnalyzerConfig::default());
        // Four identities, every 10 minutes, for two weeks.
        let mut t = T0;
        while t < T0 + 14 * DAY as i64 {
            for w in 0..4 {
                a.observe(&event(t, &format!("w{w}"), "db"));
            }
            t += 10 * 60_000;
        }
        let mut fanout = None;
        for k in 0..40 {
            for d in a.observe(&event(t + k * 2_000, &format!("other{k}"), "db")) {
                if matches!(d.subject, Subject::Issuer(_)) {
                    fanout = Some(d);
                }
            }
        }
        let d = fanout.expect("no fan-out");
        assert_eq!(d.detectors[0].0, Detector::IssuerFanout);
        assert!(d.score >= 90);
    }

    #[test]
    fn hours_start_the_week_on_monday() {
        // 2026-01-05 was a Monday.
        assert_eq!(hours(T0 + 4 * DAY as i64), (0, 0));
        assert_eq!(hours(T0 + 4 * DAY as i64 + 25 * HOUR as i64), (1, 25));
    }
}
