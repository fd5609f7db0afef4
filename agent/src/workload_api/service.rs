//! The `SpiffeWorkloadAPI` service: every call checks the security header
//! and attests its caller from the kernel, exactly as the HTTP socket does;
//! every SVID is a broker decision and a record.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
    X509svidRequest, X509svidResponse,
};
use super::published::Published;
use super::svids::{self, Held, IssuedX509};
use super::validate;
use crate::attest::Peer;
use crate::config::WorkloadApiConfig;
use crate::workload::Agent;

pub(super) type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Most open streams of one uid (X.509, bundles and SDS streams together):
/// each renews, buffers and holds a task.
pub const MAX_STREAMS_PER_UID: usize = 256;

/// The Workload API's state.
pub struct WorkloadApi {
    agent: Arc<Agent>,
    config: WorkloadApiConfig,
    pub(super) published: watch::Receiver<Option<Arc<Published>>>,
    held: Held,
    streams: Arc<std::sync::Mutex<HashMap<u32, usize>>>,
}

/// One uid's open stream, given back when the stream ends.
pub(super) struct StreamSlot {
    streams: Arc<std::sync::Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.lock()
            && let Some(n) = open.get_mut(&self.uid)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Checks the `workload.spiffe.io: true` header (the Workload API spec's
/// guard against a proxied or browser request).
pub fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

impl WorkloadApi {
    /// The service over `agent`, publishing what `published` carries.
    pub fn new(
        agent: Arc<Agent>,
        config: WorkloadApiConfig,
        published: watch::Receiver<Option<Arc<Published>>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            agent,
            config,
            published,
            held: Held::default(),
            streams: Arc::default(),
        })
    }

    /// This node's SPIFFE ID.
    pub(super) fn node_id(&self) -> String {
        self.agent.node.svid().spiffe_id().to_string()
    }

    /// A stream slot of the caller's uid, or `ResourceExhausted`.
    pub(super) fn stream_slot(&self, peer: Option<&Peer>) -> Result<StreamSlot, Status> {
        let uid = peer.map_or(u32::MAX, |p| p.uid);
        let mut open = self
            .streams
            .lock()
            .map_err(|_| Status::internal("stream table poisoned"))?;
        let n = open.entry(uid).or_insert(0);
        if *n >= MAX_STREAMS_PER_UID {
            return Err(Status::resource_exhausted(format!(
                "uid {uid} holds {MAX_STREAMS_PER_UID} open streams"
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            uid,
        })
    }

    /// The caller's selectors, attested now (`PermissionDenied` if it
    /// cannot be: an exited, exec'd or shared-connection caller).
    pub(super) fn attest(&self, peer: Option<&Peer>) -> Result<Vec<String>, Status> {
        let peer = peer.ok_or_else(|| {
            Status::permission_denied("not_attested: the caller's credentials are unknown")
        })?;
        self.agent.attestor.attest(peer).map_err(|e| {
            tracing::info!(pid = peer.pid, %e, "workload api: caller not attested");
            Status::permission_denied(format!("not_attested: {e}"))
        })
    }

    /// The current publication, or `Unavailable` before the first.
    pub(super) fn current(&self) -> Result<Arc<Published>, Status> {
        self.published.borrow().clone().ok_or_else(|| {
            Status::unavailable("broker_unavailable: the agent has not reached the broker yet")
        })
    }

    /// The caller's SPIFFE IDs entitled to `grant` (`PermissionDenied` if none).
    fn entitled(
        &self,
        published: &Published,
        selectors: &[String],
        grant: &str,
    ) -> Result<Vec<String>, Status> {
        let ids = svids::entitled(&published.entries, selectors, grant);
        if ids.is_empty() {
            return Err(Status::permission_denied(format!(
                "no_identity: no registration entry of this node matches the caller with grant {grant}"
            )));
        }
        Ok(ids.into_iter().map(str::to_owned).collect())
    }

    /// The caller's X.509-SVIDs, each asked of the broker now (a suspended
    /// identity too: its refusal is a decision and a record, one per
    /// refusal hold). Refused for
    /// one identity, the others are still served; refused for all, the
    /// first refusal is the answer.
    pub(super) async fn x509_set(&self, peer: Option<&Peer>) -> Result<Vec<IssuedX509>, Status> {
        let selectors = self.attest(peer)?;
        let published = self.current()?;
        let ids = self.entitled(&published, &selectors, &self.config.x509_grant)?;
        let mut set = Vec::with_capacity(ids.len());
        let mut first_refusal = None;
        for id in &ids {
            match svids::x509(
                &self.agent,
                &self.held,
                self.config.refusal_hold,
                &selectors,
                &self.config.x509_grant,
                id,
            )
            .await
            {
                Ok(svid) => set.push(svid),
                Err(status) => {
                    tracing::warn!(spiffe_id = %id, code = ?status.code(), message = status.message(), "workload api: X.509-SVID refused");
                    first_refusal.get_or_insert(status);
                }
            }
        }
        match (set.is_empty(), first_refusal) {
            (true, Some(refusal)) => Err(refusal),
            _ => Ok(set),
        }
    }

    fn x509_response(set: &[IssuedX509], published: &Published) -> X509svidResponse {
        X509svidResponse {
            svids: set
                .iter()
                .map(|s| X509svid {
                    spiffe_id: s.spiffe_id.clone(),
                    x509_svid: s.chain.clone(),
                    x509_svid_key: s.key.der().to_vec(),
                    bundle: published.x509_bundle.clone(),
                    hint: String::new(),
                })
                .collect(),
            crl: published.crls.clone(),
            federated_bundles: HashMap::new(),
        }
    }

    /// Keeps one caller's X.509 stream: renews at half-life (a decision
    /// each), pushes bundle, CRL and entry changes, and ends the stream
    /// with `PermissionDenied` when a renewal is refused or an identity of
    /// it is suspended.
    async fn keep_x509(
        self: Arc<Self>,
        _slot: StreamSlot,
        peer: Option<Peer>,
        mut set: Vec<IssuedX509>,
        mut sent: Arc<Published>,
        tx: mpsc::Sender<Result<X509svidResponse, Status>>,
    ) {
        // Not marked seen: a change since `sent` wakes at once, and is
        // compared with what was sent before anything is pushed.
        let mut published = self.published.clone();
        loop {
            let renew_at = set
                .iter()
                .map(IssuedX509::renew_at)
                .min()
                .unwrap_or_else(time::OffsetDateTime::now_utc);
            let wait = (renew_at - time::OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(std::time::Duration::ZERO);
            let renew = tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(wait) => true,
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
            };
            let now = published.borrow_and_update().clone();
            let Some(now) = now else { continue };
            if let Some(id) =
                now.suspended_of(set.iter().map(|s| s.spiffe_id.as_str()), &self.node_id())
            {
                tracing::warn!(spiffe_id = %id, "workload api: suspended; ending its X.509-SVID stream");
                let _ = tx
                    .send(Err(Status::permission_denied(format!(
                        "suspended: {id} is suspended"
                    ))))
                    .await;
                return;
            }
            let entries_changed = now.entries != sent.entries;
            // An SVID of this stream revoked (its lease, not the identity):
            // replaced at once rather than served until its renewal.
            let revoked_served = set.iter().any(|svid| now.revokes(&svid.serial));
            if !renew
                && !entries_changed
                && now.x509_bundle == sent.x509_bundle
                && now.crls == sent.crls
                && !revoked_served
            {
                sent = now;
                continue;
            }
            if renew || entries_changed || revoked_served {
                match self.x509_set(peer.as_ref()).await {
                    Ok(new) => set = new,
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "workload api: X.509-SVID renewal refused; ending the stream");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            } else if let Err(status) = self.attest(peer.as_ref()) {
                // The key is sent again: only to the process attested for it.
                let _ = tx.send(Err(status)).await;
                return;
            }
            let now = published.borrow_and_update().clone().unwrap_or(now);
            if tx.send(Ok(Self::x509_response(&set, &now))).await.is_err() {
                return;
            }
            sent = now;
        }
    }

    /// Streams `make(published)` now and on each change while the caller
    /// stays attested (bundles are for attested workloads only).
    fn bundles_stream<T: Send + 'static>(
        self: &Arc<Self>,
        peer: Option<Peer>,
        make: fn(&Published) -> T,
    ) -> Result<Streamed<T>, Status> {
        let selectors = self.attest(peer.as_ref())?;
        let slot = self.stream_slot(peer.as_ref())?;
        // The first message is what this receiver has seen: a change after
        // it wakes the stream, none is lost in between.
        let mut published = self.published.clone();
        let first = published.borrow_and_update().clone().ok_or_else(|| {
            Status::unavailable("broker_unavailable: the agent has not reached the broker yet")
        })?;
        if !first
            .entries
            .iter()
            .any(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        {
            return Err(Status::permission_denied(
                "no_identity: no registration entry of this node matches the caller",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tx.send(Ok(make(&first))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    changed = published.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                if let Err(status) = api.attest(peer.as_ref()) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let now = published.borrow_and_update().clone();
                if let Some(now) = now
                    && tx.send(Ok(make(&now))).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

fn x509_bundles(p: &Published) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: p.crls.clone(),
        bundles: [(p.trust_domain_id.clone(), p.x509_bundle.clone())].into(),
    }
}

fn jwt_bundles(p: &Published) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: [(p.trust_domain_id.clone(), p.jwt_bundle.clone())].into(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Arc<WorkloadApi> {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let peer = request.extensions().get::<Peer>().cloned();
        let slot = self.stream_slot(peer.as_ref())?;
        let set = self.x509_set(peer.as_ref()).await?;
        // Debug, not info: one line per SVID would be the agent's busiest
        // log (each SVID is in the broker's issuance log already).
        tracing::debug!(
            pid = peer.as_ref().map_or(0, |p| p.pid),
            svids = set.len(),
            "workload api: X.509-SVID stream opened"
        );
        let published = self.current()?;
        let (tx, rx) = mpsc::channel(4);
        // The first message at once; the stream stays open.
        tx.send(Ok(WorkloadApi::x509_response(&set, &published)))
            .await
            .map_err(|_| Status::cancelled("the caller went away"))?;
        tokio::spawn(self.clone().keep_x509(slot, peer, set, published, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let peer = request.extensions().get::<Peer>().cloned();
        Ok(Response::new(self.bundles_stream(peer, x509_bundles)?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        let peer = request.extensions().get::<Peer>().cloned();
        let asked = request.into_inner();
        if asked.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let selectors = self.attest(peer.as_ref())?;
        let published = self.current()?;
        let mut ids = self.entitled(&published, &selectors, &self.config.jwt_grant)?;
        if !asked.spiffe_id.is_empty() {
            if !ids.contains(&asked.spiffe_id) {
                return Err(Status::permission_denied(format!(
                    "no_identity: the caller is not entitled to {}",
                    asked.spiffe_id
                )));
            }
            ids = vec![asked.spiffe_id];
        }
        let mut svids = Vec::with_capacity(ids.len());
        let mut first_refusal = None;
        for id in ids {
            match svids::jwt(
                &self.agent,
                &self.held,
                self.config.refusal_hold,
                &selectors,
                &self.config.jwt_grant,
                &id,
                &asked.audience,
            )
            .await
            {
                Ok(svid) => svids.push(Jwtsvid {
                    spiffe_id: id,
                    svid,
                    hint: String::new(),
                }),
                Err(status) => {
                    tracing::warn!(spiffe_id = %id, code = ?status.code(), message = status.message(), "workload api: JWT-SVID refused");
                    first_refusal.get_or_insert(status);
                }
            }
        }
        match (svids.is_empty(), first_refusal) {
            (true, Some(refusal)) => Err(refusal),
            _ => Ok(Response::new(JwtsvidResponse { svids })),
        }
    }

    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        let peer = request.extensions().get::<Peer>().cloned();
        Ok(Response::new(self.bundles_stream(peer, jwt_bundles)?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let peer = request.extensions().get::<Peer>().cloned();
        self.attest(peer.as_ref())?;
        let asked = request.into_inner();
        if asked.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if asked.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let published = self.current()?;
        let (spiffe_id, claims) = validate::jwt_svid(
            &asked.svid,
            &asked.audience,
            &published,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .map_err(Status::invalid_argument)?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(claims),
        }))
    }

    type FetchWITSVIDStream = Streamed<WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        _request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported by this agent",
        ))
    }

    type FetchWITBundlesStream = Streamed<WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        _request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported by this agent",
        ))
    }
}
