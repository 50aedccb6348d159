"""Evaluation and teacher caches shared out across ranks: 2 processes on CPU (gloo), started
by `dgraph train --nproc 2`, report and cache what one process does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import cli_train, finish
from safetensors.torch import load_file

# The held-out digits (360 examples) in batches of 128: 3 batches, an odd number for 2 ranks.
# The teacher's outputs are cached on disk; energy_distance is a metric fed by every batch.
SPEC = """
dgraph: 1
name: split_eval
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  teacher:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [32], num_classes: 10}
    inputs: {x: data.x}
    cache: {where: disk}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [32], num_classes: 10}
    inputs: {x: data.x}
  kd:
    kind: loss
    type: hinton_kd
    inputs: {student: student.logits, teacher: teacher.logits}
  spread:
    kind: metric
    type: energy_distance
    inputs: {real: teacher.features, fake: student.features}
updates:
  main: {params: [student], objective: {kd: 1.0}}
train: {steps: 10, eval: {every: 10, batch_size: 128}, seed: 1, log_every: 5,
        checkpoint_every: 10}
"""

TINY_LM = ("{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, vocab_size: 258, "
           "n_positions: 32, bos_token_id: 1, eos_token_id: 1, pad_token_id: 0}")

TOPK = f"""
dgraph: 1
name: topk_split
nodes:
  data:
    kind: data
    type: lm_topk_cache
    params:
      path: cache/topk.safetensors
      k: 4
      text: {{path: small.txt, seq_len: 16, batch_size: 8, tokenizer: {{kind: byte}}}}
      teacher: {{config: {TINY_LM}, weights: teacher.safetensors}}
  student:
    kind: student
    type: hf_causal_lm
    params: {{config: {TINY_LM}}}
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  kd:
    kind: loss
    type: token_topk_kl
    inputs: {{student: student.logits, topk_logprobs: data.topk_logprobs,
             topk_indices: data.topk_indices, mask: data.loss_mask}}
updates:
  main: {{params: [student], objective: {{kd: 1.0}}}}
train: {{steps: 2, eval: {{every: 2, batch_size: 32}}, seed: 0, log_every: 1,
        checkpoint_every: 2}}
"""

# GKD: with probability 1/2 a step's batch is the student's continuations of the prompts
# (lm_sampler: each rank generates for its own slice), else the data's sequences; evaluation
# samples too (eval.samplers), so that it generates under two processes as well.
GKD = f"""
dgraph: 1
name: gkd_split
nodes:
  data:
    kind: data
    type: text_lm
    params: {{path: small.txt, seq_len: 16, prompt_len: 4, batch_size: 8,
             tokenizer: {{kind: byte}}}}
  rollout:
    kind: sampler
    type: lm_sampler
    params: {{source: student, on_policy: 0.5, max_new_tokens: 13}}
    inputs: {{prompt_ids: data.prompt_ids, prompt_mask: data.prompt_mask,
             input_ids: data.input_ids, targets: data.targets,
             attention_mask: data.attention_mask, loss_mask: data.loss_mask}}
  teacher:
    kind: teacher
    type: hf_causal_lm
    params: {{config: {TINY_LM}}}
    inputs: {{input_ids: rollout.input_ids, attention_mask: rollout.attention_mask}}
  student:
    kind: student
    type: hf_causal_lm
    params: {{config: {TINY_LM}}}
    inputs: {{input_ids: rollout.input_ids, attention_mask: rollout.attention_mask}}
  jsd:
    kind: loss
    type: token_jsd
    inputs: {{student: student.logits, teacher: teacher.logits, mask: rollout.loss_mask}}
updates:
  main: {{params: [student], objective: {{jsd: 1.0}}}}
train: {{steps: 4, eval: {{every: 4, batch_size: 64, samplers: true}}, seed: 0,
        log_every: 1, checkpoint_every: 4}}
"""


def test_shares_cover_the_items_in_rank_order():
    from dgraph.runtime.distributed import World, share

    assert [share(7, World(rank=r, size=3)) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [share(1, World(rank=r, size=2)) for r in range(2)] == [(0, 1), (1, 1)]
    assert share(5, World()) == (0, 5)


def _summary(run: Path) -> dict[str, float]:
    return json.loads((run / "summary.json").read_text())


def _assert_same_summary(found: dict[str, float], expected: dict[str, float]) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if "accuracy" in key or "agreement" in key:
            assert found[key] == value, key  # counts of correct predictions: exact
        else:  # weights equal to float tolerance, sums added up in another order
            assert found[key] == pytest.approx(value, rel=1e-4), key


def test_eval_and_teacher_cache_in_shares_equal_one_process(tmp_path):
    spec = tmp_path / "split_eval.yaml"
    spec.write_text(SPEC)
    single = cli_train(spec, tmp_path / "single", nproc=1)
    double = cli_train(spec, tmp_path / "double", nproc=2)
    finish(single)
    finish(double)
    # FSDP shards the student and the frozen teacher: the cache and evaluation call them on
    # every rank the same number of times (rank 1 has no batch in the last round).
    finish(cli_train(spec, tmp_path / "fsdp", "--set", "train.distributed.strategy=fsdp",
                   "--set", "train.distributed.shard_frozen=true", nproc=2))
    expected = _summary(tmp_path / "single")
    assert set(expected) == {"loss/kd", "spread/value", "student/accuracy",
                             "student/agreement/teacher", "teacher/accuracy"}
    cache = load_file(str(tmp_path / "single" / "cache" / "teacher.safetensors"))
    assert cache["logits"].shape == (1437, 10) and cache["features"].shape == (1437, 32)
    for run in ("double", "fsdp"):
        _assert_same_summary(_summary(tmp_path / run), expected)
        shared = load_file(str(tmp_path / run / "cache" / "teacher.safetensors"))
        assert shared.keys() == cache.keys()
        for port, value in cache.items():
            # Each rank ran the teacher on its half; rank 0 wrote the gathered whole.
            torch.testing.assert_close(shared[port], value, rtol=0, atol=1e-6)


def _rank_evaluates(rank: int, folder: str, strategy: str) -> None:
    """One rank of a 2-process gloo job: evaluate once; write the batch sizes the teacher
    and student saw, and the metrics."""
    import torch.distributed as dist

    from dgraph.graph import validate
    from dgraph.runtime.distributed import World
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=2)
    graph, _ = validate(load_spec(Path(folder) / "split_eval.yaml",
                                  [f"train.distributed.strategy={strategy}"]))
    trainer = Trainer(graph, Path(folder) / f"run{rank}", progress=False,
                      log=lambda *_: None, world=World(rank=rank, size=2))
    seen: dict[str, list[int]] = {"teacher": [], "student": []}
    for name, sizes in seen.items():
        trainer.instances.modules[name].register_forward_hook(
            lambda _m, args, kwargs, _o, sizes=sizes: sizes.append(
                int(next(iter(kwargs.values())).shape[0])), with_kwargs=True)
    metrics = trainer.evaluate()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"seen": seen,
                                                               "metrics": metrics}))
    dist.destroy_process_group()
    # As a rank of `dgraph train` does: end without the interpreter's teardown of torch's
    # native state, where a rank once aborted ("terminate called without an active
    # exception") after its work was written (dgraph/cli.py _end_rank).
    from dgraph.cli import _end_rank

    _end_rank()


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_each_rank_evaluates_its_own_batches(tmp_path, strategy):
    """3 held-out batches (128, 128, 104 examples): rank 0 runs batches 0 and 2, rank 1 batch
    1; under FSDP every rank runs the graph in every round (rank 1 runs the last batch again
    and discards its values: the sharded student runs only when all ranks call it), and all
    report one process's numbers."""
    import torch.multiprocessing as mp

    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    (tmp_path / "split_eval.yaml").write_text(SPEC)
    mp.spawn(_rank_evaluates, args=(str(tmp_path), strategy), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["seen"] == {"teacher": [128, 104], "student": [128, 104]}
    again = [] if strategy == "ddp" else [104]
    assert ranks[1]["seen"] == {"teacher": [128, *again], "student": [128, *again]}
    graph, _ = validate(load_spec(tmp_path / "split_eval.yaml", []))
    alone = Trainer(graph, tmp_path / "alone", progress=False, log=lambda *_: None).evaluate()
    for rank in ranks:
        _assert_same_summary(rank["metrics"], alone)


def _lm_files(folder: Path) -> None:
    from dgraph.registry import COMPONENTS, BuildContext, load_plugins
    from dgraph.runtime.checkpoint import save_weights

    load_plugins()
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")[:3000]
    (folder / "small.txt").write_text(text, encoding="utf-8")
    lm = COMPONENTS.get("hf_causal_lm")
    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2,
              "vocab_size": 258, "n_positions": 32, "bos_token_id": 1, "eos_token_id": 1,
              "pad_token_id": 0}
    torch.manual_seed(3)
    teacher = lm(lm.Params(config=config), "teacher").build(BuildContext(node="teacher"))
    save_weights(folder / "teacher.safetensors", teacher.state_dict(), {})


@pytest.mark.slow  # two LM jobs, ~50 s on 2 shared cores
def test_topk_cache_written_in_shares_equals_one_process(tmp_path):
    _lm_files(tmp_path)
    spec = tmp_path / "topk.yaml"
    spec.write_text(TOPK)
    single = cli_train(spec, tmp_path / "single", nproc=1)
    double = cli_train(spec, tmp_path / "double", nproc=2)
    finish(single)
    finish(double)
    one = load_file(str(tmp_path / "single" / "cache" / "topk.safetensors"))
    two = load_file(str(tmp_path / "double" / "cache" / "topk.safetensors"))
    assert one.keys() == two.keys()
    assert one["train.topk_logprobs"].shape[1:] == (16, 4)
    for key, value in one.items():
        assert torch.equal(two[key], value), key
    assert not list((tmp_path / "double" / "cache").glob("*.tmp"))
    _assert_same_summary(_summary(tmp_path / "double"), _summary(tmp_path / "single"))


@pytest.mark.slow  # ~50 s on 2 shared cores
def test_on_policy_sampler_runs_under_two_processes_with_ddp_and_fsdp(tmp_path):
    _lm_files(tmp_path)
    spec = tmp_path / "gkd.yaml"
    spec.write_text(GKD)
    ddp = cli_train(spec, tmp_path / "ddp", nproc=2)
    # A sharded student generates only when every rank does: one coin for the global batch,
    # and the ranks step together until all are done.
    fsdp = cli_train(spec, tmp_path / "fsdp", "--set", "train.distributed.strategy=fsdp",
                  "--set", "nodes.rollout.params.stop_at_eos=true", nproc=2)
    finish(ddp)
    finish(fsdp)
    for run in ("ddp", "fsdp"):
        summary = _summary(tmp_path / run)
        assert set(summary) == {"loss/jsd"} and summary["loss/jsd"] >= 0.0
