"""LLM components: tokenizer/text sources, derived students, sampler, top-k cache, validation."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from dgraph.compiler.dryrun import dry_run
from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.spec import load_spec

load_plugins()

TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 258,
             "n_positions": 128, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}


def make(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), node="test")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny GPT-2 written with save_pretrained (random weights)."""
    from dgraph.components.models.hf import HFCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teacher_hf")
    module = HFCausalLM.create(config=dict(TINY_GPT2, n_layer=3))
    module.model.save_pretrained(str(folder))
    return folder


def test_text_lm_source_chunks_the_shipped_corpus(tmp_path):
    comp = make("text_lm", seq_len=16, prompt_len=4, batch_size=8, max_examples=50,
                tokenizer={"kind": "byte", "save_to": "tok"})
    assert comp.port_params()["vocab_size"] == 258
    source = comp.build(BuildContext(node="data", run_dir=tmp_path))
    train = source.train
    assert train["input_ids"].shape == (50, 16) and train["prompt_ids"].shape == (50, 4)
    assert torch.equal(train["input_ids"][:, 1:], train["targets"][:, :-1])
    assert int(train["input_ids"].max()) < 258 and source.eval is not None
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert tok.decode(train["input_ids"][0].tolist()).startswith("THE TEMPEST")


def test_bpe_tokenizer_and_jsonl_pairs_mask_prompts(tmp_path):
    comp = make("jsonl_pairs", max_len=48, max_prompt_len=24, batch_size=4, truncate=True,
                tokenizer={"kind": "bpe", "vocab_size": 300})
    source = comp.build(BuildContext(node="data", run_dir=tmp_path))
    train = source.train
    assert int(train["input_ids"].max()) < 300
    first = train["loss_mask"][0].nonzero()[0].item()
    assert not train["loss_mask"][0, :first].any() and train["attention_mask"][0, first]
    padded = ~train["attention_mask"]
    assert not (train["loss_mask"] & padded).any()  # padding never counts
    with pytest.raises(Exception, match="vocab_size"):
        make("text_lm", tokenizer={"kind": "bpe"})


def test_derived_student_from_teacher_layers(teacher_dir):
    from dgraph.components.models.hf import hf_config

    comp = make("hf_causal_lm", derive_from=str(teacher_dir), init_layers=[0, 2])
    assert hf_config(comp.params)["n_layer"] == 2 and comp.port_params()["vocab_size"] == 258
    student = comp.build(BuildContext(node="student"))
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), local_files_only=True)
    s, t = student.model.transformer, teacher.transformer
    torch.testing.assert_close(s.h[1].attn.c_attn.weight, t.h[2].attn.c_attn.weight)
    torch.testing.assert_close(s.h[0].mlp.c_fc.weight, t.h[0].mlp.c_fc.weight)
    torch.testing.assert_close(s.wte.weight, t.wte.weight)
    narrow = make("hf_causal_lm", derive_from=str(teacher_dir), num_layers=1, hidden_size=16,
                  num_heads=2)
    assert hf_config(narrow.params)["n_embd"] == 16
    assert narrow.build(BuildContext(node="s")).model.transformer.h[0].ln_1.weight.shape == (16,)
    with pytest.raises(Exception, match="init_layers"):
        make("hf_causal_lm", derive_from=str(teacher_dir), num_layers=3, init_layers=[0])


def test_sampler_generates_from_the_referenced_model(teacher_dir):
    from dgraph.components.models.hf import HFCausalLM

    teacher = make("hf_causal_lm", path=str(teacher_dir)).build(BuildContext(node="t"))
    assert isinstance(COMPONENTS.get("hf_causal_lm"), type(HFCausalLM))
    sampler = make("lm_sampler", source="teacher", max_new_tokens=5, top_k=10, top_p=0.9,
                   stop_at_eos=False)
    assert sampler.references() == {"source": "teacher"}  # an edge of the graph
    module = sampler.build(BuildContext(node="s", references={"source": teacher}))
    assert not list(module.parameters())  # the teacher is used by reference, not owned
    prompts = torch.tensor([[0, 0, 40, 41], [40, 41, 42, 43]])
    mask = prompts != 0
    torch.manual_seed(0)
    out = module(prompt_ids=prompts, prompt_mask=mask)
    assert out["input_ids"].shape == (2, 8) and out["targets"].shape == (2, 8)
    assert out["loss_mask"].sum(1).tolist() == [5, 5]  # only generated tokens count
    assert out["loss_mask"][:, :3].sum() == 0 and out["attention_mask"][0, :2].sum() == 0
    assert torch.equal(out["input_ids"][:, :4], prompts)
    mixed = make("lm_sampler", source="teacher", on_policy=0.0, max_new_tokens=5).build(
        BuildContext(node="s", references={"source": teacher}))
    data = {"input_ids": torch.ones(2, 6, dtype=torch.long),
            "targets": torch.ones(2, 6, dtype=torch.long),
            "attention_mask": torch.ones(2, 6, dtype=torch.bool),
            "loss_mask": torch.ones(2, 6, dtype=torch.bool)}
    passed = mixed(prompt_ids=prompts, prompt_mask=mask, **data)
    assert torch.equal(passed["input_ids"], data["input_ids"])


def test_sampling_draws_from_the_whole_distribution_by_default(teacher_dir):
    """No filter unless the spec sets one: transformers' own default (top-50) would leave
    the tokens outside the 50 most likely never drawn, and GKD's on-policy samples would not
    come from the student's distribution."""
    teacher = make("hf_causal_lm", path=str(teacher_dir)).build(BuildContext(node="t")).eval()
    sampler = make("lm_sampler", source="teacher", max_new_tokens=1).build(
        BuildContext(node="s", references={"source": teacher}))
    n = 4000
    prompts = torch.tensor([[40, 41, 42, 43]]).repeat(n, 1)
    with torch.no_grad():
        probs = teacher(prompts[:1])["logits"][0, -1].softmax(-1)
    outside = torch.ones_like(probs, dtype=torch.bool)
    outside[probs.topk(50).indices] = False
    mass = float(probs[outside].sum())  # what a top-50 filter would never draw
    torch.manual_seed(0)
    drawn = sampler(prompt_ids=prompts)["targets"][:, -1]
    share = float(outside[drawn].double().mean())
    assert mass > 0.3  # a random tiny model: most of the mass is outside the top 50
    assert abs(share - mass) < 4 * (mass * (1 - mass) / n) ** 0.5


def test_topk_cache_round_trip_equals_online_kd(tmp_path, teacher_dir):
    from dgraph.components.data.topk_cache import read_topk_cache, write_topk_cache

    teacher = make("hf_causal_lm", path=str(teacher_dir)).build(BuildContext(node="t")).eval()
    source = make("text_lm", seq_len=12, batch_size=4, max_examples=6,
                  eval_fraction=0.002).build(
        BuildContext(node="d", run_dir=tmp_path))
    path = tmp_path / "cache.safetensors"
    sizes = write_topk_cache(path, teacher, source, k=258, dtype=torch.float32)
    train, evaluation, meta = read_topk_cache(path)
    assert meta["k"] == "258" and evaluation is not None
    assert torch.equal(train["input_ids"], source.train["input_ids"])
    student = torch.randn(6, 12, 258)
    with torch.no_grad():
        online_logits = teacher(input_ids=source.train["input_ids"])["logits"]
    online = make("token_kl", direction="forward").build(BuildContext(node="kl"))(
        student=student, teacher=online_logits, mask=source.train["loss_mask"])
    for mode in ("renormalize", "other"):
        cached = make("token_topk_kl", missing_mass=mode).build(BuildContext(node="topk"))(
            student=student, topk_logprobs=train["topk_logprobs"],
            topk_indices=train["topk_indices"], mask=train["loss_mask"])
        torch.testing.assert_close(cached["loss"], online["loss"], atol=1e-5, rtol=1e-5)
    assert sizes["memory_ratio"] == pytest.approx(4 * 258 / (258 * (4 + 2)))  # fp32 + int16
    small = write_topk_cache(tmp_path / "k16.safetensors", teacher, source, k=16)
    assert small["memory_ratio"] == pytest.approx(4 * 258 / (16 * 4))  # fp16 + int16: 16.1x


def test_training_from_the_cache_never_runs_a_teacher(tmp_path, teacher_dir, monkeypatch):
    from dgraph.components.data import topk_cache
    from dgraph.components.models.hf import HFCausalLM

    from dgraph.runtime.train import Trainer

    overrides = [
        f"nodes.data.params.path={tmp_path / 'c.safetensors'}",
        f"nodes.data.params.teacher={{path: {teacher_dir}}}",
        "nodes.data.params.text={seq_len: 16, batch_size: 4, max_examples: 16, "
        "eval_fraction: 0.005}",
        "nodes.student.params.config={model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, "
        "vocab_size: 258, n_positions: 64}",
        "train.steps=3", "train.eval.every=3", "train.checkpoint_every=3"]
    spec = load_spec("llm_topk", overrides)
    graph, _ = validate(spec)
    assert not any(n.kind == "teacher" for n in graph.nodes.values())
    Trainer(graph, tmp_path / "first", progress=False, log=lambda *_: None)  # writes the cache
    # A component writes only inside its run directory; sharing the cache is the user's move.
    written = tmp_path / "first" / "cache" / "c.safetensors"
    assert written.is_file() and not (tmp_path / "c.safetensors").exists()
    shutil.copyfile(written, tmp_path / "c.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(topk_cache, "write_topk_cache", refuse)
    monkeypatch.setattr(topk_cache, "_teacher_module", refuse)
    calls = []
    original = HFCausalLM.forward

    def spy(self, *args, **kwargs):
        calls.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFCausalLM, "forward", spy)
    (tmp_path / "second").mkdir()
    trainer = Trainer(graph, tmp_path / "second", progress=False, log=lambda *_: None)
    summary = trainer.run()
    assert set(calls) == {id(trainer.instances.modules["student"])}
    assert summary["ppl/perplexity"] > 1.0


def test_7b_teacher_spec_validates_in_seconds_on_meta():
    started = time.perf_counter()
    graph, _ = validate(load_spec("llm_7b_validate"))
    dry_run(graph)
    assert time.perf_counter() - started < 60
    assert tuple(d.size for d in graph.shapes[("teacher", "logits")]) == (4, 2048, 32000)
    student = make("hf_causal_lm", **load_spec("llm_7b_validate").nodes["student"].params)
    with torch.device("meta"):
        module = student.build(BuildContext(node="student", device="meta"))
    params = sum(p.numel() for p in module.parameters())
    assert 0.9e9 < params < 1.4e9


def test_vocabulary_mismatch_is_a_validation_error_naming_both_sizes():
    spec = load_spec("llm_kd", ["nodes.student.params.config.vocab_size=300"])
    with pytest.raises(ValidationError) as info:
        validate(spec)
    spec_file = load_spec("llm_kd").path
    assert str(info.value) == (
        "1 problem found in the spec:\n"
        f"{spec_file}:15:48: error[shape-mismatch]: node 'kd', port 'teacher': dimension "
        "vocab of input 'teacher' is 258 (from teacher.logits) but must be 300 (from "
        "student.logits via input 'student')\n"
        "    expected: Logits[B, T, vocab=300]\n"
        "    found:    [B, T, 258] from teacher.logits\n"
        "    hint: make both sides agree: set 'vocab_size' of 'teacher' to 300, or set "
        "'vocab_size' of 'student' to 258, or use one tokenizer for teacher and student, or "
        "sequence-level KD (lm_sampler + token_ce, see the llm_seqkd spec), or a "
        "vocabulary-alignment component between them")


def test_every_llm_zoo_spec_passes_static_validation():
    for name in ("llm_teacher", "llm_kd", "llm_rkl", "llm_gkd", "llm_seqkd", "llm_topk",
                 "llm_hidden", "llm_7b_validate"):
        validate(load_spec(name))


def test_hidden_state_taps_resolve_on_gpt2_blocks():
    graph, _ = validate(load_spec("llm_hidden"))
    dry_run(graph)
    assert tuple(d.size for d in graph.shapes[("teacher", "model.transformer.h.1")])[-1] == 96
