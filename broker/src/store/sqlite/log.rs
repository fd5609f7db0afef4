//! The issuance log: appends through the writer, reads, checkpoints and retention.

use super::*;

#[async_trait]
impl LogStore for SqliteStore {
    /// A SQLite store has one broker, and one chain: the unnamed one.
    fn chain(&self) -> &str {
        ""
    }
    async fn append(&self, mut append: Append) -> Result<Appended> {
        // Canonicalize and compress the body here, in the caller's task, not
        // in the serial writer.
        let body_jcs = append.take_canonical_body();
        let (stored, samples) = self.bodies.encode(&body_jcs);
        if let Some(samples) = samples {
            self.train_dictionary(samples);
        }
        self.write(move |w| w.append(append, body_jcs, stored))
            .await
    }
    async fn log(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        if !q.chain.is_empty() {
            return Ok(Vec::new());
        }
        let q = q.clone();
        let bodies = self.bodies.clone();
        self.read(move |conn| {
            let (conditions, values) =
                crate::store::log_read::log_conditions(&q, |n| format!("?{n}"));
            let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
            let sql = format!(
                "SELECT {LOG_COLUMNS} FROM log WHERE {conditions} ORDER BY seq {} LIMIT {limit}",
                if q.newest_first { "DESC" } else { "ASC" }
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(map_sql)?;
            let values: Vec<rusqlite::types::Value> = values
                .into_iter()
                .map(|v| match v {
                    crate::store::log_read::Bound::Text(t) => rusqlite::types::Value::Text(t),
                    crate::store::log_read::Bound::Int(i) => rusqlite::types::Value::Integer(i),
                })
                .collect();
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), row_to_record)
                .map_err(map_sql)?;
            let mut budget = bodies::ReadBudget::default();
            rows.map(|r| {
                r.map_err(map_sql)
                    .and_then(|row| finish_record(&bodies, conn, row, &mut budget))
            })
            .collect()
        })
        .await
    }
    async fn decision_rows(
        &self,
        chain: &str,
        after_seq: i64,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        if !chain.is_empty() {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let bodies = self.bodies.clone();
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
                    let row = DecisionRow {
                        chain: String::new(),
                        seq: r.get(0)?,
                        time_ms: r.get(1)?,
                        request_id: r.get(2)?,
                        identity: r.get(3)?,
                        grant: r.get(4)?,
                        node: r.get(5)?,
                        outcome: r.get(6)?,
                        body: Ok(String::new()),
                    };
                    Ok((row, r.get::<_, rusqlite::types::Value>(7)?))
                })
                .map_err(map_sql)?;
            let mut budget = bodies::ReadBudget::default();
            rows.map(|r| {
                let (mut row, body) = r.map_err(map_sql)?;
                row.body = bodies
                    .decode(conn, (&body).into(), &mut budget)
                    .map_err(|e| e.to_string());
                Ok(row)
            })
            .collect()
        })
        .await
    }
    async fn log_for_request(&self, request_id: &str) -> Result<Vec<LogRecord>> {
        let id = request_id.to_owned();
        let bodies = self.bodies.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {LOG_COLUMNS} FROM log WHERE request_id = ?1 ORDER BY seq"
                ))
                .map_err(map_sql)?;
            let rows = stmt.query_map([id], row_to_record).map_err(map_sql)?;
            let mut budget = bodies::ReadBudget::default();
            rows.map(|r| {
                r.map_err(map_sql)
                    .and_then(|row| finish_record(&bodies, conn, row, &mut budget))
            })
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
    async fn chains(&self) -> Result<Vec<ChainHead>> {
        let (seq, hash) = self.head().await?;
        let base: Option<(i64, String)> = self.read_now(|conn| {
            conn.query_row("SELECT seq, hash FROM log_base WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(map_sql)
        })?;
        // A pruned log whose records are all gone resumes at its base.
        let (seq, hash) = match &base {
            Some((base_seq, base_hash)) if seq == 0 => (*base_seq, base_hash.clone()),
            _ => (seq, hash),
        };
        Ok(vec![ChainHead {
            chain: String::new(),
            seq,
            hash,
            base,
            retired_at_ms: None,
        }])
    }
    /// The head is the last row: every record is in the one chain.
    async fn stray_record(&self) -> Result<Option<(String, i64)>> {
        Ok(None)
    }
    async fn check_codec(&self) -> Result<()> {
        let bodies = self.bodies.clone();
        self.read(move |conn| bodies.check(conn)).await
    }
    async fn retire_chain(&self, _chain: &str, _now_ms: i64) -> Result<(i64, String)> {
        Err(StoreError::Conflict(
            "a SQLite store has one chain, its own broker's: there is no replica to retire".into(),
        ))
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
            let rows = stmt.query_map([], row_to_checkpoint).map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }
    async fn newest_checkpoints(&self, limit: usize) -> Result<Vec<Checkpoint>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, hash, time_ms, jws FROM checkpoints ORDER BY seq DESC LIMIT ?1",
                )
                .map_err(map_sql)?;
            let rows = stmt
                .query_map([limit], row_to_checkpoint)
                .map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
        })
        .await
    }
    async fn prune_through(&self, chain: &str, seq: i64) -> Result<u64> {
        if !chain.is_empty() {
            return Err(StoreError::Conflict(format!(
                "a SQLite store has no chain {chain:?}"
            )));
        }
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
}

/// A `checkpoints` row (`seq, hash, time_ms, jws`).
fn row_to_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint::from_stored(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
    ))
}
