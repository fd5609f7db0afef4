//! The CLI verbs that talk to the broker's admin API (and `logs verify`,
//! which can also read a store directly).

use std::io::Write;

use serde_json::{Value, json};

use super::client::AdminClient;
pub use super::log_chain::{LogsCommand, verify};
use crate::log::LogRecord;
use crate::store::LogCursor;

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
    let mut after = LogCursor::default();
    loop {
        let v = client
            .call(
                "GET",
                &format!(
                    "/admin/v1/logs?{}&after={}&limit=1000",
                    query.join("&"),
                    urlencode(&after.to_string())
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
        if records.len() < 1000 {
            return Ok(());
        }
        for r in &records {
            after.advance(&r.chain, r.seq);
        }
    }
}

/// A `--ttl` value (`10m`, `1h30m`) in whole seconds.
pub fn ttl_seconds(ttl: &str) -> Result<u64, String> {
    humantime::parse_duration(ttl)
        .map(|d| d.as_secs())
        .map_err(|e| format!("--ttl {ttl:?}: {e}"))
}

pub(super) fn ago_ms(spec: &str) -> Result<i64, String> {
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

pub(super) fn print_json(out: &mut impl Write, v: &Value) -> Result<(), String> {
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
            // A replica's chain by the first characters of its name.
            let at = match r.chain.get(..8) {
                Some(chain) => format!("{chain}:{}", r.seq),
                None if r.chain.is_empty() => r.seq.to_string(),
                None => format!("{}:{}", r.chain, r.seq),
            };
            format!(
                "{at:>6}  {}  {:<10} {:<16} {:<48} {:<16} {}",
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
    let mut after = LogCursor::default();
    loop {
        let mut q = query.clone();
        q.push(format!("after={}", urlencode(&after.to_string())));
        q.push("limit=1000".into());
        let v = client
            .call("GET", &format!("/admin/v1/logs?{}", q.join("&")), None)
            .await?;
        let records: Vec<LogRecord> =
            serde_json::from_value(v).map_err(|e| format!("unexpected answer: {e}"))?;
        for r in &records {
            after.advance(&r.chain, r.seq);
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
