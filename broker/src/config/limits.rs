//! `[limits]`: what any caller may ask of the broker at once.

use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Invalid};

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second per node (per replica). Default 500.
    pub per_node_per_second: u32,
    /// Requests per second per identity (per replica). Default 100.
    pub per_identity_per_second: u32,
    /// Largest request body, bytes. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Connections each listener serves at once; more are closed at accept
    /// (and counted). Default 4096.
    pub max_connections: usize,
    /// Of those, connections one client address may hold. Default 1024.
    pub max_connections_per_address: usize,
    /// Refusals of unauthenticated callers are counted over this window and
    /// written as one record per window (see `refusals`). Default 10 s.
    pub refusal_window: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_node_per_second: 500,
            per_identity_per_second: 100,
            max_body_bytes: 64 * 1024,
            max_connections: 4096,
            max_connections_per_address: 1024,
            refusal_window: Dur(Duration::from_secs(10)),
        }
    }
}

impl LimitsConfig {
    /// Positive rates, bodies of 1 KiB–16 MiB, connection counts in range.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.per_node_per_second == 0 || self.per_identity_per_second == 0 {
            return Err(Invalid::new("limits", "rates must be positive"));
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 16 * 1024 * 1024 {
            return Err(Invalid::new(
                "limits.max_body_bytes",
                "must be 1 KiB..=16 MiB",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(Invalid::new(
                "limits.max_connections",
                "must be 1..=1000000",
            ));
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            return Err(Invalid::new(
                "limits.max_connections_per_address",
                "must be 1..=max_connections",
            ));
        }
        let window = self.refusal_window.0;
        if window < Duration::from_millis(100) || window > Duration::from_secs(3600) {
            return Err(Invalid::new("limits.refusal_window", "must be 100ms..=1h"));
        }
        Ok(())
    }
}
