//! The broker's state: configuration, store, CA, keys, the reloadable
//! decision inputs (rules, grants, ECI), the log writer, and rate limiters.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mintguard_certs::ca::{CaSettings, CertificateAuthority};
use mintguard_certs::jwt::{JwtKeySet, JwtSettings};
use mintguard_certs::svid::X509Svid;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::clock::{Clock, now_ms};
use crate::config::{Config, Role};
use crate::log::checkpoint::LogSigner;
use crate::store::{Append, Appended, Store, StoreError};

mod dynamic;
mod log;

pub use dynamic::{Dynamic, Exposure, build_dynamic, exposure, with_new_exposure};
pub use log::LogWriter;
use log::instance_id;

/// Simulations (`mintguard decide`) an operator runs per minute at most:
/// each is a durable record.
pub const SIMULATIONS_PER_MINUTE: u32 = 60;

/// [`crate::config::upstreams::reconcile_after`], milliseconds.
pub fn reconcile_after_ms(config: &Config) -> i64 {
    let after = crate::config::upstreams::reconcile_after(config.vault.as_ref(), &config.aws);
    i64::try_from(after.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `f` holding an exclusive lock on `<dir>/.lock` (created with `dir`
/// if missing): replicas sharing a key directory create, rotate and re-read
/// it one at a time.
pub fn with_dir_lock<T>(dir: &Path, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    {
        use std::os::unix::fs::PermissionsExt;
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    let path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    lock.lock()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let result = f();
    let _ = lock.unlock();
    result
}

/// How a broker holds its data directory's `broker.lock`: brokers (and
/// replicas sharing the directory) share it; `seed-log` holds it alone, so
/// it never writes beside a running broker, nor a broker starts beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirUse {
    /// A serving broker.
    Shared,
    /// The seed tool.
    Sole,
}

fn lock_data_dir(dir: &Path, data_dir_use: DataDirUse) -> Result<std::fs::File, String> {
    let path = dir.join("broker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let locked = match data_dir_use {
        DataDirUse::Shared => file.try_lock_shared(),
        DataDirUse::Sole => file.try_lock(),
    };
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{}: {}",
            path.display(),
            match data_dir_use {
                DataDirUse::Shared => "held by mintguard-broker seed-log; wait for it to finish",
                DataDirUse::Sole => "a broker is running on this data directory; stop it first",
            }
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// Which of the broker's JWT key sets: its own JWTs', or the JWT-SVIDs'
/// (kept apart, so a Mintguard JWT never verifies as a JWT-SVID against
/// the trust domain's JWT bundle, nor the other way round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// `jwt.keys_dir`: Mintguard JWTs (the JWKS, introspection, STS web identity).
    Jwt,
    /// `<jwt.keys_dir>/svid`: JWT-SVIDs, always ES256 (the JWT bundle).
    JwtSvid,
}

impl Keys {
    /// Where the set lives.
    pub fn dir(self, config: &Config) -> std::path::PathBuf {
        match self {
            Self::Jwt => config.jwt_dir(),
            Self::JwtSvid => config.jwt_dir().join("svid"),
        }
    }

    /// Its settings: JWT-SVIDs are ES256 whatever `jwt.algorithm` says (the
    /// profile does not allow EdDSA).
    pub fn settings(self, config: &Config) -> JwtSettings {
        let settings = jwt_settings(config);
        match self {
            Self::Jwt => settings,
            Self::JwtSvid => JwtSettings {
                algorithm: mintguard_certs::jwt::JwtAlgorithm::Es256,
                ..settings
            },
        }
    }
}

/// The JWT key settings of `config`.
pub fn jwt_settings(config: &Config) -> JwtSettings {
    JwtSettings {
        algorithm: config.jwt.algorithm,
        max_token_ttl: config.jwt.max_ttl.0,
    }
}

/// Errors while starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Something the configuration names is unusable.
    #[error("{0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> StartError {
    StartError::Setup(e.to_string())
}

/// Hex SHA-256 of a bearer token (tokens are compared by hash).
pub fn token_hash(token: &str) -> String {
    crate::ids::hex(&Sha256::digest(token.trim().as_bytes()))
}

/// The broker.
pub struct Broker {
    /// Reloadable configuration and decision inputs.
    pub dynamic: ArcSwap<Dynamic>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock every issuance reads once ([`crate::clock::SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Held while the broker runs (see [`DataDirUse`]).
    _data_lock: std::fs::File,
    /// The last `logs verify` this broker ran, for the console's badge.
    pub last_verify: Mutex<Option<serde_json::Value>>,
    /// Held while a `logs verify` runs: one at a time, the others waiting
    /// their turn (a viewer asking again and again cannot starve it).
    pub verifying: tokio::sync::Mutex<()>,
    /// Held while the decision inputs are rebuilt and installed (reload,
    /// entry changes): one rebuild at a time, each from the inputs the one
    /// before installed.
    pub reloading: tokio::sync::Mutex<()>,
    /// Held while a what-if or replay over the whole log runs: one at a
    /// time, the others refused (409).
    pub log_job: tokio::sync::Mutex<()>,
    /// The CA (shared with the X.509-SVID minter).
    pub ca: Arc<RwLock<CertificateAuthority>>,
    /// The broker's own serving SVID.
    pub svid: ArcSwap<X509Svid>,
    /// JWT signing keys.
    pub jwt: Arc<RwLock<JwtKeySet>>,
    /// JWT-SVID signing keys (ES256; the trust domain's JWT bundle).
    pub jwt_svid: Arc<RwLock<JwtKeySet>>,
    /// When each key directory's state was last read (its mtime): `Keys::Jwt`, `Keys::JwtSvid`.
    keys_read_at: Mutex<[Option<std::time::SystemTime>; 2]>,
    /// The CRL last signed for agents, with the revocations it lists.
    pub crl: Mutex<Option<crate::mint::x509_svid::SignedCrls>>,
    /// The Vault / OpenBao client, when `[vault]` is configured.
    pub vault: Option<Arc<crate::mint::vault::VaultClient>>,
    /// The minters: JWT always, Vault with `[vault]`, STS when a grant of
    /// kind `aws_sts` is configured.
    pub minters: crate::mint::Minters,
    /// Checkpointing.
    pub log: LogWriter,
    /// Operator tokens: hash → (name, role).
    pub operators: RwLock<Operators>,
    /// The operator console's browser sessions.
    pub console: crate::console::Sessions,
    /// Introspection clients by token hash.
    pub introspection: RwLock<HashMap<String, crate::config::IntrospectionClient>>,
    /// Requests per node.
    pub node_limiter: DefaultKeyedRateLimiter<String>,
    /// Requests per identity.
    pub identity_limiter: DefaultKeyedRateLimiter<String>,
    /// CI requests per client address (before any token work or log write).
    pub ci_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// `mintguard decide` per operator (each simulation is a record).
    pub simulation_limiter: DefaultKeyedRateLimiter<String>,
    /// Refusals of unauthenticated callers, counted per window.
    pub refusals: crate::refusals::RefusalTally,
    /// CI issuers' keys, cached across reloads.
    pub ci_verifier: crate::ci::verify::CiVerifier,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Whether anomaly analysis keeps up (what makes `behaviour` fresh).
    pub analysis: crate::health::AnalysisHealth,
}

impl Broker {
    /// The issuance core over this broker's store, log, minters and clock,
    /// with the decision inputs of `dynamic` (one consistent snapshot).
    pub fn issuer<'a>(&'a self, dynamic: &'a Dynamic) -> crate::issue::Issuer<'a> {
        crate::issue::Issuer {
            store: &*self.store,
            log: self,
            minters: &self.minters,
            clock: &*self.clock,
            rules: crate::issue::Rules {
                config: &dynamic.config,
                rules: &dynamic.rules,
                rules_json: &dynamic.rules_json,
                eci: &dynamic.eci,
                shadow: dynamic.shadow.as_deref(),
            },
            identity_limiter: &self.identity_limiter,
            metrics: &self.metrics,
            analysis: &self.analysis,
            reconcile_after_ms: reconcile_after_ms(&dynamic.config),
        }
    }

    /// Appends a record with nothing to commit beside it; 503 if the log
    /// cannot be written.
    pub async fn record(&self, entry: crate::log::LogEntry) -> Result<(), crate::http::ApiError> {
        self.append(Append::record(entry))
            .await
            .map(|_| ())
            .map_err(crate::http::log_unavailable)
    }

    /// Drops rate-limiter state that is back to full (keys not seen within
    /// their quota's replenish time), so the keyed limiters hold only recent
    /// callers instead of every node, identity and address ever seen.
    pub fn prune_rate_limiters(&self) {
        self.node_limiter.retain_recent();
        self.identity_limiter.retain_recent();
        self.ci_limiter.retain_recent();
        self.simulation_limiter.retain_recent();
        self.ci_limiter.shrink_to_fit();
    }

    /// Opens everything the configuration names: store, CA, keys, policies, graph.
    pub async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        Self::start_with_clock(
            config,
            Arc::new(crate::clock::SystemClock),
            DataDirUse::Shared,
        )
        .await
    }

    /// Opens the broker reading `clock` for its decisions and records; only
    /// `seed-log` (a day of traffic in seconds) sets another than the
    /// system's, and holds the data directory alone.
    pub async fn start_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
        data_dir_use: DataDirUse,
    ) -> Result<Arc<Self>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| setup(format!("{}: {e}", config.data_dir.display())))?;
        let data_lock = lock_data_dir(&config.data_dir, data_dir_use).map_err(setup)?;
        let instance = instance_id(&config.data_dir).map_err(setup)?;
        let store = crate::store::open_replica(&config.store, &instance)
            .await
            .map_err(setup)?;
        let now = OffsetDateTime::now_utc();
        let settings = CaSettings {
            ca_ttl: config.ca.ca_ttl.0,
            max_svid_ttl: config.ca.svid_ttl.0,
        };
        // Replicas sharing the directory: one creates or advances it at a time.
        let ca_dir = config.ca_dir();
        let ca = with_dir_lock(&ca_dir, || {
            let mut ca = CertificateAuthority::load_or_create(
                &ca_dir,
                config.trust_domain.clone(),
                settings,
                now,
            )
            .map_err(|e| e.to_string())?;
            while ca.advance(now).map_err(|e| e.to_string())? {}
            ca.prune(now).map_err(|e| e.to_string())?;
            Ok(ca)
        })
        .map_err(setup)?;
        let svid = ca
            .issue_server_svid(
                &mintguard_certs::id::broker_id(&config.trust_domain),
                &config.listen.public_dns_names,
                config.ca.svid_ttl.0,
                now,
            )
            .map_err(setup)?;
        write_bundle(&config.data_dir, &ca, now)?;
        let load_keys = |which: Keys| {
            let dir = which.dir(&config);
            with_dir_lock(&dir, || {
                JwtKeySet::load_or_create(&dir, which.settings(&config)).map_err(|e| e.to_string())
            })
            .map_err(setup)
        };
        let jwt = load_keys(Keys::Jwt)?;
        let jwt_svid = load_keys(Keys::JwtSvid)?;
        let signing_key = config
            .log
            .signing_key
            .clone()
            .unwrap_or_else(|| config.data_dir.join("log-signing.key"));
        let signer = LogSigner::load_or_create(&signing_key).map_err(setup)?;
        std::fs::write(
            config.data_dir.join("log-signing.jwk.json"),
            serde_json::to_string_pretty(signer.public_jwk()).map_err(setup)?,
        )
        .map_err(setup)?;
        let export = config
            .log
            .checkpoints_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("checkpoints.jsonl"));
        let witnessed = Broker::witnessed_in(&export, store.chain());
        let (head, _) = store.head().await.map_err(setup)?;
        let last_cp = store
            .checkpoints()
            .await
            .map_err(setup)?
            .iter()
            .filter(|c| c.chain == store.chain())
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        let per_node =
            NonZeroU32::new(config.limits.per_node_per_second).unwrap_or(NonZeroU32::MIN);
        let per_identity =
            NonZeroU32::new(config.limits.per_identity_per_second).unwrap_or(NonZeroU32::MIN);
        let per_ci_address = NonZeroU32::new(config.ci.per_address_per_second.unwrap_or(20))
            .unwrap_or(NonZeroU32::MIN);
        let (operators, introspection) = load_tokens(&config)?;
        let vault = match &config.vault {
            Some(v) => Some(
                crate::mint::vault::VaultClient::new(v)
                    .map_err(|e| setup(format!("vault: {e}")))?,
            ),
            None => None,
        };
        let vault = vault.map(Arc::new);
        let jwt = Arc::new(RwLock::new(jwt));
        let jwt_svid = Arc::new(RwLock::new(jwt_svid));
        let ca = Arc::new(RwLock::new(ca));
        // Every registered kind's minter (`crate::lease::lease_kinds!`).
        let used = |kind| config.grants.values().any(|g| g.kind == kind);
        let minters = crate::mint::build(&crate::mint::Deps {
            jwt: &jwt,
            jwt_svid: &jwt_svid,
            ca: &ca,
            vault: vault.as_ref(),
            aws: &config.aws,
            used: &used,
        })
        .await
        .map_err(setup)?;
        let every = i64::try_from(config.log.checkpoint_every).unwrap_or(i64::MAX);
        // Analysis has `interval × stale_after_intervals` from now to beat.
        let analysis = crate::health::AnalysisHealth::new(
            config.anomaly.enabled,
            i64::try_from(
                config
                    .anomaly
                    .interval
                    .0
                    .as_millis()
                    .saturating_mul(u128::from(config.anomaly.stale_after_intervals)),
            )
            .unwrap_or(i64::MAX),
            clock.now_ms(),
        );
        let console = crate::console::Sessions::new(
            i64::try_from(config.console.idle_timeout.0.as_millis()).unwrap_or(i64::MAX),
            i64::try_from(config.console.max_age.0.as_millis()).unwrap_or(i64::MAX),
        );
        let dynamic = build_dynamic(config, &*store).await?;
        tracing::info!(
            chain = store.chain(),
            records = head,
            last_checkpoint = last_cp,
            "issuance log opened"
        );
        let broker = Arc::new(Self {
            dynamic: ArcSwap::from_pointee(dynamic),
            store,
            clock,
            _data_lock: data_lock,
            last_verify: Mutex::new(None),
            verifying: tokio::sync::Mutex::new(()),
            log_job: tokio::sync::Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            ca,
            svid: ArcSwap::from_pointee(svid),
            jwt,
            jwt_svid,
            keys_read_at: Mutex::new([None, None]),
            crl: Mutex::new(None),
            vault,
            minters,
            log: LogWriter {
                signer,
                export,
                instance,
                every,
                last: Mutex::new((last_cp, now_ms())),
                witnessed: Mutex::new(witnessed),
            },
            operators: RwLock::new(operators),
            console,
            introspection: RwLock::new(introspection),
            node_limiter: RateLimiter::keyed(Quota::per_second(per_node)),
            identity_limiter: RateLimiter::keyed(Quota::per_second(per_identity)),
            ci_limiter: RateLimiter::keyed(Quota::per_second(per_ci_address)),
            simulation_limiter: RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(SIMULATIONS_PER_MINUTE).unwrap_or(NonZeroU32::MIN),
            )),
            refusals: crate::refusals::RefusalTally::default(),
            ci_verifier: crate::ci::verify::CiVerifier::default(),
            metrics: crate::metrics::Metrics::default(),
            analysis,
        });
        let dynamic = broker.dynamic.load_full();
        if dynamic.shadow.is_some() {
            broker.record_shadow(&dynamic).await.map_err(setup)?;
        }
        Ok(broker)
    }

    /// The current configuration.
    pub fn config(&self) -> Config {
        self.dynamic.load().config.clone()
    }

    /// How old an upstream intent without an outcome must be before it is
    /// reconciled (`vault.reconcile_after`, else `aws.reconcile_after`,
    /// default 2 min): a younger one may still be minting.
    pub fn reconcile_after_ms(&self) -> i64 {
        reconcile_after_ms(&self.dynamic.load().config)
    }

    /// Appends to the log, then signs a checkpoint if one is due.
    pub async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        let started = std::time::Instant::now();
        let appended = self.store.append(append).await?;
        self.metrics
            .log_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.checkpoint_if_due(appended.seq, &appended.hash, false)
            .await;
        Ok(appended)
    }

    /// Re-reads the configuration file: rules, grants, trust weights, the
    /// exposure graph and tokens are replaced atomically. A file that fails
    /// validation changes nothing; the error says why. Returns the new rule-set hash.
    pub async fn reload(&self) -> Result<String, String> {
        let _reloading = self.reloading.lock().await;
        let file = self.dynamic.load().config.file.clone();
        let config = Config::load(&file).map_err(|e| e.to_string())?;
        let running = self.config();
        if config.listen != running.listen
            || config.data_dir != running.data_dir
            || config.store != running.store
            || config.trust_domain != running.trust_domain
        {
            return Err(format!(
                "{}: listen, data_dir, store and trust_domain need a restart",
                file.display()
            ));
        }
        let (operators, introspection) = load_tokens(&config).map_err(|e| e.to_string())?;
        let dynamic = build_dynamic(config, &*self.store)
            .await
            .map_err(|e| e.to_string())?;
        let hash = dynamic.rules.hash().to_owned();
        self.install(dynamic).await?;
        if let Ok(mut o) = self.operators.write() {
            *o = operators;
        }
        if let Ok(mut i) = self.introspection.write() {
            *i = introspection;
        }
        tracing::info!(rule_set = %hash, "configuration reloaded");
        Ok(hash)
    }

    /// The checkpoint export file.
    pub fn log_export_path(&self) -> std::path::PathBuf {
        self.log.export.clone()
    }

    /// The key set `which`.
    pub fn keys(&self, which: Keys) -> &Arc<RwLock<JwtKeySet>> {
        match which {
            Keys::Jwt => &self.jwt,
            Keys::JwtSvid => &self.jwt_svid,
        }
    }

    /// Re-reads the JWT keys when the key directory changed since they were
    /// read (a replica sharing it rotated): one `stat` when nothing changed.
    /// The JWKS and introspection call it, so a token another replica signed
    /// with a key it just activated verifies here at once.
    pub fn refresh_jwt_keys(&self) {
        self.refresh_keys(Keys::Jwt);
    }

    /// [`Self::refresh_jwt_keys`] for the key set `which`.
    pub fn refresh_keys(&self, which: Keys) {
        let config = self.config();
        let dir = which.dir(&config);
        let Ok(mtime) = std::fs::metadata(dir.join("state.json")).and_then(|m| m.modified()) else {
            return;
        };
        let Ok(mut read_at) = self.keys_read_at.lock() else {
            return;
        };
        let slot = &mut read_at[which as usize];
        if *slot == Some(mtime) {
            return;
        }
        match JwtKeySet::load(&dir, which.settings(&config)) {
            Ok(keys) => {
                if let Ok(mut current) = self.keys(which).write() {
                    *current = keys;
                    *slot = Some(mtime);
                }
            }
            Err(e) => tracing::warn!(error = %e, keys = ?which, "re-reading the JWT keys failed"),
        }
    }

    /// The metrics in the text format, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        let stale = matches!(
            self.analysis.behaviour(now_ms()),
            crate::health::Behaviour::Stale { .. }
        );
        self.metrics.analysis_stale.set(i64::from(stale));
        self.metrics.encode()
    }

    /// Counts a refusal of an unauthenticated caller (see
    /// [`crate::refusals`]): in the metric at once, in the log with the
    /// window's record.
    pub fn refused_unauthenticated(
        &self,
        listener: &'static str,
        reason: &'static str,
        client: std::net::IpAddr,
        request_id: &str,
        message: &str,
    ) {
        self.metrics.unauthenticated_refusal(listener, reason);
        let now = now_ms();
        self.refusals
            .count(listener, reason, now, || crate::refusals::Sample {
                request_id: request_id.to_owned(),
                time_ms: now,
                client: client.to_string(),
                reason,
                message: crate::http::excerpt(message),
            });
    }
}

fn write_bundle(
    data_dir: &Path,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Result<(), StartError> {
    let bundle = ca.bundle(now).map_err(setup)?;
    std::fs::write(data_dir.join("bundle.pem"), bundle.to_pem())
        .map_err(|e| setup(format!("bundle.pem: {e}")))
}

fn read_token(path: &Path) -> Result<String, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| setup(format!("token file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(setup(format!(
            "token file {}: accessible to other users; run chmod 600",
            path.display()
        )));
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| setup(format!("token file {}: {e}", path.display())))?;
    if token.trim().len() < 32 {
        return Err(setup(format!(
            "token file {}: tokens must be at least 32 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// The operators the admin API knows: a name with a role, authenticated by
/// its bearer token or by an SVID for `spiffe://<td>/mintguard/operator/<name>`.
#[derive(Debug, Default)]
pub struct Operators {
    /// Token hash → (name, role).
    pub tokens: HashMap<String, (String, Role)>,
    /// Name → role.
    pub roles: HashMap<String, Role>,
}

/// Operators from `[[operators]]` and `<data_dir>/operators/NAME.role` (with
/// `NAME.token` for a token operator; written by `mintguard-broker operator
/// create`), and introspection tokens.
pub fn load_tokens(
    config: &Config,
) -> Result<
    (
        Operators,
        HashMap<String, crate::config::IntrospectionClient>,
    ),
    StartError,
> {
    let mut operators = Operators::default();
    for op in &config.operators {
        operators.tokens.insert(
            token_hash(&read_token(&op.token_file)?),
            (op.name.clone(), op.role),
        );
        operators.roles.insert(op.name.clone(), op.role);
    }
    let dir = config.data_dir.join("operators");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "role") {
                continue;
            }
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let role_text = std::fs::read_to_string(&path).unwrap_or_default();
            let role: Role =
                serde_json::from_value(serde_json::Value::String(role_text.trim().to_owned()))
                    .map_err(|_| {
                        setup(format!(
                            "{}: unknown role {:?}",
                            path.display(),
                            role_text.trim()
                        ))
                    })?;
            let token = path.with_extension("token");
            if token.exists() {
                operators
                    .tokens
                    .insert(token_hash(&read_token(&token)?), (name.clone(), role));
            }
            operators.roles.insert(name, role);
        }
    }
    let mut introspection = HashMap::new();
    for c in &config.introspection_clients {
        introspection.insert(token_hash(&read_token(&c.token_file)?), c.clone());
    }
    Ok((operators, introspection))
}

#[async_trait::async_trait]
impl crate::issue::IssuanceLog for Broker {
    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        Broker::append(self, append).await
    }
}
