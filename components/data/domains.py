"""Adaptive domain mixtures (DDK): text from several named domains, drawn with weights that a
node updates during training from the teacher–student gap on each domain.

* ``domain_mixture`` (data): each domain is a text file (default: the shipped corpus), a range
  of its lines, or the values of some keys of a JSONL file. Every domain is tokenized with one
  tokenizer, its last ``eval_fraction`` held out, and chunked into ``seq_len`` windows (the
  ports of ``text_lm``, plus ``domain``: the window's domain index). Training batches are
  drawn by a :class:`DomainSampler` (the :class:`dgraph.data.BatchSampler` of the source):
  each example's domain from the current weights, then a window of that domain uniformly;
  the draw depends only on ``(train.seed, epoch, position)`` and the weights.
* ``ddk_weights`` (metric): every ``every`` steps measures, on the first ``eval_batches``
  held-out batches of each domain, the teacher's and the student's perplexity, and moves the
  weights (DDK, Liu et al. 2024, "domain discrepancy factor" and "factor smooth updating", as
  we read them):

      v_i = softmax_i(PPL_S[i] / PPL_T[i] / tau)     (metric: ppl_ratio; or CE_S - CE_T; tau 1)
      psi_i = w_i * exp(v_i)
      w_i <- smoothing * psi_i / sum_j psi_j + (1 - smoothing) / N

  The weights and the last measurement are logged at every logging step
  (``ddk/weight/<domain>``, ``ddk/gap/<domain>``: TensorBoard scalars), kept in checkpoints
  (``get_extra_state``: a resumed run draws the same batches) and, at each evaluation,
  reported with each domain's held-out student and teacher perplexity over the whole
  held-out split (``<node>/student_ppl_<domain>``, ``<node>/weight_<domain>``, ...). With
  ``adapt: false`` the weights stay at their initial values (the uniform-mixture baseline,
  same measurements).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dgraph.components._inputs import existing_path, input_error
from dgraph.components.data.text import (
    CORPUS_DIR,
    TokenizerParams,
    _chunks,
    _encode,
    _meta_split,
    _text_split,
    build_tokenizer,
    sequence_ports,
    special_ids,
)
from pydantic import Field, field_validator

from dgraph.declare import (
    Module,
    NodeRef,
    Outputs,
    Scalar,
    Tensor,
    data,
    metric,
    param,
)
from dgraph.errors import Location, Problem, ValidationError
from dgraph.registry import BuildContext, Params

if TYPE_CHECKING:
    import torch

__all__ = ["DomainParams", "DomainSampler", "DDKWeights", "ddk_update", "domain_mixture"]

_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


class DomainParams(Params):
    """One domain: a text file, some of its lines, or some keys of a JSONL file."""

    path: str | None = Field(None, description="a UTF-8 file, relative to the spec's folder "
                             "(default: the shipped corpus file named by 'corpus')")
    corpus: str = Field("shakespeare.txt", description="without path: a file of the shipped "
                        "corpus (shakespeare.txt, shakespeare_dialogue.jsonl)")
    lines: list[int] | None = Field(None, description="[first, last]: 1-based, inclusive "
                                    "line range of the file (default: all)")
    jsonl_keys: list[str] | None = Field(None, description="read the file as JSONL and join "
                                         "these keys' values of each object (in order) as "
                                         "the domain's text, one object a line")

    @field_validator("lines")
    @classmethod
    def _range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or value[0] < 1 or value[1] < value[0]):
            raise ValueError(f"lines must be [first, last] with 1 <= first <= last; found "
                             f"{value}")
        return value


def _check(p) -> None:  # noqa: ANN001 - the generated parameter model
    if not p.domains:
        raise ValueError("give at least one domain")
    bad = [name for name in p.domains if not _NAME.match(name)]
    if bad:
        raise ValueError(f"domain names are [A-Za-z0-9_]+ (they name logged values); found "
                         f"{bad}")
    if p.weights is not None:
        unknown = sorted(set(p.weights) - set(p.domains))
        missing = sorted(set(p.domains) - set(p.weights))
        if unknown or missing:
            raise ValueError(f"weights must give one value per domain ({', '.join(p.domains)}); "
                             f"unknown: {unknown}, missing: {missing}")
        if any(w < 0 for w in p.weights.values()) or sum(p.weights.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")


def _sizes(p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": p.tokenizer.size}


class DomainSampler:
    """Draws batch indices from named domains with mixture weights (a BatchSampler).

    ``groups[i]`` are the train indices of domain ``i``, ``eval_groups[i]`` its held-out ones;
    ``weights`` (float64, summing to 1) are read at every draw: changing them changes what
    later batches hold.
    """

    def __init__(self, names: list[str], groups: list[torch.Tensor],
                 eval_groups: list[torch.Tensor], weights: list[float]) -> None:
        import torch

        self.names = names
        self.groups = groups
        self.eval_groups = eval_groups
        self.initial = torch.tensor(weights, dtype=torch.float64)
        self.weights = self.initial.clone()

    def indices(self, seed: int, epoch: int, position: int, batch_size: int) -> torch.Tensor:
        import torch

        draw = ((seed * 1_000_003 + epoch) * 1_000_033 + position) & 0xFFFF_FFFF_FFFF
        gen = torch.Generator().manual_seed(draw)
        domains = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen)
        within = torch.rand(batch_size, generator=gen, dtype=torch.float64)
        sizes = torch.tensor([len(g) for g in self.groups])
        starts = torch.cumsum(sizes, 0) - sizes
        offsets = (within * sizes[domains]).long().clamp_max(sizes[domains] - 1)
        return torch.cat(self.groups)[starts[domains] + offsets]


def _domain_text(name: str, spec: DomainParams, context: BuildContext) -> tuple[Path, str]:
    param_name = f"domains.{name}.path"
    file = CORPUS_DIR / spec.corpus if spec.path is None else existing_path(
        context, param_name, spec.path, kind="file", what="a UTF-8 text or JSONL file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise input_error(context, param_name, f"{file} cannot be read as UTF-8 text",
                          expected="a UTF-8 text or JSONL file", found=type(exc).__name__,
                          hint="convert the file to UTF-8") from None
    lines = text.splitlines(keepends=True)
    if spec.lines is not None:
        first, last = spec.lines
        if last > len(lines):
            raise input_error(context, f"domains.{name}.lines", f"{file} has {len(lines)} "
                              "lines", code="bad-data", expected=f"last <= {len(lines)}",
                              found=f"lines: {spec.lines}", hint="fix the line range")
        lines = lines[first - 1:last]
    if spec.jsonl_keys is None:
        return file, "".join(lines)
    start = spec.lines[0] if spec.lines is not None else 1
    parts = []
    for number, line in enumerate(lines, start):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            parts.append("".join(str(obj[key]) for key in spec.jsonl_keys) + "\n")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError([Problem(
                code="bad-data", location=Location(str(file), number, 1), node=context.node,
                message=f"params.domains.{name}: line {number} of {file} is not a JSON "
                "object with the domain's keys", expected=f"keys {spec.jsonl_keys}",
                found=f"{type(exc).__name__}: {exc}",
                suggestion="fix the line or the domain's jsonl_keys")]) from None
    return file, "".join(parts)


_TOKENIZER = Field(default_factory=TokenizerParams,
                   description="{kind: byte|bpe|file, vocab_size, ...}")


@data("domain_mixture", check=_check, sizes=_sizes)
def domain_mixture(
    *,
    domains: dict[str, DomainParams] = param(doc="name -> {path, lines, jsonl_keys}: the "
                                             "domains, in order (their indices in 'domain')"),
    weights: dict[str, float] | None = param(None, doc="initial sampling weights per domain "
                                             "(normalised; default: uniform)"),
    tokenizer: TokenizerParams = _TOKENIZER,
    seq_len: int = param(64, gt=1, doc="tokens per sequence (T)"),
    prompt_len: int = param(8, gt=0, doc="the first P tokens of each window, as prompts"),
    batch_size: int = param(32, gt=0, doc="sequences per batch"),
    eval_fraction: float = param(0.1, gt=0.0, lt=1.0, doc="held-out share of each domain "
                                 "(its end)"),
    context: BuildContext,
) -> sequence_ports(
    "{seq_len}", "{prompt_len}", "the window's first tokens",
    domain=Tensor("B", "the window's domain index (int64, in the order of 'domains')"),
):
    """Windows of several named text domains, sampled with weights a node may update.

    The held-out split is every domain's held-out windows, domain after domain (``domain``
    tells them apart); evaluation reads all of them. Training batches come from the source's
    :class:`DomainSampler`: with the initial weights unless a ``ddk_weights`` node moves them.
    """
    import torch

    from dgraph.data import DataSource

    names = list(domains)
    raw = [weights[n] for n in names] if weights is not None else [1.0] * len(names)
    initial = [w / sum(raw) for w in raw]
    info: dict[str, object] = {"vocab_size": tokenizer.size, "seq_len": seq_len,
                               "domains": names}
    loader = {"batch_size": batch_size, "shuffle": True, "drop_last": True}
    if context.meta:
        for name, spec in domains.items():
            if spec.path is None and not (CORPUS_DIR / spec.corpus).is_file():
                raise input_error(context, f"domains.{name}.corpus", f"no shipped corpus file "
                                  f"'{spec.corpus}'", code="missing-file",
                                  expected="a file of " + str(CORPUS_DIR),
                                  found=spec.corpus, hint="give path for your own files")
            if spec.path is not None:
                existing_path(context, f"domains.{name}.path", spec.path, kind="file",
                              what="a UTF-8 text or JSONL file")

        def split() -> dict[str, torch.Tensor]:
            out = _meta_split(batch_size, seq_len, prompt_len)
            out["domain"] = torch.empty((batch_size,), dtype=torch.long, device="meta")
            return out

        return DataSource(train=split(), eval=split(), info=info, **loader,
                          sampler=DomainSampler(names, [], [], initial))
    texts = {name: _domain_text(name, spec, context) for name, spec in domains.items()}
    cuts = {name: int(len(text) * (1.0 - eval_fraction)) for name, (_, text) in texts.items()}
    tok = build_tokenizer(tokenizer, [text[:cuts[n]] for n, (_, text) in texts.items()],
                          context)
    pad_id, eos_id = special_ids(tok, tokenizer, context)
    train_parts, eval_parts, groups, eval_groups = [], [], [], []
    start = eval_start = 0
    counts: dict[str, list[int]] = {}
    for name, (file, text) in texts.items():
        windows = _chunks(torch.tensor(_encode(tok, text[:cuts[name]]), dtype=torch.long),
                          seq_len, seq_len)
        held = _chunks(torch.tensor(_encode(tok, text[cuts[name]:]), dtype=torch.long),
                       seq_len, seq_len)
        if len(windows) == 0 or len(held) == 0:
            raise input_error(context, f"domains.{name}", f"domain '{name}' ({file}) holds "
                              "too little text", code="bad-data",
                              expected=f"more than {seq_len} tokens for training and for "
                              f"its held-out share ({eval_fraction})",
                              found=f"{len(windows)} training and {len(held)} held-out "
                              "windows", hint="use more text, a smaller seq_len or a larger "
                              "eval_fraction")
        train_parts.append(windows)
        eval_parts.append(held)
        groups.append(torch.arange(start, start + len(windows)))
        eval_groups.append(torch.arange(eval_start, eval_start + len(held)))
        start += len(windows)
        eval_start += len(held)
        counts[name] = [len(windows), len(held)]

    def split_of(parts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = _text_split(torch.cat(parts), prompt_len)
        out["domain"] = torch.cat([torch.full((len(p),), i, dtype=torch.long)
                                   for i, p in enumerate(parts)])
        return out

    info.update({"pad_token_id": pad_id, "eos_token_id": eos_id,
                 "windows": counts})  # name -> [train, held-out]
    return DataSource(train=split_of(train_parts), eval=split_of(eval_parts), info=info,
                      sampler=DomainSampler(names, groups, eval_groups, initial), **loader)


# -- the DDK node --------------------------------------------------------------------------------
def ddk_update(weights: torch.Tensor, student_ce: torch.Tensor, teacher_ce: torch.Tensor, *,
               smoothing: float, metric: str = "ppl_ratio",
               temperature: float = 1.0) -> torch.Tensor:
    """The next mixture weights from per-domain mean token cross-entropies (nats).

    ``v = softmax(PPL_S / PPL_T / temperature)`` (``ppl_ratio``) or
    ``softmax((CE_S - CE_T) / temperature)`` (``ce_gap``); ``psi = w * exp(v)``;
    ``w' = smoothing * psi / sum(psi) + (1 - smoothing) / N``.
    """
    import torch

    student_ce, teacher_ce = student_ce.double(), teacher_ce.double()
    score = (student_ce.exp() / teacher_ce.exp() if metric == "ppl_ratio"
             else student_ce - teacher_ce)
    v = torch.softmax(score / temperature, 0)
    psi = weights.double() * v.exp()
    return smoothing * psi / psi.sum() + (1.0 - smoothing) / len(psi)


@metric("ddk_weights")
class DDKWeights(Module):
    """DDK: moves a domain mixture's weights toward the domains where the student trails most.

    Also reports each domain's held-out student and teacher perplexity, and the weights.

    Every ``every`` steps (before the step, from step ``every`` on) the teacher and the
    student (in eval mode, without gradients; the student's mode is restored) read the first
    ``eval_batches`` held-out batches of each domain; the weights follow :func:`ddk_update`.
    """

    def __init__(self, *,
                 data: NodeRef = param(doc="the domain_mixture data node"),
                 teacher: NodeRef = param(doc="the teacher (a causal LM: input_ids, "
                                          "attention_mask -> logits)"),
                 student: NodeRef = param(doc="the student (same interface)"),
                 every: int = param(50, gt=0, doc="steps between weight updates"),
                 smoothing: float = param(0.5, gt=0.0, le=1.0, doc="DDK's smoothing factor "
                                          "alpha: the share of the new factor (1 - alpha of "
                                          "uniform)"),
                 metric: Literal["ppl_ratio", "ce_gap"] = param(
                     "ppl_ratio", doc="per-domain discrepancy: student/teacher perplexity "
                     "ratio or cross-entropy difference"),
                 temperature: float = param(1.0, gt=0.0, doc="divides the discrepancies "
                                            "before the softmax (1: DDK's; lower: sharper "
                                            "moves)"),
                 eval_batches: int = param(2, gt=0, doc="held-out batches per domain per "
                                           "update"),
                 batch_size: int = param(32, gt=0, doc="sequences per measuring batch"),
                 adapt: bool = param(True, doc="false: keep the initial weights (the "
                                     "baseline), still measuring and reporting"),
                 context: BuildContext) -> None:
        super().__init__()
        sampler = getattr(data, "sampler", None)
        if not isinstance(sampler, DomainSampler):
            raise input_error(context, "data", "the node named by 'data' is not a domain "
                              "mixture", expected="a domain_mixture data node",
                              found=f"a source whose sampler is {type(sampler).__name__}",
                              hint="name the spec's domain_mixture node")
        self.sampler = sampler
        self.eval_tensors = data.eval
        self._refs = (teacher, student)  # by reference: not submodules of this node
        self.every, self.smoothing, self.metric = every, smoothing, metric
        self.temperature = temperature
        self.eval_batches, self.batch_size, self.adapt = eval_batches, batch_size, adapt
        self.updated_at = 0
        self.updates = 0
        n = len(sampler.names)
        self.last_student_ce = [float("nan")] * n
        self.last_teacher_ce = [float("nan")] * n

    # -- measuring -------------------------------------------------------------------------
    def domain_ce(self, module: Any, limit: int | None) -> list[float]:
        """Mean next-token cross-entropy (nats) of ``module`` on each domain's held-out
        windows (the first ``limit`` of them; all when None)."""
        import torch
        import torch.nn.functional as F

        training = module.training
        module.eval()
        device = next(iter(module.parameters())).device
        out = []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for group in self.sampler.eval_groups:
                    chosen = group if limit is None else group[:limit]
                    total, count = 0.0, 0.0
                    for lo in range(0, len(chosen), self.batch_size):
                        index = chosen[lo:lo + self.batch_size]
                        batch = {k: self.eval_tensors[k][index].to(device) for k in
                                 ("input_ids", "attention_mask", "targets", "loss_mask")}
                        logits = module(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"])["logits"]
                        ce = F.cross_entropy(logits.float().flatten(0, 1),
                                             batch["targets"].flatten(), reduction="none")
                        mask = batch["loss_mask"].flatten()
                        total += float(ce[mask].sum())
                        count += float(mask.sum())
                    out.append(total / max(count, 1.0))
        finally:
            module.train(training)
        return out

    def update_weights(self) -> None:
        import torch

        teacher, student = self._refs
        limit = self.eval_batches * self.batch_size
        s_ce, t_ce = self.domain_ce(student, limit), self.domain_ce(teacher, limit)
        self.last_student_ce, self.last_teacher_ce = s_ce, t_ce
        if self.adapt:
            self.sampler.weights = ddk_update(
                self.sampler.weights, torch.tensor(s_ce), torch.tensor(t_ce),
                smoothing=self.smoothing, metric=self.metric, temperature=self.temperature)
        self.updates += 1

    # -- runtime protocols -----------------------------------------------------------------
    def set_step(self, step: int) -> None:
        if step > 0 and step % self.every == 0 and step != self.updated_at:
            self.update_weights()
            self.updated_at = step

    def logged_scalars(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.sampler.names):
            out[f"ddk/weight/{name}"] = float(self.sampler.weights[i])
            out[f"ddk/gap/{name}"] = self.last_student_ce[i] - self.last_teacher_ce[i]
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": [float(w) for w in self.sampler.weights],
                "updated_at": self.updated_at, "updates": self.updates,
                "student_ce": list(self.last_student_ce),
                "teacher_ce": list(self.last_teacher_ce)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        import torch

        self.sampler.weights = torch.tensor(state["weights"], dtype=torch.float64)
        self.updated_at = int(state["updated_at"])
        self.updates = int(state["updates"])
        self.last_student_ce = [float(v) for v in state["student_ce"]]
        self.last_teacher_ce = [float(v) for v in state["teacher_ce"]]

    def reset(self) -> None:
        return None

    def update(self) -> None:
        return None

    def compute(self) -> Outputs(
        student_ppl_mean=Scalar(None, "the student's held-out perplexity, averaged over the "
                                "domains (each domain's own perplexity; per domain: "
                                "student_ppl_<domain>, teacher_ppl_<domain>, "
                                "weight_<domain>)"),
        teacher_ppl_mean=Scalar(None, "the teacher's, likewise"),
        updates=Scalar(None, "weight updates so far"),
    ):
        import math

        teacher, student = self._refs
        s_ce, t_ce = self.domain_ce(student, None), self.domain_ce(teacher, None)
        out = {"updates": float(self.updates)}
        for i, name in enumerate(self.sampler.names):
            out[f"student_ppl_{name}"] = math.exp(s_ce[i])
            out[f"teacher_ppl_{name}"] = math.exp(t_ce[i])
            out[f"weight_{name}"] = float(self.sampler.weights[i])
        n = len(self.sampler.names)
        out["student_ppl_mean"] = sum(math.exp(v) for v in s_ce) / n
        out["teacher_ppl_mean"] = sum(math.exp(v) for v in t_ce) / n
        return out

