//! The X.509-SVID minter (the Workload API's `FetchX509SVID`): the agent
//! generates the workload's key on the node and sends a CSR; after the
//! decision, the broker's CA signs a leaf for the decided SPIFFE ID only —
//! one URI SAN, CA=false, `digitalSignature` — whatever the CSR asks for
//! (its subject, SANs and extensions are ignored; only its public key is
//! used, after its self-signature is verified).
//!
//! The serial is derived from the lease id ([`serial_for`]), so a revoked
//! lease names its certificate in the CRL the agent publishes. Revocation is
//! `introspection_only`: peers that check the CRL refuse a revoked SVID
//! before it expires; the rest honour its (short) expiry.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mintguard_certs::ca::{CertificateAuthority, RevokedSerial, serial_for};
use mintguard_certs::id::parse_spiffe_id;
use mintguard_certs::svid::SvidInfo;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Approved, Deps, Flow, GrantSettings, GrantSpec, LeaseKind, LoggedIntent, Material,
    MaterialError, MintError, MintRequest, Minted, Minter, Reconcile, Revocation, SealError,
    Sealed, SpecContext,
};
use crate::setting::Invalid;
use crate::store::Lease;

/// The longest X.509-SVID a grant may issue: SVIDs are renewed at half
/// their life, and a revoked one stays usable to peers that do not read the
/// CRL until it expires.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// `x509_svid = {}` on a grant: no settings yet (the SPIFFE ID is the
/// decided identity; the TTL is the grant's).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct X509SvidGrant {}

/// An `x509_svid` grant's settings.
pub type Settings = X509SvidGrant;

impl GrantSettings for X509SvidGrant {
    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
        let most = cx.ca_svid_ttl.min(MAX_TTL);
        if cx.max_ttl > most {
            return Err(Invalid::new(
                (cx.key)("max_ttl"),
                format!(
                    "an X.509-SVID lives at most {}s (the CA's ca.svid_ttl and 24 h)",
                    most.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// Signs workload SVIDs with the broker's active CA.
pub struct X509SvidMinter {
    ca: Arc<RwLock<CertificateAuthority>>,
}

#[async_trait]
impl Minter for X509SvidMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::X509Svid
    }

    fn revocation(&self) -> Revocation {
        Revocation::IntrospectionOnly
    }

    fn flow(&self) -> Flow {
        Flow::Local
    }

    fn check_material(
        &self,
        _spec: &GrantSpec,
        material: &Material<'_>,
    ) -> Result<(), MaterialError> {
        if material.audience.is_some() {
            return Err(MaterialError::bad(
                "audience_not_expected",
                "an x509_svid grant takes no audience",
            ));
        }
        // Parsed and its self-signature verified by the issuance core.
        material.csr.map(|_| ()).ok_or_else(|| {
            MaterialError::bad(
                "csr_required",
                "an x509_svid grant needs a CSR (the Workload API's FetchX509SVID sends one)",
            )
        })
    }

    fn seal(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
    ) -> Result<Sealed, SealError> {
        let csr = request
            .csr
            .ok_or_else(|| SealError::Failed("no CSR".into()))?;
        let id = parse_spiffe_id(request.identity).map_err(|e| SealError::Failed(e.to_string()))?;
        let now = crate::clock::datetime(request.now_ms);
        let ca = self
            .ca
            .read()
            .map_err(|_| SealError::KeysUnavailable("CA lock poisoned".into()))?;
        let cert = ca
            .issue_svid_from_csr_with_serial(
                csr,
                &id,
                Duration::from_secs(request.ttl_seconds),
                now,
                serial_for(request.lease_id),
            )
            .map_err(|e| SealError::Failed(e.to_string()))?;
        let bundle = ca
            .bundle(now)
            .map_err(|e| SealError::KeysUnavailable(e.to_string()))?;
        drop(ca);
        let info = SvidInfo::parse(&cert).map_err(|e| SealError::Failed(e.to_string()))?;
        let not_after = info.not_after.unix_timestamp();
        Ok(Sealed::new(json!({
            "type": "x509_svid",
            "spiffe_id": info.spiffe_id.to_string(),
            "svid_pem": mintguard_certs::svid::cert_pem(&cert),
            "bundle_pem": bundle.to_pem(),
            "serial": info.serial,
            "not_after": not_after,
        }))
        .recording(json!({
            "spiffe_id": info.spiffe_id.to_string(),
            "serial": info.serial,
            "not_after": not_after,
            "key_sha256": info.key_sha256,
        })))
    }

    async fn mint(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
        _intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        Err(MintError::new(format!(
            "grant {} is minted locally, not upstream",
            request.grant
        )))
    }

    /// The lease is marked revoked (the CRL lists it); nothing upstream.
    async fn revoke(&self, _upstream: &Value) -> Result<bool, MintError> {
        Ok(true)
    }

    /// One record per SVID: never an intent without an outcome.
    async fn reconcile(&self, _lease: &Lease, _grant: Option<&GrantSpec>) -> Reconcile {
        Reconcile::Nothing
    }
}

/// The CRLs last signed for agents: one per CA still trusted (an SVID's
/// issuer must sign the CRL that lists it), listing every revoked,
/// unexpired X.509-SVID (serials are unique across CAs: 128 bits of a hash).
#[derive(Clone, Debug)]
pub struct SignedCrls {
    /// The revocations listed, sorted.
    pub revoked: Vec<RevokedSerial>,
    /// When they were signed, milliseconds.
    pub signed_at_ms: i64,
    /// The CAs that signed them (ids, the active one first).
    pub signers: Vec<String>,
    /// The CRLs, DER: the active CA's first.
    pub ders: Vec<Vec<u8>>,
}

/// How long signed CRLs are reused while the revocations they list are
/// unchanged (they are valid for [`CRL_VALIDITY`]).
pub const CRL_REUSE_MS: i64 = 10 * 60 * 1000;
/// How long a CRL is valid.
pub const CRL_VALIDITY: time::Duration = time::Duration::hours(1);

impl SignedCrls {
    /// CRLs listing `revoked`, signed by every CA of `ca` still trusted at `now_ms`.
    pub fn sign(
        ca: &CertificateAuthority,
        mut revoked: Vec<RevokedSerial>,
        now_ms: i64,
    ) -> Result<Self, mintguard_certs::CertsError> {
        revoked.sort_by_key(|r| r.serial);
        let now = crate::clock::datetime(now_ms);
        let number = u64::try_from(now_ms).unwrap_or(0);
        let (mut ders, mut signers) = (Vec::new(), Vec::new());
        for authority in signers_of(ca, now) {
            ders.push(authority.crl(&revoked, number, now, now + CRL_VALIDITY)?);
            signers.push(authority.id().to_owned());
        }
        Ok(Self {
            revoked,
            signed_at_ms: now_ms,
            signers,
            ders,
        })
    }

    /// Whether these CRLs can be served again for `revoked` at `now_ms`:
    /// recent, the same revocations, signed by the CAs trusted now (a CA
    /// rotation signs anew).
    pub fn still_fit(
        &self,
        ca: &CertificateAuthority,
        revoked: &[RevokedSerial],
        now_ms: i64,
    ) -> bool {
        let now = crate::clock::datetime(now_ms);
        now_ms.saturating_sub(self.signed_at_ms) < CRL_REUSE_MS
            && self.revoked.len() == revoked.len()
            && self.revoked.iter().zip(revoked).all(|(a, b)| a.serial == b.serial)
            && signers_of(ca, now).map(|a| a.id()).eq(self.signers.iter().map(String::as_str))
    }
}

/// The CAs a CRL must be signed by at `now`: the active one, then each
/// retired one still trusted.
fn signers_of(
    ca: &CertificateAuthority,
    now: time::OffsetDateTime,
) -> impl Iterator<Item = &mintguard_certs::ca::Authority> {
    std::iter::once(ca.active()).chain(
        ca.retired()
            .iter()
            .filter(move |r| r.trusted_until > now)
            .map(|r| &r.authority),
    )
}

/// Always built: the broker's own CA signs.
pub async fn build(deps: &Deps<'_>) -> Result<Option<Box<dyn Minter>>, String> {
    Ok(Some(Box::new(X509SvidMinter {
        ca: deps.ca.clone(),
    })))
}
