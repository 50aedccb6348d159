"""Validating the 7B-teacher spec (``llm_7b_validate``): seconds and memory.

The spec's teacher is Llama-2-7B-sized (hidden 4096, 32 layers, vocabulary 32000) and its
student a ~1.1B model derived from that config. Validation = static checks + the dry run,
which builds both transformers models on torch's meta device and pushes [4, 2048] tokens
through them: no weights are allocated. Prints the wall time of the validation and the peak
resident memory of the process (which includes importing torch and transformers).

    python benchmarks/validate_llm.py
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    import torch  # noqa: F401  (imports are not part of the measured validation)
    import transformers  # noqa: F401

    from dgraph.compiler.dryrun import dry_run
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    started = time.perf_counter()
    graph, _ = validate(load_spec("llm_7b_validate"))
    dry_run(graph)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    shapes = {f"{n}.{p}": tuple(d.size for d in s) for (n, p), s in graph.shapes.items()
              if p == "logits" and s is not None}
    teacher_params = 6.74e9
    print(f"validated llm_7b_validate (teacher ~{teacher_params / 1e9:.1f}B params, vocab "
          f"32000; logits {shapes}) in {seconds:.2f} s")
    print(f"peak resident memory of the whole process: {peak_gb:.2f} GB (limit 2 GB)")
    return 0 if seconds < 60 and peak_gb < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
