"""Target networks: a slowly updated copy of another node (EMA, stop-gradient, periodic copy).

The copy has the source's ports and is updated by the runtime after every optimizer step of
an update that trains the source (the ``follows`` protocol). Its weights are part of
checkpoints.
"""

from __future__ import annotations

from typing import Any

from dgraph.declare import Module, NodeRef, component, param

__all__ = ["EMATarget"]


@component("ema", roles=("target",), tappable=False, follows="source", ports_from="source")
class EMATarget(Module):
    """A copy of ``source`` that follows it after each update that trains it.

    ``theta_target <- decay * theta_target + (1 - decay) * theta_source`` (buffers are
    copied), or a hard copy every ``copy_every`` updates. Used for consistency distillation
    targets, mean teachers, DQN targets. It runs like its source, on its own inputs.
    """

    def __init__(self, *, source: NodeRef = param(doc="the node this target follows"),
                 decay: float = param(0.95, ge=0, le=1, doc="target <- decay*target + "
                                      "(1-decay)*source; 0 copies the source after each update"),
                 copy_every: int | None = param(None, ge=1, doc="instead of averaging, copy "
                                                "the source every N updates (DQN-style "
                                                "periodic target)")) -> None:
        super().__init__()
        import copy

        import torch

        self.model = copy.deepcopy(source)
        self.model.requires_grad_(False)
        self.decay = decay
        self.copy_every = copy_every
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, **inputs: Any) -> Any:
        return self.model(**inputs)

    def follow(self, source: Any) -> None:
        """Move the copy towards ``source`` (the referenced node's module) after an update."""
        import torch

        with torch.no_grad():
            self.updates += 1
            mine = list(self.model.parameters())
            theirs = list(source.parameters())
            hard = self.decay == 0 or (
                self.copy_every is not None and int(self.updates) % self.copy_every == 0)
            if self.copy_every is not None and not hard:
                return
            if hard:
                torch._foreach_copy_(mine, theirs)
            else:
                torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
            for target_buffer, source_buffer in zip(self.model.buffers(), source.buffers(),
                                                    strict=True):
                target_buffer.copy_(source_buffer)
