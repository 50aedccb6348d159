"""Start-up cost: what the command line imports. Checked in fresh processes, since the test
process has imported everything already. Timings are in benchmarks/startup.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dgraph.errors import RegistryError

# Never needed to train a digits spec: scikit-learn (its data file is read directly), SciPy
# (scikit-learn's), the Hugging Face, ONNX and TensorBoard-server stacks, matplotlib, pandas.
NOT_FOR_DIGITS = ("sklearn", "scipy", "transformers", "diffusers", "peft", "onnx",
                  "onnxruntime", "onnxscript", "matplotlib", "pandas", "networkx")
# The built-in modules that declare the types of `kd` and `teacher_digits`.
KD_MODULES = {"dgraph.components.data.digits", "dgraph.components.models.mlp",
              "dgraph.components.losses.kl", "dgraph.components.losses.classification"}
# TensorBoard's writer stack (torch.utils.tensorboard imports tensorboard.summary, its
# TensorFlow stub and through it boto3): dgraph writes event files itself.
TB_WRITER = ("torch.utils.tensorboard", "tensorboard.summary",
             "tensorboard.compat.tensorflow_stub", "boto3", "botocore")


def _component_modules(modules: set[str]) -> set[str]:
    """The public built-in component modules among ``modules`` (not the packages)."""
    import dgraph.components

    public = set(dgraph.components.module_names())
    packages = {m.rsplit(".", 1)[0] for m in public}
    return {m for m in modules if m in public and m not in packages}


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


def test_a_kd_run_imports_only_what_it_uses(tmp_path: Path) -> None:
    """Neither scikit-learn nor the model hubs, only the component modules of its types, and
    not TensorBoard's writer stack (dgraph writes the event files itself)."""
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
    # Only the component modules the specs use, and no TensorBoard writer stack.
    assert _component_modules(modules) == KD_MODULES
    assert [p for p in TB_WRITER if _loaded(modules, p)] == []
    assert "dgraph.runtime.events" in modules
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "kd" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/kd")] == [1]
    assert events.Tags()["images"] == ["graph"]


# -- component modules: imported when a spec names one of their types ---------------------


def test_validating_kd_imports_its_modules_and_listing_imports_every_one(tmp_path: Path) -> None:
    code = ("from dgraph.cli import main\n"
            "assert main(['validate', '--static', 'kd']) == 0\n")
    assert _component_modules(_modules_after(code, tmp_path)) == KD_MODULES
    import dgraph.components

    code = ("import contextlib, io\n"
            "from dgraph.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['list']) == 0\n")
    modules = _modules_after(code, tmp_path)
    assert set(dgraph.components.module_names()) <= modules


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_component_index_is_what_a_full_import_registers() -> None:
    """components/_index.py is current: regenerate it with
    ``python -m dgraph.components._index`` when this fails."""
    import dgraph.components

    text = _fresh("import dgraph.components as c, sys\n"
                  "from dgraph.registry import builtin_index, render_builtin_index\n"
                  "sys.stdout.write(render_builtin_index(builtin_index(), c.module_names()))\n")
    index_file = Path(dgraph.components.__file__).parent / "_index.py"
    assert index_file.read_text(encoding="utf-8") == text, (
        "components/_index.py is stale: run `python -m dgraph.components._index`")


def test_dgraph_list_shows_every_type_of_the_index() -> None:
    from dgraph.components import _index

    listed = _fresh("import contextlib, io, json\n"
                    "from dgraph.cli import main\n"
                    "out = io.StringIO()\n"
                    "with contextlib.redirect_stdout(out):\n"
                    "    assert main(['list']) == 0\n"
                    "print(json.dumps([line.split()[0] for line in out.getvalue().splitlines()\n"
                    "                  if line and not line[0].isspace()]))\n")
    names = set(json.loads(listed))
    indexed = {name for names in _index.INDEX.values() for name in names}
    assert indexed <= names
    assert "hinton_kd" in names and "mlp" in names


# -- the lazy registry, on a registry of its own ------------------------------------------


@pytest.fixture
def lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registry armed with an index over two modules of a package in tmp_path."""
    from dgraph.registry import _ComponentRegistry

    package = tmp_path / "boot2_lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("REG = None\n")
    for module, names in (("first", ("alpha", "beta")), ("second", ("gamma",))):
        body = "".join(f"REG.register({n!r}, {n!r}, origin={module!r})\n" for n in names)
        (package / f"{module}.py").write_text("from boot2_lazy_pkg import REG\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("boot2_lazy_pkg")]:
        monkeypatch.delitem(sys.modules, name)
    import boot2_lazy_pkg

    registry = _ComponentRegistry("widget")
    boot2_lazy_pkg.REG = registry
    imported: list[str] = []

    def import_all() -> None:
        imported.append("all")
        for module in ("boot2_lazy_pkg.first", "boot2_lazy_pkg.second"):
            __import__(module)

    registry.arm({"alpha": "boot2_lazy_pkg.first", "beta": "boot2_lazy_pkg.first",
                  "gamma": "boot2_lazy_pkg.second"}, import_all)
    yield registry, imported
    for name in [m for m in sys.modules if m.startswith("boot2_lazy_pkg")]:
        del sys.modules[name]


def test_asking_for_a_type_imports_only_its_module(lazy) -> None:
    registry, imported = lazy
    assert registry.get("beta") == "beta"
    assert "boot2_lazy_pkg.first" in sys.modules
    assert "boot2_lazy_pkg.second" not in sys.modules
    assert "alpha" in registry and imported == []
    assert registry.origin("gamma") == "second"
    assert imported == []


def test_an_unknown_name_or_a_listing_imports_every_module(lazy) -> None:
    registry, imported = lazy
    assert "delta" not in registry
    assert imported == ["all"]
    with pytest.raises(RegistryError) as exc:
        registry.get("gamme")
    assert str(exc.value) == "unknown widget 'gamme'; did you mean 'gamma'?"
    assert imported == ["all"]  # once


def test_listing_the_types_imports_every_module(lazy) -> None:
    registry, imported = lazy
    assert list(registry) == ["alpha", "beta", "gamma"] and len(registry) == 3
    assert [name for name, _ in registry.items()] == ["alpha", "beta", "gamma"]
    assert imported == ["all"]


def test_taking_an_indexed_name_is_refused_as_if_every_module_were_imported(lazy) -> None:
    registry, _ = lazy
    with pytest.raises(RegistryError) as exc:
        registry.register("gamma", "another", origin="plugin.mod")
    assert str(exc.value) == (
        "widget 'gamma' is already registered (by second); refusing the second registration "
        "from plugin.mod. Rename one of them: registering a name twice would silently replace "
        "it.")


def test_a_module_missing_from_the_index_is_imported_up_front(tmp_path: Path) -> None:
    """A new component file is found without regenerating the index."""
    out = _fresh("import sys\n"
                 "from dgraph.components import _index\n"
                 "_index.MODULES = tuple(m for m in _index.MODULES if not m.endswith('.toy2d'))\n"
                 "from dgraph.registry import load_plugins\n"
                 "load_plugins()\n"
                 "print('dgraph.components.data.toy2d' in sys.modules,\n"
                 "      'dgraph.components.data.digits' in sys.modules)\n")
    assert out.split() == ["True", "False"]


# -- TensorBoard event files ------------------------------------------------------------


def test_crc32c_matches_the_reference_values() -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from dgraph.runtime.events import crc32c, masked_crc32c

    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == reference(data)


def _records(folder: Path) -> list[Any]:
    """The events of the one file in ``folder``, framing and checksums checked."""
    from tensorboard.compat.proto import event_pb2

    from dgraph.runtime.events import masked_crc32c

    (path,) = folder.iterdir()
    data = path.read_bytes()
    events, at = [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
        body = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == \
            masked_crc32c(body)
        event = event_pb2.Event.FromString(body)
        event.wall_time = 0
        event.ClearField("source_metadata")
        events.append(event)
        at += 16 + length
    return events


def test_event_writer_writes_what_summary_writer_writes(tmp_path: Path) -> None:
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from dgraph.runtime.events import EventWriter

    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3) * 2
    ours = EventWriter(tmp_path / "ours", purge_step=4)
    theirs = SummaryWriter(str(tmp_path / "theirs"), purge_step=4)
    for writer in (ours, theirs):
        writer.add_scalar("loss/kd", 0.25, 4)
        writer.add_scalar("loss/nan", float("nan"), 5)
        writer.add_text("graph", "```mermaid\ngraph LR\n```", 0)
    ours.add_image("graph", image, 3)
    theirs.add_image("graph", image, 3, dataformats="HWC")
    ours.close()
    theirs.close()
    mine, reference = _records(tmp_path / "ours"), _records(tmp_path / "theirs")
    assert [str(e) for e in mine] == [str(e) for e in reference]
    assert len(mine) == 7 and mine[1].step == 4 and mine[2].session_log.status == 1
