#!/usr/bin/env python3
"""Golden personalized-PageRank vectors for Mintguard's ECI, from networkx.

Writes one fixture per graph into OUT_DIR (default policy/tests/fixtures/ppr):

    {"now": RFC 3339, "alpha": 0.85, "half_life_days": H,
     "graph": <exposure graph in Mintguard's JSON format>,
     "expected": {"<node id>": ppr, ...}}

networkx computes PPR on the *reversed* graph: an edge a -> b of the exposure
graph becomes b -> a with weight  weight * 0.5**(age_days / H) * capacitance(a);
parallel edges add up; personalization is uniform over crown jewels; dangling
nodes (out-weight 0) send their mass to the personalization vector
(networkx's dangling=None). tol=1e-13, max_iter=100000.

Run with the Python from tests/peers.sh (it has networkx and scipy):
    tests/peers.sh bash -c '$MINTGUARD_PYTHON tests/ppr_golden.py'
"""

import datetime as dt
import json
import os
import random
import sys

import networkx as nx

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.timezone.utc)
EDGE_KINDS = ["member_of", "can_assume", "grants", "impersonates", "delegates"]
ACCESS = ["read", "write", "admin"]


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_ppr(graph, alpha, half_life):
    cap = {n["id"]: n.get("capacitance", 1.0) for n in graph["nodes"]}
    g = nx.DiGraph()
    g.add_nodes_from(cap)
    for e in graph["edges"]:
        w = e.get("weight", 1.0)
        if "last_used" in e:
            used = dt.datetime.strptime(e["last_used"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
            age_days = max(0.0, (NOW - used).total_seconds() / 86400.0)
            w *= 0.5 ** (age_days / half_life)
        w *= cap[e["from"]]
        u, v = e["to"], e["from"]  # reversed
        if g.has_edge(u, v):
            g[u][v]["weight"] += w
        else:
            g.add_edge(u, v, weight=w)
    jewels = [n["id"] for n in graph["nodes"] if n.get("crown_jewel")]
    p = {n: (1.0 / len(jewels) if n in jewels else 0.0) for n in g.nodes}
    return nx.pagerank(g, alpha=alpha, personalization=p, weight="weight", tol=1e-13, max_iter=100000)


def hand_graph():
    """The README's example, with decay and capacitance on every kind of edge."""
    return {
        "nodes": [
            {"id": "spiffe://example.org/ns/pay/sa/api", "kind": "identity",
             "hygiene": {"rotation": 0.2, "scope": 0.5, "authentication": 0.1}},
            {"id": "spiffe://example.org/ns/ci/sa/deploy", "kind": "identity", "capacitance": 0.5},
            {"id": "spiffe://example.org/ns/ops/sa/oncall", "kind": "identity", "capacitance": 2.0},
            {"id": "role:prod-db-admin", "kind": "role"},
            {"id": "role:deployer", "kind": "role", "capacitance": 0.0},
            {"id": "role:reader", "kind": "role"},
            {"id": "db:payments", "kind": "resource", "crown_jewel": True, "sensitivity": ["pii", "financial"]},
            {"id": "kms:root", "kind": "resource", "crown_jewel": True},
            {"id": "bucket:logs", "kind": "resource"},
        ],
        "edges": [
            {"from": "spiffe://example.org/ns/pay/sa/api", "to": "role:prod-db-admin", "kind": "can_assume",
             "weight": 1.0, "last_used": "2026-11-01T00:00:00Z"},
            {"from": "role:prod-db-admin", "to": "db:payments", "kind": "grants", "access": "admin"},
            {"from": "spiffe://example.org/ns/ci/sa/deploy", "to": "role:deployer", "kind": "can_assume",
             "weight": 3.0, "last_used": "2026-06-01T08:30:00Z"},
            {"from": "role:deployer", "to": "kms:root", "kind": "grants", "access": "write"},
            {"from": "role:deployer", "to": "db:payments", "kind": "grants", "access": "read", "weight": 0.25},
            {"from": "spiffe://example.org/ns/ops/sa/oncall", "to": "spiffe://example.org/ns/pay/sa/api",
             "kind": "impersonates", "weight": 2.0},
            {"from": "spiffe://example.org/ns/ops/sa/oncall", "to": "spiffe://example.org/ns/pay/sa/api",
             "kind": "delegates", "weight": 0.5, "last_used": "2025-11-24T12:00:00Z"},
            {"from": "spiffe://example.org/ns/ops/sa/oncall", "to": "role:reader", "kind": "member_of"},
            {"from": "role:reader", "to": "bucket:logs", "kind": "grants", "access": "read"},
            {"from": "bucket:logs", "to": "kms:root", "kind": "delegates", "weight": 0.1},
        ],
    }


def random_graph(seed, n, m, jewels, decay=True, capacitance=True):
    rng = random.Random(seed)
    kinds = ["identity", "role", "resource"]
    nodes = []
    for i in range(n):
        node = {"id": f"n{i}", "kind": rng.choice(kinds)}
        if capacitance and rng.random() < 0.3:
            node["capacitance"] = rng.choice([0.0, 0.5, 1.5, 2.0, rng.uniform(0.01, 3.0)])
        nodes.append(node)
    for j in rng.sample(range(n), jewels):
        nodes[j]["kind"] = "resource"
        nodes[j]["crown_jewel"] = True
        nodes[j]["sensitivity"] = ["pii"]
    edges = []
    for _ in range(m):
        a, b = rng.randrange(n), rng.randrange(n)
        kind = rng.choice(EDGE_KINDS)
        e = {"from": f"n{a}", "to": f"n{b}", "kind": kind}
        if kind == "grants":
            e["access"] = rng.choice(ACCESS)
        if rng.random() < 0.7:
            e["weight"] = round(rng.uniform(0.05, 5.0), 6)
        if decay and rng.random() < 0.6:
            used = NOW - dt.timedelta(seconds=rng.randrange(0, 400 * 86400))
            e["last_used"] = rfc3339(used)
        edges.append(e)
        if rng.random() < 0.05:  # a parallel edge
            edges.append(dict(e))
    return {"nodes": nodes, "edges": edges}


CASES = [
    ("hand", hand_graph(), 30.0),
    ("random-plain", random_graph(1, 60, 150, 2, decay=False, capacitance=False), 30.0),
    ("random-decay-capacitance", random_graph(2, 300, 1200, 4), 30.0),
    ("random-sparse-dangling", random_graph(3, 400, 300, 3), 7.0),
    ("random-dense", random_graph(4, 120, 2000, 1), 90.0),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "policy", "tests", "fixtures", "ppr")
    os.makedirs(out, exist_ok=True)
    for name, graph, half_life in CASES:
        expected = expected_ppr(graph, 0.85, half_life)
        fixture = {"now": rfc3339(NOW), "alpha": 0.85, "half_life_days": half_life,
                   "graph": graph, "expected": expected}
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(fixture, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(graph['nodes'])} nodes, {len(graph['edges'])} edges, networkx {nx.__version__}")


if __name__ == "__main__":
    main()
