//! Admin listener: operators authenticate with an operator SVID
//! (`spiffe://<td>/mintguard/operator/<name>`, mTLS) or a named bearer token
//! (from `[[operators]]` or `mintguard-broker operator create`), never
//! anonymously and never with a node SVID (refused in the handshake). Roles: viewer < operator < admin; approver and
//! signal-source tokens reach only their own endpoints.

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

use crate::clock::now_ms;
use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::ids::random_id;
use crate::issue::revoke::CONFIRMED_UPSTREAM;
use crate::lease::Revocation;
use crate::log::checkpoint::{Checkpoint, StatementKind};
use crate::log::decode::Decided;
use crate::log::verify::{ChainVerifier, VerifyFailure, VerifyReport};
use crate::log::{LogEntry, LogRecord, RecordKind};
use crate::state::{Broker, token_hash};
use crate::store::{Entry, LeaseQuery, LogQuery, SignalRecord, SuspensionRecord};

/// Most records one log page returns.
pub const MAX_PAGE: usize = 10_000;

/// The admin router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/admin/v1/tokens", post(create_token))
        .route("/admin/v1/entries", post(create_entry).get(list_entries))
        .route("/admin/v1/entries/{id}", delete(delete_entry))
        .route("/admin/v1/logs", get(logs))
        .route("/admin/v1/logs/verify", get(verify))
        .route("/admin/v1/logs/key", get(log_key))
        .route("/admin/v1/rule_sets/{hash}", get(rule_set))
        .route("/admin/v1/logs/checkpoints", get(checkpoints))
        .route("/admin/v1/logs/prune", post(prune))
        .route("/admin/v1/explain/{request_id}", get(explain))
        .route("/admin/v1/replay", post(replay))
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
        .route("/admin/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/admin/v1/health", get(health))
        .route("/admin/v1/signals", post(put_signal).get(get_signals))
        .route("/admin/v1/identities", get(identities))
        .route("/admin/v1/budget", get(budget_show))
        .route("/admin/v1/budget/top-up", post(budget_top_up))
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
            let name = peer
                .id()
                .path()
                .strip_prefix("/mintguard/operator/")
                .unwrap_or_default()
                .to_owned();
            let role = broker
                .operators
                .read()
                .ok()
                .and_then(|o| o.roles.get(&name).copied());
            return match role {
                Some(role) => Ok(Operator { name, role }),
                None => Err(ApiError::forbidden(
                    "unknown_operator",
                    format!("{} has no operator role", peer.id()),
                )),
            };
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "unauthenticated",
                    "an operator certificate or bearer token is required",
                )
            })?;
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
        time_ms: now_ms(),
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

async fn create_token(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<CreateTokenRequest>,
) -> Result<axum::Json<CreateTokenResponse>, ApiError> {
    op.require(Role::Operator)?;
    let config = broker.config();
    let node_id = id::node_id(&config.trust_domain, &req.node)
        .map_err(|e| ApiError::bad_request("bad_node", e.to_string()))?;
    let ttl = req.ttl_seconds.unwrap_or(600);
    if ttl == 0 || ttl > 86_400 {
        return Err(ApiError::bad_request(
            "bad_ttl",
            "ttl_seconds must be 1..=86400",
        ));
    }
    let token = crate::ids::secret_token("jt")
        .map_err(|e| ApiError::unavailable("rng_unavailable", "no join token could be made", e))?;
    let expires = now_ms() + i64::try_from(ttl).unwrap_or(600) * 1000;
    let details = json!({"node": node_id.to_string(), "expires_at_ms": expires});
    AdminAction::begin(&broker, &op, "join_token_created", None, details.clone())
        .await?
        .run(
            async {
                Ok(broker
                    .store
                    .create_join_token(&token_hash(&token), &req.node, expires)
                    .await?)
            },
            |()| details,
        )
        .await?;
    Ok(axum::Json(CreateTokenResponse {
        token,
        spiffe_id: node_id.to_string(),
        expires_at: time::OffsetDateTime::from_unix_timestamp(expires / 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default(),
    }))
}

/// Selectors the agent can prove.
const KNOWN: &[&str] = &[
    "unix:uid:",
    "unix:gid:",
    "unix:user:",
    "unix:path:",
    "unix:sha256:",
    "cgroup:",
    "k8s:ns:",
    "k8s:sa:",
];

async fn create_entry(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<CreateEntryRequest>,
) -> Result<(StatusCode, axum::Json<EntryView>), ApiError> {
    op.require(Role::Operator)?;
    let config = broker.config();
    let spiffe_id = id::parse_spiffe_id(&req.spiffe_id)
        .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    if spiffe_id.trust_domain() != &config.trust_domain
        || spiffe_id.path().starts_with("/mintguard/")
        || spiffe_id.path().starts_with("/ci/")
    {
        return Err(ApiError::bad_request(
            "bad_spiffe_id",
            "a workload ID in this trust domain, outside /mintguard/ (nodes) and /ci/ (CI jobs), is required",
        ));
    }
    let parent = if req.parent.starts_with("spiffe://") {
        id::parse_spiffe_id(&req.parent)
            .map_err(|e| ApiError::bad_request("bad_parent", e.to_string()))?
    } else {
        id::node_id(&config.trust_domain, &req.parent)
            .map_err(|e| ApiError::bad_request("bad_parent", e.to_string()))?
    };
    if !id::IdMatcher::nodes(&config.trust_domain).matches(&parent) {
        return Err(ApiError::bad_request(
            "bad_parent",
            "the parent must be a node of this trust domain",
        ));
    }
    mintguard_api::check_selectors(&req.selectors).map_err(ApiError::from_input)?;
    for s in &req.selectors {
        if !KNOWN.iter().any(|k| s.starts_with(k) && s.len() > k.len()) {
            return Err(ApiError::bad_request(
                "bad_selectors",
                format!(
                    "unknown or malformed selector {:?}",
                    crate::http::excerpt(s)
                ),
            ));
        }
    }
    if !Entry::pins_who(&req.selectors) {
        return Err(ApiError::bad_request(
            "weak_entry",
            crate::store::WEAK_ENTRY,
        ));
    }
    if let Some(g) = req.grants.iter().find(|g| !config.grants.contains_key(*g)) {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {g:?}"),
        ));
    }
    let entry = Entry {
        id: random_id("entry"),
        spiffe_id: spiffe_id.to_string(),
        parent: parent.to_string(),
        selectors: req.selectors,
        grants: req.grants,
        created_at_ms: now_ms(),
    };
    let details = serde_json::to_value(view(entry.clone())).unwrap_or_default();
    AdminAction::begin(
        &broker,
        &op,
        "entry_created",
        Some(entry.spiffe_id.clone()),
        details.clone(),
    )
    .await?
    .run(
        async { Ok(broker.store.create_entry(&entry).await?) },
        |()| details,
    )
    .await?;
    reload_eci(&broker).await;
    Ok((StatusCode::CREATED, axum::Json(view(entry))))
}

/// Recomputes ECI after the registered identities changed.
async fn reload_eci(broker: &Broker) {
    let config = broker.config();
    match crate::state::build_dynamic(config, &*broker.store).await {
        Ok(d) => broker.dynamic.store(Arc::new(d)),
        Err(e) => tracing::error!(%e, "recomputing ECI failed; keeping the previous values"),
    }
}

#[derive(Deserialize)]
struct ParentQuery {
    parent: Option<String>,
}

async fn list_entries(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(q): Query<ParentQuery>,
) -> Result<axum::Json<Vec<EntryView>>, ApiError> {
    op.require(Role::Viewer)?;
    Ok(axum::Json(
        broker
            .store
            .entries(q.parent.as_deref())
            .await?
            .into_iter()
            .map(view)
            .collect(),
    ))
}

async fn delete_entry(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    op.require(Role::Operator)?;
    let details = json!({"id": id});
    AdminAction::begin(&broker, &op, "entry_deleted", None, details.clone())
        .await?
        .run(
            async {
                match broker.store.delete_entry(&id).await? {
                    true => Ok(()),
                    false => Err(ApiError::not_found("unknown_entry", "no such entry")),
                }
            },
            |()| details,
        )
        .await?;
    reload_eci(&broker).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogParams {
    identity: Option<String>,
    grant: Option<String>,
    node: Option<String>,
    outcome: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<usize>,
}

async fn logs(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<LogParams>,
) -> Result<axum::Json<Vec<LogRecord>>, ApiError> {
    op.require(Role::Viewer)?;
    let q = LogQuery {
        identity: p.identity,
        grant: p.grant,
        node: p.node,
        outcome: p.outcome,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        after_seq: p.after_seq,
        limit: p.limit.unwrap_or(1000).clamp(1, MAX_PAGE),
    };
    Ok(axum::Json(broker.store.log(&q).await?))
}

/// The log in pages of `MAX_PAGE`, oldest first, so that no caller holds
/// all of it.
struct RecordPages<'a> {
    broker: &'a Broker,
    after: Option<i64>,
    done: bool,
}

impl<'a> RecordPages<'a> {
    fn new(broker: &'a Broker) -> Self {
        Self {
            broker,
            after: None,
            done: false,
        }
    }

    /// The next page, or `None` after the last.
    async fn next(&mut self) -> Result<Option<Vec<LogRecord>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .broker
            .store
            .log(&LogQuery {
                after_seq: self.after,
                limit: MAX_PAGE,
                ..Default::default()
            })
            .await?;
        self.done = page.len() < MAX_PAGE;
        self.after = page.last().map(|r| r.seq).or(self.after);
        Ok((!page.is_empty()).then_some(page))
    }
}

async fn verify(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let verified = verify_log(&broker, None).await?;
    Ok(axum::Json(match verified {
        Ok(report) => json!({"ok": true, "report": report}),
        Err(failure) => {
            json!({"ok": false, "failure": failure, "message": failure.to_string()})
        }
    }))
}

/// `logs verify` on the broker: its own checkpoint file (which must be
/// readable, and hold every checkpoint the store has from this broker),
/// the chain a page at a time, and every rule set the decisions name.
/// Verifies the log against this broker's export and the store. `also`: a
/// checkpoint (from the store, perhaps another replica's) the chain must
/// match as well, its signature checked like the file's.
async fn verify_log(
    broker: &Broker,
    also: Option<&Checkpoint>,
) -> Result<Result<VerifyReport, VerifyFailure>, ApiError> {
    let path = broker.log_export_path();
    let mut checkpoints = match crate::log::checkpoint::read_file(&path) {
        Ok(cps) => cps,
        // No file yet: nothing exported. Any checkpoint the store has from
        // this broker is then missing from it (found below).
        Err(crate::log::checkpoint::CheckpointError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => {
            return Ok(Err(VerifyFailure::CheckpointFile {
                reason: e.to_string(),
            }));
        }
    };
    let stored = broker.store.checkpoints().await?;
    if let Some(seq) =
        crate::log::verify::missing_export(&stored, &checkpoints, &[broker.instance_id()])
    {
        return Ok(Err(VerifyFailure::ExportMissing { seq }));
    }
    checkpoints.extend(also.cloned());
    let base = broker.store.base().await?;
    let base = base.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
    let mut verifier = match ChainVerifier::new(base, &checkpoints, Some(broker.log_public_key())) {
        Ok(verifier) => verifier,
        Err(failure) => return Ok(Err(failure)),
    };
    let mut pages = RecordPages::new(broker);
    while let Some(page) = pages.next().await? {
        if let Err(failure) = page.iter().try_for_each(|r| verifier.push(r)) {
            return Ok(Err(failure));
        }
    }
    let mut problems = Vec::new();
    for hash in verifier.rule_set_hashes() {
        let stored = broker.store.rule_set(hash).await?;
        if let Err(problem) = crate::log::rule_sets::check(hash, stored.as_deref()) {
            problems.push(problem);
        }
    }
    Ok(verifier.finish(&problems))
}

/// A stored rule set as the store holds it (its text, unparsed), so an
/// offline `logs verify` re-hashes what the store really has.
async fn rule_set(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(hash): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    if !crate::ids::is_hex_id(&hash) {
        return Err(ApiError::bad_request(
            "bad_hash",
            "a rule-set hash is lowercase hex",
        ));
    }
    let stored = broker.store.rule_set(&hash).await?;
    Ok(axum::Json(json!({"hash": hash, "stored": stored})))
}

async fn log_key(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    Ok(axum::Json(
        serde_json::to_value(broker.log_public_key()).unwrap_or_default(),
    ))
}

async fn explain(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(request_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let records = broker.store.log_for_request(&request_id).await?;
    if records.is_empty() {
        return Err(ApiError::not_found(
            "unknown_request",
            "no records for this request id",
        ));
    }
    // What this explanation cannot vouch for: a decision no reader can
    // decode, or a rule set that is missing or no longer hashes to its name.
    let mut findings = Vec::new();
    for r in &records {
        match crate::log::decode::decided(&r.entry) {
            Ok(Some(Decided::Decision(parts))) => {
                let hash = &parts.decision.rule_set_hash;
                let stored = broker.store.rule_set(hash).await?;
                if let Err(problem) = crate::log::rule_sets::check(hash, stored.as_deref()) {
                    findings.push(json!({"seq": r.seq, "finding": "rule_set", "problem": problem, "message": problem.to_string()}));
                }
            }
            Ok(_) => {}
            Err(why) => {
                broker.metrics.undecodable("explain", r.seq, &why);
                findings.push(json!({"seq": r.seq, "finding": "undecodable", "message": why.0}));
            }
        }
    }
    // The detections whose signals this decision read: the anomaly response
    // it applied, and any `anomaly:` behaviour signal in its trust input.
    let mut detections = Vec::new();
    for r in records.iter().filter(|r| r.entry.kind.has_decision()) {
        let input = &r.entry.body["input"];
        let behaviour = input["signals"]["signals"]["behaviour"]["source"]
            .as_str()
            .unwrap_or_default();
        let moved = input["anomaly"]["score"].as_u64().unwrap_or(0) > 0
            || behaviour.starts_with(crate::anomaly::respond::SOURCE);
        if !moved {
            continue;
        }
        let ttl_ms = i64::try_from(broker.config().anomaly.responses.signal_ttl_seconds)
            .unwrap_or(0)
            .saturating_mul(1000);
        for subject in [&r.entry.identity, &r.entry.node] {
            let Some(subject) = subject else { continue };
            let mut q = LogQuery {
                outcome: Some("detection".into()),
                since_ms: Some(r.entry.time_ms - ttl_ms),
                until_ms: Some(r.entry.time_ms + 1),
                limit: MAX_PAGE,
                ..Default::default()
            };
            if subject.starts_with("spiffe://") && Some(subject) == r.entry.identity.as_ref() {
                q.identity = Some(subject.clone());
            } else {
                q.node = Some(subject.clone());
            }
            detections.extend(
                broker
                    .store
                    .log(&q)
                    .await?
                    .into_iter()
                    .filter(|d| d.entry.body["subject"]["id"] == subject.as_str()),
            );
        }
    }
    Ok(axum::Json(
        json!({"request_id": request_id, "records": records, "detections": detections, "findings": findings}),
    ))
}

#[derive(Deserialize)]
struct ReplayParams {
    since_ms: Option<i64>,
}

/// Differences `replay` lists (all are counted).
const MAX_LISTED_DIFFERENCES: usize = 1000;

fn note_difference(listed: &mut Vec<Value>, total: &mut usize, difference: Value) {
    *total += 1;
    if listed.len() < MAX_LISTED_DIFFERENCES {
        listed.push(difference);
    }
}

/// Re-decides every logged decision under its recorded input and rule set,
/// reading the log a page at a time; the first `MAX_LISTED_DIFFERENCES`
/// differences are listed, all are counted.
async fn replay(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<ReplayParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let mut rule_sets: std::collections::HashMap<
        String,
        Result<RuleSet, crate::log::rule_sets::RuleSetProblem>,
    > = std::collections::HashMap::new();
    let (mut replayed, mut differences, mut total) = (0usize, Vec::new(), 0usize);
    let mut undecodable = 0usize;
    let mut pages = RecordPages::new(&broker);
    while let Some(page) = pages.next().await? {
        for record in page {
            if !record.entry.kind.has_decision()
                || p.since_ms.is_some_and(|s| record.entry.time_ms < s)
            {
                continue;
            }
            let parts = match crate::log::decode::decided(&record.entry) {
                Ok(Some(Decided::Decision(parts))) => parts,
                Ok(_) => continue,
                Err(why) => {
                    broker.metrics.undecodable("replay", record.seq, &why);
                    undecodable += 1;
                    note_difference(
                        &mut differences,
                        &mut total,
                        json!({"seq": record.seq, "request_id": record.entry.request_id, "difference": "undecodable", "reason": why.0}),
                    );
                    continue;
                }
            };
            let (input, logged) = (parts.input, parts.decision);
            let hash = logged.rule_set_hash.clone();
            if !rule_sets.contains_key(&hash) {
                let stored = broker.store.rule_set(&hash).await?;
                rule_sets.insert(
                    hash.clone(),
                    crate::log::rule_sets::load(&hash, stored.as_deref()),
                );
            }
            let rules = match &rule_sets[&hash] {
                Ok(rules) => rules,
                Err(problem) => {
                    note_difference(
                        &mut differences,
                        &mut total,
                        json!({"seq": record.seq, "request_id": record.entry.request_id, "difference": "rule_set", "problem": problem, "message": problem.to_string()}),
                    );
                    continue;
                }
            };
            let again = decide(&input, rules);
            replayed += 1;
            if again != logged {
                note_difference(
                    &mut differences,
                    &mut total,
                    json!({
                        "seq": record.seq,
                        "request_id": record.entry.request_id,
                        "logged": {"outcome": logged.outcome, "reasons": logged.reasons},
                        "replayed": {"outcome": again.outcome, "reasons": again.reasons},
                    }),
                );
            }
        }
    }
    Ok(axum::Json(
        json!({"replayed": replayed, "differences": differences, "differences_total": total, "undecodable": undecodable}),
    ))
}

#[derive(Deserialize)]
struct LeaseParams {
    identity: Option<String>,
    #[serde(default)]
    outlived: bool,
    /// At most this many, newest first (default 1000, at most `MAX_PAGE`).
    limit: Option<usize>,
}

async fn leases(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<LeaseParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let now = now_ms();
    let query = LeaseQuery::List {
        identity: p.identity,
        outlived_at_ms: p.outlived.then_some(now),
        limit: p.limit.unwrap_or(1000).clamp(1, MAX_PAGE),
    };
    let leases: Vec<Value> = broker
        .store
        .leases(&query)
        .await?
        .into_iter()
        .map(|l| {
            let live = l.revoked_at_ms.is_none() && l.expires_at_ms > now;
            let mut v = serde_json::to_value(&l).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("live".into(), live.into());
            }
            v
        })
        .collect();
    Ok(axum::Json(Value::Array(leases)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    /// For an advisory lease: the operator attached the deny policy (STS)
    /// or rotated the secret (static secret).
    #[serde(default)]
    confirm_attached: bool,
    /// For a Vault lease the broker cannot revoke itself (its outcome names
    /// no upstream handle: an operator-action reconciliation): the operator
    /// revoked it in Vault.
    #[serde(default)]
    confirm_revoked_upstream: bool,
}

async fn revoke(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
    Query(p): Query<RevokeParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Operator)?;
    let lease = broker
        .store
        .lease(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_lease", "no such lease"))?;
    let why = if p.confirm_attached {
        if lease.revocation != Revocation::Advisory {
            return Err(ApiError::bad_request(
                "not_advisory",
                "--confirm-attached is for advisory (STS, static secret) leases",
            ));
        }
        "confirmed_attached".to_owned()
    } else if p.confirm_revoked_upstream {
        if lease.revocation != Revocation::Effective {
            return Err(ApiError::bad_request(
                "not_effective",
                "--confirm-revoked-upstream is for Vault (effective) leases",
            ));
        }
        // Only for what the broker cannot revoke itself: no upstream handle
        // logged, and no mint still in flight.
        if lease.issued_at_ms > now_ms() - broker.reconcile_after_ms()
            || broker
                .issuer(&broker.dynamic.load_full())
                .upstream_of(&lease)
                .await?
                .is_some()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "broker_can_revoke",
                "the broker revokes this lease itself (`mintguard revoke LEASE`), or it may still be minting",
            ));
        }
        format!("{CONFIRMED_UPSTREAM}{}", op.name)
    } else {
        format!("operator:{}", op.name)
    };
    let dynamic = broker.dynamic.load_full();
    let revoked = broker
        .issuer(&dynamic)
        .revoke_lease(&lease, &random_id("req"), &why)
        .await?;
    if lease.revocation == Revocation::Advisory && !revoked {
        let action = broker.minters.get(lease.kind).map_or_else(
            || crate::mint::sts::advisory_action(&id),
            |m| m.advisory_action(&id),
        );
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "advisory_revocation",
            format!(
                "a {} lease cannot be revoked by the broker: {action}",
                lease.kind
            ),
        ));
    }
    Ok(axum::Json(
        json!({"lease_id": id, "revoked": revoked, "revocation": lease.revocation}),
    ))
}

#[derive(Deserialize)]
struct ApprovalsParams {
    #[serde(default)]
    all: bool,
}

/// Approvals of the last day: pending ones, or all with `all=true`.
async fn list_approvals(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<ApprovalsParams>,
) -> Result<axum::Json<Vec<Value>>, ApiError> {
    op.require(Role::Viewer)?;
    let now = now_ms();
    let listed = broker.store.approvals(now - 86_400_000).await?;
    Ok(axum::Json(
        listed
            .iter()
            .filter(|a| p.all || a.state_at(now) == "pending")
            .map(|a| crate::approvals::view(a, now))
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn approve(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
    Json(req): Json<ApproveRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    check_ttl(req.ttl_seconds)?;
    let verdict = crate::approvals::Verdict::Approve {
        ttl_seconds: req.ttl_seconds,
    };
    give_verdict(&broker, &op, &id, verdict).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectRequest {
    reason: String,
}

async fn reject(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
    Json(req): Json<RejectRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Approver)?;
    check_reason(&req.reason, true)?;
    let verdict = crate::approvals::Verdict::Reject { reason: req.reason };
    give_verdict(&broker, &op, &id, verdict).await
}

/// An approver's verdict, applied and logged.
async fn give_verdict(
    broker: &Broker,
    op: &Operator,
    id: &str,
    verdict: crate::approvals::Verdict,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Approver)?;
    let action = verdict.action();
    let approver = format!("operator:{}", op.name);
    let a = AdminAction::begin(broker, op, action, None, json!({"approval": id}))
        .await?
        .run(
            crate::approvals::decide(broker, id, &approver, verdict, now_ms()),
            |a| crate::approvals::view(a, now_ms()),
        )
        .await?;
    Ok(axum::Json(crate::approvals::view(&a, now_ms())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassRequest {
    identity: String,
    grant: String,
    reason: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Opens a break-glass request (operator role); another approver confirms
/// it with `approve`, then the opener issues it.
async fn open_break_glass(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<BreakGlassRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Operator)?;
    id::parse_spiffe_id(&req.identity)
        .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    check_reason(&req.reason, true)?;
    check_ttl(req.ttl_seconds)?;
    if !broker.config().grants.contains_key(&req.grant) {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", req.grant),
        ));
    }
    let opener = format!("operator:{}", op.name);
    let a = AdminAction::begin(
        &broker,
        &op,
        "break_glass_opened",
        Some(req.identity.clone()),
        json!({"grant": req.grant, "ttl_seconds": req.ttl_seconds, "justification": req.reason}),
    )
    .await?
    .run(
        crate::approvals::open_break_glass(
            &broker,
            &opener,
            &req.identity,
            &req.grant,
            req.ttl_seconds,
            &req.reason,
            now_ms(),
        ),
        |a| crate::approvals::view(a, now_ms()),
    )
    .await?;
    Ok(axum::Json(crate::approvals::view(&a, now_ms())))
}

/// Issues a confirmed break-glass request, for its opener only: logged as
/// decided, overridden to issue, and left as an open post-incident review.
async fn issue_break_glass(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    op.require(Role::Operator)?;
    let now = now_ms();
    let a = broker
        .store
        .approval(&id)
        .await?
        .filter(|a| a.kind == "break_glass")
        .ok_or_else(|| ApiError::not_found("unknown_break_glass", "no such break-glass request"))?;
    if a.requested_by != format!("operator:{}", op.name) {
        return Err(ApiError::forbidden(
            "not_the_opener",
            "only the operator who opened the request issues it",
        ));
    }
    if a.state_at(now) != "approved" {
        return Err(ApiError::forbidden(
            "break_glass_not_confirmed",
            format!(
                "the request is {} ({} of {} approvers)",
                a.state_at(now),
                a.approvers.len(),
                a.approvals_needed
            ),
        ));
    }
    let dynamic = broker.dynamic.load_full();
    let grant = dynamic.config.grants.get(&a.grant).ok_or_else(|| {
        ApiError::bad_request("unknown_grant", format!("no grant named {:?}", a.grant))
    })?;
    let entries = broker.store.entries(None).await?;
    let entry = entries
        .iter()
        .find(|e| e.spiffe_id == a.identity && e.grants.contains(&a.grant))
        .ok_or_else(|| {
            ApiError::bad_request(
                "no_entry",
                "no registration entry lists this grant for the identity",
            )
        })?;
    crate::issue::approval::consume(&*broker.store, &a)
        .await
        .map_err(ApiError::from)?;
    let subject = crate::issue::Subject {
        identity: a.identity.clone(),
        principal: mintguard_policy::decision::PrincipalKind::Workload,
        issuer_kind: mintguard_policy::decision::IssuerKind::Node,
        issuer: entry.parent.clone(),
        may_vouch: true,
        observed: crate::issue::Observed {
            posture: (0, "break_glass:not_observed"),
            attestation: (0, "break_glass:not_attested"),
            network: None,
        },
        blast_radius: dynamic
            .blast_radius
            .get(&entry.parent)
            .map_or(100.0, |r| r.max),
        ci_claims: std::collections::BTreeMap::new(),
        context: [("entry_id".to_owned(), json!(entry.id))]
            .into_iter()
            .collect(),
        audit: false,
        break_glass: Some(json!({
            "id": a.id, "opened_by": a.requested_by, "approvers": a.approvers,
            "justification": a.purpose, "review": "open",
        })),
        approval_binding: None,
    };
    // The approvers' TTL cap applies, as it does to a step-up approval.
    let ttl_seconds = match (a.ttl_seconds, a.approved_ttl_seconds) {
        (Some(asked), Some(cap)) => Some(asked.min(cap)),
        (asked, cap) => asked.or(cap),
    };
    let request = mintguard_api::CredentialRequest {
        grant: a.grant.clone(),
        ttl_seconds,
        purpose: a.purpose.clone(),
        spiffe_id: None,
        bind_to_process: None,
        approval_id: None,
    };
    let now = broker.clock.now_ms();
    // Never held: a confirmed break-glass decision mints or is refused.
    let issued = broker
        .issuer(&dynamic)
        .issue(grant, request, subject, now)
        .await
        .map_err(ApiError::from)?;
    admin_record(
        &broker,
        &op,
        "break_glass_issued",
        Some(a.identity.clone()),
        json!({"review": a.id, "grant": a.grant, "approvers": a.approvers, "justification": a.purpose}),
    )
    .await?;
    Ok(crate::http::answer(Ok(issued)))
}

#[derive(Deserialize)]
struct ReviewsParams {
    #[serde(default)]
    all: bool,
}

/// Post-incident reviews: every break-glass issuance until an operator
/// closes its review (both are log records).
async fn reviews(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<ReviewsParams>,
) -> Result<axum::Json<Vec<Value>>, ApiError> {
    op.require(Role::Viewer)?;
    let read = |outcome: &str| LogQuery {
        outcome: Some(outcome.into()),
        limit: MAX_PAGE,
        ..Default::default()
    };
    let closed: std::collections::HashMap<String, Value> = broker
        .store
        .log(&read("review_closed"))
        .await?
        .into_iter()
        .filter_map(|r| {
            let id = r.entry.body["details"]["review"].as_str()?.to_owned();
            Some((id, r.entry.body["details"].clone()))
        })
        .collect();
    let mut out = Vec::new();
    for r in broker.store.log(&read("break_glass_issued")).await? {
        let details = &r.entry.body["details"];
        let id = details["review"].as_str().unwrap_or_default();
        let closure = closed.get(id);
        if closure.is_some() && !p.all {
            continue;
        }
        out.push(json!({
            "review": id, "identity": r.entry.identity, "grant": details["grant"],
            "issued_at_ms": r.entry.time_ms, "issued_by": r.entry.body["operator"],
            "approvers": details["approvers"], "justification": details["justification"],
            "state": if closure.is_some() { "closed" } else { "open" },
            "closure": closure,
        }));
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseReviewRequest {
    notes: String,
}

async fn close_review(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
    Json(req): Json<CloseReviewRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    // Operators and approvers review.
    op.require(Role::Operator)
        .or_else(|_| op.require(Role::Approver))?;
    if req.notes.trim().is_empty() || req.notes.len() > 4096 {
        return Err(ApiError::bad_request(
            "bad_notes",
            "closing a review needs notes (at most 4096 bytes)",
        ));
    }
    let request = broker
        .store
        .approval(&id)
        .await?
        .filter(|a| a.kind == "break_glass" && matches!(a.state.as_str(), "used" | "reviewed"))
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_review",
                "no issued break-glass request with this id",
            )
        })?;
    // The review checks the break-glass: never by the operator who opened it.
    if request.requested_by == format!("operator:{}", op.name) {
        return Err(ApiError::forbidden(
            "own_review",
            "the operator who opened a break-glass request cannot close its review",
        ));
    }
    // Closed once: the request moves from used to reviewed by compare-and-set,
    // then the closing record is written. A close whose record could not be
    // written (reviewed, and no record) is completed by closing again.
    let already = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "review_closed",
            "this review is already closed",
        )
    };
    if request.state != "used" && review_closed_in_log(&broker, &id, request.created_at_ms).await? {
        return Err(already());
    }
    let body = json!({"review": id, "notes": req.notes});
    AdminAction::begin(&broker, &op, "review_closed", None, body.clone())
        .await?
        .run(
            async {
                if request.state == "used" {
                    let reviewed = crate::store::Approval {
                        state: "reviewed".into(),
                        ..request.clone()
                    };
                    if !broker.store.update_approval(&reviewed).await? {
                        return Err(already());
                    }
                }
                Ok(())
            },
            |()| body.clone(),
        )
        .await?;
    Ok(axum::Json(body))
}

/// Whether the log holds the record closing review `id` (a break-glass
/// request created at `created_at_ms`): every `review_closed` record since
/// then, a page at a time.
async fn review_closed_in_log(
    broker: &Broker,
    id: &str,
    created_at_ms: i64,
) -> Result<bool, ApiError> {
    let mut after_seq = None;
    loop {
        let closures = broker
            .store
            .log(&LogQuery {
                outcome: Some("review_closed".into()),
                since_ms: Some(created_at_ms),
                after_seq,
                limit: MAX_PAGE,
                ..Default::default()
            })
            .await?;
        if closures
            .iter()
            .any(|r| r.entry.body["details"]["review"] == id)
        {
            return Ok(true);
        }
        match closures.last() {
            Some(last) if closures.len() == MAX_PAGE => after_seq = Some(last.seq),
            _ => return Ok(false),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    subject: String,
    #[serde(default)]
    reason: String,
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

async fn suspend(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<SuspendRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Operator)?;
    check_subject(&broker, &req.subject)?;
    check_reason(&req.reason, false)?;
    let details = json!({"reason": req.reason});
    let action = AdminAction::begin(
        &broker,
        &op,
        "suspended",
        Some(req.subject.clone()),
        details.clone(),
    )
    .await?;
    let request_id = action.request_id.clone();
    let suspension = SuspensionRecord {
        subject: req.subject.clone(),
        reason: req.reason.clone(),
        by: format!("operator:{}", op.name),
        at_ms: now_ms(),
    };
    action
        .run(
            async { Ok(broker.store.suspend(&suspension).await?) },
            |()| details,
        )
        .await?;
    broker
        .issuer(&broker.dynamic.load_full())
        .revoke_all(&req.subject, &request_id, "suspension")
        .await?;
    Ok(axum::Json(
        json!({"subject": req.subject, "suspended": true}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    subject: String,
}

async fn resume(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<ResumeRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Operator)?;
    // Not `check_subject`: a CI issuer removed from the config since its
    // suspension can still be resumed.
    mintguard_api::check_text("bad_subject", "subject", &req.subject, 2048)
        .map_err(ApiError::from_input)?;
    let was = AdminAction::begin(
        &broker,
        &op,
        "resumed",
        Some(req.subject.clone()),
        json!({}),
    )
    .await?
    .run(
        async { Ok(broker.store.resume(&req.subject).await?) },
        |was| json!({"was_suspended": was}),
    )
    .await?;
    Ok(axum::Json(
        json!({"subject": req.subject, "was_suspended": was}),
    ))
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

#[derive(Deserialize)]
struct BudgetParams {
    identity: String,
    grant: String,
}

fn budget_of(
    broker: &Broker,
    grant: &str,
) -> Result<mintguard_policy::budget::BudgetPolicy, ApiError> {
    let config = broker.config();
    let grant = config.grants.get(grant).ok_or_else(|| {
        ApiError::bad_request("unknown_grant", format!("no grant named {grant:?}"))
    })?;
    grant
        .budget
        .as_ref()
        .map(crate::config::BudgetConfig::policy)
        .ok_or_else(|| ApiError::bad_request("no_budget", "this grant has no budget"))
}

async fn budget_show(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<BudgetParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let policy = budget_of(&broker, &p.grant)?;
    let key = format!("identity:{}/grant:{}", p.identity, p.grant);
    let now = now_ms();
    let snapshot = broker
        .store
        .budget(&key)
        .await?
        .unwrap_or_else(|| mintguard_policy::budget::BudgetSnapshot::full(&policy, now));
    Ok(axum::Json(json!({
        "key": key,
        "capacity": policy.amount,
        "per": policy.per,
        "available_milli": snapshot.available(&policy, now),
        "available": snapshot.available(&policy, now) / mintguard_policy::budget::MILLI,
        "snapshot": snapshot,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    identity: String,
    grant: String,
    tokens: u64,
}

async fn budget_top_up(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<TopUp>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Operator)?;
    if req.tokens == 0 || req.tokens > mintguard_policy::budget::MAX_BUDGET_AMOUNT {
        return Err(ApiError::bad_request(
            "bad_tokens",
            "tokens must be 1..=1000000",
        ));
    }
    id::parse_spiffe_id(&req.identity)
        .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    let policy = budget_of(&broker, &req.grant)?;
    let key = format!("identity:{}/grant:{}", req.identity, req.grant);
    let now = now_ms();
    let details = json!({"grant": req.grant, "tokens": req.tokens});
    let snapshot = AdminAction::begin(
        &broker,
        &op,
        "budget_topped_up",
        Some(req.identity.clone()),
        details.clone(),
    )
    .await?
    .run(
        async { Ok(broker.store.top_up(&key, &policy, req.tokens, now).await?) },
        |_| details,
    )
    .await?;
    Ok(axum::Json(
        json!({"key": key, "available": snapshot.available(&policy, now) / mintguard_policy::budget::MILLI, "snapshot": snapshot}),
    ))
}

/// Whether anomaly analysis keeps up: `degraded` while it lags (the
/// `behaviour` signal is then stale; the broker still serves, trusting
/// less). On the admin listener only: an outsider learns nothing from it.
async fn health(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let now = now_ms();
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

/// Signal kinds the API accepts (`compromise` is positive evidence).
const SIGNAL_KINDS: &[&str] = &[
    "posture",
    "attestation",
    "behaviour",
    "location",
    "time",
    "network",
    "compromise",
];

/// Signal sources written by the broker itself (its observations, the
/// anomaly analysis, an operator's default), never through the API.
const RESERVED_SOURCES: &[&str] = &["broker:", "anomaly:", "operator:", "agent:", "ci:"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalPost {
    subject: String,
    kind: String,
    #[serde(default)]
    value: u8,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    source: Option<String>,
}

/// `POST /admin/v1/signals`: an external signal (EDR, MDM, SIEM) about an
/// identity or node. Signals can only lower trust: the pipeline takes, per
/// kind, the lowest fresh value among the broker's own and these.
async fn put_signal(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<SignalPost>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    op.require(Role::SignalSource)?;
    check_subject(&broker, &req.subject)?;
    if !SIGNAL_KINDS.contains(&req.kind.as_str()) {
        return Err(ApiError::bad_request(
            "bad_signal_kind",
            format!("kind must be one of {}", SIGNAL_KINDS.join(", ")),
        ));
    }
    if req.value > 100 {
        return Err(ApiError::bad_request(
            "bad_signal_value",
            "value must be 0–100",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(900);
    if ttl == 0 || ttl > 86_400 {
        return Err(ApiError::bad_request(
            "bad_ttl",
            "ttl_seconds must be 1..=86400",
        ));
    }
    let source = match req.source {
        None => format!("operator:{}", op.name),
        Some(source) => {
            // A source updates (and may clear) only its own signal: the
            // broker's own sources are not for the API, and a signal-source
            // token reports under its own name.
            if RESERVED_SOURCES.iter().any(|p| source.starts_with(p)) {
                return Err(ApiError::bad_request(
                    "reserved_source",
                    format!(
                        "sources starting with {} are the broker's own",
                        RESERVED_SOURCES.join(", ")
                    ),
                ));
            }
            if op.role == Role::SignalSource
                && source != op.name
                && !source
                    .strip_prefix(op.name.as_str())
                    .is_some_and(|rest| rest.starts_with(':'))
            {
                return Err(ApiError::forbidden(
                    "source_not_owned",
                    format!("this token reports as {0:?} or \"{0}:…\"", op.name),
                ));
            }
            source
        }
    };
    if source.is_empty() {
        return Err(ApiError::bad_request(
            "bad_source",
            "source must not be empty",
        ));
    }
    mintguard_api::check_text("bad_source", "source", &source, 128)
        .map_err(ApiError::from_input)?;
    let record = SignalRecord {
        subject: req.subject,
        kind: req.kind,
        source,
        value: req.value,
        observed_at_ms: now_ms(),
        ttl_seconds: ttl,
    };
    let details = serde_json::to_value(&record).unwrap_or_default();
    AdminAction::begin(
        &broker,
        &op,
        "signal_received",
        Some(record.subject.clone()),
        details.clone(),
    )
    .await?
    .run(
        async { Ok(broker.store.put_signal(&record).await?) },
        |()| details,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::to_value(&record).unwrap_or_default()),
    ))
}

#[derive(Deserialize)]
struct SignalQuery {
    subject: String,
}

async fn get_signals(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(q): Query<SignalQuery>,
) -> Result<axum::Json<Vec<SignalRecord>>, ApiError> {
    op.require(Role::Viewer)?;
    Ok(axum::Json(
        broker.store.signals(&[q.subject.as_str()]).await?,
    ))
}

/// Registered identities with their ECI, and each node's blast radius (the
/// ECI it can reach through the identities it may vouch for).
async fn identities(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let dynamic = broker.dynamic.load_full();
    let entries = broker.store.entries(None).await?;
    let mut by_identity: std::collections::BTreeMap<
        String,
        (
            std::collections::BTreeSet<String>,
            std::collections::BTreeSet<String>,
        ),
    > = std::collections::BTreeMap::new();
    let mut by_node: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for e in entries {
        let slot = by_identity.entry(e.spiffe_id.clone()).or_default();
        slot.0.insert(e.parent.clone());
        slot.1.extend(e.grants.iter().cloned());
        by_node.entry(e.parent).or_default().insert(e.spiffe_id);
    }
    let mut identities = Vec::new();
    for (id, (parents, grants)) in &by_identity {
        let eci = dynamic.eci.get(id);
        identities.push(json!({
            "spiffe_id": id,
            "parents": parents,
            "grants": grants,
            "eci": eci.and_then(|n| n.eci),
            "eci_raw": eci.and_then(|n| n.eci_raw),
            "structural_eci": eci.and_then(|n| n.structural_eci),
            "factors": eci.and_then(|n| n.factors),
            "suspended": broker.store.suspension(id).await?.is_some(),
        }));
    }
    let issuers: Vec<Value> = by_node
        .iter()
        .map(|(node, ids)| {
            let radius =
                mintguard_policy::eci::blast_radius(&dynamic.eci, ids.iter().map(String::as_str));
            json!({"node": node, "identities": ids.len(), "blast_radius": radius})
        })
        .collect();
    Ok(axum::Json(
        json!({"identities": identities, "issuers": issuers}),
    ))
}

/// The stored checkpoints and the base left by the last prune.
async fn checkpoints(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let base = broker.store.base().await?;
    Ok(axum::Json(json!({
        "base": base.map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
        "checkpoints": broker.store.checkpoints().await?,
        // Retention keeps this record and every later one (see `prune`).
        "needed_from_seq": oldest_needed(&broker).await?.map(|(seq, _)| seq),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    through_seq: i64,
    /// Where the caller exported the pruned records (recorded in the log).
    export: String,
}

/// The first record retention must keep, and the lease that needs it: a
/// live upstream lease's intent and outcome (which names what to revoke
/// upstream) stay until the lease ends. The oldest such leases by issue
/// time are looked at (a lease decided later may have been logged first);
/// one whose records are already gone (pruned by an older broker) protects
/// nothing and is passed over.
async fn oldest_needed(broker: &Broker) -> Result<Option<(i64, crate::store::Lease)>, ApiError> {
    let pinning = broker
        .store
        .leases(&LeaseQuery::OldestPinning {
            now_ms: now_ms(),
            limit: 64,
        })
        .await?;
    let full = pinning.len() == 64;
    let mut oldest: Option<(i64, crate::store::Lease)> = None;
    let first = pinning.first().cloned();
    for lease in pinning {
        let records = broker.store.log_for_request(&lease.request_id).await?;
        if let Some(seq) = records.iter().map(|r| r.seq).min()
            && oldest.as_ref().is_none_or(|(o, _)| seq < *o)
        {
            oldest = Some((seq, lease));
        }
    }
    // Sixty-four leases whose records are all gone and maybe more after
    // them: inconclusive, so nothing may be pruned until an operator closes
    // them (`mintguard revoke LEASE --confirm-revoked-upstream`).
    if oldest.is_none()
        && full
        && let Some(lease) = first
    {
        return Ok(Some((1, lease)));
    }
    Ok(oldest)
}

/// Retention: deletes records through a checkpointed record the caller has
/// exported, recording the prune (never silently). The chain then resumes
/// from that checkpoint.
async fn prune(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<PruneRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Admin)?;
    if req.export.is_empty() || req.export.len() > 4096 {
        return Err(ApiError::bad_request(
            "bad_export",
            "name the export the records were written to",
        ));
    }
    let checkpoint = broker
        .store
        .checkpoints()
        .await?
        .into_iter()
        .find(|c| c.seq == req.through_seq && c.kind == StatementKind::Checkpoint)
        .ok_or_else(|| {
            ApiError::bad_request(
                "not_a_checkpoint",
                "prune only through a checkpointed record",
            )
        })?;
    if let Some((seq, lease)) = oldest_needed(&broker).await?
        && seq <= req.through_seq
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "records_still_needed",
            format!(
                "record {seq} belongs to lease {} ({}), still live or awaiting upstream revocation: prune through a checkpoint before it, or after the lease ends",
                lease.id, lease.kind
            ),
        ));
    }
    // Sign only what verifies: the whole chain, this broker's export, and
    // the checkpoint itself (signed, and matching the chain) — a store
    // someone edited is never pruned into a signed, verifying base.
    if let Err(failure) = verify_log(&broker, Some(&checkpoint)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "log_not_verified",
            format!("the log does not verify, so nothing was pruned: {failure}"),
        ));
    }
    // The signed statement first, outside the database: a base no
    // statement covers never verifies, so the prune is provable. The
    // intent carries it too (and then the outcome), so the chain itself
    // anchors the base for replicas whose own export lacks it, and a crash
    // between the delete and the outcome still leaves a verifiable log.
    let statement = broker
        .export_prune_statement(req.through_seq, &checkpoint.hash)
        .map_err(|e| {
            ApiError::unavailable(
                "checkpoint_export_failed",
                "the prune statement could not be exported; nothing was pruned",
                e,
            )
        })?;
    let intent = json!({"through_seq": req.through_seq, "hash": checkpoint.hash, "export": req.export, "statement": statement});
    let deleted = AdminAction::begin(&broker, &op, "log_pruned", None, intent)
        .await?
        .run(
            async { Ok(broker.store.prune_through(req.through_seq).await?) },
            |deleted| {
                json!({"through_seq": req.through_seq, "hash": checkpoint.hash, "deleted": deleted, "export": req.export, "statement": statement})
            },
        )
        .await?;
    Ok(axum::Json(
        json!({"through_seq": req.through_seq, "deleted": deleted, "hash": checkpoint.hash}),
    ))
}
