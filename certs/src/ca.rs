//! The Mintguard CA: one signing [`Authority`] at a time, with retired ones kept
//! in the trust bundle through an overlap window.
//!
//! Rotation never breaks a live SVID, in two steps as SPIRE does: at half the
//! active CA's life the next CA is *prepared* — published in the bundle, so
//! every client learns it with its next renewal, but signing nothing; at three
//! quarters it is *activated*, and the old one stays in the bundle until
//! `retired_at + max_svid_ttl` (or its own expiry), past the expiry of the
//! last SVID it signed.
//!
//! On disk (`CertificateAuthority::create` / `load`):
//!
//! ```text
//! <dir>/state.json     {"active": "<id>", "prepared": "<id>"?, "retired": [{"id": …, "trusted_until": …}]}
//! <dir>/<id>.crt       CA certificate, PEM, 0644
//! <dir>/<id>.key       CA private key, PKCS#8 PEM, 0600 (a wider mode is refused)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bundle::TrustBundle;
use crate::error::{CertsError, Result};
use crate::fs;
use crate::id::{SpiffeId, TrustDomain};
use crate::svid::{MAX_CERT_LEN, PrivateKey, X509Svid, generate_key};

/// How far `not_before` is back-dated to tolerate clock skew between hosts.
const BACKDATE: time::Duration = time::Duration::seconds(60);

/// Lifetimes the CA works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaSettings {
    /// Validity of a CA certificate. Default 7 days.
    pub ca_ttl: Duration,
    /// The longest SVID the CA issues; also the overlap window of a rotation.
    /// Default 1 hour.
    pub max_svid_ttl: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            ca_ttl: Duration::from_secs(7 * 24 * 3600),
            max_svid_ttl: Duration::from_secs(3600),
        }
    }
}

impl CaSettings {
    fn validate(&self) -> Result<()> {
        if self.max_svid_ttl.is_zero() || self.ca_ttl < self.max_svid_ttl * 2 {
            return Err(CertsError::InvalidTtl(format!(
                "ca_ttl ({}s) must be at least twice max_svid_ttl ({}s), and both non-zero",
                self.ca_ttl.as_secs(),
                self.max_svid_ttl.as_secs()
            )));
        }
        Ok(())
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// The serial number an SVID minted for `seed` (a lease id) carries: the
/// first 16 bytes of its SHA-256, kept positive and non-zero, so a revoked
/// lease names its certificate in a CRL without a lookup.
pub fn serial_for(seed: &str) -> [u8; 16] {
    let digest = digest::digest(&digest::SHA256, seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    bytes
}

/// A revoked certificate as a CRL lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Its serial number ([`serial_for`]).
    pub serial: [u8; 16],
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CertsError::Signing)?;
    bytes[0] &= 0x7f; // keep the DER INTEGER positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// One CA key and its self-signed certificate.
pub struct Authority {
    id: String,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: PrivateKey,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Generates a new CA key and self-signed certificate for `trust_domain`,
    /// valid from `now` (back-dated a minute) for `ttl`.
    pub fn generate(
        trust_domain: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Mintguard");
        // A unique subject per CA, so that during a rotation overlap each SVID
        // chains by name to the one CA that signed it.
        let mut nonce = [0u8; 4];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CertsError::Signing)?;
        dn.push(
            DnType::CommonName,
            format!(
                "Mintguard CA {} {}",
                trust_domain.as_str(),
                crate::hex(&nonce)
            ),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + to_time(ttl);
        let key_pair = key.to_rcgen()?;
        let cert = params.self_signed(&key_pair)?;
        Self::assemble(cert.der().clone(), key)
    }

    /// Loads a CA from its PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertsError::InvalidCertificate(format!("bad CA PEM: {e}")))?;
        Self::assemble(cert, PrivateKey::from_pem(key_pem)?)
    }

    fn assemble(cert: CertificateDer<'static>, key: PrivateKey) -> Result<Self> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| CertsError::InvalidCertificate(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CertsError::InvalidCertificate(
                "the CA certificate lacks basicConstraints cA=true".into(),
            ));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let key_pair = key.to_rcgen()?;
        if key_pair.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CertsError::InvalidKey(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key_pair)?;
        let id = crate::hex(&digest::digest(&digest::SHA256, &cert).as_ref()[..8]);
        Ok(Self {
            id,
            cert_pem: fs::pem_encode("CERTIFICATE", &cert),
            cert,
            key,
            issuer,
            not_after,
        })
    }

    /// A short stable identifier: the first 8 bytes of the certificate's
    /// SHA-256, in hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CA certificate, DER.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues an X.509-SVID for `spiffe_id` from a PEM CSR.
    ///
    /// The SPIFFE ID is the caller's (for a node, the join token's), never the
    /// CSR's: only the CSR's public key is used, after its self-signature
    /// (proof of possession) is verified. Subject, SANs and extensions the CSR
    /// asks for are ignored. The SVID's only URI SAN is `spiffe_id`; it is valid
    /// from `now` (back-dated a minute) for `ttl`, and never past the CA.
    pub fn issue_svid_from_csr(
        &self,
        csr_pem: &str,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateDer<'static>> {
        let csr = parse_csr(csr_pem)?;
        let params = self.svid_params(spiffe_id, ttl, now)?;
        Ok(params
            .signed_by(&csr.public_key, &self.issuer)?
            .der()
            .clone())
    }

    /// Like [`Self::issue_svid_from_csr`], with the serial number given
    /// ([`serial_for`] of the workload SVID's lease).
    pub fn issue_svid_from_csr_with_serial(
        &self,
        csr: &Csr,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
        serial: [u8; 16],
    ) -> Result<CertificateDer<'static>> {
        let csr = &csr.0;
        let mut params = self.svid_params(spiffe_id, ttl, now)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        Ok(params
            .signed_by(&csr.public_key, &self.issuer)?
            .der()
            .clone())
    }

    /// A CRL (DER) signed by this CA listing `revoked`, valid from
    /// `this_update` until `next_update`.
    pub fn crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.revoked_at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// Issues an X.509-SVID for `spiffe_id` with a freshly generated key (the
    /// broker's own serving SVID, tests).
    pub fn issue_svid(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<X509Svid> {
        self.issue_server_svid(spiffe_id, &[], ttl, now)
    }

    /// Like [`Self::issue_svid`], with DNS names besides the one URI SAN (a
    /// server that HTTPS clients reach by host name, e.g. the broker's public
    /// listener for CI runners).
    pub fn issue_server_svid(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<X509Svid> {
        let key = generate_key()?;
        let mut params = self.svid_params(spiffe_id, ttl, now)?;
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.clone().try_into().map_err(|_| {
                    CertsError::InvalidCertificate(format!("bad DNS name {name:?}"))
                })?,
            ));
        }
        let cert = params.signed_by(&key.to_rcgen()?, &self.issuer)?;
        X509Svid::new(vec![cert.der().clone()], key)
    }

    fn svid_params(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateParams> {
        if ttl.is_zero() {
            return Err(CertsError::InvalidTtl(
                "an SVID ttl must be positive".into(),
            ));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Mintguard");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = (now + to_time(ttl)).min(self.not_after);
        Ok(params)
    }
}

/// A CSR whose size, self-signature (proof of possession) and key type were
/// checked once: only its public key is ever used.
pub struct Csr(CertificateSigningRequestParams);

impl Csr {
    /// Parses and checks a PEM CSR (see [`validate_csr`]).
    pub fn parse(csr_pem: &str) -> Result<Self> {
        parse_csr(csr_pem).map(Self)
    }
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csr")
    }
}

/// Checks a PEM CSR (size, parse, self-signature, key type) without issuing,
/// so a caller can refuse a bad CSR before consuming anything.
pub fn validate_csr(csr_pem: &str) -> Result<()> {
    parse_csr(csr_pem).map(|_| ())
}

/// Parses a CSR within the size limit, verifies its self-signature (proof of
/// possession) and accepts only ECDSA P-256, P-384 and Ed25519 keys.
fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams> {
    if csr_pem.len() > MAX_CERT_LEN {
        return Err(CertsError::LimitExceeded {
            kind: "CSR size",
            limit: MAX_CERT_LEN,
            actual: csr_pem.len(),
        });
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CertsError::InvalidCsr(e.to_string()))?;
    let alg = csr.public_key.algorithm();
    if alg != &rcgen::PKCS_ECDSA_P256_SHA256
        && alg != &rcgen::PKCS_ECDSA_P384_SHA384
        && alg != &rcgen::PKCS_ED25519
    {
        return Err(CertsError::InvalidCsr(
            "unsupported key type: use ECDSA P-256, P-384 or Ed25519".into(),
        ));
    }
    Ok(csr)
}

/// A retired CA still trusted until `trusted_until`.
#[derive(Debug)]
pub struct Retired {
    /// The retired CA.
    pub authority: Authority,
    /// End of its overlap window.
    pub trusted_until: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct State {
    active: String,
    #[serde(default)]
    prepared: Option<String>,
    retired: Vec<RetiredState>,
}

#[derive(Serialize, Deserialize)]
struct RetiredState {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    trusted_until: OffsetDateTime,
}

/// The trust domain's CA with rotation, optionally persisted to a directory.
#[derive(Debug)]
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    settings: CaSettings,
    active: Authority,
    prepared: Option<Authority>,
    retired: Vec<Retired>,
    dir: Option<PathBuf>,
}

impl CertificateAuthority {
    /// A CA kept in memory only (tests, demos).
    pub fn in_memory(
        trust_domain: TrustDomain,
        settings: CaSettings,
        now: OffsetDateTime,
    ) -> Result<Self> {
        settings.validate()?;
        let active = Authority::generate(&trust_domain, settings.ca_ttl, now)?;
        Ok(Self {
            trust_domain,
            settings,
            active,
            prepared: None,
            retired: Vec::new(),
            dir: None,
        })
    }

    /// Creates a new CA and writes it to `dir` (created 0700 if missing).
    pub fn create(
        dir: &Path,
        trust_domain: TrustDomain,
        settings: CaSettings,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let mut ca = Self::in_memory(trust_domain, settings, now)?;
        ca.dir = Some(dir.to_path_buf());
        fs::create_private_dir(dir)?;
        ca.write_authority(&ca.active)?;
        ca.write_state()?;
        Ok(ca)
    }

    /// Loads the CA from `dir`, refusing a key file readable by others.
    pub fn load(dir: &Path, trust_domain: TrustDomain, settings: CaSettings) -> Result<Self> {
        settings.validate()?;
        let state_path = dir.join("state.json");
        let state: State = serde_json::from_slice(&fs::read_public(&state_path)?).map_err(|e| {
            CertsError::BadState {
                path: state_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let read = |id: &str| -> Result<Authority> {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CertsError::BadState {
                    path: state_path.clone(),
                    reason: format!("bad CA id {id:?}"),
                });
            }
            let cert = fs::read_public(&dir.join(format!("{id}.crt")))?;
            let key = fs::read_private(&dir.join(format!("{id}.key")))?;
            let bad = |what: &str| CertsError::BadState {
                path: dir.join(format!("{id}.{what}")),
                reason: "not UTF-8 PEM".into(),
            };
            let cert = String::from_utf8(cert).map_err(|_| bad("crt"))?;
            let key = zeroize::Zeroizing::new(String::from_utf8(key).map_err(|_| bad("key"))?);
            Authority::from_pem(&cert, &key)
        };
        let active = read(&state.active)?;
        let prepared = state.prepared.as_deref().map(read).transpose()?;
        let retired = state
            .retired
            .iter()
            .map(|r| {
                Ok(Retired {
                    authority: read(&r.id)?,
                    trusted_until: r.trusted_until,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            trust_domain,
            settings,
            active,
            prepared,
            retired,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Loads the CA from `dir`, or creates it there when `dir` holds none.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: TrustDomain,
        settings: CaSettings,
        now: OffsetDateTime,
    ) -> Result<Self> {
        if dir.join("state.json").exists() {
            Self::load(dir, trust_domain, settings)
        } else {
            Self::create(dir, trust_domain, settings, now)
        }
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA that signs new SVIDs.
    pub fn active(&self) -> &Authority {
        &self.active
    }

    /// Retired CAs still in their overlap window (as of the last [`Self::prune`]).
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// The settings.
    pub fn settings(&self) -> CaSettings {
        self.settings
    }

    fn check_ttl(&self, spiffe_id: &SpiffeId, ttl: Duration) -> Result<()> {
        if spiffe_id.trust_domain() != &self.trust_domain {
            return Err(CertsError::ForeignTrustDomain {
                id: spiffe_id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if ttl > self.settings.max_svid_ttl {
            return Err(CertsError::InvalidTtl(format!(
                "{}s exceeds max_svid_ttl {}s",
                ttl.as_secs(),
                self.settings.max_svid_ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// Issues an SVID for `spiffe_id` (which must be in this trust domain) from
    /// a CSR; see [`Authority::issue_svid_from_csr`].
    pub fn issue_svid_from_csr(
        &self,
        csr_pem: &str,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateDer<'static>> {
        self.check_ttl(spiffe_id, ttl)?;
        self.active
            .issue_svid_from_csr(csr_pem, spiffe_id, ttl, now)
    }

    /// Issues a workload SVID from a CSR with a given serial; see
    /// [`Authority::issue_svid_from_csr_with_serial`].
    pub fn issue_svid_from_csr_with_serial(
        &self,
        csr: &Csr,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
        serial: [u8; 16],
    ) -> Result<CertificateDer<'static>> {
        self.check_ttl(spiffe_id, ttl)?;
        self.active
            .issue_svid_from_csr_with_serial(csr, spiffe_id, ttl, now, serial)
    }

    /// Issues an SVID with a fresh key; see [`Authority::issue_svid`].
    pub fn issue_svid(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<X509Svid> {
        self.check_ttl(spiffe_id, ttl)?;
        self.active.issue_svid(spiffe_id, ttl, now)
    }

    /// Issues a server SVID with DNS names; see [`Authority::issue_server_svid`].
    pub fn issue_server_svid(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<X509Svid> {
        self.check_ttl(spiffe_id, ttl)?;
        self.active
            .issue_server_svid(spiffe_id, dns_names, ttl, now)
    }

    /// Whether the next CA should be prepared: the active one is past half
    /// its life and none is prepared. A prepared CA is published in the
    /// bundle (so agents and clients learn it through renewals) but signs
    /// nothing until [`Self::activate`].
    pub fn preparation_due(&self, now: OffsetDateTime) -> bool {
        self.prepared.is_none() && self.active.not_after - now < to_time(self.settings.ca_ttl) / 2
    }

    /// Whether the prepared CA should become active: the active one is past
    /// three quarters of its life. Between preparation and activation at
    /// least `ca_ttl / 4 ≥ max_svid_ttl / 2` passes, so every holder of a
    /// live SVID has renewed (and fetched the bundle) at least once.
    pub fn activation_due(&self, now: OffsetDateTime) -> bool {
        self.prepared.is_some() && self.active.not_after - now < to_time(self.settings.ca_ttl) / 4
    }

    /// Whether either step is due (kept for callers that rotate in one go).
    pub fn rotation_due(&self, now: OffsetDateTime) -> bool {
        self.preparation_due(now) || self.activation_due(now)
    }

    /// The prepared CA, if any.
    pub fn prepared(&self) -> Option<&Authority> {
        self.prepared.as_ref()
    }

    /// Generates the next CA and publishes it in the bundle without using it.
    pub fn prepare(&mut self, now: OffsetDateTime) -> Result<()> {
        let next = Authority::generate(&self.trust_domain, self.settings.ca_ttl, now)?;
        self.write_authority(&next)?;
        self.prepared = Some(next);
        self.write_state()
    }

    /// Makes the prepared CA (or a fresh one, if none was prepared) the
    /// active one. The old one stays in the bundle until `now + max_svid_ttl`
    /// (capped at its own expiry), past the expiry of every SVID it signed.
    pub fn activate(&mut self, now: OffsetDateTime) -> Result<()> {
        let next = match self.prepared.take() {
            Some(prepared) => prepared,
            None => {
                let next = Authority::generate(&self.trust_domain, self.settings.ca_ttl, now)?;
                self.write_authority(&next)?;
                next
            }
        };
        let old = std::mem::replace(&mut self.active, next);
        let trusted_until = (now + to_time(self.settings.max_svid_ttl)).min(old.not_after);
        self.retired.push(Retired {
            authority: old,
            trusted_until,
        });
        self.prune(now)
    }

    /// Replaces the active CA at once (prepare and activate in one step):
    /// for tests and emergencies, since clients that have not fetched the new
    /// bundle will not trust SVIDs from the new CA until they do.
    pub fn rotate(&mut self, now: OffsetDateTime) -> Result<()> {
        self.activate(now)
    }

    /// Advances a rotation that is due (prepare or activate); whether anything changed.
    pub fn advance(&mut self, now: OffsetDateTime) -> Result<bool> {
        if self.activation_due(now) {
            self.activate(now)?;
            Ok(true)
        } else if self.preparation_due(now) {
            self.prepare(now)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Drops retired CAs whose overlap window has ended.
    pub fn prune(&mut self, now: OffsetDateTime) -> Result<()> {
        let before = self.retired.len();
        self.retired.retain(|r| r.trusted_until > now);
        if self.retired.len() != before || self.dir.is_some() {
            self.write_state()?;
        }
        Ok(())
    }

    /// The bundle to trust now: the active CA and retired ones whose window is open.
    pub fn bundle(&self, now: OffsetDateTime) -> Result<TrustBundle> {
        let mut roots = vec![self.active.cert.clone()];
        roots.extend(self.prepared.iter().map(|p| p.cert.clone()));
        roots.extend(
            self.retired
                .iter()
                .filter(|r| r.trusted_until > now)
                .map(|r| r.authority.cert.clone()),
        );
        TrustBundle::new(self.trust_domain.clone(), roots)
    }

    fn write_authority(&self, authority: &Authority) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        fs::write_private(
            &dir.join(format!("{}.key", authority.id)),
            authority.key.to_pem().as_bytes(),
        )?;
        fs::write_public(
            &dir.join(format!("{}.crt", authority.id)),
            authority.cert_pem.as_bytes(),
        )
    }

    fn write_state(&self) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let state = State {
            active: self.active.id.clone(),
            prepared: self.prepared.as_ref().map(|p| p.id.clone()),
            retired: self
                .retired
                .iter()
                .map(|r| RetiredState {
                    id: r.authority.id.clone(),
                    trusted_until: r.trusted_until,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| CertsError::BadState {
            path: dir.join("state.json"),
            reason: e.to_string(),
        })?;
        fs::write_public(&dir.join("state.json"), &json)
    }
}
