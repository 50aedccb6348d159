"""``inner_train``: N steps of SGD on a functional copy of another node's network (inner loops).

The network named by ``model`` is run with ``torch.func.functional_call`` on a flat parameter
vector ``theta`` (the model's parameters in ``named_parameters()`` order, flattened and
concatenated), so its own weights are untouched unless ``write_back`` says otherwise. Two modes:

* ``differentiable: true`` — the unroll is part of the autograd graph (``create_graph``): the
  final parameters are a differentiable function of ``x``, the soft labels ``y_soft``, the
  learning rate ``lr`` and the start, as trajectory matching needs (Cazenavette et al. 2022);
* ``differentiable: false`` — every step is detached (gradient matching's inner epochs, which
  train the network itself when ``write_back`` is on).

The dry run measures what one step keeps for backward and reports the memory of the unroll
(see :class:`dgraph.declare.DryRunReport`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from dgraph.declare import Labels, Module, NodeRef, Outputs, Scalar, Tensor, op, param

if TYPE_CHECKING:
    import torch

__all__ = ["InnerTrain", "flat_parameters"]


def flat_parameters(module: Any) -> torch.Tensor:
    """``module``'s parameters as one detached vector, in ``named_parameters()`` order.

    The layout ``inner_train`` uses for its ``start`` input and its outputs.
    """
    import torch

    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _size(size: float) -> str:
    """``size`` bytes in the largest binary unit that keeps it at least 1 (``1.5 MiB``)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@op("inner_train", tappable=False)
class InnerTrain(Module):
    """Train a functional copy of ``model`` for ``steps`` SGD steps on ``x`` and its labels.

    Starting from ``start`` (a flat parameter vector, e.g. an expert's snapshot) or, when
    nothing feeds it, from the model's current parameters, each step ``i`` takes a minibatch
    ``(x_b, y_b)`` and computes

        ``g_i = d/dtheta loss(f(x_b; theta_i), y_b)``,  ``v_i = momentum * v_{i-1} + g_i``,
        ``theta_{i+1} = theta_i - lr_i * v_i``

    where ``f`` is the model's output port ``output_port`` called with ``x_b`` on its input
    port ``input_port`` (``functional_call``; buffers are copies, so batch norm statistics of
    the model are not changed). Wire the model node's own input to ``x`` too: validation then
    checks that ``x`` fits the network.

    ``loss`` is the cross-entropy with the hard labels ``y``, or with the soft labels
    ``y_soft`` (probabilities, or logits turned into ``softmax(y_soft / T)``); ``kl`` is
    ``KL(p || softmax(f))`` instead, whose gradient in ``theta`` is the same.
    ``lr`` comes from the ``lr`` input (one value, or one per step: a learnable rate) or from
    ``default_lr``. Minibatches are consecutive slices of a random permutation of the set
    (torch's global generator; a new permutation when fewer than ``batch_size`` remain);
    without ``batch_size`` every step uses the whole set.

    With ``differentiable: true`` (and gradients enabled) the unroll keeps its graph:
    gradients of the outputs reach ``x``, ``y_soft``, ``lr`` and ``start``. With ``false``
    (or under ``no_grad``) every step is detached. ``write_back`` copies the final
    parameters (and the updated buffer copies) into the model itself.

    Outputs: ``params`` = theta_N, ``start`` = theta_0 (both flat, ``P`` values) and
    ``inner_loss``, the loss of the last step (detached, for logging).
    """

    def __init__(self, *,
                 model: NodeRef = param(doc="the node whose network is trained (a functional "
                                        "copy: its own weights change only with write_back)"),
                 steps: int = param(gt=0, le=10_000, doc="inner SGD steps N"),
                 default_lr: float = param(0.01, gt=0.0, allow_inf_nan=False,
                                           doc="the inner learning rate when nothing feeds "
                                           "the lr input"),
                 momentum: float = param(0.0, ge=0.0, lt=1.0,
                                         doc="heavy-ball momentum of the inner SGD"),
                 batch_size: int | None = param(None, gt=0, doc="examples per inner step "
                                                "(default: the whole set every step)"),
                 loss: Literal["cross_entropy", "kl"] = param(
                     "cross_entropy", doc="cross-entropy with the labels, or KL(p || q) from "
                     "the soft labels (same gradients in theta)"),
                 soft_labels: Literal["probs", "logits"] = param(
                     "probs", doc="what y_soft holds: probabilities, or logits turned into "
                     "softmax(y_soft / temperature)"),
                 temperature: float = param(1.0, gt=0.0, allow_inf_nan=False,
                                            doc="temperature of soft_labels: logits"),
                 differentiable: bool = param(True, doc="unroll with create_graph (trajectory "
                                              "matching) or detach every step"),
                 write_back: bool = param(False, doc="copy the final parameters into the "
                                          "model after the unroll (gradient matching)"),
                 input_port: str = param("x", doc="the model's input port that x feeds"),
                 output_port: str = param("logits", doc="the model's output port used as "
                                          "the class scores")) -> None:
        super().__init__()
        # Held in a tuple so that the referenced network is not a submodule of this node:
        # its parameters stay the model node's own (saved, trained and frozen there).
        self._model = (model,)
        self.steps, self.default_lr, self.momentum = steps, default_lr, momentum
        self.batch_size, self.loss, self.soft_labels = batch_size, loss, soft_labels
        self.temperature, self.differentiable, self.write_back = (temperature, differentiable,
                                                                  write_back)
        self.input_port, self.output_port = input_port, output_port
        self.estimate: str | None = None  # the dry run's memory report

    def forward(self, x: Tensor("N, ...", "the inputs trained on (the synthetic set)"),
                y: Labels("N", "hard labels of x") = None,
                y_soft: Tensor("N, C", "soft labels of x (probabilities or logits)") = None,
                lr: Tensor("*", "the inner learning rate: one value, or one per step "
                           "(default: default_lr)") = None,
                start: Tensor("P", "flat start parameters (default: the model's)") = None,
                ) -> Outputs(params=Tensor("P", "theta_N, the trained parameters, flat"),
                             start=Tensor("P", "theta_0, the start, flat"),
                             inner_loss=Scalar(None, "the loss of the last inner step "
                                               "(detached)")):
        import contextlib

        import torch

        model = self._model[0]
        if (y is None) == (y_soft is None):
            raise ValueError("inner_train needs exactly one of its inputs y (hard labels) or "
                             "y_soft (soft labels) wired; found "
                             + ("both" if y is not None else "neither"))
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters to train")
        names = [name for name, _ in named]
        shapes = [p.shape for _, p in named]
        sizes = [p.numel() for _, p in named]
        total = sum(sizes)
        if start is None:
            theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])
        else:
            if start.dim() != 1 or start.numel() != total:
                raise ValueError(f"start has shape {list(start.shape)}, but the model has "
                                 f"{total} parameters: expected a flat vector [{total}]")
            theta0 = start
        rates = self._rates(lr, theta0)
        labels = y if y is not None else self._soft(y_soft)
        build = self.differentiable and (torch.is_grad_enabled() or x.is_meta)
        if not build:
            x, labels, rates = x.detach(), labels.detach(), rates.detach()
        buffers = {name: b.clone() for name, b in model.named_buffers()}

        def step_loss(theta: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
            params = {name: part.view(shape) for name, part, shape in
                      zip(names, torch.split(theta, sizes), shapes, strict=True)}
            xb = x if index is None else x.index_select(0, index)
            tb = labels if index is None else labels.index_select(0, index)
            out = torch.func.functional_call(model, {**params, **buffers}, (),
                                             {self.input_port: xb})
            if isinstance(out, dict):
                if self.output_port not in out:
                    raise ValueError(f"the model has no output '{self.output_port}' "
                                     f"(output_port); it outputs {', '.join(out)}")
                out = out[self.output_port]
            return self._loss(out, tb)

        batches = self._batches(x.shape[0], x.device, meta=x.is_meta)
        theta = theta0 if build and theta0.requires_grad else \
            theta0.detach().requires_grad_(True)
        velocity: torch.Tensor | None = None
        loss = theta.new_zeros(())
        saved: list[int] = []  # bytes each tensor saved for backward holds (dry run only)

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        for i, index in enumerate(batches):
            # On the meta device, one step's saved tensors are measured for the report.
            hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) \
                if x.is_meta and i == 0 else contextlib.nullcontext()
            with torch.enable_grad(), hooks:
                if not build:
                    theta = theta.detach().requires_grad_(True)
                loss = step_loss(theta, index)
                (grad,) = torch.autograd.grad(loss, theta, create_graph=build)
                with torch.set_grad_enabled(build):
                    velocity = grad if velocity is None or not self.momentum else \
                        self.momentum * velocity + grad
                    theta = theta - rates[min(i, len(rates) - 1)] * velocity
        if not build:
            theta = theta.detach()
        if x.is_meta:
            self.estimate = self._estimate(sum(saved), total, theta0.element_size(), build,
                                           x.shape[0] if batches[0] is None else len(batches[0]))
        if self.write_back:
            with torch.no_grad():
                for (_, p), part in zip(named, torch.split(theta.detach(), sizes), strict=True):
                    p.copy_(part.view_as(p))
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
        return {"params": theta, "start": theta0 if build else theta0.detach(),
                "inner_loss": loss.detach()}

    def dry_run_report(self) -> list[str]:
        """The memory estimate of the last meta-device run (the :class:`DryRunReport` hook)."""
        return [self.estimate] if self.estimate else []

    # -- helpers ---------------------------------------------------------------------------
    def _rates(self, lr: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        import torch

        if lr is None:
            return torch.full((1,), self.default_lr, dtype=like.dtype, device=like.device)
        rates = lr.reshape(-1)
        if rates.numel() not in (1, self.steps):
            raise ValueError(f"lr has {rates.numel()} values (shape {list(lr.shape)}); "
                             f"expected one, or one per inner step ({self.steps})")
        return rates

    def _soft(self, y_soft: torch.Tensor) -> torch.Tensor:
        import torch

        if self.soft_labels == "logits":
            return torch.softmax(y_soft / self.temperature, dim=-1)
        return y_soft

    def _loss(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        log_q = torch.log_softmax(scores.float(), dim=-1)
        if not target.is_floating_point():  # hard labels: KL with a one-hot is the CE
            return F.nll_loss(log_q, target)
        p = target.float()
        if p.shape != log_q.shape:
            raise ValueError(f"y_soft has shape {list(p.shape)} but the model's scores have "
                             f"{list(log_q.shape)}: one probability per class is expected")
        if self.loss == "kl":
            return (torch.xlogy(p, p) - p * log_q).sum(-1).mean()
        return -(p * log_q).sum(-1).mean()

    def _batches(self, n: int, device: Any, *, meta: bool) -> list[Any]:
        """The index tensor of each step's minibatch (None: the whole set)."""
        import torch

        size = self.batch_size
        if size is None or size >= n:
            return [None] * self.steps
        out: list[Any] = []
        perm: torch.Tensor | None = None
        pos = n
        for _ in range(self.steps):
            if pos + size > n:
                # On the meta device (the dry run) no random numbers are drawn.
                perm = torch.arange(n) if meta else torch.randperm(n)
                perm = perm.to(device)
                pos = 0
            assert perm is not None
            out.append(perm[pos:pos + size])
            pos += size
        return out

    def _estimate(self, saved: int, total: int, width: int, build: bool, batch: int) -> str:
        params = total * width
        if build:
            per_step = saved + params * (2 if self.momentum else 1)
            return (f"the differentiable unroll keeps about {_size(self.steps * per_step + params)}"
                    f" for backward: {self.steps} steps x ({_size(saved)} saved per step on a "
                    f"minibatch of {batch}, measured in the dry run, + theta: {total} "
                    f"parameters x {width} bytes{' x 2 with momentum' if self.momentum else ''})"
                    "; fewer steps or a smaller batch_size lower it")
        return (f"the detached inner training holds about {_size(saved + 4 * params)} at a time "
                f"({_size(saved)} saved for one step's backward on a minibatch of {batch}, "
                f"measured in the dry run, + theta, its gradient, velocity and start: {total} "
                f"parameters x {width} bytes x 4)")

