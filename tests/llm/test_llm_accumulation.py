"""End to end: 4 accumulated micro-batches of 2 give the same update as one batch of 8, with
prompt/response sequences of different lengths (token-normalised losses, runtime contract)."""

from __future__ import annotations

import torch

from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

CONFIG = ("{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, vocab_size: 258, "
          "n_positions: 128, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}")


def _one_step(tmp_path, name: str, batch: int, accumulate: int) -> dict[str, torch.Tensor]:
    spec = load_spec("llm_teacher", [
        "nodes.data={kind: data, type: jsonl_pairs, params: {max_len: 100, "
        f"max_prompt_len: 16, truncate: true, batch_size: {batch}, max_examples: 32}}}}",
        f"nodes.teacher.params.config={CONFIG}",
        "updates.main.optimizer={type: sgd, lr: 0.5}", "updates.main.scheduler=null",
        "updates.main.clip_grad_norm=null", f"updates.main.accumulate={accumulate}",
        "train.steps=1", "train.eval.every=1", "train.checkpoint_every=1"])
    graph, _ = validate(spec)
    (tmp_path / name).mkdir()
    trainer = Trainer(graph, tmp_path / name, progress=False, log=lambda *_: None)
    lengths = trainer.loaders["data"].tensors["loss_mask"][:8].sum(1)
    assert len(set(lengths.tolist())) > 1  # sequences of different lengths
    before = {k: v.clone() for k, v in trainer.instances.modules["teacher"].state_dict().items()}
    trainer.run()
    after = trainer.instances.modules["teacher"].state_dict()
    return {k: after[k] - before[k] for k in before}


def test_micro_batches_match_one_batch_end_to_end(tmp_path):
    torch.manual_seed(0)
    whole = _one_step(tmp_path, "whole", batch=8, accumulate=1)
    torch.manual_seed(0)
    parts = _one_step(tmp_path, "parts", batch=2, accumulate=4)
    worst = max((whole[k] - parts[k]).abs().max().item() for k in whole)
    assert any(v.abs().max() > 1e-4 for v in whole.values())  # the step did something
    assert worst < 1e-6
