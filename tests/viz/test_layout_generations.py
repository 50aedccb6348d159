"""The layout's layers come from its own topological generations: networkx's, without
importing networkx."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from dgraph.viz.layout import _generations


def test_generations_are_networkx_topological_generations() -> None:
    rng = random.Random(0)
    for _ in range(200):
        names = [f"n{i}" for i in range(rng.randint(1, 12))]
        rng.shuffle(names)
        dag: dict[str, dict[str, None]] = {name: {} for name in names}
        for i, tail in enumerate(names):
            for head in names[i + 1:]:
                if rng.random() < 0.3:
                    dag[tail][head] = None
        reference = nx.DiGraph()
        reference.add_nodes_from(names)
        reference.add_edges_from((t, h) for t, heads in dag.items() for h in heads)
        expected = {name: index
                    for index, layer in enumerate(nx.topological_generations(reference))
                    for name in layer}
        assert _generations(dag) == expected


def test_a_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="^the layout's graph has a cycle after its back "
                                         "edges were reversed$"):
        _generations({"a": {"b": None}, "b": {"a": None}})
