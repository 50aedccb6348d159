"""Module -> ONNX file: torch's current (``torch.export``-based) exporter, with the TorchScript
exporter as the fallback, and a diagnosis that names the operator neither could translate.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dgraph.errors import ExportError

__all__ = ["DYNAMO", "TORCHSCRIPT", "ExportInfo", "PortModule", "export_module",
           "find_operator", "fold_weight_quantization"]

DYNAMO = "dynamo"
TORCHSCRIPT = "torchscript"
EXPORTER_NAMES = {
    DYNAMO: "torch.onnx.export(dynamo=True) (torch.export-based, the current exporter)",
    TORCHSCRIPT: "torch.onnx.export(dynamo=False) (TorchScript-based, the fallback)",
}
_EXTERNAL_DATA_BYTES = 1_800_000_000  # ONNX protobuf files cannot exceed 2 GB


class PortModule(nn.Module):
    """Positional tensors in, a tuple out: a dgraph module (keyword ports in, dict of ports out)
    seen the way ONNX sees a graph. Input and output names are the port names."""

    def __init__(self, module: nn.Module, inputs: Sequence[str], outputs: Sequence[str],
                 cast_inputs: dict[str, torch.dtype] | None = None) -> None:
        super().__init__()
        self.module = module
        self.input_names = list(inputs)
        self.output_names = list(outputs)
        self.cast_inputs = dict(cast_inputs or {})

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, args, strict=False))
        for name, dtype in self.cast_inputs.items():
            kwargs[name] = kwargs[name].to(dtype)
        result = self.module(**kwargs)
        if not isinstance(result, dict):
            raise ExportError(f"the module returned {type(result).__name__}; dgraph modules "
                              "return a dict from output port to tensor")
        return tuple(result[name] for name in self.output_names)


@dataclass
class ExportInfo:
    """Which exporter wrote the file, and why the preferred one was not used."""

    exporter: str
    fallback_reason: str | None = None
    opset: int | None = None

    @property
    def description(self) -> str:
        return EXPORTER_NAMES[self.exporter]


@contextlib.contextmanager
def _quiet_fds():
    """Send file descriptors 1 and 2 to a temporary file (the TorchScript exporter prints
    its IR graph from C++ on failure); a no-op where they cannot be redirected."""
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and log records."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "torch.fx.experimental.symbolic_shapes",
                                              "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink), _quiet_fds():
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for lg, level in zip(loggers, levels, strict=False):
            lg.setLevel(level)


def _summary(exc: BaseException) -> str:
    """The informative line of an exporter exception (they carry pages of advice)."""
    text = f"{exc}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    # The torch.export-based exporter: "## Exception summary" then "<class 'X'>: message".
    found = re.search(r"<class '([\w.]+)'>: ([^\n]+)", text)
    if found:
        line = f"{found.group(1).rsplit('.', 1)[-1]}: {found.group(2).strip()}"
        return line[:400].rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    informative = [line for line in lines if not line.startswith(("-", "#", "Next steps"))]
    line = (informative or lines or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {line}"[:400].rstrip(".")


_OPERATOR_PATTERNS = (
    r"No ONNX function found for <OpOverload\(op='([\w.]+)'",
    r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]",
    r"unrecognized namespace ([\w:.]+)",
    r"Exporting the operator '?([\w:.]+?)'? to ONNX opset",
    r"ONNX export of operator ([\w:.]+)",
)


def operator_in(text: str) -> str | None:
    """The ``namespace::name`` of an operator an exporter said it cannot translate."""
    for pattern in _OPERATOR_PATTERNS:
        found = re.search(pattern, text)
        if found:
            name = found.group(1).strip(".")
            if "::" not in name and "." in name:
                namespace, _, rest = name.partition(".")
                name = f"{namespace}::{rest.split('.')[0]}"
            return name
    return None


class _OperatorFinder(TorchDispatchMode):
    """Records the innermost module running when an operator is first dispatched."""

    def __init__(self, operator: str, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.operator = operator
        self.stack = stack
        self.found: tuple[str, nn.Module] | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.found is None:
            name = func.name() if hasattr(func, "name") else str(func)
            if name.split(".")[0] == self.operator and self.stack:
                self.found = self.stack[-1]
        return func(*args, **(kwargs or {}))


def find_operator(module: nn.Module, args: Sequence[torch.Tensor], operator: str
                  ) -> tuple[str, str] | None:
    """(submodule path, class name) of the module that calls ``operator``, if one does."""
    stack: list[tuple[str, nn.Module]] = []
    handles = []
    for path, sub in module.named_modules():
        def enter(mod, _inputs, path=path):
            stack.append((path, mod))

        def leave(mod, _inputs, _output):
            if stack:
                stack.pop()

        handles.append(sub.register_forward_pre_hook(enter))
        handles.append(sub.register_forward_hook(leave))
    finder = _OperatorFinder(operator, stack)
    try:
        with torch.no_grad(), finder:
            module(*args)
    except Exception:  # the diagnosis must never hide the export error
        pass
    finally:
        for handle in handles:
            handle.remove()
    if finder.found is None:
        return None
    path, mod = finder.found
    return path, type(mod).__name__


def _use_external_data(module: nn.Module) -> bool:
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return size > _EXTERNAL_DATA_BYTES


def _export_dynamo(wrapper: PortModule, args: tuple, path: Path, opset: int,
                   dynamic: list[dict[int, str]]) -> None:
    # forward(*args): the inputs are one tuple, and so are their dynamic shapes.
    shapes = (tuple(dict(d) if d else None for d in dynamic),)
    # The graph's outputs get the port names afterwards: a port named like a value inside the
    # graph (an `embedding` port of a model with an embedding layer) would otherwise give two
    # values one name, which the exporter refuses.
    placeholders = [f"dgraph_output_{i}" for i in range(len(wrapper.output_names))]
    with _quiet():
        torch.onnx.export(
            wrapper, args, str(path), input_names=wrapper.input_names,
            output_names=placeholders, opset_version=opset, dynamo=True,
            dynamic_shapes=shapes, external_data=_use_external_data(wrapper), verbose=False,
            report=False, optimize=True,
        )
    rename_outputs(path, dict(zip(placeholders, wrapper.output_names, strict=True)))


def rename_outputs(path: Path, names: dict[str, str]) -> None:
    """Give the graph outputs of the ONNX file at ``path`` new names (old -> new); a value
    inside the graph that already has a new name is renamed out of the way first."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    taken = _value_names(graph)
    renames: dict[str, str] = {}
    for new in names.values():
        if new in taken and new not in names:
            spare, n = f"{new}_inner", 1
            while spare in taken:
                spare, n = f"{new}_inner{n}", n + 1
            taken.add(spare)
            renames[new] = spare
    renames.update(names)
    _rename_values(graph, renames)
    onnx.save(model, str(path))


def _value_names(graph) -> set[str]:  # noqa: ANN001 - an onnx.GraphProto
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names |= set(node.input) | set(node.output)
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                names |= _value_names(sub)
    return names


def _rename_values(graph, renames: dict[str, str]) -> None:  # noqa: ANN001 - onnx.GraphProto
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                _rename_values(sub, renames)


def _export_torchscript(wrapper: PortModule, args: tuple, path: Path, opset: int,
                        dynamic: list[dict[int, str]], output_dynamic: list[dict[int, str]]
                        ) -> None:
    names = [*wrapper.input_names, *wrapper.output_names]
    axes = {name: dict(d) for name, d in zip(names, [*dynamic, *output_dynamic], strict=True)
            if d}
    with _quiet():
        torch.onnx.export(
            wrapper, args, str(path), input_names=wrapper.input_names,
            output_names=wrapper.output_names, opset_version=opset, dynamo=False,
            dynamic_axes=axes, do_constant_folding=True,
        )


def export_module(wrapper: PortModule, args: tuple, path: Path, *, opset: int,
                  dynamic: list[dict[int, str]], output_dynamic: list[dict[int, str]],
                  what: str = "the model") -> ExportInfo:
    """Write ``wrapper`` to ``path``: the dynamo exporter first, TorchScript if it fails.

    ``dynamic`` gives, per input, axis -> symbol for the dimensions that vary. The folder of
    ``path`` must exist (``export_run`` writes into a staging folder it created).
    """
    wrapper.eval()
    try:
        _export_dynamo(wrapper, args, path, opset, dynamic)
        return ExportInfo(DYNAMO, opset=opset)
    except Exception as exc:  # every failure of the preferred exporter triggers the fallback
        dynamo_error = exc
    try:
        _export_torchscript(wrapper, args, path, opset, dynamic, output_dynamic)
        return ExportInfo(TORCHSCRIPT, fallback_reason=_summary(dynamo_error), opset=opset)
    except Exception as exc:
        script_error = exc
    texts = f"{dynamo_error}\n{script_error}"
    operator = operator_in(re.sub(r"\x1b\[[0-9;]*m", "", texts))
    if operator is not None:
        where = find_operator(wrapper.module, args, operator) if operator else None
        origin = (f", called by submodule '{where[0] or '<root>'}' ({where[1]})" if where
                  else "")
        raise ExportError(
            f"cannot export {what}: no ONNX translation for operator '{operator}'{origin}. "
            f"The current exporter failed with: {_summary(dynamo_error)}; the TorchScript "
            f"fallback failed with: {_summary(script_error)}. Replace the operator in the "
            "model, or register an ONNX translation for it (torch.onnx custom "
            "translation table / symbolic)"
        ) from None
    raise ExportError(
        f"cannot export {what}. The current exporter failed with: {_summary(dynamo_error)}; "
        f"the TorchScript fallback failed with: {_summary(script_error)}"
    ) from None


_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}


def fold_weight_quantization(path: Path) -> int:
    """Store quantised weights as integers: in the ONNX file at ``path``, evaluate once the
    nodes computed from constants only (``onnx.reference``) when one of them is a
    QuantizeLinear (a weight's Q of a Q/DQ pair), and put their results in the graph as
    initializers — the int8/uint8 weights read by DequantizeLinear, their scales — in place
    of the float weights. Returns the number of QuantizeLinear nodes folded (0: file
    unchanged; also for files with external data)."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        return 0
    constant = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    folded_nodes = []
    for node in graph.node:
        if node.op_type in _NOT_FOLDED or node.op_type == "DequantizeLinear" or \
                node.domain not in ("", "ai.onnx"):
            continue  # the DequantizeLinear of a weight stays: it reads the integer weight
        if all(not name or name in constant for name in node.input):
            folded_nodes.append(node)
            constant.update(node.output)
    quantize = sum(node.op_type == "QuantizeLinear" for node in folded_nodes)
    if not quantize:
        return 0
    folded_ids = {id(node) for node in folded_nodes}
    kept = [node for node in graph.node if id(node) not in folded_ids]
    needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    for node in kept:  # values a subgraph (If, Loop) reads from the outer scope
        for attribute in node.attribute:
            for sub_graph in (*([attribute.g] if attribute.HasField("g") else []),
                              *attribute.graphs):
                needed |= _value_names(sub_graph)
    frontier = [name for node in folded_nodes for name in node.output if name in needed]
    sub = onnx.helper.make_graph(
        folded_nodes, "constants", [],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
         for name in frontier], initializer=list(graph.initializer))
    # onnx.reference implements QuantizeLinear from opset 19 on (the same for 8-bit types).
    opsets = [onnx.helper.make_opsetid(o.domain, max(o.version, 19) if o.domain in ("", "ai.onnx")
                                       else o.version) for o in model.opset_import]
    sub_model = onnx.helper.make_model(sub, opset_imports=opsets)
    values = ReferenceEvaluator(sub_model).run(None, {})
    del graph.node[:]
    graph.node.extend(kept)
    still_used = needed | set(frontier)
    initializers = [t for t in graph.initializer if t.name in still_used]
    initializers += [numpy_helper.from_array(value, name)
                     for name, value in zip(frontier, values, strict=True)]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(path))
    return quantize
