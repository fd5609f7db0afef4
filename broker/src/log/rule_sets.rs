//! Rule sets as the log's readers load them back: by hash, and re-hashed.
//!
//! Every decision names the hash of the rule set it was decided under, and
//! the store keeps each rule set by that hash. The store is not trusted to
//! keep it honestly: a rule set is re-hashed when it is loaded, and one
//! whose content no longer hashes to its name (replaced in the database) is
//! refused, by `replay`, `explain` and `logs verify` alike.

use mintguard_policy::rules::{RuleSet, StoredRuleSet};
use serde::Serialize;

/// Why a named rule set cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum RuleSetProblem {
    /// The store holds no rule set by this hash.
    #[error("rule set {hash} is not stored")]
    Missing {
        /// The hash a record names.
        hash: String,
    },
    /// The stored form is not a rule set.
    #[error("rule set {hash} is unreadable: {reason}")]
    Unreadable {
        /// The hash a record names.
        hash: String,
        /// Why.
        reason: String,
    },
    /// The stored content hashes to something else (replaced).
    #[error("rule set {hash} was replaced: its content hashes to {actual}")]
    Replaced {
        /// The hash a record names.
        hash: String,
        /// What the stored content hashes to.
        actual: String,
    },
    /// The stored rule set no longer loads (Cedar refuses it).
    #[error("rule set {hash} no longer loads: {reason}")]
    Invalid {
        /// The hash a record names.
        hash: String,
        /// Cedar's diagnostic.
        reason: String,
    },
}

/// Checks the stored text of rule set `hash` (`None`: not stored) and
/// parses it, without building its Cedar policies.
pub fn check(hash: &str, stored: Option<&str>) -> Result<StoredRuleSet, RuleSetProblem> {
    let hash = hash.to_owned();
    let Some(stored) = stored else {
        return Err(RuleSetProblem::Missing { hash });
    };
    let parsed: StoredRuleSet =
        serde_json::from_str(stored).map_err(|e| RuleSetProblem::Unreadable {
            hash: hash.clone(),
            reason: e.to_string(),
        })?;
    let actual = parsed.hash();
    if actual != hash {
        return Err(RuleSetProblem::Replaced { hash, actual });
    }
    Ok(parsed)
}

/// [`check`], then builds the rule set for re-deciding.
pub fn load(hash: &str, stored: Option<&str>) -> Result<RuleSet, RuleSetProblem> {
    let parsed = check(hash, stored)?;
    RuleSet::from_stored(parsed).map_err(|e| RuleSetProblem::Invalid {
        hash: hash.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use mintguard_policy::rules::PolicySource;
    use mintguard_policy::trust::TrustConfig;

    use super::*;

    #[test]
    fn a_replaced_rule_set_is_refused() {
        let rules = RuleSet::new(
            vec![PolicySource {
                name: "a.cedar".into(),
                text: "permit(principal, action, resource);".into(),
            }],
            TrustConfig::default(),
        )
        .unwrap();
        let stored = serde_json::to_string(&rules.to_stored()).unwrap();
        assert!(load(rules.hash(), Some(&stored)).is_ok());
        let forged = stored.replace("permit", "forbid");
        assert!(matches!(
            check(rules.hash(), Some(&forged)),
            Err(RuleSetProblem::Replaced { .. })
        ));
        assert!(matches!(
            check(rules.hash(), None),
            Err(RuleSetProblem::Missing { .. })
        ));
        assert!(matches!(
            check(rules.hash(), Some("{")),
            Err(RuleSetProblem::Unreadable { .. })
        ));
    }
}
