//! Smoke tests of every real peer `tests/peers.sh` starts. They fail (never
//! skip) when a peer is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use mintguard_tests::{aws_cli, http_get_json, http_json, peer_env};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

fn vault(token: &str) -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(peer_env("VAULT_ADDR"))
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn postgres_answers_select_1_and_checks_passwords() {
    let url = peer_env("MINTGUARD_PG_URL");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        version.starts_with("15"),
        "PostgreSQL 15 expected, got {version}"
    );

    // scram-sha-256 is enforced: a wrong password is refused, so a later test
    // that connects with issued credentials proves something.
    let mut wrong: tokio_postgres::Config = url.parse().unwrap();
    wrong.password("wrong");
    let err = wrong
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("wrong password refused");
    let db = err.as_db_error().expect("a server-side refusal");
    assert!(
        db.message().contains("password authentication failed"),
        "{db:?}"
    );
}

#[tokio::test]
async fn openbao_is_healthy_and_creates_tokens_with_num_uses() {
    // vaultrs' `sys::health` expects Vault-only fields (`performance_standby`)
    // that OpenBao omits, so read the endpoint as JSON directly.
    let (status, health) =
        http_get_json(&format!("{}/v1/sys/health", peer_env("VAULT_ADDR"))).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["initialized"], true);
    assert_eq!(health["sealed"], false);

    let root = vault(&peer_env("VAULT_TOKEN"));
    let created = vaultrs::token::new(
        &root,
        Some(
            vaultrs::api::token::requests::CreateTokenRequest::builder()
                .ttl("60s")
                .num_uses(2u64)
                .policies(vec!["default".to_owned()]),
        ),
    )
    .await
    .unwrap();
    assert!(!created.accessor.is_empty());
    assert_eq!(created.token_type, "service");
    let looked_up = vaultrs::token::lookup(&root, &created.client_token)
        .await
        .unwrap();
    assert_eq!(looked_up.num_uses, 2);

    // Each use spends one; the third is refused. (Raw HTTP: on the last use
    // the server reports `num_uses: -1`, which vaultrs cannot parse as u64.)
    let lookup_self = format!("{}/v1/auth/token/lookup-self", peer_env("VAULT_ADDR"));
    let auth = [("x-vault-token", created.client_token.as_str())];
    let (first, body) = http_json("GET", &lookup_self, &auth, None).await;
    assert_eq!(first, 200, "{body}");
    assert_eq!(body["data"]["num_uses"], 1, "one use left after the first");
    let (second, _) = http_json("GET", &lookup_self, &auth, None).await;
    assert_eq!(second, 200);
    let (third, body) = http_json("GET", &lookup_self, &auth, None).await;
    assert_eq!(third, 403, "num_uses exhausted: {body}");
}

#[test]
fn moto_sts_answers_the_aws_cli() {
    let endpoint = peer_env("MINTGUARD_STS_ENDPOINT");
    let (ok, out, err) = aws_cli(
        "AKIAEXAMPLE",
        "secret",
        &[
            "--endpoint-url",
            &endpoint,
            "sts",
            "get-caller-identity",
            "--output",
            "json",
        ],
    );
    assert!(ok, "get-caller-identity failed: {err}");
    let identity: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        identity["Arn"].as_str().unwrap().starts_with("arn:aws:"),
        "{identity}"
    );
}

#[test]
fn moto_auth_mode_enforces_sigv4_and_known_keys() {
    let endpoint = peer_env("MINTGUARD_STS_AUTH_ENDPOINT");
    let key = peer_env("MINTGUARD_STS_AUTH_ACCESS_KEY_ID");
    let secret = peer_env("MINTGUARD_STS_AUTH_SECRET_ACCESS_KEY");
    let args = [
        "--endpoint-url",
        endpoint.as_str(),
        "sts",
        "get-caller-identity",
        "--output",
        "json",
    ];

    let (ok, out, err) = aws_cli(&key, &secret, &args);
    assert!(ok, "the admin user's keys must work: {err}");
    let identity: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        identity["Arn"]
            .as_str()
            .unwrap()
            .ends_with(":user/mintguard-admin"),
        "{identity}"
    );

    let (ok, _, err) = aws_cli("AKIAUNKNOWNKEY000000", "wrong", &args);
    assert!(!ok, "an unknown key must be refused");
    assert!(
        err.contains("InvalidClientTokenId") || err.contains("not valid"),
        "{err}"
    );

    let (ok, _, err) = aws_cli(&key, "wrong-secret", &args);
    assert!(!ok, "a bad signature must be refused");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
}
