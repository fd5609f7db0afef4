//! Step-up approvals, break-glass requests and their reviews.

use super::*;
use crate::store::{ApprovalKind, ApprovalState};

#[derive(Deserialize)]
pub(super) struct ApprovalsParams {
    #[serde(default)]
    all: bool,
}

/// Approvals of the last day: pending ones, or all with `all=true`.
pub(super) async fn list_approvals(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<ApprovalsParams>,
) -> Result<axum::Json<Vec<Value>>, ApiError> {
    op.require(Role::Viewer)?;
    let now = broker.clock.now_ms();
    let listed = broker.store.approvals(now - 86_400_000).await?;
    Ok(axum::Json(
        listed
            .iter()
            .filter(|a| p.all || a.state_at(now) == ApprovalState::Pending)
            .map(|a| crate::approvals::view(a, now))
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveRequest {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

pub(super) async fn approve(
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
pub(super) struct RejectRequest {
    reason: String,
}

pub(super) async fn reject(
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
pub(super) async fn give_verdict(
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
            crate::approvals::decide(broker, id, &approver, verdict, broker.clock.now_ms()),
            |a| crate::approvals::view(a, broker.clock.now_ms()),
        )
        .await?;
    Ok(axum::Json(crate::approvals::view(
        &a,
        broker.clock.now_ms(),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BreakGlassRequest {
    identity: String,
    grant: String,
    reason: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Opens a break-glass request (operator role); another approver confirms
/// it with `approve`, then the opener issues it.
pub(super) async fn open_break_glass(
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
            broker.clock.now_ms(),
        ),
        |a| crate::approvals::view(a, broker.clock.now_ms()),
    )
    .await?;
    Ok(axum::Json(crate::approvals::view(
        &a,
        broker.clock.now_ms(),
    )))
}

/// Issues a confirmed break-glass request, for its opener only: logged as
/// decided, overridden to issue, and left as an open post-incident review.
pub(super) async fn issue_break_glass(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    op.require(Role::Operator)?;
    let now = broker.clock.now_ms();
    let a = broker
        .store
        .approval(&id)
        .await?
        .filter(|a| a.kind == ApprovalKind::BreakGlass)
        .ok_or_else(|| ApiError::not_found("unknown_break_glass", "no such break-glass request"))?;
    if a.requested_by != format!("operator:{}", op.name) {
        return Err(ApiError::forbidden(
            "not_the_opener",
            "only the operator who opened the request issues it",
        ));
    }
    if a.state_at(now) != ApprovalState::Approved {
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
        ..Default::default()
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
pub(super) struct ReviewsParams {
    #[serde(default)]
    all: bool,
}

/// Post-incident reviews: every break-glass issuance until an operator
/// closes its review (both are log records).
pub(super) async fn reviews(
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
    let first = LogCursor::default();
    let closed: std::collections::HashMap<String, Value> =
        read_log(&*broker.store, &read("review_closed"), &first)
            .await?
            .into_iter()
            .filter_map(|r| {
                let id = r.entry.body["details"]["review"].as_str()?.to_owned();
                Some((id, r.entry.body["details"].clone()))
            })
            .collect();
    let mut out = Vec::new();
    for r in read_log(&*broker.store, &read("break_glass_issued"), &first).await? {
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
pub(super) struct CloseReviewRequest {
    notes: String,
}

pub(super) async fn close_review(
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
        .filter(|a| {
            a.kind == ApprovalKind::BreakGlass
                && matches!(a.state, ApprovalState::Used | ApprovalState::Reviewed)
        })
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
    if request.state != ApprovalState::Used
        && review_closed_in_log(&broker, &id, request.created_at_ms).await?
    {
        return Err(already());
    }
    let body = json!({"review": id, "notes": req.notes});
    AdminAction::begin(&broker, &op, "review_closed", None, body.clone())
        .await?
        .run(
            async {
                if request.state == ApprovalState::Used {
                    let reviewed = crate::store::Approval {
                        state: ApprovalState::Reviewed,
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
pub(super) async fn review_closed_in_log(
    broker: &Broker,
    id: &str,
    created_at_ms: i64,
) -> Result<bool, ApiError> {
    let query = LogQuery {
        outcome: Some("review_closed".into()),
        since_ms: Some(created_at_ms),
        limit: MAX_PAGE,
        ..Default::default()
    };
    let mut after = LogCursor::default();
    loop {
        let closures = read_log(&*broker.store, &query, &after).await?;
        if closures
            .iter()
            .any(|r| r.entry.body["details"]["review"] == id)
        {
            return Ok(true);
        }
        if closures.len() < MAX_PAGE {
            return Ok(false);
        }
        for r in &closures {
            after.advance(&r.chain, r.seq);
        }
    }
}
