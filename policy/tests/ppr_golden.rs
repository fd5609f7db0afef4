//! Personalized PageRank agrees with networkx within 1e-9 per node on the
//! fixtures `tests/ppr_golden.py` generated (decay, capacitance, parallel
//! edges, zero-weight edges and dangling nodes included).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::path::Path;

use mintguard_policy::eci::graph::ExposureGraph;
use mintguard_policy::eci::pagerank::{PprParams, personalized_pagerank};

/// Compares one fixture; returns the largest per-node difference.
pub fn check_fixture(path: &Path) -> f64 {
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let graph = ExposureGraph::from_json(fixture["graph"].to_string().as_bytes()).unwrap();
    let now = time::OffsetDateTime::parse(
        fixture["now"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    let params = PprParams {
        alpha: fixture["alpha"].as_f64().unwrap(),
        half_life_days: fixture["half_life_days"].as_f64().unwrap(),
        ..PprParams::default()
    };
    let result = personalized_pagerank(&graph, &params, now);
    assert!(result.converged, "{}: did not converge", path.display());
    let expected = fixture["expected"].as_object().unwrap();
    assert_eq!(
        expected.len(),
        graph.nodes().len(),
        "{}: node count",
        path.display()
    );
    let mut worst = 0.0f64;
    for (i, node) in graph.nodes().iter().enumerate() {
        let want = expected[&node.id].as_f64().unwrap();
        let diff = (result.scores[i] - want).abs();
        assert!(
            diff <= 1e-9,
            "{}: node {} ppr {} vs networkx {} (diff {diff:e})",
            path.display(),
            node.id,
            result.scores[i],
            want
        );
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn agrees_with_networkx_on_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppr");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let worst = check_fixture(&path);
            println!("{}: max |diff| = {worst:e}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected the five golden fixtures, found {checked}"
    );
}
