//! `[[operators]]`, `[[introspection_clients]]` and `[approvals]`: who may
//! act on the broker and how a held request is approved.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Invalid};

/// `[approvals]`: requests held by a `step_up` decision.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long an approval (pending or approved, unused) stays valid.
    /// Default 15 min.
    pub ttl: Dur,
    /// Approvers a break-glass request needs besides its opener. Default 1
    /// (two people).
    pub break_glass_approvers: u32,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl: Dur(Duration::from_secs(900)),
            break_glass_approvers: 1,
        }
    }
}

/// Operator roles.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read logs.
    Viewer,
    /// Entries, suspend, revoke.
    Operator,
    /// Approve step-ups.
    Approver,
    /// Everything.
    Admin,
    /// May only post signals.
    SignalSource,
}

/// `[[operators]]`: a named bearer token from a file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Name (appears in the log).
    pub name: String,
    /// Role.
    pub role: Role,
    /// File holding the token (0600), relative to the config file.
    pub token_file: PathBuf,
}

/// `[[introspection_clients]]`: relying parties allowed to call `/v1/introspect`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionClient {
    /// Name.
    pub name: String,
    /// File holding its bearer token.
    pub token_file: PathBuf,
    /// The audiences whose tokens it may introspect (at least one): any
    /// other token is `{"active": false}` to it, so one relying party cannot
    /// learn about another's credentials.
    pub audiences: Vec<String>,
}

/// Operator names are unique and not empty.
pub fn validate_operators(operators: &[OperatorConfig]) -> Result<(), Invalid> {
    let mut names = BTreeSet::new();
    for (i, o) in operators.iter().enumerate() {
        if !names.insert(o.name.as_str()) || o.name.is_empty() {
            return Err(Invalid::new(
                format!("operators[{i}].name"),
                format!("{:?}: empty or duplicate", o.name),
            ));
        }
    }
    Ok(())
}

impl IntrospectionClient {
    /// At least one audience, none empty.
    pub fn validate(&self, i: usize) -> Result<(), Invalid> {
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(Invalid::new(
                format!("introspection_clients[{i}].audiences"),
                format!(
                    "{:?} must name the audiences whose tokens it may introspect",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}
