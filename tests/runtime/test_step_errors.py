"""Failures inside a training step are located (node, kind, type, inputs, original error),
and data that cannot make the configured batches is refused when the trainer is set up."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import make_trainer
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from dgraph.compiler.dryrun import dry_run
from dgraph.data import DataSource
from dgraph.errors import ComponentRuntimeError, DgraphError, ValidationError
from dgraph.graph import validate
from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component
from dgraph.runtime.data import BatchLoader
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec


class _ModelParams(Params):
    fault: str = Field("raise", pattern="^(raise|no_output|in_place)$")


class _FaultyModule(nn.Module):
    """y = linear(x), with one fault: raise on negative inputs, return no 'y', or change a
    tensor that autograd saved."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fault == "raise" and bool((x < 0).any()):
            raise ValueError("negative inputs are not supported")
        if self.fault == "no_output":
            return {}
        y = torch.sigmoid(self.lin(x))
        if self.fault == "in_place":
            y.add_(1.0)  # sigmoid saved its output for the backward pass
        return {"y": y}


@component("test_step_faulty", roles=("model",))
class _Faulty(Component):
    """A linear model with a fault chosen by ``fault``."""

    Params = _ModelParams
    inputs = {"x": Port("Features", "B, 3", "inputs")}
    outputs = {"y": Port("Features", "B, 3", "outputs")}

    def build(self, context: BuildContext):
        return _FaultyModule(self.params.fault)


class _VectorLossModule(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (x**2).mean(dim=1)}  # one value per example: not reduced


@component("test_step_vector_loss", roles=("loss",))
class _VectorLoss(Component):
    """Forgets to reduce over the batch."""

    inputs = {"x": Port("Features", "B, 3", "values")}
    outputs = {"loss": Port("Scalar", None, "meant to be a scalar")}

    def build(self, context: BuildContext):
        return _VectorLossModule()


class _DataParams(Params):
    fault: str = Field("float_labels", pattern="^(float_labels|missing_port)$")


@component("test_step_bad_data", roles=("data",))
class _BadData(Component):
    """Four examples with float labels, or without the declared 'y'."""

    Params = _DataParams
    outputs = {"x": Port("Features", "B, 3", "inputs"), "y": Port("Labels", "B", "classes")}

    def build(self, context: BuildContext):
        train = {"x": torch.zeros(4, 3)}
        if self.params.fault == "float_labels":
            train["y"] = torch.tensor([0.0, 1.0, 2.0, 1.5])
        return DataSource(train=train, batch_size=2)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _trainer(path: Path, *overrides: str) -> Trainer:
    return make_trainer(path, path.parent / "run", *overrides)


def _at(path: Path, needle: str) -> str:
    """file:line:column of the first occurrence of ``needle`` in the spec."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return f"{path}:{number}:{line.index(needle) + 1}"
    raise AssertionError(needle)


def _data(tmp_path: Path, rows: int = 8) -> None:
    x = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3) / 24
    if rows > 3:
        x[3, 0] = -1.0  # example 3 is in the second batch
    save_file({"x": x}, str(tmp_path / "d.safetensors"))


SPEC = """
    dgraph: 1
    name: faulty
    nodes:
      data:
        kind: data
        type: tensor_file
        params:
          path: d.safetensors
          batch_size: 2
          shuffle: false
          keys: {x: {key: x, type: Features, shape: "B, 3"}}
      m: {kind: model, type: test_step_faulty, params: {fault: FAULT}, inputs: {x: data.x}}
      fit: {kind: loss, type: mse, inputs: {prediction: m.y, target: data.x}}
    updates:
      main: {params: [m], objective: {fit: 1.0}}
    train: {steps: 4, log_every: 1}
    """


def test_a_component_raising_in_a_step_is_named_with_its_inputs(tmp_path):
    _data(tmp_path)
    path = _write(tmp_path, SPEC.replace("FAULT", "raise"))
    trainer = _trainer(path)
    with pytest.raises(ComponentRuntimeError) as info:
        trainer.run()
    assert str(info.value) == (
        f"{_at(path, 'm: {')}: step 1: update 'main': while executing node 'm' (model "
        "'test_step_faulty') on inputs (x=data.x float32[2, 3]): ValueError: negative inputs "
        "are not supported. Check the node's parameters against the inputs it was given")
    assert (info.value.node, info.value.port) == ("m", None)
    assert isinstance(info.value.__cause__, ValueError)


def test_a_missing_output_names_the_node_and_port(tmp_path):
    _data(tmp_path)
    path = _write(tmp_path, SPEC.replace("FAULT", "no_output"))
    with pytest.raises(ComponentRuntimeError) as info:
        _trainer(path).run()
    assert str(info.value) == (
        f"{_at(path, 'm: {')}: step 0: update 'main': node 'm' (model 'test_step_faulty') "
        "produced no output 'y', which node 'fit' reads (input 'prediction'); the component "
        "must return every output port it declares")
    assert (info.value.node, info.value.port) == ("m", "y")


def test_a_failing_backward_names_the_update_and_gradient_path(tmp_path):
    _data(tmp_path)
    path = _write(tmp_path, SPEC.replace("FAULT", "in_place"))
    with pytest.raises(ComponentRuntimeError) as info:
        _trainer(path).run()
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError) and "inplace operation" in str(cause)
    assert str(info.value) == (
        f"{_at(path, 'main: {')}: step 0: update 'main': back-propagation through 'm', 'fit' "
        f"failed: RuntimeError: {cause}. A component that changes a tensor in place after "
        "using it, or a custom autograd function, is the usual cause")


def test_a_loss_that_is_not_a_scalar_is_named(tmp_path):
    _data(tmp_path)
    text = SPEC.replace("FAULT", "raise").replace(
        "type: mse, inputs: {prediction: m.y, target: data.x}",
        "type: test_step_vector_loss, inputs: {x: m.y}")
    path = _write(tmp_path, text)
    with pytest.raises(ComponentRuntimeError) as info:
        _trainer(path).run()
    assert str(info.value) == (
        f"{_at(path, 'fit: {')}: step 0: update 'main': loss node 'fit' (loss "
        "'test_step_vector_loss') returned a 'loss' of shape [2]; a loss must be a single "
        "number (reduce it with a mean or sum in the component)")
    assert (info.value.node, info.value.port) == ("fit", "loss")


# -- data that cannot make the batches ---------------------------------------------------------
@pytest.mark.parametrize("drop_last", [True, False])
def test_a_batch_larger_than_the_dataset_is_refused_at_set_up(tmp_path, drop_last):
    _data(tmp_path, rows=5)
    text = SPEC.replace("FAULT", "raise").replace(
        "          batch_size: 2",
        f"          batch_size: 8\n          drop_last: {str(drop_last).lower()}")
    path = _write(tmp_path, text)
    expected = (
        "1 problem found in the spec:\n"
        f"{_at(path, '8')}: error[batch-larger-than-dataset]: node 'data': batch_size 8 is "
        "larger than the training split (5 examples)\n"
        "    expected: a batch_size between 1 and 5\n"
        "    found:    batch_size 8\n"
        "    hint: lower batch_size to at most 5, or give the source more examples")
    with pytest.raises(ValidationError) as info:
        _trainer(path)
    assert str(info.value) == expected
    # `dgraph validate` (the dry run) reports it too.
    graph, _ = validate(load_spec(path))
    with pytest.raises(ValidationError) as info:
        dry_run(graph)
    assert str(info.value) == expected


def test_an_empty_dataset_is_refused_at_set_up(tmp_path):
    save_file({"x": torch.zeros(0, 3)}, str(tmp_path / "d.safetensors"))
    path = _write(tmp_path, SPEC.replace("FAULT", "raise"))
    with pytest.raises(ValidationError) as info:
        _trainer(path)
    assert str(info.value) == (
        "1 problem found in the spec:\n"
        f"{_at(path, 'data:')}: error[empty-dataset]: node 'data': the data source has no "
        "training examples\n"
        "    expected: at least one training example\n"
        "    found:    0 examples\n"
        "    hint: check the source's parameters (path, filters, max_examples)")


BAD_DATA = """
    dgraph: 1
    name: bad_data
    nodes:
      data: {kind: data, type: test_step_bad_data, params: {fault: FAULT}}
      m: {kind: student, type: mlp, params: {in_features: 3, hidden: [4], num_classes: 3},
          inputs: {x: data.x}}
      ce: {kind: loss, type: cross_entropy, inputs: {logits: m.logits, target: data.y}}
    updates:
      main: {params: [m], objective: {ce: 1.0}}
    train: {steps: 2}
    """


def test_float_labels_are_refused_at_set_up(tmp_path):
    path = _write(tmp_path, BAD_DATA.replace("FAULT", "float_labels"))
    with pytest.raises(ValidationError) as info:
        _trainer(path)
    assert str(info.value) == (
        "1 problem found in the spec:\n"
        f"{_at(path, 'data:')}: error[data-dtype]: node 'data', port 'y': output 'y' is "
        "Labels, but the source built float32 values\n"
        "    expected: an integer tensor (class or vocabulary indices) for Labels\n"
        "    found:    float32\n"
        "    hint: store the labels as integers, or declare the port with a floating type "
        "(Probs for soft labels)")


def test_a_port_the_source_did_not_build_is_refused_at_set_up(tmp_path):
    path = _write(tmp_path, BAD_DATA.replace("FAULT", "missing_port"))
    with pytest.raises(ValidationError) as info:
        _trainer(path)
    assert str(info.value) == (
        "1 problem found in the spec:\n"
        f"{_at(path, 'data.y')}: error[missing-data-port]: node 'data', port 'y': the data "
        "source built no 'y' tensor, which ce reads\n"
        "    expected: a 'y' tensor in the training split\n"
        "    found:    tensors 'x'\n"
        "    hint: read one of the tensors the source has, or check its 'y' parameters")


def test_batch_loader_refuses_what_it_cannot_batch():
    with pytest.raises(DgraphError, match=re.escape(
            "batch_size 8 does not fit a dataset of 5 examples; use a batch_size between 1 "
            "and 5")):
        BatchLoader({"x": torch.zeros(5, 2)}, 8, shuffle=True, drop_last=True, seed=0)
    with pytest.raises(DgraphError, match=re.escape(
            "a batch loader needs at least one training example; the data source has none")):
        BatchLoader({"x": torch.zeros(0, 2)}, 1, shuffle=True, drop_last=True, seed=0)


@pytest.mark.parametrize("seed", [3, -5, 2**62, 2**64 - 1])
def test_batch_loader_seeds_of_any_size(seed):
    loader = BatchLoader({"i": torch.arange(10)}, 10, shuffle=True, drop_last=True, seed=seed)
    first, second = loader.next()["i"], loader.next()["i"]
    for epoch, drawn in ((0, first), (1, second)):
        value = seed * 1_000_003 + epoch
        if not -(2**63) <= value < 2**64:  # outside torch's seed range: wrapped
            value %= 2**64
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(value))
        assert torch.equal(drawn, expected)
    assert torch.equal(loader.batch_at(0, 0)["i"], first)
