//! `[listen]`: the three listeners.

use std::net::SocketAddr;

use serde::Deserialize;

use super::Invalid;

/// The three listeners.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// TLS: node enrollment, CI runners, JWKS, discovery, introspection, health.
    pub public: SocketAddr,
    /// mTLS with node SVIDs: renewal, entries, issuance, lease revocation.
    pub agents: SocketAddr,
    /// Operators (mTLS operator SVID or a bearer token).
    pub admin: SocketAddr,
    /// DNS names in the broker's certificate besides its SPIFFE ID, so HTTPS
    /// clients that check host names (CI runners' curl) can reach the public
    /// listener with the trust bundle as their CA file. Default none.
    #[serde(default)]
    pub public_dns_names: Vec<String>,
}

impl Listen {
    /// Three distinct addresses (port 0, tests picking a free port, may
    /// repeat) and DNS names that are DNS names.
    pub fn validate(&self) -> Result<(), Invalid> {
        let fixed = self.public.port() != 0 || self.agents.port() != 0 || self.admin.port() != 0;
        if fixed
            && (self.public == self.agents
                || self.public == self.admin
                || self.agents == self.admin)
        {
            return Err(Invalid::new(
                "listen",
                "public, agents and admin need three different addresses",
            ));
        }
        if let Some(bad) = self.public_dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(Invalid::new(
                "listen.public_dns_names",
                format!("{bad:?} is not a DNS name"),
            ));
        }
        Ok(())
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
