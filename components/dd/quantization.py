"""Dataset Quantization (Zhou et al. 2023): a selected real subset from feature-space bins.

No pixel is learned. The real training split of a data node is embedded by a frozen feature
network (a teacher trained by another spec, a randomly initialised one, or the raw inputs);
each class is divided into ``num_bins`` non-overlapping bins, generated one after the other by
greedy maximisation of the paper's GraphCut-style submodular gain over what is left; then
``images_per_class`` examples are drawn uniformly across the bins. Bins made early hold the
examples central to the class (close to everything left), later ones its outskirts, so
sampling every bin covers the class from its prototypes to its rare modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from dgraph.declare import Features, Labels, Module, NodeRef, Outputs, component, param
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["DatasetQuantization", "graphcut_bins", "sample_from_bins"]


def graphcut_bins(features: torch.Tensor, num_bins: int) -> list[torch.Tensor]:
    """Split ``features [n, d]`` into ``num_bins`` bins of near-equal size (the first
    ``n % num_bins`` bins one larger), each grown greedily from what earlier bins left.

    Bin ``k`` starts empty over the remaining pool ``D_k``; it repeatedly adds the candidate
    ``x`` in ``D_k \\ S`` with the largest gain

        ``P(x) = sum_{p in S} ||f(p) - f(x)||^2 - sum_{p in D_k \\ S} ||f(p) - f(x)||^2``

    (far from what the bin holds, close to what it does not), ties to the lowest index. Returns
    the bins' row indices (int64), each in selection order; deterministic, no random draw.
    """
    import torch

    n = features.shape[0]
    if not 0 < num_bins <= n:
        raise ValueError(f"num_bins must be between 1 and the {n} examples to divide; "
                         f"found {num_bins}")
    f = features.detach().double().reshape(n, -1)
    dist = torch.cdist(f, f).square()  # [n, n] squared Euclidean distances
    remaining = torch.ones(n, dtype=torch.bool)
    sizes = [n // num_bins + (1 if k < n % num_bins else 0) for k in range(num_bins)]
    bins = []
    for size in sizes:
        chosen = torch.zeros(n, dtype=torch.bool)
        to_chosen = torch.zeros(n, dtype=torch.float64)    # sum_{p in S} d(p, x)
        to_rest = dist[:, remaining].sum(1)                # sum_{p in D_k \ S} d(p, x)
        order = []
        for _ in range(size):
            gain = to_chosen - to_rest
            gain[~remaining | chosen] = -torch.inf
            pick = int(torch.argmax(gain))
            order.append(pick)
            chosen[pick] = True
            to_chosen += dist[:, pick]
            to_rest -= dist[:, pick]
        remaining &= ~chosen
        bins.append(torch.tensor(order, dtype=torch.long))
    return bins


def sample_from_bins(bins: list[torch.Tensor], count: int, generator: torch.Generator,
                     pick: Literal["uniform", "first"] = "uniform") -> torch.Tensor:
    """``count`` entries drawn uniformly across ``bins``: ``count // K`` from every bin and one
    more from ``count % K`` bins chosen at random; a bin too small for its share passes the
    rest on to the next bins (in a random order). Each bin's share is drawn uniformly without
    replacement (``uniform``, the paper's), or is the bin's first entries (``first``: in
    :func:`graphcut_bins`' selection order, the most central of what the bin was grown from).
    Returns the drawn entries, bin by bin, in the order of ``bins``."""
    import torch

    total = sum(len(b) for b in bins)
    if not 0 < count <= total:
        raise ValueError(f"cannot draw {count} examples from bins holding {total}")
    k = len(bins)
    want = [count // k] * k
    for extra in torch.randperm(k, generator=generator)[:count % k].tolist():
        want[extra] += 1
    take = [min(w, len(b)) for w, b in zip(want, bins, strict=True)]
    short = count - sum(take)
    for j in torch.randperm(k, generator=generator).tolist():
        if short == 0:
            break
        more = min(short, len(bins[j]) - take[j])
        take[j] += more
        short -= more
    picked = [b[:t] if pick == "first" else b[torch.randperm(len(b), generator=generator)[:t]]
              for b, t in zip(bins, take, strict=True) if t]
    return torch.cat(picked)


def _num_images(p: Any) -> dict[str, int]:
    return {"num_images": p.num_classes * p.images_per_class}


@component("dataset_quantization", roles=("tensor",), tappable=False, sizes=_num_images)
class DatasetQuantization(Module):
    """A selected real subset, ``images_per_class`` of each class, by Dataset Quantization.

    On its first (non-dry-run) forward, the training split of the data node ``data`` (its
    tensors ``x`` and ``y``) is embedded by the network of node ``features`` (its output
    ``feature_port`` for input ``input_port``, in evaluation mode, without gradients; the raw
    inputs, flattened, when no node is named), the examples of each class are divided into
    ``num_bins`` bins by :func:`graphcut_bins`, and :func:`sample_from_bins` draws the subset
    (``pick``) with a generator seeded by ``seed`` (default: ``train.seed``). Selecting on the first
    forward rather than when built lets the feature network's ``init`` weights (a teacher's
    run) be loaded first. The chosen training indices, images and labels are buffers: saved in
    checkpoints and in ``final/``, so a resumed run does not select again.

    Outputs ``images`` (class-major, ``images[k]`` of class ``k // images_per_class``) and
    ``labels``, as a learned set would; nothing trains it.
    """

    def __init__(self, *,
                 data: NodeRef = param(doc="the data node whose training split is selected from"),
                 features: NodeRef | None = param(None, doc="the frozen network embedding the "
                                                  "examples (a trained teacher or a random "
                                                  "one); None: the raw inputs"),
                 feature_port: str = param("features", doc="the output of that network used as "
                                           "the embedding"),
                 input_port: str = param("x", doc="the input port of that network fed with x"),
                 images_per_class: int = param(10, gt=0, le=1000,
                                               doc="examples selected per class"),
                 num_classes: int = param(10, gt=0, doc="classes 0..num_classes-1"),
                 num_bins: int = param(10, gt=0, doc="bins per class (the paper's K)"),
                 pick: Literal["uniform", "first"] = param(
                     "uniform", doc="each bin's share: drawn uniformly (the paper), or its "
                     "first, most central examples (with one bin and one image per class, "
                     "the class medoid in feature space)"),
                 x: str = param("x", doc="the training split's tensor holding the inputs"),
                 y: str = param("y", doc="the training split's tensor holding the labels"),
                 seed: int | None = param(None, ge=0, doc="seed of the draw across bins "
                                          "(default: train.seed)"),
                 batch_size: int = param(512, gt=0, doc="examples per forward of the feature "
                                         "network"),
                 context: BuildContext) -> None:
        super().__init__()
        import torch

        from dgraph.data import DataSource

        if not isinstance(data, DataSource):
            raise ValueError(f"data must name a data node; it names a {type(data).__name__}")
        missing = [k for k in (x, y) if k not in data.train]
        if missing:
            raise ValueError(f"the data node has no {missing} in its training split (it has "
                             f"{sorted(data.train)}); set x / y")
        if features is not None and not isinstance(features, torch.nn.Module):
            raise ValueError(f"features must name a node with a network; it names a "
                             f"{type(features).__name__}")
        self._source, self._net = data, (features,)  # a tuple: not a submodule of this node
        self.x_key, self.y_key = x, y
        self.feature_port, self.input_port = feature_port, input_port
        self.ipc, self.num_classes, self.num_bins = images_per_class, num_classes, num_bins
        self.pick = pick
        self.seed = context.seed if seed is None else seed
        self.batch_size = batch_size
        pool = data.train[x]
        n = num_classes * images_per_class
        self.register_buffer("index", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("images", torch.zeros(n, *pool.shape[1:], dtype=pool.dtype))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(
            images_per_class))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The embedding of ``inputs``: the feature network's output, or the inputs flat."""
        import torch

        net = self._net[0]
        if net is None:
            return inputs.flatten(1).float()
        was_training = net.training
        net.eval()
        device = next((p.device for p in net.parameters()), inputs.device)
        out = []
        with torch.no_grad():
            for start in range(0, len(inputs), self.batch_size):
                value = net(**{self.input_port: inputs[start:start + self.batch_size]
                               .to(device)})
                if isinstance(value, dict):
                    if self.feature_port not in value:
                        raise ValueError(f"the features network has no output "
                                         f"'{self.feature_port}' (feature_port); it outputs "
                                         f"{', '.join(value)}")
                    value = value[self.feature_port]
                out.append(value.flatten(1).float().cpu())
        net.train(was_training)
        return torch.cat(out)

    def select(self) -> torch.Tensor:
        """The training indices chosen (class-major); fills the buffers."""
        import torch

        pool_x, pool_y = self._source.train[self.x_key], self._source.train[self.y_key]
        labels = pool_y.detach().cpu().reshape(-1)
        embedded = self.embed(pool_x)
        generator = torch.Generator().manual_seed(self.seed)
        chosen = []
        for c in range(self.num_classes):
            members = torch.nonzero(labels == c).flatten()
            if len(members) < self.ipc:
                raise ValueError(f"class {c}: the training split has {len(members)} examples, "
                                 f"fewer than images_per_class={self.ipc}")
            bins = graphcut_bins(embedded[members], min(self.num_bins, len(members)))
            chosen.append(members[sample_from_bins(bins, self.ipc, generator, self.pick)])
        index = torch.cat(chosen)
        with torch.no_grad():
            self.index.copy_(index)
            self.images.copy_(pool_x[index.to(pool_x.device)].to(self.images))
        return index

    def forward(self) -> Outputs(images=Features("{num_images}, ...", "the selected examples "
                                                 "(the data's inputs)"),
                                 labels=Labels("{num_images}", "their classes")):
        if not self.index.is_meta and int(self.index[0]) < 0:
            self.select()
        return {"images": self.images, "labels": self.labels}

    def extra_repr(self) -> str:
        return f"images_per_class={self.ipc}, num_bins={self.num_bins}"
