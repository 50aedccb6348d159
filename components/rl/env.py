"""``gym_env``: a gymnasium environment as a data source, and the helpers rollouts share.

A spec names an environment by its registered id (``CartPole-v1``), keyword arguments for
``gymnasium.make`` and a closed set of wrappers (no spec text is ever imported: ids naming a
module, ``"pkg.module:Env"``, are refused). The data node's output ports are typed from the
spaces: ``obs`` is ``Observations[B, D]`` with ``D`` read from the (wrapped) observation space,
so shapes are checked statically. What it builds is a :class:`~dgraph.data.DataSource` whose
tensors are the envs' first observations (seeded per env) and whose ``info["gym"]`` is an
:class:`EnvConfig`: rollout nodes and the episode-return metric make their own
``SyncVectorEnv`` from it.

Environment state is saved the way gymnasium leaves it reachable: :func:`env_state` walks each
sub-env's wrapper chain down to the unwrapped env and keeps every attribute that is plain data
(numbers, arrays, the ``np_random`` generator's state); :func:`restore_env_state` writes them
back. That restores classic-control and toy-text envs exactly (their whole state is such
attributes). An env whose state lives in another object (a physics engine's, MuJoCo, Box2D)
is not restored by that walk: :func:`env_state` marks it and :func:`restore_env_state` then
resets it with a seed derived from the saved step (the resumed run is then reproducible from
the checkpoint, but not bit-identical to the uninterrupted one).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dgraph.declare import Observations, Outputs, data, param
from dgraph.errors import Problem, ValidationError
from dgraph.ports import Port
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["EnvConfig", "Spaces", "env_state", "gym_env", "make_vector_env",
           "restore_env_state", "spaces_of"]


class _Wrapper(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskObservation(_Wrapper):
    """Keep only some entries of a flat observation (CartPole without velocities: [0, 2])."""

    type: Literal["mask_observation"]
    keep: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)


class FrameStack(_Wrapper):
    """The last ``size`` observations, flattened oldest first (at the start of an episode the
    first observation stands for the older frames).

    With ``differences: k`` the same frames are encoded as the newest one followed by
    ``k * (newer - older)`` for each consecutive pair, newest pair first: a linear re-encoding
    of the stack (nothing the frames do not hold) that an MLP learns from far faster when
    velocities are small differences of positions (``k = 1 / dt``: finite-difference
    velocities).
    """

    type: Literal["frame_stack"]
    size: int = Field(ge=2, le=64)
    differences: float | None = Field(None, gt=0, allow_inf_nan=False)


class ObservationNoise(_Wrapper):
    """Gaussian noise of standard deviation ``std`` added to each observation."""

    type: Literal["observation_noise"]
    std: float = Field(gt=0, allow_inf_nan=False)


class RescaleObservation(_Wrapper):
    """Map the observation box's (finite) bounds to [-1, 1], per entry."""

    type: Literal["rescale_observation"]


class TimeLimit(_Wrapper):
    """Truncate episodes after ``max_episode_steps`` steps."""

    type: Literal["time_limit"]
    max_episode_steps: int = Field(ge=1)


class ClipAction(_Wrapper):
    """Clip continuous actions to the action space's bounds."""

    type: Literal["clip_action"]


Wrapper = Annotated[MaskObservation | FrameStack | ObservationNoise | RescaleObservation
                    | TimeLimit | ClipAction, Field(discriminator="type")]


@dataclass(frozen=True)
class EnvConfig:
    """What makes the envs of a ``gym_env`` node (plain data: rollouts and metrics use it)."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: tuple[dict[str, Any], ...] = ()
    num_envs: int = 1
    seed: int = 0

    def make(self) -> Any:
        """One wrapped env."""
        import gymnasium as gym

        env = gym.make(self.id, **self.kwargs)
        env = _Privileged(env)
        for wrapper in self.wrappers:
            env = _wrap(env, wrapper)
        return env


@dataclass(frozen=True)
class Spaces:
    """The sizes of an env's spaces, as ports need them."""

    obs_dim: int
    discrete: bool
    num_actions: int  # discrete: number of actions; continuous: action dimensions
    state_dim: int  # the unwrapped env's observation width (privileged state)
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()


def _check_id(env_id: str) -> None:
    import gymnasium as gym

    if ":" in env_id or "/" in env_id and env_id not in gym.registry:
        raise ValueError(f"environment id {env_id!r} names a module to import; a spec may only "
                         "name environments already registered with gymnasium")
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        raise ValueError(f"unknown gymnasium environment {env_id!r}"
                         + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
                            else "; `python -c 'import gymnasium; gymnasium.pprint_registry()'` "
                            "lists them"))


def _check(p: Any) -> None:
    _check_id(p.id)
    if "render_mode" in p.kwargs:
        raise ValueError("kwargs.render_mode is not allowed: dgraph runs envs headless")


@functools.lru_cache(maxsize=64)
def _spaces(env_id: str, kwargs_json: str, wrappers_json: str) -> Spaces:
    config = EnvConfig(env_id, json.loads(kwargs_json), tuple(json.loads(wrappers_json)))
    env = config.make()
    try:
        return spaces_of(env)
    finally:
        env.close()


def env_info(env: Any, context: BuildContext, suggestion: str) -> dict[str, Any]:
    """The ``info`` of the gym_env data node a component's ``env`` parameter names; a located
    ValidationError when it names something else."""
    info = getattr(env, "info", {}) if env is not None else {}
    if "gym" not in info:
        raise ValidationError([Problem(
            code="not-an-env", message="params.env must name a gym_env data node",
            location=None if context.source is None else context.source.where(
                ("nodes", context.node, "params", "env")),
            node=context.node, expected="a data node of type gym_env",
            found=type(env).__name__, suggestion=suggestion)])
    return info


def spaces_of(env: Any) -> Spaces:
    """The sizes of a (single, wrapped) env's spaces; a ValueError for unsupported spaces."""
    import gymnasium as gym
    import numpy as np

    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"observation space {obs_space} is not a flat Box; gym_env supports "
                         "vector observations")
    state_space = env.unwrapped.observation_space
    state_dim = int(np.prod(state_space.shape)) if isinstance(state_space, gym.spaces.Box) \
        else 0
    if isinstance(act_space, gym.spaces.Discrete):
        return Spaces(int(obs_space.shape[0]), True, int(act_space.n), state_dim)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return Spaces(int(obs_space.shape[0]), False, int(act_space.shape[0]), state_dim,
                      tuple(float(v) for v in act_space.low),
                      tuple(float(v) for v in act_space.high))
    raise ValueError(f"action space {act_space} is neither Discrete nor a flat Box")


def config_spaces(config: EnvConfig) -> Spaces:
    return _spaces(config.id, json.dumps(config.kwargs, sort_keys=True),
                   json.dumps(list(config.wrappers), sort_keys=True))


def _config(p: Any, seed: int = 0) -> EnvConfig:
    return EnvConfig(p.id, dict(p.kwargs),
                     tuple(w.model_dump() for w in p.wrappers), p.num_envs, p.seed + seed)


def _ports(p: Any) -> dict[str, Port]:
    try:
        spaces = config_spaces(_config(p))
    except Exception:  # noqa: BLE001 - reported by the params check or at build
        return {"obs": Observations("B, D", "the envs' observations")}
    return {"obs": Observations(f"B, {spaces.obs_dim}", "the envs' observations")}


def _sizes(p: Any) -> dict[str, int]:
    spaces = config_spaces(_config(p))
    return {"obs_dim": spaces.obs_dim, "num_actions": spaces.num_actions}


@data("gym_env", check=_check, output_ports=_ports, sizes=_sizes)
def gym_env(
    *,
    id: str = param(doc="a registered gymnasium id, e.g. CartPole-v1"),  # noqa: A002
    kwargs: dict[str, str | int | float | bool | None] = param(
        {}, doc="keyword arguments of gymnasium.make"),
    wrappers: list[Wrapper] = param([], doc="applied in order: mask_observation (keep), "
                                    "frame_stack (size, differences), observation_noise (std), "
                                    "rescale_observation, time_limit (max_episode_steps), "
                                    "clip_action"),
    num_envs: int = param(8, ge=1, le=1024, doc="envs stepped together (SyncVectorEnv)"),
    seed: int = param(0, ge=0, doc="added to train.seed: env i is reset with seed + i"),
    context: BuildContext,
) -> Outputs(obs=Observations("B, {obs_dim}", "the envs' first observations (typed from the "
                              "observation space)")):
    """A vector of seeded gymnasium envs; rollout nodes and metrics step them.

    The ports are typed from the spaces: ``obs`` is ``Observations[B, D]``, ``D`` the
    wrapped observation width. The tensors are the envs' first observations after
    ``reset(seed=[s, s+1, ...])`` with ``s = seed + 65537 * train.seed`` (both splits), so the node
    also works as a tiny dataset for shape checks; ``info["gym"]`` holds the
    :class:`EnvConfig` and ``info["spaces"]`` the :class:`Spaces`.
    """
    import torch

    from dgraph.data import DataSource

    config = _config(_Params(id, kwargs, wrappers, num_envs, seed), seed_of(context.seed))
    spaces = config_spaces(config)
    envs = make_vector_env(config, num_envs)
    try:
        obs, _ = envs.reset(seed=[config.seed + i for i in range(num_envs)])
    finally:
        envs.close()
    first = torch.as_tensor(obs, dtype=torch.float32)
    return DataSource(train={"obs": first}, eval={"obs": first.clone()}, batch_size=num_envs,
                      shuffle=False, drop_last=False,
                      info={"gym": config, "spaces": spaces})


@dataclass
class _Params:
    id: str
    kwargs: dict[str, Any]
    wrappers: list[Any]
    num_envs: int
    seed: int


def seed_of(train_seed: int) -> int:
    """What ``train.seed`` adds to a gym_env's ``seed``: runs of different seeds never share
    an env seed unless a node has over 65537 envs."""
    return train_seed * 65_537


def make_vector_env(config: EnvConfig, num_envs: int) -> Any:
    """``num_envs`` copies of the config's env in a SyncVectorEnv that resets an env in the
    step that ends its episode (its last observation is in ``info["final_obs"]``)."""
    import gymnasium as gym

    return gym.vector.SyncVectorEnv([config.make for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


# -- wrappers ------------------------------------------------------------------------------------
def _wrap(env: Any, spec: dict[str, Any]) -> Any:
    import gymnasium as gym
    import numpy as np

    kind = spec["type"]
    if kind == "time_limit":
        return gym.wrappers.TimeLimit(env, spec["max_episode_steps"])
    if kind == "clip_action":
        return gym.wrappers.ClipAction(env)
    box = env.observation_space
    if kind == "mask_observation":
        keep = list(spec["keep"])
        if max(keep) >= box.shape[0]:
            raise ValueError(f"mask_observation keeps index {max(keep)} of an observation of "
                             f"{box.shape[0]} values")
        space = gym.spaces.Box(box.low[keep], box.high[keep], dtype=np.float32)
        return gym.wrappers.TransformObservation(
            env, lambda o: np.asarray(o, dtype=np.float32)[keep], space)
    if kind == "rescale_observation":
        if not (np.all(np.isfinite(box.low)) and np.all(np.isfinite(box.high))):
            raise ValueError(f"rescale_observation needs finite bounds; {box} has infinite ones")
        low, high = box.low.astype(np.float64), box.high.astype(np.float64)
        space = gym.spaces.Box(-1.0, 1.0, box.shape, np.float32)
        return gym.wrappers.TransformObservation(
            env, lambda o: (2.0 * (np.asarray(o, np.float64) - low) / (high - low) - 1.0
                            ).astype(np.float32), space)
    if kind == "frame_stack":
        return _FrameStack(env, spec["size"], spec.get("differences"))
    if kind == "observation_noise":
        return _Noise(env, spec["std"])
    raise ValueError(f"unknown wrapper {kind!r}")


def _wrapper_classes() -> tuple[type, type, type]:
    import gymnasium as gym
    import numpy as np

    class Privileged(gym.Wrapper):
        """Keeps the unwrapped env's last observation (the full state, for teachers)."""

        def __init__(self, env: Any) -> None:
            super().__init__(env)
            self.last_state = np.zeros(env.observation_space.shape, np.float32)

        def reset(self, **kwargs: Any) -> Any:
            obs, info = self.env.reset(**kwargs)
            self.last_state = np.asarray(obs, np.float32).copy()
            return obs, info

        def step(self, action: Any) -> Any:
            obs, *rest = self.env.step(action)
            self.last_state = np.asarray(obs, np.float32).copy()
            return (obs, *rest)

    class FrameStack(gym.ObservationWrapper):
        def __init__(self, env: Any, size: int, differences: float | None) -> None:
            super().__init__(env)
            box = env.observation_space
            self.size = size
            self.differences = differences
            if differences is None:
                self.observation_space = gym.spaces.Box(
                    np.tile(box.low, size), np.tile(box.high, size), dtype=np.float32)
            else:
                self.observation_space = gym.spaces.Box(-np.inf, np.inf,
                                                        (size * box.shape[0],), np.float32)
            self.frames = np.zeros((size, box.shape[0]), np.float32)

        def reset(self, **kwargs: Any) -> Any:
            obs, info = self.env.reset(**kwargs)
            # Before the first step, the first observation stands for the older frames.
            self.frames = np.repeat(np.asarray(obs, np.float32)[None], self.size, 0)
            return self.observation(obs), info

        def observation(self, observation: Any) -> Any:
            self.frames = np.concatenate([self.frames[1:], np.asarray(
                observation, np.float32)[None]], 0)
            if self.differences is None:
                return self.frames.reshape(-1).copy()
            newest_first = self.frames[::-1]
            steps = (newest_first[:-1] - newest_first[1:]) * np.float32(self.differences)
            return np.concatenate([newest_first[:1], steps], 0).reshape(-1).astype(np.float32)

    class Noise(gym.ObservationWrapper):
        def __init__(self, env: Any, std: float) -> None:
            super().__init__(env)
            self.std = std
            box = env.observation_space
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, box.shape, np.float32)

        def observation(self, observation: Any) -> Any:
            # The unwrapped env's generator: seeded by reset(seed=...) and saved with it.
            rng = self.env.unwrapped.np_random
            noise = rng.normal(0.0, self.std, np.shape(observation))
            return (np.asarray(observation, np.float32) + noise).astype(np.float32)

    return Privileged, FrameStack, Noise


def _Privileged(env: Any) -> Any:  # noqa: N802 - reads as the wrapper class it makes
    return _wrapper_classes_cached()[0](env)


def _FrameStack(env: Any, size: int, differences: float | None = None) -> Any:  # noqa: N802
    return _wrapper_classes_cached()[1](env, size, differences)


def _Noise(env: Any, std: float) -> Any:  # noqa: N802
    return _wrapper_classes_cached()[2](env, std)


_wrapper_classes_cached = functools.lru_cache(maxsize=1)(_wrapper_classes)


def privileged_states(envs: Any) -> Any:
    """``[num_envs, state_dim]``: each sub-env's unwrapped observation (its full state)."""
    import numpy as np

    return np.stack([_layer(env, "last_state") for env in envs.envs])


def _layer(env: Any, attribute: str) -> Any:
    current = env
    while True:
        if attribute in vars(current):
            return vars(current)[attribute]
        if not hasattr(current, "env"):
            raise AttributeError(attribute)
        current = current.env


# -- saving and restoring env state ---------------------------------------------------------------
_SKIP = {"env", "_saved_kwargs", "spec", "_cached_spec", "_action_space", "_observation_space",
         "_metadata", "action_space", "observation_space", "metadata", "render_mode",
         "_previous_data"}


def _plain(value: Any) -> tuple[bool, Any]:
    """(True, a checkpoint-safe copy) for plain data; (False, None) otherwise."""
    import numpy as np
    import torch

    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return True, {"__ndarray__": torch.from_numpy(value.copy()), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return True, {"__scalar__": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, np.random.Generator):
        return True, {"__generator__": value.bit_generator.state}
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        if all(ok for ok, _ in items):
            return True, {"__seq__": [v for _, v in items], "tuple": isinstance(value, tuple)}
    return False, None


def _unplain(value: Any) -> Any:
    import numpy as np

    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy().astype(value["dtype"]).copy()
    if "__scalar__" in value:
        return np.dtype(value["dtype"]).type(value["__scalar__"])
    if "__generator__" in value:
        state = value["__generator__"]
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    if "__seq__" in value:
        items = [_unplain(v) for v in value["__seq__"]]
        return tuple(items) if value["tuple"] else items
    return value


# Unwrapped envs known to keep their whole state in plain attributes.
_RESTORABLE_MODULES = ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text")


def env_state(envs: Any) -> dict[str, Any]:
    """Checkpoint-safe state of a vector env's sub-envs (see the module's docstring)."""
    out = []
    for env in envs.envs:
        layers = []
        current = env
        while True:
            kept = {}
            for name, value in vars(current).items():
                if name in _SKIP:
                    continue
                ok, plain = _plain(value)
                if ok:
                    kept[name] = plain
            layers.append(kept)
            if not hasattr(current, "env"):
                break
            current = current.env
        exact = type(current).__module__.startswith(_RESTORABLE_MODULES)
        out.append({"layers": layers, "exact": exact})
    return {"envs": out}


def restore_env_state(envs: Any, state: dict[str, Any], *, reseed: int) -> dict[int, Any]:
    """Write back what :func:`env_state` saved; returns ``{index: first observation}`` for the
    envs that could not be restored exactly and were reset with seed ``reseed + index``."""
    reset = {}
    for index, (env, saved) in enumerate(zip(envs.envs, state["envs"], strict=True)):
        if not saved["exact"]:
            reset[index] = env.reset(seed=reseed + index)[0]
            continue
        current = env
        for layer in saved["layers"]:
            for name, value in layer.items():
                setattr(current, name, _unplain(value))
            if not hasattr(current, "env"):
                break
            current = current.env
    return reset


def as_tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    import torch

    return torch.as_tensor(array, dtype=dtype if dtype is not None else torch.float32)
