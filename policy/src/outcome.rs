//! The five outcomes of a decision and their precedence.

use serde::{Deserialize, Serialize};

/// What the broker does with a request. Ordered by strength: when several
/// apply, the strongest wins (`suspend > deny > step_up > allow_reduced > allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Mint as asked.
    Allow,
    /// Privilege reduction: a shorter TTL and/or the grant's reduced variant.
    AllowReduced,
    /// Held for an approver; 202 with an approval id.
    StepUp,
    /// Refused, with reasons.
    Deny,
    /// The identity (or issuer) is suspended: refuse, revoke its leases, alert.
    Suspend,
}

impl Outcome {
    /// The stronger of two outcomes.
    pub fn stronger(self, other: Outcome) -> Outcome {
        std::cmp::max(self, other)
    }

    /// Whether a credential is minted (and a budget spent).
    pub fn mints(self) -> bool {
        matches!(self, Outcome::Allow | Outcome::AllowReduced)
    }

    /// The outcome's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::AllowReduced => "allow_reduced",
            Outcome::StepUp => "step_up",
            Outcome::Deny => "deny",
            Outcome::Suspend => "suspend",
        }
    }

    /// Parses a wire name (as in a Cedar `@outcome` annotation).
    pub fn parse(name: &str) -> Option<Outcome> {
        Some(match name {
            "allow" => Outcome::Allow,
            "allow_reduced" => Outcome::AllowReduced,
            "step_up" => Outcome::StepUp,
            "deny" => Outcome::Deny,
            "suspend" => Outcome::Suspend,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        use Outcome::*;
        let order = [Allow, AllowReduced, StepUp, Deny, Suspend];
        for (i, a) in order.iter().enumerate() {
            for b in &order[i..] {
                assert_eq!(a.stronger(*b), *b);
                assert_eq!(b.stronger(*a), *b);
            }
            assert_eq!(Outcome::parse(a.as_str()), Some(*a));
        }
        assert_eq!(Outcome::parse("allowed"), None);
    }
}
