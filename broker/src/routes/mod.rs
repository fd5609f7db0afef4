//! The three listeners' routes, exactly as the wire contract lists them, and
//! the function that binds and serves them.

pub mod admin;
pub mod agents;
pub mod public;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::DefaultBodyLimit;
use mintguard_certs::id::IdMatcher;
use mintguard_certs::tls::{SpiffeAcceptor, tls_server_config};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::state::Broker;
use crate::store::LeaseQuery;

/// The addresses actually bound (port 0 in the config picks a free port).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Bound {
    /// Public listener.
    pub public: SocketAddr,
    /// Agents listener.
    pub agents: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The trust domain (the CLI pins the broker's ID in it).
    pub trust_domain: String,
}

/// Binds the three listeners and serves them in the background.
pub async fn serve(broker: Arc<Broker>) -> Result<Bound, String> {
    let config = broker.config();
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listen.{what} {addr}: {e}"))
    };
    let (public, agents, admin) = (
        bind(config.listen.public, "public").await?,
        bind(config.listen.agents, "agents").await?,
        bind(config.listen.admin, "admin").await?,
    );
    let bound = Bound {
        public: public.local_addr().map_err(|e| e.to_string())?,
        agents: agents.local_addr().map_err(|e| e.to_string())?,
        admin: admin.local_addr().map_err(|e| e.to_string())?,
        trust_domain: config.trust_domain.to_string(),
    };
    let svid = broker.svid.load_full();
    let bundle = {
        let ca = broker
            .ca
            .read()
            .map_err(|_| "CA lock poisoned".to_owned())?;
        ca.bundle(time::OffsetDateTime::now_utc())
            .map_err(|e| e.to_string())?
    };
    let server_tls = Arc::new(ArcSwap::from_pointee(
        tls_server_config(&svid).map_err(|e| e.to_string())?,
    ));
    let node_acceptor = SpiffeAcceptor::new(&svid, &bundle, IdMatcher::nodes(&config.trust_domain))
        .map_err(|e| e.to_string())?;
    let limit = DefaultBodyLimit::max(config.limits.max_body_bytes);
    let guard = |name: &'static str| {
        let broker = broker.clone();
        crate::http::ListenerGuard::new(
            name,
            config.limits.max_connections,
            config.limits.max_connections_per_address,
            move |listener, reason, addr: SocketAddr| {
                let id = crate::ids::random_id("req");
                broker.refused_unauthenticated(listener, reason, addr.ip(), &id, "");
            },
        )
    };
    tokio::spawn(crate::http::serve_tls(
        public,
        server_tls.clone(),
        public::router(broker.clone()).layer(limit),
        guard("public"),
    ));
    let node_acceptor = Arc::new(ArcSwap::from_pointee(node_acceptor));
    tokio::spawn(crate::http::serve_mtls(
        agents,
        node_acceptor.clone(),
        agents::router(broker.clone()).layer(limit),
        guard("agents"),
    ));
    let operator_acceptor = Arc::new(ArcSwap::from_pointee(
        SpiffeAcceptor::optional(&svid, &bundle, IdMatcher::operators(&config.trust_domain))
            .map_err(|e| e.to_string())?,
    ));
    tokio::spawn(crate::http::serve_optional_mtls(
        admin,
        operator_acceptor.clone(),
        admin::router(broker.clone()).layer(limit),
        guard("admin"),
    ));
    tokio::spawn(rotate_identity(
        broker.clone(),
        server_tls,
        node_acceptor,
        operator_acceptor,
    ));
    tokio::spawn(rotate_jwt_keys(broker.clone(), config.jwt.rotate_every.0));
    tokio::spawn(
        broker
            .clone()
            .refusal_writer(config.limits.refusal_window.0),
    );
    tokio::spawn({
        let broker = broker.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                broker.prune_rate_limiters();
            }
        }
    });
    if let Some(vault) = broker.vault.clone() {
        tokio::spawn(vault.keep_token_fresh());
    }
    if broker.minters.any_upstream() {
        tokio::spawn(revoke_expired_upstream(broker.clone()));
    }
    if config.anomaly.enabled {
        let alerts = match &config.anomaly.webhook {
            Some(webhook) => Some(crate::anomaly::alerts::AlertSink::start(webhook)?),
            None => None,
        };
        tokio::spawn(crate::anomaly::task::run(broker.clone(), alerts));
    }
    tokio::spawn(
        broker
            .clone()
            .checkpoint_timer(config.log.checkpoint_interval.0),
    );
    Ok(bound)
}

/// Keeps the broker's serving identity fresh: at half the SVID's life it
/// advances a due CA rotation (prepare, then activate; see `CertificateAuthority`),
/// re-issues the broker SVID, rewrites `bundle.pem` and swaps the listeners'
/// TLS configurations; new connections use them, live ones finish.
async fn rotate_identity(
    broker: Arc<Broker>,
    server_tls: Arc<ArcSwap<rustls::ServerConfig>>,
    node_acceptor: Arc<ArcSwap<SpiffeAcceptor>>,
    operator_acceptor: Arc<ArcSwap<SpiffeAcceptor>>,
) {
    loop {
        let now = time::OffsetDateTime::now_utc();
        let remaining = broker.svid.load().not_after() - now;
        let half: time::Duration = remaining / 2;
        let wait = half.max(time::Duration::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(
            u64::try_from(wait.whole_milliseconds()).unwrap_or(1000),
        ))
        .await;
        if let Err(e) = renew_identity(&broker, &server_tls, &node_acceptor, &operator_acceptor) {
            tracing::error!(%e, "renewing the broker's identity failed; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }
}

fn renew_identity(
    broker: &Broker,
    server_tls: &ArcSwap<rustls::ServerConfig>,
    node_acceptor: &ArcSwap<SpiffeAcceptor>,
    operator_acceptor: &ArcSwap<SpiffeAcceptor>,
) -> Result<(), String> {
    let config = broker.config();
    let now = time::OffsetDateTime::now_utc();
    // Prepare the next CA at half-life (published in the bundle agents fetch
    // on renewal), activate it at three quarters — re-reading the directory
    // under its lock, so replicas sharing it advance it once and all follow.
    let ca_dir = config.ca_dir();
    let fresh = crate::state::with_dir_lock(&ca_dir, || {
        let mut ca = mintguard_certs::ca::CertificateAuthority::load(
            &ca_dir,
            config.trust_domain.clone(),
            mintguard_certs::ca::CaSettings {
                ca_ttl: config.ca.ca_ttl.0,
                max_svid_ttl: config.ca.svid_ttl.0,
            },
        )
        .map_err(|e| e.to_string())?;
        ca.advance(now).map_err(|e| e.to_string())?;
        ca.prune(now).map_err(|e| e.to_string())?;
        Ok(ca)
    })?;
    let (svid, bundle) = {
        let mut ca = broker
            .ca
            .write()
            .map_err(|_| "CA lock poisoned".to_owned())?;
        *ca = fresh;
        let svid = ca
            .issue_server_svid(
                &mintguard_certs::id::broker_id(&config.trust_domain),
                &config.listen.public_dns_names,
                config.ca.svid_ttl.0,
                now,
            )
            .map_err(|e| e.to_string())?;
        (svid, ca.bundle(now).map_err(|e| e.to_string())?)
    };
    std::fs::write(config.data_dir.join("bundle.pem"), bundle.to_pem())
        .map_err(|e| e.to_string())?;
    server_tls.store(Arc::new(
        tls_server_config(&svid).map_err(|e| e.to_string())?,
    ));
    node_acceptor.store(Arc::new(
        SpiffeAcceptor::new(&svid, &bundle, IdMatcher::nodes(&config.trust_domain))
            .map_err(|e| e.to_string())?,
    ));
    operator_acceptor.store(Arc::new(
        SpiffeAcceptor::optional(&svid, &bundle, IdMatcher::operators(&config.trust_domain))
            .map_err(|e| e.to_string())?,
    ));
    tracing::info!(until = %svid.not_after(), "broker SVID renewed");
    broker.svid.store(Arc::new(svid));
    Ok(())
}

/// Replaces the JWT signing key every `every`; retired public keys stay in
/// the JWKS until every token they signed has expired.
async fn rotate_jwt_keys(broker: Arc<Broker>, every: std::time::Duration) {
    // Checked often, rotated when the active key (as persisted) is due: a
    // replica sharing the directory that rotated first is followed, not
    // repeated.
    let check = (every / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    loop {
        tick.tick().await;
        let config = broker.config();
        let dir = config.jwt_dir();
        let settings = crate::state::jwt_settings(&config);
        let result = tokio::task::spawn_blocking(move || {
            crate::state::with_dir_lock(&dir, || {
                let mut keys = mintguard_certs::jwt::JwtKeySet::load(&dir, settings)
                    .map_err(|e| e.to_string())?;
                let rotated = keys
                    .rotate_if_due(time::OffsetDateTime::now_utc(), every)
                    .map_err(|e| e.to_string())?;
                Ok((keys, rotated))
            })
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match result {
            Ok((keys, rotated)) => {
                let changed = broker
                    .jwt
                    .read()
                    .map(|k| k.active().kid() != keys.active().kid())
                    .unwrap_or(true);
                if let Ok(mut current) = broker.jwt.write() {
                    *current = keys;
                }
                if rotated {
                    tracing::info!("JWT signing key rotated");
                } else if changed {
                    tracing::info!("JWT signing key rotated by a replica; following");
                }
            }
            Err(e) => tracing::error!(%e, "JWT key check failed; the current key stays active"),
        }
    }
}

/// Every 5 s: reconciles unanswered upstream mints, revokes what
/// suspensions left live, and revokes upstream, at
/// the broker's expiry, every `effective` lease whose
/// upstream credential could outlive it (Vault's TTL may be longer than the
/// decision's); a failure is retried at the next pass.
/// Expired upstream leases read at once.
const EXPIRY_PAGE: usize = 1000;

async fn revoke_expired_upstream(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    // Everything up to this (issue time, lease id) was reconciled in an
    // earlier pass (the first pass of a run looks at every upstream lease).
    let mut reconciled = (i64::MIN, String::new());
    loop {
        tick.tick().await;
        // Intents without an outcome older than `reconcile_after` are
        // settled (a broker — this one or a replica — died mid-mint).
        let min_age = broker.reconcile_after_ms();
        let dynamic = broker.dynamic.load_full();
        let issuer = broker.issuer(&dynamic);
        match issuer.reconcile_upstream(min_age, &mut reconciled).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(settled = n, "unanswered upstream mints reconciled"),
            Err(e) => tracing::error!(error = %e, "reconciling upstream mints failed"),
        }
        // Suspended subjects keep no live lease: what a suspension could
        // not revoke (Vault down, or the broker stopped in between) is
        // retried here.
        match broker.store.suspended_subjects().await {
            Ok(subjects) => {
                for subject in subjects {
                    let request_id = crate::ids::random_id("req");
                    if let Err(e) = issuer.revoke_all(&subject, &request_id, "suspension").await {
                        tracing::warn!(%subject, error = %e, "a suspended subject's leases are still live; retrying");
                    }
                }
            }
            Err(e) => tracing::warn!(%e, "listing suspended subjects failed"),
        }
        // Every expired lease, a page at a time; one that fails is retried
        // at the next pass and never holds the others up.
        let now = crate::clock::now_ms();
        let mut after = (i64::MIN, String::new());
        loop {
            let query = LeaseQuery::ExpiredUnrevoked {
                now_ms: now,
                after: after.clone(),
                limit: EXPIRY_PAGE,
            };
            let leases = match broker.store.leases(&query).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%e, "listing leases for expiry failed");
                    break;
                }
            };
            for lease in &leases {
                let request_id = crate::ids::random_id("req");
                if let Err(e) = issuer.revoke_lease(lease, &request_id, "expired").await {
                    tracing::warn!(lease = %lease.id, error = %e, "revoking an expired lease upstream failed; retrying");
                }
            }
            match leases.last() {
                Some(last) if leases.len() == EXPIRY_PAGE => {
                    after = (last.expires_at_ms, last.id.clone());
                }
                _ => break,
            }
        }
    }
}
