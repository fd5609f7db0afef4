//! The writer thread's side: the write connection, the chain head it
//! extends, and each job's statements (appends with their spends and
//! leases, savepoint by savepoint inside one group commit).

use super::*;

pub(super) type Completion = Box<dyn FnOnce(Result<()>) + Send>;
pub(super) type Job = Box<dyn FnOnce(&mut Writer) -> Completion + Send>;

/// The writer thread's state: the write connection and the chain head.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// How record bodies are stored.
    pub(super) bodies: Arc<bodies::Bodies>,
    pub(super) head: Head,
    /// Rule-set hashes committed to `rule_sets` (cleared on any rollback), so
    /// a record needs no insert for a rule set already stored.
    pub(super) known_rule_sets: std::collections::HashSet<String>,
    /// The suspended subjects: only this thread writes the table, so an
    /// append checks them without a query. A suspension enters at once (a
    /// rollback leaves it in: refusing too much, never too little, until the
    /// reload); a resume leaves only once its batch committed.
    pub(super) suspended: std::collections::HashSet<String>,
    /// Resumes of the open batch, applied to `suspended` after its COMMIT.
    pub(super) resumed: Vec<String>,
}

/// Every suspended subject.
pub(super) fn suspended_subjects(conn: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT subject FROM suspensions")
        .map_err(map_sql)?;
    let rows = stmt.query_map([], |r| r.get(0)).map_err(map_sql)?;
    rows.map(|r| r.map_err(map_sql)).collect()
}

/// Runs one statement through the statement cache (no re-parse per call).
pub(super) fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(map_sql)
}

impl Writer {
    /// Runs `f` in a savepoint: its writes are undone if it fails.
    pub(super) fn savepoint<T>(&mut self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        exec(&self.conn, "SAVEPOINT job")?;
        let head = self.head.clone();
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
                self.head = head;
                Err(e)
            }
        }
    }

    /// Appends `append`, its body `body_jcs` stored as `stored` (compressed
    /// by the caller; see [`super::bodies`]).
    pub(super) fn append(
        &mut self,
        append: Append,
        mut body_jcs: String,
        mut stored: Option<Vec<u8>>,
    ) -> Result<Appended> {
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
        // Closed (or unknown): refused. Open: marked answered, in this
        // write, so reconciliation no longer closes it.
        let lease_closed = match &refuse_if_lease_closed {
            Some(id) => self
                .conn
                .prepare_cached(
                    "UPDATE leases SET answered_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                )
                .and_then(|mut stmt| stmt.execute(params![id, entry.time_ms]))
                .map_err(map_sql)?
                == 0,
            None => false,
        };
        let spent = !suspended
            && !lease_closed
            && (spend.is_empty() || self.try_spend(&spend, entry.time_ms)?);
        if let Some(outcome) = refusal(lease_closed, suspended, spent) {
            body_jcs = mark_final_outcome(&mut entry, &body_jcs, outcome)?;
            stored = self.bodies.compress(&body_jcs);
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
        let record = self.head.seal_next("", entry, &body_jcs);
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
                    bodies::column(&body_jcs, stored),
                    record.prev_hash,
                    record.hash
                ],
            ))
            .map_err(map_sql)?;
        Ok(Appended {
            seq: record.seq,
            hash: record.hash,
            spent,
            suspended,
            lease_closed,
        })
    }

    /// All spends or none, each a conditional update computed in SQL. One
    /// spend needs no savepoint: it changes its bucket or nothing (a bucket
    /// it creates is full, as a missing one reads).
    pub(super) fn try_spend(&mut self, spend: &[SpendOp], now_ms: i64) -> Result<bool> {
        if let [op] = spend {
            return spend_one(&self.conn, op, now_ms);
        }
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

/// The available-balance expression, in millitokens (see `BudgetSnapshot::available`).
pub(super) fn available_sql(per_ms: Option<i64>) -> &'static str {
    match per_ms {
        None => "balance_milli",
        Some(_) => {
            "CASE WHEN balance_milli >= :cap THEN balance_milli
                  ELSE MIN(:cap, balance_milli + (MIN(MAX(:now - updated_at_ms, 0), :per) * :cap) / :per) END"
        }
    }
}

/// Creates a full bucket if `key` has none; whether it did.
pub(super) fn ensure_bucket(conn: &Connection, key: &str, cap: i64, now_ms: i64) -> Result<bool> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO budgets(key, balance_milli, updated_at_ms) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut stmt| stmt.execute(params![key, cap, now_ms]))
    .map(|n| n == 1)
    .map_err(map_sql)
}

pub(super) fn spend_one(conn: &Connection, op: &SpendOp, now_ms: i64) -> Result<bool> {
    let (cap, per) = bucket_params(&op.policy);
    if update_bucket(conn, op, cap, per, now_ms)? {
        return Ok(true);
    }
    // No row updated: the bucket is new (create it full) or cannot pay. A
    // new bucket holds exactly `cap`: a cost above it is refused without one.
    if cost_milli(op.cost) > cap {
        return Ok(false);
    }
    if ensure_bucket(conn, &op.key, cap, now_ms)? {
        return update_bucket(conn, op, cap, per, now_ms);
    }
    Ok(false)
}

pub(super) fn update_bucket(
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

pub(super) fn insert_lease(conn: &Connection, l: &Lease) -> Result<()> {
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
