#!/usr/bin/env python3
"""Import circles among the broker's top-level modules.

Every `crate::<module>` a file in broker/src/<module>(.rs|/) names outside
its `#[cfg(test)]` modules is an edge; a strongly connected component of
more than one module is a circle. Exits 1 listing each circle (with one
file:line per edge), or prints the module order bottom-up and exits 0.

    tests/import_circles.py [--allow a,b ...]   (an allowed circle is reported, not failed)
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "broker" / "src"
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` groups.
GROUP = re.compile(r"\buse\s+crate::\{([^}]*)\}", re.S)


def module_of(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] == "bin":
        return None
    if rel.name == "lib.rs" and len(rel.parts) == 1:
        return None
    return rel.parts[0].removesuffix(".rs")


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod … { … }` blocks and `#[cfg(test)] mod x;` lines."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*([;{])", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        if m.group(3) == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def edges():
    found = defaultdict(dict)  # from -> to -> "file:line"
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "tests.rs":
            continue
        src = module_of(path)
        if src is None:
            continue
        # Comments (docs included) name modules without importing them.
        text = re.sub(r"//[^\n]*", "", strip_tests(path.read_text()))
        for m in REF.finditer(text):
            dst = m.group(1)
            if dst not in (src, "self", "super"):
                line = text.count("\n", 0, m.start()) + 1
                found[src].setdefault(dst, f"{path.relative_to(SRC.parent.parent)}:{line}")
        for g in GROUP.finditer(text):
            for item in g.group(1).split(","):
                dst = item.strip().split("::")[0].strip()
                if dst and dst not in (src, "self", "super"):
                    line = text.count("\n", 0, g.start()) + 1
                    found[src].setdefault(dst, f"{path.relative_to(SRC.parent.parent)}:{line}")
    return found


def components(graph):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(graph) | {d for v in graph.values() for d in v}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    allowed = set()
    args = sys.argv[1:]
    while args:
        if args[0] == "--allow" and len(args) > 1:
            allowed.add(frozenset(args[1].split(",")))
            args = args[2:]
        else:
            sys.exit(f"usage: {sys.argv[0]} [--allow a,b ...]")
    graph = edges()
    circles = [c for c in components(graph) if len(c) > 1]
    failed = False
    for c in circles:
        tag = "allowed circle" if frozenset(c) in allowed else "circle"
        failed |= frozenset(c) not in allowed
        print(f"{tag}: {' <-> '.join(c)}")
        for a in c:
            for b in c:
                if b in graph.get(a, {}):
                    print(f"    {a} -> {b}   ({graph[a][b]})")
    if not circles:
        order = [c[0] for c in components(graph)]
        print("no import circles among broker/src modules; bottom-up:", " ".join(order))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
