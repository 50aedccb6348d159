"""``mlp_value``: a state-value network on its own (a second critic).

RND's intrinsic value head (Burda et al. 2018 learn ``V_int`` beside ``V_ext``): a
``ppo_rollout`` naming it as ``intrinsic_critic`` estimates the intrinsic return with it and
serves ``int_returns`` for its ``value_loss``. The MLP is the policies' (orthogonal
initialisation, hidden gain sqrt(2), value head gain 1).
"""

from __future__ import annotations

from dgraph.components.models.mlp import Activation, Widths
from dgraph.components.rl.policy import _mlp

from dgraph.declare import Module, Observations, Outputs, Tensor, model, param

__all__ = ["ValueNet"]


@model("mlp_value", roles=("model", "student", "teacher"))
class ValueNet(Module):
    """``V(s) = mlp(s)``: a state value, one number per observation."""

    def __init__(self, *, obs_dim: int = param(gt=0, doc="observation width"),
                 hidden: Widths = param([64, 64], doc="hidden widths"),
                 activation: Activation = param("tanh", doc="nonlinearity")) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.net = _mlp(obs_dim, hidden, 1, activation, 1.0)

    def forward(self, obs: Observations("B, {obs_dim}", "observations")
                ) -> Outputs(value=Tensor("B", "state value V(s)")):
        from dgraph._torch_declare import call_plain

        return {"value": call_plain(self.net, obs).squeeze(-1)}
