//! An identity's exposure-graph neighbourhood: what it reaches by following
//! edges forward (as the ECI factors count it), and which of those nodes lie
//! on a path to a crown jewel — the paths that make its ECI. Bounded in depth
//! and size, so a console can draw it.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::EciReport;
use super::graph::{Access, EdgeKind, ExposureGraph, NodeKind};

/// One node of a neighbourhood.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoodNode {
    /// The node id.
    pub id: String,
    /// Its kind.
    pub kind: NodeKind,
    /// Edges from the identity (0 for the identity itself).
    pub depth: usize,
    /// Whether PageRank teleports to it.
    pub crown_jewel: bool,
    /// Its sensitivity labels.
    pub sensitivity: Vec<String>,
    /// Whether a crown jewel is reachable from it within the neighbourhood.
    pub on_path: bool,
    /// Identities and grants: effective ECI (capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eci: Option<f64>,
}

/// One edge between two nodes of a neighbourhood.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoodEdge {
    /// Index into [`Neighbourhood::nodes`].
    pub from: usize,
    /// Index into [`Neighbourhood::nodes`].
    pub to: usize,
    /// What it means.
    pub kind: EdgeKind,
    /// On `grants` edges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Its weight.
    pub weight: f64,
}

/// What an identity reaches, breadth first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neighbourhood {
    /// The identity first, then by depth.
    pub nodes: Vec<HoodNode>,
    /// Edges among them.
    pub edges: Vec<HoodEdge>,
    /// Whether nodes beyond `max_depth` or `max_nodes` were left out.
    pub truncated: bool,
}

/// The neighbourhood of `start` in `graph`, at most `max_depth` edges out and
/// `max_nodes` nodes; `None` when `start` is not in the graph.
pub fn neighbourhood(
    graph: &ExposureGraph,
    report: &EciReport,
    start: &str,
    max_depth: usize,
    max_nodes: usize,
) -> Option<Neighbourhood> {
    let origin = graph.node_index(start)?;
    let mut forward: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, edge) in graph.edges().iter().enumerate() {
        forward.entry(edge.from).or_default().push(i);
    }
    // Graph index → neighbourhood index, breadth first.
    let mut seen: HashMap<u32, usize> = HashMap::from([(origin, 0)]);
    let mut order = vec![(origin, 0usize)];
    let mut queue = VecDeque::from([(origin, 0usize)]);
    let mut truncated = false;
    while let Some((at, depth)) = queue.pop_front() {
        for &e in forward.get(&at).map_or(&[][..], Vec::as_slice) {
            let to = graph.edges()[e].to;
            if seen.contains_key(&to) {
                continue;
            }
            if depth + 1 > max_depth || order.len() >= max_nodes {
                truncated = true;
                continue;
            }
            seen.insert(to, order.len());
            order.push((to, depth + 1));
            queue.push_back((to, depth + 1));
        }
    }
    let mut edges = Vec::new();
    for edge in graph.edges() {
        if let (Some(&from), Some(&to)) = (seen.get(&edge.from), seen.get(&edge.to)) {
            edges.push(HoodEdge {
                from,
                to,
                kind: edge.kind,
                access: edge.access,
                weight: edge.weight,
            });
        }
    }
    // On a path: a crown jewel, or anything with an edge to a node on one
    // (to a fixed point: the neighbourhood is small).
    let all = graph.nodes();
    let mut on_path: Vec<bool> = order
        .iter()
        .map(|(g, _)| all[*g as usize].crown_jewel)
        .collect();
    let mut changed = true;
    while changed {
        changed = false;
        for edge in &edges {
            if on_path[edge.to] && !on_path[edge.from] {
                on_path[edge.from] = true;
                changed = true;
            }
        }
    }
    let nodes = order
        .iter()
        .zip(on_path)
        .map(|((g, depth), on_path)| {
            let node = &all[*g as usize];
            HoodNode {
                id: node.id.clone(),
                kind: node.kind,
                depth: *depth,
                crown_jewel: node.crown_jewel,
                sensitivity: node.sensitivity.clone(),
                on_path,
                eci: report.get(&node.id).and_then(|n| n.eci),
            }
        })
        .collect();
    Some(Neighbourhood {
        nodes,
        edges,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eci::compute_eci;
    use crate::eci::pagerank::PprParams;

    const GRAPH: &str = r#"{"nodes":[
        {"id":"spiffe://td/a","kind":"identity"},
        {"id":"role:r","kind":"role"},
        {"id":"role:dead-end","kind":"role"},
        {"id":"db:jewel","kind":"resource","crown_jewel":true,"sensitivity":["pii"]},
        {"id":"bucket:far","kind":"resource"}],
      "edges":[
        {"from":"spiffe://td/a","to":"role:r","kind":"can_assume"},
        {"from":"spiffe://td/a","to":"role:dead-end","kind":"can_assume"},
        {"from":"role:r","to":"db:jewel","kind":"grants","access":"admin"},
        {"from":"db:jewel","to":"bucket:far","kind":"grants","access":"read"}]}"#;

    #[test]
    fn paths_to_crown_jewels_are_marked_and_bounds_truncate() {
        let graph = ExposureGraph::from_json(GRAPH.as_bytes()).unwrap();
        let report = compute_eci(&graph, &PprParams::default(), 0);
        let hood = neighbourhood(&graph, &report, "spiffe://td/a", 5, 100).unwrap();
        let by_id: HashMap<&str, &HoodNode> =
            hood.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        assert_eq!(hood.nodes[0].id, "spiffe://td/a");
        assert!(by_id["spiffe://td/a"].on_path);
        assert!(by_id["role:r"].on_path);
        assert!(!by_id["role:dead-end"].on_path);
        assert!(by_id["db:jewel"].on_path && by_id["db:jewel"].crown_jewel);
        assert!(!by_id["bucket:far"].on_path);
        assert_eq!(by_id["bucket:far"].depth, 3);
        assert_eq!(hood.edges.len(), 4);
        assert!(!hood.truncated);
        assert!(by_id["spiffe://td/a"].eci.is_some());

        let near = neighbourhood(&graph, &report, "spiffe://td/a", 1, 100).unwrap();
        assert_eq!(near.nodes.len(), 3);
        assert!(near.truncated);
        assert!(
            !near.nodes.iter().any(|n| n.on_path),
            "no jewel within one edge"
        );
        let small = neighbourhood(&graph, &report, "spiffe://td/a", 5, 2).unwrap();
        assert_eq!(small.nodes.len(), 2);
        assert!(small.truncated);
        assert!(neighbourhood(&graph, &report, "spiffe://td/nobody", 5, 100).is_none());
    }
}
