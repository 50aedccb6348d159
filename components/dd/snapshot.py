"""``snapshot``: a metric that saves another node's parameters into the run directory.

Expert trajectories for trajectory matching (Cazenavette et al. 2022) are the parameters of
networks trained on real data, saved along their training. This metric writes the parameters
of the node named by ``model`` as ``<run>/<folder>/step_XXXXXXXX.safetensors`` (``folder``
defaults to ``snapshots/<this node>``) at every evaluation (``train.eval.every`` steps, and the
last step), plus the initial parameters before the first training step. Files are written
atomically (:func:`dgraph.runtime.checkpoint.save_weights`), only inside the run directory;
without one (a dry run, a bare build) nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from dgraph.components._inputs import run_dir_path

from dgraph.declare import Module, NodeRef, Outputs, Scalar, metric, param
from dgraph.registry import BuildContext

__all__ = ["Snapshot", "snapshot_name"]


def snapshot_name(step: int) -> str:
    """The file name of the snapshot taken after ``step`` training steps."""
    return f"step_{step:08d}.safetensors"


@metric("snapshot")
class Snapshot(Module):
    """Save ``model``'s parameters (``named_parameters()`` order and names) at each evaluation.

    The file ``step_XXXXXXXX.safetensors`` is named by the number of training steps done;
    step 0 (the initialisation, after any ``init`` weights are loaded) is written before the
    first step of a run that starts from scratch. Reports ``saved``: the step written.
    """

    def __init__(self, *,
                 model: NodeRef = param(doc="the node whose parameters are saved"),
                 folder: str | None = param(None, doc="folder inside the run directory "
                                            "(default: snapshots/<this node>)"),
                 context: BuildContext) -> None:
        super().__init__()
        self._model = (model,)  # not a submodule: its weights stay the model node's own
        raw = folder if folder is not None else f"snapshots/{context.node}"
        self.folder: Path | None = None if context.meta else run_dir_path(context, "folder",
                                                                          raw)
        self.step = 0

    def set_step(self, step: int) -> None:
        """The runtime's step (before each training step and before an evaluation)."""
        self.step = step
        if step == 0:
            self.write()

    def write(self) -> Path | None:
        """Write the snapshot of the current step; None when there is no run directory."""
        from dgraph.runtime.checkpoint import save_weights
        from dgraph.runtime.distributed import world_from_env

        if self.folder is None or world_from_env().rank != 0:  # under torchrun, rank 0 writes
            return None

        params = {name: p.detach() for name, p in self._model[0].named_parameters()}
        path = self.folder / snapshot_name(self.step)
        # safetensors keeps its own key order; the parameter order is kept in the metadata.
        save_weights(path, params, {"step": str(self.step), "order": ",".join(params)})
        return path

    def reset(self) -> None:
        pass

    def update(self) -> None:
        pass

    def compute(self) -> Outputs(saved=Scalar(None, "the step whose snapshot was written")):
        self.write()
        return {"saved": float(self.step)}
