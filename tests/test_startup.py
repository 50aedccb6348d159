"""Start-up cost: what the command line imports. Checked in fresh processes, since the test
process has imported everything already. Timings are in benchmarks/startup.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Never needed to train a digits spec: scikit-learn (its data file is read directly), SciPy
# (scikit-learn's), the Hugging Face, ONNX and TensorBoard-server stacks, matplotlib, pandas.
NOT_FOR_DIGITS = ("sklearn", "scipy", "transformers", "diffusers", "peft", "onnx",
                  "onnxruntime", "onnxscript", "matplotlib", "pandas")


def _modules_after(code: str, cwd: Path) -> set[str]:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _loaded(modules: set[str], package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


def test_importing_the_cli_imports_no_heavy_package(tmp_path: Path) -> None:
    modules = _modules_after("import dgraph.cli", tmp_path)
    heavy = [p for p in ("torch", "numpy", "pydantic", "networkx", "rich", *NOT_FOR_DIGITS)
             if _loaded(modules, p)]
    assert heavy == []


def test_a_kd_run_imports_neither_sklearn_nor_the_model_hubs(tmp_path: Path) -> None:
    code = (
        "import contextlib, io\n"
        "from dgraph.cli import main\n"
        "for name in ('teacher_digits', 'kd'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(['train', name, '--set', 'train.steps=1', '--quiet']) == 0\n")
    modules = _modules_after(code, tmp_path)
    assert (tmp_path / "runs" / "kd" / "summary.json").is_file()
    assert "dgraph.components.data.digits" in modules and "torch" in modules
    assert [p for p in NOT_FOR_DIGITS if _loaded(modules, p)] == []
