//! The real `mintguard-broker` binary end to end: enroll a node, create an
//! entry, get a JWT, verify it with the fetched JWKS, revoke it, see it
//! inactive in introspection, find it all in `mintguard logs --json`, replay
//! with no difference, and verify the chain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_issue_verify_revoke_introspect_log_replay() {
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    assert_eq!(
        node.spiffe_id().to_string(),
        "spiffe://example.org/mintguard/node/node-1"
    );
    register_api(&broker, "node-1");

    let reply = issue(
        &broker,
        &node,
        json!({"grant": "payments-token", "ttl_seconds": 300, "purpose": "settlement"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let lease_id = reply.body["lease_id"].as_str().unwrap().to_owned();
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        matches!(
            reply.body["decision"]["outcome"].as_str(),
            Some("allow" | "allow_reduced")
        ),
        "{}",
        reply.body
    );

    // An independent verifier with only the served JWKS.
    let jwks = https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "GET",
        "/.well-known/jwks.json",
        &[],
        vec![],
    )
    .await
    .unwrap();
    let jwks: JwkSet = serde_json::from_value(jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let key = DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["payments"]);
    validation.set_issuer(&["https://mintguard.example.org"]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], API);
    assert_eq!(claims["jti"], lease_id.as_str());

    let discovery = https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(discovery.body["issuer"], "https://mintguard.example.org");

    // Introspection: active, then revoked by the workload's agent, then inactive.
    let active = introspect(&broker, INTROSPECTION_TOKEN, &token).await;
    assert_eq!(active.body["active"], true, "{}", active.body);
    assert_eq!(active.body["sub"], API);
    let revoked = https(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(&node),
        "DELETE",
        &format!("/v1/leases/{lease_id}"),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    assert_eq!(
        introspect(&broker, INTROSPECTION_TOKEN, &token).await.body,
        json!({"active": false})
    );
    // Without client authentication, introspection is refused.
    let anonymous = https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/introspect",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={token}").into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, 401);

    // The log has it all, and never the credential.
    let out = broker.cli(&["logs", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(&token),
        "the issuance log must never hold a credential"
    );
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decision = records.iter().find(|r| r["kind"] == "decision").unwrap();
    assert_eq!(decision["identity"], API);
    assert_eq!(
        decision["node"],
        "spiffe://example.org/mintguard/node/node-1"
    );
    assert_eq!(decision["body"]["lease"]["id"], lease_id.as_str());
    assert_eq!(
        decision["body"]["lease"]["revocation"],
        "introspection_only"
    );
    assert!(
        decision["body"]["input"]["budgets"][0]["snapshot"].is_object(),
        "the input records the balance it saw"
    );
    let revocation = records.iter().find(|r| r["kind"] == "revocation").unwrap();
    assert_eq!(revocation["body"]["lease_id"], lease_id.as_str());
    assert!(records.iter().any(|r| r["outcome"] == "node_enrolled"));

    let explain = broker.cli_json(&["explain", decision["request_id"].as_str().unwrap()]);
    assert_eq!(
        explain["records"][0]["body"]["decision"]["rules"][0]["id"],
        "api-may-mint"
    );

    let replay = broker.cli(&["replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replay["replayed"], 1);
    assert_eq!(replay["differences"], json!([]));

    let verify = broker.assert_log_verifies();
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("ok: "));

    let leases = broker.cli_json(&["leases", "--identity", API]);
    assert_eq!(leases[0]["id"], lease_id.as_str());
    assert_eq!(leases[0]["live"], false);

    // Prometheus metrics on the admin listener, for an operator token.
    let token = std::fs::read_to_string(broker.data().join("operators/alice.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let metrics = https(
        &broker.addr("admin"),
        &broker.bundle(),
        None,
        "GET",
        "/metrics",
        &[("authorization", &auth)],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(metrics.status, 200);
    for needle in [
        "mintguard_decisions_total{outcome=\"",
        "mintguard_decision_seconds_bucket",
        "mintguard_issue_seconds_count 1",
        "mintguard_log_write_seconds_count",
        "mintguard_budget_exhausted_total 0",
    ] {
        assert!(
            metrics.text.contains(needle),
            "{needle} missing from:\n{}",
            metrics.text
        );
    }
    let anonymous = https(
        &broker.addr("admin"),
        &broker.bundle(),
        None,
        "GET",
        "/metrics",
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_refuses_and_revokes() {
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let first = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let lease = first.body["lease_id"].as_str().unwrap().to_owned();
    let out = broker.cli(&["suspend", API, "--reason", "incident 7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "suspended");
    assert_eq!(
        refused.body["error"]["reasons"],
        json!(["identity_suspended"])
    );
    let leases = broker.cli_json(&["leases", "--identity", API]);
    assert_eq!(leases[0]["id"], lease.as_str());
    assert!(
        leases[0]["revoked_at_ms"].is_i64(),
        "suspension revokes outstanding leases"
    );
    assert!(broker.cli(&["resume", API]).status.success());
    let again = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(again.status, 200, "{}", again.body);

    // Suspending the node revokes what was issued through it.
    let node_id = node.spiffe_id().to_string();
    let out = broker.cli(&["suspend", &node_id, "--reason", "host compromised"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = broker.live_leases();
    assert!(
        live.is_empty(),
        "node suspension left leases live: {live:?}"
    );
    let leases = broker.cli_json(&["leases", "--identity", API]);
    assert!(
        leases
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == again.body["lease_id"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_rules_and_refuses_a_broken_config() {
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    // SIGHUP with a new forbid: the next requests are denied by it.
    let policies = broker.dir.path().join("policies");
    std::fs::write(
        policies.join("freeze.cedar"),
        "@id(\"freeze\") forbid (principal, action, resource);",
    )
    .unwrap();
    let pid = broker.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut denied = None;
    for _ in 0..100 {
        let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
        if reply.status == 403 {
            denied = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let denied = denied.expect("the reloaded forbid applies");
    assert_eq!(denied.body["error"]["reasons"], json!(["rule_forbid"]));

    // A broken policy: the reload is refused with the reason, the running rules stay.
    std::fs::write(policies.join("broken.cedar"), "permit (principal").unwrap();
    let out = broker.cli(&["reload"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reload_refused") && stderr.contains("broken.cedar"),
        "{stderr}"
    );
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        403
    );

    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    std::fs::remove_file(policies.join("freeze.cedar")).unwrap();
    let out = broker.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    // Budgets: show and top up (re-authorization), both logged.
    let shown = broker.cli_json(&[
        "budget",
        "show",
        "--identity",
        API,
        "--grant",
        "payments-token",
    ]);
    assert_eq!(shown["capacity"], 100);
    let before = shown["available"].as_i64().unwrap();
    assert!(before <= 98, "two issuances were spent: {shown}");
    let topped = broker.cli_json(&[
        "budget",
        "top-up",
        "--identity",
        API,
        "--grant",
        "payments-token",
        "--tokens",
        "50",
    ]);
    assert_eq!(topped["available"].as_i64().unwrap(), before + 50);
    let logs = broker.cli(&["logs", "--json", "--outcome", "budget_topped_up"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout).lines().count(), 1);
}

#[test]
fn a_bad_config_exits_2_naming_file_key_and_reason_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        config_text("").replace("kind = \"jwt\"", "kind = \"vault\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("grants[0].kind"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created or bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_signals_lower_trust_and_compromise_is_evidence() {
    // A suspend rule that stands only with positive evidence.
    let broker = BrokerProcess::start("");
    std::fs::write(
        broker.dir.path().join("policies/suspend.cedar"),
        "@id(\"compromise-suspends\") @outcome(\"suspend\") forbid (principal, action, resource) when { context.has_evidence };",
    )
    .unwrap();
    assert!(broker.cli(&["reload"]).status.success());
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let node_id = node.spiffe_id().to_string();
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    // EDR says the node's posture collapsed: trust drops below critical.
    let out = broker.cli(&[
        "signals",
        "put",
        "--subject",
        &node_id,
        "--kind",
        "posture",
        "--value",
        "0",
        "--source",
        "edr:test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = broker.cli(&[
        "signals",
        "put",
        "--subject",
        API,
        "--kind",
        "attestation",
        "--value",
        "0",
        "--source",
        "edr:test",
    ]);
    assert!(out.status.success());
    let refused = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["reasons"],
        json!(["trust_below_critical"])
    );
    // Another source reporting a good posture does not outvote the bad one: the lowest fresh value counts.
    assert!(
        broker
            .cli(&[
                "signals",
                "put",
                "--subject",
                &node_id,
                "--kind",
                "posture",
                "--value",
                "100"
            ])
            .status
            .success()
    );
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        403,
        "the edr:test posture 0 is still fresh"
    );
    // The EDR clears the node: posture recovers, attestation stays 0, trust is enough again.
    assert!(
        broker
            .cli(&[
                "signals",
                "put",
                "--subject",
                &node_id,
                "--kind",
                "posture",
                "--value",
                "100",
                "--source",
                "edr:test"
            ])
            .status
            .success()
    );
    let allowed = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);

    // A compromise signal is positive evidence: the suspend rule stands, leases are revoked.
    let out = broker.cli(&[
        "signals",
        "put",
        "--subject",
        &node_id,
        "--kind",
        "compromise",
        "--source",
        "siem:test",
    ]);
    assert!(out.status.success());
    let suspended = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(suspended.status, 403, "{}", suspended.body);
    assert_eq!(suspended.body["error"]["code"], "suspended");
    assert_eq!(
        suspended.body["error"]["reasons"],
        json!(["compromise_evidence", "rule_suspend"])
    );
    let leases = broker.cli_json(&["leases", "--identity", API]);
    assert!(
        leases
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l["live"].as_bool().unwrap()),
        "all leases revoked: {leases}"
    );
    let shown = broker.cli_json(&["signals", "show", "--subject", &node_id]);
    assert_eq!(shown.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_identities_and_node_ban() {
    // An exposure graph where the API can reach a crown jewel, so ECI and the
    // node's blast radius are not zero.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("graph.json"),
        r#"{"nodes":[{"id":"spiffe://example.org/ns/pay/sa/api","kind":"identity"},
                     {"id":"role:db-admin","kind":"role"},
                     {"id":"db:payments","kind":"resource","crown_jewel":true,"sensitivity":["pii"]}],
            "edges":[{"from":"spiffe://example.org/ns/pay/sa/api","to":"role:db-admin","kind":"can_assume"},
                     {"from":"role:db-admin","to":"db:payments","kind":"grants","access":"admin"}]}"#,
    )
    .unwrap();
    let broker = BrokerProcess::start_in(dir, "[eci]\ngraph = \"graph.json\"\n");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");

    // Renewal over mTLS keeps the node's ID, whatever the CSR asks.
    let (renewed, next) = renew(&broker, &node).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let next = next.unwrap();
    assert_eq!(next.spiffe_id(), node.spiffe_id());
    assert_eq!(
        issue(&broker, &next, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    let ids = broker.cli_json(&["identities"]);
    assert_eq!(ids["identities"][0]["spiffe_id"], API);
    assert!(ids["identities"][0]["eci"].is_number(), "{ids}");
    assert_eq!(ids["issuers"][0]["node"], node.spiffe_id().to_string());
    assert_eq!(ids["issuers"][0]["identities"], 1);
    let radius = ids["issuers"][0]["blast_radius"]["max"].as_f64().unwrap();
    assert!(
        radius > 50.0,
        "the API reaches an admin grant on a crown jewel: {ids}"
    );
    // The decision saw the same blast radius for its issuer.
    let out = broker.cli(&["logs", "--json", "--outcome", "allow"]);
    let decision: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        decision["body"]["input"]["eci"]["issuer_blast_radius"]
            .as_f64()
            .unwrap(),
        radius
    );

    // Banning the node (suspending its ID) stops issuance and renewal through it.
    assert!(
        broker
            .cli(&[
                "suspend",
                &node.spiffe_id().to_string(),
                "--reason",
                "lost laptop"
            ])
            .status
            .success()
    );
    let refused = issue(&broker, &next, json!({"grant": "payments-token"})).await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("node_suspended"))
    );
    let (refused_renewal, _) = renew(&broker, &next).await;
    assert_eq!(refused_renewal.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_renews_its_own_svid_before_it_expires() {
    // Six-second SVIDs: without renewal the broker's certificate (and the
    // node's) would expire mid-test.
    let broker = BrokerProcess::start("[ca]\nca_ttl = \"30s\"\nsvid_ttl = \"6s\"\n");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    // The node renews at half-life, as the agent will.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (renewed, node) = renew(&broker, &node).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let node = node.unwrap();
    // Every renewal is a record: the key that renewed and the new serial.
    let renewals = broker.logs(&["--outcome", "node_svid_renewed"]);
    assert_eq!(renewals.len(), 1, "{renewals:?}");
    let body = &renewals[0]["body"];
    assert_eq!(body["node"], "spiffe://example.org/mintguard/node/node-1");
    assert_eq!(
        body["key_sha256"].as_str().map(str::len),
        Some(64),
        "{body}"
    );
    assert!(
        !body["serial"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );

    // Past the broker's first SVID: the handshake still verifies, so the broker renewed its own.
    tokio::time::sleep(std::time::Duration::from_millis(4000)).await;
    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let log = std::fs::read_to_string(broker.dir.path().join("broker.log")).unwrap();
    assert!(log.contains("broker SVID renewed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_rotate_and_old_tokens_keep_verifying() {
    let broker = BrokerProcess::start("[jwt]\nrotate_every = \"2s\"\n");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let first = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    let token = first.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let mut rotated = None;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let jwks = https(
            &broker.addr("public"),
            &broker.bundle(),
            None,
            "GET",
            "/.well-known/jwks.json",
            &[],
            vec![],
        )
        .await
        .unwrap();
        if jwks.body["keys"].as_array().unwrap().len() >= 2 {
            rotated = Some(jwks.body);
            break;
        }
    }
    let jwks: JwkSet =
        serde_json::from_value(rotated.expect("the key rotated within 6 s")).unwrap();
    assert!(
        jwks.find(&kid).is_some(),
        "the retired key stays in the JWKS"
    );
    let second = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    let new_kid = jsonwebtoken::decode_header(second.body["credential"]["token"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    assert_ne!(new_kid, kid, "new tokens use the new key");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["payments"]);
    let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
}

fn time_signal(broker: &BrokerProcess) -> Value {
    let out = broker.cli(&["logs", "--json"]);
    let decision: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|r| r["kind"] == "decision")
        .unwrap();
    decision["body"]["decision"]["trust"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "time")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hours_drive_the_time_signal() {
    // All day: the time signal counts, at 100.
    let broker = BrokerProcess::start("allowed_hours = [0, 24]\n");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );
    let time = time_signal(&broker);
    assert_eq!(
        (
            time["value"].as_u64(),
            time["status"].as_str(),
            time["source"].as_str()
        ),
        (Some(100), Some("fresh"), Some("broker:allowed_hours"))
    );

    // Two hours from now: outside, the signal counts at 0 (and lowers trust).
    let hour = time::OffsetDateTime::now_utc().hour();
    let (start, end) = ((hour + 2) % 24, (hour + 3) % 24);
    let broker = BrokerProcess::start(&format!("allowed_hours = [{start}, {end}]\n"));
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    issue(&broker, &node, json!({"grant": "payments-token"})).await;
    let time = time_signal(&broker);
    assert_eq!(
        (time["value"].as_u64(), time["status"].as_str()),
        (Some(0), Some("fresh"))
    );

    // Without allowed hours the signal drops out of the score.
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(time_signal(&broker)["status"], "dropped");
}
