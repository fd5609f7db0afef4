//! Suspensions and trust signals.

use super::*;

#[async_trait]
impl SubjectStore for SqliteStore {
    async fn suspend(&self, s: &SuspensionRecord) -> Result<()> {
        let s = s.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO suspensions(subject, reason, by_whom, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(subject) DO UPDATE SET reason = excluded.reason, by_whom = excluded.by_whom, at_ms = excluded.at_ms",
                    params![s.subject, s.reason, s.by, s.at_ms],
                )
                .map_err(map_sql)?;
            w.suspended.insert(s.subject);
            Ok(())
        })
        .await
    }
    async fn resume(&self, subject: &str) -> Result<bool> {
        let subject = subject.to_owned();
        self.write(move |w| {
            let was = w
                .conn
                .execute("DELETE FROM suspensions WHERE subject = ?1", [&subject])
                .map_err(map_sql)?
                == 1;
            w.resumed.push(subject);
            Ok(was)
        })
        .await
    }
    async fn suspension(&self, subject: &str) -> Result<Option<SuspensionRecord>> {
        // A node's every request asks first (see `routes::agents`).
        if let Some(cached) = self.hot.suspension(subject) {
            return Ok(cached);
        }
        self.read_now(|conn| read_suspension(conn, subject))
    }
    async fn suspended_subjects(&self) -> Result<Vec<String>> {
        self.read_now(|conn| {
            let mut subjects: Vec<String> = suspended_subjects(conn)?.into_iter().collect();
            subjects.sort();
            Ok(subjects)
        })
    }
    async fn put_signal(&self, sig: &SignalRecord) -> Result<()> {
        let sig = sig.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO signals(subject, kind, source, value, observed_at_ms, ttl_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(subject, kind, source) DO UPDATE SET value = excluded.value,
                        observed_at_ms = excluded.observed_at_ms, ttl_seconds = excluded.ttl_seconds",
                    params![sig.subject, sig.kind, sig.source, sig.value, sig.observed_at_ms, i64::try_from(sig.ttl_seconds).unwrap_or(i64::MAX)],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }
    async fn signals(&self, subjects: &[&str]) -> Result<Vec<SignalRecord>> {
        self.read_now(|conn| read_signals(conn, subjects))
    }
}
