"""The pydantic models of a spec file (version 1) and the loader that locates their errors.

Everything a user writes is checked here for form: unknown keys are rejected and every error
points at a file:line:column through the :class:`~dgraph.spec.source.SourceMap`. Whether the
named types, ports and nodes exist is the graph layer's job.
"""

from __future__ import annotations

import copy
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from dgraph.errors import Problem, ValidationError, did_you_mean
from dgraph.kinds import KINDS
from dgraph.spec._gc import collector_paused
from dgraph.spec.source import RawSpec, SourceMap, apply_overrides, load_raw

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_PATTERN",
    "SPEC_VERSION",
    "CacheSpec",
    "DistributedSpec",
    "EvalSpec",
    "ExportSpec",
    "InitSpec",
    "NodeSpec",
    "ObjectiveTerm",
    "OptimizerSpec",
    "ParamGroupSpec",
    "ScheduleSpec",
    "SchedulerSpec",
    "Spec",
    "StageSpec",
    "TrainSpec",
    "UpdateSpec",
    "load_spec",
    "share_fields_set",
    "spec_from_raw",
]

SPEC_VERSION: Final = 1  # Final: its type is Literal[1], that of Spec.dgraph

# Node, update and stage names. Generated step code uses a name only inside identifiers that
# dgraph prefixes (m_<node>, step_<update>) and inside repr() string literals, so Python
# keywords such as 'class' or 'lambda' are fine names; anything beyond ASCII letters, digits
# and '_' is not (no '-', '.', spaces, quotes, newlines or look-alike Unicode letters).
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH = 64
_NAME_EXPECTED = (
    "a name matching [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscore; not starting with "
    f"a digit), at most {MAX_NAME_LENGTH} characters"
)
# Whole numbers in a spec fit a signed 64-bit integer (what torch and numpy take).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
SEED_MAX = 2**32 - 1


class _Strict(BaseModel):
    # allow_inf_nan=False: every float is finite, also one written as the text "NaN" or
    # "Infinity" (which pydantic would otherwise turn into a float).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class InitSpec(_Strict):
    """Where a node's initial weights come from: a weights file, or another run's output."""

    weights: str | None = Field(None, description="a .safetensors or .pt state dict")
    run: str | None = Field(
        None,
        description="a run directory, or a zoo spec name whose default run directory is used",
    )
    node: str | None = Field(None, description="node name inside that run (default: this node)")
    strict: bool = Field(True, description="every parameter must be present in the file")


class CacheSpec(_Strict):
    """Store a frozen node's outputs per dataset example on the first pass and reuse them."""

    where: Literal["memory", "disk"] = "memory"
    path: str | None = Field(None, description="a folder holding a cache written by an earlier "
                             "run (its cache/ folder) to read; dgraph writes only into this "
                             "run's cache/ folder")


# While spec_from_raw validates a spec: one set of explicitly set field names per set of
# names for its node models (see share_fields_set), shared as each model is made; None
# elsewhere (models made elsewhere are left as pydantic makes them).
_NODE_FIELDS_SETS: ContextVar[dict[frozenset[str], set[str]] | None] = ContextVar(
    "_NODE_FIELDS_SETS", default=None)


class NodeSpec(_Strict):
    """One use of a component type in the graph."""

    kind: str = Field(description="the role: " + ", ".join(KINDS))
    type: str = Field(description="a registered component type (`dgraph list`); a node with "
                      "'shares' inherits its owner's")
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="input port -> 'node.port', or 'node.sub.module' to tap a submodule",
    )
    frozen: bool | None = Field(
        None, description="parameters fixed (default: true for teachers, false otherwise)"
    )
    shares: str | None = Field(
        None, description="reuse another node's module and weights (one model, several uses)"
    )
    init: InitSpec | None = None
    cache: CacheSpec | None = None
    reinit_every: int | None = Field(
        None, ge=1, description="re-draw the node's weights from its initialisation at the "
        "start of every N-th step (step 0 included), from the run's seeded generator: fresh "
        "random networks for distribution or gradient matching")

    # While spec_from_raw reads a spec: a dict of text keys (and, for inputs, text values) is
    # what pydantic would return a copy of, with the same keys and values; the model keeps
    # the written one (no second dict per node). Anything else is pydantic's to check and
    # word; and a model made elsewhere gets pydantic's copy, as always.
    @field_validator("params", mode="wrap")
    @classmethod
    def _written_params(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if type(value) is dict and _NODE_FIELDS_SETS.get() is not None and all(
                type(k) is str for k in value):
            return value
        return handler(value)

    @field_validator("inputs", mode="wrap")
    @classmethod
    def _written_inputs(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if type(value) is dict and _NODE_FIELDS_SETS.get() is not None and all(
                type(k) is str and type(v) is str for k, v in value.items()):
            return value
        return handler(value)

    @model_validator(mode="after")
    def _share_fields_set(self) -> NodeSpec:
        # At once, while the other nodes are still being validated: a spec of a million
        # nodes would otherwise hold a million sets until the spec is made.
        shared = _NODE_FIELDS_SETS.get()
        if shared is not None:
            share_fields_set(self, shared)
        return self

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            hint = did_you_mean(value, KINDS)
            raise ValueError(
                f"unknown kind '{value}' (kinds: {', '.join(KINDS)})"
                + (f"; {hint}" if hint else "")
            )
        return value

    @model_validator(mode="after")
    def _reinit_has_weights(self) -> NodeSpec:
        kind = KINDS.get(self.kind)
        if self.reinit_every is not None and kind is not None and not kind.parametrised:
            raise ValueError(f"reinit_every re-draws weights, and a node of kind '{self.kind}' "
                             "has none; put it on the model (or tensor) node")
        if self.reinit_every is not None and (self.shares is not None or self.init is not None):
            raise ValueError("reinit_every re-draws the node's own initial weights; it cannot "
                             "be combined with " + ("'shares'" if self.shares else "'init'"))
        return self

    @property
    def is_frozen(self) -> bool:
        if self.frozen is not None:
            return self.frozen
        kind = KINDS.get(self.kind)
        return kind is not None and kind.frozen


class ScheduleSpec(_Strict):
    """A coefficient that changes with the step: ``value(step)``."""

    schedule: Literal["constant", "linear", "cosine", "step", "warmup"] = "linear"
    start: float = 0.0
    end: float = 1.0
    steps: int = Field(1, ge=1, description="steps over which the value moves from start to end")
    begin: int = Field(0, ge=0, description="step at which the change begins")

    def at(self, step: int) -> float:
        """The value at a (0-based) step."""
        if self.schedule == "constant":
            return self.start
        t = min(max((step - self.begin) / self.steps, 0.0), 1.0)
        if self.schedule in ("linear", "warmup"):
            return self.start + (self.end - self.start) * t
        if self.schedule == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * t))
        return self.end if step >= self.begin + self.steps else self.start  # "step"


Weight = Annotated[float | ScheduleSpec, Field(union_mode="left_to_right")]


class ObjectiveTerm(_Strict):
    weight: Weight = 1.0


class OptimizerSpec(_Strict):
    type: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0)
    betas: tuple[float, float] | None = None
    eps: float | None = None
    nesterov: bool = False


class SchedulerSpec(_Strict):
    type: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(1000, ge=1, description="for 'step': decay every N steps")
    gamma: float = Field(0.1, gt=0, description="for 'step': multiplicative decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class ParamGroupSpec(_Strict):
    """Part of a node's parameters, with optional per-group optimizer settings."""

    node: str
    match: str | None = Field(None, description="glob on parameter names, e.g. 'head.*'")
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class UpdateSpec(_Strict):
    """One optimizer stepping one parameter set on one objective, at its own rate."""

    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec | None = None
    params: list[str | ParamGroupSpec] = Field(description="nodes or parameter groups trained")
    objective: dict[str, Weight | ObjectiveTerm] = Field(
        description="loss node -> weight (a number or a schedule)"
    )
    every: int = Field(1, ge=1, description="run on every N-th step (a 1:N ratio)")
    repeat: int = Field(1, ge=1, description="run this many times per step it runs (N:1)")
    clip_grad_norm: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step")

    def weight_of(self, loss: str) -> float | ScheduleSpec:
        term = self.objective[loss]
        return term.weight if isinstance(term, ObjectiveTerm) else term


class StageSpec(_Strict):
    """A phase of training with its own updates and length."""

    name: str
    steps: int = Field(ge=1)
    updates: list[str]
    copy_weights: dict[str, str] = Field(
        default_factory=dict,
        alias="copy",
        description="at the stage's start, destination node <- source node weights",
    )
    reinit: list[str] = Field(default_factory=list, description="nodes re-initialised at start")
    weights: dict[str, Weight] = Field(
        default_factory=dict, description="objective weights overridden during this stage"
    )
    generate: list[str] = Field(
        default_factory=list,
        description="generator nodes (dgraph.declare.Generates) that write a dataset at the "
        "stage's start (after copy, before reinit), which the data nodes naming them train on",
    )


class EvalSpec(_Strict):
    every: int = Field(100, ge=1, description="evaluate every N steps (and at the end)")
    batch_size: int = Field(512, ge=1)
    samplers: bool = Field(
        False, description="also run the samplers that generate (lm_sampler) on held-out "
        "batches, and report the losses on their samples; by default evaluation skips them "
        "and what only they feed, unless a metric reads it")


class DistributedSpec(_Strict):
    """How a job of several processes (``--nproc``, torchrun) shares the work."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every rank holds every module and the gradients are averaged; "
        "fsdp: the trained modules are sharded across ranks (torch's fully_shard), each "
        "element of a ModuleList (a transformer layer) its own unit")
    shard_frozen: bool = Field(False, description="fsdp: shard the frozen teachers too")
    param_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="fsdp mixed precision: the dtype of the gathered parameters in "
        "forward and backward (the sharded parameters stay fp32)")
    reduce_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="fsdp mixed precision: the dtype gradients are reduced in")
    checkpoint: Literal["whole", "sharded"] = Field(
        "whole", description="whole: rank 0 gathers the sharded tensors into one checkpoint "
        "file; sharded (fsdp): every rank writes its own shards (torch.distributed.checkpoint "
        "in safetensors files), no rank ever holds the whole model; both resume on any "
        "number of processes")


COMPILE_SETTINGS: Final = ("auto", "reduce-overhead")  # train.compile's values beside bools


class TrainSpec(_Strict):
    steps: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX,
                      description=f"seed of every random generator, 0 to {SEED_MAX} (2**32 - 1)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    compile: bool | Literal["auto", "reduce-overhead"] = Field(
        False, description="torch.compile each update's step (backward and optimizer stay "
        "eager): false eager; true torch.compile's default mode; reduce-overhead: CUDA "
        "graphs; auto: CUDA graphs where valid, else eager (the reason is logged)")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    out: str | None = Field(None, description="run directory (default: runs/<spec name>)")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_setting(cls, value: Any) -> Any:
        if isinstance(value, bool) or value in COMPILE_SETTINGS:
            return value
        from pydantic_core import PydanticCustomError

        # A literal's error, so that it reads like the other closed sets of values.
        raise PydanticCustomError(
            "literal_error", "Input should be false, true, 'auto' or 'reduce-overhead'")


class ExportSpec(_Strict):
    node: str | None = Field(None, description="node to export (default: the student)")
    opset: int = Field(18, ge=7)
    tolerance: float = Field(1e-4, gt=0)


class Spec(_Strict):
    """A distillation method: components wired into a graph, updates, training and export."""

    dgraph: Literal[1] = Field(SPEC_VERSION, description="spec language version")
    name: str | None = None
    description: str = ""
    nodes: dict[str, NodeSpec]
    updates: dict[str, UpdateSpec] = Field(default_factory=dict)
    stages: list[StageSpec] | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    _source: SourceMap = PrivateAttr(default_factory=SourceMap)
    _path: Path | None = PrivateAttr(default=None)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    # True when _raw["nodes"] holds only the nodes whose model does not repeat their written
    # mapping value for value, in the order of the model's fields (see _written_once)
    _nodes_as_keys: bool = PrivateAttr(default=False)

    @property
    def source(self) -> SourceMap:
        return self._source

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def raw(self) -> dict[str, Any]:
        """The merged, overridden spec as plain data (what ``spec.resolved.yaml`` holds).

        A node whose model holds every value it was written with is kept once, as its model
        and the keys written: its mapping here is made anew, in the order written, from the
        model's values (the very ``params`` and ``inputs`` dicts)."""
        if not self._nodes_as_keys:
            return self._raw
        kept = self._raw["nodes"]  # name -> the mapping, or the keys in the order written
        nodes = {}
        for name, model in self.nodes.items():
            written = kept.get(name)
            if type(written) is not dict:
                fields = model.__dict__
                keys = written if written is not None else (
                    key for key in _NODE_FIELDS if key in model.model_fields_set)
                written = {key: fields[key] for key in keys}
            nodes[name] = written
        return {key: nodes if key == "nodes" else value for key, value in self._raw.items()}

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return self._path.stem if self._path else "spec"


def _clean_loc(loc: Iterable[Any]) -> tuple[str | int, ...]:
    """A pydantic error's loc without the union-branch labels pydantic inserts into it."""
    path: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and (
            part in ("float", "str", "int", "ObjectiveTerm", "ScheduleSpec", "ParamGroupSpec")
            or part.startswith(("function-", "literal[", "union[", "tagged-union["))
        ):
            continue
        path.append(part)
    return tuple(path)


def _is_type_error(error: ErrorDetails) -> bool:
    kind = error["type"]
    return kind.endswith(("_type", "_parsing")) or kind == "int_from_float"


def _expected_of(error: ErrorDetails) -> str:
    if error["type"] == "model_type":
        return f"a mapping ({error.get('ctx', {}).get('class_name', 'object')})"
    text = error["msg"]
    if text.startswith("Input should be "):
        text = text[len("Input should be "):].split(", unable to", 1)[0]
    return text


_MODEL_BRANCHES = ("ObjectiveTerm", "ScheduleSpec", "ParamGroupSpec")


def _fitting_branches(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Keep, at each union of mappings, the branches whose keys fit the value best.

    ``{schedule: linear, steps: 0}`` as a weight is a schedule with a bad ``steps``, not an
    objective term with four unknown keys: branches with the fewest unknown or missing keys
    of their own are reported, the others are dropped.
    """
    branches: dict[tuple, dict[str, list[tuple[int, int]]]] = {}
    for index, error in enumerate(errors):
        loc = error["loc"]
        for at, part in enumerate(loc):
            if part in _MODEL_BRANCHES:
                point = branches.setdefault(_clean_loc(loc[:at]), {})
                point.setdefault(part, []).append((index, at))
    drop: set[int] = set()
    for by_branch in branches.values():
        if len(by_branch) < 2:
            continue
        misfits = {
            branch: sum(1 for i, at in hits if len(errors[i]["loc"]) == at + 2
                        and errors[i]["type"] in ("extra_forbidden", "missing"))
            for branch, hits in by_branch.items()
        }
        best = min(misfits.values())
        for branch, hits in by_branch.items():
            if misfits[branch] > best:
                drop.update(i for i, _ in hits)
    return [e for i, e in enumerate(errors) if i not in drop]


def _problems_from_pydantic(errors: list[ErrorDetails], source: SourceMap) -> list[Problem]:
    """One problem per wrong value: a union's branches are reported as one set of choices."""
    errors = _fitting_branches(errors)
    paths = [_clean_loc(e["loc"]) for e in errors]
    unknown = [p for e, p in zip(errors, paths, strict=True)
               if e["type"] == "extra_forbidden" and p]
    # "NaN" for a number-or-schedule: that it is not finite says more than that it is not a
    # schedule either.
    not_finite = {p for e, p in zip(errors, paths, strict=True) if e["type"] == "finite_number"}
    kept: list[tuple[ErrorDetails, tuple]] = []
    for error, path in zip(errors, paths, strict=True):
        if path in not_finite and _is_type_error(error):
            continue
        deeper = any(len(q) > len(path) and q[: len(path)] == path for q in paths)
        if _is_type_error(error) and isinstance(error.get("input"), dict) and deeper:
            continue  # the mapping branch of the union explains what is wrong inside it
        if error["type"] == "missing" and path and any(
            u[:-1] == path[:-1] and did_you_mean(str(u[-1]), [str(path[-1])]) for u in unknown
        ):
            continue  # the misspelt key's did-you-mean already names the missing one
        kept.append((error, path))
    alternatives: dict[tuple, list[str]] = {}
    problems = []
    for error, path in kept:
        if _is_type_error(error):
            if path in alternatives:
                if _expected_of(error) not in alternatives[path]:
                    alternatives[path].append(_expected_of(error))
                continue
            alternatives[path] = [_expected_of(error)]
        problems.append((error, path))
    out = []
    for error, path in problems:
        choices = alternatives.get(path) if _is_type_error(error) else None
        out.append(_problem_from_pydantic(error, source, choices))
    return out


def _problem_from_pydantic(
    error: ErrorDetails, source: SourceMap, choices: list[str] | None = None
) -> Problem:
    kind = error["type"]
    path: list[str | int] = list(_clean_loc(error["loc"]))
    dotted = ".".join(str(p) for p in path) or "<top level>"
    node = str(path[1]) if len(path) > 1 and path[0] == "nodes" else None
    found = error.get("input")
    if kind == "extra_forbidden":
        parent = path[:-1]
        name = str(path[-1])
        allowed = _allowed_keys(parent)
        hint = did_you_mean(name, allowed) if allowed else None
        return Problem(
            code="unknown-key",
            message=f"unknown key '{name}' in {'.'.join(map(str, parent)) or 'the spec'}",
            location=source.key_where(path),
            node=node,
            expected=("one of: " + ", ".join(sorted(allowed))) if allowed else None,
            found=f"key '{name}'",
            suggestion=hint or "remove it; misspelled keys are never silently ignored",
        )
    if kind == "missing":
        parent_text = ".".join(map(str, path[:-1])) or "the spec"
        present = _present_keys(error.get("input"))
        return Problem(
            code="missing-key",
            message=f"required key '{path[-1]}' is missing from {parent_text}",
            location=source.key_where(path[:-1]) if path[:-1] else source.where(()),
            node=node,
            expected=f"'{path[-1]}' in {parent_text}" + _described(path),
            found=f"keys: {present}" if present else "no keys",
            suggestion=f"add '{path[-1]}:'",
        )
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "value_error" and len(path) == 3 and path[0] == "nodes" and path[2] == "kind":
        hint = did_you_mean(str(found), KINDS)
        return Problem(
            code="unknown-kind",
            message=f"unknown kind '{found}'",
            location=source.where(path),
            node=node,
            expected="one of: " + ", ".join(KINDS),
            found=f"kind: {found}",
            suggestion=hint or "`dgraph list KIND` shows the component types of each kind",
        )
    expected = _expected_of(error)
    if kind == "int_parsing_size":  # pydantic's words for a float such as 1e23 in an int field
        message = "the number is too large for a whole number"
        expected = "a valid integer"
    if choices and len(choices) > 1:
        expected = " or ".join(choices)
        message = "it is none of the allowed forms"
    return Problem(
        code="bad-value",
        message=f"invalid value for '{dotted}': {message}",
        location=source.where(path),
        node=node,
        expected=expected + _described(path),
        found=_short(found),
        suggestion="`dgraph schema` describes every key and the values it accepts",
    )


def _present_keys(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(str(k) for k in value) or ""
    return ""


def _described(path: list[str | int]) -> str:
    """``; description`` of the spec field at ``path``, when it has one."""
    model: type[BaseModel] | None = Spec
    field = None
    steps = list(path)
    while steps and model is not None:
        key = steps.pop(0)
        field = model.model_fields.get(str(key)) if isinstance(key, str) else None
        if field is None:
            return ""
        if _is_container(field.annotation) and steps:
            steps.pop(0)
        model = _model_in(field.annotation)
    if field is None or steps or not field.description:
        return ""
    return f"; {field.description}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(parent: list[str | int]) -> list[str]:
    """Keys allowed where an unknown one was found, for the did-you-mean (of every mapping
    form a value may take there: an objective term or a schedule)."""
    models: list[type[BaseModel]] = [Spec]
    steps = list(parent)
    while steps and models:
        key = steps.pop(0)
        fields = [m.model_fields[key] for m in models
                  if isinstance(key, str) and key in m.model_fields]
        if not fields:
            return []
        annotation = fields[0].annotation
        if _is_container(annotation):
            if not steps:
                return []
            steps.pop(0)  # the mapping key / list index
        models = _models_in(annotation)
    names: list[str] = []
    for model in models:
        for name, field in model.model_fields.items():
            if (field.alias or name) not in names:
                names.append(field.alias or name)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += [m for m in _models_in(arg) if m not in found]
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_container(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    if origin in (dict, list):
        return True
    return any(_is_container(a) for a in getattr(annotation, "__args__", ()) or ())


def _name_problem(name: str, what: str, location: Any, taken: Iterable[str]) -> Problem | None:
    """A located problem when ``name`` breaks the name rule (see :data:`NAME_PATTERN`).

    ``location`` is the problem's location, or a function that gives it (located only when
    the name is wrong)."""
    if NAME_PATTERN.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return None
    if callable(location):
        location = location()
    if not name:
        reason = "it is empty"
    elif len(name) > MAX_NAME_LENGTH:
        reason = f"it is {len(name)} characters long"
    elif name[0].isascii() and name[0].isdigit():
        reason = "it starts with a digit"
    else:
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c == "_")))
        reason = f"it contains {bad!r}"
    return Problem(
        code="bad-name",
        message=f"the {what} name {_short(name)} is not allowed: {reason}",
        location=location,
        expected=_NAME_EXPECTED,
        found=_short(name),
        suggestion=f"rename it, e.g. to '{_clean_name(name, taken)}', and use the new name "
        "wherever the spec refers to it (Python keywords are allowed: generated code "
        "prefixes every name)",
    )


def _clean_name(name: str, taken: Iterable[str]) -> str:
    """A name that follows the rule and resembles ``name``: 'my-loss' -> 'my_loss'."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    clean = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_text).strip("_") or "node"
    if clean[0].isdigit():
        clean = f"_{clean}"
    clean = clean[:MAX_NAME_LENGTH]
    taken = set(taken)
    candidate, i = clean, 1
    while candidate in taken:
        i += 1
        candidate = f"{clean[:MAX_NAME_LENGTH - len(str(i)) - 1]}_{i}"
    return candidate


def _name_problems(data: dict[str, Any], source: SourceMap) -> list[Problem]:
    """Every node, update and stage name that breaks the name rule, located at its key."""
    problems = []
    for section, what in (("nodes", "node"), ("updates", "update")):
        names = data.get(section)
        if isinstance(names, dict):
            for name in names:
                problem = _name_problem(
                    str(name), what, lambda at=(section, name): source.key_where(at), names)
                if problem is not None:
                    problems.append(problem)
    stages = data.get("stages")
    if isinstance(stages, list):
        stage_names = [s.get("name") for s in stages if isinstance(s, dict)]
        for index, stage in enumerate(stages):
            name = stage.get("name") if isinstance(stage, dict) else None
            if isinstance(name, str):
                problem = _name_problem(name, "stage", source.where(("stages", index, "name")),
                                        [n for n in stage_names if isinstance(n, str)])
                if problem is not None:
                    problems.append(problem)
    return problems


def _value_problems(data: Any, source: SourceMap) -> tuple[list[Problem], set[tuple]]:
    """Numbers no spec may hold, anywhere (also in component params): NaN, infinities and
    integers beyond 64 bits; and text with a NUL character. Returns the problems and their
    paths (so that pydantic's view of the same values is not reported twice)."""
    problems: list[Problem] = []
    paths: set[tuple] = set()
    for path, value in _suspect_values(data):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem(
                code="non-finite",
                message=f"'{_dotted(path)}' is not a finite number",
                location=source.where(path),
                node=_node_of(path),
                expected="a finite number",
                found=repr(value),
                suggestion="a spec holds finite numbers only (NaN and infinities are refused); "
                "write a finite value",
            ))
            paths.add(path)
        elif isinstance(value, int) and not isinstance(value, bool) and not (
                INT_MIN <= value <= INT_MAX):
            problems.append(Problem(
                code="number-too-large",
                message=f"'{_dotted(path)}' is too large for a whole number",
                location=source.where(path),
                node=_node_of(path),
                expected="a whole number from -2**63 to 2**63 - 1",
                found=_short(value),
                suggestion="write a smaller number",
            ))
            paths.add(path)
        elif isinstance(value, str) and "\0" in value:
            problems.append(Problem(
                code="bad-text",
                message=f"'{_dotted(path)}' holds a NUL character",
                location=source.where(path),
                node=_node_of(path),
                expected="text without NUL characters",
                found=_short(value),
                suggestion="remove the '\\0' from the text",
            ))
            paths.add(path)
    return problems, paths


def _suspect_values(data: Any) -> Iterator[tuple[tuple, Any]]:
    """``(path, value)`` of every value that is not a container and may break a rule of
    :func:`_value_problems` (all but plainly fine text, numbers, booleans and nulls), in the
    order of a depth-first walk that visits the entries of each mapping and list last to
    first. A path is made only for those values."""
    if not isinstance(data, (dict, list)):
        yield (), data
        return
    stack: list[tuple[tuple, Iterator[tuple[Any, Any]]]] = [((), _backwards(data))]
    while stack:
        path, entries = stack[-1]
        for key, value in entries:
            kind = type(value)
            if kind is str:
                if "\0" in value:
                    yield (*path, key), value
            elif kind is bool or value is None:
                pass
            elif kind is int:
                if not INT_MIN <= value <= INT_MAX:
                    yield (*path, key), value
            elif kind is float:
                if not math.isfinite(value):
                    yield (*path, key), value
            elif isinstance(value, (dict, list)):
                stack.append(((*path, key), _backwards(value)))
                break  # its entries first, then this container's next ones
            else:
                yield (*path, key), value
        else:
            stack.pop()


def _backwards(value: dict | list) -> Iterator[tuple[Any, Any]]:
    """A mapping's items, or a list's (index, item) pairs, last to first."""
    if isinstance(value, dict):
        return reversed(value.items())
    return zip(range(len(value) - 1, -1, -1), reversed(value), strict=True)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _node_of(path: tuple) -> str | None:
    return str(path[1]) if len(path) > 1 and path[0] == "nodes" else None


def _inherit_shared(data: dict[str, Any]) -> dict[str, Any]:
    """Nodes with ``shares: owner`` take the owner's kind, type and params when they omit them.

    One module used at several places needs only its ``inputs`` at the second place. Values
    written explicitly stay (validation then checks that type and params agree with the
    owner's). Returns a new mapping; ``data`` is not changed.
    """
    nodes = data.get("nodes")
    if not isinstance(nodes, dict):
        return data
    merged: dict[str, Any] | None = None  # a copy of nodes, made once a node inherits
    for name, node in nodes.items():
        if not isinstance(node, dict) or not isinstance(node.get("shares"), str):
            continue
        owner = nodes.get(node["shares"])
        if not isinstance(owner, dict) or "shares" in owner:
            continue  # reported by the graph's shares check
        inherited = {key: copy.deepcopy(owner[key]) for key in ("kind", "type", "params")
                     if key in owner and key not in node}
        if inherited:
            if merged is None:
                merged = dict(nodes)
            merged[name] = {**node, **inherited}
    return {**data, "nodes": merged if merged is not None else nodes}


def spec_from_raw(raw: RawSpec) -> Spec:
    """Check a raw spec's form with pydantic; all problems are reported together.

    Besides pydantic's checks: node, update and stage names follow :data:`NAME_PATTERN`
    (at most :data:`MAX_NAME_LENGTH` characters; Python keywords are allowed because
    generated code prefixes every name), and no value anywhere is NaN, infinite, an integer
    beyond 64 bits or text with a NUL character.
    """
    data = raw.data
    version = data.get("dgraph", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise ValidationError([
            Problem(
                code="bad-version",
                message=f"this dgraph reads spec language version {SPEC_VERSION}",
                location=raw.source.where(("dgraph",)),
                expected=f"dgraph: {SPEC_VERSION}",
                found=f"dgraph: {version!r}",
                suggestion="upgrade dgraph, or rewrite the spec for this version",
            )
        ])
    data = _inherit_shared(data)
    problems, flagged = _value_problems(data, raw.source)
    problems += _name_problems(data, raw.source)
    sharing = _NODE_FIELDS_SETS.set({})  # the node models of this spec share their sets
    try:
        spec = Spec.model_validate(data)
    except PydanticValidationError as exc:
        errors = [e for e in exc.errors() if _clean_loc(e["loc"]) not in flagged]
        problems += _problems_from_pydantic(errors, raw.source)
    finally:
        _NODE_FIELDS_SETS.reset(sharing)
    if problems:
        raise ValidationError(_dedupe(problems)) from None
    # The node models already hold the written params and inputs dicts (NodeSpec's
    # _written_params/_written_inputs) and share their sets of fields set (_share_fields_set).
    spec._source = raw.source
    spec._path = raw.path
    spec._raw, spec._nodes_as_keys = _written_once(spec, data)
    return spec


_SAME_BY_VALUE = (str, int, bool)


def _repeated(node: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether a model's fields hold every value of its written mapping (see _written_once)."""
    for key, value in node.items():
        held = fields.get(key, _MISSING)
        if value is not held and not (type(value) is type(held) and type(value) in
                                      _SAME_BY_VALUE and value == held):
            return False
    return True


_MISSING = object()
_NODE_FIELDS = tuple(NodeSpec.model_fields)


def _written_once(spec: Spec, data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``data`` without the node mappings that their models repeat value for value (the same
    objects, or equal text, numbers and booleans of the same type; never a nested model such
    as ``init``), so that a node's data is kept once, in its model; :attr:`Spec.raw` makes
    the mappings anew. A node written in another order than the model's fields keeps the
    tuple of its keys (one per order); a node that is not repeated keeps its mapping. Also
    returns whether any mapping was left out.
    """
    nodes = data.get("nodes")
    if type(nodes) is not dict or list(nodes) != list(spec.nodes):
        return data, False
    orders: dict[tuple[str, ...], tuple[str, ...]] = {}
    in_field_order: dict[int, tuple[str, ...]] = {}  # by the (shared) set of fields set
    kept: dict[str, Any] = {}
    models = spec.nodes
    for name, node in nodes.items():
        model = models[name]
        fields = model.__dict__
        if type(node) is dict and _repeated(node, fields):
            keys = tuple(node)
            fields_set = model.model_fields_set
            usual = in_field_order.get(id(fields_set))
            if usual is None:
                usual = in_field_order[id(fields_set)] = tuple(
                    k for k in _NODE_FIELDS if k in fields_set)
            if keys != usual:
                kept[name] = orders.setdefault(keys, keys)
        else:
            kept[name] = node
    if len(kept) == len(nodes):
        return data, False
    return {key: kept if key == "nodes" else value for key, value in data.items()}, True


def share_fields_set(model: BaseModel, shared: dict[frozenset[str], set[str]]) -> None:
    """Let ``model`` keep the same set of explicitly set field names as the models before it
    with the same names (pydantic makes a set, about 200 bytes, for every instance).

    Nothing in dgraph reads the set; pydantic reads it for ``model_dump(exclude_unset=True)``
    and adds to it when a field is assigned, which dgraph never does to the models of a spec.
    """
    fields = model.__pydantic_fields_set__
    same = shared.setdefault(frozenset(fields), fields)
    if same is not fields:
        object.__setattr__(model, "__pydantic_fields_set__", same)


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        key = (str(p.location), p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_spec(path_or_name: str | Path, overrides: Iterable[str] = ()) -> Spec:
    """Read, merge (``extends``), override (``--set``) and form-check a spec."""
    with collector_paused():  # nothing made here is a cycle (see dgraph.spec._gc)
        raw = apply_overrides(load_raw(path_or_name), list(overrides))
        return spec_from_raw(raw)
