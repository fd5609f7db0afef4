//! The PostgreSQL store, for one or several broker replicas.
//!
//! One hash chain per replica ([`crate::log`]): a replica's append batch
//! takes the row lock on its own chain's row of `log_chains` (`SELECT …
//! FOR UPDATE`), so replicas never wait on each other's appends, and a
//! chain is extended in order even by two processes that share it. Each
//! replica group-commits: its writer task drains pending appends into one
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
    Append, Appended, ChainHead, Entry, Lease, LeaseQuery, LogQuery, NodeRenewal, Result, SpendOp,
    SqlValue, Store, StoreError, SuspensionRecord, bucket_params, cost_milli,
};
use super::{ApprovalStore, BudgetStore, LeaseStore, LogStore, RegistryStore, SubjectStore};
use crate::log::checkpoint::Checkpoint;
use crate::log::{GENESIS, Head, LogEntry, LogRecord, RecordKind};
use crate::store::migrations::SchemaUse;
use crate::store::{Approval, DecisionRow, SignalRecord};
use crate::store::{mark_final_outcome, refusal};

mod approvals;
mod batch;
mod budgets;
mod connection;
mod leases;
mod log;
mod registry;
mod subjects;
mod writer;

use batch::run_batch;
pub use connection::connection;
use connection::{error_chain, plaintext_off_host};
use writer::*;

/// Most appends group-committed in one transaction.
pub const MAX_BATCH: usize = 256;

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

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    appends: mpsc::Sender<Job>,
    url: String,
    /// The chain this handle appends to.
    chain: String,
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
    /// and starts the append writer, which appends to the unnamed chain
    /// (registered by its first append).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_as(url, "", SchemaUse::Migrate).await
    }

    /// [`Self::connect`] for a reader: the schema must exist at this
    /// build's version, and nothing is migrated.
    pub async fn connect_existing(url: &str) -> Result<Self> {
        Self::connect_as(url, "", SchemaUse::Existing).await
    }

    /// [`Self::connect`] for the replica whose chain is `chain` (its
    /// instance id), registered now: a chain an operator retired is refused.
    pub async fn connect_replica(url: &str, chain: &str) -> Result<Self> {
        let store = Self::connect_as(url, chain, SchemaUse::Migrate).await?;
        let client = store.client().await?;
        let now = crate::clock::now_ms();
        client
            .execute(REGISTER_CHAIN, &[&chain, &now])
            .await
            .map_err(map_pg)?;
        let retired: Option<i64> = client
            .query_one(
                "SELECT retired_at_ms FROM log_chains WHERE chain = $1",
                &[&chain],
            )
            .await
            .map_err(map_pg)?
            .get(0);
        if let Some(at) = retired {
            return Err(StoreError::Setup(format!(
                "this replica's chain {chain:?} was retired (at {at} ms): a retired replica does not append again; start it with a new data directory, which gives it a new instance id and chain"
            )));
        }
        Ok(store)
    }

    async fn connect_as(url: &str, chain: &str, schema: SchemaUse) -> Result<Self> {
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
        migrate(&mut client, schema).await?;
        let manager = deadpool_postgres::Manager::new(config.clone(), tls.clone());
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Setup(format!("postgres pool: {e}")))?;
        let (appends, mut rx) = mpsc::channel::<Job>(4096);
        let writer_chain = chain.to_owned();
        tokio::spawn(async move {
            let chain = writer_chain;
            // Prepared (and the chain registered) at the first append: a
            // handle that only reads writes nothing.
            let mut fresh = Some(client);
            let mut client: Option<(Client, Statements)> = None;
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
                    // What the lost connection stored may be gone too (a
                    // failover to a standby behind it): store rule sets anew.
                    rule_sets.clear();
                    let connected = match fresh.take() {
                        Some(c) => Some(c),
                        None => match config.connect(tls.clone()).await {
                            Ok((c, conn)) => {
                                tokio::spawn(conn);
                                Some(c)
                            }
                            Err(_) => None,
                        },
                    };
                    client = match connected {
                        Some(c) => match Statements::prepare(&c, &chain).await {
                            Ok(statements) => Some((c, statements)),
                            Err(_) => None,
                        },
                        None => None,
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
            chain: chain.to_owned(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(unavailable)
    }

    /// A pooled connection and `sql` prepared on it: parsed and planned
    /// once per connection, not on every request (a decision's reads ran a
    /// parse and a round trip each before).
    async fn prepared(
        &self,
        sql: &str,
    ) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement)> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.stale(e))?;
        Ok((client, statement))
    }

    /// `e` from a query on a cached statement. If the server no longer has
    /// the statement (its session was reset) or the statement's result type
    /// changed (a migration by another process), every connection's cache is
    /// emptied, so the next request prepares afresh; this one fails as
    /// unavailable.
    fn stale(&self, e: tokio_postgres::Error) -> StoreError {
        use tokio_postgres::error::SqlState;
        if e.code().is_some_and(|c| {
            *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::FEATURE_NOT_SUPPORTED
        }) {
            self.pool.manager().statement_caches.clear();
        }
        map_pg(e)
    }
}

async fn migrate(client: &mut Client, schema: SchemaUse) -> Result<()> {
    let setup = |e: tokio_postgres::Error| StoreError::Setup(format!("migration: {e}"));
    if schema == SchemaUse::Existing {
        let found: Option<i64> = client
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await
            .ok()
            .and_then(|row| row.get(0));
        return match super::migrations::not_as_built(found) {
            Some(refusal) => Err(StoreError::Setup(refusal)),
            None => Ok(()),
        };
    }
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
        let found: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(setup)?
            .get(0);
        if let Some(refusal) = super::migrations::too_new(found) {
            return Err(StoreError::Setup(refusal));
        }
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

const LOG_COLUMNS: &str = "seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash, chain";
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
        chain: r.get(11),
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

    /// One connection, one round trip: the two suspensions, the signals
    /// and the bucket, prepared and sent together.
    async fn request_state(
        &self,
        identity: &str,
        issuer: &str,
        budget_key: Option<&str>,
    ) -> Result<super::RequestState> {
        let client = self.client().await?;
        let (suspensions, signals, budget) = tokio::try_join!(
            client.prepare_cached(subjects::SUSPENSIONS_OF),
            client.prepare_cached(subjects::SIGNALS_OF),
            client.prepare_cached(budgets::BUDGET),
        )
        .map_err(|e| self.stale(e))?;
        let subjects: &[&str] = &[identity, issuer];
        let budget = async {
            match budget_key {
                Some(key) => client.query_opt(&budget, &[&key]).await.map(Some),
                None => Ok(None),
            }
        };
        let (suspended, signals, budget) = tokio::try_join!(
            biased;
            async { client.query(&suspensions, &[&subjects]).await },
            async { client.query(&signals, &[&subjects]).await },
            budget
        )
        .map_err(|e| self.stale(e))?;
        let suspended: Vec<SuspensionRecord> =
            suspended.iter().map(subjects::suspension_row).collect();
        let of = |subject: &str| suspended.iter().find(|s| s.subject == subject).cloned();
        Ok(super::RequestState {
            identity_suspension: of(identity),
            issuer_suspension: of(issuer),
            signals: signals.iter().map(subjects::signal_row).collect(),
            budget: budget.flatten().map(|r| budgets::snapshot_row(&r)),
        })
    }
}
