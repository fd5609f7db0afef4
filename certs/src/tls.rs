//! rustls configurations for SPIFFE mTLS, and the handshake wrappers that hand
//! the caller the peer's *verified* SPIFFE ID.
//!
//! Both sides verify the peer's chain against the trust bundle (with the
//! serverAuth or clientAuth usage) **and** authorize the peer's SPIFFE ID with
//! an [`IdMatcher`]. DNS names play no part: a SPIFFE peer is named by its ID,
//! so the `ServerName` a client passes is used for SNI only. TLS 1.3 only.
//!
//! [`SpiffePeer`] can only be built by [`SpiffeAcceptor::accept`] and
//! [`SpiffeConnector::connect`], after a handshake whose verifier checked the
//! chain and the ID: holding one is proof that the check ran.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::bundle::TrustBundle;
use crate::error::{CertsError, Result};
use crate::id::{IdMatcher, SpiffeId};
use crate::svid::{SvidInfo, X509Svid};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Checks that `end_entity` is an X.509-SVID whose ID `matcher` accepts.
fn authorize(end_entity: &CertificateDer<'_>, matcher: &IdMatcher) -> Result<SpiffeId> {
    authorize_info(end_entity, matcher).map(|info| info.spiffe_id)
}

fn authorize_info(end_entity: &CertificateDer<'_>, matcher: &IdMatcher) -> Result<SvidInfo> {
    let info = SvidInfo::parse(end_entity)?;
    if !matcher.matches(&info.spiffe_id) {
        return Err(CertsError::Unauthorized {
            peer: info.spiffe_id.to_string(),
            expected: matcher.to_string(),
        });
    }
    Ok(info)
}

/// Carries the SPIFFE reason (e.g. which ID was refused) inside the rustls error.
fn to_rustls_error(e: CertsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Turns a failed handshake into the SPIFFE reason when the refusal was ours.
fn handshake_error(e: std::io::Error) -> CertsError {
    let ours = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
                other.downcast_ref::<CertsError>()
            }
            _ => None,
        });
    match ours {
        Some(CertsError::Unauthorized { peer, expected }) => CertsError::Unauthorized {
            peer: peer.clone(),
            expected: expected.clone(),
        },
        Some(CertsError::InvalidCertificate(reason)) => {
            CertsError::InvalidCertificate(reason.clone())
        }
        _ => CertsError::Handshake(e),
    }
}

/// The peer's SPIFFE ID, verified and authorized during the TLS handshake.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffePeer {
    id: SpiffeId,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    serial: String,
}

impl SpiffePeer {
    fn from_info(info: SvidInfo) -> Self {
        Self {
            id: info.spiffe_id,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        }
    }

    /// The serial number of the peer's SVID (hex, as [`SvidInfo::serial`]).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The verified SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// When the peer's SVID became valid.
    pub fn not_before(&self) -> time::OffsetDateTime {
        self.not_before
    }

    /// When the peer's SVID expires.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }
}

impl fmt::Debug for SpiffePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffePeer({})", self.id)
    }
}

impl fmt::Display for SpiffePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

// === server side ===

#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    matcher: IdMatcher,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        authorize(end_entity, &self.matcher).map_err(to_rustls_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

/// A server config that requires a client SVID from `bundle` whose ID
/// `authorize` accepts (the agents and admin listeners).
pub fn mtls_server_config(
    svid: &X509Svid,
    bundle: &TrustBundle,
    authorize: IdMatcher,
) -> Result<ServerConfig> {
    client_auth_config(svid, bundle, authorize, false)
}

fn client_auth_config(
    svid: &X509Svid,
    bundle: &TrustBundle,
    authorize: IdMatcher,
    optional: bool,
) -> Result<ServerConfig> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(bundle.root_store()?), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let inner = builder
        .build()
        .map_err(|e| CertsError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        matcher: authorize,
    });
    Ok(server_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(svid.chain().to_vec(), svid.key().to_rustls())?)
}

/// A server-authenticated-only config (the public listener: enrollment, CI).
pub fn tls_server_config(svid: &X509Svid) -> Result<ServerConfig> {
    Ok(server_builder()?
        .with_no_client_auth()
        .with_single_cert(svid.chain().to_vec(), svid.key().to_rustls())?)
}

/// Accepts TLS connections with a config from [`mtls_server_config`] and hands
/// back the client's verified SPIFFE ID.
#[derive(Clone)]
pub struct SpiffeAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    matcher: IdMatcher,
}

impl SpiffeAcceptor {
    /// An acceptor requiring client SVIDs from `bundle` that `authorize` accepts.
    pub fn new(svid: &X509Svid, bundle: &TrustBundle, authorize: IdMatcher) -> Result<Self> {
        let config = mtls_server_config(svid, bundle, authorize.clone())?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            matcher: authorize,
        })
    }

    /// An acceptor for which a client certificate is optional; one that is
    /// presented must chain to `bundle` with an ID `authorize` accepts (the
    /// admin listener: operator SVIDs or bearer tokens).
    pub fn optional(svid: &X509Svid, bundle: &TrustBundle, authorize: IdMatcher) -> Result<Self> {
        let config = client_auth_config(svid, bundle, authorize.clone(), true)?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            matcher: authorize,
        })
    }

    /// Runs the server handshake on `io` for an acceptor from
    /// [`SpiffeAcceptor::optional`]: the peer is `None` when the client sent
    /// no certificate.
    pub async fn accept_optional<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<SpiffePeer>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor.accept(io).await.map_err(handshake_error)?;
        let peer = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            Some(leaf) => Some(SpiffePeer::from_info(authorize_info(leaf, &self.matcher)?)),
            None => None,
        };
        Ok((stream, peer))
    }

    /// Runs the server handshake on `io`.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, SpiffePeer)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor.accept(io).await.map_err(handshake_error)?;
        // The verifier already checked chain and ID; read the ID back from the
        // leaf it verified. A missing leaf cannot happen with client auth
        // mandatory, and is refused all the same.
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| CertsError::InvalidCertificate("peer sent no certificate".into()))?;
        let info = authorize_info(leaf, &self.matcher)?;
        Ok((stream, SpiffePeer::from_info(info)))
    }
}

// === client side ===

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    matcher: IdMatcher,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        // SPIFFE names the server by its ID, not by a DNS name.
        authorize(end_entity, &self.matcher).map_err(to_rustls_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client config that verifies the server's SVID against `bundle` and its ID
/// with `authorize` (agents pin the broker's exact ID), presenting `svid` as
/// the client certificate when given.
pub fn spiffe_client_config(
    svid: Option<&X509Svid>,
    bundle: &TrustBundle,
    authorize: IdMatcher,
) -> Result<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::new(bundle.root_store()?),
        matcher: authorize,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match svid {
        Some(svid) => {
            builder.with_client_auth_cert(svid.chain().to_vec(), svid.key().to_rustls())?
        }
        None => builder.with_no_client_auth(),
    })
}

/// Connects with a config from [`spiffe_client_config`] and hands back the
/// server's verified SPIFFE ID.
#[derive(Clone)]
pub struct SpiffeConnector {
    connector: tokio_rustls::TlsConnector,
    matcher: IdMatcher,
}

impl SpiffeConnector {
    /// A connector that presents `svid` (if any) and accepts servers from
    /// `bundle` whose ID `authorize` accepts.
    pub fn new(
        svid: Option<&X509Svid>,
        bundle: &TrustBundle,
        authorize: IdMatcher,
    ) -> Result<Self> {
        let config = spiffe_client_config(svid, bundle, authorize.clone())?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            matcher: authorize,
        })
    }

    /// Runs the client handshake on `io`; `sni` is sent as the server name
    /// indication only and plays no part in verification.
    pub async fn connect<IO>(
        &self,
        sni: &str,
        io: IO,
    ) -> Result<(tokio_rustls::client::TlsStream<IO>, SpiffePeer)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| {
            CertsError::Tls(rustls::Error::General(format!("bad server name: {e}")))
        })?;
        let stream = self
            .connector
            .connect(name, io)
            .await
            .map_err(handshake_error)?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| CertsError::InvalidCertificate("server sent no certificate".into()))?;
        let info = authorize_info(leaf, &self.matcher)?;
        Ok((stream, SpiffePeer::from_info(info)))
    }
}
