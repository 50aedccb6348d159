"""End to end on CPU: a small GPT-2-style teacher trained on the shipped corpus, written with
save_pretrained, loaded back through from_pretrained(path), distilled into a smaller student
that beats the same student trained from scratch for the same steps (held-out perplexity)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "llm_kd.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("llm_kd_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.slow  # a quality bar (17 s); the fast tier trains every LLM spec a few steps
def test_kd_student_beats_the_scratch_student(tmp_path):
    bench = _benchmark()
    result = bench.run(tmp_path, bench.TINY)
    # The teacher went through save_pretrained and came back through from_pretrained(path).
    assert (tmp_path / "teacher_hf" / "config.json").is_file()
    assert (tmp_path / "teacher_hf" / "tokenizer.json").is_file()
    resolved = (tmp_path / "llm_kd" / "spec.resolved.yaml").read_text()
    assert str(tmp_path / "teacher_hf") in resolved
    summary = json.loads((tmp_path / "llm_kd" / "summary.json").read_text())
    assert any("perplexity" in key for key in summary)
    assert result["teacher_perplexity"] < result["kd_student_perplexity"]
    assert result["kd_student_perplexity"] < result["scratch_student_perplexity"]
