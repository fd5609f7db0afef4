//! Two real broker processes on one PostgreSQL (a fresh database on the
//! peer from tests/peers.sh), sharing the CA and JWT key directories and the
//! log-signing key file: a budget is exact across both, a join token enrolls
//! once, a suspension through one is enforced by the other, a JWT from one
//! verifies against the other's JWKS, and the one log verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
@id("api-may-get-ha-tokens")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"ha-token");
@id("api-may-get-ha-open")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"ha-open");
"#;

fn replica(
    store: &str,
    shared: &std::path::Path,
    signing_key: Option<&std::path::Path>,
) -> BrokerProcess {
    replica_with(store, shared, signing_key, "", "enabled = false")
}

/// Two replicas on `store`, the second reading the first's log-signing key.
fn two_replicas(store: &str, shared: &std::path::Path) -> (BrokerProcess, BrokerProcess) {
    let a = replica(store, shared, None);
    let b = replica(store, shared, Some(&a.data().join("log-signing.key")));
    (a, b)
}

/// A replica; `jwt` and `anomaly` fill its `[jwt]` and `[anomaly]` tables.
fn replica_with(
    store: &str,
    shared: &std::path::Path,
    signing_key: Option<&std::path::Path>,
    jwt: &str,
    anomaly: &str,
) -> BrokerProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ha.cedar"), POLICY).unwrap();
    if let Some(key) = signing_key {
        // The log-signing key is a file every replica reads (never in the database).
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        write_private(
            &dir.path().join("data/log-signing.key"),
            &std::fs::read_to_string(key).unwrap(),
        );
    }
    BrokerProcess::start_with(
        dir,
        &format!("store = \"{store}\""),
        &format!(
            r#"
[[grants]]
name = "ha-token"
kind = "jwt"
max_ttl = "10m"
jwt = {{ audience = "ha" }}
budget = {{ amount = 100, per = "never", base = 1, per_5min = 0, eci_factor = 0.0 }}
[[grants]]
name = "ha-open"
kind = "jwt"
max_ttl = "10m"
jwt = {{ audience = "ha" }}
[ca]
dir = "{ca}"
[jwt]
dir = "{jwt_dir}"
{jwt}
[limits]
per_node_per_second = 100000
per_identity_per_second = 100000
[anomaly]
{anomaly}
"#,
            ca = shared.join("ca").display(),
            jwt_dir = shared.join("jwt").display(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_on_one_postgres_agree() {
    let store = fresh_postgres_database("mg_ha").await;
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&store, shared.path());
    assert_eq!(
        std::fs::read_to_string(a.data().join("bundle.pem")).unwrap(),
        std::fs::read_to_string(b.data().join("bundle.pem")).unwrap(),
        "the replicas serve different trust bundles"
    );

    // One join token presented to both at once: exactly one enrollment.
    let token = a.cli_json(&["token", "create", "--node", "node-1"]);
    let token = token["token"].as_str().unwrap();
    let key_a = mintguard_certs::svid::generate_key().unwrap();
    let key_b = mintguard_certs::svid::generate_key().unwrap();
    let enroll = |broker: &BrokerProcess, key: &mintguard_certs::svid::PrivateKey| {
        let body =
            json!({"join_token": token, "csr": mintguard_certs::svid::csr_pem(key).unwrap()});
        let (addr, bundle) = (broker.addr("public"), broker.bundle());
        async move { post_json(&addr, &bundle, None, "/v1/node/enroll", &body).await }
    };
    let (ra, rb) = tokio::join!(enroll(&a, &key_a), enroll(&b, &key_b));
    let mut statuses = [ra.status, rb.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "{} / {}", ra.text, rb.text);
    let (winner, key) = if ra.status == 200 {
        (&ra, &key_a)
    } else {
        (&rb, &key_b)
    };
    let node = mintguard_certs::svid::X509Svid::from_pem(
        winner.body["svid_pem"].as_str().unwrap(),
        &key.to_pem(),
    )
    .unwrap();
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-token", "ha-open"]);

    // A JWT minted by A verifies against the JWKS B serves.
    let minted = issue(&a, &node, json!({"grant": "ha-open", "ttl_seconds": 300})).await;
    assert_eq!(minted.status, 200, "{}", minted.text);
    let token = minted.body["credential"]["token"].as_str().unwrap();
    let jwks = https(
        &b.addr("public"),
        &b.bundle(),
        None,
        "GET",
        "/.well-known/jwks.json",
        &[],
        vec![],
    )
    .await
    .unwrap();
    let claims = verify_with_jwks(jwks.body, token, "ha");
    assert_eq!(claims["sub"], API);

    // 1,000 concurrent requests split across both against a budget of 100
    // that never refills: exactly 100 issued, 900 refused for the budget.
    let node = Arc::new(node);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let broker = if i % 2 == 0 { &a } else { &b };
        let (addr, bundle, node) = (broker.addr("agents"), broker.bundle(), node.clone());
        tasks.spawn(async move {
            let reply = post_json(
                &addr,
                &bundle,
                Some(&node),
                "/v1/issue",
                &json!({"selectors": SELECTORS, "request": {"grant": "ha-token", "ttl_seconds": 300}}),
            )
            .await;
            (reply.status, reply.body["error"]["code"].as_str().map(str::to_owned))
        });
    }
    let (mut issued, mut exhausted, mut other) = (0, 0, Vec::new());
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (200, _) => issued += 1,
            (429, Some(code)) if code == "budget_exhausted" => exhausted += 1,
            unexpected => other.push(unexpected),
        }
    }
    assert_eq!(
        (issued, exhausted),
        (100, 900),
        "unexpected answers: {other:?}"
    );
    // The log agrees: 100 issuances of ha-token in all, the rest refused.
    let out = b.cli(&["logs", "--json", "--grant", "ha-token"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allowed = records.iter().filter(|r| r["outcome"] == "allow").count();
    assert_eq!(allowed, 100);
    assert_eq!(records.len(), 1000);

    // A suspension written through A is enforced by B's next request.
    let out = a.cli(&["suspend", API, "--reason", "incident"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = issue(&b, &node, json!({"grant": "ha-token"})).await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("suspended")),
        "{}",
        refused.text
    );

    // One chain, written by both, verifies from either.
    for broker in [&a, &b] {
        broker.assert_log_verifies();
    }
}

/// kill -9 one replica under load: every credential a client received
/// (from either) has its record, and the shared log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_replica_under_load_loses_no_record() {
    let store = fresh_postgres_database("mg_ha_kill").await;
    let shared = tempfile::tempdir().unwrap();
    let (mut a, b) = two_replicas(&store, shared.path());
    let node = Arc::new(enrolled_node(&a, "node-1").await);
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);

    let received: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for broker in [&a, &b, &a, &b] {
        let (addr, bundle, node) = (broker.addr("agents"), broker.bundle(), node.clone());
        let (received, stop) = (received.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A killed replica refuses connections: those requests fail,
                // the client carries on.
                let Ok(reply) = https(
                    &addr,
                    &bundle,
                    Some(&node),
                    "POST",
                    "/v1/issue",
                    &[("content-type", "application/json")],
                    json!({"selectors": SELECTORS, "request": {"grant": "ha-open", "ttl_seconds": 60}})
                        .to_string()
                        .into_bytes(),
                )
                .await
                else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                if reply.status == 200 {
                    let id = reply.body["decision"]["request_id"].as_str().unwrap().to_owned();
                    received.lock().unwrap().push(id);
                }
            }
        }));
    }
    let issued = || received.lock().unwrap().len();
    wait_until("both replicas have issued", || issued() > 10).await;
    a.child.kill().unwrap(); // SIGKILL
    let _ = a.child.wait();
    let at_kill = issued();
    wait_until("the survivor issues on", || issued() > at_kill + 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() > 20, "too little load: {}", received.len());

    b.assert_one_record_each("ha-open", received.iter().map(String::as_str));
    b.assert_log_verifies();
}

/// Replicas sharing the JWT key directory rotate together: with a 2-second
/// rotation, both serve the same new active key (first in the JWKS) within
/// moments, the key was rotated once per period rather than once per
/// replica, and a token A signs after the rotation verifies against B's JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_rotate_the_jwt_key_together() {
    let store = fresh_postgres_database("mg_ha_rotate").await;
    let shared = tempfile::tempdir().unwrap();
    let rotate = "rotate_every = \"2s\"\nmax_ttl = \"15m\"";
    let a = replica_with(&store, shared.path(), None, rotate, "enabled = false");
    let b = replica_with(
        &store,
        shared.path(),
        Some(&a.data().join("log-signing.key")),
        rotate,
        "enabled = false",
    );
    let jwks = |broker: &BrokerProcess| {
        let (addr, bundle) = (broker.addr("public"), broker.bundle());
        async move {
            https(
                &addr,
                &bundle,
                None,
                "GET",
                "/.well-known/jwks.json",
                &[],
                vec![],
            )
            .await
            .unwrap()
            .body
        }
    };
    let first = jwks(&a).await["keys"][0]["kid"].clone();
    let mut agreed = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let ka = jwks(&a).await;
        if ka["keys"][0]["kid"] == first {
            continue;
        }
        // As soon as A serves a new key, B's JWKS has it too (it re-reads the
        // shared directory when it changed).
        let kb = jwks(&b).await;
        let new_kid = &ka["keys"][0]["kid"];
        assert!(
            kb["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| &k["kid"] == new_kid),
            "B does not serve A's new key yet: {ka} / {kb}"
        );
        if ka["keys"][0]["kid"] == kb["keys"][0]["kid"] {
            agreed = Some((ka, kb));
            break;
        }
    }
    let (ka, kb) = agreed.expect("the replicas never served the same rotated key");
    // Rotated by one replica, followed by the other: the retired keys are
    // the same list, not one per replica.
    assert_eq!(ka["keys"], kb["keys"], "{ka} / {kb}");

    let node = enrolled_node(&a, "node-1").await;
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);
    let minted = issue(&a, &node, json!({"grant": "ha-open", "ttl_seconds": 60})).await;
    assert_eq!(minted.status, 200, "{}", minted.text);
    let token = minted.body["credential"]["token"].as_str().unwrap();
    // A's new signing key is in B's JWKS.
    verify_with_jwks(jwks(&b).await, token, "ha");
}

/// Every replica keeps anomaly baselines over the shared log, but one acts:
/// a spike through both replicas yields detections, each recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_acts_on_detections() {
    let store = fresh_postgres_database("mg_ha_anomaly").await;
    let shared = tempfile::tempdir().unwrap();
    let anomaly = "interval = \"100ms\"\n[anomaly.detectors]\ncold_start_events = 5\ncold_start_hours = 0.0\ncold_start_rate_per_minute = 600.0\nshort_minutes = 0.05\nbaseline_hours = 0.05\n[anomaly.responses]\nsuspend = false";
    let a = replica_with(&store, shared.path(), None, "", anomaly);
    let b = replica_with(
        &store,
        shared.path(),
        Some(&a.data().join("log-signing.key")),
        "",
        anomaly,
    );
    let node = enrolled_node(&a, "node-1").await;
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);
    let request = json!({"grant": "ha-open", "ttl_seconds": 60});
    for _ in 0..8 {
        issue(&a, &node, request.clone()).await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // The spike, through both replicas, until a detection is recorded.
    // On a loaded machine analysis may lag for a while: keep the spike
    // going (up to a minute) rather than count rounds.
    let mut detections = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        // Concurrently, so the spike's rate does not depend on how fast one
        // request is on a loaded machine.
        let one = |broker| issue(broker, &node, request.clone());
        tokio::join!(
            one(&a),
            one(&b),
            one(&a),
            one(&b),
            one(&a),
            one(&b),
            one(&a),
            one(&b)
        );
        let out = a.cli(&["anomalies", "--json"]);
        detections = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if !detections.is_empty() {
            break;
        }
    }
    assert!(!detections.is_empty(), "no detection");
    // Give the other replica time to have (wrongly) acted too.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let out = b.cli(&["anomalies", "--json"]);
    let mut seen = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        let trigger = d["body"]["triggered_by"].as_str().unwrap().to_owned();
        assert!(
            seen.insert(trigger.clone()),
            "detection for {trigger} recorded twice"
        );
    }
}

/// Each replica appends to a chain of its own. A replica taken out of
/// service has its chain retired through another: its next issuance is
/// refused (no record, no credential), it does not start again under the
/// same instance id, retention prunes every chain, and the log — both
/// chains, one closed by its final statement — verifies from the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_replica_issues_nothing_more_and_the_log_still_verifies() {
    let store = fresh_postgres_database("mg_ha_retire").await;
    let shared = tempfile::tempdir().unwrap();
    let (mut a, b) = two_replicas(&store, shared.path());
    let node = enrolled_node(&a, "node-1").await;
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);
    for broker in [&a, &b, &a, &b, &a, &b] {
        for _ in 0..4 {
            let reply = issue(broker, &node, json!({"grant": "ha-open"})).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    let chain_a = std::fs::read_to_string(a.data().join("instance.id")).unwrap();
    let chain_b = std::fs::read_to_string(b.data().join("instance.id")).unwrap();
    // A's head checkpointed (every 5 records here): its final statement is
    // then about a record a checkpoint already names.
    let head_of = |report: &Value, chain: &str| {
        report["report"]["chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["chain"] == chain)
            .map(|c| c["records"].as_i64().unwrap())
            .unwrap()
    };
    while head_of(&b.cli_json(&["logs", "verify", "--json"]), chain_a.trim()) % 5 != 0 {
        let reply = issue(&a, &node, json!({"grant": "ha-open"})).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let report = b.cli_json(&["logs", "verify", "--json"]);
    let chains = report["report"]["chains"].as_array().unwrap();
    let mut named: Vec<&str> = chains
        .iter()
        .map(|c| c["chain"].as_str().unwrap())
        .collect();
    named.sort_unstable();
    let mut expected = [chain_a.trim(), chain_b.trim()];
    expected.sort_unstable();
    assert_eq!(named, expected, "{report}");

    // Retiring is another replica's act: A may not retire its own chain.
    let own = a.cli(&["logs", "retire", "--chain", chain_a.trim()]);
    assert!(!own.status.success());
    let out = b.cli(&["logs", "retire", "--chain", chain_a.trim()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = issue(&a, &node, json!({"grant": "ha-open"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    let served = issue(&b, &node, json!({"grant": "ha-open"})).await;
    assert_eq!(served.status, 200, "{}", served.text);

    // The retired replica does not come back under its instance id.
    a.stop();
    let restarted = std::process::Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
        .args(["run", "--config"])
        .arg(a.dir.path().join("broker.toml"))
        .output()
        .unwrap();
    assert!(!restarted.status.success());
    let why = String::from_utf8_lossy(&restarted.stderr);
    assert!(why.contains("retired"), "{why}");

    let verified = b.assert_log_verifies();
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(text.contains("retired"), "{text}");

    // Retention prunes every chain through its own checkpoint, and the
    // log still verifies.
    let export = b.dir.path().join("pruned.jsonl");
    let out = b.prune_all(&export);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(chain_a.trim()) && said.contains(chain_b.trim()),
        "{said}"
    );
    b.assert_log_verifies();
}

/// Every replica signs the other chains' heads into its own export: a
/// replica's chain deleted from the database (its records, checkpoints and
/// registration) fails `logs verify` on the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_deleted_from_the_database_fails_every_replicas_verification() {
    let store = fresh_postgres_database("mg_ha_witness").await;
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(&store, shared.path());
    let node = enrolled_node(&a, "node-1").await;
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);
    // A's chain first, then B's: B's checkpoints sign A's head.
    for broker in [&a, &b] {
        for _ in 0..6 {
            let reply = issue(broker, &node, json!({"grant": "ha-open"})).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    b.assert_log_verifies();
    let chain_a = std::fs::read_to_string(a.data().join("instance.id")).unwrap();
    let chain_a = chain_a.trim();
    let config: tokio_postgres::Config = store.parse().unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for table in ["log", "checkpoints", "log_chains"] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE chain = $1"),
                &[&chain_a],
            )
            .await
            .unwrap();
    }
    let verify = b.cli(&["logs", "verify"]);
    assert!(!verify.status.success());
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        said.contains(chain_a) && said.contains("does not hold"),
        "{said}"
    );
}

/// A chain marked retired in the database and its head row moved past its
/// records (forged records to be inserted once it is sealed) is never
/// sealed: `logs retire` verifies that the records reach the head it would
/// sign. With the head where the records end, the unsealed retirement is
/// completed at that head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retirement_forged_in_the_database_is_not_sealed_past_its_records() {
    let store = fresh_postgres_database("mg_ha_forged_retire").await;
    let shared = tempfile::tempdir().unwrap();
    let (mut a, b) = two_replicas(&store, shared.path());
    let node = enrolled_node(&a, "node-1").await;
    register_api_with(&a, "node-1", &["unix:uid:1000"], &["ha-open"]);
    for broker in [&a, &b] {
        for _ in 0..3 {
            let reply = issue(broker, &node, json!({"grant": "ha-open"})).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    a.stop();
    let chain_a = std::fs::read_to_string(a.data().join("instance.id")).unwrap();
    let chain_a = chain_a.trim();
    let config: tokio_postgres::Config = store.parse().unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let head = client
        .query_one(
            "SELECT seq, hash FROM log_chains WHERE chain = $1",
            &[&chain_a],
        )
        .await
        .unwrap();
    let (seq, hash): (i64, String) = (head.get(0), head.get(1));
    client
        .execute(
            "UPDATE log_chains SET retired_at_ms = 1, seq = seq + 2, hash = $2 WHERE chain = $1",
            &[&chain_a, &"ab".repeat(32)],
        )
        .await
        .unwrap();
    let out = b.cli(&["logs", "retire", "--chain", chain_a]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("does not verify"), "{said}");
    let verify = b.cli(&["logs", "verify"]);
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("records were removed from the end"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // The head put back where the records end: sealed there.
    client
        .execute(
            "UPDATE log_chains SET seq = $2, hash = $3 WHERE chain = $1",
            &[&chain_a, &seq, &hash],
        )
        .await
        .unwrap();
    let sealed = b.cli(&["logs", "retire", "--chain", chain_a]);
    let said = String::from_utf8_lossy(&sealed.stdout);
    assert!(
        sealed.status.success() && said.contains(&format!("at record {seq} (hash {hash})")),
        "{said}{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    b.assert_log_verifies();
}
