"""Large specs: memory per node is bounded, work grows linearly, and every location is kept.

Memory is measured with tracemalloc (what Python allocates, independent of the machine's
load); linearity as the ratio of the lines of dgraph's spec and graph code executed for two
spec sizes, never as wall time. The compact source map (dgraph.spec._positions) is checked
against the path -> Location dict that the spec reader kept before it, including ``extends``
layers and ``--set`` overrides.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

import pytest

from dgraph.errors import Location
from dgraph.graph import validate
from dgraph.spec import load_spec, source
from dgraph.spec.source import apply_overrides, load_raw, parse_text

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from validate_scale import make_dense_spec, make_spec  # noqa: E402

DGRAPH = Path(load_spec.__code__.co_filename).resolve().parents[1]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _traced(fn):
    """(result, bytes still allocated after ``fn``, peak bytes during it)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = fn()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, current - start, peak - start


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One small spec loaded and validated first: imports, plug-ins and pydantic schemas."""
    path = tmp_path_factory.mktemp("warm") / "warm.yaml"
    path.write_text(make_spec(60)[0])
    validate(load_spec(path))
    return path


def test_a_large_spec_takes_a_bounded_number_of_bytes_per_node(tmp_path, warm):
    # 3,000 nodes, 49,000 located values and keys. Before the compact source map (and the
    # shared dicts and sets of the models and the graph) this kept 7.5 kB a node once
    # validated and peaked at 7.9 kB (plus a 64 MiB read buffer); then about 2.6 and 3.2 kB,
    # now 1.6 and 1.9 kB (the tighter bound is the next test's).
    nodes = 3000
    path = _write(tmp_path, "big.yaml", make_spec(nodes)[0])
    (spec, graph), kept, peak = _traced(lambda: (lambda s: (s, validate(s)[0]))(
        load_spec(path)))
    assert len(graph.nodes) == nodes
    assert kept / nodes < 3500, f"{kept / nodes:.0f} bytes a node kept"
    assert peak / nodes < 4000, f"{peak / nodes:.0f} bytes a node at the peak"


@pytest.mark.parametrize(("dense", "kept_bound", "peak_bound"),
                         [(None, 2000, 2300), ("json", 1550, 1800)])
def test_a_validated_spec_keeps_its_data_once(tmp_path, warm, dense, kept_bound, peak_bound):
    # 6,000 nodes. Before each node's data was kept once (raw node mappings beside the
    # models, a params model per node, a Location per node and edge, output-port dicts and
    # Ports per generic op, a list per node and direction of edges, a dict of port params per
    # node while shapes are unified) the ladder kept 2.55 kB a node and peaked at 3.14 kB,
    # the dense JSON form 2.48 and 2.88 kB; now 1.61 / 1.91 and 1.35 / 1.58 kB.
    nodes = 6000
    text = make_dense_spec(nodes, dense)[0] if dense else make_spec(nodes)[0]
    path = _write(tmp_path, f"big.{dense or 'yaml'}", text)
    del text
    (spec, graph), kept, peak = _traced(lambda: (lambda s: (s, validate(s)[0]))(
        load_spec(path)))
    assert len(graph.nodes) == nodes
    assert kept / nodes < kept_bound, f"{kept / nodes:.0f} bytes a node kept"
    assert peak / nodes < peak_bound, f"{peak / nodes:.0f} bytes a node at the peak"


def test_nodes_and_edges_are_located_when_asked(tmp_path, warm):
    # Nodes and edges keep the spec's source map, not a Location each; what they give is
    # what the source map gives for the node's key and for the input that makes the edge.
    path = _write(tmp_path, "s.yaml", make_spec(40)[0])
    spec = load_spec(path)
    graph = validate(spec)[0]
    assert str(graph.nodes["m3"].location) == f"{path}:8:3"
    edge = next(e for e in graph.edges if e.dst == "m3")
    assert str(edge) == "p2.y -> m3.x"
    assert str(edge.location) == f"{path}:8:102"  # the value p2.y
    for node in graph.nodes.values():
        assert node.location == spec.source.key_where(("nodes", node.name))
    for other in graph.edges:
        assert other.location == spec.source.where(
            ("nodes", other.dst, "inputs", other.dst_port))
    assert graph.nodes["data"].taps == {} and graph.edges_into("m3") == [edge]


def test_spec_raw_gives_the_nodes_as_written(tmp_path):
    # The node mappings that the models repeat are not kept twice; spec.raw makes them anew,
    # keys in the order written, with the models' very params and inputs dicts.
    path = _write(tmp_path, "s.yaml", "dgraph: 1\nnodes:\n"
                  "  d: {kind: data, type: digits, params: {batch_size: 8}}\n"
                  "  m: {inputs: {x: d.x}, type: mlp, kind: model, params: {in_features: 64, "
                  "hidden: [8], num_classes: 10}, frozen: false}\n"
                  "  s: {kind: model, shares: m, inputs: {x: d.x}, init: {weights: w.pt}}\n"
                  "  l: {kind: loss, type: cross_entropy, inputs: {logits: m.logits, "
                  "target: d.y}}\n"
                  "updates: {u: {params: [m], objective: {l: 1.0}}}\n")
    spec = load_spec(path)
    raw = spec.raw
    assert raw == {**load_raw(path).data, "nodes": {
        "d": {"kind": "data", "type": "digits", "params": {"batch_size": 8}},
        "m": {"inputs": {"x": "d.x"}, "type": "mlp", "kind": "model",
              "params": {"in_features": 64, "hidden": [8], "num_classes": 10},
              "frozen": False},
        "s": {"kind": "model", "shares": "m", "inputs": {"x": "d.x"},
              "init": {"weights": "w.pt"}, "type": "mlp",
              "params": {"in_features": 64, "hidden": [8], "num_classes": 10}},
        "l": {"kind": "loss", "type": "cross_entropy",
              "inputs": {"logits": "m.logits", "target": "d.y"}}}}
    assert [list(node) for node in raw["nodes"].values()] == [
        ["kind", "type", "params"], ["inputs", "type", "kind", "params", "frozen"],
        ["kind", "shares", "inputs", "init", "type", "params"], ["kind", "type", "inputs"]]
    for name, node in raw["nodes"].items():
        assert node["inputs" if "inputs" in node else "params"] is getattr(
            spec.nodes[name], "inputs" if "inputs" in node else "params")


def test_the_source_map_costs_tens_of_bytes_per_value(tmp_path, warm):
    # The ladder spec locates about 16 values and keys a node; the path -> Location dict
    # took about 3.3 kB a node (200 bytes a value), the compact map about 13 bytes a value.
    nodes = 4000
    text = make_spec(nodes)[0]
    gc.collect()
    tracemalloc.start()
    try:
        data, smap = parse_text(text, "big.yaml")
        located = len(smap.locations)
        gc.collect()
        with_map = tracemalloc.get_traced_memory()[0]
        del smap
        gc.collect()
        freed = with_map - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert located > 16 * nodes
    assert freed / located < 40, f"{freed / located:.0f} bytes a located value"
    assert data["nodes"]["m3"]["inputs"] == {"x": "p2.y"}


@pytest.mark.parametrize("dense", [None, "json"])
def test_memory_per_node_does_not_grow_with_the_spec(tmp_path, warm, dense):
    per_node = []
    for nodes in (1000, 3000):
        text = make_dense_spec(nodes, dense)[0] if dense else make_spec(nodes)[0]
        path = _write(tmp_path, f"s{nodes}.{dense or 'yaml'}", text)
        (spec, graph), kept, peak = _traced(lambda p=path: (lambda s: (s, validate(s)[0]))(
            load_spec(p)))
        assert len(graph.nodes) == nodes
        per_node.append((kept / nodes, peak / nodes))
        del spec, graph
    (kept_small, peak_small), (kept_large, peak_large) = per_node
    assert kept_large < 1.1 * kept_small and peak_large < 1.1 * peak_small, per_node


def _lines_executed(fn) -> int:
    """Lines of dgraph's spec and graph code that ``fn`` executes."""
    count = 0
    folders = (str(DGRAPH / "spec"), str(DGRAPH / "graph"))

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame, event, arg):
        if frame.f_code.co_filename.startswith(folders):
            return local
        return None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_load_and_validation_work_grows_linearly(tmp_path, warm):
    work = []
    for nodes in (400, 1600):
        path = _write(tmp_path, f"s{nodes}.yaml", make_spec(nodes)[0])
        work.append(_lines_executed(lambda p=path: validate(load_spec(p))))
    ratio = work[1] / work[0]
    assert 3.7 < ratio < 4.3, f"4x the nodes took {ratio:.2f}x the lines ({work})"


# --- every location is kept: the compact map answers as the old path -> Location dict did


def _old_where(locations: dict, path: tuple, default: Location) -> Location:
    key = tuple(path)
    while key:
        if key in locations:
            return locations[key]
        key = key[:-1]
    return locations.get((), default)


def _old_relocate(locations: dict, path: tuple, value_paths, where: Location) -> None:
    n = len(path)
    for located in list(locations):
        inner = located[1:] if located and located[0] == "#key" else located
        if inner[:n] == path:
            del locations[located]
    locations[path] = locations[("#key", *path)] = where
    for located in value_paths:
        moved = (("#key", *path, *located[1:]) if located and located[0] == "#key"
                 else (*path, *located))
        locations[moved] = where


def _probes(locations: dict) -> list[tuple]:
    paths = {p[1:] if p and p[0] == "#key" else p for p in locations}
    probes = set(paths)
    for p in paths:
        probes.add((*p, "missing"))
        probes.add((*p, 99))
        if p:
            probes.add((*p[:-1], "nope", *p[-1:]))
    return sorted(probes, key=repr)


def _assert_same_answers(smap, reference: dict) -> None:
    for path in _probes(reference):
        assert smap.where(path) == _old_where(reference, path, smap.default), path
        expected_key = reference.get(("#key", *path)) or _old_where(reference, path,
                                                                    smap.default)
        assert smap.key_where(path) == expected_key, path


def test_the_compact_map_answers_every_lookup_as_the_dict_did(tmp_path):
    # Mappings and lists long enough to be indexed (over 16 entries), nested ones, empty
    # ones, and values in flow and block style.
    items = "\n".join(f"    - {{a: {i}, b: [x, {{c: {i}}}]}}" for i in range(20))
    params = ", ".join(f"k{i}: {i}" for i in range(20))
    text = (f"dgraph: 1\nnodes:\n  n: {{kind: data, type: digits, params: {{{params}}}}}\n"
            f"  e: {{kind: op, params: {{}}, inputs: {{}}}}\nlist:\n{items}\n"
            "flow: [[1, [2, 3]], {}, [], {deep: {deeper: [4]}}]\n")
    _, smap = parse_text(text, "t.yaml")
    reference = smap.locations
    saved = source.read_plain
    source.read_plain = lambda *args, **kwargs: None  # ruamel's reader, the dict it keeps
    try:
        assert parse_text(text, "t.yaml")[1].locations == reference
    finally:
        source.read_plain = saved
    assert reference[("list", 19, "b", 1, "c")] == Location("t.yaml", 25, 26)
    assert reference[("#key", "nodes", "n", "params", "k17")].line == 3
    _assert_same_answers(smap, reference)


def test_extends_and_overrides_keep_the_dicts_answers(tmp_path):
    _write(tmp_path, "base.yaml", "dgraph: 1\nnodes:\n  a: {kind: data, type: digits, "
           "params: {batch_size: 8}}\n  b: {kind: op, type: detach, inputs: {x: a.x}}\n"
           "train: {steps: 5, seed: 1}\n")
    main = _write(tmp_path, "main.yaml", "extends: base.yaml\nnodes:\n  b:\n    inputs: "
                  "{x: a.y}\n  c: {kind: op, type: detach, inputs: {x: b.y}}\n")
    raw = load_raw(main)
    reference = raw.source.locations
    _assert_same_answers(raw.source, reference)
    assert raw.source.where(("nodes", "b", "inputs", "x")).file.endswith("main.yaml")
    assert raw.source.where(("nodes", "b", "type")).file.endswith("base.yaml")
    assert raw.source.where(("train", "steps")).file.endswith("base.yaml")

    overrides = ["nodes.a.params={batch_size: 4, shuffle: true}", "train.steps=3",
                 "nodes.a.params.batch_size=2", "updates.u.every=2", "nodes.c.inputs.x=a.x"]
    expected = dict(reference)
    for item in overrides:
        key, _, value = item.partition("=")
        path = tuple(key.split("."))
        value_paths = list(parse_text(value, "v").__getitem__(1).locations)
        if path[0] == "updates":  # mappings the override creates on its way
            _old_relocate(expected, path, value_paths, Location(f"<--set {item}>"))
            for made in (("updates",), ("updates", "u")):
                expected[made] = expected[("#key", *made)] = Location(f"<--set {item}>")
        else:
            _old_relocate(expected, path, value_paths, Location(f"<--set {item}>"))
    overridden = apply_overrides(raw, overrides)
    assert overridden.source.locations == expected
    _assert_same_answers(overridden.source, expected)
    assert str(overridden.source.where(("nodes", "a", "params", "shuffle"))) == (
        "<--set nodes.a.params={batch_size: 4, shuffle: true}>")
