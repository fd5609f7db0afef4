//! Registration entries, and the selectors they may name.

use serde::{Deserialize, Serialize};

/// A registration entry: which workloads on which node get which identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Entry id.
    pub id: String,
    /// The SPIFFE ID it assigns.
    pub spiffe_id: String,
    /// The node that may vouch for it.
    pub parent: String,
    /// Selectors, all of which the workload must present.
    pub selectors: Vec<String>,
    /// Grants the identity may request.
    pub grants: Vec<String>,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// Selectors that say *who* runs a workload and that a local user cannot
/// take on: an entry needs one. An executable hash alone is not enough —
/// any local user can run that binary (under LD_PRELOAD, or ptraced) — so
/// `unix:sha256` must stand beside a uid, gid or user, or beside a
/// container or Kubernetes selector the runtime sets.
const PINS_WHO: &[&str] = &[
    "unix:uid:",
    "unix:gid:",
    "unix:user:",
    "cgroup:container_id:",
    "k8s:sa:",
];

/// Selector prefixes the agent can prove (a selector is one of these and a
/// value).
pub const KNOWN_SELECTORS: &[&str] = &[
    "unix:uid:",
    "unix:gid:",
    "unix:user:",
    "unix:path:",
    "unix:sha256:",
    "cgroup:",
    "k8s:ns:",
    "k8s:sa:",
];

/// Why an entry without a selector saying who runs the workload is refused.
pub const WEAK_ENTRY: &str = "an entry needs a unix:uid, unix:gid, unix:user, cgroup:container_id or k8s:sa selector (an executable hash alone matches any local user who runs that binary)";

impl Entry {
    /// Whether `selector` is one the agent can prove ([`KNOWN_SELECTORS`]
    /// with a value).
    pub fn known_selector(selector: &str) -> bool {
        KNOWN_SELECTORS
            .iter()
            .any(|k| selector.starts_with(k) && selector.len() > k.len())
    }

    /// Whether `selectors` hold one that says who runs the workload
    /// ([`PINS_WHO`]); an entry without one is weak.
    pub fn pins_who(selectors: &[String]) -> bool {
        selectors
            .iter()
            .any(|s| PINS_WHO.iter().any(|k| s.starts_with(k)))
    }
}
