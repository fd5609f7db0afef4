//! Replays a scenario file through the decision path and the anomaly
//! analysis on a simulated clock and prints the evaluation report.
//!
//! ```text
//! cargo run --release -p mintguard-benches --bin anomaly_eval -- examples/anomaly/baseline.toml [--json] [--out FILE]
//! ```

#![allow(clippy::print_stdout)] // a report tool prints its report

use std::process::ExitCode;

use mintguard_broker::anomaly::eval::{Scenario, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: anomaly_eval SCENARIO.toml [--json] [--out FILE]");
        return ExitCode::from(2);
    };
    let json = args.iter().any(|a| a == "--json");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1));
    let scenario: Scenario = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let report = match run(&scenario) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    } else {
        report.markdown()
    };
    println!("{text}");
    eprintln!(
        "replayed {} decisions in {:.1} s",
        report.decisions,
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = out
        && let Err(e) = std::fs::write(file, &text)
    {
        eprintln!("{file}: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
