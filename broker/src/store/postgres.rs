//! The PostgreSQL store, for one or several broker replicas.
//!
//! One global hash chain: every append batch takes the row lock on
//! `log_head` (`SELECT … FOR UPDATE`), so concurrent writers — in this
//! process or in other replicas — extend one chain in order. Each replica
//! group-commits: its writer task drains pending appends into one
//! transaction. Budget spends are conditional updates in that transaction;
//! join tokens are consumed by a conditional update; reads and other writes
//! are single statements through a connection pool.
//!
//! The connection is TLS when the URL asks for it (see [`connection`]).

use std::collections::HashSet;

use async_trait::async_trait;
use deadpool_postgres::{Pool, Runtime};
use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Append, Appended, Entry, Lease, LeaseQuery, LogQuery, NodeRenewal, Result, SpendOp, SqlValue,
    Store, StoreError, SuspensionRecord, bucket_params, cost_milli,
};
use crate::log::checkpoint::Checkpoint;
use crate::log::{GENESIS, LogEntry, LogRecord, RecordKind};
use crate::store::sqlite::mark_final_outcome;
use crate::store::{Approval, DecisionRow, SignalRecord};

/// Most appends group-committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// The connection settings of a store URL and its TLS connector.
///
/// Two query parameters are read here, with libpq's names: `sslmode`
/// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and
/// `sslrootcert` (a PEM file of CA certificates trusted besides the system
/// roots). Whenever TLS is used, the server's certificate chain and host name
/// are verified (libpq's `verify-full`): `require` and the `verify-*` modes
/// mean the same here, and `prefer` means TLS, verified, if the server offers
/// it. Without `sslmode`, `sslrootcert` implies `require`, and no parameter
/// means no TLS. Everything else in the URL is tokio-postgres's.
pub fn connection(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let bad = |reason: String| StoreError::Setup(format!("store url: {reason}"));
    // The query starts after the credentials (a password may hold a '?').
    let host_part = url.rfind('@').map_or(0, |at| at + 1);
    let (base, query) = match url[host_part..].find('?') {
        Some(q) => (&url[..host_part + q], &url[host_part + q + 1..]),
        None => (url, ""),
    };
    let (mut mode, mut root_cert) = (None, None);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_owned()),
            Some(("sslrootcert", value)) => root_cert = Some(percent_decode(value)),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
    let ssl_mode = match (mode.as_deref(), &root_cert) {
        (Some("disable"), Some(_)) => {
            return Err(bad("sslrootcert with sslmode=disable".into()));
        }
        (Some("disable"), None) | (None, None) => SslMode::Disable,
        (Some("prefer"), _) => SslMode::Prefer,
        (Some("require" | "verify-ca" | "verify-full"), _) | (None, Some(_)) => SslMode::Require,
        (Some(other), _) => {
            return Err(bad(format!(
                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    let tls = crate::outbound::tls_config(root_cert.as_deref().map(std::path::Path::new))
        .map_err(|e| bad(format!("sslrootcert: {e}")))?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// `%XX` escapes of a URL parameter decoded (a path may need them).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error with its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether `config` sends the store's traffic in clear text off this machine.
fn plaintext_off_host(config: &tokio_postgres::Config) -> bool {
    config.get_ssl_mode() == SslMode::Disable
        && config.get_hosts().iter().any(|host| match host {
            Host::Tcp(name) => {
                !(name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback()))
            }
            Host::Unix(_) => false,
        })
}

/// Serializes migrations across replicas starting at once.
const MIGRATION_LOCK: i64 = 0x4d47_4d49_4752; // "MGMIGR"

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn map_pg(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(e.to_string())
    } else {
        unavailable(e)
    }
}

const AVAIL_EVERY: &str = "CASE WHEN balance_milli >= $1 THEN balance_milli
     ELSE LEAST($1, balance_milli + (LEAST(GREATEST($2 - updated_at_ms, 0), $3) * $1) / $3) END";

async fn ensure_bucket(
    client: &impl tokio_postgres::GenericClient,
    key: &str,
    cap: i64,
    now_ms: i64,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO budgets(key, balance_milli, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            &[&key, &cap, &now_ms],
        )
        .await
        .map_err(map_pg)?;
    Ok(())
}

async fn spend_one(
    client: &impl tokio_postgres::GenericClient,
    op: &SpendOp,
    now_ms: i64,
) -> Result<bool> {
    let (cap, per) = bucket_params(&op.policy);
    ensure_bucket(client, &op.key, cap, now_ms).await?;
    let cost = cost_milli(op.cost);
    let changed = match per {
        Some(per) => {
            let sql = format!(
                "UPDATE budgets SET balance_milli = ({AVAIL_EVERY}) - $4, updated_at_ms = GREATEST(updated_at_ms, $2)
                 WHERE key = $5 AND ({AVAIL_EVERY}) >= $4"
            );
            client.execute(&sql, &[&cap, &now_ms, &per, &cost, &op.key]).await
        }
        None => {
            client
                .execute(
                    "UPDATE budgets SET balance_milli = balance_milli - $2, updated_at_ms = GREATEST(updated_at_ms, $1)
                     WHERE key = $3 AND balance_milli >= $2",
                    &[&now_ms, &cost, &op.key],
                )
                .await
        }
    }
    .map_err(map_pg)?;
    Ok(changed == 1)
}

struct Job {
    append: Append,
    body_jcs: String,
    done: oneshot::Sender<Result<Appended>>,
}

/// Appends one record inside the batch transaction (under the head lock).
async fn append_one(
    tx: &tokio_postgres::Transaction<'_>,
    head: &mut (i64, String),
    statements: &Statements,
    known_rule_sets: &mut HashSet<String>,
    pipelined_savepoint: bool,
    append: Append,
    mut body_jcs: String,
) -> Result<Appended> {
    let Append {
        mut entry,
        spend,
        lease,
        rule_set,
        refuse_if_suspended,
        refuse_if_lease_closed,
        ..
    } = append;
    let suspended = !refuse_if_suspended.is_empty()
        && tx
            .query_opt(&statements.suspended, &[&refuse_if_suspended])
            .await
            .map_err(map_pg)?
            .is_some();
    // Locked until the batch commits, so a concurrent close waits for it.
    let lease_closed = match &refuse_if_lease_closed {
        Some(id) => {
            tx.query_opt(&statements.lease_open, &[id])
                .await
                .map_err(map_pg)?
                .map(|row| row.get::<_, bool>(0))
                != Some(true)
        }
        None => false,
    };
    let mut spent = !suspended && !lease_closed;
    if spent && !spend.is_empty() {
        tx.batch_execute("SAVEPOINT spend").await.map_err(map_pg)?;
        for op in &spend {
            if !spend_one(tx, op, entry.time_ms).await? {
                spent = false;
                break;
            }
        }
        let sql = if spent {
            "RELEASE SAVEPOINT spend"
        } else {
            "ROLLBACK TO SAVEPOINT spend; RELEASE SAVEPOINT spend"
        };
        tx.batch_execute(sql).await.map_err(map_pg)?;
    }
    if suspended {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "suspended")?;
    } else if lease_closed {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "lease_closed")?;
    } else if !spent {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "budget_exhausted")?;
    }
    // The rule set (unless this writer committed it before), the lease and
    // the record go out pipelined: one round trip, executed in order.
    let rule_set = rule_set.filter(|(hash, _)| !known_rule_sets.contains(hash.as_str()));
    let rule_set_insert = async {
        if let Some((hash, body)) = &rule_set {
            let body: &str = body;
            tx.execute(&statements.rule_set, &[hash, &body])
                .await
                .map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    let lease_insert = async {
        if spent && let Some(l) = &lease {
            tx.execute(
                &statements.lease,
                &[
                    &l.id,
                    &l.request_id,
                    &l.identity,
                    &l.grant,
                    &l.node,
                    &l.kind.as_str(),
                    &l.revocation.as_str(),
                    &l.issued_at_ms,
                    &l.expires_at_ms,
                    &l.revoked_at_ms,
                    &l.task_ended_at_ms,
                ],
            )
            .await
            .map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    let record = LogRecord::seal_canonical(head.0 + 1, entry, &body_jcs, head.1.clone());
    let e = &record.entry;
    let log_insert = async {
        tx.execute(
            &statements.log,
            &[
                &record.seq,
                &e.time_ms,
                &e.kind.as_str(),
                &e.request_id,
                &e.identity,
                &e.grant,
                &e.node,
                &e.outcome,
                &body_jcs,
                &record.prev_hash,
                &record.hash,
            ],
        )
        .await
        .map_err(map_pg)
    };
    let savepoint = |sql: &'static str| async move {
        if pipelined_savepoint {
            tx.batch_execute(sql).await.map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    tokio::try_join!(
        savepoint("SAVEPOINT job"),
        rule_set_insert,
        lease_insert,
        log_insert,
        savepoint("RELEASE SAVEPOINT job")
    )?;
    if let Some((hash, _)) = rule_set {
        known_rule_sets.insert(hash);
    }
    *head = (record.seq, record.hash.clone());
    Ok(Appended {
        seq: record.seq,
        hash: record.hash,
        spent,
        suspended,
        lease_closed,
    })
}

/// The writer's inserts, prepared once per connection, so a job's statements
/// go out pipelined (one round trip) and execute in the order sent.
struct Statements {
    rule_set: tokio_postgres::Statement,
    lease: tokio_postgres::Statement,
    log: tokio_postgres::Statement,
    suspended: tokio_postgres::Statement,
    lease_open: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            rule_set: client
                .prepare("INSERT INTO rule_sets(hash, body) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING")
                .await?,
            lease: client
                .prepare(
                    "INSERT INTO leases(id, request_id, identity, grant_name, node, kind, revocation, issued_at_ms, expires_at_ms,
                                        revoked_at_ms, task_ended_at_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                )
                .await?,
            log: client
                .prepare(
                    "INSERT INTO log(seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                )
                .await?,
            suspended: client
                .prepare("SELECT 1 FROM suspensions WHERE subject = ANY($1) LIMIT 1")
                .await?,
            lease_open: client
                .prepare("SELECT revoked_at_ms IS NULL FROM leases WHERE id = $1 FOR UPDATE")
                .await?,
        })
    }
}

/// Runs one batch: lock the head, append each job in its own savepoint, commit.
async fn run_batch(
    client: &mut Client,
    statements: &Statements,
    batch: Vec<Job>,
    rule_sets: &mut HashSet<String>,
) {
    // Rule sets this batch stores join the committed set only if it commits.
    let mut known = rule_sets.clone();
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(unavailable(&e)));
            }
            return;
        }
    };
    let head = tx
        .query_one(
            "SELECT seq, hash FROM log_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await;
    let mut head: (i64, String) = match head {
        Ok(row) => (row.get(0), row.get(1)),
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(unavailable(&e)));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let saved = head.clone();
        let known_before = known.clone();
        // A job without spends opens and releases its savepoint in the same
        // pipeline as its inserts; one with spends opens it first.
        let pipelined = job.append.spend.is_empty();
        let result = async {
            if !pipelined {
                tx.batch_execute("SAVEPOINT job").await.map_err(map_pg)?;
            }
            match append_one(
                &tx,
                &mut head,
                statements,
                &mut known,
                pipelined,
                job.append,
                job.body_jcs,
            )
            .await
            {
                Ok(appended) => {
                    if !pipelined {
                        tx.batch_execute("RELEASE SAVEPOINT job")
                            .await
                            .map_err(map_pg)?;
                    }
                    Ok(appended)
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map_err(map_pg)?;
                    Err(e)
                }
            }
        }
        .await;
        if result.is_err() {
            head = saved;
            known = known_before;
        }
        results.push((job.done, result));
    }
    let committed = async {
        tx.execute(
            "UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&head.0, &head.1],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)
    }
    .await;
    if committed.is_ok() {
        *rule_sets = known;
    }
    for (done, result) in results {
        let _ = done.send(match &committed {
            Ok(()) => result,
            Err(e) => Err(unavailable(e)),
        });
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    appends: mpsc::Sender<Job>,
    url: String,
}

/// Leadership on PostgreSQL: the holder of a session advisory lock, on a
/// connection of its own (taken over by another replica when it ends).
struct AdvisoryLeader {
    url: String,
    client: Option<Client>,
}

/// The advisory lock key: "mintguard anomaly" folded into 64 bits.
const LEADER_LOCK: i64 = 0x6d69_6e74_616e_6f6d;

#[async_trait]
impl super::Leader for AdvisoryLeader {
    async fn leads(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        self.client = None;
        // The store's own connection settings, TLS included.
        let Ok((config, tls)) = connection(&self.url) else {
            return false;
        };
        let Ok((client, conn)) = config.connect(tls).await else {
            return false;
        };
        tokio::spawn(conn);
        match client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {
                tracing::info!("this replica leads (anomaly detections)");
                self.client = Some(client);
                true
            }
            _ => false,
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), migrates,
    /// and starts the append writer.
    pub async fn connect(url: &str) -> Result<Self> {
        let (config, tls) = connection(url)?;
        if plaintext_off_host(&config) {
            tracing::warn!(
                "the PostgreSQL store is reached without TLS over the network: add sslmode=require (and sslrootcert=PATH) to the store URL"
            );
        }
        let (mut client, conn) = config
            .connect(tls.clone())
            .await
            .map_err(|e| StoreError::Setup(format!("postgres: {}", error_chain(&e))))?;
        tokio::spawn(conn);
        migrate(&mut client).await?;
        let manager = deadpool_postgres::Manager::new(config.clone(), tls.clone());
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Setup(format!("postgres pool: {e}")))?;
        let (appends, mut rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(async move {
            let mut client = match Statements::prepare(&client).await {
                Ok(statements) => Some((client, statements)),
                Err(_) => None,
            };
            let mut rule_sets = HashSet::new();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                // Reconnect after a lost connection: the broker recovers by itself.
                if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    client = match config.connect(tls.clone()).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            match Statements::prepare(&c).await {
                                Ok(statements) => Some((c, statements)),
                                Err(_) => None,
                            }
                        }
                        Err(_) => None,
                    };
                }
                match client.as_mut() {
                    Some((c, statements)) => run_batch(c, statements, batch, &mut rule_sets).await,
                    None => {
                        for job in batch {
                            let _ = job.done.send(Err(unavailable("postgres is unreachable")));
                        }
                    }
                }
            }
        });
        Ok(Self {
            pool,
            appends,
            url: url.to_owned(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(unavailable)
    }
}

async fn migrate(client: &mut Client) -> Result<()> {
    let setup = |e: tokio_postgres::Error| StoreError::Setup(format!("migration: {e}"));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(setup)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            )
            .await
            .map_err(setup)?;
        for (version, sql) in super::migrations::rendered(super::migrations::Dialect::Postgres) {
            let tx = client.transaction().await.map_err(setup)?;
            let done = tx
                .query_opt(
                    "SELECT version FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await
                .map_err(setup)?;
            if done.is_none() {
                tx.batch_execute(&sql).await.map_err(setup)?;
                tx.execute(
                    "INSERT INTO schema_migrations(version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(setup)?;
            }
            tx.commit().await.map_err(setup)?;
        }
        Ok(())
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

const LOG_COLUMNS: &str =
    "seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash";
const LEASE_COLUMNS: &str = "id, request_id, identity, grant_name, node, kind, revocation, issued_at_ms, expires_at_ms, revoked_at_ms, task_ended_at_ms";

fn row_to_record(r: &Row) -> Result<LogRecord> {
    let seq: i64 = r.get(0);
    let kind: String = r.get(2);
    let body: String = r.get(8);
    Ok(LogRecord {
        seq,
        entry: LogEntry {
            time_ms: r.get(1),
            kind: RecordKind::parse(&kind).ok_or_else(|| {
                StoreError::Corrupt(format!("record {seq}: unknown kind {kind:?}"))
            })?,
            request_id: r.get(3),
            identity: r.get(4),
            grant: r.get(5),
            node: r.get(6),
            outcome: r.get(7),
            body: serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("record {seq}: body is not JSON: {e}")))?,
        },
        prev_hash: r.get(9),
        hash: r.get(10),
    })
}

/// A lease row; a kind or revocation outside its closed set is
/// [`StoreError::Corrupt`], never a default.
fn row_to_lease(r: &Row) -> Result<Lease> {
    let closed = |i: usize| -> Result<String> {
        r.try_get::<_, String>(i)
            .map_err(|e| StoreError::Corrupt(format!("leases column {i}: {e}")))
    };
    let corrupt = |e: crate::lease::UnknownForm| StoreError::Corrupt(format!("lease: {e}"));
    Ok(Lease {
        id: r.get(0),
        request_id: r.get(1),
        identity: r.get(2),
        grant: r.get(3),
        node: r.get(4),
        kind: closed(5)?.parse().map_err(corrupt)?,
        revocation: closed(6)?.parse().map_err(corrupt)?,
        issued_at_ms: r.get(7),
        expires_at_ms: r.get(8),
        revoked_at_ms: r.get(9),
        task_ended_at_ms: r.get(10),
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn leader(&self) -> Box<dyn super::Leader> {
        Box::new(AdvisoryLeader {
            url: self.url.clone(),
            client: None,
        })
    }

    async fn append(&self, append: Append) -> Result<Appended> {
        let (done, rx) = oneshot::channel();
        // Canonicalize the body here, in the caller's task, not in the serial writer.
        let mut append = append;
        let body_jcs = append.take_canonical_body();
        self.appends
            .send(Job {
                append,
                body_jcs,
                done,
            })
            .await
            .map_err(|_| unavailable("the append writer stopped"))?;
        rx.await
            .map_err(|_| unavailable("the append was dropped"))?
    }

    async fn log(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {LOG_COLUMNS} FROM log
                     WHERE ($1::TEXT IS NULL OR identity = $1) AND ($2::TEXT IS NULL OR grant_name = $2)
                       AND ($3::TEXT IS NULL OR node = $3) AND ($4::TEXT IS NULL OR outcome = $4)
                       AND ($5::BIGINT IS NULL OR time_ms >= $5) AND ($6::BIGINT IS NULL OR time_ms < $6)
                       AND seq > $7
                     ORDER BY seq LIMIT $8"
                ),
                &[&q.identity, &q.grant, &q.node, &q.outcome, &q.since_ms, &q.until_ms, &q.after_seq.unwrap_or(0), &limit],
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn decision_rows(
        &self,
        after_seq: i64,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, time_ms, request_id, identity, grant_name, node, outcome, body FROM log
                 WHERE seq > $1 AND kind IN ('decision', 'intent') AND ($2::BIGINT IS NULL OR time_ms >= $2)
                 ORDER BY seq LIMIT $3",
                &[&after_seq, &since_ms, &limit],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows
            .iter()
            .map(|r| DecisionRow {
                seq: r.get(0),
                time_ms: r.get(1),
                request_id: r.get(2),
                identity: r.get(3),
                grant: r.get(4),
                node: r.get(5),
                outcome: r.get(6),
                body: r.get(7),
            })
            .collect())
    }

    async fn log_for_request(&self, request_id: &str) -> Result<Vec<LogRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {LOG_COLUMNS} FROM log WHERE request_id = $1 ORDER BY seq"),
                &[&request_id],
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn head(&self) -> Result<(i64, String)> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT seq, hash FROM log_head WHERE id = 1", &[])
            .await
            .map_err(map_pg)?;
        Ok(row.map_or((0, GENESIS.to_owned()), |r| (r.get(0), r.get(1))))
    }

    async fn rule_set(&self, hash: &str) -> Result<Option<String>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM rule_sets WHERE hash = $1", &[&hash])
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO checkpoints(seq, hash, time_ms, jws) VALUES ($1, $2, $3, $4)",
                &[&cp.seq, &cp.hash, &cp.time_ms, &cp.jws],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, hash, time_ms, jws FROM checkpoints ORDER BY seq",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint::from_stored(r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn budget(&self, key: &str) -> Result<Option<BudgetSnapshot>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT balance_milli, updated_at_ms FROM budgets WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| BudgetSnapshot {
            balance_milli: r.get(0),
            updated_at_ms: r.get(1),
        }))
    }

    async fn top_up(
        &self,
        key: &str,
        policy: &BudgetPolicy,
        tokens: u64,
        now_ms: i64,
    ) -> Result<BudgetSnapshot> {
        let client = self.client().await?;
        let (cap, per) = bucket_params(policy);
        ensure_bucket(&**client, key, cap, now_ms).await?;
        let add = cost_milli(tokens);
        let row = match per {
            Some(per) => {
                client
                    .query_one(
                        &format!(
                            "UPDATE budgets SET balance_milli = ({AVAIL_EVERY}) + $4, updated_at_ms = GREATEST(updated_at_ms, $2)
                             WHERE key = $5 RETURNING balance_milli, updated_at_ms"
                        ),
                        &[&cap, &now_ms, &per, &add, &key],
                    )
                    .await
            }
            None => {
                client
                    .query_one(
                        "UPDATE budgets SET balance_milli = balance_milli + $2, updated_at_ms = GREATEST(updated_at_ms, $1)
                         WHERE key = $3 RETURNING balance_milli, updated_at_ms",
                        &[&now_ms, &add, &key],
                    )
                    .await
            }
        }
        .map_err(map_pg)?;
        Ok(BudgetSnapshot {
            balance_milli: row.get(0),
            updated_at_ms: row.get(1),
        })
    }

    async fn refund(&self, key: &str, policy: &BudgetPolicy, cost: u64, now_ms: i64) -> Result<()> {
        let client = self.client().await?;
        let (cap, per) = bucket_params(policy);
        let add = cost_milli(cost);
        match per {
            Some(per) => {
                client
                    .execute(
                        &format!(
                            "UPDATE budgets SET balance_milli = CASE WHEN ({AVAIL_EVERY}) > $1 THEN ({AVAIL_EVERY}) + $4
                                                                     ELSE LEAST($1, ({AVAIL_EVERY}) + $4) END,
                                                updated_at_ms = GREATEST(updated_at_ms, $2)
                             WHERE key = $5"
                        ),
                        &[&cap, &now_ms, &per, &add, &key],
                    )
                    .await
            }
            None => {
                client
                    .execute(
                        "UPDATE budgets SET balance_milli = CASE WHEN balance_milli > $1 THEN balance_milli + $3
                                                                 ELSE LEAST($1, balance_milli + $3) END,
                                            updated_at_ms = GREATEST(updated_at_ms, $2)
                         WHERE key = $4",
                        &[&cap, &now_ms, &add, &key],
                    )
                    .await
            }
        }
        .map_err(map_pg)?;
        Ok(())
    }

    async fn create_join_token(
        &self,
        token_hash: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO join_tokens(token_hash, node, expires_at_ms) VALUES ($1, $2, $3)",
                &[&token_hash, &node, &expires_at_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }

    async fn consume_join_token(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE join_tokens SET used_at_ms = $2 WHERE token_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2
                 RETURNING node",
                &[&token_hash, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn node_enrolled(&self, node: &str, serial: &str, now_ms: i64) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES ($1, $2, NULL, 1, $3) ON CONFLICT (node) DO UPDATE SET serial = excluded.serial, new_serial = NULL, generation = node_svids.generation + 1, updated_at_ms = excluded.updated_at_ms RETURNING generation",
                &[&node, &serial, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.get(0))
    }

    async fn node_renewed(
        &self,
        node: &str,
        presented: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<NodeRenewal> {
        let client = self.client().await?;
        let renew = || async {
            client
                .query_opt(
                    "UPDATE node_svids SET serial = CASE WHEN new_serial = $2 THEN new_serial ELSE serial END, new_serial = $3, updated_at_ms = $4 WHERE node = $1 AND (serial = $2 OR new_serial = $2) RETURNING generation",
                    &[&node, &presented, &new, &now_ms],
                )
                .await
                .map_err(map_pg)
                .map(|row| row.map(|r| r.get::<_, i64>(0)))
        };
        if let Some(generation) = renew().await? {
            return Ok(NodeRenewal::Renewed { generation });
        }
        // No lineage yet (enrolled before they were kept): it starts with
        // the SVID presented (once, across replicas).
        client
            .execute(
                "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES ($1, $2, NULL, 1, $3) ON CONFLICT (node) DO NOTHING",
                &[&node, &presented, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        if let Some(generation) = renew().await? {
            return Ok(NodeRenewal::Renewed { generation });
        }
        let row = client
            .query_one(
                "SELECT generation FROM node_svids WHERE node = $1",
                &[&node],
            )
            .await
            .map_err(map_pg)?;
        Ok(NodeRenewal::Stale {
            generation: row.get(0),
        })
    }

    async fn consume_ci_jti(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM ci_jtis WHERE expires_at_ms <= $1", &[&now_ms])
            .await
            .map_err(map_pg)?;
        // Atomic across replicas: the primary key admits one insert.
        let n = client
            .execute(
                "INSERT INTO ci_jtis(key, expires_at_ms) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &expires_at_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(n == 1)
    }

    async fn create_entry(&self, e: &Entry) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO entries(id, spiffe_id, parent, selectors, grants, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &e.id,
                    &e.spiffe_id,
                    &e.parent,
                    &serde_json::to_string(&e.selectors).unwrap_or_default(),
                    &serde_json::to_string(&e.grants).unwrap_or_default(),
                    &e.created_at_ms,
                ],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }

    async fn entries(&self, parent: Option<&str>) -> Result<Vec<Entry>> {
        const COLUMNS: &str =
            "SELECT id, spiffe_id, parent, selectors, grants, created_at_ms FROM entries";
        let client = self.client().await?;
        // Two statements, so one parent's read is an index search under a
        // generic plan too (`$1 IS NULL OR parent = $1` would scan).
        let rows = match parent {
            Some(parent) => {
                client
                    .query(
                        &format!("{COLUMNS} WHERE parent = $1 ORDER BY created_at_ms, id"),
                        &[&parent],
                    )
                    .await
            }
            None => {
                client
                    .query(&format!("{COLUMNS} ORDER BY created_at_ms, id"), &[])
                    .await
            }
        }
        .map_err(map_pg)?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let parse = |s: String| {
                    serde_json::from_str(&s)
                        .map_err(|e| StoreError::Corrupt(format!("entry {id}: {e}")))
                };
                Ok(Entry {
                    spiffe_id: r.get(1),
                    parent: r.get(2),
                    selectors: parse(r.get(3))?,
                    grants: parse(r.get(4))?,
                    created_at_ms: r.get(5),
                    id: id.clone(),
                })
            })
            .collect()
    }

    async fn delete_entry(&self, id: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM entries WHERE id = $1", &[&id])
            .await
            .map_err(map_pg)?
            == 1)
    }

    async fn lease(&self, id: &str) -> Result<Option<Lease>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(map_pg)?;
        row.as_ref().map(row_to_lease).transpose()
    }

    async fn leases(&self, query: &LeaseQuery) -> Result<Vec<Lease>> {
        let (clauses, values) = query.sql(|n| format!("${n}"));
        let values: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = values
            .into_iter()
            .map(|v| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match v {
                    SqlValue::Text(t) => Box::new(t),
                    SqlValue::Int(i) => Box::new(i),
                }
            })
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {LEASE_COLUMNS} FROM leases {clauses}"),
                &params,
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(row_to_lease).collect()
    }

    async fn revoke_lease(&self, id: &str, now_ms: i64) -> Result<bool> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE leases SET revoked_at_ms = $2, task_ended_at_ms = COALESCE(task_ended_at_ms, $2)
                 WHERE id = $1 AND revoked_at_ms IS NULL",
                &[&id, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(changed == 1)
    }

    async fn end_task(&self, id: &str, now_ms: i64) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE leases SET task_ended_at_ms = $2 WHERE id = $1 AND task_ended_at_ms IS NULL",
                &[&id, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(n == 1)
    }

    /// Takes the chain head's lock first, as every append does: at READ
    /// COMMITTED an append's suspension check sees only what committed
    /// before it ran, so without the lock a batch that checked just before
    /// this commit could commit its lease after the caller listed the
    /// leases to revoke. With it, the batch either runs after this commit
    /// (and its check sees the suspension) or commits before it (and its
    /// lease is listed).
    async fn suspend(&self, s: &SuspensionRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_pg)?;
        tx.query_one("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(map_pg)?;
        tx.execute(
            "INSERT INTO suspensions(subject, reason, by_whom, at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (subject) DO UPDATE SET reason = EXCLUDED.reason, by_whom = EXCLUDED.by_whom, at_ms = EXCLUDED.at_ms",
            &[&s.subject, &s.reason, &s.by, &s.at_ms],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)
    }

    async fn resume(&self, subject: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM suspensions WHERE subject = $1", &[&subject])
            .await
            .map_err(map_pg)?
            == 1)
    }

    async fn prune_through(&self, seq: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_pg)?;
        // Serialize with appends (they hold this lock while extending the chain).
        tx.query_one("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(map_pg)?;
        let row = tx
            .query_opt("SELECT hash FROM log WHERE seq = $1", &[&seq])
            .await
            .map_err(map_pg)?;
        let hash: String = row
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Conflict(format!("record {seq} is not in the log")))?;
        let deleted = tx
            .execute("DELETE FROM log WHERE seq <= $1", &[&seq])
            .await
            .map_err(map_pg)?;
        tx.execute(
            "INSERT INTO log_base(id, seq, hash) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            &[&seq, &hash],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)?;
        Ok(deleted)
    }

    async fn base(&self) -> Result<Option<(i64, String)>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT seq, hash FROM log_base WHERE id = 1", &[])
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn put_signal(&self, sig: &SignalRecord) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO signals(subject, kind, source, value, observed_at_ms, ttl_seconds) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (subject, kind, source) DO UPDATE SET value = EXCLUDED.value,
                    observed_at_ms = EXCLUDED.observed_at_ms, ttl_seconds = EXCLUDED.ttl_seconds",
                &[
                    &sig.subject,
                    &sig.kind,
                    &sig.source,
                    &i16::from(sig.value),
                    &sig.observed_at_ms,
                    &i64::try_from(sig.ttl_seconds).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }

    async fn signals(&self, subjects: &[&str]) -> Result<Vec<SignalRecord>> {
        let subjects: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT subject, kind, source, value, observed_at_ms, ttl_seconds FROM signals
                 WHERE subject = ANY($1) ORDER BY subject, kind, source",
                &[&subjects],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows
            .iter()
            .map(|r| SignalRecord {
                subject: r.get(0),
                kind: r.get(1),
                source: r.get(2),
                value: u8::try_from(r.get::<_, i16>(3)).unwrap_or(0),
                observed_at_ms: r.get(4),
                ttl_seconds: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
            })
            .collect())
    }

    async fn create_approval(&self, a: &Approval) -> Result<()> {
        let body = serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO approvals(id, created_at_ms, version, body) VALUES ($1, $2, $3, $4)",
                &[&a.id, &a.created_at_ms, &a.version, &body],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM approvals WHERE id = $1", &[&id])
            .await
            .map_err(map_pg)?;
        row.map(|r| {
            serde_json::from_str(r.get::<_, &str>(0))
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }

    async fn approvals(&self, since_ms: i64) -> Result<Vec<Approval>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT body FROM approvals WHERE created_at_ms > $1 ORDER BY created_at_ms DESC LIMIT 1000",
                &[&since_ms],
            )
            .await
            .map_err(map_pg)?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn update_approval(&self, a: &Approval) -> Result<bool> {
        let mut next = a.clone();
        next.version += 1;
        let body = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE approvals SET version = version + 1, body = $1 WHERE id = $2 AND version = $3",
                &[&body, &a.id, &a.version],
            )
            .await
            .map_err(map_pg)?
            == 1)
    }

    async fn suspension(&self, subject: &str) -> Result<Option<SuspensionRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT subject, reason, by_whom, at_ms FROM suspensions WHERE subject = $1",
                &[&subject],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| SuspensionRecord {
            subject: r.get(0),
            reason: r.get(1),
            by: r.get(2),
            at_ms: r.get(3),
        }))
    }

    async fn suspended_subjects(&self) -> Result<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query("SELECT subject FROM suspensions ORDER BY subject", &[])
            .await
            .map_err(map_pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_choose_tls_like_libpq_and_keep_the_rest() {
        let mode = |url: &str| connection(url).map(|(c, _)| c.get_ssl_mode());
        assert_eq!(mode("postgres://u@db/m").unwrap(), SslMode::Disable);
        assert_eq!(
            mode("postgres://u@db/m?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://u@db/m?sslmode=prefer").unwrap(),
            SslMode::Prefer
        );
        for verified in ["require", "verify-ca", "verify-full"] {
            assert_eq!(
                mode(&format!("postgres://u@db/m?sslmode={verified}")).unwrap(),
                SslMode::Require
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca.pem");
        let authority = mintguard_certs::ca::Authority::generate(
            &mintguard_certs::id::parse_trust_domain("example.org").unwrap(),
            std::time::Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        std::fs::write(&ca, authority.cert_pem()).unwrap();
        let escaped = ca.display().to_string().replace(' ', "%20");
        let (config, _) = connection(&format!(
            "postgres://u:pw@db:5433/m?connect_timeout=3&sslrootcert={escaped}&application_name=mg"
        ))
        .unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            SslMode::Require,
            "sslrootcert implies require"
        );
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(config.get_application_name(), Some("mg"));
        assert_eq!(config.get_ports(), [5433]);

        let refused = |url: &str| connection(url).map(|_| ()).unwrap_err().to_string();
        assert!(refused("postgres://u@db/m?sslmode=maybe").contains("sslmode=maybe"));
        assert!(
            refused(&format!(
                "postgres://u@db/m?sslmode=disable&sslrootcert={escaped}"
            ))
            .contains("sslrootcert with sslmode=disable")
        );
        assert!(
            refused("postgres://u@db/m?sslrootcert=/nonexistent/ca.pem")
                .contains("/nonexistent/ca.pem")
        );
        assert!(refused("postgres://u@db/m?nonsense=1").contains("store url"));
        // A '?' in the password is not where the query starts.
        let (config, _) = connection("postgres://u:p%3Fw?x@db/m?sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_dbname(), Some("m"));
    }

    #[test]
    fn only_clear_text_off_this_machine_is_warned_about() {
        let off = |url: &str| plaintext_off_host(&connection(url).unwrap().0);
        assert!(off("postgres://u@db.example.org/m"));
        assert!(off("postgres://u@10.0.0.5/m?sslmode=disable"));
        assert!(!off("postgres://u@127.0.0.1/m"));
        assert!(!off("postgres://u@localhost/m"));
        assert!(!off("postgres://u@db.example.org/m?sslmode=require"));
    }
}
