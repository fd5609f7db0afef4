//! `logs verify`'s checks, one kind of tampering at a time.

use super::super::LogEntry;
use super::super::checkpoint::LogSigner;
use super::*;

/// `n` records of the unnamed chain.
fn chain(n: i64) -> Vec<LogRecord> {
    named_chain("", n)
}

/// `n` records of the chain `name`, ten milliseconds apart.
fn named_chain(name: &str, n: i64) -> Vec<LogRecord> {
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let entry = LogEntry {
                time_ms: seq * 10,
                kind: RecordKind::Admin,
                request_id: format!("{name}r{seq}"),
                identity: None,
                grant: None,
                node: None,
                outcome: Some("allow".into()),
                body: serde_json::json!({"n": seq}),
            };
            let body = crate::log::canonical_body(&entry.body);
            let r = LogRecord::seal_canonical(name, seq, entry, &body, prev.clone());
            prev = r.hash.clone();
            r
        })
        .collect()
}

fn start(chain: &str) -> ChainStart {
    ChainStart {
        chain: chain.into(),
        base: None,
        head: None,
        retired: false,
    }
}

fn verify_all(
    chains: &[ChainStart],
    records: &[LogRecord],
    statements: &[Checkpoint],
    key: &Jwk,
) -> Result<VerifyReport, VerifyFailure> {
    let mut verifier = ChainVerifier::for_chains(chains, statements, Some(key))?;
    records.iter().try_for_each(|r| verifier.push(r))?;
    verifier.finish(&[])
}

#[test]
fn every_chain_is_verified_and_none_may_go_missing() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let (a, b) = (named_chain("aa", 6), named_chain("bb", 4));
    let sign = |kind, chain: &str, r: &LogRecord| {
        signer
            .sign_statement(kind, Some("b1"), chain, r.seq, &r.hash, 1)
            .unwrap()
    };
    let cps = vec![
        sign(StatementKind::Checkpoint, "aa", &a[3]),
        sign(StatementKind::Checkpoint, "bb", &b[1]),
    ];
    // Interleaved as a reader merging by time sees them.
    let mut merged: Vec<LogRecord> = a.iter().chain(&b).cloned().collect();
    merged.sort_by_key(|r| (r.entry.time_ms, r.chain.clone(), r.seq));
    let both = [start("aa"), start("bb")];
    let report = verify_all(&both, &merged, &cps, key).unwrap();
    assert_eq!((report.records, report.checkpoints), (10, 2));
    assert_eq!(
        report
            .chains
            .iter()
            .map(|c| (c.chain.as_str(), c.records))
            .collect::<Vec<_>>(),
        [("aa", 6), ("bb", 4)]
    );
    // A chain removed from the store, its statements still signed: missing.
    assert_eq!(
        verify_all(&[start("aa")], &a, &cps, key).map(|r| r.records),
        Err(VerifyFailure::MissingChain {
            chain: "bb".into(),
            seq: 2
        })
    );
    // A record moved to another chain no longer hashes.
    let mut moved = b.clone();
    moved[2].chain = "aa".into();
    moved[2].seq = 7;
    let mut all = a.clone();
    all.push(moved[2].clone());
    assert_eq!(
        verify_all(&both, &all, &[], key).map(|r| r.records),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::BrokenLink { seq: 7 })
        })
    );
    // A named chain's failure says which chain.
    let cut: Vec<LogRecord> = a.iter().chain(&b[..1]).cloned().collect();
    let failure = verify_all(&both, &cut, &cps, key).unwrap_err();
    assert_eq!(
        failure,
        VerifyFailure::InChain {
            chain: "bb".into(),
            failure: Box::new(VerifyFailure::Truncated {
                last: 1,
                checkpoint: 2
            })
        }
    );
    assert!(failure.to_string().starts_with("chain bb: "), "{failure}");
}

#[test]
fn a_chain_must_reach_the_head_the_store_records() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let a = named_chain("aa", 6);
    let at = |n: usize| ChainStart {
        head: Some((a[n].seq, a[n].hash.clone())),
        ..start("aa")
    };
    assert!(verify_all(&[at(5)], &a, &[], key).is_ok());
    // Appended while verifying: past the head read at the start.
    assert!(verify_all(&[at(3)], &a, &[], key).is_ok());
    // The tail deleted, the head row left as it was.
    assert_eq!(
        verify_all(&[at(5)], &a[..4], &[], key).map(|r| r.records),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::HeadMismatch { last: 4, head: 6 })
        })
    );
    // The head row names another record at that seq.
    let mut other = at(5);
    other.head = Some((6, a[4].hash.clone()));
    assert!(verify_all(&[other], &a, &[], key).is_err());
}

#[test]
fn a_retired_chain_ends_at_its_final_statement() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let a = named_chain("aa", 6);
    let final_at = |r: &LogRecord| {
        signer
            .sign_statement(StatementKind::Final, Some("b2"), "aa", r.seq, &r.hash, 1)
            .unwrap()
    };
    let retired = [ChainStart {
        retired: true,
        ..start("aa")
    }];
    let closed = [final_at(&a[3])];
    let report = verify_all(&retired, &a[..4], &closed, key).unwrap();
    assert!(report.chains[0].retired);
    // Extended after its final statement.
    assert_eq!(
        verify_all(&retired, &a, &closed, key).map(|r| r.records),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::AfterFinal {
                seq: 5,
                closed_at: 4
            })
        })
    );
    // Cut back before it.
    assert!(matches!(
        verify_all(&retired, &a[..3], &closed, key),
        Err(VerifyFailure::InChain { failure, .. }) if matches!(*failure, VerifyFailure::Truncated { .. })
    ));
    // Retired in the store, but its final statement removed.
    assert_eq!(
        verify_all(&retired, &a[..4], &[], key).map(|r| r.records),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::UnsealedRetirement {
                last: 4,
                head: a[3].hash.clone()
            })
        })
    );
    // Retired, unsealed, and its head row moved past its records (forged
    // records to be inserted once sealed): the head is the failure, so
    // `logs retire` refuses to seal.
    let ahead = [ChainStart {
        retired: true,
        head: Some((6, a[5].hash.clone())),
        ..start("aa")
    }];
    assert_eq!(
        verify_all(&ahead, &a[..4], &[], key),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::HeadMismatch { last: 4, head: 6 })
        })
    );
    // Another chain's failure comes before the unsealed retirement.
    let b = named_chain("bb", 3);
    let mut both = retired.to_vec();
    both.push(start("bb"));
    let broken: Vec<LogRecord> = a[..4].iter().chain(&b[1..]).cloned().collect();
    assert!(matches!(
        verify_all(&both, &broken, &[], key),
        Err(VerifyFailure::InChain { chain, .. }) if chain == "bb"
    ));
}

#[test]
fn two_statements_about_one_record_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let a = named_chain("aa", 6);
    let sign = |kind, seq: i64, hash: &str| {
        signer
            .sign_statement(kind, Some("b2"), "aa", seq, hash, 1)
            .unwrap()
    };
    let honest = sign(StatementKind::Checkpoint, 4, &a[3].hash);
    // The same statement twice (the export file and the store) is one.
    assert!(verify_all(&[start("aa")], &a, &[honest.clone(), honest.clone()], key).is_ok());
    // A witness made to sign a rewritten history at the same record.
    let forged = sign(StatementKind::Checkpoint, 4, &a[2].hash);
    for order in [
        [honest.clone(), forged.clone()],
        [forged.clone(), honest.clone()],
    ] {
        assert!(matches!(
            verify_all(&[start("aa")], &a, &order, key),
            Err(VerifyFailure::InChain { failure, .. })
                if matches!(*failure, VerifyFailure::Equivocation { seq: 4, .. })
        ));
    }
    // Two final statements closing the chain at different records.
    let retired = [ChainStart {
        retired: true,
        ..start("aa")
    }];
    let finals = [
        sign(StatementKind::Final, 4, &a[3].hash),
        sign(StatementKind::Final, 6, &a[5].hash),
    ];
    assert!(matches!(
        verify_all(&retired, &a, &finals, key),
        Err(VerifyFailure::InChain { failure, .. })
            if matches!(*failure, VerifyFailure::Equivocation { .. })
    ));
}

#[test]
fn a_chain_pruned_by_another_replica_is_accounted_for_on_the_pruners_chain() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let a = named_chain("aa", 6);
    let statement = signer
        .sign_statement(StatementKind::Prune, Some("b2"), "aa", 4, &a[3].hash, 1)
        .unwrap();
    // The prune's record is on chain bb, naming chain aa.
    let entry = LogEntry {
        time_ms: 100,
        kind: RecordKind::Admin,
        request_id: "prune".into(),
        identity: None,
        grant: None,
        node: None,
        outcome: Some("log_pruned".into()),
        body: serde_json::json!({"details": {"chain": "aa", "through_seq": 4, "statement": statement}}),
    };
    let body = crate::log::canonical_body(&entry.body);
    let pruned = LogRecord::seal_canonical("bb", 1, entry, &body, GENESIS.into());
    let chains = [
        ChainStart {
            base: Some((4, a[3].hash.clone())),
            ..start("aa")
        },
        start("bb"),
    ];
    let mut records = a[4..].to_vec();
    records.push(pruned.clone());
    assert_eq!(
        verify_all(&chains, &records, &[], key).map(|r| r.records),
        Ok(7)
    );
    // Without the record of the prune, the base is not accounted for.
    assert_eq!(
        verify_all(&chains, &a[4..], &[], key).map(|r| r.records),
        Err(VerifyFailure::InChain {
            chain: "aa".into(),
            failure: Box::new(VerifyFailure::UnanchoredBase { seq: 4 })
        })
    );
    // A statement about chain bb does not anchor chain aa's base.
    let other = signer
        .sign_statement(StatementKind::Prune, Some("b2"), "bb", 4, &a[3].hash, 1)
        .unwrap();
    let mut forged = pruned.entry.clone();
    forged.body["details"]["statement"] = serde_json::to_value(&other).unwrap();
    let body = crate::log::canonical_body(&forged.body);
    let forged = LogRecord::seal_canonical("bb", 1, forged, &body, GENESIS.into());
    let mut records = a[4..].to_vec();
    records.push(forged);
    assert!(verify_all(&chains, &records, &[], key).is_err());
}

#[test]
fn detects_each_kind_of_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let records = chain(10);
    let cps = vec![
        signer.sign(5, &records[4].hash, 1).unwrap(),
        signer.sign(8, &records[7].hash, 2).unwrap(),
    ];
    let key = signer.public_jwk();
    let ok = verify_chain(records.clone(), &cps, Some(key)).unwrap();
    assert_eq!(
        (ok.records, ok.checkpoints, ok.last_checkpoint),
        (10, 2, Some(8))
    );

    let mut edited = records.clone();
    edited[2].entry.body = serde_json::json!({"n": 99});
    assert_eq!(
        verify_chain(edited, &cps, Some(key)),
        Err(VerifyFailure::BadHash { seq: 3 })
    );

    let mut deleted = records.clone();
    deleted.remove(3);
    assert_eq!(
        verify_chain(deleted, &cps, Some(key)),
        Err(VerifyFailure::Gap {
            expected: 4,
            found: 5
        })
    );

    // Recompute the whole chain after an edit: only the checkpoint catches it.
    let mut rewritten = chain(10);
    rewritten[1].entry.outcome = Some("deny".into());
    let mut prev = GENESIS.to_owned();
    for r in &mut rewritten {
        *r = LogRecord::seal(r.seq, r.entry.clone(), prev.clone());
        prev = r.hash.clone();
    }
    assert!(verify_chain(rewritten.clone(), &[], None).is_ok());
    assert_eq!(
        verify_chain(rewritten, &cps, Some(key)),
        Err(VerifyFailure::CheckpointMismatch { seq: 5 })
    );

    let truncated = records[..6].to_vec();
    assert_eq!(
        verify_chain(truncated, &cps, Some(key)),
        Err(VerifyFailure::Truncated {
            last: 6,
            checkpoint: 8
        })
    );

    let mut forged = cps.clone();
    forged[0].hash = records[3].hash.clone();
    assert_eq!(
        verify_chain(records, &forged, Some(key)),
        Err(VerifyFailure::BadSignature { seq: 5 })
    );
}

/// The tail after `base`, re-chained, with a `log_pruned` record for it
/// (as someone with write access to the database could forge it).
fn pruned_tail(records: &[LogRecord], base: usize) -> Vec<LogRecord> {
    pruned_tail_with(records, base, serde_json::Value::Null)
}

/// [`pruned_tail`] whose `log_pruned` record carries `statement`.
fn pruned_tail_with(
    records: &[LogRecord],
    base: usize,
    statement: serde_json::Value,
) -> Vec<LogRecord> {
    let mut prev = records[base - 1].hash.clone();
    records[base..]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut entry = r.entry.clone();
            if i == 0 {
                entry.outcome = Some("log_pruned".into());
                entry.body =
                    serde_json::json!({"details": {"through_seq": base, "statement": statement}});
            }
            let sealed = LogRecord::seal(r.seq, entry, prev.clone());
            prev = sealed.hash.clone();
            sealed
        })
        .collect()
}

#[test]
fn a_base_needs_a_signed_prune_statement() {
    let dir = tempfile::tempdir().unwrap();
    let signer = LogSigner::load_or_create(&dir.path().join("log.key")).unwrap();
    let key = signer.public_jwk();
    let records = chain(10);
    let cp5 = signer.sign(5, &records[4].hash, 1).unwrap();
    let cp8 = signer.sign(8, &records[7].hash, 2).unwrap();
    let tail = pruned_tail(&records, 8);
    let base = Some((8, records[7].hash.as_str()));
    // History before the last checkpoint deleted, the base set there and
    // a log_pruned record forged: refused without a prune statement.
    assert_eq!(
        verify_chain_from(base, tail.clone(), &[cp5.clone(), cp8.clone()], Some(key)),
        Err(VerifyFailure::UnanchoredBase { seq: 8 })
    );
    // A checkpoint re-labelled as a prune statement does not verify.
    let mut relabelled = cp8.clone();
    relabelled.kind = StatementKind::Prune;
    assert_eq!(
        verify_chain_from(base, tail.clone(), &[cp5.clone(), relabelled], Some(key)),
        Err(VerifyFailure::BadSignature { seq: 8 })
    );
    // The broker's own prune statement covers it.
    let statement = signer
        .sign_statement(StatementKind::Prune, Some("b1"), "", 8, &records[7].hash, 3)
        .unwrap();
    let ok = verify_chain_from(
        base,
        tail,
        &[cp5.clone(), cp8.clone(), statement.clone()],
        Some(key),
    )
    .unwrap();
    assert_eq!(ok.records, 10);
    // A replica whose own export lacks it finds it in the chain's
    // log_pruned record; a statement signed by another key, for
    // another base, or a checkpoint passed off as one, does not count.
    let carried = pruned_tail_with(&records, 8, serde_json::to_value(&statement).unwrap());
    let ok = verify_chain_from(base, carried, &[cp5.clone(), cp8.clone()], Some(key)).unwrap();
    assert_eq!(ok.records, 10);
    let other = LogSigner::load_or_create(&dir.path().join("other.key")).unwrap();
    let forged = [
        other
            .sign_statement(StatementKind::Prune, Some("b1"), "", 8, &records[7].hash, 3)
            .unwrap(),
        signer
            .sign_statement(StatementKind::Prune, Some("b1"), "", 5, &records[4].hash, 3)
            .unwrap(),
        cp8.clone(),
    ];
    for statement in forged {
        let tail = pruned_tail_with(&records, 8, serde_json::to_value(&statement).unwrap());
        assert_eq!(
            verify_chain_from(base, tail, &[cp5.clone(), cp8.clone()], Some(key)),
            Err(VerifyFailure::UnanchoredBase { seq: 8 })
        );
    }
}

#[test]
fn an_undecodable_decision_fails_after_the_chain_is_checked() {
    let mut records = chain(3);
    records[1].entry.kind = RecordKind::Decision;
    records[1].entry.body = serde_json::json!({"request": {"grant": "g", "ttl_seconds": 1.5}});
    let mut prev = GENESIS.to_owned();
    for r in &mut records {
        *r = LogRecord::seal(r.seq, r.entry.clone(), prev.clone());
        prev = r.hash.clone();
    }
    assert!(matches!(
        verify_chain(records, &[], None),
        Err(VerifyFailure::Undecodable {
            seq: 2,
            count: 1,
            ..
        })
    ));
}
