"""Start-up of the command line: whole processes, wall and CPU seconds, peak memory.

Jobs (each a fresh process, run in a scratch folder, interleaved round by round):

- ``kd``: ``dgraph train kd --set train.steps=1`` with the teacher run already present (the
  teacher is trained once before the clock starts);
- ``kd+sklearn``: the same run in a process that first imports what the digits source
  imported before it read scikit-learn's data file itself (``sklearn.datasets``,
  ``sklearn.model_selection``): the start-up as it was;
- ``kd-fresh``: in an empty folder, so that ``teacher_digits`` is trained first;
- ``validate-kd``: ``dgraph validate kd``; ``static-kd``: the same with ``--static`` (no torch);
- ``validate7b``: ``dgraph validate llm_7b_validate``;
- ``torch``, ``torch+dynamo``, ``torch+llama``: bare imports, the floors under the jobs
  (every torch.optim step imports ``torch._dynamo``; transformers' Llama modelling imports
  it too; so does torch's first matrix product on the meta device, in a dry run);
- ``torch+dynamo-lean``: the same imports with the collector off and the process ended
  without the interpreter's teardown, as ``dgraph train`` does (dgraph.runtime.collector,
  dgraph.cli._end_process): the floor under ``kd``;
- ``torch+meta-mm``: one ``Linear`` on the meta device (the floor under ``validate-kd``);
- ``llama-dry``: what ``validate7b`` asks of transformers, by hand (both models built on the
  meta device, one forward each): the floor under that job.

Prints, per job, the median of the rounds with min and max, for wall seconds, CPU seconds
(user + system, less sensitive to other processes on a shared machine) and peak resident
memory. ``OMP_NUM_THREADS=1`` unless set.

    python benchmarks/startup.py --rounds 5 [--jobs kd,kd+sklearn,validate-kd,validate7b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_KD = ["-m", "dgraph", "train", "kd", "--set", "train.steps=1", "--quiet"]
_OLD_IMPORTS = ("import sklearn.datasets, sklearn.model_selection, runpy, sys; "
                "sys.argv = ['dgraph', *sys.argv[1:]]; "
                "runpy.run_module('dgraph', run_name='__main__')")
# What `validate llm_7b_validate` asks of transformers, written by hand: both Llama configs
# built on the meta device and one [4, 2048] forward each (the floor under that job).
_LLAMA_DRY = """
import torch
from transformers import AutoConfig, AutoModelForCausalLM
teacher = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
student = {**teacher, "num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 5632}
with torch.device("meta"):
    for settings in (teacher, student):
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **settings),
                                              attn_implementation="eager")
        ids = torch.zeros(4, 2048, dtype=torch.long)
        lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
"""
JOBS: dict[str, list[str]] = {
    "kd": [*_KD, "--overwrite"],
    "kd+sklearn": ["-c", _OLD_IMPORTS, *_KD[2:], "--overwrite"],
    "kd-fresh": _KD,
    "validate-kd": ["-m", "dgraph", "validate", "kd"],
    "static-kd": ["-m", "dgraph", "validate", "--static", "kd"],
    "validate7b": ["-m", "dgraph", "validate", "llm_7b_validate"],
    "torch": ["-c", "import torch"],
    "torch+dynamo": ["-c", "import torch, torch._dynamo"],
    "torch+dynamo-lean": ["-c", "import gc, os; gc.disable(); import torch, torch._dynamo; "
                          "os._exit(0)"],
    "torch+llama": ["-c", "import torch; from transformers.models.llama import modeling_llama"],
    "llama-dry": ["-c", _LLAMA_DRY],
    "torch+meta-mm": ["-c", "import torch; torch.nn.Linear(64, 8, device='meta')"
                      "(torch.empty(4, 64, device='meta'))"],
}


def run_once(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak MB) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({process.returncode}):\n{errors}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", default="kd,validate-kd,validate7b,torch,torch+dynamo,"
                        "llama-dry",
                        help=f"comma-separated, of: {', '.join(JOBS)}")
    options = parser.parse_args()
    jobs = [j for j in options.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown jobs {unknown}; known: {', '.join(JOBS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, list[tuple[float, float, float]]] = {j: [] for j in jobs}
    with tempfile.TemporaryDirectory(prefix="dgraph-startup-") as scratch:
        warm = Path(scratch) / "warm"
        warm.mkdir()
        if any(j.startswith("kd") and j != "kd-fresh" for j in jobs):
            run_once(JOBS["kd-fresh"], warm)  # trains teacher_digits once, off the clock
        for _ in range(options.rounds):
            for job in jobs:
                where = warm
                if job == "kd-fresh":
                    where = Path(tempfile.mkdtemp(dir=scratch))
                results[job].append(run_once(JOBS[job], where))
                if job == "kd-fresh":
                    shutil.rmtree(where)
    print(f"{options.rounds} interleaved rounds, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}; median (min-max)")
    print(f"{'job':<14} {'wall s':>18} {'CPU s':>18} {'peak MB':>8}")
    for job, rows in results.items():
        cells = []
        for column in range(2):
            values = [r[column] for r in rows]
            cells.append(f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})")
        peak = max(r[2] for r in rows)
        print(f"{job:<14} {cells[0]:>18} {cells[1]:>18} {peak:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
