"""Diffusion denoisers from Hugging Face ``diffusers``: a ``UNet2DModel`` built from a config.

The declaration imports neither torch nor diffusers; the port shapes come from the config dict
(``in_channels``, ``out_channels``, ``sample_size``). Building imports diffusers and never
calls ``from_pretrained``: no folder, no Hub, no code.
"""

from __future__ import annotations

from typing import Annotated, Any

from dgraph.components._inputs import check_config_dict, input_error
from pydantic import AfterValidator

from dgraph.declare import Images, Module, Noise, Outputs, Timesteps, model, param
from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

__all__ = ["UNet2D", "unet_kwargs"]

_DEFAULT_IN_CHANNELS = 3  # UNet2DModel's default


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _unet_config(value: dict[str, Any]) -> dict[str, Any]:
    if not _positive_int(value.get("sample_size")):
        raise ValueError("config.sample_size must be a positive int (square images)")
    for key in ("in_channels", "out_channels"):
        if key in value and not _positive_int(value[key]):
            raise ValueError(f"config.{key} must be a positive int, found {value[key]!r}")
    check_config_dict(value, "config")
    return value


def unet_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The config with ``in_channels`` and ``out_channels`` made explicit, lists as tuples."""
    kwargs = dict(config)
    kwargs.setdefault("in_channels", _DEFAULT_IN_CHANNELS)
    kwargs.setdefault("out_channels", kwargs["in_channels"])
    for key, value in list(kwargs.items()):
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return kwargs


def _sizes(p: Any) -> dict[str, Any]:
    kwargs = unet_kwargs(p.config)
    return {key: kwargs[key] for key in ("in_channels", "out_channels", "sample_size")}


@model("unet2d", roles=("teacher", "student", "model"), sizes=_sizes)
class UNet2D(Module):
    """A diffusers ``UNet2DModel`` built from a config: predicts the noise in noisy images.

    ``sample`` is ``[B, in_channels, sample_size, sample_size]``; ``timestep`` holds one
    diffusion step per example (int64 or float). ``noise_pred`` has the shape of ``sample``
    with ``out_channels`` channels (``in_channels`` unless the config says otherwise):
    ``unet(sample, timestep).sample``. Blocks such as ``model.down_blocks.0`` can be tapped.
    """

    def __init__(self, *, config: Annotated[dict[str, Any], AfterValidator(_unet_config)] = param(
            doc="keyword arguments of diffusers' UNet2DModel; 'sample_size' (an int) is "
            "required, e.g. {sample_size: 16, block_out_channels: [16, 32], layers_per_block: "
            "1, norm_num_groups: 8, down_block_types: [DownBlock2D, AttnDownBlock2D], "
            "up_block_types: [AttnUpBlock2D, UpBlock2D]}. out_channels defaults to in_channels"),
            context: BuildContext) -> None:
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError:
            raise DgraphError("component 'unet2d' needs diffusers: pip install \"dgraph[hf]\"") \
                from None
        try:
            self.model = UNet2DModel(**unet_kwargs(config))
        except (TypeError, ValueError) as exc:
            raise input_error(context, "config", "diffusers' UNet2DModel rejected the config",
                              code="bad-param", expected="keyword arguments of "
                              "diffusers.UNet2DModel", found=f"{type(exc).__name__}: {exc}",
                              hint="see the UNet2DModel documentation of the installed "
                              "diffusers for the accepted keys and block types") from None

    def forward(self, sample: Images("B, {in_channels}, {sample_size}, {sample_size}",
                                     "noisy images"),
                timestep: Timesteps("B", "diffusion step of each example"),
                ) -> Outputs(noise_pred=Noise("B, {out_channels}, {sample_size}, {sample_size}",
                                              "predicted noise")):
        return {"noise_pred": self.model(sample, timestep, return_dict=False)[0]}
