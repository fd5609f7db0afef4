//! The log's integrity verbs: `logs verify` (through the broker, or
//! reading a store directly), `logs prune` (retention) and `logs retire`
//! (a replica's chain closed for good).

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::client::{AdminClient, Target};
use super::ops::{ago_ms, print_json, urlencode};
use crate::log::LogRecord;
use crate::log::checkpoint::{self, Checkpoint, StatementKind};
use crate::log::verify::{ChainStart, ChainVerifier, VerifyFailure};
use crate::store::{LogCursor, LogQuery};

/// `mintguard logs verify`, `mintguard logs prune` and `mintguard logs retire`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum LogsCommand {
    /// Retention: export the records older than `--before` (on each chain,
    /// through its last checkpoint before that time) to a JSON-lines file,
    /// verify the export, then delete them from the store; each chain's
    /// prune is itself logged.
    Prune {
        /// Age of the oldest record to keep, e.g. 30d.
        #[arg(long)]
        before: String,
        /// The JSON-lines file to export to (must not exist).
        #[arg(long)]
        export: PathBuf,
    },
    /// Retire a replica's chain (the replica was taken out of service for
    /// good): its head is signed as the chain's final statement, and the
    /// replica appends nothing more. Run it through another replica.
    Retire {
        /// The chain: the retired replica's instance id (`<data_dir>/instance.id`),
        /// or `unnamed` for the chain a store kept before replicas had chains.
        #[arg(long)]
        chain: String,
    },
    /// Verify every hash chain against the exported checkpoints. Exit 0 if
    /// they hold, 1 naming the first bad record otherwise.
    Verify {
        /// Exported checkpoints (JSON lines); default: the broker's own export.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The log-signing public key (JWK JSON); default `<data_dir>/log-signing.jwk.json`.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Read records from this store (sqlite://PATH or postgres://…) instead of the admin API.
        #[arg(long)]
        store: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `logs verify`. Returns whether the log verified.
pub async fn verify(
    target: &Target,
    cmd: &LogsCommand,
    out: &mut impl Write,
) -> Result<bool, String> {
    let LogsCommand::Verify {
        checkpoints,
        key,
        store,
        json: json_out,
    } = cmd
    else {
        return prune(target, cmd, out).await;
    };
    if checkpoints.is_none() && store.is_none() {
        // The broker verifies against its own export.
        let client = AdminClient::new(target)?;
        let v = client.call("GET", "/admin/v1/logs/verify", None).await?;
        return report(v, *json_out, out);
    }
    let key_path = key
        .clone()
        .or_else(|| {
            target
                .data_dir
                .as_ref()
                .map(|d| d.join("log-signing.jwk.json"))
        })
        .ok_or("pass --key FILE (the log-signing public key) or --data-dir")?;
    let key: mintguard_certs::jwt::Jwk = serde_json::from_str(
        &std::fs::read_to_string(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let mut cps = match checkpoints {
        Some(path) => checkpoint::read_file(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    // The chains first, then the records a page at a time into the
    // verifier: a log of any length is checked in constant memory.
    let source = match store {
        Some(url) => LogSource::open_store(url).await?,
        None => LogSource::Admin(Box::new((
            AdminClient::new(target)?,
            tokio::sync::OnceCell::new(),
        ))),
    };
    let chains = source.chains().await?;
    // The store holding a checkpoint a broker exported that its file
    // lacks: the file was cut back. The exporters counted are the ones the
    // file names and, with --data-dir, that broker's own instance id (a
    // file cut back to nothing names none); a file that names no exporter
    // the store's checkpoints have is checked against all of them.
    let mut exporters: std::collections::BTreeSet<String> =
        cps.iter().filter_map(|c| c.exporter.clone()).collect();
    if let Some(id) = target
        .data_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("instance.id")).ok())
    {
        exporters.insert(id.trim().to_owned());
    }
    let stored = source.checkpoints().await?;
    let named: Vec<&str> = exporters
        .iter()
        .map(String::as_str)
        .filter(|e| stored.iter().any(|c| c.exporter.as_deref() == Some(*e)))
        .collect();
    let missing = match (checkpoints, named.is_empty()) {
        // No file given: the chain alone is checked.
        (None, _) => None,
        (Some(_), false) => crate::log::verify::missing_export(&stored, &cps, &named),
        (Some(_), true) => stored.iter().find(|c| c.exporter.is_some()).map(|c| c.seq),
    };
    // The store's statements are checked too (each signed): the other
    // replicas' checkpoints and the retired chains' final statements.
    cps.extend(stored);
    let verified = match missing.map_or_else(
        || ChainVerifier::for_chains(&chains, &cps, Some(&key)),
        |seq| Err(VerifyFailure::ExportMissing { seq }),
    ) {
        Ok(mut verifier) => {
            let mut after = LogCursor::default();
            loop {
                let page = source.page(&after).await?;
                let done = page.len() < PAGE;
                if let Err(failure) = page.iter().try_for_each(|r| verifier.push(r)) {
                    break Err(failure);
                }
                for r in &page {
                    after.advance(&r.chain, r.seq);
                }
                if done {
                    let mut problems = Vec::new();
                    for hash in verifier.rule_set_hashes() {
                        let stored = source.rule_set(hash).await?;
                        if let Err(p) = crate::log::rule_sets::check(hash, stored.as_deref()) {
                            problems.push(p);
                        }
                    }
                    let verified = verifier.finish(&problems);
                    break match (verified, source.stray().await?) {
                        (Ok(_), Some((chain, seq))) => {
                            Err(VerifyFailure::StrayRecord { chain, seq })
                        }
                        (verified, _) => verified,
                    };
                }
            }
        }
        Err(failure) => Err(failure),
    };
    let v = match verified {
        Ok(r) => json!({"ok": true, "report": r}),
        Err(f) => json!({"ok": false, "failure": f, "message": f.to_string()}),
    };
    report(v, *json_out, out)
}

/// Records `logs verify` reads at once.
const PAGE: usize = 10_000;

/// Where `logs verify` reads the log: the broker's admin API, or a store
/// directly.
enum LogSource {
    /// The admin API, with its `/admin/v1/logs/checkpoints` answer (the
    /// chains, the stored statements, a stray record), asked for once.
    Admin(Box<(AdminClient, tokio::sync::OnceCell<Value>)>),
    Store(std::sync::Arc<dyn crate::store::Store>),
}

/// The chains as the admin API lists them.
fn chains_of(state: &Value) -> Result<Vec<ChainStart>, String> {
    let chains = state["chains"]
        .as_array()
        .ok_or("unexpected answer: no chains")?;
    Ok(chains
        .iter()
        .map(|c| ChainStart {
            chain: c["chain"].as_str().unwrap_or_default().to_owned(),
            base: c["base"]["seq"]
                .as_i64()
                .zip(c["base"]["hash"].as_str().map(str::to_owned)),
            head: c["seq"].as_i64().zip(c["hash"].as_str().map(str::to_owned)),
            retired: !c["retired_at_ms"].is_null(),
        })
        .collect())
}

impl LogSource {
    /// The admin API's view of the chains and statements, asked for once
    /// per verification (the broker reads every chain's state to answer).
    async fn state(
        client: &AdminClient,
        state: &tokio::sync::OnceCell<Value>,
    ) -> Result<Value, String> {
        state
            .get_or_try_init(|| client.call("GET", "/admin/v1/logs/checkpoints", None))
            .await
            .cloned()
    }

    async fn open_store(url: &str) -> Result<Self, String> {
        let store = crate::store::open_existing(url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self::Store(store))
    }

    /// Every chain, with its pruned prefix's end.
    async fn chains(&self) -> Result<Vec<ChainStart>, String> {
        match self {
            Self::Admin(admin) => chains_of(&Self::state(&admin.0, &admin.1).await?),
            Self::Store(store) => Ok(store
                .chains()
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(ChainStart::from)
                .collect()),
        }
    }

    /// A record no chain accounts for, if any.
    async fn stray(&self) -> Result<Option<(String, i64)>, String> {
        match self {
            Self::Admin(admin) => {
                let v = Self::state(&admin.0, &admin.1).await?;
                let stray = &v["stray"];
                Ok(stray["seq"]
                    .as_i64()
                    .map(|seq| (stray["chain"].as_str().unwrap_or_default().to_owned(), seq)))
            }
            Self::Store(store) => store.stray_record().await.map_err(|e| e.to_string()),
        }
    }

    /// The checkpoints the store holds.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, String> {
        match self {
            Self::Admin(admin) => {
                let v = Self::state(&admin.0, &admin.1).await?;
                serde_json::from_value(v["checkpoints"].clone()).map_err(|e| e.to_string())
            }
            Self::Store(store) => store.checkpoints().await.map_err(|e| e.to_string()),
        }
    }

    /// The stored text of rule set `hash`, as the store holds it.
    async fn rule_set(&self, hash: &str) -> Result<Option<String>, String> {
        match self {
            Self::Admin(admin) => {
                let client = &admin.0;
                let v = client
                    .call("GET", &format!("/admin/v1/rule_sets/{hash}"), None)
                    .await?;
                Ok(v["stored"].as_str().map(str::to_owned))
            }
            Self::Store(store) => store.rule_set(hash).await.map_err(|e| e.to_string()),
        }
    }

    /// At most `PAGE` records after `after`, every chain in time order.
    async fn page(&self, after: &LogCursor) -> Result<Vec<LogRecord>, String> {
        match self {
            Self::Admin(admin) => {
                let client = &admin.0;
                let v = client
                    .call(
                        "GET",
                        &format!(
                            "/admin/v1/logs?after={}&limit={PAGE}",
                            urlencode(&after.to_string())
                        ),
                        None,
                    )
                    .await?;
                serde_json::from_value(v).map_err(|e| e.to_string())
            }
            Self::Store(store) => {
                let query = LogQuery {
                    limit: PAGE,
                    ..Default::default()
                };
                crate::store::read_log(&**store, &query, after)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Runs `logs prune` (and `logs retire`).
async fn prune(target: &Target, cmd: &LogsCommand, out: &mut impl Write) -> Result<bool, String> {
    let (before, export) = match cmd {
        LogsCommand::Prune { before, export } => (before, export),
        LogsCommand::Retire { chain } => return retire(target, chain, out).await,
        LogsCommand::Verify { .. } => return Ok(false),
    };
    let cutoff = ago_ms(before)?;
    let client = AdminClient::new(target)?;
    let state = client
        .call("GET", "/admin/v1/logs/checkpoints", None)
        .await?;
    let checkpoints: Vec<Checkpoint> =
        serde_json::from_value(state["checkpoints"].clone()).map_err(|e| e.to_string())?;
    // Each chain through its last checkpoint before the cutoff, keeping
    // the records a live upstream lease still needs.
    let mut plans: Vec<(ChainStart, &Checkpoint)> = Vec::new();
    let mut held = Vec::new();
    for (start, listed) in chains_of(&state)?
        .into_iter()
        .zip(state["chains"].as_array().into_iter().flatten())
    {
        let needed_from = listed["needed_from_seq"].as_i64().unwrap_or(i64::MAX);
        if needed_from < i64::MAX {
            held.push(format!("{}:{needed_from}", start.chain));
        }
        let after = start.base.as_ref().map_or(0, |b| b.0);
        if let Some(through) = checkpoints.iter().rfind(|c| {
            c.chain == start.chain
                && c.kind == StatementKind::Checkpoint
                && c.time_ms < cutoff
                && c.seq > after
                && c.seq < needed_from
        }) {
            plans.push((start, through));
        }
    }
    if plans.is_empty() {
        writeln!(
            out,
            "nothing to prune: no checkpoint older than {before} beyond the current base{}",
            if held.is_empty() {
                String::new()
            } else {
                format!(
                    " and before the records a live upstream lease needs (chain:record {})",
                    held.join(", ")
                )
            }
        )
        .map_err(|e| e.to_string())?;
        return Ok(true);
    }
    // Export first, durably, and check what was exported.
    let mut exported: Vec<Vec<LogRecord>> = Vec::new();
    for (start, through) in &plans {
        let mut records: Vec<LogRecord> = Vec::new();
        loop {
            let after = records
                .last()
                .map_or(start.base.as_ref().map_or(0, |b| b.0), |r| r.seq);
            let v = client
                .call(
                    "GET",
                    &format!(
                        "/admin/v1/logs?chain={}&after_seq={after}&limit=10000",
                        urlencode(&start.chain)
                    ),
                    None,
                )
                .await?;
            let page: Vec<LogRecord> = serde_json::from_value(v).map_err(|e| e.to_string())?;
            let done = page.len() < 10_000 || page.last().is_some_and(|r| r.seq >= through.seq);
            records.extend(page.into_iter().filter(|r| r.seq <= through.seq));
            if done {
                break;
            }
        }
        let covered: Vec<Checkpoint> = checkpoints
            .iter()
            .filter(|c| c.chain == start.chain && c.seq <= through.seq)
            .cloned()
            .collect();
        let base = start.base.as_ref().map(|(s, h)| (*s, h.as_str()));
        let mut verifier = ChainVerifier::continuing(&start.chain, base, &covered)
            .map_err(|f| format!("refusing to prune: {f}"))?;
        records
            .iter()
            .try_for_each(|r| verifier.push(r))
            .and_then(|()| verifier.finish(&[]))
            .map_err(|f| format!("refusing to prune: {f}"))?;
        exported.push(records);
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(export)
            .map_err(|e| format!("{}: {e}", export.display()))?;
        for r in exported.iter().flatten() {
            writeln!(file, "{}", serde_json::to_string(r).unwrap_or_default())
                .map_err(|e| e.to_string())?;
        }
        file.sync_all().map_err(|e| e.to_string())?;
    }
    for ((start, through), records) in plans.iter().zip(&exported) {
        let v = client
            .call(
                "POST",
                "/admin/v1/logs/prune",
                Some(&json!({"chain": start.chain, "through_seq": through.seq, "export": export.display().to_string()})),
            )
            .await?;
        let chain = if start.chain.is_empty() {
            String::new()
        } else {
            format!(" of chain {}", start.chain)
        };
        writeln!(
            out,
            "exported {} records{chain} to {} and pruned through record {} (deleted {}); the chain resumes from checkpoint {}",
            records.len(),
            export.display(),
            through.seq,
            v["deleted"],
            through.hash
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// Runs `logs retire`.
async fn retire(target: &Target, chain: &str, out: &mut impl Write) -> Result<bool, String> {
    let client = AdminClient::new(target)?;
    let v = client
        .call(
            "POST",
            &format!("/admin/v1/logs/chains/{}/retire", urlencode(chain)),
            None,
        )
        .await?;
    writeln!(
        out,
        "retired chain {chain} at record {} (hash {}); its final statement is exported and stored",
        v["seq"],
        v["hash"].as_str().unwrap_or_default()
    )
    .map_err(|e| e.to_string())?;
    Ok(true)
}

fn report(v: Value, json_out: bool, out: &mut impl Write) -> Result<bool, String> {
    let ok = v["ok"].as_bool().unwrap_or(false);
    if json_out {
        print_json(out, &v)?;
    } else if ok {
        let r = &v["report"];
        let chains = r["chains"].as_array().map_or(&[][..], Vec::as_slice);
        let several = chains.len() > 1 || chains.iter().any(|c| c["chain"] != "");
        let coverage = match (several, r["last_checkpoint"].as_i64()) {
            (true, _) => format!(
                "{} chains, {} checkpoints matched; each chain's records after its last checkpoint are covered by the chain only",
                chains.len(),
                r["checkpoints"]
            ),
            (false, Some(last)) => format!(
                "head {}; {} checkpoints matched, the last at record {last}; records after it are covered by the chain only",
                r["head"].as_str().unwrap_or(""),
                r["checkpoints"]
            ),
            (false, None) => format!(
                "head {}; no checkpoint yet: the records are covered by the chain only",
                r["head"].as_str().unwrap_or("")
            ),
        };
        writeln!(
            out,
            "ok: {} records ({} decisions decoded, {} rule sets re-hashed), {coverage}",
            r["records"], r["decisions"], r["rule_sets"],
        )
        .map_err(|e| e.to_string())?;
        if several {
            for c in chains {
                writeln!(
                    out,
                    "  chain {:<32} {:>10} records, head {}, last checkpoint {}{}",
                    c["chain"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .unwrap_or("(unnamed)"),
                    c["records"],
                    c["head"].as_str().unwrap_or(""),
                    c["last_checkpoint"],
                    if c["retired"] == true {
                        ", retired"
                    } else {
                        ""
                    }
                )
                .map_err(|e| e.to_string())?;
            }
        }
        if let Some(first) = r["first_unfinished_admin_action"].as_i64() {
            writeln!(
                out,
                "note: {} admin action(s) recorded as intended with no outcome (the broker stopped mid-change), the first at record {first}: check the state they name",
                r["unfinished_admin_actions"]
            )
            .map_err(|e| e.to_string())?;
        }
    } else {
        writeln!(
            out,
            "FAILED: {}",
            v["message"].as_str().unwrap_or("unknown failure")
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(ok)
}
