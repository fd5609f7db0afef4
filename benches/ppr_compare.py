#!/usr/bin/env python3
"""The Python half of ppr_compare: time networkx and igraph personalized
PageRank on the reversed, weighted edge list Mintguard wrote, and compare
their vectors with Mintguard's. Prints a table, then one JSON line.

usage: ppr_compare.py EDGES SCORES
  EDGES: first line N, second line the crown-jewel indices, then "u v w" lines
  SCORES: Mintguard's score per node, one per line
"""

import json
import sys
import time


def load(path):
    with open(path) as f:
        n = int(f.readline())
        jewels = [int(x) for x in f.readline().split()]
        edges = [(int(u), int(v), float(w)) for u, v, w in (line.split() for line in f)]
    return n, jewels, edges


def main():
    n, jewels, edges = load(sys.argv[1])
    with open(sys.argv[2]) as f:
        ours = [float(x) for x in f]
    report = {"nodes": n, "edges": len(edges)}

    import networkx as nx
    t = time.perf_counter()
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for u, v, w in edges:  # parallel edges add up, as in Mintguard
        if g.has_edge(u, v):
            g[u][v]["weight"] += w
        else:
            g.add_edge(u, v, weight=w)
    load_s = time.perf_counter() - t
    p = {j: 1.0 / len(jewels) for j in jewels}
    t = time.perf_counter()
    pr = nx.pagerank(g, alpha=0.85, personalization=p, weight="weight", tol=1e-13, max_iter=100000)
    nx_s = time.perf_counter() - t
    diff = max(abs(pr[i] - ours[i]) for i in range(n))
    report["networkx"] = {"version": nx.__version__, "build_graph_s": load_s, "pagerank_s": nx_s, "max_abs_diff": diff}
    print(f"networkx {nx.__version__:<8} build   {load_s:>10.3} s")
    print(f"networkx pagerank        {nx_s:>10.3} s  max |diff| vs mintguard {diff:.2e}")

    try:
        import igraph as ig
    except ImportError as e:
        report["igraph"] = {"error": f"not installed: {e}"}
        print("igraph: not installed")
    else:
        t = time.perf_counter()
        h = ig.Graph(n=n, edges=[(u, v) for u, v, _ in edges], directed=True)
        h.es["weight"] = [w for _, _, w in edges]
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        scores = h.personalized_pagerank(directed=True, damping=0.85, reset_vertices=jewels, weights="weight",
                                         implementation="prpack")
        ig_s = time.perf_counter() - t
        diff = max(abs(scores[i] - ours[i]) for i in range(n))
        report["igraph"] = {"version": ig.__version__, "build_graph_s": load_s, "pagerank_s": ig_s, "max_abs_diff": diff}
        print(f"igraph {ig.__version__:<10} build   {load_s:>10.3} s")
        print(f"igraph prpack            {ig_s:>10.3} s  max |diff| vs mintguard {diff:.2e}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
