//! The STS minter against moto (tests/peers.sh): AssumeRole with the
//! identity's session name, SourceIdentity, tags and a session policy; the
//! real AWS CLI uses the credentials; STS's 900 s floor; advisory
//! revocation; SigV4 against moto's authenticating mode; and STS calls
//! that go unanswered (left for the operator) or are refused (failed).

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
    start_in(tempfile::tempdir().unwrap(), endpoint, key, secret, "", &[])
}

/// `start` in `dir` (a restart keeps it), with more `[aws]` settings and
/// environment.
fn start_in(
    dir: tempfile::TempDir,
    endpoint: &str,
    key: &str,
    secret: &str,
    aws: &str,
    env: &[(&str, &str)],
) -> BrokerProcess {
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
{aws}
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
            &[
                ("AWS_ACCESS_KEY_ID", key),
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
            env,
        ]
        .concat(),
    );
    if broker
        .cli_json(&["entry", "list", "--json"])
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return broker;
    }
    register_api_with(
        &broker,
        "node-1",
        &["unix:uid:1000", "unix:sha256:0a1b2c"],
        &["aws-payments", "aws-strict", "aws-reduced"],
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
        arn.ends_with("assumed-role/payments/example.org@ns@pay@sa@api"),
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
        "example.org@ns@pay@sa@api"
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

/// A reduced decision mints with the grant's inline session policy; the
/// AssumeRole STS receives (read through a recording proxy) carries the
/// policy, `SourceIdentity`, the session tags and the reduced duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reduced_variant_carries_the_session_policy() {
    let endpoint = env("MINTGUARD_STS_ENDPOINT");
    let (proxy, seen) = recording_proxy(&endpoint).await;
    let broker = start(&proxy, "testing", "testing");
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
    let lease = reply.body["lease_id"].as_str().unwrap();
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    for part in [
        "Action=AssumeRole&".to_owned(),
        "Policy=%7B%22Version%22".to_owned(),
        "SourceIdentity=example.org%40ns%40pay%40sa%40api".to_owned(),
        "DurationSeconds=1800".to_owned(),
        "Tags.member.1.Key=mintguard%3Aidentity".to_owned(),
        format!("Tags.member.2.Value={lease}"),
        "Tags.member.3.Value=spiffe%3A%2F%2Fexample.org%2Fmintguard%2Fnode%2Fnode-1".to_owned(),
    ] {
        assert!(sent.contains(&part), "{part} not in {sent}");
    }
    assert!(
        sent.to_ascii_lowercase()
            .contains("authorization: aws4-hmac-sha256"),
        "{sent}"
    );
}

/// A TCP proxy in front of `upstream` that keeps every byte clients send,
/// so a test can read what the broker presented to STS.
async fn recording_proxy(upstream: &str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// Federation: `AssumeRoleWithWebIdentity` with a broker-signed ES256 JWT.
/// The broker runs with no AWS credentials at all (an `assume_role` grant
/// fails for want of them); the token it presents verifies against the JWKS
/// its discovery document names, with the SPIFFE ID as `sub`, the lease as
/// `jti`, and AWS's source-identity and session-tag claims; the AWS CLI uses
/// the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_federation_needs_no_aws_keys() {
    let moto = env("MINTGUARD_STS_ENDPOINT");
    let (endpoint, seen) = recording_proxy(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/sts.cedar"), STS_POLICY).unwrap();
    let broker = BrokerProcess::start_with_env(
        dir,
        "",
        &format!(
            r#"
[aws]
endpoint = "{endpoint}"
web_identity_audience = "sts.amazonaws.com"
[[grants]]
name = "aws-payments"
kind = "aws_sts"
max_ttl = "1h"
aws_sts = {{ role_arn = "{ROLE}" }}
[[grants]]
name = "aws-federated"
kind = "aws_sts"
max_ttl = "1h"
aws_sts = {{ role_arn = "{ROLE}", mode = "web_identity" }}
"#
        ),
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
        ],
    );
    register_api_with(
        &broker,
        "node-1",
        &["unix:uid:1000"],
        &["aws-payments", "aws-federated"],
    );
    let node = enrolled_node(&broker, "node-1").await;

    let signed = issue(
        &broker,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(
        (signed.status, signed.body["error"]["code"].as_str()),
        (503, Some("upstream_unavailable")),
        "{}",
        signed.text
    );

    let reply = issue(
        &broker,
        &node,
        json!({"grant": "aws-federated", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let lease = reply.body["lease_id"].as_str().unwrap();
    let arn = caller_arn(&moto, &reply.body["credential"]);
    assert!(
        arn.ends_with("assumed-role/payments/example.org@ns@pay@sa@api"),
        "{arn}"
    );

    // What STS received, verified the way IAM's OIDC federation does.
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(sent.contains("Action=AssumeRoleWithWebIdentity"), "{sent}");
    assert!(
        !sent.to_ascii_lowercase().contains("authorization:"),
        "the call must be unsigned"
    );
    let token = sent
        .split("WebIdentityToken=")
        .nth(1)
        .unwrap()
        .split(['&', '\r', '\n'])
        .next()
        .unwrap()
        .to_owned();
    let get = |path: &'static str| {
        let broker = &broker;
        async move {
            https(
                &broker.addr("public"),
                &broker.bundle(),
                None,
                "GET",
                path,
                &[],
                vec![],
            )
            .await
            .unwrap()
            .body
        }
    };
    let discovery = get("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], "https://mintguard.example.org");
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let claims = verify_with_jwks(
        get("/.well-known/jwks.json").await,
        &token,
        "sts.amazonaws.com",
    );
    assert_eq!(claims["sub"], API);
    assert_eq!(claims["jti"], lease);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert_eq!(
        claims["https://aws.amazon.com/source_identity"],
        "example.org@ns@pay@sa@api"
    );
    let tags = &claims["https://aws.amazon.com/tags"]["principal_tags"];
    assert_eq!(tags["mintguard:lease"], json!([lease]));
    assert_eq!(tags["mintguard:identity"], json!([API]));

    // The outcome says how it was minted; the token and secret are nowhere.
    let out = broker.cli(&[
        "logs",
        "--json",
        "--grant",
        "aws-federated",
        "--outcome",
        "minted",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let outcome: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(outcome["body"]["upstream"]["mode"], "web_identity");
    assert!(!text.contains(&token));
    assert!(
        !text.contains(
            reply.body["credential"]["secret_access_key"]
                .as_str()
                .unwrap()
        )
    );
}

/// The broker aborts between the STS call and its answer: after a restart
/// the unanswered intent is logged for operator action (STS sessions cannot
/// be found or revoked one by one), its task is ended, the lease stays
/// listed as outliving it with the deny policy to attach, and the log
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_sts_and_the_answer_is_left_for_the_operator() {
    let endpoint = env("MINTGUARD_STS_ENDPOINT");
    let broker = start_in(
        tempfile::tempdir().unwrap(),
        &endpoint,
        "testing",
        "testing",
        "timeout = \"2s\"\nreconcile_after = \"6s\"",
        &[("MINTGUARD_FAULT", "after_upstream_mint")],
    );
    let node = enrolled_node(&broker, "node-1").await;
    let dir = issue_into_crash(
        broker,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    let broker = start_in(
        dir,
        &endpoint,
        "testing",
        "testing",
        "timeout = \"2s\"\nreconcile_after = \"6s\"",
        &[],
    );
    let action = wait_for_outcome(&broker, "reconcile_operator_action").await;
    let lease = action["body"]["lease_id"].as_str().unwrap().to_owned();
    assert!(
        action["body"]["action"]
            .as_str()
            .unwrap()
            .contains("revoke-policy"),
        "{action}"
    );
    let outlived = broker.cli_json(&["leases", "--outlived"]);
    assert!(
        outlived
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == lease.as_str()),
        "{outlived}"
    );
    let policy = broker.cli_json(&["aws", "revoke-policy", &lease]);
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/mintguard:lease"],
        lease.as_str()
    );
    broker.assert_log_verifies();
}

/// An STS endpoint that takes every request and never answers.
async fn silent_endpoint() -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://{addr}")
}

/// STS took the request and never answered: it may have issued the
/// session, so the call ends at `[aws] timeout` as 503
/// `upstream_outcome_unknown`, the lease is neither closed nor given a
/// failed outcome, and reconciliation logs it for operator action. An STS
/// that refuses the connection issued nothing: 503 `upstream_unavailable`,
/// a `mint_failed` outcome, the lease closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_sts_call_is_left_for_the_operator_a_refused_one_fails() {
    let silent = silent_endpoint().await;
    let broker = start_in(
        tempfile::tempdir().unwrap(),
        &silent,
        "testing",
        "testing",
        "timeout = \"1s\"\nreconcile_after = \"3s\"",
        &[],
    );
    let node = enrolled_node(&broker, "node-1").await;
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_outcome_unknown");
    let records = broker.logs(&["--grant", "aws-payments"]);
    let intent = records
        .iter()
        .find(|r| r["kind"] == "intent")
        .expect("the intent record");
    let lease = intent["body"]["lease"]["id"].as_str().unwrap().to_owned();
    assert!(
        !records.iter().any(|r| r["outcome"] == "mint_failed"),
        "an unanswered call is not a failure: {records:?}"
    );
    let action = wait_for_outcome(&broker, "reconcile_operator_action").await;
    assert_eq!(action["body"]["lease_id"], lease.as_str());
    assert!(
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease.as_str()),
        "the session may exist: its lease stays listed"
    );
    broker.assert_log_verifies();

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = start(&format!("http://{closed}"), "testing", "testing");
    let node = enrolled_node(&refused, "node-1").await;
    let reply = issue(
        &refused,
        &node,
        json!({"grant": "aws-payments", "ttl_seconds": 900}),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_unavailable");
    let failed = wait_for_outcome(&refused, "mint_failed").await;
    assert!(
        failed["body"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{failed}"
    );
    assert!(
        refused.live_leases().is_empty(),
        "{:?}",
        refused.live_leases()
    );
    refused.assert_log_verifies();
}
