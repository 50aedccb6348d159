"""``replay``: an off-policy replay buffer filled by a policy, a Q-network or a teacher mixture.

A ``sampler`` node without inputs (like the other rollouts, see
:mod:`dgraph.components.rl.rollout`). Each training step it first acts ``steps`` steps in each
env of a ``gym_env`` node and writes the transitions into a ring buffer of ``capacity``, then
serves ``batch_size`` transitions drawn uniformly from the buffer (torch's generator, which
the run seeds and saves in checkpoints). Every update of one step reads the same minibatch.

Who acts, per env and step: the ``teacher`` (its most likely action) with probability
``beta``, else the ``policy`` (its most likely action: a Q-network is a ``mlp_policy`` whose
``logits`` are Q-values; or a sample with ``greedy: false``), replaced by a uniformly random
action with probability ``epsilon`` (epsilon-greedy). ``beta`` and ``epsilon`` are numbers or
schedules of the training step. Before the first minibatch the buffer is filled with
``learning_starts`` transitions, acting uniformly at random (``random_warmup``, as DQN) or
with the same mixture.

Each transition stores ``obs``, ``actions``, ``rewards``, ``next_obs``, ``terminated`` and
``truncated``. With gymnasium's same-step autoreset, the observation after an episode's last
step is its final one (``info["final_obs"]``), never the next episode's first: ``next_obs`` is
that final observation, so a Q-learning target bootstraps from it after a time-limit
truncation and only ``terminated`` stops the bootstrap (see ``td_loss``). With a ``teacher``
the buffer also stores the teacher's action scores on ``obs`` (``teacher_logits``, for
off-policy distillation: QDagger).

Acting runs without gradients: the outputs are data (validation refuses an objective whose
only path to a trained node goes through the node's references). The buffer, its position,
the envs and counters are in checkpoints (``get_extra_state``, plain tensors and numbers), so
a resumed run is bit-identical on CPU for classic-control envs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dgraph.components.rl.rollout import _Rollout, _space_problem, _where

from dgraph.declare import (
    Actions,
    Logits,
    NodeRef,
    Observations,
    Outputs,
    Rewards,
    Tensor,
    param,
    sampler,
)
from dgraph.errors import Problem, ValidationError
from dgraph.ports import Port
from dgraph.registry import BuildContext
from dgraph.spec.model import ScheduleSpec

if TYPE_CHECKING:
    import torch

__all__ = ["ReplayBuffer"]

_PORTS: dict[str, Port] = {
    "obs": Observations("N, D", "observations the actions were taken in"),
    "actions": Actions("N, ...", "actions taken (indices, or vectors for continuous)"),
    "rewards": Rewards("N", "rewards received"),
    "next_obs": Observations("N, D", "the observation after the action (the episode's final "
                             "one when it ended)"),
    "terminated": Tensor("N", "1 where the episode terminated after the action (no bootstrap), "
                         "else 0 (also after a time-limit truncation)"),
    "truncated": Tensor("N", "1 where a time limit cut the episode after the action"),
    "teacher_logits": Logits("N, A", "the teacher's action scores on obs (with a teacher)"),
}


def _output_ports(p: Any) -> dict[str, Port]:
    """Without a teacher the node has no ``teacher_logits`` output."""
    return {k: v for k, v in _PORTS.items() if k != "teacher_logits" or p.teacher is not None}


def _check(p: Any) -> None:
    if p.teacher is None and (isinstance(p.beta, ScheduleSpec) or p.beta != 0.0):
        raise ValueError("beta is the probability that the teacher acts; it needs a teacher: "
                         "set params.teacher or beta: 0")


def _value(value: float | ScheduleSpec, step: int) -> float:
    return value.at(step) if isinstance(value, ScheduleSpec) else float(value)


@sampler("replay", check=_check, output_ports=_output_ports)
class ReplayBuffer(_Rollout):
    """A ring buffer of env transitions, filled each step by an epsilon-greedy actor.

    Per call (training step): ``steps`` steps in each env, the teacher acting with probability
    ``beta`` else the policy, either replaced by a random action with probability
    ``epsilon``; then ``batch_size`` transitions drawn uniformly (with replacement) from the
    ``min(written, capacity)`` kept, the oldest overwritten first. The first call fills the
    buffer with ``learning_starts`` transitions before serving.
    """

    def __init__(self, *,
                 env: NodeRef = param(doc="the gym_env data node whose envs are stepped"),
                 policy: NodeRef = param(doc="the policy (or Q-network: mlp_policy whose "
                                         "logits are Q-values) that acts"),
                 teacher: NodeRef | None = param(None, doc="a teacher policy: acts with "
                                                 "probability beta; its logits are stored"),
                 beta: float | ScheduleSpec = param(
                     0.0, doc="probability that the teacher acts: a number or a schedule of "
                     "the step ({schedule: linear, start: 1, end: 0, steps: N})"),
                 epsilon: float | ScheduleSpec = param(
                     0.0, doc="probability of a uniformly random action (epsilon-greedy): a "
                     "number or a schedule of the step"),
                 greedy: bool = param(True, doc="the policy acts with its most likely action "
                                      "(argmax of a Q-network); false samples it"),
                 steps: int = param(1, ge=1, doc="steps per env before each minibatch"),
                 capacity: int = param(100_000, ge=1, doc="transitions kept (a ring)"),
                 batch_size: int = param(128, ge=1, doc="transitions per minibatch"),
                 learning_starts: int = param(1000, ge=0, doc="transitions collected before "
                                              "the first minibatch"),
                 random_warmup: bool = param(True, doc="act uniformly at random while "
                                             "filling the first learning_starts transitions"),
                 context: BuildContext) -> None:
        super().__init__()
        self._setup(env, context)
        self._policies = (policy, teacher)
        self._check_policy(context, "policy", policy)
        if teacher is not None:
            problem = _space_problem(context, "teacher", teacher, self.spaces, self.config.id,
                                     obs_dim=self.spaces.obs_dim)
            if problem is None and not self.spaces.discrete:
                problem = Problem(
                    code="action-space-mismatch",
                    message=f"params.teacher: replay stores a teacher's action scores "
                    f"(logits); {self.config.id} has continuous actions",
                    location=_where(context, "teacher"), node=context.node,
                    expected="an env with discrete actions", found=self.config.id,
                    suggestion="drop params.teacher, or use an env with a Discrete action "
                    "space")
            if problem is not None:
                raise ValidationError([problem])
        if learning_starts > capacity:
            raise ValidationError([Problem(
                code="warmup-larger-than-buffer",
                message=f"params.learning_starts: {learning_starts} transitions do not fit in "
                f"a buffer of capacity {capacity}",
                location=_where(context, "learning_starts"), node=context.node,
                expected=f"learning_starts <= {capacity}", found=str(learning_starts),
                suggestion=f"lower learning_starts to at most {capacity}, or raise capacity")])
        self.schedules = (beta, epsilon)
        self.beta = _value(beta, 0)
        self.epsilon = _value(epsilon, 0)
        self.greedy = greedy
        self.steps = steps
        self.capacity = capacity
        self.batch_size = batch_size
        self.learning_starts = learning_starts
        self.random_warmup = random_warmup
        self.position = 0  # where the next transition is written
        self.size = 0  # transitions kept
        self.teacher_acted = 0
        self.random_acted = 0
        self.buffer: dict[str, torch.Tensor] = {}

    def set_step(self, step: int) -> None:
        super().set_step(step)
        self.beta = _value(self.schedules[0], step)
        self.epsilon = _value(self.schedules[1], step)

    def forward(self) -> Outputs(**_PORTS):
        import torch

        if self.meta:
            return self._meta()
        if not self.training:  # evaluation: the last minibatch again (or a first one)
            if not self.served:
                if self.size == 0:
                    self.collect(max(self.learning_starts, 1), warmup=self.random_warmup)
                self.served = self._gather(torch.arange(self.batch_size) % self.size)
            return self.served
        if self._again():
            return self.served
        if self.size < self.learning_starts:
            self.collect(self.learning_starts - self.size, warmup=self.random_warmup)
        self.collect(self.steps * self.num_envs, warmup=False)
        index = torch.randint(self.size, (self.batch_size,))
        self.calls += 1
        self.served = self._gather(index)
        return self.served

    def _meta(self) -> dict[str, torch.Tensor]:
        import torch

        n, d = self.batch_size, self.spaces.obs_dim
        action = (n,) if self.spaces.discrete else (n, self.spaces.num_actions)
        out = {"obs": torch.empty(n, d, device="meta"),
               "actions": torch.empty(action, device="meta", dtype=torch.long
                                      if self.spaces.discrete else torch.float32),
               "rewards": torch.empty(n, device="meta"),
               "next_obs": torch.empty(n, d, device="meta"),
               "terminated": torch.empty(n, device="meta"),
               "truncated": torch.empty(n, device="meta")}
        if self._policies[1] is not None:
            out["teacher_logits"] = torch.empty(n, self.spaces.num_actions, device="meta")
        return out

    def _gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, index.to(v.device)) for k, v in self.buffer.items()}

    # -- acting and storing ---------------------------------------------------------------------
    def _random_actions(self, device: torch.device) -> torch.Tensor:
        import torch

        if self.spaces.discrete:
            return torch.randint(self.spaces.num_actions, (self.num_envs,), device=device)
        low = torch.tensor(self.spaces.low, device=device)
        high = torch.tensor(self.spaces.high, device=device)
        return low + (high - low) * torch.rand(self.num_envs, self.spaces.num_actions,
                                               device=device)

    def collect(self, transitions: int, *, warmup: bool) -> None:
        """Act until at least ``transitions`` more are written (whole vector steps)."""
        import torch
        from dgraph.components.rl.policy import act, policy_input

        policy, teacher = self._policies
        device = self._device(policy)
        for _ in range(-(-transitions // self.num_envs)):
            obs = self.obs.to(device)
            with torch.no_grad():
                scores = None if teacher is None else \
                    teacher(**{policy_input(teacher): obs})["logits"].float()
                if warmup:
                    actions = self._random_actions(device)
                    self.random_acted += self.num_envs
                else:
                    actions, _ = act(policy, obs, deterministic=self.greedy)
                    if scores is not None:
                        use_teacher = torch.rand(self.num_envs, device=device) < self.beta
                        self.teacher_acted += int(use_teacher.sum())
                        actions = torch.where(use_teacher, scores.argmax(-1), actions)
                    explore = torch.rand(self.num_envs, device=device) < self.epsilon
                    self.random_acted += int(explore.sum())
                    random = self._random_actions(device)
                    if not self.spaces.discrete:
                        explore = explore[:, None]
                    actions = torch.where(explore, random, actions)
            next_obs, reward, terminated, truncated, final = self._step_envs(actions)
            after = next_obs.clone()
            for i in torch.nonzero(terminated | truncated).flatten().tolist():
                after[i] = torch.as_tensor(final[i], dtype=torch.float32)
            row = {"obs": obs, "actions": actions, "rewards": reward.to(device),
                   "next_obs": after.to(device),
                   "terminated": terminated.to(device=device, dtype=torch.float32),
                   "truncated": (truncated & ~terminated).to(device=device,
                                                             dtype=torch.float32)}
            if scores is not None:
                row["teacher_logits"] = scores
            self._write(row)
            self.obs = next_obs

    def _write(self, row: dict[str, torch.Tensor]) -> None:
        import torch

        if not self.buffer:
            self.buffer = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype,
                                          device=v.device) for k, v in row.items()}
        n = next(iter(row.values())).shape[0]
        where = (self.position + torch.arange(n)) % self.capacity
        for key, value in row.items():
            self.buffer[key].index_copy_(0, where.to(value.device), value)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # Only the filled part: a ring that has not wrapped yet is saved as what it holds.
        return {"buffer": {k: v[:self.size].clone() for k, v in self.buffer.items()},
                "position": self.position, "size": self.size,
                "teacher_acted": self.teacher_acted, "random_acted": self.random_acted}

    def _load(self, state: dict[str, Any]) -> None:
        import torch

        saved = state["buffer"]
        self.size = int(state["size"])
        self.position = int(state["position"])
        self.teacher_acted = int(state["teacher_acted"])
        self.random_acted = int(state["random_acted"])
        self.buffer = {}
        for key, value in saved.items():
            full = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype)
            full[:self.size] = value
            self.buffer[key] = full.to(self._device(self._policies[0]))
