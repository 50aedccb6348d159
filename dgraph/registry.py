"""One generic registry, the component declaration base class, and plug-in discovery.

A component type declares its roles, a pydantic model of its parameters and typed ports.
Declarations import no torch; :meth:`Component.build` imports it when a graph is compiled.
Third-party types arrive through the ``dgraph.components`` entry-point group. The built-in
modules are imported when first needed (see :func:`load_plugins`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from dgraph.errors import PluginError, RegistryError, did_you_mean
from dgraph.kinds import KINDS
from dgraph.ports import SEMANTIC_TYPES, Port, Shape, parse_shape

__all__ = [
    "ROLES",
    "BuildContext",
    "Component",
    "NoParams",
    "Params",
    "Registry",
    "COMPONENTS",
    "component",
    "reference_path",
    "load_plugins",
]

T = TypeVar("T")

# The roles a node can play in a spec (its ``kind``); what each implies is in dgraph.kinds.
ROLES: dict[str, str] = {name: kind.doc for name, kind in KINDS.items()}


@dataclass
class BuildContext:
    """What :meth:`Component.build` may know about where it is built.

    ``device`` is ``"meta"`` during a dry run: build modules there and load no data or weights.
    """

    node: str
    device: str = "cpu"
    seed: int = 0
    spec_dir: Path | None = None
    run_dir: Path | None = None
    # The built modules of the nodes this node's parameters refer to (``references()``),
    # by parameter name: an EMA target's ``source``, a sampler's ``model``; for a data node,
    # its DataSource (a metric reading the training split).
    references: dict[str, Any] = field(default_factory=dict)
    # The names of those nodes, by the same keys (``{"model": "teacher"}``; the items of a
    # ``list[NodeRef]`` parameter under ``models[0]``, ``models[1]``, ...).
    reference_names: dict[str, str] = field(default_factory=dict)
    # Where the spec's values came from, so that a component can locate its own errors at
    # ``nodes.<node>.params.<param_prefix><param>`` (the prefix for a model built inside
    # another node's parameters).
    source: Any = None
    param_prefix: str = ""
    # False when only the architecture is wanted (the exporter loads trained weights next):
    # components then skip loading pretrained weights.
    weights: bool = True

    @property
    def meta(self) -> bool:
        return self.device == "meta"

    def resolve_path(self, path: str) -> Path:
        """A path written in the spec: absolute as given, relative to the spec's folder.

        A relative path always means the spec's folder, whether or not the file is there: it
        never falls back to the working directory (which only stands in for a spec that has
        no file). ``~`` is the user's home folder.
        """
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or self.spec_dir is None:
            return candidate
        return self.spec_dir / candidate


class Registry(Generic[T]):
    """Names to objects. Re-registering a name is refused; unknown names get suggestions."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, item: T, *, origin: str = "") -> T:
        if name in self._items:
            if self._items[name] is item:
                return item
            raise RegistryError(
                f"{self.what} '{name}' is already registered (by {self._origins[name] or '?'}); "
                f"refusing the second registration from {origin or '?'}. "
                "Rename one of them: registering a name twice would silently replace it."
            )
        self._items[name] = item
        self._origins[name] = origin
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = did_you_mean(name, self._items)
            raise RegistryError(
                f"unknown {self.what} '{name}'" + (f"; {hint}" if hint else "")
            ) from None

    def origin(self, name: str) -> str:
        return self._origins.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


class Params(BaseModel):
    """Base of every component's parameter model: unknown parameters are rejected, and every
    float is finite (also one written as the text "NaN" or "Infinity")."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=False,
                              allow_inf_nan=False)


class NoParams(Params):
    """For components that take no parameters."""


# The model base under a name that Component's class attribute ``Params`` does not hide: in
# the class body, annotations that say ``Params`` would name that attribute.
_Params = Params


class Component:
    """Declaration of a component type. Subclass, set the class attributes, register.

    Class attributes:
        name: registered type name (set by :func:`component`).
        roles: the ``kind`` values a node of this type may have.
        Params: pydantic model of the parameters (extra keys forbidden).
        inputs / outputs: port name -> :class:`Port`. Shapes may use ``{param}``.
        tappable: True when the built object is a torch module whose submodules may be
            tapped as ``node.sub.module`` in the spec.
    """

    name: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[_Params]] = NoParams
    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {}
    tappable: ClassVar[bool] = False
    # Protocols, declared rather than inferred from port or parameter names:
    # a loss whose outputs ``sum`` and ``count`` let accumulation normalise by token count;
    token_normalised: ClassVar[bool] = False
    # the reference parameter whose node this one follows after each update that trains it
    # (its module implements ``follow(source_module)``: EMA targets, periodic copies).
    follows: ClassVar[str | None] = None
    # False for a node too costly to run on every held-out batch (a sampler that generates
    # sequences): evaluation then skips it, and what only it feeds, unless a metric reads it
    # or the spec sets ``train.eval.samplers: true``.
    evaluated: ClassVar[bool] = True
    # True when the node's step code may be captured in a CUDA graph: no host
    # synchronisation (.item(), .tolist(), printing a tensor), no branch on a tensor's value,
    # no data-dependent shape (boolean-mask indexing, nonzero), no tensor kept across steps.
    # ``train.compile: auto`` uses CUDA graphs only when every node of a step says so.
    cuda_graph_safe: ClassVar[bool] = False

    def __init__(self, params: _Params, node: str = "") -> None:
        self.params = params
        self.node = node

    # -- declaration side (no torch) ---------------------------------------------------
    def port_params(self) -> dict[str, Any]:
        """Values that ``{name}`` in port shapes refer to (the parameters by default)."""
        return self.params.model_dump()

    def resolved_inputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        """Input ports for this instance. ``peers`` maps node names to their components."""
        return dict(self.inputs)

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        """Output ports for this instance (a target copies its source's, for instance)."""
        return dict(self.outputs)

    def infer_output_shapes(self, input_shapes: Mapping[str, Shape | None]
                            ) -> dict[str, Shape | None]:
        """Output shapes computed from the shapes of what feeds the inputs (no torch).

        ``input_shapes`` maps each connected input port to the shape of the output feeding
        it (``None`` when that has no static shape; an unconnected input is absent). Symbols
        are compared by name (``B`` is ``B``). Return ``{output: shape}`` for the outputs
        whose shape this computes, ``None`` for one it cannot know; the declared shapes of
        the others stand. Raise ``ValueError`` (better :class:`dgraph.ports.ShapeError`, with
        ``expected`` and ``hint``) when the inputs cannot combine: validation reports it at
        the node's inputs. The default computes nothing.
        """
        return {}

    def references(self) -> dict[str, str]:
        """Parameters that name other nodes (``{"source": "student"}``), for validation; an
        item of a list of nodes is keyed ``param[i]`` (see :func:`reference_path`)."""
        return {}

    def summarize(self, totals: Mapping[str, float], examples: int) -> dict[str, float]:
        """Turn a metric node's outputs, summed over the held-out set, into metrics.

        With a ``count`` output, every other output is a sum and is divided by the total
        count (token-level means); otherwise outputs are per-batch means, weighted by batch
        size when summed, and are divided by ``examples``. Override for other reductions
        (perplexity = exp(mean NLL)).
        """
        if "count" in totals:
            count = max(totals["count"], 1.0)
            return {k: v / count for k, v in totals.items() if k != "count"}
        return {k: v / max(examples, 1) for k, v in totals.items()}

    # -- runtime side (imports torch) --------------------------------------------------
    def build(self, context: BuildContext) -> Any:
        """Create the runtime object. Imports torch.

        Returns an ``nn.Module`` whose ``forward`` takes the input ports as keyword arguments
        and returns a dict from output port name to tensor (data components return a
        :class:`dgraph.data.DataSource`).
        """
        raise NotImplementedError(f"component type '{self.name}' does not implement build()")

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "").strip()


def _executing_module() -> str:
    """The module whose top-level code is running (the one a registration comes from)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return str(frame.f_globals.get("__name__", ""))
        frame = frame.f_back  # type: ignore[assignment]
    return ""


class _ComponentRegistry(Registry[type[Component]]):
    """The component types, the built-in ones imported on first use.

    Until :func:`load_plugins` arms it, a plain registry. Armed, it knows which built-in module
    declares each type (``dgraph/components/_index.py``): asking for a type imports that
    module; a name the index does not know, and anything that lists the types (iterating,
    ``len``, ``items``), first imports every built-in module. What it answers is what a
    registry holding every type would answer.
    """

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self._index: dict[str, str] | None = None  # type name -> built-in module, once armed
        self._import_all: Callable[[], None] = lambda: None
        self._complete = False
        # Set while the index is generated: the module each registration comes from.
        self.track: dict[str, str] | None = None

    def arm(self, index: Mapping[str, str], import_all: Callable[[], None]) -> None:
        """Import modules on demand from now on: ``index`` maps type names to the modules
        that declare them, ``import_all`` imports every module."""
        self._index = dict(index)
        self._import_all = import_all
        self._complete = False

    def register(self, name: str, item: type[Component], *, origin: str = ""
                 ) -> type[Component]:
        module = self._index.get(name) if self._index is not None else None
        if module is not None and name not in self._items and module not in sys.modules:
            # The built-in type of that name first, so that a second registration (a plug-in
            # taking a built-in name) is refused exactly as when every module was imported.
            import_module(module)
        registered = super().register(name, item, origin=origin)
        if self.track is not None:
            self.track.setdefault(name, _executing_module())
        return registered

    def complete(self) -> None:
        """Import every built-in module (once armed): every type is registered."""
        if self._index is None or self._complete:
            return
        self._complete = True
        try:
            self._import_all()
        except BaseException:
            self._complete = False
            raise

    def _find(self, name: str) -> bool:
        if name in self._items:
            return True
        if self._index is None:
            return False
        module = self._index.get(name)
        if module is not None and module not in sys.modules:
            import_module(module)
            if name in self._items:
                return True
        self.complete()
        return name in self._items

    def get(self, name: str) -> type[Component]:
        self._find(name)
        return super().get(name)

    def origin(self, name: str) -> str:
        self._find(name)
        return super().origin(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name)

    def __iter__(self) -> Iterator[str]:
        self.complete()
        return super().__iter__()

    def __len__(self) -> int:
        self.complete()
        return super().__len__()

    def items(self) -> list[tuple[str, type[Component]]]:
        self.complete()
        return super().items()


COMPONENTS: _ComponentRegistry = _ComponentRegistry("component type")


def reference_path(key: str) -> tuple[str | int, ...]:
    """The path under a node's ``params`` of a :meth:`Component.references` key:
    ``("source",)`` for ``source``, ``("models", 1)`` for ``models[1]``."""
    name, bracket, index = key.partition("[")
    return (name, int(index.rstrip("]"))) if bracket else (name,)


def _check_declaration(cls: type[Component], name: str) -> None:
    bad_roles = [r for r in cls.roles if r not in ROLES]
    if not cls.roles or bad_roles:
        raise RegistryError(
            f"component type '{name}' ({cls.__module__}.{cls.__qualname__}) must declare roles "
            f"from {sorted(ROLES)}; found {list(cls.roles)}"
        )
    if cls.token_normalised and not {"loss", "sum", "count"} <= set(cls.outputs):
        raise RegistryError(
            f"component type '{name}' is token_normalised, so it must output 'loss', 'sum' "
            f"and 'count'; found outputs {sorted(cls.outputs)}"
        )
    for direction, ports in (("input", cls.inputs), ("output", cls.outputs)):
        for port_name, port in ports.items():
            if port.type not in SEMANTIC_TYPES:
                raise RegistryError(
                    f"component type '{name}': {direction} port '{port_name}' has unknown "
                    f"semantic type '{port.type}' (known: {', '.join(SEMANTIC_TYPES)})"
                )
            try:
                parse_shape(port.shape)
            except ValueError as exc:
                raise RegistryError(
                    f"component type '{name}': {direction} port '{port_name}': {exc}"
                ) from None


def component(name: str, *, roles: tuple[str, ...] | None = None) -> Callable[[type], type]:
    """Class decorator registering a :class:`Component` subclass under ``name``."""

    def decorate(cls: type[Component]) -> type[Component]:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise RegistryError(f"@component('{name}') must decorate a Component subclass")
        cls.name = name
        if roles is not None:
            cls.roles = tuple(roles)
        _check_declaration(cls, name)
        COMPONENTS.register(name, cls, origin=f"{cls.__module__}.{cls.__qualname__}")
        return cls

    return decorate


_loaded = False


def builtin_index() -> dict[str, str]:
    """Which built-in module declares each component type, by importing every one.

    Run in a fresh process (``python -m dgraph.components._index`` writes the result to
    ``dgraph/components/_index.py``): a module imported before is not seen.
    """
    builtin = import_module("dgraph.components")
    already = [m for m in builtin.module_names() if m in sys.modules]
    if already:
        raise RuntimeError(f"builtin_index() needs a fresh process; imported already: {already}")
    COMPONENTS.track = {}
    try:
        builtin.import_every_module()
        return {name: module for name, module in sorted(COMPONENTS.track.items())
                if module.startswith("dgraph.components.")}
    finally:
        COMPONENTS.track = None


_INDEX_HEADER = (
    '"""Which built-in module declares each component type, for importing only the modules a\n'
    "spec uses. Generated from a full import by ``python -m dgraph.components._index`` (do not\n"
    "edit); tests/test_startup.py checks that it is current. A stale index costs time, never a\n"
    "wrong answer: a name it does not know makes the registry import every module.\n"
    '"""\n')


def render_builtin_index(index: Mapping[str, str], modules: list[str]) -> str:
    """The text of ``dgraph/components/_index.py`` for ``index`` (type -> module)."""
    by_module: dict[str, list[str]] = {}
    for name, module in sorted(index.items()):
        by_module.setdefault(module, []).append(name)
    lines = [_INDEX_HEADER, "MODULES: tuple[str, ...] = ("]
    lines += [f'    "{module}",' for module in modules]
    lines += [")", "", "INDEX: dict[str, tuple[str, ...]] = {"]
    for module in sorted(by_module):
        names = [f'"{name}"' for name in by_module[module]]
        one_line = f'    "{module}": ({", ".join(names)}{"," if len(names) == 1 else ""}),'
        if len(one_line) <= 100:
            lines.append(one_line)
            continue
        lines.append(f'    "{module}": (')
        row = "       "
        for name in names:
            if len(row) + len(name) + 2 > 100:
                lines.append(row)
                row = "       "
            row += f" {name},"
        lines += [row, "    ),"]
    lines += ["}", "", 'if __name__ == "__main__":',
              "    from dgraph.registry import write_builtin_index", "",
              "    write_builtin_index()", ""]
    return "\n".join(lines)


def write_builtin_index() -> Path:
    """Regenerate ``dgraph/components/_index.py`` (in a fresh process)."""
    builtin = import_module("dgraph.components")
    text = render_builtin_index(builtin_index(), builtin.module_names())
    path = Path(builtin.__file__ or "").parent / "_index.py"
    path.write_text(text, encoding="utf-8")
    return path


def _arm_builtin() -> None:
    """Let the registry import each built-in module on first use; a module the index does
    not list yet (a new file) is imported now, so that its types are found as before."""
    # The built-in plug-in package, loaded by name as every plug-in is (a layer above this).
    builtin = import_module("dgraph.components")
    _index = import_module("dgraph.components._index")

    on_disk = builtin.module_names()
    present = set(on_disk)
    COMPONENTS.arm({name: module for module, names in _index.INDEX.items()
                    if module in present for name in names}, builtin.import_every_module)
    for module in on_disk:
        if module not in _index.MODULES:
            import_module(module)


def load_plugins(*, force: bool = False) -> None:
    """Make every component type available: the built-in ones (each module imported when a
    type of it is first asked for, see :class:`_ComponentRegistry`) and every
    ``dgraph.components`` entry point (imported now), once."""
    global _loaded
    if _loaded and not force:
        return
    _loaded = True
    _arm_builtin()
    seen = {"dgraph.components"}
    for entry in metadata.entry_points(group="dgraph.components"):
        if entry.value in seen:
            continue
        seen.add(entry.value)
        try:
            entry.load()
        except RegistryError:
            raise
        except Exception as exc:  # a broken third-party package must not look like our bug
            dist = getattr(getattr(entry, "dist", None), "name", None)
            origin = f"{entry.value}, from the package '{dist}'" if dist else entry.value
            raise PluginError(
                f"the dgraph plug-in '{entry.name}' ({origin}) failed to load: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall that package."
            ) from exc
