//! SVIDs asked of the broker for an attested workload, one decision (and
//! one record) each: X.509-SVIDs from a key generated here (it never leaves
//! the node; the broker sees a CSR), JWT-SVIDs for the audiences asked.
//! A broker refusal becomes `PermissionDenied`, an unreachable broker
//! `Unavailable`; a refusal is held for `[workload_api] refusal_hold`, so a
//! refused client that reconnects in a loop costs one decision per hold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mintguard_api::{CredentialRequest, EntryView, ErrorBody};
use mintguard_certs::svid::{PrivateKey, certs_from_pem, generate_key_and_csr};
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::workload::Agent;

/// Most refusals remembered: when full, expired ones are dropped, and a new
/// one is not held while none has expired (the broker decides it again).
const MAX_HELD: usize = 10_000;

/// The shortest time between an SVID's issue and its renewal.
pub const MIN_RENEWAL: time::Duration = time::Duration::seconds(1);

/// An X.509-SVID issued to a workload, with the key made for it.
#[derive(Clone)]
pub struct IssuedX509 {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The chain, DER, leaf first.
    pub chain: Vec<u8>,
    /// The chain as the broker sent it, PEM (SDS).
    pub chain_pem: String,
    /// The key, PKCS#8 DER.
    pub key: PrivateKey,
    /// When it was issued (the agent's clock).
    pub issued_at: OffsetDateTime,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// Its serial, hex.
    pub serial: String,
}

impl IssuedX509 {
    /// Half its life from issue: when it is renewed (at least
    /// [`MIN_RENEWAL`] after issue, so a short or CA-capped life never
    /// renews in a loop).
    pub fn renew_at(&self) -> OffsetDateTime {
        let half: time::Duration = (self.not_after - self.issued_at) / 2;
        self.issued_at + half.max(MIN_RENEWAL)
    }
}

/// Refusals held per workload and request.
#[derive(Default)]
pub struct Held {
    held: Mutex<HashMap<String, (Instant, Status)>>,
}

impl Held {
    fn get(&self, key: &str) -> Option<Status> {
        let mut held = self.held.lock().ok()?;
        match held.get(key) {
            Some((until, status)) if *until > Instant::now() => Some(status.clone()),
            Some(_) => {
                held.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: String, status: &Status, hold: Duration) {
        if hold.is_zero() {
            return;
        }
        if let Ok(mut held) = self.held.lock() {
            if held.len() >= MAX_HELD {
                let now = Instant::now();
                held.retain(|_, (until, _)| *until > now);
            }
            if held.len() < MAX_HELD {
                held.insert(key, (Instant::now() + hold, status.clone()));
            }
        }
    }
}

/// The entries of `entries` this workload's selectors match that may ask
/// for `grant`, one per SPIFFE ID, in a stable order.
pub fn entitled<'a>(entries: &'a [EntryView], selectors: &[String], grant: &str) -> Vec<&'a str> {
    let mut ids: Vec<&str> = entries
        .iter()
        .filter(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        .filter(|e| e.grants.iter().any(|g| g == grant))
        .map(|e| e.spiffe_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Why a broker answer is not a credential, as a gRPC status.
fn refusal(status: u16, body: &[u8]) -> Status {
    let (code, message) = serde_json::from_slice::<ErrorBody>(body).map_or_else(
        |_| {
            (
                "broker_error".to_owned(),
                format!("broker answered {status}"),
            )
        },
        |e| (e.error.code, e.error.message),
    );
    let text = format!("{code}: {message}");
    match status {
        // Held for a human: no SVID until approved.
        202 | 401 | 403 | 404 | 409 => Status::permission_denied(text),
        400 | 413 | 415 | 422 => Status::invalid_argument(text),
        _ => Status::unavailable(text),
    }
}

/// What the Workload API reads of the broker's answer: its credential. The
/// rest (the decision with its numbers, the lease) is skipped unparsed.
#[derive(serde::Deserialize)]
struct Answer {
    credential: Credential,
}

/// An `x509_svid` or `jwt_svid` credential (other fields are skipped).
#[derive(serde::Deserialize)]
struct Credential {
    #[serde(rename = "type")]
    kind: String,
    spiffe_id: String,
    /// X.509-SVIDs: the chain, PEM.
    svid_pem: Option<String>,
    /// JWT-SVIDs: the token.
    token: Option<String>,
}

/// Asks the broker under `grant` for `spiffe_id` on behalf of the workload
/// with `selectors`; a held refusal is answered without asking.
async fn ask(
    agent: &Agent,
    held: &Held,
    hold: Duration,
    selectors: &[String],
    request: CredentialRequest,
) -> Result<Credential, Status> {
    let key = format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        request.grant,
        request.spiffe_id.as_deref().unwrap_or_default(),
        request
            .audience
            .as_deref()
            .unwrap_or_default()
            .join("\u{1e}"),
        selectors.join("\u{1e}")
    );
    if let Some(status) = held.get(&key) {
        return Err(status);
    }
    let (status, _retry_after, body) = agent
        .issue(selectors.to_vec(), request)
        .await
        .map_err(|e| Status::unavailable(format!("broker_unavailable: {}", e.body_message())))?;
    if status.as_u16() == 200 {
        return serde_json::from_slice::<Answer>(&body)
            .map(|a| a.credential)
            .map_err(|e| Status::unavailable(format!("bad broker answer: {e}")));
    }
    let refused = refusal(status.as_u16(), &body);
    if refused.code() == Code::PermissionDenied {
        held.put(key, &refused, hold);
    }
    Err(refused)
}

/// Issues an X.509-SVID for `spiffe_id` under `grant`.
pub async fn x509(
    agent: &Agent,
    held: &Held,
    hold: Duration,
    selectors: &[String],
    grant: &str,
    spiffe_id: &str,
) -> Result<IssuedX509, Status> {
    let (key, csr) = generate_key_and_csr()
        .map_err(|e| Status::internal(format!("key and CSR generation: {e}")))?;
    let issued_at = OffsetDateTime::now_utc();
    let request = CredentialRequest {
        grant: grant.to_owned(),
        spiffe_id: Some(spiffe_id.to_owned()),
        csr: Some(csr),
        ..Default::default()
    };
    let c = ask(agent, held, hold, selectors, request).await?;
    let bad = |why: String| Status::unavailable(format!("bad broker answer: {why}"));
    let (Some(chain_pem), "x509_svid", true) =
        (c.svid_pem, c.kind.as_str(), c.spiffe_id == spiffe_id)
    else {
        return Err(bad(format!(
            "grant {grant} did not answer an X.509-SVID for {spiffe_id}"
        )));
    };
    let chain = certs_from_pem(&chain_pem).map_err(|e| bad(e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
    let info = mintguard_certs::svid::SvidInfo::parse(leaf).map_err(|e| bad(e.to_string()))?;
    if info.spiffe_id.to_string() != spiffe_id {
        return Err(bad("the SVID names another SPIFFE ID".into()));
    }
    Ok(IssuedX509 {
        spiffe_id: spiffe_id.to_owned(),
        chain: chain.iter().flat_map(|c| c.as_ref().to_vec()).collect(),
        chain_pem,
        key,
        issued_at,
        not_after: info.not_after,
        serial: info.serial,
    })
}

/// Issues a JWT-SVID for `spiffe_id` and `audience` under `grant`.
pub async fn jwt(
    agent: &Agent,
    held: &Held,
    hold: Duration,
    selectors: &[String],
    grant: &str,
    spiffe_id: &str,
    audience: &[String],
) -> Result<String, Status> {
    let request = CredentialRequest {
        grant: grant.to_owned(),
        spiffe_id: Some(spiffe_id.to_owned()),
        audience: Some(audience.to_vec()),
        ..Default::default()
    };
    let c = ask(agent, held, hold, selectors, request).await?;
    match (c.kind.as_str(), c.token) {
        ("jwt_svid", Some(token)) if c.spiffe_id == spiffe_id => Ok(token),
        _ => Err(Status::unavailable(format!(
            "bad broker answer: grant {grant} did not answer a JWT-SVID for {spiffe_id}"
        ))),
    }
}
