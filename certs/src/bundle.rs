//! Trust bundles: the CA certificates a trust domain's SVIDs chain to.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{CertsError, Result};
use crate::fs::pem_encode;
use crate::id::TrustDomain;

/// The most CA certificates a bundle may hold (active plus retired ones).
pub const MAX_BUNDLE_CERTS: usize = 32;

/// The CA certificates of one trust domain. During a CA rotation it holds the
/// new CA and every retired one still inside its overlap window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle of DER certificates.
    pub fn new(trust_domain: TrustDomain, roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        if roots.is_empty() {
            return Err(CertsError::InvalidCertificate(
                "a trust bundle needs at least one CA certificate".into(),
            ));
        }
        if roots.len() > MAX_BUNDLE_CERTS {
            return Err(CertsError::LimitExceeded {
                kind: "trust bundle certificates",
                limit: MAX_BUNDLE_CERTS,
                actual: roots.len(),
            });
        }
        Ok(Self {
            trust_domain,
            roots,
        })
    }

    /// Parses a PEM bundle (one or more `CERTIFICATE` blocks).
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertsError::InvalidCertificate(format!("bad PEM bundle: {e}")))?;
        Self::new(trust_domain, roots)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle as PEM.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The bundle as a rustls root store.
    pub fn root_store(&self) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone())?;
        }
        Ok(store)
    }
}
