//! `GET /admin/v1/logs/recent`: the log newest first, for the console's
//! timeline.

use std::sync::Arc;

use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Operator;
use crate::config::Role;
use crate::http::ApiError;
use crate::state::Broker;
use crate::store::{LogCursor, LogQuery, read_log_newer, read_log_recent};

#[derive(Deserialize)]
pub(super) struct RecentParams {
    identity: Option<String>,
    grant: Option<String>,
    node: Option<String>,
    outcome: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// The older page: each chain's records before its seq ([`LogCursor`]).
    before: Option<String>,
    /// Newer records: each chain's records after its seq.
    after: Option<String>,
    limit: Option<usize>,
}

/// Most records one page of `/admin/v1/logs/recent` returns.
pub const MAX_RECENT: usize = 1000;

/// The log newest first, as the console's timeline reads it: the newest
/// page (or the one older than `before`), or what was appended after
/// `after`; with the cursors for the older page and for newer records, and
/// whether more records match than the page holds (the page then shows
/// partial data). Each chain is read along its `seq` (an index), never
/// scanned whole for a page.
pub(super) async fn recent(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<RecentParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let q = LogQuery {
        identity: p.identity,
        grant: p.grant,
        node: p.node,
        outcome: p.outcome,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        limit: p.limit.unwrap_or(200).clamp(1, MAX_RECENT),
        ..Default::default()
    };
    let cursor =
        |text: &str| LogCursor::parse(text).map_err(|why| ApiError::bad_request("bad_cursor", why));
    let page = match (p.before, p.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_cursor",
                "give before (an older page) or after (newer records), not both",
            ));
        }
        (None, Some(after)) => read_log_newer(&*broker.store, &q, &cursor(&after)?).await?,
        (before, None) => {
            let before = before
                .as_deref()
                .map(cursor)
                .transpose()?
                .unwrap_or_default();
            read_log_recent(&*broker.store, &q, &before).await?
        }
    };
    Ok(axum::Json(json!({
        "records": page.records,
        "before": page.before.to_string(),
        "after": page.after.to_string(),
        "more": page.more,
        "scan_limited": page.scan_limited,
        "scan_window": crate::store::SCAN_WINDOW,
    })))
}

/// `GET /admin/v1/logs/status`: the log-integrity badge — each chain's head,
/// the newest checkpoint, and the last `logs verify` this broker ran (none
/// since it started: the badge says so and offers to run one).
pub(super) async fn status(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let chains = broker.store.chains().await?;
    // The newest statements, prune and final ones among them: 64 hold a
    // checkpoint unless retention ran 64 times since the last one.
    let newest = broker.store.newest_checkpoints(64).await?;
    let last_checkpoint = newest
        .iter()
        .filter(|c| c.kind.is_checkpoint())
        .max_by_key(|c| (c.time_ms, c.seq));
    let last_verify = broker.last_verify.lock().ok().and_then(|v| v.clone());
    Ok(axum::Json(json!({
        "chains": chains.iter().map(|c| json!({
            "chain": c.chain, "seq": c.seq, "hash": c.hash,
            "pruned_through": c.base.as_ref().map(|b| b.0),
            "retired_at_ms": c.retired_at_ms,
        })).collect::<Vec<_>>(),
        "last_checkpoint": last_checkpoint.map(|c| json!({
            "chain": c.chain, "seq": c.seq, "hash": c.hash, "time_ms": c.time_ms,
        })),
        "last_verify": last_verify,
        "now_ms": broker.clock.now_ms(),
    })))
}
