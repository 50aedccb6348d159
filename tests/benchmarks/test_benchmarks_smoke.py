"""Smoke runs of the benchmark scripts: each runs with --quick and prints its ratio line.

The numbers are not checked (they come from whatever machine runs the tests); only that every
script runs end to end on CPU and reports what it measures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def _run(script: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(300)
def test_overhead_quick_prints_ratios():
    out = _run("overhead.py")
    for config in ("tiny", "realistic", "adversarial_toy"):
        assert re.search(rf"\[{config}\] ratio dgraph/hand: median {NUMBER} "
                         rf"\(min {NUMBER}, max {NUMBER}\)", out), out
        assert re.search(rf"\[{config}\] dgraph {NUMBER} ms/step, hand {NUMBER} ms/step", out)
        # Same weights, same batches, same maths: the two loops end with the same weights.
        assert re.search(rf"\[{config}\] .*trained weights after [0-9]+ steps: identical", out)


@pytest.mark.timeout(300)
def test_teacher_cache_quick_prints_ratio_and_bound():
    out = _run("teacher_cache.py")
    assert re.search(rf"ratio no-cache/cache: median {NUMBER}x \(min {NUMBER}, max {NUMBER}\); "
                     rf"Amdahl bound {NUMBER}x", out), out
    assert re.search(rf"one-time cache fill: {NUMBER} s", out), out
    losses = re.search(rf"first step total loss: no cache ({NUMBER}), cache ({NUMBER})", out)
    assert losses and abs(float(losses.group(1)) - float(losses.group(2))) < 1e-4, out


@pytest.mark.timeout(300)
def test_validate_scale_quick_prints_ratio():
    out = _run("validate_scale.py")
    assert re.search(r"spec: 200 nodes", out), out
    assert re.search(rf"median over [0-9]+ runs: load_spec {NUMBER} ms, validate {NUMBER} ms",
                     out), out
    assert re.search(rf"ratio total/goal: {NUMBER}", out), out


@pytest.mark.timeout(300)
def test_layer_calls_quick_prints_every_variant():
    out = _run("layer_calls.py")
    for group, variant in (("kd pair", "mlp (call_plain)"), ("kd pair", "flat nn.Sequential"),
                           ("kd pair", "mlp, layers as modules"),
                           ("policy", "mlp_policy (call_plain)"),
                           ("policy", "actor, critic as modules")):
        assert re.search(rf"\| {group} \| {re.escape(variant)} \| {NUMBER} \| {NUMBER} "
                         rf"\({NUMBER}-{NUMBER}\) \|", out), out


@pytest.mark.timeout(300)
def test_optimizer_kernels_quick_prints_both_tables():
    out = _run("optimizer_kernels.py")
    for kind in ("adam", "adamw", "sgd"):  # --quick: the tiny student's parameters only
        assert re.search(rf"\| tiny \| {kind} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| "
                         rf"{NUMBER} \| {NUMBER} \|", out), out
    assert re.search(rf"\| tiny \| {NUMBER} \| {NUMBER} \| {NUMBER} \|", out), out
