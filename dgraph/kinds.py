"""The node kinds a spec may use and, in one table, everything each kind implies.

Every layer asks this table (``KINDS["teacher"].frozen``), never compares kind names, so the
behaviour of a kind is written down once. No imports from the rest of dgraph: the spec layer
uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "NodeKind", "kinds_where"]


@dataclass(frozen=True)
class NodeKind:
    """What a kind of node is and how dgraph treats it.

    Attributes:
        name: the ``kind`` written in specs.
        doc: one line for ``dgraph list`` and the schema.
        frozen: frozen unless the node says ``frozen: false`` (or an update trains it).
        batches: produces a batch each step (a data source), not a module output.
        parametrised: may hold trainable parameters (drawn with an update stripe when trained).
        saved: its weights go to ``final/`` even when no update trains it.
        root: a reason to run the node by itself (an unused-node check starts here).
        eval_only: runs only in evaluation, never in a training step.
        follows: moves after the updates that train its ``source`` (the target protocol).
        evaluated: a classifier whose accuracy evaluation reports when it has logits.
        pure: has no parameters, so a gradient through it never needs restricting.
    """

    name: str
    doc: str
    frozen: bool = False
    batches: bool = False
    parametrised: bool = False
    saved: bool = False
    root: bool = False
    eval_only: bool = False
    follows: bool = False
    evaluated: bool = False
    pure: bool = False


KINDS: dict[str, NodeKind] = {k.name: k for k in (
    NodeKind("data", "a source of batches (dataset, environment rollouts)",
             frozen=True, batches=True),
    NodeKind("teacher", "a model that provides targets; frozen unless an update trains it",
             frozen=True, parametrised=True, evaluated=True),
    NodeKind("student", "the model being distilled; exported by default",
             parametrised=True, saved=True, root=True, evaluated=True),
    NodeKind("model", "any other network (critic, fake-score network, feature extractor)",
             parametrised=True, evaluated=True),
    NodeKind("projector", "a small trainable map between feature spaces", parametrised=True),
    NodeKind("loss", "a scalar objective term", pure=True),
    NodeKind("sampler", "draws noise, timesteps, generations or other per-step inputs"),
    NodeKind("op", "a pure function without parameters", frozen=True, pure=True),
    NodeKind("tensor", "a learnable tensor (synthetic data, soft labels, a learnable rate)",
             parametrised=True, saved=True),
    NodeKind("target", "a slowly updated copy of another node (EMA, periodic copy)",
             frozen=True, parametrised=True, saved=True, follows=True, evaluated=True),
    NodeKind("metric", "an evaluation-only measurement",
             frozen=True, root=True, eval_only=True),
)}


def kinds_where(**flags: bool) -> frozenset[str]:
    """The kind names whose attributes have the given values: ``kinds_where(frozen=True)``."""
    return frozenset(name for name, kind in KINDS.items()
                     if all(getattr(kind, flag) == value for flag, value in flags.items()))
