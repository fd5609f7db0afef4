//! The Vault minter against the real OpenBao from tests/peers.sh
//! (`VAULT_ADDR`, `VAULT_TOKEN`): child tokens minted after a durable intent
//! record, used until `num_uses` is spent, revoked upstream (and confirmed)
//! on `DELETE` and on suspension; a Vault failure is a 503 with a refund.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use common::*;
use mintguard_certs::svid::X509Svid;
use serde_json::{Value, json};

fn vault() -> (String, String) {
    (
        std::env::var("VAULT_ADDR").expect("VAULT_ADDR: run under tests/peers.sh"),
        std::env::var("VAULT_TOKEN").expect("VAULT_TOKEN: run under tests/peers.sh"),
    )
}

/// Calls OpenBao directly with `token`: (status, body).
async fn bao(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    mintguard_tests::vault_call(addr, token, method, path, body).await
}

const VAULT_POLICY: &str = r#"
@id("api-may-get-vault-tokens")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"ci-token");
@id("api-may-get-db-credentials")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"payments-db");
@id("api-may-read-the-db-password")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"db-password");
@id("api-may-get-certificates")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"web-cert");
"#;

/// Asks for a five-minute Vault child token (the `ci-token` grant).
async fn ci_token(broker: &BrokerProcess, node: &X509Svid) -> Reply {
    issue(
        broker,
        node,
        json!({"grant": "ci-token", "ttl_seconds": 300}),
    )
    .await
}

fn start(vault_addr: &str, root: &str) -> BrokerProcess {
    start_with(vault_addr, root, "")
}

fn start_with(vault_addr: &str, root: &str, db_path: &str) -> BrokerProcess {
    start_env(vault_addr, root, db_path, &[], tempfile::tempdir().unwrap())
}

fn vault_config(vault_addr: &str, db_path: &str, auth: &str) -> String {
    let db_path = if db_path.is_empty() {
        "database/creds/none"
    } else {
        db_path
    };
    format!(
        r#"
[vault]
address = "{vault_addr}"
{auth}
timeout = "2s"
reconcile_after = "6s"
[[grants]]
name = "ci-token"
kind = "vault"
max_ttl = "10m"
budget = {{ amount = 10, per = "1h" }}
vault = {{ token = {{ policies = ["default"], num_uses = 2 }} }}
[[grants]]
name = "payments-db"
kind = "vault"
max_ttl = "10m"
vault = {{ secret = {{ path = "{db_path}" }} }}
[[grants]]
name = "web-cert"
kind = "vault"
max_ttl = "10m"
vault = {{ secret = {{ path = "pki{pid}/issue/web", body = {{ common_name = "api.example.org" }} }} }}
[[grants]]
name = "db-password"
kind = "static_secret"
max_ttl = "10m"
budget = {{ amount = 10, per = "1h" }}
static_secret = {{ path = "mintguard{pid}/payments-db", fields = ["username", "password"] }}
"#,
        pid = std::process::id()
    )
}

fn start_env(
    vault_addr: &str,
    root: &str,
    db_path: &str,
    env: &[(&str, &str)],
    dir: tempfile::TempDir,
) -> BrokerProcess {
    let db_path = if db_path.is_empty() {
        "database/creds/none"
    } else {
        db_path
    };
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/vault.cedar"), VAULT_POLICY).unwrap();
    write_private(&dir.path().join("vault.token"), root);
    let auth = if root.starts_with("approle:") {
        let mount = root.trim_start_matches("approle:");
        format!(
            "approle = {{ mount = \"{mount}\", role_id_file = \"role_id\", secret_id_file = \"secret_id\" }}"
        )
    } else {
        "token_file = \"vault.token\"".to_owned()
    };
    let broker =
        BrokerProcess::start_with_env(dir, "", &vault_config(vault_addr, db_path, &auth), env);
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
        &["ci-token", "payments-db", "web-cert", "db-password"],
    );
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_tokens_are_minted_after_their_intent_and_revoked_for_real() {
    let (addr, root) = vault();
    let broker = start(&addr, &root);
    let node = enrolled_node(&broker, "node-1").await;

    // num_uses = 2: the token works twice, then Vault refuses it.
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let accessor = reply.body["credential"]["accessor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );
    assert_eq!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );
    assert_ne!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );

    // Intent (with the lease), then the outcome with the accessor — never the token.
    let records = broker.logs(&["--grant", "ci-token"]);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["intent", "outcome"]);
    assert_eq!(
        records[1]["body"]["upstream"]["vault_accessor"],
        accessor.as_str()
    );
    assert!(
        !Value::from(records.clone()).to_string().contains(&token),
        "a credential in the log"
    );

    // DELETE revokes upstream, confirmed: the accessor is gone from Vault.
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let accessor = reply.body["credential"]["accessor"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = reply.body["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        bao(
            &addr,
            &root,
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({"accessor": accessor}))
        )
        .await
        .0,
        200
    );
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
    assert_ne!(
        bao(
            &addr,
            &root,
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({"accessor": accessor}))
        )
        .await
        .0,
        200
    );
    assert_ne!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );
    let last = broker
        .logs(&["--outcome", "revoked"])
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["body"]["confirmed_upstream"], true);

    // Suspension revokes every live lease upstream.
    let reply = ci_token(&broker, &node).await;
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );
    let out = broker.cli(&["suspend", API, "--reason", "compromised runner"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        bao(&addr, &token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );

    // Replay re-decides the allowed Vault requests too (their intent
    // records carry the decision), and agrees with every one.
    let kinds: Vec<Value> = broker
        .logs(&[])
        .into_iter()
        .map(|r| r["kind"].clone())
        .collect();
    let intents = kinds.iter().filter(|k| *k == "intent").count();
    let decisions = kinds.iter().filter(|k| *k == "decision").count();
    assert!(intents >= 2, "{kinds:?}");
    let replay: Value = serde_json::from_slice(&broker.cli(&["replay"]).stdout).unwrap();
    assert_eq!(
        (
            replay["replayed"].as_u64(),
            replay["differences"].as_array().map(Vec::len)
        ),
        (Some((intents + decisions) as u64), Some(0)),
        "{replay}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_failure_is_a_503_with_a_refund_and_nothing_issued() {
    let (addr, _) = vault();
    // A token Vault does not know: every mint fails upstream.
    let broker = start(&addr, "s.not-a-real-token");
    let node = enrolled_node(&broker, "node-1").await;
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_unavailable");
    let records = broker.logs(&["--grant", "ci-token"]);
    assert_eq!(records.len(), 2, "intent and outcome");
    assert_eq!(records[1]["outcome"], "mint_failed");
    assert_eq!(records[1]["body"]["refunded"], true);
    // The budget is whole again and the lease is closed.
    let budget = broker.cli_json(&["budget", "show", "--identity", API, "--grant", "ci-token"]);
    assert_eq!(budget["available"], 10, "{budget}");
    let live = broker.live_leases();
    assert!(live.is_empty(), "{live:?}");
}

/// A `static_secret` grant reads the current version of a KV v2 secret per
/// issuance, after its intent record: only the named keys reach the
/// workload, the log names the path and version but never the secret, a
/// rotation is seen by the next issuance, and a lease ends only when the
/// operator confirms the rotation (advisory). A deleted version is a 503
/// with a refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_secrets_are_read_per_issuance_and_end_by_rotation() {
    let (addr, root) = vault();
    let pid = std::process::id();
    let kv = format!("secret/data/mintguard{pid}/payments-db");
    let write = |password: String| {
        let (addr, root, kv) = (addr.clone(), root.clone(), kv.clone());
        async move {
            let (status, body) = bao(
                &addr,
                &root,
                "POST",
                &kv,
                Some(json!({"data": {"username": "payments", "password": password, "admin_password": "never-handed-out"}})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    let first = format!("correct-horse-{pid}-one");
    write(first.clone()).await;
    let broker = start(&addr, &root);
    let node = enrolled_node(&broker, "node-1").await;
    let ask = || {
        issue(
            &broker,
            &node,
            json!({"grant": "db-password", "ttl_seconds": 300}),
        )
    };

    let reply = ask().await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let credential = &reply.body["credential"];
    assert_eq!(credential["type"], "static_secret");
    assert_eq!(
        credential["data"],
        json!({"username": "payments", "password": first})
    );
    assert_eq!(credential["version"], 1);
    let lease = reply.body["lease_id"].as_str().unwrap().to_owned();
    let records = broker.logs(&["--grant", "db-password"]);
    assert_eq!(records.len(), 2, "intent and outcome: {records:?}");
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["intent", "outcome"]);
    assert_eq!(records[1]["outcome"], "minted");
    let logged = serde_json::to_string(&records).unwrap();
    assert!(!logged.contains(&first), "the secret is in the log");
    assert!(
        logged.contains(&format!("secret/mintguard{pid}/payments-db")),
        "{logged}"
    );

    // Rotated in Vault: the next issuance hands out the new version.
    let second = format!("correct-horse-{pid}-two");
    write(second.clone()).await;
    let reply = ask().await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["credential"]["data"]["password"],
        second.as_str()
    );
    assert_eq!(reply.body["credential"]["version"], 2);

    // Advisory: the broker cannot take a read secret back.
    let out = broker.cli(&["revoke", &lease]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("advisory_revocation") && stderr.contains("rotate the secret"),
        "{stderr}"
    );
    let live = |broker: &BrokerProcess| {
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease.as_str())
    };
    assert!(live(&broker));
    // The secret does not expire, so neither does its lease.
    let never = broker
        .live_leases()
        .into_iter()
        .find(|l| l["id"] == lease.as_str())
        .unwrap();
    assert_eq!(never["expires_at_ms"], 253_402_300_799_000_i64, "{never}");
    let out = broker.cli(&["revoke", &lease, "--confirm-attached"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!live(&broker));

    // The current version deleted: nothing to hand out, refunded.
    let (status, body) = bao(&addr, &root, "DELETE", &kv, None).await;
    assert!((200..300).contains(&status), "{body}");
    let before = broker.cli_json(&[
        "budget",
        "show",
        "--identity",
        API,
        "--grant",
        "db-password",
    ]);
    let reply = ask().await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    let failed = broker.logs(&["--grant", "db-password", "--outcome", "mint_failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["body"]["refunded"], true);
    let after = broker.cli_json(&[
        "budget",
        "show",
        "--identity",
        API,
        "--grant",
        "db-password",
    ]);
    assert_eq!(
        after["available"], before["available"],
        "{before} → {after}"
    );
    broker.assert_log_verifies();
}

/// OpenBao's database engine on the test PostgreSQL (a fresh mount): the
/// workload's credentials log in, and stop logging in once the lease is
/// deleted — and, separately, once the identity is suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_work_until_the_lease_is_revoked() {
    let (addr, root) = vault();
    let path =
        mintguard_tests::database_engine(&addr, &root, &format!("db{}", std::process::id())).await;
    let broker = start_with(&addr, &root, &path);
    let node = enrolled_node(&broker, "node-1").await;
    let creds = |reply: &Reply| {
        let data = &reply.body["credential"]["data"];
        (
            data["username"].as_str().unwrap().to_owned(),
            data["password"].as_str().unwrap().to_owned(),
        )
    };

    let reply = issue(
        &broker,
        &node,
        json!({"grant": "payments-db", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (user, pass) = creds(&reply);
    mintguard_tests::pg_login(&user, &pass).await.unwrap();
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
    assert!(
        mintguard_tests::pg_login(&user, &pass).await.is_err(),
        "revoked credentials still log in"
    );

    let reply = issue(
        &broker,
        &node,
        json!({"grant": "payments-db", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (user, pass) = creds(&reply);
    mintguard_tests::pg_login(&user, &pass).await.unwrap();
    let out = broker.cli(&["suspend", API, "--reason", "compromised"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mintguard_tests::pg_login(&user, &pass).await.is_err(),
        "a suspended identity's credentials still log in"
    );
}

/// The child-token accessor whose metadata names `lease`, if Vault has one.
async fn token_for_lease(addr: &str, root: &str, lease: &str) -> Option<String> {
    let (_, listed) = bao(addr, root, "GET", "auth/token/accessors?list=true", None).await;
    for accessor in listed["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
    {
        let (status, info) = bao(
            addr,
            root,
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({"accessor": accessor})),
        )
        .await;
        if status == 200 && info["data"]["meta"]["mintguard_lease"] == lease {
            return Some(accessor.to_owned());
        }
    }
    None
}

/// The broker dies between the upstream mint and the answer (a fault point
/// compiled only into debug builds): after a restart the intent without an
/// outcome is found upstream by its lease metadata and revoked; the log says
/// so and still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_mint_and_answer_is_reconciled_on_restart() {
    let (addr, root) = vault();
    let broker = start_env(
        &addr,
        &root,
        "",
        &[("MINTGUARD_FAULT", "after_upstream_mint")],
        tempfile::tempdir().unwrap(),
    );
    let node = enrolled_node(&broker, "node-1").await;
    let dir = issue_into_crash(
        broker,
        &node,
        json!({"grant": "ci-token", "ttl_seconds": 300}),
    )
    .await;
    let broker = start_env(&addr, &root, "", &[], dir);
    let intent: Value = broker
        .logs(&["--grant", "ci-token"])
        .into_iter()
        .find(|r| r["kind"] == "intent")
        .expect("the intent record survived the crash");
    let lease = intent["body"]["lease"]["id"].as_str().unwrap().to_owned();
    let reconciled = wait_for_outcome(&broker, "reconciled_revoked").await;
    assert_eq!(reconciled["body"]["lease_id"], lease.as_str());
    assert_eq!(reconciled["body"]["minted_unanswered"], true);
    assert_eq!(
        token_for_lease(&addr, &root, &lease).await,
        None,
        "the unanswered token is still live in Vault"
    );
    let leases = broker.cli_json(&["leases"]);
    let row = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == lease.as_str())
        .unwrap();
    assert_eq!(row["live"], false);
    broker.assert_log_verifies();
}

/// The identity is suspended while Vault mints its token (a pause point
/// compiled only into debug builds holds the request after the mint): the
/// suspension's revocation finds no upstream handle yet, so the outcome's
/// write sees the suspension. The token is logged `suspended`, never
/// returned, and revoked in Vault; the caller gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_during_an_upstream_mint_holds_the_credential_back() {
    let (addr, root) = vault();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, b"").unwrap();
    let reached = dir.path().join("gate.reached");
    let wait = format!("before_outcome:{}", gate.display());
    let broker = start_env(&addr, &root, "", &[("MINTGUARD_FAULT_WAIT", &wait)], dir);
    let node = enrolled_node(&broker, "node-1").await;
    let request = issue(
        &broker,
        &node,
        json!({"grant": "ci-token", "ttl_seconds": 300}),
    );
    let suspend = async {
        while !reached.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let out = tokio::task::block_in_place(|| {
            broker.cli(&["suspend", API, "--reason", "incident during a mint"])
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&gate).unwrap();
    };
    let (reply, ()) = tokio::join!(request, suspend);
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(
        reply.body["error"]["reasons"],
        json!(["suspended_at_write"])
    );
    assert!(reply.body.get("credential").is_none(), "{}", reply.text);

    let records = broker.logs(&["--grant", "ci-token"]);
    let held = records
        .iter()
        .find(|r| r["kind"] == "outcome")
        .expect("an outcome record");
    assert_eq!(held["outcome"], "suspended", "{held}");
    assert_eq!(held["body"]["final_outcome"], "suspended");
    let lease = held["body"]["lease_id"].as_str().unwrap().to_owned();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "revocation" && r["body"]["lease_id"] == lease.as_str()),
        "{records:?}"
    );
    assert_eq!(
        token_for_lease(&addr, &root, &lease).await,
        None,
        "the held-back token is still live in Vault"
    );
    let live = broker.live_leases();
    assert!(live.is_empty(), "{live:?}");
    broker.assert_log_verifies();
}

/// A TCP proxy in front of Vault that forwards everything, except that the
/// first answer to a request naming `needle` is dropped with its
/// connection: Vault minted the credential, the broker never hears so.
async fn answer_dropping_proxy(upstream: &str, needle: &'static str) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = std::sync::Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            // The client's bytes since the server last answered.
            let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let asked_by_client = asked.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    asked_by_client.lock().unwrap().extend_from_slice(&buf[..n]);
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let armed = armed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    let request = std::mem::take(&mut *asked.lock().unwrap());
                    let creation = String::from_utf8_lossy(&request).contains(needle);
                    if n == 0 || (creation && armed.swap(false, Ordering::SeqCst)) {
                        break; // drops the client's side: no answer
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Vault mints a token but its answer is lost: the outcome is unknown, so
/// the broker neither answers with a credential nor calls it a failure
/// (no refund, no closed lease). Reconciliation then finds the token by its
/// lease metadata and revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mint_answer_is_reconciled_not_refunded() {
    let (addr, root) = vault();
    let proxy = answer_dropping_proxy(&addr, "create-orphan").await;
    let broker = start(&proxy, &root);
    let node = enrolled_node(&broker, "node-1").await;
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_outcome_unknown");
    let intent: Value = broker
        .logs(&["--grant", "ci-token"])
        .into_iter()
        .find(|r| r["kind"] == "intent")
        .expect("the intent record");
    let lease = intent["body"]["lease"]["id"].as_str().unwrap().to_owned();
    let budget = broker.cli_json(&["budget", "show", "--identity", API, "--grant", "ci-token"]);
    assert_eq!(budget["available"], 9, "not refunded: {budget}");

    let reconciled = wait_for_outcome(&broker, "reconciled_revoked").await;
    assert_eq!(reconciled["body"]["lease_id"], lease.as_str());
    assert_eq!(reconciled["body"]["minted_unanswered"], true);
    assert_eq!(
        token_for_lease(&addr, &root, &lease).await,
        None,
        "the unanswered token is still live in Vault"
    );
    // The proxy answers again: the next request is issued.
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    broker.assert_log_verifies();
}

/// Every Vault token needs an approver.
const STEP_UP: &str = r#"
@id("vault-tokens-need-an-approver")
@outcome("step_up")
forbid (principal, action, resource == Mintguard::Grant::"ci-token");
"#;

/// A step-up approval is redeemed only through the node whose request the
/// approver saw, and is given back when the issuance it was consumed for
/// does not happen (here Vault refuses the broker's token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_bound_to_its_node_and_given_back_when_nothing_is_issued() {
    let (addr, _) = vault();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/step-up.cedar"), STEP_UP).unwrap();
    let broker = start_env(&addr, "s.not-a-real-token", "", &[], dir);
    register_api_with(
        &broker,
        "node-2",
        &["unix:uid:1000", "unix:sha256:0a1b2c"],
        &["ci-token"],
    );
    let node = enrolled_node(&broker, "node-1").await;
    let other = enrolled_node(&broker, "node-2").await;
    let request = json!({"grant": "ci-token", "ttl_seconds": 300});
    let held = issue(&broker, &node, request.clone()).await;
    assert_eq!(held.status, 202, "{}", held.text);
    let id = held.body["approval_id"].as_str().unwrap().to_owned();
    let out = broker.cli(&["approve", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut retry = request;
    retry["approval_id"] = id.clone().into();

    // Another node that may vouch for the identity: not its approval.
    let stolen = issue(&broker, &other, retry.clone()).await;
    assert_eq!(stolen.status, 403, "{}", stolen.text);
    assert_eq!(stolen.body["error"]["code"], "approval_mismatch");

    // Its own node: approved, consumed, but Vault mints nothing.
    let state = || {
        broker
            .cli_json(&["approvals", "--all"])
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["approval_id"] == id.as_str())
            .map(|a| a["state"].clone())
            .unwrap()
    };
    for _ in 0..2 {
        let failed = issue(&broker, &node, retry.clone()).await;
        assert_eq!(failed.status, 503, "{}", failed.text);
        assert_eq!(failed.body["error"]["code"], "upstream_unavailable");
        assert_eq!(state(), "approved", "given back after a failed mint");
    }
}

/// Retention keeps what live upstream leases need: `logs prune` stops
/// before the oldest live lease's intent, so that lease can still be revoked
/// upstream afterwards (its outcome record names the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_records_live_upstream_leases_need() {
    let (addr, root) = vault();
    let broker = start(&addr, &root);
    let node = enrolled_node(&broker, "node-1").await;
    let mut issued = Vec::new();
    for _ in 0..6 {
        let reply = ci_token(&broker, &node).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        issued.push((
            reply.body["lease_id"].as_str().unwrap().to_owned(),
            reply.body["credential"]["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    // The first lease ends; the second is now the oldest live one.
    let out = broker.cli(&["revoke", &issued[0].0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let intent_of = |lease: &str| {
        broker
            .logs(&["--grant", "ci-token"])
            .into_iter()
            .find(|r| r["kind"] == "intent" && r["body"]["lease"]["id"] == lease)
            .unwrap()["seq"]
            .as_i64()
            .unwrap()
    };
    let needed = intent_of(&issued[1].0);

    let export = broker.dir.path().join("export.jsonl");
    let out = broker.prune_all(&export);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let through: i64 = stdout
        .split("pruned through record ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("nothing pruned: {stdout}"));
    assert!(
        through < needed,
        "pruned through {through}, record {needed} was needed"
    );
    assert_eq!(intent_of(&issued[1].0), needed, "the intent is still there");

    // The oldest live lease is still revoked upstream for real.
    let out = broker.cli(&["revoke", &issued[1].0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = bao(&addr, &issued[1].1, "GET", "auth/token/lookup-self", None).await;
    assert_eq!(status, 403, "the token outlived its revocation");
    broker.assert_log_verifies();
}

/// A dynamic secret whose answer was lost cannot be searched for in Vault:
/// reconciliation asks an operator, the lease stays live (and cannot be
/// revoked by the broker) until the operator confirms revoking it by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_secret_waits_for_the_operator_to_confirm_its_revocation() {
    let (addr, root) = vault();
    let path =
        mintguard_tests::database_engine(&addr, &root, &format!("dbl{}", std::process::id())).await;
    let proxy = answer_dropping_proxy(&addr, "/creds/").await;
    let broker = start_with(&proxy, &root, &path);
    let node = enrolled_node(&broker, "node-1").await;
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "payments-db", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "upstream_outcome_unknown");
    let action = wait_for_outcome(&broker, "reconcile_operator_action").await;
    let lease = action["body"]["lease_id"].as_str().unwrap().to_owned();
    assert!(
        action["body"]["action"]
            .as_str()
            .unwrap()
            .contains("--confirm-revoked-upstream")
    );
    let live = |broker: &BrokerProcess| {
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease.as_str())
    };
    assert!(live(&broker));
    // The broker has no handle to revoke it with.
    let out = broker.cli(&["revoke", &lease]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream_reference_missing"));
    // The operator revoked it in Vault and says so.
    let out = broker.cli(&["revoke", &lease, "--confirm-revoked-upstream"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!live(&broker));
    let revocation = broker
        .logs(&["--outcome", "revoked"])
        .first()
        .unwrap()
        .clone();
    assert_eq!(revocation["body"]["confirmed_by_operator"], "alice");
    broker.assert_log_verifies();
}

/// A suspension whose revocation fails (here Vault's answer to the
/// revocation is lost) leaves the lease live only until the next pass of
/// the broker's housekeeping, which revokes it for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_retries_the_revocations_it_could_not_finish() {
    let (addr, root) = vault();
    let proxy = answer_dropping_proxy(&addr, "revoke-accessor").await;
    let broker = start(&proxy, &root);
    let node = enrolled_node(&broker, "node-1").await;
    let reply = ci_token(&broker, &node).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let lease = reply.body["lease_id"].as_str().unwrap().to_owned();
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = broker.cli(&["suspend", API, "--reason", "incident 9"]);
    assert!(
        !out.status.success(),
        "the first revocation's answer is lost"
    );
    let live = |broker: &BrokerProcess| {
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease.as_str())
    };
    for _ in 0..300 {
        if !live(&broker) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !live(&broker),
        "the lease is still live 30 s after the suspension"
    );
    let (status, _) = bao(&addr, &token, "GET", "auth/token/lookup-self", None).await;
    assert_eq!(status, 403, "the token outlived the suspension");
    broker.assert_log_verifies();
}

/// The broker logs in with AppRole (a 3-second token) and keeps minting past
/// that token's first TTL: it renews (or logs in again) on its own; the child
/// tokens it mints are orphans, so they do not die with its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_logs_in_with_approle_and_keeps_its_token_alive() {
    let (addr, root) = vault();
    let mount = format!("approle{}", std::process::id());
    let ok = |(status, body): (u16, Value)| {
        assert!((200..300).contains(&status), "{status} {body}");
        body
    };
    ok(bao(
        &addr,
        &root,
        "POST",
        &format!("sys/auth/{mount}"),
        Some(json!({"type": "approle"})),
    )
    .await);
    let policy = r#"
path "auth/token/create-orphan" { capabilities = ["create", "update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/accessors" { capabilities = ["list", "sudo"] }
path "sys/leases/*" { capabilities = ["update", "sudo"] }
"#;
    ok(bao(
        &addr,
        &root,
        "PUT",
        "sys/policies/acl/mintguard-broker",
        Some(json!({"policy": policy})),
    )
    .await);
    ok(bao(&addr, &root, "POST", &format!("auth/{mount}/role/broker"), Some(json!({
        "token_policies": ["default", "mintguard-broker"], "token_ttl": "3s", "token_max_ttl": "1h",
    }))).await);
    let role_id = ok(bao(
        &addr,
        &root,
        "GET",
        &format!("auth/{mount}/role/broker/role-id"),
        None,
    )
    .await)["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = ok(bao(
        &addr,
        &root,
        "POST",
        &format!("auth/{mount}/role/broker/secret-id"),
        Some(json!({})),
    )
    .await)["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("role_id"), &role_id);
    write_private(&dir.path().join("secret_id"), &secret_id);
    let broker = start_env(&addr, &format!("approle:{mount}"), "", &[], dir);
    let node = enrolled_node(&broker, "node-1").await;
    let first = ci_token(&broker, &node).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // Past the broker token's first TTL (3 s): still minting.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let second = ci_token(&broker, &node).await;
    assert_eq!(second.status, 200, "{}", second.text);
    // The first child token outlived the broker's first token's TTL.
    let token = first.body["credential"]["token"].as_str().unwrap();
    assert_eq!(
        bao(&addr, token, "GET", "auth/token/lookup-self", None)
            .await
            .0,
        200
    );
}

/// A PKI certificate issue: the certificate comes back, its Vault lease is
/// tracked, and `DELETE` revokes the certificate (its serial shows a
/// revocation time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_certificates_are_issued_and_revoked() {
    let (addr, root) = vault();
    let mount = format!("pki{}", std::process::id());
    let ok = |(status, body): (u16, Value)| {
        assert!((200..300).contains(&status), "{status} {body}");
        body
    };
    ok(bao(
        &addr,
        &root,
        "POST",
        &format!("sys/mounts/{mount}"),
        Some(json!({"type": "pki", "config": {"max_lease_ttl": "24h"}})),
    )
    .await);
    ok(bao(
        &addr,
        &root,
        "POST",
        &format!("{mount}/root/generate/internal"),
        Some(json!({"common_name": "Mintguard test root", "ttl": "24h"})),
    )
    .await);
    ok(bao(&addr, &root, "POST", &format!("{mount}/roles/web"), Some(json!({
        "allowed_domains": "example.org", "allow_subdomains": true, "max_ttl": "1h", "generate_lease": true,
    }))).await);
    let broker = start(&addr, &root);
    let node = enrolled_node(&broker, "node-1").await;
    let reply = issue(
        &broker,
        &node,
        json!({"grant": "web-cert", "ttl_seconds": 300}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = &reply.body["credential"]["data"];
    assert!(
        data["certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let serial = data["serial_number"].as_str().unwrap().to_owned();
    let cert = ok(bao(&addr, &root, "GET", &format!("{mount}/cert/{serial}"), None).await);
    assert_eq!(cert["data"]["revocation_time"], 0);
    let lease = reply.body["lease_id"].as_str().unwrap();
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
    let cert = ok(bao(&addr, &root, "GET", &format!("{mount}/cert/{serial}"), None).await);
    assert!(
        cert["data"]["revocation_time"].as_i64().unwrap() > 0,
        "{cert}"
    );
}
