"""Evaluation of a small training set, as in the dataset-distillation papers, as a metric.

``dd_evaluator`` trains fresh networks (each model type of ``models``, once per evaluation
seed) *only* on a small set and reports their accuracy on the held-out split that evaluation
feeds batch by batch. With ``train_on: random_real`` it trains instead on as many real
training images per class as the set has, drawn at random per seed from the training split
of the data node named by ``real`` (a :class:`~dgraph.declare.NodeRef` to a data node
receives its :class:`~dgraph.data.DataSource`): the baseline a distilled set must beat.

Reported values (``<node>/<name>``, see :mod:`dgraph.runtime.metrics`): ``accuracy`` and
``accuracy_std`` (mean and sample standard deviation over the seeds of the per-seed mean over
models), and ``accuracy@<model>``, ``accuracy_std@<model>`` for each model type. A spec names
the two nodes ``synthetic`` and ``random_real`` (see ``specs/dd_dm.yaml``), so that
``summary.json`` has ``synthetic/accuracy`` and ``random_real/accuracy``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Literal

from dgraph.declare import Features, Labels, Module, NodeRef, Outputs, Probs, Scalar, metric, param
from dgraph.errors import did_you_mean
from dgraph.registry import COMPONENTS, BuildContext

__all__ = ["SetEvaluator", "random_real_subset", "train_and_test"]

# The evaluation networks: a 64-128-10 MLP and the papers' ConvNet (components/dd/convnet.py:
# width 128, instance norm, 2 blocks on 8x8). Their input and output sizes are filled in from
# the data (see ``_SIZES``).
_DEFAULT_MODELS: dict[str, dict[str, Any]] = {"mlp": {"hidden": [128]},
                                              "convnet": {"width": 128, "depth": 2}}
# Parameters of a model type that the evaluator fills in when the spec does not give them.
_SIZES = ("in_features", "in_channels", "image_size", "num_classes")


def _check(p: Any) -> None:  # the generated parameter model
    if p.train_on == "random_real" and p.real is None:
        raise ValueError("train_on: random_real draws real training images from a data node; "
                         "name it with real: <data node> (e.g. real: data)")
    if p.train_on == "set" and p.real is not None:
        raise ValueError(f"real: {p.real} is read only with train_on: random_real; remove it "
                         "or set train_on: random_real")
    model_types = [n for n, c in COMPONENTS.items() if "model" in c.roles]
    for name, given in p.models.items():
        if name not in model_types:
            hint = did_you_mean(name, model_types)
            raise ValueError(f"models: '{name}' is not a model type"
                             + (f"; {hint}" if hint else f" (e.g. {', '.join(_DEFAULT_MODELS)})"))
        component = COMPONENTS.get(name)
        unknown = sorted(set(given) - set(component.Params.model_fields))
        if unknown:
            raise ValueError(f"models.{name}: unknown parameters {unknown}; '{name}' takes "
                             f"{', '.join(component.Params.model_fields)}")


def _network(model: str, given: dict[str, Any], example: tuple[int, ...], num_classes: int,
             node: str) -> tuple[Any, bool]:
    """A fresh ``model`` network and whether it takes flat inputs (its input port is 2-D)."""
    from dgraph.ports import parse_shape

    component_type = COMPONENTS.get(model)
    sizes: dict[str, int] = {"num_classes": num_classes, "in_features": math.prod(example)}
    if len(example) == 3:
        sizes.update(in_channels=example[0], image_size=example[1])
    fields = component_type.Params.model_fields
    params = {**{k: v for k, v in sizes.items() if k in fields and k in _SIZES}, **given}
    declared = component_type(component_type.Params.model_validate(params), f"{node}@{model}")
    port = next(iter(declared.inputs.values()))
    dims = parse_shape(port.shape, declared.port_params())
    flat = dims is not None and len(dims) == 2 and not any(d.ellipsis for d in dims)
    return declared.build(BuildContext(node=f"{node}@{model}")), flat


def train_and_test(model: str, x: Any, y: Any, test_x: Any, test_y: Any, *, seed: int,
                   steps: int = 300, lr: float = 0.01, params: dict[str, Any] | None = None,
                   num_classes: int | None = None, node: str = "dd_evaluator",
                   soft: Any = None) -> float:
    """Test accuracy of a fresh ``model`` trained with Adam, full batch, only on ``(x, y)``.

    With ``soft`` (probabilities ``[N, C]``: soft labels of ``x``) the loss is the soft
    cross-entropy ``KL(soft || softmax(f(x)))`` (mean over the set) instead of the
    cross-entropy with ``y``; one-hot ``soft`` gives the cross-entropy's value.

    ``x`` and ``test_x`` are reshaped to one example shape (the first of them that is an
    image ``[C, H, W]``; flat otherwise); the network is initialised under a forked generator
    seeded with ``seed``, so the caller's random state is untouched. Runs on ``test_x``'s
    device, with gradients on and autocast off whatever the caller's context.
    """
    import torch
    import torch.nn.functional as F

    device = test_x.device
    shapes = [tuple(t.shape[1:]) for t in (x, test_x)]
    sizes = {math.prod(s) for s in shapes}
    if len(sizes) != 1:
        raise ValueError(f"the training examples have {math.prod(shapes[0])} values each and "
                         f"the held-out ones {math.prod(shapes[1])}: they must be the same "
                         "kind of input")
    example = next((s for s in shapes if len(s) == 3), (sizes.pop(),))
    if num_classes is None:
        num_classes = int(max(int(y.max()), int(test_y.max()))) + 1
        if soft is not None:
            num_classes = max(num_classes, soft.shape[-1])
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net, flat = _network(model, dict(params or {}), example, num_classes, node)
        net = net.to(device)
        shape = (-1,) if flat else example

        def inputs(t: Any) -> Any:
            return t.detach().to(device, torch.float32).reshape(len(t), *shape)

        train_x, train_y = inputs(x), y.detach().to(device, torch.long).reshape(-1)

        def logits(t: Any) -> Any:
            out = net(t)
            return out["logits"] if isinstance(out, dict) else out

        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            net.train()
            for _ in range(steps):
                if soft is None:
                    loss = F.cross_entropy(logits(train_x), train_y)
                else:
                    p = soft.detach().to(device, torch.float32)
                    log_q = F.log_softmax(logits(train_x).float(), -1)
                    loss = (torch.xlogy(p, p) - p * log_q).sum(-1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        net.eval()
        correct = 0
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(test_x), 1024):
                chunk = inputs(test_x[start:start + 1024])
                labels = test_y[start:start + 1024].to(device).reshape(-1)
                correct += int((logits(chunk).argmax(-1) == labels).sum())
    return correct / len(test_x)


def random_real_subset(x: Any, y: Any, counts: dict[int, int], seed: int) -> tuple[Any, Any]:
    """``counts[c]`` examples of each class ``c`` drawn from ``(x, y)`` (class-major, in class
    order) by a generator seeded with ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    labels = y.detach().cpu().reshape(-1)
    picked = []
    for c, count in sorted(counts.items()):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < count:
            raise ValueError(f"class {c}: the real training split has {len(members)} examples, "
                             f"the set {count}")
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    index = torch.cat(picked).to(x.device)
    return x[index], y[index]


@metric("dd_evaluator", check=_check)
class SetEvaluator(Module):
    """Held-out accuracy of fresh networks trained only on a small (distilled) set.

    For each type in ``models`` and each seed in ``seeds``, a network is initialised under that
    seed and trained with Adam (``lr``, ``steps`` full-batch steps) on the set fed to
    ``images``/``labels`` (its latest value in the evaluation), then tested on all of
    ``test_x``/``test_y`` (a data node's eval split, fed batch by batch). With ``train_on:
    random_real`` it trains on a random subset of the training split of the data node ``real``
    with as many images per class as the set's labels have (drawn per seed), the baseline of
    the dataset-distillation papers. The networks' input and class counts (``in_features``,
    ``in_channels``, ``image_size``, ``num_classes``) come from the data unless given.
    When ``soft_labels`` (probabilities ``[N, C]``) is fed, the networks train with the soft
    cross-entropy ``KL(soft_labels || softmax(f(images)))`` instead (SRe2L's relabel, a
    committee's vote, DATM's learned labels); only with ``train_on: set``.

    Reports ``accuracy`` and ``accuracy_std`` (over seeds, of the mean over models) and
    ``accuracy@<model>``, ``accuracy_std@<model>`` per model type (sample std, 0 for one seed).
    """

    def __init__(self, *,
                 train_on: Literal["set", "random_real"] = param(
                     "set", doc="set: train on the fed set; random_real: on as many random "
                     "real training images per class (the baseline)"),
                 real: NodeRef | None = param(None, doc="the data node whose training split "
                                              "random_real draws from (only with random_real)"),
                 real_x: str = param("x", doc="the tensor of that training split holding the "
                                     "inputs"),
                 real_y: str = param("y", doc="the tensor of that training split holding the "
                                     "labels"),
                 models: dict[str, dict[str, Any]] = param(
                     _DEFAULT_MODELS, min_length=1, doc="model type -> its parameters: the "
                     "networks trained on the set (input and class counts are filled in)"),
                 seeds: list[int] = param([0, 1, 2], min_length=1,
                                          doc="evaluation seeds: one network per model and seed"),
                 steps: int = param(300, gt=0, le=1_000_000, doc="full-batch Adam steps"),
                 lr: float = param(0.01, gt=0, doc="Adam learning rate"),
                 num_classes: int | None = param(None, gt=0, doc="classes of the networks; "
                                                 "None: 1 + the largest label seen")) -> None:
        super().__init__()
        if real is not None:
            from dgraph.data import DataSource

            if not isinstance(real, DataSource):
                raise ValueError(f"real must name a data node; it names a "
                                 f"{type(real).__name__}")
        self.train_on, self.real, self.real_x, self.real_y = train_on, real, real_x, real_y
        self.models, self.seeds, self.steps, self.lr = models, seeds, steps, lr
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.set: tuple[Any, Any] | None = None
        self.soft: Any = None
        self.test: list[tuple[Any, Any]] = []

    def update(self, images: Features("N, ...", "the set's inputs (images or flat features)"),
               labels: Labels("N", "the set's classes"),
               test_x: Features("B, ...", "held-out inputs (a data node's eval split)"),
               test_y: Labels("B", "their classes"),
               soft_labels: Probs("N, C", "soft labels of the set (probabilities): the "
                                  "networks then train with KL(soft || q), not the "
                                  "cross-entropy with labels") = None) -> None:
        if soft_labels is not None and self.train_on == "random_real":
            raise ValueError("soft_labels belong to the fed set; train_on: random_real trains "
                             "on real images with their classes: feed soft_labels only to an "
                             "evaluator with train_on: set")
        self.set = (images.detach(), labels.detach())
        self.soft = None if soft_labels is None else soft_labels.detach()
        self.test.append((test_x.detach(), test_y.detach()))

    def _training_sets(self) -> list[tuple[Any, Any]]:
        """The set each seed trains on: the fed set, or a random real subset of its size."""
        assert self.set is not None
        images, labels = self.set
        if self.train_on == "set":
            return [(images, labels)] * len(self.seeds)
        source = self.real
        missing = [k for k in (self.real_x, self.real_y) if k not in source.train]
        if missing:
            raise ValueError(f"the data node named by real has no {missing} in its training "
                             f"split (it has {sorted(source.train)}); set real_x / real_y")
        pool_x, pool_y = source.train[self.real_x], source.train[self.real_y]
        classes, sizes = labels.long().cpu().unique(return_counts=True)
        counts = {int(c): int(n) for c, n in zip(classes, sizes, strict=True)}
        return [random_real_subset(pool_x, pool_y, counts, seed) for seed in self.seeds]

    def compute(self) -> Outputs(accuracy=Scalar(None, "mean test accuracy over seeds and "
                                                 "models"),
                                 accuracy_std=Scalar(None, "its standard deviation over seeds")):
        import torch

        if self.set is None or not self.test:
            raise ValueError("no evaluation batch reached the evaluator: it needs the set "
                             "(images, labels) and an eval split (test_x, test_y)")
        test_x = torch.cat([x for x, _ in self.test])
        test_y = torch.cat([y for _, y in self.test])
        sets = self._training_sets()
        per_model: dict[str, list[float]] = {}
        for model, given in self.models.items():
            per_model[model] = [
                train_and_test(model, x.to(test_x.device), y.to(test_x.device), test_x, test_y,
                               seed=seed, steps=self.steps, lr=self.lr, params=given,
                               num_classes=self.num_classes, node="dd_evaluator",
                               soft=self.soft)
                for seed, (x, y) in zip(self.seeds, sets, strict=True)]
        per_seed = [statistics.fmean(values) for values in zip(*per_model.values(), strict=True)]
        out = {"accuracy": statistics.fmean(per_seed), "accuracy_std": _std(per_seed)}
        for model, values in per_model.items():
            out[f"accuracy@{model}"] = statistics.fmean(values)
            out[f"accuracy_std@{model}"] = _std(values)
        return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
