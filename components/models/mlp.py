"""Multi-layer perceptrons: the simplest teacher or student for flat inputs such as digits, and
a fully connected map between feature spaces (generators, critics, score networks)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from dgraph.declare import Features, Logits, Module, Outputs, Tensor, model, param
from dgraph.errors import did_you_mean

__all__ = ["MLP", "MLPMap"]

ACTIVATION_NAMES = ("relu", "gelu", "tanh", "silu")


def _known_activation(value: object) -> object:
    if isinstance(value, str) and value not in ACTIVATION_NAMES:
        hint = did_you_mean(value, ACTIVATION_NAMES)
        raise ValueError(f"unknown activation '{value}'" + (f"; {hint}" if hint else "")
                         + f" (one of: {', '.join(ACTIVATION_NAMES)})")
    return value


# The closed set of activations; a misspelling is answered with the closest name.
Activation = Annotated[Literal["relu", "gelu", "tanh", "silu"], BeforeValidator(_known_activation)]
Widths = list[Annotated[int, Field(gt=0)]]


@model("mlp", roles=("teacher", "student", "model"), cuda_graph_safe=True)
class MLP(Module):
    """Fully connected network: ``x -> [Linear, activation, dropout] * len(hidden) -> Linear``.

    ``features`` is the last hidden layer's activation, ``logits`` the output layer's.
    Submodules ``body.<i>`` and ``head`` can be tapped.
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="input width"),
                 hidden: Widths = param([128], doc="hidden layer widths (each >= 1)"),
                 num_classes: int = param(gt=0, doc="number of output logits"),
                 activation: Activation = param("relu", doc="nonlinearity after each hidden "
                                                "layer"),
                 dropout: float = param(0.0, ge=0, lt=1, doc="dropout probability after each "
                                        "hidden layer")) -> None:
        super().__init__()
        from torch import nn

        act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[activation]
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), act()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Features("B, {in_features}", "flat input features")) -> Outputs(
            logits=Logits("B, {num_classes}", "class scores"),
            features=Features("B, {hidden[-1]}", "last hidden activation")):
        from dgraph._torch_declare import call_plain

        # (flat inputs, the usual case, skip a flatten call; the layers are run through
        # call_plain: a step of a small model is short)
        features = call_plain(self.body, x if x.dim() == 2 else x.flatten(1))
        return {"logits": call_plain(self.head, features), "features": features}


@model("mlp_map", roles=("teacher", "student", "model"))
class MLPMap(Module):
    """A fully connected map ``x -> y`` between feature spaces (generator, critic, score net).

    ``y = Linear(act(Linear(... x)))``; the output is not a class score.

    ``net`` is an ``mlp`` without dropout (its submodules ``net.body.<i>``, ``net.head``).
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="input width"),
                 hidden: Widths = param([128, 128], doc="hidden widths (each >= 1)"),
                 out_features: int = param(gt=0, doc="output width"),
                 activation: Activation = param("relu", doc="nonlinearity after each hidden "
                                                "layer")) -> None:
        super().__init__()
        self.net = MLP.create(in_features=in_features, hidden=hidden, num_classes=out_features,
                              activation=activation)

    def forward(self, x: Tensor("B, {in_features}", "input (features, noise, ...)")
                ) -> Features("B, {out_features}", "output"):
        return self.net(x)["logits"]
