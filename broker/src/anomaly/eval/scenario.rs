//! The scenario file's format (documented in `examples/anomaly/README.md`).

use serde::Deserialize;

use crate::anomaly::analyzer::AnalyzerConfig;
use crate::anomaly::respond::ResponseConfig;

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
