"""LoRA adapters (through ``peft``) on a frozen copy of a Hugging Face model node.

``lora`` copies the module of the node ``base`` names (an ``hf_causal_lm`` or ``hf_encoder``,
whose transformers model is its ``model`` attribute), freezes the copy and adds low-rank
adapters to the linear layers ``target_modules`` names: ``W x + (alpha / r) B A x`` with
``A`` ``[r, in]`` (random) and ``B`` ``[out, r]`` (zeros, so training starts at the base).
Only ``A`` and ``B`` train. The node has the base node's ports (and the base's
``prediction_type`` and ``num_classes``, for a ``unet_denoiser`` base). A base whose weights
come from another run (``init: {run: ...}``, loaded after the nodes are built) is adapted
through the lora node's own ``init`` naming the same run: weights with the base's names load
into the frozen copy, the adapters keep their initial values. Built for export (the exporter
asks for the architecture, then loads the trained weights), the adapters are merged into the
weights once loaded, ``W <- W + (alpha / r) B A``: the exported graph is the plain model.
"""

from __future__ import annotations

from typing import Any

from dgraph.declare import Module, NodeRef, model, param
from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

__all__ = ["LoRA"]


@model("lora", roles=("student", "model"), ports_from="base")
class LoRA(Module):
    """Low-rank adapters on a frozen copy of an HF model node (``peft``'s LoRA).

    ``y = W x + (alpha / r) B A x`` on every linear layer whose name ends with one of
    ``target_modules`` (e.g. BERT's ``query``/``value``, GPT-2's ``c_attn``, Llama's
    ``q_proj``/``v_proj``); the copy's own weights stay frozen, ``A``/``B`` train.
    ``merged()`` returns the copy with ``W + (alpha / r) B A`` written into its weights.
    """

    def __init__(
        self, *,
        base: NodeRef = param(doc="the HF model node (hf_causal_lm, hf_encoder, "
                              "unet_denoiser) to adapt; it is copied, and the copy frozen"),
        r: int = param(8, gt=0, doc="adapter rank"),
        alpha: float = param(16.0, gt=0.0, doc="scale numerator: adapters are scaled by "
                             "alpha / r"),
        dropout: float = param(0.0, ge=0.0, lt=1.0, doc="dropout on the adapters' input"),
        target_modules: list[str] = param(
            ["query", "value"], doc="names of the linear layers to adapt (suffixes)"),
        context: BuildContext,
    ) -> None:
        super().__init__()
        import copy

        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise DgraphError("component 'lora' needs peft: pip install peft") from None
        inner = getattr(base, "model", None)
        if inner is None or not hasattr(inner, "config"):
            raise DgraphError(f"node '{context.node}': base must name a Hugging Face model "
                              "node (hf_causal_lm, hf_encoder, unet_denoiser), found "
                              f"{type(base).__name__}")
        self.base = copy.deepcopy(base)
        self.base.requires_grad_(False)
        for attr in ("prediction_type", "num_classes"):  # read by the diffusion nodes
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=list(target_modules), bias="none")
        try:
            self.base.model = get_peft_model(self.base.model, config)
        except ValueError as exc:
            raise DgraphError(f"node '{context.node}': peft cannot add adapters: "
                              f"{str(exc).splitlines()[0]}") from None
        self.register_load_state_dict_pre_hook(_base_weights_into_copy)
        if not context.weights and not context.meta:
            # Built for export: merge once the trained weights are loaded.
            self.register_load_state_dict_post_hook(_merge_after_load)

    def forward(self, **inputs: Any) -> Any:
        return self.base(**inputs)

    def merged(self) -> Any:
        """A copy of the adapted module with the adapters merged into its weights."""
        import copy

        out = copy.deepcopy(self.base)
        out.model = out.model.merge_and_unload()
        return out


def _base_name(key: str) -> str:
    """The base node's name of a key of the adapted copy (``base.model.base_model.model.X
    .base_layer.weight`` -> ``model.X.weight``)."""
    return key.removeprefix("base.").replace("base_model.model.", "", 1).replace(
        ".base_layer.", ".")


def _base_weights_into_copy(module: Any, state_dict: Any, prefix: str, *_args: Any) -> None:
    """Weights saved by the base node (its names, no adapters) load into the frozen copy;
    the adapters keep their values. The lora node's own weights load as they are."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys or any(k.startswith(prefix + "base.") for k in keys):
        return
    own = module.state_dict()
    names = {_base_name(k): k for k in own}
    if not all(k[len(prefix):] in names for k in keys):
        return  # not the base's weights: load_state_dict reports the mismatch
    for key in keys:
        state_dict[prefix + names[key[len(prefix):]]] = state_dict.pop(key)
    for key, value in own.items():
        state_dict.setdefault(prefix + key, value)


def _merge_after_load(module: Any, _incompatible: Any) -> None:
    if hasattr(module.base.model, "merge_and_unload"):
        module.base.model = module.base.model.merge_and_unload()
