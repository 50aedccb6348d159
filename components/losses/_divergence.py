"""The maths the losses share: divergences exact where a probability is 0, and safe means.

Private: imported only inside the loss implementations, so it may import torch at the top.

Divergences take distributions as log-probabilities. The rule everywhere: a term whose weight
``p`` is 0 (a ``-inf`` logit, or an underflow) contributes exactly 0 to the value and to every
gradient. The weight's log-ratio is masked *before* the product, so ``0 * -inf`` and
``-inf - -inf`` never appear, neither in the value nor in the backward pass (a ``where`` after
the product still sends ``0 * nan`` into the gradient). A term with ``p > 0`` and ``q = 0``
contributes ``+inf``: the divergence is infinite, and the runtime's finite check reports it. A
row whose entries are all ``-inf`` is not a distribution at all: its log-softmax is NaN and so
is its divergence.

Means over a batch are sums divided by ``max(count, 1)`` with the count taken from shapes (no
host sync): an empty batch gives 0, still connected to the inputs (zero gradients).
"""

from __future__ import annotations

import torch

__all__ = [
    "at_least_float32",
    "generalized_jsd",
    "kl_div_terms",
    "kl_with_probs",
    "mean_or_zero",
    "same_shape",
    "zero_from",
]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a narrower float (fp16, bf16), else unchanged (no copy)."""
    return x.float() if x.is_floating_point() and x.dtype.itemsize < 4 else x


def same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str,
               hint: str = "put a projector in front of the student to match them") -> None:
    """Refuse two inputs of different shapes (the ports' ``...`` is checked statically; this
    catches what only the run knows)."""
    if a.shape != b.shape:
        raise ValueError(f"'{a_name}' has shape {list(a.shape)} but '{b_name}' has shape "
                         f"{list(b.shape)}; they must be equal ({hint})")


def mean_or_zero(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements; 0 (connected to ``x``) when there are none."""
    return x.sum() / max(x.numel(), 1)


def zero_from(*inputs: torch.Tensor) -> torch.Tensor:
    """A zero that depends on every input: backward through it gives zero gradients.

    The sum of empty slices, not ``0 * sum``: an infinite input must not make it NaN.
    """
    total = at_least_float32(inputs[0]).flatten()[:0].sum()
    for x in inputs[1:]:
        total = total + at_least_float32(x).flatten()[:0].sum()
    return total


def kl_with_probs(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor,
                  dim: int | None = -1) -> torch.Tensor:
    """``sum p (log p - log q)`` along ``dim`` (``None``: over everything) with
    ``p = exp(log_p)`` already at hand."""
    # The mask is on p, not on log_p > -inf: an underflowed p (log_p < -103 in float32) with
    # q = 0 would otherwise give 0 * inf.
    terms = p * torch.where(p > 0, log_p - log_q, 0.0)
    return terms.sum() if dim is None else terms.sum(dim)


def kl_div_terms(log_p: torch.Tensor, log_q: torch.Tensor, dim: int | None = -1) -> torch.Tensor:
    """``KL(p || q) = sum p (log p - log q)`` along ``dim`` (``None``: summed over everything);
    0 where ``p = 0``, inf where only ``q = 0``."""
    return kl_with_probs(log_p.exp(), log_p, log_q, dim)


def generalized_jsd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD of the GKD paper (Agarwal et al., 2024) per position (last dimension).

    ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` with the mixture
    ``m = beta * p_t + (1 - beta) * p_s``. Since ``JSD(beta) / beta -> KL(p_t || p_s)`` as
    ``beta -> 0`` and ``JSD(beta) / (1 - beta) -> KL(p_s || p_t)`` as ``beta -> 1``, the
    endpoints are defined as those limits, as in TRL's GKD trainer: ``beta = 0`` is the
    forward KL and ``beta = 1`` the reverse KL. For ``0 < beta < 1`` the value is always
    finite: ``m > 0`` wherever ``p_t`` or ``p_s`` is.
    """
    if beta <= 0.0:
        return kl_div_terms(log_t, log_s)
    if beta >= 1.0:
        return kl_div_terms(log_s, log_t)
    p_t, p_s = log_t.exp(), log_s.exp()
    m = beta * p_t + (1.0 - beta) * p_s
    # log m is only used where p_t > 0 or p_s > 0, where m > 0. Where both are 0, log(0) = -inf
    # would send 0 / 0 into the backward pass: those entries take log(1) and are masked anyway.
    log_m = torch.where(m > 0, m, 1.0).log()
    return beta * kl_with_probs(p_t, log_t, log_m) + (1.0 - beta) * kl_with_probs(p_s, log_s,
                                                                                   log_m)
