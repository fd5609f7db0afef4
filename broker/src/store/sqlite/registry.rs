//! Join tokens, node SVID lineages, registration entries and seen CI tokens.

use super::*;

#[async_trait]
impl RegistryStore for SqliteStore {
    async fn create_join_token(
        &self,
        token_hash: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        let (h, n) = (token_hash.to_owned(), node.to_owned());
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO join_tokens(token_hash, node, expires_at_ms) VALUES (?1, ?2, ?3)",
                    params![h, n, expires_at_ms],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }
    async fn consume_join_token(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>> {
        let h = token_hash.to_owned();
        self.write(move |w| {
            w.conn
                .query_row(
                    "UPDATE join_tokens SET used_at_ms = ?2 WHERE token_hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2
                     RETURNING node",
                    params![h, now_ms],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_sql)
        })
        .await
    }
    async fn node_enrolled(&self, node: &str, serial: &str, now_ms: i64) -> Result<i64> {
        let (node, serial) = (node.to_owned(), serial.to_owned());
        self.write(move |w| {
            w.conn
                .query_row(
                    "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES (?1, ?2, NULL, 1, ?3) ON CONFLICT (node) DO UPDATE SET serial = excluded.serial, new_serial = NULL, generation = node_svids.generation + 1, updated_at_ms = excluded.updated_at_ms RETURNING generation",
                    params![node, serial, now_ms],
                    |r| r.get(0),
                )
                .map_err(map_sql)
        })
        .await
    }
    async fn node_renewed(
        &self,
        node: &str,
        presented: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<NodeRenewal> {
        let (node, presented, new) = (node.to_owned(), presented.to_owned(), new.to_owned());
        self.write(move |w| {
            let renew = |c: &Connection| {
                c.query_row(
                    "UPDATE node_svids SET serial = CASE WHEN new_serial = ?2 THEN new_serial ELSE serial END, new_serial = ?3, updated_at_ms = ?4 WHERE node = ?1 AND (serial = ?2 OR new_serial = ?2) RETURNING generation",
                    params![node, presented, new, now_ms],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(map_sql)
            };
            if let Some(generation) = renew(&w.conn)? {
                return Ok(NodeRenewal::Renewed { generation });
            }
            // No lineage yet (enrolled before they were kept): it starts
            // with the SVID presented.
            w.conn
                .execute(
                    "INSERT INTO node_svids(node, serial, new_serial, generation, updated_at_ms) VALUES (?1, ?2, NULL, 1, ?3) ON CONFLICT (node) DO NOTHING",
                    params![node, presented, now_ms],
                )
                .map_err(map_sql)?;
            if let Some(generation) = renew(&w.conn)? {
                return Ok(NodeRenewal::Renewed { generation });
            }
            let generation = w
                .conn
                .query_row("SELECT generation FROM node_svids WHERE node = ?1", [&node], |r| r.get(0))
                .map_err(map_sql)?;
            Ok(NodeRenewal::Stale { generation })
        })
        .await
    }
    async fn consume_ci_jti(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
        let key = key.to_owned();
        self.write(move |w| {
            w.conn
                .prepare_cached("DELETE FROM ci_jtis WHERE expires_at_ms <= ?1")
                .and_then(|mut s| s.execute([now_ms]))
                .map_err(map_sql)?;
            w.conn
                .prepare_cached("INSERT OR IGNORE INTO ci_jtis(key, expires_at_ms) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![key, expires_at_ms]))
                .map(|n| n == 1)
                .map_err(map_sql)
        })
        .await
    }
    async fn create_entry(&self, e: &Entry) -> Result<()> {
        let e = e.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO entries(id, spiffe_id, parent, selectors, grants, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        e.id,
                        e.spiffe_id,
                        e.parent,
                        serde_json::to_string(&e.selectors).unwrap_or_default(),
                        serde_json::to_string(&e.grants).unwrap_or_default(),
                        e.created_at_ms
                    ],
                )
                .map_err(map_sql)?;
            Ok(())
        })
        .await
    }
    async fn entries(&self, parent: Option<&str>) -> Result<Vec<Entry>> {
        let Some(parent) = parent else {
            return self.read_now(|conn| read_entries(conn, None));
        };
        // Every issuance reads its node's entries: from memory once seen.
        let (generation, cached) = self.hot.entries(parent);
        if let Some(entries) = cached {
            return Ok(entries.as_ref().clone());
        }
        let entries = self.read_now(|conn| read_entries(conn, Some(parent)))?;
        self.hot.fill_entries(generation, parent, &entries);
        Ok(entries)
    }
    async fn delete_entry(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .execute("DELETE FROM entries WHERE id = ?1", [id])
                .map_err(map_sql)?
                == 1)
        })
        .await
    }
}
