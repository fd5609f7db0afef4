//! The embedded store: SQLite in WAL mode with `synchronous=FULL` (every
//! commit is durable). One writer thread owns the write connection and
//! group-commits: it drains the queue of pending writes into one transaction
//! (one fsync), each write in its own savepoint so one failure does not undo
//! the others. Reads use a separate connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Append, Appended, ChainHead, Entry, Lease, LeaseQuery, LogQuery, NodeRenewal, Result, SpendOp,
    SqlValue, Store, StoreError, SuspensionRecord, bucket_params, cost_milli, mark_final_outcome,
    refusal,
};
use crate::log::checkpoint::Checkpoint;
use crate::log::{GENESIS, Head, LogEntry, LogRecord, RecordKind};
use crate::store::migrations::SchemaUse;
use crate::store::{Approval, DecisionRow, RequestState, SignalRecord};

mod hot;
use super::{ApprovalStore, BudgetStore, LeaseStore, LogStore, RegistryStore, SubjectStore};

mod approvals;
pub mod bodies;
mod budgets;
mod leases;
mod log;
mod registry;
mod subjects;
mod writer;

use writer::*;

/// Most writes group-committed in one transaction.
pub const MAX_BATCH: usize = 256;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn map_sql(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        // A stored value this broker cannot read (an unknown lease kind or
        // revocation): the data, not the database, is at fault.
        rusqlite::Error::FromSqlConversionFailure(..) => StoreError::Corrupt(e.to_string()),
        _ => unavailable(e),
    }
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Setup(format!("{}: {e}", path.display())))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
    )
    .map_err(|e| StoreError::Setup(format!("{}: {e}", path.display())))?;
    // Every hot statement stays prepared (rusqlite's default keeps 16).
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

fn migrate(conn: &mut Connection, schema: SchemaUse) -> Result<()> {
    let setup = |e: rusqlite::Error| StoreError::Setup(format!("migration: {e}"));
    if schema == SchemaUse::Existing {
        let found: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .ok()
            .flatten();
        return match super::migrations::not_as_built(found) {
            Some(refusal) => Err(StoreError::Setup(refusal)),
            None => Ok(()),
        };
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
    )
    .map_err(setup)?;
    let found: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(setup)?;
    if let Some(refusal) = super::migrations::too_new(found) {
        return Err(StoreError::Setup(refusal));
    }
    for (version, sql) in super::migrations::rendered(super::migrations::Dialect::Sqlite) {
        let tx = conn.transaction().map_err(setup)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(setup)?;
        if done.is_none() {
            tx.execute_batch(&sql).map_err(setup)?;
            tx.execute(
                "INSERT INTO schema_migrations(version) VALUES (?1)",
                [version],
            )
            .map_err(setup)?;
        }
        tx.commit().map_err(setup)?;
    }
    Ok(())
}

/// A log row: the record (its body still unread), its kind and its stored body.
type LogRow = (LogRecord, String, rusqlite::types::Value);

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    let kind: String = r.get(2)?;
    Ok((
        LogRecord {
            chain: String::new(),
            seq: r.get(0)?,
            entry: LogEntry {
                time_ms: r.get(1)?,
                kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Admin),
                request_id: r.get(3)?,
                identity: r.get(4)?,
                grant: r.get(5)?,
                node: r.get(6)?,
                outcome: r.get(7)?,
                body: serde_json::Value::Null,
            },
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
        },
        kind,
        r.get(8)?,
    ))
}

/// Reads the body and checks the kind; a row that does not decode is
/// reported as corrupt (verification then names it).
fn finish_record(
    bodies: &bodies::Bodies,
    conn: &Connection,
    (mut record, kind, body): LogRow,
    budget: &mut bodies::ReadBudget,
) -> Result<LogRecord> {
    if RecordKind::parse(&kind).is_none() {
        return Err(StoreError::Corrupt(format!(
            "record {}: unknown kind {kind:?}",
            record.seq
        )));
    }
    let seq = record.seq;
    let body = bodies
        .decode(conn, (&body).into(), budget)
        .map_err(|e| StoreError::Corrupt(format!("record {seq}: {e}")))?;
    record.entry.body = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("record {seq}: body is not JSON: {e}")))?;
    Ok(record)
}

fn read_budget(conn: &Connection, key: &str) -> Result<Option<BudgetSnapshot>> {
    conn.prepare_cached("SELECT balance_milli, updated_at_ms FROM budgets WHERE key = ?1")
        .map_err(map_sql)?
        .query_row([key], |r| {
            Ok(BudgetSnapshot {
                balance_milli: r.get(0)?,
                updated_at_ms: r.get(1)?,
            })
        })
        .optional()
        .map_err(map_sql)
}

fn read_suspension(conn: &Connection, subject: &str) -> Result<Option<SuspensionRecord>> {
    conn.prepare_cached(
        "SELECT subject, reason, by_whom, at_ms FROM suspensions WHERE subject = ?1",
    )
    .map_err(map_sql)?
    .query_row([subject], |r| {
        Ok(SuspensionRecord {
            subject: r.get(0)?,
            reason: r.get(1)?,
            by: r.get(2)?,
            at_ms: r.get(3)?,
        })
    })
    .optional()
    .map_err(map_sql)
}

fn signal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SignalRecord> {
    Ok(SignalRecord {
        subject: r.get(0)?,
        kind: r.get(1)?,
        source: r.get(2)?,
        value: r.get(3)?,
        observed_at_ms: r.get(4)?,
        ttl_seconds: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
    })
}

/// A subject's suspension and signals (what every decision reads).
fn read_subject(conn: &Connection, subject: &str) -> Result<hot::SubjectState> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT subject, kind, source, value, observed_at_ms, ttl_seconds FROM signals
             WHERE subject = ?1 ORDER BY kind, source",
        )
        .map_err(map_sql)?;
    let rows = stmt.query_map([subject], signal_row).map_err(map_sql)?;
    Ok(hot::SubjectState {
        suspension: read_suspension(conn, subject)?,
        signals: rows.map(|r| r.map_err(map_sql)).collect::<Result<_>>()?,
    })
}

fn read_signals(conn: &Connection, subjects: &[&str]) -> Result<Vec<SignalRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT subject, kind, source, value, observed_at_ms, ttl_seconds FROM signals
             WHERE subject IN (SELECT value FROM json_each(?1)) ORDER BY subject, kind, source",
        )
        .map_err(map_sql)?;
    let list = serde_json::to_string(subjects).unwrap_or_default();
    let rows = stmt.query_map([list], signal_row).map_err(map_sql)?;
    rows.map(|r| r.map_err(map_sql)).collect()
}

/// A column holding one of a closed set's string forms; another value is an
/// error the read reports, never a default.
fn closed_form<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = crate::lease::UnknownForm>,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e: crate::lease::UnknownForm| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn row_to_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        id: r.get(0)?,
        request_id: r.get(1)?,
        identity: r.get(2)?,
        grant: r.get(3)?,
        node: r.get(4)?,
        kind: closed_form(r, 5)?,
        revocation: closed_form(r, 6)?,
        issued_at_ms: r.get(7)?,
        expires_at_ms: r.get(8)?,
        revoked_at_ms: r.get(9)?,
        task_ended_at_ms: r.get(10)?,
    })
}

/// The registration entries (of one parent: an index search), oldest first.
fn read_entries(conn: &Connection, parent: Option<&str>) -> Result<Vec<Entry>> {
    const COLUMNS: &str =
        "SELECT id, spiffe_id, parent, selectors, grants, created_at_ms FROM entries";
    let row = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get(5)?,
        ))
    };
    let rows: Vec<_> = match parent {
        Some(parent) => conn
            .prepare_cached(&format!(
                "{COLUMNS} WHERE parent = ?1 ORDER BY created_at_ms, id"
            ))
            .and_then(|mut stmt| stmt.query_map([parent], row)?.collect())
            .map_err(map_sql)?,
        None => conn
            .prepare_cached(&format!("{COLUMNS} ORDER BY created_at_ms, id"))
            .and_then(|mut stmt| stmt.query_map([], row)?.collect())
            .map_err(map_sql)?,
    };
    rows.into_iter()
        .map(
            |(id, spiffe_id, parent, selectors, grants, created_at_ms)| {
                let parse = |s: &str| {
                    serde_json::from_str(s)
                        .map_err(|e| StoreError::Corrupt(format!("entry {id}: {e}")))
                };
                Ok(Entry {
                    selectors: parse(&selectors)?,
                    grants: parse(&grants)?,
                    id,
                    spiffe_id,
                    parent,
                    created_at_ms,
                })
            },
        )
        .collect()
}

const LEASE_COLUMNS: &str = "id, request_id, identity, grant_name, node, kind, revocation, issued_at_ms, expires_at_ms, revoked_at_ms, task_ended_at_ms";
const LOG_COLUMNS: &str =
    "seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash";

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// How record bodies are stored ([`bodies`]).
    bodies: Arc<bodies::Bodies>,
    readers: Arc<Vec<Mutex<Connection>>>,
    hot: Arc<hot::Hot>,
    path: PathBuf,
}

/// Read connections (WAL lets readers run beside the writer).
const READERS: usize = 4;

/// Runs `f` on a free read connection (or waits for the first).
fn with_reader<T>(
    readers: &[Mutex<Connection>],
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    for reader in readers {
        if let Ok(conn) = reader.try_lock() {
            return f(&conn);
        }
    }
    let conn = readers[0]
        .lock()
        .map_err(|_| unavailable("read connection poisoned"))?;
    f(&conn)
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SchemaUse::Migrate)
    }

    /// Opens the database at `path`, its schema met as `schema` says (a
    /// reader's must exist, at this build's version).
    pub fn open_with(path: &Path, schema: SchemaUse) -> Result<Self> {
        if schema == SchemaUse::Existing && !path.is_file() {
            return Err(StoreError::Setup(format!(
                "{}: no such file",
                path.display()
            )));
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = open(path)?;
        migrate(&mut conn, schema)?;
        let head = conn
            .query_row(
                "SELECT seq, hash, time_ms FROM log ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(Head {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                        time_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| StoreError::Setup(e.to_string()))?
            .unwrap_or_else(Head::genesis);
        let suspended = suspended_subjects(&conn)?;
        let bodies = Arc::new(bodies::Bodies::load(&conn)?);
        let hot = Arc::new(hot::Hot::default());
        hot.watch(&mut conn)
            .map_err(|e| StoreError::Setup(format!("update hook: {e}")))?;
        let writer_hot = hot.clone();
        let readers = (0..READERS)
            .map(|_| open(path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let (jobs, mut rx) = mpsc::channel::<Job>(4096);
        let mut writer = Writer {
            conn,
            bodies: bodies.clone(),
            head,
            known_rule_sets: std::collections::HashSet::new(),
            suspended,
            resumed: Vec::new(),
        };
        std::thread::Builder::new()
            .name("mintguard-sqlite-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let head = writer.head.clone();
                    if exec(&writer.conn, "BEGIN IMMEDIATE").is_err() {
                        // Dropping the jobs drops their senders: each caller
                        // sees its write refused as unavailable.
                        drop(batch);
                        continue;
                    }
                    let completions: Vec<Completion> =
                        batch.into_iter().map(|job| job(&mut writer)).collect();
                    let committed = exec(&writer.conn, "COMMIT").map_err(unavailable);
                    let resumed = std::mem::take(&mut writer.resumed);
                    if committed.is_ok() {
                        for subject in &resumed {
                            writer.suspended.remove(subject);
                        }
                    }
                    if committed.is_err() {
                        let _ = exec(&writer.conn, "ROLLBACK");
                        writer.known_rule_sets.clear();
                        if let Ok(s) = suspended_subjects(&writer.conn) {
                            writer.suspended = s;
                        }
                        writer.head = head;
                    }
                    writer_hot.transaction_ended();
                    for done in completions {
                        done(
                            committed
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| StoreError::Unavailable(e.to_string())),
                        );
                    }
                }
            })
            .map_err(|e| StoreError::Setup(format!("writer thread: {e}")))?;
        Ok(Self {
            jobs,
            bodies,
            readers: Arc::new(readers),
            hot,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer, in its own savepoint of the next group commit;
    /// resolves once the commit is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        write_on(&self.jobs, f).await
    }

    /// Trains the first body dictionary on `samples` off the request path,
    /// stores it, then compresses new bodies with it. A dictionary that
    /// cannot be trained or stored leaves bodies compressed without one.
    fn train_dictionary(&self, samples: Vec<Vec<u8>>) {
        let (jobs, bodies) = (self.jobs.clone(), self.bodies.clone());
        tokio::spawn(async move {
            let trained = tokio::task::spawn_blocking(move || bodies::Bodies::train(&samples))
                .await
                .map_err(unavailable)
                .and_then(|trained| trained);
            let stored = match trained {
                Ok((id, dict)) => {
                    let kept = dict.clone();
                    let now = crate::clock::now_ms();
                    write_on(&jobs, move |w| {
                        bodies::Bodies::store(&w.conn, id, &kept, now)
                    })
                    .await
                    .map(|()| (id, dict))
                }
                Err(e) => Err(e),
            };
            match stored {
                Ok((id, dict)) => {
                    tracing::info!(
                        dictionary = id,
                        bytes = dict.len(),
                        "record bodies are compressed with a dictionary trained on this store's records"
                    );
                    bodies.install(id, &dict);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no body dictionary: bodies stay compressed without one")
                }
            }
        });
    }
}

/// Runs `f` on the writer behind `jobs`, in its own savepoint of the next
/// group commit; resolves once the commit is durable.
async fn write_on<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |writer| {
        let result = writer.savepoint(f);
        Box::new(move |committed: Result<()>| {
            let _ = tx.send(committed.and(result));
        })
    });
    jobs.send(job)
        .await
        .map_err(|_| unavailable("the writer thread stopped"))?;
    rx.await
        .map_err(|_| unavailable("the write was dropped (the batch could not begin)"))?
}

impl SqliteStore {
    /// Runs a short point read inline on a read connection: a SQLite point
    /// lookup takes microseconds, less than a hop to the blocking pool.
    fn read_now<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        with_reader(&self.readers, f)
    }

    /// Runs a read on a read connection, in the blocking pool (scans).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || with_reader(&readers, f))
            .await
            .map_err(unavailable)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    /// SQLite serves one broker (replicas share PostgreSQL): it always leads.
    fn leader(&self) -> Box<dyn super::Leader> {
        Box::new(super::SoleLeader)
    }
    async fn request_state(
        &self,
        identity: &str,
        issuer: &str,
        budget_key: Option<&str>,
    ) -> Result<RequestState> {
        let cached = self.hot.lookup(identity, issuer, budget_key);
        let (identity_state, issuer_state, budget) = match cached {
            hot::Cached {
                identity: Some(i),
                issuer: Some(n),
                budget,
                ..
            } if budget.is_some() || budget_key.is_none() => (i, n, budget.flatten()),
            cached => {
                let (i, n, budget) = self.read_now(|conn| {
                    // One read transaction: one snapshot, one WAL read lock.
                    exec(conn, "BEGIN")?;
                    let state = (|| {
                        let subject = |cached: Option<hot::SubjectState>, subject| match cached {
                            Some(state) => Ok(state),
                            None => read_subject(conn, subject),
                        };
                        Ok((
                            subject(cached.identity, identity)?,
                            subject(cached.issuer, issuer)?,
                            match (budget_key, cached.budget) {
                                (None, _) => None,
                                (Some(_), Some(snapshot)) => snapshot,
                                (Some(key), None) => read_budget(conn, key)?,
                            },
                        ))
                    })();
                    if let Err(e) = exec(conn, "COMMIT") {
                        // Never leave a read connection inside a transaction.
                        let _ = exec(conn, "ROLLBACK");
                        return Err(e);
                    }
                    state
                })?;
                self.hot.fill(
                    cached.generation,
                    &[(identity, &i), (issuer, &n)],
                    budget_key.map(|k| (k, budget)),
                );
                (i, n, budget)
            }
        };
        Ok(RequestState {
            signals: hot::signal_pair((identity, &identity_state), (issuer, &issuer_state)),
            identity_suspension: identity_state.suspension,
            issuer_suspension: issuer_state.suspension,
            budget,
        })
    }
}
