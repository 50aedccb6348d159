"""Graphviz DOT source for a graph: :func:`to_dot`.

Nodes are filled by kind, frozen ones dashed and trainable ones bold; edges carry their ports,
semantic type and shape, and are coloured by the updates whose gradient they carry (a legend
cluster lists each update); a parameter naming another node is a dotted reference edge.
Render with ``dot -Tsvg``; dgraph itself never needs graphviz.
"""

from __future__ import annotations

import html

from dgraph.graph.model import Graph
from dgraph.viz.scene import EDGE_GREY as _EDGE_GREY
from dgraph.viz.scene import REF_COLOUR
from dgraph.viz.view import GraphView, build_view

__all__ = ["dot_from_view", "dot_quote", "to_dot"]

_STYLES = {  # NodeView.look -> (style, penwidth)
    "frozen": ("rounded,filled,dashed", "1.2"),
    "trainable": ("rounded,filled,bold", "2.5"),
    "plain": ("rounded,filled", "1.0"),
}


def dot_quote(text: object) -> str:
    """A double-quoted DOT string; newlines become DOT's ``\\n`` line breaks."""
    body = str(text).replace("\\", "\\\\").replace('"', '\\"')
    body = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{body}"'


def _row(text: str, colour: str | None = None, *, bold: bool = False) -> str:
    """One legend line: a colour swatch (or nothing) in a narrow first column, then text."""
    swatch = (f'<td bgcolor="{colour}" width="16" height="12" fixedsize="true"></td>'
              if colour else "<td></td>")
    body = f"<b>{html.escape(text)}</b>" if bold else html.escape(text)
    return f'<tr>{swatch}<td align="left">{body}</td></tr>'


def _legend(view: GraphView, legend_id: str) -> list[str]:
    rows = [_row("updates", bold=True)]
    if not view.updates:
        rows.append(_row("none (nothing is trained)"))
    rows += [_row(u.summary, u.colour) for u in view.updates.values()]
    if view.stages:
        rows.append(_row("stages", bold=True))
        rows += [_row(f"{i}. {text}") for i, text in enumerate(view.stages, 1)]
    rows.append(_row("kinds", bold=True))
    for kind in view.kinds():
        rows.append(_row(kind, next(n.fill for n in view.nodes.values() if n.kind == kind)))
    rows.append(_row("dashed border: frozen; bold border: trainable; thin border: no "
                     "parameters trained"))
    rows.append(_row("dashed edge: tapped submodule; coloured edge: carries that update's "
                     "gradient"))
    if any(e.ref for e in view.edges):
        rows.append(_row("dotted edge: reference (a parameter names that node)", REF_COLOUR))
    table = '<table border="0" cellborder="0" cellspacing="2">' + "".join(rows) + "</table>"
    return [
        "  subgraph cluster_legend {",
        '    label="legend"; style="rounded"; color="#bbbbbb"; fontsize=10;',
        f"    {dot_quote(legend_id)} [shape=plain, style=\"\", fontsize=10, label=<{table}>];",
        "  }",
    ]


def dot_from_view(view: GraphView) -> str:
    """DOT text for an already built :class:`GraphView` (see :func:`to_dot`)."""
    title = view.title + (" (shapes from a dry run)" if view.dry_run else "")
    lines = [
        f"digraph {dot_quote(view.title)} {{",
        f"  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=13, labelloc=t, "
        f"label={dot_quote(title)}, nodesep=0.35, ranksep=0.7];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        f'  edge [fontname="Helvetica", fontsize=9, color="{_EDGE_GREY}", arrowsize=0.7];',
        "",
    ]
    for name, node in view.nodes.items():
        label = "\n".join([name, node.subtitle] + ([node.status] if node.status else []))
        colours = view.colours_of(node.updates)
        attrs = {
            "label": dot_quote(label),
            "fillcolor": dot_quote(node.fill),
            "color": dot_quote(colours[0] if colours else node.border),
            "style": dot_quote(_STYLES[node.look][0]),
            "penwidth": _STYLES[node.look][1],
            "tooltip": dot_quote(f"{name}: {node.subtitle}" + (
                f" — {node.status}" if node.status else "")),
            "class": dot_quote(f"kind-{node.kind} {node.look}"),
        }
        lines.append(f"  {dot_quote(name)} [" + ", ".join(f"{k}={v}" for k, v in attrs.items())
                     + "];")
    lines.append("")
    for edge in view.edges:
        colours = view.colours_of(edge.updates)
        attrs = {
            "label": dot_quote(f"{edge.ports}\n{edge.typed}"),
            "tooltip": dot_quote(edge.full),
        }
        if edge.ref:
            attrs.update(style="dotted", color=dot_quote(REF_COLOUR),
                         fontcolor=dot_quote(REF_COLOUR), penwidth="1.5")
        elif colours:
            attrs["color"] = dot_quote(":".join(colours))
            attrs["penwidth"] = "1.8"
        if edge.tap:
            attrs["style"] = "dashed"
        lines.append(
            f"  {dot_quote(edge.src)} -> {dot_quote(edge.dst)} ["
            + ", ".join(f"{k}={v}" for k, v in attrs.items()) + "];"
        )
    legend_id = "__legend__"
    while legend_id in view.nodes:
        legend_id = "_" + legend_id
    lines.append("")
    lines.extend(_legend(view, legend_id))
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    """Graphviz source for ``graph``.

    Args:
        graph: a validated graph.

    Returns:
        DOT text (a ``digraph``), laid out left to right.
    """
    return dot_from_view(build_view(graph))
