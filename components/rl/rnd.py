"""Random network distillation (Burda et al. 2018): exploration from a distillation error.

``rnd`` holds a fixed, randomly initialised ``target`` network and a trained ``predictor`` of
the same output width. Observations are normalised by running statistics (clipped to
``[-5, 5]``) before both. Its outputs are both embeddings and the per-state error
``||predictor(s) - target(s)||^2 / K``; ``mse(prediction, target)`` is the
predictor's loss. A ``ppo_rollout`` naming it (``rnd: <node>``) updates the observation
statistics with each rollout, takes the error of each next state as its intrinsic reward,
divided by the running standard deviation of the discounted intrinsic return, and adds
``intrinsic_coef`` times it to the reward (one value head), or, with an
``intrinsic_critic`` (``mlp_value``), learns its value apart and adds ``intrinsic_coef`` times
its own advantage (two value heads, as in the paper; see ``ppo_rollout``).

``rnd_novelty`` is the metric of the issue's "seen vs never seen" check: the mean intrinsic
reward on the envs' seeded reset states (seen at the start of every episode) against states
drawn uniformly from the observation space's box (mostly never seen).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dgraph.components.models.mlp import Widths
from dgraph.components.rl.env import env_info

from dgraph.declare import (
    Features,
    Module,
    NodeRef,
    Observations,
    Outputs,
    Scalar,
    Tensor,
    metric,
    model,
    param,
)
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["RND", "RNDNovelty"]


def _net(in_features: int, hidden: list[int], out: int) -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LeakyReLU()]
        width = size
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


@model("rnd", roles=("model",))
class RND(Module):
    """Random network distillation: a frozen random ``target`` and a trained ``predictor``.

    ``x = clip((obs - mean) / std, -5, 5)`` with running statistics (``observe`` updates
    them; buffers, so saved in checkpoints); ``prediction = predictor(x)``,
    ``target = target_net(x)`` (no gradient), ``error = mean_k (prediction - target)^2``.
    The predictor has one more hidden layer than the target (as in the paper's code).
    """

    def __init__(self, *, obs_dim: int = param(gt=0, doc="observation width"),
                 hidden: Widths = param([64, 64], doc="hidden widths of the target network"),
                 embedding: int = param(32, gt=0, doc="output width K of both networks"),
                 ) -> None:
        super().__init__()
        import torch

        self.obs_dim = obs_dim
        self.target_net = _net(obs_dim, hidden, embedding)
        self.target_net.requires_grad_(False)
        self.predictor = _net(obs_dim, [*hidden, hidden[-1]], embedding)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.zeros((), dtype=torch.float64))
        # Running variance of the discounted intrinsic return, per the paper's reward filter.
        self.register_buffer("ret_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("ret_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ret_count", torch.zeros((), dtype=torch.float64))

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / self.obs_var.clamp_min(1e-8).sqrt()).clamp(-5.0, 5.0)

    def forward(self, obs: Observations("N, {obs_dim}", "observations")) -> Outputs(
            prediction=Features("N, {embedding}", "the predictor's embedding (trained)"),
            target=Features("N, {embedding}", "the fixed random network's embedding"),
            error=Tensor("N", "mean squared prediction error per state (novelty)")):
        import torch

        from dgraph._torch_declare import call_plain

        x = self.normalise(obs.float())
        with torch.no_grad():
            target = call_plain(self.target_net, x)
        prediction = call_plain(self.predictor, x)
        return {"prediction": prediction, "target": target,
                "error": (prediction - target).pow(2).mean(-1)}

    @staticmethod
    def _merge(mean: Any, var: Any, count: Any, batch: torch.Tensor) -> tuple[Any, Any, Any]:
        """Chan et al.'s parallel update of a running mean and variance."""
        b_mean = batch.mean(0).to(mean.dtype)
        b_var = batch.var(0, unbiased=False).to(var.dtype)
        n = batch.shape[0]
        total = count + n
        delta = b_mean - mean
        new_mean = mean + delta * n / total
        m2 = var * count + b_var * n + delta.pow(2) * count * n / total
        return new_mean, m2 / total, total

    def observe(self, obs: torch.Tensor) -> None:
        """Add ``[N, obs_dim]`` observations to the running statistics."""
        import torch

        with torch.no_grad():
            mean, var, count = self._merge(self.obs_mean, self.obs_var, self.obs_count.float(),
                                           obs.to(self.obs_mean.device).float())
            self.obs_mean.copy_(mean)
            self.obs_var.copy_(var)
            self.obs_count.copy_(count)

    def intrinsic(self, obs: torch.Tensor) -> torch.Tensor:
        """The (unnormalised) intrinsic reward of each state: its prediction error."""
        import torch

        with torch.no_grad():
            return self(obs=obs.to(self.obs_mean.device))["error"].float()

    def observe_returns(self, returns: torch.Tensor) -> float:
        """Add discounted intrinsic returns to their running statistics; their std now."""
        import torch

        with torch.no_grad():
            mean, var, count = self._merge(self.ret_mean, self.ret_var, self.ret_count,
                                           returns.reshape(-1, 1).double().to(
                                               self.ret_var.device))
            self.ret_mean.copy_(mean.reshape(()))
            self.ret_var.copy_(var.reshape(()))
            self.ret_count.copy_(count)
        return float(self.ret_var.clamp_min(1e-8).sqrt())


@metric("rnd_novelty")
class RNDNovelty(Module):
    """Mean intrinsic reward (RND error) on often-seen states against never-seen ones.

    ``seen``: the ``samples`` seeded reset states of the env (every episode starts there);
    ``unseen``: as many states drawn uniformly from the observation space's box (bounds
    clipped to ``[-bound, bound]``), seeded; ``ratio = unseen / seen`` (above 1: the predictor
    has learnt the familiar states).
    """

    def __init__(self, *, rnd: NodeRef = param(doc="the rnd node"),
                 env: NodeRef = param(doc="the gym_env data node"),
                 samples: int = param(256, ge=2, le=100_000, doc="states on each side"),
                 seed: int = param(2_000_000, ge=0, doc="seed of both samples"),
                 bound: float = param(10.0, gt=0, doc="clip the box to [-bound, bound]"),
                 context: BuildContext) -> None:
        super().__init__()
        info = env_info(env, context, "name the spec's gym_env node")
        self.config = info["gym"]
        self._rnd = (rnd,)
        self.samples = samples
        self.seed = seed
        self.bound = bound

    def reset(self) -> None:
        return None

    def update(self) -> None:
        return None

    def compute(self) -> Outputs(seen=Scalar(None, "mean error on reset states"),
                                 unseen=Scalar(None, "mean error on uniform states"),
                                 ratio=Scalar(None, "unseen / seen")):
        import numpy as np
        import torch

        env = self.config.make()
        try:
            seen = np.stack([env.reset(seed=self.seed + i)[0] for i in range(self.samples)])
            box = env.observation_space
        finally:
            env.close()
        rng = np.random.default_rng(self.seed)
        low = np.clip(box.low, -self.bound, self.bound)
        high = np.clip(box.high, -self.bound, self.bound)
        unseen = rng.uniform(low, high, (self.samples, *box.shape))
        rnd = self._rnd[0]
        a = float(rnd.intrinsic(torch.as_tensor(seen, dtype=torch.float32)).mean())
        b = float(rnd.intrinsic(torch.as_tensor(unseen, dtype=torch.float32)).mean())
        return {"seen": a, "unseen": b, "ratio": b / a if a > 0 else float("inf")}
