"""Target networks: a slowly updated copy of another node (EMA, stop-gradient, periodic copy).

The copy has the source's ports and is updated by the runtime after every optimizer step of
an update that trains the source. Its weights are part of checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pydantic import Field

from dgraph.ports import Port, parse_shape
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["EMATarget"]


def _concrete(shape: str | None, sizes: Mapping) -> str | None:
    dims = parse_shape(shape, sizes)
    return None if dims is None else ", ".join(str(d) for d in dims)


class EMATargetParams(Params):
    source: str = Field(description="the node this target follows")
    decay: float = Field(0.95, ge=0, le=1, description="target <- decay*target + "
                         "(1-decay)*source; 0 copies the source after each update")
    copy_every: int | None = Field(
        None, ge=1, description="instead of averaging, copy the source every N updates "
        "(DQN-style periodic target)")


@component("ema", roles=("target",))
class EMATarget(Component):
    """A copy of ``source`` that follows it after each update that trains it.

    ``theta_target <- decay * theta_target + (1 - decay) * theta_source`` (buffers are
    copied), or a hard copy every ``copy_every`` updates. Used for consistency distillation
    targets, mean teachers, DQN targets. It runs like its source, on its own inputs.
    """

    Params = EMATargetParams
    follows = "source"

    def references(self) -> dict[str, str]:
        return {"source": self.params.source}

    def port_params(self) -> dict:
        return {}  # the copied ports carry the source's sizes already substituted

    def _copied(self, peers: Mapping[str, Component], outputs: bool) -> dict[str, Port]:
        source = peers.get(self.params.source)
        if source is None:
            return {}
        ports = source.resolved_outputs(peers) if outputs else source.resolved_inputs(peers)
        sizes = source.port_params()
        return {name: replace(port, shape=_concrete(port.shape, sizes))
                for name, port in ports.items()}

    def resolved_inputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        return self._copied(peers, outputs=False)

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        return self._copied(peers, outputs=True)

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_targets import EMAModule

        return EMAModule(context.references["source"], self.params.decay,
                         self.params.copy_every)
