//! The issuance log: appends through the writer, reads, checkpoints and retention.

use super::*;

#[async_trait]
impl LogStore for PostgresStore {
    fn chain(&self) -> &str {
        &self.chain
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
        // Only the filters given, so each meets its index; the chain and
        // its head bound every read (rows past the head are not records).
        let (conditions, values) =
            crate::store::log_read::log_conditions(q, |n| format!("${}", n + 1));
        let values: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = values
            .into_iter()
            .map(|v| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match v {
                    crate::store::log_read::Bound::Text(t) => Box::new(t),
                    crate::store::log_read::Bound::Int(i) => Box::new(i),
                }
            })
            .collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&q.chain];
        params.extend(
            values
                .iter()
                .map(|v| &**v as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {LOG_COLUMNS} FROM log
                     WHERE chain = $1 AND {conditions}
                       AND seq <= (SELECT c.seq FROM log_chains c WHERE c.chain = $1)
                     ORDER BY seq {} LIMIT {limit}",
                    if q.newest_first { "DESC" } else { "ASC" }
                ),
                &params,
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(row_to_record).collect()
    }
    async fn decision_rows(
        &self,
        chain: &str,
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
                 WHERE chain = $4 AND seq > $1 AND kind IN ('decision', 'intent') AND ($2::BIGINT IS NULL OR time_ms >= $2)
                   AND seq <= (SELECT c.seq FROM log_chains c WHERE c.chain = $4)
                 ORDER BY seq LIMIT $3",
                &[&after_seq, &since_ms, &limit, &chain],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows
            .iter()
            .map(|r| DecisionRow {
                chain: chain.to_owned(),
                seq: r.get(0),
                time_ms: r.get(1),
                request_id: r.get(2),
                identity: r.get(3),
                grant: r.get(4),
                node: r.get(5),
                outcome: r.get(6),
                body: Ok(r.get(7)),
            })
            .collect())
    }
    async fn log_for_request(&self, request_id: &str) -> Result<Vec<LogRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {LOG_COLUMNS} FROM log WHERE request_id = $1
                     AND EXISTS (SELECT 1 FROM log_chains c WHERE c.chain = log.chain AND log.seq <= c.seq)
                     ORDER BY time_ms, chain, seq"),
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
            .query_opt(
                "SELECT seq, hash FROM log_chains WHERE chain = $1",
                &[&self.chain],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map_or((0, GENESIS.to_owned()), |r| (r.get(0), r.get(1))))
    }
    async fn chains(&self) -> Result<Vec<ChainHead>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT chain, seq, hash, base_seq, base_hash, retired_at_ms FROM log_chains ORDER BY chain",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows
            .iter()
            .map(|r| ChainHead {
                chain: r.get(0),
                seq: r.get(1),
                hash: r.get(2),
                base: r
                    .get::<_, Option<i64>>(3)
                    .zip(r.get::<_, Option<String>>(4)),
                retired_at_ms: r.get(5),
            })
            .collect())
    }
    async fn stray_record(&self) -> Result<Option<(String, i64)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT l.chain, l.seq FROM log l LEFT JOIN log_chains c ON c.chain = l.chain
                 WHERE c.chain IS NULL OR l.seq > c.seq LIMIT 1",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
    async fn retire_chain(&self, chain: &str, now_ms: i64) -> Result<(i64, String)> {
        if chain == self.chain {
            return Err(StoreError::Conflict(
                "a replica does not retire its own chain: run the command on another replica"
                    .into(),
            ));
        }
        // The chain's row lock: its last batch has committed, and none follows.
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE log_chains SET retired_at_ms = $2 WHERE chain = $1 AND retired_at_ms IS NULL RETURNING seq, hash",
                &[&chain, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        row.map(|r| (r.get(0), r.get(1))).ok_or_else(|| {
            StoreError::Conflict(format!("no chain {chain:?} that is not already retired"))
        })
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
        let client = self.client().await?;
        // One statement of a kind per record: another replica's of the same
        // head says the same (and is in that replica's file). One naming
        // another hash means two histories were signed: never dropped
        // silently.
        let inserted = client
            .execute(
                "INSERT INTO checkpoints(chain, seq, kind, hash, time_ms, jws) VALUES ($5, $1, $6, $2, $3, $4)
                 ON CONFLICT (chain, seq, kind) DO NOTHING",
                &[&cp.seq, &cp.hash, &cp.time_ms, &cp.jws, &cp.chain, &cp.kind.as_str()],
            )
            .await
            .map_err(map_pg)?;
        if inserted == 0 {
            let stored: String = client
                .query_one(
                    "SELECT hash FROM checkpoints WHERE chain = $1 AND seq = $2 AND kind = $3",
                    &[&cp.chain, &cp.seq, &cp.kind.as_str()],
                )
                .await
                .map_err(map_pg)?
                .get(0);
            if stored != cp.hash {
                return Err(StoreError::Conflict(format!(
                    "chain {:?} record {}: the store holds a statement of hash {stored}, this one names {} (two histories were signed)",
                    cp.chain, cp.seq, cp.hash
                )));
            }
        }
        Ok(())
    }
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, hash, time_ms, jws FROM checkpoints ORDER BY chain, seq",
                &[],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows.iter().map(row_to_checkpoint).collect())
    }
    async fn newest_checkpoints(&self, limit: usize) -> Result<Vec<Checkpoint>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, hash, time_ms, jws FROM checkpoints ORDER BY time_ms DESC, seq DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(map_pg)?;
        Ok(rows.iter().map(row_to_checkpoint).collect())
    }
    async fn prune_through(&self, chain: &str, seq: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_pg)?;
        // Serialize with the chain's appends (they hold this lock while extending it).
        tx.query_opt(
            "SELECT seq FROM log_chains WHERE chain = $1 FOR UPDATE",
            &[&chain],
        )
        .await
        .map_err(map_pg)?
        .ok_or_else(|| StoreError::Conflict(format!("the store has no chain {chain:?}")))?;
        let row = tx
            .query_opt(
                "SELECT hash FROM log WHERE chain = $1 AND seq = $2",
                &[&chain, &seq],
            )
            .await
            .map_err(map_pg)?;
        let hash: String = row
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Conflict(format!("record {seq} is not in the log")))?;
        let deleted = tx
            .execute(
                "DELETE FROM log WHERE chain = $1 AND seq <= $2",
                &[&chain, &seq],
            )
            .await
            .map_err(map_pg)?;
        tx.execute(
            "UPDATE log_chains SET base_seq = $2, base_hash = $3 WHERE chain = $1",
            &[&chain, &seq, &hash],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)?;
        Ok(deleted)
    }
}

/// A `checkpoints` row (`seq, hash, time_ms, jws`).
fn row_to_checkpoint(r: &Row) -> Checkpoint {
    Checkpoint::from_stored(r.get(0), r.get(1), r.get(2), r.get(3))
}
