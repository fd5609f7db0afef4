//! CI runners against the real broker: a real OIDC issuer (discovery and
//! JWKS over HTTP on 127.0.0.1) signs GitHub Actions tokens; the broker
//! verifies them, maps them by CI trust policy, decides, logs and mints —
//! through `POST /v1/ci/credentials` and RFC 8693 `POST /v1/token`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mintguard_certs::jwt::{JwtAlgorithm, JwtKeySet, JwtSettings};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://mintguard.example.org";

/// An OIDC issuer: its keys, and the JWKS it serves (swapped on rotation).
struct Issuer {
    url: String,
    keys: Mutex<JwtKeySet>,
    jwks: Arc<Mutex<Value>>,
}

impl Issuer {
    async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = JwtKeySet::in_memory(JwtSettings {
            algorithm: JwtAlgorithm::Es256,
            max_token_ttl: Duration::from_secs(3600),
        })
        .unwrap();
        let jwks = Arc::new(Mutex::new(
            serde_json::to_value(keys.jwks(time::OffsetDateTime::now_utc())).unwrap(),
        ));
        let served = jwks.clone();
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks")});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = discovery.clone();
                    async move { axum::Json(d) }
                }),
            )
            .route(
                "/.well-known/jwks",
                axum::routing::get(move || {
                    let j = served.lock().unwrap().clone();
                    async move { axum::Json(j) }
                }),
            );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let app = app.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        Arc::new(Self {
            url,
            keys: Mutex::new(keys),
            jwks,
        })
    }

    fn kid(&self) -> String {
        self.keys.lock().unwrap().active().kid().to_owned()
    }

    fn encoding_key(&self) -> EncodingKey {
        let keys = self.keys.lock().unwrap();
        EncodingKey::from_ec_pem(keys.active().private_key().to_pem().as_bytes()).unwrap()
    }

    /// Signs `claims` with the active key, `edit` adjusting the header.
    fn sign(&self, claims: &Value, edit: impl FnOnce(&mut Header)) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid());
        edit(&mut header);
        jsonwebtoken::encode(&header, claims, &self.encoding_key()).unwrap()
    }

    /// Rotates the signing key; the JWKS now serves old and new.
    fn rotate(&self) {
        let mut keys = self.keys.lock().unwrap();
        let now = time::OffsetDateTime::now_utc();
        keys.rotate(now).unwrap();
        *self.jwks.lock().unwrap() = serde_json::to_value(keys.jwks(now)).unwrap();
    }
}

/// The full GitHub Actions claim set for a push to main.
fn github_claims(iss: &str, jti: &str) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "jti": jti,
        "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
        "aud": AUDIENCE,
        "ref": "refs/heads/main",
        "sha": "d6e5b0f0c8a1f5f6e8f2f1e0d9c8b7a6f5e4d3c2",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_owner_id": "65432",
        "repository_visibility": "private",
        "repository_id": "123456789",
        "run_id": "6789012345",
        "run_number": "42",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "d6e5b0f0c8a1f5f6e8f2f1e0d9c8b7a6f5e4d3c2",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "d6e5b0f0c8a1f5f6e8f2f1e0d9c8b7a6f5e4d3c2",
        "runner_environment": "github-hosted",
        "environment": "production",
        "iss": iss,
        "nbf": now - 5,
        "iat": now - 5,
        "exp": now + 300,
    })
}

fn ci_config(issuer: &str) -> String {
    format!(
        r#"
[limits]
refusal_window = "200ms"
[ci]
skew = "30s"
per_address_per_second = 1000
[[ci.issuers]]
url = "{issuer}"
allow_insecure_loopback = true
refresh_min_interval = "0s"
# This local issuer stands in for GitHub's, whose hosted runners say so.
hosted_runner_environment = "github-hosted"
[[ci.policies]]
name = "octo-deploy"
issuer = "{issuer}"
audience = "{AUDIENCE}"
identity = "spiffe://example.org/ci/github/{{repository}}/{{ref}}"
grants = ["payments-token", "aws-deploy"]
[ci.policies.claims]
repository_id = "123456789"
repository_owner_id = "65432"
ref = {{ glob = "refs/heads/*" }}
job_workflow_ref = {{ regex = 'octo-org/octo-repo/\.github/workflows/deploy\.yml@refs/heads/main' }}
[[ci.policies]]
name = "audited"
issuer = "{issuer}"
audience = "audit-only"
identity = "spiffe://example.org/ci/github/{{repository}}"
grants = ["payments-token"]
mode = "audit"
[ci.policies.claims]
repository_id = "123456789"
[[grants]]
name = "aws-deploy"
kind = "aws_sts"
max_ttl = "1h"
aws_sts = {{ role_arn = "arn:aws:iam::123456789012:role/deploy" }}
"#
    )
}

const CI_POLICY: &str = r#"
@id("ci-main-may-mint")
permit (principal is Mintguard::CiJob, action == Mintguard::Action::"mint",
        resource == Mintguard::Grant::"payments-token")
when { context.ci_claims has ref && context.ci_claims.ref == "refs/heads/main" };
"#;

async fn start() -> (BrokerProcess, Arc<Issuer>) {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ci.cedar"), CI_POLICY).unwrap();
    let broker = BrokerProcess::start_in(dir, &ci_config(&issuer.url));
    (broker, issuer)
}

async fn ci_post(broker: &BrokerProcess, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/ci/credentials",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        json!({"grant": "payments-token"}).to_string().into_bytes(),
    )
    .await
    .unwrap()
}

async fn exchange(broker: &BrokerProcess, token: &str) -> Reply {
    exchange_for(broker, token, "payments-token").await
}

async fn exchange_for(broker: &BrokerProcess, token: &str, resource: &str) -> Reply {
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("subject_token", token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("resource", resource)
        .finish();
    https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.into_bytes(),
    )
    .await
    .unwrap()
}

/// The `sub` of a broker JWT, verified against the broker's JWKS.
async fn verified_sub(broker: &BrokerProcess, token: &str) -> String {
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
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["payments"]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    claims["sub"].as_str().unwrap().to_owned()
}

fn leases(broker: &BrokerProcess) -> usize {
    broker.cli_json(&["leases"]).as_array().unwrap().len()
}

/// RFC 8693 answers with a JWT (`access_token`): a grant of another kind
/// is refused (and logged) before anything is decided, minted or spent —
/// the same token then gets a JWT from the credentials endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_refuses_a_grant_that_is_not_a_jwt() {
    let (broker, issuer) = start().await;
    let reply = exchange_for(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-kind"), |_| {}),
        "aws-deploy",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.body["error"], "invalid_target");
    let detail = reply.body["error_description"].as_str().unwrap();
    assert!(detail.contains("unsupported_grant_kind"), "{detail}");
    assert_eq!(leases(&broker), 0);
    // Logged as the CI job's refused request, and the token not spent.
    let refused = broker.logs(&["--grant", "aws-deploy"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0]["body"]["ci"]["refused"],
        "unsupported_grant_kind"
    );
    let reply = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-kind"), |_| {}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_tokens_get_credentials_through_both_endpoints() {
    let (broker, issuer) = start().await;
    let want = "spiffe://example.org/ci/github/octo-org/octo-repo/refs/heads/main";

    let reply = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-1"), |_| {}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let jwt = reply.body["credential"]["token"].as_str().unwrap();
    assert_eq!(verified_sub(&broker, jwt).await, want);

    let reply = exchange(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-2"), |_| {}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(reply.body["token_type"], "Bearer");
    assert!(reply.body["expires_in"].as_i64().unwrap() > 0);
    assert_eq!(
        verified_sub(&broker, reply.body["access_token"].as_str().unwrap()).await,
        want
    );

    // The decision carried the CI issuer context.
    let out = broker.cli(&["logs", "--json", "--outcome", "allow"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let record: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(record["body"]["ci"]["policy"], "octo-deploy");
    assert_eq!(record["body"]["input"]["issuer"]["kind"], "ci_issuer");
    assert_eq!(record["node"], issuer.url.as_str());

    // A token signed with a key the issuer rotated to is accepted after one
    // JWKS refresh, with no restart.
    issuer.rotate();
    let reply = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-3"), |_| {}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(leases(&broker), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_comes_from_the_runner_and_attestation_from_ref_protection() {
    let (broker, issuer) = start().await;
    let signals = |jti: &str| {
        let out = broker.cli(&["logs", "--json"]);
        let record: Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "decision")
            .find(|r| r["body"]["ci"]["token"]["jti"] == jti)
            .unwrap();
        let by_kind = |kind: &str| {
            let s = record["body"]["decision"]["trust"]["signals"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["kind"] == kind)
                .unwrap()
                .clone();
            (
                s["observed"].as_u64().unwrap(),
                s["source"].as_str().unwrap().to_owned(),
            )
        };
        (
            (by_kind("posture"), by_kind("attestation")),
            record["body"]["decision"]["trust"]["score"]
                .as_u64()
                .unwrap(),
        )
    };
    let hosted = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-hosted"), |_| {}),
    )
    .await;
    assert_eq!(hosted.status, 200, "{}", hosted.text);
    let (observed, hosted_trust) = signals("jti-hosted");
    assert_eq!(
        observed,
        (
            (100, "ci:hosted_runner".to_owned()),
            (100, "ci:protected_ref".to_owned())
        )
    );
    // A self-hosted runner building an unprotected branch scores lower.
    let mut claims = github_claims(&issuer.url, "jti-self");
    claims["runner_environment"] = "self-hosted".into();
    claims["ref_protected"] = "false".into();
    let own = ci_post(&broker, &issuer.sign(&claims, |_| {})).await;
    assert!(own.status < 500, "{}", own.text);
    let (observed, own_trust) = signals("jti-self");
    assert_eq!(
        observed,
        (
            (50, "ci:self_hosted_runner".to_owned()),
            (60, "ci:unprotected_ref".to_owned())
        )
    );
    assert!(own_trust < hosted_trust, "{own_trust} vs {hosted_trust}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_suspends_a_ci_issuer_by_its_url() {
    let (broker, issuer) = start().await;
    let first = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-before"), |_| {}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let out = broker.cli(&["suspend", &issuer.url, "--reason", "issuer keys leaked"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the issuer vouched for is revoked; its next token is refused.
    let live = broker.live_leases();
    assert!(live.is_empty(), "{live:?}");
    // The console's issuer page: a CI issuer, its policies, its one
    // issuance in the last hour, and its suspension.
    let page = broker
        .admin_get(&format!(
            "/admin/v1/issuer?id={}",
            mintguard_broker::cli::ops::urlencode(&issuer.url)
        ))
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["kind"], "ci_issuer");
    let policies: Vec<&str> = page.body["ci_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["octo-deploy", "audited"]);
    assert_eq!(page.body["rate"]["last_hour"], 1, "{}", page.text);
    assert_eq!(page.body["live_leases"], 0);
    assert_eq!(page.body["suspension"]["reason"], "issuer keys leaked");
    assert!(page.body["blast_radius"]["max"].as_f64().is_some());
    let unknown = broker
        .admin_get("/admin/v1/issuer?id=https%3A%2F%2Fissuer.example.org")
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.text);
    let refused = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-during"), |_| {}),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.body["error"]["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("issuer_suspended")),
        "{}",
        refused.text
    );
    // A URL that is no configured issuer is not a subject.
    let out = broker.cli(&["suspend", "https://issuer.example.org", "--reason", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_spiffe_id"));
    assert!(broker.cli(&["resume", &issuer.url]).status.success());
    let after = ci_post(
        &broker,
        &issuer.sign(&github_claims(&issuer.url, "jti-after"), |_| {}),
    )
    .await;
    assert_eq!(after.status, 200, "{}", after.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_negative_corpus_mints_nothing_and_is_all_logged() {
    let (broker, issuer) = start().await;
    let iss = issuer.url.clone();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = |jti: &str| github_claims(&iss, jti);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let with = |jti: &str, edit: &dyn Fn(&mut Value)| {
        let mut c = claims(jti);
        edit(&mut c);
        c
    };
    // A used token, for the replay case.
    let used = issuer.sign(&claims("jti-used"), |_| {});
    assert_eq!(ci_post(&broker, &used).await.status, 200);
    let other_key = JwtKeySet::in_memory(JwtSettings {
        algorithm: JwtAlgorithm::Es256,
        max_token_ttl: Duration::from_secs(3600),
    })
    .unwrap();
    let other =
        EncodingKey::from_ec_pem(other_key.active().private_key().to_pem().as_bytes()).unwrap();
    let jwk = serde_json::to_value(issuer.keys.lock().unwrap().active().jwk()).unwrap();
    let public_key_bytes = jwk.to_string();

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": issuer.kid()})),
        b64(&claims("n1"))
    );
    let hs256 = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(issuer.kid());
            h
        },
        &claims("n2"),
        &EncodingKey::from_secret(public_key_bytes.as_bytes()),
    )
    .unwrap();
    let wrong_key = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(issuer.kid());
            h
        },
        &claims("n5"),
        &other,
    )
    .unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("alg none", alg_none, 401, "bad_algorithm"),
        ("HS256 with the public key", hs256, 401, "bad_algorithm"),
        (
            "unknown kid",
            issuer.sign(&claims("n3"), |h| h.kid = Some("no-such-key".into())),
            401,
            "unknown_kid",
        ),
        (
            "kid with path characters",
            issuer.sign(&claims("n4"), |h| h.kid = Some("../../etc/passwd".into())),
            401,
            "bad_kid",
        ),
        (
            "kid with SQL",
            issuer.sign(&claims("n4b"), |h| h.kid = Some("1' OR '1'='1".into())),
            401,
            "bad_kid",
        ),
        ("right kid, different key", wrong_key, 401, "bad_signature"),
        (
            "expired",
            issuer.sign(&with("n6", &|c| c["exp"] = json!(now - 3600)), |_| {}),
            401,
            "token_expired",
        ),
        (
            "nbf in the future",
            issuer.sign(&with("n7", &|c| c["nbf"] = json!(now + 3600)), |_| {}),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong iss",
            issuer.sign(
                &with("n8", &|c| c["iss"] = json!("https://evil.example")),
                |_| {},
            ),
            401,
            "unknown_issuer",
        ),
        (
            "wrong aud",
            issuer.sign(&with("n9", &|c| c["aud"] = json!("someone-else")), |_| {}),
            403,
            "no_policy",
        ),
        (
            "jku header",
            issuer.sign(&claims("n10"), |h| {
                h.jku = Some("https://evil.example/jwks".into())
            }),
            401,
            "forbidden_header",
        ),
        (
            "x5u header",
            issuer.sign(&claims("n11"), |h| {
                h.x5u = Some("https://evil.example/cert".into())
            }),
            401,
            "forbidden_header",
        ),
        (
            "jwk header",
            issuer.sign(&claims("n12"), |h| {
                h.jwk = Some(serde_json::from_value(jwk.clone()).unwrap())
            }),
            401,
            "forbidden_header",
        ),
        ("replayed jti", used, 401, "token_replayed"),
        (
            "1 MB token",
            format!("{}.{}.x", "a".repeat(512 * 1024), "b".repeat(512 * 1024)),
            401,
            "token_too_large",
        ),
        (
            "invalid base64",
            "!!!.@@@.###".into(),
            401,
            "malformed_token",
        ),
        (
            "a claim named as the JSON reader's own",
            issuer.sign(
                &with("n13b", &|c| c["$serde_json::private::RawValue"] = json!({})),
                |_| {},
            ),
            401,
            "bad_claims",
        ),
        (
            "claim of the wrong type",
            issuer.sign(&with("n13", &|c| c["exp"] = json!("tomorrow")), |_| {}),
            401,
            "bad_claims",
        ),
        (
            "pull_request event",
            issuer.sign(
                &with("n14", &|c| c["event_name"] = json!("pull_request")),
                |_| {},
            ),
            403,
            "fork_event_refused",
        ),
        (
            "workflow_run event (runs with a fork's artifacts)",
            issuer.sign(
                &with("n14b", &|c| c["event_name"] = json!("workflow_run")),
                |_| {},
            ),
            403,
            "fork_event_refused",
        ),
        (
            "issue_comment event (anyone may comment)",
            issuer.sign(
                &with("n14c", &|c| c["event_name"] = json!("issue_comment")),
                |_| {},
            ),
            403,
            "fork_event_refused",
        ),
        (
            "policy in audit mode",
            issuer.sign(&with("n15", &|c| c["aud"] = json!("audit-only")), |_| {}),
            403,
            "audit_mode",
        ),
    ];
    let before = leases(&broker);
    let records_before = broker
        .cli(&["logs", "--json"])
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let mut failures = Vec::new();
    for (name, token, status, code) in &cases {
        // The 1 MB token arrives as an RFC 8693 form (an HTTP header that
        // large is cut off by the HTTP layer); the others as bearers.
        let reply = if token.len() > 64 * 1024 {
            exchange(&broker, token).await
        } else {
            ci_post(&broker, token).await
        };
        let got = if reply.body["error"].is_object() {
            (
                reply.status,
                reply.body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        } else {
            // OAuth error JSON: the reason code leads the description.
            (
                reply.status,
                reply.body["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let want_status = if token.len() > 64 * 1024 {
            400
        } else {
            *status
        };
        if got != (want_status, (*code).to_owned()) {
            failures.push(format!(
                "{name}: expected {want_status} {code}, got {} {}",
                got.0, reply.text
            ));
        }
    }
    // A bearer token too large for the HTTP layer is refused there (431,
    // no handler sees it) and still counted.
    let huge = format!("Bearer {}", "a".repeat(500 * 1024));
    let too_large = https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/ci/credentials",
        &[
            ("authorization", huge.as_str()),
            ("content-type", "application/json"),
        ],
        b"{}".to_vec(),
    )
    .await;
    assert!(
        too_large.as_ref().map_or(true, |r| r.status == 431),
        "{:?}",
        too_large.map(|r| r.status)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(leases(&broker), before, "nothing was minted");
    // Every refusal is in the log: one record each once the token was
    // verified (the issuer vouched for the caller), and the callers who
    // proved nothing counted in one record per window (with samples).
    let mut counted = 0;
    let mut reasons = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let records: Vec<Value> = broker
            .cli(&["logs", "--json"])
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .skip(records_before)
            .collect();
        counted = 0;
        reasons.clear();
        for r in &records {
            let ci = &r["body"]["ci"];
            if ci["refused"] == "unauthenticated" {
                for c in ci["detail"]["counts"].as_array().unwrap() {
                    counted += c["count"].as_u64().unwrap() as usize;
                    reasons.insert(c["reason"].as_str().unwrap().to_owned());
                }
                assert!(!ci["detail"]["samples"].as_array().unwrap().is_empty());
            } else {
                counted += 1;
            }
        }
        if counted == cases.len() + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, cases.len() + 1, "every refusal is in the log");
    for reason in ["bad_signature", "token_too_large", "header_too_large"] {
        assert!(reasons.contains(reason), "{reason} in {reasons:?}");
    }
    let metrics = broker.admin_get("/metrics").await.text;
    assert!(
        metrics.contains(r#"mintguard_unauthenticated_refusals_total{listener="public",reason="header_too_large"} 1"#),
        "{metrics}"
    );
    broker.assert_log_verifies();
}

/// A stock HTTPS client that checks host names — Python's `ssl` with the
/// trust bundle as its CA file, as a CI runner's curl would — exchanges a
/// token at the public listener by DNS name (`listen.public_dns_names`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_checking_https_client_reaches_the_public_listener() {
    let (broker, issuer) = start().await;
    let token = issuer.sign(&github_claims(&issuer.url, "jti-py"), |_| {});
    let port = broker.addr("public").rsplit_once(':').unwrap().1.to_owned();
    let script = r#"
import json, ssl, sys, urllib.parse, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
form = urllib.parse.urlencode({
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token": sys.argv[3],
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "audience": "payments-token",
}).encode()
req = urllib.request.Request(f"https://localhost:{sys.argv[2]}/v1/token", data=form)
print(json.load(urllib.request.urlopen(req, context=ctx))["issued_token_type"])
"#;
    let python = std::env::var("MINTGUARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(python)
        .args(["-c", script])
        .arg(broker.data().join("bundle.pem"))
        .arg(&port)
        .arg(&token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "urn:ietf:params:oauth:token-type:jwt"
    );
}

/// Production-gated jobs need an approver.
const CI_STEP_UP_POLICY: &str = r#"
@id("gated-jobs-need-an-approver")
@outcome("step_up")
forbid (principal is Mintguard::CiJob, action, resource)
when { context.ci_claims has environment && context.ci_claims.environment == "production-gated" };
"#;

/// `GET /v1/ci/approvals/{id}` with `token` as bearer (or none).
async fn ci_poll(broker: &BrokerProcess, token: Option<&str>, id: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "GET",
        &format!("/v1/ci/approvals/{id}"),
        &headers,
        vec![],
    )
    .await
    .unwrap()
}

/// A CI job held for approval polls it with a fresh token of its own
/// identity (no other job's token finds it), and retries once approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_job_polls_its_step_up_approval_then_retries() {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ci.cedar"), CI_POLICY).unwrap();
    std::fs::write(dir.path().join("policies/gate.cedar"), CI_STEP_UP_POLICY).unwrap();
    let broker = BrokerProcess::start_in(dir, &ci_config(&issuer.url));
    let gated = |jti: &str| {
        let mut claims = github_claims(&issuer.url, jti);
        claims["environment"] = "production-gated".into();
        issuer.sign(&claims, |_| {})
    };

    let held = ci_post(&broker, &gated("jti-held")).await;
    assert_eq!(held.status, 202, "{}", held.text);
    let id = held.body["approval_id"].as_str().unwrap().to_owned();

    let pending = ci_poll(&broker, Some(&gated("jti-poll-1")), &id).await;
    assert_eq!(pending.status, 200, "{}", pending.text);
    assert_eq!(pending.body["state"], "pending");
    // No token, or another identity's (another branch): not found.
    assert_eq!(ci_poll(&broker, None, &id).await.status, 401);
    let mut other = github_claims(&issuer.url, "jti-other");
    other["ref"] = "refs/heads/dev".into();
    let stranger = ci_poll(&broker, Some(&issuer.sign(&other, |_| {})), &id).await;
    assert_eq!(stranger.status, 404, "{}", stranger.text);
    assert_eq!(stranger.body["error"]["code"], "unknown_approval");

    let out = broker.cli(&["approve", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approved = ci_poll(&broker, Some(&gated("jti-poll-2")), &id).await;
    assert_eq!(approved.body["state"], "approved", "{}", approved.text);

    // Another job mapped to the same identity (another run of the same
    // branch) cannot redeem the approval given to the held one.
    let mut another_run = github_claims(&issuer.url, "jti-another-run");
    another_run["environment"] = "production-gated".into();
    another_run["run_id"] = "1111111111".into();
    let redeem = |token: String| {
        let (addr, bundle, id) = (broker.addr("public"), broker.bundle(), id.clone());
        async move {
            https(
                &addr,
                &bundle,
                None,
                "POST",
                "/v1/ci/credentials",
                &[
                    ("authorization", format!("Bearer {token}").as_str()),
                    ("content-type", "application/json"),
                ],
                json!({"grant": "payments-token", "approval_id": id})
                    .to_string()
                    .into_bytes(),
            )
            .await
            .unwrap()
        }
    };
    let stolen = redeem(issuer.sign(&another_run, |_| {})).await;
    assert_eq!(stolen.status, 403, "{}", stolen.text);
    assert_eq!(stolen.body["error"]["code"], "approval_mismatch");

    let retry = https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/ci/credentials",
        &[
            (
                "authorization",
                format!("Bearer {}", gated("jti-retry")).as_str(),
            ),
            ("content-type", "application/json"),
        ],
        json!({"grant": "payments-token", "approval_id": id})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(
        ci_poll(&broker, Some(&gated("jti-poll-3")), &id).await.body["state"],
        "used"
    );
}
