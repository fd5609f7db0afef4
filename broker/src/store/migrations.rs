//! The schema, written once for both backends. Each migration's SQL holds
//! dialect tokens that [`Dialect::render`] spells for SQLite or PostgreSQL;
//! a backend applies [`MIGRATIONS`] in order, each once, recording its
//! version in `schema_migrations`. A new migration is appended here and
//! runs on both.

/// A backend's SQL dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (`INTEGER` for every integer; the log head is the last row).
    Sqlite,
    /// PostgreSQL (sized integers; the log head is a row of its own, which
    /// replicas lock to append in order).
    Postgres,
}

/// The tokens and their spelling: (token, SQLite, PostgreSQL).
const TOKENS: &[(&str, &str, &str)] = &[
    ("{i64}", "INTEGER", "BIGINT"),
    ("{i32}", "INTEGER", "INT"),
    ("{i16}", "INTEGER", "SMALLINT"),
    // The suspensions' `by` column as migration 1 first spelled it for
    // each (`by` is reserved in PostgreSQL); migration 8 gives SQLite the
    // same name.
    ("{by}", "by", "by_whom"),
    (
        "{log_head}",
        "",
        "CREATE TABLE log_head (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL);
     INSERT INTO log_head VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');",
    ),
    // PostgreSQL's chains, one per replica (see `crate::log`): each with
    // its head (and the head's time), its pruned base and whether it was retired; the one chain
    // kept so far becomes the unnamed chain `''`. SQLite keeps one chain:
    // its head is its last row, its base in `log_base`.
    (
        "{log_chains}",
        "",
        "ALTER TABLE log ADD COLUMN chain TEXT NOT NULL DEFAULT '';
     ALTER TABLE log DROP CONSTRAINT log_pkey;
     ALTER TABLE log ADD PRIMARY KEY (chain, seq);
     ALTER TABLE checkpoints ADD COLUMN chain TEXT NOT NULL DEFAULT '';
     ALTER TABLE checkpoints ADD COLUMN kind TEXT NOT NULL DEFAULT 'checkpoint';
     ALTER TABLE checkpoints DROP CONSTRAINT checkpoints_pkey;
     ALTER TABLE checkpoints ADD PRIMARY KEY (chain, seq, kind);
     CREATE TABLE log_chains (chain TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL, base_seq BIGINT, base_hash TEXT, registered_at_ms BIGINT NOT NULL,
        retired_at_ms BIGINT);
     INSERT INTO log_chains(chain, seq, hash, time_ms, base_seq, base_hash, registered_at_ms)
        SELECT '', h.seq, h.hash, COALESCE((SELECT time_ms FROM log WHERE seq = h.seq), 0), b.seq, b.hash, 0
        FROM log_head h LEFT JOIN log_base b ON TRUE
        WHERE h.seq > 0 OR b.seq IS NOT NULL;
     DROP TABLE log_head;
     DROP TABLE log_base;",
    ),
    // SQLite's record-body dictionaries (see `store::sqlite::bodies`).
    (
        "{body_dictionaries}",
        "CREATE TABLE body_dictionaries (id INTEGER PRIMARY KEY, hash TEXT NOT NULL,
            dict BLOB NOT NULL, created_at_ms INTEGER NOT NULL);",
        "",
    ),
    (
        "{checkpoint_kinds}",
        "",
        "ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'checkpoint';
     ALTER TABLE checkpoints DROP CONSTRAINT IF EXISTS checkpoints_pkey;
     ALTER TABLE checkpoints ADD PRIMARY KEY (chain, seq, kind);",
    ),
    // Records of the outcomes that are not the bulk of traffic (refusals,
    // detections, operators' actions): a partial index the log's queries
    // name verbatim (`NOTABLE_SQL`), so a rare outcome is found without a
    // scan and an allowed issuance pays no index write.
    (
        "{log_notable}",
        "CREATE INDEX log_notable ON log(outcome, seq) WHERE outcome NOT IN ('allow', 'allow_reduced', 'minted');",
        "CREATE INDEX log_notable ON log(chain, outcome, seq) WHERE outcome NOT IN ('allow', 'allow_reduced', 'minted');
     CREATE INDEX checkpoints_time ON checkpoints(time_ms, seq);",
    ),
    (
        "{suspensions_by_whom}",
        "ALTER TABLE suspensions RENAME COLUMN by TO by_whom;",
        "",
    ),
];

impl Dialect {
    /// `sql` with every token spelled in this dialect.
    pub fn render(self, sql: &str) -> String {
        TOKENS
            .iter()
            .fold(sql.to_owned(), |sql, (token, lite, pg)| {
                sql.replace(
                    token,
                    match self {
                        Dialect::Sqlite => lite,
                        Dialect::Postgres => pg,
                    },
                )
            })
    }
}

/// Every migration, oldest first: (version, SQL with dialect tokens).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE log (
        seq {i64} PRIMARY KEY, time_ms {i64} NOT NULL, kind TEXT NOT NULL, request_id TEXT NOT NULL,
        identity TEXT, grant_name TEXT, node TEXT, outcome TEXT, body TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
     CREATE INDEX log_request ON log(request_id);
     CREATE INDEX log_identity ON log(identity, seq);
     CREATE INDEX log_time ON log(time_ms);
     {log_head}
     CREATE TABLE rule_sets (hash TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE checkpoints (seq {i64} PRIMARY KEY, hash TEXT NOT NULL, time_ms {i64} NOT NULL, jws TEXT NOT NULL);
     CREATE TABLE budgets (key TEXT PRIMARY KEY, balance_milli {i64} NOT NULL, updated_at_ms {i64} NOT NULL);
     CREATE TABLE join_tokens (token_hash TEXT PRIMARY KEY, node TEXT NOT NULL, expires_at_ms {i64} NOT NULL, used_at_ms {i64});
     CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent TEXT NOT NULL,
        selectors TEXT NOT NULL, grants TEXT NOT NULL, created_at_ms {i64} NOT NULL);
     CREATE INDEX entries_parent ON entries(parent);
     CREATE TABLE leases (id TEXT PRIMARY KEY, request_id TEXT NOT NULL, identity TEXT NOT NULL, grant_name TEXT NOT NULL,
        node TEXT, kind TEXT NOT NULL, revocation TEXT NOT NULL, issued_at_ms {i64} NOT NULL,
        expires_at_ms {i64} NOT NULL, revoked_at_ms {i64}, task_ended_at_ms {i64});
     CREATE INDEX leases_identity ON leases(identity);
     CREATE TABLE suspensions (subject TEXT PRIMARY KEY, reason TEXT NOT NULL, {by} TEXT NOT NULL, at_ms {i64} NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE signals (subject TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, value {i16} NOT NULL,
            observed_at_ms {i64} NOT NULL, ttl_seconds {i64} NOT NULL, PRIMARY KEY (subject, kind, source));",
    ),
    (
        3,
        "CREATE TABLE log_base (id {i32} PRIMARY KEY CHECK (id = 1), seq {i64} NOT NULL, hash TEXT NOT NULL);",
    ),
    (
        4,
        "CREATE TABLE ci_jtis (key TEXT PRIMARY KEY, expires_at_ms {i64} NOT NULL);
         CREATE INDEX ci_jtis_expiry ON ci_jtis(expires_at_ms);",
    ),
    (
        5,
        "CREATE TABLE approvals (id TEXT PRIMARY KEY, created_at_ms {i64} NOT NULL, version {i64} NOT NULL, body TEXT NOT NULL);
         CREATE INDEX approvals_created ON approvals(created_at_ms);",
    ),
    // The lease queries' indexes (see `LeaseQuery`). The partial ones stay
    // small however many leases the table holds; `leases_node` costs each
    // issuance through a node one index insert, and the identity's index
    // gains the expiry so live leases need no scan of its history.
    (
        6,
        "DROP INDEX leases_identity;
     CREATE INDEX leases_identity_expiry ON leases(identity, expires_at_ms);
     CREATE INDEX leases_node ON leases(node, expires_at_ms) WHERE node IS NOT NULL;
     CREATE INDEX leases_to_expire ON leases(expires_at_ms) WHERE revocation = 'effective' AND revoked_at_ms IS NULL;
     CREATE INDEX leases_upstream ON leases(issued_at_ms, id) WHERE kind <> 'jwt' AND revoked_at_ms IS NULL;",
    ),
    // Each node's SVID lineage: the serial it renews with, the one last
    // issued to it, and its enrollment generation.
    (
        7,
        "CREATE TABLE node_svids (node TEXT PRIMARY KEY, serial TEXT NOT NULL, new_serial TEXT,
    generation BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);",
    ),
    // One column name in both schemas. (One-way: a broker older than this
    // migration cannot read the suspensions of an upgraded store.)
    (8, "{suspensions_by_whom}"),
    // When an upstream lease's outcome was recorded (the write that records
    // it sets it), so reconciliation closes only unanswered ones — the
    // leases already answered, and every static secret read before (whose
    // records retention may prune), count as answered; and the
    // static-secret leases written before they stopped expiring, which
    // stay live until their rotation is confirmed.
    (
        9,
        "ALTER TABLE leases ADD COLUMN answered_at_ms {i64};
     UPDATE leases SET answered_at_ms = issued_at_ms
        WHERE kind = 'static_secret'
           OR EXISTS (SELECT 1 FROM log WHERE log.request_id = leases.request_id AND log.kind = 'outcome');
     UPDATE leases SET expires_at_ms = 253402300799000 WHERE kind = 'static_secret' AND revoked_at_ms IS NULL;",
    ),
    // The upstream-lease index without the broker-signed SVID kinds (the
    // Workload API's leases are many and never reconciled), spelled as
    // `crate::lease::UPSTREAM_KIND_SQL`; and the revoked X.509-SVIDs a CRL lists.
    (
        10,
        "DROP INDEX leases_upstream;
     CREATE INDEX leases_upstream ON leases(issued_at_ms, id) WHERE kind NOT IN ('jwt', 'x509_svid', 'jwt_svid') AND revoked_at_ms IS NULL;
     CREATE INDEX leases_revoked_svids ON leases(expires_at_ms) WHERE kind = 'x509_svid' AND revoked_at_ms IS NOT NULL;",
    ),
    (11, "{log_chains}"),
    // SQLite keeps a record's body compressed, with a dictionary trained on
    // its own records; PostgreSQL keeps it as text (TOAST compresses it).
    (12, "{body_dictionaries}"),
    // Migration 11 as first written gave PostgreSQL's checkpoints no kind:
    // a store it migrated then gets it now (a no-op where 11 did).
    (13, "{checkpoint_kinds}"),
    (14, "{log_notable}"),
];

/// The newest schema version this broker knows: a store migrated past it
/// (by a newer broker) is refused, never written with older rules.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// The refusal of a store whose schema is newer than this broker's.
pub fn too_new(found: i64) -> Option<String> {
    (found > latest()).then(|| {
        format!(
            "the store's schema is version {found}, newer than this broker's {}: run the newer broker (every replica is upgraded together)",
            latest()
        )
    })
}

/// How a store's schema is met when it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaUse {
    /// A broker: created, or migrated up to this build's version.
    Migrate,
    /// A reader (offline `whatif`, `logs verify --store`): it must be a
    /// Mintguard store at exactly this build's version; nothing is created
    /// or migrated.
    Existing,
}

/// For [`SchemaUse::Existing`]: the refusal of a store at schema `found`
/// (`None`: it has no schema table, so it is no Mintguard store).
pub fn not_as_built(found: Option<i64>) -> Option<String> {
    match found {
        None => Some("not a Mintguard store (it has no schema_migrations table)".to_owned()),
        Some(v) if v != latest() => Some(format!(
            "the store's schema is version {v}, this build's is {}: read it with the mintguard of the broker that writes it (a reader never migrates a store)",
            latest()
        )),
        Some(_) => None,
    }
}

/// [`MIGRATIONS`] spelled for `dialect`.
pub fn rendered(dialect: Dialect) -> impl Iterator<Item = (i64, String)> {
    MIGRATIONS
        .iter()
        .map(move |(version, sql)| (*version, dialect.render(sql)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_spelled_and_versions_only_grow() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let mut last = 0;
            for (version, sql) in rendered(dialect) {
                assert!(version > last, "{version} after {last}");
                last = version;
                assert!(!sql.contains('{'), "{dialect:?} {version}: {sql}");
            }
        }
        let lite = Dialect::Sqlite.render(MIGRATIONS[0].1);
        let pg = Dialect::Postgres.render(MIGRATIONS[0].1);
        assert!(lite.contains("seq INTEGER PRIMARY KEY") && !lite.contains("log_head"));
        assert!(pg.contains("seq BIGINT PRIMARY KEY") && pg.contains("INSERT INTO log_head"));
    }

    #[test]
    fn an_older_sqlite_store_keeps_its_suspensions_under_the_one_column_name() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut all = rendered(Dialect::Sqlite);
        for (_, sql) in all.by_ref().take_while(|(v, _)| *v < 8) {
            conn.execute_batch(&sql).unwrap();
        }
        conn.execute(
            "INSERT INTO suspensions(subject, reason, by, at_ms) VALUES ('n1', 'stolen', 'operator:a', 1)",
            [],
        )
        .unwrap();
        conn.execute_batch(&Dialect::Sqlite.render(MIGRATIONS[7].1))
            .unwrap();
        let by: String = conn
            .query_row("SELECT by_whom FROM suspensions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(by, "operator:a");
    }

    #[test]
    fn the_notable_index_is_spelled_as_the_queries_are() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let (_, sql) = rendered(dialect).find(|(v, _)| *v == 14).unwrap();
            assert!(sql.contains(crate::store::NOTABLE_SQL), "{sql}");
        }
    }

    #[test]
    fn the_upstream_index_is_spelled_as_the_queries_are() {
        let (_, sql) = MIGRATIONS.iter().find(|(v, _)| *v == 10).unwrap();
        assert!(sql.contains(crate::lease::UPSTREAM_KIND_SQL), "{sql}");
    }

    #[test]
    fn a_store_newer_than_the_broker_is_refused() {
        assert!(too_new(latest()).is_none());
        assert!(too_new(0).is_none());
        let refusal = too_new(latest() + 1).unwrap();
        assert!(refusal.contains("newer than this broker"), "{refusal}");
    }
}
