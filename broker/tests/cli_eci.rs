//! `mintguard eci` as an operator runs it: the real binary on graph files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mintguard_policy::eci::compute_eci;
use mintguard_policy::eci::graph::ExposureGraph;
use mintguard_policy::eci::pagerank::PprParams;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/graphs/payments.json")
}

fn mintguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mintguard"))
        .args(args)
        .output()
        .unwrap()
}

const NOW: &str = "2026-11-24T12:00:00Z";
const NOW_UNIX: i64 = 1_795_521_600;

#[test]
fn json_lines_carry_every_field_for_identities_and_match_the_library() {
    let graph = example();
    let out = mintguard(&[
        "eci",
        "--graph",
        graph.to_str().unwrap(),
        "--now",
        NOW,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let library = compute_eci(
        &ExposureGraph::from_json(&std::fs::read(&graph).unwrap()).unwrap(),
        &PprParams::default(),
        NOW_UNIX,
    );
    assert_eq!(lines.len(), library.nodes().len());
    for line in &lines {
        let id = line["id"].as_str().unwrap();
        let expected = library.get(id).unwrap();
        assert_eq!(line["ppr"].as_f64().unwrap(), expected.ppr, "{id}");
        if line["kind"] == "identity" {
            for field in [
                "ppr",
                "structural_eci",
                "hygiene_modifier",
                "eci",
                "factors",
            ] {
                assert!(line.get(field).is_some(), "{id} lacks {field}");
            }
            for factor in ["access", "critical", "sensitivity", "lateral", "privilege"] {
                let v = line["factors"][factor].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "{id}.{factor} = {v}");
            }
            assert_eq!(line["eci"].as_f64().unwrap(), expected.eci.unwrap());
        } else {
            assert!(line.get("factors").is_none());
        }
    }
    let batch = lines
        .iter()
        .find(|l| l["id"] == "spiffe://example.org/ns/pay/sa/batch")
        .unwrap();
    assert_eq!(
        batch["eci"].as_f64().unwrap(),
        100.0,
        "effective ECI is capped"
    );
    assert!(
        batch["eci_raw"].as_f64().unwrap() > 100.0,
        "and reported uncapped"
    );
}

#[test]
fn table_output_and_alpha() {
    let graph = example();
    let out = mintguard(&[
        "eci",
        "--graph",
        graph.to_str().unwrap(),
        "--now",
        NOW,
        "--alpha",
        "0.5",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ID "));
    assert!(text.contains("spiffe://example.org/ns/pay/sa/api"));
    assert!(text.contains("12 nodes, 12 edges"));
    let bad = mintguard(&["eci", "--graph", graph.to_str().unwrap(), "--alpha", "1.5"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("alpha"));
}

#[test]
fn malformed_graphs_exit_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = r#"{"id":"a","kind":"identity"},{"id":"b","kind":"role"}"#;
    let cases = [
        (
            format!(
                r#"{{"nodes":[{nodes}],"edges":[{{"from":"a","to":"ghost","kind":"can_assume"}}]}}"#
            ),
            "unknown node \"ghost\"",
        ),
        (
            r#"{"nodes":[{"id":"a","kind":"robot"}]}"#.to_owned(),
            "unknown variant `robot`",
        ),
        (
            format!(
                r#"{{"nodes":[{nodes}],"edges":[{{"from":"a","to":"b","kind":"can_assume","weight":-2}}]}}"#
            ),
            "weight must be",
        ),
        (
            format!(
                r#"{{"nodes":[{nodes}],"edges":[{{"from":"a","to":"b","kind":"can_assume","weight":NaN}}]}}"#
            ),
            "expected value",
        ),
        (
            r#"{"nodes":[{"id":"a","kind":"role"},{"id":"a","kind":"identity"}]}"#.to_owned(),
            "duplicate node id \"a\"",
        ),
        ("not json".to_owned(), "expected"),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("g{i}.json"));
        std::fs::write(&path, json).unwrap();
        let out = mintguard(&["eci", "--graph", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{json}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle) && stderr.contains(path.to_str().unwrap()),
            "{json}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let missing = mintguard(&["eci", "--graph", "/nonexistent/graph.json"]);
    assert_eq!(missing.status.code(), Some(2));
    let bad_now = mintguard(&[
        "eci",
        "--graph",
        example().to_str().unwrap(),
        "--now",
        "yesterday",
    ]);
    assert!(String::from_utf8_lossy(&bad_now.stderr).contains("RFC 3339"));
}

#[test]
fn no_crown_jewels_warns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.json");
    std::fs::write(&path, r#"{"nodes":[{"id":"a","kind":"identity"}]}"#).unwrap();
    let out = mintguard(&["eci", "--graph", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no crown jewels"));
}
