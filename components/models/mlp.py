"""Multi-layer perceptron: the simplest teacher or student for flat inputs such as digits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from dgraph.errors import did_you_mean
from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["MLP", "MLPMap"]

# The closed set of activations (the torch side maps each name to its module).
Activation = Literal["relu", "gelu", "tanh", "silu"]
ACTIVATION_NAMES = ("relu", "gelu", "tanh", "silu")


def _known_activation(value: object) -> object:
    if isinstance(value, str) and value not in ACTIVATION_NAMES:
        hint = did_you_mean(value, ACTIVATION_NAMES)
        raise ValueError(f"unknown activation '{value}'" + (f"; {hint}" if hint else "")
                         + f" (one of: {', '.join(ACTIVATION_NAMES)})")
    return value


class MLPParams(Params):
    in_features: int = Field(gt=0, description="input width")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [128], description="hidden layer widths (each >= 1)")
    num_classes: int = Field(gt=0, description="number of output logits")
    activation: Activation = Field("relu", description="nonlinearity after each hidden layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability after each "
                           "hidden layer")

    _activation = field_validator("activation", mode="before")(_known_activation)


@component("mlp", roles=("teacher", "student", "model"))
class MLP(Component):
    """Fully connected network: ``x -> [Linear, activation, dropout] * len(hidden) -> Linear``.

    ``features`` is the last hidden layer's activation, ``logits`` the output layer's.
    Submodules ``body.<i>`` and ``head`` can be tapped.
    """

    Params = MLPParams
    inputs = {"x": Port("Features", "B, {in_features}", "flat input features")}
    outputs = {
        "logits": Port("Logits", "B, {num_classes}", "class scores"),
        "features": Port("Features", "B, {hidden[-1]}", "last hidden activation"),
    }
    tappable = True

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_models import MLPModule

        p = self.params
        return MLPModule(p.in_features, list(p.hidden), p.num_classes, p.activation, p.dropout)


class MLPMapParams(Params):
    in_features: int = Field(gt=0, description="input width")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [128, 128], description="hidden widths (each >= 1)")
    out_features: int = Field(gt=0, description="output width")
    activation: Activation = Field("relu", description="nonlinearity after each hidden layer")

    _activation = field_validator("activation", mode="before")(_known_activation)


@component("mlp_map", roles=("teacher", "student", "model"))
class MLPMap(Component):
    """A fully connected map ``x -> y`` between feature spaces: a generator, critic or
    score network. ``y = Linear(act(Linear(... x)))``; the output is not a class score.
    """

    Params = MLPMapParams
    inputs = {"x": Port("Tensor", "B, {in_features}", "input (features, noise, ...)")}
    outputs = {"y": Port("Features", "B, {out_features}", "output")}
    tappable = True

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_models import MLPMapModule

        p = self.params
        return MLPMapModule(p.in_features, list(p.hidden), p.out_features, p.activation)
