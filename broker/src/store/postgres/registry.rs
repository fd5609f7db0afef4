//! Join tokens, node SVID lineages, registration entries and seen CI tokens.

use super::*;

#[async_trait]
impl RegistryStore for PostgresStore {
    async fn create_join_token(
        &self,
        token_hash: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO join_tokens(token_hash, node, expires_at_ms) VALUES ($1, $2, $3)",
                &[&token_hash, &node, &expires_at_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }
    async fn consume_join_token(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE join_tokens SET used_at_ms = $2 WHERE token_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2
                 RETURNING node",
                &[&token_hash, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.map(|r| r.get(0)))
    }
    async fn node_enrolled(&self, node: &str, serial: &str, now_ms: i64) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES ($1, $2, NULL, 1, $3) ON CONFLICT (node) DO UPDATE SET serial = excluded.serial, new_serial = NULL, generation = node_svids.generation + 1, updated_at_ms = excluded.updated_at_ms RETURNING generation",
                &[&node, &serial, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.get(0))
    }
    async fn node_renewed(
        &self,
        node: &str,
        presented: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<NodeRenewal> {
        let client = self.client().await?;
        let renew = || async {
            client
                .query_opt(
                    "UPDATE node_svids SET serial = CASE WHEN new_serial = $2 THEN new_serial ELSE serial END, new_serial = $3, updated_at_ms = $4 WHERE node = $1 AND (serial = $2 OR new_serial = $2) RETURNING generation",
                    &[&node, &presented, &new, &now_ms],
                )
                .await
                .map_err(map_pg)
                .map(|row| row.map(|r| r.get::<_, i64>(0)))
        };
        if let Some(generation) = renew().await? {
            return Ok(NodeRenewal::Renewed { generation });
        }
        // No lineage yet (enrolled before they were kept): it starts with
        // the SVID presented (once, across replicas).
        client
            .execute(
                "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES ($1, $2, NULL, 1, $3) ON CONFLICT (node) DO NOTHING",
                &[&node, &presented, &now_ms],
            )
            .await
            .map_err(map_pg)?;
        if let Some(generation) = renew().await? {
            return Ok(NodeRenewal::Renewed { generation });
        }
        let row = client
            .query_one(
                "SELECT generation FROM node_svids WHERE node = $1",
                &[&node],
            )
            .await
            .map_err(map_pg)?;
        Ok(NodeRenewal::Stale {
            generation: row.get(0),
        })
    }
    async fn consume_ci_jti(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM ci_jtis WHERE expires_at_ms <= $1", &[&now_ms])
            .await
            .map_err(map_pg)?;
        // Atomic across replicas: the primary key admits one insert.
        let n = client
            .execute(
                "INSERT INTO ci_jtis(key, expires_at_ms) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &expires_at_ms],
            )
            .await
            .map_err(map_pg)?;
        Ok(n == 1)
    }
    async fn create_entry(&self, e: &Entry) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO entries(id, spiffe_id, parent, selectors, grants, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &e.id,
                    &e.spiffe_id,
                    &e.parent,
                    &serde_json::to_string(&e.selectors).unwrap_or_default(),
                    &serde_json::to_string(&e.grants).unwrap_or_default(),
                    &e.created_at_ms,
                ],
            )
            .await
            .map_err(map_pg)?;
        Ok(())
    }
    async fn entries(&self, parent: Option<&str>) -> Result<Vec<Entry>> {
        const COLUMNS: &str =
            "SELECT id, spiffe_id, parent, selectors, grants, created_at_ms FROM entries";
        // Two statements, so one parent's read is an index search under a
        // generic plan too (`$1 IS NULL OR parent = $1` would scan). A
        // node's entries are read on each of its requests: prepared.
        let rows = match parent {
            Some(parent) => {
                let (client, statement) = self
                    .prepared(&format!(
                        "{COLUMNS} WHERE parent = $1 ORDER BY created_at_ms, id"
                    ))
                    .await?;
                client
                    .query(&statement, &[&parent])
                    .await
                    .map_err(|e| self.stale(e))
            }
            None => self
                .client()
                .await?
                .query(&format!("{COLUMNS} ORDER BY created_at_ms, id"), &[])
                .await
                .map_err(map_pg),
        }?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let parse = |s: String| {
                    serde_json::from_str(&s)
                        .map_err(|e| StoreError::Corrupt(format!("entry {id}: {e}")))
                };
                Ok(Entry {
                    spiffe_id: r.get(1),
                    parent: r.get(2),
                    selectors: parse(r.get(3))?,
                    grants: parse(r.get(4))?,
                    created_at_ms: r.get(5),
                    id: id.clone(),
                })
            })
            .collect()
    }
    async fn delete_entry(&self, id: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM entries WHERE id = $1", &[&id])
            .await
            .map_err(map_pg)?
            == 1)
    }
}
