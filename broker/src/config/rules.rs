//! `[eci]` and `[policies]`: what decides besides the trust score.

use std::path::PathBuf;

use serde::Deserialize;

use super::Invalid;

/// `[eci]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EciConfig {
    /// The operator's exposure graph (JSON), relative to the config file.
    pub graph: Option<PathBuf>,
    /// Edge recency half-life, days. Default 30.
    pub half_life_days: f64,
    /// PageRank damping. Default 0.85.
    pub alpha: f64,
}

impl Default for EciConfig {
    fn default() -> Self {
        Self {
            graph: None,
            half_life_days: 30.0,
            alpha: 0.85,
        }
    }
}

/// `[policies]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PoliciesConfig {
    /// A directory of `*.cedar` files, relative to the config file. Without
    /// it, no permit exists and everything is denied.
    pub cedar: Option<PathBuf>,
}

impl EciConfig {
    /// A positive half-life and a damping in (0, 1).
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            return Err(Invalid::new("eci.half_life_days", "must be > 0"));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Invalid::new("eci.alpha", "must be in (0, 1)"));
        }
        Ok(())
    }
}
