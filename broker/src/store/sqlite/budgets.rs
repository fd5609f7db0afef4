//! Budget buckets: top-ups and refunds (spends commit with their record).

use super::*;

#[async_trait]
impl BudgetStore for SqliteStore {
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
}
