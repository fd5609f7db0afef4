//! The issuance core without sockets: a temporary SQLite store, a manual
//! clock and a test minter, through allow, refusal, step-up, budget
//! exhausted, mint failure and log failure. Each test asserts the records
//! written and the order of the proofs (intent durable before the mint,
//! outcome after it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use governor::{Quota, RateLimiter};
use mintguard_policy::decision::{IssuerKind, PrincipalKind};
use mintguard_policy::{Outcome, Reason};
use serde_json::{Value, json};

use super::*;
use crate::clock::ManualClock;
use crate::log::LogRecord;
use crate::mint::jwt::JwtMinter;
use crate::mint::{
    LeaseKind, LoggedIntent, MintError, MintRequest, Minted, Minter, Reconcile, Revocation,
};
use crate::store::{Lease, LeaseOwner, LeaseQuery};

const CONFIG: &str = r#"
    trust_domain = "example.org"
    data_dir = "data"
    issuer_url = "https://mintguard.example.org"
    [listen]
    public = "127.0.0.1:8444"
    agents = "127.0.0.1:8443"
    admin = "127.0.0.1:8445"
    [policies]
    cedar = "policies"
    [vault]
    address = "http://127.0.0.1:1"
    token_file = "vault-token"
    [[grants]]
    name = "token"
    kind = "jwt"
    max_ttl = "15m"
    jwt = { audience = "payments" }
    [[grants]]
    name = "once"
    kind = "jwt"
    max_ttl = "15m"
    jwt = { audience = "payments" }
    budget = { amount = 1, per = "1h" }
    [[grants]]
    name = "db"
    kind = "vault"
    max_ttl = "15m"
    vault = { secret = { path = "database/creds/readonly" } }
    budget = { amount = 5, per = "1h" }
"#;

/// 2026-12-03T12:00:00Z.
const NOW: i64 = 1_796_313_600_000;

/// What the test minter is told to do.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Mint,
    Fail,
    Unanswered,
    /// Mints, but so slowly that reconciliation closes the lease first.
    OutlivedByReconcile,
}

/// An upstream minter that records each call with the intent it was shown.
struct TestMinter {
    store: Arc<dyn Store>,
    behaviour: Mutex<Behaviour>,
    /// (lease id, intent seq, whether the intent was durable when minted).
    calls: Mutex<Vec<(String, i64, bool)>>,
    revoked: Mutex<Vec<Value>>,
    /// Reconciliation races the issuer: while it searches upstream, the
    /// slow mint's outcome is recorded.
    outcome_during_reconcile: AtomicBool,
}

#[async_trait]
impl Minter for TestMinter {
    fn kind(&self) -> LeaseKind {
        LeaseKind::Vault
    }

    fn revocation(&self) -> Revocation {
        Revocation::Effective
    }

    fn flow(&self) -> Flow {
        Flow::Upstream
    }

    async fn mint(
        &self,
        approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        assert!(approved.decision().outcome.mints());
        // The proof's order: the intent is in the store before the mint.
        let logged = self
            .store
            .log(&ALL)
            .await
            .unwrap()
            .iter()
            .any(|r| r.seq == intent.seq() && r.entry.kind == RecordKind::Intent);
        self.calls
            .lock()
            .unwrap()
            .push((request.lease_id.to_owned(), intent.seq(), logged));
        let behaviour = *self.behaviour.lock().unwrap();
        if behaviour == Behaviour::OutlivedByReconcile {
            assert!(
                self.store
                    .revoke_lease(request.lease_id, request.now_ms + 1)
                    .await
                    .unwrap()
            );
        }
        match behaviour {
            Behaviour::Mint | Behaviour::OutlivedByReconcile => Ok(Minted {
                credential: json!({"type": "test", "secret": "s3cret"}),
                upstream: json!({"test_handle": request.lease_id}),
                lease_seconds: 60,
            }),
            Behaviour::Fail => Err(MintError::new("refused by the test upstream")),
            Behaviour::Unanswered => Err(MintError {
                message: "no answer".into(),
                ambiguous: true,
            }),
        }
    }

    async fn revoke(&self, upstream: &Value) -> Result<bool, MintError> {
        self.revoked.lock().unwrap().push(upstream.clone());
        Ok(true)
    }

    async fn reconcile(&self, lease: &Lease, _grant: Option<&crate::mint::GrantSpec>) -> Reconcile {
        if self.outcome_during_reconcile.load(Ordering::SeqCst) {
            let outcome = record::lease_record(
                lease,
                RecordKind::Outcome,
                "minted",
                json!({"lease_id": lease.id, "upstream": {"test_handle": lease.id}}),
                lease.issued_at_ms + 1,
            );
            let appended = self
                .store
                .append(Append {
                    refuse_if_lease_closed: Some(lease.id.clone()),
                    ..Append::record(outcome)
                })
                .await
                .unwrap();
            assert!(!appended.lease_closed, "the outcome came first");
        }
        // The search (done before the outcome landed) found nothing.
        Reconcile::NotMinted
    }
}

/// The store's append, or a log that refuses every write while `broken`.
struct TestLog {
    store: Arc<dyn Store>,
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl IssuanceLog for TestLog {
    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk full (test)".into()));
        }
        self.store.append(append).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    log: TestLog,
    minters: Minters,
    minter: Arc<TestMinter>,
    clock: ManualClock,
    dynamic: crate::state::Dynamic,
    limiter: DefaultKeyedRateLimiter<String>,
    metrics: crate::metrics::Metrics,
    analysis: crate::health::AnalysisHealth,
}

/// Shares the test minter between the registry and the test's assertions.
struct Shared(Arc<TestMinter>);

#[async_trait]
impl Minter for Shared {
    fn kind(&self) -> LeaseKind {
        self.0.kind()
    }
    fn revocation(&self) -> Revocation {
        self.0.revocation()
    }
    fn flow(&self) -> Flow {
        self.0.flow()
    }
    async fn mint(
        &self,
        approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        self.0.mint(approved, request, intent).await
    }
    async fn revoke(&self, upstream: &Value) -> Result<bool, MintError> {
        self.0.revoke(upstream).await
    }
    async fn reconcile(&self, lease: &Lease, grant: Option<&crate::mint::GrantSpec>) -> Reconcile {
        self.0.reconcile(lease, grant).await
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let store = crate::store::open(&url).await.unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/permit.cedar"),
        "@id(\"payments-may-mint\")\npermit (principal == Mintguard::Workload::\"spiffe://example.org/payments\", action, resource);\n",
    )
    .unwrap();
    let config = Config::parse(&dir.path().join("broker.toml"), CONFIG).unwrap();
    let keys = mintguard_certs::jwt::JwtKeySet::load_or_create(
        &dir.path().join("jwt"),
        crate::state::jwt_settings(&config),
    )
    .unwrap();
    let dynamic = crate::state::build_dynamic(config, &*store).await.unwrap();
    let minter = Arc::new(TestMinter {
        store: store.clone(),
        behaviour: Mutex::new(Behaviour::Mint),
        calls: Mutex::new(Vec::new()),
        revoked: Mutex::new(Vec::new()),
        outcome_during_reconcile: AtomicBool::new(false),
    });
    let mut minters = Minters::default();
    minters.register(Box::new(JwtMinter::new(Arc::new(std::sync::RwLock::new(
        keys,
    )))));
    minters.register(Box::new(Shared(minter.clone())));
    Fixture {
        log: TestLog {
            store: store.clone(),
            broken: Arc::new(AtomicBool::new(false)),
        },
        store,
        minters,
        minter,
        clock: ManualClock::new(NOW),
        dynamic,
        limiter: RateLimiter::keyed(Quota::per_second(std::num::NonZeroU32::new(1000).unwrap())),
        metrics: crate::metrics::Metrics::default(),
        analysis: crate::health::AnalysisHealth::new(false, 60_000, NOW),
        _dir: dir,
    }
}

impl Fixture {
    fn issuer(&self) -> Issuer<'_> {
        Issuer {
            store: &*self.store,
            log: &self.log,
            minters: &self.minters,
            clock: &self.clock,
            rules: Rules {
                config: &self.dynamic.config,
                rules: &self.dynamic.rules,
                rules_json: &self.dynamic.rules_json,
                eci: &self.dynamic.eci,
                shadow: self.dynamic.shadow.as_deref(),
            },
            identity_limiter: &self.limiter,
            metrics: &self.metrics,
            analysis: &self.analysis,
            reconcile_after_ms: 120_000,
        }
    }

    /// Issues `grant` for the test workload with posture and attestation `trust`.
    async fn issue(
        &self,
        grant: &str,
        trust: u8,
        approval: Option<&str>,
    ) -> Result<Issued, Refusal> {
        let mut request = crate::doors::node::request(grant);
        request.approval_id = approval.map(str::to_owned);
        let subject = Subject {
            identity: WORKLOAD.into(),
            principal: PrincipalKind::Workload,
            issuer_kind: IssuerKind::Node,
            issuer: NODE.into(),
            may_vouch: true,
            observed: Observed {
                posture: (trust, "test:posture"),
                attestation: (trust, "test:attestation"),
                network: None,
            },
            blast_radius: 10.0,
            ci_claims: BTreeMap::new(),
            context: [("entry_id".to_owned(), json!("ent-test"))]
                .into_iter()
                .collect(),
            audit: false,
            break_glass: None,
            approval_binding: None,
        };
        let grant = &self.dynamic.config.grants[grant];
        self.issuer()
            .issue(grant, request, subject, self.clock.now_ms())
            .await
    }

    async fn records(&self, request_id: &str) -> Vec<LogRecord> {
        self.store.log_for_request(request_id).await.unwrap()
    }

    async fn live_leases(&self) -> Vec<Lease> {
        self.store
            .leases(&LeaseQuery::Live {
                owner: LeaseOwner::Identity(WORKLOAD.into()),
                now_ms: self.clock.now_ms(),
                after_id: None,
                limit: 100,
            })
            .await
            .unwrap()
    }
}

/// Every record (oldest first).
const ALL: crate::store::LogQuery = crate::store::LogQuery {
    chain: String::new(),
    identity: None,
    grant: None,
    node: None,
    outcome: None,
    since_ms: None,
    until_ms: None,
    after_seq: None,
    before_seq: None,
    newest_first: false,
    limit: 10_000,
};

const WORKLOAD: &str = "spiffe://example.org/payments";
const NODE: &str = "spiffe://example.org/mintguard/node/n1";

fn outcomes(records: &[LogRecord]) -> Vec<(RecordKind, String)> {
    records
        .iter()
        .map(|r| (r.entry.kind, r.entry.outcome.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn an_allowed_jwt_is_released_after_its_one_record() {
    let f = fixture().await;
    let issued = f.issue("token", 100, None).await.unwrap();
    assert_eq!(issued.decision.outcome, Outcome::Allow);
    assert_eq!(issued.expires_at_ms, NOW + 900_000);
    let token = issued.credential["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "a compact JWT");
    let records = f.records(&issued.request_id).await;
    assert_eq!(
        outcomes(&records),
        [(RecordKind::Decision, "allow".to_owned())]
    );
    let body = &records[0].entry.body;
    // One reading of the clock: the record, the input and the lease agree.
    assert_eq!(records[0].entry.time_ms, NOW);
    assert_eq!(body["input"]["now_ms"], NOW);
    assert_eq!(body["lease"]["id"], issued.lease_id.as_str());
    assert_eq!(body["lease"]["kind"], "jwt");
    assert_eq!(body["lease"]["revocation"], "introspection_only");
    assert_eq!(body["entry_id"], "ent-test");
    assert!(body.get("effective_ttl_seconds").is_none());
    assert!(
        !body.to_string().contains(token),
        "no credential in the log"
    );
    let leases = f.live_leases().await;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].id, issued.lease_id);
    assert_eq!(leases[0].issued_at_ms, NOW);
}

#[tokio::test]
async fn a_denial_is_logged_and_mints_nothing() {
    let f = fixture().await;
    let Err(refusal) = f.issue("token", 10, None).await else {
        panic!("critical trust must be refused");
    };
    let Refusal::Denied {
        request_id,
        reasons,
    } = &refusal
    else {
        panic!("{refusal:?}");
    };
    assert!(reasons.contains(&Reason::TrustBelowCritical), "{reasons:?}");
    assert_eq!(refusal.class(), Class::Forbidden);
    assert_eq!(refusal.code(), "denied");
    assert_eq!(
        outcomes(&f.records(request_id).await),
        [(RecordKind::Decision, "deny".to_owned())]
    );
    assert!(f.live_leases().await.is_empty());
    assert!(f.minter.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_step_up_is_held_then_redeemed_once() {
    let f = fixture().await;
    let Err(Refusal::StepUp {
        request_id,
        approval_id,
        decision,
    }) = f.issue("token", 40, None).await
    else {
        panic!("trust between critical and high is held");
    };
    assert_eq!(decision.outcome, Outcome::StepUp);
    let records = f.records(&request_id).await;
    assert_eq!(
        outcomes(&records),
        [(RecordKind::Decision, "step_up".to_owned())]
    );
    assert_eq!(records[0].entry.body["approval_id"], approval_id.as_str());
    // Pending: not redeemable.
    let pending = f.issue("token", 40, Some(&approval_id)).await.unwrap_err();
    assert!(
        matches!(pending, Refusal::Approval(ApprovalRefusal::Pending)),
        "{pending:?}"
    );
    // An approver approves; the retry issues, and the approval is used.
    let mut approval = f.store.approval(&approval_id).await.unwrap().unwrap();
    approval.state = crate::store::ApprovalState::Approved;
    approval.approvers = vec!["operator:alice".into()];
    assert!(f.store.update_approval(&approval).await.unwrap());
    let issued = f.issue("token", 40, Some(&approval_id)).await.unwrap();
    assert!(issued.decision.reasons.contains(&Reason::StepUpApproved));
    let body = &f.records(&issued.request_id).await[0].entry.body;
    assert_eq!(body["approval_id"], approval_id.as_str());
    assert_eq!(body["approvers"], json!(["operator:alice"]));
    let again = f.issue("token", 40, Some(&approval_id)).await.unwrap_err();
    assert!(
        matches!(again, Refusal::Approval(ApprovalRefusal::Used)),
        "{again:?}"
    );
}

#[tokio::test]
async fn an_exhausted_budget_is_refused_and_logged() {
    let f = fixture().await;
    f.issue("once", 100, None).await.unwrap();
    let Err(refusal) = f.issue("once", 100, None).await else {
        panic!("a budget of one issues once");
    };
    let Refusal::BudgetExhausted { request_id } = &refusal else {
        panic!("{refusal:?}");
    };
    assert_eq!(refusal.class(), Class::TooMany { retry_after: 60 });
    assert_eq!(refusal.reasons(), ["budget_exhausted"]);
    let records = f.records(request_id).await;
    assert_eq!(
        outcomes(&records),
        [(RecordKind::Decision, "deny".to_owned())]
    );
    assert_eq!(f.live_leases().await.len(), 1, "only the first");
}

#[tokio::test]
async fn an_upstream_mint_follows_its_intent_and_precedes_its_outcome() {
    let f = fixture().await;
    let issued = f.issue("db", 100, None).await.unwrap();
    assert_eq!(issued.credential["secret"], "s3cret");
    // The upstream's 60 s lease is shorter than the decided 15 min.
    assert_eq!(issued.expires_at_ms, NOW + 60_000);
    let records = f.records(&issued.request_id).await;
    assert_eq!(
        outcomes(&records),
        [
            (RecordKind::Intent, "allow".to_owned()),
            (RecordKind::Outcome, "minted".to_owned())
        ]
    );
    let calls = f.minter.calls.lock().unwrap().clone();
    assert_eq!(calls, [(issued.lease_id.clone(), records[0].seq, true)]);
    assert!(records[1].seq > records[0].seq);
    assert_eq!(records[0].entry.body["lease"]["effective_ttl_seconds"], 900);
    assert_eq!(
        records[1].entry.body["upstream"]["test_handle"],
        issued.lease_id.as_str()
    );
    assert!(!records[1].entry.body.to_string().contains("s3cret"));
}

#[tokio::test]
async fn a_failed_mint_is_refunded_closed_and_logged() {
    let f = fixture().await;
    *f.minter.behaviour.lock().unwrap() = Behaviour::Fail;
    let refusal = f.issue("db", 100, None).await.unwrap_err();
    assert!(matches!(refusal, Refusal::MintFailed(_)), "{refusal:?}");
    assert_eq!(refusal.code(), "upstream_unavailable");
    assert!(refusal.gives_approval_back());
    let (lease_id, intent_seq, durable) = f.minter.calls.lock().unwrap()[0].clone();
    assert!(durable);
    let lease_records = f.store.log(&ALL).await.unwrap();
    let failed = lease_records
        .iter()
        .find(|r| r.entry.outcome.as_deref() == Some("mint_failed"))
        .expect("the failure is logged");
    assert_eq!(failed.entry.body["lease_id"], lease_id.as_str());
    assert_eq!(failed.entry.body["intent_seq"], intent_seq);
    assert_eq!(failed.entry.body["refunded"], true);
    assert!(f.live_leases().await.is_empty(), "the lease is closed");
    // The refund: the budget is whole again (five mints still fit).
    *f.minter.behaviour.lock().unwrap() = Behaviour::Mint;
    for _ in 0..5 {
        f.issue("db", 100, None).await.unwrap();
    }
}

#[tokio::test]
async fn an_unanswered_mint_is_left_to_reconciliation() {
    let f = fixture().await;
    *f.minter.behaviour.lock().unwrap() = Behaviour::Unanswered;
    let refusal = f.issue("db", 100, None).await.unwrap_err();
    assert!(
        matches!(refusal, Refusal::MintOutcomeUnknown(_)),
        "{refusal:?}"
    );
    assert!(!refusal.gives_approval_back());
    let (lease_id, _, _) = f.minter.calls.lock().unwrap()[0].clone();
    assert_eq!(f.live_leases().await.len(), 1, "not refunded, not closed");
    // Reconciliation settles it once it is old enough.
    f.clock.advance(121_000);
    let mut cursor = (i64::MIN, String::new());
    let settled = f
        .issuer()
        .reconcile_upstream(120_000, &mut cursor)
        .await
        .unwrap();
    assert_eq!(settled, 1);
    let records = f.store.log(&ALL).await.unwrap();
    let closed = records.last().unwrap();
    assert_eq!(
        closed.entry.outcome.as_deref(),
        Some("reconciled_not_minted")
    );
    assert_eq!(closed.entry.body["lease_id"], lease_id.as_str());
    assert!(f.live_leases().await.is_empty());
}

#[tokio::test]
async fn no_log_write_no_credential() {
    let f = fixture().await;
    f.log.broken.store(true, Ordering::SeqCst);
    for grant in ["token", "db"] {
        let refusal = f.issue(grant, 100, None).await.unwrap_err();
        assert!(matches!(refusal, Refusal::LogUnavailable(_)), "{refusal:?}");
        assert_eq!(refusal.class(), Class::Unavailable);
        assert!(refusal.gives_approval_back());
    }
    assert!(f.minter.calls.lock().unwrap().is_empty(), "nothing minted");
    assert!(f.live_leases().await.is_empty());
    let records = f.store.log(&ALL).await.unwrap();
    assert!(records.is_empty());
}

#[tokio::test]
async fn an_outcome_that_cannot_be_logged_is_revoked_not_returned() {
    let f = fixture().await;
    // The log breaks after the intent: the minter breaks it while minting.
    let issuer = f.issuer();
    let grant = &f.dynamic.config.grants["db"];
    let subject = |trust| Subject {
        identity: WORKLOAD.into(),
        principal: PrincipalKind::Workload,
        issuer_kind: IssuerKind::Node,
        issuer: NODE.into(),
        may_vouch: true,
        observed: Observed {
            posture: (trust, "test"),
            attestation: (trust, "test"),
            network: None,
        },
        blast_radius: 10.0,
        ci_claims: BTreeMap::new(),
        context: Map::new(),
        audit: false,
        break_glass: None,
        approval_binding: None,
    };
    // First a normal issuance, to know the flow works with this subject.
    issuer
        .issue(grant, crate::doors::node::request("db"), subject(100), NOW)
        .await
        .unwrap();
    let minter = FlipLog {
        inner: f.minter.clone(),
        broken: f.log.broken.clone(),
    };
    let mut minters = Minters::default();
    minters.register(Box::new(minter));
    let issuer = Issuer {
        minters: &minters,
        ..f.issuer()
    };
    let refusal = issuer
        .issue(grant, crate::doors::node::request("db"), subject(100), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::OutcomeUnavailable(_)),
        "{refusal:?}"
    );
    assert!(!refusal.gives_approval_back(), "it was minted");
    let revoked = f.minter.revoked.lock().unwrap().clone();
    assert_eq!(revoked.len(), 1, "what was minted is revoked upstream");
}

/// A minter that breaks the log once it has minted (the outcome's write fails).
struct FlipLog {
    inner: Arc<TestMinter>,
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl Minter for FlipLog {
    fn kind(&self) -> LeaseKind {
        self.inner.kind()
    }
    fn revocation(&self) -> Revocation {
        self.inner.revocation()
    }
    fn flow(&self) -> Flow {
        self.inner.flow()
    }
    async fn mint(
        &self,
        approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError> {
        let minted = self.inner.mint(approved, request, intent).await;
        self.broken.store(true, Ordering::SeqCst);
        minted
    }
    async fn revoke(&self, upstream: &Value) -> Result<bool, MintError> {
        self.inner.revoke(upstream).await
    }
    async fn reconcile(&self, lease: &Lease, grant: Option<&crate::mint::GrantSpec>) -> Reconcile {
        self.inner.reconcile(lease, grant).await
    }
}

#[tokio::test]
async fn a_mint_outlived_by_reconciliation_is_logged_not_released() {
    let f = fixture().await;
    *f.minter.behaviour.lock().unwrap() = Behaviour::OutlivedByReconcile;
    let refusal = f.issue("db", 100, None).await.unwrap_err();
    assert!(
        matches!(refusal, Refusal::OutcomeUnavailable(_)),
        "{refusal:?}"
    );
    let records = f.store.log(&ALL).await.unwrap();
    assert_eq!(
        outcomes(&records),
        [
            (RecordKind::Intent, "allow".to_owned()),
            (RecordKind::Outcome, "lease_closed".to_owned())
        ]
    );
    assert_eq!(records[1].entry.body["final_outcome"], "lease_closed");
    assert_eq!(
        f.minter.revoked.lock().unwrap().len(),
        1,
        "what was minted is revoked upstream"
    );
    assert!(f.live_leases().await.is_empty());
}

#[tokio::test]
async fn reconciliation_never_closes_a_lease_whose_outcome_landed_meanwhile() {
    let f = fixture().await;
    *f.minter.behaviour.lock().unwrap() = Behaviour::Unanswered;
    f.issue("db", 100, None).await.unwrap_err();
    f.minter
        .outcome_during_reconcile
        .store(true, Ordering::SeqCst);
    f.clock.advance(121_000);
    let mut cursor = (i64::MIN, String::new());
    let settled = f
        .issuer()
        .reconcile_upstream(120_000, &mut cursor)
        .await
        .unwrap();
    assert_eq!(
        settled, 0,
        "answered meanwhile: not settled as never minted"
    );
    let records = f.store.log(&ALL).await.unwrap();
    assert_eq!(
        outcomes(&records),
        [
            (RecordKind::Intent, "allow".to_owned()),
            (RecordKind::Outcome, "minted".to_owned())
        ]
    );
    assert_eq!(f.live_leases().await.len(), 1, "still tracked, revocable");
}
