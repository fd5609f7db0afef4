//! The broker on PostgreSQL while the database goes away and comes back
//! (the peer from tests/peers.sh, stopped and started with
//! `MINTGUARD_PG_CTL`): requests fail closed with 503 during the outage,
//! succeed again after it without a restart of the broker, and every
//! credential a client received has exactly one record in a log that
//! verifies. Its own test binary: it stops the database every other test
//! uses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn pg_ctl(action: &str) {
    let ctl =
        std::env::var("MINTGUARD_PG_CTL").expect("MINTGUARD_PG_CTL: run under tests/peers.sh");
    let out = Command::new(ctl).arg(action).output().unwrap();
    assert!(
        out.status.success(),
        "pg-ctl {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_fails_closed_and_recovers_without_losing_records() {
    let store = fresh_postgres_database("mg_outage").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/outage.cedar"),
        r#"permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
                   action == Mintguard::Action::"mint", resource == Mintguard::Grant::"outage-token");"#,
    )
    .unwrap();
    let broker = BrokerProcess::start_with(
        dir,
        &format!("store = \"{store}\""),
        r#"
[[grants]]
name = "outage-token"
kind = "jwt"
max_ttl = "5m"
jwt = { audience = "outage" }
[limits]
per_identity_per_second = 100000
[anomaly]
enabled = false
"#,
    );
    let node = enrolled_node(&broker, "node-1").await;
    register_api_with(&broker, "node-1", &["unix:uid:1000"], &["outage-token"]);

    // Two clients issue continuously; each answer is kept.
    let answers: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (addr, bundle, node) = (broker.addr("agents"), broker.bundle(), node.clone());
        let (answers, stop) = (answers.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = post_json(
                    &addr,
                    &bundle,
                    Some(&node),
                    "/v1/issue",
                    &json!({"selectors": SELECTORS, "request": {"grant": "outage-token", "ttl_seconds": 60}}),
                )
                .await;
                answers.lock().unwrap().push((reply.status, reply.body));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let count = |status: u16| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == status)
            .count()
    };
    wait_until("something is issued before the outage", || count(200) > 0).await;

    pg_ctl("stop");
    // The outage lasts until the clients have been refused ten times.
    let stopped = answers.lock().unwrap().len();
    wait_until("ten requests are refused during the outage", || {
        answers.lock().unwrap()[stopped..]
            .iter()
            .filter(|(s, _)| *s == 503)
            .count()
            >= 10
    })
    .await;
    let during = answers.lock().unwrap().len();
    pg_ctl("start");
    // Recovery by itself: 200s again within 30 s.
    let mut recovered = false;
    for _ in 0..300 {
        if answers.lock().unwrap()[during..]
            .iter()
            .any(|(s, _)| *s == 200)
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if recovered {
        // Service continues: ten more issued after the first.
        let recovered_at = count(200);
        wait_until("ten more are issued after recovery", || {
            count(200) >= recovered_at + 10
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert!(
        recovered,
        "the broker did not recover after the database returned"
    );

    // During the outage: 503 with a reason, never anything else.
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, b)| b)
        .collect();
    assert!(!refused.is_empty(), "no request failed during the outage");
    for body in &refused {
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            matches!(code, "log_unavailable" | "store_unavailable"),
            "{body}"
        );
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200 && *s != 503)
            .collect::<Vec<_>>()
    );

    // Every credential a client received has exactly one record.
    broker.assert_one_record_each(
        "outage-token",
        answers
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b["decision"]["request_id"].as_str().unwrap()),
    );
    broker.assert_log_verifies();
}
