//! Registration entries and the node join tokens that enroll their nodes.

use super::*;

pub(super) async fn create_token(
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
    let expires = broker.clock.now_ms() + i64::try_from(ttl).unwrap_or(600) * 1000;
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

pub(super) async fn create_entry(
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
        if !Entry::known_selector(s) {
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
        created_at_ms: broker.clock.now_ms(),
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
pub(super) async fn reload_eci(broker: &Broker) {
    let _reloading = broker.reloading.lock().await;
    let running = broker.dynamic.load_full();
    match crate::state::with_new_exposure(&running, &*broker.store).await {
        Ok(d) => {
            if let Err(e) = broker.install(d).await {
                tracing::error!(%e, "installing the recomputed ECI failed; keeping the previous values");
            }
        }
        Err(e) => tracing::error!(%e, "recomputing ECI failed; keeping the previous values"),
    }
}

#[derive(Deserialize)]
pub(super) struct ParentQuery {
    parent: Option<String>,
}

pub(super) async fn list_entries(
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

pub(super) async fn delete_entry(
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
