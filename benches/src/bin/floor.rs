//! The floor under an issuance on this machine: what the parts an issuance
//! cannot do without cost when nothing else runs, measured with the same
//! clients as `loadgen` (N kept-alive mTLS connections from this process,
//! `POST /v1/issue`, a JSON body of the same size).
//!
//! The server here does only the unavoidable work of one issuance: the mTLS
//! listener and HTTP/1.1, parsing the JSON request, one ES256 signature over
//! a workload JWT's claims (the broker's signer), and, unless `--no-store`,
//! one hash-chained record of `--record-bytes` (default 2,560, a JWT
//! decision record's size) and one lease row, group-committed to SQLite
//! (WAL, `synchronous=FULL`, up to 256 per transaction) before the answer.
//! No decision, no canonical JSON, no budget, no metrics, no anomaly
//! analysis: a broker cannot be faster than this on the same machine, so
//! `loadgen`'s figures read against it, in the same run (PERF.md: absolute
//! times move from run to run here).
//!
//! ```text
//! cargo build --release -p mintguard-benches --bins
//! target/release/floor [--clients 32] [--requests 20000] [--record-bytes 2560] [--no-store]
//! ```

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)] // a report tool; setup failures stop it

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_benches::WorkloadClaims;
use mintguard_benches::load::{arg, connect, flag, measure, post};
use mintguard_certs::ca::{CaSettings, CertificateAuthority};
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::jwt::{JwtAlgorithm, SigningKey};
use mintguard_certs::svid;
use mintguard_certs::tls::{SpiffeAcceptor, SpiffeConnector};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// The broker binary's allocator, as in `loadgen`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most records group-committed in one transaction (the broker's batch).
const MAX_BATCH: usize = 256;

/// One record to make durable, answered once its transaction committed.
struct Job {
    body: String,
    lease_id: String,
    expires_at_ms: i64,
    done: oneshot::Sender<()>,
}

/// The group-commit writer: one thread, one connection, one transaction
/// (one fsync) per batch of whatever is queued, each record chained to the
/// previous one by SHA-256.
fn writer(path: &std::path::Path) -> mpsc::Sender<Job> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE log (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
         CREATE TABLE leases (id TEXT PRIMARY KEY, expires_at_ms INTEGER NOT NULL);",
    )
    .unwrap();
    let (tx, mut rx) = mpsc::channel::<Job>(4096);
    std::thread::spawn(move || {
        let (mut seq, mut head) = (0i64, "0".repeat(64));
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            for job in &batch {
                seq += 1;
                let mut hasher = Sha256::new();
                hasher.update(head.as_bytes());
                hasher.update(job.body.as_bytes());
                let hash: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                conn.prepare_cached(
                    "INSERT INTO log(seq, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(rusqlite::params![seq, job.body, head, hash]))
                .unwrap();
                conn.prepare_cached("INSERT INTO leases(id, expires_at_ms) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(rusqlite::params![job.lease_id, job.expires_at_ms]))
                    .unwrap();
                head = hash;
            }
            conn.execute_batch("COMMIT").unwrap();
            for job in batch {
                let _ = job.done.send(());
            }
        }
    });
    tx
}

/// What the server holds.
struct Server {
    key: SigningKey,
    store: Option<mpsc::Sender<Job>>,
    record_bytes: usize,
    next: AtomicU64,
}

impl Server {
    /// One issuance's unavoidable work.
    async fn issue(&self, body: Bytes) -> hyper::Response<Full<Bytes>> {
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return hyper::Response::builder()
                    .status(400)
                    .body(Full::new(Bytes::from(format!("bad json: {e}"))))
                    .unwrap();
            }
        };
        let now = OffsetDateTime::now_utc();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let lease_id = format!("lease-{n:032x}");
        let mut claims = WorkloadClaims::typical(now);
        claims.jti.clone_from(&lease_id);
        let token = self.key.sign(&claims).unwrap();
        let expires_at_ms = claims.exp * 1000;
        if let Some(store) = &self.store {
            // A record of the decision record's size, the request inside it.
            let mut record = format!(r#"{{"lease":"{lease_id}","request":{request},"pad":""#);
            let pad = self.record_bytes.saturating_sub(record.len() + 2);
            record.extend(std::iter::repeat_n('x', pad));
            record.push_str("\"}");
            let (done, durable) = oneshot::channel();
            store
                .send(Job {
                    body: record,
                    lease_id: lease_id.clone(),
                    expires_at_ms,
                    done,
                })
                .await
                .unwrap();
            durable.await.unwrap();
        }
        let answer = serde_json::json!({
            "lease_id": lease_id,
            "expires_at": claims.exp,
            "credential": {"type": "jwt", "token": token, "audience": claims.aud},
        });
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }
}

fn main() {
    let clients = arg("--clients", 32);
    let requests = arg("--requests", 20_000);
    let record_bytes = arg("--record-bytes", 2_560);
    let store = !flag("--no-store");
    let dir = tempfile::tempdir().unwrap();

    let td = id::parse_trust_domain("example.org").unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::in_memory(td.clone(), CaSettings::default(), now).unwrap();
    let hour = Duration::from_secs(3600);
    let server_svid = ca
        .issue_server_svid(
            &id::broker_id(&td),
            &["mintguard-broker".to_owned()],
            hour,
            now,
        )
        .unwrap();
    let node_key = svid::generate_key().unwrap();
    let node_cert = ca
        .issue_svid_from_csr(
            &svid::csr_pem(&node_key).unwrap(),
            &id::node_id(&td, "load-1").unwrap(),
            hour,
            now,
        )
        .unwrap();
    let node = svid::X509Svid::new(vec![node_cert], node_key).unwrap();
    let bundle = ca.bundle(now).unwrap();
    let acceptor =
        Arc::new(SpiffeAcceptor::new(&server_svid, &bundle, IdMatcher::nodes(&td)).unwrap());
    let connector = Arc::new(
        SpiffeConnector::new(Some(&node), &bundle, IdMatcher::exact(id::broker_id(&td))).unwrap(),
    );
    let server = Arc::new(Server {
        key: SigningKey::generate(JwtAlgorithm::Es256).unwrap(),
        store: store.then(|| writer(&dir.path().join("floor.db"))),
        record_bytes,
        next: AtomicU64::new(0),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, server) = (acceptor.clone(), server.clone());
                tokio::spawn(async move {
                    let Ok((tls, _peer)) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let server = server.clone();
                        async move {
                            let body = BodyExt::collect(req.into_body()).await?.to_bytes();
                            Ok::<_, hyper::Error>(server.issue(body).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let issue = Arc::new(
            r#"{"selectors":["unix:uid:1000","unix:gid:1000","unix:sha256:0a1b"],"request":{"grant":"payments-token","ttl_seconds":300}}"#
                .to_owned(),
        );
        for (label, n) in [("warm-up", requests / 10), ("measured", requests)] {
            let (addr, connector, issue) = (addr.clone(), connector.clone(), issue.clone());
            let (_, line) = measure(clients, n, move || {
                let (addr, connector, issue) = (addr.clone(), connector.clone(), issue.clone());
                async move {
                    let sender =
                        Arc::new(tokio::sync::Mutex::new(connect(&addr, &connector).await));
                    move || {
                        let (issue, sender) = (issue.clone(), sender.clone());
                        async move { post(&mut *sender.lock().await, "/v1/issue", &issue).await.0 }
                    }
                }
            })
            .await;
            if label == "measured" {
                println!("{clients} clients, floor (mTLS + HTTP/1.1 + JSON + ES256{}): {line}",
                    if store { " + durable record" } else { "" });
            }
        }
    });
    if store {
        println!(
            "store: SQLite WAL, synchronous=FULL (fsync per commit), group commit of up to {MAX_BATCH} records of {record_bytes} bytes and a lease row per transaction"
        );
    } else {
        println!("store: none (--no-store)");
    }
}
