//! The issuance log against a caller who would hide an issuance and an
//! attacker who can write the database: a number no reader could decode is
//! refused where it enters, a record that cannot be read anyway is a
//! finding (metric, `replay`, `logs verify`), a prune must be backed by a
//! signed statement outside the database, a damaged checkpoint file fails
//! verification, and a replaced rule set is caught.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use common::*;
use mintguard_broker::log::{LogEntry, LogRecord};
use serde_json::{Value, json};
use std::process::Command;

/// `mintguard logs verify` through the broker: (ok, what it printed).
fn verify_live(broker: &BrokerProcess) -> (bool, String) {
    let out = broker.cli(&["logs", "verify"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cannot_make_its_own_records_unreadable() {
    let mut broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let before = broker.logs(&[]).len();
    // Past every bound, and a float where an integer is expected: 400s
    // that record nothing.
    for (request, code) in [
        (
            json!({"grant": "payments-token", "ttl_seconds": u64::MAX}),
            "bad_ttl",
        ),
        (
            json!({"grant": "payments-token", "ttl_seconds": 2_678_401}),
            "bad_ttl",
        ),
        (
            json!({"grant": "payments-token", "purpose": "a\u{0}b"}),
            "bad_purpose",
        ),
    ] {
        let reply = issue(&broker, &node, request.clone()).await;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (400, Some(code)),
            "{request}: {}",
            reply.body
        );
    }
    let float = issue(
        &broker,
        &node,
        json!({"grant": "payments-token", "ttl_seconds": 1.8446744073709552e19}),
    )
    .await;
    assert_eq!(float.status, 400, "{}", float.body);
    assert_eq!(
        broker.logs(&[]).len(),
        before,
        "a refused input records nothing"
    );

    // The largest TTL allowed is capped by the grant and recorded as an
    // integer every reader decodes.
    let max = issue(
        &broker,
        &node,
        json!({"grant": "payments-token", "ttl_seconds": 2_678_400}),
    )
    .await;
    assert_eq!(max.status, 200, "{}", max.body);
    let replay = broker.cli(&["replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );

    // A record written by an older broker (or planted) with a number no
    // reader can decode: a finding for analysis, replay and verify alike.
    broker.stop();
    let db = broker.data().join("broker.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let records = read_records(&conn);
    let last = records.last().unwrap();
    let decision = records
        .iter()
        .rev()
        .find(|r| r.entry.outcome.as_deref() == Some("allow"))
        .unwrap();
    let mut body = decision.entry.body.clone();
    body["request"]["ttl_seconds"] = json!(1.8446744073709552e19);
    let planted = LogRecord::seal(
        last.seq + 1,
        LogEntry {
            request_id: "req-planted".into(),
            body,
            ..decision.entry.clone()
        },
        last.hash.clone(),
    );
    let mut all = records.clone();
    all.push(planted.clone());
    rewrite(&conn, &all);
    drop(conn);
    broker.restart("");

    let needle = "mintguard_undecodable_records_total{reader=\"anomaly\"} 1";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = broker.admin_get("/metrics").await.text;
        if metrics.contains(needle) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(needle),
        "anomaly analysis counts the record it cannot read:\n{metrics}"
    );
    let (ok, text) = verify_live(&broker);
    assert!(
        !ok && text.contains(&format!(
            "record {} carries a decision no reader can decode",
            planted.seq
        )),
        "{text}"
    );
    let replay = broker.cli(&["replay"]);
    assert!(!replay.status.success());
    let replayed: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replayed["undecodable"], 1, "{replayed}");
    let explained = broker.cli_json(&["explain", "req-planted"]);
    assert_eq!(
        explained["findings"][0]["finding"], "undecodable",
        "{explained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prunes_checkpoint_files_and_rule_sets_cannot_be_forged_in_the_database() {
    let mut broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    issue_ok(&broker, &node, 9).await;
    let (ok, text) = verify_live(&broker);
    assert!(ok, "{text}");

    // A damaged checkpoint file is a failure, never "no checkpoints".
    let cps = broker.data().join("checkpoints.jsonl");
    let good = std::fs::read_to_string(&cps).unwrap();
    std::fs::write(&cps, format!("{good}{{\"seq\": 15, \"ha")).unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(!ok && text.contains("is torn"), "{text}");
    std::fs::write(&cps, format!("garbage\n{good}")).unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(!ok && text.contains("line 1"), "{text}");
    std::fs::write(&cps, "").unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(
        !ok && text.contains("the checkpoint file lacks"),
        "an emptied file loses the store's checkpoints: {text}"
    );
    std::fs::remove_file(&cps).unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(!ok && text.contains("the checkpoint file lacks"), "{text}");
    std::fs::write(&cps, &good).unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(ok, "{text}");

    // Someone with write access deletes the history through the last
    // checkpoint, sets the base there and forges a log_pruned record in
    // the re-chained tail: no signed prune statement covers that base.
    broker.stop();
    let db = copy_store(&broker, "forged-prune");
    // Offline too, a file cut back to nothing loses the store's checkpoints.
    let saved = std::fs::read_to_string(&cps).unwrap();
    std::fs::write(&cps, "").unwrap();
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("the checkpoint file lacks"),
        "offline, an emptied file: {text}"
    );
    std::fs::write(&cps, saved).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let records = read_records(&conn);
    let last_cp = mintguard_broker::log::checkpoint::read_file(&cps)
        .unwrap()
        .last()
        .unwrap()
        .seq;
    let base = &records[usize::try_from(last_cp).unwrap() - 1];
    let mut prev = base.hash.clone();
    let mut tail = Vec::new();
    let forged = LogEntry {
        outcome: Some("log_pruned".into()),
        body: json!({"details": {"through_seq": last_cp, "hash": base.hash, "deleted": last_cp, "export": "/dev/null"}}),
        ..records.last().unwrap().entry.clone()
    };
    let rest = records[usize::try_from(last_cp).unwrap()..]
        .iter()
        .map(|r| r.entry.clone());
    for (i, entry) in std::iter::once(forged).chain(rest).enumerate() {
        let sealed = LogRecord::seal(last_cp + 1 + i64::try_from(i).unwrap(), entry, prev);
        prev = sealed.hash.clone();
        tail.push(sealed);
    }
    rewrite(&conn, &tail);
    conn.execute(
        "INSERT OR REPLACE INTO log_base(id, seq, hash) VALUES (1, ?1, ?2)",
        rusqlite::params![last_cp, base.hash],
    )
    .unwrap();
    drop(conn);
    let (ok, text) = verify_offline(&broker, &db);
    assert!(
        !ok && text.contains("no signed prune statement"),
        "a prune forged in the database must not verify: {text}"
    );

    // A rule set replaced in the store (inserts are first-writer-wins, so
    // the broker keeps it on restart): replay and verify refuse it.
    let live = rusqlite::Connection::open(broker.data().join("broker.db")).unwrap();
    let changed = live
        .execute(
            "UPDATE rule_sets SET body = replace(body, 'permit', 'forbid')",
            [],
        )
        .unwrap();
    assert!(changed >= 1);
    drop(live);
    broker.restart("");
    let (ok, text) = verify_live(&broker);
    assert!(!ok && text.contains("was replaced"), "{text}");
    // A log that does not verify is never pruned into a signed base.
    let refused = broker.prune_all(&broker.dir.path().join("refused.jsonl"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused.status.success() && said.contains("log_not_verified"),
        "{said}"
    );
    assert!(
        !std::fs::read_to_string(&cps).unwrap().contains("\"prune\""),
        "no prune statement was signed for it"
    );
    let replay = broker.cli(&["replay"]);
    let replayed: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert!(!replay.status.success());
    assert_eq!(
        replayed["differences"][0]["problem"]["problem"], "replaced",
        "{replayed}"
    );

    // The broker's own prune exports its statement first, and verifies.
    let live = rusqlite::Connection::open(broker.data().join("broker.db")).unwrap();
    live.execute(
        "UPDATE rule_sets SET body = replace(body, 'forbid', 'permit')",
        [],
    )
    .unwrap();
    drop(live);
    let export = broker.dir.path().join("export.jsonl");
    let out = broker.prune_all(&export);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statements = mintguard_broker::log::checkpoint::read_file(&cps).unwrap();
    assert!(
        statements
            .iter()
            .any(|s| s.kind == mintguard_broker::log::checkpoint::StatementKind::Prune),
        "the prune left its signed statement in the checkpoint stream"
    );
    let (ok, text) = verify_live(&broker);
    assert!(ok, "{text}");
    // A replica whose own export lacks the statement (another replica
    // pruned) verifies the base by the statement the log_pruned record
    // carries.
    let without: String = std::fs::read_to_string(&cps)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"prune\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cps, without).unwrap();
    let (ok, text) = verify_live(&broker);
    assert!(ok, "{text}");
}

/// `GET /admin/v1/health`; the public `/healthz` says only that it lives.
async fn health(broker: &BrokerProcess) -> Value {
    assert_eq!(health_public(broker).await, Some(json!({"status": "ok"})));
    broker.admin_get("/admin/v1/health").await.body
}

/// The `behaviour` signal of the newest decision record.
fn behaviour_signal(broker: &BrokerProcess) -> Value {
    let decision = broker
        .logs(&[])
        .into_iter()
        .rfind(|r| r["kind"] == "decision")
        .unwrap();
    decision["body"]["decision"]["trust"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "behaviour")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_that_stops_leaves_behaviour_stale_not_neutral() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-analysis");
    let wait = format!("anomaly_step:{}", hold.display());
    let broker = BrokerProcess::start_with_env(
        dir,
        "",
        "[anomaly]\ninterval = \"1s\"\nstale_after_intervals = 2\n",
        &[("MINTGUARD_FAULT_WAIT", &wait)],
    );
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    // Analysis runs: behaviour is the broker's fresh neutral value.
    let mut reached = hold.clone().into_os_string();
    reached.push(".reached");
    std::fs::write(&hold, b"").unwrap();
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );
    let fresh = behaviour_signal(&broker);
    assert_eq!(
        (fresh["status"].as_str(), fresh["source"].as_str()),
        (Some("fresh"), Some("broker:neutral")),
        "{fresh}"
    );

    // Analysis is held before its next step: past 2 intervals, behaviour
    // is recorded as stale (the unknown value), the metric and the admin health say so.
    wait_until("analysis reaches its hold", || {
        std::path::Path::new(&reached).exists()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert!(reply.status == 200 || reply.status == 202, "{}", reply.body);
    let stale = behaviour_signal(&broker);
    assert_eq!(
        (stale["status"].as_str(), stale["source"].as_str()),
        (Some("expired"), Some("broker:analysis_stale")),
        "{stale}"
    );
    assert!(stale["age_seconds"].as_i64().unwrap() >= 2, "{stale}");
    assert!(
        broker
            .admin_get("/metrics")
            .await
            .text
            .contains("mintguard_anomaly_analysis_stale 1")
    );
    assert_eq!(health(&broker).await["status"], "degraded");

    // Released, analysis steps again and behaviour is fresh.
    std::fs::remove_file(&hold).unwrap();
    let mut state = Value::Null;
    for _ in 0..100 {
        state = health(&broker).await["anomaly_analysis"]["state"].clone();
        if state == "fresh" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "fresh", "analysis steps again once released");
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200
    );
    assert_eq!(behaviour_signal(&broker)["status"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_name_their_grant_and_introspection_answers_only_for_the_clients_audiences() {
    const OTHER_CLIENT: &str = "other-relying-party-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("other.token"), OTHER_CLIENT);
    let broker = BrokerProcess::start_in(
        dir,
        "[[introspection_clients]]\nname = \"other\"\ntoken_file = \"other.token\"\naudiences = [\"other\"]\n",
    );
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.body["credential"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = introspect(&broker, INTROSPECTION_TOKEN, &token).await.body;
    assert_eq!(mine["active"], true, "{mine}");
    assert_eq!(mine["grant"], "payments-token", "{mine}");
    assert_eq!(
        introspect(&broker, OTHER_CLIENT, &token).await.body,
        json!({"active": false}),
        "another relying party learns nothing of this token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_listener_is_a_4xx_that_issues_nothing() {
    let broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    let (agents, public, admin, bundle) = (
        broker.addr("agents"),
        broker.addr("public"),
        broker.addr("admin"),
        broker.bundle(),
    );
    let token = std::fs::read_to_string(broker.data().join("operators/alice.token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());

    // Both framings, on every listener: refused before any handler runs.
    let smuggled = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: b\r\n{extra}Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2b\r\n{{\"selectors\":[\"unix:uid:1000\"],\"request\":{{}}}}\r\n0\r\n\r\n"
        )
    };
    for (listener, addr, client, path, extra) in [
        ("agents", &agents, Some(&node), "/v1/issue", String::new()),
        ("public", &public, None, "/v1/ci/credentials", String::new()),
        ("admin", &admin, None, "/admin/v1/signals", auth.clone()),
    ] {
        let reply = raw_tls(addr, &bundle, client, smuggled(path, &extra).as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400") && reply.contains("ambiguous_framing"),
            "{listener}: {reply}"
        );
    }

    // Numbers at and past every bound, floats, control characters, 1 MB
    // values, deep nesting and duplicate keys, through the agents listener
    // (as a node forwards them) and the admin API.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let issue_body = |request: &str| {
        format!(r#"{{"selectors":["unix:uid:1000","unix:gid:1000"],"request":{request}}}"#)
    };
    let mut cases: Vec<(String, String, &str, String, u16, &str)> = Vec::new();
    for (name, request, status, code) in [
        (
            "u64::MAX ttl",
            r#"{"grant":"payments-token","ttl_seconds":18446744073709551615}"#.to_owned(),
            400,
            "bad_ttl",
        ),
        (
            "ttl past 31 days",
            r#"{"grant":"payments-token","ttl_seconds":2678401}"#.to_owned(),
            400,
            "bad_ttl",
        ),
        (
            "float ttl",
            r#"{"grant":"payments-token","ttl_seconds":300.0}"#.to_owned(),
            400,
            "bad_json",
        ),
        (
            "NUL in the grant",
            r#"{"grant":"payments-token\u0000"}"#.to_owned(),
            400,
            "bad_grant",
        ),
        (
            "control character in the purpose",
            r#"{"grant":"payments-token","purpose":"a\u0007"}"#.to_owned(),
            400,
            "bad_purpose",
        ),
        (
            "1 MB purpose",
            format!(
                r#"{{"grant":"payments-token","purpose":"{}"}}"#,
                "p".repeat(1 << 20)
            ),
            413,
            "body_too_large",
        ),
        (
            "duplicate keys",
            r#"{"grant":"payments-token","grant":"other"}"#.to_owned(),
            400,
            "bad_json",
        ),
        ("nesting 10,000 deep", deep.clone(), 400, "bad_json"),
    ] {
        cases.push((
            name.into(),
            agents.clone(),
            "/v1/issue",
            issue_body(&request),
            status,
            code,
        ));
    }
    for (name, path, body, status, code) in [
        (
            "signal value 101",
            "/admin/v1/signals",
            r#"{"subject":"spiffe://example.org/ns/pay/sa/api","kind":"posture","value":101}"#,
            400,
            "bad_signal_value",
        ),
        (
            "signal ttl 0",
            "/admin/v1/signals",
            r#"{"subject":"spiffe://example.org/ns/pay/sa/api","kind":"posture","value":1,"ttl_seconds":0}"#,
            400,
            "bad_ttl",
        ),
        (
            "top-up u64::MAX",
            "/admin/v1/budget/top-up",
            r#"{"identity":"spiffe://example.org/ns/pay/sa/api","grant":"payments-token","tokens":18446744073709551615}"#,
            400,
            "bad_tokens",
        ),
        (
            "suspension reason with NUL",
            "/admin/v1/suspend",
            r#"{"subject":"spiffe://example.org/ns/pay/sa/api","reason":"x\u0000"}"#,
            400,
            "bad_reason",
        ),
        (
            "resume of a 1 MB subject",
            "/admin/v1/resume",
            &format!(r#"{{"subject":"{}"}}"#, "s".repeat(1 << 20)),
            413,
            "body_too_large",
        ),
    ] {
        cases.push((
            name.into(),
            admin.clone(),
            path,
            body.to_owned(),
            status,
            code,
        ));
    }
    let mut failures = Vec::new();
    for (name, addr, path, body, status, code) in &cases {
        let client = (path == &"/v1/issue").then_some(&node);
        let bearer = format!("Bearer {}", token.trim());
        let mut headers = vec![("content-type", "application/json")];
        if client.is_none() {
            headers.push(("authorization", bearer.as_str()));
        }
        let reply = match https(
            addr,
            &bundle,
            client,
            "POST",
            path,
            &headers,
            body.clone().into_bytes(),
        )
        .await
        {
            Ok(reply) => reply,
            // A body past the limit may be cut off while it is still being
            // sent: the broker answered 413 and closed before the client
            // finished writing. Refused either way.
            Err(e) if *status == 413 && e.contains("error writing a body") => continue,
            Err(e) => panic!("{name}: {e}"),
        };
        if reply.status != *status || reply.body["error"]["code"] != *code {
            failures.push(format!(
                "{name}: got {} {}, expected {status} {code}",
                reply.status,
                reply.text.chars().take(200).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was issued or suspended, and every record reads back.
    assert!(broker.live_leases().is_empty());
    let replay = broker.cli(&["replay"]);
    let replayed: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert!(replay.status.success(), "{replayed}");
    assert_eq!(replayed["undecodable"], 0);
    broker.assert_log_verifies();
    assert_eq!(
        issue(&broker, &node, json!({"grant": "payments-token"}))
            .await
            .status,
        200,
        "the identity is not suspended and still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_renewals_count_against_the_nodes_rate() {
    let broker = BrokerProcess::start("[limits]\nper_node_per_second = 1\n");
    let node = enrolled_node(&broker, "node-1").await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (reply, _) = renew(&broker, &node).await;
        if reply.status == 429 {
            assert_eq!(
                reply.body["error"]["code"], "rate_limited",
                "{}",
                reply.body
            );
        }
        statuses.push(reply.status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "ten renewals at once from one node: {statuses:?}"
    );
    // Only the renewals served are records.
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        broker.logs(&["--outcome", "node_svid_renewed"]).len(),
        served
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_is_never_without_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-admin");
    std::fs::write(&hold, b"").unwrap();
    let wait = format!("admin_change:{}", hold.display());
    let mut broker = BrokerProcess::start_with_env(dir, "", "", &[("MINTGUARD_FAULT_WAIT", &wait)]);
    // An operator suspends an identity; the broker stops after writing the
    // intent and before making the change.
    let data = broker.data();
    let cli = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_mintguard"))
            .arg("--data-dir")
            .arg(data)
            .args(["suspend", API, "--reason", "incident 9"])
            .output()
            .unwrap()
    });
    let mut reached = hold.clone().into_os_string();
    reached.push(".reached");
    wait_until("the suspension reaches its change", || {
        std::path::Path::new(&reached).exists()
    })
    .await;
    broker.stop();
    let _ = cli.join();
    broker.restart("");

    // The intent is in the log; the change was not made; verify says so.
    let intents = broker.logs(&["--outcome", "admin_intent"]);
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["body"]["action"], "suspended");
    assert!(broker.logs(&["--outcome", "suspended"]).is_empty());
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    issue_ok(&broker, &node, 1).await;
    let verified = broker.cli(&["logs", "verify"]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(
        said.contains("1 admin action(s) recorded as intended with no outcome"),
        "{said}"
    );

    // Done to the end, an action leaves its intent and its outcome under
    // one request id, and nothing unfinished.
    assert!(
        broker
            .cli(&["suspend", API, "--reason", "incident 9"])
            .status
            .success()
    );
    let done = broker.logs(&["--outcome", "suspended"]);
    assert_eq!(done.len(), 1);
    let intents = broker.logs(&["--outcome", "admin_intent"]);
    assert!(
        intents
            .iter()
            .any(|i| i["request_id"] == done[0]["request_id"]),
        "{intents:?}"
    );
    let said = String::from_utf8_lossy(&broker.cli(&["logs", "verify"]).stdout).into_owned();
    assert!(
        said.contains("1 admin action(s)"),
        "only the first is unfinished: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_a_listeners_connections() {
    use tokio::io::AsyncReadExt;
    // One address may hold 2 of the listener's 8 slots.
    let broker =
        BrokerProcess::start("[limits]\nmax_connections = 8\nmax_connections_per_address = 2\n");
    let addr = broker.addr("public");
    // Two idle connections hold both slots (until their handshake times out).
    let held = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    // The listener accepts in connect order, so the third is the one over.
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection over the cap is closed at once: {read:?}"
    );
    let metrics = broker.admin_get("/metrics").await.text;
    assert!(
        metrics.contains(r#"mintguard_unauthenticated_refusals_total{listener="public",reason="address_connection_limit"} 1"#),
        "{metrics}"
    );
    // Freed slots serve again.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if health_public(&broker).await.is_some() {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served);
}

/// `GET /healthz` on the public listener, if it answers.
async fn health_public(broker: &BrokerProcess) -> Option<Value> {
    https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "GET",
        "/healthz",
        &[],
        vec![],
    )
    .await
    .ok()
    .map(|r| r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_entry_stored_before_the_rule_is_not_honoured() {
    let mut broker = BrokerProcess::start("");
    let node = enrolled_node(&broker, "node-1").await;
    broker.stop();
    // An entry that pins only an executable hash, as one created before
    // weak entries were refused would.
    let conn = rusqlite::Connection::open(broker.data().join("broker.db")).unwrap();
    conn.execute(
        "INSERT INTO entries(id, spiffe_id, parent, selectors, grants, created_at_ms) VALUES ('entry-old', ?1, ?2, '[\"unix:sha256:0a1b2c\"]', '[\"payments-token\"]', 1)",
        rusqlite::params![API, node.spiffe_id().to_string()],
    )
    .unwrap();
    drop(conn);
    broker.restart("");
    let reply = post_json(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(&node),
        "/v1/issue",
        &json!({"selectors": ["unix:uid:4242", "unix:sha256:0a1b2c"], "request": {"grant": "payments-token"}}),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], "weak_entry");
    assert_eq!(reply.body["error"]["reasons"], json!(["entry-old"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_only_in_its_own_lineage() {
    let broker = BrokerProcess::start("");
    let first = enrolled_node(&broker, "node-1").await;
    let (reply, second) = renew(&broker, &first).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let second = second.unwrap();
    // A second holder of the first SVID (its key stolen) renews on its
    // own: allowed once (it may be the node retrying a lost answer)...
    let (reply, thief) = renew(&broker, &first).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // ...and then the node's own SVID is not the last issued: the two
    // lineages show, the renewal is refused and recorded as a detection.
    let (refused, _) = renew(&broker, &second).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "stale_node_svid");
    let anomalies = broker.cli(&["anomalies", "--json"]);
    let detections: Vec<Value> = String::from_utf8_lossy(&anomalies.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        detections
            .iter()
            .any(|d| d.to_string().contains("node_svid_fork")),
        "{detections:?}"
    );
    assert_eq!(broker.logs(&["--outcome", "node_svid_refused"]).len(), 1);
    // Re-enrolling the node starts a new generation: the old lineage's
    // SVIDs renew no more; the new one does.
    let fresh = enrolled_node(&broker, "node-1").await;
    let (refused, _) = renew(&broker, &thief.unwrap()).await;
    assert_eq!(refused.body["error"]["code"], "stale_node_svid");
    let (reply, _) = renew(&broker, &fresh).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let renewed = broker.logs(&["--outcome", "node_svid_renewed"]);
    assert_eq!(renewed.last().unwrap()["body"]["generation"], 2);
    broker.assert_log_verifies();
}
