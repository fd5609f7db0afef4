//! Times Mintguard's personalized PageRank against networkx and igraph on the
//! same seeded synthetic graph, in one run.
//!
//! ```text
//! tests/peers.sh cargo run --release -p mintguard-benches --bin ppr_compare             # 100k nodes / 1M edges
//! tests/peers.sh cargo run --release -p mintguard-benches --bin ppr_compare -- --large  # 1M / 10M, Mintguard only
//! ```
//!
//! The Python side (`benches/ppr_compare.py`) runs with `$MINTGUARD_PYTHON`
//! (the venv `tests/peers.sh` installs, which has networkx, scipy and igraph).

#![allow(clippy::print_stdout, clippy::expect_used)] // a report tool prints; setup failures stop it

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use mintguard_benches::synthetic_graph;
use mintguard_policy::eci::pagerank::{PprMatrix, PprParams, reversed_edges};

const NOW: i64 = 1_795_521_600;

fn main() {
    let large = std::env::args().any(|a| a == "--large");
    let (nodes, edges) = if large {
        (1_000_000, 10_000_000)
    } else {
        (100_000, 1_000_000)
    };
    println!("graph: {nodes} nodes, {edges} edges, seed 42");

    let t = Instant::now();
    let graph = synthetic_graph(nodes, edges, 42, NOW);
    println!(
        "generate                 {:>10.3} s",
        t.elapsed().as_secs_f64()
    );

    let params = PprParams::default();
    let t = Instant::now();
    let matrix = PprMatrix::build(&graph, &params, NOW);
    let build = t.elapsed().as_secs_f64();
    println!("mintguard build CSR      {build:>10.3} s");

    let t = Instant::now();
    let strict = matrix.run(&params);
    let strict_s = t.elapsed().as_secs_f64();
    println!(
        "mintguard L1 < 1e-12     {strict_s:>10.3} s  {} iterations, {:.2} ms/iteration",
        strict.iterations,
        strict_s * 1000.0 / f64::from(strict.iterations)
    );
    // networkx stops when the L1 change is below N × tol; with tol = 1e-13
    // (the golden test's), time Mintguard to the same criterion too.
    let nx_tol = nodes as f64 * 1e-13;
    let t = Instant::now();
    let loose = matrix.run(&PprParams {
        tolerance: nx_tol,
        ..params
    });
    let loose_s = t.elapsed().as_secs_f64();
    println!(
        "mintguard L1 < N·1e-13   {loose_s:>10.3} s  {} iterations",
        loose.iterations
    );
    if large {
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let edge_file = dir.path().join("edges.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&edge_file).expect("edge file"));
    writeln!(out, "{nodes}").expect("write");
    let jewels: Vec<String> = graph
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.crown_jewel)
        .map(|(i, _)| i.to_string())
        .collect();
    writeln!(out, "{}", jewels.join(" ")).expect("write");
    for (u, v, w) in reversed_edges(&graph, &params, NOW) {
        writeln!(out, "{u} {v} {w:e}").expect("write");
    }
    drop(out);
    let scores_file = dir.path().join("scores.txt");
    std::fs::write(
        &scores_file,
        strict
            .scores
            .iter()
            .map(|s| format!("{s:e}\n"))
            .collect::<String>(),
    )
    .expect("scores");

    let python = std::env::var("MINTGUARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ppr_compare.py");
    let output = Command::new(python)
        .arg(script)
        .arg(&edge_file)
        .arg(&scores_file)
        .output()
        .expect("run python");
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    for tool in ["networkx", "igraph"] {
        if let Some(seconds) = report[tool]["pagerank_s"].as_f64() {
            println!(
                "ratio {tool}/mintguard     {:>10.1}×  (same N·1e-13 stopping rule for networkx; igraph prpack solves directly)",
                seconds / loose_s
            );
        }
    }
}
