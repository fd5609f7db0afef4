//! Determinism and the no-evidence-no-suspend invariant, over 1,000 generated
//! inputs: the same input gives the same decision, input → JSON → input gives
//! an identical input and decision, and without positive evidence no input —
//! however stale or missing its signals — yields `suspend`. A warm entity
//! cache decides exactly as a cold rule set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot, Refill};
use mintguard_policy::decision::{
    AnomalyInput, BudgetView, EciInput, Evidence, EvidenceKind, GrantInput, IssuerContext,
    IssuerKind, PrincipalKind, Suspension,
};
use mintguard_policy::trust::{Signal, SignalKind, TrustInput};
use mintguard_policy::{DecisionInput, Outcome, decide};
use proptest::prelude::*;

const NOW_MS: i64 = 1_795_514_400_000;

fn rules() -> &'static mintguard_policy::rules::RuleSet {
    static RULES: std::sync::OnceLock<mintguard_policy::rules::RuleSet> =
        std::sync::OnceLock::new();
    RULES.get_or_init(common::corpus_rules)
}

fn arb_signals() -> impl Strategy<Value = TrustInput> {
    (
        proptest::collection::btree_map(
            proptest::sample::select(SignalKind::ALL.to_vec()),
            (0u8..=100, -5000i64..100, 0u64..2000, "[a-z]{1,8}").prop_map(
                |(value, age, ttl, source)| Signal {
                    value,
                    observed_at: NOW_MS / 1000 + age,
                    ttl_seconds: ttl,
                    source,
                },
            ),
            0..=6,
        ),
        proptest::collection::btree_set(
            proptest::sample::select(vec![
                SignalKind::Location,
                SignalKind::Time,
                SignalKind::Network,
            ]),
            0..=3,
        ),
    )
        .prop_map(
            |(signals, unconstrained): (BTreeMap<_, _>, BTreeSet<_>)| TrustInput {
                signals,
                unconstrained,
            },
        )
}

fn arb_budget() -> impl Strategy<Value = BudgetView> {
    (
        1u64..50,
        prop_oneof![
            Just(Refill::Never),
            (1u64..7200).prop_map(|seconds| Refill::Every { seconds })
        ],
        0u64..3,
        0u64..3,
        0.0f64..5.0,
        0i64..60_000,
        0i64..10_000_000,
    )
        .prop_map(
            |(amount, per, base, per_5min, eci_factor, balance, ago)| BudgetView {
                key: format!("identity:x/grant:g{amount}"),
                policy: BudgetPolicy {
                    amount,
                    per,
                    base,
                    per_5min,
                    eci_factor,
                },
                snapshot: BudgetSnapshot {
                    balance_milli: balance,
                    updated_at_ms: NOW_MS - ago,
                },
            },
        )
}

fn arb_input() -> impl Strategy<Value = DecisionInput> {
    let identity = proptest::sample::select(vec![
        "spiffe://example.org/ns/pay/sa/api",
        "spiffe://example.org/ns/other/sa/x",
        "spiffe://example.org/ci/github/acme/app",
    ]);
    let grant = proptest::sample::select(vec![
        ("payments-db", "vault"),
        ("deploy-role", "aws_sts"),
        ("token", "jwt"),
    ]);
    let issuer = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    let ttls = (
        1u64..7200,
        proptest::option::of(1u64..3600),
        proptest::option::of(1u64..20_000),
    );
    let eci = (0.0f64..300.0, 0.0f64..100.0, 0.0f64..100.0);
    let evidence = proptest::collection::vec(
        (
            proptest::sample::select(vec![
                EvidenceKind::Detection,
                EvidenceKind::CompromiseSignal,
                EvidenceKind::Operator,
            ]),
            "[a-z:0-9]{1,12}",
        )
            .prop_map(|(kind, detail)| Evidence { kind, detail }),
        0..2,
    );
    let claims = proptest::collection::btree_map(
        proptest::sample::select(vec![
            "repository_id",
            "ref",
            "event_name",
            "environment",
            "unknown_claim",
        ])
        .prop_map(str::to_owned),
        proptest::sample::select(vec![
            "123456",
            "refs/heads/main",
            "push",
            "pull_request",
            "prod",
        ])
        .prop_map(str::to_owned),
        0..4,
    );
    (
        (identity, any::<bool>(), issuer, grant, ttls),
        (
            proptest::option::of("[a-z ]{0,20}"),
            -86_400_000i64..86_400_000,
            arb_signals(),
            eci,
        ),
        (
            proptest::collection::vec(arb_budget(), 0..3),
            evidence,
            any::<u8>(),
            any::<bool>(),
            claims,
        ),
    )
        .prop_map(
            |(
                (
                    identity,
                    ci,
                    (may_vouch, suspended, anomalous, _),
                    (grant, kind),
                    (max_ttl, reduced, requested),
                ),
                (
                    purpose,
                    shift,
                    signals,
                    (identity_effective, grant_exposure, issuer_blast_radius),
                ),
                (budgets, evidence, suspension, approved, ci_claims),
            )| DecisionInput {
                identity: identity.to_owned(),
                principal: if ci {
                    PrincipalKind::CiJob
                } else {
                    PrincipalKind::Workload
                },
                issuer: IssuerContext {
                    kind: if ci {
                        IssuerKind::CiIssuer
                    } else {
                        IssuerKind::Node
                    },
                    id: if ci {
                        "https://token.actions.githubusercontent.com".into()
                    } else {
                        "spiffe://example.org/mintguard/node/n1".into()
                    },
                    may_vouch: may_vouch || suspended,
                    suspended: suspended && anomalous,
                    anomalous: anomalous && !may_vouch,
                },
                grant: GrantInput {
                    name: grant.into(),
                    kind: kind.into(),
                    max_ttl_seconds: max_ttl,
                    reduced_max_ttl_seconds: reduced,
                },
                requested_ttl_seconds: requested,
                purpose,
                now_ms: NOW_MS + shift,
                signals,
                eci: EciInput {
                    identity_effective,
                    grant_exposure,
                    issuer_blast_radius,
                    explained: None,
                },
                budgets,
                evidence,
                suspension: (suspension < 20).then(|| Suspension {
                    evidence: Evidence {
                        kind: EvidenceKind::Operator,
                        detail: "alice".into(),
                    },
                }),
                approved,
                anomaly: AnomalyInput {
                    score: u8::try_from(shift.rem_euclid(101)).unwrap_or(0),
                    detectors: vec!["rate_spike".into()],
                    reduce: shift % 3 == 0,
                    step_up: shift % 5 == 0,
                },
                ci_claims,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn same_input_same_decision_and_json_round_trip(input in arb_input()) {
        let rules = rules();
        let first = decide(&input, rules);
        let second = decide(&input, rules);
        prop_assert_eq!(&first, &second);

        let json = serde_json::to_string(&input).unwrap();
        let back: DecisionInput = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &input);
        prop_assert_eq!(&decide(&back, rules), &first);

        let decision_json = serde_json::to_string(&first).unwrap();
        let decision_back: mintguard_policy::Decision = serde_json::from_str(&decision_json).unwrap();
        prop_assert_eq!(&decision_back, &first);
    }

    #[test]
    fn no_suspend_without_positive_evidence(mut input in arb_input()) {
        input.evidence.clear();
        input.suspension = None;
        let decision = decide(&input, rules());
        prop_assert_ne!(decision.outcome, Outcome::Suspend);
        if decision.outcome.mints() {
            prop_assert_eq!(decision.spend.len(), input.budgets.len());
        } else {
            prop_assert!(decision.spend.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The rule set caches Cedar entities by issuer, identity and grant: a
    /// warm cache (shared by every case of this run) decides exactly as a
    /// rule set that never saw another request.
    #[test]
    fn the_entity_cache_never_changes_a_decision(
        mut input in arb_input(),
        node in proptest::sample::select(vec!["n1", "n2", "n3"]),
    ) {
        if input.issuer.kind == IssuerKind::Node {
            input.issuer.id = format!("spiffe://example.org/mintguard/node/{node}");
        }
        let warm = decide(&input, rules());
        let cold = mintguard_policy::rules::RuleSet::from_stored(rules().to_stored()).unwrap();
        prop_assert_eq!(&decide(&input, &cold), &warm);
    }
}
