"""Held-out evaluation shared out across ranks: the time of one evaluation with 1 and with 2
processes (gloo, CPU), and that both report the same numbers.

The spec: digits with 90 % held out (1617 examples), a wide MLP teacher (3 x 2048) and student
(2 x 1024), KD loss, evaluated in batches of 16 (102 batches); the median of 3 evaluations on
rank 0 after a warm-up. Run: ``OMP_NUM_THREADS=1 python benchmarks/dist_eval.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
dgraph: 1
name: dist_eval_bench
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32, test_fraction: 0.9}}
  teacher:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [2048, 2048, 2048], num_classes: 10}
    inputs: {x: data.x}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [1024, 1024], num_classes: 10}
    inputs: {x: data.x}
  kd: {kind: loss, type: hinton_kd, inputs: {student: student.logits, teacher: teacher.logits}}
updates:
  main: {params: [student], objective: {kd: 1.0}}
train: {steps: 1, eval: {every: 1, batch_size: 16}, seed: 0}
"""


def worker(spec: str, out: str) -> None:
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    graph, _ = validate(load_spec(Path(spec), []))
    rank = int(os.environ.get("RANK", "0"))
    trainer = Trainer(graph, Path(out) / f"rank{rank}", progress=False, log=lambda *_: None)
    trainer.evaluate()  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = trainer.evaluate()
        times.append(time.perf_counter() - start)
    if rank == 0:
        print(json.dumps({"seconds": sorted(times)[1], "metrics": result}))


def main() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(SPEC)
        found = {}
        for nproc in (1, 2):
            done = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={nproc}", __file__, "--worker", str(spec), tmp],
                env=env, capture_output=True, text=True, check=True)
            found[nproc] = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = found[1], found[2]
    print(f"eval of 1617 held-out digits in 102 batches: 1 process {one['seconds']:.3f} s, "
          f"2 processes {two['seconds']:.3f} s (x{one['seconds'] / two['seconds']:.2f})")
    for key, value in one["metrics"].items():
        print(f"  {key}: 1 process {value:.6f}, 2 processes {two['metrics'][key]:.6f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
