//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, as
//! SPIRE serves it: `StreamSecrets` and `FetchSecrets` (`DeltaSecrets`
//! answers `Unimplemented`). Resource names: a SPIFFE ID of the caller (its
//! X.509-SVID as a `TlsCertificate`), `default` (the first one), `ROOTCA`
//! (the trust bundle as `trusted_ca`, with the CRL), the trust domain's
//! SPIFFE ID and `ALL` (a validation context with Envoy's SPIFFE certificate
//! validator); no names, everything. Certificates and keys are inline PEM.
//! Every certificate is an X.509-SVID decided and recorded by the broker,
//! renewed at half-life and pushed; bundle and CRL changes are pushed too. A
//! stream's version counts its responses; each response has a fresh nonce, a
//! request naming an older nonce is stale and ignored, and an ACK or NACK of
//! the last response (same names) sends nothing. The Workload API's security
//! header is not required here (Envoy does not send it; SPIRE exempts SDS).

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use super::proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use super::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use super::proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use super::published::Published;
use super::service::{StreamSlot, Streamed, WorkloadApi};
use super::svids::IssuedX509;
use crate::attest::Peer;

/// The type URL of the resources SDS serves.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
/// Most resource names one request may carry.
pub const MAX_RESOURCE_NAMES: usize = 64;

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.into())),
    })
}

fn any<M: Message>(type_url: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

fn tls_certificate(name: &str, svid: &IssuedX509) -> prost_types::Any {
    any(
        SECRET_TYPE,
        &Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(svid.chain_pem.clone()),
                private_key: inline(svid.key.to_pem().as_bytes()),
                ..Default::default()
            })),
        },
    )
}

/// Every published CRL, PEM, concatenated (one per CA still trusted).
fn crl_pem(published: &Published) -> String {
    published
        .crls
        .iter()
        .map(|c| mintguard_certs::svid::crl_pem(c))
        .collect()
}

fn root_ca(published: &Published) -> prost_types::Any {
    any(
        SECRET_TYPE,
        &Secret {
            name: "ROOTCA".to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(published.x509_bundle_pem.clone()),
                    crl: inline(crl_pem(published)),
                    ..Default::default()
                },
            )),
        },
    )
}

fn spiffe_validator(name: &str, published: &Published) -> prost_types::Any {
    let validator = SpiffeCertValidatorConfig {
        trust_domains: vec![spiffe_cert_validator_config::TrustDomain {
            name: published
                .trust_domain_id
                .trim_start_matches("spiffe://")
                .to_owned(),
            trust_bundle: inline(published.x509_bundle_pem.clone()),
        }],
        trust_bundles: None,
    };
    any(
        SECRET_TYPE,
        &Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    custom_validator_config: Some(TypedExtensionConfig {
                        name: SPIFFE_VALIDATOR.to_owned(),
                        typed_config: Some(any(SPIFFE_VALIDATOR_TYPE, &validator)),
                    }),
                    crl: inline(crl_pem(published)),
                    ..Default::default()
                },
            )),
        },
    )
}

/// Whether serving `names` takes the caller's SVIDs (a decision each).
fn needs_svids(names: &[String], trust_domain_id: &str) -> bool {
    names.is_empty()
        || names
            .iter()
            .any(|n| !matches!(n.as_str(), "ROOTCA" | "ALL") && n != trust_domain_id)
}

/// The resources `names` ask for, or `InvalidArgument` naming one the
/// caller may not have.
fn resources(
    names: &[String],
    set: &[IssuedX509],
    published: &Published,
) -> Result<Vec<prost_types::Any>, Status> {
    if names.is_empty() {
        let mut all: Vec<_> = set
            .iter()
            .map(|s| tls_certificate(&s.spiffe_id, s))
            .collect();
        all.push(spiffe_validator(&published.trust_domain_id, published));
        return Ok(all);
    }
    names
        .iter()
        .map(|name| match name.as_str() {
            "default" => set
                .first()
                .map(|s| tls_certificate("default", s))
                .ok_or_else(|| Status::permission_denied("no_identity: no SVID for this caller")),
            "ROOTCA" => Ok(root_ca(published)),
            "ALL" => Ok(spiffe_validator("ALL", published)),
            n if n == published.trust_domain_id => Ok(spiffe_validator(n, published)),
            n => set
                .iter()
                .find(|s| s.spiffe_id == n)
                .map(|s| tls_certificate(n, s))
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "workload is not authorized for the requested identities [{n:?}]"
                    ))
                }),
        })
        .collect()
}

fn check_request(request: &DiscoveryRequest) -> Result<(), Status> {
    if !request.type_url.is_empty() && request.type_url != SECRET_TYPE {
        return Err(Status::invalid_argument(format!(
            "type_url must be {SECRET_TYPE}"
        )));
    }
    if request.resource_names.len() > MAX_RESOURCE_NAMES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_RESOURCE_NAMES} resource names"
        )));
    }
    Ok(())
}

fn nonce() -> String {
    let mut bytes = [0u8; 8];
    // The nonce only pairs ACKs with responses; a failed RNG read makes a
    // zero nonce, which is still distinct from the empty one.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    mintguard_certs::hex(&bytes)
}

/// One SDS stream's state.
struct SdsStream {
    _slot: StreamSlot,
    api: Arc<WorkloadApi>,
    peer: Option<Peer>,
    names: Option<Vec<String>>,
    set: Vec<IssuedX509>,
    version: u64,
    last_nonce: Option<String>,
}

impl SdsStream {
    /// Attests the caller, renews its SVIDs if `renew` (or the names need
    /// them for the first time), and builds the next response.
    async fn respond(
        &mut self,
        renew: bool,
    ) -> Result<(DiscoveryResponse, Arc<Published>), Status> {
        let names = self.names.clone().unwrap_or_default();
        let published = self.api.current()?;
        if needs_svids(&names, &published.trust_domain_id) {
            if renew || self.set.is_empty() {
                self.set = self.api.x509_set(self.peer.as_ref()).await?;
            } else {
                self.api.attest(self.peer.as_ref())?;
            }
        } else {
            // Names that take no SVID keep none (and no renewal timer).
            self.set.clear();
            self.api.attest(self.peer.as_ref())?;
        }
        let resources = resources(&names, &self.set, &published)?;
        self.version += 1;
        let nonce = nonce();
        self.last_nonce = Some(nonce.clone());
        let response = DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            canary: false,
            type_url: SECRET_TYPE.to_owned(),
            nonce,
            control_plane: None,
        };
        Ok((response, published))
    }

    async fn run(
        mut self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let mut published = self.api.published.clone();
        published.borrow_and_update();
        let mut sent: Option<Arc<Published>> = None;
        let mut nacked: Option<String> = None;
        loop {
            let renew_at = self.set.iter().map(IssuedX509::renew_at).min();
            let wait = renew_at.map_or(std::time::Duration::from_secs(3600), |at| {
                (at - time::OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(std::time::Duration::ZERO)
            });
            let answer = tokio::select! {
                () = tx.closed() => return,
                request = inbound.message() => {
                    let request = match request {
                        Ok(Some(r)) => r,
                        Ok(None) | Err(_) => return,
                    };
                    if let Err(status) = check_request(&request) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    // A request answering an older response is stale.
                    if !request.response_nonce.is_empty()
                        && self.last_nonce.as_deref() != Some(request.response_nonce.as_str())
                    {
                        continue;
                    }
                    if let Some(error) = &request.error_detail
                        && nacked.as_deref() != Some(request.response_nonce.as_str())
                    {
                        // Once per response, the message cut short.
                        nacked = Some(request.response_nonce.clone());
                        let message: String = error.message.chars().take(256).collect();
                        tracing::warn!(code = error.code, %message, version = %request.version_info, "sds: Envoy rejected a response (NACK)");
                    }
                    // An ACK or NACK of the names already served sends nothing.
                    if self.names.as_ref() == Some(&request.resource_names) {
                        continue;
                    }
                    self.names = Some(request.resource_names);
                    self.respond(false).await
                }
                () = tokio::time::sleep(wait), if renew_at.is_some() => self.respond(true).await,
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = published.borrow_and_update().clone();
                    let Some(now) = now else { continue };
                    if let Some(id) = now.suspended_of(
                        self.set.iter().map(|s| s.spiffe_id.as_str()),
                        &self.api.node_id(),
                    ) {
                        tracing::warn!(spiffe_id = %id, "sds: suspended; ending the stream");
                        let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "suspended: {id} is suspended"
                            ))))
                            .await;
                        return;
                    }
                    if self.names.is_none() {
                        continue;
                    }
                    let revoked_served = self.set.iter().any(|svid| now.revokes(&svid.serial));
                    let entries_changed = sent.as_ref().is_some_and(|s| s.entries != now.entries);
                    let served_changed = sent.as_ref().is_none_or(|s| {
                        s.x509_bundle != now.x509_bundle || s.crls != now.crls
                    });
                    if revoked_served || entries_changed {
                        self.respond(true).await
                    } else if served_changed {
                        self.respond(false).await
                    } else {
                        continue;
                    }
                }
            };
            match answer {
                Ok((response, served)) => {
                    sent = Some(served);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "sds: ending the stream");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Arc<WorkloadApi> {
    type DeltaSecretsStream = Streamed<DeltaDiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not supported; use StreamSecrets",
        ))
    }

    type StreamSecretsStream = Streamed<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        // Refused at once when the caller is not attested at all.
        self.attest(peer.as_ref())?;
        let slot = self.stream_slot(peer.as_ref())?;
        let (tx, rx) = mpsc::channel(2);
        let stream = SdsStream {
            _slot: slot,
            api: self.clone(),
            peer,
            names: None,
            set: Vec::new(),
            version: 0,
            last_nonce: None,
        };
        tokio::spawn(stream.run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let request = request.into_inner();
        check_request(&request)?;
        let published = self.current()?;
        let set = if needs_svids(&request.resource_names, &published.trust_domain_id) {
            self.x509_set(peer.as_ref()).await?
        } else {
            self.attest(peer.as_ref())?;
            Vec::new()
        };
        Ok(Response::new(DiscoveryResponse {
            version_info: String::new(),
            resources: resources(&request.resource_names, &set, &published)?,
            canary: false,
            type_url: SECRET_TYPE.to_owned(),
            nonce: String::new(),
            control_plane: None,
        }))
    }
}
