"""Generic tensor ops: arithmetic, softmax, pooling over tokens, indexing, noise, augmentation.

Each op is one declared function (see :mod:`dgraph.declare`). Elementwise ops keep the
semantic type of their first input (``add(Logits, Logits)`` is ``Logits``) and require equal
shapes; ``expr`` covers broadcasting and longer formulas. Random ops draw from torch's global
generator, which dgraph seeds and saves in checkpoints.
"""

from __future__ import annotations

from dgraph.declare import (
    Features,
    Images,
    Labels,
    LogProbs,
    Mask,
    Outputs,
    Probs,
    Scheduled,
    Tensor,
    TypeOf,
    op,
    param,
)
from dgraph.ports import Dim, ShapeError, format_shape, fresh_symbol, resolve_dim

__all__ = [
    "add", "add_noise", "concat", "index", "log_softmax", "masked_mean", "mul", "random_flip",
    "random_shift", "reshape", "scale", "select", "softmax", "sub",
]


@op
def add(a: Tensor("B, ...", "first term"), b: Tensor("B, ...", "second term (same shape)"),
        ) -> TypeOf("a")("B, ...", "a + b"):
    """Elementwise ``a + b`` of two tensors of equal shape."""
    return a + b


@op
def sub(a: Tensor("B, ...", "minuend"), b: Tensor("B, ...", "subtrahend (same shape)"),
        ) -> TypeOf("a")("B, ...", "a - b"):
    """Elementwise ``a - b`` of two tensors of equal shape."""
    return a - b


@op
def mul(a: Tensor("B, ...", "first factor"), b: Tensor("B, ...", "second factor (same shape)"),
        ) -> TypeOf("a")("B, ...", "a * b"):
    """Elementwise product ``a * b`` of two tensors of equal shape."""
    return a * b


@op
def scale(x: Tensor("B, ...", "input"), *,
          factor: float = param(doc="the constant to multiply by")) -> TypeOf("x")("B, ..."):
    """``y = factor * x``."""
    return x * factor


def _concat_shapes(params, shapes):
    """Equal in every dimension but ``dim``, whose sizes add up (unknown if one is unknown)."""
    parts = [(port, shapes[port]) for port in ("a", "b", "c", "d") if port in shapes]
    if not parts or any(shape is None or any(d.ellipsis for d in shape) for _, shape in parts):
        return {"y": None}
    first_port, first = parts[0]
    axis = resolve_dim(first, params.dim, "concat")
    if axis == 0:
        raise ShapeError(f"concat along dim={params.dim} of {format_shape(first)} would join "
                         "batches", expected="a dim other than the batch dimension 0",
                         hint="join along another dimension, e.g. dim: -1")
    joined: list[Dim] = list(first)
    for port, shape in parts[1:]:
        if len(shape) != len(first):
            raise ShapeError(
                f"'{first_port}' {format_shape(first)} has {len(first)} dimensions but "
                f"'{port}' {format_shape(shape)} has {len(shape)}",
                expected=f"parts with {len(first)} dimensions, equal except along dim "
                f"{params.dim}", hint="reshape or flatten one part first")
        for i, (mine, theirs) in enumerate(zip(joined, shape, strict=True)):
            if i == axis:
                continue
            if mine.size is not None and theirs.size is not None and mine.size != theirs.size:
                raise ShapeError(
                    f"'{first_port}' {format_shape(first)} and '{port}' {format_shape(shape)} "
                    f"differ in dimension {i} ({mine.size} vs {theirs.size}), which is not "
                    f"the one they are joined along ({axis})",
                    expected=f"parts equal in every dimension but {axis}",
                    hint="join along the dimension that differs (dim), or reshape one part")
            if mine.size is None and theirs.size is not None:
                joined[i] = theirs
    sizes = [shape[axis].size for _, shape in parts]
    if all(size is not None for size in sizes):
        joined[axis] = Dim(size=sum(sizes))  # type: ignore[arg-type]
    else:
        joined[axis] = fresh_symbol(tuple(joined), "N")
    return {"y": tuple(joined)}


@op(shapes=_concat_shapes)
def concat(a: Tensor("*", "first part"), b: Tensor("*", "second part"),
           c: Tensor("*", "third part (optional)") = None,
           d: Tensor("*", "fourth part (optional)") = None, *,
           dim: int = param(-1, doc="the dimension to join along (not the batch, 0)"),
           ) -> TypeOf("a")(None, "the parts joined along dim"):
    """``torch.cat([a, b, c, d], dim)`` over the connected inputs, in that order.

    The parts must agree in every dimension but ``dim``.
    """
    import torch

    if dim == 0 or dim == -a.dim():
        raise ValueError("concat along dimension 0 would join batches; use another dim")
    return torch.cat([t for t in (a, b, c, d) if t is not None], dim=dim)


def _no_batch_in_shape(params) -> None:
    if any(size == 0 or size < -1 for size in params.shape) or params.shape.count(-1) > 1:
        raise ValueError("shape takes positive sizes and at most one -1 (inferred size)")


def _reshape_shapes(params, shapes):
    """``[B, *shape]``; a -1 is computed when the input's sizes after the batch are known."""
    x = shapes.get("x")
    if x is not None and len(x) == 0:
        return {"y": None}  # a scalar: the edge reports the rank
    batch = x[0] if x is not None and not x[0].ellipsis else Dim(symbol="B")
    dims = [Dim(size=size) if size != -1 else None for size in params.shape]
    rest = None if x is None or any(d.ellipsis for d in x) else x[1:]
    if rest is not None and all(d.size is not None for d in rest):
        total = 1
        for d in rest:
            total *= d.size
        known = 1
        for size in params.shape:
            known *= size if size != -1 else 1
        wanted = "[" + ", ".join(str(size) for size in params.shape) + "]"
        target = "[" + ", ".join([str(batch), *(str(size) for size in params.shape)]) + "]"
        if (-1 in params.shape and total % known) or (-1 not in params.shape
                                                       and total != known):
            raise ShapeError(
                f"cannot reshape {format_shape(x)} to {target}: {total} values per example "
                + (f"are not a multiple of {known}" if -1 in params.shape
                   else f"but {known} in shape {wanted}"),
                expected=f"a shape whose sizes multiply to {total}"
                + (" (or divide it, with a -1)" if -1 in params.shape else ""),
                hint=f"change shape (now {wanted}) so that it holds {total} values"
                + ("" if -1 in params.shape else ", or put -1 for one size"))
        dims = [d if d is not None else Dim(size=total // known) for d in dims]
    out = [batch]
    for d in dims:
        out.append(d if d is not None else fresh_symbol(tuple(out), "N"))
    return {"y": tuple(out)}


@op(check=_no_batch_in_shape, shapes=_reshape_shapes)
def reshape(x: Tensor("B, ...", "input"), *,
            shape: list[int] = param(doc="the new shape after the batch dimension; one entry "
                                     "may be -1"),
            ) -> TypeOf("x")(None, "x.reshape(B, *shape)"):
    """``y = x.reshape(B, *shape)``: the batch dimension is kept, the rest regrouped."""
    return x.reshape(x.shape[0], *shape)


@op
def softmax(x: Tensor("B, ...", "scores"), *,
            dim: int = param(-1, doc="the dimension that sums to one"),
            temperature: float = param(1.0, gt=0.0, doc="divide the scores by this first"),
            ) -> Probs("B, ...", "softmax(x / temperature)"):
    """``softmax(x / T)`` along ``dim``, computed in float32 for half inputs.

    A row that is ``-inf`` everywhere has no distribution: its output is NaN, as in torch.
    """
    import torch

    return torch.softmax(x.float() / temperature if temperature != 1.0 else x.float(), dim=dim)


@op
def log_softmax(x: Tensor("B, ...", "scores"), *,
                dim: int = param(-1, doc="the dimension that normalises"),
                temperature: float = param(1.0, gt=0.0, doc="divide the scores by this first"),
                ) -> LogProbs("B, ...", "log_softmax(x / temperature)"):
    """``log_softmax(x / T)`` along ``dim``, in float32; ``-inf`` scores give ``-inf``."""
    import torch

    return torch.log_softmax(x.float() / temperature if temperature != 1.0 else x.float(),
                             dim=dim)


@op
def masked_mean(x: Features("B, T, C", "per-token states"),
                mask: Mask("B, T", "which tokens count (default: all)") = None,
                ) -> Features("B, C", "mean of the counted tokens"):
    """Mean over tokens: ``y_b = sum_t m_bt x_btc / max(1, sum_t m_bt)`` (sentence pooling).

    A row with no counted token gives zeros (not NaN); its gradient is zero.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    total = (x * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0)


def _select_shapes(params, shapes):
    """``x`` without dimension ``dim``."""
    x = shapes.get("x")
    if x is None:
        return {"y": None}
    axis = resolve_dim(x, params.dim, "select")
    if axis is None:
        return {"y": None}
    if axis == 0:
        raise ShapeError(f"select cannot index the batch dimension (dim={params.dim} of "
                         f"{format_shape(x)})", expected="a dim other than 0",
                         hint="select along another dimension, e.g. dim: 1 for a token")
    size = x[axis].size
    if size is not None and not -size <= params.index < size:
        raise ShapeError(f"select index {params.index} is out of range for dimension {axis} "
                         f"of {format_shape(x)} (size {size})",
                         expected=f"an index between {-size} and {size - 1}",
                         hint="negative indices count from the end: -1 is the last")
    return {"y": x[:axis] + x[axis + 1:]}


@op(shapes=_select_shapes)
def select(x: Tensor("B, ...", "input"), *,
           dim: int = param(doc="the dimension to index (not the batch, 0)"),
           index: int = param(doc="the position along dim; negative counts from the end"),
           ) -> TypeOf("x")(None, "x with dim removed"):
    """``torch.select(x, dim, index)``: one position along a dimension (e.g. the last token)."""
    if dim == 0 or dim == -x.dim():
        raise ValueError("select cannot index the batch dimension 0")
    return x.select(dim, index)


def _index_shapes(params, shapes):
    """``x`` without dimension 1 (one position per example)."""
    x = shapes.get("x")
    if x is None or len(x) < 2 or x[0].ellipsis or x[1].ellipsis:
        return {"y": None}
    return {"y": x[:1] + x[2:]}


@op(shapes=_index_shapes)
def index(x: Tensor("B, N, ...", "input"),
          positions: Labels("B", "a position along dim 1 for every example"),
          ) -> TypeOf("x")(None, "x[b, positions[b]]"):
    """Per-example indexing: ``y_b = x[b, positions_b]`` (a class's logit, a token's state).

    Negative positions count from the end, as in Python.
    """
    import torch

    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, positions.long()]


_PAIRED = Outputs(
    y=TypeOf("x")("B, C, H, W", "x augmented"),
    y2=TypeOf("x2")("B, C, H, W", "x2 augmented identically (when x2 is connected)"),
)


def _paired(y, x2, y2):
    return {"y": y} if x2 is None else {"y": y, "y2": y2}


def _non_negative_std(params) -> None:
    low = params.std if isinstance(params.std, float | int) else min(params.std.start,
                                                                      params.std.end)
    if low < 0:
        raise ValueError(f"std must not be negative; found {low}")


@op(check=_non_negative_std)
def add_noise(x: Tensor("B, ...", "input"), *,
              std: Scheduled = param(doc="standard deviation of the noise: a number or a "
                                     "schedule of the step ({schedule: linear, start: 0.1, "
                                     "end: 0.0, steps: 1000})"),
              ) -> TypeOf("x")("B, ...", "x + std * N(0, 1)"):
    """``y = x + std * eps`` with ``eps ~ N(0, I)`` drawn per element.

    ``gaussian_noise`` draws noise alone; ``std`` may follow a schedule. The noise is drawn
    from torch's global, seeded and checkpointed generator; gradients flow to ``x``.
    """
    import torch

    if std == 0.0:
        return x
    return x + std * torch.randn_like(x)


@op
def random_flip(x: Images("B, C, H, W", "images"),
                x2: Images("B, C, H, W", "a second batch flipped identically (optional)") = None,
                *, p: float = param(0.5, ge=0.0, le=1.0, doc="probability of a flip"),
                ) -> _PAIRED:
    """Flip each image left-right with probability ``p`` (differentiable: a permutation).

    With ``x2`` connected (same batch size), example ``b`` of both batches gets the same
    decision, so a real and a synthetic batch see one augmentation (DSA). Decisions come from
    torch's global generator, which dgraph seeds and checkpoints.
    """
    import torch

    pick = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return _paired(torch.where(pick, x.flip(-1), x), x2,
                   None if x2 is None else torch.where(pick, x2.flip(-1), x2))


@op
def random_shift(x: Images("B, C, H, W", "images"),
                 x2: Images("B, C, H, W", "a second batch shifted identically (optional)") = None,
                 *, max_shift: int = param(2, ge=0, le=64, doc="largest shift in pixels"),
                 ) -> _PAIRED:
    """Translate each image by up to ``max_shift`` pixels along both axes (a padded random crop).

    Offsets are random integers in ``[-max_shift, max_shift]``; uncovered pixels are zero.
    Differentiable in the pixels.

    With ``x2`` connected (same batch size), both batches get the same offsets.
    """
    import torch
    import torch.nn.functional as F

    batch, _, height, width = x.shape
    pad = max_shift
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), device=x.device)
    rows = torch.arange(height, device=x.device).view(1, height, 1) + offsets[0].view(-1, 1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width) + offsets[1].view(-1, 1, 1)

    def shift(images):
        padded = F.pad(images, (pad, pad, pad, pad))
        b = torch.arange(batch, device=x.device).view(-1, 1, 1)
        # [B, H, W, C] after advanced indexing on (batch, row, col); channels back to dim 1.
        return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)

    return _paired(shift(x), x2, None if x2 is None else shift(x2))
