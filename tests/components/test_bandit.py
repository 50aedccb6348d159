"""The bandit environment, UCB1 and Thompson sampling, the traces as text, and the
``bandit_regret`` metric: hand-computed choices and regrets on tiny instances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dgraph.components.data.bandit import (
    bandit_instances,
    play,
    random_regret,
    regret,
    render_trace,
    thompson_policy,
    trace_tokens,
    ucb1_policy,
)
from dgraph.components.data.text import byte_tokenizer
from dgraph.components.metrics.bandit import BanditRegret, play_lm

from dgraph.data import DataSource
from dgraph.errors import ValidationError
from dgraph.registry import BuildContext

# Arm 0 pays on its first pull only, arm 1 on all but its first.
TABLE = np.array([[[1, 0, 0, 0, 0], [0, 1, 1, 1, 1]]])
MEANS = np.array([[0.3, 0.8]])


def test_ucb1_by_hand():
    # t=0, 1: each arm once (A pays 1, B pays 0). Then mean + sqrt(2 ln t / n):
    # t=2: A 1 + sqrt(2 ln2) = 2.18 > B 0 + 1.18 -> A (pays 0)
    # t=3: A 1/2 + sqrt(2 ln3 / 2) = 1.55 > B sqrt(2 ln3) = 1.48 -> A (pays 0)
    # t=4: A 1/3 + sqrt(2 ln4 / 3) = 1.29 < B sqrt(2 ln4) = 1.67 -> B (its 2nd pull pays 1)
    assert 1 + math.sqrt(2 * math.log(2)) > math.sqrt(2 * math.log(2))
    assert 0.5 + math.sqrt(math.log(3)) > math.sqrt(2 * math.log(3))
    assert 1 / 3 + math.sqrt(2 * math.log(4) / 3) < math.sqrt(2 * math.log(4))
    arms, rewards = play(ucb1_policy(), TABLE)
    assert arms.tolist() == [[0, 1, 0, 0, 1]]
    assert rewards.tolist() == [[1, 0, 0, 0, 1]]
    assert render_trace(arms[0], rewards[0]) == "|A1 B0 A0 A0 B1 "
    # three pulls of the arm 0.5 below the best
    assert regret(MEANS, arms).tolist() == pytest.approx([1.5])
    assert random_regret(MEANS, 5).tolist() == pytest.approx([5 * (0.8 - 0.55)])
    # c = 0: greedy after the first round; A's mean 1/2 > B's 0 at t=3, 1/3 > 0 at t=4
    greedy, _ = play(ucb1_policy(0.0), TABLE)
    assert greedy.tolist() == [[0, 1, 0, 0, 0]]


def test_instances_are_seeded_and_follow_their_distribution():
    means, table = bandit_instances(500, 3, 40, seed=5)
    again, table2 = bandit_instances(500, 3, 40, seed=5)
    other, _ = bandit_instances(500, 3, 40, seed=5, stream=1)
    assert np.array_equal(means, again) and np.array_equal(table, table2)
    assert not np.array_equal(means, other)
    assert means.shape == (500, 3) and table.shape == (500, 3, 40)
    assert ((means >= 0) & (means < 1)).all()
    assert set(np.unique(table)) <= {0, 1}
    # each arm pays with its mean: over 500 x 3 x 40 draws the average gap is small
    assert abs((table.mean(axis=2) - means).mean()) < 0.01
    gap_means, _ = bandit_instances(50, 4, 5, seed=0, arm_means="gap", gap=0.4)
    assert np.allclose(np.sort(gap_means, axis=1), [[0.3, 0.3, 0.3, 0.7]] * 50)


def test_thompson_is_seeded_and_finds_a_sure_arm():
    table = np.zeros((20, 3, 30), dtype=np.int64)
    table[:, 2] = 1  # arm C always pays
    first, _ = play(thompson_policy(3), table)
    again, _ = play(thompson_policy(3), table)
    assert np.array_equal(first, again)
    assert (first[:, -10:] == 2).mean() > 0.9


def test_play_refuses_a_policy_choosing_no_arm():
    with pytest.raises(ValueError, match=r"^a policy must choose one arm in 0\.\.1 per "
                       r"instance; found array\(\[2\]\) at step 0$"):
        play(lambda *a: np.array([2]), TABLE)


def test_the_data_source_holds_ucb_traces_as_byte_text(build):
    source = build("bandit_lm", arms=2, horizon=3, instances=4, eval_instances=2, seed=0)
    means, table = bandit_instances(4, 2, 3, seed=0, stream=0)
    arms, rewards = play(ucb1_policy(), table)
    tok = byte_tokenizer()
    train = source.train
    assert train["input_ids"].shape == (4, 9) and train["targets"].shape == (4, 9)
    for row in range(4):
        text = render_trace(arms[row], rewards[row])
        assert len(text) == 10
        assert tok.decode(train["input_ids"][row].tolist()) == text[:-1]
        assert tok.decode(train["targets"][row].tolist()) == text[1:]
    # the loss counts exactly the positions whose target is the next arm letter
    assert train["loss_mask"][0].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0]
    letters = {tok.token_to_id("A"), tok.token_to_id("B")}
    assert set(train["targets"][train["loss_mask"]].tolist()) <= letters
    assert train["attention_mask"].all()
    assert source.eval["input_ids"].shape == (2, 9)
    assert source.info["train_regret"] == pytest.approx(float(regret(means, arms).mean()))
    ids = source.info["bandit"]["ids"]
    assert ids["arms"] == [tok.token_to_id("A"), tok.token_to_id("B")]
    assert np.array_equal(trace_tokens(arms, rewards, ids)[:, :-1], train["input_ids"].numpy())


def test_the_vocabulary_and_length_are_known_statically(make):
    component = make("bandit_lm", horizon=7)
    assert component.port_params()["seq_len"] == 21
    assert component.port_params()["vocab_size"] == 258
    with pytest.raises(ValueError, match="gap 1.0 leaves arm means outside"):
        make("bandit_lm", arm_means="gap", gap=1.0)


class _ScriptedLM(torch.nn.Module):
    """A causal LM stand-in: scores one chosen token highest after every history."""

    def __init__(self, choose, ids: dict, vocab: int = 258, top: int | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.choose, self.ids, self.vocab, self.top = choose, ids, vocab, top
        self.histories: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor) -> dict:
        self.histories.append(input_ids.clone())
        n, length = input_ids.shape
        logits = torch.zeros(n, length, self.vocab)
        arm = torch.as_tensor(self.choose(input_ids))
        logits[torch.arange(n), -1, torch.tensor(self.ids["arms"])[arm]] = 1.0
        if self.top is not None:  # a non-arm token scored even higher
            logits[:, -1, self.top] = 2.0
        return {"logits": logits}


def _ucb_from_tokens(ids: dict):
    """Read the arms and rewards back from the history's tokens and choose as UCB1 does."""
    arm_of = {token: i for i, token in enumerate(ids["arms"])}

    def choose(input_ids: torch.Tensor) -> np.ndarray:
        rows = input_ids.numpy()
        t = (rows.shape[1] - 1) // 3
        assert (rows[:, 0] == ids["start"]).all() and (rows[:, 3::3] == ids["sep"]).all()
        arms = np.vectorize(arm_of.get, otypes=[np.int64])(rows[:, 1::3]).reshape(len(rows), t)
        rewards = (rows[:, 2::3] == ids["rewards"][1]).astype(np.int64)
        pulls = np.zeros((len(rows), len(ids["arms"])), dtype=np.int64)
        wins = np.zeros_like(pulls)
        for step in range(t):
            np.add.at(pulls, (np.arange(len(rows)), arms[:, step]), 1)
            np.add.at(wins, (np.arange(len(rows)), arms[:, step]), rewards[:, step])
        return ucb1_policy()(t, arms, rewards, pulls, wins)
    return choose


def test_the_metric_plays_an_lm_from_its_own_history(build):
    source = build("bandit_lm", arms=3, horizon=6, instances=2, eval_instances=0)
    config = source.info["bandit"]
    ids = config["ids"]
    # an LM that reads the history as the training text writes it and acts as UCB1 does
    imitator = _ScriptedLM(_ucb_from_tokens(ids), ids)
    values = play_lm(imitator, config, episodes=30, seed=11)
    means, table = bandit_instances(30, 3, 6, seed=11, stream=2)
    ucb, _ = play(ucb1_policy(), table)
    assert values["regret"] == pytest.approx(float(regret(means, ucb).mean()))
    assert values["ucb_regret"] == values["regret"]
    assert values["random_regret"] == pytest.approx(float((6 * (means.max(1) - means.mean(1)))
                                                          .mean()))
    assert values["valid"] == 1.0
    assert [h.shape[1] for h in imitator.histories] == [1, 4, 7, 10, 13, 16]
    # always arm C, though a space scores higher: C's regret, and no valid top token
    always_c = _ScriptedLM(lambda x: np.full(len(x), 2), ids, top=ids["sep"])
    values = play_lm(always_c, config, episodes=30, seed=11)
    assert values["regret"] == pytest.approx(float(6 * (means.max(1) - means[:, 2]).mean()))
    assert values["best_arm"] == pytest.approx(float((means.argmax(1) == 2).mean()))
    assert values["valid"] == 0.0
    thompson, _ = play(thompson_policy(11), table)
    assert values["thompson_regret"] == pytest.approx(float(regret(means, thompson).mean()))


def test_the_metric_node_needs_a_bandit_data_node(build):
    source = build("bandit_lm", arms=2, horizon=2, instances=2, eval_instances=0)
    lm = _ScriptedLM(lambda x: np.zeros(len(x), dtype=np.int64), source.info["bandit"]["ids"])
    context = BuildContext(node="regret", references={"policy": lm, "data": source})
    metric = BanditRegret.create(context, policy="student", data="data", episodes=5)
    assert set(metric.compute()) == {"regret", "ucb_regret", "thompson_regret",
                                     "random_regret", "best_arm", "valid"}
    assert metric.compute()["best_arm"] == play_lm(lm, source.info["bandit"], 5,
                                                   1_000_000)["best_arm"]
    other = DataSource(train={"x": torch.zeros(2, 1)})
    with pytest.raises(ValidationError, match="params.data must name a bandit_lm data node"):
        BanditRegret.create(BuildContext(node="regret", references={"policy": lm,
                                                                    "data": other}),
                            policy="student", data="data")
