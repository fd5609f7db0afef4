//! # mintguard-benches
//!
//! Criterion micro-benchmarks of Mintguard's hot paths (in `benches/`) and
//! the fixtures they share; [`load`], the client side of the load generators
//! (`loadgen`, `agentload`, `floor`); and `ppr_compare` (a binary that times
//! Mintguard's PageRank against networkx and igraph on the same graph). Run
//! the benches with `cargo bench -p mintguard-benches`.

pub mod load;

use std::path::Path;

use mintguard_certs::jwt::Expiring;
use mintguard_policy::DecisionInput;
use mintguard_policy::eci::graph::{
    Access, Edge, EdgeKind, ExposureGraph, Hygiene, Node, NodeKind,
};
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::TrustConfig;
use serde::Serialize;

/// The claims of a typical workload JWT the broker mints.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadClaims {
    /// Issuer.
    pub iss: String,
    /// The workload's SPIFFE ID.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// The lease id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
}

impl WorkloadClaims {
    /// A five-minute token for a payments workload, issued at `now`.
    pub fn typical(now: time::OffsetDateTime) -> Self {
        let t = now.unix_timestamp();
        Self {
            iss: "https://mintguard.example.org".into(),
            sub: "spiffe://example.org/ns/payments/sa/api".into(),
            aud: "payments-db".into(),
            jti: "lease-01HZX3K4Q8F7W2M9R6T5Y1B0CD".into(),
            iat: t,
            nbf: t,
            exp: t + 300,
        }
    }
}

impl Expiring for WorkloadClaims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// SplitMix64: a small, seeded, reproducible generator (the same sequence on
/// every machine, so graphs are comparable across runs and tools).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize
    }
}

/// A seeded synthetic exposure graph of `nodes` nodes and `edges` edges at
/// time `now`: 10 % identities, 30 % roles, 60 % resources, 0.1 % crown jewels
/// (at least one); edge targets skewed towards low indices (hubs), weights
/// 0.1–5, 40 % of edges with a `last_used` up to 400 days back, 5 % of nodes
/// with a capacitance other than 1.
pub fn synthetic_graph(nodes: usize, edges: usize, seed: u64, now: i64) -> ExposureGraph {
    let mut rng = SplitMix64::new(seed);
    let mut g = ExposureGraph::new();
    g.reserve(nodes, edges);
    for i in 0..nodes {
        let roll = rng.next_f64();
        let jewel = i % 1000 == 7 || (i == 0 && nodes <= 7);
        let kind = if jewel || roll >= 0.4 {
            NodeKind::Resource
        } else if roll < 0.1 {
            NodeKind::Identity
        } else {
            NodeKind::Role
        };
        let capacitance = if rng.next_f64() < 0.05 {
            0.5 + 1.5 * rng.next_f64()
        } else {
            1.0
        };
        g.add_node(Node {
            id: format!("n{i}"),
            kind,
            capacitance,
            crown_jewel: jewel,
            sensitivity: if jewel {
                vec!["pii".into()]
            } else {
                Vec::new()
            },
            hygiene: Hygiene::default(),
        })
        .unwrap_or_else(|e| panic!("synthetic node: {e}"));
    }
    let kinds = [
        EdgeKind::MemberOf,
        EdgeKind::CanAssume,
        EdgeKind::Grants,
        EdgeKind::Impersonates,
        EdgeKind::Delegates,
    ];
    for _ in 0..edges {
        let from = rng.below(nodes) as u32;
        let skew = rng.next_f64();
        let to = ((skew * skew) * nodes as f64) as u32;
        let kind = kinds[rng.below(kinds.len())];
        let access = (kind == EdgeKind::Grants)
            .then(|| [Access::Read, Access::Write, Access::Admin][rng.below(3)]);
        let last_used =
            (rng.next_f64() < 0.4).then(|| now - (rng.next_f64() * 400.0 * 86_400.0) as i64);
        g.add_edge(Edge {
            from,
            to,
            kind,
            access,
            weight: 0.1 + 4.9 * rng.next_f64(),
            last_used,
        })
        .unwrap_or_else(|e| panic!("synthetic edge: {e}"));
    }
    g
}

/// The decision fixture: the Cedar corpus's base input (allowed in business
/// hours) and a rule set of 20 policies (the corpus's 8 and 12 more permits
/// for other workloads and grants).
pub fn decide_fixture() -> (DecisionInput, RuleSet) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/corpus");
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut sources = Vec::new();
    for name in ["grants.cedar", "guards.cedar"] {
        sources.push(PolicySource {
            name: name.into(),
            text: read(&root.join("policies").join(name)),
        });
    }
    let mut more = String::new();
    for i in 0..12 {
        more.push_str(&format!(
            "@id(\"team-{i}\")\npermit (principal == Mintguard::Workload::\"spiffe://example.org/ns/team{i}/sa/app\", \
             action == Mintguard::Action::\"mint\", resource == Mintguard::Grant::\"team{i}-db\")\n\
             when {{ context.trust_score >= 60 && context.ttl <= 1800 }};\n"
        ));
    }
    sources.push(PolicySource {
        name: "teams.cedar".into(),
        text: more,
    });
    let rules = RuleSet::new(sources, TrustConfig::default())
        .unwrap_or_else(|e| panic!("fixture rules: {e}"));
    assert_eq!(rules.len(), 20, "the decide fixture has 20 policies");
    let cases: serde_json::Value = serde_json::from_str(&read(&root.join("cases.json")))
        .unwrap_or_else(|e| panic!("cases.json: {e}"));
    let input =
        serde_json::from_value(cases["base"].clone()).unwrap_or_else(|e| panic!("base input: {e}"));
    (input, rules)
}
