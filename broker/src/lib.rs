//! # mintguard-broker
//!
//! The Mintguard broker: it authenticates who asks (a node's SVID over mTLS, a
//! CI runner's OIDC token over HTTPS), decides at issuance time with
//! `mintguard-policy`, writes every decision to a durable, hash-chained
//! issuance log, and only then mints a short-lived credential (its own JWT, a
//! Vault secret or token, AWS STS credentials) tracked as a lease.
//!
//! What exists now: the operator CLI's offline commands ([`cli`]), on the
//! foundation crates (`mintguard-certs` for identities and keys,
//! `mintguard-policy` for decisions, `mintguard-api` for wire types). The
//! listeners, stores, issuance pipeline and minters follow.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod http;
pub mod log;
pub mod metrics;
pub mod mint;
pub mod pipeline;
pub mod routes;
pub mod state;
pub mod store;
