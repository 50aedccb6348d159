"""Bernoulli multi-armed bandits, the exploration algorithms that play them (UCB1, Thompson
sampling), and their traces as training text for a causal LM (algorithm distillation, as in
EVOLvE: Nie et al. 2024, "Evaluating and Optimizing LLMs For Exploration").

An **instance** has ``K`` arms with success probabilities ``mu[k]`` and a horizon ``H``. Its
rewards are drawn once, up front, as a table: ``table[k, j]`` is the reward (0 or 1, drawn with
probability ``mu[k]``) of the ``j``-th pull of arm ``k``. Every policy played on the instance
sees the same rewards for the same pulls (common random numbers), so regrets of different
policies on one instance differ only by their choices. Instances are drawn from
``numpy.random.default_rng([seed, stream])``: the same seed gives the same instances anywhere.

``arm_means: uniform`` draws each ``mu[k]`` from U(0, 1); ``arm_means: gap`` draws one best
arm uniformly and sets ``mu = 0.5 + gap/2`` for it and ``0.5 - gap/2`` for the others
(EVOLvE's easy/hard instances differ by their gap).

**UCB1** (Auer et al., 2002) pulls each arm once (lowest index first), then the arm maximising
``mean[k] + c * sqrt(ln t / n[k])`` where ``t`` is the number of pulls so far and ``n[k]`` the
arm's pulls (``c = sqrt(2)`` is the paper's); ties go to the lowest index.
**Thompson sampling** keeps a Beta(1 + successes, 1 + failures) posterior per arm and pulls the
arm with the largest posterior draw (seeded).

**The text.** A trace is written ``|`` followed by one ``<arm><reward> `` group per step, arms
as the letters ``A, B, C, ...`` and rewards as ``0``/``1``: ``|A1 B0 C1 A1 ``. Each character is
one token (the data source checks this for its tokenizer), so a trace of ``H`` steps is
``3H + 1`` tokens and its next-token tensors have ``T = 3H`` positions. ``loss_mask`` is 1
exactly at the positions whose target is an arm letter (``0, 3, 6, ...``): the student learns
the algorithm's next arm given the history, and nothing else.

**Regret.** The (pseudo-)regret of a run is ``sum_t (max_k mu[k] - mu[a_t])``; the uniformly
random policy's expected regret is ``H * (max_k mu[k] - mean_k mu[k])`` (computed exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from dgraph.components._inputs import input_error
from dgraph.components.data.text import TokenizerParams, build_tokenizer
from pydantic import Field

from dgraph.declare import Mask, Outputs, Tokens, data, param
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "ARM_LETTERS",
    "SEPARATOR",
    "START",
    "bandit_instances",
    "bandit_lm",
    "play",
    "random_regret",
    "regret",
    "render_trace",
    "thompson_policy",
    "trace_tokens",
    "ucb1_policy",
]

ARM_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
START, SEPARATOR = "|", " "
MAX_ARMS = len(ARM_LETTERS)

# A policy: (t, arms [n, t], rewards [n, t], pulls [n, K], successes [n, K]) -> arms [n].
Choose = Callable[[int, "np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"], "np.ndarray"]


def bandit_instances(n: int, arms: int, horizon: int, seed: int, stream: int = 0, *,
                     arm_means: Literal["uniform", "gap"] = "uniform", gap: float = 0.2
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` instances: arm means ``[n, K]`` (float64) and reward tables ``[n, K, H]`` (int64).

    Drawn from ``default_rng([seed, stream])`` (streams keep training, held-out and metric
    instances apart). ``table[i, k, j]`` is the reward of the ``j``-th pull of arm ``k``.
    """
    import numpy as np

    rng = np.random.default_rng([seed, stream])
    if arm_means == "uniform":
        means = rng.random((n, arms))
    else:
        best = rng.integers(0, arms, size=n)
        means = np.full((n, arms), 0.5 - gap / 2)
        means[np.arange(n), best] = 0.5 + gap / 2
    table = (rng.random((n, arms, horizon)) < means[:, :, None]).astype(np.int64)
    return means, table


def play(choose: Choose, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Play ``choose`` on every instance of ``table`` ``[n, K, H]`` for ``H`` steps.

    Returns the arms pulled and the rewards seen, both ``[n, H]`` (int64).
    """
    import numpy as np

    n, k, horizon = table.shape
    arms = np.zeros((n, horizon), dtype=np.int64)
    rewards = np.zeros((n, horizon), dtype=np.int64)
    pulls = np.zeros((n, k), dtype=np.int64)
    successes = np.zeros((n, k), dtype=np.int64)
    rows = np.arange(n)
    for t in range(horizon):
        arm = np.asarray(choose(t, arms[:, :t], rewards[:, :t], pulls, successes),
                         dtype=np.int64)
        if arm.shape != (n,) or (arm < 0).any() or (arm >= k).any():
            raise ValueError(f"a policy must choose one arm in 0..{k - 1} per instance; "
                             f"found {arm!r} at step {t}")
        reward = table[rows, arm, pulls[rows, arm]]
        arms[:, t], rewards[:, t] = arm, reward
        pulls[rows, arm] += 1
        successes[rows, arm] += reward
    return arms, rewards


def ucb1_policy(c: float = math.sqrt(2.0)) -> Choose:
    """UCB1: each arm once (lowest index first), then ``argmax mean + c sqrt(ln t / n)``."""
    import numpy as np

    def choose(t: int, arms: np.ndarray, rewards: np.ndarray, pulls: np.ndarray,
               successes: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = c * np.sqrt(math.log(max(t, 1)) / pulls)
            score = np.where(pulls > 0, successes / pulls + bonus, np.inf)
        return score.argmax(axis=1)

    return choose


def thompson_policy(seed: int) -> Choose:
    """Thompson sampling with Beta(1, 1) priors; draws from ``default_rng([seed, 7])``."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])

    def choose(t: int, arms: np.ndarray, rewards: np.ndarray, pulls: np.ndarray,
               successes: np.ndarray) -> np.ndarray:
        draws = rng.beta(1 + successes, 1 + pulls - successes)
        return draws.argmax(axis=1)

    return choose


def regret(means: np.ndarray, arms: np.ndarray) -> np.ndarray:
    """Cumulative pseudo-regret of each run: ``sum_t max(mu) - mu[a_t]`` (``[n]``)."""
    import numpy as np

    chosen = np.take_along_axis(means, arms, axis=1)
    return (means.max(axis=1, keepdims=True) - chosen).sum(axis=1)


def random_regret(means: np.ndarray, horizon: int) -> np.ndarray:
    """The uniformly random policy's expected regret: ``H * (max(mu) - mean(mu))``."""
    return horizon * (means.max(axis=1) - means.mean(axis=1))


def render_trace(arms: Any, rewards: Any) -> str:
    """One run as text: ``|`` then ``<arm letter><reward> `` per step (``|A1 B0 ``)."""
    return START + "".join(f"{ARM_LETTERS[int(a)]}{int(r)}{SEPARATOR}"
                           for a, r in zip(arms, rewards, strict=True))


def trace_tokens(arms: np.ndarray, rewards: np.ndarray, ids: dict[str, Any]) -> np.ndarray:
    """The token ids of :func:`render_trace` for runs ``[n, H]`` -> ``[n, 3H + 1]``.

    ``ids`` maps ``start``, ``sep`` to one id and ``arms``, ``rewards`` to lists of ids.
    """
    import numpy as np

    n, horizon = arms.shape
    tokens = np.empty((n, 3 * horizon + 1), dtype=np.int64)
    tokens[:, 0] = ids["start"]
    tokens[:, 1::3] = np.asarray(ids["arms"], dtype=np.int64)[arms]
    tokens[:, 2::3] = np.asarray(ids["rewards"], dtype=np.int64)[rewards]
    tokens[:, 3::3] = ids["sep"]
    return tokens


def _symbol_ids(tok: Any, arms: int, context: BuildContext) -> dict[str, Any]:
    """The one token of each symbol of the trace text; a located error when one is several."""
    def one(symbol: str) -> int:
        found = tok.encode(symbol, add_special_tokens=False).ids
        if len(found) != 1:
            raise input_error(context, "tokenizer", f"the tokenizer encodes the trace symbol "
                              f"{symbol!r} as {len(found)} tokens", code="bad-tokenizer",
                              expected="one token for each of '|', ' ', '0', '1' and the arm "
                              "letters", found=f"{symbol!r} -> ids {found}",
                              hint="use the byte tokenizer (kind: byte) or a byte-level one")
        return int(found[0])

    return {"start": one(START), "sep": one(SEPARATOR),
            "arms": [one(letter) for letter in ARM_LETTERS[:arms]],
            "rewards": [one("0"), one("1")]}


def _trace_tensors(tokens: np.ndarray) -> dict[str, torch.Tensor]:
    import torch

    full = torch.from_numpy(tokens)
    n, length = full.shape
    loss_mask = torch.zeros((n, length - 1), dtype=torch.bool)
    loss_mask[:, 0::3] = True  # position 3s predicts the arm of step s
    return {"input_ids": full[:, :-1].contiguous(), "targets": full[:, 1:].contiguous(),
            "attention_mask": torch.ones((n, length - 1), dtype=torch.bool),
            "loss_mask": loss_mask}


_TOKENIZER = Field(default_factory=TokenizerParams,
                   description="{kind: byte|bpe|file, ...}: every trace symbol must be one token")


def _check(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.arm_means == "gap" and p.gap >= 1.0:
        raise ValueError(f"gap {p.gap} leaves arm means outside [0, 1]; use a gap < 1")


def _sizes(p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": p.tokenizer.size, "seq_len": 3 * p.horizon}


@data("bandit_lm", check=_check, sizes=_sizes)
def bandit_lm(
    *,
    arms: int = param(4, ge=2, le=MAX_ARMS, doc="K: arms per instance"),
    horizon: int = param(20, ge=1, le=2000, doc="H: pulls per run"),
    instances: int = param(2000, ge=1, le=1_000_000, doc="training instances (one trace "
                           "each)"),
    eval_instances: int = param(200, ge=0, le=1_000_000, doc="held-out instances (their "
                                "traces are the eval split; 0: none)"),
    seed: int = param(0, ge=0, doc="seed of the instances (and of Thompson sampling)"),
    algorithm: Literal["ucb", "thompson"] = param("ucb", doc="the algorithm whose traces "
                                                  "are the training text"),
    ucb_c: float = param(math.sqrt(2.0), ge=0.0, le=100.0, doc="UCB1's exploration weight "
                         "c (sqrt(2) in Auer et al.)"),
    arm_means: Literal["uniform", "gap"] = param("uniform", doc="uniform: each mean from "
                                                 "U(0, 1); gap: one best arm at 0.5 + gap/2, "
                                                 "the others at 0.5 - gap/2"),
    gap: float = param(0.2, gt=0.0, le=1.0, doc="arm_means gap: the best arm's margin"),
    tokenizer: TokenizerParams = _TOKENIZER,
    batch_size: int = param(32, gt=0, doc="traces per batch"),
    shuffle: bool = param(True, doc="reshuffle the training traces every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    context: BuildContext,
) -> Outputs(
    input_ids=Tokens("B, {seq_len}", "the trace's tokens (int64)"),
    targets=Tokens("B, {seq_len}", "the next token of each position (int64)"),
    attention_mask=Mask("B, {seq_len}", "all 1: traces have no padding"),
    loss_mask=Mask("B, {seq_len}", "1 where the target is the algorithm's next arm"),
):
    """Traces of UCB1 or Thompson sampling on seeded Bernoulli bandits, as next-token text.

    Algorithm distillation: see the module docs for the format.

    ``seq_len`` is ``3 * horizon``. The training split holds one trace per training instance,
    the eval split one per held-out instance (another seed stream). ``info["bandit"]`` holds
    what a policy metric needs to play a model on fresh instances: the arms, horizon, means
    distribution, the symbols' token ids and the algorithm's settings.
    """
    import torch

    from dgraph.data import DataSource

    t = 3 * horizon
    config: dict[str, Any] = {"arms": arms, "horizon": horizon, "arm_means": arm_means,
                              "gap": gap, "algorithm": algorithm, "ucb_c": ucb_c,
                              "seed": seed}
    info: dict[str, Any] = {"vocab_size": tokenizer.size, "seq_len": t, "bandit": config}
    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    if context.meta:
        def meta(n: int) -> dict[str, torch.Tensor]:
            return {name: torch.empty((n, t), device="meta",
                                      dtype=torch.bool if "mask" in name else torch.long)
                    for name in ("input_ids", "targets", "attention_mask", "loss_mask")}
        return DataSource(train=meta(min(batch_size, instances)),
                          eval=meta(min(batch_size, max(eval_instances, 1))), info=info,
                          **loader)
    alphabet = START + SEPARATOR + "01" + ARM_LETTERS[:arms]
    tok = build_tokenizer(tokenizer, [alphabet * 4], context)
    ids = _symbol_ids(tok, arms, context)
    config["ids"] = ids
    draw = {"arm_means": arm_means, "gap": gap}

    def traces(n: int, stream: int) -> tuple[dict[str, torch.Tensor], float]:
        means, table = bandit_instances(n, arms, horizon, seed, stream, **draw)
        policy = (ucb1_policy(ucb_c) if algorithm == "ucb"
                  else thompson_policy(seed * 1000 + stream))
        pulled, seen = play(policy, table)
        return _trace_tensors(trace_tokens(pulled, seen, ids)), float(regret(means,
                                                                             pulled).mean())

    train, train_regret = traces(instances, 0)
    evaluation = None
    if eval_instances:
        evaluation, eval_regret = traces(eval_instances, 1)
        info["eval_regret"] = eval_regret
    info["train_regret"] = train_regret
    return DataSource(train=train, eval=evaluation, info=info, **loader)
