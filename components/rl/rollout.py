"""Rollout nodes: a named policy acts in a ``gym_env`` node's envs; minibatches of what it saw.

Both are ``sampler`` nodes without inputs. Each training step serves one minibatch (every
update of the step that reads the node gets the same one); every so many steps they first act
in the envs for ``steps`` steps:

* ``ppo_rollout``: the policy acts for ``steps`` steps in each env, on-policy, and the rollout
  storage gets GAE advantages and returns (Schulman et al. 2016); then ``epochs`` passes over
  it in shuffled minibatches of ``minibatch_size``: one rollout every
  ``epochs * (num_envs * steps // minibatch_size)`` calls (PPO's epochs over minibatches,
  Schulman et al. 2017).
* ``dagger``: a mixture acts (the teacher with probability ``beta``, a schedule of the step,
  else the student), always storing the teacher's action (Ross et al. 2011); what it saw is
  added to an aggregated dataset (up to ``capacity`` transitions, the oldest dropped first),
  from which each call draws a minibatch uniformly.

Acting runs without gradients: a rollout's outputs are data, and no gradient reaches the policy
through them (validation says so when an objective depends on a policy only that way). In
evaluation mode (held-out evaluation) a rollout serves its last minibatch again and changes
nothing. Its state beyond weights (envs, current observations, storage, counters) is in
checkpoints (``get_extra_state``): classic-control envs are restored exactly, so a resumed run
is bit-identical on CPU; see :mod:`dgraph.components.rl.env` for other envs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dgraph.components.rl.env import env_info

from dgraph.declare import (
    Actions,
    Labels,
    Module,
    NodeRef,
    Observations,
    Outputs,
    Tensor,
    param,
    sampler,
)
from dgraph.errors import Problem, ValidationError
from dgraph.registry import BuildContext
from dgraph.spec.model import ScheduleSpec

if TYPE_CHECKING:
    import torch

__all__ = ["DAggerCollector", "PPORollout"]


def _where(context: BuildContext, param_name: str) -> Any:
    if context.source is None:
        return None
    return context.source.where(("nodes", context.node, "params", param_name))


def _space_problem(context: BuildContext, param_name: str, policy: Any, spaces: Any,
                   env_id: str, *, obs_dim: int) -> Problem | None:
    """A located problem when ``policy``'s input width or action head does not fit the env."""
    mine = getattr(policy, "obs_dim", None)
    heads = getattr(policy, "num_actions", None)
    discrete = getattr(policy, "discrete", None)
    if mine is None or heads is None:
        return None
    what = f"params.{param_name}: the policy"
    if discrete is not None and discrete != spaces.discrete:
        want = "discrete (mlp_policy)" if spaces.discrete else "continuous (gaussian_policy)"
        return Problem(code="action-space-mismatch",
                       message=f"{what} is {'discrete' if discrete else 'continuous'} but "
                       f"{env_id}'s actions are {want.split()[0]}",
                       location=_where(context, param_name), node=context.node,
                       expected=f"a {want} policy", found=type(policy).__name__,
                       suggestion=f"use a {want.split()[1]} policy for {env_id}")
    if mine != obs_dim:
        return Problem(code="observation-width-mismatch",
                       message=f"{what} takes observations of width {mine} but {env_id} (with "
                       f"its wrappers) observes {obs_dim} values",
                       location=_where(context, param_name), node=context.node,
                       expected=f"obs_dim: {obs_dim}", found=f"obs_dim: {mine}",
                       suggestion=f"set the policy's obs_dim to {obs_dim}")
    if heads != spaces.num_actions:
        kind = "actions" if spaces.discrete else "action dimensions"
        param_of = "num_actions" if spaces.discrete else "action_dim"
        return Problem(code="action-head-mismatch",
                       message=f"{what} has {heads} {kind} but {env_id} has "
                       f"{spaces.num_actions}",
                       location=_where(context, param_name), node=context.node,
                       expected=f"{param_of}: {spaces.num_actions}",
                       found=f"{param_of}: {heads}",
                       suggestion=f"set the policy's {param_of} to {spaces.num_actions}")
    return None


class _Rollout(Module):
    """Shared parts: the envs, the current observations, and state saved in checkpoints."""

    def _setup(self, env: Any, context: BuildContext) -> None:
        import torch

        info = env_info(env, context, "add a node {kind: data, type: gym_env, params: "
                        "{id: ...}} and name it here")
        self.config = info["gym"]
        self.spaces = info["spaces"]
        self.meta = context.meta
        self.num_envs = self.config.num_envs
        self.calls = 0
        self.env_steps = 0
        self.terminations = 0  # episodes that ended by termination (not a time limit)
        self.served: dict[str, torch.Tensor] = {}
        self.step: int | None = None  # set by the runtime before each training step
        self.served_step: int | None = None
        self.envs = None
        if not self.meta:
            from dgraph.components.rl.env import make_vector_env

            self.envs = make_vector_env(self.config, self.num_envs)
            obs, _ = self.envs.reset(seed=[self.config.seed + i for i in range(self.num_envs)])
            self.obs = torch.as_tensor(obs, dtype=torch.float32)
            self.episode_return = torch.zeros(self.num_envs, dtype=torch.float64)
            self.finished: list[float] = []

    def set_step(self, step: int) -> None:
        """The training step about to run: every update of one step gets the same minibatch
        (the runtime calls this before each step; see :class:`dgraph.declare.StepAware`)."""
        self.step = step

    def _again(self) -> bool:
        """Whether this call is a second read in the same training step (another update)."""
        if self.step is not None and self.step == self.served_step and self.served:
            return True
        self.served_step = self.step
        return False

    def _check_policy(self, context: BuildContext, param_name: str, policy: Any) -> None:
        problem = _space_problem(context, param_name, policy, self.spaces, self.config.id,
                                 obs_dim=self.spaces.obs_dim)
        if problem is not None:
            raise ValidationError([problem])

    @staticmethod
    def _device(policy: Any) -> torch.device:
        import torch

        first = next(iter(policy.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def _step_envs(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """Step every env; (next obs, rewards, terminated, truncated, final obs or None)."""
        import numpy as np
        import torch

        assert self.envs is not None
        numpy_actions = actions.cpu().numpy()
        if self.spaces.discrete:
            numpy_actions = numpy_actions.astype(np.int64)
        obs, reward, terminated, truncated, info = self.envs.step(numpy_actions)
        self.env_steps += self.num_envs
        reward_t = torch.as_tensor(reward, dtype=torch.float32)
        self.episode_return += reward_t.double()
        done = np.logical_or(terminated, truncated)
        self.terminations += int(np.sum(terminated))
        for index in np.flatnonzero(done):
            self.finished.append(float(self.episode_return[index]))
            self.episode_return[index] = 0.0
        self.finished = self.finished[-100:]
        final = info.get("final_obs") if done.any() else None
        return (torch.as_tensor(obs, dtype=torch.float32), reward_t,
                torch.as_tensor(terminated), torch.as_tensor(truncated), final)

    # -- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        del state

    def get_extra_state(self) -> dict[str, Any]:
        from dgraph.components.rl.env import env_state

        if self.envs is None:
            return {}
        return {"calls": self.calls, "env_steps": self.env_steps, "served_step": (
                    -1 if self.served_step is None else self.served_step),
                "terminations": self.terminations, "obs": self.obs.clone(),
                "episode_return": self.episode_return.clone(),
                "finished": list(self.finished), "envs": env_state(self.envs),
                "served": {k: v.clone() for k, v in self.served.items()}, **self._state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        from dgraph.components.rl.env import restore_env_state

        if not state or self.envs is None:
            return
        import torch

        self.calls = int(state["calls"])
        self.env_steps = int(state["env_steps"])
        self.terminations = int(state["terminations"])
        self.served_step = None if state["served_step"] < 0 else int(state["served_step"])
        self.obs = state["obs"].clone()
        self.episode_return = state["episode_return"].clone()
        self.finished = [float(v) for v in state["finished"]]
        self.served = {k: v.clone() for k, v in state["served"].items()}
        reset = restore_env_state(self.envs, state["envs"], reseed=self.config.seed
                                  + 7919 * (self.env_steps + 1))
        for index, first in reset.items():
            self.obs[index] = torch.as_tensor(first, dtype=torch.float32)
            self.episode_return[index] = 0.0
        if reset:
            import warnings

            warnings.warn(f"{self.config.id}: the state of envs {sorted(reset)} cannot be "
                          "restored from a checkpoint; they were reset with new seeds, so the "
                          "resumed run is not bit-identical to an uninterrupted one",
                          stacklevel=2)
        self._load(state)

    def mean_recent_return(self) -> float:
        """The mean return of the last (up to 100) training episodes that ended; NaN if none."""
        return sum(self.finished) / len(self.finished) if self.finished else float("nan")


def _ppo_check(p: Any) -> None:
    if p.intrinsic_critic is not None and p.rnd is None:
        raise ValueError("intrinsic_critic learns the value of RND's intrinsic reward; it needs "
                         "an rnd node: set params.rnd, or drop params.intrinsic_critic")


def _ppo_ports(p: Any) -> dict[str, Any]:
    """``int_value`` and ``int_returns`` exist only with an intrinsic critic."""
    ports = dict(PPORollout.component.outputs)
    if p.intrinsic_critic is None:
        del ports["int_value"], ports["int_returns"]
    return ports


@sampler("ppo_rollout", check=_ppo_check, output_ports=_ppo_ports)
class PPORollout(_Rollout):
    """On-policy rollouts with GAE, served as PPO minibatches (epochs over shuffled batches).

    Every ``epochs * M`` calls (``M = num_envs * steps // minibatch_size`` minibatches per
    epoch) the ``policy`` acts ``steps`` steps in each env, sampling its actions; the storage
    keeps ``obs``, ``actions``, their ``log_prob`` and ``value`` under the acting policy, and
    GAE(gamma, lambda):
    ``delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t)``,
    ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}``, ``returns = A + V``. A time-limit
    truncation bootstraps: ``r_t += gamma V(final obs)``. Each epoch draws a permutation from
    torch's generator and serves ``M`` minibatches of it.

    With ``rnd`` (Burda et al. 2018) the reward is ``extrinsic_coef * r + intrinsic_coef *
    r_int``: ``r_int`` is the rnd node's prediction error on the next state (its observation
    statistics updated with the rollout first), divided by the running standard deviation of
    the non-episodic intrinsic return (discount ``intrinsic_gamma``). One critic learns the
    combined return.

    With ``rnd`` and an ``intrinsic_critic`` (a value network, ``mlp_value``) the two returns
    are learnt apart, as in the paper: the policy's critic learns the env's return (episodic,
    ``gamma``; of the reward times ``extrinsic_coef``, which keeps value targets small), the
    intrinsic critic the intrinsic one (non-episodic: episode ends do not cut it, discount
    ``intrinsic_gamma``), each with its own GAE, and ``advantages = extrinsic_coef * A_ext +
    intrinsic_coef * A_int`` (GAE is linear in the rewards and values: the scaled critic's
    advantage is ``extrinsic_coef * A_ext``); ``returns`` are the extrinsic critic's value
    targets, ``int_returns`` the intrinsic critic's (``int_value`` its estimates under the
    acting policy).
    """

    def __init__(self, *,
                 env: NodeRef = param(doc="the gym_env data node whose envs are stepped"),
                 policy: NodeRef = param(doc="the policy node that acts (mlp_policy or "
                                         "gaussian_policy, with a critic)"),
                 steps: int = param(128, ge=1, doc="steps per env in each rollout"),
                 epochs: int = param(4, ge=1, doc="passes over each rollout"),
                 minibatch_size: int = param(256, ge=1, doc="transitions per minibatch"),
                 gamma: float = param(0.99, ge=0, le=1, doc="discount"),
                 gae_lambda: float = param(0.95, ge=0, le=1, doc="GAE lambda"),
                 rnd: NodeRef | None = param(None, doc="an rnd node: its prediction error "
                                             "on each next state is an intrinsic reward"),
                 intrinsic_coef: float = param(1.0, ge=0, doc="weight of the (normalised) "
                                               "intrinsic reward"),
                 extrinsic_coef: float = param(1.0, ge=0, doc="weight of the env's reward"),
                 intrinsic_gamma: float = param(0.99, ge=0, lt=1, doc="discount of the "
                                                "intrinsic return whose std normalises it "
                                                "(and of its GAE, with intrinsic_critic)"),
                 intrinsic_critic: NodeRef | None = param(
                     None, doc="a value network (mlp_value) for the intrinsic return: "
                     "separate intrinsic advantages, weighted by the coefficients"),
                 context: BuildContext) -> None:
        super().__init__()
        self._setup(env, context)
        self._policy = (policy,)  # a reference, not a submodule: its weights are its node's
        self._rnd = (rnd,)
        self._critic = (intrinsic_critic,)
        width = getattr(intrinsic_critic, "obs_dim", None)
        if width is not None and width != self.spaces.obs_dim:
            raise ValidationError([Problem(
                code="observation-width-mismatch",
                message=f"params.intrinsic_critic: the critic takes observations of width "
                f"{width} but {self.config.id} (with its wrappers) observes "
                f"{self.spaces.obs_dim} values",
                location=_where(context, "intrinsic_critic"), node=context.node,
                expected=f"obs_dim: {self.spaces.obs_dim}", found=f"obs_dim: {width}",
                suggestion=f"set the critic's obs_dim to {self.spaces.obs_dim}")])
        self.intrinsic_coef = intrinsic_coef
        self.extrinsic_coef = extrinsic_coef
        self.intrinsic_gamma = intrinsic_gamma
        import torch

        self.int_return = None if self.meta else torch.zeros(self.num_envs)
        self.last_intrinsic = 0.0
        self._check_policy(context, "policy", policy)
        size = self.num_envs * steps
        if minibatch_size > size:
            raise ValidationError([Problem(
                code="minibatch-larger-than-rollout",
                message=f"params.minibatch_size: {minibatch_size} is larger than a rollout "
                f"({self.num_envs} envs x {steps} steps = {size} transitions)",
                location=_where(context, "minibatch_size"), node=context.node,
                expected=f"minibatch_size <= {size}", found=str(minibatch_size),
                suggestion=f"lower minibatch_size to at most {size}, or raise steps")])
        self.steps = steps
        self.epochs = epochs
        self.minibatch_size = minibatch_size
        self.minibatches = size // minibatch_size
        self.refresh = epochs * self.minibatches
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.storage: dict[str, torch.Tensor] = {}
        self.order: torch.Tensor | None = None

    def forward(self) -> Outputs(
            obs=Observations("N, D", "observations the policy acted on"),
            actions=Actions("N, ...", "actions taken (indices, or vectors for continuous)"),
            log_prob=Tensor("N", "log-probability of the action under the acting policy"),
            value=Tensor("N", "V(s) under the acting policy"),
            advantages=Tensor("N", "GAE advantages (with an intrinsic critic: "
                              "extrinsic_coef A_ext + intrinsic_coef A_int)"),
            returns=Tensor("N", "value targets: advantages + value (the extrinsic ones "
                           "with an intrinsic critic)"),
            int_value=Tensor("N", "V_int(s) under the intrinsic critic (with one)"),
            int_returns=Tensor("N", "the intrinsic critic's value targets (with one)")):
        import torch

        if self.meta:
            n = self.minibatch_size
            action_shape = (n,) if self.spaces.discrete else (n, self.spaces.num_actions)
            meta = {"obs": torch.empty(n, self.spaces.obs_dim, device="meta"),
                    "actions": torch.empty(action_shape, device="meta",
                                           dtype=torch.long if self.spaces.discrete
                                           else torch.float32)}
            meta.update({k: torch.empty(n, device="meta")
                         for k in ("log_prob", "value", "advantages", "returns")})
            if self._critic[0] is not None:
                meta.update({k: torch.empty(n, device="meta")
                             for k in ("int_value", "int_returns")})
            return meta
        if not self.training:
            return self.served or self._serve(0, torch.arange(self.minibatch_size))
        if self._again():
            return self.served
        position = self.calls % self.refresh
        if position == 0:
            self.collect()
        epoch_position = position % self.minibatches
        if epoch_position == 0:
            size = self.num_envs * self.steps
            self.order = torch.randperm(size).to(self.storage["obs"].device)
        assert self.order is not None
        start = epoch_position * self.minibatch_size
        self.calls += 1
        self.served = self._serve(position, self.order[start:start + self.minibatch_size])
        return self.served

    def _serve(self, position: int, index: torch.Tensor) -> dict[str, torch.Tensor]:
        del position
        if not self.storage:
            self.collect()
        return {k: v.index_select(0, index.to(v.device)) for k, v in self.storage.items()}

    def collect(self) -> None:
        """Act ``steps`` steps in every env with the policy; fill the storage with GAE."""
        import numpy as np
        import torch
        from dgraph.components.rl.policy import act, distribution, policy_input

        policy, critic = self._policy[0], self._critic[0]
        two_heads = critic is not None
        device = self._device(policy)
        obs_l, act_l, logp_l, val_l, rew_l, done_l, next_l = [], [], [], [], [], [], []
        int_val_l: list[torch.Tensor] = []
        with torch.no_grad():
            for _ in range(self.steps):
                obs = self.obs.to(device)
                actions, out = act(policy, obs)
                logp = distribution(out).log_prob(actions)
                next_obs, reward, terminated, truncated, final = self._step_envs(actions)
                reward = reward.to(device) * self.extrinsic_coef
                if two_heads:
                    int_val_l.append(critic(**{policy_input(critic): obs})["value"].float())
                if self._rnd[0] is not None:  # the transition's next state (not a reset's)
                    after = next_obs.clone()
                    for i in torch.nonzero(terminated | truncated).flatten().tolist():
                        after[i] = torch.as_tensor(final[i], dtype=torch.float32)
                    next_l.append(after)
                if truncated.any():
                    index = torch.nonzero(truncated & ~terminated).flatten()
                    if index.numel():
                        last = torch.as_tensor(np.stack([final[i] for i in index.tolist()]),
                                               dtype=torch.float32, device=device)
                        _, out_last = act(policy, last, deterministic=True)
                        reward[index.to(device)] += self.gamma * out_last["value"].float()
                obs_l.append(obs)
                act_l.append(actions)
                logp_l.append(logp)
                val_l.append(out["value"].float())
                rew_l.append(reward)
                done_l.append((terminated | truncated).to(device).float())
                self.obs = next_obs
            _, out_next = act(policy, self.obs.to(device), deterministic=True)
            next_value = out_next["value"].float()
            if two_heads:
                next_int = critic(**{policy_input(critic): self.obs.to(device)})["value"]
        values = torch.stack(val_l)
        rewards = torch.stack(rew_l)
        flat = self.num_envs * self.steps
        extra: dict[str, torch.Tensor] = {}
        if two_heads:
            # Burda et al.: separate GAEs, the intrinsic one non-episodic, then combined.
            int_rewards = self._intrinsic(torch.stack(next_l)).to(device)
            int_values = torch.stack(int_val_l)
            int_adv = gae(int_rewards, int_values, torch.zeros_like(int_rewards),
                          next_int.float(), self.intrinsic_gamma, self.gae_lambda)
            ext_adv = gae(rewards, values, torch.stack(done_l), next_value,
                          self.gamma, self.gae_lambda)
            # GAE is linear: from rewards scaled by extrinsic_coef (and a critic learning the
            # scaled return) ext_adv is extrinsic_coef * A_ext.
            advantages = ext_adv + self.intrinsic_coef * int_adv
            returns = ext_adv + values
            extra = {"int_value": int_values.reshape(flat),
                     "int_returns": (int_adv + int_values).reshape(flat)}
        else:
            if self._rnd[0] is not None:
                rewards = rewards + self.intrinsic_coef * self._intrinsic(torch.stack(next_l)
                                                                          ).to(device)
            advantages = gae(rewards, values, torch.stack(done_l), next_value,
                             self.gamma, self.gae_lambda)
            returns = advantages + values
        self.storage = {
            "obs": torch.stack(obs_l).reshape(flat, -1),
            "actions": torch.stack(act_l).reshape(flat, *act_l[0].shape[1:]),
            "log_prob": torch.stack(logp_l).reshape(flat),
            "value": values.reshape(flat),
            "advantages": advantages.reshape(flat),
            "returns": returns.reshape(flat),
            **extra,
        }

    def _intrinsic(self, next_obs: torch.Tensor) -> torch.Tensor:
        """``[T, E]`` intrinsic rewards of the next states, normalised (see ``rnd``)."""
        import torch

        rnd = self._rnd[0]
        steps, envs = next_obs.shape[:2]
        flat = next_obs.reshape(steps * envs, -1)
        rnd.observe(flat)
        raw = rnd.intrinsic(flat).reshape(steps, envs).cpu()
        assert self.int_return is not None
        returns = []
        for t in range(steps):  # non-episodic, as in the paper
            self.int_return = self.int_return * self.intrinsic_gamma + raw[t]
            returns.append(self.int_return)
        stacked = torch.stack(returns)
        rnd.observe_returns(stacked)  # the all-time statistics, kept for inspection
        # This rollout's std: the prediction error shrinks by orders of magnitude as the
        # predictor learns (classic control), which an all-time std would not follow.
        std = float(stacked.double().std().clamp_min(1e-8))
        self.last_intrinsic = float(raw.mean()) / std
        return raw / std

    def _state(self) -> dict[str, Any]:
        return {"storage": {k: v.clone() for k, v in self.storage.items()},
                "order": None if self.order is None else self.order.clone(),
                "int_return": None if self.int_return is None else self.int_return.clone()}

    def _load(self, state: dict[str, Any]) -> None:
        self.storage = {k: v.clone() for k, v in state["storage"].items()}
        self.order = None if state["order"] is None else state["order"].clone()
        self.int_return = None if state["int_return"] is None else state["int_return"].clone()


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor,
        next_value: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """GAE advantages ``[T, E]`` (``dones[t]``: the episode ended at step t)."""
    import torch

    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
    return advantages


@sampler("dagger")
class DAggerCollector(_Rollout):
    """DAgger (Ross et al. 2011): a teacher/student mixture acts, the teacher labels every state.

    Every ``collect_every`` calls, ``steps`` steps are taken in each env: per env and step the
    teacher's action is executed with probability ``beta`` (a number or a schedule of the
    training step), else the student's (sampled, or its most likely action with
    ``student_greedy``). The teacher's action (its most likely one) is always what is stored.
    The aggregated dataset keeps up to ``capacity`` transitions (the oldest dropped first); each
    call serves ``batch_size`` of them drawn uniformly with torch's generator. With
    ``privileged: true`` the teacher acts on the env's full state (the unwrapped env's
    observation, output ``state``) while the student sees the wrapped ``obs``.
    """

    def __init__(self, *,
                 env: NodeRef = param(doc="the gym_env data node whose envs are stepped"),
                 student: NodeRef = param(doc="the policy being trained (acts with "
                                          "probability 1 - beta)"),
                 teacher: NodeRef = param(doc="the expert policy (labels every state)"),
                 beta: float | ScheduleSpec = param(
                     1.0, doc="probability of executing the teacher's action: a number or a "
                     "schedule of the step ({schedule: linear, start: 1, end: 0, steps: N})"),
                 steps: int = param(64, ge=1, doc="steps per env in each collection"),
                 collect_every: int = param(50, ge=1, doc="calls (training steps) between "
                                            "collections"),
                 capacity: int = param(100_000, ge=1, doc="transitions kept in the "
                                       "aggregated dataset"),
                 batch_size: int = param(256, ge=1, doc="transitions per minibatch"),
                 privileged: bool = param(False, doc="the teacher sees the full state, the "
                                          "student the wrapped observation"),
                 student_greedy: bool = param(False, doc="the student acts with its most "
                                              "likely action instead of sampling"),
                 context: BuildContext) -> None:
        super().__init__()
        self._setup(env, context)
        self._policies = (student, teacher)
        self._check_policy(context, "student", student)
        problem = _space_problem(context, "teacher", teacher, self.spaces, self.config.id,
                                 obs_dim=self.spaces.state_dim if privileged
                                 else self.spaces.obs_dim)
        if problem is not None:
            raise ValidationError([problem])
        if not self.spaces.discrete:
            raise ValidationError([Problem(
                code="action-space-mismatch",
                message=f"params.env: dagger stores the teacher's action as a class label; "
                f"{self.config.id} has continuous actions",
                location=_where(context, "env"), node=context.node,
                expected="an env with discrete actions", found=self.config.id,
                suggestion="use an env with a Discrete action space")])
        self.schedule = beta
        self.beta = float(beta) if not isinstance(beta, ScheduleSpec) else beta.at(0)
        self.steps = steps
        self.collect_every = collect_every
        self.capacity = capacity
        self.batch_size = batch_size
        self.privileged = privileged
        self.student_greedy = student_greedy
        self.buffer: dict[str, torch.Tensor] = {}
        self.teacher_acted = 0
        if not self.meta:
            self.state = self._states()

    def set_step(self, step: int) -> None:
        super().set_step(step)
        self.beta = self.schedule.at(step) if isinstance(self.schedule, ScheduleSpec) \
            else float(self.schedule)

    def _states(self) -> torch.Tensor:
        import torch
        from dgraph.components.rl.env import privileged_states

        if self.privileged:
            return torch.as_tensor(privileged_states(self.envs), dtype=torch.float32)
        return self.obs

    def forward(self) -> Outputs(
            obs=Observations("N, D", "what the student saw"),
            state=Observations("N, S", "what the teacher saw (the full state when "
                               "privileged, else obs)"),
            teacher_actions=Labels("N", "the teacher's most likely action in each state")):
        import torch

        if self.meta:
            n = self.batch_size
            width = self.spaces.state_dim if self.privileged else self.spaces.obs_dim
            return {"obs": torch.empty(n, self.spaces.obs_dim, device="meta"),
                    "state": torch.empty(n, width, device="meta"),
                    "teacher_actions": torch.empty(n, dtype=torch.long, device="meta")}
        if not self.training:
            if not self.served:
                self.collect()
                self.served = {k: v[:self.batch_size] for k, v in self.buffer.items()}
            return self.served
        if self._again():
            return self.served
        if self.calls % self.collect_every == 0:
            self.collect()
        size = self.buffer["obs"].shape[0]
        index = torch.randint(size, (self.batch_size,)).to(self.buffer["obs"].device)
        self.calls += 1
        self.served = {k: v.index_select(0, index) for k, v in self.buffer.items()}
        return self.served

    def collect(self) -> None:
        """``steps`` mixture steps in every env; their states join the aggregated dataset."""
        import torch
        from dgraph.components.rl.policy import act

        student, teacher = self._policies
        device = self._device(student)
        obs_l, state_l, label_l = [], [], []
        with torch.no_grad():
            for _ in range(self.steps):
                obs, state = self.obs.to(device), self.state.to(device)
                taught, _ = act(teacher, state, deterministic=True)
                own, _ = act(student, obs, deterministic=self.student_greedy)
                use_teacher = torch.rand(self.num_envs, device=device) < self.beta
                self.teacher_acted += int(use_teacher.sum())
                actions = torch.where(use_teacher, taught, own)
                obs_l.append(obs)
                state_l.append(state)
                label_l.append(taught)
                self.obs = self._step_envs(actions)[0]
                self.state = self._states()
        new = {"obs": torch.cat(obs_l), "state": torch.cat(state_l),
               "teacher_actions": torch.cat(label_l).long()}
        if self.buffer:
            new = {k: torch.cat([self.buffer[k], v])[-self.capacity:] for k, v in new.items()}
        else:
            new = {k: v[-self.capacity:] for k, v in new.items()}
        self.buffer = new

    def _state(self) -> dict[str, Any]:
        return {"buffer": {k: v.clone() for k, v in self.buffer.items()},
                "state": self.state.clone(), "teacher_acted": self.teacher_acted}

    def _load(self, state: dict[str, Any]) -> None:
        self.buffer = {k: v.clone() for k, v in state["buffer"].items()}
        self.state = state["state"].clone()
        self.teacher_acted = int(state["teacher_acted"])
