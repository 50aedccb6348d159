"""One protocol for every metric node, and the key scheme of reported values.

A metric is an accumulator: ``reset()`` before an evaluation, ``update(**inputs)`` with the
node's inputs for each held-out batch, ``compute()`` at the end, returning named values.
Metrics over a whole split (a Frechet or energy distance) keep what they need in ``update``;
metrics that make their own inputs (samples from a generator at several step counts,
environment episodes) take no inputs and do their work in ``compute``. A per-batch metric
(a module returning outputs each batch, like ``lm_perplexity``) is adapted by
:class:`SummedOutputs`: its outputs are summed over the split and reduced by its component's
``summarize``.

Reported keys are ``<node>/<name>``; a name is ``[A-Za-z0-9_]+`` optionally followed by
``@<k>`` for a step count or other setting (``fid@4``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from dgraph.declare import Accumulator
from dgraph.errors import ComponentRuntimeError
from dgraph.registry import Component

__all__ = ["Accumulator", "SummedOutputs", "as_accumulator", "metric_key"]

_NAME = re.compile(r"[A-Za-z0-9_]+(@[A-Za-z0-9_.]+)?\Z")


def metric_key(node: str, name: str) -> str:
    """``<node>/<name>``; refuses names outside the scheme with the node in the message."""
    if not _NAME.match(name):
        raise ComponentRuntimeError(
            f"metric node '{node}' reported a value named {name!r}; names are "
            "[A-Za-z0-9_]+ with an optional @<setting> (e.g. 'fid@4')", node=node)
    return f"{node}/{name}"


class SummedOutputs:
    """A module that returns per-batch outputs, as an accumulator.

    Outputs are summed over the split: weighted by the batch size (they are batch means), or
    as they are when the module also outputs ``count`` (they are sums, token-level). The
    component's ``summarize`` turns the totals into the reported values.
    """

    def __init__(self, module: torch.nn.Module, component: Component) -> None:
        self.module = module
        self.component = component
        self.reset()

    def reset(self) -> None:
        # Summed on the module's device in float64 (the same arithmetic as Python floats):
        # read once, by host_totals, not once per batch.
        self.totals: dict[str, Any] = defaultdict(float)
        self.examples = 0

    def update(self, **inputs: torch.Tensor) -> None:
        outputs = self.module(**inputs)
        size = next((int(t.shape[0]) for t in inputs.values()
                     if torch.is_tensor(t) and t.dim() > 0), 1)
        weight = 1 if "count" in outputs else size
        for port, value in outputs.items():
            self.totals[port] = self.totals[port] + value.detach().float().double() * weight
        self.examples += size

    def host_totals(self) -> dict[str, float]:
        """The totals as numbers (one read of each)."""
        return {port: float(total) for port, total in self.totals.items()}

    def compute(self) -> Mapping[str, float]:
        return self.component.summarize(self.host_totals(), self.examples)


def as_accumulator(module: Any, component: Component) -> Accumulator:
    """The module itself when it follows the protocol, else its :class:`SummedOutputs`."""
    if isinstance(module, Accumulator):
        return module
    return SummedOutputs(module, component)

