//! `mintguard shadow`: the shadow rule set (`[policies] shadow`) that every
//! live decision is also decided under. `status` says what is watched and
//! how often it disagreed since the broker started; `report` tallies the
//! logged decisions against the shadow verdicts they hold, as `whatif`
//! does a proposal (`--fail-on` exits 1 on those transitions).

use std::io::Write;

use serde_json::json;

use super::client::AdminClient;
use super::whatif::{ReportScope, print_tally};
use crate::whatif::WhatIfReport;

/// `mintguard shadow …`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ShadowCommand {
    /// The shadow rule set watched, and its disagreements since the broker started.
    Status,
    /// Where the shadow rule set disagreed with the enforced one, over the log.
    Report(ReportScope),
}

/// Runs it: `Ok(false)` when a `--fail-on` transition occurred.
pub async fn run(
    client: &AdminClient,
    command: &ShadowCommand,
    out: &mut impl Write,
) -> Result<bool, String> {
    let io = |e: std::io::Error| format!("writing output: {e}");
    let args = match command {
        ShadowCommand::Status => {
            let v = client.call("GET", "/admin/v1/shadow", None).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
            .map_err(io)?;
            return Ok(true);
        }
        ShadowCommand::Report(args) => args,
    };
    let mut body = json!({});
    args.apply(&mut body)?;
    let v = client
        .call("POST", "/admin/v1/shadow/report", Some(&body))
        .await?;
    let report: WhatIfReport = serde_json::from_value(v.clone())
        .map_err(|e| format!("the broker's shadow report: {e}"))?;
    args.give(&v, &report, print, out)
}

fn print(r: &WhatIfReport, out: &mut dyn Write) -> std::io::Result<()> {
    if r.shadow_rule_sets.is_empty() {
        writeln!(
            out,
            "no decision in the window was decided under a shadow rule set ({} without one)",
            r.unshadowed
        )?;
    } else {
        let sets: Vec<String> = r
            .shadow_rule_sets
            .iter()
            .map(|(hash, n)| format!("{hash} ({n})"))
            .collect();
        writeln!(out, "shadow rule sets: {}", sets.join(", "))?;
    }
    writeln!(
        out,
        "{} decisions compared, {} disagree on outcome, {} only on reasons or TTL, {} decided with no shadow set, {} undecodable",
        r.decisions, r.changed, r.changed_details, r.unshadowed, r.undecodable
    )?;
    print_tally(r, out)
}
