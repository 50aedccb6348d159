"""Committee voting for soft labels (CV-DD, Zhong et al. 2025): K networks label a small set.

A committee of K networks of one architecture votes on every example of a (synthetic or
selected) set: the soft label is the members' softmax at a temperature, averaged with weights
given by each member's accuracy on the held-out split, so that better members count more. The
members are trained by another spec (their final weights in a run, e.g. the experts of
``dd_mtt_experts``) or re-drawn: initialised afresh under their own seeds and trained here on
the real training split. ``dd_evaluator`` trains on the votes through its ``soft_labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dgraph.declare import Features, Module, NodeRef, Outputs, Probs, op, param
from dgraph.errors import did_you_mean
from dgraph.registry import COMPONENTS, BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["CommitteeVote", "committee_vote", "member_weights"]


def committee_vote(logits: list[torch.Tensor], weights: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """``sum_k w_k softmax(z_k / T)`` for the members' scores ``z_k [N, C]`` and weights
    ``w [K]`` (summing to 1): a probability ``[N, C]`` per example."""
    import torch

    probs = torch.stack([torch.softmax(z.float() / temperature, dim=-1) for z in logits])
    return (weights.to(probs).reshape(-1, 1, 1) * probs).sum(0)


def member_weights(accuracies: list[float],
                   weighting: Literal["accuracy", "uniform"] = "accuracy") -> torch.Tensor:
    """``w_k = a_k / sum_j a_j`` (``accuracy``) or ``1 / K`` (``uniform``), float64."""
    import torch

    acc = torch.tensor(accuracies, dtype=torch.float64)
    if weighting == "uniform" or float(acc.sum()) == 0.0:
        return torch.full_like(acc, 1.0 / len(acc))
    return acc / acc.sum()


def _check(p: Any) -> None:  # the generated parameter model
    model_types = [n for n, c in COMPONENTS.items() if "model" in c.roles]
    if p.model not in model_types:
        hint = did_you_mean(p.model, model_types)
        raise ValueError(f"model: '{p.model}' is not a model type"
                         + (f"; {hint}" if hint else " (e.g. mlp, cnn)"))
    fields = COMPONENTS.get(p.model).Params.model_fields
    unknown = sorted(set(p.model_params) - set(fields))
    if unknown:
        raise ValueError(f"model_params: unknown parameters {unknown}; '{p.model}' takes "
                         f"{', '.join(fields)}")
    if (p.run is None) == (p.redraw is None):
        raise ValueError("give the committee either run (with members: networks trained by "
                         "another spec) or redraw: K (networks trained here); found "
                         + ("both" if p.run is not None else "neither"))
    if p.run is not None and not p.members:
        raise ValueError(f"run: {p.run} needs members: the node names whose final weights "
                         "(final/<member>.safetensors) vote")
    if p.redraw is not None and p.members:
        raise ValueError("members name networks of a run; with redraw the members are drawn "
                         "here: remove members or use run")


@op("committee_vote", check=_check, tappable=False)
class CommitteeVote(Module):
    """Soft labels voted by a committee: ``p = sum_k w_k softmax(f_k(x) / temperature)``.

    The members ``f_k`` are networks of type ``model`` (parameters ``model_params``; input and
    class counts filled in from ``x`` and ``num_classes``, as ``dd_evaluator`` does). With
    ``run`` and ``members`` member ``k`` has the weights ``<run>/final/<members[k]>.safetensors``
    (the run is trained first when it is a missing zoo run); with ``redraw: K`` member ``k``
    is initialised under seed ``seed + k`` and trained with Adam (``lr``, ``steps`` full-batch
    steps) on the training split of the data node ``real``.

    ``w_k = a_k / sum_j a_j`` where ``a_k`` is member ``k``'s accuracy on ``real``'s held-out
    split (``weighting: accuracy``), or ``1/K`` (``uniform``). Real examples are reshaped to
    the shape of ``x``'s examples. Members and weights are prepared on the first
    (non-dry-run) forward, deterministically, and kept (``accuracies`` and ``weights``
    attributes); no random number of the run's generator is drawn. The output carries no
    gradient to ``x``.
    """

    def __init__(self, *,
                 model: str = param("mlp", doc="the members' model type"),
                 model_params: dict[str, Any] = param({}, doc="its parameters (input and "
                                                      "class counts are filled in)"),
                 run: str | None = param(None, min_length=1, doc="the run holding the members' "
                                         "final weights (relative: the spec's folder), or a "
                                         "run name beside this run / under runs/"),
                 members: list[str] = param([], doc="with run: the node names whose "
                                            "final/<name>.safetensors are the members"),
                 redraw: int | None = param(None, gt=0, le=64, doc="K members initialised "
                                            "afresh and trained on real's training split"),
                 real: NodeRef = param(doc="the data node: held-out split for the weights, "
                                       "training split for redrawn members"),
                 real_x: str = param("x", doc="the tensor of real's splits holding the inputs"),
                 real_y: str = param("y", doc="the tensor of real's splits holding the labels"),
                 num_classes: int = param(10, gt=1, doc="classes voted on"),
                 temperature: float = param(1.0, gt=0.0, allow_inf_nan=False,
                                            doc="softmax temperature T of every member"),
                 weighting: Literal["accuracy", "uniform"] = param(
                     "accuracy", doc="members weighted by held-out accuracy, or equally"),
                 steps: int = param(300, gt=0, le=100_000, doc="full-batch Adam steps of a "
                                    "redrawn member"),
                 lr: float = param(0.01, gt=0.0, doc="Adam learning rate of a redrawn member"),
                 seed: int = param(0, ge=0, doc="member k of redraw is drawn with seed + k"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.data import DataSource

        if not isinstance(real, DataSource):
            raise ValueError(f"real must name a data node; it names a {type(real).__name__}")
        self.real, self.real_x, self.real_y = real, real_x, real_y
        self.model, self.model_params = model, dict(model_params)
        self.run, self.member_names, self.redraw = run, list(members), redraw
        self.num_classes, self.temperature, self.weighting = num_classes, temperature, weighting
        self.steps, self.lr, self.seed = steps, lr, seed
        self._context = context
        self.networks: list[Any] = []  # built on the first forward (not submodules)
        self.accuracies: list[float] = []
        self.weights: Any = None

    # -- the members ------------------------------------------------------------------------
    def _fresh(self, example: tuple[int, ...], seed: int) -> tuple[Any, bool]:
        """A network of the members' type, initialised under ``seed`` (caller's RNG kept)."""
        import torch
        from dgraph.components.dd.evaluate import _network

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _network(self.model, self.model_params, example, self.num_classes,
                            self._context.node)

    def _run_folder(self) -> Path:
        assert self.run is not None
        context = self._context
        candidates = [context.resolve_path(self.run)]
        if context.run_dir is not None:
            from dgraph.runtime.setup import run_candidates

            candidates += run_candidates(self.run, context.run_dir)[1:]
        else:
            candidates.append(Path("runs") / self.run)
        for candidate in candidates:
            if (candidate / "final").is_dir():
                return candidate / "final"
        raise ValueError(f"no trained committee for run '{self.run}': looked for a final "
                         f"folder in {', '.join(str(c) for c in candidates)}. Train that run "
                         f"first (`dgraph train <spec> --out {candidates[-1]}`), or point run "
                         "at its run directory")

    def _split(self, name: str, example: tuple[int, ...]) -> tuple[Any, Any]:
        split = getattr(self.real, name)
        if split is None or self.real_x not in split or self.real_y not in split:
            raise ValueError(f"the data node named by real has no {self.real_x}/{self.real_y} "
                             f"in its {name} split")
        x, y = split[self.real_x], split[self.real_y]
        return x.float().reshape(len(x), *example), y.long().reshape(-1)

    def _train(self, net: Any, flat: bool, x: Any, y: Any) -> None:
        import torch
        import torch.nn.functional as F

        inputs = x.flatten(1) if flat else x
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            net.train()
            for _ in range(self.steps):
                loss = F.cross_entropy(_logits(net, inputs), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        net.eval()

    def prepare(self, example: tuple[int, ...], device: Any) -> None:
        """Build (and train or load) the members, and weight them by held-out accuracy."""
        import torch

        networks = []
        if self.redraw is not None:
            train_x, train_y = self._split("train", example)
            for k in range(self.redraw):
                net, flat = self._fresh(example, self.seed + k)
                net = net.to(device)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed + k)
                    self._train(net, flat, train_x.to(device), train_y.to(device))
                networks.append((net, flat))
        else:
            from safetensors.torch import load_file

            folder = self._run_folder()
            for name in self.member_names:
                path = folder / f"{name}.safetensors"
                if not path.exists():
                    raise ValueError(f"member '{name}': no weights {path}")
                net, flat = self._fresh(example, self.seed)
                try:
                    net.load_state_dict(load_file(str(path)))
                except RuntimeError as exc:
                    detail = " ".join(str(exc).split()[:40])
                    raise ValueError(f"member '{name}': the weights in {path} do not fit a "
                                     f"'{self.model}' with model_params {self.model_params} "
                                     f"({detail})") from None
                networks.append((net.to(device).eval(), flat))
        test_x, test_y = self._split("eval", example)
        test_x, test_y = test_x.to(device), test_y.to(device)
        accuracies = []
        with torch.no_grad():
            for net, flat in networks:
                scores = _logits(net, test_x.flatten(1) if flat else test_x)
                accuracies.append(float((scores.argmax(-1) == test_y).float().mean()))
        self.networks, self.accuracies = networks, accuracies
        self.weights = member_weights(accuracies, self.weighting)

    def forward(self, x: Features("N, ...", "the set to label (e.g. syn.images)"),
                ) -> Outputs(probs=Probs("N, {num_classes}", "the committee's soft labels")):
        import torch

        if x.is_meta:
            return {"probs": torch.empty(x.shape[0], self.num_classes, device="meta")}
        example = tuple(x.shape[1:])
        if not self.networks:
            self.prepare(example, x.device)
        with torch.no_grad():
            scores = [_logits(net, x.detach().float().flatten(1) if flat else x.detach().float())
                      for net, flat in self.networks]
        return {"probs": committee_vote(scores, self.weights, self.temperature)}

    def extra_repr(self) -> str:
        size = self.redraw if self.redraw is not None else len(self.member_names)
        return f"model={self.model}, members={size}, temperature={self.temperature}"


def _logits(net: Any, inputs: Any) -> Any:
    out = net(inputs)
    return out["logits"] if isinstance(out, dict) else out


# The parameter that names another run: `dgraph train` trains a missing zoo run first (as for
# ``init: {run: ...}``; see dgraph.runtime.setup.missing_runs).
CommitteeVote.component.runs_read = ("run",)
