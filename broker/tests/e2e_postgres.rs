//! The real broker on the PostgreSQL store from tests/peers.sh (a fresh
//! database): the issuance path end to end, the log verifying, replay
//! matching. Fails (never skips) without MINTGUARD_PG_URL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_issues_logs_and_verifies_on_postgres() {
    let store = fresh_postgres_database("mg_broker").await;
    let broker = BrokerProcess::start_with(
        tempfile::tempdir().unwrap(),
        &format!("store = \"{store}\""),
        "",
    );
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    for _ in 0..6 {
        let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let out = broker.cli(&["logs", "--json"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "decision").count(),
        6
    );
    broker.assert_log_verifies();
    let replay: Value = serde_json::from_slice(&broker.cli(&["replay"]).stdout).unwrap();
    assert_eq!(
        (
            replay["replayed"].as_u64(),
            replay["differences"].as_array().map(Vec::len)
        ),
        (Some(6), Some(0))
    );
    // The SQLite file was never created: everything went to PostgreSQL.
    assert!(!broker.data().join("broker.db").exists());
}
