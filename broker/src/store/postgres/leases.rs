//! Leases.

use super::*;
use crate::store::{CLOSE_LEASE, CLOSE_UNANSWERED};

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// A lease query's values as PostgreSQL binds them.
fn sql_values(values: Vec<SqlValue>) -> Vec<Param> {
    values
        .into_iter()
        .map(|v| -> Param {
            match v {
                SqlValue::Text(t) => Box::new(t),
                SqlValue::Int(i) => Box::new(i),
            }
        })
        .collect()
}

fn params(values: &[Param]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

#[async_trait]
impl LeaseStore for PostgresStore {
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
        let values = sql_values(values);
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {LEASE_COLUMNS} FROM leases {clauses}"),
                &params(&values),
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(row_to_lease).collect()
    }
    async fn count_leases(&self, query: &LeaseQuery) -> Result<u64> {
        let (clauses, values) = query.sql(|n| format!("${n}"));
        let values = sql_values(values);
        let row = self
            .client()
            .await?
            .query_one(
                &format!("SELECT COUNT(*) FROM (SELECT 1 FROM leases {clauses}) AS counted"),
                &params(&values),
            )
            .await
            .map_err(map_pg)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
    async fn revoke_lease(&self, id: &str, now_ms: i64) -> Result<bool> {
        self.close_lease(id, now_ms, CLOSE_LEASE).await
    }
    async fn close_unanswered(&self, id: &str, now_ms: i64) -> Result<bool> {
        // Waits for a writer holding the row (an outcome being appended)
        // and re-reads it: an answered lease is left open.
        self.close_lease(id, now_ms, CLOSE_UNANSWERED).await
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
}

impl PostgresStore {
    /// Runs one of the lease-closing statements; whether it closed the lease.
    async fn close_lease(&self, id: &str, now_ms: i64, sql: &str) -> Result<bool> {
        let changed = self
            .client()
            .await?
            .execute(&crate::store::numbered(sql), &[&id, &now_ms])
            .await
            .map_err(map_pg)?;
        Ok(changed == 1)
    }
}
