"""Distances between two sets of samples, accumulated over a whole held-out split.

Both are metric accumulators (see :mod:`dgraph.runtime.metrics`): ``update`` keeps the
batches (up to ``max_samples`` rows per side, on the CPU in float64), ``compute`` measures.
"""

from __future__ import annotations

from dgraph.declare import Features, Module, Scalar, metric, param

__all__ = ["EnergyDistance", "FrechetDistance"]


class _TwoSamples(Module):
    """Keeps the rows of ``real`` and ``fake`` seen so far, up to a bound per side."""

    def __init__(self, *, max_samples: int = param(10_000, ge=2, le=10_000_000,
                                                   doc="rows kept per side (the first ones)"),
                 ) -> None:
        super().__init__()
        self.max_samples = max_samples
        self.reset()

    def reset(self) -> None:
        self.seen: dict[str, list] = {"real": [], "fake": []}
        self.kept = {"real": 0, "fake": 0}

    def update(self, real: Features("B, D", "reference samples (e.g. held-out data)"),
               fake: Features("B, D", "samples to compare (e.g. a generator's)")) -> None:
        import torch

        for side, rows in (("real", real), ("fake", fake)):
            room = self.max_samples - self.kept[side]
            if room > 0:
                part = rows.detach().flatten(1)[:room].to("cpu", torch.float64)
                self.seen[side].append(part)
                self.kept[side] += part.shape[0]

    def _sides(self):
        import torch

        real, fake = (torch.cat(self.seen[s]) if self.seen[s] else None
                      for s in ("real", "fake"))
        if real is None or fake is None or real.shape[0] < 2 or fake.shape[0] < 2:
            raise ValueError("needs at least 2 samples on each side; the evaluation split gave "
                             f"{self.kept['real']} real and {self.kept['fake']} fake")
        return real, fake


@metric("energy_distance")
class EnergyDistance(_TwoSamples):
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo), Euclidean.

    The cross term averages all pairs; the within terms average pairs of distinct rows (the
    unbiased form), so two samples of one distribution give about 0 and the value can be
    slightly negative.
    """

    def compute(self) -> Scalar(None, "the energy distance"):
        import torch

        real, fake = self._sides()

        def within(x):
            n = x.shape[0]
            return torch.cdist(x, x).sum() / (n * (n - 1))

        value = 2 * torch.cdist(real, fake).mean() - within(real) - within(fake)
        return {"value": float(value)}


@metric("frechet_distance")
class FrechetDistance(_TwoSamples):
    """Frechet distance of Gaussians fitted to both sides (the formula behind FID).

    ``|mu_r - mu_f|^2 + Tr(S_r) + Tr(S_f) - 2 Tr((S_r^1/2 S_f S_r^1/2)^1/2)`` with sample
    covariances (denominator n - 1), computed in float64 through symmetric eigendecompositions
    (eigenvalues below zero from round-off are clamped to zero).
    """

    def compute(self) -> Scalar(None, "the Frechet distance"):
        import torch

        real, fake = self._sides()
        mu_r, mu_f = real.mean(0), fake.mean(0)
        cov_r, cov_f = torch.cov(real.T).reshape(real.shape[1], -1), torch.cov(
            fake.T).reshape(fake.shape[1], -1)
        values, vectors = torch.linalg.eigh(cov_r)
        root_r = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        middle = root_r @ cov_f @ root_r
        cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
        value = (mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * cross
        return {"value": float(value)}
