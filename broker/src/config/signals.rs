//! `[signals]`: how the broker scores what it observes itself.

use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Invalid};

/// `[signals]`: how the broker scores what it observes itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// The `behaviour` value before anomaly analysis has enough history. Default 70.
    pub behaviour_neutral: u8,
    /// How long broker-observed signals stay fresh. Default 15 minutes.
    pub ttl: Dur,
    /// Agents older than this (`MAJOR.MINOR.PATCH`) lower their node's
    /// posture to `outdated_agent_posture`. Default: none.
    pub min_agent_version: Option<String>,
    /// The posture of a node whose agent is older than `min_agent_version`.
    /// Default 30.
    pub outdated_agent_posture: u8,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            behaviour_neutral: 70,
            ttl: Dur(Duration::from_secs(900)),
            min_agent_version: None,
            outdated_agent_posture: 30,
        }
    }
}

/// `MAJOR.MINOR.PATCH` (a pre-release or build suffix is ignored) as a
/// comparable triple; `None` when it is not a version.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

impl SignalsConfig {
    /// Scores 0–100 and a version that parses.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.outdated_agent_posture > 100 {
            return Err(Invalid::new(
                "signals.outdated_agent_posture",
                "must be 0–100",
            ));
        }
        if let Some(v) = &self.min_agent_version
            && parse_version(v).is_none()
        {
            return Err(Invalid::new(
                "signals.min_agent_version",
                format!("{v:?} is not MAJOR.MINOR.PATCH"),
            ));
        }
        if self.behaviour_neutral > 100 {
            return Err(Invalid::new("signals.behaviour_neutral", "must be 0–100"));
        }
        Ok(())
    }
}
