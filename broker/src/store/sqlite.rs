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
    Append, Appended, Entry, Lease, LeaseQuery, LogQuery, NodeRenewal, Result, SpendOp, SqlValue,
    Store, StoreError, SuspensionRecord, bucket_params, cost_milli,
};
use crate::log::checkpoint::Checkpoint;
use crate::log::{GENESIS, LogEntry, LogRecord, RecordKind};
use crate::store::{Approval, DecisionRow, RequestState, SignalRecord};

mod hot;

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

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn FnOnce(&mut Writer) -> Completion + Send>;

/// The writer thread's state: the write connection and the chain head.
struct Writer {
    conn: Connection,
    head_seq: i64,
    head_hash: String,
    /// Rule-set hashes committed to `rule_sets` (cleared on any rollback), so
    /// a record needs no insert for a rule set already stored.
    known_rule_sets: std::collections::HashSet<String>,
    /// The suspended subjects: only this thread writes the table, so an
    /// append checks them without a query. A suspension enters at once (a
    /// rollback leaves it in: refusing too much, never too little, until the
    /// reload); a resume leaves only once its batch committed.
    suspended: std::collections::HashSet<String>,
    /// Resumes of the open batch, applied to `suspended` after its COMMIT.
    resumed: Vec<String>,
}

/// Every suspended subject.
fn suspended_subjects(conn: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT subject FROM suspensions")
        .map_err(map_sql)?;
    let rows = stmt.query_map([], |r| r.get(0)).map_err(map_sql)?;
    rows.map(|r| r.map_err(map_sql)).collect()
}

/// Runs one statement through the statement cache (no re-parse per call).
fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(map_sql)
}

impl Writer {
    /// Runs `f` in a savepoint: its writes are undone if it fails.
    fn savepoint<T>(&mut self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        exec(&self.conn, "SAVEPOINT job")?;
        let head = (self.head_seq, self.head_hash.clone());
        match f(self) {
            Ok(v) => {
                exec(&self.conn, "RELEASE job")?;
                Ok(v)
            }
            Err(e) => {
                let _ = exec(&self.conn, "ROLLBACK TO job")
                    .and_then(|()| exec(&self.conn, "RELEASE job"));
                // A rolled-back job may have stored a rule set. (Suspend and
                // resume jobs change `suspended` only once their statement
                // succeeded, and then cannot fail.)
                self.known_rule_sets.clear();
                (self.head_seq, self.head_hash) = head;
                Err(e)
            }
        }
    }

    fn append(&mut self, append: Append, mut body_jcs: String) -> Result<Appended> {
        let Append {
            mut entry,
            spend,
            lease,
            rule_set,
            refuse_if_suspended,
            refuse_if_lease_closed,
            ..
        } = append;
        let suspended = refuse_if_suspended
            .iter()
            .any(|s| self.suspended.contains(s));
        let lease_closed = match &refuse_if_lease_closed {
            Some(id) => {
                self.conn
                    .prepare_cached("SELECT revoked_at_ms IS NULL FROM leases WHERE id = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row([id], |row| row.get::<_, bool>(0)).optional()
                    })
                    .map_err(map_sql)?
                    != Some(true)
            }
            None => false,
        };
        let spent = !suspended
            && !lease_closed
            && (spend.is_empty() || self.try_spend(&spend, entry.time_ms)?);
        if suspended {
            body_jcs = mark_final_outcome(&mut entry, &body_jcs, "suspended")?;
        } else if lease_closed {
            body_jcs = mark_final_outcome(&mut entry, &body_jcs, "lease_closed")?;
        } else if !spent {
            body_jcs = mark_final_outcome(&mut entry, &body_jcs, "budget_exhausted")?;
        }
        if let Some((hash, body)) = &rule_set
            && !self.known_rule_sets.contains(hash)
        {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO rule_sets(hash, body) VALUES (?1, ?2)")
                .and_then(|mut stmt| stmt.execute(params![hash, body.as_ref()]))
                .map_err(map_sql)?;
            self.known_rule_sets.insert(hash.clone());
        }
        if spent && let Some(lease) = &lease {
            insert_lease(&self.conn, lease)?;
        }
        let record =
            LogRecord::seal_canonical(self.head_seq + 1, entry, &body_jcs, self.head_hash.clone());
        let e = &record.entry;
        self.conn
            .prepare_cached(
                "INSERT INTO log(seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut stmt| stmt.execute(
                params![
                    record.seq,
                    e.time_ms,
                    e.kind.as_str(),
                    e.request_id,
                    e.identity,
                    e.grant,
                    e.node,
                    e.outcome,
                    body_jcs,
                    record.prev_hash,
                    record.hash
                ],
            ))
            .map_err(map_sql)?;
        self.head_seq = record.seq;
        self.head_hash = record.hash.clone();
        Ok(Appended {
            seq: record.seq,
            hash: record.hash,
            spent,
            suspended,
            lease_closed,
        })
    }

    /// All spends or none, each a conditional update computed in SQL.
    fn try_spend(&mut self, spend: &[SpendOp], now_ms: i64) -> Result<bool> {
        exec(&self.conn, "SAVEPOINT spend")?;
        for op in spend {
            if !spend_one(&self.conn, op, now_ms)? {
                exec(&self.conn, "ROLLBACK TO spend")?;
                exec(&self.conn, "RELEASE spend")?;
                return Ok(false);
            }
        }
        exec(&self.conn, "RELEASE spend")?;
        Ok(true)
    }
}

/// Records that a decision lost at write time (the budget race, or a
/// suspension that came first): its final outcome; returns the new canonical
/// body. (A body written directly, with `entry.body` left `Null`, is parsed
/// here: the tree is built only on this rare path.)
pub(crate) fn mark_final_outcome(
    entry: &mut LogEntry,
    body_jcs: &str,
    outcome: &str,
) -> Result<String> {
    if entry.body.is_null() {
        entry.body = serde_json::from_str(body_jcs)
            .map_err(|e| StoreError::Corrupt(format!("a record body is not JSON: {e}")))?;
    }
    entry.outcome = Some(outcome.into());
    if let Some(body) = entry.body.as_object_mut() {
        body.insert("final_outcome".into(), outcome.into());
    }
    Ok(crate::log::canonical_body(&entry.body))
}

/// The available-balance expression, in millitokens (see `BudgetSnapshot::available`).
fn available_sql(per_ms: Option<i64>) -> &'static str {
    match per_ms {
        None => "balance_milli",
        Some(_) => {
            "CASE WHEN balance_milli >= :cap THEN balance_milli
                  ELSE MIN(:cap, balance_milli + (MIN(MAX(:now - updated_at_ms, 0), :per) * :cap) / :per) END"
        }
    }
}

/// Creates a full bucket if `key` has none; whether it did.
fn ensure_bucket(conn: &Connection, key: &str, cap: i64, now_ms: i64) -> Result<bool> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO budgets(key, balance_milli, updated_at_ms) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut stmt| stmt.execute(params![key, cap, now_ms]))
    .map(|n| n == 1)
    .map_err(map_sql)
}

fn spend_one(conn: &Connection, op: &SpendOp, now_ms: i64) -> Result<bool> {
    let (cap, per) = bucket_params(&op.policy);
    if update_bucket(conn, op, cap, per, now_ms)? {
        return Ok(true);
    }
    // No row updated: the bucket is new (create it full) or cannot pay.
    if ensure_bucket(conn, &op.key, cap, now_ms)? {
        return update_bucket(conn, op, cap, per, now_ms);
    }
    Ok(false)
}

fn update_bucket(
    conn: &Connection,
    op: &SpendOp,
    cap: i64,
    per: Option<i64>,
    now_ms: i64,
) -> Result<bool> {
    let avail = available_sql(per);
    let sql = format!(
        "UPDATE budgets SET balance_milli = ({avail}) - :cost, updated_at_ms = MAX(updated_at_ms, :now)
         WHERE key = :key AND ({avail}) >= :cost"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(map_sql)?;
    let changed = match per {
        Some(per) => stmt.execute(rusqlite::named_params! {
            ":cap": cap, ":now": now_ms, ":per": per, ":cost": cost_milli(op.cost), ":key": op.key,
        }),
        None => stmt.execute(rusqlite::named_params! { ":now": now_ms, ":cost": cost_milli(op.cost), ":key": op.key }),
    }
    .map_err(map_sql)?;
    Ok(changed == 1)
}

fn insert_lease(conn: &Connection, l: &Lease) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO leases(id, request_id, identity, grant_name, node, kind, revocation, issued_at_ms, expires_at_ms,
                                revoked_at_ms, task_ended_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(map_sql)?;
    stmt.execute(params![
        l.id,
        l.request_id,
        l.identity,
        l.grant,
        l.node,
        l.kind.as_str(),
        l.revocation.as_str(),
        l.issued_at_ms,
        l.expires_at_ms,
        l.revoked_at_ms,
        l.task_ended_at_ms
    ])
    .map_err(map_sql)?;
    Ok(())
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

fn migrate(conn: &mut Connection) -> Result<()> {
    let setup = |e: rusqlite::Error| StoreError::Setup(format!("migration: {e}"));
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
    )
    .map_err(setup)?;
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

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LogRecord, String)> {
    let kind: String = r.get(2)?;
    let body: String = r.get(8)?;
    Ok((
        LogRecord {
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
        format!("{kind}\u{0}{body}"),
    ))
}

/// Parses the body and checks the kind; a row that does not parse is reported
/// as corrupt (verification then names it).
fn finish_record((mut record, raw): (LogRecord, String)) -> Result<LogRecord> {
    let (kind, body) = raw.split_once('\u{0}').unwrap_or_default();
    if RecordKind::parse(kind).is_none() {
        return Err(StoreError::Corrupt(format!(
            "record {}: unknown kind {kind:?}",
            record.seq
        )));
    }
    record.entry.body = serde_json::from_str(body).map_err(|e| {
        StoreError::Corrupt(format!("record {}: body is not JSON: {e}", record.seq))
    })?;
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
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = open(path)?;
        migrate(&mut conn)?;
        let (head_seq, head_hash) = conn
            .query_row(
                "SELECT seq, hash FROM log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| StoreError::Setup(e.to_string()))?
            .unwrap_or((0, GENESIS.to_owned()));
        let suspended = suspended_subjects(&conn)?;
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
            head_seq,
            head_hash,
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
                    let head = (writer.head_seq, writer.head_hash.clone());
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
                        (writer.head_seq, writer.head_hash) = head;
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
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |writer| {
            let result = writer.savepoint(f);
            Box::new(move |committed: Result<()>| {
                let _ = tx.send(committed.and(result));
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| unavailable("the writer thread stopped"))?;
        rx.await
            .map_err(|_| unavailable("the write was dropped (the batch could not begin)"))?
    }

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

    async fn append(&self, mut append: Append) -> Result<Appended> {
        // Canonicalize the body here, in the caller's task, not in the serial writer.
        let body_jcs = append.take_canonical_body();
        self.write(move |w| w.append(append, body_jcs)).await
    }

    async fn log(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        let q = q.clone();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {LOG_COLUMNS} FROM log
                 WHERE (?1 IS NULL OR identity = ?1) AND (?2 IS NULL OR grant_name = ?2) AND (?3 IS NULL OR node = ?3)
                   AND (?4 IS NULL OR outcome = ?4) AND (?5 IS NULL OR time_ms >= ?5) AND (?6 IS NULL OR time_ms < ?6)
                   AND seq > ?7
                 ORDER BY seq LIMIT ?8"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(map_sql)?;
            let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(
                    params![q.identity, q.grant, q.node, q.outcome, q.since_ms, q.until_ms, q.after_seq.unwrap_or(0), limit],
                    row_to_record,
                )
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql).and_then(finish_record)).collect()
        })
        .await
    }

    async fn decision_rows(
        &self,
        after_seq: i64,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, time_ms, request_id, identity, grant_name, node, outcome, body FROM log
                     WHERE seq > ?1 AND kind IN ('decision', 'intent') AND (?2 IS NULL OR time_ms >= ?2)
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(map_sql)?;
            let rows = stmt
                .query_map(params![after_seq, since_ms, limit], |r| {
                    Ok(DecisionRow {
                        seq: r.get(0)?,
                        time_ms: r.get(1)?,
                        request_id: r.get(2)?,
                        identity: r.get(3)?,
                        grant: r.get(4)?,
                        node: r.get(5)?,
                        outcome: r.get(6)?,
                        body: r.get(7)?,
                    })
                })
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }

    async fn log_for_request(&self, request_id: &str) -> Result<Vec<LogRecord>> {
        let id = request_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM log WHERE request_id = ?1 ORDER BY seq"
                ))
                .map_err(map_sql)?;
            let rows = stmt.query_map([id], row_to_record).map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql).and_then(finish_record))
                .collect()
        })
        .await
    }

    async fn head(&self) -> Result<(i64, String)> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT seq, hash FROM log ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(map_sql)?
                .unwrap_or((0, GENESIS.to_owned())))
        })
        .await
    }

    async fn rule_set(&self, hash: &str) -> Result<Option<String>> {
        let hash = hash.to_owned();
        self.read_now(move |conn| {
            conn.query_row("SELECT body FROM rule_sets WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .optional()
            .map_err(map_sql)
        })
    }

    async fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        let cp = cp.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO checkpoints(seq, hash, time_ms, jws) VALUES (?1, ?2, ?3, ?4)",
                    params![cp.seq, cp.hash, cp.time_ms, cp.jws],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, hash, time_ms, jws FROM checkpoints ORDER BY seq")
                .map_err(map_sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Checkpoint::from_stored(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    ))
                })
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }

    async fn budget(&self, key: &str) -> Result<Option<BudgetSnapshot>> {
        self.read_now(|conn| read_budget(conn, key))
    }

    async fn top_up(
        &self,
        key: &str,
        policy: &BudgetPolicy,
        tokens: u64,
        now_ms: i64,
    ) -> Result<BudgetSnapshot> {
        let (key, policy) = (key.to_owned(), policy.clone());
        self.write(move |w| {
            let (cap, per) = bucket_params(&policy);
            ensure_bucket(&w.conn, &key, cap, now_ms)?;
            let sql = format!(
                "UPDATE budgets SET balance_milli = ({}) + :add, updated_at_ms = MAX(updated_at_ms, :now) WHERE key = :key
                 RETURNING balance_milli, updated_at_ms",
                available_sql(per)
            );
            let mut stmt = w.conn.prepare_cached(&sql).map_err(map_sql)?;
            let snapshot = |r: &rusqlite::Row<'_>| Ok(BudgetSnapshot { balance_milli: r.get(0)?, updated_at_ms: r.get(1)? });
            match per {
                Some(per) => stmt.query_row(
                    rusqlite::named_params! {":cap": cap, ":now": now_ms, ":per": per, ":add": cost_milli(tokens), ":key": key},
                    snapshot,
                ),
                None => stmt.query_row(rusqlite::named_params! {":now": now_ms, ":add": cost_milli(tokens), ":key": key}, snapshot),
            }
            .map_err(map_sql)
        })
        .await
    }

    async fn refund(&self, key: &str, policy: &BudgetPolicy, cost: u64, now_ms: i64) -> Result<()> {
        let (key, policy) = (key.to_owned(), policy.clone());
        self.write(move |w| {
            let (cap, per) = bucket_params(&policy);
            let avail = available_sql(per);
            let sql = format!(
                "UPDATE budgets SET balance_milli = CASE WHEN ({avail}) > :cap THEN ({avail}) + :add
                                                     ELSE MIN(:cap, ({avail}) + :add) END,
                                    updated_at_ms = MAX(updated_at_ms, :now)
                 WHERE key = :key"
            );
            let mut stmt = w.conn.prepare_cached(&sql).map_err(map_sql)?;
            match per {
                Some(per) => stmt.execute(rusqlite::named_params! {":cap": cap, ":now": now_ms, ":per": per, ":add": cost_milli(cost), ":key": key}),
                None => stmt.execute(rusqlite::named_params! {":cap": cap, ":now": now_ms, ":add": cost_milli(cost), ":key": key}),
            }
            .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn create_join_token(
        &self,
        token_hash: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        let (h, n) = (token_hash.to_owned(), node.to_owned());
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO join_tokens(token_hash, node, expires_at_ms) VALUES (?1, ?2, ?3)",
                    params![h, n, expires_at_ms],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn consume_join_token(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>> {
        let h = token_hash.to_owned();
        self.write(move |w| {
            w.conn
                .query_row(
                    "UPDATE join_tokens SET used_at_ms = ?2 WHERE token_hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2
                     RETURNING node",
                    params![h, now_ms],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_sql)
        })
        .await
    }

    async fn node_enrolled(&self, node: &str, serial: &str, now_ms: i64) -> Result<i64> {
        let (node, serial) = (node.to_owned(), serial.to_owned());
        self.write(move |w| {
            w.conn
                .query_row(
                    "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES (?1, ?2, NULL, 1, ?3) ON CONFLICT (node) DO UPDATE SET serial = excluded.serial, new_serial = NULL, generation = node_svids.generation + 1, updated_at_ms = excluded.updated_at_ms RETURNING generation",
                    params![node, serial, now_ms],
                    |r| r.get(0),
                )
                .map_err(map_sql)
        })
        .await
    }

    async fn node_renewed(
        &self,
        node: &str,
        presented: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<NodeRenewal> {
        let (node, presented, new) = (node.to_owned(), presented.to_owned(), new.to_owned());
        self.write(move |w| {
            let renew = |c: &Connection| {
                c.query_row(
                    "UPDATE node_svids SET serial = CASE WHEN new_serial = ?2 THEN new_serial ELSE serial END, new_serial = ?3, updated_at_ms = ?4 WHERE node = ?1 AND (serial = ?2 OR new_serial = ?2) RETURNING generation",
                    params![node, presented, new, now_ms],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(map_sql)
            };
            if let Some(generation) = renew(&w.conn)? {
                return Ok(NodeRenewal::Renewed { generation });
            }
            // No lineage yet (enrolled before they were kept): it starts
            // with the SVID presented.
            w.conn
                .execute(
                    "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES (?1, ?2, NULL, 1, ?3) ON CONFLICT (node) DO NOTHING",
                    params![node, presented, now_ms],
                )
                .map_err(map_sql)?;
            if let Some(generation) = renew(&w.conn)? {
                return Ok(NodeRenewal::Renewed { generation });
            }
            let generation = w
                .conn
                .query_row("SELECT generation FROM node_svids WHERE node = ?1", [&node], |r| r.get(0))
                .map_err(map_sql)?;
            Ok(NodeRenewal::Stale { generation })
        })
        .await
    }

    async fn consume_ci_jti(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
        let key = key.to_owned();
        self.write(move |w| {
            w.conn
                .prepare_cached("DELETE FROM ci_jtis WHERE expires_at_ms <= ?1")
                .and_then(|mut s| s.execute([now_ms]))
                .map_err(map_sql)?;
            w.conn
                .prepare_cached("INSERT OR IGNORE INTO ci_jtis(key, expires_at_ms) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![key, expires_at_ms]))
                .map(|n| n == 1)
                .map_err(map_sql)
        })
        .await
    }

    async fn create_entry(&self, e: &Entry) -> Result<()> {
        let e = e.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO entries(id, spiffe_id, parent, selectors, grants, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        e.id,
                        e.spiffe_id,
                        e.parent,
                        serde_json::to_string(&e.selectors).unwrap_or_default(),
                        serde_json::to_string(&e.grants).unwrap_or_default(),
                        e.created_at_ms
                    ],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn entries(&self, parent: Option<&str>) -> Result<Vec<Entry>> {
        let Some(parent) = parent else {
            return self.read_now(|conn| read_entries(conn, None));
        };
        // Every issuance reads its node's entries: from memory once seen.
        let (generation, cached) = self.hot.entries(parent);
        if let Some(entries) = cached {
            return Ok(entries.as_ref().clone());
        }
        let entries = self.read_now(|conn| read_entries(conn, Some(parent)))?;
        self.hot.fill_entries(generation, parent, &entries);
        Ok(entries)
    }

    async fn delete_entry(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .execute("DELETE FROM entries WHERE id = ?1", [id])
                .map_err(map_sql)?
                == 1)
        })
        .await
    }

    async fn lease(&self, id: &str) -> Result<Option<Lease>> {
        let id = id.to_owned();
        self.read_now(move |conn| {
            conn.query_row(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1"),
                [id],
                row_to_lease,
            )
            .optional()
            .map_err(map_sql)
        })
    }

    async fn leases(&self, query: &LeaseQuery) -> Result<Vec<Lease>> {
        let (clauses, values) = query.sql(|n| format!("?{n}"));
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {LEASE_COLUMNS} FROM leases {clauses}"))
                .map_err(map_sql)?;
            let values = values.into_iter().map(|v| match v {
                SqlValue::Text(t) => rusqlite::types::Value::Text(t),
                SqlValue::Int(i) => rusqlite::types::Value::Integer(i),
            });
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), row_to_lease)
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }

    async fn revoke_lease(&self, id: &str, now_ms: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            let changed = w
                .conn
                .execute(
                    "UPDATE leases SET revoked_at_ms = ?2, task_ended_at_ms = COALESCE(task_ended_at_ms, ?2)
                     WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, now_ms],
                )
                .map_err(map_sql)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn end_task(&self, id: &str, now_ms: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            w.conn
                .execute(
                    "UPDATE leases SET task_ended_at_ms = ?2 WHERE id = ?1 AND task_ended_at_ms IS NULL",
                    params![id, now_ms],
                )
                .map(|n| n == 1)
                .map_err(map_sql)
        })
        .await
    }

    async fn suspend(&self, s: &SuspensionRecord) -> Result<()> {
        let s = s.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO suspensions(subject, reason, by_whom, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(subject) DO UPDATE SET reason = excluded.reason, by_whom = excluded.by_whom, at_ms = excluded.at_ms",
                    params![s.subject, s.reason, s.by, s.at_ms],
                )
                .map_err(map_sql)?;
            w.suspended.insert(s.subject);
            Ok(())
        })
        .await
    }

    async fn resume(&self, subject: &str) -> Result<bool> {
        let subject = subject.to_owned();
        self.write(move |w| {
            let was = w
                .conn
                .execute("DELETE FROM suspensions WHERE subject = ?1", [&subject])
                .map_err(map_sql)?
                == 1;
            w.resumed.push(subject);
            Ok(was)
        })
        .await
    }

    async fn prune_through(&self, seq: i64) -> Result<u64> {
        self.write(move |w| {
            let hash: Option<String> = w
                .conn
                .query_row("SELECT hash FROM log WHERE seq = ?1", [seq], |r| r.get(0))
                .optional()
                .map_err(map_sql)?;
            let hash = hash
                .ok_or_else(|| StoreError::Conflict(format!("record {seq} is not in the log")))?;
            let deleted = w
                .conn
                .execute("DELETE FROM log WHERE seq <= ?1", [seq])
                .map_err(map_sql)?;
            w.conn
                .execute(
                    "INSERT OR REPLACE INTO log_base(id, seq, hash) VALUES (1, ?1, ?2)",
                    params![seq, hash],
                )
                .map_err(map_sql)?;
            Ok(u64::try_from(deleted).unwrap_or(0))
        })
        .await
    }

    async fn base(&self) -> Result<Option<(i64, String)>> {
        self.read_now(|conn| {
            conn.query_row("SELECT seq, hash FROM log_base WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(map_sql)
        })
    }

    async fn create_approval(&self, a: &Approval) -> Result<()> {
        let body = serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, created, version) = (a.id.clone(), a.created_at_ms, a.version);
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO approvals(id, created_at_ms, version, body) VALUES (?1, ?2, ?3, ?4)",
                    params![id, created, version, body],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let body: Option<String> = self.read_now(|conn| {
            conn.query_row("SELECT body FROM approvals WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(map_sql)
        })?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn approvals(&self, since_ms: i64) -> Result<Vec<Approval>> {
        let bodies: Vec<String> = self.read_now(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM approvals WHERE created_at_ms > ?1 ORDER BY created_at_ms DESC LIMIT 1000",
                )
                .map_err(map_sql)?;
            let rows = stmt
                .query_map([since_ms], |r| r.get(0))
                .map_err(map_sql)?
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(map_sql)?;
            Ok(rows)
        })?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn update_approval(&self, a: &Approval) -> Result<bool> {
        let mut next = a.clone();
        next.version += 1;
        let body = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, version) = (a.id.clone(), a.version);
        self.write(move |w| {
            Ok(w.conn
                .execute(
                    "UPDATE approvals SET version = version + 1, body = ?1 WHERE id = ?2 AND version = ?3",
                    params![body, id, version],
                )
                .map_err(map_sql)?
                == 1)
        })
        .await
    }

    async fn put_signal(&self, sig: &SignalRecord) -> Result<()> {
        let sig = sig.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO signals(subject, kind, source, value, observed_at_ms, ttl_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(subject, kind, source) DO UPDATE SET value = excluded.value,
                        observed_at_ms = excluded.observed_at_ms, ttl_seconds = excluded.ttl_seconds",
                    params![sig.subject, sig.kind, sig.source, sig.value, sig.observed_at_ms, i64::try_from(sig.ttl_seconds).unwrap_or(i64::MAX)],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn signals(&self, subjects: &[&str]) -> Result<Vec<SignalRecord>> {
        self.read_now(|conn| read_signals(conn, subjects))
    }

    async fn suspension(&self, subject: &str) -> Result<Option<SuspensionRecord>> {
        self.read_now(|conn| read_suspension(conn, subject))
    }

    async fn suspended_subjects(&self) -> Result<Vec<String>> {
        self.read_now(|conn| {
            let mut subjects: Vec<String> = suspended_subjects(conn)?.into_iter().collect();
            subjects.sort();
            Ok(subjects)
        })
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
