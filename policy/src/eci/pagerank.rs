//! Personalized PageRank over the reversed exposure graph.
//!
//! Mass teleports uniformly to the crown jewels and flows *backwards* along
//! edges, so a node's score measures how much crown-jewel value it can reach.
//!
//! - The reversed edge `u → v` (an original edge `v → u`) weighs
//!   `weight × 0.5^(age_days / half_life_days) × capacitance(v)`, `age_days`
//!   from the edge's `last_used` to `now` (no `last_used`: no decay; a future
//!   one: age 0). Parallel edges add up.
//! - A node whose outgoing (reversed) weights sum to 0 is dangling; its mass
//!   goes to the teleport vector, as networkx does with `dangling=None`.
//! - `x ← α (x·P + Σ_dangling x · p) + (1 − α) p`, iterated until the L1 change
//!   is below `tolerance` (default 1e-12). No crown jewels: every score is 0.
//!
//! The transition matrix is stored once in CSR form (by receiving node), and
//! the iteration reuses two buffers: nothing is allocated per iteration.

use serde::{Deserialize, Serialize};

use super::graph::ExposureGraph;

/// PageRank parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PprParams {
    /// Damping factor α. Default 0.85.
    pub alpha: f64,
    /// Half-life of edge recency decay, in days (> 0). Default 30.
    pub half_life_days: f64,
    /// Stop when the L1 change of an iteration is below this. Default 1e-12.
    pub tolerance: f64,
    /// Give up after this many iterations. Default 10 000.
    pub max_iterations: u32,
}

impl Default for PprParams {
    fn default() -> Self {
        Self {
            alpha: 0.85,
            half_life_days: 30.0,
            tolerance: 1e-12,
            max_iterations: 10_000,
        }
    }
}

impl PprParams {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), crate::error::PolicyError> {
        let bad = |key: &str, reason: String| crate::error::PolicyError::Config {
            key: format!("eci.{key}"),
            reason,
        };
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(bad(
                "alpha",
                format!("must be in (0, 1), got {}", self.alpha),
            ));
        }
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            return Err(bad(
                "half_life_days",
                format!("must be > 0, got {}", self.half_life_days),
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(bad(
                "tolerance",
                format!("must be > 0, got {}", self.tolerance),
            ));
        }
        Ok(())
    }
}

/// The reversed, normalized transition matrix in CSR form, ready to iterate.
#[derive(Clone, Debug)]
pub struct PprMatrix {
    /// For receiving node v, `offsets[v]..offsets[v+1]` indexes its in-entries.
    offsets: Vec<u32>,
    /// The sending node u of each entry.
    sources: Vec<u32>,
    /// `w(u → v) / Σ_out w(u)` of each entry.
    probs: Vec<f64>,
    /// Nodes whose outgoing weight sums to 0.
    dangling: Vec<u32>,
    /// Crown jewels (the teleport support).
    jewels: Vec<u32>,
}

/// The outcome of a PageRank run.
#[derive(Clone, Debug, PartialEq)]
pub struct PprResult {
    /// Score per node index; sums to 1 (or all 0 without crown jewels).
    pub scores: Vec<f64>,
    /// Iterations run.
    pub iterations: u32,
    /// The L1 change of the last iteration.
    pub last_delta: f64,
    /// Whether `last_delta < tolerance`.
    pub converged: bool,
}

fn decay(last_used: Option<i64>, now: i64, half_life_days: f64) -> f64 {
    match last_used {
        None => 1.0,
        Some(t) => {
            let age_days = (now.saturating_sub(t)).max(0) as f64 / 86_400.0;
            0.5f64.powf(age_days / half_life_days)
        }
    }
}

/// The reversed, weighted edges `(u, v, w)` PageRank walks, in edge order:
/// for each original edge `v → u`, `w = weight × decay × capacitance(v)`.
pub fn reversed_edges<'a>(
    graph: &'a ExposureGraph,
    params: &'a PprParams,
    now: i64,
) -> impl Iterator<Item = (u32, u32, f64)> + 'a {
    graph.edges().iter().map(move |e| {
        let receiver = &graph.nodes()[e.from as usize];
        let w = e.weight * decay(e.last_used, now, params.half_life_days) * receiver.capacitance;
        (e.to, e.from, w)
    })
}

impl PprMatrix {
    /// Builds the matrix of `graph` at time `now` (seconds since the epoch).
    pub fn build(graph: &ExposureGraph, params: &PprParams, now: i64) -> Self {
        let n = graph.nodes().len();
        let edges = graph.edges();
        // Reversed edge u → v for each original edge v → u: u = e.to, v = e.from.
        let mut out_sum = vec![0.0f64; n];
        let mut weights = Vec::with_capacity(edges.len());
        for (u, _, w) in reversed_edges(graph, params, now) {
            out_sum[u as usize] += w;
            weights.push(w);
        }
        // Count in-entries per receiving node v (= e.from), then fill.
        let mut offsets = vec![0u32; n + 1];
        for e in edges {
            offsets[e.from as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor: Vec<u32> = offsets[..n].to_vec();
        let mut sources = vec![0u32; edges.len()];
        let mut probs = vec![0.0f64; edges.len()];
        for (e, w) in edges.iter().zip(weights) {
            let v = e.from as usize;
            let slot = cursor[v] as usize;
            cursor[v] += 1;
            sources[slot] = e.to;
            let total = out_sum[e.to as usize];
            probs[slot] = if total > 0.0 { w / total } else { 0.0 };
        }
        let dangling = (0..n as u32)
            .filter(|u| out_sum[*u as usize] <= 0.0)
            .collect();
        let jewels = graph
            .nodes()
            .iter()
            .enumerate()
            .filter(|(_, node)| node.crown_jewel)
            .map(|(i, _)| i as u32)
            .collect();
        Self {
            offsets,
            sources,
            probs,
            dangling,
            jewels,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether the matrix has no nodes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any node is a crown jewel.
    pub fn has_crown_jewels(&self) -> bool {
        !self.jewels.is_empty()
    }

    /// One iteration from `x` into `next`; returns the L1 change.
    pub fn step(&self, alpha: f64, x: &[f64], next: &mut [f64]) -> f64 {
        let dangling_mass: f64 = self.dangling.iter().map(|u| x[*u as usize]).sum();
        for (v, out) in next.iter_mut().enumerate() {
            let start = self.offsets[v] as usize;
            let end = self.offsets[v + 1] as usize;
            let mut acc = 0.0;
            for (u, p) in self.sources[start..end].iter().zip(&self.probs[start..end]) {
                acc += x[*u as usize] * p;
            }
            *out = alpha * acc;
        }
        let teleport = (alpha * dangling_mass + (1.0 - alpha)) / self.jewels.len() as f64;
        for j in &self.jewels {
            next[*j as usize] += teleport;
        }
        x.iter().zip(next.iter()).map(|(a, b)| (a - b).abs()).sum()
    }

    /// Iterates to convergence.
    pub fn run(&self, params: &PprParams) -> PprResult {
        let n = self.len();
        if self.jewels.is_empty() {
            return PprResult {
                scores: vec![0.0; n],
                iterations: 0,
                last_delta: 0.0,
                converged: true,
            };
        }
        // Start from the teleport vector.
        let mut x = vec![0.0f64; n];
        let share = 1.0 / self.jewels.len() as f64;
        for j in &self.jewels {
            x[*j as usize] = share;
        }
        let mut next = vec![0.0f64; n];
        let mut iterations = 0;
        let mut delta = f64::INFINITY;
        while iterations < params.max_iterations {
            delta = self.step(params.alpha, &x, &mut next);
            std::mem::swap(&mut x, &mut next);
            iterations += 1;
            if delta < params.tolerance {
                break;
            }
        }
        PprResult {
            scores: x,
            iterations,
            last_delta: delta,
            converged: delta < params.tolerance,
        }
    }
}

/// Personalized PageRank of `graph` at `now`; see the module docs.
pub fn personalized_pagerank(graph: &ExposureGraph, params: &PprParams, now: i64) -> PprResult {
    PprMatrix::build(graph, params, now).run(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eci::graph::{Edge, EdgeKind, Hygiene, Node, NodeKind};
    use proptest::prelude::*;

    fn node(id: &str, jewel: bool) -> Node {
        Node {
            id: id.into(),
            kind: if jewel {
                NodeKind::Resource
            } else {
                NodeKind::Role
            },
            capacitance: 1.0,
            crown_jewel: jewel,
            sensitivity: vec![],
            hygiene: Hygiene::default(),
        }
    }

    fn edge(from: u32, to: u32, weight: f64) -> Edge {
        Edge {
            from,
            to,
            kind: EdgeKind::CanAssume,
            access: None,
            weight,
            last_used: None,
        }
    }

    #[test]
    fn chain_flows_back_from_the_jewel() {
        // a → b → jewel. Reversed: jewel → b → a; a is dangling.
        let mut g = ExposureGraph::new();
        for (id, j) in [("a", false), ("b", false), ("jewel", true)] {
            g.add_node(node(id, j)).unwrap();
        }
        g.add_edge(edge(0, 1, 1.0)).unwrap();
        g.add_edge(edge(1, 2, 1.0)).unwrap();
        let r = personalized_pagerank(&g, &PprParams::default(), 0);
        assert!(r.converged);
        let sum: f64 = r.scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12);
        // Closed form: x_j = (1-α) + α x_a, x_b = α x_j, x_a = α x_b.
        let a = 0.85f64;
        let j = (1.0 - a) / (1.0 - a * a * a);
        assert!((r.scores[2] - j).abs() < 1e-10);
        assert!((r.scores[1] - a * j).abs() < 1e-10);
        assert!((r.scores[0] - a * a * j).abs() < 1e-10);
    }

    #[test]
    fn no_crown_jewels_gives_zero() {
        let mut g = ExposureGraph::new();
        g.add_node(node("a", false)).unwrap();
        let r = personalized_pagerank(&g, &PprParams::default(), 0);
        assert_eq!(r.scores, vec![0.0]);
    }

    #[test]
    fn decay_and_capacitance_shift_mass() {
        // jewel reached from a (fresh) and b (stale). Reversed jewel → a, jewel → b.
        let mut g = ExposureGraph::new();
        for (id, j) in [("a", false), ("b", false), ("jewel", true)] {
            g.add_node(node(id, j)).unwrap();
        }
        g.add_edge(Edge {
            last_used: Some(0),
            ..edge(0, 2, 1.0)
        })
        .unwrap();
        g.add_edge(Edge {
            last_used: Some(-30 * 86_400),
            ..edge(1, 2, 1.0)
        })
        .unwrap();
        let r = personalized_pagerank(&g, &PprParams::default(), 0);
        // One half-life: b's edge weighs half of a's.
        assert!((r.scores[0] / r.scores[1] - 2.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn scores_sum_to_one(
            n in 2usize..30,
            raw_edges in proptest::collection::vec((0usize..30, 0usize..30, 0.01f64..10.0), 0..80),
            jewels in proptest::collection::vec(0usize..30, 1..4),
        ) {
            let mut g = ExposureGraph::new();
            for i in 0..n {
                g.add_node(node(&format!("n{i}"), jewels.iter().any(|j| j % n == i))).unwrap();
            }
            for (a, b, w) in raw_edges {
                g.add_edge(edge((a % n) as u32, (b % n) as u32, w)).unwrap();
            }
            let r = personalized_pagerank(&g, &PprParams::default(), 0);
            prop_assert!(r.converged);
            let sum: f64 = r.scores.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
            prop_assert!(r.scores.iter().all(|s| *s >= 0.0));
        }
    }
}
