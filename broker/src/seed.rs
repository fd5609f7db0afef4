//! `mintguard-broker seed-log`: a busy issuance log, written through the
//! real issuance core — entries, Cedar rules, trust, ECI, budgets, signed
//! chained records, leases — and the real anomaly analysis, on a clock that
//! walks a past `span` up to now. It is for demonstrations, the console's
//! screenshots and its page-load timings — into a log of its own: it
//! refuses a store whose log holds any record, and a data directory a
//! broker is running on (its `broker.lock`).
//!
//! The population: `nodes` nodes vouching for `identities` workloads
//! (`spiffe://<td>/ns/seed/sa/svc-NNN`, one `unix:uid` selector each, every
//! JWT grant of the config), and a batch node whose 40 quiet identities all
//! ask at once late in the span. Traffic is skewed (a few identities ask
//! most), with three incidents: one identity bursts (rate spike, budget
//! running out), one probes for a grant its entry lacks (a denial burst),
//! and the batch node fans out (issuer fan-out). The config's rules decide
//! every request: give the seeded identities a permit (see
//! `examples/busy/`).

use std::sync::Arc;

use mintguard_api::{CredentialRequest, IssueRequest};

use crate::anomaly::task::Analysis;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::issue::Refusal;
use crate::issue::inputs::node_posture;
use crate::state::{Broker, DataDirUse};
use crate::store::{Entry, LogQuery};

/// Requests issued concurrently at one instant of the simulated clock (so
/// the store group-commits them as it would live traffic).
const BATCH: usize = 32;
/// Most requests a seed writes.
pub const MAX_REQUESTS: u64 = 20_000_000;
/// Identities of the batch node.
const BATCH_IDENTITIES: usize = 40;

/// What to write.
#[derive(Clone, Debug)]
pub struct SeedPlan {
    /// Credential requests to decide (the log gets these plus detections).
    pub requests: u64,
    /// The span they cover, ending now, in ms.
    pub span_ms: i64,
    /// Nodes (besides the batch node).
    pub nodes: usize,
    /// Workload identities on them.
    pub identities: usize,
    /// The traffic's random seed.
    pub seed: u64,
}

/// What was written.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SeedReport {
    /// Requests decided.
    pub requests: u64,
    /// Issued.
    pub issued: u64,
    /// Refused by the decision (deny, step-up, suspend), each a record.
    pub refused: u64,
    /// Refused before a decision (no entry, rate limit): in the refusal tally only.
    pub rejected: u64,
    /// The log's records afterwards.
    pub records: i64,
    /// Detections the analysis recorded.
    pub detections: usize,
    /// The simulated span: first and last request time, ms.
    pub from_ms: i64,
    /// The last request's time.
    pub until_ms: i64,
}

/// A small deterministic generator (xorshift64*): the same seed, the same log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One seeded workload: its entry's parent and selectors, and its grants.
struct Workload {
    node: String,
    selectors: Vec<String>,
    grants: Vec<String>,
}

/// Writes the plan's traffic into the store `config` names.
pub async fn seed(mut config: Config, plan: &SeedPlan) -> Result<SeedReport, String> {
    if plan.requests == 0 || plan.requests > MAX_REQUESTS {
        return Err(format!("--requests must be 1..={MAX_REQUESTS}"));
    }
    if plan.span_ms < 60_000 || plan.span_ms > 90 * 86_400_000 {
        return Err("--span must be 1m..=90d".into());
    }
    if plan.nodes == 0 || plan.nodes > 1_000 || plan.identities < 16 || plan.identities > 100_000 {
        return Err("--nodes must be 1..=1000 and --identities 16..=100000".into());
    }
    let mut grants: Vec<String> = config
        .grants
        .values()
        .filter(|g| g.kind == crate::lease::LeaseKind::Jwt)
        .map(|g| g.name.clone())
        .collect();
    grants.sort();
    if grants.len() < 2 {
        return Err(
            "seed-log needs two JWT grants in the config (one the probing identity lacks)".into(),
        );
    }
    // A day of traffic in seconds: the per-second limits would refuse it
    // (they are created at start, from this copy of the config only).
    config.limits.per_node_per_second = u32::MAX;
    config.limits.per_identity_per_second = u32::MAX;
    let anomaly = config.anomaly.clone();

    let now = crate::clock::now_ms();
    let clock = Arc::new(ManualClock::new(now - plan.span_ms));
    let broker = Broker::start_with_clock(config.clone(), clock.clone(), DataDirUse::Sole)
        .await
        .map_err(|e| e.to_string())?;
    // Backdated records beside real ones would make a log whose times run
    // backwards, and a demonstration's entries would stand in a real
    // registry: a log of its own only (but for the `shadow_rules` record
    // the start itself writes when a shadow set is configured).
    let started_with = i64::from(config.policies.shadow.is_some());
    if let Some(chain) = broker
        .store
        .chains()
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .find(|c| c.seq > started_with || c.base.is_some())
    {
        return Err(format!(
            "the store's log already holds records (chain {:?} at {}): seed-log writes only into a store of its own",
            chain.chain, chain.seq
        ));
    }
    let from = now - plan.span_ms;

    let workloads = register(&broker, &config, plan, &grants, from).await?;
    // ECI and blast radius over the new entries.
    {
        let _reloading = broker.reloading.lock().await;
        let running = broker.dynamic.load_full();
        let dynamic = crate::state::with_new_exposure(&running, &*broker.store)
            .await
            .map_err(|e| e.to_string())?;
        broker.install(dynamic).await?;
    }

    let mut analysis = anomaly
        .enabled
        .then(|| Analysis::new(anomaly.clone(), None));
    if let Some(analysis) = &mut analysis {
        analysis.rebuild(&broker).await.map_err(|e| e.to_string())?;
    }
    broker.analysis.beat(clock.now_ms());

    let mut rng = Rng(plan.seed.max(1));
    let steady = plan.identities;
    // Zipf-like weights: identity k asks ∝ 1/(k+1)^0.8.
    let weights: Vec<f64> = (0..steady)
        .map(|k| 1.0 / ((k + 1) as f64).powf(0.8))
        .collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let burst = 7 % steady;
    let probe = 13 % steady;
    let step = (now - from) as f64 / plan.requests as f64;

    let mut report = SeedReport {
        from_ms: from,
        ..SeedReport::default()
    };
    let mut sent: u64 = 0;
    while sent < plan.requests {
        let at = from + (sent as f64 * step) as i64;
        clock.set(at.min(now - 1));
        // Analysis is as current as live (it stepped over everything before).
        broker.analysis.beat(clock.now_ms());
        let share = sent as f64 / plan.requests as f64;
        let n = usize::try_from((plan.requests - sent).min(BATCH as u64)).unwrap_or(BATCH);
        let mut calls = Vec::with_capacity(n);
        for i in 0..n {
            let pick = rng.unit();
            let (who, grant) = if (0.55..0.56).contains(&share) && i % 3 == 0 {
                (burst, grants[0].clone())
            } else if (0.70..0.705).contains(&share) && i % 2 == 0 {
                // The grant the probing identity's entry lacks.
                (probe, grants[grants.len() - 1].clone())
            } else if (0.85..0.86).contains(&share) && i % 4 == 0 {
                (steady + rng.below(BATCH_IDENTITIES), grants[0].clone())
            } else {
                let who = cumulative.partition_point(|c| *c < pick).min(steady - 1);
                let mine = &workloads[who].grants;
                (who, mine[rng.below(mine.len())].clone())
            };
            let w = &workloads[who];
            let request = IssueRequest {
                selectors: w.selectors.clone(),
                request: CredentialRequest {
                    grant,
                    ttl_seconds: Some(300),
                    purpose: (rng.below(4) != 0).then(|| "nightly reconciliation".to_owned()),
                    ..CredentialRequest::default()
                },
                node_facts: None,
            };
            let posture = node_posture(
                crate::clock::datetime(at - 3_600_000),
                crate::clock::datetime(at + 23 * 3_600_000),
                crate::clock::datetime(at),
            );
            calls.push(crate::doors::node::issue_from(
                &broker, &w.node, posture, request, at,
            ));
        }
        for result in futures_util::future::join_all(calls).await {
            match result {
                Ok(Ok(_)) => report.issued += 1,
                Ok(Err(refusal)) if decided(&refusal) => report.refused += 1,
                // The log, the store or signing failed: stop, never a
                // seeded log with holes.
                Ok(Err(refusal)) => return Err(format!("issuance failed: {}", refusal.message())),
                Err(e) if e.status.is_server_error() => {
                    return Err(format!("issuance failed: {}: {}", e.code, e.message));
                }
                Err(_) => report.rejected += 1,
            }
        }
        sent += n as u64;
        if let Some(analysis) = &mut analysis {
            analysis.step(&broker).await?;
        }
    }
    report.requests = sent;
    report.until_ms = clock.now_ms();
    let (seq, hash) = broker.store.head().await.map_err(|e| e.to_string())?;
    broker.checkpoint_if_due(seq, &hash, true).await;
    report.records = seq;
    report.detections = broker
        .store
        .log(&LogQuery {
            chain: broker.store.chain().to_owned(),
            outcome: Some("detection".into()),
            since_ms: Some(from),
            limit: 1_000_000,
            ..LogQuery::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .len();
    Ok(report)
}

/// Whether a refusal is a decision's (logged as such), not a failure.
fn decided(refusal: &Refusal) -> bool {
    matches!(
        refusal,
        Refusal::StepUp { .. }
            | Refusal::Denied { .. }
            | Refusal::Suspended { .. }
            | Refusal::SuspendedAtWrite { .. }
            | Refusal::BudgetExhausted { .. }
            | Refusal::RateLimited
    )
}

/// Creates the population's entries (reusing those a previous seed made).
async fn register(
    broker: &Broker,
    config: &Config,
    plan: &SeedPlan,
    grants: &[String],
    now: i64,
) -> Result<Vec<Workload>, String> {
    let td = &config.trust_domain;
    let existing = broker
        .store
        .entries(None)
        .await
        .map_err(|e| e.to_string())?;
    let mut workloads = Vec::new();
    for k in 0..plan.identities + BATCH_IDENTITIES {
        let (spiffe_id, node) = if k < plan.identities {
            (
                format!("spiffe://{td}/ns/seed/sa/svc-{k:03}"),
                format!("spiffe://{td}/mintguard/node/seed-{}", k % plan.nodes),
            )
        } else {
            (
                format!("spiffe://{td}/ns/seed/sa/batch-{:02}", k - plan.identities),
                format!("spiffe://{td}/mintguard/node/seed-batch"),
            )
        };
        // The probing identity's entry lacks the last grant.
        let mine: Vec<String> = if k == 13 % plan.identities {
            grants[..grants.len() - 1].to_vec()
        } else {
            grants.to_vec()
        };
        let selectors = vec![format!("unix:uid:{}", 30_000 + k)];
        let have = existing
            .iter()
            .any(|e| e.spiffe_id == spiffe_id && e.parent == node && e.selectors == selectors);
        if !have {
            let entry = Entry {
                id: crate::ids::random_id("ent"),
                spiffe_id,
                parent: node.clone(),
                selectors: selectors.clone(),
                grants: mine.clone(),
                created_at_ms: now,
            };
            broker
                .store
                .create_entry(&entry)
                .await
                .map_err(|e| e.to_string())?;
        }
        workloads.push(Workload {
            node,
            selectors,
            grants: mine,
        });
    }
    Ok(workloads)
}
