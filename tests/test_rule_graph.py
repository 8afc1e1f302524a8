"""The report's rule graph: parsed from Snakemake's DOT, implied edges left out, laid out in layers."""

from __future__ import annotations

from wsss.figures import rule_graph_figure
from wsss.rule_graph import layered_layout, parse_rulegraph, transitive_reduction

DOT = """digraph snakemake_dag {
    graph[bgcolor=white, margin=0];
\t0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
\t1[label = "summary", color = "0.55 0.6 0.85", style="rounded"];
\t2[label = "crf", color = "0.12 0.6 0.85", style="rounded"];
\t3[label = "cams", color = "0.02 0.6 0.85", style="rounded"];
\t4[label = "manifest", color = "0.29 0.6 0.85", style="rounded"];
\t1 -> 0
\t2 -> 0
\t2 -> 1
\t3 -> 2
\t3 -> 1
\t4 -> 3
\t4 -> 0
}"""


def test_the_dot_gives_one_node_per_rule_and_every_edge():
    names, edges = parse_rulegraph(DOT)
    assert names == ["all", "summary", "crf", "cams", "manifest"]
    assert edges == {("summary", "all"), ("crf", "all"), ("crf", "summary"), ("cams", "crf"), ("cams", "summary"),
                     ("manifest", "cams"), ("manifest", "all")}


def test_edges_a_longer_path_implies_are_left_out():
    _, edges = parse_rulegraph(DOT)
    assert transitive_reduction(edges) == {("manifest", "cams"), ("cams", "crf"), ("crf", "summary"),
                                           ("summary", "all")}
    diamond = {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert transitive_reduction(diamond) == diamond, "two paths of equal length are both kept"


def test_layers_follow_the_longest_path_and_producers_sit_above_consumers(tmp_path):
    edges = {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d"), ("x", "c")}
    layout = layered_layout(["d", "c", "b", "a", "x"], transitive_reduction(edges))
    assert {node: layer for node, (layer, _) in layout.items()} == {"a": 0, "x": 0, "b": 1, "c": 1, "d": 2}
    assert sorted(position for layer, position in layout.values() if layer == 1) == [-0.5, 0.5], "centred"
    assert all(layout[s][0] < layout[t][0] for s, t in edges)
    rule_graph_figure(layout, transitive_reduction(edges), tmp_path / "g.svg", "rules")
    svg = (tmp_path / "g.svg").read_text()
    assert all(f">{name}<" in svg for name in "abcdx")
