//! The SPIFFE Workload API of the real `mintguard-agent` (with the real
//! `mintguard-broker`), used by unmodified SPIFFE clients: py-spiffe (PyPI
//! `spiffe` 0.3.x, in `MINTGUARD_SPIFFE_PYTHON`'s environment, installed by
//! tests/peers.sh) as separate processes of two Unix users, and the Rust
//! `spiffe` crate from this test process. Every SVID is a broker decision
//! and one record; a suspension ends the suspended workload's stream, puts
//! its serial in the CRL, and its mTLS connections fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::Value;

const GRANTS: &str = r#"
[[grants]]
name = "x509-svid"
kind = "x509_svid"
max_ttl = "20s"

[[grants]]
name = "jwt-svid"
kind = "jwt_svid"
max_ttl = "5m"
jwt_svid = { audiences = ["payments-api", "ledger"] }
"#;

fn spiffe_python() -> String {
    std::env::var("MINTGUARD_SPIFFE_PYTHON")
        .unwrap_or_else(|_| "/opt/mintguard-spiffe-venv/bin/python".into())
}

/// A broker and an agent serving the Workload API on `sock/workload.sock`.
fn node_with_workload_api() -> Node {
    let mut node = Node::with_broker_config(GRANTS);
    let agent = node.root().join("agent.toml");
    let mut config = std::fs::read_to_string(&agent).unwrap();
    config.push_str(
        "\n[workload_api]\nsocket = \"sock/workload.sock\"\npoll_interval = \"300ms\"\nrefusal_hold = \"1s\"\n",
    );
    std::fs::write(&agent, config).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spiffe_workload.py"),
        node.root().join("spiffe_workload.py"),
    )
    .unwrap();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    node
}

fn api_socket(node: &Node) -> PathBuf {
    node.root().join("sock/workload.sock")
}

/// Runs the py-spiffe workload to its end; its JSON lines.
fn spiffe(node: &Node, as_user: Option<&str>, args: &[&str]) -> Vec<Value> {
    let out = spiffe_command(node, as_user, args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn spiffe_command(node: &Node, as_user: Option<&str>, args: &[&str]) -> Command {
    let py = spiffe_python();
    let mut cmd = match as_user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", &py]);
            c
        }
        None => Command::new(&py),
    };
    cmd.arg(node.root().join("spiffe_workload.py")).args(args);
    cmd
}

/// A py-spiffe workload that keeps running: lines in, JSON lines out.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl Running {
    fn start(node: &Node, as_user: Option<&str>, args: &[&str]) -> Self {
        let mut child = spiffe_command(node, as_user, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next line, waiting at most `limit` (a bound on a hang).
    fn next(&self, limit: Duration) -> Value {
        self.lines
            .recv_timeout(limit)
            .expect("the workload printed nothing in time")
    }

    /// The `watch` command's last line: how its stream ended.
    fn until_ended(&self) -> Value {
        loop {
            let line = self.next(Duration::from_secs(30));
            if line.get("ended").is_some() {
                return line;
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decision records of `grant`, by outcome.
fn decisions(node: &Node, grant: &str) -> Vec<Value> {
    let out = node.mg(&["logs", "--json"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "decision" && r["grant"] == grant)
        .collect()
}

/// The serials of the X.509-SVIDs the log records as issued.
fn recorded_serials(node: &Node) -> Vec<String> {
    decisions(node, "x509-svid")
        .iter()
        .filter(|r| r["outcome"] == "allow")
        .map(|r| {
            r["body"]["credential"]["serial"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn assert_log_verifies_and_replays(node: &Node) {
    let verify = node.mg(&["logs", "verify"]);
    assert!(
        verify.status.success(),
        "logs verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let replay = node.mg(&["replay"]);
    assert!(
        replay.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&replay.stdout)
    );
    let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replay["differences"], serde_json::json!([]), "{replay}");
}

fn claims_of(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').nth(i).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    (part(0), part(1))
}

fn agent_log(node: &Node) -> String {
    std::fs::read_to_string(node.root().join("agent.toml.log")).unwrap_or_default()
}

#[test]
fn unmodified_spiffe_clients_get_decided_and_logged_svids() {
    let node = node_with_workload_api();
    let id = "spiffe://example.org/w/py";
    node.entry_with_grants(id, &["unix:uid:0".to_owned()], &["x509-svid", "jwt-svid"]);
    let sock = api_socket(&node);
    let sock = sock.to_str().unwrap();
    // The agent learns the entry at its next poll.
    wait_for(
        "the entry to reach the agent",
        Duration::from_secs(20),
        || spiffe(&node, None, &["jwt", sock, "payments-api"])[0]["spiffe_id"] == id,
    );

    // py-spiffe: X.509-SVID, bundles, a JWT-SVID, the JWT bundle, validation.
    let fetched = &spiffe(&node, None, &["fetch", sock, "payments-api"])[0];
    assert_eq!(fetched["spiffe_id"], id, "{fetched}");
    assert_eq!(fetched["chain"], 1);
    assert_eq!(fetched["key_type"], "ec");
    assert_eq!(fetched["x509_bundle_roots"], 1);
    assert_eq!(fetched["jwt_spiffe_id"], id);
    assert_eq!(fetched["jwt_audience"], serde_json::json!(["payments-api"]));
    assert_eq!(fetched["validated"], id);
    let (header, claims) = claims_of(fetched["jwt_token"].as_str().unwrap());
    let mut header_keys: Vec<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    header_keys.sort_unstable();
    assert_eq!(header_keys, ["alg", "kid", "typ"], "{header}");
    assert_eq!(header["alg"], "ES256");
    assert!(
        fetched["jwt_bundle_kids"]
            .as_array()
            .unwrap()
            .contains(&header["kid"]),
        "{fetched}"
    );
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["aud"], serde_json::json!(["payments-api"]));
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    assert!(claims["jti"].as_str().unwrap().starts_with("lease"));

    // An audience outside the grant is refused.
    let refused = &spiffe(&node, None, &["jwt", sock, "billing"])[0];
    assert_eq!(refused["code"], "PERMISSION_DENIED", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("audience_not_allowed"),
        "{refused}"
    );

    // An X509Source receives the renewed SVID on its one stream (20 s TTL:
    // renewed at half-life, each renewal a decision).
    let opened = |log: &str| log.matches("X.509-SVID stream opened").count();
    let before = opened(&agent_log(&node));
    let renewed = spiffe(&node, None, &["renew", sock, "25"]);
    let serials: Vec<&str> = renewed
        .iter()
        .map(|l| l["serial"].as_str().unwrap())
        .collect();
    assert!(
        serials.len() >= 2,
        "no renewal reached the source: {renewed:?}"
    );
    assert_eq!(
        opened(&agent_log(&node)) - before,
        1,
        "the source renewed over its one stream"
    );

    // The Rust `spiffe` crate, from this process (uid 0 as well).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rust_serial = runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{sock}"))
            .await
            .unwrap();
        let svid = client.fetch_x509_svid().await.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), id);
        let jwt = client.fetch_jwt_svid(["ledger"], None).await.unwrap();
        assert_eq!(jwt.spiffe_id().to_string(), id);
        let validated = client
            .validate_jwt_token("ledger", jwt.token())
            .await
            .unwrap();
        assert_eq!(validated.spiffe_id().to_string(), id);
        let wrong = client.validate_jwt_token("payments-api", jwt.token()).await;
        assert!(wrong.is_err(), "a token for another audience validates");
        let bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(
            bundles
                .get(svid.spiffe_id().trust_domain())
                .is_some_and(|b| b.jwt_authorities().next().is_some())
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
        parsed.raw_serial_as_string().replace(':', "")
    });

    // Every SVID a client saw has exactly one record; replay and verify pass.
    let recorded = recorded_serials(&node);
    let mut seen: Vec<String> = serials.iter().map(|s| (*s).to_owned()).collect();
    seen.push(fetched["serial"].as_str().unwrap().to_owned());
    seen.push(rust_serial);
    for serial in &seen {
        let n = recorded
            .iter()
            .filter(|r| r.trim_start_matches('0') == serial.trim_start_matches('0'))
            .count();
        assert_eq!(n, 1, "serial {serial}: {n} records in {recorded:?}");
    }
    let record = decisions(&node, "x509-svid")
        .into_iter()
        .find(|r| r["outcome"] == "allow")
        .unwrap();
    let cred = &record["body"]["credential"];
    assert_eq!(cred["spiffe_id"], id);
    assert!(cred["not_after"].as_i64().is_some() && cred["key_sha256"].is_string());
    assert!(
        record["body"]["request"].get("csr").is_none(),
        "the CSR is not recorded: {record}"
    );
    assert!(
        decisions(&node, "jwt-svid")
            .iter()
            .any(|r| r["outcome"] == "allow" && r["body"]["request"]["audience"][0] == "ledger")
    );
    assert_log_verifies_and_replays(&node);
}

/// The DER of a CSR built by `openssl req` for a key of `algorithm`.
fn openssl_csr(dir: &Path, algorithm: &[&str]) -> String {
    let key = dir.join("csr-key.pem");
    let out = Command::new("openssl")
        .arg("req")
        .arg("-new")
        .args(algorithm)
        .arg("-nodes")
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", "/O=attacker"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_workload_api_refuses_what_it_must() {
    let mut node = node_with_workload_api();
    let id = "spiffe://example.org/w/root";
    node.entry_with_grants(id, &["unix:uid:0".to_owned()], &["x509-svid", "jwt-svid"]);
    let sock = api_socket(&node);
    let sock_str = sock.to_str().unwrap();
    wait_for(
        "the entry to reach the agent",
        Duration::from_secs(20),
        || spiffe(&node, None, &["jwt", sock_str, "ledger"])[0]["spiffe_id"] == id,
    );

    // A process no entry matches (the test user) is refused.
    let user = test_user();
    let denied = &spiffe(&node, Some(&user), &["jwt", sock_str, "ledger"])[0];
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");

    // Raw calls (the generated client): the security header, WIT-SVIDs.
    use mintguard_agent::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use mintguard_agent::workload_api::proto::{JwtsvidRequest, WitsvidRequest, X509svidRequest};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint: spiffe::transport::Endpoint = format!("unix://{sock_str}").parse().unwrap();
        let channel = spiffe::transport::connect(&endpoint).await.unwrap();
        let mut raw = SpiffeWorkloadApiClient::new(channel);
        let no_header = raw.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
        assert_eq!(
            no_header.code(),
            tonic::Code::InvalidArgument,
            "{no_header}"
        );
        let no_header = raw
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec!["ledger".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(no_header.code(), tonic::Code::InvalidArgument);
        let mut wit = tonic::Request::new(WitsvidRequest::default());
        wit.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let wit = raw.fetch_witsvid(wit).await.unwrap_err();
        assert_eq!(wit.code(), tonic::Code::Unimplemented);
        let mut empty = tonic::Request::new(JwtsvidRequest::default());
        empty
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let empty = raw.fetch_jwtsvid(empty).await.unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    });

    // By hand with the node's own SVID: CSRs never yield more than the
    // decided identity; a second node cannot vouch for node 1's workload.
    let node1 = node_client(node.root(), "agent-data");
    let ask = |client: &mintguard_agent::broker::BrokerClient, request: Value| {
        let body = serde_json::json!({"selectors": ["unix:uid:0"], "request": request});
        let reply = runtime
            .block_on(client.send("POST", "/v1/issue", Some(body.to_string().into_bytes())))
            .unwrap();
        (
            reply.status,
            serde_json::from_slice::<Value>(&reply.body).unwrap(),
        )
    };
    let before = recorded_serials(&node).len();
    // An RSA key is not an SVID key this CA signs.
    let rsa = openssl_csr(node.root(), &["-newkey", "rsa:2048"]);
    let (status, answer) = ask(
        &node1,
        serde_json::json!({"grant": "x509-svid", "csr": rsa}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("bad_csr")),
        "{answer}"
    );
    // A CSR asking to be a CA for other names gets a leaf for the ID alone.
    let greedy = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/w/admin".try_into().unwrap(),
        ));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.serialize_request(&key).unwrap().pem().unwrap()
    };
    let (status, answer) = ask(
        &node1,
        serde_json::json!({"grant": "x509-svid", "csr": greedy}),
    );
    assert_eq!(status, 200, "{answer}");
    let chain =
        mintguard_certs::svid::certs_from_pem(answer["credential"]["svid_pem"].as_str().unwrap())
            .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, [format!("URI({id})")], "one URI SAN, the decided ID");
    assert!(!leaf.is_ca());
    let usage = leaf.key_usage().unwrap().unwrap();
    assert!(usage.critical && usage.value.digital_signature() && !usage.value.key_cert_sign());
    // Material the kind does not take, or lacks.
    let (status, answer) = ask(&node1, serde_json::json!({"grant": "x509-svid"}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("csr_required"))
    );
    let (status, answer) = ask(&node1, serde_json::json!({"grant": "jwt-svid"}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("audience_required"))
    );
    let (status, answer) = ask(
        &node1,
        serde_json::json!({"grant": "payments-token", "csr": greedy}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("csr_not_expected"))
    );
    assert_eq!(
        recorded_serials(&node).len(),
        before + 1,
        "refused material is never decided, spent or recorded"
    );

    // Node 2 forging node 1's workload.
    let token2 = node.mg_json(&["token", "create", "--node", "node-2", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = node.second_agent_config();
    node.start_agent(Some(&token2), second).unwrap();
    let node2 = node_client(node.root(), "agent2-data");
    let csr =
        mintguard_certs::svid::csr_pem(&mintguard_certs::svid::generate_key().unwrap()).unwrap();
    let (status, answer) = ask(
        &node2,
        serde_json::json!({"grant": "x509-svid", "spiffe_id": id, "csr": csr}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("not_attested")),
        "{answer}"
    );
}

#[test]
fn a_suspended_workload_loses_its_stream_its_serial_is_revoked_and_its_mtls_fails() {
    let node = node_with_workload_api();
    let user = test_user();
    let (a, b) = ("spiffe://example.org/w/a", "spiffe://example.org/w/b");
    node.entry_with_grants(a, &["unix:uid:0".to_owned()], &["x509-svid"]);
    node.entry_with_grants(b, &[format!("unix:uid:{}", uid_of(&user))], &["x509-svid"]);
    let sock = api_socket(&node);
    let sock = sock.to_str().unwrap();
    wait_for(
        "the entries to reach the agent",
        Duration::from_secs(20),
        || {
            spiffe(&node, Some(&user), &["crl", sock])
                .first()
                .is_some_and(|l| l["serials"].is_array())
        },
    );

    // A serves (checking the CRL; and a second server that does not), B connects.
    let (port, port_nocrl) = (free_port(), free_port());
    let server = Running::start(&node, None, &["serve", sock, &port.to_string()]);
    assert_eq!(server.next(Duration::from_secs(30))["spiffe_id"], a);
    let lax = Running::start(
        &node,
        None,
        &["serve", sock, &port_nocrl.to_string(), "nocrl"],
    );
    assert_eq!(lax.next(Duration::from_secs(30))["spiffe_id"], a);
    let watcher = Running::start(&node, Some(&user), &["watch", sock]);
    let first = watcher.next(Duration::from_secs(30));
    assert_eq!(first["crls"], 1, "{first}");
    let mut client = Running::start(&node, Some(&user), &["client", sock]);
    assert_eq!(client.next(Duration::from_secs(30))["ready"], b);
    client.send(&port.to_string());
    let ok = client.next(Duration::from_secs(30));
    assert_eq!(
        (ok["server"].as_str(), ok["seen_as"].as_str()),
        (Some(a), Some(b)),
        "{ok}"
    );
    let b_serial = ok["own_serial"].as_str().unwrap().to_owned();

    // Suspend B: its stream ends with PermissionDenied, its serial is in the CRL.
    let out = node.mg(&["suspend", b, "--reason", "test: compromised"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = watcher.until_ended();
    assert_eq!(ended["ended"], "PERMISSION_DENIED", "{ended}");
    let crl = &spiffe(&node, None, &["crl", sock])[0];
    let listed: Vec<&str> = crl["serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        listed
            .iter()
            .any(|s| s.trim_start_matches('0') == b_serial.trim_start_matches('0')),
        "{b_serial} not in the CRL {listed:?}"
    );
    assert!(
        agent_log(&node).contains("suspended; ending its X.509-SVID stream"),
        "the agent says why the stream ended"
    );
    // B's source reconnects and is refused: each a decision, one per hold.
    wait_for("a refused decision for B", Duration::from_secs(30), || {
        decisions(&node, "x509-svid")
            .iter()
            .any(|r| r["identity"] == b && r["outcome"] != "allow")
    });

    // B's next connection to the CRL-checking server fails at once; to the
    // lax one, once its SVID expired (20 s TTL).
    client.send(&port.to_string());
    let revoked = client.next(Duration::from_secs(30));
    assert!(
        revoked.get("error").is_some(),
        "a revoked SVID connected: {revoked}"
    );
    let started = Instant::now();
    let mut expired = false;
    while started.elapsed() < Duration::from_secs(45) {
        client.send(&port_nocrl.to_string());
        let answer = client.next(Duration::from_secs(30));
        if answer.get("error").is_some() {
            expired = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(expired, "B's SVID kept working past its expiry");
    // A is unaffected: a fresh source of A's identity starts.
    let a_client = Running::start(&node, None, &["client", sock]);
    assert_eq!(a_client.next(Duration::from_secs(30))["ready"], a);

    assert_log_verifies_and_replays(&node);
}

/// The next SDS response, waiting at most 40 s (a bound on a hang).
async fn next(
    responses: &mut tonic::Streaming<
        mintguard_agent::workload_api::proto::envoy::service::discovery::v3::DiscoveryResponse,
    >,
    what: &str,
) -> mintguard_agent::workload_api::proto::envoy::service::discovery::v3::DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(40), responses.message())
        .await
        .unwrap_or_else(|_| panic!("no {what} in time"))
        .unwrap()
        .unwrap()
}

/// The serial (hex) of the leaf of a PEM chain.
fn leaf_serial(chain_pem: &[u8]) -> String {
    let chain =
        mintguard_certs::svid::certs_from_pem(std::str::from_utf8(chain_pem).unwrap()).unwrap();
    mintguard_certs::svid::SvidInfo::parse(&chain[0])
        .unwrap()
        .serial
}

#[test]
fn envoy_sds_serves_decided_certificates_and_bundles() {
    use mintguard_agent::workload_api::proto::envoy::config::core::v3::{Node as EnvoyNode, data_source};
    use mintguard_agent::workload_api::proto::envoy::extensions::transport_sockets::tls::v3::{
        Secret, SpiffeCertValidatorConfig, secret,
    };
    use mintguard_agent::workload_api::proto::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DiscoveryRequest,
    };
    use mintguard_agent::workload_api::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use mintguard_agent::workload_api::proto::google::rpc::Status as RpcStatus;
    use mintguard_agent::workload_api::sds::{SECRET_TYPE, SPIFFE_VALIDATOR};
    use prost::Message;

    let node = node_with_workload_api();
    let id = "spiffe://example.org/w/envoy";
    node.entry_with_grants(id, &["unix:uid:0".to_owned()], &["x509-svid"]);
    let sock = api_socket(&node);
    let sock = sock.to_str().unwrap().to_owned();
    wait_for(
        "the entry to reach the agent",
        Duration::from_secs(20),
        || {
            spiffe(&node, None, &["crl", &sock])
                .first()
                .is_some_and(|l| l["serials"].is_array())
        },
    );
    let inline = |d: &Option<
        mintguard_agent::workload_api::proto::envoy::config::core::v3::DataSource,
    >|
     -> Vec<u8> {
        match d.as_ref().and_then(|d| d.specifier.clone()) {
            Some(data_source::Specifier::InlineBytes(b)) => b,
            other => panic!("not inline bytes: {other:?}"),
        }
    };
    let decode = |any: &prost_types::Any| -> Secret {
        assert_eq!(any.type_url, SECRET_TYPE);
        Secret::decode(any.value.as_slice()).unwrap()
    };
    let request = |names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(EnvoyNode {
            id: "envoy-1".into(),
            cluster: "payments".into(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let serials = runtime.block_on(async {
        let endpoint: spiffe::transport::Endpoint = format!("unix://{sock}").parse().unwrap();
        let channel = spiffe::transport::connect(&endpoint).await.unwrap();
        // No `workload.spiffe.io` header on any call: Envoy sends none.
        let mut sds = SecretDiscoveryServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(request(&[id, "ROOTCA"], "", "")).await.unwrap();
        let mut responses = sds
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = next(&mut responses, "first response").await;
        assert_eq!(
            (first.version_info.as_str(), first.type_url.as_str()),
            ("1", SECRET_TYPE)
        );
        assert!(!first.nonce.is_empty());
        assert_eq!(first.resources.len(), 2);
        let tls = decode(&first.resources[0]);
        assert_eq!(tls.name, id);
        let Some(secret::Type::TlsCertificate(cert)) = tls.r#type else {
            panic!("not a TlsCertificate: {tls:?}")
        };
        let chain = inline(&cert.certificate_chain);
        let key = String::from_utf8(inline(&cert.private_key)).unwrap();
        let svid =
            mintguard_certs::svid::X509Svid::from_pem(std::str::from_utf8(&chain).unwrap(), &key)
                .unwrap();
        assert_eq!(svid.spiffe_id().to_string(), id);
        let first_serial = leaf_serial(&chain);
        let root = decode(&first.resources[1]);
        assert_eq!(root.name, "ROOTCA");
        let Some(secret::Type::ValidationContext(ctx)) = root.r#type else {
            panic!("not a validation context: {root:?}")
        };
        assert!(
            !mintguard_certs::svid::certs_from_pem(
                std::str::from_utf8(&inline(&ctx.trusted_ca)).unwrap()
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            String::from_utf8(inline(&ctx.crl))
                .unwrap()
                .contains("BEGIN X509 CRL")
        );

        // ACK: nothing is sent until the certificate renews (20 s TTL).
        tx.send(request(&[id, "ROOTCA"], "1", &first.nonce))
            .await
            .unwrap();
        let renewed = next(&mut responses, "renewal push").await;
        assert_eq!(renewed.version_info, "2");
        let Some(secret::Type::TlsCertificate(cert)) = decode(&renewed.resources[0]).r#type else {
            panic!("no certificate in the renewal")
        };
        let renewed_serial = leaf_serial(&inline(&cert.certificate_chain));
        assert_ne!(
            renewed_serial, first_serial,
            "the renewal is a new certificate"
        );

        // A stale nonce is ignored; a NACK of the current one sends nothing;
        // new names (answering the current nonce) get the SPIFFE validator.
        tx.send(request(&["ALL"], "1", &first.nonce)).await.unwrap();
        tx.send(DiscoveryRequest {
            error_detail: Some(RpcStatus {
                code: 3,
                message: "rejected for the test".into(),
                details: Vec::new(),
            }),
            ..request(&[id, "ROOTCA"], "1", &renewed.nonce)
        })
        .await
        .unwrap();
        tx.send(request(
            &["spiffe://example.org", "ALL"],
            "2",
            &renewed.nonce,
        ))
        .await
        .unwrap();
        let validators = next(&mut responses, "validation contexts").await;
        assert_eq!(
            validators.version_info, "3",
            "the stale and NACK requests sent nothing"
        );
        for (any, name) in validators
            .resources
            .iter()
            .zip(["spiffe://example.org", "ALL"])
        {
            let s = decode(any);
            assert_eq!(s.name, name);
            let Some(secret::Type::ValidationContext(ctx)) = s.r#type else {
                panic!("not a validation context")
            };
            let custom = ctx.custom_validator_config.unwrap();
            assert_eq!(custom.name, SPIFFE_VALIDATOR);
            let config =
                SpiffeCertValidatorConfig::decode(custom.typed_config.unwrap().value.as_slice())
                    .unwrap();
            assert_eq!(config.trust_domains[0].name, "example.org");
            assert!(!inline(&config.trust_domains[0].trust_bundle).is_empty());
        }
        drop(tx);

        // FetchSecrets: `default` is the first identity; an unknown name is refused.
        let fetched = sds
            .fetch_secrets(request(&["default"], "", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.version_info, "");
        let default = decode(&fetched.resources[0]);
        assert_eq!(default.name, "default");
        let Some(secret::Type::TlsCertificate(cert)) = default.r#type else {
            panic!("default is not a certificate")
        };
        let fetched_serial = leaf_serial(&inline(&cert.certificate_chain));
        let unknown = sds
            .fetch_secrets(request(&["spiffe://example.org/w/other"], "", ""))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown}");
        let delta = sds
            .delta_secrets(tokio_stream::iter([DeltaDiscoveryRequest::default()]))
            .await
            .unwrap_err();
        assert_eq!(delta.code(), tonic::Code::Unimplemented);
        vec![first_serial, renewed_serial, fetched_serial]
    });
    // Every certificate SDS served is one decided, recorded X.509-SVID.
    let recorded = recorded_serials(&node);
    for serial in &serials {
        let n = recorded
            .iter()
            .filter(|r| r.trim_start_matches('0') == serial.trim_start_matches('0'))
            .count();
        assert_eq!(n, 1, "serial {serial}: {n} records");
    }
    assert_log_verifies_and_replays(&node);
}

#[test]
fn suspending_the_node_ends_every_stream_it_serves() {
    let node = node_with_workload_api();
    let id = "spiffe://example.org/w/on-node";
    node.entry_with_grants(id, &["unix:uid:0".to_owned()], &["x509-svid"]);
    let sock = api_socket(&node);
    let sock = sock.to_str().unwrap();
    wait_for(
        "the entry to reach the agent",
        Duration::from_secs(20),
        || {
            spiffe(&node, None, &["crl", sock])
                .first()
                .is_some_and(|l| l["serials"].is_array())
        },
    );
    let watcher = Running::start(&node, None, &["watch", sock]);
    assert_eq!(watcher.next(Duration::from_secs(30))["crls"], 1);
    let out = node.mg(&[
        "suspend",
        "spiffe://example.org/mintguard/node/node-1",
        "--reason",
        "test: node compromised",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = watcher.until_ended();
    assert_eq!(ended["ended"], "PERMISSION_DENIED", "{ended}");
    assert!(
        ended["details"]
            .as_str()
            .unwrap()
            .contains("mintguard/node/node-1"),
        "{ended}"
    );
}
