"""The torch side of ``lm_sampler``: generation with transformers' ``generate``."""

from __future__ import annotations

import torch
from torch import nn

from .lm_sampler import LMSamplerParams

__all__ = ["LMSamplerModule", "sequences_from_generation"]


def sequences_from_generation(full: torch.Tensor, prompt_mask: torch.Tensor,
                              *, eos_token_id: int | None = None
                              ) -> dict[str, torch.Tensor]:
    """``[B, P + N]`` prompt + generation -> next-token tensors of length ``P + N - 1``."""
    batch, prompt_len = prompt_mask.shape
    generated = full.shape[1] - prompt_len
    real = torch.cat([prompt_mask.bool(),
                      torch.ones((batch, generated), dtype=torch.bool, device=full.device)], 1)
    if eos_token_id is not None and generated > 0:
        is_eos = full[:, prompt_len:] == eos_token_id
        # Keep the first <eos> (it is predicted), drop what follows it.
        after = (is_eos.cumsum(1) - is_eos.long()) > 0
        real[:, prompt_len:] &= ~after
    positions = torch.arange(full.shape[1] - 1, device=full.device)
    loss_mask = (positions >= prompt_len - 1).unsqueeze(0) & real[:, 1:]
    return {"input_ids": full[:, :-1].contiguous(), "targets": full[:, 1:].contiguous(),
            "attention_mask": real[:, :-1].contiguous(), "loss_mask": loss_mask}


class LMSamplerModule(nn.Module):
    """Holds the generating module by reference (not as a submodule: no weights of its own,
    nothing frozen or saved through it)."""

    def __init__(self, source: nn.Module | None, params: LMSamplerParams) -> None:
        super().__init__()
        self._source = [source]
        self.p = params

    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        from transformers import GenerationConfig

        source = self._source[0]
        model = getattr(source, "model", source)
        p = self.p
        config = GenerationConfig(
            do_sample=p.do_sample, max_new_tokens=p.max_new_tokens,
            min_new_tokens=None if p.stop_at_eos else p.max_new_tokens,
            temperature=p.temperature if p.do_sample else None,
            top_k=p.top_k if p.do_sample else None, top_p=p.top_p if p.do_sample else None,
            pad_token_id=p.pad_token_id,
            eos_token_id=p.eos_token_id if p.stop_at_eos else None, bos_token_id=None,
        )
        was_training = model.training
        model.eval()
        try:
            full = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                                  generation_config=config, trust_remote_code=False)
        finally:
            model.train(was_training)
        want = prompt_ids.shape[1] + p.max_new_tokens
        if full.shape[1] < want:  # every sequence stopped early: pad to the fixed length
            pad = torch.full((full.shape[0], want - full.shape[1]), p.pad_token_id,
                             dtype=full.dtype, device=full.device)
            full = torch.cat([full, pad], 1)
        return full

    @torch.no_grad()
    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        passthrough = (input_ids, targets, attention_mask, loss_mask)
        have_data = all(t is not None for t in passthrough)
        if self.p.on_policy < 1.0 and not have_data:
            raise ValueError("lm_sampler with on_policy < 1 needs the data's input_ids, "
                             "targets, attention_mask and loss_mask wired in")
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
        if prompt_ids.is_meta:
            if have_data and self.p.on_policy < 1.0:
                return dict(zip(("input_ids", "targets", "attention_mask", "loss_mask"),
                                passthrough, strict=True))  # type: ignore[arg-type]
            length = prompt_ids.shape[1] + self.p.max_new_tokens - 1
            shape = (prompt_ids.shape[0], length)
            return {"input_ids": torch.empty(shape, dtype=torch.long, device="meta"),
                    "targets": torch.empty(shape, dtype=torch.long, device="meta"),
                    "attention_mask": torch.empty(shape, dtype=torch.bool, device="meta"),
                    "loss_mask": torch.empty(shape, dtype=torch.bool, device="meta")}
        generate = self.p.on_policy >= 1.0 or float(torch.rand(())) < self.p.on_policy
        if not generate:
            return {"input_ids": input_ids, "targets": targets,  # type: ignore[dict-item]
                    "attention_mask": attention_mask.bool(),  # type: ignore[union-attr]
                    "loss_mask": loss_mask.bool()}  # type: ignore[union-attr]
        if self._source[0] is None:
            raise RuntimeError("lm_sampler has no generating module")
        full = self._generate(prompt_ids, prompt_mask)
        return sequences_from_generation(
            full, prompt_mask, eos_token_id=self.p.eos_token_id if self.p.stop_at_eos else None)
