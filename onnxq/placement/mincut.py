"""Exact minimisation of a binary labelling energy with submodular pairwise terms (s-t min cut,
Dinic's max flow). Deterministic: ties go to label 1."""

from __future__ import annotations

from collections import deque

__all__ = ["Energy"]

_INF = float("inf")


class Energy:
    """E(x) = Σ unary_v(x_v) + Σ pair_uv(x_u, x_v), x ∈ {0, 1}, with every pair submodular:
    pair(0,0) + pair(1,1) ≤ pair(0,1) + pair(1,0)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.unary = [[0.0, 0.0] for _ in range(n)]
        self.pairs: list[tuple[int, int, float]] = []  # cost paid when x_u = 0, x_v = 1

    def add_unary(self, v: int, cost0: float, cost1: float) -> None:
        self.unary[v][0] += cost0
        self.unary[v][1] += cost1

    def add_pair(self, u: int, v: int, a: float, b: float, c: float, d: float) -> None:
        """pair(0,0)=a, pair(0,1)=b, pair(1,0)=c, pair(1,1)=d."""
        w = b + c - a - d
        if w < -1e-9:
            raise ValueError("pairwise term is not submodular")
        self.add_unary(u, 0.0, c - a)
        self.add_unary(v, 0.0, d - c)
        self.add_unary(u, a, a)  # constant, kept so energies are comparable
        if w > 0:
            self.pairs.append((u, v, w))

    def value(self, x: list[int]) -> float:
        return (sum(self.unary[v][x[v]] for v in range(self.n))
                + sum(w for u, v, w in self.pairs if x[u] == 0 and x[v] == 1))

    def minimize(self) -> list[int]:
        """The labelling of least energy. Node v is 0 when it stays on the source side."""
        s, t = self.n, self.n + 1
        graph: list[list[int]] = [[] for _ in range(self.n + 2)]
        to: list[int] = []
        cap: list[float] = []

        def edge(a: int, b: int, c: float) -> None:
            graph[a].append(len(to))
            to.append(b)
            cap.append(c)
            graph[b].append(len(to))
            to.append(a)
            cap.append(0.0)

        for v, (c0, c1) in enumerate(self.unary):
            low = min(c0, c1)
            if c1 - low > 0:
                edge(s, v, c1 - low)  # cut (paid) when v ends on the sink side: x_v = 1
            if c0 - low > 0:
                edge(v, t, c0 - low)  # paid when v stays with the source: x_v = 0
        for u, v, w in self.pairs:
            edge(u, v, w)
        _dinic(graph, to, cap, s, t)
        seen = [False] * (self.n + 2)
        seen[s] = True
        queue = deque([s])
        while queue:
            a = queue.popleft()
            for e in graph[a]:
                if cap[e] > 1e-12 and not seen[to[e]]:
                    seen[to[e]] = True
                    queue.append(to[e])
        return [0 if seen[v] else 1 for v in range(self.n)]


def _dinic(graph: list[list[int]], to: list[int], cap: list[float], s: int, t: int) -> None:
    n = len(graph)
    while True:
        level = [-1] * n
        level[s] = 0
        queue = deque([s])
        while queue:
            a = queue.popleft()
            for e in graph[a]:
                if cap[e] > 1e-12 and level[to[e]] < 0:
                    level[to[e]] = level[a] + 1
                    queue.append(to[e])
        if level[t] < 0:
            return
        it = [0] * n
        while (f := _push(graph, to, cap, level, it, s, t, _INF)) > 1e-12:
            del f


def _push(graph, to, cap, level, it, s: int, t: int, limit: float) -> float:
    """One augmenting path in the level graph (iterative DFS), its flow pushed."""
    path: list[int] = []
    a = s
    while True:
        if a == t:
            flow = min([limit] + [cap[e] for e in path])
            for e in path:
                cap[e] -= flow
                cap[e ^ 1] += flow
            return flow
        edges = graph[a]
        while it[a] < len(edges):
            e = edges[it[a]]
            if cap[e] > 1e-12 and level[to[e]] == level[a] + 1:
                break
            it[a] += 1
        else:
            if not path:
                return 0.0
            level[a] = -1  # dead end
            e = path.pop()
            a = to[e ^ 1]
            it[a] += 1
            continue
        path.append(edges[it[a]])
        a = to[edges[it[a]]]
