"""Declare a component once: its Python signature is its ports and its parameters.

A function or a class is decorated with its role (``@loss``, ``@op``, ``@model(...)``,
``@data``, ...). Positional arguments annotated with a port type (``Logits("B, C")``) are the
input ports, the return annotation (a port or :class:`Outputs`) gives the output ports,
and keyword-only arguments are the parameters (their annotations are the types, ``param()``
adds bounds and documentation). The pydantic model, the port tables, ``dgraph list`` and
``dgraph schema`` are all generated from that one signature, so they cannot drift apart.

Nothing here imports torch: declaring and validating stay torch-free. Torch is imported
inside the implementation (``import torch`` in the function body or in ``__init__``).

Three shapes of implementation:

* a **function** (``@loss``, ``@op``, ``@metric``): called every step with the input tensors as
  keyword arguments and the parameters as keyword arguments; returns a tensor (one output) or
  a dict of output tensors;
* a **class** deriving from :class:`Module` (``@model``, ``@projector``, ...): built once with
  the parameters; dgraph makes it a ``torch.nn.Module`` at build time, so ``__init__`` starts
  with ``super().__init__()`` and creates submodules as usual, and ``forward`` takes the input
  ports;
* a **data builder** (``@data``): called once with the parameters, returns a
  :class:`dgraph.data.DataSource` whose tensors are the output ports.

A keyword-only argument annotated :class:`~dgraph.registry.BuildContext` receives where the node
is built (device, seed, spec folder); it is not a parameter.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, cast, runtime_checkable

from pydantic import Field, StringConstraints, create_model, model_validator
from pydantic.fields import FieldInfo

from dgraph.errors import RegistryError
from dgraph.ports import SEMANTIC_TYPES, Port, Shape, parse_shape
from dgraph.registry import (
    COMPONENTS,
    ROLES,
    BuildContext,
    Component,
    Params,
    _check_declaration,
)
from dgraph.spec.model import Weight

__all__ = [
    "Accumulator",
    "DryRunReport",
    "LogsScalars",
    "Module",
    "Sampler",
    "Scheduled",
    "Scores",
    "StepAware",
    "NodeRef",
    "Outputs",
    "PortNames",
    "Projected",
    "PortType",
    "TypeOf",
    "component",
    "data",
    "loss",
    "metric",
    "model",
    "op",
    "param",
    "preset",
    "projector",
    "sampler",
    *SEMANTIC_TYPES,
]


class PortType:
    """A semantic port type; subscript it with a shape: ``Logits("B, C")``.

    ``Logits("B, C", "class scores")`` adds the port's documentation. Call it for more:
    ``Logits("B, V", "vocabulary scores", mismatch_hint="...")``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, shape: str | None = None, doc: str = "", *,
                 mismatch_hint: str = "") -> Port:
        return Port(self.name, shape, doc, mismatch_hint=mismatch_hint)

    def __repr__(self) -> str:
        return self.name


class TypeOf(PortType):
    """An output whose semantic type is that of what feeds input ``port``.

    ``TypeOf("x")("B, ...")``: generic ops use it so that ``add(Logits, Logits)`` still feeds a
    ``Logits`` input.
    """

    def __init__(self, port: str, fallback: str = "Tensor") -> None:
        super().__init__(fallback)
        self.port = port

    def __call__(self, shape: str | None = None, doc: str = "", *,
                 mismatch_hint: str = "") -> Port:
        return Port(self.name, shape, doc or f"same semantic type as input '{self.port}'",
                    mismatch_hint=mismatch_hint, like=self.port)


# One port type per semantic type: ``from dgraph.declare import Logits, Features``.
Tensor = PortType("Tensor")
Features = PortType("Features")
Images = PortType("Images")
Embeddings = PortType("Embeddings")
Latents = PortType("Latents")
Logits = PortType("Logits")
LogProbs = PortType("LogProbs")
Probs = PortType("Probs")
Labels = PortType("Labels")
Tokens = PortType("Tokens")
Mask = PortType("Mask")
Noise = PortType("Noise")
Timesteps = PortType("Timesteps")
Observations = PortType("Observations")
Actions = PortType("Actions")
Rewards = PortType("Rewards")
Scalar = PortType("Scalar")


class Outputs(dict):
    """Several output ports, by name: ``-> Outputs(logits=Logits("B, C"), features=...)``."""

    def __init__(self, **ports: Port | PortType) -> None:
        super().__init__({name: _as_port(port, f"output '{name}'") for name, port in ports.items()})


# A number, or a schedule of the step (``{schedule: linear, start: 1.0, end: 0.1, steps:
# 1000}``); a function component receives the value for the current step.
Scheduled = Weight


@runtime_checkable
class StepAware(Protocol):
    """A built node whose behaviour depends on the training step (scheduled parameters).

    The runtime calls ``set_step(step)`` on such modules before each step (and before
    evaluation, with the step reached).
    """

    def set_step(self, step: int) -> None: ...


@runtime_checkable
class LogsScalars(Protocol):
    """A built node with values of its own to log (a domain mixture's sampling weights).

    At every logging step the runtime adds ``logged_scalars()`` (tag -> number, e.g.
    ``ddk/weight/tempest``) to the step's record: ``metrics.jsonl`` and TensorBoard scalars.
    """

    def logged_scalars(self) -> Mapping[str, float]: ...


@runtime_checkable
class Accumulator(Protocol):
    """A metric that sees a whole evaluation split (see :mod:`dgraph.runtime.metrics`).

    ``reset()`` before an evaluation, ``update(**inputs)`` for each held-out batch,
    ``compute()`` at the end, returning named values. Such a node has no per-step outputs:
    training steps and the dry run never call it.
    """

    def reset(self) -> None: ...

    def update(self, **inputs: Any) -> None: ...

    def compute(self) -> Mapping[str, float]: ...


@runtime_checkable
class DryRunReport(Protocol):
    """A built node with something to tell about itself once the dry run has run it.

    After the meta-device run, ``dry_run_report()`` returns lines (the memory an unrolled
    inner loop will keep, measured on meta tensors); ``dgraph validate`` shows each as a
    ``note`` about the node (a :class:`~dgraph.errors.Problem` that is not an error).
    """

    def dry_run_report(self) -> list[str]: ...


@runtime_checkable
class Projected(Protocol):
    """A built node whose trained values are kept in a set (a clamp to ``[0, 1]``).

    The runtime calls ``project()`` after each optimizer step of an update that trains the
    node (after target nodes follow), with gradients off; it changes the values in place.
    """

    def project(self) -> None: ...


@runtime_checkable
class Sampler(Protocol):
    """A metric that draws samples of a generative model (a few-step diffusion student).

    ``sample_steps`` are the sampler step counts it evaluates; ``samples(steps, n)`` draws
    ``n`` samples in the data's space; ``sample_labels(n)`` gives their classes (the rows of
    a grid) or None; ``reference(n)`` gives up to ``n`` held-out data points (drawn behind
    2-D samples) or None. The runtime pictures the samples in TensorBoard at each evaluation
    and ``dgraph sample`` writes them to a PNG.
    """

    sample_steps: Sequence[int]

    def samples(self, steps: int, n: int | None = None, device: Any = None) -> Any: ...

    def sample_labels(self, n: int) -> Any | None: ...

    def reference(self, n: int) -> Any | None: ...


@runtime_checkable
class Generates(Protocol):
    """A node that writes a dataset at the start of the stages listing it (``generate:``).

    The runtime calls ``generate(path=..., seed=...)`` at the start of each stage whose
    ``generate`` names the node (after the stage's ``copy``, before its ``reinit``), on rank 0
    only, with torch's generators forked and seeded by ``seed``; it writes the JSONL file
    ``path`` (``<run>/generated/<node>/<stage>.jsonl``) atomically. A stage whose file exists
    already (a resumed run) is not generated again. The runtime then sets ``latest`` to the
    newest file on every rank, and rebuilds the data nodes that name the generator.
    """

    latest: Any

    def generate(self, *, path: Any, seed: int) -> None: ...


@runtime_checkable
class Scores(Protocol):
    """A verifier or critic: ``score(candidates)`` gives one number per generated candidate
    (an exact-answer check's 1/0, a mean log-likelihood), higher is better."""

    def score(self, candidates: Sequence[Any]) -> list[float]: ...


class NodeRef:
    """The type of a parameter that names another node of the spec (``source: student``).

    Validation checks that the node exists and ``viz`` draws the reference; the
    implementation receives the named node's built module in that parameter, not its name
    (the :class:`dgraph.data.DataSource` for a data node).
    Annotate ``NodeRef | None`` for an optional reference, and ``list[NodeRef]`` for several
    (``models: [teacher_a, teacher_b]``): each item is checked (a located error at the item),
    each is an edge of the graph, and the implementation receives the list of built modules
    in the spec's order. The names are in ``BuildContext.reference_names`` (``models[0]``).
    """


class PortNames(dict):
    """``{argument: port name}``: the names a node's spec gives the implementation's inputs.

    A keyword-only argument annotated ``PortNames`` is not a parameter: it receives this
    mapping, so that messages name the ports as the spec does, also in a :func:`preset` that
    renames them (``mse`` is ``feature_mse`` over ``prediction`` and ``target``).
    """


class Module:
    """Base of class components: becomes a ``torch.nn.Module`` when the node is built.

    Write the class as an ``nn.Module`` (``super().__init__()`` first, submodules as attributes,
    ``forward`` returning a dict of outputs or, with one output port, a tensor) without
    importing torch at the top of the file.
    """

    if TYPE_CHECKING:  # for the checker only: neither exists on Module itself
        # set on the class by @component (see ``decorate``)
        component: ClassVar[type[_Declared]]
        # written by each class component
        forward: Callable[..., Any]

    @classmethod
    def create(cls, context: BuildContext | None = None, **params: Any) -> Any:
        """The built torch module, outside a graph (scripts, tests, other components).

        ``params`` are validated and defaulted as in a spec: ``MLP.create(in_features=64,
        num_classes=10)``. ``context`` defaults to a CPU build named after the type.
        """
        declared = cls.component
        if context is None:
            context = BuildContext(node=declared.name)
        return declared(declared.Params.model_validate(params), context.node).build(context)


def param(default: Any = ..., *, doc: str = "", **constraints: Any) -> Any:
    """A parameter's default, bounds (``ge``, ``gt``, ``le``, ``lt``, ``pattern``, ...) and doc.

    ``param(doc=...)`` without a default makes the parameter required. Mutable defaults are
    copied per node (``param([128])``).
    """
    if isinstance(default, list | dict | set):
        value = default
        return Field(default_factory=lambda: type(value)(value), description=doc or None,
                     **constraints)
    return Field(default, description=doc or None, **constraints)


def _as_port(value: Any, what: str) -> Port:
    if isinstance(value, Port):
        return value
    if isinstance(value, TypeOf):
        return value(None)
    if isinstance(value, PortType):
        return Port(value.name, None)
    raise RegistryError(f"{what} must be annotated with a port such as Logits(\"B, C\"); "
                        f"found {value!r}")


def _default_output(roles: tuple[str, ...]) -> str:
    return "loss" if "loss" in roles else "value" if "metric" in roles else "y"


class _Declared(Component):
    """A Component generated from a declared function or class (see :func:`component`)."""

    implementation: Any = None
    shape: str = "function"  # "function", "class" or "builder"
    single_output: str | None = None
    context_arg: str | None = None
    node_refs: tuple[str, ...] = ()
    node_ref_lists: tuple[str, ...] = ()  # the node_refs annotated list[NodeRef]
    scheduled: tuple[str, ...] = ()
    ports_from: str | None = None
    names_arg: str | None = None  # the keyword-only argument annotated PortNames
    port_names: Mapping[str, str] = {}  # a preset's renamed inputs: port -> argument
    params_check: Callable[[Any], None] | None = None  # kept by presets
    # (params, {input: shape}) -> {output: shape}: the ``shapes=`` option, kept by presets
    shapes_fn: Callable[[Any, Mapping[str, Shape | None]], Mapping[str, Shape | None]] | None \
        = None

    def infer_output_shapes(self, input_shapes: Mapping[str, Shape | None]
                            ) -> dict[str, Shape | None]:
        if self.shapes_fn is None or self.ports_from:
            return {}
        # A preset may rename the inputs: the function knows them by its argument names.
        shapes = {self.port_names.get(port, port): shape for port, shape in input_shapes.items()}
        return dict(self.shapes_fn(self.params, shapes))

    def resolved_inputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        return self._copied(peers, outputs=False) if self.ports_from else dict(self.inputs)

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        return self._copied(peers, outputs=True) if self.ports_from else dict(self.outputs)

    def _copied(self, peers: Mapping[str, Component], *, outputs: bool) -> dict[str, Port]:
        """The ports of the node named by ``ports_from``, with its sizes filled in."""
        source = peers.get(getattr(self.params, self.ports_from or ""))
        if source is None:
            return {}
        ports = source.resolved_outputs(peers) if outputs else source.resolved_inputs(peers)
        sizes = source.port_params()
        return {name: Port(port.type, _concrete(port.shape, sizes), port.doc, port.optional,
                           port.mismatch_hint, port.like) for name, port in ports.items()}

    def port_params(self) -> dict[str, Any]:
        # A copy's shapes carry its source's sizes already; its own parameters do not apply.
        return {} if self.ports_from else self.kwargs()

    def kwargs(self) -> dict[str, Any]:
        return {name: getattr(self.params, name) for name in type(self.params).model_fields}

    def references(self) -> dict[str, str]:
        """``{param: node}``; the items of a ``list[NodeRef]`` parameter as ``param[i]``."""
        out: dict[str, str] = {}
        for name in self.node_refs:
            value = getattr(self.params, name)
            if name in self.node_ref_lists:
                out.update({f"{name}[{i}]": node for i, node in enumerate(value or ())})
            elif value is not None:
                out[name] = value
        return out

    def build(self, context: BuildContext) -> Any:
        # Its own copy of every value: nodes of one type with the same params share one
        # (frozen) params model, and an implementation may change a list it was given.
        kwargs = copy.deepcopy(self.kwargs())
        for name in self.references():
            if "[" not in name:
                kwargs[name] = context.references[name]
        for name in self.node_ref_lists:
            kwargs[name] = [context.references[f"{name}[{i}]"]
                            for i in range(len(getattr(self.params, name) or ()))]
        if self.context_arg is not None:
            kwargs[self.context_arg] = context
        if self.names_arg is not None:
            kwargs[self.names_arg] = PortNames(
                {self.port_names.get(port, port): port for port in self.inputs})
        # Read through the class: a function stored on a class would bind as a method.
        implementation = type(self).implementation
        if self.port_names:
            implementation = _renamed(implementation, self.port_names)
        if self.shape == "builder":
            return implementation(**kwargs)
        from dgraph._torch_declare import FunctionModule, torch_class

        if self.shape == "class":
            return torch_class(implementation)(**kwargs)
        schedules = {name: kwargs[name] for name in self.scheduled}
        return FunctionModule(implementation, kwargs, self.single_output, schedules)


def _renamed(fn: Callable[..., Any], names: Mapping[str, str]) -> Callable[..., Any]:
    """``fn`` receiving a preset's renamed ports under its own argument names."""
    @functools.wraps(fn)
    def call(**kwargs: Any) -> Any:
        return fn(**{names.get(key, key): value for key, value in kwargs.items()})
    return call


def _concrete(shape: str | None, sizes: Mapping[str, Any]) -> str | None:
    dims = parse_shape(shape, sizes)
    return None if dims is None else ", ".join(str(d) for d in dims)


def _signature(obj: Callable[..., Any], what: str) -> inspect.Signature:
    try:
        return inspect.signature(obj, eval_str=True)
    except Exception as exc:  # an annotation that does not evaluate, for instance
        raise RegistryError(f"{what}: cannot read its signature ({type(exc).__name__}: {exc})") \
            from exc


_NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


# The schema marks references so that editors and `dgraph list` can tell them from text.
_NODE_NAME_TYPE = Annotated[str, StringConstraints(pattern=_NODE_NAME),
                            Field(json_schema_extra={"x-dgraph-node-ref": True})]


def _node_ref(annotation: Any) -> Any:
    """The pydantic type of a NodeRef parameter (a node name, or a list of them for
    ``list[NodeRef]``); None for any other annotation."""
    if annotation is NodeRef:
        return _NODE_NAME_TYPE
    if _is_ref_list(annotation):
        return list[_NODE_NAME_TYPE]
    if getattr(annotation, "__args__", None) and set(annotation.__args__) == {NodeRef,
                                                                               type(None)}:
        return _NODE_NAME_TYPE | None
    return None


def _is_ref_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list and \
        getattr(annotation, "__args__", None) == (NodeRef,)


def _split_signature(sig: inspect.Signature, what: str, *, skip_self: bool
                     ) -> tuple[dict[str, Port], dict[str, tuple[Any, FieldInfo]], str | None]:
    ports: dict[str, Port] = {}
    params: dict[str, tuple[Any, FieldInfo]] = {}
    context_arg = None
    arguments = list(sig.parameters.values())
    if skip_self:
        arguments = arguments[1:]
    for arg in arguments:
        if arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD):
            raise RegistryError(f"{what}: *{arg.name} / **{arg.name} cannot be declared as "
                                "ports or parameters; name each one")
        if arg.kind == arg.KEYWORD_ONLY:
            if arg.annotation is BuildContext:
                context_arg = arg.name
                continue
            if arg.annotation is PortNames:  # filled in when built, like the context
                continue
            if arg.annotation is inspect.Parameter.empty:
                raise RegistryError(f"{what}: parameter '{arg.name}' needs a type annotation")
            default = arg.default
            if isinstance(default, FieldInfo):
                info = default
            elif default is inspect.Parameter.empty:
                info = Field(...)
            else:
                info = Field(default)
            annotation = arg.annotation
            if (as_text := _node_ref(annotation)) is not None:
                info.json_schema_extra = {"x-dgraph-node-ref": True}
                if _is_ref_list(annotation):
                    info.json_schema_extra["x-dgraph-node-list"] = True
                annotation = as_text
            params[arg.name] = (annotation, info)
        else:
            port = _as_port(arg.annotation, f"{what}: input '{arg.name}'")
            if arg.default is None and not port.optional:
                port = Port(port.type, port.shape, port.doc, optional=True,
                            mismatch_hint=port.mismatch_hint)
            ports[arg.name] = port
    return ports, params, context_arg


def _outputs(annotation: Any, roles: tuple[str, ...], what: str
             ) -> tuple[dict[str, Port], str | None]:
    if annotation is inspect.Signature.empty:
        raise RegistryError(f"{what}: the return annotation must give the output ports "
                            "(a port such as Scalar(), or Outputs(name=Logits(\"B, C\"), ...))")
    if isinstance(annotation, Outputs):
        return dict(annotation), None
    name = _default_output(roles)
    return {name: _as_port(annotation, f"{what}: return")}, name


def _params_model(name: str, fields: dict[str, tuple[Any, FieldInfo]],
                  check: Callable[[Any], None] | None) -> type[Params]:
    validators = {}
    if check is not None:
        def _run_check(self):  # noqa: ANN001 - pydantic passes the model
            check(self)
            return self
        validators["_check"] = model_validator(mode="after")(_run_check)
    model = create_model(  # type: ignore[call-overload]
        "".join(part.title() for part in name.split("_")) + "Params",
        __base__=Params, __validators__=validators, __doc__=f"Parameters of '{name}'.",
        **fields,
    )
    return model


def component(name: str | None = None, *, roles: tuple[str, ...],
              tappable: bool | None = None, check: Callable[[Any], None] | None = None,
              token_normalised: bool = False, follows: str | None = None,
              ports_from: str | None = None, evaluated: bool = True,
              cuda_graph_safe: bool = False,
              sizes: Callable[[Any], Mapping[str, Any]] | None = None,
              output_ports: Callable[[Any], Mapping[str, Port]] | None = None,
              summarize: Callable[[Mapping[str, float], int], dict[str, float]] | None = None,
              shapes: Callable[[Any, Mapping[str, Shape | None]],
                               Mapping[str, Shape | None]] | None = None,
              ) -> Callable[[Any], Any]:
    """Register a function, a :class:`Module` class or a data builder as a component type.

    Args:
        name: the type name written in specs (default: the function's name).
        roles: the node kinds it may play (see :data:`dgraph.registry.ROLES`).
        tappable: whether submodules can be tapped (default: True for classes).
        check: a function of the parameter model raising ``ValueError`` when a combination of
            parameters is invalid (reported by validation at the node's ``params``).
        token_normalised: a loss that also outputs ``sum`` and ``count``; under gradient
            accumulation it is normalised by the count over all micro-batches.
        follows: for targets, the :class:`NodeRef` parameter naming the node this one follows
            after each update that trains it; the built module implements
            ``follow(source_module)``.
        ports_from: a :class:`NodeRef` parameter whose node's ports this node copies, with
            their sizes (an EMA copy of any model); the signature's ports are then unused.
        evaluated: False for a node too costly to run on held-out batches (a sampler that
            generates sequences): evaluation skips it and whatever only it feeds, unless a
            metric reads them or the spec sets ``train.eval.samplers: true``.
        cuda_graph_safe: True when the implementation can run inside a CUDA graph: no host
            synchronisation (``.item()``, ``.tolist()``, ``if tensor:``), no branch on a
            tensor's value, no data-dependent shape (boolean-mask indexing, ``nonzero``), no
            tensor kept from one step to the next. ``train.compile: auto`` captures a step
            in CUDA graphs only when all its nodes declare it (unknown code is not).
        sizes: a function of the parameter model giving extra values that ``{name}`` in port
            shapes may use (a vocabulary size read from a model folder's config, say).
        output_ports: a function of the parameter model giving the output ports, when they
            depend on the parameters (a data file's keys, a flatten flag); the return
            annotation then lists the ports that ``dgraph list`` shows.
        summarize: for metrics, how outputs summed over the evaluation split become the
            reported values (see :meth:`dgraph.registry.Component.summarize`).
        shapes: a function ``(params, {input: shape}) -> {output: shape}`` computing output
            shapes statically from the shapes feeding the inputs (a concatenation's width),
            raising ``ValueError`` when they cannot combine (see
            :meth:`dgraph.registry.Component.infer_output_shapes`).
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise RegistryError(f"unknown roles {unknown}; known: {sorted(ROLES)}")

    def decorate(obj: Any) -> Any:
        type_name = name or obj.__name__
        what = f"component '{type_name}' ({obj.__module__}.{obj.__qualname__})"
        if inspect.isclass(obj):
            if not issubclass(obj, Module):
                raise RegistryError(f"{what}: a class component must derive from "
                                    "dgraph.declare.Module")
            init_ports, fields, context_arg = _split_signature(
                _signature(obj.__init__, what), what, skip_self=True)
            if init_ports:
                raise RegistryError(f"{what}: __init__ takes parameters only, keyword-only "
                                    f"(after '*'); found positional {sorted(init_ports)}")
            if "metric" in roles and hasattr(obj, "update") and hasattr(obj, "compute"):
                # An accumulator (see dgraph.runtime.metrics): update() takes the inputs,
                # compute() returns the reported values.
                update = _signature(obj.update, what)
                inputs, _, _ = _split_signature(update, f"{what}.update", skip_self=True)
                outputs, _ = _outputs(_signature(obj.compute, what).return_annotation,
                                      roles, f"{what}.compute")
                single = None
            elif ports_from is None:
                forward = _signature(obj.forward, what)
                inputs, _, _ = _split_signature(forward, f"{what}.forward", skip_self=True)
                outputs, single = _outputs(forward.return_annotation, roles, f"{what}.forward")
            else:  # a copy of another node: its ports are that node's, its forward generic
                inputs, outputs, single = {}, {}, None
            shape = "class"
        else:
            sig = _signature(obj, what)
            inputs, fields, context_arg = _split_signature(sig, what, skip_self=False)
            outputs, single = _outputs(sig.return_annotation, roles, what)
            shape = "builder" if "data" in roles else "function"
            if shape == "builder" and inputs:
                raise RegistryError(f"{what}: a data builder takes parameters only "
                                    f"(keyword-only); found inputs {sorted(inputs)}")
        for port_name, port in list(outputs.items()):
            if port.like is None:
                continue
            if port.like not in inputs:
                raise RegistryError(f"{what}: output '{port_name}' takes the type of input "
                                    f"'{port.like}', which is not an input port")
            if port.type == "Tensor":  # the fallback when unfed: the input's declared type
                outputs[port_name] = Port(inputs[port.like].type, port.shape, port.doc,
                                          port.optional, port.mismatch_hint, port.like)
        for port_name, port in {**inputs, **outputs}.items():
            try:
                parse_shape(port.shape)
            except ValueError as exc:
                raise RegistryError(f"{what}: port '{port_name}': {exc}") from None
        attributes = {
            "__doc__": obj.__doc__,
            "__module__": obj.__module__,
            "__qualname__": f"{obj.__qualname__}.component",
            "Params": _params_model(type_name, fields, check),
            "inputs": inputs,
            "outputs": outputs,
            "tappable": (shape == "class") if tappable is None else tappable,
            "implementation": obj,
            "shape": shape,
            "single_output": single,
            "context_arg": context_arg,
            "scheduled": tuple(n for n, (annotation, _) in fields.items()
                               if annotation is Scheduled),
            "node_refs": tuple(n for n, (_, info) in fields.items() if _is_ref(info)),
            "node_ref_lists": tuple(n for n, (_, info) in fields.items()
                                    if _is_ref(info, listed=True)),
            "token_normalised": token_normalised,
            "follows": follows,
            "evaluated": evaluated,
            "cuda_graph_safe": cuda_graph_safe,
            "names_arg": _injected(obj, PortNames, what),
            "params_check": staticmethod(check) if check is not None else None,
            "shapes_fn": staticmethod(shapes) if shapes is not None else None,
        }
        if attributes["scheduled"] and shape != "function":
            raise RegistryError(f"{what}: scheduled parameters {list(attributes['scheduled'])} "
                                "are for function components (called every step)")
        for flag, value in (("follows", follows), ("ports_from", ports_from)):
            if value is not None and (value not in attributes["node_refs"]
                                      or value in attributes["node_ref_lists"]):
                raise RegistryError(f"{what}: {flag}='{value}' must name a NodeRef parameter "
                                    "(one node, not a list)")
        attributes["ports_from"] = ports_from
        if output_ports is not None:
            if ports_from is not None:
                raise RegistryError(f"{what}: give ports_from or output_ports, not both")
            attributes["resolved_outputs"] = lambda self, peers: dict(output_ports(self.params))
        if sizes is not None:
            attributes["port_params"] = lambda self: {**self.kwargs(),
                                                      **_sizes_or_none(sizes, self.params)}
        if summarize is not None:
            attributes["summarize"] = lambda self, totals, examples: summarize(totals, examples)
        # Named as the declared object, so that it reads as the same thing in messages.
        declared = cast("type[_Declared]", type(obj.__name__, (_Declared,), attributes))
        declared.name = type_name
        declared.roles = tuple(roles)
        _check_declaration(declared, type_name)
        COMPONENTS.register(type_name, declared, origin=f"{obj.__module__}.{obj.__qualname__}")
        obj.component = declared
        return obj

    return decorate


def _injected(obj: Any, annotation: type, what: str) -> str | None:
    """The keyword-only argument of ``obj`` (of its ``__init__`` for a class) annotated
    ``annotation``, which dgraph fills in at build time; None when there is none."""
    sig = _signature(obj.__init__ if inspect.isclass(obj) else obj, what)
    return next((arg.name for arg in sig.parameters.values()
                 if arg.kind == arg.KEYWORD_ONLY and arg.annotation is annotation), None)


def _sizes_or_none(sizes: Callable[[Any], Mapping[str, Any]], params: Any) -> Mapping[str, Any]:
    """A component's extra sizes, or none when its parameters do not allow reading them.

    Sizes only sharpen static shape checks; a parameter the sizes function cannot use (a
    malformed config) is reported when the node is built, with its location.
    """
    try:
        return sizes(params)
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}


def _is_ref(info: FieldInfo, *, listed: bool = False) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(
        extra.get("x-dgraph-node-list" if listed else "x-dgraph-node-ref"))


def _role(role: str, *extra: str) -> Callable[..., Any]:
    def decorator(name: Any = None, **kwargs: Any) -> Any:
        if callable(name):  # used bare: @loss
            return component(roles=(role, *extra))(name)
        return component(name, roles=kwargs.pop("roles", (role, *extra)), **kwargs)
    decorator.__name__ = role
    decorator.__doc__ = f"Register a component whose nodes are of kind '{role}'."
    return decorator


loss = _role("loss")
op = _role("op")
metric = _role("metric")
data = _role("data")
sampler = _role("sampler")
projector = _role("projector")
model = _role("model", "teacher", "student")


def preset(name: str, of: Any, *, doc: str,
           inputs: Mapping[str, Port | PortType] | None = None,
           outputs: Mapping[str, Port | PortType] | None = None,
           **defaults: Any) -> type[Component]:
    """Register ``name`` as ``of`` with other defaults (``hinton_kd`` = ``kl_div`` + T² scaling).

    The preset shares ports and implementation; only parameter defaults (still overridable in
    a spec) and documentation differ.

    ``inputs`` declares the preset's input ports anew, one for each input of ``of`` in its
    order: each may have another name, type, shape and doc (the implementation still receives
    it under its own argument name; see :class:`PortNames`). ``outputs`` re-declares some
    output ports by name (type, shape, doc). ``mse`` is ``feature_mse`` over ``prediction``
    and ``target`` of any type.
    """
    base: type[_Declared] = getattr(of, "component", of)
    unknown = sorted(set(defaults) - set(base.Params.model_fields))
    if unknown:
        raise RegistryError(f"preset '{name}' of '{base.name}': unknown parameters {unknown}")
    fields = {}
    for field_name, info in base.Params.model_fields.items():
        copied = FieldInfo.merge_field_infos(info)
        if field_name in defaults:
            copied = FieldInfo.merge_field_infos(info, default=defaults[field_name])
            copied.default_factory = None
        fields[field_name] = (info.annotation, copied)
    attributes = {"__doc__": doc, "__module__": base.__module__,
                  "Params": _params_model(name, fields, base.params_check),
                  "preset_of": base.name}
    if inputs is not None or outputs is not None:
        attributes.update(_preset_ports(name, base, attributes, inputs or {}, outputs or {},
                                        replace_inputs=inputs is not None))
    declared = cast("type[_Declared]", type(f"{name}_preset", (base,), attributes))
    declared.name = name
    _check_declaration(declared, name)
    COMPONENTS.register(name, declared, origin=f"preset of {base.name}")
    return declared


def _preset_ports(name: str, base: type[_Declared], attributes: Mapping[str, Any],
                  inputs: Mapping[str, Port | PortType], outputs: Mapping[str, Port | PortType],
                  *, replace_inputs: bool) -> dict[str, Any]:
    """The ``inputs``, ``outputs`` and ``port_names`` of a preset that re-declares ports."""
    what = f"preset '{name}' of '{base.name}'"
    table = dict(attributes.get("inputs", base.inputs))
    names = dict(base.port_names)
    if replace_inputs:
        if len(inputs) != len(table):
            raise RegistryError(f"{what}: inputs must declare one port for each input of "
                                f"'{base.name}' ({', '.join(table)}), in that order; found "
                                f"{', '.join(inputs) or 'none'}")
        names = {}
        new_table = {}
        for (port_name, port), (old_name, old) in zip(inputs.items(), table.items(),
                                                      strict=True):
            # Optional exactly where the implementation has a default.
            new_table[port_name] = replace(_as_port(port, f"{what}: input '{port_name}'"),
                                           optional=old.optional)
            argument = base.port_names.get(old_name, old_name)
            if port_name != argument:
                names[port_name] = argument
        table = new_table
        if names and base.shape != "function":
            raise RegistryError(f"{what}: only a function component's inputs can be renamed")
        clash = sorted(set(table) & set(base.Params.model_fields))
        if clash:
            raise RegistryError(f"{what}: inputs {clash} have the names of parameters")
    out_table = dict(attributes.get("outputs", base.outputs))
    unknown = sorted(set(outputs) - set(out_table))
    if unknown:
        raise RegistryError(f"{what}: unknown outputs {unknown}; '{base.name}' outputs "
                            f"{', '.join(out_table)}")
    for port_name, port in outputs.items():
        out_table[port_name] = _as_port(port, f"{what}: output '{port_name}'")
    for port_name, port in {**table, **out_table}.items():
        try:
            parse_shape(port.shape)
        except ValueError as exc:
            raise RegistryError(f"{what}: port '{port_name}': {exc}") from None
        if port.like is not None and port.like not in table:
            raise RegistryError(f"{what}: output '{port_name}' takes the type of input "
                                f"'{port.like}', which is not an input port")
    return {"inputs": table, "outputs": out_table, "port_names": names}


def declared_ports(component_type: type[Component]) -> Mapping[str, Mapping[str, Port]]:
    """Input and output ports of a registered type (for documentation and tests)."""
    return {"inputs": component_type.inputs, "outputs": component_type.outputs}
