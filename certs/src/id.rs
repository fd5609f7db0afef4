//! SPIFFE IDs, trust domains, Mintguard's identity conventions and ID matchers.
//!
//! Parsing is strict and follows the SPIFFE ID specification (through the
//! `spiffe` crate's [`SpiffeId`] and [`TrustDomain`]): lowercase trust domain of
//! `[a-z0-9.-_]`, path segments of `[a-zA-Z0-9.-_]`, no empty, `.` or `..`
//! segments, no trailing slash, no query, fragment, port or user info, and at
//! most [`MAX_SPIFFE_ID_LEN`] bytes.

use std::fmt;

pub use spiffe::{SpiffeId, TrustDomain};

use crate::error::{CertsError, Result, excerpt};

/// The longest SPIFFE ID accepted, in bytes (the SPIFFE specification's URI limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The longest trust domain name accepted, in bytes (a DNS name).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Parses an untrusted SPIFFE ID.
pub fn parse_spiffe_id(input: &str) -> Result<SpiffeId> {
    if input.len() > MAX_SPIFFE_ID_LEN {
        return Err(CertsError::LimitExceeded {
            kind: "SPIFFE ID length",
            limit: MAX_SPIFFE_ID_LEN,
            actual: input.len(),
        });
    }
    let id = SpiffeId::new(input).map_err(|e| CertsError::InvalidSpiffeId {
        id: excerpt(input),
        reason: e.to_string(),
    })?;
    // The `spiffe` crate lowercases the scheme and trust domain; the
    // specification allows only lowercase there, so anything it had to
    // normalize is refused rather than silently rewritten.
    if id.to_string() != input {
        return Err(CertsError::InvalidSpiffeId {
            id: excerpt(input),
            reason: "scheme and trust domain must be lowercase".into(),
        });
    }
    Ok(id)
}

/// Parses a bare trust domain name such as `example.org`.
///
/// Unlike [`TrustDomain::new`], a full `spiffe://` ID is refused: configuration
/// names the trust domain, not an ID inside it.
pub fn parse_trust_domain(input: &str) -> Result<TrustDomain> {
    if input.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(CertsError::LimitExceeded {
            kind: "trust domain length",
            limit: MAX_TRUST_DOMAIN_LEN,
            actual: input.len(),
        });
    }
    if input.contains(':') || input.contains('/') {
        return Err(CertsError::InvalidTrustDomain {
            name: excerpt(input),
            reason: "expected a bare name such as example.org, not a URI".into(),
        });
    }
    let td = TrustDomain::new(input).map_err(|e| CertsError::InvalidTrustDomain {
        name: excerpt(input),
        reason: e.to_string(),
    })?;
    if td.as_str() != input {
        return Err(CertsError::InvalidTrustDomain {
            name: excerpt(input),
            reason: "must be lowercase".into(),
        });
    }
    Ok(td)
}

fn id_in(td: &TrustDomain, segments: &[&str]) -> Result<SpiffeId> {
    SpiffeId::from_segments(td.clone(), segments).map_err(|e| CertsError::InvalidSpiffeId {
        id: excerpt(&format!("{}/{}", td.id_string(), segments.join("/"))),
        reason: e.to_string(),
    })
}

/// The broker's own ID, `spiffe://<td>/mintguard/broker`; agents pin it.
pub fn broker_id(td: &TrustDomain) -> SpiffeId {
    // The segments are constants that satisfy the specification.
    SpiffeId::from_segments(td.clone(), &["mintguard", "broker"])
        .unwrap_or_else(|_| unreachable!("constant path segments are valid"))
}

/// A node's ID, `spiffe://<td>/mintguard/node/<name>`.
pub fn node_id(td: &TrustDomain, name: &str) -> Result<SpiffeId> {
    id_in(td, &["mintguard", "node", name])
}

/// An operator's ID, `spiffe://<td>/mintguard/operator/<name>`.
pub fn operator_id(td: &TrustDomain, name: &str) -> Result<SpiffeId> {
    id_in(td, &["mintguard", "operator", name])
}

/// Which SPIFFE IDs an endpoint accepts from its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdMatcher {
    /// Exactly this ID (agents pin the broker's).
    Exact(SpiffeId),
    /// Any ID strictly below `path` in `trust_domain`: `/mintguard/node` matches
    /// `/mintguard/node/n1` but neither `/mintguard/node` nor `/mintguard/nodes/x`.
    /// An empty path matches every ID in the trust domain with a non-empty path.
    Under {
        /// The trust domain the ID must belong to.
        trust_domain: TrustDomain,
        /// A path prefix without trailing slash, such as `/mintguard/node`.
        path: String,
    },
}

impl IdMatcher {
    /// Accepts exactly `id`.
    pub fn exact(id: SpiffeId) -> Self {
        Self::Exact(id)
    }

    /// Accepts IDs strictly below `path` (`/a/b`, or empty for the whole domain).
    pub fn under(trust_domain: TrustDomain, path: &str) -> Result<Self> {
        if !path.is_empty() {
            // Validate the prefix with the same rules as a full ID.
            parse_spiffe_id(&format!("{}{}", trust_domain.id_string(), path))?;
        }
        Ok(Self::Under {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Accepts the IDs of enrolled nodes, `spiffe://<td>/mintguard/node/*`.
    pub fn nodes(trust_domain: &TrustDomain) -> Self {
        Self::Under {
            trust_domain: trust_domain.clone(),
            path: "/mintguard/node".to_owned(),
        }
    }

    /// Operators' IDs: strictly below `/mintguard/operator`.
    pub fn operators(trust_domain: &TrustDomain) -> Self {
        Self::Under {
            trust_domain: trust_domain.clone(),
            path: "/mintguard/operator".to_owned(),
        }
    }

    /// Whether `id` is accepted.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::Under { trust_domain, path } => {
                id.trust_domain() == trust_domain
                    && id
                        .path()
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
            }
        }
    }
}

impl fmt::Display for IdMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Under { trust_domain, path } => {
                write!(f, "{}{}/*", trust_domain.id_string(), path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        parse_trust_domain("example.org").unwrap()
    }

    #[test]
    fn parses_valid_ids() {
        let id = parse_spiffe_id("spiffe://example.org/ns/pay/sa/api").unwrap();
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.path(), "/ns/pay/sa/api");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "spiffe://",
            "http://example.org/a",
            "spiffe://Example.org/a",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://user@example.org/a",
            "spiffe://example.org:8443/a",
            "spiffe://exa mple.org/a",
            "SPIFFE://example.org/a",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn limits_id_length() {
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        match parse_spiffe_id(&long) {
            Err(CertsError::LimitExceeded { limit, actual, .. }) => {
                assert_eq!(limit, MAX_SPIFFE_ID_LEN);
                assert_eq!(actual, long.len());
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn trust_domain_must_be_bare() {
        assert!(parse_trust_domain("spiffe://example.org").is_err());
        assert!(parse_trust_domain("example.org/x").is_err());
        assert!(parse_trust_domain("EXAMPLE.org").is_err());
        assert_eq!(
            parse_trust_domain("example.org").unwrap().as_str(),
            "example.org"
        );
    }

    #[test]
    fn conventions() {
        assert_eq!(
            broker_id(&td()).to_string(),
            "spiffe://example.org/mintguard/broker"
        );
        assert_eq!(
            node_id(&td(), "n1").unwrap().to_string(),
            "spiffe://example.org/mintguard/node/n1"
        );
        assert!(node_id(&td(), "a/b").is_err());
        assert!(node_id(&td(), "..").is_err());
        assert!(operator_id(&td(), "").is_err());
    }

    #[test]
    fn matchers() {
        let nodes = IdMatcher::nodes(&td());
        let id = |s: &str| parse_spiffe_id(s).unwrap();
        assert!(nodes.matches(&id("spiffe://example.org/mintguard/node/n1")));
        assert!(nodes.matches(&id("spiffe://example.org/mintguard/node/n1/x")));
        assert!(!nodes.matches(&id("spiffe://example.org/mintguard/node")));
        assert!(!nodes.matches(&id("spiffe://example.org/mintguard/nodes/n1")));
        assert!(!nodes.matches(&id("spiffe://other.org/mintguard/node/n1")));
        assert!(!nodes.matches(&id("spiffe://example.org/mintguard/broker")));

        let broker = IdMatcher::exact(broker_id(&td()));
        assert!(broker.matches(&id("spiffe://example.org/mintguard/broker")));
        assert!(!broker.matches(&id("spiffe://example.org/mintguard/broker/x")));

        let all = IdMatcher::under(td(), "").unwrap();
        assert!(all.matches(&id("spiffe://example.org/a")));
        assert!(!all.matches(&id("spiffe://example.org")));
        assert!(IdMatcher::under(td(), "/a/").is_err());
        assert_eq!(nodes.to_string(), "spiffe://example.org/mintguard/node/*");
    }
}
