//! # mintguard-certs
//!
//! Identity material for Mintguard: SPIFFE IDs and trust domains, the CA that
//! issues X.509-SVIDs to nodes and to the broker, trust bundles, rustls
//! configurations that authenticate peers by SPIFFE ID, and the broker's JWT
//! signing keys with their JWKS. Beside them, the one piece of connection
//! plumbing every Mintguard listener shares: [`framing`], the guard that
//! refuses HTTP requests framed twice.
//!
//! What this crate deliberately does **not** do: decide who gets an SVID (the
//! broker's enrollment does, from a join token), talk to a network (the TLS
//! helpers wrap a stream the caller opened), or read the clock (every function
//! that depends on time takes `now`; rustls' own verifiers read the clock
//! during handshakes).
//!
//! Security properties, enforced where noted:
//!
//! - An SVID's SPIFFE ID comes from the caller, never from the CSR; only the
//!   CSR's public key is used, after its signature is verified
//!   ([`ca::Authority::issue_svid_from_csr`]).
//! - An SVID's only URI SAN is its SPIFFE ID; it never outlives its CA.
//! - A peer is accepted only if its chain verifies against the bundle *and*
//!   its SPIFFE ID is authorized; [`tls::SpiffePeer`] exists only after both
//!   ([`tls`]).
//! - CA and JWT rotation keep the old public material trusted exactly until
//!   the last credential it signed has expired ([`ca`], [`jwt`]).
//! - Private keys are zeroized on drop, print as `[redacted]`, are written
//!   0600 and refused when group- or world-accessible.
//!
//! ```
//! use std::time::Duration;
//! use mintguard_certs::{ca::{CaSettings, CertificateAuthority}, id};
//!
//! let now = time::OffsetDateTime::now_utc();
//! let td = id::parse_trust_domain("example.org")?;
//! let ca = CertificateAuthority::in_memory(td.clone(), CaSettings::default(), now)?;
//!
//! // A node enrolls: it sends a CSR, the join token names its ID.
//! let node_key = mintguard_certs::svid::generate_key()?;
//! let csr = mintguard_certs::svid::csr_pem(&node_key)?;
//! let node = id::node_id(&td, "node-1")?;
//! let cert = ca.issue_svid_from_csr(&csr, &node, Duration::from_secs(600), now)?;
//! let svid = mintguard_certs::svid::X509Svid::new(vec![cert], node_key)?;
//! assert_eq!(svid.spiffe_id(), &node);
//! # Ok::<(), mintguard_certs::CertsError>(())
//! ```

#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
mod error;
pub mod framing;
mod fs;
pub mod id;
pub mod jwt;
pub mod svid;
pub mod tls;

pub use error::{CertsError, Result};

/// Lowercase hex: the one encoder of Mintguard's crates (digests, serials,
/// ids, signatures).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}
