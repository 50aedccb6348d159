"""Gradients as values: the gradient of a loss with respect to a model's parameters, as ports.

``param_grad`` differentiates a loss of another node's model (a :class:`~dgraph.declare.NodeRef`)
on the inputs it is fed, and outputs that gradient; with ``differentiable`` the result keeps
its graph (``create_graph=True``), so a loss on it trains whatever fed ``x`` or ``y`` (the
synthetic images of gradient matching, learnable soft labels). ``gradient_match`` compares two
such gradients with the layer-wise distance of Zhao et al. 2021 (Dataset Condensation with
Gradient Matching), or with plain cosine or MSE.

Output layout (both ports are always produced; the module records how they were cut, in
``ParamGrad.layout``):

* ``grad``: every parameter's gradient flattened and concatenated in ``named_parameters()``
  order, shape ``[G]`` (G = the number of parameters);
* ``rows``: one row per output neuron of every parameter with two or more dimensions (a
  linear weight ``[out, in]`` gives ``out`` rows of ``in`` entries, a conv weight
  ``[out, in, k, k]`` ``out`` rows of ``in*k*k``), zero-padded on the right to the widest row
  ``K``, stacked in parameter order: ``[R, K]``. One-dimensional parameters (biases, norm
  scales) are left out, as in Zhao et al.'s distance. Zero padding changes neither dot
  products nor norms, so a row-wise cosine over ``rows`` is the per-neuron cosine of each
  layer, and ``gradient_match`` summing it over rows is the paper's sum over layers and
  output neurons.

The model node is an ordinary node of the spec (its own inputs wired, e.g. to the data, so
that it validates; it runs by itself only if a loss needs its outputs). Give it
``reinit_every: 1`` for a fresh random network at every step, as gradient matching draws.

With ``per_class: C`` the gradient is taken separately for the examples of each class
(labels ``0..C-1``; each class's loss is the mean over its examples) and both ports gain a
leading ``C`` dimension; matching then sums over classes, as in the paper.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import Module, NodeRef, Outputs, Scalar, Tensor, loss, op, param
from dgraph.ports import Port, ShapeError, format_shape

__all__ = ["ParamGrad", "gradient_match"]


def _check(p: Any) -> None:
    if p.per_class is not None and p.loss != "cross_entropy":
        raise ValueError(f"per_class needs class labels, so loss 'cross_entropy'; found loss "
                         f"'{p.loss}'")


def _grad_ports(p: Any) -> dict[str, Port]:
    lead = "" if p.per_class is None else f"{p.per_class}, "
    return {
        "grad": Port("Tensor", f"{lead}G", "the gradient of every parameter, flattened and "
                     "concatenated in named_parameters() order"),
        "rows": Port("Tensor", f"{lead}R, K", "per-output-neuron rows of the gradients of "
                     "the parameters with 2+ dims, zero-padded to the widest row"),
    }


@op("param_grad", tappable=False, check=_check, output_ports=_grad_ports)
class ParamGrad(Module):
    """The gradient of a loss of ``model`` with respect to its parameters, on inputs ``x, y``.

    ``L = loss(model(x)[output], y)`` (cross-entropy with class indices or probabilities, or
    mean squared error), averaged over the batch (over each class's examples with
    ``per_class``); outputs ``dL/dtheta`` flattened (``grad``) and as per-neuron rows
    (``rows``). The model's parameters are constants here: with ``differentiable`` a loss on
    the outputs back-propagates into ``x`` and ``y`` (second order, ``create_graph=True``),
    never into the model, so this node never trains the model it reads. When nothing upstream
    needs a gradient (real data) the outputs are detached. ``layout`` on the built module
    lists ``(name, shape, flat offset, first row or None)`` per parameter.
    """

    def __init__(self, *,
                 model: NodeRef = param(doc="the node whose parameters the gradient is taken "
                                        "with respect to"),
                 loss: Literal["cross_entropy", "mse"] = param(
                     "cross_entropy", doc="the loss differentiated: cross_entropy (labels or "
                     "class probabilities) or mse"),
                 input: str = param("x", doc="the model's input port that receives x"),
                 output: str = param("logits", doc="the model's output port the loss reads"),
                 differentiable: bool = param(True, doc="keep the gradient's graph "
                                              "(create_graph) so a loss on it trains x and y"),
                 per_class: int | None = param(None, ge=1, doc="take the gradient per class "
                                               "0..C-1 (outputs gain a leading C dimension)"),
                 ) -> None:
        super().__init__()
        # A plain tuple: the model stays another node's module, not a submodule of this one.
        self.target = (model,)
        self.loss, self.input, self.output = loss, input, output
        self.differentiable, self.per_class = differentiable, per_class
        self.layout: list[tuple[str, tuple[int, ...], int, int | None]] = []
        offset, row = 0, 0
        widths = []
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            first = None
            if p.dim() >= 2:
                first = row
                row += shape[0]
                widths.append(p[0].numel())
            self.layout.append((name, shape, offset, first))
            offset += p.numel()
        if not widths:
            raise ValueError("the model has no parameter with two or more dimensions (no "
                             "weight matrix), so its gradient has no per-neuron rows")
        self.width = max(widths)

    def _flat(self, grads: list[Any]) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        flat = torch.cat([g.reshape(-1) for g in grads])
        rows = [F.pad(g.reshape(g.shape[0], -1), (0, self.width - g[0].numel()))
                for g in grads if g.dim() >= 2]
        return flat, torch.cat(rows)

    def forward(self, x: Tensor("B, ...", "the model's inputs"),
                y: Tensor("*", "targets, one per example of x: class indices [B] or "
                          "probabilities [B, C] (cross_entropy), values like the output (mse)"),
                ) -> Outputs(grad=Tensor(None, "flat gradient [G] ([C, G] with per_class)"),
                             rows=Tensor(None, "per-neuron gradient rows [R, K] ([C, R, K] "
                                         "with per_class)")):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        model = self.target[0]
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"x holds {x.shape[0]} examples but y has shape {list(y.shape)}; "
                             "give one target per example")
        build = self.differentiable and torch.is_grad_enabled()
        names = [name for name, _, _, _ in self.layout]
        own = dict(model.named_parameters())
        with torch.enable_grad():
            params = {name: own[name].detach().requires_grad_(True) for name in names}
            out = functional_call(model, params, args=(), kwargs={self.input: x})
            if isinstance(out, dict):
                if self.output not in out:
                    raise ValueError(f"the model has no output '{self.output}'; its outputs: "
                                     f"{', '.join(out)}")
                out = out[self.output]
            if self.loss == "cross_entropy":
                per_example = F.cross_entropy(out.float(), y.float() if y.is_floating_point()
                                              else y, reduction="none")
            else:
                per_example = F.mse_loss(out.float(), y.float(), reduction="none")
                per_example = per_example.reshape(per_example.shape[0], -1).mean(1)
            leaves = [params[name] for name in names]
            if self.per_class is None:
                grads = torch.autograd.grad(per_example.mean(), leaves, create_graph=build)
                flat, rows = self._flat(list(grads))
            else:
                # Class c's loss is the mean over its examples; the C gradients are taken in
                # one batched backward (vmap over the rows of an identity).
                onehot = F.one_hot(y.long(), self.per_class).to(per_example.dtype)
                losses = (onehot / onehot.sum(0).clamp_min(1.0)).t() @ per_example
                eye = torch.eye(self.per_class, dtype=losses.dtype, device=losses.device)
                grads = torch.autograd.grad(losses, leaves, grad_outputs=eye,
                                            is_grads_batched=True, create_graph=build)
                flat = torch.cat([g.reshape(self.per_class, -1) for g in grads], 1)
                rows = torch.cat([F.pad(g.reshape(self.per_class, g.shape[1], -1),
                                        (0, self.width - g[0, 0].numel()))
                                  for g in grads if g.dim() >= 3], 1)
        if not build:
            flat, rows = flat.detach(), rows.detach()
        return {"grad": flat, "rows": rows}


def _same_shapes(params: Any, shapes: Any) -> dict[str, Any]:
    a, b = shapes.get("a"), shapes.get("b")
    if a is not None and b is not None and len(a) == len(b) and any(
            x.size is not None and y.size is not None and x.size != y.size
            for x, y in zip(a, b, strict=True)) or (
            a is not None and b is not None and len(a) != len(b)
            and not any(d.ellipsis for d in (*a, *b))):
        raise ShapeError(f"'a' {format_shape(a)} and 'b' {format_shape(b)} differ",
                         expected="two gradients of the same shape (the same model's "
                         "param_grad outputs)",
                         hint="feed both from param_grad nodes of the same model and port")
    return {"loss": ()}


@loss("gradient_match", shapes=_same_shapes)
def gradient_match(a: Tensor("*", "one gradient (param_grad.rows, or .grad)"),
                   b: Tensor("*", "the other gradient, same shape"), *,
                   metric: Literal["per_neuron", "cosine", "mse"] = param(
                       "per_neuron", doc="per_neuron: sum over rows of 1 - cos (Zhao et al. "
                       "2021); cosine: 1 - cos of the whole tensors; mse: mean squared "
                       "difference"),
                   eps: float = param(1e-12, gt=0, doc="a row whose norm product |a_i| |b_i| "
                                      "is at most eps counts 1 - 0, without gradient"),
                   ) -> Scalar:
    """Distance between two gradients; ``per_neuron`` is gradient matching's distance.

    ``per_neuron``: ``sum_i (1 - a_i.b_i / (|a_i| |b_i|))`` over every row ``i``
    (the last dimension is a row; on ``param_grad.rows`` a row is one output neuron of one
    layer, and a leading class dimension is summed too). ``cosine``: ``1 - cos`` of the
    flattened tensors. ``mse``: ``mean((a - b)^2)`` over all entries. A row that is zero
    on either side (a dead neuron, a class absent from the batch) has cosine 0 and passes no
    gradient.
    """
    if a.shape != b.shape:
        raise ValueError(f"gradient_match needs gradients of one shape; found a "
                         f"{list(a.shape)} and b {list(b.shape)}")
    a, b = a.float(), b.float()
    if metric == "mse":
        return (a - b).pow(2).mean()
    if metric == "cosine":
        a, b = a.reshape(-1), b.reshape(-1)
    import torch

    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    # A row with (almost) no gradient on one side has no direction: cosine 0, and no
    # gradient either (dot / eps would be huge towards a dead neuron's zero row).
    cosine = torch.where(norms > eps, dot / norms.clamp_min(eps), torch.zeros_like(dot))
    return (1.0 - cosine).sum()
