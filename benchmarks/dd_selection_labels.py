"""Dataset quantization (`dd_quantization`) and committee soft labels (`dd_committee`) against
random real images, at 1 and 10 images per class.

Each spec is trained (one step: the selection and the committee run at its evaluation) with
``train.seed`` = seed and ``nodes.syn.params.images_per_class`` = ipc; its ``dd_evaluator``
nodes report the test accuracy of fresh networks (an MLP and the ConvNet, evaluation seeds
0, 1, 2) trained only on the set and on as many random real images per class. The run the
specs read (``teacher_digits_cnn``, the feature network) is trained once first, outside the
timing. Prints one line per run and the means over seeds; wall time is the whole run
(selection, committee and both evaluations).

    OMP_NUM_THREADS=1 python benchmarks/dd_selection_labels.py            # seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/dd_selection_labels.py --seeds 0 --ipc 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgraph.api import train

QUIET = {"progress": False, "log": lambda _m: None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ipc", default="1,10", help="images per class, comma-separated")
    parser.add_argument("--specs", default="dd_quantization,dd_committee")
    parser.add_argument("--set", action="append", default=[], help="extra overrides")
    parser.add_argument("--runs", default=None, help="folder of the runs (default: a temp)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ipcs = [int(s) for s in args.ipc.split(",") if s.strip()]
    specs = [s for s in args.specs.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        # The run read by the specs, trained once (not timed).
        if not (runs / "teacher_digits_cnn" / "final").is_dir():
            train("teacher_digits_cnn", out=runs / "teacher_digits_cnn", **QUIET)
        table: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for spec in specs:
            for ipc in ipcs:
                for seed in seeds:
                    out = runs / f"{spec}_ipc{ipc}_seed{seed}"
                    start = time.perf_counter()
                    summary = train(spec, out=out, overwrite=True, overrides=[
                        f"train.seed={seed}", f"nodes.syn.params.images_per_class={ipc}",
                        *args.set], **QUIET)
                    wall = time.perf_counter() - start
                    row = (summary["synthetic/accuracy"], summary["random_real/accuracy"], wall)
                    table.setdefault((spec, ipc), []).append(row)
                    detail = " ".join(f"{k}={v:.4f}" for k, v in sorted(summary.items())
                                      if "@" in k and "std" not in k)
                    print(f"{spec} ipc={ipc} seed={seed}: set {row[0]:.4f} random_real "
                          f"{row[1]:.4f} wall {wall:.1f}s  [{detail}]", flush=True)
        print(f"means over seeds {seeds}:")
        for (spec, ipc), rows in table.items():
            mean = [statistics.fmean(col) for col in zip(*rows, strict=True)]
            std = statistics.stdev([r[0] for r in rows]) if len(rows) > 1 else 0.0
            print(f"  {spec:16s} ipc={ipc:<3d} set {mean[0]:.4f} +- {std:.4f}  random_real "
                  f"{mean[1]:.4f}  wall {mean[2]:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
