//! The anomaly loop through the real broker and CLI (OpenBao from
//! tests/peers.sh): a workload's request rate spikes → its trust falls → its
//! next high-exposure request (a Vault token) is held for approval → an
//! operator approves → it is issued; the spike goes on → the identity is
//! suspended, its Vault token revoked, and a webhook receiver on 127.0.0.1
//! got an HMAC-signed alert.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mintguard_certs::svid::X509Svid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "webhook-secret-0123456789abcdef";

const POLICY: &str = r#"
@id("api-may-spike")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"spike-token");
@id("api-may-get-vault-tokens")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"vault-token");
"#;

/// An HTTP receiver that answers 200 and keeps (headers, body) of each POST.
async fn webhook_receiver() -> (u16, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = text[..end].to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    keep.lock().unwrap().push((head, body));
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (port, got)
}

async fn vault_token_alive(addr: &str, token: &str) -> bool {
    let (status, _) = mintguard_tests::http_json(
        "GET",
        &format!("{addr}/v1/auth/token/lookup-self"),
        &[("x-vault-token", token)],
        None,
    )
    .await;
    status == 200
}

/// Eight concurrent requests; the statuses and error codes.
async fn burst(broker: &BrokerProcess, node: &X509Svid, request: &Value) -> Vec<(u16, Value)> {
    let one = || async {
        let r = issue(broker, node, request.clone()).await;
        (r.status, r.body["error"]["code"].clone())
    };
    let (a, b, c, d, e, f, g, h) =
        tokio::join!(one(), one(), one(), one(), one(), one(), one(), one());
    vec![a, b, c, d, e, f, g, h]
}

/// A broker with OpenBao, the anomaly loop on horizons of seconds, and a
/// webhook to 127.0.0.1:`port`; node-1 is the parent of the api identity,
/// which may ask for `spike-token` (a JWT) and `vault-token` (high ECI).
async fn anomaly_broker(port: u16) -> (BrokerProcess, X509Svid) {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR: run under tests/peers.sh");
    let root = std::env::var("VAULT_TOKEN").expect("VAULT_TOKEN: run under tests/peers.sh");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/anomaly.cedar"), POLICY).unwrap();
    write_private(&dir.path().join("vault.token"), &root);
    write_private(&dir.path().join("webhook.secret"), SECRET);
    // The Vault grant reaches a crown jewel: the identity's ECI is high (68),
    // so its requests need trust ≥ 77 (min_trust_base 50 + 0.4 × ECI).
    std::fs::write(
        dir.path().join("graph.json"),
        r#"{"nodes":[{"id":"role:vault-admin","kind":"role"},
                     {"id":"db:vault","kind":"resource","crown_jewel":true}],
            "edges":[{"from":"role:vault-admin","to":"db:vault","kind":"grants","access":"admin"}]}"#,
    )
    .unwrap();
    // Behaviour weighs heavily: calm trust is 80, and any detection (score
    // ≥ 40, behaviour ≤ 60) takes it to 73 or less, so the identity steps up; suspension at
    // 90. Horizons shrunk to seconds so a test can make a history and a spike:
    // the short horizon is 3 s, the baseline 3 min.
    let broker = BrokerProcess::start_with_env(
        dir,
        "",
        &format!(
            r#"
[[grants]]
name = "spike-token"
kind = "jwt"
max_ttl = "5m"
jwt = {{ audience = "spike" }}
[[grants]]
name = "vault-token"
kind = "vault"
max_ttl = "10m"
eci_targets = ["role:vault-admin"]
vault = {{ token = {{ policies = ["default"] }} }}
[eci]
graph = "graph.json"
[trust]
weights = {{ posture = 10, attestation = 10, behaviour = 40, location = 15, time = 10, network = 10 }}
min_trust_base = 50.0
[vault]
address = "{addr}"
token_file = "vault.token"
[anomaly]
interval = "100ms"
[anomaly.detectors]
cold_start_events = 5
cold_start_hours = 0.0
cold_start_rate_per_minute = 600.0
short_minutes = 0.05
baseline_hours = 0.05
[anomaly.responses]
reduce_at = 60
step_up_at = 100
alert_at = 50
suspend_at = 90
[anomaly.webhook]
url = "http://127.0.0.1:{port}/alerts"
secret_file = "webhook.secret"
"#
        ),
        &[],
    );
    register_api_with(
        &broker,
        "node-1",
        &["unix:uid:1000"],
        &["spike-token", "vault-token"],
    );
    let node = enrolled_node(&broker, "node-1").await;
    (broker, node)
}

/// `anomalies --json` for the api identity.
fn detections(broker: &BrokerProcess) -> Vec<Value> {
    let out = broker.cli(&["anomalies", "--identity", API, "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_steps_up_then_suspends_revokes_and_alerts() {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR: run under tests/peers.sh");
    let (port, alerts) = webhook_receiver().await;
    let (broker, node) = anomaly_broker(port).await;
    let spike = json!({"grant": "spike-token", "ttl_seconds": 60});
    let vault = json!({"grant": "vault-token", "ttl_seconds": 300});

    // A calm history: one request a second; the Vault grant is first used
    // in cold start (5 decisions), so it is learned, not flagged as new.
    for i in 0..8 {
        let grant = if i == 2 { &vault } else { &spike };
        let r = issue(&broker, &node, grant.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let calm = issue(&broker, &node, vault.clone()).await;
    assert_eq!(calm.status, 200, "{}", calm.text);

    // The spike, eight at a time, until the Vault token is held for approval.
    let mut held = None;
    let mut last = String::new();
    for _ in 0..150 {
        burst(&broker, &node, &spike).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = issue(&broker, &node, vault.clone()).await;
        assert_ne!(r.status, 403, "suspended before a step-up: {}", r.text);
        last = r.text.clone();
        if r.status == 202 {
            held = Some(r);
            break;
        }
    }
    let Some(held) = held else {
        let out = broker.cli(&["anomalies"]);
        panic!(
            "the spike never lowered trust enough to step up; last answer {last}; detections:\n{}\nbroker log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(broker.dir.path().join("broker.log")).unwrap_or_default()
        );
    };
    assert_eq!(held.body["error"]["code"], "step_up_required");
    assert!(
        detections(&broker).iter().all(|d| d["body"]["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["detector"] != "new_grant")),
        "the Vault grant was learned in cold start"
    );
    let trust = held.body["decision"]["trust_score"].as_u64().unwrap();
    let calm_trust = calm.body["decision"]["trust_score"].as_u64().unwrap();
    assert!(
        trust < calm_trust,
        "trust {trust} did not fall from {calm_trust}"
    );
    let approval = held.body["approval_id"].as_str().unwrap().to_owned();

    // The node sees it pending; an operator approves; the retry is issued.
    let pending = https(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(&node),
        "GET",
        &format!("/v1/approvals/{approval}"),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(pending.body["state"], "pending", "{}", pending.text);
    let listed = broker.cli_json(&["approvals"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["approval_id"] == approval.as_str())
    );
    let out = broker.cli(&["approve", &approval]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut retry = vault.clone();
    retry["approval_id"] = approval.clone().into();
    let issued = issue(&broker, &node, retry.clone()).await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert!(
        issued.body["decision"]["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("step_up_approved"))
    );
    let token = issued.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(vault_token_alive(&addr, &token).await);
    // Single use.
    let again = issue(&broker, &node, retry).await;
    assert_eq!(
        again.body["error"]["code"], "approval_used",
        "{}",
        again.text
    );

    // The spike goes on, harder: suspension, and the Vault token is revoked.
    let mut suspended = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !suspended && std::time::Instant::now() < deadline {
        let (a, b) = tokio::join!(burst(&broker, &node, &spike), burst(&broker, &node, &spike));
        suspended = a
            .iter()
            .chain(&b)
            .any(|(status, code)| *status == 403 && code == "suspended");
    }
    assert!(suspended, "the spike never led to suspension");
    let mut revoked = false;
    for _ in 0..50 {
        if !vault_token_alive(&addr, &token).await {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "the suspended identity's Vault token still works");

    // The detections, with evidence, and the suspension among them.
    let detections = detections(&broker);
    assert!(
        detections
            .iter()
            .any(|d| d["body"]["response"] == "suspend")
    );
    assert!(
        detections
            .iter()
            .any(|d| d["body"]["detectors"][0]["detector"] == "rate_spike"
                && d["body"]["evidence"]["rate_spike"]["z"].is_number())
    );
    // explain names the detections that held the Vault request.
    let explained = broker.cli_json(&[
        "explain",
        held.body["decision"]["request_id"].as_str().unwrap(),
    ]);
    assert!(
        !explained["detections"].as_array().unwrap().is_empty(),
        "{explained}"
    );

    // A signed alert reached the webhook.
    let mut signed = false;
    for _ in 0..50 {
        for (head, body) in alerts.lock().unwrap().iter() {
            let expected = format!(
                "x-mintguard-signature: sha256={}",
                mintguard_broker::anomaly::alerts::signature(SECRET.as_bytes(), body)
            );
            let alert: Value = serde_json::from_slice(body).unwrap();
            if head.lines().any(|l| l == expected) && alert["detection"]["subject"]["id"] == API {
                signed = true;
            }
        }
        if signed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(signed, "no signed alert arrived");
    broker.assert_log_verifies();
}

/// An allowed Vault request is logged as an intent record; the analysis
/// reads those too: an identity's first high-exposure upstream grant is a
/// `new_grant` detection, and its next Vault request steps up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_upstream_grant_is_seen_by_the_analysis() {
    let (port, _alerts) = webhook_receiver().await;
    let (broker, node) = anomaly_broker(port).await;
    let spike = json!({"grant": "spike-token", "ttl_seconds": 60});
    for _ in 0..6 {
        let r = issue(&broker, &node, spike.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let vault = json!({"grant": "vault-token", "ttl_seconds": 300});
    let first = issue(&broker, &node, vault.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let request_id = first.body["decision"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the new Vault grant is detected", || {
        detections(&broker).iter().any(|d| {
            d["body"]["triggered_by"] == request_id.as_str()
                && d["body"]["evidence"]["new_grant"]["grant"] == "vault-token"
        })
    })
    .await;
    // The detection is logged first, then its behaviour signal is written.
    wait_until("the detection's behaviour signal is stored", || {
        broker
            .cli_json(&["signals", "show", "--subject", API])
            .as_array()
            .is_some_and(|signals| {
                signals.iter().any(|s| {
                    s["kind"] == "behaviour"
                        && s["source"]
                            .as_str()
                            .is_some_and(|x| x.starts_with("anomaly:"))
                })
            })
    })
    .await;
    let next = issue(&broker, &node, vault).await;
    assert_eq!(next.status, 202, "{}", next.text);
    assert_eq!(next.body["error"]["code"], "step_up_required");
    broker.assert_log_verifies();
}
