//! The Cedar corpus: `tests/corpus/cases.json` run against `decide()` under
//! the policies in `tests/corpus/policies/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::path::Path;

mod common;

use common::corpus_rules;
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::TrustConfig;
use mintguard_policy::{DecisionInput, decide};
use serde_json::Value;

/// RFC 7396 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let object = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn corpus() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/cases.json");
    let corpus: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let rules = corpus_rules();
    let mut failures = Vec::new();
    let cases = corpus["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut input = corpus["base"].clone();
        merge(&mut input, &case["input"]);
        let input: DecisionInput =
            serde_json::from_value(input).unwrap_or_else(|e| panic!("{name}: bad input: {e}"));
        let decision = decide(&input, &rules);
        let got = serde_json::to_value(&decision).unwrap();
        let expect = &case["expect"];
        let mut check = |what: &str, ok: bool, got: String, want: String| {
            if !ok {
                failures.push(format!("{name}: {what} = {got}, expected {want}"));
            }
        };
        check(
            "outcome",
            got["outcome"] == expect["outcome"],
            got["outcome"].to_string(),
            expect["outcome"].to_string(),
        );
        let (g, w) = (
            sorted_strings(&got["reasons"]),
            sorted_strings(&expect["reasons"]),
        );
        check("reasons", g == w, format!("{g:?}"), format!("{w:?}"));
        for field in ["ttl_seconds", "reduced"] {
            if let Some(want) = expect.get(field) {
                check(
                    field,
                    &got[field] == want,
                    got[field].to_string(),
                    want.to_string(),
                );
            }
        }
        if let Some(want) = expect.get("spend") {
            let costs: Vec<Value> = got["spend"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["cost"].clone())
                .collect();
            check(
                "spend",
                Value::Array(costs.clone()) == *want,
                format!("{costs:?}"),
                want.to_string(),
            );
        }
        if let Some(want) = expect.get("rules") {
            let ids: Vec<String> = got["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            let want = sorted_strings(want);
            check(
                "rules",
                ids == want,
                format!("{ids:?}"),
                format!("{want:?}"),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 20);
}

#[test]
fn invalid_policies_are_refused_with_cedar_diagnostics() {
    let bad = |text: &str| {
        RuleSet::new(
            vec![PolicySource {
                name: "bad.cedar".into(),
                text: text.into(),
            }],
            TrustConfig::default(),
        )
        .unwrap_err()
        .to_string()
    };
    // An attribute the schema does not have.
    let e = bad(r#"permit(principal, action, resource) when { context.trust > 50 };"#);
    assert!(e.contains("bad.cedar") && e.contains("trust"), "{e}");
    // A type error: comparing a string with a number.
    let e = bad(r#"permit(principal, action, resource) when { context.purpose > 3 };"#);
    assert!(e.contains("bad.cedar"), "{e}");
    // Optional attribute used without `has`.
    let e = bad(r#"permit(principal, action, resource) when { context.signals.posture > 50 };"#);
    assert!(e.contains("bad.cedar"), "{e}");
    // Syntax.
    let e = bad("permit(principal, action, resource");
    assert!(e.contains("bad.cedar"), "{e}");
    // @outcome on a permit, or an unknown outcome.
    let e = bad(r#"@outcome("step_up") permit(principal, action, resource);"#);
    assert!(e.contains("forbid only"), "{e}");
    let e = bad(r#"@outcome("maybe") forbid(principal, action, resource);"#);
    assert!(e.contains("must be"), "{e}");
    // An unknown entity type.
    let e = bad(r#"permit(principal == User::"alice", action, resource);"#);
    assert!(e.contains("bad.cedar"), "{e}");
}

#[test]
fn rule_set_hash_is_stable_and_content_addressed() {
    let a = corpus_rules();
    let b = corpus_rules();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    let stored = a.to_stored();
    let again = RuleSet::from_stored(
        serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(again.hash(), a.hash());
    let other = RuleSet::new(
        stored.policies.clone(),
        TrustConfig {
            critical_below: 31,
            ..TrustConfig::default()
        },
    )
    .unwrap();
    assert_ne!(
        other.hash(),
        a.hash(),
        "the trust configuration is part of the rule set"
    );
}
