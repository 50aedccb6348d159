"""Third-party component types: a real plug-in distribution, duplicates and broken plug-ins.

The plug-in in tests/plugins/dgraph_plugin_demo/ declares the entry point group
``dgraph.components``; it is pip-installed (from a copy, so the source folder stays clean) for
this module's tests and uninstalled afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import dgraph.registry
from dgraph.cli import main
from dgraph.errors import PluginError, RegistryError
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, Component, Registry, component, load_plugins

load_plugins()  # the built-in types, before the demo plug-in is installed

PLUGIN = Path(__file__).parent / "plugins" / "dgraph_plugin_demo"
DIST = "dgraph-plugin-demo"

DEMO_SPEC = """\
dgraph: 1
name: demo
nodes:
  data:
    kind: data
    type: toy2d
    params: {batch_size: 16}
  student:
    kind: student
    type: mlp_map
    params: {in_features: 2, hidden: [8], out_features: 2}
    inputs: {x: data.x}
  l1:
    kind: loss
    type: demo_l1
    params: {scale: 0.5}
    inputs: {prediction: student.y, target: data.x}
updates:
  main:
    params: [student]
    objective: {l1: 1.0}
"""

DEMO_BLOCK = """\
demo_l1  [loss]  (dgraph_plugin_demo.demo_l1)
    Mean absolute error between two tensors of the same shape, times ``scale``.
  inputs:
    prediction: Tensor[B, ...]  predicted values
    target: Tensor[B, ...]  target values (same shape)
  outputs:
    loss: Scalar[*]  scaled mean absolute error
  params:
    scale: float = default 1.0, > 0.0  multiplies the mean absolute error
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DGRAPH_DEBUG"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=300, env=_env())


def run_dgraph(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dgraph.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=_env())


@pytest.fixture(scope="module")
def demo_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo plug-in, pip-installed into this environment for the module's tests."""
    source = tmp_path_factory.mktemp("plugin") / "dgraph_plugin_demo"
    shutil.copytree(PLUGIN, source)
    result = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield source
    finally:
        result = _pip("uninstall", "-y", "-q", DIST)
        assert result.returncode == 0, result.stdout + result.stderr


# -- a real installed plug-in (checked in fresh processes) --------------------------------


def test_list_loss_shows_the_plugin_type(demo_plugin: Path) -> None:
    result = run_dgraph("list", "loss")
    assert (result.returncode, result.stderr) == (0, "")
    blocks = result.stdout.split("\n\n")
    assert DEMO_BLOCK.rstrip("\n") in blocks
    assert "hinton_kd  [loss]" in result.stdout  # the built-in types are still there


def test_a_spec_using_the_plugin_validates(demo_plugin: Path, tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(DEMO_SPEC, encoding="utf-8")
    result = run_dgraph("validate", "demo.yaml", cwd=tmp_path)  # static checks and the dry run
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "demo: valid (3 nodes, 3 edges, static checks and meta-device dry run)\n")


def test_plugin_params_are_checked_like_builtin_ones(demo_plugin: Path, tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(DEMO_SPEC.replace("scale: 0.5", "scael: 0.5"),
                                        encoding="utf-8")
    result = run_dgraph("validate", "--static", "demo.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == textwrap.dedent("""\
        demo.yaml:16:14: error[unknown-param]: node 'l1': component type 'demo_l1' has no \
parameter 'scael'
            expected: one of: scale
            found:    scael: 0.5
            hint: did you mean 'scale'?
        1 error: the spec is not valid
        """)


def test_schema_knows_the_plugin_type(demo_plugin: Path) -> None:
    result = run_dgraph("schema")
    assert result.returncode == 0
    assert '"demo_l1"' in result.stdout


# -- registration errors (in this process) ------------------------------------------------


def test_registering_a_taken_name_raises_registry_error() -> None:
    class Duplicate(Component):
        """Another 'mlp'."""

        roles = ("model",)
        outputs = {"y": Port("Features", "B, F")}

    with pytest.raises(RegistryError) as exc:
        component("mlp")(Duplicate)
    origin = f"{Duplicate.__module__}.{Duplicate.__qualname__}"
    assert str(exc.value) == (
        "component type 'mlp' is already registered (by dgraph.components.models.mlp.MLP); "
        f"refusing the second registration from {origin}. Rename one of them: registering a "
        "name twice would silently replace it.")
    assert COMPONENTS.get("mlp").__name__ == "MLP"


def test_registry_refuses_duplicates_and_suggests_names() -> None:
    widgets: Registry[object] = Registry("widget")
    first, second = object(), object()
    assert widgets.register("gear", first, origin="pkg.a") is first
    assert widgets.register("gear", first, origin="pkg.a") is first  # the same object: a no-op
    with pytest.raises(RegistryError) as exc:
        widgets.register("gear", second, origin="pkg.b")
    assert str(exc.value) == (
        "widget 'gear' is already registered (by pkg.a); refusing the second registration "
        "from pkg.b. Rename one of them: registering a name twice would silently replace it.")
    with pytest.raises(RegistryError) as exc:
        widgets.get("gaer")
    assert str(exc.value) == "unknown widget 'gaer'; did you mean 'gear'?"


def test_a_badly_declared_component_is_refused() -> None:
    class BadPort(Component):
        roles = ("loss",)
        inputs = {"x": Port("Logitz", "B, C")}

    with pytest.raises(RegistryError) as exc:
        component("demo_bad_port")(BadPort)
    assert str(exc.value).startswith(
        "component type 'demo_bad_port': input port 'x' has unknown semantic type 'Logitz' "
        "(known: Tensor, Features,")
    assert "demo_bad_port" not in COMPONENTS


class FakeEntryPoint:
    """Enough of importlib.metadata.EntryPoint for load_plugins' error path."""

    def __init__(self, name: str, value: str, error: Exception) -> None:
        self.name, self.value, self.error, self.dist = name, value, error, None

    def load(self) -> None:
        raise self.error


def fake_entry_points(*entries: FakeEntryPoint):
    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == "dgraph.components"
        return list(entries)

    return SimpleNamespace(entry_points=entry_points)


def test_a_broken_plugin_raises_plugin_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeEntryPoint("broken", "dgraph_broken_plugin",
                            ModuleNotFoundError("No module named 'numpyy'"))
    monkeypatch.setattr(dgraph.registry, "metadata", fake_entry_points(broken))
    with pytest.raises(PluginError) as exc:
        load_plugins(force=True)
    assert str(exc.value) == (
        "the dgraph plug-in 'broken' (dgraph_broken_plugin) failed to load: "
        "ModuleNotFoundError: No module named 'numpyy'. Fix or uninstall that package.")
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)


def test_a_broken_plugin_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeEntryPoint("broken", "broken_mod:setup", RuntimeError("boom"))
    broken.dist = SimpleNamespace(name="broken-dist")
    monkeypatch.setattr(dgraph.registry, "metadata", fake_entry_points(broken))
    with pytest.raises(PluginError) as exc:
        load_plugins(force=True)
    assert str(exc.value) == (
        "the dgraph plug-in 'broken' (broken_mod:setup, from the package 'broken-dist') failed "
        "to load: RuntimeError: boom. Fix or uninstall that package.")


def test_a_plugin_registering_a_taken_name_keeps_the_registry_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = RegistryError("component type 'mlp' is already registered (by ...)")
    monkeypatch.setattr(dgraph.registry, "metadata",
                        fake_entry_points(FakeEntryPoint("dup", "dup_mod", error)))
    with pytest.raises(RegistryError) as exc:
        load_plugins(force=True)
    assert exc.value is error


def test_cli_reports_a_broken_plugin_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = FakeEntryPoint("broken", "dgraph_broken_plugin", ImportError("bad wheel"))
    monkeypatch.setattr(dgraph.registry, "metadata", fake_entry_points(broken))
    monkeypatch.setattr(dgraph.registry, "_loaded", False)
    assert main(["list", "loss"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "error: the dgraph plug-in 'broken' (dgraph_broken_plugin) failed to load: "
        "ImportError: bad wheel. Fix or uninstall that package.\n")
