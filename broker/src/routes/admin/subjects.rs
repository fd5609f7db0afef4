//! Subjects: suspension and resumption, signals, and the identities view.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuspendRequest {
    subject: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn suspend(
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
        at_ms: broker.clock.now_ms(),
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
pub(super) struct ResumeRequest {
    subject: String,
}

pub(super) async fn resume(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubjectQuery {
    subject: String,
}

/// `GET /admin/v1/suspension?subject=ID`: the subject's suspension, or null.
pub(super) async fn suspension(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(q): Query<SubjectQuery>,
) -> Result<axum::Json<Option<SuspensionRecord>>, ApiError> {
    op.require(Role::Viewer)?;
    mintguard_api::check_text("bad_subject", "subject", &q.subject, 2048)
        .map_err(ApiError::from_input)?;
    Ok(axum::Json(broker.store.suspension(&q.subject).await?))
}

/// Signal sources written by the broker itself (its observations, the
/// anomaly analysis, an operator's default), never through the API.
pub(super) const RESERVED_SOURCES: &[&str] = &["broker:", "anomaly:", "operator:", "agent:", "ci:"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalPost {
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
pub(super) async fn put_signal(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<SignalPost>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    op.require(Role::SignalSource)?;
    check_subject(&broker, &req.subject)?;
    if !mintguard_policy::trust::postable_signal_kinds().any(|k| k == req.kind) {
        return Err(ApiError::bad_request(
            "bad_signal_kind",
            format!(
                "kind must be one of {}",
                mintguard_policy::trust::postable_signal_kinds()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
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
        observed_at_ms: broker.clock.now_ms(),
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
pub(super) struct SignalQuery {
    subject: String,
}

pub(super) async fn get_signals(
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
pub(super) async fn identities(
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
