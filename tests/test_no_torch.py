"""Static validation never imports torch: the spec, registry, graph and CLI layers run without it.

A subprocess installs an import hook that records and refuses every ``torch`` import, then
imports dgraph's declaration layers (every built-in component registers), loads and statically
validates zoo specs, and runs ``dgraph validate --static kd``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    attempts = []


    class RefuseTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError(f"torch is not importable in this test ({name})")
            return None


    sys.meta_path.insert(0, RefuseTorch())
    assert "torch" not in sys.modules

    import dgraph.components
    import dgraph.graph
    import dgraph.registry
    import dgraph.spec
    from dgraph.cli import main

    dgraph.registry.load_plugins()
    assert "mlp" in dgraph.registry.COMPONENTS and "hinton_kd" in dgraph.registry.COMPONENTS
    spec = dgraph.spec.load_spec("kd")
    graph, warnings = dgraph.graph.validate(spec)
    assert (len(graph.nodes), len(graph.edges)) == (5, 7), graph
    for name in dgraph.spec.zoo_names():
        dgraph.graph.validate(dgraph.spec.load_spec(name))
    code = main(["validate", "--static", "kd"])
    assert code == 0, code
    assert main(["validate", "--static", "--json", "kd"]) == 0
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print("attempts:", attempts)
    print("loaded:", loaded)
    """
)


def test_static_validation_runs_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "kd: valid (5 nodes, 7 edges, static checks)"
    assert '"valid": true' in result.stdout
    assert lines[-2:] == ["attempts: []", "loaded: []"]
