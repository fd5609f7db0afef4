//! A batch of appends in a handful of round trips, as SQLite's group
//! commit does it in one transaction: the head, the suspensions and the
//! leases' answers for every job at once; then every job's spend; then
//! every insert and the new head; then the commit. Job by job
//! ([`run_jobwise`]) costs two round trips per record, and a replica's
//! appends wait on each other behind the head's row lock, so that was the
//! PostgreSQL broker's ceiling.
//!
//! Without a savepoint per job, a statement that fails rolls the whole
//! batch back; the batch then runs again job by job, where a failing job is
//! undone alone and the others commit. A failed commit is never retried (it
//! may have committed): its jobs are answered unavailable, as before. A job
//! with more than one spend needs its own savepoint (all or none), so a
//! batch holding one runs job by job.

use futures_util::future::try_join_all;

use super::*;

/// Runs one batch: in a few round trips when it can, else job by job.
pub(super) async fn run_batch(
    client: &mut Client,
    statements: &Statements,
    batch: Vec<Job>,
    rule_sets: &mut HashSet<String>,
) {
    if batched(&batch) {
        match append_batch(client, statements, &batch, rule_sets).await {
            Ok(Some(appended)) => {
                for (job, appended) in batch.into_iter().zip(appended) {
                    let _ = job.done.send(Ok(appended));
                }
                return;
            }
            // Rolled back before the commit: once more, job by job.
            Ok(None) => {}
            Err(e) => {
                let message = match e {
                    StoreError::Unavailable(message) => message,
                    other => other.to_string(),
                };
                for job in batch {
                    let _ = job.done.send(Err(StoreError::Unavailable(message.clone())));
                }
                return;
            }
        }
    }
    run_jobwise(client, statements, batch, rule_sets).await;
}

/// Whether the batch can run without a savepoint per job: no job spends
/// from several buckets (all or none needs its own savepoint), and no job
/// checks a lease an earlier job of the batch starts (the checks run before
/// the inserts).
fn batched(batch: &[Job]) -> bool {
    let mut started = HashSet::new();
    batch.iter().all(|job| {
        let append = &job.append;
        let fits = append.spend.len() <= 1
            && append
                .refuse_if_lease_closed
                .as_ref()
                .is_none_or(|id| !started.contains(id.as_str()));
        if let Some(lease) = &append.lease {
            started.insert(lease.id.as_str());
        }
        fits
    })
}

/// The batch in one transaction: `Ok(None)` if a statement failed before
/// the commit (rolled back); an error if it could not begin or commit.
async fn append_batch(
    client: &mut Client,
    statements: &Statements,
    batch: &[Job],
    rule_sets: &mut HashSet<String>,
) -> Result<Option<Vec<Appended>>> {
    let tx = client.transaction().await.map_err(map_pg)?;
    let mut known = rule_sets.clone();
    match appends(&tx, statements, batch, &mut known).await {
        Ok(appended) => {
            tx.commit().await.map_err(map_pg)?;
            *rule_sets = known;
            Ok(Some(appended))
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "a batch of appends was rolled back; running it job by job");
            tx.rollback()
                .await
                .map_err(|rollback| unavailable(format!("{e}; then the rollback: {rollback}")))?;
            Ok(None)
        }
    }
}

/// Writes the batch's records, spends and leases inside `tx`.
async fn appends(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    batch: &[Job],
    known_rule_sets: &mut HashSet<String>,
) -> Result<Vec<Appended>> {
    // 1. The head (locked first, as every writer does), which subjects are
    // suspended, and each lease checked: closed (or unknown) refuses its
    // record; open, it is marked answered.
    let mut subjects: Vec<&str> = batch
        .iter()
        .flat_map(|job| job.append.refuse_if_suspended.iter().map(String::as_str))
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    let head = locked_head(tx, statements);
    let suspended = async {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        tx.query(&statements.suspended_of, &[&subjects])
            .await
            .map_err(map_pg)
    };
    let lease_closed = try_join_all(batch.iter().map(|job| async move {
        let Some(id) = &job.append.refuse_if_lease_closed else {
            return Ok(false);
        };
        let marked = tx
            .execute(&statements.lease_answered, &[id, &job.append.entry.time_ms])
            .await
            .map_err(map_pg)?;
        Ok::<bool, StoreError>(marked == 0)
    }));
    let (head, suspended, lease_closed) = tokio::try_join!(biased; head, suspended, lease_closed)?;
    let suspended: HashSet<String> = suspended.iter().map(|row| row.get(0)).collect();
    let refused: Vec<(bool, bool)> = batch
        .iter()
        .zip(&lease_closed)
        .map(|(job, closed)| {
            let append = &job.append;
            let suspended = append
                .refuse_if_suspended
                .iter()
                .any(|s| suspended.contains(s));
            (suspended, *closed)
        })
        .collect();

    // 2. The spend of every job nothing refused, in batch order (each one
    // conditional update: it pays whole or changes nothing).
    let paid = try_join_all(batch.iter().zip(&refused).map(|(job, refused)| {
        let append = &job.append;
        async move {
            match append.spend.as_slice() {
                [] => Ok(true),
                [op] if *refused == (false, false) => {
                    spend_one(tx, statements, op, append.entry.time_ms).await
                }
                [_] => Ok(false),
                _ => Err(unavailable("a batch holds a job with several spends")),
            }
        }
    }))
    .await?;

    // 3. The records, sealed in order, each with its final outcome.
    let mut head = head;
    let mut sealed = Vec::with_capacity(batch.len());
    for ((job, (suspended, lease_closed)), paid) in batch.iter().zip(&refused).zip(&paid) {
        let spent = !suspended && !lease_closed && *paid;
        // The record is sealed and stored from `body_jcs`; the body's tree
        // (if the caller built one) is not copied.
        let e = &job.append.entry;
        let mut entry = LogEntry {
            time_ms: e.time_ms,
            kind: e.kind,
            request_id: e.request_id.clone(),
            identity: e.identity.clone(),
            grant: e.grant.clone(),
            node: e.node.clone(),
            outcome: e.outcome.clone(),
            body: serde_json::Value::Null,
        };
        let body_jcs = match refusal(*lease_closed, *suspended, spent) {
            Some(outcome) => mark_final_outcome(&mut entry, &job.body_jcs, outcome)?,
            None => job.body_jcs.clone(),
        };
        let record = head.seal_next(&statements.chain, entry, &body_jcs);
        let appended = Appended {
            seq: record.seq,
            hash: record.hash.clone(),
            spent,
            suspended: *suspended,
            lease_closed: *lease_closed,
        };
        sealed.push((record, body_jcs, appended));
    }

    // 4. The new rule sets, the leases, the records and the head.
    let mut new_rule_sets = Vec::new();
    for job in batch {
        if let Some((hash, body)) = &job.append.rule_set
            && known_rule_sets.insert(hash.clone())
        {
            new_rule_sets.push((hash, body));
        }
    }
    let rule_set_inserts = try_join_all(new_rule_sets.iter().map(|(hash, body)| async move {
        let body: &str = body;
        tx.execute(&statements.rule_set, &[hash, &body])
            .await
            .map_err(map_pg)
    }));
    let lease_inserts = try_join_all(
        batch
            .iter()
            .zip(&sealed)
            .filter(|(_, (_, _, appended))| appended.spent)
            .filter_map(|(job, _)| job.append.lease.as_ref())
            .map(|lease| insert_lease(tx, statements, lease)),
    );
    let record_inserts = try_join_all(
        sealed
            .iter()
            .map(|(record, body_jcs, _)| insert_record(tx, statements, record, body_jcs)),
    );
    let head_update = async {
        tx.execute(
            &statements.head_update,
            &[&statements.chain, &head.seq, &head.hash, &head.time_ms],
        )
        .await
        .map_err(map_pg)
    };
    tokio::try_join!(biased; rule_set_inserts, lease_inserts, record_inserts, head_update)?;
    Ok(sealed
        .into_iter()
        .map(|(_, _, appended)| appended)
        .collect())
}
