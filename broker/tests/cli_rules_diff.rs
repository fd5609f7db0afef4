//! `mintguard rules diff OLD NEW` with Debian's cvc5 (`tests/peers.sh`
//! installs it and sets MINTGUARD_CVC5): the same rules prove equal; a new
//! permit loosens at every level up to step-up, with a counterexample that
//! names the new grant; a dropped suspension loosens at `deny` only; a new
//! forbid and a step-up turned into a deny tighten without loosening; no
//! solver is a clear error. Offline: no broker runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::path::Path;
use std::process::Output;

use serde_json::Value;

const BASE: &str = r#"
@id("api-payments")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"payments-token");

@id("purpose-for-high-exposure")
@outcome("step_up")
forbid (principal, action, resource)
when { context.grant_exposure >= 50 && !context.has_purpose };

@id("compromise-suspends")
@outcome("suspend")
forbid (principal, action, resource)
when { context.has_evidence };
"#;

fn cvc5() -> String {
    std::env::var("MINTGUARD_CVC5").unwrap_or_else(|_| {
        panic!("MINTGUARD_CVC5 is not set: run under tests/peers.sh, which installs cvc5")
    })
}

fn rules(root: &Path, name: &str, text: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.cedar"), text).unwrap();
    dir.to_str().unwrap().to_owned()
}

fn diff(old: &str, new: &str, solver: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mintguard"))
        .args(["rules", "diff", old, new, "--json"])
        .env("CVC5", solver)
        .output()
        .unwrap()
}

/// The result and exit code, the run having worked.
fn diff_json(old: &str, new: &str) -> (Value, Option<i32>) {
    let out = diff(old, new, &cvc5());
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (v, out.status.code())
}

/// The (level, principal type) pairs of `list`.
fn levels(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["at_most"].as_str().unwrap().to_owned(),
                d["principal"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

const WORKLOAD: &str = "Mintguard::Workload";
const CI_JOB: &str = "Mintguard::CiJob";

/// Each of `levels` for each of `principals`, sorted.
fn pairs(levels: &[&str], principals: &[&str]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = levels
        .iter()
        .flat_map(|l| {
            principals
                .iter()
                .map(|p| ((*l).to_owned(), (*p).to_owned()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rules_diff_proves_what_a_change_loosens_and_tightens() {
    let root = tempfile::tempdir().unwrap();
    let old = rules(root.path(), "old", BASE);

    let same = rules(root.path(), "same", BASE);
    let (v, code) = diff_json(&old, &same);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["old_cedar_hash"], v["new_cedar_hash"]);
    assert_eq!(v["may_error"], serde_json::json!([]));
    assert_eq!(levels(&v["loosens"]), vec![]);
    assert_eq!(levels(&v["tightens"]), vec![]);

    // A new permit: the ledger grant is now allowed (and so reduced or
    // stepped up too) where it was denied; a suspension still suspends.
    let more = rules(
        root.path(),
        "more",
        &format!(
            r#"{BASE}
@id("api-ledger")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"ledger-token");"#
        ),
    );
    let (v, code) = diff_json(&old, &more);
    assert_eq!(code, Some(1), "loosening fails the check: {v}");
    assert_eq!(
        levels(&v["loosens"]),
        pairs(&["allow", "allow_reduced", "step_up"], &[WORKLOAD]),
        "the new permit names a workload: {v}"
    );
    let example = v["loosens"][0]["counterexample"].as_str().unwrap();
    assert!(
        example.contains(r#"Mintguard::Grant::"ledger-token""#),
        "{example}"
    );
    assert!(example.contains("has_evidence: false"), "{example}");
    assert_eq!(levels(&v["tightens"]), vec![]);

    // The suspension dropped: evidence of compromise now only denies, for
    // workloads and CI jobs alike: looser at deny, nowhere else (below deny
    // a hard forbid holds as much as the suspension did).
    let no_suspend = rules(
        root.path(),
        "no-suspend",
        &BASE.replace(r#"@outcome("suspend")"#, ""),
    );
    let (v, code) = diff_json(&old, &no_suspend);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(
        levels(&v["loosens"]),
        pairs(&["deny"], &[WORKLOAD, CI_JOB]),
        "{v}"
    );
    assert_eq!(levels(&v["tightens"]), vec![], "{v}");

    // Stricter: the step-up for high exposure becomes a deny.
    let stricter = rules(
        root.path(),
        "stricter",
        &BASE.replace(r#"@outcome("step_up")"#, ""),
    );
    let (v, code) = diff_json(&old, &stricter);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(levels(&v["loosens"]), vec![]);
    assert_eq!(
        levels(&v["tightens"]),
        pairs(&["step_up"], &[WORKLOAD]),
        "CI jobs, permitted nothing, were denied by both: {v}"
    );

    // The text form says the same.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_mintguard"))
        .args(["rules", "diff", &old, &more])
        .env("CVC5", cvc5())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("new loosens: the new rules give allow or less"),
        "{text}"
    );
    assert!(text.contains("new tightens nothing"), "{text}");

    // A policy that may error (an overflow: decisions deny there, the
    // analysis would count it as not matching): not proved, exit 1.
    let overflow = rules(
        root.path(),
        "overflow",
        &format!(
            r#"{BASE}
@id("short-ttl")
@outcome("allow_reduced")
forbid (principal, action, resource) when {{ context.ttl * 1000000000000000 > 3600 }};"#
        ),
    );
    let (v, code) = diff_json(&old, &overflow);
    assert_eq!(code, Some(1), "{v}");
    let flagged: Vec<&str> = v["may_error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["policy"].as_str().unwrap())
        .collect();
    assert!(
        !flagged.is_empty() && flagged.iter().all(|p| *p == "short-ttl"),
        "{v}"
    );

    // No solver, a broken rule set: exit 2 with why.
    let none = diff(&old, &same, "/nonexistent/cvc5");
    assert_eq!(none.status.code(), Some(2));
    let why = String::from_utf8_lossy(&none.stderr);
    assert!(why.contains("apt-get install cvc5"), "{why}");
    let broken = rules(
        root.path(),
        "broken",
        "permit (principal, action, resource) when { nope };",
    );
    let bad = diff(&old, &broken, &cvc5());
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("broken"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
