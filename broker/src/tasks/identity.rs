//! The broker's own keys kept fresh: its serving SVID and the CA behind
//! it, and the JWT signing key.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mintguard_certs::id::IdMatcher;
use mintguard_certs::tls::{SpiffeAcceptor, tls_server_config};

use super::ServingIdentity;
use crate::state::Broker;

/// Keeps the broker's serving identity fresh: at half the SVID's life it
/// advances a due CA rotation (prepare, then activate; see `CertificateAuthority`),
/// re-issues the broker SVID, rewrites `bundle.pem` and swaps the listeners'
/// TLS configurations; new connections use them, live ones finish.
pub(super) async fn rotate_identity(broker: Arc<Broker>, serving: ServingIdentity) {
    let ServingIdentity {
        server_tls,
        node_acceptor,
        operator_acceptor,
    } = serving;
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
pub(super) async fn rotate_jwt_keys(
    broker: Arc<Broker>,
    every: std::time::Duration,
    which: crate::state::Keys,
) {
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
        let dir = which.dir(&config);
        let settings = which.settings(&config);
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
                    .keys(which)
                    .read()
                    .map(|k| k.active().kid() != keys.active().kid())
                    .unwrap_or(true);
                if let Ok(mut current) = broker.keys(which).write() {
                    *current = keys;
                }
                if rotated {
                    tracing::info!(keys = ?which, "JWT signing key rotated");
                } else if changed {
                    tracing::info!(keys = ?which, "JWT signing key rotated by a replica; following");
                }
            }
            Err(e) => {
                tracing::error!(%e, keys = ?which, "JWT key check failed; the current key stays active")
            }
        }
    }
}
