//! The one error type of `mintguard-policy`.

/// Errors from loading or validating policy inputs: configuration, exposure
/// graphs and Cedar rules. Decisions themselves never fail: a problem during a
/// decision is a reason code on a `deny`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A configuration value is out of range or inconsistent.
    #[error("{key}: {reason}")]
    Config {
        /// The configuration key, e.g. `trust.weights`.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// An exposure graph is malformed.
    #[error("exposure graph: {0}")]
    Graph(String),

    /// An input exceeds a fixed limit.
    #[error("{kind} exceeds its limit: {actual} > {limit}")]
    LimitExceeded {
        /// What was counted.
        kind: &'static str,
        /// The limit.
        limit: usize,
        /// What the input had.
        actual: usize,
    },

    /// A Cedar policy failed to parse or to validate against Mintguard's schema.
    #[error("cedar policy {source_name}: {diagnostic}")]
    Cedar {
        /// Which file (or `<inline>`).
        source_name: String,
        /// Cedar's diagnostic.
        diagnostic: String,
    },
}
