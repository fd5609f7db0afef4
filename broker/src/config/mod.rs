//! The broker's TOML configuration: parsed and validated before anything is
//! bound or opened. Every error names the file, the key and the reason.
//! `deploy/broker_full.toml` documents every key.

pub mod anomaly;
pub mod ci;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mintguard_certs::id::{self, TrustDomain};
use mintguard_certs::jwt::JwtAlgorithm;
use mintguard_policy::budget::{BudgetPolicy, Refill};
use mintguard_policy::trust::TrustConfig;
use serde::Deserialize;

/// A configuration error: which file, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {reason}", file.display())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The key (`grants[2].max_ttl`), or `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Durations such as `"15m"`, `"1h"`, `"7d"`, `"90s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"15m\" or \"1h\": {e}"
            ))
        })
    }
}

/// `per = "1h"` or `per = "never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Per(pub Refill);

impl<'de> Deserialize<'de> for Per {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "never" {
            return Ok(Per(Refill::Never));
        }
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is neither \"never\" nor a duration: {e}"))
        })?;
        Ok(Per(Refill::Every {
            seconds: d.as_secs(),
        }))
    }
}

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

/// `[ca]`.
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

/// `[eci]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EciConfig {
    /// The operator's exposure graph (JSON), relative to the config file.
    pub graph: Option<PathBuf>,
    /// Edge recency half-life, days. Default 30.
    pub half_life_days: f64,
    /// PageRank damping. Default 0.85.
    pub alpha: f64,
}

impl Default for EciConfig {
    fn default() -> Self {
        Self {
            graph: None,
            half_life_days: 30.0,
            alpha: 0.85,
        }
    }
}

/// `[policies]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PoliciesConfig {
    /// A directory of `*.cedar` files, relative to the config file. Without
    /// it, no permit exists and everything is denied.
    pub cedar: Option<PathBuf>,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Sign a checkpoint every this many records. Default 100.
    pub checkpoint_every: u64,
    /// … or every this often, if records were added. Default 10 s.
    pub checkpoint_interval: Dur,
    /// The JSON-lines file checkpoints are exported to (outside the database).
    /// Default `<data_dir>/checkpoints.jsonl`.
    pub checkpoints_file: Option<PathBuf>,
    /// The log-signing key (Ed25519 PKCS#8 PEM, 0600; created if absent).
    /// Default `<data_dir>/log-signing.key`. Never stored in the database.
    pub signing_key: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 100,
            checkpoint_interval: Dur(Duration::from_secs(10)),
            checkpoints_file: None,
            signing_key: None,
        }
    }
}

/// `[anomaly]`: analysis of the issuance log off the request path, and what
/// its detections do.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Run the analysis. Default on.
    pub enabled: bool,
    /// `enforce` (default): detections become signals, responses and
    /// suspensions; `observe`: detections are logged and alerted only.
    pub mode: AnomalyMode,
    /// How often the log is read for new decisions. Default 1 s.
    pub interval: Dur,
    /// How much of the log rebuilds the baselines at start. Default 28 days.
    pub history: Dur,
    /// Analysis that has not advanced for `interval` × this many is lagging
    /// or down: the `behaviour` signal is then stale (unknown to the trust
    /// score), `mintguard_anomaly_analysis_stale` is 1 and `/healthz` says
    /// so. Default 30 (2..=10000).
    pub stale_after_intervals: u32,
    /// Baselines and detectors.
    pub detectors: anomaly::AnalyzerConfig,
    /// Graduated responses.
    pub responses: anomaly::ResponseConfig,
    /// An alert webhook.
    pub webhook: Option<WebhookConfig>,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: AnomalyMode::Enforce,
            interval: Dur(Duration::from_secs(1)),
            history: Dur(Duration::from_secs(28 * 86_400)),
            stale_after_intervals: 30,
            detectors: anomaly::AnalyzerConfig::default(),
            responses: anomaly::ResponseConfig::default(),
            webhook: None,
        }
    }
}

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

/// Whether detections act or only inform.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyMode {
    /// Signals, responses, suspensions.
    #[default]
    Enforce,
    /// Logged and alerted only.
    Observe,
}

/// `[anomaly.webhook]`: alerts as JSON POSTs, the body signed with
/// HMAC-SHA256 (`X-Mintguard-Signature: sha256=<hex>`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (https, or http on loopback).
    pub url: String,
    /// A file holding the HMAC secret (0600).
    pub secret_file: PathBuf,
    /// Alerts waiting to be sent; beyond it new ones are dropped and
    /// counted. Default 1000.
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
    /// Attempts per alert (backoff 0.5 s doubling). Default 6.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// A CA file for the receiver's certificate (default: system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_webhook_queue() -> usize {
    1000
}

fn default_webhook_attempts() -> u32 {
    6
}

/// `[signals]`: how the broker scores what it observes itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// The `behaviour` value before anomaly analysis has enough history. Default 70.
    pub behaviour_neutral: u8,
    /// How long broker-observed signals stay fresh. Default 15 minutes.
    pub ttl: Dur,
    /// Agents older than this (`MAJOR.MINOR.PATCH`) lower their node's
    /// posture to `outdated_agent_posture`. Default: none.
    pub min_agent_version: Option<String>,
    /// The posture of a node whose agent is older than `min_agent_version`.
    /// Default 30.
    pub outdated_agent_posture: u8,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            behaviour_neutral: 70,
            ttl: Dur(Duration::from_secs(900)),
            min_agent_version: None,
            outdated_agent_posture: 30,
        }
    }
}

/// `MAJOR.MINOR.PATCH` (a pre-release or build suffix is ignored) as a
/// comparable triple; `None` when it is not a version.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

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

/// A grant's budget (`budget = { amount, per, base, per_5min, eci_factor }`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Capacity and refill amount, tokens.
    pub amount: u64,
    /// `"1h"` or `"never"`.
    pub per: Per,
    /// Default 1.
    #[serde(default = "one")]
    pub base: u64,
    /// Default 0.
    #[serde(default)]
    pub per_5min: u64,
    /// Default 0.
    #[serde(default)]
    pub eci_factor: f64,
}

fn one() -> u64 {
    1
}

impl BudgetConfig {
    /// As the policy crate's type.
    pub fn policy(&self) -> BudgetPolicy {
        BudgetPolicy {
            amount: self.amount,
            per: self.per.0,
            base: self.base,
            per_5min: self.per_5min,
            eci_factor: self.eci_factor,
        }
    }
}

/// `reduced = { max_ttl }`: the privilege-reduced variant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReducedConfig {
    /// The reduced variant's longest TTL.
    pub max_ttl: Option<Dur>,
}

/// The kinds of grant.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// A broker-signed JWT.
    Jwt,
    /// A Vault / OpenBao secret or token.
    Vault,
    /// AWS STS credentials.
    AwsSts,
}

/// `[grants.jwt]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtGrant {
    /// The `aud` claim.
    pub audience: String,
    /// Extra claims (strings) added to every token of this grant.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// `vault = { token = { … } }` or `vault = { secret = { … } }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultGrant {
    /// A child token of the broker's token.
    Token {
        /// Policies the token carries (never `root`).
        policies: Vec<String>,
        /// Uses before it is spent (0 = unlimited).
        #[serde(default)]
        num_uses: u32,
    },
    /// A dynamic secret read, e.g. `database/creds/readonly` or a PKI issue
    /// (`pki/issue/web`, with `body`).
    Secret {
        /// The path under `/v1/`.
        path: String,
        /// A JSON body to write (PKI issue); without it the path is read.
        #[serde(default)]
        body: Option<BTreeMap<String, String>>,
    },
}

/// `[vault.approle]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// The auth mount. Default `approle`.
    #[serde(default)]
    pub mount: Option<String>,
    /// A file holding the role id.
    pub role_id_file: PathBuf,
    /// A file holding the secret id (0600).
    pub secret_id_file: PathBuf,
}

/// `aws_sts = { … }` on a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsStsGrant {
    /// The role to assume.
    pub role_arn: String,
    /// An inline session policy (JSON) applied to the reduced variant.
    #[serde(default)]
    pub reduced_policy: Option<String>,
    /// A decided TTL below STS's 900 s floor: `"upstream"` mints 900 s (the
    /// log records it), `"refuse"` (default) refuses with
    /// `ttl_below_upstream_minimum`.
    #[serde(default)]
    pub ttl_floor: Option<String>,
    /// `"assume_role"` (default: the broker's own AWS credentials sign
    /// `AssumeRole`) or `"web_identity"` (`AssumeRoleWithWebIdentity` with a
    /// broker-signed ES256 JWT; the broker holds no AWS keys).
    #[serde(default)]
    pub mode: StsMode,
}

/// How the broker authenticates to STS for a grant.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StsMode {
    /// `AssumeRole`, signed with the broker's credentials.
    #[default]
    AssumeRole,
    /// `AssumeRoleWithWebIdentity` with a JWT from the broker's JWKS (an IAM
    /// OIDC provider for `issuer_url` trusts it).
    WebIdentity,
}

/// `[aws]`: where STS is and how the broker reaches it (its own
/// credentials come from the standard chain).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Region. Default `us-east-1`.
    pub region: Option<String>,
    /// An STS endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// The longest an STS call (one attempt) may take. Default 10 s.
    /// A call cut off by it may have been answered by STS: it is not
    /// refunded and is left to reconciliation.
    pub timeout: Option<Dur>,
    /// An intent without an outcome this old is logged for operator action
    /// (when `[vault]` does not set it). Default 2 min.
    pub reconcile_after: Option<Dur>,
    /// The `aud` of web-identity JWTs (the IAM OIDC provider's client id).
    /// Default `sts.amazonaws.com`.
    pub web_identity_audience: Option<String>,
}

/// STS's own limits, enforced before any call.
pub mod sts_limits {
    /// Shortest session, seconds.
    pub const MIN_DURATION: u64 = 900;
    /// Longest session (role maximum), seconds.
    pub const MAX_DURATION: u64 = 43_200;
    /// Longest inline session policy, characters.
    pub const MAX_POLICY_CHARS: usize = 2048;
}

/// `[vault]`: the Vault or OpenBao the broker mints from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault:8200` (plain http only on loopback).
    pub address: String,
    /// A file holding the broker's Vault token (0600), re-read when Vault
    /// refuses the current one. Exactly one of `token_file` and `approle`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// AppRole login (files holding the role id and secret id).
    #[serde(default)]
    pub approle: Option<AppRoleConfig>,
    /// Extra PEM roots for the Vault server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-call timeout. Default 5 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// An intent record without an outcome this old is reconciled (the
    /// broker died mid-mint). Default 2 min; keep it above any mint's time.
    #[serde(default)]
    pub reconcile_after: Option<Dur>,
}

/// `[[grants]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Unique name.
    pub name: String,
    /// `jwt` (available), `vault`, `aws_sts`.
    pub kind: GrantKind,
    /// Longest TTL.
    pub max_ttl: Dur,
    /// Exposure-graph nodes the grant confers.
    #[serde(default)]
    pub eci_targets: Vec<String>,
    /// Per-identity budget for this grant.
    pub budget: Option<BudgetConfig>,
    /// The reduced variant.
    pub reduced: Option<ReducedConfig>,
    /// JWT settings (kind `jwt`).
    pub jwt: Option<JwtGrant>,
    /// Vault settings (kind `vault`).
    pub vault: Option<VaultGrant>,
    /// AWS STS settings (kind `aws_sts`).
    pub aws_sts: Option<AwsStsGrant>,
    /// Allowed hours, UTC, `[start, end)` (e.g. `[7, 19]`; `[22, 6]` wraps
    /// midnight). When set, the `time` trust signal is 100 inside and 0
    /// outside; when absent, the signal drops out.
    #[serde(default)]
    pub allowed_hours: Option<[u8; 2]>,
}

impl GrantConfig {
    /// Whether `hour` (0–23, UTC) is allowed; `None` when no hours are configured.
    pub fn hour_allowed(&self, hour: u8) -> Option<bool> {
        self.allowed_hours.map(|[start, end]| {
            if start < end {
                (start..end).contains(&hour)
            } else {
                hour >= start || hour < end
            }
        })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    data_dir: PathBuf,
    #[serde(default)]
    store: Option<String>,
    issuer_url: String,
    listen: Listen,
    #[serde(default)]
    ca: CaConfig,
    #[serde(default)]
    jwt: JwtConfig,
    #[serde(default)]
    trust: TrustConfig,
    #[serde(default)]
    signals: SignalsConfig,
    #[serde(default)]
    anomaly: AnomalyConfig,
    #[serde(default)]
    approvals: ApprovalsConfig,
    #[serde(default)]
    eci: EciConfig,
    #[serde(default)]
    policies: PoliciesConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    grants: Vec<GrantConfig>,
    #[serde(default)]
    aws: AwsConfig,
    #[serde(default)]
    vault: Option<VaultConfig>,
    #[serde(default)]
    ci: ci::CiConfig,
    #[serde(default)]
    operators: Vec<OperatorConfig>,
    #[serde(default)]
    introspection_clients: Vec<IntrospectionClient>,
}

/// A validated configuration; relative paths are resolved against the file's directory.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Where the CA, keys and (by default) the SQLite database live.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`.
    pub store: String,
    /// The JWT `iss` and OIDC issuer URL.
    pub issuer_url: String,
    /// Listeners.
    pub listen: Listen,
    /// CA lifetimes.
    pub ca: CaConfig,
    /// JWT keys.
    pub jwt: JwtConfig,
    /// Trust weights and thresholds.
    pub trust: TrustConfig,
    /// Broker-observed signals.
    pub signals: SignalsConfig,
    /// Anomaly analysis of the issuance log.
    pub anomaly: AnomalyConfig,
    /// Step-up approvals.
    pub approvals: ApprovalsConfig,
    /// ECI.
    pub eci: EciConfig,
    /// Cedar policies.
    pub policies: PoliciesConfig,
    /// Issuance log.
    pub log: LogConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Grants, by name.
    pub grants: BTreeMap<String, GrantConfig>,
    /// Operators with token files.
    pub operators: Vec<OperatorConfig>,
    /// Introspection clients.
    pub introspection_clients: Vec<IntrospectionClient>,
    /// CI issuers and trust policies.
    pub ci: ci::CiConfig,
    /// The Vault / OpenBao to mint from.
    pub vault: Option<VaultConfig>,
    /// AWS STS.
    pub aws: AwsConfig,
}

impl Config {
    /// The CA directory (resolved at load).
    pub fn ca_dir(&self) -> PathBuf {
        self.ca
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca"))
    }

    /// The JWT key directory (resolved at load).
    pub fn jwt_dir(&self) -> PathBuf {
        self.jwt
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("jwt"))
    }

    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: "-".into(),
            reason: e.to_string(),
        })?;
        Self::parse(file, &text)
    }

    /// Parses and validates `text` as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map_or_else(|| "-".to_owned(), |s| format!("near byte {}", s.start));
            err(&key, e.message().to_owned())
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let trust_domain = id::parse_trust_domain(&raw.trust_domain)
            .map_err(|e| err("trust_domain", e.to_string()))?;
        let data_dir = resolve(&raw.data_dir);
        let store = match raw.store {
            None => format!("sqlite://{}", data_dir.join("broker.db").display()),
            Some(s) => {
                // Settings and TLS files are checked here, before any port is bound.
                crate::store::check_url(&s).map_err(|e| err("store", e))?;
                s
            }
        };
        if !(raw.issuer_url.starts_with("https://")
            || raw.issuer_url.starts_with("http://127.0.0.1")
            || raw.issuer_url.starts_with("http://localhost"))
        {
            return Err(err(
                "issuer_url",
                "must be an https:// URL (http only for loopback)".into(),
            ));
        }
        let l = &raw.listen;
        // Port 0 (tests: pick a free port) may repeat; fixed addresses may not.
        let fixed = l.public.port() != 0 || l.agents.port() != 0 || l.admin.port() != 0;
        if fixed && (l.public == l.agents || l.public == l.admin || l.agents == l.admin) {
            return Err(err(
                "listen",
                "public, agents and admin need three different addresses".into(),
            ));
        }
        if raw.ca.svid_ttl.0.is_zero() || raw.ca.ca_ttl.0 < raw.ca.svid_ttl.0 * 2 {
            return Err(err(
                "ca.ca_ttl",
                "must be at least twice ca.svid_ttl".into(),
            ));
        }
        if raw.jwt.max_ttl.0.is_zero() {
            return Err(err("jwt.max_ttl", "must be positive".into()));
        }
        if raw.jwt.rotate_every.0 < Duration::from_secs(1) {
            return Err(err("jwt.rotate_every", "must be at least 1s".into()));
        }
        raw.trust
            .validate()
            .map_err(|e| err("trust", e.to_string()))?;
        if let Some(bad) = raw.listen.public_dns_names.iter().find(|n| {
            n.is_empty()
                || n.len() > 253
                || !n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }) {
            return Err(err(
                "listen.public_dns_names",
                format!("{bad:?} is not a DNS name"),
            ));
        }
        if raw.signals.outdated_agent_posture > 100 {
            return Err(err(
                "signals.outdated_agent_posture",
                "must be 0–100".into(),
            ));
        }
        if let Some(v) = &raw.signals.min_agent_version
            && parse_version(v).is_none()
        {
            return Err(err(
                "signals.min_agent_version",
                format!("{v:?} is not MAJOR.MINOR.PATCH"),
            ));
        }
        if !(2..=10_000).contains(&raw.anomaly.stale_after_intervals) {
            return Err(err(
                "anomaly.stale_after_intervals",
                "must be 2..=10000".into(),
            ));
        }
        let r = &raw.anomaly.responses;
        for (name, v) in [
            ("reduce_at", r.reduce_at),
            ("alert_at", r.alert_at),
            ("step_up_at", r.step_up_at),
            ("suspend_at", r.suspend_at),
            ("issuer_deny_at", r.issuer_deny_at),
        ] {
            if v > 100 {
                return Err(err(
                    &format!("anomaly.responses.{name}"),
                    "must be 0–100".into(),
                ));
            }
        }
        if raw.anomaly.detectors.detect_at > 100 {
            return Err(err("anomaly.detectors.detect_at", "must be 0–100".into()));
        }
        if raw.anomaly.interval.0 < Duration::from_millis(10) {
            return Err(err("anomaly.interval", "must be at least 10ms".into()));
        }
        if let Some(w) = &raw.anomaly.webhook {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| w.url.starts_with(p));
            if !(w.url.starts_with("https://") || loopback) {
                return Err(err(
                    "anomaly.webhook.url",
                    "https, or plain http only on loopback".into(),
                ));
            }
        }
        if raw.signals.behaviour_neutral > 100 {
            return Err(err("signals.behaviour_neutral", "must be 0–100".into()));
        }
        if !(raw.eci.half_life_days.is_finite() && raw.eci.half_life_days > 0.0) {
            return Err(err("eci.half_life_days", "must be > 0".into()));
        }
        if !(raw.eci.alpha > 0.0 && raw.eci.alpha < 1.0) {
            return Err(err("eci.alpha", "must be in (0, 1)".into()));
        }
        if raw.log.checkpoint_every == 0 || raw.log.checkpoint_interval.0.is_zero() {
            return Err(err(
                "log.checkpoint_every",
                "checkpoint_every and checkpoint_interval must be positive".into(),
            ));
        }
        if raw.limits.per_node_per_second == 0 || raw.limits.per_identity_per_second == 0 {
            return Err(err("limits", "rates must be positive".into()));
        }
        if raw.limits.max_body_bytes < 1024 || raw.limits.max_body_bytes > 16 * 1024 * 1024 {
            return Err(err(
                "limits.max_body_bytes",
                "must be 1 KiB..=16 MiB".into(),
            ));
        }
        if !(1..=1_000_000).contains(&raw.limits.max_connections) {
            return Err(err("limits.max_connections", "must be 1..=1000000".into()));
        }
        if raw.limits.max_connections_per_address == 0
            || raw.limits.max_connections_per_address > raw.limits.max_connections
        {
            return Err(err(
                "limits.max_connections_per_address",
                "must be 1..=max_connections".into(),
            ));
        }
        let window = raw.limits.refusal_window.0;
        if window < Duration::from_millis(100) || window > Duration::from_secs(3600) {
            return Err(err("limits.refusal_window", "must be 100ms..=1h".into()));
        }

        for (i, c) in raw.introspection_clients.iter().enumerate() {
            if c.audiences.is_empty() || c.audiences.iter().any(String::is_empty) {
                return Err(err(
                    &format!("introspection_clients[{i}].audiences"),
                    format!(
                        "{:?} must name the audiences whose tokens it may introspect",
                        c.name
                    ),
                ));
            }
        }
        let mut grants = BTreeMap::new();
        for (i, g) in raw.grants.into_iter().enumerate() {
            let key = |k: &str| format!("grants[{i}].{k}");
            if g.name.is_empty()
                || g.name.len() > mintguard_api::MAX_GRANT_LEN
                || !g
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(err(
                    &key("name"),
                    format!("{:?}: 1–128 characters of [A-Za-z0-9._-]", g.name),
                ));
            }
            if g.max_ttl.0.is_zero() {
                return Err(err(&key("max_ttl"), "must be positive".into()));
            }
            match g.kind {
                GrantKind::Jwt => {
                    if g.jwt.as_ref().is_none_or(|j| j.audience.is_empty()) {
                        return Err(err(
                            &key("jwt"),
                            "a jwt grant needs jwt = { audience = \"…\" }".into(),
                        ));
                    }
                    if g.max_ttl.0 > raw.jwt.max_ttl.0 {
                        return Err(err(
                            &key("max_ttl"),
                            format!("exceeds jwt.max_ttl ({}s)", raw.jwt.max_ttl.0.as_secs()),
                        ));
                    }
                    for claim in g.jwt.iter().flat_map(|j| j.claims.keys()) {
                        if ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]
                            .contains(&claim.as_str())
                        {
                            return Err(err(
                                &key("jwt.claims"),
                                format!("{claim:?} is set by the broker"),
                            ));
                        }
                    }
                }
                GrantKind::Vault => {
                    if raw.vault.is_none() {
                        return Err(err(
                            &key("kind"),
                            "vault grants need a [vault] section".into(),
                        ));
                    }
                    match &g.vault {
                        None => {
                            return Err(err(&key("vault"), "required for kind = \"vault\"".into()));
                        }
                        Some(VaultGrant::Token { policies, .. }) => {
                            if policies.is_empty()
                                || policies.iter().any(|p| p == "root" || p.is_empty())
                            {
                                return Err(err(
                                    &key("vault.token.policies"),
                                    "one or more policies, never root".into(),
                                ));
                            }
                        }
                        Some(VaultGrant::Secret { path, .. }) => {
                            if path.is_empty()
                                || path.starts_with('/')
                                || path.contains("..")
                                || path.starts_with("sys/")
                                || path.starts_with("auth/")
                            {
                                return Err(err(
                                    &key("vault.secret.path"),
                                    format!("{path:?}: a relative secrets-engine path"),
                                ));
                            }
                        }
                    }
                }
                GrantKind::AwsSts => {
                    let Some(a) = &g.aws_sts else {
                        return Err(err(
                            &key("aws_sts"),
                            "required for kind = \"aws_sts\"".into(),
                        ));
                    };
                    if !a.role_arn.starts_with("arn:") || a.role_arn.split(':').count() < 6 {
                        return Err(err(
                            &key("aws_sts.role_arn"),
                            format!("{:?} is not a role ARN", a.role_arn),
                        ));
                    }
                    if let Some(p) = &a.reduced_policy {
                        if p.chars().count() > sts_limits::MAX_POLICY_CHARS {
                            return Err(err(
                                &key("aws_sts.reduced_policy"),
                                format!(
                                    "longer than STS's {} characters",
                                    sts_limits::MAX_POLICY_CHARS
                                ),
                            ));
                        }
                        if serde_json::from_str::<serde_json::Value>(p).is_err() {
                            return Err(err(&key("aws_sts.reduced_policy"), "not JSON".into()));
                        }
                    }
                    if a.ttl_floor
                        .as_deref()
                        .is_some_and(|f| f != "upstream" && f != "refuse")
                    {
                        return Err(err(
                            &key("aws_sts.ttl_floor"),
                            "\"upstream\" or \"refuse\"".into(),
                        ));
                    }
                    if a.mode == StsMode::WebIdentity && raw.jwt.algorithm != JwtAlgorithm::Es256 {
                        return Err(err(
                            &key("aws_sts.mode"),
                            "web_identity needs jwt.algorithm = \"ES256\" (IAM OIDC providers do not accept EdDSA)".into(),
                        ));
                    }
                    if g.max_ttl.0.as_secs() > sts_limits::MAX_DURATION {
                        return Err(err(
                            &key("max_ttl"),
                            "STS sessions last at most 12 h".into(),
                        ));
                    }
                }
            }
            if let Some([start, end]) = g.allowed_hours
                && (start > 23 || end > 24 || start == end)
            {
                return Err(err(
                    &key("allowed_hours"),
                    "expected [start, end) hours, 0–24, start ≠ end".into(),
                ));
            }
            if let Some(b) = &g.budget {
                b.policy()
                    .validate(&key("budget"))
                    .map_err(|e| err(&key("budget"), e.to_string()))?;
            }
            if let Some(Some(max)) = g.reduced.as_ref().map(|r| r.max_ttl)
                && max.0 > g.max_ttl.0
            {
                return Err(err(
                    &key("reduced.max_ttl"),
                    "exceeds the grant's max_ttl".into(),
                ));
            }
            if grants.contains_key(&g.name) {
                return Err(err(&key("name"), format!("duplicate grant {:?}", g.name)));
            }
            grants.insert(g.name.clone(), g);
        }
        let vault_config = match raw.vault {
            Some(v) => {
                let url = url::Url::parse(&v.address)
                    .map_err(|e| err("vault.address", format!("{:?}: {e}", v.address)))?;
                let loopback = matches!(url.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
                    || matches!(url.host(), Some(url::Host::Domain("localhost")));
                if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                    return Err(err(
                        "vault.address",
                        "https required (plain http only on loopback)".into(),
                    ));
                }
                if v.token_file.is_some() == v.approle.is_some() {
                    return Err(err("vault", "exactly one of token_file and approle".into()));
                }
                Some(VaultConfig {
                    token_file: v.token_file.as_deref().map(resolve),
                    approle: v.approle.map(|a| AppRoleConfig {
                        role_id_file: resolve(&a.role_id_file),
                        secret_id_file: resolve(&a.secret_id_file),
                        ..a
                    }),
                    ca_file: v.ca_file.as_deref().map(resolve),
                    ..v
                })
            }
            None => None,
        };
        let grant_names: Vec<String> = grants.keys().cloned().collect();
        ci::validate(&raw.ci, trust_domain.as_ref(), &grant_names).map_err(|(k, r)| err(&k, r))?;
        let mut ci = raw.ci;
        for issuer in &mut ci.issuers {
            issuer.ca_file = issuer.ca_file.as_deref().map(resolve);
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, o) in raw.operators.iter().enumerate() {
            if !names.insert(o.name.clone()) || o.name.is_empty() {
                return Err(err(
                    &format!("operators[{i}].name"),
                    format!("{:?}: empty or duplicate", o.name),
                ));
            }
        }
        Ok(Self {
            file: file.to_path_buf(),
            trust_domain,
            store,
            issuer_url: raw.issuer_url.trim_end_matches('/').to_owned(),
            listen: raw.listen,
            ca: CaConfig {
                dir: Some(
                    raw.ca
                        .dir
                        .as_deref()
                        .map_or_else(|| data_dir.join("ca"), resolve),
                ),
                ..raw.ca
            },
            jwt: JwtConfig {
                dir: Some(
                    raw.jwt
                        .dir
                        .as_deref()
                        .map_or_else(|| data_dir.join("jwt"), resolve),
                ),
                ..raw.jwt
            },
            trust: raw.trust,
            signals: raw.signals,
            approvals: raw.approvals,
            anomaly: AnomalyConfig {
                webhook: raw.anomaly.webhook.clone().map(|w| WebhookConfig {
                    secret_file: resolve(&w.secret_file),
                    ca_file: w.ca_file.as_deref().map(resolve),
                    ..w
                }),
                ..raw.anomaly
            },
            eci: EciConfig {
                graph: raw.eci.graph.as_deref().map(resolve),
                ..raw.eci
            },
            policies: PoliciesConfig {
                cedar: raw.policies.cedar.as_deref().map(resolve),
            },
            log: LogConfig {
                checkpoints_file: Some(
                    raw.log
                        .checkpoints_file
                        .as_deref()
                        .map_or_else(|| data_dir.join("checkpoints.jsonl"), resolve),
                ),
                signing_key: Some(
                    raw.log
                        .signing_key
                        .as_deref()
                        .map_or_else(|| data_dir.join("log-signing.key"), resolve),
                ),
                ..raw.log
            },
            limits: raw.limits,
            grants,
            operators: raw
                .operators
                .into_iter()
                .map(|o| OperatorConfig {
                    token_file: resolve(&o.token_file),
                    ..o
                })
                .collect(),
            ci,
            vault: vault_config,
            aws: raw.aws,
            introspection_clients: raw
                .introspection_clients
                .into_iter()
                .map(|c| IntrospectionClient {
                    token_file: resolve(&c.token_file),
                    ..c
                })
                .collect(),
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        trust_domain = "example.org"
        data_dir = "data"
        issuer_url = "https://mintguard.example.org"
        [listen]
        public = "127.0.0.1:8444"
        agents = "127.0.0.1:8443"
        admin = "127.0.0.1:8445"
        [[grants]]
        name = "payments-token"
        kind = "jwt"
        max_ttl = "15m"
        jwt = { audience = "payments" }
        budget = { amount = 20, per = "1h", eci_factor = 2 }
        reduced = { max_ttl = "5m" }
    "#;

    #[test]
    fn minimal_config_with_defaults() {
        let c = Config::parse(Path::new("/etc/mintguard/broker.toml"), MINIMAL).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/mintguard/data"));
        assert_eq!(c.store, "sqlite:///etc/mintguard/data/broker.db");
        let g = &c.grants["payments-token"];
        assert_eq!(g.max_ttl.0, Duration::from_secs(900));
        assert_eq!(
            g.budget.as_ref().unwrap().policy().per,
            Refill::Every { seconds: 3600 }
        );
        assert_eq!(
            c.log.signing_key.as_deref(),
            Some(Path::new("/etc/mintguard/data/log-signing.key"))
        );
    }

    fn refused(replace: (&str, &str), key: &str) {
        let text = MINIMAL.replace(replace.0, replace.1);
        let e = Config::parse(Path::new("/x/broker.toml"), &text).unwrap_err();
        assert!(e.to_string().starts_with("/x/broker.toml: "), "{e}");
        assert!(
            e.key.contains(key) || e.reason.contains(key),
            "expected {key:?} in {e}"
        );
    }

    #[test]
    fn the_reference_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/broker_full.toml"
        ));
        let c = Config::load(path).unwrap();
        assert_eq!(c.grants.len(), 4);
        assert!(c.vault.is_some());
        assert_eq!(c.ci.policies.len(), 2);
        assert_eq!(c.operators[0].role, Role::Viewer);
        assert_eq!(c.log.checkpoint_every, 100);
        assert_eq!(c.anomaly.responses.suspend_at, 90);
        assert!(c.anomaly.webhook.is_some());
        assert_eq!(c.approvals.ttl.0, Duration::from_secs(900));
        let example = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/broker/broker.toml"
        ));
        Config::load(example).unwrap();
    }

    #[test]
    fn allowed_hours_wrap_midnight() {
        let c = Config::parse(
            Path::new("/x/b.toml"),
            &MINIMAL.replace(
                "reduced = {",
                "allowed_hours = [22, 6]\n        reduced = {",
            ),
        )
        .unwrap();
        let g = &c.grants["payments-token"];
        assert_eq!(g.hour_allowed(23), Some(true));
        assert_eq!(g.hour_allowed(5), Some(true));
        assert_eq!(g.hour_allowed(6), Some(false));
        assert_eq!(g.hour_allowed(12), Some(false));
        let day = Config::parse(
            Path::new("/x/b.toml"),
            &MINIMAL.replace(
                "reduced = {",
                "allowed_hours = [7, 19]\n        reduced = {",
            ),
        )
        .unwrap();
        assert_eq!(day.grants["payments-token"].hour_allowed(7), Some(true));
        assert_eq!(day.grants["payments-token"].hour_allowed(19), Some(false));
        refused(
            ("reduced = {", "allowed_hours = [5, 5]\n        reduced = {"),
            "grants[0].allowed_hours",
        );
    }

    #[test]
    fn bad_configs_name_file_key_and_reason() {
        refused(("example.org", "Example.org"), "trust_domain");
        refused(("\"15m\"", "\"soon\""), "not a duration");
        refused(("kind = \"jwt\"", "kind = \"vault\""), "grants[0].kind");
        refused(("kind = \"jwt\"", "kind = \"ldap\""), "unknown variant");
        refused(("amount = 20", "amount = 0"), "grants[0].budget");
        refused(("\"5m\" }", "\"1h\" }"), "grants[0].reduced.max_ttl");
        refused(
            ("audience = \"payments\"", "audience = \"\""),
            "grants[0].jwt",
        );
        refused(("data_dir", "dat_dir"), "unknown field");
        refused(
            (
                "data_dir",
                "store = \"postgres://u@db.example/m?sslmode=maybe\"\n        data_dir",
            ),
            "sslmode=maybe",
        );
        refused(
            (
                "data_dir",
                "store = \"postgres://u@db.example/m?sslrootcert=/nonexistent/ca.pem\"\n        data_dir",
            ),
            "/nonexistent/ca.pem",
        );
        refused(("https://mintguard", "http://mintguard"), "issuer_url");
        refused(("8445", "8444"), "listen");
        let federated = "kind = \"aws_sts\"\n        aws_sts = { role_arn = \"arn:aws:iam::1:role/r\", mode = \"web_identity\" }";
        let eddsa = MINIMAL
            .replace(
                "[listen]",
                "[jwt]\n        algorithm = \"EdDSA\"\n        [listen]",
            )
            .replace("kind = \"jwt\"", federated)
            .replace("jwt = { audience = \"payments\" }", "");
        let e = Config::parse(Path::new("/x/b.toml"), &eddsa).unwrap_err();
        assert!(e.key.contains("aws_sts.mode"), "{e}");
        let es256 = eddsa.replace("algorithm = \"EdDSA\"", "algorithm = \"ES256\"");
        let c = Config::parse(Path::new("/x/b.toml"), &es256).unwrap();
        assert_eq!(
            c.grants["payments-token"].aws_sts.as_ref().unwrap().mode,
            StsMode::WebIdentity
        );
    }
}
