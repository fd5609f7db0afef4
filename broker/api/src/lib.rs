//! # mintguard-api
//!
//! The wire types shared by the Mintguard agent, broker and CLI: the workload
//! credential request and response, and the one error shape every endpoint
//! answers with (`{"error":{"code","message","reasons":[…]}}`). Serde types and
//! their size limits only: no I/O, no policy.
//!
//! Requests refuse unknown fields, so a typo in a client is a clear 400 rather
//! than a silently ignored option.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Largest request body the agent and broker accept, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest grant name, in bytes.
pub const MAX_GRANT_LEN: usize = 128;
/// Longest purpose string, in bytes.
pub const MAX_PURPOSE_LEN: usize = 512;
/// Longest lifetime a request may ask for, in seconds (31 days); a grant's
/// `max_ttl` caps it further. Every number a request carries is bounded
/// where it enters, so a record never holds a value its readers cannot
/// decode.
pub const MAX_TTL_SECONDS: u64 = 31 * 86_400;
/// Longest approval or lease id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Most audiences a JWT-SVID request may name.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;
/// Largest PEM CSR a request may carry, in bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Largest `uptime_seconds` a node may report (100 years).
pub const MAX_UPTIME_SECONDS: u64 = 100 * 366 * 86_400;

/// An input outside its limits: the field, a stable reason code, and the
/// limit in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    /// A stable machine-readable code (`bad_ttl`, `bad_grant`, …).
    pub code: &'static str,
    /// What is wrong, with the limit.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for InputError {}

fn input_error(code: &'static str, message: impl Into<String>) -> InputError {
    InputError {
        code,
        message: message.into(),
    }
}

/// Whether `s` is 1..=`max` bytes of `[A-Za-z0-9._-]` (grant names).
pub fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `s` is 1..=[`MAX_ID_LEN`] bytes of `[A-Za-z0-9-]` (approval and lease ids).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Unicode format characters that reorder or hide text on a terminal
/// (bidirectional overrides and isolates, zero-width characters, the BOM).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks free text that reaches records and policies: at most `max` bytes,
/// no control characters (NUL among them: PostgreSQL text cannot hold it,
/// and a log line should not carry terminal escapes) and no invisible
/// format characters (bidirectional overrides, zero-width: they disguise
/// what an operator reads).
pub fn check_text(code: &'static str, field: &str, s: &str, max: usize) -> Result<(), InputError> {
    if s.len() > max {
        return Err(input_error(
            code,
            format!("{field} is {} bytes, at most {max} allowed", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control() || is_invisible_format(c)) {
        return Err(input_error(
            code,
            format!("{field} holds a control character"),
        ));
    }
    Ok(())
}

impl CredentialRequest {
    /// Checks every field against its limits (the agent and the broker both
    /// call it; a refusal changes nothing).
    pub fn check(&self) -> Result<(), InputError> {
        if !is_name(&self.grant, MAX_GRANT_LEN) {
            return Err(input_error(
                "bad_grant",
                format!("grant must be 1..={MAX_GRANT_LEN} bytes of [A-Za-z0-9._-]"),
            ));
        }
        if let Some(ttl) = self.ttl_seconds
            && !(1..=MAX_TTL_SECONDS).contains(&ttl)
        {
            return Err(input_error(
                "bad_ttl",
                format!("ttl_seconds must be 1..={MAX_TTL_SECONDS}, got {ttl}"),
            ));
        }
        if let Some(p) = &self.purpose {
            check_text("bad_purpose", "purpose", p, MAX_PURPOSE_LEN)?;
        }
        if let Some(id) = &self.spiffe_id {
            // The broker parses it fully; the shape is bounded here.
            check_text("bad_spiffe_id", "spiffe_id", id, 2048)?;
        }
        if let Some(audience) = &self.audience {
            if audience.is_empty() || audience.len() > MAX_AUDIENCES {
                return Err(input_error(
                    "bad_audience",
                    format!("audience must name 1..={MAX_AUDIENCES} audiences"),
                ));
            }
            for aud in audience {
                if aud.is_empty() {
                    return Err(input_error("bad_audience", "an audience is empty"));
                }
                check_text("bad_audience", "audience", aud, MAX_AUDIENCE_LEN)?;
            }
        }
        if let Some(csr) = &self.csr {
            // PEM: printable ASCII and line breaks only; the broker parses it.
            if csr.len() > MAX_CSR_BYTES
                || !csr
                    .bytes()
                    .all(|b| b == b'\n' || b == b'\r' || (0x20..0x7f).contains(&b))
            {
                return Err(input_error(
                    "bad_csr",
                    format!("csr must be a PEM CSR of at most {MAX_CSR_BYTES} bytes"),
                ));
            }
        }
        if let Some(id) = &self.approval_id
            && !is_id(id)
        {
            return Err(input_error(
                "bad_approval_id",
                format!("approval_id must be 1..={MAX_ID_LEN} bytes of [A-Za-z0-9-]"),
            ));
        }
        Ok(())
    }
}

impl NodeFacts {
    /// Checks the facts against their limits.
    pub fn check(&self) -> Result<(), InputError> {
        for (field, value) in [
            ("agent_version", &self.agent_version),
            ("kernel_release", &self.kernel_release),
            ("socket_mode", &self.socket_mode),
        ] {
            check_text("bad_node_facts", field, value, MAX_FACT_LEN)?;
        }
        if self.uptime_seconds > MAX_UPTIME_SECONDS {
            return Err(input_error(
                "bad_node_facts",
                format!("uptime_seconds is at most {MAX_UPTIME_SECONDS}"),
            ));
        }
        Ok(())
    }
}

/// `POST /v1/credentials` (workload → agent), `POST /v1/ci/credentials` (CI → broker).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// The grant asked for, by name.
    pub grant: String,
    /// The lifetime asked for; the decision may shorten it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Why the credential is needed (some grants require it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Which identity, when several registration entries match the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Revoke the lease when the calling process exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_to_process: Option<bool>,
    /// Redeem an approved step-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The audiences of a JWT-SVID (`jwt_svid` grants; the grant's
    /// allowed audiences bound them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// A PEM CSR for an X.509-SVID (`x509_svid` grants): only its public
    /// key is used. The broker records the key's digest, never the CSR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// The answer to a credential request that was allowed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CredentialResponse {
    /// The lease that tracks this credential until expiry or revocation.
    pub lease_id: String,
    /// When the credential expires (RFC 3339).
    pub expires_at: String,
    /// The credential, shaped by its grant kind.
    pub credential: serde_json::Value,
    /// The decision, with its reasons and numbers.
    pub decision: serde_json::Value,
}

/// The error body every endpoint (but RFC 8693's) answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code, `snake_case`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Machine-readable reason codes behind a denial (may be empty).
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl ErrorBody {
    /// An error with a code, a message and reasons.
    pub fn new(code: impl Into<String>, message: impl Into<String>, reasons: Vec<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                reasons,
            },
        }
    }
}

/// Most selectors an agent may present for one workload.
pub const MAX_SELECTORS: usize = 64;
/// Longest selector, in bytes.
pub const MAX_SELECTOR_LEN: usize = 512;

/// Checks a list of selectors: 1..=[`MAX_SELECTORS`] of them, each
/// `type:value` of at most [`MAX_SELECTOR_LEN`] bytes without control
/// characters (a selector reaches records, logs and terminals).
pub fn check_selectors(selectors: &[String]) -> Result<(), InputError> {
    if selectors.is_empty() || selectors.len() > MAX_SELECTORS {
        return Err(input_error(
            "bad_selectors",
            format!("1..={MAX_SELECTORS} selectors required"),
        ));
    }
    for s in selectors {
        check_text("bad_selectors", "a selector", s, MAX_SELECTOR_LEN)?;
        if !s
            .split_once(':')
            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
        {
            return Err(input_error(
                "bad_selectors",
                "a selector is type:value, both non-empty",
            ));
        }
    }
    Ok(())
}

/// `POST /v1/issue` (agent → broker, mTLS): the workload's attested selectors
/// and its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// Selectors the agent proved from the workload's peer credentials.
    pub selectors: Vec<String>,
    /// The workload's request.
    pub request: CredentialRequest,
    /// What the agent reports about its node; the broker may use these only
    /// to lower posture, never to raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_facts: Option<NodeFacts>,
}

/// Longest node fact string, in bytes.
pub const MAX_FACT_LEN: usize = 128;

/// Node facts an agent reports with each request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFacts {
    /// The agent's version (semver).
    pub agent_version: String,
    /// `uname -r` of the node.
    pub kernel_release: String,
    /// Seconds since the node booted.
    pub uptime_seconds: u64,
    /// The workload socket's mode as configured, octal (e.g. `0660`).
    pub socket_mode: String,
}

/// `POST /v1/node/enroll` (public listener): a join token and a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use join token; it names the node.
    pub join_token: String,
    /// A PEM CSR for the node key (its subject and SANs are ignored).
    pub csr: String,
}

/// `POST /v1/node/renew` (agents listener): a CSR for the node's next SVID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A PEM CSR.
    pub csr: String,
}

/// An X.509-SVID issued to a node, with the trust bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidResponse {
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// The certificate chain, PEM, leaf first.
    pub svid_pem: String,
    /// The trust bundle, PEM.
    pub bundle_pem: String,
    /// When the SVID expires (RFC 3339).
    pub expires_at: String,
}

/// `GET /v1/node/bundles` (agents listener): what the agent's Workload API
/// publishes besides SVIDs, and which of the node's identities are
/// suspended (their streams end at once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeBundles {
    /// The trust domain's SPIFFE ID (`spiffe://example.org`).
    pub trust_domain_id: String,
    /// The X.509 bundle (every trusted CA), PEM.
    pub x509_bundle_pem: String,
    /// The JWT bundle: the broker's JWKS, each key with `kid` and
    /// `use: "jwt-svid"`.
    pub jwt_bundle: serde_json::Value,
    /// CRLs (DER, standard base64), one per CA still trusted (the active
    /// CA's first), each listing the revoked X.509-SVIDs that have not expired.
    pub crls_der_b64: Vec<String>,
    /// Their serial numbers, hex.
    pub revoked_serials: Vec<String>,
    /// The node's identities (and the node itself) that are suspended.
    pub suspended: Vec<String>,
}

/// A registration entry as the admin API and agents see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// Entry id.
    pub id: String,
    /// The SPIFFE ID it assigns.
    pub spiffe_id: String,
    /// The node that may vouch for it.
    pub parent: String,
    /// Selectors, all required.
    pub selectors: Vec<String>,
    /// Grants the identity may request.
    pub grants: Vec<String>,
}

/// `POST /admin/v1/entries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEntryRequest {
    /// The SPIFFE ID to assign.
    pub spiffe_id: String,
    /// The parent node: its SPIFFE ID or its name.
    pub parent: String,
    /// Selectors; at least one of `unix:uid`, `unix:gid`, `unix:user`,
    /// `cgroup:container_id`, `k8s:sa` (an executable hash alone is refused).
    pub selectors: Vec<String>,
    /// Grants the identity may request.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// `POST /admin/v1/tokens`: a join token for a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The node's name (its ID becomes `spiffe://<td>/mintguard/node/<name>`).
    pub node: String,
    /// Lifetime, seconds (default 600, at most 86400).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// The answer to `POST /admin/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenResponse {
    /// The token: shown once, stored only as a hash.
    pub token: String,
    /// The node ID it enrolls.
    pub spiffe_id: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_refuses_unknown_fields() {
        let json = r#"{"grant":"payments-db","ttl_seconds":300,"purpose":"nightly batch"}"#;
        let req: CredentialRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.grant, "payments-db");
        assert_eq!(req.ttl_seconds, Some(300));
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
        assert!(
            serde_json::from_str::<CredentialRequest>(r#"{"grant":"g","tll_seconds":1}"#).is_err()
        );
        assert!(serde_json::from_str::<CredentialRequest>(r#"{"ttl_seconds":1}"#).is_err());
    }

    #[test]
    fn every_field_is_bounded() {
        let ok = |json: &str| {
            serde_json::from_str::<CredentialRequest>(json)
                .unwrap()
                .check()
        };
        assert!(ok(r#"{"grant":"db","ttl_seconds":2678400}"#).is_ok());
        for (json, code) in [
            (
                r#"{"grant":"db","ttl_seconds":18446744073709551615}"#,
                "bad_ttl",
            ),
            (r#"{"grant":"db","ttl_seconds":2678401}"#, "bad_ttl"),
            (r#"{"grant":"db","ttl_seconds":0}"#, "bad_ttl"),
            (r#"{"grant":""}"#, "bad_grant"),
            (r#"{"grant":"d\u0000b"}"#, "bad_grant"),
            (r#"{"grant":"db","purpose":"a\u0000b"}"#, "bad_purpose"),
            (r#"{"grant":"db","purpose":"a\u001b[31m"}"#, "bad_purpose"),
            (r#"{"grant":"db","approval_id":"../x"}"#, "bad_approval_id"),
        ] {
            assert_eq!(ok(json).unwrap_err().code, code, "{json}");
        }
        // Floats, duplicates and deep nesting never get this far.
        for json in [
            r#"{"grant":"db","ttl_seconds":1.5}"#,
            r#"{"grant":"db","ttl_seconds":1e3}"#,
            r#"{"grant":"db","grant":"other"}"#,
        ] {
            assert!(
                serde_json::from_str::<CredentialRequest>(json).is_err(),
                "{json}"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(serde_json::from_str::<CredentialRequest>(&deep).is_err());
        let facts = NodeFacts {
            uptime_seconds: u64::MAX,
            ..Default::default()
        };
        assert_eq!(facts.check().unwrap_err().code, "bad_node_facts");
    }

    #[test]
    fn error_shape_matches_the_contract() {
        let body = ErrorBody::new(
            "denied",
            "trust too low",
            vec!["trust_below_critical".into()],
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error":{"code":"denied","message":"trust too low","reasons":["trust_below_critical"]}})
        );
    }
}
