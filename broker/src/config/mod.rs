//! The broker's TOML configuration: parsed and validated before anything is
//! bound or opened. Every error names the file, the key and the reason.
//! `deploy/broker_full.toml` documents every key.
//!
//! One file per section, each with its own `validate()`; [`Config::parse`]
//! reads the file, runs them in file order and resolves relative paths.

pub mod anomaly;
pub mod ci;
mod grants;
mod keys;
mod limits;
mod listen;
mod log;
mod operators;
mod rules;
mod signals;
pub mod upstreams;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mintguard_certs::id::{self, TrustDomain};
use mintguard_policy::trust::TrustConfig;
use serde::Deserialize;

pub use crate::setting::{Dur, Invalid, Per};
pub use anomaly::{AnomalyConfig, AnomalyMode, WebhookConfig};
pub use grants::{BudgetConfig, GrantConfig, GrantContext, GrantKind, ReducedConfig};
pub use keys::{CaConfig, JwtConfig};
pub use limits::LimitsConfig;
pub use listen::Listen;
pub use log::LogConfig;
pub use operators::{ApprovalsConfig, ConsoleConfig, IntrospectionClient, OperatorConfig, Role};
pub use rules::{EciConfig, PoliciesConfig, load_policies};
pub use signals::{SignalsConfig, parse_version};
pub use upstreams::{AppRoleConfig, AwsConfig, VaultConfig};

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
    console: ConsoleConfig,
    #[serde(default)]
    eci: EciConfig,
    #[serde(default)]
    policies: PoliciesConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    grants: Vec<grants::RawGrant>,
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
    /// The operator console.
    pub console: ConsoleConfig,
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
        let found = |i: Invalid| err(&i.key, i.reason);
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
        raw.listen.validate().map_err(found)?;
        raw.ca.validate().map_err(found)?;
        raw.jwt.validate().map_err(found)?;
        raw.trust
            .validate()
            .map_err(|e| err("trust", e.to_string()))?;
        raw.signals.validate().map_err(found)?;
        raw.anomaly.validate().map_err(found)?;
        raw.console.validate().map_err(found)?;
        raw.eci.validate().map_err(found)?;
        raw.log.validate().map_err(found)?;
        raw.limits.validate().map_err(found)?;
        for (i, c) in raw.introspection_clients.iter().enumerate() {
            c.validate(i).map_err(found)?;
        }
        let cx = GrantContext {
            jwt: &raw.jwt,
            has_vault: raw.vault.is_some(),
            ca_svid_ttl: raw.ca.svid_ttl.0,
        };
        let mut grants = BTreeMap::new();
        for (i, g) in raw.grants.into_iter().enumerate() {
            let g = g.into_grant(i, cx).map_err(found)?;
            if grants.contains_key(&g.name) {
                return Err(err(
                    &format!("grants[{i}].name"),
                    format!("duplicate grant {:?}", g.name),
                ));
            }
            grants.insert(g.name.clone(), g);
        }
        let vault_config = match raw.vault {
            Some(v) => {
                v.validate().map_err(found)?;
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
        let uses_aws = grants.values().any(|g| g.kind == GrantKind::AwsSts);
        upstreams::validate_reconcile_after(vault_config.as_ref(), &raw.aws, uses_aws)
            .map_err(found)?;
        let grant_names: Vec<String> = grants.keys().cloned().collect();
        ci::validate(&raw.ci, trust_domain.as_ref(), &grant_names).map_err(|(k, r)| err(&k, r))?;
        let mut ci = raw.ci;
        for issuer in &mut ci.issuers {
            issuer.ca_file = issuer.ca_file.as_deref().map(resolve);
        }
        operators::validate_operators(&raw.operators).map_err(found)?;
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
            console: raw.console,
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
                shadow: raw.policies.shadow.as_deref().map(resolve),
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
    use std::time::Duration;

    use mintguard_policy::budget::Refill;

    use crate::mint::static_secret::StaticSecretGrant;
    use crate::mint::sts::{AwsStsGrant, StsMode};

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
        assert_eq!(c.grants.len(), 7);
        assert_eq!(
            c.grants["jwt-svid"]
                .settings::<crate::mint::jwt_svid::JwtSvidGrant>()
                .unwrap()
                .audiences,
            ["payments-api", "ledger"]
        );
        assert_eq!(c.grants["x509-svid"].kind, GrantKind::X509Svid);
        assert!(c.vault.is_some());
        let kv = c.grants["partner-api-key"]
            .settings::<StaticSecretGrant>()
            .unwrap();
        assert_eq!(
            (kv.mount.as_str(), kv.path.as_str(), kv.fields.as_slice()),
            ("secret", "partners/acme", ["api_key".to_owned()].as_slice())
        );
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
        // A kind's settings, and only its own, sit under its name.
        refused(
            (
                "jwt = { audience = \"payments\" }",
                "jwt = { audience = \"payments\" }\n        vault = { token = { policies = [\"p\"] } }",
            ),
            "grants[0].vault",
        );
        refused(
            (
                "jwt = { audience = \"payments\" }",
                "jwt = { audience = \"payments\", scope = \"x\" }",
            ),
            "grants[0].jwt",
        );
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
            c.grants["payments-token"]
                .settings::<AwsStsGrant>()
                .unwrap()
                .mode,
            StsMode::WebIdentity
        );
    }

    #[test]
    fn a_static_secret_grant_names_a_plain_kv_path_under_a_vault() {
        let vault = "[vault]\n        address = \"http://127.0.0.1:8200\"\n        token_file = \"t\"\n        [[grants]]";
        let grant = |spec: &str| {
            MINIMAL
                .replacen("[[grants]]", vault, 1)
                .replace(
                    "kind = \"jwt\"",
                    &format!("kind = \"static_secret\"\n        {spec}"),
                )
                .replace("jwt = { audience = \"payments\" }", "")
        };
        let parse = |text: &str| Config::parse(Path::new("/x/b.toml"), text);
        let c = parse(&grant(
            "static_secret = { path = \"app/db\", fields = [\"password\"] }",
        ))
        .unwrap();
        let kv = c.grants["payments-token"]
            .settings::<StaticSecretGrant>()
            .unwrap();
        assert_eq!((kv.mount.as_str(), kv.fields.len()), ("secret", 1));
        for (spec, key) in [
            ("", "grants[0].static_secret"),
            ("static_secret = { path = \"x\" }", "fields"),
            (
                "static_secret = { path = \"x\", fields = [] }",
                "static_secret.fields",
            ),
            (
                "static_secret = { mount = \"sys/kv\", path = \"x\", fields = [\"a\"] }",
                "static_secret.mount",
            ),
            (
                "static_secret = { path = \"../sys/x\" , fields = [\"a\"] }",
                "static_secret.path",
            ),
            (
                "static_secret = { path = \"a//b\" , fields = [\"a\"] }",
                "static_secret.path",
            ),
            (
                "static_secret = { path = \"a?b\" , fields = [\"a\"] }",
                "static_secret.path",
            ),
            (
                "static_secret = { mount = \"sys\", path = \"x\" , fields = [\"a\"] }",
                "static_secret.mount",
            ),
            (
                "static_secret = { path = \"x\", fields = [\"\"] }",
                "static_secret.fields",
            ),
            (
                "static_secret = { path = \"x\", extra = 1 , fields = [\"a\"] }",
                "unknown field",
            ),
        ] {
            let e = parse(&grant(spec)).unwrap_err();
            assert!(e.key.contains(key) || e.reason.contains(key), "{spec}: {e}");
        }
        // Without a [vault] there is nothing to read from.
        let no_vault = MINIMAL
            .replace(
                "kind = \"jwt\"",
                "kind = \"static_secret\"\n        static_secret = { path = \"x\", fields = [\"a\"] }",
            )
            .replace("jwt = { audience = \"payments\" }", "");
        let e = parse(&no_vault).unwrap_err();
        assert!(e.reason.contains("[vault]"), "{e}");
    }
}
