//! `mintguard whatif` on the real broker: a log with a known mix of
//! traffic; a proposed rule that denies one grant in given hours reports
//! exactly the decisions a count of the log itself finds, with the rule
//! that made the difference; `--fail-on deny` exits non-zero; a changed
//! trust threshold shows up as transitions too. The running rules are
//! untouched throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// The API workload may also ask for the ledger grant.
const LEDGER: &str = r#"
@id("api-may-mint-ledger")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"ledger-token");
"#;

const EXTRA: &str = r#"
[[grants]]
name = "ledger-token"
kind = "jwt"
max_ttl = "15m"
jwt = { audience = "ledger" }
[[grants]]
name = "audit-token"
kind = "jwt"
max_ttl = "15m"
jwt = { audience = "audit" }
"#;

/// The UTC hour of a time in ms.
fn hour(ms: i64) -> i64 {
    ms.div_euclid(3_600_000).rem_euclid(24)
}

/// The proposal: the running rules, and the ledger grant refused in the
/// current hour and the next (so a test holds across an hour's turn);
/// the directory, and the current hour.
fn after_hours_proposal(broker: &BrokerProcess) -> (std::path::PathBuf, i64) {
    let now_hour = hour(mintguard_broker::clock::now_ms());
    let proposed = broker.dir.path().join("proposed");
    std::fs::create_dir_all(&proposed).unwrap();
    std::fs::write(proposed.join("api.cedar"), POLICIES).unwrap();
    std::fs::write(proposed.join("ledger.cedar"), LEDGER).unwrap();
    std::fs::write(
        proposed.join("after-hours.cedar"),
        format!(
            r#"@id("ledger-after-hours")
forbid (principal, action, resource == Mintguard::Grant::"ledger-token")
when {{ context.hour == {now_hour} || context.hour == {} }};"#,
            (now_hour + 1) % 24
        ),
    )
    .unwrap();
    (proposed, now_hour)
}

/// What the log itself says the after-hours rule changes: every ledger
/// decision in those hours not already refused.
fn after_hours_ledger(decisions: &[Value], now_hour: i64) -> usize {
    decisions
        .iter()
        .filter(|r| r["grant"] == "ledger-token")
        .filter(|r| {
            let h = hour(r["body"]["input"]["now_ms"].as_i64().unwrap());
            h == now_hour || h == (now_hour + 1) % 24
        })
        .filter(|r| r["body"]["decision"]["outcome"] != "deny")
        .count()
}

/// The mix of traffic: payments and ledger tokens, and requests for a grant
/// the entry lacks (decided deny, and logged).
async fn traffic(broker: &BrokerProcess, node: &mintguard_certs::svid::X509Svid) {
    for i in 0..14 {
        let (grant, status) = match i % 7 {
            0..=3 => ("payments-token", 200),
            4 | 5 => ("ledger-token", 200),
            _ => ("audit-token", 403),
        };
        let reply = issue(broker, node, json!({"grant": grant})).await;
        assert_eq!(reply.status, status, "{grant}: {}", reply.text);
    }
}

/// A broker whose API workload may ask for the payments and ledger grants
/// through node-1.
async fn start() -> (BrokerProcess, mintguard_certs::svid::X509Svid) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ledger.cedar"), LEDGER).unwrap();
    let broker = BrokerProcess::start_in(dir, EXTRA);
    let node = enrolled_node(&broker, "node-1").await;
    register_api_with(
        &broker,
        "node-1",
        &["unix:uid:1000", "unix:sha256:0a1b2c"],
        &["payments-token", "ledger-token"],
    );
    (broker, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatif_reports_the_decisions_a_proposed_rule_would_change() {
    let (broker, node) = start().await;
    traffic(&broker, &node).await;

    let (proposed, now_hour) = after_hours_proposal(&broker);
    // What the log itself says the rule would change: every ledger
    // decision in those hours not already refused.
    let decisions: Vec<Value> = broker
        .logs(&[])
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["body"]["decision"].is_object())
        .collect();
    let expected = after_hours_ledger(&decisions, now_hour);
    assert!(expected >= 4, "the mix holds ledger issuances: {expected}");

    let proposed_arg = proposed.to_str().unwrap();
    let report = broker.cli_json(&["whatif", "--rules", proposed_arg, "--json"]);
    assert_eq!(report["decisions"], decisions.len(), "{report}");
    assert_eq!(report["changed"], expected, "{report}");
    let transitions = report["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 1, "{report}");
    let t = &transitions[0];
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("allow"), Some("deny"))
    );
    assert_eq!(t["count"], expected);
    assert_eq!(t["grants"], json!({"ledger-token": expected}));
    assert_eq!(t["identities"], json!({API: expected}));
    let sample = &t["samples"][0];
    assert_eq!(sample["rules_added"], json!(["ledger-after-hours"]));
    assert!(
        sample["reasons_after"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "rule_forbid"),
        "{sample}"
    );

    // A gate: deny transitions fail it; a step-up gate passes.
    let gate = broker.cli(&[
        "whatif",
        "--rules",
        proposed_arg,
        "--fail-on",
        "deny,suspend",
    ]);
    assert_eq!(
        gate.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&gate.stdout)
    );
    let text = String::from_utf8_lossy(&gate.stdout);
    assert!(text.contains("allow → deny"), "{text}");
    assert!(text.contains("ledger-after-hours"), "{text}");
    let pass = broker.cli(&["whatif", "--rules", proposed_arg, "--fail-on", "step_up"]);
    assert_eq!(
        pass.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pass.stderr)
    );
    // Filtered to the payments grant: nothing changes.
    let payments = broker.cli_json(&[
        "whatif",
        "--rules",
        proposed_arg,
        "--grant",
        "payments-token",
        "--json",
    ]);
    assert_eq!(payments["changed"], 0, "{payments}");
    assert!(payments["decisions"].as_u64().unwrap() >= 8);

    // A trust threshold no decision meets: every allow steps up, as the
    // log's own scores say.
    let config = std::fs::read_to_string(broker.dir.path().join("broker.toml")).unwrap();
    let stricter = broker.dir.path().join("stricter.toml");
    std::fs::write(
        &stricter,
        format!("{config}\n[trust]\nmin_trust_base = 100.0\nmin_trust_per_eci = 0.0\n"),
    )
    .unwrap();
    let running = broker.dir.path().join("policies");
    let strict = broker.cli_json(&[
        "whatif",
        "--rules",
        running.to_str().unwrap(),
        "--config",
        stricter.to_str().unwrap(),
        "--json",
    ]);
    let allowed = decisions
        .iter()
        .filter(|r| r["body"]["decision"]["outcome"] == "allow")
        .filter(|r| r["body"]["decision"]["trust"]["score"].as_f64().unwrap() < 100.0)
        .count();
    assert!(allowed > 0);
    let moved: u64 = strict["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["from"] == "allow" && t["to"] == "step_up")
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(moved, allowed as u64, "{strict}");

    // A proposed graph in which the API reaches a crown jewel as admin: its
    // ECI rises, and so does min_trust = 40 + 0.6 × max(ECI, exposure)
    // (ECI weighing more, as proposed beside it) — every allow whose logged
    // score falls below the new bar steps up; the weight alone, over the
    // running graph, moves only what the running ECI says.
    let weighed = broker.dir.path().join("weighed.toml");
    std::fs::write(
        &weighed,
        format!("{config}\n[trust]\nmin_trust_per_eci = 0.6\n"),
    )
    .unwrap();
    let graph = broker.dir.path().join("graph.json");
    std::fs::write(
        &graph,
        json!({
            "nodes": [
                {"id": API, "kind": "identity"},
                {"id": "role:ledger-admin", "kind": "role"},
                {"id": "db:ledger", "kind": "resource", "crown_jewel": true, "sensitivity": ["financial"]}
            ],
            "edges": [
                {"from": API, "to": "role:ledger-admin", "kind": "can_assume"},
                {"from": "role:ledger-admin", "to": "db:ledger", "kind": "grants", "access": "admin"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let step_ups = |report: &Value| -> u64 {
        report["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["from"] == "allow" && t["to"] == "step_up")
            .map(|t| t["count"].as_u64().unwrap())
            .sum()
    };
    let below = |eci: f64| {
        decisions
            .iter()
            .filter(|r| r["body"]["decision"]["outcome"] == "allow")
            .filter(|r| {
                let exposure = r["body"]["input"]["eci"]["grant_exposure"]
                    .as_f64()
                    .unwrap();
                let score = r["body"]["decision"]["trust"]["score"].as_f64().unwrap();
                score < 40.0 + 0.6 * eci.max(exposure)
            })
            .count() as u64
    };
    let weight_only = broker.cli_json(&[
        "whatif",
        "--rules",
        running.to_str().unwrap(),
        "--config",
        weighed.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(weight_only["eci_changed"], 0);
    let exposed = broker.cli_json(&[
        "whatif",
        "--rules",
        running.to_str().unwrap(),
        "--config",
        weighed.to_str().unwrap(),
        "--graph",
        graph.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(exposed["eci_changed"], 1, "{exposed}");
    let change = &exposed["eci_changes"][0];
    assert_eq!(change["identity"], API);
    let (before, after) = (
        change["before"].as_f64().unwrap(),
        change["after"].as_f64().unwrap(),
    );
    assert!(after > before, "{change}");
    assert_eq!(step_ups(&weight_only), below(before), "{weight_only}");
    assert_eq!(step_ups(&exposed), below(after), "{exposed}");

    // Offline, on the store itself (no broker asked): the same reports.
    let store = format!("sqlite://{}", broker.data().join("broker.db").display());
    let offline = |rules: &str, config: &Path, graph: Option<&Path>| {
        let mut args = vec![
            "whatif",
            "--store",
            &store,
            "--rules",
            rules,
            "--config",
            config.to_str().unwrap(),
            "--json",
        ];
        if let Some(g) = graph {
            args.extend(["--graph", g.to_str().unwrap()]);
        }
        broker.cli_json(&args)
    };
    let same = |a: &Value, b: &Value| {
        for key in [
            "rule_set",
            "decisions",
            "changed",
            "changed_details",
            "transitions",
            "eci_changes",
            "eci_changed",
        ] {
            assert_eq!(a[key], b[key], "{key}: {a}\n{b}");
        }
    };
    let config_file = broker.dir.path().join("broker.toml");
    same(&offline(proposed_arg, &config_file, None), &report);
    same(
        &offline(running.to_str().unwrap(), &weighed, Some(&graph)),
        &exposed,
    );
    let needs_config = broker.cli(&["whatif", "--store", &store, "--rules", proposed_arg]);
    assert_eq!(needs_config.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&needs_config.stderr).contains("--store needs --config"));
    assert!(
        step_ups(&exposed) > step_ups(&weight_only),
        "an admin path to a crown jewel raises the bar: {exposed}"
    );

    // Enforcement is untouched: the running rules still issue the ledger grant.
    let reply = issue(&broker, &node, json!({"grant": "ledger-token"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Bad input is refused with a reason, changing nothing.
    let empty = broker.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let none = broker.cli(&["whatif", "--rules", empty.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no .cedar files"));
    std::fs::write(
        empty.join("broken.cedar"),
        "permit (principal, action, resource) when { nope };",
    )
    .unwrap();
    let broken = broker.cli(&["whatif", "--rules", empty.to_str().unwrap()]);
    assert_eq!(broken.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("bad_rules"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}

/// `mintguard decide` runs the live pipeline without minting: it agrees
/// with a real issuance made right after it, spends and leases nothing, and
/// is logged as a simulation under the operator who ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_agrees_with_the_issuance_right_after_it() {
    let (broker, node) = start().await;
    issue_ok(&broker, &node, 2).await;
    let budget = |b: &BrokerProcess| {
        b.cli_json(&[
            "budget",
            "show",
            "--identity",
            API,
            "--grant",
            "payments-token",
        ])["available"]
            .clone()
    };
    let before = budget(&broker);
    let leases = broker.live_leases().len();

    let simulated = broker.cli_json(&[
        "decide",
        "--identity",
        API,
        "--grant",
        "payments-token",
        "--node",
        "node-1",
    ]);
    assert_eq!(simulated["simulation"], true);
    let sim = &simulated["body"]["decision"];
    assert_eq!(budget(&broker), before, "a simulation spends nothing");
    assert_eq!(
        broker.live_leases().len(),
        leases,
        "a simulation leases nothing"
    );

    let reply = issue(&broker, &node, json!({"grant": "payments-token"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let request_id = reply.body["decision"]["request_id"].as_str().unwrap();
    let explained = broker.cli_json(&["explain", request_id]);
    let real = &explained["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "decision")
        .unwrap()["body"]["decision"];
    for key in [
        "outcome",
        "reasons",
        "ttl_seconds",
        "rule_set_hash",
        "rules",
    ] {
        assert_eq!(sim[key], real[key], "{key}: {sim} vs {real}");
    }
    // The logged record is canonical JSON (40.0 is written 40).
    assert_eq!(sim["min_trust"].as_f64(), real["min_trust"].as_f64());
    assert_eq!(sim["trust"]["score"], real["trust"]["score"]);
    for key in ["eci", "eci_raw", "grant_exposure", "issuer_blast_radius"] {
        assert_eq!(sim["eci"][key].as_f64(), real["eci"][key].as_f64(), "{key}");
    }

    // A grant the entry lacks: decided deny, as issuance would.
    let refused = broker.cli_json(&["decide", "--identity", API, "--grant", "audit-token"]);
    assert_eq!(refused["body"]["decision"]["outcome"], "deny");
    assert!(
        refused["body"]["decision"]["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("issuer_may_not_vouch")),
        "{refused}"
    );
    // Assumed observations and a time: a node posture of 0 falls below
    // the critical bar.
    let signals = broker.dir.path().join("assumed.json");
    std::fs::write(&signals, r#"{"posture": 0, "attestation": 0}"#).unwrap();
    let weak = broker.cli_json(&[
        "decide",
        "--identity",
        API,
        "--grant",
        "payments-token",
        "--signals",
        signals.to_str().unwrap(),
        "--at",
        "2026-12-01T03:00:00Z",
    ]);
    assert_ne!(weak["body"]["decision"]["outcome"], "allow", "{weak}");
    assert_eq!(weak["body"]["input"]["now_ms"], 1_796_094_000_000_i64);
    // Each simulation is in the log under the operator, and only there.
    let simulations: Vec<Value> = broker
        .logs(&[])
        .into_iter()
        .filter(|r| r["outcome"] == "simulated_decision")
        .collect();
    assert_eq!(simulations.len(), 3);
    assert!(simulations.iter().all(|r| r["body"]["operator"] == "alice"));
    // Bad input: a clear 4xx, nothing logged.
    for (args, code) in [
        (
            vec!["--identity", API, "--grant", "no-such-grant"],
            "unknown_grant",
        ),
        (
            vec![
                "--identity",
                "spiffe://example.org/ns/x/sa/nobody",
                "--grant",
                "payments-token",
            ],
            "no_entry",
        ),
        (
            vec!["--identity", "not-an-id", "--grant", "payments-token"],
            "bad_spiffe_id",
        ),
    ] {
        let mut all = vec!["decide"];
        all.extend(args);
        let out = broker.cli(&all);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        broker
            .logs(&[])
            .iter()
            .filter(|r| r["outcome"] == "simulated_decision")
            .count(),
        3
    );
}

/// The log's records of which shadow set is watched.
fn shadow_rules_records(broker: &BrokerProcess) -> Vec<Value> {
    broker
        .logs(&[])
        .into_iter()
        .filter(|r| r["outcome"] == "shadow_rules")
        .collect()
}

/// The after-hours proposal watched as a shadow set on live traffic:
/// enforcement is untouched, and the shadow disagrees exactly where
/// `whatif` over the same log says the proposal would — in the report, in
/// Prometheus and in the status the console reads; `replay` re-decides both
/// verdicts and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_set_on_live_traffic_disagrees_where_whatif_says() {
    let (broker, node) = start().await;
    let (proposed, now_hour) = after_hours_proposal(&broker);
    let config_file = broker.dir.path().join("broker.toml");
    let config = std::fs::read_to_string(&config_file).unwrap();
    let watch = |shadow: &str| {
        let text = config.replace(
            "cedar = \"policies\"",
            &format!("cedar = \"policies\"\n{shadow}"),
        );
        std::fs::write(&config_file, text).unwrap();
        broker.cli(&["reload"])
    };

    // A shadow set that does not load is refused; nothing changes.
    let broken = broker.dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("x.cedar"),
        "forbid (principal, action, resource) when { nope };",
    )
    .unwrap();
    let refused = watch("shadow = \"broken\"");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("policies.shadow"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(broker.cli_json(&["shadow", "status"])["configured"], false);

    let reloaded = watch("shadow = \"proposed\"");
    assert!(
        reloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    let status = broker.cli_json(&["shadow", "status"]);
    assert_eq!(status["configured"], true, "{status}");
    let shadow_hash = status["rule_set_hash"].as_str().unwrap().to_owned();
    let watched = shadow_rules_records(&broker);
    assert_eq!(watched.len(), 1, "the log says from when it is watched");
    assert_eq!(watched[0]["body"]["rule_set_hash"], shadow_hash.as_str());

    // Live traffic: every request is enforced by the running rules (the
    // ledger grant still issues) and also decided under the shadow set.
    traffic(&broker, &node).await;
    let decisions: Vec<Value> = broker
        .logs(&[])
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["body"]["decision"].is_object())
        .collect();
    assert!(
        decisions
            .iter()
            .all(|r| r["body"]["shadow"]["rule_set_hash"] == shadow_hash.as_str())
    );
    let expected = after_hours_ledger(&decisions, now_hour);
    assert!(expected >= 4, "{expected}");
    for r in decisions.iter().filter(|r| r["grant"] == "ledger-token") {
        assert_eq!(r["outcome"], "allow", "enforcement never reads the shadow");
    }

    // The report and what-if over the same log agree, transition by transition.
    let report = broker.cli_json(&["shadow", "report", "--json"]);
    let whatif = broker.cli_json(&["whatif", "--rules", proposed.to_str().unwrap(), "--json"]);
    assert_eq!(report["rule_set"], shadow_hash.as_str(), "{report}");
    assert_eq!(
        whatif["rule_set"],
        shadow_hash.as_str(),
        "same sources, same trust"
    );
    assert_eq!(report["decisions"], decisions.len(), "{report}");
    assert_eq!(report["changed"], expected, "{report}");
    let tally = |r: &Value| -> Vec<(Value, Value, Value, Value)> {
        r["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["from"].clone(),
                    t["to"].clone(),
                    t["count"].clone(),
                    t["grants"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(tally(&report), tally(&whatif), "{report}\n{whatif}");
    let t = &report["transitions"][0];
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("allow"), Some("deny"))
    );
    assert_eq!(
        t["samples"][0]["rules_added"],
        json!(["ledger-after-hours"])
    );
    let gate = broker.cli(&["shadow", "report", "--fail-on", "deny"]);
    assert_eq!(gate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gate.stdout).contains("allow → deny"));

    // Prometheus and the console's status count the same disagreements.
    let metrics = broker.admin_get("/metrics").await;
    let line =
        format!("mintguard_shadow_disagreements_total{{from=\"allow\",to=\"deny\"}} {expected}");
    assert!(metrics.text.contains(&line), "{}", metrics.text);
    assert!(
        metrics.text.contains(&format!(
            "mintguard_shadow_decisions_total {}",
            decisions.len()
        )),
        "{}",
        metrics.text
    );
    let status = broker.cli_json(&["shadow", "status"]);
    assert_eq!(status["since_start"]["decisions"], decisions.len());
    assert_eq!(
        status["since_start"]["disagreements"],
        json!([{"from": "allow", "to": "deny", "count": expected}])
    );

    // Replay re-decides both verdicts; the log verifies.
    let replay = broker.cli_json(&["replay"]);
    assert_eq!(replay["differences_total"], 0, "{replay}");
    assert_eq!(replay["shadow_replayed"], decisions.len(), "{replay}");
    broker.assert_log_verifies();

    // Unwatched: later decisions carry no shadow verdict and are not compared.
    assert!(watch("").status.success());
    issue_ok(&broker, &node, 1).await;
    let report = broker.cli_json(&["shadow", "report", "--json"]);
    assert_eq!(report["decisions"], decisions.len());
    assert_eq!(report["unshadowed"], 1, "{report}");
    assert_eq!(broker.cli_json(&["shadow", "status"])["configured"], false);
    let watched = shadow_rules_records(&broker);
    assert_eq!(watched.len(), 2, "the log says when it stopped, too");
    assert_eq!(watched[1]["body"]["rule_set_hash"], Value::Null);
}
