//! Budget buckets: top-ups and refunds (spends commit with their record).

use super::*;

#[async_trait]
impl BudgetStore for PostgresStore {
    async fn budget(&self, key: &str) -> Result<Option<BudgetSnapshot>> {
        let (client, statement) = self.prepared(BUDGET).await?;
        let row = client
            .query_opt(&statement, &[&key])
            .await
            .map_err(|e| self.stale(e))?;
        Ok(row.as_ref().map(snapshot_row))
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
}

pub(super) const BUDGET: &str = "SELECT balance_milli, updated_at_ms FROM budgets WHERE key = $1";

/// A row of [`BUDGET`].
pub(super) fn snapshot_row(r: &Row) -> BudgetSnapshot {
    BudgetSnapshot {
        balance_milli: r.get(0),
        updated_at_ms: r.get(1),
    }
}
