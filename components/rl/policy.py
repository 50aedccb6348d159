"""MLP policies: a categorical actor(-critic) for discrete actions, a Gaussian one for
continuous actions.

Both take ``obs`` (``Observations[B, obs_dim]``) and output the action distribution's
parameters and, with ``critic: true``, a state value. The actor and the critic are separate
MLPs (as in PPO's reference implementations), initialised orthogonally: hidden layers with
gain sqrt(2), the action head with 0.01 (a near-uniform first policy), the value head with 1.
Rollouts and metrics act with them through :func:`distribution` and :func:`act`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dgraph.components.models.mlp import Activation, Widths

from dgraph.declare import Logits, Module, Observations, Outputs, Tensor, model, param

if TYPE_CHECKING:
    import torch

__all__ = ["CategoricalPolicy", "GaussianPolicy", "act", "distribution"]


def _mlp(in_features: int, hidden: list[int], out: int, activation: str, gain: float) -> Any:
    import math

    from torch import nn

    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[activation]
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        linear = nn.Linear(width, size)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, act()]
        width = size
    head = nn.Linear(width, out)
    nn.init.orthogonal_(head.weight, gain)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


@model("mlp_policy", roles=("teacher", "student", "model"))
class CategoricalPolicy(Module):
    """Categorical policy ``pi(a|s) = softmax(actor(s))`` with an optional critic ``V(s)``.

    ``actor`` and ``critic`` are MLPs of the same ``hidden`` widths. Without a critic,
    ``value`` is zeros (a student distilled from a teacher needs none).
    """

    def __init__(self, *, obs_dim: int = param(gt=0, doc="observation width"),
                 num_actions: int = param(gt=1, doc="number of discrete actions"),
                 hidden: Widths = param([64, 64], doc="hidden widths of actor and critic"),
                 activation: Activation = param("tanh", doc="nonlinearity"),
                 critic: bool = param(True, doc="also learn a state value V(s)")) -> None:
        super().__init__()
        import torch

        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.discrete = True
        self.actor = _mlp(obs_dim, hidden, num_actions, activation, 0.01)
        self.critic = _mlp(obs_dim, hidden, 1, activation, 1.0) if critic else None
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def forward(self, obs: Observations("B, {obs_dim}", "observations")) -> Outputs(
            logits=Logits("B, {num_actions}", "action scores (log-probabilities up to a "
                          "constant)"),
            value=Tensor("B", "state value V(s) (zeros without a critic)")):
        from dgraph._torch_declare import call_plain

        logits = call_plain(self.actor, obs)
        value = call_plain(self.critic, obs).squeeze(-1) if self.critic is not None else \
            self._zero.expand(obs.shape[0])
        return {"logits": logits, "value": value}


@model("gaussian_policy", roles=("teacher", "student", "model"))
class GaussianPolicy(Module):
    """Diagonal Gaussian policy ``a ~ N(actor(s), exp(log_std)^2)`` with an optional critic.

    ``log_std`` is a learned vector independent of the state (PPO's usual choice), started at
    ``init_log_std``.
    """

    def __init__(self, *, obs_dim: int = param(gt=0, doc="observation width"),
                 action_dim: int = param(gt=0, doc="action dimensions"),
                 hidden: Widths = param([64, 64], doc="hidden widths of actor and critic"),
                 activation: Activation = param("tanh", doc="nonlinearity"),
                 init_log_std: float = param(0.0, allow_inf_nan=False,
                                             doc="initial log standard deviation"),
                 critic: bool = param(True, doc="also learn a state value V(s)")) -> None:
        super().__init__()
        import torch

        self.obs_dim = obs_dim
        self.num_actions = action_dim
        self.discrete = False
        self.actor = _mlp(obs_dim, hidden, action_dim, activation, 0.01)
        self.critic = _mlp(obs_dim, hidden, 1, activation, 1.0) if critic else None
        self.log_std = torch.nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def forward(self, obs: Observations("B, {obs_dim}", "observations")) -> Outputs(
            mean=Tensor("B, {action_dim}", "mean action"),
            log_std=Tensor("B, {action_dim}", "log standard deviation of each action"),
            value=Tensor("B", "state value V(s) (zeros without a critic)")):
        from dgraph._torch_declare import call_plain

        mean = call_plain(self.actor, obs)
        value = call_plain(self.critic, obs).squeeze(-1) if self.critic is not None else \
            self._zero.expand(obs.shape[0])
        return {"mean": mean, "log_std": self.log_std.expand_as(mean), "value": value}


def distribution(outputs: dict[str, torch.Tensor]) -> Any:
    """The action distribution of a policy's outputs (categorical or diagonal Gaussian)."""
    import torch

    if "logits" in outputs:
        return torch.distributions.Categorical(logits=outputs["logits"].float(),
                                                 validate_args=False)
    return torch.distributions.Independent(
        torch.distributions.Normal(outputs["mean"].float(), outputs["log_std"].float().exp(),
                                   validate_args=False), 1, validate_args=False)


def policy_input(policy: Any) -> str:
    """The name of a policy module's observation input (``obs`` for dgraph's policies)."""
    import inspect

    names = [n for n in inspect.signature(policy.forward).parameters if n != "self"]
    return "obs" if "obs" in names or not names else names[0]


def act(policy: Any, obs: torch.Tensor, *, deterministic: bool = False
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(actions, the policy's outputs) for ``obs``: sampled from torch's global generator, or
    the most likely action (the mean) when ``deterministic``."""
    outputs = policy(**{policy_input(policy): obs})
    if deterministic:
        actions = outputs["logits"].argmax(-1) if "logits" in outputs else outputs["mean"]
    else:
        actions = distribution(outputs).sample()
    return actions, outputs
