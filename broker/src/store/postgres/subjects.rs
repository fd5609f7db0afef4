//! Suspensions and trust signals.

use super::*;

#[async_trait]
impl SubjectStore for PostgresStore {
    /// Takes every chain head's lock first (in one order, the table locked
    /// against new chains), as each
    /// replica's append batch takes its own: at READ COMMITTED an append's
    /// suspension check sees only what committed before it ran, so without
    /// the locks a batch that checked just before this commit could commit
    /// its lease after the caller listed the leases to revoke. With them,
    /// every batch either runs after this commit (and its check sees the
    /// suspension) or commits before it (and its lease is listed).
    async fn suspend(&self, s: &SuspensionRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_pg)?;
        // The heads first (each batch in flight commits), then the table,
        // against a chain registering meanwhile (its replica's first batch
        // could pass its check unlocked), then the heads again, with any
        // chain registered before the table lock. A batch waiting on a head
        // holds only a row-share lock, which the table lock does not wait
        // for: no deadlock.
        let heads = "SELECT chain FROM log_chains ORDER BY chain FOR UPDATE";
        tx.query(heads, &[]).await.map_err(map_pg)?;
        tx.batch_execute("LOCK TABLE log_chains IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(map_pg)?;
        tx.query(heads, &[]).await.map_err(map_pg)?;
        tx.execute(
            "INSERT INTO suspensions(subject, reason, by_whom, at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (subject) DO UPDATE SET reason = EXCLUDED.reason, by_whom = EXCLUDED.by_whom, at_ms = EXCLUDED.at_ms",
            &[&s.subject, &s.reason, &s.by, &s.at_ms],
        )
        .await
        .map_err(map_pg)?;
        tx.commit().await.map_err(map_pg)
    }
    async fn resume(&self, subject: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM suspensions WHERE subject = $1", &[&subject])
            .await
            .map_err(map_pg)?
            == 1)
    }
    async fn suspension(&self, subject: &str) -> Result<Option<SuspensionRecord>> {
        let (client, statement) = self.prepared(SUSPENSION).await?;
        let row = client
            .query_opt(&statement, &[&subject])
            .await
            .map_err(|e| self.stale(e))?;
        Ok(row.as_ref().map(suspension_row))
    }
    async fn suspended_subjects(&self) -> Result<Vec<String>> {
        let rows = self
            .client()
            .await?
            .query("SELECT subject FROM suspensions ORDER BY subject", &[])
            .await
            .map_err(map_pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
    async fn put_signal(&self, sig: &SignalRecord) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO signals(subject, kind, source, value, observed_at_ms, ttl_seconds) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (subject, kind, source) DO UPDATE SET value = EXCLUDED.value,
                    observed_at_ms = EXCLUDED.observed_at_ms, ttl_seconds = EXCLUDED.ttl_seconds",
                &[
                    &sig.subject,
                    &sig.kind,
                    &sig.source,
                    &i16::from(sig.value),
                    &sig.observed_at_ms,
                    &i64::try_from(sig.ttl_seconds).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }
    async fn signals(&self, subjects: &[&str]) -> Result<Vec<SignalRecord>> {
        let (client, statement) = self.prepared(SIGNALS_OF).await?;
        let rows = client
            .query(&statement, &[&subjects])
            .await
            .map_err(|e| self.stale(e))?;
        Ok(rows.iter().map(signal_row).collect())
    }
}

pub(super) const SUSPENSION: &str =
    "SELECT subject, reason, by_whom, at_ms FROM suspensions WHERE subject = $1";
pub(super) const SUSPENSIONS_OF: &str =
    "SELECT subject, reason, by_whom, at_ms FROM suspensions WHERE subject = ANY($1)";
pub(super) const SIGNALS_OF: &str =
    "SELECT subject, kind, source, value, observed_at_ms, ttl_seconds FROM signals
     WHERE subject = ANY($1) ORDER BY subject, kind, source";

/// A row of [`SUSPENSION`] or [`SUSPENSIONS_OF`].
pub(super) fn suspension_row(r: &Row) -> SuspensionRecord {
    SuspensionRecord {
        subject: r.get(0),
        reason: r.get(1),
        by: r.get(2),
        at_ms: r.get(3),
    }
}

/// A row of [`SIGNALS_OF`].
pub(super) fn signal_row(r: &Row) -> SignalRecord {
    SignalRecord {
        subject: r.get(0),
        kind: r.get(1),
        source: r.get(2),
        value: u8::try_from(r.get::<_, i16>(3)).unwrap_or(0),
        observed_at_ms: r.get(4),
        ttl_seconds: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
    }
}
