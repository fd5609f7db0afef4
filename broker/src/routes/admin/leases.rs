//! Leases (list, revoke) and budgets (show, top up).

use super::*;

#[derive(Deserialize)]
pub(super) struct LeaseParams {
    identity: Option<String>,
    #[serde(default)]
    outlived: bool,
    /// At most this many, newest first (default 1000, at most `MAX_PAGE`).
    limit: Option<usize>,
}

pub(super) async fn leases(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<LeaseParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let now = broker.clock.now_ms();
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
pub(super) struct RevokeParams {
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

pub(super) async fn revoke(
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
        if lease.issued_at_ms > broker.clock.now_ms() - broker.reconcile_after_ms()
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
    if p.confirm_revoked_upstream && !revoked && lease.revoked_at_ms.is_none() {
        // Its outcome was recorded meanwhile: the broker revokes it itself.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "broker_can_revoke",
            "the lease's mint was answered meanwhile; the broker revokes it itself (`mintguard revoke LEASE`)",
        ));
    }
    if lease.revocation == Revocation::Advisory && !revoked {
        let action = broker.minters.advisory_action(lease.kind, &id);
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
pub(super) struct BudgetParams {
    identity: String,
    grant: String,
}

pub(super) fn budget_of(
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

pub(super) async fn budget_show(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<BudgetParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let policy = budget_of(&broker, &p.grant)?;
    let key = format!("identity:{}/grant:{}", p.identity, p.grant);
    let now = broker.clock.now_ms();
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
pub(super) struct TopUp {
    identity: String,
    grant: String,
    tokens: u64,
}

pub(super) async fn budget_top_up(
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
    let now = broker.clock.now_ms();
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
