"""Imports go one way: every module of dgraph/ imports only from its own layer or below.

Each module is parsed with ``ast`` (nothing is imported), and every import of a dgraph module,
at the top or inside a function, is checked against the layer table below. A new module must
be placed in the table; a failure lists each offending import with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dgraph"

# Lowest first. A module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Tables and errors every layer uses; they import nothing from dgraph.
    ("foundation", ("dgraph", "dgraph.errors", "dgraph.kinds")),
    # The file a user writes: pydantic models, YAML, overrides, the zoo.
    ("spec", ("dgraph.spec",)),
    # Component declarations, typed ports, what a data component builds, the JSON schema.
    ("registry", ("dgraph.registry", "dgraph.ports", "dgraph.declare", "dgraph._torch_declare",
                  "dgraph.data", "dgraph.schema")),
    ("graph", ("dgraph.graph",)),
    ("compiler", ("dgraph.compiler",)),
    ("runtime", ("dgraph.runtime",)),
    # Drawing needs only the graph, but sits above the runtime so the runtime cannot import it
    # (the entry points draw and hand the pictures to the run).
    ("viz", ("dgraph.viz",)),
    # Plug-ins mapped into the dgraph namespace (components/, exporters/): above the core.
    ("plug-ins", ("dgraph.components", "dgraph.exporters")),
    # The search over specs (dgraph sweep) runs trials through the api, beside the cli.
    ("entry points", ("dgraph.api", "dgraph.cli", "dgraph.__main__", "dgraph.search")),
]


def _layer_of(module: str) -> int | None:
    """The index of the layer ``module`` belongs to (its longest matching prefix)."""
    best: tuple[int, int] | None = None
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0] if best is not None else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(source: str, module: str, *, package: bool = False) -> list[tuple[int, str]]:
    """(line, imported dgraph module) for every import in ``source``, the text of ``module``
    (``package``: an ``__init__.py``), relative imports resolved."""
    tree = ast.parse(source)
    here = module if package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from dgraph import viz` imports the module dgraph.viz.
            names = [f"{target}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name if _is_module(name) else target) for name in names]
    return sorted((line, name) for line, name in found if name == "dgraph" or
                  name.startswith("dgraph."))


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / relative).is_dir() or (root / relative).with_suffix(".py").is_file()


def _modules() -> list[tuple[Path, str]]:
    return [(path, _module_name(path)) for path in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_has_a_layer():
    unplaced = [f"{path.relative_to(PACKAGE.parent)} ({module})" for path, module in _modules()
                if _layer_of(module) is None]
    assert not unplaced, ("modules missing from LAYERS in tests/test_layers.py; place each in "
                          "its layer: " + ", ".join(unplaced))


def _wrong_imports(files: list[tuple[str, str, str]]) -> list[str]:
    """One line per import against the layer order, for (file, module, source) triples."""
    wrong = []
    for file, module, source in files:
        own = _layer_of(module)
        if own is None:
            continue  # reported by test_every_module_has_a_layer
        for line, imported in _imports(source, module, package=file.endswith("__init__.py")):
            layer = _layer_of(imported)
            if layer is None:
                wrong.append(f"{file}:{line}: {module} imports {imported}, which is in no layer")
            elif layer > own:
                wrong.append(f"{file}:{line}: {module} ({LAYERS[own][0]}) imports {imported} "
                             f"({LAYERS[layer][0]}), a layer above it")
    return wrong


def test_imports_go_one_way():
    files = [(str(path.relative_to(PACKAGE.parent)), module, path.read_text(encoding="utf-8"))
             for path, module in _modules()]
    wrong = _wrong_imports(files)
    order = " < ".join(name for name, _ in LAYERS)
    assert not wrong, (f"{len(wrong)} import(s) against the layer order ({order}):\n"
                       + "\n".join(wrong))


@pytest.mark.parametrize("source,expected", [
    ("from dgraph.viz import render\n", ["dgraph.viz"]),
    ("def f():\n    from dgraph.viz.raster import to_image\n", ["dgraph.viz.raster"]),
    ("import dgraph.runtime.train\n", ["dgraph.runtime.train"]),
    ("from dgraph import viz\n", ["dgraph.viz"]),
    ("from .. import viz\n", ["dgraph.viz"]),
    ("from ..viz import render\n", ["dgraph.viz"]),
    ("from . import step\n", ["dgraph.runtime.step"]),
    ("import torch\nfrom typing import Any\n", []),
])
def test_the_check_sees_every_form_of_import(source, expected):
    found = [name for _line, name in _imports(source, "dgraph.runtime.example")]
    assert found == expected


def test_a_wrong_way_import_is_reported_with_its_file_and_line():
    files = [
        ("dgraph/runtime/example.py", "dgraph.runtime.example",
         "import torch\n\nfrom dgraph.graph import Graph\n\n\ndef draw(graph):\n"
         "    from dgraph.viz import render\n    return render(graph, 'svg')\n"),
        ("dgraph/compiler/example.py", "dgraph.compiler.example",
         "from dgraph.runtime.data import BatchLoader\nfrom dgraph.data import DataSource\n"),
    ]
    assert _wrong_imports(files) == [
        "dgraph/runtime/example.py:7: dgraph.runtime.example (runtime) imports dgraph.viz "
        "(viz), a layer above it",
        "dgraph/compiler/example.py:1: dgraph.compiler.example (compiler) imports "
        "dgraph.runtime.data (runtime), a layer above it",
    ]
