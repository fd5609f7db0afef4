//! The one error type of `mintguard-certs`.

use std::path::PathBuf;

/// Everything that can go wrong in identity, CA, TLS and JWT key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// A SPIFFE ID does not follow the SPIFFE ID specification.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending input, truncated for display.
        id: String,
        /// Why it was refused.
        reason: String,
    },

    /// A trust domain name does not follow the SPIFFE ID specification.
    #[error("invalid trust domain {name:?}: {reason}")]
    InvalidTrustDomain {
        /// The offending input, truncated for display.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// Untrusted input exceeds a fixed limit.
    #[error("{kind} exceeds its limit: {actual} > {limit}")]
    LimitExceeded {
        /// What was measured.
        kind: &'static str,
        /// The limit.
        limit: usize,
        /// What the input had.
        actual: usize,
    },

    /// A SPIFFE ID belongs to a trust domain this CA or bundle does not serve.
    #[error("SPIFFE ID {id} is outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The SPIFFE ID.
        id: String,
        /// The trust domain that was expected.
        trust_domain: String,
    },

    /// A certificate signing request is malformed, unsupported or badly signed.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    /// A certificate is malformed or is not a valid X.509-SVID.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A private key is malformed or of an unsupported type.
    #[error("invalid private key: {0}")]
    InvalidKey(String),

    /// A requested lifetime cannot be honoured.
    #[error("invalid ttl: {0}")]
    InvalidTtl(String),

    /// A verified peer presented a SPIFFE ID it is not authorized to use here.
    #[error("peer {peer} is not authorized: expected {expected}")]
    Unauthorized {
        /// The peer's verified SPIFFE ID.
        peer: String,
        /// What this endpoint accepts.
        expected: String,
    },

    /// Certificate generation failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),

    /// Building a TLS configuration or a TLS handshake failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),

    /// A TLS handshake failed on the transport.
    #[error("tls handshake failed: {0}")]
    Handshake(#[source] std::io::Error),

    /// Signing failed in the crypto library.
    #[error("signing failed")]
    Signing,

    /// A private key file can be read by users other than its owner.
    #[error("{}: private key file is accessible to other users (mode {mode:o}); run chmod 600", path.display())]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// Reading or writing key material on disk failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Stored CA or key-set state is malformed or inconsistent.
    #[error("{}: {reason}", path.display())]
    BadState {
        /// The file holding the state.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = CertsError> = std::result::Result<T, E>;

/// Truncates untrusted input for inclusion in an error message.
pub(crate) fn excerpt(input: &str) -> String {
    const MAX: usize = 96;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}
