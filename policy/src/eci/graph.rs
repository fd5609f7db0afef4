//! The exposure graph: identities, roles, resources (and, in the broker's
//! effective graph, grants) with typed edges; its JSON loader and validation;
//! and the effective graph built from the operator's graph and the grants.
//!
//! The JSON format is documented in `examples/graphs/README.md`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// Most nodes a graph may hold.
pub const MAX_NODES: usize = 5_000_000;
/// Most edges a graph may hold.
pub const MAX_EDGES: usize = 50_000_000;
/// Longest node id, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Most sensitivity labels on one resource.
pub const MAX_LABELS: usize = 64;
/// The id prefix of the broker's grant nodes, reserved in operator graphs.
pub const GRANT_PREFIX: &str = "grant:";

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workload or CI identity (a SPIFFE ID).
    Identity,
    /// A role, group or other intermediate principal.
    Role,
    /// Something worth protecting.
    Resource,
    /// A Mintguard grant (effective graph only).
    Grant,
}

impl NodeKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Identity => "identity",
            NodeKind::Role => "role",
            NodeKind::Resource => "resource",
            NodeKind::Grant => "grant",
        }
    }
}

/// What an edge means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// `from` is a member of `to`.
    MemberOf,
    /// `from` can assume `to`.
    CanAssume,
    /// `from` grants access to `to` (with `access`).
    Grants,
    /// `from` can impersonate `to`.
    Impersonates,
    /// `from` can act for `to` by delegation.
    Delegates,
}

impl EdgeKind {
    /// Whether the edge moves laterally between principals (the `lateral` factor).
    pub fn is_lateral(self) -> bool {
        matches!(
            self,
            EdgeKind::Impersonates | EdgeKind::Delegates | EdgeKind::CanAssume
        )
    }
}

/// The access a `grants` edge gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Administer.
    Admin,
}

impl Access {
    /// The `privilege` factor this access gives.
    pub fn privilege(self) -> f64 {
        match self {
            Access::Read => 0.3,
            Access::Write => 0.6,
            Access::Admin => 1.0,
        }
    }
}

/// Hygiene of an identity, each 0 (good) to 1 (bad); missing = 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hygiene {
    /// Stale credentials (weight 0.30).
    pub rotation: f64,
    /// Exposure of secrets (0.25).
    pub exposure: f64,
    /// Over-broad scope (0.20).
    pub scope: f64,
    /// Unclear ownership (0.15).
    pub ownership: f64,
    /// Weak authentication (0.10).
    pub authentication: f64,
}

impl Hygiene {
    fn values(&self) -> [f64; 5] {
        [
            self.rotation,
            self.exposure,
            self.scope,
            self.ownership,
            self.authentication,
        ]
    }

    /// `h = min(3, 1 + 2 × Σ wᵢhᵢ + 0.5 × [at least three hᵢ > 0.8])`.
    pub fn modifier(&self) -> f64 {
        const WEIGHTS: [f64; 5] = [0.30, 0.25, 0.20, 0.15, 0.10];
        let values = self.values();
        let weighted: f64 = values.iter().zip(WEIGHTS).map(|(h, w)| h * w).sum();
        let many_bad = values.iter().filter(|h| **h > 0.8).count() >= 3;
        (1.0 + 2.0 * weighted + if many_bad { 0.5 } else { 0.0 }).min(3.0)
    }
}

/// A node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// Kind.
    pub kind: NodeKind,
    /// Multiplies the weight of reversed edges into this node (default 1).
    pub capacitance: f64,
    /// A crown jewel: PPR teleports here.
    pub crown_jewel: bool,
    /// Sensitivity labels (`pii`, `phi`, `financial`, …).
    pub sensitivity: Vec<String>,
    /// Hygiene (identities).
    pub hygiene: Hygiene,
}

impl Node {
    /// A node with the defaults: capacitance 1, no crown jewel, no labels, clean hygiene.
    pub fn plain(id: String, kind: NodeKind) -> Self {
        Self {
            id,
            kind,
            capacitance: 1.0,
            crown_jewel: false,
            sensitivity: Vec::new(),
            hygiene: Hygiene::default(),
        }
    }
}

/// An edge between node indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Source node index.
    pub from: u32,
    /// Target node index.
    pub to: u32,
    /// Kind.
    pub kind: EdgeKind,
    /// The access of a `grants` edge.
    pub access: Option<Access>,
    /// Weight (> 0, default 1).
    pub weight: f64,
    /// Last use, seconds since the Unix epoch (`None` = no decay).
    pub last_used: Option<i64>,
}

impl Edge {
    /// A `can_assume` edge of weight 1 without decay (the effective graph's edges).
    pub fn can_assume(from: u32, to: u32) -> Self {
        Self {
            from,
            to,
            kind: EdgeKind::CanAssume,
            access: None,
            weight: 1.0,
            last_used: None,
        }
    }
}

/// A validated exposure graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExposureGraph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    index: HashMap<String, u32>,
}

// === JSON ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphFile {
    nodes: Vec<NodeFile>,
    #[serde(default)]
    edges: Vec<EdgeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: String,
    kind: NodeKind,
    #[serde(default)]
    capacitance: Option<f64>,
    #[serde(default)]
    crown_jewel: bool,
    #[serde(default)]
    sensitivity: Vec<String>,
    #[serde(default)]
    hygiene: Hygiene,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeFile {
    from: String,
    to: String,
    kind: EdgeKind,
    #[serde(default)]
    access: Option<Access>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    last_used: Option<time::OffsetDateTime>,
}

fn graph_err(msg: String) -> PolicyError {
    PolicyError::Graph(msg)
}

impl ExposureGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and validates an operator's graph from JSON. The `grant` kind and
    /// the `grant:` id prefix are reserved for the broker's effective graph.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let file: GraphFile =
            serde_json::from_slice(bytes).map_err(|e| graph_err(e.to_string()))?;
        if file.nodes.len() > MAX_NODES {
            return Err(PolicyError::LimitExceeded {
                kind: "graph nodes",
                limit: MAX_NODES,
                actual: file.nodes.len(),
            });
        }
        if file.edges.len() > MAX_EDGES {
            return Err(PolicyError::LimitExceeded {
                kind: "graph edges",
                limit: MAX_EDGES,
                actual: file.edges.len(),
            });
        }
        let mut graph = Self::new();
        for n in file.nodes {
            if n.kind == NodeKind::Grant || n.id.starts_with(GRANT_PREFIX) {
                return Err(graph_err(format!(
                    "node {:?}: the grant kind and the {GRANT_PREFIX:?} prefix are reserved for the broker's grants",
                    n.id
                )));
            }
            graph.add_node(Node {
                id: n.id,
                kind: n.kind,
                capacitance: n.capacitance.unwrap_or(1.0),
                crown_jewel: n.crown_jewel,
                sensitivity: n.sensitivity,
                hygiene: n.hygiene,
            })?;
        }
        for e in file.edges {
            let from = graph
                .node_index(&e.from)
                .ok_or_else(|| graph_err(format!("edge from unknown node {:?}", e.from)))?;
            let to = graph
                .node_index(&e.to)
                .ok_or_else(|| graph_err(format!("edge to unknown node {:?}", e.to)))?;
            graph.add_edge(Edge {
                from,
                to,
                kind: e.kind,
                access: e.access,
                weight: e.weight.unwrap_or(1.0),
                last_used: e.last_used.map(|t| t.unix_timestamp()),
            })?;
        }
        Ok(graph)
    }

    /// Adds a node after checking it.
    pub fn add_node(&mut self, node: Node) -> Result<u32, PolicyError> {
        if node.id.is_empty() || node.id.len() > MAX_ID_LEN {
            return Err(graph_err(format!(
                "node id must be 1..={MAX_ID_LEN} bytes, got {}",
                node.id.len()
            )));
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(PolicyError::LimitExceeded {
                kind: "graph nodes",
                limit: MAX_NODES,
                actual: self.nodes.len() + 1,
            });
        }
        if !node.capacitance.is_finite() || node.capacitance < 0.0 {
            return Err(graph_err(format!(
                "node {:?}: capacitance must be a finite number ≥ 0, got {}",
                node.id, node.capacitance
            )));
        }
        if node.sensitivity.len() > MAX_LABELS {
            return Err(PolicyError::LimitExceeded {
                kind: "sensitivity labels",
                limit: MAX_LABELS,
                actual: node.sensitivity.len(),
            });
        }
        for (name, h) in [
            "rotation",
            "exposure",
            "scope",
            "ownership",
            "authentication",
        ]
        .iter()
        .zip(node.hygiene.values())
        {
            if !(0.0..=1.0).contains(&h) {
                return Err(graph_err(format!(
                    "node {:?}: hygiene.{name} must be 0–1, got {h}",
                    node.id
                )));
            }
        }
        if self.index.contains_key(&node.id) {
            return Err(graph_err(format!("duplicate node id {:?}", node.id)));
        }
        let idx =
            u32::try_from(self.nodes.len()).map_err(|_| graph_err("too many nodes".into()))?;
        self.index.insert(node.id.clone(), idx);
        self.nodes.push(node);
        Ok(idx)
    }

    /// Adds an edge after checking it.
    pub fn add_edge(&mut self, edge: Edge) -> Result<(), PolicyError> {
        let name = |i: u32| self.nodes.get(i as usize).map(|n| n.id.as_str());
        let (Some(from), Some(to)) = (name(edge.from), name(edge.to)) else {
            return Err(graph_err(format!(
                "edge between unknown node indices {} and {}",
                edge.from, edge.to
            )));
        };
        if self.edges.len() >= MAX_EDGES {
            return Err(PolicyError::LimitExceeded {
                kind: "graph edges",
                limit: MAX_EDGES,
                actual: self.edges.len() + 1,
            });
        }
        if !edge.weight.is_finite() || edge.weight <= 0.0 {
            return Err(graph_err(format!(
                "edge {from:?} → {to:?}: weight must be a finite number > 0, got {}",
                edge.weight
            )));
        }
        match (edge.kind, edge.access) {
            (EdgeKind::Grants, None) => {
                return Err(graph_err(format!(
                    "edge {from:?} → {to:?}: a grants edge needs access read, write or admin"
                )));
            }
            (kind, Some(_)) if kind != EdgeKind::Grants => {
                return Err(graph_err(format!(
                    "edge {from:?} → {to:?}: only grants edges carry access"
                )));
            }
            _ => {}
        }
        self.edges.push(edge);
        Ok(())
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The edges.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// A node's index by id.
    pub fn node_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Reserves room for more nodes and edges (graph generators).
    pub fn reserve(&mut self, nodes: usize, edges: usize) {
        self.nodes.reserve(nodes);
        self.index.reserve(nodes);
        self.edges.reserve(edges);
    }
}

/// A grant as the effective graph sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantNode {
    /// The grant's name; its node is `grant:<name>`.
    pub name: String,
    /// Graph nodes the grant confers (`can_assume` edges of weight 1).
    pub eci_targets: Vec<String>,
}

/// A registered identity and the grants it may request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredIdentity {
    /// The SPIFFE ID.
    pub id: String,
    /// Grant names it may request.
    pub grants: Vec<String>,
}

/// The broker's effective graph: the operator's graph, one `grant:<name>` node
/// per grant with `can_assume` edges (weight 1) to its `eci_targets`, and one
/// identity node for each registered identity absent from the operator's
/// graph, with `can_assume` edges to the grant nodes it may request. So an
/// identity outside the operator's graph gets the ECI of what it may ask for,
/// never 0 by omission.
pub fn effective_graph(
    base: &ExposureGraph,
    grants: &[GrantNode],
    identities: &[RegisteredIdentity],
) -> Result<ExposureGraph, PolicyError> {
    let mut graph = base.clone();
    graph.reserve(
        grants.len() + identities.len(),
        grants.len() * 2 + identities.len() * 2,
    );
    for grant in grants {
        let node = graph.add_node(Node::plain(
            format!("{GRANT_PREFIX}{}", grant.name),
            NodeKind::Grant,
        ))?;
        for target in &grant.eci_targets {
            let to = graph.node_index(target).ok_or_else(|| {
                graph_err(format!(
                    "grant {:?}: eci_target {target:?} is not in the exposure graph",
                    grant.name
                ))
            })?;
            graph.add_edge(Edge::can_assume(node, to))?;
        }
    }
    for identity in identities {
        if graph.node_index(&identity.id).is_some() {
            continue;
        }
        let node = graph.add_node(Node::plain(identity.id.clone(), NodeKind::Identity))?;
        for grant in &identity.grants {
            let to = graph
                .node_index(&format!("{GRANT_PREFIX}{grant}"))
                .ok_or_else(|| {
                    graph_err(format!(
                        "identity {:?}: unknown grant {grant:?}",
                        identity.id
                    ))
                })?;
            graph.add_edge(Edge::can_assume(node, to))?;
        }
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"nodes":[
        {"id":"spiffe://example.org/ns/pay/sa/api","kind":"identity","capacitance":1.0,
         "hygiene":{"rotation":0.2,"exposure":0.0,"scope":0.5,"ownership":0.0,"authentication":0.1}},
        {"id":"role:prod-db-admin","kind":"role"},
        {"id":"db:payments","kind":"resource","crown_jewel":true,"sensitivity":["pii","financial"]}],
      "edges":[
        {"from":"spiffe://example.org/ns/pay/sa/api","to":"role:prod-db-admin","kind":"can_assume","weight":1.0,"last_used":"2026-11-01T00:00:00Z"},
        {"from":"role:prod-db-admin","to":"db:payments","kind":"grants","access":"admin"}]}"#;

    #[test]
    fn loads_the_documented_format() {
        let g = ExposureGraph::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(g.nodes().len(), 3);
        assert_eq!(g.edges().len(), 2);
        assert_eq!(g.edges()[0].last_used, Some(1_793_491_200));
        assert_eq!(g.edges()[1].access, Some(Access::Admin));
        assert_eq!(g.edges()[1].weight, 1.0);
        assert!(g.nodes()[2].crown_jewel);
    }

    fn refused(json: &str, needle: &str) {
        match ExposureGraph::from_json(json.as_bytes()) {
            Ok(_) => panic!("{json} must be refused"),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle:?}"
            ),
        }
    }

    #[test]
    fn refuses_malformed_graphs() {
        let n = r#"{"id":"a","kind":"identity"},{"id":"b","kind":"role"}"#;
        refused(
            &format!(r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"x","kind":"can_assume"}}]}}"#),
            "unknown node \"x\"",
        );
        refused(
            r#"{"nodes":[{"id":"a","kind":"robot"}]}"#,
            "unknown variant `robot`",
        );
        refused(
            &format!(
                r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"can_assume","weight":-1}}]}}"#
            ),
            "weight must be",
        );
        refused(
            &format!(
                r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"can_assume","weight":0}}]}}"#
            ),
            "weight must be",
        );
        refused(
            &format!(
                r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"can_assume","weight":NaN}}]}}"#
            ),
            "expected value",
        );
        refused(
            r#"{"nodes":[{"id":"a","kind":"role"},{"id":"a","kind":"role"}]}"#,
            "duplicate node id \"a\"",
        );
        refused(
            &format!(r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"grants"}}]}}"#),
            "needs access",
        );
        refused(
            &format!(
                r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"member_of","access":"read"}}]}}"#
            ),
            "only grants edges",
        );
        refused(r#"{"nodes":[{"id":"grant:x","kind":"role"}]}"#, "reserved");
        refused(
            r#"{"nodes":[{"id":"a","kind":"identity","hygiene":{"rotation":1.5}}]}"#,
            "hygiene.rotation",
        );
        refused(
            r#"{"nodes":[{"id":"a","kind":"identity","capacitance":-0.5}]}"#,
            "capacitance",
        );
        refused(
            r#"{"nodes":[{"id":"a","kind":"identity","colour":"red"}]}"#,
            "unknown field",
        );
        refused(
            &format!(
                r#"{{"nodes":[{n}],"edges":[{{"from":"a","to":"b","kind":"can_assume","last_used":"yesterday"}}]}}"#
            ),
            "",
        );
    }

    #[test]
    fn hygiene_modifier() {
        assert_eq!(Hygiene::default().modifier(), 1.0);
        let h = Hygiene {
            rotation: 0.2,
            exposure: 0.0,
            scope: 0.5,
            ownership: 0.0,
            authentication: 0.1,
        };
        // 1 + 2 × (0.06 + 0.1 + 0.01) = 1.34
        assert!((h.modifier() - 1.34).abs() < 1e-12);
        let all = Hygiene {
            rotation: 1.0,
            exposure: 1.0,
            scope: 1.0,
            ownership: 1.0,
            authentication: 1.0,
        };
        assert_eq!(all.modifier(), 3.0);
        let three = Hygiene {
            rotation: 0.9,
            exposure: 0.9,
            scope: 0.9,
            ownership: 0.0,
            authentication: 0.0,
        };
        // 1 + 2 × 0.675 + 0.5 = 2.85
        assert!((three.modifier() - 2.85).abs() < 1e-12);
    }

    #[test]
    fn effective_graph_adds_grants_and_missing_identities() {
        let g = ExposureGraph::from_json(EXAMPLE.as_bytes()).unwrap();
        let grants = [GrantNode {
            name: "db-admin".into(),
            eci_targets: vec!["role:prod-db-admin".into()],
        }];
        let ids = [
            RegisteredIdentity {
                id: "spiffe://example.org/ns/pay/sa/api".into(),
                grants: vec!["db-admin".into()],
            },
            RegisteredIdentity {
                id: "spiffe://example.org/ns/new/sa/job".into(),
                grants: vec!["db-admin".into()],
            },
        ];
        let e = effective_graph(&g, &grants, &ids).unwrap();
        assert_eq!(e.nodes().len(), 5);
        let grant = e.node_index("grant:db-admin").unwrap();
        let job = e.node_index("spiffe://example.org/ns/new/sa/job").unwrap();
        assert_eq!(e.nodes()[grant as usize].kind, NodeKind::Grant);
        assert!(
            e.edges()
                .iter()
                .any(|x| x.from == job && x.to == grant && x.kind == EdgeKind::CanAssume)
        );
        let bad = [GrantNode {
            name: "x".into(),
            eci_targets: vec!["role:nope".into()],
        }];
        assert!(effective_graph(&g, &bad, &[]).is_err());
    }
}
