//! The issuance log: appends through the writer, reads, checkpoints and retention.

use super::*;

#[async_trait]
impl LogStore for PostgresStore {
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
}
