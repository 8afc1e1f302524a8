"""The workflow's rule graph (one node per rule): read from Snakemake's ``--rulegraph`` DOT, reduced to the
edges no longer path implies, and laid out in layers from the first rules down to ``all``."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"')
_EDGE = re.compile(r"^\s*(\d+) -> (\d+)")

Edges = set[tuple[str, str]]


def parse_rulegraph(dot: str) -> tuple[list[str], Edges]:
    """Rule names (in the DOT's order) and (producer, consumer) edges of a ``snakemake --rulegraph`` output."""
    names: dict[str, str] = {}
    numbered: list[tuple[str, str]] = []
    for line in dot.splitlines():
        if node := _NODE.match(line):
            names[node[1]] = node[2]
        elif edge := _EDGE.match(line):
            numbered.append((edge[1], edge[2]))
    return list(names.values()), {(names[a], names[b]) for a, b in numbered}


def _successors(edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """Node -> the nodes its edges point to."""
    following: dict[str, set[str]] = {}
    for source, target in edges:
        following.setdefault(source, set()).add(target)
    return following


def transitive_reduction(edges: Edges) -> Edges:
    """The edges of a DAG that no longer path between the same two nodes implies."""
    following = _successors(edges)

    def reachable(start: str, skip: tuple[str, str]) -> set[str]:
        seen, stack = set(), [n for n in following.get(start, ()) if (start, n) != skip]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(following.get(node, ()))
        return seen

    return {(source, target) for source, target in edges if target not in reachable(source, (source, target))}


def layered_layout(nodes: Iterable[str], edges: Edges, sweeps: int = 4) -> dict[str, tuple[int, float]]:
    """Node -> (layer, position in layer): a node's layer is its longest path from a first rule; within a layer
    nodes are ordered by the mean position of their producers (a few sweeps of the barycentre heuristic)."""
    nodes = list(dict.fromkeys(nodes))
    preceding: dict[str, set[str]] = {node: set() for node in nodes}
    for source, target in edges:
        preceding[target].add(source)
    layer: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in layer:
            layer[node] = 1 + max((depth(p) for p in preceding[node]), default=-1)
        return layer[node]

    for node in nodes:
        depth(node)
    layers: dict[int, list[str]] = {}
    for node in sorted(nodes):
        layers.setdefault(layer[node], []).append(node)
    position = {node: float(i) for members in layers.values() for i, node in enumerate(members)}
    for _ in range(sweeps):
        for index in sorted(layers)[1:]:
            members = layers[index]
            centre = {node: (sum(position[p] for p in preceding[node]) / len(preceding[node])
                             if preceding[node] else position[node]) for node in members}
            members.sort(key=lambda node: (centre[node], node))
            position.update({node: float(i) for i, node in enumerate(members)})
    return {node: (layer[node], position[node] - (len(layers[layer[node]]) - 1) / 2) for node in nodes}

