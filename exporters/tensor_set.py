"""``export_tensor_set``: a learned set (a tensor node of a run) -> safetensors plus a PNG grid.

A dataset-distillation run learns a tensor node (``synthetic_digits``: images and their
classes). ``dgraph export RUN -o set.safetensors`` on such a node writes

* ``set.safetensors``: ``images`` (float32, as learned), ``labels`` (int64) and, when the graph
  has them, ``soft_labels``: the node's own ``Probs``/``Logits`` output, or what feeds the
  soft-label input of a ``dd_evaluator`` reading these images (a learned tensor such as DATM's
  labels, or labels computed from the set: SRe2L's relabel by the teacher, a committee's
  vote; computed from the run's final state as the evaluation computed them); with
  metadata: spec, node, type, images per class, shapes, where the soft labels come from,
  the run and its spec's hash;
* ``set.png``: the images in a grid, one row per class, ``--scale`` pixels per pixel, values
  mapped linearly from ``[min(0, lowest), max(1, highest)]`` to black..white (so in-range
  pixels look as they are and out-of-range ones are not clipped); the range is in the PNG's
  text metadata.

Same hygiene as the ONNX export: both files are written into a staging folder next to ``-o``
and moved into place only when complete (a file already there is left as it was on any
failure); non-finite values are refused, naming the tensor, the image and its class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dgraph.exporters.api import _staging

from dgraph.errors import DgraphError, ExportError

__all__ = ["TensorSetResult", "export_tensor_set", "is_tensor_node", "read_tensor_set"]

FORMAT = "dgraph-tensor-set"
_SOFT_TYPES = ("Probs", "Logits", "LogProbs")
_EVALUATOR_PORTS = ("images", "labels", "test_x", "test_y")


@dataclass
class TensorSetResult:
    """What ``export_tensor_set`` wrote: the two files, the tensors and their metadata."""

    path: Path
    png: Path
    node: str
    tensors: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)


def is_tensor_node(run_dir: str | Path, node: str | None = None) -> bool:
    """Whether ``node`` (default: the spec's export node) of the run is a tensor node, so
    that ``dgraph export`` writes a tensor set instead of ONNX. False when the run or the node
    cannot be read (the ONNX path then reports why)."""
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    resolved = Path(run_dir) / "spec.resolved.yaml"
    try:
        graph, _warnings = validate(load_spec(resolved))
    except Exception:
        return False
    name = node or graph.export_node
    return name is not None and name in graph.nodes and graph.nodes[name].kind == "tensor"


def _check_destination(output: Path) -> None:
    """Refuse an ``-o`` that cannot or must not be replaced, before anything is built."""
    if output.suffix != ".safetensors":
        raise ExportError(f"-o {output}: a tensor node is exported as safetensors (plus a PNG "
                          f"grid beside it); name the file with the .safetensors suffix, e.g. "
                          f"-o {output.with_suffix('.safetensors')}")
    for path in (output, output.with_suffix(".png")):
        if path.is_symlink():
            raise ExportError(f"{path} is a symbolic link; dgraph replaces the file as a "
                              f"whole and would replace the link itself: pass the path it "
                              f"points to ({os.path.realpath(path)}) or another -o")
        if path.is_dir():
            raise ExportError(f"{path} is a directory; choose another -o")
        if path.exists() and not path.is_file():
            raise ExportError(f"{path} exists and is not a regular file; choose another -o")
    parent = output.parent
    if not parent.is_dir():
        raise ExportError(f"-o {output}: the folder {parent} does not exist; create it first "
                          f"(mkdir -p {parent}) or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"-o {output}: the folder {parent} is not writable (no permission, "
                          "or a read-only file system); choose -o in a writable folder")


def _check_finite(name: str, tensor: torch.Tensor, labels: torch.Tensor, node: str,
                  output: Path) -> None:
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = (~finite).reshape(len(tensor), -1).any(1)
    first = int(torch.nonzero(bad)[0])
    nans = int(torch.isnan(tensor).sum())
    raise ExportError(
        f"cannot export node '{node}': its '{name}' hold {nans} NaN and "
        f"{int((~finite).sum()) - nans} infinite values of {tensor.numel()} ({int(bad.sum())} "
        f"of {len(tensor)} examples; the first is example {first}, class "
        f"{int(labels[first])}). hint: the distillation diverged; retrain with a lower "
        f"learning rate or a clamp on the set. {output} was not written (a file already "
        "there is unchanged)")


def _soft_label_source(graph: Any, name: str) -> tuple[str, str] | None:
    """``(node, port)`` giving the soft labels of ``name``'s images: its own ``Probs`` /
    ``Logits`` output, else what feeds the soft-label input of a metric (``dd_evaluator``)
    that reads these images or labels; None when the graph has none."""
    node = graph.nodes[name]
    for port, info in node.outputs.items():
        if info.type in _SOFT_TYPES:
            return name, port
    readers = {e.dst for e in graph.edges_from(name) if e.src_port in ("images", "labels")}
    for reader in sorted(readers):
        if graph.nodes[reader].kind != "metric":
            continue
        for edge in graph.edges_into(reader):
            if edge.dst_port in _EVALUATOR_PORTS or edge.src == name or edge.tap:
                continue
            port = graph.nodes[edge.src].outputs.get(edge.src_port)
            if port is not None and port.type in _SOFT_TYPES:
                return edge.src, edge.src_port
    return None


def _compute(run_dir: Path, graph: Any, target: str, port: str) -> tuple[Any, str | None]:
    """The value of ``target.port`` computed from the run's final state: every node built as
    training builds it (``init`` weights of frozen teachers included), the final weights
    loaded, then ``target``'s ancestors run in order on no data. ``(None, why)`` when it needs
    a data batch or a tapped submodule."""
    from dgraph.runtime.sample import final_instances

    needed = graph.ancestors(target) | {target}
    for node in sorted(needed):
        if graph.nodes[node].kind == "data":
            return None, f"it reads data node '{node}' (a batch, not the set)"
        if any(e.tap for e in graph.edges_into(node)):
            return None, f"node '{node}' reads a tapped submodule"
    instances = final_instances(graph, run_dir)
    values: dict[tuple[str, str], Any] = {}
    with torch.no_grad():
        for name in graph.topological_order():
            if name not in needed:
                continue
            module = instances.modules[name]
            inputs = {e.dst_port: values[(e.src, e.src_port)] for e in graph.edges_into(name)}
            out = module(**inputs)
            if not isinstance(out, dict):
                out = {next(iter(graph.nodes[name].outputs)): out}
            values.update({(name, k): v for k, v in out.items()})
    return values[(target, port)], None


def _grid(images: torch.Tensor, labels: torch.Tensor, scale: int) -> tuple[Any, float, float]:
    """A PIL image: one row per class (in class order), the class's images left to right."""
    from dgraph.runtime.pictures import image_grid

    classes = sorted(int(c) for c in labels.unique())
    return image_grid(images, [torch.nonzero(labels == c).flatten().tolist() for c in classes],
                      scale)


def export_tensor_set(run_dir: str | Path, output: str | Path, *, node: str | None = None,
                      scale: int = 4, log: Callable[[str], None] | None = None
                      ) -> TensorSetResult:
    """Export the learned set ``node`` (default: the spec's export node) of the run
    ``run_dir`` to ``output`` (``.safetensors``) and a PNG grid beside it (same name,
    ``.png``). Raises :class:`~dgraph.errors.ExportError` naming what is wrong; on any failure
    neither file at ``-o`` changes."""
    from dgraph.exporters.source import _load_run, _pick_node, load_subject
    from PIL import PngImagePlugin
    from safetensors.torch import save_file

    say = log or (lambda _message: None)
    output = Path(output)
    _check_destination(output)
    png = output.with_suffix(".png")
    _spec, _text, graph = _load_run(Path(run_dir))
    name = _pick_node(graph, node, Path(run_dir))
    if graph.nodes[name].kind != "tensor":
        raise ExportError(f"node '{name}' is a {graph.nodes[name].kind} "
                          f"('{graph.nodes[name].spec.type}'), not a tensor node: a learned "
                          "set is exported from a tensor node; export a model to ONNX with "
                          "-o FILE.onnx")
    subject = load_subject(run_dir, name)
    node_desc = f"node '{name}' (tensor '{subject.node.spec.type}')"
    with torch.no_grad():
        values = subject.module()
    if not isinstance(values, dict) or not torch.is_tensor(values.get("images")) or \
            not torch.is_tensor(values.get("labels")):
        found = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ExportError(f"{node_desc} is not a learned set: it has no 'images' and 'labels' "
                          f"outputs (it gives {found}); export a node such as "
                          "'synthetic_digits'")
    images = values["images"].detach().float().cpu().contiguous()
    labels = values["labels"].detach().long().cpu().reshape(-1).contiguous()
    if len(images) != len(labels):
        raise ExportError(f"{node_desc}: {len(images)} images but {len(labels)} labels")
    tensors: dict[str, torch.Tensor] = {"images": images, "labels": labels}
    notes: list[str] = []
    soft_from = ""
    found = _soft_label_source(graph, name)
    if found is not None:
        source, port = found
        if source == name:
            soft, why = values[port], None
        else:
            try:
                soft, why = _compute(subject.run_dir, graph, source, port)
            except DgraphError as exc:
                raise ExportError(f"cannot compute the soft labels {source}.{port} of "
                                  f"{node_desc}: {exc}") from None
            except Exception as exc:
                raise ExportError(f"cannot compute the soft labels {source}.{port} of "
                                  f"{node_desc}: node computation failed: "
                                  f"{type(exc).__name__}: {exc}") from None
        if soft is None:
            notes.append(f"soft labels {source}.{port} not exported: {why}")
        elif tuple(soft.shape[:1]) != (len(labels),) or soft.dim() != 2:
            notes.append(f"soft labels {source}.{port} not exported: shape "
                         f"{list(soft.shape)}, expected [{len(labels)}, classes]")
        else:
            tensors["soft_labels"] = soft.detach().float().cpu().contiguous()
            soft_from = f"{source}.{port} ({graph.nodes[source].outputs[port].type})"
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            _check_finite(key, tensor, labels, name, output)

    counts = labels.unique(return_counts=True)[1]
    ipc = int(counts[0]) if bool((counts == counts[0]).all()) else None
    metadata = {
        "format": FORMAT,
        "spec": subject.spec.display_name,
        "spec_sha256": subject.spec_hash,
        "node": name,
        "type": subject.node.spec.type,
        "run": str(subject.run_dir.resolve()),
        "images_per_class": str(ipc) if ipc is not None else "unequal",
        "num_classes": str(len(counts)),
        "shapes": json.dumps({k: list(t.shape) for k, t in tensors.items()}),
        "dtypes": json.dumps({k: str(t.dtype).removeprefix("torch.")
                              for k, t in tensors.items()}),
        "png": png.name,
    }
    if soft_from:
        metadata["soft_labels_from"] = soft_from
    picture, low, high = _grid(images, labels, scale)
    text = PngImagePlugin.PngInfo()
    for key in ("spec", "node", "images_per_class"):
        text.add_text(key, metadata[key])
    text.add_text("layout", "one row per class, in class order")
    text.add_text("value_range", f"black = {low:g}, white = {high:g}")
    with _staging(output) as staged:  # the ONNX export's staging folder, beside -o
        folder = staged.parent
        try:
            save_file(tensors, str(folder / output.name), metadata=metadata)
            picture.save(folder / png.name, pnginfo=text)
            mask = os.umask(0)
            os.umask(mask)
            for staged in (folder / output.name, folder / png.name):
                os.chmod(staged, 0o666 & ~mask)  # as a plain open() would have made it
        except OSError as exc:
            raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
        try:
            os.replace(folder / png.name, png)
            os.replace(folder / output.name, output)
        except OSError as exc:
            raise ExportError(f"cannot move the files into place at {output}: "
                              f"{exc.strerror or exc}") from None
    shapes = ", ".join(f"{k} {list(t.shape)}" for k, t in tensors.items())
    say(f"wrote {output} ({shapes}; {ipc or 'unequal'} images per class) and {png} "
        f"({picture.width}x{picture.height}, one row per class)")
    for note in notes:
        say(f"  note: {note}")
    return TensorSetResult(path=output, png=png, node=name,
                           tensors={k: tuple(t.shape) for k, t in tensors.items()},
                           metadata=metadata, notes=notes)


def read_tensor_set(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a file ``export_tensor_set`` wrote."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise ExportError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not a tensor set written by dgraph export (its metadata "
                          f"has format {meta.get('format')!r}, expected '{FORMAT}')")
    return tensors, meta
