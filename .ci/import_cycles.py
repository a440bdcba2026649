"""Fail when the product's modules import each other in a cycle (ruff has no lint rule for it).

Reads `ruff analyze graph` (JSON: each file and the project files it imports, function-level imports
included) on stdin; prints every cycle (a strongly connected group of two or more files) and exits 1.
Tests and migrations are left out. ALLOWED names the cycles we keep on purpose, each with its reason.
"""

import json
import sys

ALLOWED = {
    # The worker entry point imports recover only inside the spawned child, once Django is set up there;
    # recover imports the entry point to hand it to multiprocessing.
    frozenset({"recovery/jobs/__init__.py", "recovery/jobs/recover.py"}),
}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of two or more files, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
    return found


def main() -> int:
    raw = json.load(sys.stdin)
    kept = {name for name in raw if "/tests/" not in name and "/migrations/" not in name}
    graph = {name: [target for target in raw[name] if target in kept] for name in kept}
    bad = [group for group in cycles(graph) if frozenset(group) not in ALLOWED]
    for group in bad:
        print("import cycle: " + " -> ".join(group), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
