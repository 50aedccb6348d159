"""Sample quality of a diffusion model or few-step student, at several step counts.

``diffusion_samples`` makes its own inputs: at each evaluation it draws ``num_samples`` points
with the diffusers sampling loop of a scheduler node (DDIM for teachers and progressive
students, LCM's multi-step consistency sampling for consistency students) at each step count
of ``steps``, and compares them with the held-out split of a data node:

* ``energy_distance@K``: the energy distance (``energy_distance`` metric) to held-out data;
* ``mode_coverage@K``: the fraction of modes (classes of the held-out ``labels`` port) that
  receive at least ``min_share`` of their fair share ``n / modes`` of samples lying within a
  mode's radius (``radius_factor`` times the RMS distance of that mode's held-out points to
  their centre);
* ``in_modes@K``: the fraction of samples within some mode's radius (sample quality).

For images (digits), a frozen ``classifier`` node (a zoo spec's trained CNN) adds:

* ``frechet@K``: the Frechet distance (``frechet_distance``) between its ``features`` of the
  held-out images and of the samples;
* ``class_coverage@K``: the fraction of classes it assigns to at least ``min_share`` of
  their fair share of samples;
* ``class_accuracy@K``: with ``num_classes`` (class-conditional sampling, labels cycling
  ``0..C-1``, optionally with classifier-free ``guidance``), how often it agrees with the
  conditioning label.

Samples are mapped to the data's space by ``x * scale + shift`` (``0.5``, ``0.5`` for a model
of images in ``[-1, 1]`` and data in ``[0, 1]``) before any comparison.
"""

from __future__ import annotations

from typing import Annotated, Any

from dgraph.components._inputs import input_error
from pydantic import Field

from dgraph.declare import Module, NodeRef, Scalar, metric, param
from dgraph.registry import BuildContext

__all__ = ["DiffusionSamples", "mode_coverage"]


def mode_coverage(samples: Any, real: Any, labels: Any, *, radius_factor: float = 3.0,
                  min_share: float = 0.1) -> tuple[float, float]:
    """``(mode coverage, fraction of samples in some mode)`` of ``samples`` against the modes
    of ``real`` given by ``labels`` (see the module's documentation)."""
    import torch

    real = real.flatten(1).double()
    samples = samples.flatten(1).double()
    classes = labels.unique()
    centres = torch.stack([real[labels == c].mean(0) for c in classes])
    radii = torch.stack([(real[labels == c] - centres[i]).square().sum(1).mean().sqrt()
                         for i, c in enumerate(classes)]) * radius_factor
    dist = torch.cdist(samples, centres)
    nearest = dist.argmin(1)
    inside = dist.gather(1, nearest[:, None]).squeeze(1) <= radii[nearest]
    counts = torch.bincount(nearest[inside], minlength=len(classes)).double()
    fair = samples.shape[0] / len(classes)
    covered = (counts >= min_share * fair).double().mean()
    return float(covered), float(inside.double().mean())


@metric("diffusion_samples")
class DiffusionSamples(Module):
    """Sample quality of ``denoiser`` under ``scheduler``'s sampler at several step counts.

    Measured against the held-out split of ``data`` (see the module's documentation).
    Values: ``energy_distance@K``, ``mode_coverage@K``, ``in_modes@K``.
    """

    def __init__(self, *, denoiser: NodeRef = param(doc="the network sampled"),
                 scheduler: NodeRef = param(doc="the noise_scheduler node whose diffusers "
                                            "sampler runs (ddim, lcm, euler, ...)"),
                 data: NodeRef = param(doc="the data node whose held-out split is the "
                                       "reference"),
                 steps: list[Annotated[int, Field(ge=1, le=1000)]] = param(
                     [1, 2, 4], min_length=1, doc="sampling step counts"),
                 num_samples: int = param(2048, ge=2, doc="samples per step count (held-out "
                                          "points used: as many, at most)"),
                 x: str = param("x", doc="the data port of samples"),
                 labels: str | None = param("mode", doc="the data port of mode labels "
                                            "(None: no mode coverage)"),
                 radius_factor: float = param(3.0, gt=0, allow_inf_nan=False,
                                              doc="a mode's radius, in RMS distances"),
                 min_share: float = param(0.1, gt=0, le=1, allow_inf_nan=False,
                                          doc="share of n / modes a covered mode receives"),
                 classifier: NodeRef | None = param(None, doc="a frozen classifier node "
                                                    "(logits and features outputs) for "
                                                    "frechet, class_coverage, class_accuracy"),
                 sampler: NodeRef | None = param(None, doc="a node that samples in place "
                                                 "of the scheduler's diffusers loop (a "
                                                 "flow-map student's jumps, a learned "
                                                 "solver): its sample(denoiser, predict, "
                                                 "noise, steps)"),
                 num_classes: int | None = param(None, gt=0, doc="sample class-"
                                                 "conditionally, labels cycling 0..C-1"),
                 guidance: float = param(1.0, ge=0, allow_inf_nan=False,
                                         doc="classifier-free guidance scale (1: none)"),
                 scale: float = param(1.0, allow_inf_nan=False, doc="data = sample * scale "
                                      "+ shift"),
                 shift: float = param(0.0, allow_inf_nan=False, doc="data = sample * scale "
                                      "+ shift"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair
        from dgraph.components.diffusion.solver import check_guidance

        check_pair(context, denoiser, scheduler)
        null_class = check_guidance(context, denoiser, guidance)
        if num_classes and not getattr(denoiser, "num_classes", None):
            raise input_error(context, "num_classes", "class-conditional sampling needs a "
                              "class-conditional denoiser, and this one is unconditional",
                              code="bad-param", expected="num_classes: null",
                              found=f"num_classes: {num_classes}", hint="set num_classes on "
                              "the denoiser, or remove it here")
        held_out = getattr(data, "eval", None) or {}
        for name, port in (("x", x), ("labels", labels)):
            if port is not None and held_out and port not in held_out:
                raise input_error(context, name, f"the data node has no port '{port}'",
                                  code="bad-param", expected=f"one of {sorted(held_out)}",
                                  found=port, hint="name a port of the data node")
        counts = getattr(sampler, "step_counts", None)
        missing = [k for k in steps if counts is not None and k not in counts]
        if missing:
            raise input_error(context, "steps", f"the sampler node takes {counts} steps, not "
                              f"{missing}", code="bad-param", expected=f"step counts among "
                              f"{counts}", found=str(list(steps)), hint="evaluate the step "
                              "counts the sampler was built for, or add them to its steps")
        self.sampler = (sampler,) if sampler is not None else ()
        self.refs = (denoiser, scheduler, data)
        self.classifier = (classifier,) if classifier is not None else ()
        self.num_classes, self.guidance, self.null_class = num_classes, guidance, null_class
        self.scale, self.shift = scale, shift
        self.steps, self.n = list(steps), num_samples
        self.x, self.labels = x, labels
        self.radius_factor, self.min_share = radius_factor, min_share

    def reset(self) -> None:
        pass

    def update(self) -> None:
        pass

    @property
    def sample_steps(self) -> list[int]:
        return self.steps

    def sample_labels(self, n: int) -> Any:
        return self.labels_for(n, "cpu")

    def reference(self, n: int) -> Any:
        _, _, data = self.refs
        return data.eval[self.x][:n] if getattr(data, "eval", None) else None

    def labels_for(self, n: int, device: Any) -> Any:
        """The conditioning labels of ``n`` samples (``0..C-1`` cycling), or None."""
        import torch

        if not self.num_classes:
            return None
        return torch.arange(n, device=device) % self.num_classes

    def samples(self, steps: int, n: int | None = None, device: Any = None) -> Any:
        """``n`` samples (default ``num_samples``) after ``steps`` sampler steps, in the
        data's space (``x * scale + shift``)."""
        import torch
        from dgraph.components.diffusion.solver import guided

        denoiser, scheduler, data = self.refs
        real = data.eval[self.x]
        device = device or next(denoiser.parameters()).device
        n = n or self.n
        noise = torch.randn((n, *real.shape[1:]), device=device)
        labels = self.labels_for(n, device)
        was = denoiser.training
        denoiser.eval()
        try:
            with torch.no_grad():
                def predict(x: Any, t: Any) -> Any:
                    return guided(denoiser, x, t, labels, self.guidance, self.null_class)

                if self.sampler:
                    x = self.sampler[0].sample(denoiser, predict, noise, steps)
                else:
                    x = scheduler.sample(predict, noise, steps)
        finally:
            denoiser.train(was)
        return x * self.scale + self.shift if (self.scale, self.shift) != (1.0, 0.0) else x

    def _classify(self, images: Any) -> tuple[Any, Any]:
        import torch

        (classifier,) = self.classifier
        device = next(classifier.parameters()).device
        logits, features = [], []
        with torch.no_grad():
            for chunk in images.split(512):
                out = classifier(chunk.to(device))
                logits.append(out["logits"].float().cpu())
                features.append(out["features"].float().flatten(1).cpu())
        return torch.cat(logits), torch.cat(features)

    def compute(self) -> Scalar(None, "energy_distance@K, mode_coverage@K, in_modes@K, "
                                "frechet@K, class_coverage@K, class_accuracy@K"):
        import torch
        from dgraph.components.metrics.distribution import EnergyDistance, FrechetDistance

        _, _, data = self.refs
        real = data.eval[self.x][: self.n]
        out: dict[str, float] = {}
        real_features = self._classify(real)[1] if self.classifier else None
        for k in self.steps:
            fake = self.samples(k).cpu()
            energy = EnergyDistance.create(max_samples=max(self.n, 2))
            energy.update(real=real.flatten(1), fake=fake.flatten(1))
            out[f"energy_distance@{k}"] = energy.compute()["value"]
            if self.labels is not None:
                coverage, inside = mode_coverage(fake, real, data.eval[self.labels][: self.n],
                                                 radius_factor=self.radius_factor,
                                                 min_share=self.min_share)
                out[f"mode_coverage@{k}"] = coverage
                out[f"in_modes@{k}"] = inside
            if self.classifier:
                logits, features = self._classify(fake.to(real.dtype))
                frechet = FrechetDistance.create(max_samples=max(self.n, 2))
                frechet.update(real=real_features, fake=features)
                out[f"frechet@{k}"] = frechet.compute()["value"]
                predicted = logits.argmax(1)
                classes = logits.shape[1]
                counts = torch.bincount(predicted, minlength=classes).double()
                fair = predicted.numel() / classes
                out[f"class_coverage@{k}"] = float((counts >= self.min_share * fair)
                                                   .double().mean())
                wanted = self.labels_for(fake.shape[0], "cpu")
                if wanted is not None:
                    out[f"class_accuracy@{k}"] = float((predicted == wanted).double().mean())
        return out
