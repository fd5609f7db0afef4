//! `[ci]`: CI trust policies — which OIDC issuers are trusted, which of their
//! tokens map to which identity, and which grants that identity may ask for.

pub mod matcher;
pub mod template;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Dur;

/// `[ci]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CiConfig {
    /// The issuer allowlist.
    pub issuers: Vec<IssuerConfig>,
    /// Trust policies.
    pub policies: Vec<CiPolicy>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default 60 s.
    pub skew: Option<Dur>,
    /// Largest token accepted, bytes. Default 16 KiB.
    pub max_token_bytes: Option<usize>,
    /// Requests per second per client address on the CI endpoints (per
    /// replica), before any token work or log write. Default 20.
    pub per_address_per_second: Option<u32>,
}

impl CiConfig {
    /// The skew.
    pub fn skew(&self) -> Duration {
        self.skew.map_or(Duration::from_secs(60), |d| d.0)
    }

    /// The token size limit.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes.unwrap_or(16 * 1024)
    }
}

/// `[[ci.issuers]]`: a trusted OIDC issuer.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` claim, exactly; discovery is at
    /// `<url>/.well-known/openid-configuration`.
    pub url: String,
    /// Plain HTTP is allowed only for a loopback issuer and only with this set
    /// (local testing). Default false.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// Extra trusted roots (PEM) for the issuer's HTTPS, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Fetch the JWKS again when a token names an unknown `kid`, at most this
    /// often. Default 30 s.
    #[serde(default)]
    pub refresh_min_interval: Option<Dur>,
    /// Refetch the JWKS after this long regardless. Default 1 h.
    #[serde(default)]
    pub max_cache_age: Option<Dur>,
    /// The posture signal of a job on a self-hosted runner (its token's
    /// `runner_environment` is not `github-hosted` or `gitlab-hosted`, or is
    /// missing), 0–100. Default 50.
    #[serde(default)]
    pub self_hosted_posture: Option<u8>,
    /// The `runner_environment` this issuer's own hosted runners report
    /// (believed only from the issuer that hosts them). Default
    /// `github-hosted` for GitHub's issuer, `gitlab-hosted` for gitlab.com,
    /// none for any other (its tokens' claim is not trusted).
    #[serde(default)]
    pub hosted_runner_environment: Option<String>,
    /// The issuer signs tokens for one organisation only (a private GitLab
    /// or GitHub Enterprise Server instance of your own). Without it, every
    /// policy for the issuer must pin a tenant by an immutable id (one of
    /// `repository_id`, `repository_owner_id`, `enterprise_id`,
    /// `project_id`, `namespace_id`, exactly): a self-managed GitLab, GHES
    /// or a GitHub custom issuer may host other tenants' jobs too. Default
    /// false. Not allowed for GitHub's and gitlab.com's shared issuers.
    #[serde(default)]
    pub single_tenant: bool,
    /// Hosts besides the issuer's own that its discovery document may point
    /// `jwks_uri` at (e.g. a CDN). Default none: keys are fetched from the
    /// issuer's host only, so a tampered discovery document cannot send the
    /// broker elsewhere for keys.
    #[serde(default)]
    pub jwks_hosts: Vec<String>,
}

impl IssuerConfig {
    /// The posture of a job on a self-hosted runner.
    pub fn self_hosted_posture(&self) -> u8 {
        self.self_hosted_posture.unwrap_or(50)
    }

    /// The `runner_environment` value that means one of this issuer's
    /// hosted runners, if it has any.
    pub fn hosted_runner_environment(&self) -> Option<&str> {
        self.hosted_runner_environment
            .as_deref()
            .or(match self.url.as_str() {
                "https://token.actions.githubusercontent.com" => Some("github-hosted"),
                "https://gitlab.com" => Some("gitlab-hosted"),
                _ => None,
            })
    }
}

/// Policy mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and mint.
    #[default]
    Enforce,
    /// Decide and log as if enforcing, then refuse.
    Audit,
}

/// A claim matcher: a string (exact), `{ glob = "…" }` (`*` any run, `?` one
/// character), or `{ regex = "…" }` (anchored at both ends).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Matcher {
    /// Exact.
    Exact(String),
    /// Glob.
    Glob {
        /// The pattern.
        glob: String,
    },
    /// Anchored regular expression.
    Regex {
        /// The pattern.
        regex: String,
    },
}

/// `[[ci.policies]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CiPolicy {
    /// Name (in the log and in decisions).
    pub name: String,
    /// The issuer URL (one of `[[ci.issuers]]`).
    pub issuer: String,
    /// The audience the token must carry.
    pub audience: String,
    /// Claim matchers, by claim name (dotted for nested claims); all must match.
    #[serde(default)]
    pub claims: BTreeMap<String, Matcher>,
    /// The identity: a SPIFFE ID template with `{claim}` placeholders.
    pub identity: String,
    /// Grants this policy may ask for.
    pub grants: Vec<String>,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// Events that can run code from forks (GitHub `pull_request`,
    /// `pull_request_target`; GitLab `merge_request_event`,
    /// `external_pull_request_event`) are refused unless listed here.
    #[serde(default)]
    pub allow_events: Vec<String>,
    /// Client addresses allowed (CIDR); when set, the `network` signal is 100
    /// inside and 0 outside; when absent it drops out.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
}

/// Events that can run code from forks.
pub const FORK_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
    "issue_comment",
    "workflow_run",
    "merge_request_event",
    "external_pull_request_event",
];

/// `a.b/c` CIDR parsing: (network, prefix length).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Whether `ip` is inside `cidr`.
pub fn cidr_contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Issuers that sign tokens for anyone's jobs: `single_tenant` is refused
/// for them (every issuer's policies pin a tenant by one of
/// [`TENANT_CLAIMS`] unless the issuer is single-tenant).
const SHARED_ISSUERS: &[&str] = &[
    "https://token.actions.githubusercontent.com",
    "https://gitlab.com",
];

/// Immutable ids of a repository, its owner, a project or a namespace
/// (names can be renamed or re-registered by someone else).
const TENANT_CLAIMS: &[&str] = &[
    "repository_id",
    "repository_owner_id",
    "enterprise_id",
    "project_id",
    "namespace_id",
];

/// Checks `[ci]` against the grants; `(key, reason)` on failure.
pub fn validate(
    ci: &CiConfig,
    trust_domain: &str,
    grants: &[String],
) -> Result<(), (String, String)> {
    let err = |key: String, reason: String| Err((key, reason));
    for (i, issuer) in ci.issuers.iter().enumerate() {
        let key = format!("ci.issuers[{i}].url");
        let Ok(url) = url::Url::parse(&issuer.url) else {
            return err(key, format!("{:?} is not a URL", issuer.url));
        };
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !(loopback && issuer.allow_insecure_loopback) {
                    return err(
                        key,
                        "plain http only for a loopback issuer with allow_insecure_loopback = true"
                            .into(),
                    );
                }
            }
            other => return err(key, format!("scheme {other:?}: https required")),
        }
        if issuer.single_tenant && SHARED_ISSUERS.contains(&issuer.url.as_str()) {
            return err(
                format!("ci.issuers[{i}].single_tenant"),
                format!("{} signs tokens for every tenant it hosts", issuer.url),
            );
        }
        if issuer.self_hosted_posture.is_some_and(|p| p > 100) {
            return err(
                format!("ci.issuers[{i}].self_hosted_posture"),
                "must be 0–100".into(),
            );
        }
    }
    if ci
        .max_token_bytes
        .is_some_and(|n| n == 0 || n > 1024 * 1024)
    {
        return err("ci.max_token_bytes".into(), "1..=1048576".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in ci.policies.iter().enumerate() {
        let key = |k: &str| format!("ci.policies[{i}].{k}");
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            return err(key("name"), format!("{:?} is empty or not unique", p.name));
        }
        if !ci.issuers.iter().any(|x| x.url == p.issuer) {
            return err(
                key("issuer"),
                format!("{:?} is not in [[ci.issuers]]", p.issuer),
            );
        }
        if p.audience.is_empty() {
            return err(key("audience"), "required".into());
        }
        if p.grants.is_empty() {
            return err(key("grants"), "at least one grant".into());
        }
        if let Some(g) = p.grants.iter().find(|g| !grants.contains(g)) {
            return err(key("grants"), format!("unknown grant {g:?}"));
        }
        template::check(&p.identity).map_err(|e| (key("identity"), e))?;
        // CI identities live under /ci/ (DESIGN), apart from workloads and
        // nodes: a claim must never fill in a workload's or node's ID.
        let prefix = format!("spiffe://{trust_domain}/ci/");
        if !p.identity.starts_with(&prefix) {
            return err(
                key("identity"),
                format!(
                    "must start with {prefix} (CI identities are kept apart from workloads and nodes)"
                ),
            );
        }
        for (claim, m) in &p.claims {
            matcher::compile(m).map_err(|e| (key(&format!("claims.{claim}")), e))?;
        }
        let exact = |claim: &str| matches!(p.claims.get(claim), Some(Matcher::Exact(_)));
        let single_tenant = ci
            .issuers
            .iter()
            .any(|x| x.url == p.issuer && x.single_tenant);
        if !single_tenant {
            if !TENANT_CLAIMS.iter().any(|c| exact(c)) {
                return err(
                    key("claims"),
                    format!(
                        "{} signs tokens for every repository it hosts: match one of {} exactly",
                        p.issuer,
                        TENANT_CLAIMS.join(", ")
                    ),
                );
            }
        } else if !p.claims.values().any(|m| matches!(m, Matcher::Exact(_))) {
            return err(
                key("claims"),
                "at least one exact claim matcher (a policy without one trusts every token of its issuer and audience)".into(),
            );
        }
        if let Some(c) = p.allowed_cidrs.iter().find(|c| parse_cidr(c).is_none()) {
            return err(key("allowed_cidrs"), format!("{c:?} is not a CIDR"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(issuer: &str, claims: &str) -> Result<(), (String, String)> {
        let ci: CiConfig = toml::from_str(&format!(
            r#"
            [[issuers]]
            url = "{issuer}"
            [[policies]]
            name = "p"
            issuer = "{issuer}"
            audience = "mintguard"
            identity = "spiffe://example.org/ci/{{repository}}"
            grants = ["g"]
            [policies.claims]
            {claims}
            "#
        ))
        .unwrap();
        validate(&ci, "example.org", &["g".to_owned()])
    }

    #[test]
    fn a_policy_must_pin_whose_tokens_it_trusts() {
        let github = "https://token.actions.githubusercontent.com";
        assert!(check(github, r#"repository_id = "123""#).is_ok());
        assert!(check(github, r#"repository_owner_id = "9""#).is_ok());
        assert!(check(github, r#"enterprise_id = "7""#).is_ok());
        // GitHub signs for every repository: no claim, a name, or a pattern
        // over the id does not say whose job it is.
        for claims in [
            "",
            r#"repository = "octo-org/octo-repo""#,
            r#"repository_id = { glob = "1*" }"#,
        ] {
            let (key, reason) = check(github, claims).unwrap_err();
            assert_eq!(key, "ci.policies[0].claims", "{claims}");
            assert!(reason.contains("repository_id"), "{reason}");
        }
        assert!(check("https://gitlab.com", r#"project_id = "42""#).is_ok());
        assert!(check("https://gitlab.com", r#"project_path = "g/p""#).is_err());
        // Any other issuer (self-managed GitLab, GHES, a custom issuer) may
        // host other tenants too: a tenant id, unless it is single-tenant.
        let own = "https://ci.example.org";
        assert!(check(own, r#"sub = "job:deploy""#).is_err());
        assert!(check(own, r#"project_id = "7""#).is_ok());
        let single: CiConfig = toml::from_str(
            r#"
            [[issuers]]
            url = "https://ci.example.org"
            single_tenant = true
            [[policies]]
            name = "p"
            issuer = "https://ci.example.org"
            audience = "mintguard"
            identity = "spiffe://example.org/ci/{repository}"
            grants = ["g"]
            [policies.claims]
            sub = "job:deploy"
            "#,
        )
        .unwrap();
        assert!(validate(&single, "example.org", &["g".to_owned()]).is_ok());
        let mut shared = single.clone();
        shared.issuers[0].url = github.into();
        shared.policies[0].issuer = github.into();
        let (key, _) = validate(&shared, "example.org", &["g".to_owned()]).unwrap_err();
        assert_eq!(key, "ci.issuers[0].single_tenant");
        let (_, reason) = check(own, r#"sub = { glob = "*" }"#).unwrap_err();
        assert!(reason.contains("exact"), "{reason}");
    }

    #[test]
    fn ci_identities_stay_under_ci() {
        let with_identity = |identity: &str| {
            let ci: CiConfig = toml::from_str(&format!(
                r#"
                [[issuers]]
                url = "https://ci.example.org"
                single_tenant = true
                [[policies]]
                name = "p"
                issuer = "https://ci.example.org"
                audience = "mintguard"
                identity = "{identity}"
                grants = ["g"]
                claims = {{ sub = "job:deploy" }}
                "#
            ))
            .unwrap();
            validate(&ci, "example.org", &["g".to_owned()])
        };
        assert!(with_identity("spiffe://example.org/ci/own/{repository}").is_ok());
        for outside in [
            "spiffe://example.org/ns/pay/sa/{repository}",
            "spiffe://example.org/{repository}",
            "spiffe://example.org/mintguard/node/{repository}",
            "spiffe://other.org/ci/own/{repository}",
            "spiffe://example.org/cicd/{repository}",
        ] {
            let (key, reason) = with_identity(outside).unwrap_err();
            assert_eq!(key, "ci.policies[0].identity", "{outside}");
            assert!(reason.contains("spiffe://example.org/ci/"), "{reason}");
        }
    }
}
