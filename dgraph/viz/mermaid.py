"""Mermaid ``flowchart LR`` text for a graph: :func:`to_mermaid`.

Node ids are sanitised (``n_`` plus letters, digits and underscores), labels escaped with
Mermaid's ``#quot;`` codes; classes style kinds and frozen/trainable nodes; edges on an
update's gradient path take that update's colour; a parameter naming another node is a dotted
reference link; a subgraph lists the updates.
"""

from __future__ import annotations

from dgraph.graph.model import Graph
from dgraph.viz.scene import REF_COLOUR
from dgraph.viz.view import KIND_STYLES, GraphView, build_view, kind_style, safe_id

__all__ = ["mermaid_from_view", "mermaid_text", "to_mermaid"]

_ENTITIES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;",
             "|": "#124;", "`": "#96;", ";": "#59;"}


def mermaid_text(text: object) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for the characters it parses)."""
    out = []
    for ch in str(text):
        if ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch in "\r\n":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def mermaid_from_view(view: GraphView) -> str:
    """Mermaid text for an already built :class:`GraphView` (see :func:`to_mermaid`)."""
    lines = ["flowchart LR", f"  %% dgraph: {mermaid_text(view.title)}"]
    lines += [f"  %% stage {mermaid_text(text)}" for text in view.stages]
    taken: set[str] = set()
    ids = {name: safe_id(name, taken) for name in view.nodes}
    for name, node in view.nodes.items():
        parts = [mermaid_text(name), mermaid_text(node.subtitle)]
        if node.status:
            parts.append(mermaid_text(node.status))
        lines.append(f'  {ids[name]}["{"<br/>".join(parts)}"]')
    links: list[str] = []
    link_styles: list[str] = []
    for edge in view.edges:
        if edge.src not in ids or edge.dst not in ids:
            continue
        arrow = "-.->" if edge.tap or edge.ref else "-->"
        label = mermaid_text(edge.label)
        links.append(f'  {ids[edge.src]} {arrow}|"{label}"| {ids[edge.dst]}')
        colours = view.colours_of(edge.updates)
        if edge.ref:
            link_styles.append(f"  linkStyle {len(links) - 1} stroke:{REF_COLOUR},"
                               "stroke-width:1.5px,stroke-dasharray:2 3")
        elif colours:
            link_styles.append(
                f"  linkStyle {len(links) - 1} stroke:{colours[0]},stroke-width:2.5px"
            )
    lines.extend(links)
    if view.updates:
        lines.append("  subgraph legend_updates [updates]")
        legend_ids = {}
        for update in view.updates.values():
            uid = safe_id(update.name, taken, "u_")
            legend_ids[update.name] = uid
            text = mermaid_text(f"{update.name}: {update.ratio}") + "<br/>" + mermaid_text(
                f"objective {update.objective_text}")
            lines.append(f'    {uid}["{text}"]')
        lines.append("  end")
    for kind in KIND_STYLES:
        fill, border = kind_style(kind)
        lines.append(f"  classDef kind_{kind} fill:{fill},stroke:{border},color:#222")
    lines.append("  classDef frozen stroke-dasharray:5 4,stroke-width:1px")
    lines.append("  classDef trainable stroke-width:3px")
    extra_kinds = sorted({n.kind for n in view.nodes.values()} - set(KIND_STYLES))
    for kind in extra_kinds:
        safe = safe_id(kind, set(), "")
        lines.append(f"  classDef kind_{safe} fill:#ffffff,stroke:#444444,color:#222")
    for name, node in view.nodes.items():
        kind = node.kind if node.kind in KIND_STYLES else safe_id(node.kind, set(), "")
        lines.append(f"  class {ids[name]} kind_{kind}")
        if node.look != "plain":
            lines.append(f"  class {ids[name]} {node.look}")
        colours = view.colours_of(node.updates)
        if colours:
            lines.append(f"  style {ids[name]} stroke:{colours[0]}")
    if view.updates:
        for update in view.updates.values():
            lines.append(f"  style {legend_ids[update.name]} fill:#ffffff,"
                         f"stroke:{update.colour},stroke-width:3px")
    lines.extend(link_styles)
    return "\n".join(lines) + "\n"


def to_mermaid(graph: Graph) -> str:
    """Mermaid flowchart source for ``graph``.

    Args:
        graph: a validated graph.

    Returns:
        Text starting with ``flowchart LR``, ready for a Markdown ``mermaid`` block.
    """
    return mermaid_from_view(build_view(graph))
