//! # mintguard-agent
//!
//! The Mintguard node agent: it serves workloads on a Unix socket, attests
//! each request from the kernel's peer credentials (never from the request),
//! and forwards credential requests to the broker over mTLS with the node's
//! SVID, pinning the broker's exact SPIFFE ID.
//!
//! The agent is being built up in order on `mintguard-certs` (node key, CSR,
//! SVID, SPIFFE-pinned TLS) and `mintguard-api` (the wire types).

#![forbid(unsafe_code)]
