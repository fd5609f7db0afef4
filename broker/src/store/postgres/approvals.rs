//! Approvals, replaced by version.

use super::*;

#[async_trait]
impl ApprovalStore for PostgresStore {
    async fn create_approval(&self, a: &Approval) -> Result<()> {
        let body = serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO approvals(id, created_at_ms, version, body) VALUES ($1, $2, $3, $4)",
                &[&a.id, &a.created_at_ms, &a.version, &body],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }
    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM approvals WHERE id = $1", &[&id])
            .await
            .map_err(map_pg)?;
        row.map(|r| {
            serde_json::from_str(r.get::<_, &str>(0))
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }
    async fn approvals(&self, since_ms: i64) -> Result<Vec<Approval>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT body FROM approvals WHERE created_at_ms > $1 ORDER BY created_at_ms DESC LIMIT 1000",
                &[&since_ms],
            )
            .await
            .map_err(map_pg)?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }
    async fn update_approval(&self, a: &Approval) -> Result<bool> {
        let mut next = a.clone();
        next.version += 1;
        let body = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE approvals SET version = version + 1, body = $1 WHERE id = $2 AND version = $3",
                &[&body, &a.id, &a.version],
            )
            .await
            .map_err(map_pg)?
            == 1)
    }
}
