//! Shadow rule sets: `[policies] shadow = DIR` names Cedar policies every
//! live decision is also decided under, with the same input and the running
//! trust configuration. The decision record keeps the shadow's verdict and
//! its rule-set hash beside the enforced decision; `replay` re-decides both,
//! `mintguard shadow report` tallies where they disagree as `whatif` does,
//! and Prometheus counts the disagreements by transition. Enforcement never
//! reads the shadow's verdict.
//!
//! The shadow rule set is stored by hash like the enforced one, with a
//! record (`shadow_rules`) written when the broker starts with it or a
//! reload changes or drops it: a record never names a rule set the store
//! lacks, and the log says from when a shadow set was watched. Each live
//! decision pays a second Cedar evaluation (measured in the README).

use std::path::Path;
use std::sync::Arc;

use mintguard_policy::rules::RuleSet;
use mintguard_policy::trust::TrustConfig;
use serde_json::json;

use crate::log::{LogEntry, RecordKind};
use crate::store::Append;

/// A loaded shadow rule set.
pub struct Shadow {
    /// Its Cedar policies, with the running trust configuration.
    pub rules: RuleSet,
    /// Its stored form (JSON), written with its `shadow_rules` record.
    pub rules_json: Arc<str>,
}

impl Shadow {
    /// The `*.cedar` files of `dir`, with the running `trust`.
    pub fn load(dir: &Path, trust: &TrustConfig) -> Result<Self, String> {
        let sources = crate::config::load_policies(Some(dir))?;
        if sources.is_empty() {
            return Err(format!(
                "{}: no .cedar files (a shadow set with none would deny everything)",
                dir.display()
            ));
        }
        let rules = RuleSet::new(sources, trust.clone()).map_err(|e| e.to_string())?;
        let rules_json = serde_json::to_string(&rules.to_stored())
            .map_err(|e| e.to_string())?
            .into();
        Ok(Self { rules, rules_json })
    }

    /// Its hash.
    pub fn hash(&self) -> &str {
        self.rules.hash()
    }

    /// The record that says no shadow rule set is watched from now on.
    pub fn none_record(now_ms: i64) -> Append {
        Append::record(watch_record(
            now_ms,
            json!({"action": "shadow_rules", "rule_set_hash": null}),
        ))
    }

    /// The record that stores it and says it is watched from now on.
    pub fn record(&self, dir: &Path, now_ms: i64) -> Append {
        let policies: Vec<String> = self
            .rules
            .to_stored()
            .policies
            .into_iter()
            .map(|p| p.name)
            .collect();
        let mut append = Append::record(watch_record(
            now_ms,
            json!({
                "action": "shadow_rules",
                "rule_set_hash": self.hash(),
                "dir": dir.display().to_string(),
                "policies": policies,
            }),
        ));
        append.rule_set = Some((self.hash().to_owned(), self.rules_json.clone()));
        append
    }
}

/// A `shadow_rules` record (which set is watched from now on).
fn watch_record(now_ms: i64, body: serde_json::Value) -> LogEntry {
    LogEntry {
        time_ms: now_ms,
        kind: RecordKind::Admin,
        request_id: crate::ids::random_id("shadow"),
        identity: None,
        grant: None,
        node: None,
        outcome: Some("shadow_rules".to_owned()),
        body,
    }
}
