//! One conformance suite, run against the SQLite store (a file in a temp dir)
//! and the PostgreSQL store (a fresh database on the peer from tests/peers.sh;
//! these fail, never skip, without MINTGUARD_PG_URL). The PostgreSQL store
//! connects over TLS, verified against the peer's CA (MINTGUARD_PG_CA).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use common::records::{entry, plain};

use std::sync::Arc;

use mintguard_broker::log::RecordKind;
use mintguard_broker::log::checkpoint::LogSigner;
use mintguard_broker::log::verify::verify_chain;
use mintguard_broker::store::postgres::PostgresStore;
use mintguard_broker::store::sqlite::SqliteStore;
use mintguard_broker::store::{
    Append, Approval, ApprovalKind, ApprovalState, Entry, Lease, LeaseOwner, LeaseQuery, LogQuery,
    LogStore, NodeRenewal, RegistryStore, RequestState, SignalRecord, SpendOp, Store, StoreError,
    SuspensionRecord,
};
use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot, Refill};

type Handle = (Arc<dyn Store>, Option<tempfile::TempDir>);

fn sqlite_store() -> Handle {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("broker.db")).unwrap();
    (Arc::new(store), Some(dir))
}

async fn postgres_store() -> Handle {
    let url = common::fresh_postgres_database("mg_conformance").await;
    let store = PostgresStore::connect(&tls_url(&url, &peer_ca()))
        .await
        .unwrap();
    (Arc::new(store), None)
}

/// The CA of the PostgreSQL peer's certificate.
fn peer_ca() -> String {
    std::env::var("MINTGUARD_PG_CA").expect("MINTGUARD_PG_CA: run under tests/peers.sh")
}

/// `url` asking for verified TLS against `ca`.
fn tls_url(url: &str, ca: &str) -> String {
    format!("{url}?sslmode=verify-full&sslrootcert={ca}")
}

/// Connections to `db` by TLS and in clear text, as the server counts them.
async fn connections_by_tls(db: &str) -> (i64, i64) {
    let admin: tokio_postgres::Config = std::env::var("MINTGUARD_PG_URL").unwrap().parse().unwrap();
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// SQLite keeps bodies compressed; once enough records were appended it
/// trains a dictionary on them, stores it, and compresses with it. Every
/// body reads back exactly and the chain verifies, in this process and in
/// another that opens the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_bodies_are_compressed_with_a_dictionary_of_the_stores_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let append = |from: i64, to: i64| {
        let store = store.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in from..to {
                let store = store.clone();
                tasks.spawn(async move {
                    let e = entry(&format!("r{i}"), "spiffe://example.org/a", "allow", i);
                    store.append(plain(e)).await.unwrap();
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        }
    };
    let samples = i64::try_from(mintguard_broker::store::sqlite::bodies::SAMPLES).unwrap();
    append(0, samples).await;
    let raw = rusqlite::Connection::open(&path).unwrap();
    let dictionaries = || -> i64 {
        raw.query_row("SELECT count(*) FROM body_dictionaries", [], |r| r.get(0))
            .unwrap()
    };
    for _ in 0..200 {
        if dictionaries() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(dictionaries(), 1, "no dictionary was trained");
    append(samples, samples + 20).await;
    let (early, late): (i64, i64) = raw
        .query_row("SELECT length(body) FROM log WHERE seq = 1", [], |r| {
            r.get(0)
        })
        .and_then(|early| {
            raw.query_row(
                "SELECT length(body) FROM log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((early, r.get(0)?)),
            )
        })
        .unwrap();
    let text = i64::try_from(
        mintguard_broker::log::canonical_body(
            &entry("r1", "spiffe://example.org/a", "allow", 1).body,
        )
        .len(),
    )
    .unwrap();
    assert!(
        early < text && late * 3 < early,
        "{text} B as text, {early} B, then {late} B"
    );
    let reopened: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("broker.db")).unwrap());
    for s in [&store, &reopened] {
        let all = s
            .log(&LogQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1020);
        assert!(
            all.iter()
                .all(|r| r.entry.body["input"]["identity"].is_string())
        );
        assert_eq!(verify_chain(all, &[], None).unwrap().records, 1020);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_speaks_verified_tls_when_asked() {
    let url = common::fresh_postgres_database("mg_tls").await;
    let db = url.rsplit_once('/').unwrap().1.to_owned();
    let store = PostgresStore::connect(&tls_url(&url, &peer_ca()))
        .await
        .unwrap();
    store
        .append(plain(entry(
            "req-tls",
            "spiffe://example.org/a",
            "allow",
            1,
        )))
        .await
        .unwrap();
    store.entries(None).await.unwrap();
    let (tls, clear) = connections_by_tls(&db).await;
    assert!(
        tls >= 2,
        "the writer and a pooled reader: {tls} TLS connections"
    );
    assert_eq!(clear, 0, "no connection of the store is in clear text");
    drop(store);

    // A server whose certificate does not chain to the configured CA is refused.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    let authority = mintguard_certs::ca::Authority::generate(
        &mintguard_certs::id::parse_trust_domain("example.org").unwrap(),
        std::time::Duration::from_secs(3600),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    std::fs::write(&other, authority.cert_pem()).unwrap();
    let Err(e) = PostgresStore::connect(&tls_url(&url, other.to_str().unwrap())).await else {
        panic!("a certificate from another CA was accepted");
    };
    assert!(
        e.to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{e}"
    );

    // The host name is verified too: the certificate names 127.0.0.1 and localhost.
    // (Reached at 127.0.0.1 under another name.)
    let renamed = url.replace("@127.0.0.1:", "@db.example.org:");
    let renamed = format!("{}&hostaddr=127.0.0.1", tls_url(&renamed, &peer_ca()));
    let Err(e) = PostgresStore::connect(&renamed).await else {
        panic!("a certificate for another host name was accepted");
    };
    assert!(
        e.to_string()
            .contains("not valid for name \"db.example.org\""),
        "{e}"
    );
}

/// The base the store's own chain resumes from, if it was pruned.
async fn base(store: &Arc<dyn Store>) -> Option<(i64, String)> {
    let chains = store.chains().await.unwrap();
    chains
        .into_iter()
        .find(|c| c.chain == store.chain())
        .and_then(|c| c.base)
}

fn lease(id: &str, identity: &str, issued: i64) -> Lease {
    Lease {
        id: id.into(),
        request_id: format!("req-{id}"),
        identity: identity.into(),
        grant: "payments-db".into(),
        node: Some("spiffe://example.org/mintguard/node/n1".into()),
        kind: "jwt".parse().unwrap(),
        revocation: "introspection_only".parse().unwrap(),
        issued_at_ms: issued,
        expires_at_ms: issued + 300_000,
        revoked_at_ms: None,
        task_ended_at_ms: None,
    }
}

/// 20 tokens refilled over an hour, 1 per request.
fn all_leases() -> LeaseQuery {
    LeaseQuery::List {
        identity: None,
        outlived_at_ms: None,
        limit: 1000,
    }
}

fn hourly_budget() -> BudgetPolicy {
    BudgetPolicy {
        amount: 20,
        per: Refill::Every { seconds: 3600 },
        base: 1,
        per_5min: 0,
        eci_factor: 0.0,
    }
}

/// How many records the store's chain holds, verified (at most 100).
async fn verified_records(store: &Arc<dyn Store>) -> i64 {
    let all = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    verify_chain(all, &[], None).unwrap().records
}

async fn concurrent_appends_form_one_verifiable_chain(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(plain(entry(
                        &format!("r{i}"),
                        "spiffe://example.org/a",
                        "allow",
                        i,
                    )))
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    let records = store
        .log(&LogQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 64);
    let head = store.head().await.unwrap();
    let report = verify_chain(records, &[], None).unwrap();
    assert_eq!((report.records, report.head), head);
}

async fn budget_spends_are_exact_under_concurrency(store: Arc<dyn Store>) {
    let policy = BudgetPolicy {
        amount: 10,
        per: Refill::Never,
        base: 1,
        per_5min: 0,
        eci_factor: 0.0,
    };
    let now = 1_000_000;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (store, policy) = (store.clone(), policy.clone());
            tokio::spawn(async move {
                // Half of the bodies come written directly (the issuance hot path).
                let mut entry = entry(&format!("b{i}"), "spiffe://example.org/a", "allow", now);
                let canonical_body = (i % 2 == 1).then(|| {
                    mintguard_broker::log::jcs::to_canonical(&std::mem::take(&mut entry.body))
                        .unwrap()
                });
                store
                    .append(Append {
                        canonical_body,
                        entry,
                        spend: vec![SpendOp {
                            key: "k".into(),
                            policy,
                            cost: 1,
                        }],
                        lease: Some(lease(&format!("lease-{i}"), "spiffe://example.org/a", now)),
                        rule_set: None,
                        refuse_if_suspended: Vec::new(),
                        refuse_if_lease_closed: None,
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut spent = 0;
    for t in tasks {
        spent += usize::from(t.await.unwrap().spent);
    }
    assert_eq!(spent, 10, "exactly ⌊10/1⌋ of 40");
    let exhausted = store
        .log(&LogQuery {
            outcome: Some("budget_exhausted".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        exhausted.len(),
        30,
        "every loser is logged with its final outcome"
    );
    assert!(
        exhausted
            .iter()
            .all(|r| r.entry.body["final_outcome"] == "budget_exhausted")
    );
    let all = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        all.iter()
            .all(|r| r.entry.body["decision"]["outcome"] == "allow" && r.entry.body["n"] == now),
        "bodies written directly are stored whole, winners and losers alike"
    );
    assert_eq!(
        store.leases(&all_leases()).await.unwrap().len(),
        10,
        "only winners get a lease"
    );
    assert_eq!(store.budget("k").await.unwrap().unwrap().balance_milli, 0);
    verify_chain(
        store
            .log(&LogQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap(),
        &[],
        None,
    )
    .unwrap();
}

async fn a_suspension_found_at_write_time_refuses_spend_and_lease(store: Arc<dyn Store>) {
    let policy = hourly_budget();
    let (identity, node, t) = (
        "spiffe://example.org/a",
        "spiffe://example.org/mintguard/node/n1",
        10_000_000,
    );
    let issue = |request: &str| Append {
        canonical_body: None,
        entry: entry(request, identity, "allow", t),
        spend: vec![SpendOp {
            key: "s".into(),
            policy: policy.clone(),
            cost: 5,
        }],
        lease: Some(lease(&format!("lease-{request}"), identity, t)),
        rule_set: None,
        refuse_if_suspended: vec![identity.into(), node.into()],
        refuse_if_lease_closed: None,
    };
    let first = store.append(issue("w1")).await.unwrap();
    assert!(first.spent && !first.suspended);
    // The node is suspended after the next request was decided, before its write.
    store
        .suspend(&SuspensionRecord {
            subject: node.into(),
            reason: "host compromised".into(),
            by: "operator:t".into(),
            at_ms: t,
        })
        .await
        .unwrap();
    let second = store.append(issue("w2")).await.unwrap();
    assert!(second.suspended && !second.spent);
    assert!(store.lease("lease-w1").await.unwrap().is_some());
    assert!(store.lease("lease-w2").await.unwrap().is_none(), "no lease");
    let balance = store.budget("s").await.unwrap().unwrap();
    assert_eq!(
        balance,
        BudgetSnapshot::full(&policy, t)
            .spend(&policy, t, 5)
            .unwrap(),
        "spent once"
    );
    let record = &store.log_for_request("w2").await.unwrap()[0];
    assert_eq!(record.entry.outcome.as_deref(), Some("suspended"));
    assert_eq!(record.entry.body["final_outcome"], "suspended");
    // The chain holds the refused record like any other.
    assert_eq!(verified_records(&store).await, 2);
    // Resumed: the next write goes through.
    assert!(store.resume(node).await.unwrap());
    let third = store.append(issue("w3")).await.unwrap();
    assert!(third.spent && !third.suspended);
    assert!(store.lease("lease-w3").await.unwrap().is_some());
}

async fn an_outcome_for_a_closed_lease_is_logged_as_lease_closed(store: Arc<dyn Store>) {
    let (identity, t) = ("spiffe://example.org/a", 10_000_000);
    let intent = Append {
        canonical_body: None,
        entry: entry("u1", identity, "allow", t),
        spend: Vec::new(),
        lease: Some(lease("lease-u1", identity, t)),
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: None,
    };
    assert!(!store.append(intent).await.unwrap().lease_closed);
    let outcome = |lease_id: &str| Append {
        canonical_body: None,
        entry: entry("u1", identity, "minted", t + 1),
        spend: Vec::new(),
        lease: None,
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: Some(lease_id.into()),
    };
    // Open: written as it is, and the lease marked answered, so
    // reconciliation can no longer close it as never minted.
    let open = store.append(outcome("lease-u1")).await.unwrap();
    assert!(!open.lease_closed && !open.suspended);
    assert!(!store.close_unanswered("lease-u1", t + 2).await.unwrap());
    assert!(
        store
            .lease("lease-u1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_none()
    );
    // Unanswered: closed, once.
    let other = Append {
        canonical_body: None,
        entry: entry("u2", identity, "allow", t),
        spend: Vec::new(),
        lease: Some(lease("lease-u2", identity, t)),
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: None,
    };
    store.append(other).await.unwrap();
    assert!(store.close_unanswered("lease-u2", t + 2).await.unwrap());
    assert!(!store.close_unanswered("lease-u2", t + 3).await.unwrap());
    assert!(
        store
            .append(outcome("lease-u2"))
            .await
            .unwrap()
            .lease_closed
    );
    // Closed meanwhile (reconciled while the mint ran), or never stored.
    assert!(store.revoke_lease("lease-u1", t + 2).await.unwrap());
    let closed = store.append(outcome("lease-u1")).await.unwrap();
    assert!(closed.lease_closed);
    let unknown = store.append(outcome("lease-none")).await.unwrap();
    assert!(unknown.lease_closed);
    let records = store.log_for_request("u1").await.unwrap();
    let finals: Vec<_> = records
        .iter()
        .map(|r| r.entry.body["final_outcome"].as_str())
        .collect();
    assert_eq!(
        finals,
        [
            None,
            None,
            Some("lease_closed"),
            Some("lease_closed"),
            Some("lease_closed")
        ]
    );
    assert_eq!(verified_records(&store).await, 6);
}

/// Several spends commit all or none, and a refused append keeps none of
/// them: whichever spend cannot pay, whatever else refuses the write.
async fn spends_are_all_or_none_and_never_kept_for_a_refusal(store: Arc<dyn Store>) {
    let (identity, t) = ("spiffe://example.org/a", 10_000_000);
    let policy = hourly_budget();
    let op = |key: &str, cost: u64| SpendOp {
        key: key.into(),
        policy: policy.clone(),
        cost,
    };
    let append = |request: &str, spend: Vec<SpendOp>, lease_closed: Option<&str>| Append {
        canonical_body: None,
        entry: entry(request, identity, "allow", t),
        spend,
        lease: Some(lease(&format!("lease-{request}"), identity, t)),
        rule_set: None,
        refuse_if_suspended: vec![identity.into()],
        refuse_if_lease_closed: lease_closed.map(Into::into),
    };
    // `low` keeps 2 of its 20 tokens.
    assert!(
        store
            .append(append("p1", vec![op("low", 18)], None))
            .await
            .unwrap()
            .spent
    );
    let low = store.budget("low").await.unwrap();
    for (request, spend) in [
        ("p2", vec![op("low", 5), op("fresh", 1)]),
        ("p3", vec![op("fresh", 1), op("low", 5)]),
        // More than a new bucket holds: refused without creating it.
        ("p4", vec![op("fresh", 21)]),
    ] {
        let refused = store.append(append(request, spend, None)).await.unwrap();
        assert!(!refused.spent && !refused.suspended, "{request}");
        assert!(
            store
                .lease(&format!("lease-{request}"))
                .await
                .unwrap()
                .is_none()
        );
        let record = &store.log_for_request(request).await.unwrap()[0];
        assert_eq!(record.entry.body["final_outcome"], "budget_exhausted");
    }
    // A spend that could pay, on a write refused for a closed lease.
    let closed = store
        .append(append("p5", vec![op("fresh", 1)], Some("lease-none")))
        .await
        .unwrap();
    assert!(closed.lease_closed && !closed.spent);
    assert_eq!(store.budget("low").await.unwrap(), low, "low untouched");
    assert_eq!(
        store.budget("fresh").await.unwrap(),
        None,
        "fresh never spent"
    );
    // Both can pay: both are spent.
    let both = store
        .append(append("p6", vec![op("low", 2), op("fresh", 3)], None))
        .await
        .unwrap();
    assert!(both.spent);
    assert_eq!(
        store.budget("fresh").await.unwrap(),
        Some(
            BudgetSnapshot::full(&policy, t)
                .spend(&policy, t, 3)
                .unwrap()
        )
    );
    assert_eq!(verified_records(&store).await, 6);
}

async fn budget_refill_top_up_and_refund_match_the_policy_math(store: Arc<dyn Store>) {
    let policy = hourly_budget();
    let spend = |cost, t| Append {
        canonical_body: None,
        entry: entry("x", "spiffe://example.org/a", "allow", t),
        spend: vec![SpendOp {
            key: "h".into(),
            policy: policy.clone(),
            cost,
        }],
        lease: None,
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: None,
    };
    let t0 = 10_000_000;
    assert!(store.append(spend(15, t0)).await.unwrap().spent);
    let mut expected = BudgetSnapshot::full(&policy, t0)
        .spend(&policy, t0, 15)
        .unwrap();
    assert_eq!(store.budget("h").await.unwrap().unwrap(), expected);
    // 6 tokens > 5 available; after 15 minutes, 5 + 5 refilled = 10 ≥ 6.
    assert!(!store.append(spend(6, t0 + 1)).await.unwrap().spent);
    let t1 = t0 + 900_000;
    assert!(store.append(spend(6, t1)).await.unwrap().spent);
    expected = expected.spend(&policy, t1, 6).unwrap();
    assert_eq!(store.budget("h").await.unwrap().unwrap(), expected);
    let topped = store.top_up("h", &policy, 30, t1).await.unwrap();
    assert_eq!(topped, expected.top_up(&policy, t1, 30));
    assert!(
        topped.balance_milli > policy.capacity_milli(),
        "top-ups may exceed capacity"
    );
    store.refund("h", &policy, 2, t1).await.unwrap();
    assert_eq!(
        store.budget("h").await.unwrap().unwrap(),
        topped.refund(&policy, t1, 2)
    );
}

/// Concurrent presentations of one CI token's jti: exactly one wins; after
/// the token's expiry the key is swept and could be recorded again.
async fn ci_jtis_are_single_use_until_they_expire(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .consume_ci_jti("iss|jti-1", 10_000, 1_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1, "one jti, one use");
    assert!(
        store
            .consume_ci_jti("iss|jti-2", 10_000, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_ci_jti("iss|jti-1", 10_000, 9_999)
            .await
            .unwrap()
    );
    assert!(
        store
            .consume_ci_jti("iss|jti-1", 20_000, 10_000)
            .await
            .unwrap(),
        "swept after expiry"
    );
}

async fn join_tokens_are_single_use_and_expire(store: Arc<dyn Store>) {
    store
        .create_join_token("hash-1", "node-1", 5_000)
        .await
        .unwrap();
    store
        .create_join_token("hash-2", "node-2", 5_000)
        .await
        .unwrap();
    assert!(matches!(
        store.create_join_token("hash-1", "node-x", 5_000).await,
        Err(StoreError::Conflict(_))
    ));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_join_token("hash-1", 1_000).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners, vec!["node-1".to_owned()], "exactly one enrollment");
    assert_eq!(
        store.consume_join_token("hash-2", 5_000).await.unwrap(),
        None,
        "expired at 5000"
    );
    assert_eq!(store.consume_join_token("nope", 1).await.unwrap(), None);
}

async fn entries_crud_and_by_parent(store: Arc<dyn Store>) {
    let e = |id: &str, parent: &str| Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        parent: parent.into(),
        selectors: vec!["unix:uid:1000".into(), "unix:sha256:ab".into()],
        grants: vec!["payments-db".into()],
        created_at_ms: 1,
    };
    store.create_entry(&e("a", "n1")).await.unwrap();
    store.create_entry(&e("b", "n2")).await.unwrap();
    store.create_entry(&e("c", "n1")).await.unwrap();
    assert!(matches!(
        store.create_entry(&e("a", "n3")).await,
        Err(StoreError::Conflict(_))
    ));
    let n1: Vec<_> = store
        .entries(Some("n1"))
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(n1, vec!["a", "c"]);
    assert_eq!(store.entries(None).await.unwrap().len(), 3);
    assert_eq!(store.entries(Some("n1")).await.unwrap()[0], e("a", "n1"));
    assert!(store.delete_entry("a").await.unwrap());
    assert!(!store.delete_entry("a").await.unwrap());
    assert_eq!(store.entries(Some("n1")).await.unwrap().len(), 1);
    // A parent's entries read before are read anew after every change.
    store.create_entry(&e("d", "n1")).await.unwrap();
    let ids = |entries: Vec<Entry>| entries.into_iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(store.entries(Some("n1")).await.unwrap()), ["c", "d"]);
    assert_eq!(ids(store.entries(Some("n2")).await.unwrap()), ["b"]);
    assert!(store.delete_entry("b").await.unwrap());
    assert!(store.entries(Some("n2")).await.unwrap().is_empty());
    assert!(store.entries(Some("n9")).await.unwrap().is_empty());
}

async fn leases_revoke_once(store: Arc<dyn Store>) {
    let l = lease("l1", "spiffe://example.org/a", 100);
    store
        .append(Append {
            canonical_body: None,
            entry: entry("req-l1", "spiffe://example.org/a", "allow", 100),
            spend: vec![],
            lease: Some(l.clone()),
            rule_set: None,
            refuse_if_suspended: Vec::new(),
            refuse_if_lease_closed: None,
        })
        .await
        .unwrap();
    assert_eq!(store.lease("l1").await.unwrap().unwrap(), l);
    assert!(store.revoke_lease("l1", 200).await.unwrap());
    assert!(
        !store.revoke_lease("l1", 300).await.unwrap(),
        "already revoked"
    );
    let revoked = store.lease("l1").await.unwrap().unwrap();
    assert_eq!(
        (revoked.revoked_at_ms, revoked.task_ended_at_ms),
        (Some(200), Some(200))
    );
    assert!(store.lease("nope").await.unwrap().is_none());
}

/// The ids a lease query returns, in its order.
async fn lease_ids(store: &Arc<dyn Store>, query: LeaseQuery) -> Vec<String> {
    let leases = store.leases(&query).await.unwrap();
    leases.into_iter().map(|l| l.id).collect()
}

async fn lease_queries_select_by_owner_state_and_cursor(store: Arc<dyn Store>) {
    let (a, b) = ("spiffe://example.org/a", "spiffe://example.org/b");
    let n2 = "spiffe://example.org/mintguard/node/n2";
    let ci = "https://token.actions.githubusercontent.com";
    let upstream =
        |id: &str, kind: &str, revocation: &str, issued: i64, ttl: i64, node: &str| Lease {
            kind: kind.parse().unwrap(),
            revocation: revocation.parse().unwrap(),
            expires_at_ms: issued + ttl,
            node: Some(node.into()),
            ..lease(id, b, issued)
        };
    let leases = [
        lease("a1", a, 100),
        Lease {
            node: Some(n2.into()),
            ..lease("a2", a, 200)
        },
        Lease {
            expires_at_ms: 60,
            ..lease("a3", a, 50)
        },
        upstream(
            "b1",
            "vault",
            "effective",
            300,
            600,
            "spiffe://example.org/mintguard/node/n1",
        ),
        upstream("b2", "vault", "effective", 400, 300_000, ci),
        upstream("b3", "aws_sts", "advisory", 400, 300_000, ci),
    ];
    for l in leases {
        store
            .append(Append {
                lease: Some(l.clone()),
                ..plain(entry(&l.request_id, &l.identity, "allow", l.issued_at_ms))
            })
            .await
            .unwrap();
    }
    assert!(store.revoke_lease("a2", 250).await.unwrap());
    assert!(store.end_task("b3", 500).await.unwrap());
    let now = 1_000;
    let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // Listing: newest first (ties by id), by identity, outlived, limited.
    let list = |identity: Option<&str>, outlived: bool, limit| LeaseQuery::List {
        identity: identity.map(str::to_owned),
        outlived_at_ms: outlived.then_some(now),
        limit,
    };
    assert_eq!(
        lease_ids(&store, list(None, false, 100)).await,
        ids(&["b2", "b3", "b1", "a2", "a1", "a3"])
    );
    assert_eq!(
        lease_ids(&store, list(Some(a), false, 100)).await,
        ids(&["a2", "a1", "a3"])
    );
    assert_eq!(
        lease_ids(&store, list(None, false, 2)).await,
        ids(&["b2", "b3"])
    );
    assert_eq!(lease_ids(&store, list(None, true, 100)).await, ids(&["b3"]));

    // Live: neither revoked nor expired, by identity or by the node or CI
    // issuer that vouched; paged by id.
    let live = |owner, after_id: Option<&str>, limit| LeaseQuery::Live {
        owner,
        now_ms: now,
        after_id: after_id.map(str::to_owned),
        limit,
    };
    let node = |s: &str| LeaseOwner::Node(s.into());
    let identity = |s: &str| LeaseOwner::Identity(s.into());
    assert_eq!(
        lease_ids(&store, live(identity(a), None, 100)).await,
        ids(&["a1"])
    );
    assert_eq!(
        lease_ids(
            &store,
            live(node("spiffe://example.org/mintguard/node/n1"), None, 100)
        )
        .await,
        ids(&["a1"])
    );
    assert!(
        lease_ids(&store, live(node(n2), None, 100))
            .await
            .is_empty()
    );
    assert_eq!(
        lease_ids(&store, live(node(ci), None, 100)).await,
        ids(&["b2", "b3"])
    );
    assert_eq!(
        lease_ids(&store, live(identity(b), None, 1)).await,
        ids(&["b2"])
    );
    assert_eq!(
        lease_ids(&store, live(identity(b), Some("b2"), 1)).await,
        ids(&["b3"])
    );

    // Issued through a node or CI issuer in a window (any order); the
    // count is bounded by the limit. Revoked and expired leases count.
    let through = |node: &str, since_ms, until_ms, limit| LeaseQuery::IssuedThrough {
        node: node.into(),
        since_ms,
        until_ms,
        limit,
    };
    let n1 = "spiffe://example.org/mintguard/node/n1";
    let mut through_n1 = lease_ids(&store, through(n1, 0, now, 100)).await;
    through_n1.sort();
    assert_eq!(through_n1, ids(&["a1", "a3", "b1"]));
    assert_eq!(
        lease_ids(&store, through(n1, 100, 300, 100)).await,
        ids(&["a1"])
    );
    assert_eq!(lease_ids(&store, through(ci, 0, now, 100)).await.len(), 2);
    assert_eq!(
        store.count_leases(&through(n1, 0, now, 100)).await.unwrap(),
        3
    );
    assert_eq!(
        store.count_leases(&through(n1, 0, now, 2)).await.unwrap(),
        2
    );
    assert_eq!(
        store.count_leases(&through(n2, 0, 200, 100)).await.unwrap(),
        0
    );
    assert_eq!(
        store.count_leases(&through(n2, 0, now, 100)).await.unwrap(),
        1
    );

    // Expired effective leases not yet revoked, oldest first.
    let expired_after = |after: (i64, &str)| LeaseQuery::ExpiredUnrevoked {
        now_ms: now,
        after: (after.0, after.1.to_owned()),
        limit: 100,
    };
    let expired = expired_after((i64::MIN, ""));
    assert_eq!(lease_ids(&store, expired.clone()).await, ids(&["b1"]));
    assert!(
        lease_ids(&store, expired_after((900, "b1")))
            .await
            .is_empty(),
        "past the cursor"
    );
    assert!(store.revoke_lease("b1", now).await.unwrap());
    assert!(lease_ids(&store, expired).await.is_empty());

    // Upstream leases after an (issue time, id) cursor, up to a time.
    let upstream_after = |after: (i64, &str), until_ms| LeaseQuery::UpstreamIssued {
        after: (after.0, after.1.to_owned()),
        until_ms,
        limit: 100,
    };
    assert_eq!(
        lease_ids(&store, upstream_after((i64::MIN, ""), now)).await,
        ids(&["b2", "b3"]),
        "revoked and JWT leases are not upstream work"
    );
    assert_eq!(
        lease_ids(&store, upstream_after((400, "b2"), now)).await,
        ids(&["b3"])
    );
    assert!(
        lease_ids(&store, upstream_after((i64::MIN, ""), 399))
            .await
            .is_empty()
    );
    // Retention keeps the records of the oldest upstream lease still live
    // or awaiting revocation; an expired advisory lease pins nothing.
    let pinning = |now_ms| LeaseQuery::OldestPinning { now_ms, limit: 1 };
    assert_eq!(lease_ids(&store, pinning(now)).await, ids(&["b2"]));
    assert!(store.revoke_lease("b2", now).await.unwrap());
    assert_eq!(lease_ids(&store, pinning(now)).await, ids(&["b3"]));
    assert!(lease_ids(&store, pinning(10_000_000)).await.is_empty());
}

async fn a_failed_append_leaves_the_batch_and_chain_intact(store: Arc<dyn Store>) {
    let l = lease("dup", "spiffe://example.org/a", 1);
    let with_lease = |req: &str| Append {
        canonical_body: None,
        entry: entry(req, "spiffe://example.org/a", "allow", 1),
        spend: vec![],
        lease: Some(l.clone()),
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: None,
    };
    store.append(with_lease("first")).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let a = if i == 3 {
                with_lease("dup-again")
            } else {
                plain(entry(
                    &format!("ok{i}"),
                    "spiffe://example.org/a",
                    "deny",
                    2,
                ))
            };
            tokio::spawn(async move { store.append(a).await })
        })
        .collect();
    let mut failures = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 1, "only the conflicting lease fails");
    let records = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| r.entry.request_id != "dup-again"));
    verify_chain(records, &[], None).unwrap();
}

async fn queries_rule_sets_checkpoints_and_suspensions(store: Arc<dyn Store>) {
    for (i, (id, outcome)) in [("a", "allow"), ("b", "deny"), ("a", "deny"), ("a", "allow")]
        .into_iter()
        .enumerate()
    {
        let mut a = plain(entry(
            &format!("q{i}"),
            &format!("spiffe://example.org/{id}"),
            outcome,
            1000 * i as i64,
        ));
        a.rule_set = Some(("hash-1".into(), "{\"policies\":[]}".into()));
        store.append(a).await.unwrap();
    }
    let q = |identity: Option<&str>, outcome: Option<&str>, since: Option<i64>| LogQuery {
        identity: identity.map(|s| format!("spiffe://example.org/{s}")),
        outcome: outcome.map(str::to_owned),
        since_ms: since,
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.log(&q(Some("a"), None, None)).await.unwrap().len(), 3);
    assert_eq!(
        store
            .log(&q(Some("a"), Some("allow"), None))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store.log(&q(None, None, Some(2000))).await.unwrap().len(),
        2
    );
    assert_eq!(
        store
            .log(&LogQuery {
                after_seq: Some(2),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .seq,
        3
    );
    assert_eq!(store.log_for_request("q2").await.unwrap().len(), 1);
    // Decision rows: decisions and the intents of upstream grants (their
    // allowed decisions), not outcomes or admin records; after a seq, from a
    // time, bodies as stored.
    let mut admin = plain(entry("q-admin", "spiffe://example.org/a", "allow", 4000));
    admin.entry.kind = RecordKind::Admin;
    store.append(admin).await.unwrap();
    store
        .append(plain(entry("q5", "spiffe://example.org/b", "allow", 5000)))
        .await
        .unwrap();
    let mut intent = plain(entry("q6", "spiffe://example.org/b", "allow", 6000));
    intent.entry.kind = RecordKind::Intent;
    store.append(intent).await.unwrap();
    let mut outcome = plain(entry("q6", "spiffe://example.org/b", "issued", 6001));
    outcome.entry.kind = RecordKind::Outcome;
    store.append(outcome).await.unwrap();
    let rows = store.decision_rows("", 0, None, 100).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["q0", "q1", "q2", "q3", "q5", "q6"]
    );
    let all = store.log(&q(None, None, None)).await.unwrap();
    for row in &rows {
        let record = all.iter().find(|r| r.seq == row.seq).unwrap();
        assert_eq!(
            row.body,
            Ok(mintguard_broker::log::canonical_body(&record.entry.body))
        );
        assert_eq!(row.identity, record.entry.identity);
        assert_eq!(row.grant, record.entry.grant);
        assert_eq!(row.node, record.entry.node);
        assert_eq!(row.outcome, record.entry.outcome);
        assert_eq!(row.time_ms, record.entry.time_ms);
    }
    let later = store
        .decision_rows("", rows[1].seq, Some(3000), 1)
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].request_id, "q3");
    assert_eq!(
        store.rule_set("hash-1").await.unwrap().as_deref(),
        Some("{\"policies\":[]}")
    );
    assert_eq!(store.rule_set("hash-2").await.unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let (seq, hash) = store.head().await.unwrap();
    let cp = signer.sign(seq, &hash, 5).unwrap();
    store.add_checkpoint(&cp).await.unwrap();
    assert_eq!(store.checkpoints().await.unwrap(), vec![cp.clone()]);
    let records = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    verify_chain(records, &[cp], Some(signer.public_jwk())).unwrap();

    let s = SuspensionRecord {
        subject: "spiffe://example.org/a".into(),
        reason: "incident 7".into(),
        by: "operator:alice".into(),
        at_ms: 9,
    };
    store.suspend(&s).await.unwrap();
    store.suspend(&s).await.unwrap();
    assert_eq!(store.suspension(&s.subject).await.unwrap(), Some(s.clone()));
    let issuer = SuspensionRecord {
        subject: "https://token.actions.githubusercontent.com".into(),
        ..s.clone()
    };
    store.suspend(&issuer).await.unwrap();
    assert_eq!(
        store.suspended_subjects().await.unwrap(),
        [issuer.subject.clone(), s.subject.clone()]
    );
    assert!(store.resume(&s.subject).await.unwrap());
    assert!(!store.resume(&s.subject).await.unwrap());
    assert_eq!(store.suspension(&s.subject).await.unwrap(), None);
    assert_eq!(store.suspended_subjects().await.unwrap(), [issuer.subject]);
}

async fn signals_keep_the_latest_per_subject_kind_and_source(store: Arc<dyn Store>) {
    let sig = |subject: &str, kind: &str, source: &str, value: u8, at: i64| SignalRecord {
        subject: subject.into(),
        kind: kind.into(),
        source: source.into(),
        value,
        observed_at_ms: at,
        ttl_seconds: 900,
    };
    store
        .put_signal(&sig("spiffe://example.org/a", "posture", "edr", 80, 1))
        .await
        .unwrap();
    store
        .put_signal(&sig("spiffe://example.org/a", "posture", "edr", 20, 2))
        .await
        .unwrap();
    store
        .put_signal(&sig("spiffe://example.org/a", "posture", "mdm", 90, 3))
        .await
        .unwrap();
    store
        .put_signal(&sig("spiffe://example.org/n", "compromise", "siem", 0, 4))
        .await
        .unwrap();
    store
        .put_signal(&sig("spiffe://example.org/other", "posture", "edr", 5, 5))
        .await
        .unwrap();
    let got = store
        .signals(&["spiffe://example.org/a", "spiffe://example.org/n"])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            sig("spiffe://example.org/a", "posture", "edr", 20, 2),
            sig("spiffe://example.org/a", "posture", "mdm", 90, 3),
            sig("spiffe://example.org/n", "compromise", "siem", 0, 4),
        ]
    );
    assert!(
        store
            .signals(&["spiffe://example.org/none"])
            .await
            .unwrap()
            .is_empty()
    );

    // What a decision reads, together: suspensions, signals, the budget.
    let suspended = SuspensionRecord {
        subject: "spiffe://example.org/n".into(),
        reason: "incident".into(),
        by: "operator:alice".into(),
        at_ms: 6,
    };
    store.suspend(&suspended).await.unwrap();
    let policy = BudgetPolicy {
        amount: 10,
        per: Refill::Never,
        base: 1,
        per_5min: 0,
        eci_factor: 0.0,
    };
    let key = "identity:spiffe://example.org/a/grant:g";
    let state = store
        .request_state(
            "spiffe://example.org/a",
            "spiffe://example.org/n",
            Some(key),
        )
        .await
        .unwrap();
    assert_eq!(state.identity_suspension, None);
    assert_eq!(state.issuer_suspension, Some(suspended.clone()));
    assert_eq!(state.signals, got);
    assert_eq!(
        state.budget, None,
        "a bucket never spent from is not stored"
    );
    store.top_up(key, &policy, 4, 7).await.unwrap();
    let state = store
        .request_state(
            "spiffe://example.org/n",
            "spiffe://example.org/a",
            Some(key),
        )
        .await
        .unwrap();
    assert_eq!(state.identity_suspension, Some(suspended));
    assert_eq!(state.issuer_suspension, None);
    assert_eq!(state.budget, store.budget(key).await.unwrap());
    assert!(state.budget.is_some());
    let state = store
        .request_state(
            "spiffe://example.org/none",
            "spiffe://example.org/none",
            None,
        )
        .await
        .unwrap();
    assert_eq!(state, RequestState::default());
}

/// What a decision reads follows every change as soon as the change is
/// durable, read after read (the SQLite store answers repeated reads from
/// memory), and readers running beside the writes never bring back an
/// older state.
async fn request_state_follows_every_change(store: Arc<dyn Store>) {
    let (a, n) = ("spiffe://example.org/a", "spiffe://example.org/n");
    let key = "identity:spiffe://example.org/a/grant:g";
    let policy = hourly_budget();
    let sig = |subject: &str, kind: &str, value: u8, at: i64| SignalRecord {
        subject: subject.into(),
        kind: kind.into(),
        source: "edr".into(),
        value,
        observed_at_ms: at,
        ttl_seconds: 900,
    };
    let state = |identity: &'static str, issuer: &'static str| {
        let store = store.clone();
        async move {
            store
                .request_state(identity, issuer, Some(key))
                .await
                .unwrap()
        }
    };
    for _ in 0..2 {
        assert_eq!(state(a, n).await, RequestState::default());
    }

    store.put_signal(&sig(a, "posture", 80, 1)).await.unwrap();
    assert_eq!(state(a, n).await.signals, vec![sig(a, "posture", 80, 1)]);
    store.put_signal(&sig(a, "posture", 20, 2)).await.unwrap();
    assert_eq!(state(a, n).await.signals, vec![sig(a, "posture", 20, 2)]);
    store.put_signal(&sig(n, "compromise", 0, 3)).await.unwrap();
    let both = vec![sig(a, "posture", 20, 2), sig(n, "compromise", 0, 3)];
    assert_eq!(state(a, n).await.signals, both);
    assert_eq!(state(n, a).await.signals, both, "ordered by subject");

    let suspension = SuspensionRecord {
        subject: n.into(),
        reason: "incident".into(),
        by: "operator:alice".into(),
        at_ms: 4,
    };
    store.suspend(&suspension).await.unwrap();
    assert_eq!(
        state(a, n).await.issuer_suspension,
        Some(suspension.clone())
    );
    assert_eq!(state(n, a).await.identity_suspension, Some(suspension));
    assert!(store.resume(n).await.unwrap());
    assert_eq!(state(a, n).await.issuer_suspension, None);

    let t0 = 10_000_000;
    let spend = Append {
        spend: vec![SpendOp {
            key: key.into(),
            policy: policy.clone(),
            cost: 3,
        }],
        ..plain(entry("spend", a, "allow", t0))
    };
    assert!(store.append(spend).await.unwrap().spent);
    let spent = store.budget(key).await.unwrap();
    assert!(spent.is_some());
    assert_eq!(state(a, n).await.budget, spent);
    store.top_up(key, &policy, 5, t0).await.unwrap();
    assert_eq!(state(a, n).await.budget, store.budget(key).await.unwrap());
    store.refund(key, &policy, 1, t0).await.unwrap();
    let refunded = store.budget(key).await.unwrap();
    assert_ne!(refunded, spent);
    assert_eq!(state(a, n).await.budget, refunded);

    // Readers run beside the writes; after each write, a read shows it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.request_state(a, n, Some(key)).await.unwrap();
                    // A read from memory never yields by itself.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for value in 1..=60u8 {
        store
            .put_signal(&sig(a, "posture", value, i64::from(value) + 10))
            .await
            .unwrap();
        let signals = state(a, n).await.signals;
        assert_eq!(signals[0], sig(a, "posture", value, i64::from(value) + 10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

async fn pruning_keeps_a_verifiable_base(store: Arc<dyn Store>) {
    for i in 0..10 {
        store
            .append(plain(entry(
                &format!("p{i}"),
                "spiffe://example.org/a",
                "allow",
                i,
            )))
            .await
            .unwrap();
    }
    assert_eq!(base(&store).await, None);
    let records = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let hash6 = records[5].hash.clone();
    assert_eq!(store.prune_through("", 6).await.unwrap(), 6);
    assert_eq!(base(&store).await, Some((6, hash6.clone())));
    let rest = store
        .log(&LogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.first().map(|r| r.seq), Some(7));
    // Without a signed prune statement the base is not accepted; with one
    // but without the record of the prune, neither.
    use mintguard_broker::log::verify::{VerifyFailure, verify_chain_from};
    assert_eq!(
        verify_chain_from(Some((6, &hash6)), rest.clone(), &[], None),
        Err(VerifyFailure::UnanchoredBase { seq: 6 })
    );
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let statement = signer
        .sign_statement(
            mintguard_broker::log::checkpoint::StatementKind::Prune,
            Some("b1"),
            "",
            6,
            &hash6,
            1,
        )
        .unwrap();
    assert_eq!(
        verify_chain_from(
            Some((6, &hash6)),
            rest,
            &[statement],
            Some(signer.public_jwk())
        ),
        Err(VerifyFailure::UnrecordedPrune { seq: 6 })
    );
    assert!(
        matches!(
            store.prune_through("", 3).await,
            Err(StoreError::Conflict(_))
        ),
        "already pruned"
    );
    // Appends continue the chain after a prune.
    assert_eq!(
        store
            .append(plain(entry("after", "spiffe://example.org/a", "allow", 99)))
            .await
            .unwrap()
            .seq,
        11
    );
}

async fn approvals_change_only_by_compare_and_set(store: Arc<dyn Store>) {
    let pending = Approval {
        id: "apr-1".into(),
        request_hash: "h".into(),
        identity: "spiffe://example.org/w".into(),
        grant: "g".into(),
        ttl_seconds: Some(300),
        purpose: None,
        requested_by: "spiffe://example.org/mintguard/node/n1".into(),
        request_id: "req-1".into(),
        created_at_ms: 1_000,
        expires_at_ms: 61_000,
        state: ApprovalState::Pending,
        approvers: Vec::new(),
        approvals_needed: 1,
        approved_ttl_seconds: None,
        reason: None,
        version: 0,
        kind: ApprovalKind::StepUp,
    };
    store.create_approval(&pending).await.unwrap();
    assert!(store.create_approval(&pending).await.is_err());
    assert_eq!(store.approval("apr-1").await.unwrap().unwrap(), pending);
    assert_eq!(store.approval("apr-2").await.unwrap(), None);
    assert_eq!(pending.state_at(61_000).as_str(), "expired");

    // Two approvers racing from the same version: exactly one wins.
    let approve = |who: &str| Approval {
        state: ApprovalState::Approved,
        approvers: vec![who.into()],
        ..pending.clone()
    };
    let (carol, dave) = (approve("operator:carol"), approve("operator:dave"));
    let (a, b) = tokio::join!(store.update_approval(&carol), store.update_approval(&dave));
    assert!(a.unwrap() ^ b.unwrap());
    let stored = store.approval("apr-1").await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.version), ("approved", 1));
    // Single use: consuming from version 1 works once.
    let used = Approval {
        state: ApprovalState::Used,
        ..stored.clone()
    };
    assert!(store.update_approval(&used).await.unwrap());
    assert!(!store.update_approval(&used).await.unwrap());
    assert_eq!(store.approvals(0).await.unwrap().len(), 1);
    assert!(store.approvals(1_000).await.unwrap().is_empty());
}

async fn node_svids_renew_only_in_their_lineage(store: Arc<dyn Store>) {
    let node = "spiffe://example.org/mintguard/node/n1";
    let renewed = |generation| NodeRenewal::Renewed { generation };
    let stale = |generation| NodeRenewal::Stale { generation };
    assert_eq!(store.node_enrolled(node, "s1", 1).await.unwrap(), 1);
    // The current SVID renews; so does the one last issued (an answer
    // lost: the node still holds s1 and retries), and using it makes it
    // current.
    assert_eq!(
        store.node_renewed(node, "s1", "s2", 2).await.unwrap(),
        renewed(1)
    );
    assert_eq!(
        store.node_renewed(node, "s1", "s3", 3).await.unwrap(),
        renewed(1)
    );
    assert_eq!(
        store.node_renewed(node, "s3", "s4", 4).await.unwrap(),
        renewed(1)
    );
    // s1 is no longer current, nor the last issued: another lineage.
    assert_eq!(
        store.node_renewed(node, "s1", "x1", 5).await.unwrap(),
        stale(1)
    );
    assert_eq!(
        store.node_renewed(node, "s2", "x2", 5).await.unwrap(),
        stale(1)
    );
    // Two holders racing from one SVID: one wins, the loser's next
    // renewal (from the SVID it got, no longer the last issued) is stale.
    let tasks: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { store.node_renewed(node, "s4", k, 6).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), renewed(1));
    }
    let (won, lost) = match store.node_renewed(node, "a", "a2", 7).await.unwrap() {
        NodeRenewal::Renewed { .. } => ("a2", "b"),
        NodeRenewal::Stale { .. } => ("b2", "a"),
    };
    if won == "b2" {
        assert_eq!(
            store.node_renewed(node, "b", "b2", 7).await.unwrap(),
            renewed(1)
        );
    }
    assert_eq!(
        store.node_renewed(node, won, "w", 8).await.unwrap(),
        renewed(1)
    );
    assert_eq!(
        store.node_renewed(node, lost, "l", 8).await.unwrap(),
        stale(1)
    );
    // Re-enrolling starts a new generation: the old lineage is stale.
    assert_eq!(store.node_enrolled(node, "e1", 9).await.unwrap(), 2);
    assert_eq!(
        store.node_renewed(node, "w", "z", 10).await.unwrap(),
        stale(2)
    );
    assert_eq!(
        store.node_renewed(node, "e1", "e2", 10).await.unwrap(),
        renewed(2)
    );
    // A node enrolled before lineages were kept starts one when it renews.
    let old = "spiffe://example.org/mintguard/node/old";
    assert_eq!(
        store.node_renewed(old, "o1", "o2", 11).await.unwrap(),
        renewed(1)
    );
    assert_eq!(
        store.node_renewed(old, "zz", "o3", 12).await.unwrap(),
        stale(1)
    );
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = super::postgres_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    concurrent_appends_form_one_verifiable_chain,
    a_suspension_found_at_write_time_refuses_spend_and_lease,
    an_outcome_for_a_closed_lease_is_logged_as_lease_closed,
    spends_are_all_or_none_and_never_kept_for_a_refusal,
    budget_spends_are_exact_under_concurrency,
    budget_refill_top_up_and_refund_match_the_policy_math,
    join_tokens_are_single_use_and_expire,
    entries_crud_and_by_parent,
    leases_revoke_once,
    lease_queries_select_by_owner_state_and_cursor,
    a_failed_append_leaves_the_batch_and_chain_intact,
    queries_rule_sets_checkpoints_and_suspensions,
    signals_keep_the_latest_per_subject_kind_and_source,
    request_state_follows_every_change,
    pruning_keeps_a_verifiable_base,
    ci_jtis_are_single_use_until_they_expire,
    approvals_change_only_by_compare_and_set,
    node_svids_renew_only_in_their_lineage,
);
