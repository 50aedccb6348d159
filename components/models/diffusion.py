"""Diffusion denoisers from Hugging Face ``diffusers``: a ``UNet2DModel`` built from a config.

The declaration imports neither torch nor diffusers; the port shapes come from the config dict
(``in_channels``, ``out_channels``, ``sample_size``). ``build`` imports diffusers.
"""

from __future__ import annotations

from typing import Any

from dgraph.components._inputs import check_config_dict, input_error
from pydantic import Field, field_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["UNet2D", "UNet2DParams"]

_DEFAULT_IN_CHANNELS = 3  # UNet2DModel's default


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class UNet2DParams(Params):
    """Parameters of :class:`UNet2D`."""

    config: dict[str, Any] = Field(
        description="keyword arguments of diffusers' UNet2DModel; 'sample_size' (an int) is "
        "required, e.g. {sample_size: 16, block_out_channels: [16, 32], layers_per_block: 1, "
        "norm_num_groups: 8, down_block_types: [DownBlock2D, AttnDownBlock2D], "
        "up_block_types: [AttnUpBlock2D, UpBlock2D]}. out_channels defaults to in_channels"
    )

    @field_validator("config")
    @classmethod
    def _sizes(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not _positive_int(value.get("sample_size")):
            raise ValueError("config.sample_size must be a positive int (square images)")
        for key in ("in_channels", "out_channels"):
            if key in value and not _positive_int(value[key]):
                raise ValueError(f"config.{key} must be a positive int, found {value[key]!r}")
        check_config_dict(value, "config")
        return value

    def unet_kwargs(self) -> dict[str, Any]:
        """The config with ``in_channels`` and ``out_channels`` made explicit."""
        kwargs = dict(self.config)
        kwargs.setdefault("in_channels", _DEFAULT_IN_CHANNELS)
        kwargs.setdefault("out_channels", kwargs["in_channels"])
        for key, value in list(kwargs.items()):
            if isinstance(value, list):
                kwargs[key] = tuple(value)
        return kwargs


@component("unet2d", roles=("teacher", "student", "model"))
class UNet2D(Component):
    """A diffusers ``UNet2DModel`` built from a config: predicts the noise in noisy images.

    ``sample`` is ``[B, in_channels, sample_size, sample_size]``; ``timestep`` holds one
    diffusion step per example (int64 or float). ``noise_pred`` has the shape of ``sample``
    with ``out_channels`` channels (``in_channels`` unless the config says otherwise). Blocks
    such as ``model.down_blocks.0`` can be tapped.
    """

    Params = UNet2DParams
    inputs = {
        "sample": Port("Images", "B, {in_channels}, {sample_size}, {sample_size}",
                       "noisy images"),
        "timestep": Port("Timesteps", "B", "diffusion step of each example"),
    }
    outputs = {
        "noise_pred": Port("Noise", "B, {out_channels}, {sample_size}, {sample_size}",
                           "predicted noise"),
    }
    tappable = True

    def port_params(self) -> dict[str, Any]:
        kwargs = self.params.unet_kwargs()
        return {"in_channels": kwargs["in_channels"], "out_channels": kwargs["out_channels"],
                "sample_size": kwargs["sample_size"]}

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_diffusion import build_unet2d

        try:
            return build_unet2d(self.params.unet_kwargs())
        except (TypeError, ValueError) as exc:
            raise input_error(context, "config", "diffusers' UNet2DModel rejected the config",
                              code="bad-param", expected="keyword arguments of "
                              "diffusers.UNet2DModel", found=f"{type(exc).__name__}: {exc}",
                              hint="see the UNet2DModel documentation of the installed "
                              "diffusers for the accepted keys and block types") from None
