//! The writer task's side: each batch takes the chain head's row lock,
//! appends its records (with their spends and leases, savepoint by
//! savepoint) in one transaction, and answers each append.

use super::*;

pub(super) const AVAIL_EVERY: &str = "CASE WHEN balance_milli >= $1 THEN balance_milli
     ELSE LEAST($1, balance_milli + (LEAST(GREATEST($2 - updated_at_ms, 0), $3) * $1) / $3) END";

/// Creates a full bucket if the key has none.
const ENSURE_BUCKET: &str = "INSERT INTO budgets(key, balance_milli, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING";

pub(super) async fn ensure_bucket(
    client: &impl tokio_postgres::GenericClient,
    key: &str,
    cap: i64,
    now_ms: i64,
) -> Result<()> {
    client
        .execute(ENSURE_BUCKET, &[&key, &cap, &now_ms])
        .await
        .map_err(map_pg)?;
    Ok(())
}

/// Spends `op` with its statements sent at once (the bucket is created
/// full if new, then charged if it can pay): whether it paid. A cost above
/// the capacity creates no bucket (a new one could not pay it).
pub(super) async fn spend_one(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    op: &SpendOp,
    now_ms: i64,
) -> Result<bool> {
    let (cap, per) = bucket_params(&op.policy);
    let cost = cost_milli(op.cost);
    let ensure = async {
        if cost > cap {
            return Ok(0);
        }
        tx.execute(&statements.ensure_bucket, &[&op.key, &cap, &now_ms])
            .await
    };
    let charge = async {
        match per {
            Some(per) => {
                tx.execute(
                    &statements.spend_every,
                    &[&cap, &now_ms, &per, &cost, &op.key],
                )
                .await
            }
            None => {
                tx.execute(&statements.spend_total, &[&now_ms, &cost, &op.key])
                    .await
            }
        }
    };
    let (_, changed) = tokio::try_join!(biased; ensure, charge).map_err(map_pg)?;
    Ok(changed == 1)
}

pub(super) struct Job {
    pub(super) append: Append,
    pub(super) body_jcs: String,
    pub(super) done: oneshot::Sender<Result<Appended>>,
}

/// Appends one record inside the batch transaction (under the head lock),
/// in two round trips: the job's savepoint, its refusal checks and its
/// spends go out together; the spends are undone if any cannot pay or the
/// append is refused, and that, the inserts and the savepoint's release go
/// out together. Statements sent together execute in the order sent; a
/// failing one aborts those after it, and the caller rolls the job back.
///
/// The order sent is the order written: each statement is sent on its
/// future's first poll (every one is prepared, so none waits for a parse
/// first), `try_join!` is `biased` (first poll in the order listed), and
/// `try_join_all` polls its futures in the order given (up to 30 in a
/// list, beyond that through a first-in-first-out queue).
pub(super) async fn append_one(
    tx: &tokio_postgres::Transaction<'_>,
    head: &mut Head,
    statements: &Statements,
    known_rule_sets: &mut HashSet<String>,
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
    let time_ms = entry.time_ms;
    let batch = |sql: &'static str| async move { tx.batch_execute(sql).await.map_err(map_pg) };
    let suspended = async {
        if refuse_if_suspended.is_empty() {
            return Ok(false);
        }
        let row = tx
            .query_opt(&statements.suspended, &[&refuse_if_suspended])
            .await
            .map_err(map_pg)?;
        Ok(row.is_some())
    };
    // Closed (or unknown): refused. Open: marked answered; the row stays
    // locked until the batch commits, so a concurrent close waits, re-reads
    // it and leaves it open.
    let lease_closed = async {
        let Some(id) = &refuse_if_lease_closed else {
            return Ok(false);
        };
        let marked = tx
            .execute(&statements.lease_answered, &[id, &time_ms])
            .await
            .map_err(map_pg)?;
        Ok(marked == 0)
    };
    // All spends or none: each is charged, and all are undone below unless
    // every one paid.
    let paid = async {
        if spend.is_empty() {
            return Ok(true);
        }
        let charges = spend
            .iter()
            .map(|op| spend_one(tx, statements, op, time_ms));
        let (_, paid) = tokio::try_join!(
            biased;
            batch("SAVEPOINT spend"),
            futures_util::future::try_join_all(charges)
        )?;
        Ok::<bool, StoreError>(paid.into_iter().all(|p| p))
    };
    let ((), suspended, lease_closed, paid) = tokio::try_join!(
        biased;
        batch("SAVEPOINT job"),
        suspended,
        lease_closed,
        paid
    )?;
    let spent = !suspended && !lease_closed && paid;
    if let Some(outcome) = refusal(lease_closed, suspended, spent) {
        body_jcs = mark_final_outcome(&mut entry, &body_jcs, outcome)?;
    }
    let settle_spends = async {
        match (spend.is_empty(), spent) {
            (true, _) => Ok(()),
            (false, true) => batch("RELEASE SAVEPOINT spend").await,
            (false, false) => batch("ROLLBACK TO SAVEPOINT spend; RELEASE SAVEPOINT spend").await,
        }
    };
    // The rule set (unless this writer committed it before), the lease and
    // the record.
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
        match &lease {
            Some(l) if spent => insert_lease(tx, statements, l).await,
            _ => Ok(()),
        }
    };
    // The head moves here; a job that fails after is rolled back by its
    // caller, which puts the head back.
    let record = head.seal_next(&statements.chain, entry, &body_jcs);
    let log_insert = insert_record(tx, statements, &record, &body_jcs);
    tokio::try_join!(
        biased;
        settle_spends,
        rule_set_insert,
        lease_insert,
        log_insert,
        batch("RELEASE SAVEPOINT job")
    )?;
    if let Some((hash, _)) = rule_set {
        known_rule_sets.insert(hash);
    }
    Ok(Appended {
        seq: record.seq,
        hash: record.hash,
        spent,
        suspended,
        lease_closed,
    })
}

/// Starts tracking `l`.
pub(super) async fn insert_lease(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    l: &Lease,
) -> Result<()> {
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
    Ok(())
}

/// Inserts the sealed `record`, its body in canonical form.
pub(super) async fn insert_record(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    record: &LogRecord,
    body_jcs: &str,
) -> Result<()> {
    let e = &record.entry;
    tx.execute(
        &statements.log,
        &[
            &record.chain,
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
    .map_err(map_pg)?;
    Ok(())
}

/// The writer's inserts, prepared once per connection, so a job's statements
/// go out pipelined (one round trip) and execute in the order sent.
pub(super) struct Statements {
    /// The chain the writer appends to.
    pub(super) chain: String,
    pub(super) rule_set: tokio_postgres::Statement,
    pub(super) lease: tokio_postgres::Statement,
    pub(super) log: tokio_postgres::Statement,
    pub(super) suspended: tokio_postgres::Statement,
    pub(super) lease_answered: tokio_postgres::Statement,
    pub(super) ensure_bucket: tokio_postgres::Statement,
    /// A spend from a bucket that refills `per` (see `AVAIL_EVERY`).
    pub(super) spend_every: tokio_postgres::Statement,
    /// A spend from a bucket that never refills.
    pub(super) spend_total: tokio_postgres::Statement,
    /// The chain's head, locked (no row: the chain was retired).
    pub(super) head: tokio_postgres::Statement,
    pub(super) head_update: tokio_postgres::Statement,
    /// Which of the subjects given are suspended.
    pub(super) suspended_of: tokio_postgres::Statement,
}

impl Statements {
    /// Prepares the statements on `client` and registers `chain` (once per
    /// connection: a chain stays registered).
    pub(super) async fn prepare(
        client: &Client,
        chain: &str,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        client
            .execute(REGISTER_CHAIN, &[&chain, &crate::clock::now_ms()])
            .await?;
        Ok(Self {
            chain: chain.to_owned(),
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
                    "INSERT INTO log(chain, seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
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
            ensure_bucket: client.prepare(ENSURE_BUCKET).await?,
            spend_every: client
                .prepare(&format!(
                    "UPDATE budgets SET balance_milli = ({AVAIL_EVERY}) - $4, updated_at_ms = GREATEST(updated_at_ms, $2)
                     WHERE key = $5 AND ({AVAIL_EVERY}) >= $4"
                ))
                .await?,
            spend_total: client
                .prepare(
                    "UPDATE budgets SET balance_milli = balance_milli - $2, updated_at_ms = GREATEST(updated_at_ms, $1)
                     WHERE key = $3 AND balance_milli >= $2",
                )
                .await?,
            head: client
                .prepare(
                    "SELECT seq, hash, time_ms FROM log_chains WHERE chain = $1 AND retired_at_ms IS NULL FOR UPDATE",
                )
                .await?,
            head_update: client
                .prepare("UPDATE log_chains SET seq = $2, hash = $3, time_ms = $4 WHERE chain = $1")
                .await?,
            suspended_of: client
                .prepare("SELECT subject FROM suspensions WHERE subject = ANY($1)")
                .await?,
        })
    }
}

/// Registers a chain (a no-op for one registered before).
pub(super) const REGISTER_CHAIN: &str =
    "INSERT INTO log_chains(chain, seq, hash, time_ms, registered_at_ms)
     VALUES ($1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0, $2)
     ON CONFLICT (chain) DO NOTHING";

/// The writer's chain head, locked until the transaction ends; unavailable
/// once the chain was retired (an operator took this replica out of
/// service: it appends nothing more).
pub(super) async fn locked_head(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
) -> Result<Head> {
    let row = tx
        .query_opt(&statements.head, &[&statements.chain])
        .await
        .map_err(map_pg)?;
    row.map(|r| Head {
        seq: r.get(0),
        hash: r.get(1),
        time_ms: r.get(2),
    })
    .ok_or_else(|| {
        unavailable(format!(
            "this replica's chain {:?} was retired: it appends nothing more (start the replica with a new data directory, and so a new chain)",
            statements.chain
        ))
    })
}

/// Runs one batch job by job: lock the head, append each job in its own
/// savepoint (a job that fails is undone alone), commit.
pub(super) async fn run_jobwise(
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
    let mut head = match locked_head(&tx, statements).await {
        Ok(head) => head,
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let saved = head.clone();
        let known_before = known.clone();
        let result = async {
            match append_one(
                &tx,
                &mut head,
                statements,
                &mut known,
                job.append,
                job.body_jcs,
            )
            .await
            {
                Ok(appended) => Ok(appended),
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
            &statements.head_update,
            &[&statements.chain, &head.seq, &head.hash, &head.time_ms],
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
