"""``episode_return``: a policy's return over seeded evaluation episodes.

A metric accumulator (see :mod:`dgraph.runtime.metrics`) that makes its own inputs: at each
evaluation it plays ``episodes`` episodes, one per env of a fresh ``SyncVectorEnv`` made from
a ``gym_env`` node's config, env ``i`` reset with seed ``eval_seed + i`` (the same episodes at
every evaluation and in every run), and reports ``mean``, ``min``, ``max`` and ``std`` of the
returns. Name the node ``episode_return`` (or ``<prefix>_episode_return``) and the keys in
``summary.json`` end with ``episode_return/mean`` and ``episode_return/min``. Evaluation runs
with torch's generators forked, so a stochastic policy's episodes do not change training.
"""

from __future__ import annotations

from typing import Any

from dgraph.components.rl.env import env_info

from dgraph.declare import Module, NodeRef, Outputs, Scalar, metric, param
from dgraph.registry import BuildContext

__all__ = ["EpisodeReturn", "play_episodes"]


@metric("episode_return")
class EpisodeReturn(Module):
    """Mean, worst, best and standard deviation of a policy's return over seeded episodes.

    The policy acts with its most likely action (``deterministic``, the default) or samples.
    With ``privileged`` it acts on the unwrapped env's observation (a full-state teacher).
    ``env_steps`` is the number of env steps the ``rollout`` node (when named) has taken so
    far in training: the x-axis of sample efficiency.
    """

    def __init__(self, *,
                 policy: NodeRef = param(doc="the policy node evaluated"),
                 env: NodeRef = param(doc="the gym_env data node whose config makes the envs"),
                 rollout: NodeRef | None = param(None, doc="a rollout node whose env steps "
                                                 "are reported as env_steps"),
                 episodes: int = param(10, ge=1, le=1000, doc="evaluation episodes"),
                 eval_seed: int = param(1_000_000, ge=0, doc="env i is reset with "
                                        "eval_seed + i"),
                 deterministic: bool = param(True, doc="act with the most likely action"),
                 privileged: bool = param(False, doc="act on the full state"),
                 max_steps: int = param(100_000, ge=1, doc="stop an episode after this many "
                                        "steps (its return so far counts)"),
                 context: BuildContext) -> None:
        super().__init__()
        info = env_info(env, context, "name the spec's gym_env node")
        self.config = info["gym"]
        self._refs = (policy, rollout)
        self.episodes = episodes
        self.eval_seed = eval_seed
        self.deterministic = deterministic
        self.privileged = privileged
        self.max_steps = max_steps

    def reset(self) -> None:
        return None

    def update(self) -> None:
        return None

    def compute(self) -> Outputs(mean=Scalar(None, "mean return"),
                                 min=Scalar(None, "worst episode's return"),
                                 max=Scalar(None, "best episode's return"),
                                 std=Scalar(None, "standard deviation of the returns"),
                                 terminated=Scalar(None, "fraction of episodes that ended "
                                                   "by termination, not the time limit (a "
                                                   "reached goal in MountainCar)"),
                                 env_steps=Scalar(None, "env steps taken by the rollout"),
                                 env_terminations=Scalar(None, "training episodes the "
                                                         "rollout ended by termination")):
        policy, rollout = self._refs
        ended: list[bool] = []
        returns = play_episodes(policy, self.config, self.episodes, self.eval_seed,
                                deterministic=self.deterministic, privileged=self.privileged,
                                max_steps=self.max_steps, ended_out=ended)
        mean = sum(returns) / len(returns)
        std = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
        out = {"mean": mean, "min": min(returns), "max": max(returns), "std": std,
               "terminated": sum(ended) / len(ended)}
        if rollout is not None and hasattr(rollout, "env_steps"):
            out["env_steps"] = float(rollout.env_steps)
            out["env_terminations"] = float(rollout.terminations)
        return out


def play_episodes(policy: Any, config: Any, episodes: int, seed: int, *,
                  deterministic: bool = True, privileged: bool = False,
                  max_steps: int = 100_000, ended_out: list[bool] | None = None
                  ) -> list[float]:
    """The return of each of ``episodes`` episodes, env ``i`` reset with ``seed + i``;
    ``ended_out`` (a list) receives whether each ended by termination."""
    import numpy as np
    import torch
    from dgraph.components.rl.env import make_vector_env, privileged_states
    from dgraph.components.rl.policy import act

    envs = make_vector_env(config, episodes)
    first = next(iter(policy.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        ended = np.zeros(episodes, dtype=bool)
        discrete = hasattr(envs.single_action_space, "n")
        with torch.no_grad():
            for _ in range(max_steps):
                seen = privileged_states(envs) if privileged else obs
                actions, _ = act(policy, torch.as_tensor(seen, dtype=torch.float32,
                                                         device=device),
                                 deterministic=deterministic)
                actions_np = actions.cpu().numpy()
                if discrete:
                    actions_np = actions_np.astype(np.int64)
                obs, reward, terminated, truncated, _ = envs.step(actions_np)
                returns += np.where(running, reward, 0.0)
                ended |= running & terminated
                running &= ~np.logical_or(terminated, truncated)
                if not running.any():
                    break
    finally:
        envs.close()
    if ended_out is not None:
        ended_out[:] = [bool(e) for e in ended]
    return [float(r) for r in returns]
