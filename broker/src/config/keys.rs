//! `[ca]` and `[jwt]`: the broker's own keys and their lifetimes.

use std::path::PathBuf;
use std::time::Duration;

use mintguard_certs::jwt::JwtAlgorithm;
use serde::Deserialize;

use super::{Dur, Invalid};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// CA certificate lifetime. Default 7 days.
    pub ca_ttl: Dur,
    /// Node and broker SVID lifetime (also the rotation overlap). Default 1 hour.
    pub svid_ttl: Dur,
    /// Where the CA's keys and state live. Default `<data_dir>/ca`; replicas
    /// share one directory (they lock it to rotate and re-read it).
    pub dir: Option<PathBuf>,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            ca_ttl: Dur(Duration::from_secs(7 * 86_400)),
            svid_ttl: Dur(Duration::from_secs(3600)),
            dir: None,
        }
    }
}

/// `[jwt]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `ES256` (default) or `EdDSA`.
    pub algorithm: JwtAlgorithm,
    /// The longest JWT any grant issues; retired keys stay in the JWKS this long.
    pub max_ttl: Dur,
    /// How often the signing key is replaced. Default 24 hours.
    pub rotate_every: Dur,
    /// Where the signing keys live. Default `<data_dir>/jwt`; replicas share
    /// one directory (they lock it to rotate and re-read it).
    pub dir: Option<PathBuf>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Es256,
            max_ttl: Dur(Duration::from_secs(3600)),
            rotate_every: Dur(Duration::from_secs(86_400)),
            dir: None,
        }
    }
}

impl CaConfig {
    /// The CA outlives two SVID lifetimes (the rotation overlap).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.svid_ttl.0.is_zero() || self.ca_ttl.0 < self.svid_ttl.0 * 2 {
            return Err(Invalid::new(
                "ca.ca_ttl",
                "must be at least twice ca.svid_ttl",
            ));
        }
        Ok(())
    }
}

impl JwtConfig {
    /// A positive longest TTL and a rotation of at least a second.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_ttl.0.is_zero() {
            return Err(Invalid::new("jwt.max_ttl", "must be positive"));
        }
        if self.rotate_every.0 < Duration::from_secs(1) {
            return Err(Invalid::new("jwt.rotate_every", "must be at least 1s"));
        }
        Ok(())
    }
}
