//! # mintguard-agent
//!
//! The Mintguard node agent: it serves workloads on a Unix socket, attests
//! each request from the kernel's peer credentials (never from the request),
//! and forwards credential requests to the broker over mTLS with the node's
//! SVID, pinning the broker's exact SPIFFE ID.
//!
//! - [`config`]: the TOML configuration (`deploy/agent_full.toml`).
//! - [`node`]: enrollment with a join token, the stored node SVID, renewal.
//! - [`broker`]: kept-alive mTLS connections to the broker, bounded retries.
//! - [`attest`]: `SO_PEERCRED` + `/proc` → selectors, pid-reuse guarded.
//! - [`workload`]: the HTTP API on the workload socket.
//! - [`workload_api`]: the SPIFFE Workload API (gRPC) on its own socket.
//! - [`watch`]: `bind_to_process` leases revoked when their process exits.
//! - [`container`]: the AWS container-credentials endpoint (loopback).
//! - [`client`]: the helpers' side (`credential-process`, `fetch`).

#![forbid(unsafe_code)]

pub mod attest;
pub mod broker;
pub mod client;
pub mod config;
pub mod container;
pub mod node;
pub mod stamped;
pub mod watch;
pub mod workload;
pub mod workload_api;

use std::sync::Arc;

use mintguard_api::NodeFacts;

/// The node facts this agent reports with each request.
pub fn node_facts(config: &config::Config) -> NodeFacts {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    NodeFacts {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: read("/proc/sys/kernel/osrelease")
            .trim()
            .chars()
            .take(128)
            .collect(),
        uptime_seconds: read("/proc/uptime")
            .split('.')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        socket_mode: format!("{:04o}", config.socket_mode),
    }
}

/// Runs the agent: node identity (enroll or reuse), entries, the workload
/// socket, renewal and process watches. Returns only on a start-up error.
pub async fn run(config: config::Config) -> Result<(), String> {
    let socket = workload::bind(&config.socket_path, config.socket_mode, config.socket_group)
        .map_err(|e| e.to_string())?;
    let attestor =
        attest::Attestor::new().map_err(|e| format!("attesting the agent itself: {e}"))?;
    let node = node::NodeIdentity::start(&config)
        .await
        .map_err(|e| e.to_string())?;
    let watches = Arc::new(watch::Watches::default());
    let agent = workload::Agent::new(node.clone(), attestor, node_facts(&config), watches.clone());
    match agent.refresh_entries().await {
        Ok(n) => tracing::info!(entries = n, "entries fetched"),
        Err(e) => tracing::warn!(%e, "fetching entries failed; retrying in the background"),
    }
    tokio::spawn(node.clone().renew_forever());
    tokio::spawn(watches.run(node.clone(), config.workloads.bind_poll_interval.0));
    let refresher = agent.clone();
    let every = config.workloads.entries_refresh.0;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = refresher.refresh_entries().await {
                tracing::warn!(%e, "refreshing entries failed");
            }
        }
    });
    let mut router = workload::router(agent.clone());
    if let Some(cc) = &config.container_credentials {
        let listener = tokio::net::TcpListener::bind(cc.listen)
            .await
            .map_err(|e| format!("container_credentials.listen {}: {e}", cc.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let container = Arc::new(container::Container {
            agent: agent.clone(),
            tokens: container::Tokens::default(),
            url: format!("http://{addr}/v1/container-credentials"),
        });
        node::write_atomic(
            &config.data_dir.join("listen.json"),
            serde_json::json!({"container_credentials": container.url})
                .to_string()
                .as_bytes(),
            0o644,
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(url = %container.url, "serving container credentials");
        router = router.merge(container::token_route(container.clone()));
        tokio::spawn(container::serve(listener, container::router(container)));
    }
    if let Some(api) = &config.workload_api {
        let listener = workload::bind(&api.socket_path, api.socket_mode, api.socket_group)
            .map_err(|e| format!("workload_api.socket: {e}"))?;
        let first = match workload_api::published::fetch(&agent).await {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(%e, "workload api: bundles not fetched yet; retrying in the background");
                None
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(first);
        tokio::spawn(workload_api::published::poll(
            agent.clone(),
            tx,
            api.poll_interval,
        ));
        let service = workload_api::WorkloadApi::new(agent.clone(), api.clone(), rx);
        tracing::info!(
            socket = %api.socket_path.display(),
            "serving the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET=unix://{})",
            api.socket_path.display()
        );
        tokio::spawn(workload_api::serve(
            listener,
            service,
            config.workloads.max_connections,
            config.workloads.per_uid(),
        ));
    }
    tracing::info!(
        socket = %config.socket_path.display(),
        node = %node.svid().spiffe_id(),
        "serving workloads"
    );
    workload::serve(
        socket,
        router,
        config.workloads.max_connections,
        config.workloads.per_uid(),
    )
    .await;
    Ok(())
}
