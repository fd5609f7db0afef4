//! `mintguard rules diff OLD NEW`: whether the Cedar rules of NEW give any
//! request a weaker outcome than those of OLD do, proved — not sampled — by
//! Cedar's symbolic compiler (`cedar-policy-symcc`) with a local cvc5, with
//! a counterexample request for each way it does. Offline: it reads the two
//! directories and Mintguard's schema, and needs no broker.
//!
//! Outcomes are graduated (`allow < allow_reduced < step_up < deny <
//! suspend`), so NEW loosens OLD when, at some level L, a request NEW
//! gives L or less gets more than L from OLD. Each level's "L or less" is
//! one plain Cedar policy set ([`RuleSet::at_most`]), and NEW loosens at L
//! exactly when NEW's set does not imply OLD's, for some principal type
//! the schema allows (workloads and CI jobs). The same check the other way
//! round says whether NEW tightens anything. Only the Cedar rules are
//! compared: trust thresholds, ECI and budgets decide beside them.
//!
//! A policy that errors at evaluation makes decisions deny, but Cedar's
//! analysis counts it as not matching; so each policy of both sets is
//! first proved never to error, and one that may makes the diff fail as
//! not proved.

use std::io::Write;
use std::path::{Path, PathBuf};

use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet};
use mintguard_policy::Outcome;
use mintguard_policy::rules::{RuleSet, schema};
use mintguard_policy::trust::TrustConfig;
use serde::Serialize;

/// `mintguard rules …`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Whether NEW's rules give any request a weaker outcome than OLD's
    /// (proved with cvc5, with counterexamples); exit 1 if so.
    Diff(DiffArgs),
}

/// Arguments of `mintguard rules diff`.
#[derive(Clone, Debug, clap::Args)]
pub struct DiffArgs {
    /// The rules in force: a directory of `*.cedar` files.
    pub old: PathBuf,
    /// The proposed rules.
    pub new: PathBuf,
    /// The result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The levels compared: at each, whether a request gets it or less.
const LEVELS: [Outcome; 4] = [
    Outcome::Allow,
    Outcome::AllowReduced,
    Outcome::StepUp,
    Outcome::Deny,
];

/// One way one rule set is weaker than the other.
#[derive(Debug, Serialize)]
pub struct Difference {
    /// The level: the weaker set gives this outcome or less …
    pub at_most: Outcome,
    /// … to a request of this principal type, …
    pub principal: String,
    /// … on this action and resource type, …
    pub action: String,
    /// … where the other gives more; for example this request and these
    /// entities (as the solver found them).
    pub counterexample: String,
}

/// A policy that may error at evaluation, for some request the schema
/// admits: where it does, decisions deny and Cedar's analysis counts it as
/// not matching, so a diff that involves it is not a proof.
#[derive(Debug, Serialize)]
pub struct MayError {
    /// `old` or `new`.
    pub rule_set: &'static str,
    /// The policy's id.
    pub policy: String,
    /// The principal type for which it may error.
    pub principal: String,
}

/// What `rules diff` found.
#[derive(Debug, Serialize)]
pub struct Diff {
    /// OLD's Cedar sources, hashed with the default `[trust]` (not the
    /// rule-set hashes the log names, which include the broker's `[trust]`).
    pub old_cedar_hash: String,
    /// NEW's.
    pub new_cedar_hash: String,
    /// Policies that may error: while any is listed, "loosens nothing" is
    /// not proved, and the diff fails.
    pub may_error: Vec<MayError>,
    /// Where NEW gives a weaker outcome than OLD (each a finding).
    pub loosens: Vec<Difference>,
    /// Where NEW gives a stronger one.
    pub tightens: Vec<Difference>,
}

fn load(dir: &Path) -> Result<RuleSet, String> {
    let sources = crate::config::load_policies(Some(dir))?;
    RuleSet::new(sources, TrustConfig::default()).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The ways `weaker` gives a request less than `stronger` does.
async fn weaker_than(
    compiler: &mut CedarSymCompiler<LocalSolver>,
    weaker: &RuleSet,
    stronger: &RuleSet,
) -> Result<Vec<Difference>, String> {
    let schema = schema().map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for level in LEVELS {
        let (w, s) = (
            weaker.at_most(level).map_err(|e| e.to_string())?,
            stronger.at_most(level).map_err(|e| e.to_string())?,
        );
        for env in schema.request_envs() {
            let compile = |set| {
                CompiledPolicySet::compile(set, &env, &schema)
                    .map_err(|e| format!("compiling for the solver: {e}"))
            };
            let (w, s) = (compile(&w)?, compile(&s)?);
            let answer = compiler
                .check_implies_with_counterexample_opt(&w, &s)
                .await
                .map_err(|e| format!("the solver: {e}"))?;
            if let Some(example) = answer {
                found.push(Difference {
                    at_most: level,
                    principal: env.principal().to_string(),
                    action: env.action().to_string(),
                    counterexample: example.to_string(),
                });
            }
        }
    }
    Ok(found)
}

/// Runs it: `Ok(false)` when NEW loosens OLD.
pub async fn run(args: &DiffArgs, out: &mut impl Write) -> Result<bool, String> {
    let (old, new) = (load(&args.old)?, load(&args.new)?);
    let solver = LocalSolver::cvc5().map_err(|e| {
        format!(
            "starting cvc5 ({e}): install it (Debian: apt-get install cvc5) or set CVC5 to its path"
        )
    })?;
    let mut compiler = CedarSymCompiler::new(solver).map_err(|e| format!("the solver: {e}"))?;
    let mut may_error = may_error_in(&mut compiler, "old", &old).await?;
    may_error.extend(may_error_in(&mut compiler, "new", &new).await?);
    let diff = Diff {
        old_cedar_hash: old.hash().to_owned(),
        new_cedar_hash: new.hash().to_owned(),
        may_error,
        loosens: weaker_than(&mut compiler, &new, &old).await?,
        tightens: weaker_than(&mut compiler, &old, &new).await?,
    };
    let io = |e: std::io::Error| format!("writing output: {e}");
    if args.json {
        let v = serde_json::to_string(&diff).map_err(|e| e.to_string())?;
        writeln!(out, "{v}").map_err(io)?;
    } else {
        print(&diff, args, out).map_err(io)?;
    }
    Ok(diff.loosens.is_empty() && diff.may_error.is_empty())
}

/// The policies of `rules` that may error for some request of some
/// principal type the schema admits.
async fn may_error_in(
    compiler: &mut CedarSymCompiler<LocalSolver>,
    which: &'static str,
    rules: &RuleSet,
) -> Result<Vec<MayError>, String> {
    let schema = schema().map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for env in schema.request_envs() {
        for policy in rules.policies() {
            let compiled = CompiledPolicy::compile(policy, &env, &schema)
                .map_err(|e| format!("compiling {} for the solver: {e}", policy.id()))?;
            let never = compiler
                .check_never_errors_opt(&compiled)
                .await
                .map_err(|e| format!("the solver: {e}"))?;
            if !never {
                found.push(MayError {
                    rule_set: which,
                    policy: policy.id().to_string(),
                    principal: env.principal().to_string(),
                });
            }
        }
    }
    Ok(found)
}

fn print(d: &Diff, args: &DiffArgs, out: &mut impl Write) -> std::io::Result<()> {
    let (old, new) = (args.old.display(), args.new.display());
    writeln!(
        out,
        "old {old} (Cedar sources {}), new {new} (Cedar sources {})",
        d.old_cedar_hash, d.new_cedar_hash
    )?;
    for m in &d.may_error {
        writeln!(
            out,
            "not proved: the {} rules' policy {} may error for a {} request (decisions deny there; the analysis counts it as not matching): make it total, e.g. guard the operation that can fail",
            m.rule_set, m.policy, m.principal
        )?;
    }
    for (what, list) in [("loosens", &d.loosens), ("tightens", &d.tightens)] {
        if list.is_empty() {
            writeln!(
                out,
                "new {what} nothing: proved at every level for every principal type"
            )?;
        }
        let (weaker, stronger) = if what == "loosens" {
            ("new", "old")
        } else {
            ("old", "new")
        };
        for x in list {
            writeln!(
                out,
                "new {what}: the {weaker} rules give {} or less to a {} request ({}) the {stronger} rules give more; for example:",
                x.at_most, x.principal, x.action,
            )?;
            for line in x.counterexample.lines() {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(())
}
