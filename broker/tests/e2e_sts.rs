//! The STS minter against moto (tests/peers.sh): AssumeRole with the
//! identity's session name, SourceIdentity, tags and a session policy; the
//! real AWS CLI uses the credentials; STS's 900 s floor; advisory
//! revocation; and SigV4 against moto's authenticating mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run under tests/peers.sh"))
}

const STS_POLICY: &str = r#"
@id("api-may-get-aws")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource);
@id("aws-reduced-is-always-reduced")
@outcome("allow_reduced")
forbid (principal, action, resource == Mintguard::Grant::"aws-reduced");
"#;

const ROLE: &str = "arn:aws:iam::123456789012:role/payments";

fn start(endpoint: &str, key: &str, secret: &str) -> BrokerProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/sts.cedar"), STS_POLICY).unwrap();
    let broker = BrokerProcess::start_with_env(
        dir,
        "",
        &format!(
            r#"
[aws]
region = "us-east-1"
endpoint = "{endpoint}"
[[grants]]
name = "aws-payments"
kind = "aws_sts"
max_ttl = "1h"
aws_sts = {{ role_arn = "{ROLE}", ttl_floor = "upstream", reduced_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}]}}' }}
[[grants]]
name = "aws-reduced"
kind = "aws_sts"
max_ttl = "1h"
reduced = {{ max_ttl = "30m" }}
aws_sts = {{ role_arn = "{ROLE}", reduced_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}]}}' }}
[[grants]]
name = "aws-strict"
kind = "aws_sts"
max_ttl = "1h"
aws_sts = {{ role_arn = "{ROLE}" }}
"#
        ),
        &[
            ("AWS_ACCESS_KEY_ID", key),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let out = broker.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        API,
        "--parent",
        "node-1",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:sha256:0a1b2c",
        "--grant",
        "aws-payments",
        "--grant",
        "aws-strict",
        "--grant",
        "aws-reduced",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    broker
}

/// `aws sts get-caller-identity` with `creds`; the caller's ARN.
fn caller_arn(endpoint: &str, creds: &Value) -> String {
    let out = Command::new(env("MINTGUARD_AWS_CLI"))
        .args([
            "sts",
            "get-caller-identity",
            "--output",
            "json",
            "--endpoint-url",
            endpoint,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AWS_ACCESS_KEY_ID",
            creds["access_key_id"].as_str().unwrap(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            creds["secret_access_key"].as_str().unwrap(),
        )
        .env(
            "AWS_SESSION_TOKEN",
            creds["session_token"].as_str().unwrap(),
        )
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws cli: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Arn"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_credentials_work_and_revocation_is_advisory() {
    let endpoint = env("MINTGUARD_STS_ENDPOINT");
    let broker = start(&endpoint, "testing", "testing");
    let node = enrolled_node(&broker, "node-1").await;

    // Below STS's floor with ttl_floor = "upstream": minted at 900 s, recorded.
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let creds = &reply.body["credential"];
    assert_eq!(creds["type"], "aws");
    let arn = caller_arn(&endpoint, creds);
    assert!(
        arn.ends_with("assumed-role/payments/example.org.ns.pay.sa.api"),
        "{arn}"
    );
    let out = broker.cli(&["logs", "--json", "--grant", "aws-payments"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records[0]["kind"], "intent");
    assert_eq!(records[0]["body"]["lease"]["effective_ttl_seconds"], 900);
    assert_eq!(
        records[1]["body"]["upstream"]["source_identity"],
        "example.org.ns.pay.sa.api"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout)
            .contains(creds["secret_access_key"].as_str().unwrap())
    );

    // Without it, a TTL below 900 s is refused and logged.
    let refused = issue(
        &broker,
        &node,
        json!({"grant": "aws-strict", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("ttl_below_upstream_minimum")),
        "{}",
        refused.text
    );

    // Advisory: DELETE records the task's end; the lease stays live (and
    // shows in --outlived) until an operator confirms the deny policy.
    let lease = reply.body["lease_id"].as_str().unwrap().to_owned();
    let deleted = https(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(&node),
        "DELETE",
        &format!("/v1/leases/{lease}"),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let outlived = broker.cli_json(&["leases", "--outlived"]);
    assert!(
        outlived
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == lease.as_str()),
        "{outlived}"
    );
    let plain = broker.cli(&["revoke", &lease]);
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("advisory_revocation"));
    let policy = broker.cli_json(&["aws", "revoke-policy", &lease]);
    assert_eq!(policy["Statement"][0]["Effect"], "Deny");
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/mintguard:lease"],
        lease.as_str()
    );
    let confirmed = broker.cli(&["revoke", &lease, "--confirm-attached"]);
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stderr)
    );
    let leases = broker.cli_json(&["leases"]);
    let row = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == lease.as_str())
        .unwrap();
    assert_eq!(row["live"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signed_calls_succeed_and_a_wrong_secret_is_a_clear_503() {
    let endpoint = env("MINTGUARD_STS_AUTH_ENDPOINT");
    let key = env("MINTGUARD_STS_AUTH_ACCESS_KEY_ID");
    let secret = env("MINTGUARD_STS_AUTH_SECRET_ACCESS_KEY");
    let broker = start(&endpoint, &key, &secret);
    let node = enrolled_node(&broker, "node-1").await;
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let wrong = start(&endpoint, &key, "not-the-secret");
    let node = enrolled_node(&wrong, "node-1").await;
    let reply = issue(
        &wrong,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_unavailable");
    let out = wrong.cli(&["logs", "--json", "--outcome", "mint_failed"]);
    let failed: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let error = failed["body"]["error"].as_str().unwrap();
    assert!(
        error.contains("Signature")
            || error.contains("signature")
            || error.contains("InvalidClientTokenId"),
        "{error}"
    );
}

/// A reduced decision mints with the grant's inline session policy (moto
/// accepts the AssumeRole with `Policy`; the outcome records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reduced_variant_carries_the_session_policy() {
    let endpoint = env("MINTGUARD_STS_ENDPOINT");
    let broker = start(&endpoint, "testing", "testing");
    let node = enrolled_node(&broker, "node-1").await;
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "aws-reduced", "ttl_seconds": 3600}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["decision"]["outcome"], "allow_reduced");
    assert!(caller_arn(&endpoint, &reply.body["credential"]).contains("assumed-role/payments/"));
    let out = broker.cli(&[
        "logs",
        "--json",
        "--grant",
        "aws-reduced",
        "--outcome",
        "minted",
    ]);
    let outcome: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(outcome["body"]["upstream"]["session_policy"], true);
    assert_eq!(outcome["body"]["upstream"]["duration_seconds"], 1800);
}
