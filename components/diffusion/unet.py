"""A class-conditional diffusers ``UNet2DModel`` denoiser for small images (8x8 digits).

``unet_denoiser`` is ``unet2d``'s UNet (same config, same checks, built with diffusers' class,
never ``from_pretrained``) with what distillation needs around it: class conditioning through
diffusers' ``num_class_embeds`` (one extra embedding, index ``num_classes``, is the null class
of classifier-free guidance; ``label_dropout`` replaces labels by it while training), the
``prediction_type`` it is trained for (checked against the scheduler by the nodes that pair
them), and a located error for an image size its down blocks cannot halve.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from dgraph.components._inputs import input_error
from dgraph.components.models.diffusion import _unet_config, unet_kwargs
from pydantic import AfterValidator

from dgraph.declare import Images, Labels, Module, Outputs, Timesteps, model, param
from dgraph.registry import BuildContext

__all__ = ["UNetDenoiser"]


def _sizes(p: Any) -> dict[str, Any]:
    kwargs = unet_kwargs(p.config)
    return {key: kwargs[key] for key in ("in_channels", "sample_size")}


@model("unet_denoiser", roles=("teacher", "student", "model"), sizes=_sizes)
class UNetDenoiser(Module):
    """A diffusers ``UNet2DModel`` denoiser, optionally class-conditional.

    ``prediction`` has the shape of ``sample``; what it means is ``prediction_type``. With
    ``num_classes`` the UNet gets ``num_class_embeds = num_classes + 1`` and
    ``class_labels`` (absent: the null class ``num_classes``).
    """

    def __init__(self, *, config: Annotated[dict[str, Any], AfterValidator(_unet_config)] = param(
            doc="keyword arguments of diffusers' UNet2DModel; 'sample_size' (an int) is "
            "required, e.g. {sample_size: 8, in_channels: 1, block_out_channels: [32, 64], "
            "layers_per_block: 1, norm_num_groups: 8, down_block_types: [DownBlock2D, "
            "DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D]}; out_channels is "
            "in_channels"),
            num_classes: int | None = param(None, gt=0, doc="classes to condition on (None: "
                                            "unconditional)"),
            label_dropout: float = param(0.0, ge=0, lt=1, doc="training: probability of "
                                         "replacing a label by the null class (CFG)"),
            prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] = param(
                "epsilon", doc="what the output is: epsilon, sample (x0), v_prediction or "
                "flow (eps - x0)"),
            context: BuildContext) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        kwargs = unet_kwargs(config)
        kwargs["out_channels"] = kwargs["in_channels"]
        downs = len(kwargs.get("down_block_types", ("a",) * 4))
        size = kwargs["sample_size"]
        if size % 2 ** (downs - 1):
            raise input_error(context, "config", f"sample_size {size} cannot be halved by "
                              f"{downs - 1} of the UNet's {downs} down blocks",
                              code="bad-param", expected=f"a sample_size divisible by "
                              f"{2 ** (downs - 1)}", found=f"sample_size: {size}",
                              hint="use fewer down_block_types (and up_block_types) or a "
                              "larger image")
        if num_classes:
            kwargs["num_class_embeds"] = num_classes + 1
        try:
            self.model = UNet2DModel(**kwargs)
        except (TypeError, ValueError) as exc:
            raise input_error(context, "config", "diffusers' UNet2DModel rejected the config",
                              code="bad-param", expected="keyword arguments of "
                              "diffusers.UNet2DModel", found=f"{type(exc).__name__}: {exc}",
                              hint="see the UNet2DModel documentation of the installed "
                              "diffusers for the accepted keys and block types") from None
        self.prediction_type = prediction_type
        self.num_classes = num_classes
        self.label_dropout = label_dropout

    def forward(self, sample: Images("B, {in_channels}, {sample_size}, {sample_size}",
                                     "noisy images x_t"),
                timestep: Timesteps("B", "the timestep of each example"),
                class_labels: Labels("B", "class of each example (num_classes = null)") = None,
                ) -> Outputs(prediction=Images("B, {in_channels}, {sample_size}, {sample_size}",
                                               "the prediction (see prediction_type)")):
        import torch

        labels = None
        if self.num_classes:
            if class_labels is None:
                labels = torch.full((sample.shape[0],), self.num_classes, dtype=torch.long,
                                    device=sample.device)
            else:
                labels = class_labels.long()
                if self.training and self.label_dropout > 0:
                    drop = torch.rand(labels.shape, device=sample.device) < self.label_dropout
                    labels = torch.where(drop, torch.full_like(labels, self.num_classes),
                                         labels)
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        return {"prediction": self.model(sample, timestep, class_labels=labels,
                                         return_dict=False)[0]}
