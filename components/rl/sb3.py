"""``sb3_policy``: a teacher trained with stable-baselines3, read safely from its ``.zip``.

A stable-baselines3 save is a zip archive whose ``data`` member holds cloudpickled objects
(never to be unpickled from an untrusted file). This reads one member only, ``policy.pth``
(the policy's state dict), with ``torch.load(weights_only=True)``, and loads it into the
architecture the spec declares: an ``mlp_policy`` (discrete actions) or ``gaussian_policy``
(``continuous: true``) with the same ``hidden`` widths and ``activation`` as the saved
``MlpPolicy`` of PPO or A2C (separate actor and critic networks; stable-baselines3's default
``net_arch`` is ``[64, 64]`` with tanh). A key or shape that does not match is a located error
naming what the file holds.
"""

from __future__ import annotations

import io
import pickle  # only for its exception type: nothing here unpickles outside torch
import zipfile
from pathlib import Path
from typing import Any

from dgraph.components.models.mlp import Activation, Widths

from dgraph.declare import Logits, Module, Observations, Outputs, Tensor, model, param
from dgraph.ports import Port
from dgraph.registry import BuildContext

__all__ = ["SB3Policy", "read_sb3_policy", "sb3_to_dgraph"]

_MEMBER = "policy.pth"


def read_sb3_policy(path: Path) -> dict[str, Any]:
    """The state dict in ``policy.pth`` of a stable-baselines3 zip (only that member is read;
    ``torch.load(weights_only=True)``: tensors and plain containers only)."""
    import torch

    with zipfile.ZipFile(path) as archive:
        if _MEMBER not in archive.namelist():
            raise ValueError(f"{path} holds no '{_MEMBER}' (members: "
                             f"{', '.join(sorted(archive.namelist())) or 'none'}); a "
                             "stable-baselines3 save has one")
        raw = archive.read(_MEMBER)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"'{_MEMBER}' in {path} holds a {type(state).__name__}, not a state "
                         "dict")
    return state


def sb3_to_dgraph(state: dict[str, Any], layers: int) -> dict[str, Any]:
    """stable-baselines3 ActorCriticPolicy keys -> ``mlp_policy``/``gaussian_policy`` keys.

    ``mlp_extractor.policy_net.<2i>`` -> ``actor.<2i>``, ``action_net`` -> ``actor.<2L>``,
    likewise ``value_net`` for ``critic``; ``log_std`` stays.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] == ["mlp_extractor", "policy_net"]:
            out[".".join(["actor", *parts[2:]])] = value
        elif parts[:2] == ["mlp_extractor", "value_net"]:
            out[".".join(["critic", *parts[2:]])] = value
        elif parts[0] == "action_net":
            out[".".join(["actor", str(2 * layers), *parts[1:]])] = value
        elif parts[0] == "value_net":
            out[".".join(["critic", str(2 * layers), *parts[1:]])] = value
        else:
            out[key] = value
    return out


def _ports(p: Any) -> dict[str, Port]:
    if p.continuous:
        return {"mean": Tensor("B, {num_actions}", "mean action"),
                "log_std": Tensor("B, {num_actions}", "log standard deviation"),
                "value": Tensor("B", "state value V(s)")}
    return {"logits": Logits("B, {num_actions}", "action scores"),
            "value": Tensor("B", "state value V(s)")}


@model("sb3_policy", roles=("teacher", "model"), output_ports=_ports)
class SB3Policy(Module):
    """A PPO/A2C ``MlpPolicy`` saved by stable-baselines3, as a dgraph policy (a teacher).

    Only ``policy.pth`` is read from the zip (see the module's docstring). The declared
    architecture must be the saved one: ``obs_dim``, ``num_actions`` (action dimensions when
    ``continuous``), ``hidden`` and ``activation`` (stable-baselines3's defaults: [64, 64],
    tanh). Outputs are those of ``mlp_policy`` (``logits``, ``value``) or, with
    ``continuous``, of ``gaussian_policy`` (``mean``, ``log_std``, ``value``).
    """

    def __init__(self, *, path: str = param(doc="the .zip written by model.save(...)"),
                 obs_dim: int = param(gt=0, doc="observation width"),
                 num_actions: int = param(gt=0, doc="discrete actions (or action dimensions "
                                          "with continuous)"),
                 continuous: bool = param(False, doc="a Gaussian policy (Box actions)"),
                 hidden: Widths = param([64, 64], doc="the saved net_arch widths"),
                 activation: Activation = param("tanh", doc="the saved activation_fn"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components._inputs import existing_path, input_error
        from dgraph.components.rl.policy import CategoricalPolicy, GaussianPolicy

        if continuous:
            self.policy = GaussianPolicy.create(obs_dim=obs_dim, action_dim=num_actions,
                                                hidden=hidden, activation=activation)
        else:
            self.policy = CategoricalPolicy.create(obs_dim=obs_dim, num_actions=num_actions,
                                                   hidden=hidden, activation=activation)
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.discrete = not continuous
        if context.meta or not context.weights:
            return
        file = existing_path(context, "path", path, kind="file",
                             what="a stable-baselines3 .zip (model.save)")
        try:
            state = sb3_to_dgraph(read_sb3_policy(file), len(hidden))
        except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, RuntimeError,
                OSError) as exc:
            raise input_error(context, "path", f"'{path}' cannot be read as a "
                              "stable-baselines3 save", code="bad-file",
                              expected="a zip with policy.pth holding tensors only",
                              found=f"{type(exc).__name__}: {exc}",
                              hint="save the model with stable-baselines3's model.save(); "
                              "only policy.pth is read, with torch.load(weights_only=True)"
                              ) from None
        own = self.policy.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state)
                       if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            shapes = ", ".join(f"{k} {list(state[k].shape)} (declared {list(own[k].shape)})"
                               for k in wrong[:4])
            raise input_error(
                context, "path", f"'{path}' does not hold the declared architecture",
                code="architecture-mismatch",
                expected=f"obs_dim {obs_dim}, num_actions {num_actions}, hidden {hidden}, "
                f"{'continuous' if continuous else 'discrete'}",
                found="; ".join(part for part in (
                    f"missing {missing[:4]}" if missing else "",
                    f"unexpected {unexpected[:4]}" if unexpected else "",
                    f"shapes {shapes}" if wrong else "") if part),
                hint="declare the saved policy's obs_dim, num_actions, hidden (net_arch) and "
                "continuous; PPO and A2C MlpPolicy saves are supported")
        self.policy.load_state_dict(state)

    def forward(self, obs: Observations("B, {obs_dim}", "observations")) -> Outputs(
            logits=Logits("B, {num_actions}", "action scores (discrete; mean, log_std with "
                          "continuous)"),
            value=Tensor("B", "state value V(s)")):
        return self.policy(obs=obs)
