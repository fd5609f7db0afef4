//! `mintguard`: the operator CLI. `eci` runs offline; the other verbs are
//! clients of the broker's admin API (`--data-dir` on the broker host, or
//! `--broker`, `--trust-domain`, `--ca` and `--token-file` or `--cert`/`--key`).

#![allow(clippy::print_stdout)] // a command-line tool prints its results

/// mimalloc, as the broker: a what-if decodes millions of small JSON values.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mintguard_broker::cli;
use mintguard_broker::cli::client::{AdminClient, Target};
use mintguard_broker::cli::ops::{self, EntryCommand, LogsArgs, TokenCommand, urlencode};
use mintguard_broker::cli::rules;
use mintguard_broker::cli::shadow;
use mintguard_broker::cli::whatif;
use serde_json::json;

/// Inspect, explain and act on Mintguard.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ECI of every node of an exposure graph, from the file alone.
    Eci(cli::eci::EciArgs),
    /// Join tokens for node enrollment.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Registration entries.
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The issuance log (and `logs verify`).
    Logs(LogsArgs),
    /// Requests held for approval (pending; `--all` for the last day's).
    Approvals {
        /// Every state, not only pending.
        #[arg(long)]
        all: bool,
    },
    /// Approve a held request (approver role; never your own).
    Approve {
        /// The approval id.
        id: String,
        /// Cap the credential's TTL (e.g. 5m).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Reject a held request.
    Reject {
        /// The approval id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Break-glass: open a request a second approver confirms, then issue it.
    BreakGlass {
        /// The identity to issue for (open).
        #[arg(long, required_unless_present = "issue")]
        identity: Option<String>,
        /// The grant (open).
        #[arg(long, required_unless_present = "issue")]
        grant: Option<String>,
        /// Why (open; required).
        #[arg(long, required_unless_present = "issue")]
        reason: Option<String>,
        /// The credential's TTL (e.g. 10m).
        #[arg(long)]
        ttl: Option<String>,
        /// Issue a confirmed request you opened.
        #[arg(long, conflicts_with_all = ["identity", "grant", "reason"])]
        issue: Option<String>,
    },
    /// Post-incident reviews of break-glass issuances (open ones; `--all`).
    Reviews {
        /// Closed ones too.
        #[arg(long)]
        all: bool,
        /// Close this review.
        #[arg(long, requires = "notes")]
        close: Option<String>,
        /// The review's conclusions.
        #[arg(long)]
        notes: Option<String>,
    },
    /// Anomaly detections with their evidence.
    Anomalies(ops::AnomaliesArgs),
    /// Everything recorded about one request.
    Explain {
        /// The request id.
        request_id: String,
    },
    /// Decide one request with the live pipeline (state, signals, ECI,
    /// budgets, rules), minting and spending nothing; logged as a simulation.
    Decide {
        /// The workload's SPIFFE ID.
        #[arg(long)]
        identity: String,
        /// The grant.
        #[arg(long)]
        grant: String,
        /// The node vouching (name or SPIFFE ID; default: its entry's parent).
        #[arg(long)]
        node: Option<String>,
        /// The TTL asked for, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// The purpose given.
        #[arg(long)]
        purpose: Option<String>,
        /// Observations to assume, JSON: {"posture": 0-100, "attestation": 0-100}.
        #[arg(long, value_name = "FILE")]
        signals: Option<PathBuf>,
        /// When it is decided (RFC 3339; default now).
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
    },
    /// What proposed rules would have decided: every logged decision
    /// re-decided under them, with the transitions between outcomes.
    Whatif(whatif::WhatifArgs),
    /// Static checks of rule sets (offline, with a local cvc5).
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
    /// The shadow rule set: what is watched, and where it disagreed.
    Shadow {
        #[command(subcommand)]
        command: shadow::ShadowCommand,
    },
    /// Re-decide logged decisions under their recorded inputs and rule sets.
    Replay {
        /// Only records newer than this (e.g. 24h).
        #[arg(long)]
        since: Option<String>,
    },
    /// Leases (credentials tracked until expiry).
    Leases {
        /// Only this identity's.
        #[arg(long)]
        identity: Option<String>,
        /// Only leases still live after their task ended.
        #[arg(long)]
        outlived: bool,
        /// At most this many, newest first (up to 10000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Revoke a lease.
    Revoke {
        /// The lease id.
        lease: String,
        /// An advisory lease, ended upstream by you: for STS, the deny policy
        /// from `aws revoke-policy` is attached to the role; for a static
        /// secret, the secret is rotated.
        #[arg(long)]
        confirm_attached: bool,
        /// For a Vault lease the broker cannot revoke itself (reconciliation
        /// asked for operator action): you revoked it in Vault.
        #[arg(long)]
        confirm_revoked_upstream: bool,
    },
    /// AWS helpers.
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
    },
    /// Suspend an identity or node: refuse everything and revoke its leases.
    Suspend {
        /// SPIFFE ID.
        subject: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a suspension.
    Resume {
        /// SPIFFE ID.
        subject: String,
    },
    /// Registered identities with their ECI, and each node's blast radius.
    Identities,
    /// Re-read the broker's configuration (rules, grants, weights, graph).
    Reload,
    /// External trust signals (EDR, MDM, SIEM) about an identity or node.
    Signals {
        #[command(subcommand)]
        command: SignalsCommand,
    },
    /// Budgets: show a balance or top it up (re-authorization).
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Print the IAM deny policy that ends an STS lease's session (by its
    /// lease tag) or every session of an identity issued until now (by
    /// SourceIdentity); attach it to the role, then `mintguard revoke LEASE
    /// --confirm-attached`.
    RevokePolicy {
        /// The lease id.
        #[arg(required_unless_present = "identity", conflicts_with = "identity")]
        lease: Option<String>,
        /// Every session of this SPIFFE ID.
        #[arg(long)]
        identity: Option<String>,
    },
}

#[derive(Subcommand)]
enum SignalsCommand {
    /// Report a signal (it can only lower trust; `compromise` is positive evidence).
    Put {
        /// The SPIFFE ID it is about.
        #[arg(long)]
        subject: String,
        /// posture, attestation, behaviour, location, time, network or compromise.
        #[arg(long)]
        kind: String,
        /// 0 (no trust) – 100.
        #[arg(long, default_value_t = 0)]
        value: u8,
        /// How long it stays fresh (e.g. 15m).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Who reports it.
        #[arg(long)]
        source: Option<String>,
    },
    /// The latest signals about a subject.
    Show {
        /// The SPIFFE ID.
        #[arg(long)]
        subject: String,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// An identity's balance for a grant.
    Show {
        /// SPIFFE ID.
        #[arg(long)]
        identity: String,
        /// Grant.
        #[arg(long)]
        grant: String,
    },
    /// Add tokens (may exceed capacity).
    TopUp {
        /// SPIFFE ID.
        #[arg(long)]
        identity: String,
        /// Grant.
        #[arg(long)]
        grant: String,
        /// Tokens to add.
        #[arg(long)]
        tokens: u64,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    if let Command::Eci(eci) = &args.command {
        return finish(
            cli::eci::run(
                eci,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )
            .map(|()| true),
        );
    }
    if let Command::Aws {
        command: AwsCommand::RevokePolicy { lease, identity },
    } = &args.command
    {
        // Offline: the policy depends only on the lease or identity and now.
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let policy =
            mintguard_broker::mint::sts::revoke_policy(lease.as_deref(), identity.as_deref(), &now);
        println!(
            "{}",
            serde_json::to_string_pretty(&policy).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return finish(Err(format!("runtime: {e}"))),
    };
    finish(runtime.block_on(run(args)))
}

fn finish(result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("mintguard: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Cli) -> Result<bool, String> {
    let out = &mut std::io::stdout().lock();
    if let Command::Logs(LogsArgs {
        verify: Some(cmd), ..
    }) = &args.command
    {
        return ops::verify(&args.target, cmd, out).await;
    }
    // Offline: no broker to reach.
    if let Command::Rules {
        command: rules::RulesCommand::Diff(diff),
    } = &args.command
    {
        return rules::run(diff, out).await;
    }
    if let Command::Whatif(w) = &args.command
        && w.store.is_some()
    {
        return whatif::run_offline(w, out).await;
    }
    let client = AdminClient::new(&args.target)?;
    match &args.command {
        Command::Eci(_) | Command::Aws { .. } | Command::Rules { .. } => Ok(true),
        Command::Token { command } => ops::token(&client, command, out).await.map(|()| true),
        Command::Entry { command, json } => ops::entry(&client, command, *json, out)
            .await
            .map(|()| true),
        Command::Logs(logs) => ops::logs(&client, logs, out).await.map(|()| true),
        Command::Approvals { all } => ops::simple(
            &client,
            "GET",
            &format!("/admin/v1/approvals?all={all}"),
            None,
            out,
        )
        .await
        .map(|_| true),
        Command::Approve { id, ttl } => {
            let ttl_seconds = ttl.as_deref().map(ops::ttl_seconds).transpose()?;
            ops::simple(
                &client,
                "POST",
                &format!("/admin/v1/approvals/{}/approve", urlencode(id)),
                Some(json!({"ttl_seconds": ttl_seconds})),
                out,
            )
            .await
            .map(|_| true)
        }
        Command::Reject { id, reason } => ops::simple(
            &client,
            "POST",
            &format!("/admin/v1/approvals/{}/reject", urlencode(id)),
            Some(json!({"reason": reason})),
            out,
        )
        .await
        .map(|_| true),
        Command::BreakGlass {
            identity,
            grant,
            reason,
            ttl,
            issue,
        } => {
            if let Some(id) = issue {
                return ops::simple(
                    &client,
                    "POST",
                    &format!("/admin/v1/break-glass/{}/issue", urlencode(id)),
                    None,
                    out,
                )
                .await
                .map(|_| true);
            }
            let ttl_seconds = ttl.as_deref().map(ops::ttl_seconds).transpose()?;
            ops::simple(
                &client,
                "POST",
                "/admin/v1/break-glass",
                Some(json!({"identity": identity, "grant": grant, "reason": reason, "ttl_seconds": ttl_seconds})),
                out,
            )
            .await
            .map(|_| true)
        }
        Command::Reviews { all, close, notes } => match close {
            Some(id) => ops::simple(
                &client,
                "POST",
                &format!("/admin/v1/reviews/{}/close", urlencode(id)),
                Some(json!({"notes": notes})),
                out,
            )
            .await
            .map(|_| true),
            None => ops::simple(
                &client,
                "GET",
                &format!("/admin/v1/reviews?all={all}"),
                None,
                out,
            )
            .await
            .map(|_| true),
        },
        Command::Anomalies(args) => ops::anomalies(&client, args, out).await.map(|()| true),
        Command::Explain { request_id } => ops::simple(
            &client,
            "GET",
            &format!("/admin/v1/explain/{}", urlencode(request_id)),
            None,
            out,
        )
        .await
        .map(|_| true),
        Command::Whatif(args) => whatif::run(&client, args, out).await,
        Command::Shadow { command } => shadow::run(&client, command, out).await,
        Command::Decide {
            identity,
            grant,
            node,
            ttl,
            purpose,
            signals,
            at,
        } => {
            let mut body = json!({"identity": identity, "grant": grant});
            if let Some(n) = node {
                body["node"] = json!(n);
            }
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(ops::ttl_seconds(t)?);
            }
            if let Some(p) = purpose {
                body["purpose"] = json!(p);
            }
            if let Some(file) = signals {
                let text =
                    std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
                body["signals"] = serde_json::from_slice(&text)
                    .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            }
            if let Some(at) = at {
                let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("--at {at:?}: not RFC 3339: {e}"))?;
                body["at_ms"] = json!(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX));
            }
            ops::simple(&client, "POST", "/admin/v1/decide", Some(body), out)
                .await
                .map(|_| true)
        }
        Command::Replay { since } => {
            let path = match since {
                Some(s) => {
                    let d =
                        humantime::parse_duration(s).map_err(|e| format!("--since {s:?}: {e}"))?;
                    let since = mintguard_broker::clock::now_ms()
                        - i64::try_from(d.as_millis()).unwrap_or(0);
                    format!("/admin/v1/replay?since_ms={since}")
                }
                None => "/admin/v1/replay".into(),
            };
            let v = ops::simple(&client, "POST", &path, None, out).await?;
            Ok(v["differences"].as_array().is_some_and(Vec::is_empty))
        }
        Command::Leases {
            identity,
            outlived,
            limit,
        } => {
            let mut q = vec![format!("outlived={outlived}"), format!("limit={limit}")];
            if let Some(i) = identity {
                q.push(format!("identity={}", urlencode(i)));
            }
            ops::simple(
                &client,
                "GET",
                &format!("/admin/v1/leases?{}", q.join("&")),
                None,
                out,
            )
            .await
            .map(|_| true)
        }
        Command::Revoke {
            lease,
            confirm_attached,
            confirm_revoked_upstream,
        } => ops::simple(
            &client,
            "POST",
            &format!(
                "/admin/v1/leases/{}/revoke?confirm_attached={confirm_attached}&confirm_revoked_upstream={confirm_revoked_upstream}",
                urlencode(lease)
            ),
            None,
            out,
        )
        .await
        .map(|_| true),
        Command::Suspend { subject, reason } => ops::simple(
            &client,
            "POST",
            "/admin/v1/suspend",
            Some(json!({"subject": subject, "reason": reason})),
            out,
        )
        .await
        .map(|_| true),
        Command::Identities => ops::simple(&client, "GET", "/admin/v1/identities", None, out)
            .await
            .map(|_| true),
        Command::Reload => ops::simple(&client, "POST", "/admin/v1/reload", None, out)
            .await
            .map(|_| true),
        Command::Signals {
            command:
                SignalsCommand::Put {
                    subject,
                    kind,
                    value,
                    ttl,
                    source,
                },
        } => {
            let body = json!({"subject": subject, "kind": kind, "value": value, "ttl_seconds": ops::ttl_seconds(ttl)?, "source": source});
            ops::simple(&client, "POST", "/admin/v1/signals", Some(body), out)
                .await
                .map(|_| true)
        }
        Command::Signals {
            command: SignalsCommand::Show { subject },
        } => ops::simple(
            &client,
            "GET",
            &format!("/admin/v1/signals?subject={}", urlencode(subject)),
            None,
            out,
        )
        .await
        .map(|_| true),
        Command::Budget {
            command: BudgetCommand::Show { identity, grant },
        } => ops::simple(
            &client,
            "GET",
            &format!(
                "/admin/v1/budget?identity={}&grant={}",
                urlencode(identity),
                urlencode(grant)
            ),
            None,
            out,
        )
        .await
        .map(|_| true),
        Command::Budget {
            command:
                BudgetCommand::TopUp {
                    identity,
                    grant,
                    tokens,
                },
        } => ops::simple(
            &client,
            "POST",
            "/admin/v1/budget/top-up",
            Some(json!({"identity": identity, "grant": grant, "tokens": tokens})),
            out,
        )
        .await
        .map(|_| true),
        Command::Resume { subject } => ops::simple(
            &client,
            "POST",
            "/admin/v1/resume",
            Some(json!({"subject": subject})),
            out,
        )
        .await
        .map(|_| true),
    }
}
