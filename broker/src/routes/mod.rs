//! The three listeners' routes, exactly as the wire contract lists them, and
//! the function that binds and serves them (and starts the background
//! [`crate::tasks`]).

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
    crate::tasks::start(
        &broker,
        crate::tasks::ServingIdentity {
            server_tls,
            node_acceptor,
            operator_acceptor,
        },
    )?;
    Ok(bound)
}
