//! Approvals, replaced by version.

use super::*;

#[async_trait]
impl ApprovalStore for SqliteStore {
    async fn create_approval(&self, a: &Approval) -> Result<()> {
        let body = serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, created, version) = (a.id.clone(), a.created_at_ms, a.version);
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO approvals(id, created_at_ms, version, body) VALUES (?1, ?2, ?3, ?4)",
                    params![id, created, version, body],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }
    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let body: Option<String> = self.read_now(|conn| {
            conn.query_row("SELECT body FROM approvals WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(map_sql)
        })?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
    async fn approvals(&self, since_ms: i64) -> Result<Vec<Approval>> {
        let bodies: Vec<String> = self.read_now(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM approvals WHERE created_at_ms > ?1 ORDER BY created_at_ms DESC LIMIT 1000",
                )
                .map_err(map_sql)?;
            let rows = stmt
                .query_map([since_ms], |r| r.get(0))
                .map_err(map_sql)?
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(map_sql)?;
            Ok(rows)
        })?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
    async fn update_approval(&self, a: &Approval) -> Result<bool> {
        let mut next = a.clone();
        next.version += 1;
        let body = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, version) = (a.id.clone(), a.version);
        self.write(move |w| {
            Ok(w.conn
                .execute(
                    "UPDATE approvals SET version = version + 1, body = ?1 WHERE id = ?2 AND version = ?3",
                    params![body, id, version],
                )
                .map_err(map_sql)?
                == 1)
        })
        .await
    }
}
