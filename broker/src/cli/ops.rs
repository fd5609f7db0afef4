//! The CLI verbs that talk to the broker's admin API (and `logs verify`,
//! which can also read a store directly).

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::client::{AdminClient, Target};
use crate::log::LogRecord;
use crate::log::checkpoint::{self, Checkpoint};
use crate::log::verify::{ChainVerifier, VerifyFailure, verify_chain_from};

/// `mintguard token …`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token for a node.
    Create {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// Lifetime, e.g. 10m.
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
}

/// `mintguard entry …`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum EntryCommand {
    /// Create a registration entry.
    Create {
        /// The SPIFFE ID to assign.
        #[arg(long)]
        spiffe_id: String,
        /// The parent node (name or SPIFFE ID).
        #[arg(long)]
        parent: String,
        /// A selector (repeat): unix:uid:N, unix:gid:N, unix:sha256:HEX, unix:path:/abs, k8s:sa:…
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// A grant the identity may request (repeat).
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// List entries.
    List {
        /// Only this parent node's.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Delete an entry.
    Delete {
        /// The entry id.
        id: String,
    },
}

/// `mintguard logs …`.
#[derive(Clone, Debug, clap::Args)]
pub struct LogsArgs {
    /// `verify` checks the chain (and checkpoints) instead of listing.
    #[command(subcommand)]
    pub verify: Option<LogsCommand>,
    /// Only this identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Only this grant.
    #[arg(long)]
    pub grant: Option<String>,
    /// Only this node or CI issuer.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this outcome.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only records newer than this (e.g. 1h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records older than this (e.g. 10m).
    #[arg(long)]
    pub until: Option<String>,
    /// JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Keep printing new records.
    #[arg(long)]
    pub follow: bool,
}

/// `mintguard anomalies`: detections with their evidence.
#[derive(Clone, Debug, clap::Args)]
pub struct AnomaliesArgs {
    /// Only detections about this identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Only detections about this node or CI issuer.
    #[arg(long)]
    pub node: Option<String>,
    /// Only detections newer than this (e.g. 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// JSON lines (the log records).
    #[arg(long)]
    pub json: bool,
}

/// Runs `anomalies`: the log's `detection` records, one line each with
/// score, response, subject, detectors and evidence.
pub async fn anomalies(
    client: &AdminClient,
    args: &AnomaliesArgs,
    out: &mut impl Write,
) -> Result<(), String> {
    let mut query = vec!["outcome=detection".to_owned()];
    for (k, v) in [("identity", &args.identity), ("node", &args.node)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    if let Some(s) = &args.since {
        query.push(format!("since_ms={}", ago_ms(s)?));
    }
    if !args.json {
        writeln!(
            out,
            "{:<20}  {:>5}  {:<8} {:<48} {:<40} EVIDENCE",
            "TIME", "SCORE", "RESPONSE", "SUBJECT", "DETECTORS"
        )
        .map_err(|e| e.to_string())?;
    }
    let mut after = 0i64;
    loop {
        let v = client
            .call(
                "GET",
                &format!(
                    "/admin/v1/logs?{}&after_seq={after}&limit=1000",
                    query.join("&")
                ),
                None,
            )
            .await?;
        let records: Vec<LogRecord> =
            serde_json::from_value(v).map_err(|e| format!("unexpected answer: {e}"))?;
        for r in &records {
            let b = &r.entry.body;
            let line = if args.json {
                serde_json::to_string(r).unwrap_or_default()
            } else {
                let detectors: Vec<String> = b["detectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| format!("{}={}", d["detector"].as_str().unwrap_or("?"), d["score"]))
                    .collect();
                format!(
                    "{}  {:>5}  {:<8} {:<48} {:<40} {}",
                    time_of(r.entry.time_ms),
                    b["score"],
                    b["response"].as_str().unwrap_or("-"),
                    b["subject"]["id"].as_str().unwrap_or("-"),
                    detectors.join(","),
                    b["evidence"]
                )
            };
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        match records.last() {
            Some(last) if records.len() == 1000 => after = last.seq,
            _ => return Ok(()),
        }
    }
}

/// `mintguard logs verify` and `mintguard logs prune`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum LogsCommand {
    /// Retention: export the records older than `--before` (through the last
    /// checkpoint before that time) to a JSON-lines file, verify the export,
    /// then delete them from the store; the prune is itself logged.
    Prune {
        /// Age of the oldest record to keep, e.g. 30d.
        #[arg(long)]
        before: String,
        /// The JSON-lines file to export to (must not exist).
        #[arg(long)]
        export: PathBuf,
    },
    /// Verify the hash chain against the exported checkpoints. Exit 0 if it
    /// holds, 1 naming the first bad record otherwise.
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

/// A `--ttl` value (`10m`, `1h30m`) in whole seconds.
pub fn ttl_seconds(ttl: &str) -> Result<u64, String> {
    humantime::parse_duration(ttl)
        .map(|d| d.as_secs())
        .map_err(|e| format!("--ttl {ttl:?}: {e}"))
}

fn ago_ms(spec: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(spec).map_err(|e| format!("{spec:?}: {e}"))?;
    Ok(crate::clock::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
}

fn time_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), String> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    )
    .map_err(|e| e.to_string())
}

/// Runs `token create`.
pub async fn token(
    client: &AdminClient,
    cmd: &TokenCommand,
    out: &mut impl Write,
) -> Result<(), String> {
    let TokenCommand::Create { node, ttl } = cmd;
    let v = client
        .call(
            "POST",
            "/admin/v1/tokens",
            Some(&json!({"node": node, "ttl_seconds": ttl_seconds(ttl)?})),
        )
        .await?;
    print_json(out, &v)
}

/// Runs `entry …`.
pub async fn entry(
    client: &AdminClient,
    cmd: &EntryCommand,
    json_out: bool,
    out: &mut impl Write,
) -> Result<(), String> {
    match cmd {
        EntryCommand::Create {
            spiffe_id,
            parent,
            selectors,
            grants,
        } => {
            let v = client
                .call("POST", "/admin/v1/entries", Some(&json!({"spiffe_id": spiffe_id, "parent": parent, "selectors": selectors, "grants": grants})))
                .await?;
            print_json(out, &v)
        }
        EntryCommand::List { parent } => {
            let path = match parent {
                Some(p) => format!("/admin/v1/entries?parent={}", urlencode(p)),
                None => "/admin/v1/entries".into(),
            };
            let v = client.call("GET", &path, None).await?;
            if json_out {
                return print_json(out, &v);
            }
            for e in v.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}  {}  parent {}  selectors {}  grants {}",
                    e["id"].as_str().unwrap_or(""),
                    e["spiffe_id"].as_str().unwrap_or(""),
                    e["parent"].as_str().unwrap_or(""),
                    join(&e["selectors"]),
                    join(&e["grants"])
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        EntryCommand::Delete { id } => {
            client
                .call(
                    "DELETE",
                    &format!("/admin/v1/entries/{}", urlencode(id)),
                    None,
                )
                .await?;
            writeln!(out, "deleted {id}").map_err(|e| e.to_string())
        }
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Percent-encodes a query or path component.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints records as a table or JSON lines.
pub fn print_records(
    records: &[LogRecord],
    json_out: bool,
    out: &mut impl Write,
) -> Result<(), String> {
    for r in records {
        let line = if json_out {
            serde_json::to_string(r).unwrap_or_default()
        } else {
            let e = &r.entry;
            format!(
                "{:>6}  {}  {:<10} {:<16} {:<48} {:<16} {}",
                r.seq,
                time_of(e.time_ms),
                e.kind.as_str(),
                e.outcome.as_deref().unwrap_or("-"),
                e.identity.as_deref().unwrap_or("-"),
                e.grant.as_deref().unwrap_or("-"),
                e.request_id
            )
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs `logs` (listing).
pub async fn logs(
    client: &AdminClient,
    args: &LogsArgs,
    out: &mut impl Write,
) -> Result<(), String> {
    let mut query = Vec::new();
    for (k, v) in [
        ("identity", &args.identity),
        ("grant", &args.grant),
        ("node", &args.node),
        ("outcome", &args.outcome),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    if let Some(s) = &args.since {
        query.push(format!("since_ms={}", ago_ms(s)?));
    }
    if let Some(u) = &args.until {
        query.push(format!("until_ms={}", ago_ms(u)?));
    }
    if !args.json {
        writeln!(
            out,
            "{:>6}  {:<20}  {:<10} {:<16} {:<48} {:<16} REQUEST",
            "SEQ", "TIME", "KIND", "OUTCOME", "IDENTITY", "GRANT"
        )
        .map_err(|e| e.to_string())?;
    }
    let mut after = 0i64;
    loop {
        let mut q = query.clone();
        q.push(format!("after_seq={after}"));
        q.push("limit=1000".into());
        let v = client
            .call("GET", &format!("/admin/v1/logs?{}", q.join("&")), None)
            .await?;
        let records: Vec<LogRecord> =
            serde_json::from_value(v).map_err(|e| format!("unexpected answer: {e}"))?;
        if let Some(last) = records.last() {
            after = last.seq;
        }
        print_records(&records, args.json, out)?;
        out.flush().map_err(|e| e.to_string())?;
        if records.len() < 1000 {
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
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
    let cps = match checkpoints {
        Some(path) => checkpoint::read_file(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    // The base first, then the records a page at a time into the verifier:
    // a log of any length is checked in constant memory.
    let source = match store {
        Some(url) => LogSource::open_store(url).await?,
        None => LogSource::Admin(AdminClient::new(target)?),
    };
    let base = source.base().await?;
    let base_ref = base.as_ref().map(|(s, h)| (*s, h.as_str()));
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
    let verified = match missing.map_or_else(
        || ChainVerifier::new(base_ref, &cps, Some(&key)),
        |seq| Err(VerifyFailure::ExportMissing { seq }),
    ) {
        Ok(mut verifier) => {
            let mut after = 0;
            loop {
                let page = source.page(after).await?;
                let done = page.len() < PAGE;
                if let Err(failure) = page.iter().try_for_each(|r| verifier.push(r)) {
                    break Err(failure);
                }
                after = page.last().map_or(after, |r| r.seq);
                if done {
                    let mut problems = Vec::new();
                    for hash in verifier.rule_set_hashes() {
                        let stored = source.rule_set(hash).await?;
                        if let Err(p) = crate::log::rule_sets::check(hash, stored.as_deref()) {
                            problems.push(p);
                        }
                    }
                    break verifier.finish(&problems);
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
    Admin(AdminClient),
    Store(std::sync::Arc<dyn crate::store::Store>),
}

impl LogSource {
    async fn open_store(url: &str) -> Result<Self, String> {
        let store = crate::store::open(url).await.map_err(|e| e.to_string())?;
        Ok(Self::Store(store))
    }

    /// The pruned prefix's end, if any: (seq, hash).
    async fn base(&self) -> Result<Option<(i64, String)>, String> {
        match self {
            Self::Admin(client) => {
                let base = client
                    .call("GET", "/admin/v1/logs/checkpoints", None)
                    .await?["base"]
                    .clone();
                Ok(base["seq"]
                    .as_i64()
                    .zip(base["hash"].as_str().map(str::to_owned)))
            }
            Self::Store(store) => store.base().await.map_err(|e| e.to_string()),
        }
    }

    /// The checkpoints the store holds.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, String> {
        match self {
            Self::Admin(client) => {
                let v = client
                    .call("GET", "/admin/v1/logs/checkpoints", None)
                    .await?;
                serde_json::from_value(v["checkpoints"].clone()).map_err(|e| e.to_string())
            }
            Self::Store(store) => store.checkpoints().await.map_err(|e| e.to_string()),
        }
    }

    /// The stored text of rule set `hash`, as the store holds it.
    async fn rule_set(&self, hash: &str) -> Result<Option<String>, String> {
        match self {
            Self::Admin(client) => {
                let v = client
                    .call("GET", &format!("/admin/v1/rule_sets/{hash}"), None)
                    .await?;
                Ok(v["stored"].as_str().map(str::to_owned))
            }
            Self::Store(store) => store.rule_set(hash).await.map_err(|e| e.to_string()),
        }
    }

    /// At most `PAGE` records after `after`, oldest first.
    async fn page(&self, after: i64) -> Result<Vec<LogRecord>, String> {
        match self {
            Self::Admin(client) => {
                let v = client
                    .call(
                        "GET",
                        &format!("/admin/v1/logs?after_seq={after}&limit={PAGE}"),
                        None,
                    )
                    .await?;
                serde_json::from_value(v).map_err(|e| e.to_string())
            }
            Self::Store(store) => store
                .log(&crate::store::LogQuery {
                    after_seq: Some(after),
                    limit: PAGE,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Runs `logs prune`.
async fn prune(target: &Target, cmd: &LogsCommand, out: &mut impl Write) -> Result<bool, String> {
    let LogsCommand::Prune { before, export } = cmd else {
        return Ok(false);
    };
    let cutoff = ago_ms(before)?;
    let client = AdminClient::new(target)?;
    let state = client
        .call("GET", "/admin/v1/logs/checkpoints", None)
        .await?;
    let checkpoints: Vec<Checkpoint> =
        serde_json::from_value(state["checkpoints"].clone()).map_err(|e| e.to_string())?;
    let base = state["base"]["seq"]
        .as_i64()
        .zip(state["base"]["hash"].as_str().map(str::to_owned));
    // Records a live upstream lease still needs are kept.
    let needed_from = state["needed_from_seq"].as_i64().unwrap_or(i64::MAX);
    let Some(through) = checkpoints.iter().rfind(|c| {
        c.time_ms < cutoff && c.seq > base.as_ref().map_or(0, |b| b.0) && c.seq < needed_from
    }) else {
        writeln!(
            out,
            "nothing to prune: no checkpoint older than {before} beyond the current base{}",
            if needed_from < i64::MAX {
                format!(" and before record {needed_from}, which a live upstream lease needs")
            } else {
                String::new()
            }
        )
        .map_err(|e| e.to_string())?;
        return Ok(true);
    };
    // Export first, durably, and check what was exported.
    let mut records: Vec<LogRecord> = Vec::new();
    loop {
        let after = records.last().map_or(0, |r| r.seq);
        let v = client
            .call(
                "GET",
                &format!("/admin/v1/logs?after_seq={after}&limit=10000"),
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
    let base_ref = base.as_ref().map(|(s, h)| (*s, h.as_str()));
    let covered: Vec<Checkpoint> = checkpoints
        .iter()
        .filter(|c| c.seq <= through.seq)
        .cloned()
        .collect();
    verify_chain_from(base_ref, records.clone(), &covered, None)
        .map_err(|f| format!("refusing to prune: {f}"))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(export)
            .map_err(|e| format!("{}: {e}", export.display()))?;
        for r in &records {
            writeln!(file, "{}", serde_json::to_string(r).unwrap_or_default())
                .map_err(|e| e.to_string())?;
        }
        file.sync_all().map_err(|e| e.to_string())?;
    }
    let v = client
        .call(
            "POST",
            "/admin/v1/logs/prune",
            Some(&json!({"through_seq": through.seq, "export": export.display().to_string()})),
        )
        .await?;
    writeln!(
        out,
        "exported {} records to {} and pruned through record {} (deleted {}); the chain resumes from checkpoint {}",
        records.len(),
        export.display(),
        through.seq,
        v["deleted"],
        through.hash
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
        let coverage = match r["last_checkpoint"].as_i64() {
            Some(last) => format!(
                "{} checkpoints matched, the last at record {last}; records after it are covered by the chain only",
                r["checkpoints"]
            ),
            None => "no checkpoint yet: the records are covered by the chain only".to_owned(),
        };
        writeln!(
            out,
            "ok: {} records ({} decisions decoded, {} rule sets re-hashed), head {}; {coverage}",
            r["records"],
            r["decisions"],
            r["rule_sets"],
            r["head"].as_str().unwrap_or("")
        )
        .map_err(|e| e.to_string())?;
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

/// Runs a simple GET/POST and prints the JSON answer.
pub async fn simple(
    client: &AdminClient,
    method: &str,
    path: &str,
    body: Option<Value>,
    out: &mut impl Write,
) -> Result<Value, String> {
    let v = client.call(method, path, body.as_ref()).await?;
    print_json(out, &v)?;
    Ok(v)
}
