//! X.509-SVIDs: a certificate chain whose leaf carries exactly one SPIFFE ID,
//! with its private key.

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::error::{CertsError, Result};
use crate::fs::pem_encode;
use crate::id::{SpiffeId, parse_spiffe_id};

/// The largest certificate or CSR accepted from a peer, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// A PKCS#8 private key: zeroized on drop, `[redacted]` in `Debug`.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    /// Wraps PKCS#8 DER bytes.
    pub fn from_pkcs8_der(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// Parses a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CertsError::InvalidKey(format!("expected a PKCS#8 PEM key: {e}")))?;
        Ok(Self::from_pkcs8_der(key.secret_pkcs8_der().to_vec()))
    }

    /// The PKCS#8 DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// The key as PEM, zeroized on drop.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem_encode("PRIVATE KEY", &self.0))
    }

    pub(crate) fn to_rustls(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.to_vec()))
    }

    pub(crate) fn to_rcgen(&self) -> Result<rcgen::KeyPair> {
        let der = PrivatePkcs8KeyDer::from(self.0.as_slice());
        rcgen::KeyPair::try_from(&der).map_err(|e| CertsError::InvalidKey(e.to_string()))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

/// Generates a P-256 key for an SVID.
pub fn generate_key() -> Result<PrivateKey> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(PrivateKey::from_pkcs8_der(key.serialize_der()))
}

/// Builds a PEM certificate signing request for `key`.
///
/// The CSR proves possession of the key and carries nothing the CA trusts:
/// Mintguard's CA takes only the public key from it, and the SPIFFE ID from
/// the enrollment (see [`crate::ca::Authority::issue_svid_from_csr`]).
pub fn csr_pem(key: &PrivateKey) -> Result<String> {
    let key_pair = key.to_rcgen()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Mintguard");
    Ok(params.serialize_request(&key_pair)?.pem()?)
}

/// A fresh P-256 key and a PEM CSR for it (one key pair, used once).
pub fn generate_key_and_csr() -> Result<(PrivateKey, String)> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Mintguard");
    let csr = params.serialize_request(&key_pair)?.pem()?;
    Ok((PrivateKey::from_pkcs8_der(key_pair.serialize_der()), csr))
}

/// An X.509-SVID: the certificate chain (leaf first) and its private key.
#[derive(Clone, Debug)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    not_after: OffsetDateTime,
}

impl X509Svid {
    /// Assembles an SVID, checking that the leaf is a valid X.509-SVID.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKey) -> Result<Self> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertsError::InvalidCertificate("empty certificate chain".into()))?;
        let info = SvidInfo::parse(leaf)?;
        Ok(Self {
            spiffe_id: info.spiffe_id,
            chain,
            key,
            not_after: info.not_after,
        })
    }

    /// Loads an SVID from a PEM chain and a PEM PKCS#8 key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertsError::InvalidCertificate(format!("bad PEM: {e}")))?;
        Self::new(chain, PrivateKey::from_pem(key_pem)?)
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }
}

/// The certificates of a PEM text (one or more `CERTIFICATE` blocks), DER.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CertsError::InvalidCertificate(format!("bad PEM: {e}")))
}

/// A DER CRL as PEM.
pub fn crl_pem(der: &[u8]) -> String {
    pem_encode("X509 CRL", der)
}

/// A DER certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// What Mintguard reads from an X.509-SVID leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The one URI SAN.
    pub spiffe_id: SpiffeId,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 (hex) of the subject public key info: the key's fingerprint.
    pub key_sha256: String,
}

impl SvidInfo {
    /// Parses a leaf certificate and checks the X.509-SVID rules: exactly one
    /// URI SAN holding a valid SPIFFE ID, and not a CA.
    ///
    /// This does **not** verify the signature chain; TLS verification does.
    pub fn parse(der: &[u8]) -> Result<Self> {
        if der.len() > MAX_CERT_LEN {
            return Err(CertsError::LimitExceeded {
                kind: "certificate size",
                limit: MAX_CERT_LEN,
                actual: der.len(),
            });
        }
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CertsError::InvalidCertificate(e.to_string()))?;
        let mut uris = Vec::new();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            uris.push(*uri);
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CertsError::InvalidCertificate(
                        "an X.509-SVID leaf must not be a CA".into(),
                    ));
                }
                _ => {}
            }
        }
        let [uri] = uris.as_slice() else {
            return Err(CertsError::InvalidCertificate(format!(
                "an X.509-SVID has exactly one URI SAN, this one has {}",
                uris.len()
            )));
        };
        let spiffe_id = parse_spiffe_id(uri)?;
        let validity = cert.validity();
        let key = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
        Ok(Self {
            spiffe_id,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            key_sha256: crate::hex(key.as_ref()),
        })
    }
}
