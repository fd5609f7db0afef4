//! Leases.

use super::*;
use crate::store::{CLOSE_LEASE, CLOSE_UNANSWERED};

/// A lease query's values as SQLite binds them.
fn sql_values(values: Vec<SqlValue>) -> impl Iterator<Item = rusqlite::types::Value> {
    values.into_iter().map(|v| match v {
        SqlValue::Text(t) => rusqlite::types::Value::Text(t),
        SqlValue::Int(i) => rusqlite::types::Value::Integer(i),
    })
}

#[async_trait]
impl LeaseStore for SqliteStore {
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
            let rows = stmt
                .query_map(rusqlite::params_from_iter(sql_values(values)), row_to_lease)
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }
    async fn count_leases(&self, query: &LeaseQuery) -> Result<u64> {
        let (clauses, values) = query.sql(|n| format!("?{n}"));
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM leases {clauses}) AS counted"
            ))
            .map_err(map_sql)?
            .query_row(rusqlite::params_from_iter(sql_values(values)), |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(map_sql)
        })
        .await
    }
    async fn revoke_lease(&self, id: &str, now_ms: i64) -> Result<bool> {
        self.close_lease(id, now_ms, CLOSE_LEASE).await
    }
    async fn close_unanswered(&self, id: &str, now_ms: i64) -> Result<bool> {
        self.close_lease(id, now_ms, CLOSE_UNANSWERED).await
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
}

impl SqliteStore {
    /// Runs one of the lease-closing statements; whether it closed the lease.
    async fn close_lease(&self, id: &str, now_ms: i64, sql: &'static str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            let changed = w.conn.execute(sql, params![id, now_ms]).map_err(map_sql)?;
            Ok(changed == 1)
        })
        .await
    }
}
