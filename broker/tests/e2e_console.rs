//! The operator console in a real browser (headless Chromium driven by
//! playwright-core, `tests/console/console.mjs`): sign-in, a fresh issuance
//! appearing on the live timeline, its decision page against `mintguard
//! explain --json`, replay, forged cross-site requests refused, a viewer
//! refused an operator's action, sign-out and an idle session's return to
//! sign-in. Needs `tests/peers.sh` (MINTGUARD_CHROMIUM, MINTGUARD_PLAYWRIGHT).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// Seconds a console session lasts idle here (short, so the test sees one end).
const IDLE_SECONDS: u64 = 6;

fn peer(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the browser tests under tests/peers.sh, which installs Chromium and playwright-core")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    // Two more operators from the config (the CLI keeps using alice's
    // token, the one under data/operators).
    let dir = tempfile::tempdir().unwrap();
    let token = |name: &str| {
        let secret = mintguard_broker::ids::secret_hex::<16>().unwrap();
        format!("console-{name}-{secret}")
    };
    let (oscar, vera) = (token("oscar"), token("vera"));
    write_private(&dir.path().join("oscar.token"), &oscar);
    write_private(&dir.path().join("vera.token"), &vera);
    let operators = r#"
[[operators]]
name = "ops-oscar"
role = "operator"
token_file = "oscar.token"
[[operators]]
name = "view-vera"
role = "viewer"
token_file = "vera.token"
"#;
    let console = format!("[console]\nidle_timeout = \"{IDLE_SECONDS}s\"\n");
    let broker = BrokerProcess::start_in(dir, &format!("{operators}{console}"));
    let node = enrolled_node(&broker, "node-1").await;
    register_api(&broker, "node-1");
    // Something on the timeline before the page opens.
    issue_ok(&broker, &node, 3).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs");
    let mut browser = Command::new("node")
        .arg(script)
        .env("MG_URL", format!("https://{}", broker.addr("admin")))
        .env("MG_BUNDLE", broker.data().join("bundle.pem"))
        .env("MG_OPERATOR", &oscar)
        .env("MG_VIEWER", &vera)
        .env("MG_IDLE_SECONDS", IDLE_SECONDS.to_string())
        .env("MINTGUARD_PLAYWRIGHT", peer("MINTGUARD_PLAYWRIGHT"))
        .env("MINTGUARD_CHROMIUM", peer("MINTGUARD_CHROMIUM"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs the browser test");
    let mut said = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut stdin = browser.stdin.take().unwrap();
    let ready = said.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "the browser test did not get the timeline live"
    );

    // A fresh issuance while the page is open.
    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let issued: Value = serde_json::from_str(&reply.text).unwrap();
    let request_id = issued["decision"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease_id = issued["lease_id"].as_str().unwrap().to_owned();
    let explain = broker.cli_json(&["explain", &request_id]);
    let line = json!({"request_id": request_id, "lease_id": lease_id, "explain": explain});
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();

    let done = said.next().and_then(Result::ok);
    let status = browser.wait().unwrap();
    assert!(
        status.success() && done.as_deref() == Some("done"),
        "the browser test failed ({status})"
    );

    // Nothing the forged requests tried took effect: the lease is live.
    assert!(
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease_id.as_str()),
        "the lease a forged request aimed at was revoked"
    );
    // Each sign-in is recorded under its operator's name.
    let signed_in: Vec<String> = broker
        .logs(&[])
        .iter()
        .filter(|r| r["body"]["action"] == "console_sign_in")
        .map(|r| r["body"]["operator"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(signed_in, ["ops-oscar", "view-vera"]);
    broker.assert_log_verifies();
}
