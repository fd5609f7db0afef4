//! The exposure-graph loader and ECI over what it accepts: any JSON is
//! refused or loads into a graph whose ECI scores are finite and in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mintguard_policy::eci::{compute_eci, graph::ExposureGraph, pagerank::PprParams};

fuzz_target!(|data: &[u8]| {
    let Ok(graph) = ExposureGraph::from_json(data) else {
        return;
    };
    let report = compute_eci(&graph, &PprParams::default(), 1_700_000_000);
    for node in report.nodes() {
        assert!(node.ppr.is_finite() && node.ppr >= 0.0, "{node:?}");
        if let Some(eci) = node.eci {
            assert!((0.0..=100.0).contains(&eci), "{node:?}");
        }
    }
});
