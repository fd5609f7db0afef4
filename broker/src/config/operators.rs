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

/// `[console]`: the operator console served on the admin listener under
/// `/ui/`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve it. Default true (it grants nothing the admin API does not:
    /// each call is checked against the operator's role).
    pub enabled: bool,
    /// A session ends this long after its last request. Default 15 min.
    pub idle_timeout: Dur,
    /// …and this long after sign-in, whatever its use. Default 12 h.
    pub max_age: Dur,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout: Dur(Duration::from_secs(15 * 60)),
            max_age: Dur(Duration::from_secs(12 * 3600)),
        }
    }
}

impl ConsoleConfig {
    /// Both timeouts at least a second, the idle one within the age.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.idle_timeout.0 < Duration::from_secs(1) || self.idle_timeout.0 > self.max_age.0 {
            return Err(Invalid::new(
                "console.idle_timeout",
                "at least 1s and at most console.max_age",
            ));
        }
        if self.max_age.0 > Duration::from_secs(7 * 24 * 3600) {
            return Err(Invalid::new("console.max_age", "at most 7 days"));
        }
        Ok(())
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
