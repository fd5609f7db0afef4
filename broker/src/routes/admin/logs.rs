//! The issuance log as operators read it: pages, verification, explain,
//! checkpoints and retention (`replay` is its own file).

use std::collections::BTreeMap;

use super::*;

#[derive(Deserialize)]
pub(super) struct LogParams {
    identity: Option<String>,
    grant: Option<String>,
    node: Option<String>,
    outcome: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// One chain only, in `seq` order (`after_seq` then counts in it).
    chain: Option<String>,
    /// Where the reader stands ([`LogCursor`]): every chain, in time order.
    after: Option<String>,
    /// The unnamed chain's seq, as before chains had names (or, with
    /// `chain`, that chain's).
    after_seq: Option<i64>,
    limit: Option<usize>,
}

/// Records in time order across the chains, after the cursor `after`
/// (the next page's cursor: `after` advanced past each record returned);
/// or, with `chain`, one chain in `seq` order after `after_seq`.
pub(super) async fn logs(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<LogParams>,
) -> Result<axum::Json<Vec<LogRecord>>, ApiError> {
    op.require(Role::Viewer)?;
    let q = LogQuery {
        chain: p.chain.clone().unwrap_or_default(),
        identity: p.identity,
        grant: p.grant,
        node: p.node,
        outcome: p.outcome,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        after_seq: p.after_seq,
        limit: p.limit.unwrap_or(1000).clamp(1, MAX_PAGE),
        ..Default::default()
    };
    if p.chain.is_some() {
        if p.after.is_some() {
            return Err(ApiError::bad_request(
                "bad_cursor",
                "one chain is read after after_seq; every chain after a cursor (after)",
            ));
        }
        return Ok(axum::Json(broker.store.log(&q).await?));
    }
    let after = match (p.after, p.after_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_cursor",
                "give a cursor (after) or the unnamed chain's after_seq, not both",
            ));
        }
        (Some(text), None) => {
            LogCursor::parse(&text).map_err(|why| ApiError::bad_request("bad_cursor", why))?
        }
        (None, seq) => {
            let mut cursor = LogCursor::default();
            cursor.advance("", seq.unwrap_or(0));
            cursor
        }
    };
    Ok(axum::Json(read_log(&*broker.store, &q, &after).await?))
}

/// The log in pages of `MAX_PAGE`, every chain in time order ([`read_log`]),
/// so that no caller holds all of it.
pub(super) struct RecordPages<'a> {
    broker: &'a Broker,
    after: LogCursor,
    done: bool,
}

impl<'a> RecordPages<'a> {
    pub(super) fn new(broker: &'a Broker) -> Self {
        Self {
            broker,
            after: LogCursor::default(),
            done: false,
        }
    }

    /// The next page, or `None` after the last.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<LogRecord>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let query = LogQuery {
            limit: MAX_PAGE,
            ..Default::default()
        };
        let page = read_log(&*self.broker.store, &query, &self.after).await?;
        self.done = page.len() < MAX_PAGE;
        for r in &page {
            self.after.advance(&r.chain, r.seq);
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

pub(super) async fn verify(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    // One at a time (each reads the whole log), in turn.
    let _turn = broker.verifying.lock().await;
    let verified = verify_log(&broker, None).await?;
    let answer = match verified {
        Ok(report) => json!({"ok": true, "report": report}),
        Err(failure) => {
            json!({"ok": false, "failure": failure, "message": failure.to_string()})
        }
    };
    if let Ok(mut last) = broker.last_verify.lock() {
        let mut seen = answer.clone();
        seen["at_ms"] = json!(broker.clock.now_ms());
        seen["by"] = json!(op.name);
        *last = Some(seen);
    }
    Ok(axum::Json(answer))
}

/// `logs verify` on the broker: its own checkpoint file (which must be
/// readable, and hold every checkpoint the store has from this broker),
/// the chain a page at a time, and every rule set the decisions name.
/// Verifies the log against this broker's export and the store. `also`: a
/// checkpoint (from the store, perhaps another replica's) the chain must
/// match as well, its signature checked like the file's.
pub(super) async fn verify_log(
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
    match broker.store.check_codec().await {
        Ok(()) => {}
        Err(crate::store::StoreError::Corrupt(reason)) => {
            return Ok(Err(VerifyFailure::Codec { reason }));
        }
        Err(e) => return Err(e.into()),
    }
    let stored = broker.store.checkpoints().await?;
    if let Some(seq) =
        crate::log::verify::missing_export(&stored, &checkpoints, &[broker.instance_id()])
    {
        return Ok(Err(VerifyFailure::ExportMissing { seq }));
    }
    // The store's statements too (signed, and checked like the file's):
    // the other replicas' checkpoints and the retired chains' final
    // statements, which this broker's file does not hold.
    checkpoints.extend(stored);
    checkpoints.extend(also.cloned());
    let chains: Vec<ChainStart> = broker
        .store
        .chains()
        .await?
        .iter()
        .map(ChainStart::from)
        .collect();
    let mut verifier =
        match ChainVerifier::for_chains(&chains, &checkpoints, Some(broker.log_public_key())) {
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
    let verified = verifier.finish(&problems);
    // An unsealed retirement is reported last (see `finish`): the stray
    // rows are looked for under it too, before `logs retire` may seal.
    let sealable = matches!(&verified, Err(f) if unsealed(f).is_some());
    if (verified.is_ok() || sealable)
        && let Some((chain, seq)) = broker.store.stray_record().await?
    {
        return Ok(Err(VerifyFailure::StrayRecord { chain, seq }));
    }
    Ok(verified)
}

/// A stored rule set as the store holds it (its text, unparsed), so an
/// offline `logs verify` re-hashes what the store really has.
pub(super) async fn rule_set(
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

pub(super) async fn log_key(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    Ok(axum::Json(
        serde_json::to_value(broker.log_public_key()).unwrap_or_default(),
    ))
}

pub(super) async fn explain(
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
                since_ms: Some(r.entry.time_ms.saturating_sub(ttl_ms)),
                until_ms: Some(r.entry.time_ms.saturating_add(1)),
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

/// The chains (each with its head, the base left by its last prune, and
/// the record retention must keep of it), and the stored checkpoints.
pub(super) async fn checkpoints(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let chains = broker.store.chains().await?;
    let needed = oldest_needed(&broker).await?;
    let needed_from = |chain: &str| {
        needed
            .iter()
            .filter(|n| n.chain == chain)
            .map(|n| n.seq)
            .min()
    };
    let unnamed = chains.iter().find(|c| c.chain.is_empty());
    Ok(axum::Json(json!({
        "chains": chains.iter().map(|c| json!({
            "chain": c.chain, "seq": c.seq, "hash": c.hash,
            "base": c.base.as_ref().map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
            "retired_at_ms": c.retired_at_ms,
            // Retention keeps this record of the chain and every later one (see `prune`).
            "needed_from_seq": needed_from(&c.chain),
        })).collect::<Vec<_>>(),
        "checkpoints": broker.store.checkpoints().await?,
        // A record no chain accounts for (`logs verify` reports it).
        "stray": broker.store.stray_record().await?.map(|(chain, seq)| json!({"chain": chain, "seq": seq})),
        // The unnamed chain's, as before chains had names.
        "base": unnamed.and_then(|c| c.base.as_ref()).map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
        "needed_from_seq": needed_from(""),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PruneRequest {
    /// The chain to prune (absent: the unnamed one).
    #[serde(default)]
    chain: String,
    through_seq: i64,
    /// Where the caller exported the pruned records (recorded in the log).
    export: String,
}

/// The first record of each chain retention must keep, and the lease that
/// needs it: (chain, seq, lease). A live upstream lease's intent and
/// outcome (which names what to revoke upstream) stay until the lease
/// ends. The oldest such leases by issue time are looked at (a lease
/// decided later may have been logged first); one whose records are
/// already gone (pruned by an older broker) protects nothing and is passed
/// over.
pub(super) async fn oldest_needed(broker: &Broker) -> Result<Vec<Needed>, ApiError> {
    let pinning = broker
        .store
        .leases(&LeaseQuery::OldestPinning {
            now_ms: broker.clock.now_ms(),
            limit: 64,
        })
        .await?;
    let full = pinning.len() == 64;
    let mut oldest: BTreeMap<String, Needed> = BTreeMap::new();
    let first = pinning.first().cloned();
    let mut keep = |chain: &str, seq: i64, why: String| {
        if oldest.get(chain).is_none_or(|n| seq < n.seq) {
            oldest.insert(
                chain.to_owned(),
                Needed {
                    chain: chain.to_owned(),
                    seq,
                    why,
                },
            );
        }
    };
    let lease_needs = |lease: &crate::store::Lease| {
        format!(
            "belongs to lease {} ({}), still live or awaiting upstream revocation: prune through a checkpoint before it, or after the lease ends",
            lease.id, lease.kind
        )
    };
    let mut found = false;
    for lease in &pinning {
        for r in broker.store.log_for_request(&lease.request_id).await? {
            found = true;
            keep(&r.chain, r.seq, lease_needs(lease));
        }
    }
    // A prune's record on one chain accounts for another chain's base
    // (`logs verify` looks for it): it stays while that base does.
    let chains = broker.store.chains().await?;
    let prunes = LogQuery {
        outcome: Some("log_pruned".into()),
        limit: MAX_PAGE,
        ..Default::default()
    };
    for r in read_log(&*broker.store, &prunes, &LogCursor::default()).await? {
        let details = &r.entry.body["details"];
        let pruned = details["chain"].as_str().unwrap_or_default();
        let accounts = chains.iter().any(|c| {
            c.chain == pruned && c.base.as_ref().map(|b| b.0) == details["through_seq"].as_i64()
        });
        if pruned != r.chain && accounts {
            keep(
                &r.chain,
                r.seq,
                format!(
                    "records the prune of chain {pruned:?} up to its current base: it stays until that chain is pruned further"
                ),
            );
        }
    }
    // Sixty-four leases whose records are all gone and maybe more after
    // them: inconclusive, so nothing may be pruned from any chain until an
    // operator closes them (`mintguard revoke LEASE --confirm-revoked-upstream`).
    if full
        && !found
        && let Some(lease) = first
    {
        return Ok(chains
            .into_iter()
            .map(|c| Needed {
                chain: c.chain,
                seq: 1,
                why: lease_needs(&lease),
            })
            .collect());
    }
    Ok(oldest.into_values().collect())
}

/// A record retention must keep (and every later one of its chain).
pub(super) struct Needed {
    chain: String,
    seq: i64,
    /// Why, as the refusal says it.
    why: String,
}

/// Retention: deletes records through a checkpointed record the caller has
/// exported, recording the prune (never silently). The chain then resumes
/// from that checkpoint.
pub(super) async fn prune(
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
        .find(|c| {
            c.chain == req.chain && c.seq == req.through_seq && c.kind == StatementKind::Checkpoint
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "not_a_checkpoint",
                "prune only through a checkpointed record of the chain",
            )
        })?;
    if let Some(needed) = oldest_needed(&broker)
        .await?
        .into_iter()
        .find(|n| n.chain == req.chain && n.seq <= req.through_seq)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "records_still_needed",
            format!("record {} {}", needed.seq, needed.why),
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
        .export_statement(
            StatementKind::Prune,
            &req.chain,
            req.through_seq,
            &checkpoint.hash,
        )
        .map_err(|e| {
            ApiError::unavailable(
                "checkpoint_export_failed",
                "the prune statement could not be exported; nothing was pruned",
                e,
            )
        })?;
    // The unnamed chain's prune names no chain, as before chains had names.
    let chain = (!req.chain.is_empty()).then_some(req.chain.as_str());
    let intent = json!({"chain": chain, "through_seq": req.through_seq, "hash": checkpoint.hash, "export": req.export, "statement": statement});
    let deleted = AdminAction::begin(&broker, &op, "log_pruned", None, intent)
        .await?
        .run(
            async {
                Ok(broker
                    .store
                    .prune_through(&req.chain, req.through_seq)
                    .await?)
            },
            |deleted| {
                json!({"chain": chain, "through_seq": req.through_seq, "hash": checkpoint.hash, "deleted": deleted, "export": req.export, "statement": statement})
            },
        )
        .await?;
    Ok(axum::Json(
        json!({"chain": req.chain, "through_seq": req.through_seq, "deleted": deleted, "hash": checkpoint.hash}),
    ))
}

/// Retires a replica's chain (the replica was taken out of service): its
/// head is signed as the chain's final statement, exported and stored, so
/// the chain can be neither extended nor cut back unnoticed; the replica,
/// if it still runs, appends nothing more. Run on another replica.
pub(super) async fn retire_chain(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Admin)?;
    // `unnamed`: the chain a store kept before replicas had chains of their own.
    let chain = match name.as_str() {
        "unnamed" => String::new(),
        hex if crate::ids::is_hex_id(hex) => name.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "bad_chain",
                "a replica's chain is named by its instance id (lowercase hex), the store's first chain `unnamed`",
            ));
        }
    };
    let target = broker
        .store
        .chains()
        .await?
        .into_iter()
        .find(|c| c.chain == chain)
        .ok_or_else(|| ApiError::not_found("unknown_chain", "the store holds no such chain"))?;
    let sealed = broker
        .store
        .checkpoints()
        .await?
        .iter()
        .any(|c| c.chain == chain && c.kind == StatementKind::Final);
    if target.retired_at_ms.is_some() && sealed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_retired",
            "the chain is retired and sealed by its final statement",
        ));
    }
    // The log verifies first: a chain someone edited is not sealed as it
    // is. A retirement left without its final statement (an export or
    // store failure, a crash) is what this run completes.
    if let Err(failure) = verify_log(&broker, None).await?
        && unsealed(&failure).is_none_or(|(c, _, _)| c != chain)
    {
        return Err(not_verified(&failure));
    }
    let intent = json!({"chain": chain});
    let (seq, hash, statement) = AdminAction::begin(&broker, &op, "chain_retired", None, intent)
        .await?
        .run(
            async {
                // Retired first, so that nothing extends it; then verified
                // again, and sealed at the head its records reach, which
                // must be the store's: never at a head row that no
                // verification read up to.
                if target.retired_at_ms.is_none() {
                    broker.store.retire_chain(&chain, broker.clock.now_ms()).await?;
                }
                let (seq, hash) = match verify_log(&broker, None).await? {
                    Err(failure) => match unsealed(&failure) {
                        Some((c, last, head)) if c == chain => (last, head.to_owned()),
                        _ => return Err(not_verified(&failure)),
                    },
                    Ok(_) => {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "already_retired",
                            "the chain was sealed meanwhile",
                        ));
                    }
                };
                let stored = broker
                    .store
                    .chains()
                    .await?
                    .into_iter()
                    .find(|c| c.chain == chain)
                    .map(|c| (c.seq, c.hash));
                if stored != Some((seq, hash.clone())) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "log_not_verified",
                        format!(
                            "the chain's records end at record {seq} but the store records another head: it was not sealed"
                        ),
                    ));
                }
                let statement = broker
                    .export_statement(StatementKind::Final, &chain, seq, &hash)
                    .map_err(|e| {
                        ApiError::unavailable(
                            "checkpoint_export_failed",
                            "the chain was retired but its final statement could not be exported: run the command again",
                            e,
                        )
                    })?;
                broker.store.add_checkpoint(&statement).await?;
                Ok((seq, hash, statement))
            },
            |(seq, hash, statement)| json!({"chain": chain, "seq": seq, "hash": hash, "statement": statement}),
        )
        .await?;
    Ok(axum::Json(
        json!({"chain": chain, "seq": seq, "hash": hash, "statement": statement}),
    ))
}

fn not_verified(failure: &VerifyFailure) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "log_not_verified",
        format!("the log does not verify, so no chain was sealed: {failure}"),
    )
}

/// The chain, last record and head hash of a retirement without its final
/// statement, if that is what `failure` is.
fn unsealed(failure: &VerifyFailure) -> Option<(&str, i64, &str)> {
    match failure {
        VerifyFailure::UnsealedRetirement { last, head } => Some(("", *last, head)),
        VerifyFailure::InChain { chain, failure } => match &**failure {
            VerifyFailure::UnsealedRetirement { last, head } => Some((chain, *last, head)),
            _ => None,
        },
        _ => None,
    }
}
