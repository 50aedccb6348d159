"""``bandit_regret``: a causal LM played as a bandit policy, against UCB1, Thompson sampling
and the uniformly random policy on the same fresh instances.

A metric accumulator that makes its own inputs (see :mod:`dgraph.runtime.metrics`): at each
evaluation it draws ``episodes`` held-out instances from the ``bandit_lm`` data node's
distribution (seed ``eval_seed``, a stream of its own: never the training instances) and plays
them for the data's horizon. The LM acts greedily from its own history: at step ``t`` it reads
``|`` + the ``t`` groups ``<arm><reward> `` of its earlier pulls (the training text's format,
see :mod:`dgraph.components.data.bandit`) and pulls the arm whose letter has the largest
next-token score. All instances are played together in one batch (no padding: every history
has the same length). Rewards come from each instance's table, so every policy gets the same
reward for the same pull.

Reported (``<node>/<name>``): ``regret`` (the LM's mean cumulative pseudo-regret), ``ucb_regret``,
``thompson_regret``, ``random_regret`` (the random policy's exact expectation), ``best_arm`` (the
share of the LM's pulls that went to the best arm) and ``valid`` (the share of steps at which
the LM's top token over the whole vocabulary was an arm letter: 1 means the restriction to arm
letters never changed its choice).
"""

from __future__ import annotations

from typing import Any

from dgraph.declare import Module, NodeRef, Outputs, Scalar, metric, param
from dgraph.errors import Problem, ValidationError
from dgraph.registry import BuildContext

__all__ = ["BanditRegret", "lm_policy", "play_lm"]


def lm_policy(model: Any, ids: dict[str, Any], stats: dict[str, float] | None = None) -> Any:
    """A :func:`~dgraph.components.data.bandit.play` policy that asks ``model`` (a causal LM
    module: ``model(input_ids=...) -> {"logits": [B, T, V]}``) for the next arm letter.

    ``stats`` (a dict) receives ``valid``: the share of choices where the top token over the
    whole vocabulary was an arm letter.
    """
    import numpy as np
    import torch
    from dgraph.components.data.bandit import trace_tokens

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    arm_ids = torch.tensor(ids["arms"], device=device)
    counts = {"valid": 0, "steps": 0}

    def choose(t: int, arms: np.ndarray, rewards: np.ndarray, pulls: np.ndarray,
               successes: np.ndarray) -> np.ndarray:
        history = trace_tokens(arms, rewards, ids)  # [n, 3t + 1]: ends with the separator
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(history).to(device))
            logits = (out["logits"] if isinstance(out, dict) else out)[:, -1].float()
        counts["valid"] += int(torch.isin(logits.argmax(-1), arm_ids).sum())
        counts["steps"] += int(logits.shape[0])
        if stats is not None:
            stats["valid"] = counts["valid"] / counts["steps"]
        return logits[:, arm_ids].argmax(-1).cpu().numpy()

    return choose


def play_lm(model: Any, config: dict[str, Any], episodes: int, seed: int
            ) -> dict[str, float]:
    """The metric's values for ``model`` on ``episodes`` instances drawn with ``seed``."""
    from dgraph.components.data.bandit import (
        bandit_instances,
        play,
        random_regret,
        regret,
        thompson_policy,
        ucb1_policy,
    )

    horizon = int(config["horizon"])
    means, table = bandit_instances(episodes, int(config["arms"]), horizon, seed, 2,
                                    arm_means=config["arm_means"], gap=float(config["gap"]))
    stats: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        arms, _ = play(lm_policy(model, config["ids"], stats), table)
    finally:
        model.train(was_training)
    ucb, _ = play(ucb1_policy(float(config["ucb_c"])), table)
    thompson, _ = play(thompson_policy(seed), table)
    best = means.argmax(axis=1)[:, None]
    return {"regret": float(regret(means, arms).mean()),
            "ucb_regret": float(regret(means, ucb).mean()),
            "thompson_regret": float(regret(means, thompson).mean()),
            "random_regret": float(random_regret(means, horizon).mean()),
            "best_arm": float((arms == best).mean()),
            "valid": float(stats.get("valid", 1.0))}


@metric("bandit_regret")
class BanditRegret(Module):
    """Cumulative regret of a causal LM playing fresh Bernoulli bandits from its own history.

    It acts greedily over the arm letters; UCB1's, Thompson sampling's and a random policy's
    regrets on the same instances are reported beside it (see the module docs).
    """

    def __init__(self, *,
                 policy: NodeRef = param(doc="the causal LM node played (hf_causal_lm)"),
                 data: NodeRef = param(doc="the bandit_lm data node: the instances' "
                                       "distribution, horizon and the text's token ids"),
                 episodes: int = param(100, ge=1, le=100_000, doc="held-out instances played"),
                 eval_seed: int = param(1_000_000, ge=0, doc="seed of those instances (the "
                                        "same at every evaluation and in every run)"),
                 context: BuildContext) -> None:
        super().__init__()
        info = getattr(data, "info", {}) or {}
        if "bandit" not in info:
            raise ValidationError([Problem(
                code="not-a-bandit", message="params.data must name a bandit_lm data node",
                location=None if context.source is None else context.source.where(
                    ("nodes", context.node, "params", "data")),
                node=context.node, expected="a data node of type bandit_lm",
                found=type(data).__name__,
                suggestion="name the spec's bandit_lm data node (e.g. data: data)")])
        self.config = info["bandit"]
        self._policy = (policy,)  # by reference: not a submodule of the metric
        self.episodes = episodes
        self.eval_seed = eval_seed

    def reset(self) -> None:
        return None

    def update(self) -> None:
        return None

    def compute(self) -> Outputs(regret=Scalar(None, "the LM's mean cumulative regret"),
                                 ucb_regret=Scalar(None, "UCB1's, same instances"),
                                 thompson_regret=Scalar(None, "Thompson sampling's"),
                                 random_regret=Scalar(None, "the uniform policy's (exact "
                                                      "expectation)"),
                                 best_arm=Scalar(None, "share of the LM's pulls of the best "
                                                 "arm"),
                                 valid=Scalar(None, "share of steps whose top token was an "
                                              "arm letter")):
        if "ids" not in self.config:  # a dry run: nothing was tokenized, nothing to play
            return {}
        return play_lm(self._policy[0], self.config, self.episodes, self.eval_seed)
