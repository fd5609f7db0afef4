//! The lease queries: each bounded by an index (migration 6) and a limit,
//! written once as SQL both backends run.

use crate::lease::UPSTREAM_KIND_SQL;

/// Which leases [`Store::leases`] returns. Every query is bounded by an
/// index and a limit: the table keeps every lease ever issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseQuery {
    /// Newest first: all, or one identity's; with `outlived_at_ms`, only
    /// leases live then whose task ended (`mintguard leases --outlived`).
    List {
        /// One identity's.
        identity: Option<String>,
        /// Only the outlived ones, at this time.
        outlived_at_ms: Option<i64>,
        /// At most this many.
        limit: usize,
    },
    /// Leases neither revoked nor expired at `now_ms`, of an identity or
    /// issued through a node or CI issuer, by id after `after_id` (paging).
    Live {
        /// Whose.
        owner: LeaseOwner,
        /// Live at this time.
        now_ms: i64,
        /// Only ids after this one.
        after_id: Option<String>,
        /// At most this many.
        limit: usize,
    },
    /// `effective` leases expired by `now_ms` and not revoked, after an
    /// `(expires_at_ms, id)` cursor, oldest first.
    ExpiredUnrevoked {
        /// Expired by this time.
        now_ms: i64,
        /// The last lease already seen: expiry and id.
        after: (i64, String),
        /// At most this many.
        limit: usize,
    },
    /// Upstream leases (not [`LeaseKind::LOCAL`](crate::lease::LeaseKind::LOCAL)) not revoked, issued after `after` (an
    /// `(issued_at_ms, id)` cursor) and at or before `until_ms`, oldest first.
    UpstreamIssued {
        /// The last lease already seen: issue time and id.
        after: (i64, String),
        /// Issued at or before this time.
        until_ms: i64,
        /// At most this many.
        limit: usize,
    },
    /// The oldest upstream leases whose log records are still needed: not
    /// revoked, and live at `now_ms` (and expiring at all) or `effective`
    /// (its revocation reads the upstream handle from its outcome record).
    OldestPinning {
        /// Now.
        now_ms: i64,
        /// At most this many.
        limit: usize,
    },
    /// Leases issued through a node or CI issuer in `[since_ms, until_ms)`,
    /// in no particular order (it is for counting: no sort before the
    /// limit), by the `(node, expires_at_ms)` index (a lease expires after
    /// its issue).
    IssuedThrough {
        /// The node (SPIFFE ID) or CI issuer (URL).
        node: String,
        /// Issued at or after this time.
        since_ms: i64,
        /// Issued before this time.
        until_ms: i64,
        /// At most this many.
        limit: usize,
    },
    /// Revoked X.509-SVID leases not yet expired at `now_ms` (a CRL's
    /// entries), soonest expiry first.
    RevokedSvids {
        /// Now.
        now_ms: i64,
        /// At most this many.
        limit: usize,
    },
}

/// Whose live leases [`LeaseQuery::Live`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOwner {
    /// An identity's (SPIFFE ID).
    Identity(String),
    /// Those issued through a node (SPIFFE ID) or CI issuer (URL).
    Node(String),
}

/// A bound value of a [`LeaseQuery`]'s SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlValue {
    /// TEXT.
    Text(String),
    /// INTEGER / BIGINT.
    Int(i64),
}

impl LeaseQuery {
    /// The query's clauses after `SELECT … FROM leases` and their values;
    /// `placeholder(n)` spells the n-th (1-based) parameter. Only the
    /// conditions present are written, so the planner sees each index.
    pub fn sql(&self, placeholder: impl Fn(usize) -> String) -> (String, Vec<SqlValue>) {
        let mut values = Vec::new();
        let mut bind = |v: SqlValue| {
            values.push(v);
            placeholder(values.len())
        };
        let limit = |n: &usize| SqlValue::Int(i64::try_from(*n).unwrap_or(i64::MAX));
        let sql = match self {
            LeaseQuery::List {
                identity,
                outlived_at_ms,
                limit: n,
            } => {
                let mut conditions = Vec::new();
                if let Some(identity) = identity {
                    conditions.push(format!(
                        "identity = {}",
                        bind(SqlValue::Text(identity.clone()))
                    ));
                }
                if let Some(at) = outlived_at_ms {
                    conditions.push(format!(
                        "task_ended_at_ms IS NOT NULL AND revoked_at_ms IS NULL AND expires_at_ms > {}",
                        bind(SqlValue::Int(*at))
                    ));
                }
                let filter = if conditions.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {} ", conditions.join(" AND "))
                };
                format!(
                    "{filter}ORDER BY issued_at_ms DESC, id LIMIT {}",
                    bind(limit(n))
                )
            }
            LeaseQuery::Live {
                owner,
                now_ms,
                after_id,
                limit: n,
            } => {
                let (column, subject) = match owner {
                    LeaseOwner::Identity(s) => ("identity", s),
                    LeaseOwner::Node(s) => ("node", s),
                };
                let mut sql = format!(
                    "WHERE {column} = {} AND revoked_at_ms IS NULL AND expires_at_ms > {}",
                    bind(SqlValue::Text(subject.clone())),
                    bind(SqlValue::Int(*now_ms))
                );
                if let Some(after) = after_id {
                    sql += &format!(" AND id > {}", bind(SqlValue::Text(after.clone())));
                }
                sql + &format!(" ORDER BY id LIMIT {}", bind(limit(n)))
            }
            LeaseQuery::ExpiredUnrevoked {
                now_ms,
                after: (after_ms, after_id),
                limit: n,
            } => format!(
                "WHERE revocation = 'effective' AND revoked_at_ms IS NULL AND expires_at_ms <= {} \
                 AND (expires_at_ms, id) > ({}, {}) ORDER BY expires_at_ms, id LIMIT {}",
                bind(SqlValue::Int(*now_ms)),
                bind(SqlValue::Int(*after_ms)),
                bind(SqlValue::Text(after_id.clone())),
                bind(limit(n))
            ),
            LeaseQuery::UpstreamIssued {
                after: (after_ms, after_id),
                until_ms,
                limit: n,
            } => format!(
                "WHERE {UPSTREAM_KIND_SQL} AND revoked_at_ms IS NULL AND (issued_at_ms, id) > ({}, {}) \
                 AND issued_at_ms <= {} ORDER BY issued_at_ms, id LIMIT {}",
                bind(SqlValue::Int(*after_ms)),
                bind(SqlValue::Text(after_id.clone())),
                bind(SqlValue::Int(*until_ms)),
                bind(limit(n))
            ),
            // A lease that never expires (a static secret) does not pin:
            // its records are exported before they are pruned, and it would
            // otherwise hold retention back for good.
            LeaseQuery::OldestPinning { now_ms, limit: n } => format!(
                "WHERE {UPSTREAM_KIND_SQL} AND revoked_at_ms IS NULL \
                 AND ((expires_at_ms > {} AND expires_at_ms < {}) OR revocation = 'effective') \
                 ORDER BY issued_at_ms, id LIMIT {}",
                bind(SqlValue::Int(*now_ms)),
                bind(SqlValue::Int(crate::lease::NEVER_MS)),
                bind(limit(n))
            ),
            LeaseQuery::IssuedThrough {
                node,
                since_ms,
                until_ms,
                limit: n,
            } => {
                let since = bind(SqlValue::Int(*since_ms));
                format!(
                    "WHERE node = {} AND expires_at_ms >= {since} AND issued_at_ms >= {since} \
                     AND issued_at_ms < {} LIMIT {}",
                    bind(SqlValue::Text(node.clone())),
                    bind(SqlValue::Int(*until_ms)),
                    bind(limit(n))
                )
            }
            LeaseQuery::RevokedSvids { now_ms, limit: n } => format!(
                "WHERE kind = 'x509_svid' AND revoked_at_ms IS NOT NULL AND expires_at_ms > {} \
                 ORDER BY expires_at_ms, id LIMIT {}",
                bind(SqlValue::Int(*now_ms)),
                bind(limit(n))
            ),
        };
        (sql, values)
    }
}

/// Closes a live lease (`?1` its id, `?2` now): revoked, its task ended.
pub(crate) const CLOSE_LEASE: &str =
    "UPDATE leases SET revoked_at_ms = ?2, task_ended_at_ms = COALESCE(task_ended_at_ms, ?2)
     WHERE id = ?1 AND revoked_at_ms IS NULL";

/// [`CLOSE_LEASE`], only while no outcome has been recorded for it.
pub(crate) const CLOSE_UNANSWERED: &str =
    "UPDATE leases SET revoked_at_ms = ?2, task_ended_at_ms = COALESCE(task_ended_at_ms, ?2)
     WHERE id = ?1 AND revoked_at_ms IS NULL AND answered_at_ms IS NULL";

/// SQLite's numbered parameters (`?1`) as PostgreSQL's (`$1`), for the
/// statements above only: every `?` becomes `$`, so it is not for SQL with
/// a `?` of its own (a literal, PostgreSQL's JSONB operators).
pub(crate) fn numbered(sql: &str) -> String {
    sql.replace('?', "$")
}
