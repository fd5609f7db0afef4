//! The broker's background tasks, started in one place once the listeners
//! are bound: each runs for the life of the process and retries what fails
//! at its next pass.
//!
//! | Task | Every | Does |
//! |---|---|---|
//! | [`identity::rotate_identity`] | half the SVID's life | advances the CA, renews the serving SVID, swaps the listeners' TLS |
//! | [`identity::rotate_jwt_keys`] | a quarter of `jwt.rotate_every` (1 s–60 s) | rotates or follows the JWT and the JWT-SVID signing keys |
//! | [`log::refusal_writer`] | `limits.refusal_window` | logs the window's unauthenticated refusals |
//! | [`log::checkpoint_timer`] | `log.checkpoint_interval` | signs a checkpoint of new records |
//! | rate-limiter pruning | 60 s | drops idle per-node and per-identity limiters |
//! | the Vault token | its half-life | renews or logs in again (with `[vault]`) |
//! | [`upstream::revoke_expired_upstream`] | 5 s | reconciles, finishes suspensions, revokes expired leases upstream (with an upstream minter) |
//! | [`crate::anomaly::task::run`] | `anomaly.interval` | analyses the log (with `[anomaly] enabled`) |

pub mod identity;
pub mod log;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use mintguard_certs::tls::SpiffeAcceptor;

use crate::state::Broker;

/// What the listeners serve with, swapped when the broker's identity is
/// renewed.
pub struct ServingIdentity {
    /// The public listener's TLS.
    pub server_tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// The agents listener's mTLS (node SVIDs).
    pub node_acceptor: Arc<ArcSwap<SpiffeAcceptor>>,
    /// The admin listener's optional mTLS (operator SVIDs).
    pub operator_acceptor: Arc<ArcSwap<SpiffeAcceptor>>,
}

/// Starts every background task; an error (an alert sink that cannot
/// start) stops the broker before it serves.
pub fn start(broker: &Arc<Broker>, serving: ServingIdentity) -> Result<(), String> {
    let config = broker.config();
    tokio::spawn(identity::rotate_identity(broker.clone(), serving));
    for keys in [crate::state::Keys::Jwt, crate::state::Keys::JwtSvid] {
        tokio::spawn(identity::rotate_jwt_keys(
            broker.clone(),
            config.jwt.rotate_every.0,
            keys,
        ));
    }
    tokio::spawn(log::refusal_writer(
        broker.clone(),
        config.limits.refusal_window.0,
    ));
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
        tokio::spawn(upstream::revoke_expired_upstream(broker.clone()));
    }
    if config.anomaly.enabled {
        let alerts = match &config.anomaly.webhook {
            Some(webhook) => Some(crate::anomaly::alerts::AlertSink::start(webhook)?),
            None => None,
        };
        tokio::spawn(crate::anomaly::task::run(broker.clone(), alerts));
    }
    tokio::spawn(log::checkpoint_timer(
        broker.clone(),
        config.log.checkpoint_interval.0,
    ));
    Ok(())
}
