//! The writer task's side: each batch takes the chain head's row lock,
//! appends its records (with their spends and leases, savepoint by
//! savepoint) in one transaction, and answers each append.

use super::*;

pub(super) const AVAIL_EVERY: &str = "CASE WHEN balance_milli >= $1 THEN balance_milli
     ELSE LEAST($1, balance_milli + (LEAST(GREATEST($2 - updated_at_ms, 0), $3) * $1) / $3) END";

pub(super) async fn ensure_bucket(
    client: &impl tokio_postgres::GenericClient,
    key: &str,
    cap: i64,
    now_ms: i64,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO budgets(key, balance_milli, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            &[&key, &cap, &now_ms],
        )
        .await
        .map_err(map_pg)?;
    Ok(())
}

pub(super) async fn spend_one(
    client: &impl tokio_postgres::GenericClient,
    op: &SpendOp,
    now_ms: i64,
) -> Result<bool> {
    let (cap, per) = bucket_params(&op.policy);
    ensure_bucket(client, &op.key, cap, now_ms).await?;
    let cost = cost_milli(op.cost);
    let changed = match per {
        Some(per) => {
            let sql = format!(
                "UPDATE budgets SET balance_milli = ({AVAIL_EVERY}) - $4, updated_at_ms = GREATEST(updated_at_ms, $2)
                 WHERE key = $5 AND ({AVAIL_EVERY}) >= $4"
            );
            client.execute(&sql, &[&cap, &now_ms, &per, &cost, &op.key]).await
        }
        None => {
            client
                .execute(
                    "UPDATE budgets SET balance_milli = balance_milli - $2, updated_at_ms = GREATEST(updated_at_ms, $1)
                     WHERE key = $3 AND balance_milli >= $2",
                    &[&now_ms, &cost, &op.key],
                )
                .await
        }
    }
    .map_err(map_pg)?;
    Ok(changed == 1)
}

pub(super) struct Job {
    pub(super) append: Append,
    pub(super) body_jcs: String,
    pub(super) done: oneshot::Sender<Result<Appended>>,
}

/// Appends one record inside the batch transaction (under the head lock).
pub(super) async fn append_one(
    tx: &tokio_postgres::Transaction<'_>,
    head: &mut (i64, String),
    statements: &Statements,
    known_rule_sets: &mut HashSet<String>,
    pipelined_savepoint: bool,
    append: Append,
    mut body_jcs: String,
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
    let suspended = !refuse_if_suspended.is_empty()
        && tx
            .query_opt(&statements.suspended, &[&refuse_if_suspended])
            .await
            .map_err(map_pg)?
            .is_some();
    // Closed (or unknown): refused. Open: marked answered; the row stays
    // locked until the batch commits, so a concurrent close waits, re-reads
    // it and leaves it open.
    let lease_closed = match &refuse_if_lease_closed {
        Some(id) => {
            tx.execute(&statements.lease_answered, &[id, &entry.time_ms])
                .await
                .map_err(map_pg)?
                == 0
        }
        None => false,
    };
    let mut spent = !suspended && !lease_closed;
    if spent && !spend.is_empty() {
        tx.batch_execute("SAVEPOINT spend").await.map_err(map_pg)?;
        for op in &spend {
            if !spend_one(tx, op, entry.time_ms).await? {
                spent = false;
                break;
            }
        }
        let sql = if spent {
            "RELEASE SAVEPOINT spend"
        } else {
            "ROLLBACK TO SAVEPOINT spend; RELEASE SAVEPOINT spend"
        };
        tx.batch_execute(sql).await.map_err(map_pg)?;
    }
    // A closed lease first: its caller revokes what was minted.
    if lease_closed {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "lease_closed")?;
    } else if suspended {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "suspended")?;
    } else if !spent {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, "budget_exhausted")?;
    }
    // The rule set (unless this writer committed it before), the lease and
    // the record go out pipelined: one round trip, executed in order.
    let rule_set = rule_set.filter(|(hash, _)| !known_rule_sets.contains(hash.as_str()));
    let rule_set_insert = async {
        if let Some((hash, body)) = &rule_set {
            let body: &str = body;
            tx.execute(&statements.rule_set, &[hash, &body])
                .await
                .map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    let lease_insert = async {
        if spent && let Some(l) = &lease {
            tx.execute(
                &statements.lease,
                &[
                    &l.id,
                    &l.request_id,
                    &l.identity,
                    &l.grant,
                    &l.node,
                    &l.kind.as_str(),
                    &l.revocation.as_str(),
                    &l.issued_at_ms,
                    &l.expires_at_ms,
                    &l.revoked_at_ms,
                    &l.task_ended_at_ms,
                ],
            )
            .await
            .map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    let record = LogRecord::seal_canonical(head.0 + 1, entry, &body_jcs, head.1.clone());
    let e = &record.entry;
    let log_insert = async {
        tx.execute(
            &statements.log,
            &[
                &record.seq,
                &e.time_ms,
                &e.kind.as_str(),
                &e.request_id,
                &e.identity,
                &e.grant,
                &e.node,
                &e.outcome,
                &body_jcs,
                &record.prev_hash,
                &record.hash,
            ],
        )
        .await
        .map_err(map_pg)
    };
    let savepoint = |sql: &'static str| async move {
        if pipelined_savepoint {
            tx.batch_execute(sql).await.map_err(map_pg)?;
        }
        Ok::<(), StoreError>(())
    };
    tokio::try_join!(
        savepoint("SAVEPOINT job"),
        rule_set_insert,
        lease_insert,
        log_insert,
        savepoint("RELEASE SAVEPOINT job")
    )?;
    if let Some((hash, _)) = rule_set {
        known_rule_sets.insert(hash);
    }
    *head = (record.seq, record.hash.clone());
    Ok(Appended {
        seq: record.seq,
        hash: record.hash,
        spent,
        suspended,
        lease_closed,
    })
}

/// The writer's inserts, prepared once per connection, so a job's statements
/// go out pipelined (one round trip) and execute in the order sent.
pub(super) struct Statements {
    pub(super) rule_set: tokio_postgres::Statement,
    pub(super) lease: tokio_postgres::Statement,
    pub(super) log: tokio_postgres::Statement,
    pub(super) suspended: tokio_postgres::Statement,
    pub(super) lease_answered: tokio_postgres::Statement,
}

impl Statements {
    pub(super) async fn prepare(
        client: &Client,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            rule_set: client
                .prepare("INSERT INTO rule_sets(hash, body) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING")
                .await?,
            lease: client
                .prepare(
                    "INSERT INTO leases(id, request_id, identity, grant_name, node, kind, revocation, issued_at_ms, expires_at_ms,
                                        revoked_at_ms, task_ended_at_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                )
                .await?,
            log: client
                .prepare(
                    "INSERT INTO log(seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                )
                .await?,
            suspended: client
                .prepare("SELECT 1 FROM suspensions WHERE subject = ANY($1) LIMIT 1")
                .await?,
            lease_answered: client
                .prepare(
                    "UPDATE leases SET answered_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
                )
                .await?,
        })
    }
}

/// Runs one batch: lock the head, append each job in its own savepoint, commit.
pub(super) async fn run_batch(
    client: &mut Client,
    statements: &Statements,
    batch: Vec<Job>,
    rule_sets: &mut HashSet<String>,
) {
    // Rule sets this batch stores join the committed set only if it commits.
    let mut known = rule_sets.clone();
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(unavailable(&e)));
            }
            return;
        }
    };
    let head = tx
        .query_one(
            "SELECT seq, hash FROM log_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await;
    let mut head: (i64, String) = match head {
        Ok(row) => (row.get(0), row.get(1)),
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(unavailable(&e)));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let saved = head.clone();
        let known_before = known.clone();
        // A job that writes nothing before its inserts opens and releases
        // its savepoint in the same pipeline as them; one with spends or a
        // lease to mark answered opens it first, so a failure undoes those.
        let pipelined = job.append.spend.is_empty() && job.append.refuse_if_lease_closed.is_none();
        let result = async {
            if !pipelined {
                tx.batch_execute("SAVEPOINT job").await.map_err(map_pg)?;
            }
            match append_one(
                &tx,
                &mut head,
                statements,
                &mut known,
                pipelined,
                job.append,
                job.body_jcs,
            )
            .await
            {
                Ok(appended) => {
                    if !pipelined {
                        tx.batch_execute("RELEASE SAVEPOINT job")
                            .await
                            .map_err(map_pg)?;
                    }
                    Ok(appended)
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map_err(map_pg)?;
                    Err(e)
                }
            }
        }
        .await;
        if result.is_err() {
            head = saved;
            known = known_before;
        }
        results.push((job.done, result));
    }
    let committed = async {
        tx.execute(
            "UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&head.0, &head.1],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)
    }
    .await;
    if committed.is_ok() {
        *rule_sets = known;
    }
    for (done, result) in results {
        let _ = done.send(match &committed {
            Ok(()) => result,
            Err(e) => Err(unavailable(e)),
        });
    }
}
