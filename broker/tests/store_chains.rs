//! Per-replica chains on PostgreSQL (the peer from tests/peers.sh; these
//! fail, never skip, without MINTGUARD_PG_URL): replicas append to chains
//! of their own, readers see one log in time order, a retired chain takes
//! no more records, and a store from before chains keeps its chain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::sync::Arc;

use common::records::{entry, plain};
use mintguard_broker::log::GENESIS;
use mintguard_broker::log::verify::{ChainStart, ChainVerifier};
use mintguard_broker::store::postgres::PostgresStore;
use mintguard_broker::store::{
    LogCursor, LogQuery, Store, StoreError, decisions_after, read_log, read_log_newer,
    read_log_recent, read_log_recent_within,
};

async fn replica(url: &str, chain: &str) -> Arc<dyn Store> {
    Arc::new(PostgresStore::connect_replica(url, chain).await.unwrap())
}

/// Every record, `page` at a time through a cursor, and the verified report.
async fn read_all(store: &Arc<dyn Store>, page: usize) -> Vec<mintguard_broker::log::LogRecord> {
    let query = LogQuery {
        limit: page,
        ..Default::default()
    };
    let mut after = LogCursor::default();
    let mut all = Vec::new();
    loop {
        let records = read_log(&**store, &query, &after).await.unwrap();
        for r in &records {
            after.advance(&r.chain, r.seq);
        }
        let done = records.len() < page;
        all.extend(records);
        if done {
            return all;
        }
    }
}

async fn verify(store: &Arc<dyn Store>) -> mintguard_broker::log::verify::VerifyReport {
    let chains: Vec<ChainStart> = store
        .chains()
        .await
        .unwrap()
        .iter()
        .map(ChainStart::from)
        .collect();
    let mut verifier = ChainVerifier::for_chains(&chains, &[], None).unwrap();
    for r in read_all(store, 1000).await {
        verifier.push(&r).unwrap();
    }
    verifier.finish(&[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_append_to_chains_of_their_own_and_read_as_one_log() {
    let url = common::fresh_postgres_database("mg_chains").await;
    let (a, b) = (replica(&url, "aa").await, replica(&url, "bb").await);
    assert_eq!((a.chain(), b.chain()), ("aa", "bb"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60i64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let time = 1_000 + i;
            let e = entry(&format!("r{i}"), "spiffe://example.org/w", "allow", time);
            store.append(plain(e)).await.unwrap()
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // Each chain is numbered from 1 on its own.
    let chains = a.chains().await.unwrap();
    let heads: Vec<(&str, i64)> = chains.iter().map(|c| (c.chain.as_str(), c.seq)).collect();
    assert_eq!(heads, [("aa", 30), ("bb", 30)]);
    assert_eq!(b.head().await.unwrap().0, 30);
    // Read through a cursor in pages of 7: every record once, each chain
    // in its own order, the whole in time order.
    let all = read_all(&a, 7).await;
    assert_eq!(all.len(), 60);
    let mut ids: Vec<&str> = all.iter().map(|r| r.entry.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60, "no record twice");
    for chain in ["aa", "bb"] {
        let seqs: Vec<i64> = all
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "{chain}");
    }
    let times: Vec<i64> = all.iter().map(|r| r.entry.time_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // One request's records, wherever they are.
    let found = b.log_for_request("r4").await.unwrap();
    assert_eq!((found.len(), found[0].chain.as_str()), (1, "aa"));
    // The decisions' reader sees both chains, after a cursor of its own.
    let mut after = LogCursor::default();
    after.advance("aa", 10);
    let rows = decisions_after(&*a, &after, None, 1000).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r.chain == "bb" || r.seq > 10));
    // Every chain verifies.
    let report = verify(&a).await;
    assert_eq!(report.records, 60);
    assert_eq!(report.chains.len(), 2);
}

/// The console's timeline reads the log newest first across the chains:
/// page after page back to the oldest, every record once, in time order
/// reversed; and polling after the newest page returns only what was
/// appended since, filters included, without reading a match twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_newest_records_read_back_page_by_page_and_new_ones_by_polling() {
    let url = common::fresh_postgres_database("mg_chains_recent").await;
    let (a, b) = (replica(&url, "aa").await, replica(&url, "bb").await);
    for i in 0..25i64 {
        let store = if i % 3 == 0 { &b } else { &a };
        let outcome = if i % 5 == 0 { "deny" } else { "allow" };
        let e = entry(
            &format!("r{i}"),
            "spiffe://example.org/w",
            outcome,
            1_000 + i,
        );
        store.append(plain(e)).await.unwrap();
    }
    let query = LogQuery {
        limit: 4,
        ..Default::default()
    };
    let mut before = LogCursor::default();
    let mut seen = Vec::new();
    let first = read_log_recent(&*a, &query, &before).await.unwrap();
    let after = first.after.clone();
    let mut page = first;
    loop {
        seen.extend(page.records.iter().map(|r| r.entry.request_id.clone()));
        if !page.more {
            break;
        }
        before = page.before.clone();
        page = read_log_recent(&*a, &query, &before).await.unwrap();
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("r{i}")).collect();
    assert_eq!(seen, expected);
    // Appended since the first page: a poll returns those, newest first.
    for i in 25..28i64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let e = entry(
            &format!("r{i}"),
            "spiffe://example.org/w",
            "deny",
            1_000 + i,
        );
        store.append(plain(e)).await.unwrap();
    }
    let newer = read_log_newer(&*a, &query, &after).await.unwrap();
    let ids: Vec<&str> = newer
        .records
        .iter()
        .map(|r| r.entry.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r27", "r26", "r25"]);
    assert!(!newer.more);
    let again = read_log_newer(&*a, &query, &newer.after).await.unwrap();
    assert!(again.records.is_empty() && !again.more);
    // Filtered: only refusals, newest first, and the poll moves past the
    // chains' heads so it does not scan the allowed records again.
    let denies = LogQuery {
        outcome: Some("deny".into()),
        limit: 100,
        ..Default::default()
    };
    let page = read_log_recent(&*a, &denies, &LogCursor::default())
        .await
        .unwrap();
    let ids: Vec<&str> = page
        .records
        .iter()
        .map(|r| r.entry.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r27", "r26", "r25", "r20", "r15", "r10", "r5", "r0"]);
    assert!(!page.more);
    let e = entry("r28", "spiffe://example.org/w", "allow", 1_028);
    a.append(plain(e)).await.unwrap();
    let polled = read_log_newer(&*a, &denies, &page.after).await.unwrap();
    assert!(polled.records.is_empty());
    assert_eq!(polled.after.after("aa"), a.head().await.unwrap().0);
}

/// A filter no index serves (a node) reads a bounded window of each chain
/// per page: a page that stops at the window says so, and paging on reads
/// below it, every match once, newest first, across the chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_filter_reads_a_window_per_page_and_pages_on_below_it() {
    let url = common::fresh_postgres_database("mg_chains_window").await;
    let (a, b) = (replica(&url, "aa").await, replica(&url, "bb").await);
    let rare = "spiffe://example.org/mintguard/node/rare";
    let mut expected = Vec::new();
    for i in 0..60i64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let mut e = entry(
            &format!("r{i}"),
            "spiffe://example.org/w",
            "allow",
            1_000 + i,
        );
        if i % 7 == 3 {
            e.node = Some(rare.into());
            expected.push(format!("r{i}"));
        }
        store.append(plain(e)).await.unwrap();
    }
    expected.reverse();
    let query = LogQuery {
        node: Some(rare.into()),
        limit: 3,
        ..Default::default()
    };
    let (mut before, mut seen, mut limited) = (LogCursor::default(), Vec::new(), 0);
    for _ in 0..100 {
        let page = read_log_recent_within(&*a, &query, &before, 5)
            .await
            .unwrap();
        assert!(
            page.records
                .iter()
                .all(|r| r.entry.node.as_deref() == Some(rare))
        );
        seen.extend(page.records.iter().map(|r| r.entry.request_id.clone()));
        limited += usize::from(page.scan_limited);
        if !page.more {
            break;
        }
        before = page.before;
    }
    assert_eq!(seen, expected);
    assert!(
        limited > 0,
        "a 5-record window over 30 records per chain stops short"
    );
    // The whole chain at once without the window; an identity filter is
    // served by its index and never windowed.
    let whole = read_log_recent(
        &*a,
        &LogQuery {
            limit: 100,
            ..query.clone()
        },
        &LogCursor::default(),
    )
    .await
    .unwrap();
    assert_eq!(whole.records.len(), expected.len());
    assert!(!whole.more && !whole.scan_limited);
    let by_identity = LogQuery {
        identity: Some("spiffe://example.org/w".into()),
        limit: 100,
        ..query
    };
    let page = read_log_recent_within(&*a, &by_identity, &LogCursor::default(), 5)
        .await
        .unwrap();
    assert_eq!(page.records.len(), expected.len());
    assert!(!page.scan_limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_chain_takes_no_more_records_and_its_replica_does_not_return() {
    let url = common::fresh_postgres_database("mg_chains_retire").await;
    let (a, b) = (replica(&url, "aa").await, replica(&url, "bb").await);
    for (i, store) in [&a, &a, &b].into_iter().enumerate() {
        let e = entry(&format!("r{i}"), "spiffe://example.org/w", "allow", 1_000);
        store.append(plain(e)).await.unwrap();
    }
    assert!(
        matches!(a.retire_chain("aa", 5).await, Err(StoreError::Conflict(_))),
        "a replica does not retire its own chain"
    );
    let (seq, hash) = b.retire_chain("aa", 5).await.unwrap();
    let head = a.head().await.unwrap();
    assert_eq!((seq, hash), head);
    assert!(
        matches!(b.retire_chain("aa", 6).await, Err(StoreError::Conflict(_))),
        "retired once"
    );
    // The retired replica's next append is refused: nothing more is logged.
    let e = entry("late", "spiffe://example.org/w", "allow", 2_000);
    match a.append(plain(e)).await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("retired"), "{why}"),
        other => panic!("appended to a retired chain: {other:?}"),
    }
    assert_eq!(a.head().await.unwrap().0, 2);
    // Nor does it come back under the same instance id.
    match PostgresStore::connect_replica(&url, "aa").await {
        Err(StoreError::Setup(why)) => assert!(why.contains("retired"), "{why}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a retired replica reconnected"),
    }
    let chains = b.chains().await.unwrap();
    assert_eq!(chains[0].retired_at_ms, Some(5));
    assert_eq!(chains[1].retired_at_ms, None);
    // Without the final statement the store's retirement does not verify.
    let starts: Vec<ChainStart> = chains.iter().map(ChainStart::from).collect();
    let mut verifier = ChainVerifier::for_chains(&starts, &[], None).unwrap();
    for r in read_all(&b, 100).await {
        verifier.push(&r).unwrap();
    }
    assert!(verifier.finish(&[]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_chains_keeps_its_chain_as_the_unnamed_one() {
    let url = common::fresh_postgres_database("mg_chains_upgrade").await;
    // The schema as it was before per-replica chains, with three records.
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    use mintguard_broker::store::migrations::{Dialect, rendered};
    for (version, sql) in rendered(Dialect::Postgres).take_while(|(v, _)| *v <= 10) {
        client.batch_execute(&sql).await.unwrap();
        client
            .execute("INSERT INTO schema_migrations VALUES ($1)", &[&version])
            .await
            .unwrap();
    }
    let mut prev = GENESIS.to_owned();
    for seq in 1..=3i64 {
        let e = entry(&format!("old{seq}"), "spiffe://example.org/w", "allow", seq);
        let record = mintguard_broker::log::LogRecord::seal(seq, e, prev.clone());
        let body = mintguard_broker::log::canonical_body(&record.entry.body);
        client
            .execute(
                "INSERT INTO log(seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                 VALUES ($1, $2, 'decision', $3, $4, $5, $6, $7, $8, $9, $10)",
                &[&seq, &record.entry.time_ms, &record.entry.request_id, &record.entry.identity,
                  &record.entry.grant, &record.entry.node, &record.entry.outcome, &body,
                  &record.prev_hash, &record.hash],
            )
            .await
            .unwrap();
        prev = record.hash;
    }
    client
        .execute(
            "UPDATE log_head SET seq = 3, hash = $1 WHERE id = 1",
            &[&prev],
        )
        .await
        .unwrap();
    // The upgraded store: the old chain is the unnamed one, and the
    // replica that migrated it appends to its own.
    let store = replica(&url, "aa").await;
    let e = entry("new", "spiffe://example.org/w", "allow", 10);
    assert_eq!(store.append(plain(e)).await.unwrap().seq, 1);
    let chains = store.chains().await.unwrap();
    let heads: Vec<(&str, i64, &str)> = chains
        .iter()
        .map(|c| (c.chain.as_str(), c.seq, c.hash.as_str()))
        .collect();
    assert_eq!(heads[0], ("", 3, prev.as_str()));
    assert_eq!((heads[1].0, heads[1].1), ("aa", 1));
    let report = verify(&store).await;
    assert_eq!(report.records, 4);
    let unnamed = store
        .log(&LogQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(unnamed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_no_chain_accounts_for_is_found_and_never_read() {
    let url = common::fresh_postgres_database("mg_chains_stray").await;
    let a = replica(&url, "aa").await;
    for i in 0..3 {
        let e = entry(
            &format!("r{i}"),
            "spiffe://example.org/w",
            "allow",
            1_000 + i,
        );
        a.append(plain(e)).await.unwrap();
    }
    assert_eq!(a.stray_record().await.unwrap(), None);
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Forged rows: one of a chain the store does not hold, one past a
    // registered chain's head, both of an existing request.
    for (chain, seq) in [("00", 1i64), ("aa", 4)] {
        client
            .execute(
                "INSERT INTO log(chain, seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash)
                 SELECT $1, $2, 1, kind, request_id, identity, grant_name, node, 'minted', body, prev_hash, hash
                 FROM log WHERE chain = 'aa' AND seq = 1",
                &[&chain, &seq],
            )
            .await
            .unwrap();
    }
    let stray = a.stray_record().await.unwrap().expect("a stray record");
    assert!(
        stray == ("00".into(), 1) || stray == ("aa".into(), 4),
        "{stray:?}"
    );
    // Readers see only what a chain accounts for.
    assert_eq!(a.log_for_request("r0").await.unwrap().len(), 1);
    assert_eq!(read_all(&a, 100).await.len(), 3);
    let one = a
        .log(&LogQuery {
            chain: "aa".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 3);
}
