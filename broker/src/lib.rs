//! # mintguard-broker
//!
//! The Mintguard broker: it authenticates who asks (a node's SVID over mTLS, a
//! CI runner's OIDC token over HTTPS), decides at issuance time with
//! `mintguard-policy`, writes every decision to a durable, hash-chained
//! issuance log, and only then mints a short-lived credential (its own JWT, a
//! Vault secret or token, AWS STS credentials) tracked as a lease.
//!
//! The service is being built up in order on the foundation that exists now
//! (`mintguard-certs` for identities and keys, `mintguard-api` for the wire
//! types): listeners, stores, the issuance pipeline and the minters follow.

#![forbid(unsafe_code)]
