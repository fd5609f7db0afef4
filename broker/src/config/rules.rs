//! `[eci]` and `[policies]`: what decides besides the trust score.

use std::path::{Path, PathBuf};

use mintguard_policy::rules::PolicySource;

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
    /// A directory of `*.cedar` files every live decision is also decided
    /// under (with the running trust configuration), relative to the config
    /// file: its verdict is recorded beside the enforced one and never
    /// enforced (see `mintguard shadow report`).
    pub shadow: Option<PathBuf>,
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

/// Loads the Cedar sources of a directory (`*.cedar`); none without one.
pub fn load_policies(dir: Option<&Path>) -> Result<Vec<PolicySource>, String> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut sources = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("policies {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("policies {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "cedar") {
            sources.push(PolicySource {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                text: std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            });
        }
    }
    Ok(sources)
}
