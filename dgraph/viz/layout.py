"""A layered (Sugiyama-style) left-to-right layout in pure Python, for drawing without graphviz.

:func:`layered_layout` takes box sizes and edges and returns box positions, edges as cubic
Bézier segments and edge-label centres. Layers come from the topological order; long edges go
through dummy points; barycenter sweeps reduce crossings; boxes never overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Layout", "LayoutEdge", "LayoutNode", "Point", "Segment", "layered_layout"]

Point = tuple[float, float]
Segment = tuple[Point, Point, Point, Point]  # start, control 1, control 2, end

_DUMMY_H = 4.0
_CURVE_ROOM = 30.0  # horizontal room on each side of an edge label for the curve to bend
_LABEL_SEP = 4.0
_PASS_H = 6.0  # room kept for a long edge passing through a gap


@dataclass
class LayoutNode:
    """A placed box: top-left corner, size, layer (column) and position in the layer."""

    name: str
    x: float
    y: float
    w: float
    h: float
    layer: int
    order: int

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass
class LayoutEdge:
    """An edge as cubic Bézier segments from its source to its target, and its label centre.

    ``reversed`` is True when the edge was turned around to break a cycle (it points back).
    """

    index: int
    segments: list[Segment] = field(default_factory=list)
    label: Point | None = None
    reversed: bool = False

    @property
    def end(self) -> Point | None:
        return self.segments[-1][3] if self.segments else None

    def end_direction(self) -> Point:
        """Unit vector along which the edge arrives at its target."""
        if not self.segments:
            return (1.0, 0.0)
        _, c1, c2, end = self.segments[-1]
        for ref in (c2, c1, self.segments[-1][0]):
            dx, dy = end[0] - ref[0], end[1] - ref[1]
            norm = (dx * dx + dy * dy) ** 0.5
            if norm > 1e-6:
                return (dx / norm, dy / norm)
        return (1.0, 0.0)


@dataclass
class Layout:
    """Positions of every box and edge; ``width``/``height`` bound everything, margins included."""

    nodes: dict[str, LayoutNode]
    edges: list[LayoutEdge]
    width: float
    height: float
    layers: list[list[str]]
    crossings: int = 0


def _back_pairs(names: Sequence[str], succ: Mapping[str, list[str]]) -> set[tuple[str, str]]:
    """Edges (u, v) that close a cycle in a depth-first search, visiting in ``names`` order."""
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    for root in names:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                seen = state.get(nxt)
                if seen is None:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
                    break
                if seen == 1:
                    back.add((node, nxt))
            else:
                state[node] = 2
                stack.pop()
    return back


def _generations(dag: Mapping[str, Mapping[str, None]]) -> dict[str, int]:
    """Node -> its topological generation in the acyclic ``dag`` (node -> successors): 0 for
    nodes without predecessors, else one more than the latest of its predecessors' (the
    longest path from a source)."""
    waiting = dict.fromkeys(dag, 0)
    for successors in dag.values():
        for head in successors:
            waiting[head] += 1
    generation = [name for name, count in waiting.items() if not count]
    rank: dict[str, int] = {}
    index = 0
    while generation:
        following = []
        for name in generation:
            rank[name] = index
            for head in dag[name]:
                waiting[head] -= 1
                if not waiting[head]:
                    following.append(head)
        generation, index = following, index + 1
    if len(rank) != len(dag):
        raise ValueError("the layout's graph has a cycle after its back edges were reversed")
    return rank


def _isotonic(targets: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [weighted sum, weight, count]
    for t, w in zip(targets, weights, strict=True):
        blocks.append([t * w, w, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w2, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w2
            blocks[-1][2] += c
    out: list[float] = []
    for s, w, c in blocks:
        out.extend([s / w] * int(c))
    return out


def _count_inversions(values: list[int], size: int) -> int:
    tree = [0] * (size + 1)
    inversions = 0
    for seen, v in enumerate(values):
        # how many earlier values are greater than v
        i, not_greater = v + 1, 0
        while i > 0:
            not_greater += tree[i]
            i -= i & -i
        inversions += seen - not_greater
        i = v + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
    return inversions


class _Layered:
    """The working state: vertices (real boxes, then dummies) arranged in layers."""

    def __init__(self, node_gap: float) -> None:
        self.node_gap = node_gap
        self.w: list[float] = []
        self.h: list[float] = []
        self.layer: list[int] = []
        self.dummy: list[bool] = []
        self.up: list[list[int]] = []
        self.down: list[list[int]] = []
        self.layers: list[list[int]] = []
        self.pos: list[float] = []
        self.y: list[float] = []

    def add(self, w: float, h: float, layer: int, dummy: bool) -> int:
        self.w.append(w)
        self.h.append(h)
        self.layer.append(layer)
        self.dummy.append(dummy)
        self.up.append([])
        self.down.append([])
        return len(self.w) - 1

    # -- ordering ---------------------------------------------------------------------
    def _set_pos(self, layer: list[int]) -> None:
        n = len(layer)
        for i, v in enumerate(layer):
            self.pos[v] = (i + 0.5) / n

    def _sort_layer(self, index: int, nbrs: list[list[int]]) -> None:
        layer = self.layers[index]
        keyed = []
        for i, v in enumerate(layer):
            around = nbrs[v]
            key = sum(self.pos[u] for u in around) / len(around) if around else self.pos[v]
            keyed.append((key, i, v))
        keyed.sort()
        self.layers[index] = [v for _, _, v in keyed]
        self._set_pos(self.layers[index])

    def crossings(self) -> int:
        total = 0
        for index in range(len(self.layers) - 1):
            below = {v: i for i, v in enumerate(self.layers[index + 1])}
            pairs = sorted(
                (i, below[u]) for i, v in enumerate(self.layers[index]) for u in self.down[v]
            )
            total += _count_inversions([b for _, b in pairs], len(below))
        return total

    def order(self, sweeps: int) -> int:
        self.pos = [0.0] * len(self.w)
        for layer in self.layers:
            self._set_pos(layer)
        best = [list(layer) for layer in self.layers]
        best_count = self.crossings()
        stale = 0
        for sweep in range(sweeps):
            if best_count == 0:
                break
            if sweep % 2 == 0:
                for index in range(1, len(self.layers)):
                    self._sort_layer(index, self.up)
            else:
                for index in range(len(self.layers) - 2, -1, -1):
                    self._sort_layer(index, self.down)
            count = self.crossings()
            if count < best_count:
                best, best_count, stale = [list(layer) for layer in self.layers], count, 0
            else:
                stale += 1
                if stale >= 4:
                    break
        self.layers = best
        for layer in self.layers:
            self._set_pos(layer)
        return best_count

    # -- vertical placement ---------------------------------------------------------------
    def _gap(self, a: int, b: int) -> float:
        if self.dummy[a] and self.dummy[b]:
            return 8.0
        if self.dummy[a] or self.dummy[b]:
            return self.node_gap * 0.6
        return self.node_gap

    def _place(self, layer: list[int], desired: list[float]) -> None:
        offsets, acc = [], 0.0
        for i, v in enumerate(layer):
            if i:
                prev = layer[i - 1]
                acc += self.h[prev] / 2 + self._gap(prev, v) + self.h[v] / 2
            offsets.append(acc)
        weights = [2.0 if self.dummy[v] else 1.0 for v in layer]
        fit = _isotonic([d - o for d, o in zip(desired, offsets, strict=True)], weights)
        for v, z, o in zip(layer, fit, offsets, strict=True):
            self.y[v] = z + o

    def _relax(self, index: int, nbrs: list[list[int]] | None) -> None:
        layer = self.layers[index]
        desired = []
        for v in layer:
            around = (self.up[v] + self.down[v]) if nbrs is None else nbrs[v]
            desired.append(sum(self.y[u] for u in around) / len(around) if around else self.y[v])
        self._place(layer, desired)

    def place(self, rounds: int = 4) -> None:
        self.y = [0.0] * len(self.w)
        for layer in self.layers:
            self._place(layer, [0.0] * len(layer))
        count = len(self.layers)
        for _ in range(rounds):
            for index in range(1, count):
                self._relax(index, self.up)
            for index in range(count - 2, -1, -1):
                self._relax(index, self.down)
        for _ in range(2):
            for index in range(count):
                self._relax(index, None)


def _spread(n: int, cy: float, h: float) -> list[float]:
    if n <= 1:
        return [cy] * n
    step = min(12.0, max(h - 10.0, 0.0) / (n - 1))
    return [cy + (i - (n - 1) / 2) * step for i in range(n)]


def _curve(p: Point, q: Point, straight: bool) -> Segment:
    if straight:
        return (p, (p[0] + (q[0] - p[0]) / 3, p[1] + (q[1] - p[1]) / 3),
                (p[0] + 2 * (q[0] - p[0]) / 3, p[1] + 2 * (q[1] - p[1]) / 3), q)
    dx = (q[0] - p[0]) / 2
    return (p, (p[0] + dx, p[1]), (q[0] - dx, q[1]), q)


def layered_layout(
    sizes: Mapping[str, tuple[float, float]],
    edges: Sequence[tuple[str, str]],
    label_sizes: Sequence[tuple[float, float] | None] | None = None,
    *,
    node_gap: float = 22.0,
    rank_gap: float = 56.0,
    margin: float = 10.0,
    sweeps: int = 16,
) -> Layout:
    """Lay out boxes in columns, left to right, following the edges.

    Args:
        sizes: box name -> (width, height); the mapping's order breaks ties (spec order).
        edges: (source, target) per edge; parallel edges and self-loops are allowed, and
            edges closing a cycle are drawn pointing backwards.
        label_sizes: per edge, the (width, height) of its label, or None for no label.
        node_gap: minimum vertical space between two boxes of one column.
        rank_gap: minimum horizontal space between two columns.
        margin: empty space around the drawing.
        sweeps: maximum number of barycenter sweeps for crossing reduction.

    Returns:
        The :class:`Layout`; ``layout.edges[i]`` belongs to ``edges[i]`` (no segments when an
        endpoint is not in ``sizes``).
    """
    labels = list(label_sizes) if label_sizes is not None else [None] * len(edges)
    names = list(sizes)
    succ: dict[str, list[str]] = {n: [] for n in names}
    for src, dst in edges:
        if src in sizes and dst in sizes and src != dst and dst not in succ[src]:
            succ[src].append(dst)
    back = _back_pairs(names, succ)

    # The graph with its back edges turned round (acyclic): each node's successors, once each.
    dag: dict[str, dict[str, None]] = {name: {} for name in names}
    oriented: list[tuple[int, str, str, bool]] = []
    loops: list[int] = []
    for i, (src, dst) in enumerate(edges):
        if src not in sizes or dst not in sizes:
            continue
        if src == dst:
            loops.append(i)
            continue
        rev = (src, dst) in back
        tail, head = (dst, src) if rev else (src, dst)
        oriented.append((i, tail, head, rev))
        dag[tail][head] = None

    rank = _generations(dag)
    sources = set(names) - {head for successors in dag.values() for head in successors}
    for name in names:  # pull sources next to their first consumer
        if name in sources and dag[name]:
            rank[name] = min(rank[s] for s in dag[name]) - 1

    state = _Layered(node_gap)
    vid = {name: state.add(sizes[name][0], sizes[name][1], rank[name], False) for name in names}
    chains: list[tuple[int, list[int], bool]] = []
    for i, a, b, rev in oriented:
        chain = [vid[a]]
        for r in range(rank[a] + 1, rank[b]):
            chain.append(state.add(0.0, _DUMMY_H, r, True))
        chain.append(vid[b])
        for p, q in zip(chain, chain[1:], strict=False):
            state.down[p].append(q)
            state.up[q].append(p)
        chains.append((i, chain, rev))

    count = (max(state.layer) + 1) if state.layer else 0
    state.layers = [[] for _ in range(count)]
    for v in range(len(state.w)):
        state.layers[state.layer[v]].append(v)
    crossings = state.order(sweeps)
    state.place()

    # columns: widths from the boxes, gaps wide enough for the labels drawn in them
    col_w = [16.0] * count
    for v in range(len(state.w)):
        if not state.dummy[v]:
            col_w[state.layer[v]] = max(col_w[state.layer[v]], state.w[v])
    gap_w = [rank_gap] * max(count - 1, 0)
    label_col = [0.0] * max(count - 1, 0)  # width of the widest label in each gap
    for i, chain, _ in chains:
        size = labels[i]
        if size is not None:
            g = state.layer[chain[-1]] - 1
            label_col[g] = max(label_col[g], size[0])
            gap_w[g] = max(gap_w[g], size[0] + 2 * _CURVE_ROOM)
    col_x = [margin]
    for index in range(1, count):
        col_x.append(col_x[-1] + col_w[index - 1] + gap_w[index - 1])

    def left(v: int) -> float:
        return col_x[state.layer[v]] + (col_w[state.layer[v]] - state.w[v]) / 2

    # port anchors: spread the edges leaving / entering a box, sorted by where they go
    outs: dict[int, list[tuple[float, int]]] = {}
    ins: dict[int, list[tuple[float, int]]] = {}
    for k, (_, chain, _) in enumerate(chains):
        outs.setdefault(chain[0], []).append((state.y[chain[1]], k))
        ins.setdefault(chain[-1], []).append((state.y[chain[-2]], k))
    start_y: dict[int, float] = {}
    end_y: dict[int, float] = {}
    for table, target in ((outs, start_y), (ins, end_y)):
        for v, items in table.items():
            items.sort()
            spread = _spread(len(items), state.y[v], state.h[v])
            for (_, k), y in zip(items, spread, strict=True):
                target[k] = y

    # Each gap between two columns holds a column of items, pushed apart vertically so that
    # none overlap: the labels of the edges ending in the next column, and the points where
    # longer edges pass through (so that they never run under a label).
    def out_y(k: int, j: int) -> float:
        chain = chains[k][1]
        return start_y[k] if j == 0 else state.y[chain[j]]

    def in_y(k: int, j: int) -> float:
        chain = chains[k][1]
        return end_y[k] if j == len(chain) - 1 else state.y[chain[j]]

    per_gap: dict[int, list[tuple[float, int, int, float]]] = {}  # desired y, chain, step, h
    for k, (i, chain, _) in enumerate(chains):
        last = len(chain) - 2
        for j in range(len(chain) - 1):
            is_label = j == last and labels[i] is not None
            if j == last and not is_label:
                continue
            height = labels[i][1] if is_label else _PASS_H  # type: ignore[index]
            desired = (out_y(k, j) + in_y(k, j + 1)) / 2
            per_gap.setdefault(state.layer[chain[j]], []).append((desired, k, j, height))
    waypoint: dict[tuple[int, int], Point] = {}
    for g, column in per_gap.items():
        column.sort()
        gx = col_x[g] + col_w[g] + gap_w[g] / 2
        offsets, acc = [], 0.0
        for n, item in enumerate(column):
            if n:
                acc += column[n - 1][3] / 2 + _LABEL_SEP + item[3] / 2
            offsets.append(acc)
        targets = [it[0] - o for it, o in zip(column, offsets, strict=True)]
        fit = _isotonic(targets, [1.0] * len(column))
        for (_, k, j, _), z, o in zip(column, fit, offsets, strict=True):
            waypoint[(k, j)] = (gx, z + o)

    routed: list[LayoutEdge] = [LayoutEdge(index=i) for i in range(len(edges))]
    for k, (i, chain, rev) in enumerate(chains):
        v0, vn = chain[0], chain[-1]
        points: list[tuple[Point, bool]] = [((left(v0) + state.w[v0], start_y[k]), False)]
        label: Point | None = None
        for j in range(len(chain) - 1):
            at = waypoint.get((k, j))
            if at is not None:
                # run straight across the whole label column: curves bend only outside it
                if j == len(chain) - 2 and labels[i] is not None:
                    label = at
                half = label_col[state.layer[chain[j]]] / 2
                if half > 0:
                    points.append(((at[0] - half, at[1]), False))
                    points.append(((at[0] + half, at[1]), True))
                else:
                    points.append((at, False))
            nxt = chain[j + 1]
            if nxt != vn:
                x0 = col_x[state.layer[nxt]]
                points.append(((x0, state.y[nxt]), False))
                points.append(((x0 + col_w[state.layer[nxt]], state.y[nxt]), True))
        points.append(((left(vn), end_y[k]), False))
        segments = [
            _curve(p, q, straight)
            for (p, _), (q, straight) in zip(points, points[1:], strict=False)
        ]
        if rev:
            segments = [(d, c, b, a) for a, b, c, d in reversed(segments)]
        routed[i] = LayoutEdge(index=i, segments=segments, label=label, reversed=rev)

    boxes = {
        name: LayoutNode(name, left(v), state.y[v] - state.h[v] / 2, state.w[v], state.h[v],
                         state.layer[v], state.layers[state.layer[v]].index(v))
        for name, v in vid.items()
    }
    for i in loops:
        box = boxes[edges[i][0]]
        lift = 36.0
        out_at = (box.cx + box.w / 4, box.y)
        in_at = (box.cx - box.w / 4, box.y)
        seg = (out_at, (out_at[0] + 24, box.y - lift), (in_at[0] - 24, box.y - lift), in_at)
        label = None
        if labels[i] is not None:
            label = (box.cx, box.y - lift - labels[i][1] / 2)  # type: ignore[index]
        routed[i] = LayoutEdge(index=i, segments=[seg], label=label)

    # bounds, then shift everything so that the drawing starts at the margin
    xs: list[float] = [margin]
    ys: list[float] = []
    for box in boxes.values():
        xs += [box.x, box.x + box.w]
        ys += [box.y, box.y + box.h]
    for k, e in enumerate(routed):
        for seg in e.segments:
            for px, py in seg:
                xs.append(px)
                ys.append(py)
        if e.label is not None and labels[k] is not None:
            lw, lh = labels[k]  # type: ignore[misc]
            xs += [e.label[0] - lw / 2, e.label[0] + lw / 2]
            ys += [e.label[1] - lh / 2, e.label[1] + lh / 2]
    if not ys:
        return Layout({}, routed, 2 * margin, 2 * margin, [], 0)
    dx, dy = margin - min(xs), margin - min(ys)

    def shift(p: Point) -> Point:
        return (p[0] + dx, p[1] + dy)

    for box in boxes.values():
        box.x += dx
        box.y += dy
    for e in routed:
        e.segments = [(shift(a), shift(b), shift(c), shift(d)) for a, b, c, d in e.segments]
        if e.label is not None:
            e.label = shift(e.label)
    order_names = {v: n for n, v in vid.items()}
    layer_names = [[order_names[v] for v in layer if v in order_names] for layer in state.layers]
    return Layout(
        nodes=boxes,
        edges=routed,
        width=max(xs) + dx + margin,
        height=max(ys) + dy + margin,
        layers=layer_names,
        crossings=crossings,
    )
