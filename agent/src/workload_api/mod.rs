//! The SPIFFE Workload API (gRPC over HTTP/2) on its own Unix socket, for
//! unmodified SPIFFE clients (`SPIFFE_ENDPOINT_SOCKET=unix:///…`).
//!
//! Connections are accepted by the agent's own loop ([`crate::workload::accept`]:
//! the kernel's peer credentials at accept, per-uid caps, a stream that
//! notes every writer) and served by hyper's HTTP/2 server with the
//! generated `SpiffeWorkloadAPI` service; the peer rides in each request's
//! extensions, and every call attests it again (HTTP/2 multiplexes calls on
//! one connection, and the process may have exec'd meanwhile).
//!
//! - [`service`]: the five methods (the WIT-SVID ones answer `Unimplemented`).
//! - [`svids`]: SVIDs asked of the broker, one decision and record each.
//! - [`published`]: bundles, the CRL, suspensions and entries, polled.
//! - [`validate`]: `ValidateJWTSVID` against the JWT bundle.
//! - [`sds`]: Envoy's Secret Discovery Service (v3) on the same socket.
//! - [`proto`]: generated from `agent/proto/` (the SPIFFE `workload.proto`;
//!   a trimmed subset of Envoy's xDS v3 protos, upstream names and field
//!   numbers) by `agent/proto/codegen` (committed; the build needs no `protoc`).

pub mod published;
pub mod sds;
pub mod service;
pub mod svids;
pub mod validate;

/// The Workload API's messages and service, generated (see the module docs).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    unreachable_pub
)]
pub mod proto {
    include!("proto/spiffe_workload.rs");

    /// Envoy's xDS v3 (the SDS subset).
    pub mod envoy {
        /// `envoy.config`.
        pub mod config {
            /// `envoy.config.core`.
            pub mod core {
                /// `envoy.config.core.v3`.
                pub mod v3 {
                    include!("proto/envoy.config.core.v3.rs");
                }
            }
        }
        /// `envoy.extensions`.
        pub mod extensions {
            /// `envoy.extensions.transport_sockets`.
            pub mod transport_sockets {
                /// `envoy.extensions.transport_sockets.tls`.
                pub mod tls {
                    /// `envoy.extensions.transport_sockets.tls.v3`.
                    pub mod v3 {
                        include!("proto/envoy.extensions.transport_sockets.tls.v3.rs");
                    }
                }
            }
        }
        /// `envoy.service`.
        pub mod service {
            /// `envoy.service.discovery`.
            pub mod discovery {
                /// `envoy.service.discovery.v3`.
                pub mod v3 {
                    include!("proto/envoy.service.discovery.v3.rs");
                }
            }
            /// `envoy.service.secret`.
            pub mod secret {
                /// `envoy.service.secret.v3`.
                pub mod v3 {
                    include!("proto/envoy.service.secret.v3.rs");
                }
            }
        }
        /// `envoy.type`.
        pub mod r#type {
            /// `envoy.type.v3`.
            pub mod v3 {
                include!("proto/envoy.r#type.v3.rs");
            }
        }
    }

    /// `google`.
    pub mod google {
        /// `google.rpc`.
        pub mod rpc {
            include!("proto/google.rpc.rs");
        }
    }
}

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tower::Service;

pub use self::service::WorkloadApi;
use crate::attest::Peer;

/// Where Envoy's SDS calls go (every other path is the Workload API's).
pub const SDS_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/";

/// Largest gRPC message the agent decodes (requests are tiny).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most concurrent calls on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Serves the Workload API on `listener` with the agent's connection caps.
pub async fn serve(
    listener: UnixListener,
    api: Arc<WorkloadApi>,
    max_connections: usize,
    per_uid: usize,
) {
    crate::workload::accept(listener, max_connections, per_uid, move |stream, peer| {
        serve_connection(api.clone(), stream, peer)
    })
    .await
}

async fn serve_connection(
    api: Arc<WorkloadApi>,
    stream: crate::stamped::StampedStream,
    peer: Option<Peer>,
) {
    let workload = proto::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(api.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let sds = proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            let to_sds = req.uri().path().starts_with(SDS_PATH);
            let (mut workload, mut sds) = (workload.clone(), sds.clone());
            async move {
                if to_sds {
                    sds.call(req).await
                } else {
                    workload.call(req).await
                }
            }
        });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(16 * 1024)
        // Streams stay open for as long as the workload runs; a peer that
        // went away without closing is found by its unanswered pings.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%e, "workload api connection ended with an error");
    }
}
