"""What an export starts from: one node of a finished run, rebuilt with its final weights.

A run directory holds ``spec.resolved.yaml`` and ``final/<node>.safetensors``. Only the exported
node is built (teachers and their weights are never needed); its ports decide the ONNX input
and output names, dtypes and dynamic axes; the data nodes feeding it give real inputs.

Relative paths of the spec (a ``tensor_file``'s ``path``, a model folder) resolve exactly as
they did in ``dgraph train``: against the folder of the spec that was trained, which training
records as ``spec_dir`` in the metadata of ``final/<node>.safetensors``. No other folder is
searched; a run that does not record it (trained by an older dgraph) resolves them against the
working directory only, as the spec's folder is unknown.

The weights are read with safetensors only, and refused before anything is exported when they
do not fit the spec's architecture (names, shapes) or hold NaN or infinite values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgraph.data import DataSource
from dgraph.errors import DgraphError, ExportError, did_you_mean
from dgraph.graph import Graph, Node, validate
from dgraph.ports import Port, format_shape, parse_shape
from dgraph.registry import BuildContext
from dgraph.spec import Spec, load_spec

__all__ = ["DYNAMIC_SYMBOLS", "ExportSubject", "PortInfo", "load_subject"]

# Symbols that always vary at inference time: the batch and the sequence length.
DYNAMIC_SYMBOLS = ("B", "T")
_NOT_MODELS = {"data": "a data source", "loss": "a loss", "op": "an op without weights",
               "sampler": "a sampler", "metric": "a metric"}
_INTEGER_TYPES = {"Tokens": torch.int64, "Labels": torch.int64, "Mask": torch.int64,
                  "Timesteps": torch.int64}


@dataclass
class PortInfo:
    """One ONNX input or output: the port, its resolved dims and (for inputs) its dtype.

    ``dims`` holds an int for a static dimension and a symbol (``"B"``, ``"T"``) for a
    dynamic one. ``feed`` is ``(data node, data port)`` when a data source feeds the input.
    """

    name: str
    port: Port
    dims: list[int | str] | None
    dtype: torch.dtype | None = None
    feed: tuple[str, str] | None = None

    @property
    def dynamic(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims or []) if isinstance(d, str)}

    def describe(self) -> str:
        shape = "[*]" if self.dims is None else "[" + ", ".join(map(str, self.dims)) + "]"
        return f"{self.name}: {self.port.type}{shape}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.port.type, "shape": self.port.shape,
                               "dims": self.dims}
        if self.dtype is not None:
            out["dtype"] = str(self.dtype).removeprefix("torch.")
        if self.port.doc:
            out["doc"] = self.port.doc
        return out


@dataclass
class ExportSubject:
    """A node of a run, ready to export: module with final weights, ports, data."""

    run_dir: Path
    spec: Spec
    spec_text: str
    graph: Graph
    name: str
    node: Node
    module: nn.Module
    weights: Path
    inputs: list[PortInfo]
    outputs: list[PortInfo]
    data: dict[str, DataSource] = field(default_factory=dict)
    data_problem: str | None = None  # why real inputs are unavailable, when they are
    label_names: list[str] | None = None
    spec_dir: Path | None = None  # where relative paths of the spec resolve (as in train)

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.spec_text.encode()).hexdigest()

    @property
    def symbols(self) -> list[str]:
        """The dynamic symbols of the inputs, batch first."""
        found: list[str] = []
        for info in self.inputs:
            for symbol in info.dynamic.values():
                if symbol not in found:
                    found.append(symbol)
        return sorted(found, key=lambda s: (s != "B", s != "T", s))

    def params(self) -> dict[str, Any]:
        return self.node.component.port_params()

    def real_inputs(self, batch: int) -> dict[str, torch.Tensor] | None:
        """The first ``batch`` held-out examples (training ones if none), per input port."""
        if self.data_problem is not None or not self.data:
            return None
        out: dict[str, torch.Tensor] = {}
        for info in self.inputs:
            assert info.feed is not None
            source = self.data[info.feed[0]]
            split = source.eval if source.eval else source.train
            out[info.name] = split[info.feed[1]][:batch]
        return out

    def real_examples(self) -> int:
        counts = []
        for info in self.inputs:
            if info.feed is not None and info.feed[0] in self.data:
                source = self.data[info.feed[0]]
                split = source.eval if source.eval else source.train
                counts.append(int(split[info.feed[1]].shape[0]))
        return min(counts) if counts else 0


def _build(node: Node, name: str, run_dir: Path, spec_dir: Path | None, *,
           weights: bool = True, references: dict[str, Any] | None = None):
    """Build a node's runtime object with relative paths resolved as ``dgraph train`` did;
    ``references`` are the built modules of the nodes its parameters name; ``weights=False``
    builds the architecture only (trained weights are loaded next)."""
    context = BuildContext(node=name, device="cpu", spec_dir=spec_dir, run_dir=run_dir,
                           references=dict(references or {}), weights=weights)
    return node.component.build(context)


def _build_referring(graph: Graph, name: str, run_dir: Path, spec_dir: Path | None, *,
                     weights: bool = True, _seen: frozenset[str] = frozenset()):
    """Build a node after the nodes its parameters name (architectures only, recursively),
    as ``dgraph train`` builds them: a data node reading a model's tokenizer, a target and its
    source."""
    references = {param: _build_referring(graph, other, run_dir, spec_dir, weights=False,
                                          _seen=_seen | {name})
                  for param, other in graph.nodes[name].component.references().items()
                  if other in graph.nodes and other not in _seen | {name}}
    return _build(graph.nodes[name], name, run_dir, spec_dir, weights=weights,
                  references=references)


def _load_run(run_dir: Path) -> tuple[Spec, str, Graph]:
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist; train a spec first "
                          f"(dgraph train SPEC --out {run_dir})")
    resolved = run_dir / "spec.resolved.yaml"
    if not resolved.is_file():
        raise ExportError(f"{run_dir} is not a dgraph run directory: it has no "
                          "spec.resolved.yaml (written by `dgraph train`)")
    try:
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read {resolved}: {_reason(exc)}") from None
    spec = load_spec(resolved)
    graph, _warnings = validate(spec)
    return spec, text, graph


def _pick_node(graph: Graph, requested: str | None, run_dir: Path) -> str:
    final = run_dir / "final"
    trained = sorted(p.stem for p in final.glob("*.safetensors")) if final.is_dir() else []
    name = requested or graph.export_node
    if name is None:
        raise ExportError(f"the spec of {run_dir} has no student and no export.node; choose "
                          f"a node with --node ({', '.join(trained) or 'no node has weights'})")
    if name not in graph.nodes:
        hint = did_you_mean(name, graph.nodes)
        raise ExportError(
            f"unknown node '{name}' in spec '{graph.spec.display_name}'"
            + (f"; {hint}" if hint else "")
            + f" (nodes with final weights: {', '.join(trained) or 'none'})"
        )
    node = graph.nodes[name]
    if node.kind in _NOT_MODELS:
        raise ExportError(
            f"node '{name}' is {_NOT_MODELS[node.kind]} ({node.kind} '{node.spec.type}'), not a "
            f"model; export a node with weights ({', '.join(trained) or 'none in this run'})"
        )
    return name


def _weights_path(graph: Graph, name: str, run_dir: Path) -> Path:
    node = graph.nodes[name]
    owner = node.spec.shares or name
    final = run_dir / "final"
    path = final / f"{owner}.safetensors"
    if path.is_file():
        return path
    if not final.is_dir():
        raise ExportError(
            f"run {run_dir} has no final weights (no final/ folder): training did not finish. "
            f"Finish it with `dgraph train {run_dir / 'spec.resolved.yaml'} --out {run_dir} "
            "--resume`"
        )
    trained = sorted(p.stem for p in final.glob("*.safetensors"))
    why = ""
    if node.kind == "teacher" or node.frozen:
        why = f" ({node.kind} '{name}' is frozen in this run, so it was never trained here"
        if node.spec.init is not None and node.spec.init.run:
            why += f"; it came from run '{node.spec.init.run}': export it from there"
        why += ")"
    raise ExportError(
        f"node '{name}' was never trained: there are no final weights for it ({path} does "
        f"not exist){why}. Nodes with final "
        f"weights in this run: {', '.join(trained) or 'none'}"
    )


def _reason(exc: BaseException) -> str:
    """An exception in words: the system's for an OSError (with its file), else type: text."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _read_weights(path: Path, node: Node, name: str) -> tuple[dict[str, torch.Tensor],
                                                             dict[str, str]]:
    """The tensors and metadata of ``final/<node>.safetensors`` (never a pickle)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except OSError as exc:
        raise ExportError(f"cannot read the final weights of node '{name}' from {path}: "
                          f"{exc.strerror or exc}") from None
    except Exception as exc:
        raise ExportError(
            f"cannot read the final weights of node '{name}' from {path}: {_reason(exc)}. "
            "The file is truncated or is not a safetensors file (an interrupted copy or a "
            "full disk); copy it again from where the run was trained, or retrain the run"
        ) from None
    if meta.get("type") and meta["type"] != node.spec.type:
        raise ExportError(f"{path} holds weights of a '{meta['type']}' node, but node '{name}' "
                          f"is a '{node.spec.type}' in the run's spec")
    return state, meta


def _fit_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path, node: Node,
                 name: str, spec: Spec) -> None:
    """Refuse weights whose names or shapes differ from the architecture the spec builds."""
    where = spec.source.where(("nodes", name, "params"))
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ExportError(
            f"the weights in {path} do not fit node '{name}' ('{node.spec.type}') as the run's "
            f"spec describes it ({where}): missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. hint: the run's spec.resolved.yaml was changed after "
            "training, or final/ holds weights of another run; export with the spec the run "
            "was trained with"
        )
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        first = wrong[0]
        others = f" ({len(wrong)} of {len(expected)} tensors differ)" if len(wrong) > 1 else ""
        raise ExportError(
            f"the weights in {path} do not fit node '{name}' ('{node.spec.type}') as the run's "
            f"spec describes it ({where}): tensor '{first}' has shape "
            f"{_shape(state[first].shape)} in the file, the spec's architecture expects "
            f"{_shape(expected[first].shape)}{others}. hint: the run's spec.resolved.yaml "
            "was changed after training, or final/ holds weights of another run; export "
            "with the spec the run was trained with"
        )


def _check_finite_weights(state: dict[str, torch.Tensor], order: list[str], path: Path,
                          name: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor of ``state``."""
    bad: list[tuple[str, int, int, int]] = []
    for key in order:
        tensor = state[key]
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nans = int(torch.isnan(tensor).sum())
        bad.append((key, nans, int((~finite).sum()) - nans, tensor.numel()))
    if not bad:
        return
    key, nans, infs, total = bad[0]
    others = (f"; {len(bad)} of {len(order)} tensors hold non-finite values" if len(bad) > 1
              else "")
    raise ExportError(
        f"cannot export node '{name}': its final weights in {path} are not finite: "
        f"'{key}' holds {nans} NaN and {infs} infinite values of {total}{others}. hint: the "
        "run diverged; export an earlier run whose weights are finite, or retrain (a lower "
        "learning rate or clip_grad_norm on the update usually helps)"
    )


def _load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path, node: Node,
                  name: str, spec: Spec) -> None:
    _fit_weights(module, state, path, node, name, spec)
    _check_finite_weights(state, list(module.state_dict()), path, name)
    module.load_state_dict(state, strict=True)


def _spec_dir(meta: dict[str, str]) -> Path | None:
    """The folder of the spec the run was trained from, as training recorded it."""
    recorded = meta.get("spec_dir")
    return Path(recorded) if recorded else None


def _bound_sizes(graph: Graph, name: str, node: Node) -> dict[tuple[str, int], int]:
    """(input port, axis) -> a size the graph binds it to through the edge feeding it."""
    params = node.component.port_params()
    bound: dict[tuple[str, int], int] = {}
    for edge in graph.edges_into(name):
        src_shape = graph.shapes.get((edge.src, edge.src_port))
        dst_shape = parse_shape(node.inputs[edge.dst_port].shape, params)
        if not src_shape or not dst_shape or any(d.ellipsis for d in (*src_shape, *dst_shape)):
            continue
        if len(src_shape) != len(dst_shape):
            continue
        for axis, (src, dst) in enumerate(zip(src_shape, dst_shape, strict=False)):
            if dst.symbol is not None and src.size is not None:
                bound[(edge.dst_port, axis)] = src.size
    return bound


def _resolve_dims(port_name: str, port: Port, params: dict[str, Any],
                  bound: dict[tuple[str, int], int], sample: torch.Tensor | None
                  ) -> list[int | str] | None:
    shape = parse_shape(port.shape, params)
    if shape is None:
        if sample is None:
            return None
        return ["B", *[int(s) for s in sample.shape[1:]]]
    dims: list[int | str] = []
    for axis, dim in enumerate(shape):
        if dim.ellipsis:
            if sample is None:
                return None
            rest = len(shape) - axis - 1
            dims.extend(int(s) for s in sample.shape[axis: sample.dim() - rest])
        elif dim.size is not None:
            dims.append(dim.size)
        elif dim.symbol in DYNAMIC_SYMBOLS:
            dims.append(dim.symbol)
        elif (port_name, axis) in bound:
            dims.append(bound[(port_name, axis)])
        else:
            dims.append(str(dim.symbol))
    return dims


def _load_data(graph: Graph, name: str, run_dir: Path, spec_dir: Path | None
               ) -> tuple[dict[str, tuple[str, str]], dict[str, DataSource], str | None]:
    """Which data port feeds each input, the data sources, and why not if they cannot."""
    feeds: dict[str, tuple[str, str]] = {}
    problem = None
    for edge in graph.edges_into(name):
        src = graph.nodes[edge.src]
        if src.kind == "data":
            feeds[edge.dst_port] = (edge.src, edge.src_port)
        elif problem is None:
            problem = (f"input '{edge.dst_port}' is computed by {src.kind} node '{edge.src}', "
                       "not read from a data source")
    data: dict[str, DataSource] = {}
    if problem is None:
        for data_node in sorted({src for src, _ in feeds.values()}):
            try:
                built = _build_referring(graph, data_node, run_dir, spec_dir)
            except Exception as exc:  # the check then runs on random inputs only, and says so
                reason = exc if isinstance(exc, DgraphError) else _reason(exc)
                problem = f"data node '{data_node}' cannot be loaded: {reason}"
                if spec_dir is None:
                    problem += (" (this run does not record its spec's folder, so relative "
                                f"paths were read from the working directory {Path.cwd()})")
                break
            if not isinstance(built, DataSource):
                problem = f"data node '{data_node}' built no DataSource"
                break
            data[data_node] = built
    return feeds, data, problem


def _label_names(graph: Graph, name: str, data: dict[str, DataSource],
                 outputs: list[PortInfo]) -> list[str] | None:
    if not any(info.port.type == "Logits" for info in outputs):
        return None
    sources = [n for n in sorted(graph.ancestors(name)) if graph.nodes[n].kind == "data"]
    for source in sources:
        if source in data and data[source].label_names:
            return list(data[source].label_names)
    return None


def _default_dtype(port: Port) -> torch.dtype:
    return _INTEGER_TYPES.get(port.type, torch.float32)


def load_subject(run_dir: str | Path, node: str | None = None) -> ExportSubject:
    """Rebuild ``node`` (default: the spec's export node or student) of a finished run."""
    run_dir = Path(run_dir)
    spec, text, graph = _load_run(run_dir)
    name = _pick_node(graph, node, run_dir)
    weights = _weights_path(graph, name, run_dir)
    target = graph.nodes[name]
    state, meta = _read_weights(weights, target, name)
    spec_dir = _spec_dir(meta)
    try:
        # The nodes its parameters name (an EMA target's source), rebuilt without weights.
        module = _build_referring(graph, name, run_dir, spec_dir, weights=False)
    except DgraphError:
        raise
    except Exception as exc:
        raise ExportError(f"node '{name}' ('{target.spec.type}') failed to build: "
                          f"{_reason(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ExportError(f"node '{name}' ('{target.spec.type}') builds a "
                          f"{type(module).__name__}, not a torch module; it cannot be exported")
    _load_weights(module, state, weights, target, name, spec)
    module.eval()
    module.requires_grad_(False)

    feeds, data, problem = _load_data(graph, name, run_dir, spec_dir)
    params = target.component.port_params()
    bound = _bound_sizes(graph, name, target)
    connected = {e.dst_port for e in graph.edges_into(name)}
    inputs: list[PortInfo] = []
    for port_name, port in target.inputs.items():
        if port.optional and port_name not in connected:
            continue
        feed = feeds.get(port_name)
        sample = None
        if feed is not None and feed[0] in data:
            source = data[feed[0]]
            sample = (source.eval or source.train)[feed[1]]
        dims = _resolve_dims(port_name, port, params, bound, sample)
        if dims is None:
            shape = format_shape(parse_shape(port.shape, params))
            raise ExportError(
                f"node '{name}': the shape of input '{port_name}' ({shape}) is not fully "
                "known and no data source gives an example of it"
            )
        dtype = sample.dtype if sample is not None else _default_dtype(port)
        inputs.append(PortInfo(port_name, port, dims, dtype, feed))
    outputs = [PortInfo(port_name, port, _resolve_dims(port_name, port, params, {}, None))
               for port_name, port in target.outputs.items()]
    if problem is None and data and not all(i.feed for i in inputs):
        problem = "some inputs are not fed by a data source"
    subject = ExportSubject(run_dir=run_dir, spec=spec, spec_text=text, graph=graph, name=name,
                            node=target, module=module, weights=weights, inputs=inputs,
                            outputs=outputs, data=data, data_problem=problem,
                            spec_dir=spec_dir)
    subject.label_names = _label_names(graph, name, data, outputs)
    return subject

