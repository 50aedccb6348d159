"""A renderer-neutral description of a graph: the labels, colours and update marks drawn.

Every format (SVG, DOT, Mermaid, HTML, the raster image) reads the same :class:`GraphView`, built by
:func:`build_view` from a built or validated :class:`~dgraph.graph.Graph`, so they all agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from dgraph.graph.model import Graph, Node
from dgraph.ports import Shape, carries_grad, format_shape, parse_shape
from dgraph.registry import ROLES
from dgraph.spec.model import ScheduleSpec

__all__ = [
    "KIND_STYLES",
    "UPDATE_COLOURS",
    "EdgeView",
    "GraphView",
    "NodeView",
    "PortView",
    "UpdateView",
    "build_view",
    "format_weight",
    "kind_style",
    "safe_id",
    "text_width",
]

# kind -> (fill, border). Pastel fills so that black text and coloured update marks stay legible.
KIND_STYLES: dict[str, tuple[str, str]] = {
    "data": ("#cfe2ff", "#3d6fb6"),
    "teacher": ("#ffe0b2", "#c77700"),
    "student": ("#c8f2c2", "#2f8a2f"),
    "model": ("#e3d7f7", "#6f4fa8"),
    "projector": ("#fff2a8", "#a68a00"),
    "loss": ("#ffcfcf", "#b83232"),
    "sampler": ("#c8f0ef", "#2a8a86"),
    "op": ("#e9ecef", "#6c757d"),
    "tensor": ("#f9d5ef", "#a8367f"),
    "target": ("#dbe8c6", "#5f7a2e"),
    "metric": ("#f3e5d0", "#8a6a3d"),
}
_FALLBACK_STYLE = ("#ffffff", "#444444")  # a role added later still draws

# Kinds whose nodes normally hold parameters: not training one is worth a note.
_PARAMETRISED_KINDS = frozenset({"teacher", "student", "model", "projector", "tensor"})

# One strong colour per update, in spec order (cycled when there are more updates).
UPDATE_COLOURS: tuple[str, ...] = (
    "#e6194b", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
    "#17becf", "#d62728", "#8c564b", "#e377c2", "#7f7f7f",
)


def kind_style(kind: str) -> tuple[str, str]:
    """The (fill, border) colours of a node kind."""
    return KIND_STYLES.get(kind, _FALLBACK_STYLE)


def text_width(text: str, size: float) -> float:
    """Approximate width in pixels of ``text`` in a monospace font of ``size`` pixels."""
    columns = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        columns += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return columns * size * 0.6


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def safe_id(name: str, taken: set[str], prefix: str = "n_") -> str:
    """An identifier made of ``[A-Za-z0-9_]`` for ``name``, unique among ``taken`` (updated)."""
    base = prefix + _ID_UNSAFE.sub("_", name)
    candidate, i = base, 2
    while candidate in taken:
        candidate, i = f"{base}_{i}", i + 1
    taken.add(candidate)
    return candidate


def format_weight(weight: Any) -> str:
    """A loss weight as short text: ``0.9``, or ``linear(0→1, 1000 steps)`` for a schedule."""
    if isinstance(weight, ScheduleSpec):
        text = f"{weight.schedule}({weight.start:g}→{weight.end:g}, {weight.steps} steps"
        if weight.begin:
            text += f" from {weight.begin}"
        return text + ")"
    if isinstance(weight, (int, float)):
        return f"{weight:g}"
    return str(weight)


@dataclass(frozen=True)
class PortView:
    """One port of a node: its semantic type, shape text and, for inputs, what feeds it."""

    name: str
    type: str
    shape: str
    doc: str = ""
    source: str | None = None
    optional: bool = False

    @property
    def typed(self) -> str:
        return f"{self.type}{self.shape}"


@dataclass
class NodeView:
    """What a drawing shows about one node."""

    name: str
    kind: str
    type: str
    frozen: bool
    params: dict[str, Any]
    inputs: list[PortView]
    outputs: list[PortView]
    taps: list[PortView] = field(default_factory=list)
    trained_by: list[str] = field(default_factory=list)
    objective_of: list[tuple[str, str]] = field(default_factory=list)  # (update, weight text)
    exported: bool = False
    shares: str | None = None
    doc: str = ""
    location: str = ""
    references: dict[str, str] = field(default_factory=dict)  # parameter -> node it names
    referenced_by: list[tuple[str, str]] = field(default_factory=list)  # (node, parameter)

    @property
    def fill(self) -> str:
        return kind_style(self.kind)[0]

    @property
    def border(self) -> str:
        return kind_style(self.kind)[1]

    @property
    def subtitle(self) -> str:
        """``"mlp (teacher)"``: the component type and the node's kind."""
        return f"{self.type} ({self.kind})"

    @property
    def trained(self) -> bool:
        """True when some update's optimizer steps this node's parameters."""
        return bool(self.trained_by) and not self.frozen

    @property
    def look(self) -> str:
        """How the border is drawn: ``"frozen"`` (dashed), ``"trainable"`` (bold: trained by an
        update, or a kind that holds parameters) or ``"plain"`` (a loss, op, ... nothing trains).
        """
        if self.frozen:
            return "frozen"
        if self.trained or self.kind in _PARAMETRISED_KINDS:
            return "trainable"
        return "plain"

    @property
    def updates(self) -> list[str]:
        """Updates this node belongs to: those training it, then those whose objective has it."""
        out = list(self.trained_by)
        out += [u for u, _ in self.objective_of if u not in out]
        return out

    @property
    def status(self) -> str:
        """A short line: frozen / trained by which updates / objective weights / exported."""
        parts: list[str] = []
        if self.frozen:
            parts.append("frozen")
        if self.shares:
            parts.append(f"shares {self.shares}")
        if self.trained_by:
            parts.append("trained by " + ", ".join(self.trained_by))
        elif not self.frozen and not self.shares and self.kind in _PARAMETRISED_KINDS:
            parts.append("trainable, in no update")
        if self.objective_of:
            parts.append("in " + ", ".join(f"{u}×{w}" for u, w in self.objective_of))
        if self.exported:
            parts.append("exported")
        return "; ".join(parts)


@dataclass
class EdgeView:
    """One edge with its semantic type, shape and the updates whose gradient it carries.

    A *reference* edge (``ref=True``) is a dependency through a parameter: node ``dst`` names
    node ``src`` in its parameter ``dst_port`` (an EMA target's ``source``, a sampler's model).
    It has no source port, type or shape and carries no gradient.
    """

    src: str
    src_port: str
    dst: str
    dst_port: str
    type: str
    shape: str
    tap: bool = False
    updates: list[str] = field(default_factory=list)
    ref: bool = False

    @property
    def ports(self) -> str:
        """``"logits → student"``: source port to destination port (``"params.source"`` for a
        reference)."""
        if self.ref:
            return f"params.{self.dst_port}"
        return f"{self.src_port} → {self.dst_port}"

    @property
    def typed(self) -> str:
        """``"Logits[B, 10]"``: semantic type and shape (``"reference"`` for a reference)."""
        if self.ref:
            return "reference"
        return f"{self.type}{self.shape}"

    @property
    def label(self) -> str:
        """``"logits → student: Logits[B, 10]"`` (``"params.source: reference"``)."""
        return f"{self.ports}: {self.typed}"

    @property
    def full(self) -> str:
        """``"teacher.logits → kd.student: Logits[B, 10]"`` (with ``(tap)`` for taps), or
        ``"student → ema.params.source (reference)"``."""
        if self.ref:
            return f"{self.src} → {self.dst}.params.{self.dst_port} (reference)"
        text = f"{self.src}.{self.src_port} → {self.dst}.{self.dst_port}: {self.typed}"
        return text + (" (tap)" if self.tap else "")


@dataclass
class UpdateView:
    """One update: its colour, rate, objective and the nodes it trains."""

    name: str
    colour: str
    every: int
    repeat: int
    objective: list[tuple[str, str]]  # (loss node, weight text)
    params: list[str]
    optimizer: str = ""

    @property
    def ratio(self) -> str:
        """``"every 1, repeat 1"``: how often the update runs."""
        return f"every {self.every}, repeat {self.repeat}"

    @property
    def objective_text(self) -> str:
        """``"kd×0.9, ce×0.1"``."""
        return ", ".join(f"{loss}×{w}" for loss, w in self.objective) or "(empty)"

    @property
    def summary(self) -> str:
        """One legend line."""
        text = f"{self.name}: {self.ratio}; objective {self.objective_text}"
        if self.params:
            text += "; trains " + ", ".join(self.params)
        if self.optimizer:
            text += f"; {self.optimizer}"
        return text


@dataclass
class GraphView:
    """Everything a drawing needs, in spec order."""

    title: str
    description: str
    nodes: dict[str, NodeView]
    edges: list[EdgeView]
    updates: dict[str, UpdateView]
    dry_run: bool = False
    stages: list[str] = field(default_factory=list)  # "hint: 200 steps, runs hint"

    def colours_of(self, updates: list[str]) -> list[str]:
        """The colours of the named updates (unknown names are skipped)."""
        return [self.updates[u].colour for u in updates if u in self.updates]

    def kinds(self) -> list[str]:
        """The kinds present, in the order of :data:`dgraph.registry.ROLES`."""
        present = {n.kind for n in self.nodes.values()}
        return [k for k in ROLES if k in present] + sorted(present - set(ROLES))


def _shape_text(shape: Shape | None) -> str:
    return format_shape(shape)


def _declared(node: Node, text: str | None) -> str:
    try:
        return _shape_text(parse_shape(text, node.component.port_params()))
    except Exception:  # a bad declaration is reported by validation, not here
        return "[*]"


def _node_params(node: Node) -> dict[str, Any]:
    try:
        return node.component.params.model_dump(mode="json")
    except Exception:
        return dict(node.spec.params)


def _references(graph: Graph, node: Node) -> dict[str, str]:
    """The parameters of ``node`` that name another node (``{"source": "student"}``)."""
    return {r.param: r.src for r in graph.references if r.dst == node.name}


def _grad_edges(
    graph: Graph, edge_types: list[str], trained: set[str], losses: set[str]
) -> set[int]:
    """Indices of edges on a gradient path from a trained node to one of the losses."""
    grad = [i for i, t in enumerate(edge_types) if carries_grad(t)]
    out_of: dict[str, list[str]] = {}
    into: dict[str, list[str]] = {}
    for i in grad:
        e = graph.edges[i]
        out_of.setdefault(e.src, []).append(e.dst)
        into.setdefault(e.dst, []).append(e.src)

    def reach(start: set[str], step: dict[str, list[str]]) -> set[str]:
        seen, stack = set(start), list(start)
        while stack:
            for nxt in step.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    forward, backward = reach(trained, out_of), reach(losses, into)
    return {i for i in grad if graph.edges[i].src in forward and graph.edges[i].dst in backward}


def build_view(graph: Graph) -> GraphView:
    """Describe ``graph`` for drawing.

    Args:
        graph: a graph from :func:`dgraph.graph.validate` (or :func:`dgraph.graph.build_graph`;
            nodes that could not be built are simply absent).

    Returns:
        The :class:`GraphView` every renderer draws from.
    """
    spec = graph.spec
    trained_by = graph.trained_by()
    export = graph.export_node

    updates: dict[str, UpdateView] = {}
    for i, (uname, update) in enumerate(spec.updates.items()):
        params = []
        for entry in update.params:
            owner = entry if isinstance(entry, str) else entry.node
            if owner not in params:
                params.append(owner)
        opt = update.optimizer
        updates[uname] = UpdateView(
            name=uname,
            colour=UPDATE_COLOURS[i % len(UPDATE_COLOURS)],
            every=update.every,
            repeat=update.repeat,
            objective=[(loss, format_weight(update.weight_of(loss))) for loss in update.objective],
            params=params,
            optimizer=f"{opt.type} lr={opt.lr:g}",
        )

    edge_types: list[str] = []
    edges: list[EdgeView] = []
    for e in graph.edges:
        src = graph.nodes.get(e.src)
        try:
            port = src.output_port(e.src_port) if src is not None else None
        except KeyError:
            port = None
        if (e.src, e.src_port) in graph.shapes:
            shape = _shape_text(graph.shapes[(e.src, e.src_port)])
        elif port is not None and src is not None:
            shape = _declared(src, port.shape)
        else:
            shape = "[*]"
        stype = port.type if port is not None else "Tensor"
        edge_types.append(stype)
        edges.append(EdgeView(e.src, e.src_port, e.dst, e.dst_port, stype, shape, tap=e.tap))

    references = {name: _references(graph, node) for name, node in graph.nodes.items()}
    wired = {(e.src, e.dst, e.dst_port) for e in graph.edges}
    ref_edges = [
        EdgeView(target, "", name, param, "", "", ref=True)
        for name, refs in references.items() for param, target in refs.items()
        if target in graph.nodes and (target, name, param) not in wired
    ]

    for uname, uv in updates.items():
        trained = {n for n in uv.params if n in graph.nodes}
        trained |= {n for n, node in graph.nodes.items() if node.spec.shares in trained}
        losses = {loss for loss, _ in uv.objective if loss in graph.nodes}
        for i in sorted(_grad_edges(graph, edge_types, trained, losses)):
            edges[i].updates.append(uname)

    nodes: dict[str, NodeView] = {}
    for name, node in graph.nodes.items():
        sources = node.spec.inputs
        inputs = [
            PortView(p, port.type, _declared(node, port.shape), port.doc, sources.get(p),
                     port.optional)
            for p, port in node.inputs.items()
        ]
        outputs = [
            PortView(
                p,
                port.type,
                _shape_text(graph.shapes[(name, p)]) if (name, p) in graph.shapes
                else _declared(node, port.shape),
                port.doc,
            )
            for p, port in node.outputs.items()
        ]
        taps = [PortView(p, port.type, _declared(node, port.shape), "tapped submodule")
                for p, port in node.taps.items()]
        objective_of = [
            (u, w) for u, uv in updates.items() for loss, w in uv.objective if loss == name
        ]
        own = list(trained_by.get(name, []))
        if node.spec.shares:  # one module used twice: the owner's updates step these weights
            own += [u for u in trained_by.get(node.spec.shares, []) if u not in own]
        doc = node.component.doc().split("\n\n")[0].replace("\n", " ")
        nodes[name] = NodeView(
            name=name,
            kind=node.kind,
            type=node.spec.type,
            frozen=node.frozen,
            params=_node_params(node),
            inputs=inputs,
            outputs=outputs,
            taps=taps,
            trained_by=own,
            objective_of=objective_of,
            exported=name == export,
            shares=node.spec.shares,
            doc=doc,
            location=str(node.location),
            references=references[name],
            referenced_by=[(other, param) for other, refs in references.items()
                           for param, target in refs.items() if target == name],
        )

    stages = []
    for stage in spec.stages or []:
        text = f"{stage.name}: {stage.steps} steps, runs {', '.join(stage.updates) or 'nothing'}"
        if stage.copy_weights:
            text += "; copies " + ", ".join(f"{s}→{d}" for d, s in stage.copy_weights.items())
        if stage.reinit:
            text += "; re-initialises " + ", ".join(stage.reinit)
        if stage.weights:
            text += "; weights " + ", ".join(
                f"{n}×{format_weight(w)}" for n, w in stage.weights.items())
        stages.append(text)

    return GraphView(
        title=spec.display_name,
        description=spec.description.strip(),
        nodes=nodes,
        edges=edges + ref_edges,
        updates=updates,
        dry_run=graph.dry_run,
        stages=stages,
    )
