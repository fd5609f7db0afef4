//! SVIDs through the SPIFFE Workload API of the real `mintguard-agent` and
//! `mintguard-broker`, against OpenBao's PKI engine on the same machine, in
//! interleaved rounds of one run (medians and ratios; the machine is shared).
//!
//! - X.509-SVIDs via `FetchX509SVID` (the agent generates a P-256 key and a
//!   CSR for each; the broker decides, writes the durable record and signs),
//!   one stream per SVID, against OpenBao's `pki/issue/ROLE` (a P-256 key
//!   generated server-side) with a stored role and a `no_store` role;
//! - JWT-SVIDs via `FetchJWTSVID` against Mintguard JWTs via the agent's
//!   HTTP API (`POST /v1/credentials`);
//! - the broker alone (the node's mTLS, `POST /v1/issue`) for X.509-SVIDs and
//!   JWTs, to tell the broker's share of the X.509 path from the agent's.
//!
//! ```text
//! cargo build --release -p mintguard-broker -p mintguard-agent -p mintguard-benches --bins
//! tests/peers.sh target/release/svidload [--clients 32] [--requests 5000] [--rounds 3] [--only x509,bao]
//! ```
//! `--only` runs some of the paths: `x509` (via the agent), `direct` (the
//! broker alone, both kinds), `bao` (both roles), `jwt` (both agent paths); a
//! ratio with a side that did not run prints NaN.
//! Needs `VAULT_ADDR` and `VAULT_TOKEN` (an OpenBao root token; tests/peers.sh).

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)] // a report tool; setup failures stop it

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_agent::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use mintguard_agent::workload_api::proto::{JwtsvidRequest, X509svidRequest};
use mintguard_benches::load::{
    Kill, arg, arg_str, free_port, measure, sha256_hex, sibling, wait_for,
};

/// One call to OpenBao: the status.
async fn bao(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    token: &str,
    path: &str,
    body: &str,
) -> (u16, Bytes) {
    sender.ready().await.unwrap();
    let req = hyper::Request::post(path)
        .header("host", host)
        .header("x-vault-token", token)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

async fn bao_connect(host: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A PKI engine with a root CA and two roles for SPIFFE IDs: stored and `no_store`.
async fn setup_pki(host: &str, token: &str) {
    let mut s = bao_connect(host).await;
    let _ = bao(
        &mut s,
        host,
        token,
        "/v1/sys/mounts/pki",
        r#"{"type":"pki","config":{"max_lease_ttl":"87600h"}}"#,
    )
    .await;
    let (status, body) = bao(
        &mut s,
        host,
        token,
        "/v1/pki/root/generate/internal",
        r#"{"common_name":"example.org","ttl":"87600h","key_type":"ec","key_bits":256}"#,
    )
    .await;
    assert!(status == 200 || status == 204, "root: {status} {body:?}");
    for (role, no_store) in [("svid", false), ("svid-nostore", true)] {
        let (status, body) = bao(
            &mut s,
            host,
            token,
            &format!("/v1/pki/roles/{role}"),
            &format!(
                r#"{{"allowed_uri_sans":"spiffe://example.org/*","allow_any_name":true,"require_cn":false,"key_type":"ec","key_bits":256,"max_ttl":"1h","no_store":{no_store},"generate_lease":false}}"#
            ),
        )
        .await;
        assert!(
            status == 200 || status == 204,
            "role {role}: {status} {body:?}"
        );
    }
}

/// A Workload API request with the SPIFFE security header.
fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let clients = arg("--clients", 32);
    let requests = arg("--requests", 5_000);
    let rounds = arg("--rounds", 3);
    let only = arg_str("--only");
    let run_path = |path: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == path))
    };
    let skipped = || async { (f64::NAN, String::new()) };
    let vault_addr = std::env::var("VAULT_ADDR").expect("needs VAULT_ADDR (tests/peers.sh)");
    let vault_token = std::env::var("VAULT_TOKEN").expect("needs VAULT_TOKEN (tests/peers.sh)");
    let bao_host = vault_addr.trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (public, agents, admin) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(
        root.join("policies/all.cedar"),
        r#"permit (principal, action == Mintguard::Action::"mint", resource);"#,
    )
    .unwrap();
    std::fs::write(
        root.join("broker.toml"),
        format!(
            r#"
trust_domain = "example.org"
data_dir = "data"
issuer_url = "https://mintguard.example.org"
[listen]
public = "127.0.0.1:{public}"
agents = "127.0.0.1:{agents}"
admin = "127.0.0.1:{admin}"
[policies]
cedar = "policies"
[limits]
per_node_per_second = 1000000
per_identity_per_second = 1000000
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = {{ audience = "payments" }}
[[grants]]
name = "x509-svid"
kind = "x509_svid"
max_ttl = "1h"
[[grants]]
name = "jwt-svid"
kind = "jwt_svid"
max_ttl = "5m"
jwt_svid = {{ audiences = ["payments"] }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("agent.toml"),
        format!(
            r#"
data_dir = "agent-data"
[broker]
public = "127.0.0.1:{public}"
agents = "127.0.0.1:{agents}"
spiffe_id = "spiffe://example.org/mintguard/broker"
trust_bundle = "data/bundle.pem"
[socket]
path = "agent.sock"
mode = "0600"
[workload_api]
socket = "workload.sock"
mode = "0600"
refusal_hold = "0s"
"#
        ),
    )
    .unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(Command::new(sibling("mintguard-broker"))
        .args(["operator", "create", "bench", "--config"])
        .arg(root.join("broker.toml")));
    let _broker = Kill(
        Command::new(sibling("mintguard-broker"))
            .args(["run", "--config"])
            .arg(root.join("broker.toml"))
            .stderr(std::fs::File::create(root.join("broker.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&root.join("data/listen.json"), None);
    let mg = |args: &[&str]| {
        run(Command::new(sibling("mintguard"))
            .arg("--data-dir")
            .arg(root.join("data"))
            .args(args))
    };
    let token: serde_json::Value =
        serde_json::from_slice(&mg(&["token", "create", "--node", "node-1"])).unwrap();
    let sha = sha256_hex(&std::fs::read("/proc/self/exe").unwrap());
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap();
    mg(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/ns/pay/sa/api",
        "--parent",
        "node-1",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--selector",
        &format!("unix:sha256:{sha}"),
        "--grant",
        "payments-token",
        "--grant",
        "x509-svid",
        "--grant",
        "jwt-svid",
    ]);
    let _agent = Kill(
        Command::new(sibling("mintguard-agent"))
            .args(["run", "--config"])
            .arg(root.join("agent.toml"))
            .env("MINTGUARD_JOIN_TOKEN", token["token"].as_str().unwrap())
            .env("RUST_LOG", "warn,mintguard_agent=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&root.join("agent.log"), Some("serving workloads"));
    let api = Arc::new(format!("unix://{}", root.join("workload.sock").display()));
    let http = Arc::new(root.join("agent.sock"));
    // The broker alone, as the agent asks it (its node SVID, `POST /v1/issue`):
    // where the X.509 path's cost lies, broker or agent.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("agent-data/node.json")).unwrap()).unwrap();
    let node_svid = mintguard_certs::svid::X509Svid::from_pem(
        stored["svid_pem"].as_str().unwrap(),
        stored["key_pem"].as_str().unwrap(),
    )
    .unwrap();
    let td = mintguard_certs::id::parse_trust_domain("example.org").unwrap();
    let bundle = mintguard_certs::bundle::TrustBundle::from_pem(
        td.clone(),
        &std::fs::read_to_string(root.join("data/bundle.pem")).unwrap(),
    )
    .unwrap();
    let connector = Arc::new(
        mintguard_certs::tls::SpiffeConnector::new(
            Some(&node_svid),
            &bundle,
            mintguard_certs::id::IdMatcher::exact(mintguard_certs::id::broker_id(&td)),
        )
        .unwrap(),
    );
    let listen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("data/listen.json")).unwrap())
            .unwrap();
    let agents_addr = Arc::new(listen["agents"].as_str().unwrap().to_owned());
    let selectors = Arc::new(serde_json::json!([
        format!("unix:uid:{uid}"),
        format!("unix:sha256:{sha}")
    ]));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        setup_pki(&bao_host, &vault_token).await;
        // The agent learns the entry at its first poll.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut results: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for round in 0..=rounds {
            // Round 0 warms every path up and is not counted.
            let n = if round == 0 { requests / 10 } else { requests };
            let x509 = if !run_path("x509") {
                skipped().await
            } else {
                let api = api.clone();
                measure(clients, n, move || {
                    let api = api.clone();
                    async move {
                        let endpoint: spiffe::transport::Endpoint = api.parse().unwrap();
                        let channel = spiffe::transport::connect(&endpoint).await.unwrap();
                        let client = SpiffeWorkloadApiClient::new(channel);
                        move || {
                            let mut client = client.clone();
                            async move {
                                let Ok(res) =
                                    client.fetch_x509svid(with_header(X509svidRequest {})).await
                                else {
                                    return 500;
                                };
                                let mut stream = res.into_inner();
                                match stream.message().await {
                                    Ok(Some(m)) if !m.svids.is_empty() => 200,
                                    _ => 500,
                                }
                            }
                        }
                    }
                })
                .await
            };
            let direct = |grant: &'static str, csr: bool| {
                let (addr, connector, selectors) =
                    (agents_addr.clone(), connector.clone(), selectors.clone());
                measure(clients, n, move || {
                    let (addr, connector, selectors) =
                        (addr.clone(), connector.clone(), selectors.clone());
                    async move {
                        let sender = Arc::new(tokio::sync::Mutex::new(
                            mintguard_benches::load::connect(&addr, &connector).await,
                        ));
                        move || {
                            let (sender, selectors) = (sender.clone(), selectors.clone());
                            async move {
                                let mut request = serde_json::json!({"grant": grant});
                                if csr {
                                    // As the agent does: a fresh key and CSR each.
                                    let (_key, csr) =
                                        mintguard_certs::svid::generate_key_and_csr().unwrap();
                                    request["csr"] = csr.into();
                                }
                                let body = serde_json::json!({"selectors": *selectors, "request": request});
                                let mut sender = sender.lock().await;
                                mintguard_benches::load::post(&mut sender, "/v1/issue", &body.to_string())
                                    .await
                                    .0
                            }
                        }
                    }
                })
            };
            let (x509_direct, jwt_direct) = if run_path("direct") {
                (direct("x509-svid", true).await, direct("payments-token", false).await)
            } else {
                (skipped().await, skipped().await)
            };
            let mut bao_rounds = Vec::new();
            for role in ["svid", "svid-nostore"] {
                if !run_path("bao") {
                    bao_rounds.push(skipped().await);
                    continue;
                }
                let (host, token) = (Arc::new(bao_host.clone()), Arc::new(vault_token.clone()));
                let result = measure(clients, n, move || {
                    let (host, token) = (host.clone(), token.clone());
                    async move {
                        let sender = Arc::new(tokio::sync::Mutex::new(bao_connect(&host).await));
                        move || {
                            let (host, token, sender) = (host.clone(), token.clone(), sender.clone());
                            async move {
                                let mut sender = sender.lock().await;
                                bao(
                                    &mut sender,
                                    &host,
                                    &token,
                                    &format!("/v1/pki/issue/{role}"),
                                    r#"{"uri_sans":"spiffe://example.org/ns/pay/sa/api","ttl":"1h"}"#,
                                )
                                .await
                                .0
                            }
                        }
                    }
                })
                .await;
                bao_rounds.push(result);
            }
            let jwt_svid = if !run_path("jwt") {
                skipped().await
            } else {
                let api = api.clone();
                measure(clients, n, move || {
                    let api = api.clone();
                    async move {
                        let endpoint: spiffe::transport::Endpoint = api.parse().unwrap();
                        let channel = spiffe::transport::connect(&endpoint).await.unwrap();
                        let client = SpiffeWorkloadApiClient::new(channel);
                        move || {
                            let mut client = client.clone();
                            async move {
                                let req = with_header(JwtsvidRequest {
                                    audience: vec!["payments".into()],
                                    spiffe_id: String::new(),
                                });
                                match client.fetch_jwtsvid(req).await {
                                    Ok(r) if !r.get_ref().svids.is_empty() => 200,
                                    _ => 500,
                                }
                            }
                        }
                    }
                })
                .await
            };
            let jwt_http = if !run_path("jwt") {
                skipped().await
            } else {
                let http = http.clone();
                measure(clients, n, move || {
                    let http = http.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(http.as_path()).await.unwrap();
                        let (sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                        tokio::spawn(conn);
                        let sender = Arc::new(tokio::sync::Mutex::new(sender));
                        move || {
                            let sender = sender.clone();
                            async move {
                                let mut sender = sender.lock().await;
                                sender.ready().await.unwrap();
                                let req = hyper::Request::post("/v1/credentials")
                                    .header("host", "agent")
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(br#"{"grant":"payments-token"}"#)))
                                    .unwrap();
                                let res = sender.send_request(req).await.unwrap();
                                let status = res.status().as_u16();
                                let _ = res.into_body().collect().await.unwrap();
                                status
                            }
                        }
                    }
                })
                .await
            };
            if round == 0 {
                continue;
            }
            let lines = [
                ("x509_svid_mintguard", "X.509-SVIDs via the Workload API (decision + durable record)", x509),
                ("x509_broker_direct", "X.509-SVIDs from the broker alone (node mTLS, POST /v1/issue, client-made key and CSR)", x509_direct),
                ("jwt_broker_direct", "JWTs from the broker alone (node mTLS, POST /v1/issue)", jwt_direct),
                ("x509_bao_stored", "OpenBao pki/issue (stored)", bao_rounds.remove(0)),
                ("x509_bao_nostore", "OpenBao pki/issue (no_store)", bao_rounds.remove(0)),
                ("jwt_svid_api", "JWT-SVIDs via FetchJWTSVID", jwt_svid),
                ("jwt_http", "Mintguard JWTs via the agent's HTTP API", jwt_http),
            ];
            for (key, label, (rate, line)) in lines {
                if rate.is_nan() {
                    continue;
                }
                println!("round {round}, {clients} clients, {label}: {line}");
                results.entry(key).or_default().push(rate);
            }
        }
        let m = |k: &str| results.get(k).map_or(f64::NAN, |v| median(v.clone()));
        println!("medians over {rounds} interleaved rounds ({clients} clients, {requests} requests each):");
        for (k, v) in &results {
            println!("  {k}: {:.0}/s (rounds: {v:.0?})", median(v.clone()));
        }
        println!(
            "ratios: Mintguard X.509-SVID / OpenBao stored pki/issue {:.2}; / no_store {:.2}; FetchJWTSVID / HTTP JWT {:.2}",
            m("x509_svid_mintguard") / m("x509_bao_stored"),
            m("x509_svid_mintguard") / m("x509_bao_nostore"),
            m("jwt_svid_api") / m("jwt_http"),
        );
        println!(
            "broker alone: X.509-SVID / OpenBao stored pki/issue {:.2}; X.509 / JWT {:.2}; through the agent / broker alone: X.509 {:.2}, JWT {:.2}",
            m("x509_broker_direct") / m("x509_bao_stored"),
            m("x509_broker_direct") / m("jwt_broker_direct"),
            m("x509_svid_mintguard") / m("x509_broker_direct"),
            m("jwt_http") / m("jwt_broker_direct"),
        );
    });
    println!("broker store: SQLite WAL, synchronous=FULL (fsync per commit), group commit");
}
