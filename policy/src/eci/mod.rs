//! ECI — Expected Compromise Impact, per identity (and per grant, as its
//! exposure).
//!
//! Factors, each 0–1, over what a node reaches by following edges forward:
//!
//! | factor | definition |
//! |---|---|
//! | `access` | reachable resources / all resources |
//! | `critical` | ppr(node) / max ppr over identity and grant nodes |
//! | `sensitivity` | reachable resources with a sensitivity label / all labelled resources |
//! | `lateral` | min(1, L/5), L = identities and roles reachable through `impersonates`, `delegates`, `can_assume` edges only (itself not counted) |
//! | `privilege` | 1.0 if an `admin` grant is reachable, 0.6 for `write`, 0.3 for `read`, else 0 |
//!
//! `structural = 100 × (0.30 access + 0.25 critical + 0.20 sensitivity + 0.15
//! lateral + 0.10 privilege)`, `effective = structural × hygiene modifier`,
//! reported uncapped (`eci_raw`) and capped at 100 (`eci`). Any 0/0 is 0; with
//! no crown jewels every PPR and `critical` are 0 and a warning is reported.
//!
//! Computed off the request path (when the graph or grants change) into an
//! [`EciReport`], which answers lookups by id in O(1).

pub mod graph;
pub mod neighbourhood;
pub mod pagerank;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use graph::{EdgeKind, ExposureGraph, NodeKind};
use pagerank::{PprMatrix, PprParams};

/// The five factors of structural ECI, each 0–1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    /// Reachable resources / all resources.
    pub access: f64,
    /// PPR relative to the most critical identity or grant.
    pub critical: f64,
    /// Reachable labelled resources / all labelled resources.
    pub sensitivity: f64,
    /// Lateral movement: min(1, L/5).
    pub lateral: f64,
    /// Highest reachable access: admin 1.0, write 0.6, read 0.3.
    pub privilege: f64,
}

impl Factors {
    /// `100 × (0.30 access + 0.25 critical + 0.20 sensitivity + 0.15 lateral + 0.10 privilege)`.
    pub fn structural(&self) -> f64 {
        100.0
            * (0.30 * self.access
                + 0.25 * self.critical
                + 0.20 * self.sensitivity
                + 0.15 * self.lateral
                + 0.10 * self.privilege)
    }
}

/// The ECI numbers of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEci {
    /// The node id.
    pub id: String,
    /// Its kind.
    pub kind: NodeKind,
    /// Its personalized PageRank.
    pub ppr: f64,
    /// Identities and grants: `100 × Σ factor weights`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structural_eci: Option<f64>,
    /// Identities and grants: the hygiene modifier (1–3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hygiene_modifier: Option<f64>,
    /// Identities and grants: effective ECI capped at 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eci: Option<f64>,
    /// Identities and grants: effective ECI, uncapped (up to 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eci_raw: Option<f64>,
    /// Identities and grants: the factors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factors: Option<Factors>,
}

/// ECI of every node of a graph, with lookups by id.
#[derive(Clone, Debug, PartialEq)]
pub struct EciReport {
    nodes: Vec<NodeEci>,
    index: HashMap<String, usize>,
    /// PageRank iterations run.
    pub ppr_iterations: u32,
    /// Whether PageRank converged.
    pub ppr_converged: bool,
    /// Conditions an operator should know about (e.g. no crown jewels).
    pub warnings: Vec<String>,
}

impl EciReport {
    /// Every node, in graph order.
    pub fn nodes(&self) -> &[NodeEci] {
        &self.nodes
    }

    /// One node's numbers.
    pub fn get(&self, id: &str) -> Option<&NodeEci> {
        self.index.get(id).map(|i| &self.nodes[*i])
    }

    /// The effective ECI (capped) of an identity; `None` when absent.
    pub fn identity_eci(&self, id: &str) -> Option<f64> {
        self.get(id).and_then(|n| n.eci)
    }

    /// A grant's exposure: the structural ECI of its `grant:<name>` node.
    pub fn grant_exposure(&self, grant: &str) -> Option<f64> {
        self.get(&format!("{}{grant}", graph::GRANT_PREFIX))
            .and_then(|n| n.structural_eci)
    }
}

/// The ECI an issuer (node or CI issuer) can reach through the identities it
/// may vouch for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// Identities counted.
    pub identities: usize,
    /// Identities not in the report, counted at ECI 100 (fail closed).
    pub unknown: usize,
    /// The highest effective ECI (capped).
    pub max: f64,
    /// The sum of effective ECI (capped).
    pub sum: f64,
}

/// The blast radius of an issuer that may vouch for `identities`.
pub fn blast_radius<'a>(
    report: &EciReport,
    identities: impl IntoIterator<Item = &'a str>,
) -> BlastRadius {
    let mut radius = BlastRadius::default();
    for id in identities {
        let eci = report.identity_eci(id).unwrap_or_else(|| {
            radius.unknown += 1;
            100.0
        });
        radius.identities += 1;
        radius.max = radius.max.max(eci);
        radius.sum += eci;
    }
    radius
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Forward adjacency in CSR form: (target, kind, access privilege).
struct Forward {
    offsets: Vec<u32>,
    targets: Vec<(u32, EdgeKind, f64)>,
}

impl Forward {
    fn build(g: &ExposureGraph) -> Self {
        let n = g.nodes().len();
        let mut offsets = vec![0u32; n + 1];
        for e in g.edges() {
            offsets[e.from as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor = offsets[..n].to_vec();
        let mut targets = vec![(0u32, EdgeKind::MemberOf, 0.0); g.edges().len()];
        for e in g.edges() {
            let slot = cursor[e.from as usize] as usize;
            cursor[e.from as usize] += 1;
            targets[slot] = (e.to, e.kind, e.access.map_or(0.0, |a| a.privilege()));
        }
        Self { offsets, targets }
    }

    fn out(&self, v: u32) -> &[(u32, EdgeKind, f64)] {
        &self.targets[self.offsets[v as usize] as usize..self.offsets[v as usize + 1] as usize]
    }
}

/// Reusable traversal state (a generation-stamped visited set).
struct Walker {
    stamp: Vec<u32>,
    generation: u32,
    stack: Vec<u32>,
}

impl Walker {
    fn new(n: usize) -> Self {
        Self {
            stamp: vec![0; n],
            generation: 0,
            stack: Vec::new(),
        }
    }

    /// Visits every node reachable from `start` (not `start` itself unless on
    /// a cycle back to it) through edges `follow` accepts; calls `visit` on
    /// each reached node and `edge` on each followed edge.
    fn walk(
        &mut self,
        fwd: &Forward,
        start: u32,
        follow: impl Fn(EdgeKind) -> bool,
        mut visit: impl FnMut(u32),
        mut edge: impl FnMut(f64),
    ) {
        self.generation += 1;
        let generation = self.generation;
        self.stamp[start as usize] = generation;
        self.stack.clear();
        self.stack.push(start);
        while let Some(v) = self.stack.pop() {
            for &(to, kind, privilege) in fwd.out(v) {
                if !follow(kind) {
                    continue;
                }
                edge(privilege);
                if self.stamp[to as usize] != generation {
                    self.stamp[to as usize] = generation;
                    visit(to);
                    self.stack.push(to);
                }
            }
        }
    }
}

/// Computes PPR and the ECI of every identity and grant node of `graph` at
/// `now` (seconds since the Unix epoch).
pub fn compute_eci(graph: &ExposureGraph, params: &PprParams, now: i64) -> EciReport {
    let matrix = PprMatrix::build(graph, params, now);
    let mut warnings = Vec::new();
    if !matrix.has_crown_jewels() {
        warnings.push(
            "the exposure graph has no crown jewels: every PPR and the critical factor are 0"
                .to_owned(),
        );
    }
    let ppr = matrix.run(params);
    if !ppr.converged {
        warnings.push(format!(
            "PageRank did not converge in {} iterations (last L1 change {:e})",
            ppr.iterations, ppr.last_delta
        ));
    }
    let nodes = graph.nodes();
    let scored = |k: NodeKind| matches!(k, NodeKind::Identity | NodeKind::Grant);
    let max_ppr = nodes
        .iter()
        .zip(&ppr.scores)
        .filter(|(n, _)| scored(n.kind))
        .map(|(_, s)| *s)
        .fold(0.0f64, f64::max);
    let resources = nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Resource)
        .count();
    let labelled = nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Resource && !n.sensitivity.is_empty())
        .count();

    let fwd = Forward::build(graph);
    let mut walker = Walker::new(nodes.len());
    let mut out = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let mut entry = NodeEci {
            id: node.id.clone(),
            kind: node.kind,
            ppr: ppr.scores[i],
            structural_eci: None,
            hygiene_modifier: None,
            eci: None,
            eci_raw: None,
            factors: None,
        };
        if scored(node.kind) {
            let start = i as u32;
            let (mut reached_resources, mut reached_labelled, mut privilege) =
                (0usize, 0usize, 0.0f64);
            walker.walk(
                &fwd,
                start,
                |_| true,
                |v| {
                    let n = &nodes[v as usize];
                    if n.kind == NodeKind::Resource {
                        reached_resources += 1;
                        if !n.sensitivity.is_empty() {
                            reached_labelled += 1;
                        }
                    }
                },
                |p| privilege = privilege.max(p),
            );
            let mut lateral = 0usize;
            walker.walk(
                &fwd,
                start,
                EdgeKind::is_lateral,
                |v| {
                    if v != start
                        && matches!(nodes[v as usize].kind, NodeKind::Identity | NodeKind::Role)
                    {
                        lateral += 1;
                    }
                },
                |_| {},
            );
            let factors = Factors {
                access: ratio(reached_resources, resources),
                critical: if max_ppr > 0.0 {
                    ppr.scores[i] / max_ppr
                } else {
                    0.0
                },
                sensitivity: ratio(reached_labelled, labelled),
                lateral: (lateral as f64 / 5.0).min(1.0),
                privilege,
            };
            let structural = factors.structural();
            let modifier = node.hygiene.modifier();
            let effective = structural * modifier;
            entry.structural_eci = Some(structural);
            entry.hygiene_modifier = Some(modifier);
            entry.eci = Some(effective.min(100.0));
            entry.eci_raw = Some(effective);
            entry.factors = Some(factors);
        }
        out.push(entry);
    }
    let index = out
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    EciReport {
        nodes: out,
        index,
        ppr_iterations: ppr.iterations,
        ppr_converged: ppr.converged,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::graph::*;
    use super::*;
    use proptest::prelude::*;

    fn example() -> ExposureGraph {
        ExposureGraph::from_json(
            br#"{"nodes":[
              {"id":"spiffe://example.org/api","kind":"identity",
               "hygiene":{"rotation":0.2,"exposure":0.0,"scope":0.5,"ownership":0.0,"authentication":0.1}},
              {"id":"spiffe://example.org/batch","kind":"identity"},
              {"id":"role:prod-db-admin","kind":"role"},
              {"id":"role:reader","kind":"role"},
              {"id":"db:payments","kind":"resource","crown_jewel":true,"sensitivity":["pii","financial"]},
              {"id":"bucket:logs","kind":"resource"}],
             "edges":[
              {"from":"spiffe://example.org/api","to":"role:prod-db-admin","kind":"can_assume"},
              {"from":"role:prod-db-admin","to":"db:payments","kind":"grants","access":"admin"},
              {"from":"spiffe://example.org/batch","to":"role:reader","kind":"member_of"},
              {"from":"role:reader","to":"bucket:logs","kind":"grants","access":"read"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn factors_by_hand() {
        let r = compute_eci(&example(), &PprParams::default(), 0);
        let api = r.get("spiffe://example.org/api").unwrap();
        let f = api.factors.unwrap();
        assert_eq!(f.access, 0.5);
        assert_eq!(f.critical, 1.0);
        assert_eq!(f.sensitivity, 1.0);
        assert_eq!(f.lateral, 0.2); // one role through can_assume
        assert_eq!(f.privilege, 1.0);
        let structural = 100.0 * (0.30 * 0.5 + 0.25 + 0.20 + 0.15 * 0.2 + 0.10);
        assert!((api.structural_eci.unwrap() - structural).abs() < 1e-9);
        assert!((api.eci_raw.unwrap() - structural * 1.34).abs() < 1e-9);
        assert_eq!(api.eci.unwrap(), (structural * 1.34).min(100.0));

        let batch = r
            .get("spiffe://example.org/batch")
            .unwrap()
            .factors
            .unwrap();
        assert_eq!(batch.access, 0.5);
        assert_eq!(batch.critical, 0.0, "batch reaches no crown jewel");
        assert_eq!(batch.sensitivity, 0.0);
        assert_eq!(batch.lateral, 0.0, "member_of is not lateral");
        assert_eq!(batch.privilege, 0.3);
        // Roles and resources carry only their PPR.
        assert!(r.get("role:reader").unwrap().factors.is_none());
    }

    #[test]
    fn no_crown_jewels_warns_and_zeroes_critical() {
        let g = ExposureGraph::from_json(
            br#"{"nodes":[{"id":"i","kind":"identity"},{"id":"r","kind":"resource"}],
                 "edges":[{"from":"i","to":"r","kind":"grants","access":"write"}]}"#,
        )
        .unwrap();
        let r = compute_eci(&g, &PprParams::default(), 0);
        assert_eq!(r.warnings.len(), 1);
        let f = r.get("i").unwrap().factors.unwrap();
        assert_eq!(f.critical, 0.0);
        assert_eq!(f.sensitivity, 0.0, "0/0 is 0");
        assert_eq!(f.privilege, 0.6);
    }

    #[test]
    fn grant_exposure_and_identities_outside_the_graph() {
        let grants = [GrantNode {
            name: "db-admin".into(),
            eci_targets: vec!["role:prod-db-admin".into()],
        }];
        let ids = [RegisteredIdentity {
            id: "spiffe://example.org/newcomer".into(),
            grants: vec!["db-admin".into()],
        }];
        let g = effective_graph(&example(), &grants, &ids).unwrap();
        let r = compute_eci(&g, &PprParams::default(), 0);
        let exposure = r.grant_exposure("db-admin").unwrap();
        assert!(
            exposure > 50.0,
            "the grant confers admin on the crown jewel: {exposure}"
        );
        let newcomer = r.identity_eci("spiffe://example.org/newcomer").unwrap();
        assert!(newcomer > 0.0, "never 0 by omission");
        let radius = blast_radius(
            &r,
            [
                "spiffe://example.org/newcomer",
                "spiffe://example.org/batch",
                "spiffe://x/unknown",
            ],
        );
        assert_eq!(radius.identities, 3);
        assert_eq!(radius.unknown, 1);
        assert_eq!(radius.max, 100.0);
    }

    fn reaches_jewel(g: &ExposureGraph, from: usize) -> bool {
        let mut seen = vec![false; g.nodes().len()];
        let mut stack = vec![from];
        while let Some(v) = stack.pop() {
            if g.nodes()[v].crown_jewel {
                return true;
            }
            if std::mem::replace(&mut seen[v], true) {
                continue;
            }
            stack.extend(
                g.edges()
                    .iter()
                    .filter(|e| e.from as usize == v)
                    .map(|e| e.to as usize),
            );
        }
        false
    }

    proptest! {
        /// Adding an edge from an identity to a node that reaches a crown
        /// jewel never lowers the identity's structural ECI.
        #[test]
        fn crown_jewel_edge_never_lowers_structural_eci(
            n in 3usize..14,
            raw_edges in proptest::collection::vec((0usize..14, 0usize..14, 0u8..5, 0.1f64..5.0), 0..40),
            kinds in proptest::collection::vec(0u8..3, 14),
            jewels in proptest::collection::vec(0usize..14, 1..3),
            labels in proptest::collection::vec(any::<bool>(), 14),
            pick in 0usize..14,
            target in 0usize..14,
            access in 0usize..4,
        ) {
            let identity = pick % n;
            prop_assume!(!jewels.iter().any(|j| j % n == identity));
            let mut g = ExposureGraph::new();
            for i in 0..n {
                let is_jewel = jewels.iter().any(|j| j % n == i);
                let kind = match (i == identity, is_jewel, kinds[i] % 3) {
                    (true, _, _) => NodeKind::Identity,
                    (_, true, _) | (_, _, 2) => NodeKind::Resource,
                    (_, _, 0) => NodeKind::Identity,
                    _ => NodeKind::Role,
                };
                g.add_node(Node {
                    id: format!("n{i}"),
                    kind,
                    capacitance: 1.0,
                    crown_jewel: is_jewel,
                    sensitivity: if labels[i] { vec!["pii".into()] } else { vec![] },
                    hygiene: Hygiene::default(),
                }).unwrap();
            }
            let edge_kinds = [EdgeKind::MemberOf, EdgeKind::CanAssume, EdgeKind::Grants, EdgeKind::Impersonates, EdgeKind::Delegates];
            for (a, b, k, w) in raw_edges {
                let kind = edge_kinds[k as usize % 5];
                let access = (kind == EdgeKind::Grants).then_some(Access::Read);
                g.add_edge(Edge { from: (a % n) as u32, to: (b % n) as u32, kind, access, weight: w, last_used: None }).unwrap();
            }
            let to = target % n;
            prop_assume!(reaches_jewel(&g, to));
            let id = format!("n{identity}");
            let before = compute_eci(&g, &PprParams::default(), 0).get(&id).unwrap().structural_eci.unwrap();
            let access = [None, Some(Access::Read), Some(Access::Write), Some(Access::Admin)][access];
            let kind = if access.is_some() { EdgeKind::Grants } else { EdgeKind::CanAssume };
            g.add_edge(Edge { from: identity as u32, to: to as u32, kind, access, weight: 1.0, last_used: None }).unwrap();
            let after = compute_eci(&g, &PprParams::default(), 0).get(&id).unwrap().structural_eci.unwrap();
            prop_assert!(after >= before - 1e-9, "before {} after {}", before, after);
        }

        #[test]
        fn hygiene_modifier_stays_in_range(
            rotation in 0.0f64..=1.0, exposure in 0.0f64..=1.0, scope in 0.0f64..=1.0,
            ownership in 0.0f64..=1.0, authentication in 0.0f64..=1.0,
        ) {
            let m = Hygiene { rotation, exposure, scope, ownership, authentication }.modifier();
            prop_assert!((1.0..=3.0).contains(&m));
        }
    }
}
