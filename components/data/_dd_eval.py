"""Evaluation of a distilled (synthetic) training set, as in the dataset-distillation papers.

A fresh network is trained *only* on the set and tested on the real test split; the same is
done with the same number of real training images per class chosen at random, the baseline a
distilled set must beat. Used by the zoo tests; not a component (private: importing it imports
torch). In a spec, the ``dd_evaluator`` metric (components/dd/evaluate.py) does the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from dgraph.components.data.digits import digits_split

from dgraph.registry import COMPONENTS, BuildContext

__all__ = ["compare_with_random_real", "random_real_set", "train_on_set"]


def random_real_set(images_per_class: int, seed: int, *, test_fraction: float = 0.2,
                    split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``images_per_class`` random training images of each digit class, class-major."""
    x_train, y_train, _, _ = digits_split(test_fraction, split_seed)
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(10):
        members = torch.nonzero(y_train == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:images_per_class]])
    index = torch.cat(picked)
    return x_train[index].clone(), y_train[index].clone()


# The evaluation networks, as the registered model types build them.
# The ConvNet is the papers' (instance norm, width 128; components/dd/convnet.py).
_MODELS = {"convnet": {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 128,
                       "depth": 2},
           "mlp": {"in_features": 64, "hidden": [128], "num_classes": 10}}


def _model(kind: str) -> torch.nn.Module:
    if kind not in _MODELS:
        raise ValueError(f"unknown evaluation model '{kind}' (use 'convnet' or 'mlp')")
    component = COMPONENTS.get(kind)
    return component(component.Params(**_MODELS[kind]), "eval").build(BuildContext("eval"))


def train_on_set(images: torch.Tensor, labels: torch.Tensor, *, seed: int, steps: int = 300,
                 lr: float = 0.01, model: str = "mlp", test_fraction: float = 0.2,
                 split_seed: int = 0, soft_labels: torch.Tensor | None = None) -> float:
    """Test accuracy of a fresh ``model`` trained with Adam, full batch, only on the set.

    With ``soft_labels`` (probabilities ``[N, 10]``) the loss is ``KL(soft_labels ||
    softmax(f(x)))`` instead of the cross-entropy with ``labels``, as ``dd_evaluator``'s.

    Draws nothing from the global RNG: the network is initialised under a forked generator
    seeded with ``seed``, so calling this never changes the state of a training run.
    """
    _, _, x_test, y_test = digits_split(test_fraction, split_seed)
    images = images.detach().float().reshape(-1, 1, 8, 8).cpu()
    labels = labels.detach().long().reshape(-1).cpu()
    flat = model == "mlp"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _model(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        x = images.flatten(1) if flat else images
        net.train()
        for _ in range(steps):
            if soft_labels is None:
                loss = F.cross_entropy(net(x)["logits"], labels)
            else:
                p = soft_labels.detach().float().cpu()
                log_q = F.log_softmax(net(x)["logits"].float(), -1)
                loss = (torch.xlogy(p, p) - p * log_q).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        test = x_test.flatten(1) if flat else x_test
        predicted = net(test)["logits"].argmax(-1)
    return float((predicted == y_test).float().mean())


def compare_with_random_real(images: torch.Tensor, labels: torch.Tensor, seeds: Iterable[int],
                             **kwargs) -> dict[str, list[float]]:
    """Accuracies of the set and of random real sets of the same size, one per seed."""
    per_class = int(len(labels)) // 10
    out: dict[str, list[float]] = {"synthetic": [], "random_real": []}
    for seed in seeds:
        out["synthetic"].append(train_on_set(images, labels, seed=seed, **kwargs))
        real_x, real_y = random_real_set(per_class, seed)
        out["random_real"].append(train_on_set(real_x, real_y, seed=seed, **kwargs))
    return out
