//! Hardening of the real broker: a table of malformed requests (each a 4xx
//! with its reason code, never a 5xx), tamper detection on the SQLite file,
//! and failing closed when the log's disk is full.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::process::Command;

use common::*;
use mintguard_broker::log::{GENESIS, LogEntry, LogRecord};
use serde_json::{Value, json};

const OTHER_GRANT: &str = r#"
[[grants]]
name = "other-token"
kind = "jwt"
max_ttl = "5m"
jwt = { audience = "other" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_documented_status_and_reason() {
    let broker = BrokerProcess::start(OTHER_GRANT);
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let (agents, public, admin, bundle) = (
        broker.addr("agents"),
        broker.addr("public"),
        broker.addr("admin"),
        broker.bundle(),
    );
    let json_ct = [("content-type", "application/json")];
    let issue_raw = |body: Vec<u8>, headers: Vec<(&'static str, &'static str)>| {
        let (agents, bundle, node) = (agents.clone(), bundle.clone(), node.clone());
        async move {
            https(
                &agents,
                &bundle,
                Some(&node),
                "POST",
                "/v1/issue",
                &headers,
                body,
            )
            .await
            .unwrap()
        }
    };
    let sel = json!(SELECTORS);
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        ("bad JSON", issue_raw(b"{\"selectors\":".to_vec(), json_ct.to_vec()).await, 400, "bad_json"),
        ("wrong content type", issue_raw(b"{}".to_vec(), vec![("content-type", "text/plain")]).await, 415, "unsupported_media_type"),
        ("no content type", issue_raw(b"{}".to_vec(), vec![]).await, 415, "unsupported_media_type"),
        ("huge body", issue_raw(vec![b' '; 200 * 1024], json_ct.to_vec()).await, 413, "body_too_large"),
        (
            "unknown field",
            issue(&broker, &node, json!({"grant": "payments-token", "tll_seconds": 5})).await,
            400,
            "bad_json",
        ),
        ("unknown grant", issue(&broker, &node, json!({"grant": "nope"})).await, 400, "unknown_grant"),
        ("zero ttl", issue(&broker, &node, json!({"grant": "payments-token", "ttl_seconds": 0})).await, 400, "bad_ttl"),
        (
            "bad SPIFFE ID",
            issue(&broker, &node, json!({"grant": "payments-token", "spiffe_id": "spiffe://Example.org/x/"})).await,
            400,
            "bad_spiffe_id",
        ),
        (
            "unattested workload",
            post_json(&agents, &bundle, Some(&node), "/v1/issue", &json!({"selectors": ["unix:uid:4242"], "request": {"grant": "payments-token"}})).await,
            401,
            "not_attested",
        ),
        (
            "malformed selector",
            post_json(&agents, &bundle, Some(&node), "/v1/issue", &json!({"selectors": ["nocolon"], "request": {"grant": "payments-token"}})).await,
            400,
            "bad_selectors",
        ),
        (
            "a selector with a control character",
            post_json(&agents, &bundle, Some(&node), "/v1/issue", &json!({"selectors": ["unix:uid:1000\u{1b}[2J"], "request": {"grant": "payments-token"}})).await,
            400,
            "bad_selectors",
        ),
        (
            "grant outside the entry",
            post_json(&agents, &bundle, Some(&node), "/v1/issue", &json!({"selectors": sel, "request": {"grant": "other-token"}})).await,
            403,
            "denied",
        ),
        ("unknown lease", https(&agents, &bundle, Some(&node), "DELETE", "/v1/leases/lease-nope", &[], vec![]).await.unwrap(), 404, "unknown_lease"),
        (
            "reused or unknown join token",
            post_json(&public, &bundle, None, "/v1/node/enroll", &json!({"join_token": "jt-00", "csr": mintguard_certs::svid::csr_pem(&mintguard_certs::svid::generate_key().unwrap()).unwrap()})).await,
            401,
            "invalid_join_token",
        ),
        ("garbage CSR", post_json(&public, &bundle, None, "/v1/node/enroll", &json!({"join_token": "jt-00", "csr": "nope"})).await, 400, "bad_csr"),
        ("admin without a token", https(&admin, &bundle, None, "GET", "/admin/v1/logs", &[], vec![]).await.unwrap(), 401, "unauthenticated"),
        (
            "a wrong operator token",
            https(&admin, &bundle, None, "GET", "/admin/v1/logs", &[("authorization", "Bearer not-a-token")], vec![]).await.unwrap(),
            401,
            "unauthenticated",
        ),
    ];
    let mut failures = Vec::new();
    for (name, reply, status, code) in &cases {
        if reply.status != *status || reply.body["error"]["code"] != *code {
            failures.push(format!(
                "{name}: got {} {}, expected {status} {code}",
                reply.status, reply.body
            ));
        }
        assert!(reply.status < 500, "{name}: a 5xx on bad input");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let case = |name: &str| &cases.iter().find(|c| c.0 == name).unwrap().1;
    let unattested = case("unattested workload");
    assert_eq!(
        unattested.body["error"]["reasons"],
        json!(["unix:uid:4242"]),
        "the selectors presented are returned"
    );
    let outside = case("grant outside the entry");
    assert_eq!(
        outside.body["error"]["reasons"],
        json!(["issuer_may_not_vouch", "no_permit"])
    );

    // An admin operation with bad input changes nothing: a path alone, and
    // an executable hash alone (it matches any local user who runs the
    // binary), are weak entries.
    for selector in ["unix:path:/bin/sh", "unix:sha256:0a1b2c"] {
        let weak = broker.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/x",
            "--parent",
            "node-1",
            "--selector",
            selector,
        ]);
        assert!(!weak.status.success(), "{selector}");
        assert!(
            String::from_utf8_lossy(&weak.stderr).contains("weak_entry"),
            "{selector}"
        );
    }
    assert_eq!(
        broker
            .cli_json(&["entry", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Without a client certificate the agents listener refuses the handshake.
    let anonymous = https(
        &agents,
        &bundle,
        None,
        "POST",
        "/v1/issue",
        &json_ct,
        b"{}".to_vec(),
    )
    .await;
    assert!(anonymous.is_err(), "no client certificate must be refused");

    // The broker is still healthy.
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_sqlite_log_is_detected_and_located() {
    let mut broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    // 13 records in all: the admin actions' intents and outcomes, then
    // decisions (records 7 and 8 among them).
    issue_ok(&broker, &node, 8).await;
    broker.stop();
    let data = broker.data();
    let checkpoints =
        mintguard_broker::log::checkpoint::read_file(&data.join("checkpoints.jsonl")).unwrap();
    assert_eq!(
        checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![5, 10],
        "every 5 records"
    );
    let copy = |name: &str| copy_store(&broker, name);
    let pristine = copy("pristine");
    let (ok, text) = verify_offline(&broker, &pristine);
    assert!(ok, "{text}");

    // An edited byte (written back as text, which every reader reads).
    let db = copy("edited");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let edited = read_records(&conn)[6].entry.body.to_string();
    assert!(edited.contains("allow"));
    conn.execute(
        "UPDATE log SET body = ?1 WHERE seq = 7",
        [edited.replace("allow", "allox")],
    )
    .unwrap();
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("record 7: content does not match its hash"),
        "{text}"
    );

    // A byte flipped in a compressed body: it no longer decompresses, and
    // the record is named.
    let db = copy("flipped");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut blob: Vec<u8> = conn
        .query_row("SELECT body FROM log WHERE seq = 7", [], |r| r.get(0))
        .unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x5a;
    conn.execute("UPDATE log SET body = ?1 WHERE seq = 7", [blob])
        .unwrap();
    let (ok, text) = verify_offline(&broker, &db);
    assert!(!ok && text.contains("record 7"), "{text}");

    // A deleted record.
    let db = copy("deleted");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM log WHERE seq = 4", [])
        .unwrap();
    let (ok, text) = verify_offline(&broker, &db);
    assert!(!ok && text.contains("expected record 4, found 5"), "{text}");

    // An inserted record, properly sealed after record 5: record 7 (the old 6) no longer links.
    let db = copy("inserted");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut records = read_records(&conn);
    let forged = LogRecord::seal(
        6,
        LogEntry {
            request_id: "req-forged".into(),
            outcome: Some("allow".into()),
            ..records[5].entry.clone()
        },
        records[4].hash.clone(),
    );
    for r in records.iter_mut().skip(5) {
        r.seq += 1;
    }
    records.insert(5, forged);
    rewrite(&conn, &records);
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("record 7: prev_hash does not match"),
        "{text}"
    );

    // A whole chain recomputed after an edit: only the exported checkpoint catches it.
    let db = copy("recomputed");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut records = read_records(&conn);
    records[2].entry.outcome = Some("deny".into());
    let mut prev = GENESIS.to_owned();
    for r in &mut records {
        *r = LogRecord::seal(r.seq, r.entry.clone(), prev.clone());
        prev = r.hash.clone();
    }
    rewrite(&conn, &records);
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("record 5: hash differs from the exported checkpoint"),
        "{text}"
    );

    // A truncated tail before the last exported checkpoint.
    let db = copy("truncated");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM log WHERE seq > 8", [])
        .unwrap();
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("ends at record 8 but a checkpoint covers record 10"),
        "{text}"
    );
}

/// Root-only: a small tmpfs for the data dir. Unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (tests run as root)"
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_fails_closed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&dir.path().join("data"), "4m");
    let broker = BrokerProcess::start_in(dir, "");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );

    // Fill the filesystem.
    let filler = broker.data().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for _ in 0..5 {
        let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
        assert!(
            reply.body["credential"].is_null(),
            "no credential without a durable record: {}",
            reply.body
        );
        if reply.status == 503 {
            assert_eq!(reply.body["error"]["code"], "log_unavailable");
            refused += 1;
        }
    }
    assert!(
        refused >= 4,
        "requests fail closed with 503 while the disk is full ({refused}/5)"
    );

    std::fs::remove_file(&filler).unwrap();
    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(
        reply.status, 200,
        "serves again once space is freed: {}",
        reply.body
    );
    broker.assert_log_verifies();
    let decisions: Value = broker.cli_json(&["leases"]);
    assert_eq!(
        decisions.as_array().unwrap().len(),
        2,
        "only the two durable issuances hold leases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_exports_then_prunes_and_the_rest_still_verifies() {
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    issue_ok(&broker, &node, 9).await;
    // Records 1..12 exist; checkpoints at 5 and 10.
    let export = broker.dir.path().join("export.jsonl");
    let out = broker.prune_all(&export);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pruned through record 10"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let exported: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 10);
    assert_eq!(exported[9]["seq"], 10);

    // The remaining log verifies from the checkpointed base, and says it was pruned.
    broker.assert_log_verifies();
    let logs = broker.cli(&["logs", "--json"]);
    let remaining: Vec<Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(remaining[0]["seq"], 11);
    assert!(remaining.iter().any(|r| r["outcome"] == "log_pruned"
        && r["body"]["details"]["export"] == export.to_str().unwrap()));

    // A second prune refuses to overwrite an export.
    let again = broker.prune_all(&export);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to prune")
            || !again.status.success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let broker = BrokerProcess::start("");
    // Connect to the agents listener and send nothing: the broker closes the
    // connection after its handshake timeout instead of holding it forever.
    let mut idle = tokio::net::TcpStream::connect(broker.addr("agents"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection must be closed by the broker: {read:?}"
    );
    // Meanwhile the broker serves others.
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );
}

/// Operators authenticate on the admin listener with an operator SVID from
/// `mintguard-broker operator create --cert`, by role; a node SVID never
/// passes (even with a valid operator token), and removing an operator's
/// role file and reloading locks its certificate out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_authenticate_with_certificates_by_role() {
    let broker = BrokerProcess::start("");
    let root = broker.dir.path();
    broker.create_operator("bob", "viewer", Some(&root.join("bob")));
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(root.join("bob/bob.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    broker.cli_json(&["reload"]);

    let bob = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mintguard"))
            .arg("--data-dir")
            .arg(broker.data())
            .arg("--cert")
            .arg(root.join("bob/bob.crt"))
            .arg("--key")
            .arg(root.join("bob/bob.key"))
            .args(args)
            .output()
            .unwrap()
    };
    let listed = bob(&["entry", "list", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let records = || {
        broker
            .cli(&["logs", "--json"])
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    };
    let before = records();
    let refused = bob(&["suspend", "spiffe://example.org/api"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("403 insufficient_role"), "{stderr}");
    assert_eq!(
        records(),
        before,
        "a viewer's refused suspend changes nothing"
    );

    // A node SVID is refused in the handshake, token or not.
    let node = enrolled_node(&broker, "node-1").await;
    let token = std::fs::read_to_string(broker.data().join("operators/alice.token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let attempt = https(
        &broker.addr("admin"),
        &broker.bundle(),
        Some(&node),
        "GET",
        "/admin/v1/logs",
        &[("authorization", bearer.as_str())],
        vec![],
    )
    .await;
    assert!(attempt.is_err(), "a node SVID reached the admin API");

    // Removing the role locks the certificate out at the next reload.
    std::fs::remove_file(broker.data().join("operators/bob.role")).unwrap();
    broker.cli_json(&["reload"]);
    let locked = bob(&["entry", "list", "--json"]);
    assert!(!locked.status.success());
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(stderr.contains("403 unknown_operator"), "{stderr}");
}

/// Break-glass: an operator opens a request, cannot confirm it alone; a
/// second person with the approver role confirms; only the opener issues
/// it; the record keeps what the policy decided beside the override, and a
/// post-incident review stays listed until someone other than the opener
/// closes it with notes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_takes_two_people_and_leaves_a_review() {
    let broker = BrokerProcess::start("");
    let root = broker.dir.path();
    broker.create_operator("carol", "approver", Some(&root.join("carol")));
    broker.cli_json(&["reload"]);
    let carol = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mintguard"))
            .arg("--data-dir")
            .arg(broker.data())
            .arg("--cert")
            .arg(root.join("carol/carol.crt"))
            .arg("--key")
            .arg(root.join("carol/carol.key"))
            .args(args)
            .output()
            .unwrap()
    };
    register_api(&broker, "node-1");

    // Alice (admin) opens it; she cannot confirm her own request.
    let opened = broker.cli_json(&[
        "break-glass",
        "--identity",
        API,
        "--grant",
        "payments-token",
        "--reason",
        "INC-42: payments down, trust signals unavailable",
        "--ttl",
        "5m",
    ]);
    let id = opened["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(opened["state"], "pending");
    let own = broker.cli(&["approve", &id]);
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("own_request"));
    let early = broker.cli(&["break-glass", "--issue", &id]);
    assert!(String::from_utf8_lossy(&early.stderr).contains("break_glass_not_confirmed"));

    // Carol (approver) confirms; she cannot issue it; Alice can, once.
    let confirmed = carol(&["approve", &id, "--ttl", "2m"]);
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stderr)
    );
    let stolen = carol(&["break-glass", "--issue", &id]);
    assert!(!stolen.status.success());
    let issued = broker.cli_json(&["break-glass", "--issue", &id]);
    assert_eq!(issued["credential"]["type"], "jwt", "{issued}");
    // Asked for 5 minutes, confirmed for at most 2: the confirmation's cap holds.
    assert_eq!(issued["decision"]["ttl_seconds"], 120, "{issued}");
    assert!(
        issued["decision"]["reasons"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("break_glass"))
    );
    assert!(
        !broker
            .cli(&["break-glass", "--issue", &id])
            .status
            .success()
    );

    // The record: what the policy decided (no node observed it: not allow),
    // the override, the approvers. Replay re-decides it the same way.
    let out = broker.cli(&[
        "logs",
        "--json",
        "--identity",
        API,
        "--grant",
        "payments-token",
    ]);
    let record: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["body"]["break_glass"].is_object())
        .unwrap();
    assert_eq!(record["outcome"], "allow");
    assert_ne!(record["body"]["decision"]["outcome"], "allow");
    assert_eq!(
        record["body"]["break_glass"]["approvers"],
        json!(["operator:carol"])
    );
    let replay = broker.cli(&["replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );

    // The review stays open until closed with notes.
    let open = broker.cli_json(&["reviews"]);
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["review"], id.as_str());
    assert!(
        !broker
            .cli(&["reviews", "--close", &id, "--notes", ""])
            .status
            .success()
    );
    // Not by the operator who opened it; by another, once.
    let close = [
        "reviews",
        "--close",
        &id,
        "--notes",
        "root cause: expired EDR feed",
    ];
    let own = broker.cli(&close);
    assert!(String::from_utf8_lossy(&own.stderr).contains("own_review"));
    assert_eq!(broker.cli_json(&["reviews"]).as_array().unwrap().len(), 1);
    let closed = carol(&close);
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let again = carol(&close);
    assert!(String::from_utf8_lossy(&again.stderr).contains("review_closed"));
    assert!(broker.cli_json(&["reviews"]).as_array().unwrap().is_empty());
    assert_eq!(broker.cli_json(&["reviews", "--all"])[0]["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_source_token_reports_only_under_its_own_name() {
    let broker = BrokerProcess::start("");
    broker.create_operator("edr", "signal_source", None);
    // Two token files now: the CLI is told which one is alice's.
    let alice = broker.data().join("operators/alice.token");
    let alice = alice.to_str().unwrap();
    broker.cli_json(&["--token-file", alice, "reload"]);
    let token = std::fs::read_to_string(broker.data().join("operators/edr.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let post = |source: &str| {
        let body = json!({"subject": API, "kind": "behaviour", "value": 100, "ttl_seconds": 60, "source": source});
        let auth = auth.clone();
        let (addr, bundle) = (broker.addr("admin"), broker.bundle());
        async move {
            https(
                &addr,
                &bundle,
                None,
                "POST",
                "/admin/v1/signals",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.to_string().into_bytes(),
            )
            .await
            .unwrap()
        }
    };
    // Overwriting the anomaly analysis' signal (or the broker's, or another
    // source's) would lift what it lowered: refused, nothing stored.
    for (source, status, code) in [
        ("anomaly:rate_spike", 400, "reserved_source"),
        ("broker:node_svid", 400, "reserved_source"),
        ("operator:alice", 400, "reserved_source"),
        ("mdm", 403, "source_not_owned"),
        ("edrx", 403, "source_not_owned"),
    ] {
        let reply = post(source).await;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{source}: {}",
            reply.text
        );
    }
    let shown = broker.cli_json(&["--token-file", alice, "signals", "show", "--subject", API]);
    assert_eq!(shown.as_array().map(Vec::len), Some(0), "{shown}");
    // Its own name, alone or as a prefix.
    for source in ["edr", "edr:host-42"] {
        let reply = post(source).await;
        assert!(reply.status < 300, "{source}: {}", reply.text);
    }
    let shown = broker.cli_json(&["--token-file", alice, "signals", "show", "--subject", API]);
    let mut sources: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    sources.sort_unstable();
    assert_eq!(sources, ["edr", "edr:host-42"]);
}
