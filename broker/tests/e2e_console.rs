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

/// Every request for `held-token` waits for an approver.
const HELD: &str = r#"
@id("api-may-ask-for-held-tokens")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"held-token");
@id("held-tokens-need-an-approver")
@outcome("step_up")
forbid (principal, action, resource == Mintguard::Grant::"held-token");
"#;

/// Seconds a console session lasts idle here (short, so the test sees one end).
const IDLE_SECONDS: u64 = 8;

fn peer(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the browser tests under tests/peers.sh, which installs Chromium and playwright-core")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    // Three more operators from the config (the CLI keeps using alice's
    // token, the one under data/operators), and a grant every request of
    // which is held for an approver.
    let dir = tempfile::tempdir().unwrap();
    let token = |name: &str| {
        let secret = mintguard_broker::ids::secret_hex::<16>().unwrap();
        format!("console-{name}-{secret}")
    };
    let (oscar, ada, vera) = (token("oscar"), token("ada"), token("vera"));
    write_private(&dir.path().join("oscar.token"), &oscar);
    write_private(&dir.path().join("ada.token"), &ada);
    write_private(&dir.path().join("vera.token"), &vera);
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/held.cedar"), HELD).unwrap();
    let extra = format!(
        r#"
[[grants]]
name = "held-token"
kind = "jwt"
max_ttl = "5m"
jwt = {{ audience = "held" }}
[[operators]]
name = "ops-oscar"
role = "operator"
token_file = "oscar.token"
[[operators]]
name = "appr-ada"
role = "approver"
token_file = "ada.token"
[[operators]]
name = "view-vera"
role = "viewer"
token_file = "vera.token"
[console]
idle_timeout = "{IDLE_SECONDS}s"
"#
    );
    let broker = BrokerProcess::start_in(dir, &extra);
    let certs = broker.dir.path().join("carl");
    broker.create_operator("cert-carl", "viewer", Some(&certs));
    // The running rules watched as a shadow set too: the timeline says so.
    let config_file = broker.dir.path().join("broker.toml");
    let config = std::fs::read_to_string(&config_file).unwrap();
    std::fs::write(
        &config_file,
        config.replace(
            "cedar = \"policies\"",
            "cedar = \"policies\"\nshadow = \"policies\"",
        ),
    )
    .unwrap();
    broker.cli_json(&["reload"]);
    let node = enrolled_node(&broker, "node-1").await;
    register_api_with(
        &broker,
        "node-1",
        &["unix:uid:1000", "unix:sha256:0a1b2c"],
        &["payments-token", "held-token"],
    );
    // Something on the timeline before the page opens, and a request held
    // for an approver.
    issue_ok(&broker, &node, 3).await;
    let held = issue(&broker, &node, json!({"grant": "held-token"})).await;
    assert_eq!(held.status, 202, "{}", held.text);
    let approval_id = held.body["approval_id"].as_str().unwrap().to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs");
    let mut browser = Command::new("node")
        .arg(script)
        .env("MG_URL", format!("https://{}", broker.addr("admin")))
        .env("MG_BUNDLE", broker.data().join("bundle.pem"))
        .env("MG_OPERATOR", &oscar)
        .env("MG_APPROVER", &ada)
        .env("MG_VIEWER", &vera)
        .env("MG_IDLE_SECONDS", IDLE_SECONDS.to_string())
        .env("MG_CERT", certs.join("cert-carl.crt"))
        .env("MG_KEY", certs.join("cert-carl.key"))
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
    let credential = issued["credential"]["token"].as_str().unwrap().to_owned();
    let line = json!({
        "request_id": request_id,
        "lease_id": lease_id,
        "identity": API,
        "node": node.spiffe_id().to_string(),
        "approval_id": approval_id,
        "explain": explain,
    });
    let mut reply = |line: Value| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    };
    let mut expect = |tag: &str| {
        let got = said.next().and_then(Result::ok);
        assert_eq!(
            got.as_deref(),
            Some(tag),
            "the browser test stopped before {tag:?}"
        );
    };
    reply(line);

    // Nothing the forged requests tried took effect: the lease is live,
    // and so is its token.
    expect("forged");
    assert!(
        broker
            .live_leases()
            .iter()
            .any(|l| l["id"] == lease_id.as_str()),
        "the lease a forged request aimed at was revoked"
    );
    let active = introspect(&broker, INTROSPECTION_TOKEN, &credential).await;
    assert_eq!(active.body["active"], true, "{}", active.text);
    reply(json!({}));

    // Revoked from the identity page: introspection refuses the token.
    expect("revoked");
    let inactive = introspect(&broker, INTROSPECTION_TOKEN, &credential).await;
    assert_eq!(inactive.body["active"], false, "{}", inactive.text);
    reply(json!({}));

    // Approved in the console: the held request is issued.
    expect("approved");
    let redeemed = issue(
        &broker,
        &node,
        json!({"grant": "held-token", "approval_id": approval_id}),
    )
    .await;
    assert_eq!(redeemed.status, 200, "{}", redeemed.text);
    reply(json!({}));

    // Suspended from the node's page: its workloads are refused; resumed,
    // they are issued again.
    expect("suspended");
    let refused = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.text.contains("issuer_suspended"),
        "{}",
        refused.text
    );
    reply(json!({}));
    expect("resumed");
    let again = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    reply(json!({}));

    expect("done");
    let status = browser.wait().unwrap();
    assert!(status.success(), "the browser test failed ({status})");

    // Each sign-in is recorded under its operator's name.
    let signed_in: Vec<String> = broker
        .logs(&[])
        .iter()
        .filter(|r| r["body"]["action"] == "console_sign_in")
        .map(|r| r["body"]["operator"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        signed_in,
        [
            "ops-oscar",
            "appr-ada",
            "ops-oscar",
            "view-vera",
            "cert-carl"
        ]
    );
    // The revocation and the approval are recorded under their operators.
    let records: Vec<String> = broker.logs(&[]).iter().map(Value::to_string).collect();
    assert!(
        records
            .iter()
            .any(|r| r.contains(&lease_id) && r.contains("operator:ops-oscar")),
        "no revocation by ops-oscar"
    );
    assert!(
        records
            .iter()
            .any(|r| r.contains("\"approved\"") && r.contains("appr-ada")),
        "no approval by appr-ada"
    );
    for action in ["\"suspended\"", "\"resumed\""] {
        assert!(
            records
                .iter()
                .any(|r| r.contains(action) && r.contains("ops-oscar")),
            "no {action} by ops-oscar"
        );
    }
    broker.assert_log_verifies();
}

/// Two JWT grants (one reaching a crown jewel of the example graph) and the
/// example exposure graph, for the busy log.
fn busy_extra() -> String {
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/graphs/payments.json"
    );
    format!(
        r#"
[eci]
graph = "{graph}"
[[grants]]
name = "ledger-admin"
kind = "jwt"
max_ttl = "10m"
eci_targets = ["role:prod-db-admin"]
jwt = {{ audience = "ledger" }}
budget = {{ amount = 40, per = "1h", eci_factor = 2 }}
"#
    )
}

/// The console on a busy log: `mintguard-broker seed-log` writes
/// MG_BUSY_REQUESTS (100,000 by default) decisions with detections through
/// the real issuance core; every page renders on it in a real browser,
/// says when it shows partial data, and reports how long it took
/// (`tests/console/busy.mjs`; the timings are printed, never asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_on_a_busy_log() {
    let requests = std::env::var("MG_BUSY_REQUESTS").unwrap_or_else(|_| "100000".into());
    let extra = busy_extra();
    let mut broker = BrokerProcess::start(&extra);
    broker.stop();
    let root = broker.dir.path().to_owned();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/busy/policies/seed.cedar"
        ),
        root.join("policies/seed.cedar"),
    )
    .unwrap();
    let seeded = Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
        .args(["seed-log", "--requests", &requests, "--config"])
        .arg(root.join("broker.toml"))
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let report: Value = serde_json::from_slice(&seeded.stdout).unwrap();
    eprintln!("seed-log: {report}");
    let wanted: u64 = requests.parse().unwrap();
    assert_eq!(report["requests"], wanted);
    assert_eq!(
        report["issued"].as_u64().unwrap() + report["refused"].as_u64().unwrap(),
        wanted,
        "every request was decided and logged: {report}"
    );
    assert!(report["issued"].as_u64().unwrap() > wanted / 2, "{report}");
    assert!(report["detections"].as_u64().unwrap() > 0, "{report}");
    assert!(report["records"].as_i64().unwrap() >= i64::try_from(wanted).unwrap());
    // A seeded log is a log of its own: never beside records, nor beside a
    // running broker.
    let seed_again = || {
        Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
            .args(["seed-log", "--requests", "10", "--config"])
            .arg(root.join("broker.toml"))
            .output()
            .unwrap()
    };
    let refused = seed_again();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already holds records"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    broker.restart(&extra);
    let beside = seed_again();
    assert!(!beside.status.success());
    assert!(
        String::from_utf8_lossy(&beside.stderr)
            .contains("a broker is running on this data directory"),
        "{}",
        String::from_utf8_lossy(&beside.stderr)
    );

    let token = std::fs::read_to_string(broker.data().join("operators/alice.token")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/busy.mjs");
    let out = Command::new("node")
        .arg(script)
        .env("MG_URL", format!("https://{}", broker.addr("admin")))
        .env("MG_BUNDLE", broker.data().join("bundle.pem"))
        .env("MG_TOKEN", token.trim())
        .env("MG_TD", "example.org")
        .env("MINTGUARD_PLAYWRIGHT", peer("MINTGUARD_PLAYWRIGHT"))
        .env("MINTGUARD_CHROMIUM", peer("MINTGUARD_CHROMIUM"))
        .stderr(Stdio::inherit())
        .output()
        .expect("node runs the busy-log browser test");
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    assert!(out.status.success(), "the busy-log browser test failed");
    let pages: Vec<&str> = said
        .lines()
        .filter_map(|l| l.strip_prefix("timing "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for page in [
        "timeline",
        "identity",
        "decision",
        "node",
        "anomalies",
        "integrity",
    ] {
        assert!(pages.contains(&page), "no timing for {page}: {said}");
    }
    assert_eq!(said.lines().last(), Some("done"));
}
