//! `mintguard eci --graph FILE`: ECI of every node of an exposure graph,
//! computed offline from the file alone.

use std::io::Write;
use std::path::PathBuf;

use mintguard_policy::eci::graph::ExposureGraph;
use mintguard_policy::eci::pagerank::PprParams;
use mintguard_policy::eci::{NodeEci, compute_eci};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest graph file read, in bytes.
pub const MAX_GRAPH_FILE: u64 = 2 * 1024 * 1024 * 1024;

/// Arguments of `mintguard eci`.
#[derive(Clone, Debug, clap::Args)]
pub struct EciArgs {
    /// The exposure graph (JSON; see examples/graphs/README.md).
    #[arg(long, value_name = "FILE")]
    pub graph: PathBuf,
    /// The time edge decay is computed at (RFC 3339); default now.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// PageRank damping factor.
    #[arg(long, default_value_t = 0.85)]
    pub alpha: f64,
    /// Half-life of edge recency decay, in days.
    #[arg(long, default_value_t = 30.0)]
    pub half_life_days: f64,
    /// JSON lines, one object per node.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command, writing to `out` and warnings to `err`.
pub fn run(args: &EciArgs, out: &mut impl Write, err: &mut impl Write) -> Result<(), String> {
    let now = match &args.now {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| format!("--now {s:?}: not RFC 3339: {e}"))?,
        None => OffsetDateTime::now_utc(),
    };
    let params = PprParams {
        alpha: args.alpha,
        half_life_days: args.half_life_days,
        ..PprParams::default()
    };
    params.validate().map_err(|e| e.to_string())?;
    let path = args.graph.display();
    let size = std::fs::metadata(&args.graph)
        .map_err(|e| format!("{path}: {e}"))?
        .len();
    if size > MAX_GRAPH_FILE {
        return Err(format!(
            "{path}: {size} bytes exceeds the {MAX_GRAPH_FILE}-byte limit"
        ));
    }
    let bytes = std::fs::read(&args.graph).map_err(|e| format!("{path}: {e}"))?;
    let graph = ExposureGraph::from_json(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let report = compute_eci(&graph, &params, now.unix_timestamp());
    for warning in &report.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    let io = |e: std::io::Error| format!("writing output: {e}");
    if args.json {
        for node in report.nodes() {
            let line = serde_json::to_string(node).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(io)?;
        }
    } else {
        writeln!(
            out,
            "{:<48} {:<9} {:>10} {:>10} {:>8} {:>7}  access critical sensitivity lateral privilege",
            "ID", "KIND", "PPR", "STRUCTURAL", "HYGIENE", "ECI"
        )
        .map_err(io)?;
        for node in report.nodes() {
            writeln!(out, "{}", table_row(node)).map_err(io)?;
        }
        writeln!(
            out,
            "{} nodes, {} edges; PageRank converged in {} iterations",
            graph.nodes().len(),
            graph.edges().len(),
            report.ppr_iterations
        )
        .map_err(io)?;
    }
    Ok(())
}

fn table_row(node: &NodeEci) -> String {
    let head = format!(
        "{:<48} {:<9} {:>10.6}",
        node.id,
        node.kind.as_str(),
        node.ppr
    );
    match (
        node.structural_eci,
        node.hygiene_modifier,
        node.eci,
        node.factors,
    ) {
        (Some(s), Some(h), Some(e), Some(f)) => format!(
            "{head} {s:>10.2} {h:>8.2} {e:>7.2}  {:.2}   {:.2}     {:.2}        {:.2}    {:.2}",
            f.access, f.critical, f.sensitivity, f.lateral, f.privilege
        ),
        _ => head,
    }
}
