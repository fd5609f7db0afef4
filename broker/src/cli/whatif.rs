//! `mintguard whatif --rules DIR`: what a proposed rule set would have
//! decided, every logged decision re-decided under it by the broker
//! (`POST /admin/v1/whatif`, viewer role), or with `--store` here, reading
//! a store directly (no broker needed). With `--fail-on`, it exits 1
//! when a decision would move to one of those outcomes, so it can gate a
//! change to the policies (`examples/ci/whatif.yml`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mintguard_policy::eci::graph::ExposureGraph;
use mintguard_policy::rules::{PolicySource, RuleSet};
use serde_json::{Value, json};

use super::client::AdminClient;
use crate::store::LogQuery;
use crate::whatif::{WhatIf, WhatIfReport};

/// Arguments of `mintguard whatif`.
#[derive(Clone, Debug, clap::Args)]
pub struct WhatifArgs {
    /// The proposed Cedar policies: every `*.cedar` file of the directory
    /// (they replace the running set).
    #[arg(long, value_name = "DIR")]
    pub rules: PathBuf,
    /// A broker configuration whose `[trust]` weights and thresholds are
    /// proposed too (default: the running ones).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A proposed exposure graph (JSON, as `[eci] graph`): the decisions'
    /// ECI inputs are recomputed under it, and the identities it moves listed.
    #[arg(long, value_name = "FILE")]
    pub graph: Option<PathBuf>,
    /// Offline: read this store directly (`sqlite:///…/broker.db`,
    /// `postgres://…`) instead of asking a broker; needs `--config`, the
    /// broker's configuration (its `[trust]`, grants and CI policies).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Which decisions, and how the report is given.
    #[command(flatten)]
    pub scope: ReportScope,
}

/// The decisions a report covers, and how it is given (`whatif`, `shadow report`).
#[derive(Clone, Debug, clap::Args)]
pub struct ReportScope {
    /// Only decisions newer than this (e.g. 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this identity's decisions.
    #[arg(long)]
    pub identity: Option<String>,
    /// Only this grant's.
    #[arg(long)]
    pub grant: Option<String>,
    /// Only this node's or CI issuer's.
    #[arg(long)]
    pub node: Option<String>,
    /// Exit 1 when any decision moves to one of these outcomes
    /// (comma-separated: deny, step_up, suspend, allow, allow_reduced).
    #[arg(long, value_delimiter = ',')]
    pub fail_on: Vec<String>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReportScope {
    /// Checks `--fail-on`, and sets the window and filters in `body`.
    pub(super) fn apply(&self, body: &mut Value) -> Result<(), String> {
        if let Some(bad) = self
            .fail_on
            .iter()
            .find(|o| !OUTCOMES.contains(&o.as_str()))
        {
            return Err(format!(
                "--fail-on {bad:?}: an outcome is one of {}",
                OUTCOMES.join(", ")
            ));
        }
        let query = self.query()?;
        if let Some(since) = query.since_ms {
            body["since_ms"] = json!(since);
        }
        for (key, value) in [
            ("identity", query.identity),
            ("grant", query.grant),
            ("node", query.node),
        ] {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        Ok(())
    }

    /// The log query it selects.
    fn query(&self) -> Result<LogQuery, String> {
        let since_ms = match &self.since {
            Some(s) => {
                let d = humantime::parse_duration(s).map_err(|e| format!("--since {s:?}: {e}"))?;
                Some(crate::clock::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            None => None,
        };
        Ok(LogQuery {
            since_ms,
            identity: self.identity.clone(),
            grant: self.grant.clone(),
            node: self.node.clone(),
            limit: crate::routes::admin::MAX_PAGE,
            ..LogQuery::default()
        })
    }

    /// Writes `report` (`v` as the broker sent it) as asked; `Ok(false)`
    /// when a `--fail-on` transition occurred.
    pub(super) fn give(
        &self,
        v: &Value,
        report: &WhatIfReport,
        print: impl FnOnce(&WhatIfReport, &mut dyn Write) -> std::io::Result<()>,
        out: &mut dyn Write,
    ) -> Result<bool, String> {
        let io = |e: std::io::Error| format!("writing output: {e}");
        if self.json {
            writeln!(out, "{v}").map_err(io)?;
        } else {
            print(report, out).map_err(io)?;
        }
        Ok(!report.reaches(&self.fail_on))
    }
}

const OUTCOMES: &[&str] = &["allow", "allow_reduced", "step_up", "deny", "suspend"];

/// Runs it: `Ok(false)` when a `--fail-on` transition occurred.
pub async fn run(
    client: &AdminClient,
    args: &WhatifArgs,
    out: &mut impl Write,
) -> Result<bool, String> {
    let sources = proposed_sources(args)?;
    let policies: Vec<Value> = sources
        .into_iter()
        .map(|s| json!({"name": s.name, "text": s.text}))
        .collect();
    let mut body = json!({"policies": policies});
    args.scope.apply(&mut body)?;
    if let Some(file) = &args.config {
        let config = crate::config::Config::load(file).map_err(|e| e.to_string())?;
        body["trust"] = serde_json::to_value(&config.trust).map_err(|e| e.to_string())?;
    }
    if let Some(file) = &args.graph {
        body["graph"] = serde_json::from_slice(&read_graph(file)?)
            .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
    }
    let v = client.call("POST", "/admin/v1/whatif", Some(&body)).await?;
    let report: WhatIfReport = serde_json::from_value(v.clone())
        .map_err(|e| format!("the broker's what-if report: {e}"))?;
    args.scope.give(&v, &report, print, out)
}

/// The proposed Cedar sources (`--rules`): none is an error.
fn proposed_sources(args: &WhatifArgs) -> Result<Vec<PolicySource>, String> {
    let sources = crate::config::load_policies(Some(&args.rules))?;
    if sources.is_empty() {
        return Err(format!(
            "{}: no .cedar files (with none, every request is denied)",
            args.rules.display()
        ));
    }
    Ok(sources)
}

/// A graph file's bytes, within `MAX_GRAPH_FILE`.
fn read_graph(file: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    if size > super::eci::MAX_GRAPH_FILE {
        return Err(format!("{}: {size} bytes is too large", file.display()));
    }
    std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))
}

/// Offline (`--store`): the log of the store re-decided here, under the
/// proposal with the `[trust]` of `--config` (as the broker would with the
/// same proposal), and the report given as the broker's would be.
pub async fn run_offline(args: &WhatifArgs, out: &mut impl Write) -> Result<bool, String> {
    let sources = proposed_sources(args)?;
    let Some(url) = &args.store else {
        return Err("run_offline needs --store".into());
    };
    let Some(file) = &args.config else {
        return Err("--store needs --config FILE: the broker's configuration (its [trust] decides, and a --graph needs its grants)".into());
    };
    let config = crate::config::Config::load(file).map_err(|e| e.to_string())?;
    let store = crate::store::open_existing(url)
        .await
        .map_err(|e| e.to_string())?;
    let rules = RuleSet::new(sources, config.trust.clone())
        .map_err(|e| format!("the proposed rules: {e}"))?;
    let (eci, changes) = match &args.graph {
        Some(file) => {
            let proposed = ExposureGraph::from_json(&read_graph(file)?)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let running = match &config.eci.graph {
                Some(path) => ExposureGraph::from_json(
                    &std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
                )
                .map_err(|e| format!("{}: {e}", path.display()))?,
                None => ExposureGraph::new(),
            };
            let running = crate::state::exposure(&config, &running, &*store)
                .await?
                .eci;
            let ci = crate::ci::CiRuntime::new(&config.ci)?;
            let (eci, changes) =
                crate::whatif::proposed_eci(&config, &ci, &running, &proposed, &*store).await?;
            (Some(Arc::new(eci)), Some(changes))
        }
        None => (None, None),
    };
    let whatif = WhatIf::new(Arc::new(rules), eci);
    let mut report = crate::whatif::scan(&*store, &args.scope.query()?, whatif, |seq, why| {
        eprintln!("mintguard: finding: decision record {seq} is undecodable: {why}");
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some((changes, total)) = changes {
        report.eci_changes = changes;
        report.eci_changed = total;
    }
    let v = serde_json::to_value(&report).map_err(|e| e.to_string())?;
    args.scope.give(&v, &report, print, out)
}

fn print(r: &WhatIfReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "rule set {}: {} decisions re-decided, {} change outcome, {} change only reasons or TTL, {} undecodable",
        r.rule_set, r.decisions, r.changed, r.changed_details, r.undecodable
    )?;
    print_tally(r, out)
}

/// What follows a report's first line: truncation, findings, ECI moves,
/// and each transition with its samples.
pub(super) fn print_tally(r: &WhatIfReport, out: &mut dyn Write) -> std::io::Result<()> {
    if r.truncated {
        writeln!(
            out,
            "  truncated at {} decisions: narrow it with --since or a filter",
            crate::whatif::MAX_DECISIONS
        )?;
    }
    for f in &r.findings {
        writeln!(
            out,
            "  finding: record {}:{} ({}) is undecodable: {}",
            f.chain, f.seq, f.request_id, f.reason
        )?;
    }
    let top = |m: &std::collections::BTreeMap<String, u64>| {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .take(5)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if r.eci_changed > 0 {
        writeln!(out, "ECI moves for {} identities:", r.eci_changed)?;
        let show = |x: Option<f64>| x.map_or("none".to_owned(), |v| format!("{v:.2}"));
        for c in &r.eci_changes {
            writeln!(
                out,
                "    {:<60} {:>7} → {:<7}",
                c.identity,
                show(c.before),
                show(c.after)
            )?;
        }
    }
    for t in &r.transitions {
        writeln!(out, "{:>14} → {:<14} {:>8}", t.from, t.to, t.count)?;
        writeln!(out, "    grants: {}", top(&t.grants))?;
        writeln!(out, "    identities: {}", top(&t.identities))?;
        writeln!(out, "    nodes: {}", top(&t.nodes))?;
        for s in &t.samples {
            writeln!(
                out,
                "    {} (seq {}): rules +[{}] -[{}]; reasons [{}] → [{}]",
                s.request_id,
                s.seq,
                s.rules_added.join(", "),
                s.rules_removed.join(", "),
                s.reasons_before.join(", "),
                s.reasons_after.join(", ")
            )?;
        }
    }
    Ok(())
}
