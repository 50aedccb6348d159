"""Samples of a run's generative model as pictures: TensorBoard at each evaluation and
``dgraph sample RUN --steps K -o grid.png``.

A metric node implementing :class:`~dgraph.declare.Sampler` (``diffusion_samples``) draws the
samples; this module builds a finished run's nodes with their final weights, draws and
pictures. Drawing forks the random-number generators, so pictures taken during training never
change the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dgraph.compiler.instantiate import Instances, instantiate
from dgraph.declare import Sampler
from dgraph.errors import DgraphError
from dgraph.graph import Graph
from dgraph.runtime.checkpoint import load_weights
from dgraph.runtime.pictures import sample_picture
from dgraph.runtime.setup import load_initial_weights

__all__ = ["SampleError", "draw", "final_instances", "samplers"]

GALLERY = 64  # samples per picture in TensorBoard


class SampleError(DgraphError):
    """``dgraph sample`` cannot draw what was asked (no sampler node, a step count it cannot
    take, a run without final weights)."""


def samplers(graph: Graph, instances: Instances) -> dict[str, Sampler]:
    """The metric nodes of ``graph`` that draw samples, by name."""
    return {name: module for name, module in instances.modules.items()
            if graph.nodes[name].kind == "metric" and isinstance(module, Sampler)}


def draw(sampler: Sampler, steps: int, n: int, *, seed: int | None = None,
         device: Any = None) -> Any:
    """A picture of ``n`` samples after ``steps`` sampler steps, drawn with the random-number
    generators forked (``seed``: seeded inside the fork, so the picture repeats)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and \
        torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        samples = sampler.samples(steps, n, device).detach().float().cpu()
    reference = sampler.reference(max(n, 1024)) if samples.dim() == 2 else None
    labels = sampler.sample_labels(n)
    return sample_picture(samples, labels=labels, reference=reference)


def gallery(samplers_by_name: dict[str, Sampler]) -> dict[str, Any]:
    """TensorBoard pictures of each sampler at each of its step counts: tag -> HWC uint8."""
    import numpy as np

    pictures = {}
    for name, sampler in samplers_by_name.items():
        for steps in sampler.sample_steps:
            picture = draw(sampler, steps, GALLERY).convert("RGB")
            pictures[f"samples/{name}@{steps}"] = np.asarray(picture)
    return pictures


def final_instances(graph: Graph, run_dir: Path, device: Any = "cpu") -> Instances:
    """Every node of a finished run built as training built it, with its final weights (and
    the ``init`` weights of the nodes that were never trained)."""
    final = run_dir / "final"
    if not final.is_dir() or not any(final.glob("*.safetensors")):
        raise SampleError(f"{run_dir} has no final weights (final/*.safetensors): the run has "
                          "not finished; finish it with `dgraph train SPEC --out "
                          f"{run_dir} --resume`")
    instances = instantiate(graph, device=device, seed=graph.spec.train.seed, run_dir=run_dir)
    load_initial_weights(graph, instances, run_dir)
    for name, module in instances.unique_modules().items():
        path = final / f"{name}.safetensors"
        if path.is_file():
            module.load_state_dict(load_weights(path), strict=False)
    for module in instances.modules.values():
        module.eval()
    return instances
