//! Admin listener: operators authenticate with an operator SVID
//! (`spiffe://<td>/mintguard/operator/<name>`, mTLS) or a named bearer token
//! (from `[[operators]]` or `mintguard-broker operator create`), never
//! anonymously and never with a node SVID (refused in the handshake). Roles: viewer < operator < admin; approver and
//! signal-source tokens reach only their own endpoints.

mod approvals;
pub mod console;
mod decide;
mod entries;
mod exposure;
mod leases;
mod logs;
mod recent;
mod replay;
mod shadow;
mod subjects;
mod whatif;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{delete, get, post};
use mintguard_api::{CreateEntryRequest, CreateTokenRequest, CreateTokenResponse, EntryView};
use mintguard_certs::id;
use mintguard_certs::tls::SpiffePeer;
use mintguard_policy::decide;
use mintguard_policy::rules::RuleSet;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::ids::random_id;
use crate::issue::revoke::CONFIRMED_UPSTREAM;
use crate::lease::Revocation;
use crate::log::checkpoint::{Checkpoint, StatementKind};
use crate::log::decode::Decided;
use crate::log::verify::{ChainStart, ChainVerifier, VerifyFailure, VerifyReport};
use crate::log::{LogEntry, LogRecord, RecordKind};
use crate::state::{Broker, token_hash};
use crate::store::{
    Entry, LeaseQuery, LogCursor, LogQuery, SignalRecord, SuspensionRecord, read_log,
};
use approvals::{
    approve, close_review, issue_break_glass, list_approvals, open_break_glass, reject, reviews,
};
use entries::{create_entry, create_token, delete_entry, list_entries};
use leases::{budget_show, budget_top_up, leases, revoke};
use logs::{checkpoints, explain, log_key, logs, prune, retire_chain, rule_set, verify};
use recent::recent;
use replay::replay;
use subjects::{get_signals, identities, put_signal, resume, suspend, suspension};

/// Most records one log page returns.
pub const MAX_PAGE: usize = 10_000;

/// The admin router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/admin/v1/tokens", post(create_token))
        .route("/admin/v1/entries", post(create_entry).get(list_entries))
        .route("/admin/v1/entries/{id}", delete(delete_entry))
        .route("/admin/v1/logs", get(logs))
        .route("/admin/v1/logs/recent", get(recent))
        .route("/admin/v1/logs/verify", get(verify))
        .route("/admin/v1/logs/key", get(log_key))
        .route("/admin/v1/rule_sets/{hash}", get(rule_set))
        .route("/admin/v1/logs/checkpoints", get(checkpoints))
        .route("/admin/v1/logs/prune", post(prune))
        .route("/admin/v1/logs/chains/{chain}/retire", post(retire_chain))
        .route("/admin/v1/explain/{request_id}", get(explain))
        .route("/admin/v1/replay", post(replay))
        .route("/admin/v1/whatif", post(whatif::whatif))
        .route("/admin/v1/decide", post(decide::decide_one))
        .route("/admin/v1/shadow", get(shadow::shadow_status))
        .route("/admin/v1/shadow/report", post(shadow::shadow_report))
        .route("/admin/v1/leases", get(leases))
        .route("/admin/v1/leases/{id}/revoke", post(revoke))
        .route("/admin/v1/approvals", get(list_approvals))
        .route("/admin/v1/approvals/{id}/approve", post(approve))
        .route("/admin/v1/approvals/{id}/reject", post(reject))
        .route("/admin/v1/break-glass", post(open_break_glass))
        .route("/admin/v1/break-glass/{id}/issue", post(issue_break_glass))
        .route("/admin/v1/reviews", get(reviews))
        .route("/admin/v1/reviews/{id}/close", post(close_review))
        .route("/admin/v1/suspend", post(suspend))
        .route("/admin/v1/resume", post(resume))
        .route("/admin/v1/suspension", get(suspension))
        .route("/admin/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/admin/v1/health", get(health))
        .route("/admin/v1/signals", post(put_signal).get(get_signals))
        .route("/admin/v1/identities", get(identities))
        .route("/admin/v1/graph", get(exposure::graph))
        .route("/admin/v1/issuer", get(exposure::issuer))
        .route("/admin/v1/logs/status", get(recent::status))
        .route("/admin/v1/budget", get(budget_show))
        .route("/admin/v1/budget/top-up", post(budget_top_up))
        .merge(console::router(&broker))
        .layer(axum::middleware::from_fn(console::security_headers))
        .with_state(broker)
}

/// An authenticated operator.
pub struct Operator {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Operator {
    fn require(&self, role: Role) -> Result<(), ApiError> {
        let ok = match role {
            Role::Viewer => matches!(
                self.role,
                Role::Viewer | Role::Operator | Role::Approver | Role::Admin
            ),
            Role::Operator => matches!(self.role, Role::Operator | Role::Admin),
            Role::Approver => matches!(self.role, Role::Approver | Role::Admin),
            Role::Admin => self.role == Role::Admin,
            Role::SignalSource => {
                matches!(self.role, Role::SignalSource | Role::Operator | Role::Admin)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "insufficient_role",
                format!("{:?} role required", role).to_lowercase(),
            ))
        }
    }
}

impl FromRequestParts<Arc<Broker>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Arc<Broker>,
    ) -> Result<Self, Self::Rejection> {
        // The listener admits only operator SVIDs (a node's fails the
        // handshake); an operator whose role was removed is refused here.
        if let Some(peer) = parts.extensions.get::<SpiffePeer>() {
            let Operator { name, role } = certificate_operator(peer, broker)?;
            // A browser presents its certificate to any page's request,
            // cross-site ones included: from a browser, a request must come
            // from the console's origin, and a change needs the console's
            // session and its CSRF token too.
            if console::from_browser(parts) {
                console::guard_change(parts, broker, &name)?;
            }
            return Ok(Operator { name, role });
        }
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = bearer else {
            // The console's session cookie, checked like the credential
            // it was opened with.
            if let Some(op) = console::session_operator(parts, broker)? {
                return Ok(op);
            }
            return Err(ApiError::unauthenticated(
                "unauthenticated",
                "an operator certificate or bearer token is required",
            ));
        };
        let found = broker
            .operators
            .read()
            .ok()
            .and_then(|o| o.tokens.get(&token_hash(token)).cloned());
        let (name, role) = found.ok_or_else(|| {
            ApiError::unauthenticated("unauthenticated", "unknown operator token")
        })?;
        Ok(Operator { name, role })
    }
}

/// The operator name an operator SVID carries (`""` for any other ID).
fn certificate_name(peer: &SpiffePeer) -> &str {
    peer.id()
        .path()
        .strip_prefix("/mintguard/operator/")
        .unwrap_or_default()
}

/// The operator an operator SVID names, with its role now; one whose role
/// was removed is refused.
fn certificate_operator(peer: &SpiffePeer, broker: &Broker) -> Result<Operator, ApiError> {
    let name = certificate_name(peer).to_owned();
    let role = broker
        .operators
        .read()
        .ok()
        .and_then(|o| o.roles.get(&name).copied())
        .ok_or_else(|| {
            ApiError::forbidden(
                "unknown_operator",
                format!("{} has no operator role", peer.id()),
            )
        })?;
    Ok(Operator { name, role })
}

/// The API view of an entry.
pub fn view(e: Entry) -> EntryView {
    EntryView {
        id: e.id,
        spiffe_id: e.spiffe_id,
        parent: e.parent,
        selectors: e.selectors,
        grants: e.grants,
    }
}

/// Records an admin action that changes nothing in the store itself (a
/// reload, a break-glass issuance logged by its own decision); one that
/// does goes through [`AdminAction`].
async fn admin_record(
    broker: &Broker,
    op: &Operator,
    action: &str,
    identity: Option<String>,
    body: Value,
) -> Result<(), ApiError> {
    write_admin(
        broker,
        &random_id("req"),
        identity,
        action,
        op,
        action,
        body,
    )
    .await
}

/// Writes one admin record: `outcome`, about `action` by `op`.
async fn write_admin(
    broker: &Broker,
    request_id: &str,
    identity: Option<String>,
    outcome: &str,
    op: &Operator,
    action: &str,
    details: Value,
) -> Result<(), ApiError> {
    let entry = LogEntry {
        time_ms: broker.clock.now_ms(),
        kind: RecordKind::Admin,
        request_id: request_id.to_owned(),
        identity,
        grant: None,
        node: None,
        outcome: Some(outcome.to_owned()),
        body: json!({"action": action, "operator": op.name, "details": details}),
    };
    broker.record(entry).await
}

/// An admin action that changes the store, logged around its change so
/// that no change is ever without its record. The intent first
/// (`admin_intent`: the action and what it will change); then the change;
/// then, under the same request id, its outcome — the action's own record
/// with what the change did, or `admin_failed` with why. No intent record,
/// no change; a crash between the change and its outcome leaves an intent
/// with no outcome, which `logs verify` reports.
struct AdminAction<'a> {
    broker: &'a Broker,
    op: &'a Operator,
    action: &'static str,
    identity: Option<String>,
    request_id: String,
}

impl<'a> AdminAction<'a> {
    /// Records the intent to do `action` (`intent`: what it will change).
    async fn begin(
        broker: &'a Broker,
        op: &'a Operator,
        action: &'static str,
        identity: Option<String>,
        intent: Value,
    ) -> Result<Self, ApiError> {
        let request_id = random_id("req");
        write_admin(
            broker,
            &request_id,
            identity.clone(),
            "admin_intent",
            op,
            action,
            intent,
        )
        .await?;
        Ok(Self {
            broker,
            op,
            action,
            identity,
            request_id,
        })
    }

    /// Makes the change, then records its outcome: `details` of what it
    /// returned, or the error.
    async fn run<T>(
        self,
        change: impl Future<Output = Result<T, ApiError>>,
        details: impl FnOnce(&T) -> Value,
    ) -> Result<T, ApiError> {
        crate::fault::fault_wait("admin_change").await;
        match change.await {
            Ok(value) => {
                let (identity, action) = (self.identity.clone(), self.action);
                write_admin(
                    self.broker,
                    &self.request_id,
                    identity,
                    action,
                    self.op,
                    action,
                    details(&value),
                )
                .await?;
                Ok(value)
            }
            Err(e) => {
                let failed = json!({"code": e.code, "message": e.message});
                if let Err(log) = write_admin(
                    self.broker,
                    &self.request_id,
                    self.identity.clone(),
                    "admin_failed",
                    self.op,
                    self.action,
                    failed,
                )
                .await
                {
                    tracing::error!(
                        action = self.action,
                        code = log.code,
                        "the failed admin action's outcome could not be logged"
                    );
                }
                Err(e)
            }
        }
    }
}

async fn reload(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Admin)?;
    match broker.reload().await {
        Ok(hash) => {
            admin_record(
                &broker,
                &op,
                "config_reloaded",
                None,
                json!({"rule_set_hash": hash}),
            )
            .await?;
            Ok(axum::Json(json!({"reloaded": true, "rule_set_hash": hash})))
        }
        Err(reason) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_refused",
            reason,
        )),
    }
}

/// Whether anomaly analysis keeps up: `degraded` while it lags (the
/// `behaviour` signal is then stale; the broker still serves, trusting
/// less). On the admin listener only: an outsider learns nothing from it.
async fn health(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let now = broker.clock.now_ms();
    let (status, analysis) = match broker.analysis.behaviour(now) {
        crate::health::Behaviour::Fresh => ("ok", "fresh"),
        crate::health::Behaviour::Stale { .. } => ("degraded", "stale"),
        crate::health::Behaviour::Off => ("ok", "off"),
    };
    Ok(axum::Json(json!({
        "status": status,
        "anomaly_analysis": {"state": analysis, "last_step_ms_ago": broker.analysis.age_ms(now)},
    })))
}

async fn metrics(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::response::Response, ApiError> {
    op.require(Role::Viewer)?;
    use axum::response::IntoResponse as _;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        broker.metrics_text(),
    )
        .into_response())
}

/// An operator's reason (rejection, break-glass, suspension): at most 1024
/// bytes, no control characters, and not blank where one is required.
fn check_reason(reason: &str, required: bool) -> Result<(), ApiError> {
    if required && reason.trim().is_empty() {
        return Err(ApiError::bad_request("bad_reason", "a reason is required"));
    }
    mintguard_api::check_text("bad_reason", "reason", reason, 1024).map_err(ApiError::from_input)
}

/// A lifetime an operator grants (approval, break-glass): as bounded as a
/// workload's request.
fn check_ttl(ttl: Option<u64>) -> Result<(), ApiError> {
    match ttl {
        Some(t) if !(1..=mintguard_api::MAX_TTL_SECONDS).contains(&t) => {
            Err(ApiError::bad_request(
                "bad_ttl",
                format!(
                    "ttl_seconds must be 1..={}, got {t}",
                    mintguard_api::MAX_TTL_SECONDS
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A subject of suspensions and signals: a SPIFFE ID (an identity or a
/// node), or the URL of a configured CI issuer (whose tokens are refused
/// while it is suspended).
fn check_subject(broker: &Broker, subject: &str) -> Result<(), ApiError> {
    if broker.config().ci.issuers.iter().any(|i| i.url == subject) {
        return Ok(());
    }
    id::parse_spiffe_id(subject).map(|_| ()).map_err(|e| {
        ApiError::bad_request(
            "bad_spiffe_id",
            format!("{e} (a subject is a SPIFFE ID or a configured CI issuer's URL)"),
        )
    })
}
