"""``expert_trajectories``: (start, start + M) snapshot pairs of trained expert networks.

Reads the snapshots a ``snapshot`` metric wrote (``<run>/snapshots/<expert>/step_*.safetensors``,
see :mod:`dgraph.components.dd.snapshot`) and, every step, draws one expert and a start
snapshot from a window, as trajectory matching (Cazenavette et al. 2022) needs. The window's
upper bound can grow with training, the curriculum of DATM (Guo et al. 2024).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from dgraph.declare import Module, NodeRef, Outputs, Tensor, param, sampler
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["ExpertTrajectories", "read_trajectory", "window_upper"]

_FILE = re.compile(r"^step_(\d+)\.safetensors$")


def read_trajectory(folder: Path) -> tuple[list[int], torch.Tensor]:
    """The steps and the flat parameter vectors ``[T, P]`` of one expert's snapshots, in step
    order; each vector is in the model's ``named_parameters()`` order (the file's metadata)."""
    import torch
    from safetensors import safe_open

    files = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := _FILE.match(p.name)))
    steps, rows = [], []
    for step, path in files:
        with safe_open(str(path), framework="pt") as handle:
            order = (handle.metadata() or {}).get("order")
            names = order.split(",") if order else list(handle.keys())
            rows.append(torch.cat([handle.get_tensor(n).reshape(-1).float() for n in names]))
        steps.append(step)
    if not rows:
        raise ValueError(f"no snapshots (step_*.safetensors) in {folder}")
    return steps, torch.stack(rows)


def window_upper(step: int, max_start: int, max_start_end: int | None, grow_steps: int) -> int:
    """The largest start index at training step ``step``: ``max_start`` growing linearly to
    ``max_start_end`` over ``grow_steps`` steps (rounded down), then staying there."""
    if max_start_end is None or grow_steps == 0:
        return max_start
    frac = min(step, grow_steps) / grow_steps
    return max_start + int((max_start_end - max_start) * frac)


def _resolve_run(run: str, context: BuildContext) -> Path:
    """``run`` as a spec writes it: relative to the spec's folder, else a run beside this
    run's directory or under ``runs/`` (where a zoo run is trained, as ``init.run``)."""
    candidates = [context.resolve_path(run)]
    if context.run_dir is not None:
        from dgraph.runtime.setup import run_candidates

        candidates += run_candidates(run, context.run_dir)[1:]
    else:
        candidates.append(Path("runs") / run)
    for candidate in candidates:
        if (candidate / "snapshots").is_dir():
            return candidate
    raise ValueError(f"no expert snapshots for run '{run}': looked for a snapshots folder in "
                     + ", ".join(str(c) for c in candidates)
                     + ". Train the experts first (e.g. `dgraph train dd_mtt_experts --out "
                     f"{candidates[-1]}`), or point run at that run directory")


@sampler("expert_trajectories")
class ExpertTrajectories(Module):
    """Sample a (start, start + span) pair of snapshots of a trained expert every step.

    Each step draws an expert ``k`` uniformly, a start index ``t`` uniformly in
    ``[min_start, min(upper, T_k - 1 - span)]``, and outputs the snapshots ``theta*_t``
    (``start``) and ``theta*_{t+span}`` (``target``) of that expert as flat vectors.

    ``upper`` is ``max_start``, growing linearly to ``max_start_end`` over ``grow_steps``
    training steps when given (DATM's curriculum). Indices count snapshots in step order
    (index 0 is the initialisation). Draws use torch's global generator, which is seeded by
    ``train.seed`` and saved in checkpoints, so runs are reproducible and resume exactly. The
    snapshots are held in memory (a non-persistent buffer: not in checkpoints).
    """

    def __init__(self, *,
                 run: str = param(min_length=1, doc="the experts' run directory (relative: the "
                                  "spec's folder) or a run name beside this run / under runs/"),
                 experts: list[str] | None = param(None, doc="snapshot folders under "
                                                   "<run>/snapshots (default: all of them)"),
                 span: int = param(1, gt=0, doc="M: the target is M snapshots after the start"),
                 min_start: int = param(0, ge=0, doc="the smallest start index"),
                 max_start: int = param(ge=0, doc="the largest start index (at step 0)"),
                 max_start_end: int | None = param(None, ge=0, doc="the largest start index "
                                                   "after grow_steps steps (default: fixed)"),
                 grow_steps: int = param(0, ge=0, doc="training steps over which the upper "
                                         "bound grows from max_start to max_start_end"),
                 model: NodeRef | None = param(None, doc="the experts' network (as run from "
                                               "the snapshots): its parameter count is "
                                               "checked, and stands in for the snapshots in a "
                                               "dry run before the experts are trained"),
                 context: BuildContext) -> None:
        super().__init__()
        import torch

        if max_start < min_start:
            raise ValueError(f"max_start ({max_start}) is below min_start ({min_start})")
        self.span, self.min_start, self.max_start = span, min_start, max_start
        self.max_start_end, self.grow_steps = max_start_end, grow_steps
        self.step = 0
        self.last: tuple[int, int] = (0, min_start)  # (expert, start index) of the last draw
        size = None if model is None else sum(p.numel() for p in model.parameters())
        try:
            root = _resolve_run(run, context) / "snapshots"
        except ValueError:
            if not (context.meta and size is not None):
                raise
            # A dry run before the experts exist: a stand-in of the network's size.
            self.lengths = [min_start + span + 1]
            self.register_buffer("buffer", torch.empty(1, self.lengths[0], size,
                                                       device="meta"), persistent=False)
            return
        names = experts if experts is not None else sorted(
            p.name for p in root.iterdir() if p.is_dir())
        if not names:
            raise ValueError(f"no expert snapshot folders in {root}")
        trajectories = []
        for name in names:
            if not (root / name).is_dir():
                raise ValueError(f"expert '{name}' has no snapshot folder {root / name}")
            trajectories.append(read_trajectory(root / name)[1])
        sizes = {t.shape[1] for t in trajectories}
        if len(sizes) > 1:
            raise ValueError(f"the experts' networks differ in size ({sorted(sizes)} parameters)")
        if size is not None and sizes != {size}:
            raise ValueError(f"the snapshots in {root} hold {sizes.pop()} parameters, but the "
                             f"network named by model has {size}")
        lengths = [t.shape[0] for t in trajectories]
        if min(lengths) <= min_start + span:
            raise ValueError(f"an expert has {min(lengths)} snapshots: too few for a start at "
                             f"index {min_start} and a target {span} later")
        longest = max(lengths)
        buffer = torch.stack([torch.cat([t, t[-1:].expand(longest - len(t), -1)])
                              for t in trajectories])
        self.register_buffer("buffer", buffer, persistent=False)  # [K, T, P]
        self.lengths = lengths

    def set_step(self, step: int) -> None:
        """The runtime's step (the curriculum's clock)."""
        self.step = step

    def window(self, expert: int) -> tuple[int, int]:
        """The start indices ``[low, high]`` allowed for ``expert`` at the current step."""
        upper = window_upper(self.step, self.max_start, self.max_start_end, self.grow_steps)
        return self.min_start, min(upper, self.lengths[expert] - 1 - self.span)

    def forward(self) -> Outputs(start=Tensor("P", "theta*_t: the start snapshot, flat"),
                                 target=Tensor("P", "theta*_{t+M}: the snapshot M later")):
        import torch

        if self.buffer.is_meta:
            return {"start": self.buffer[0, 0], "target": self.buffer[0, self.span]}
        expert = int(torch.randint(len(self.lengths), ()))
        low, high = self.window(expert)
        start = int(torch.randint(low, high + 1, ()))
        self.last = (expert, start)
        return {"start": self.buffer[expert, start], "target": self.buffer[expert,
                                                                           start + self.span]}

    def extra_repr(self) -> str:
        return f"experts={len(self.lengths)}, span={self.span}"


# The parameter that names another run: `dgraph train` trains a missing zoo run first (as for
# ``init: {run: ...}``; see dgraph.runtime.setup.missing_runs).
ExpertTrajectories.component.runs_read = ("run",)
