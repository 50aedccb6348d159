"""Verifiers and critics of generated outputs (:class:`dgraph.declare.Scores`).

A generator (``lm_generator``) names one as its ``verifier`` (what is kept: score >=
``threshold``) and one as its ``critic`` (how kept outputs are ranked and weighted):

* ``exact_answer``: 1 when the output (or the part a regex extracts from it) equals the
  source's reference answer, else 0;
* ``regex_match``: 1 when the output matches a regular expression, else 0;
* ``lm_likelihood``: the mean log-probability per token of the output (and its ``<eos>``)
  given the prompt, under a model of the graph (the teacher's, or the student's own):
  ``(1/|y|) sum_t log p(y_t | x, y_<t)``, higher is likelier.

They run only when a generator does (at a stage's start); in steps they output nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dgraph.components.generate._decoding import Candidate, mean_loglik

from dgraph.declare import Module, NodeRef, Outputs, op, param
from dgraph.registry import BuildContext

__all__ = ["ExactAnswer", "LMLikelihood", "RegexMatch"]


def _compiles(p) -> None:  # noqa: ANN001 - the generated parameter model
    for name in ("pattern", "extract"):
        value = getattr(p, name, None)
        if value is None:
            continue
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"{name} '{value}' is not a regular expression: {exc}") from None
        if name == "extract" and compiled.groups > 1:
            raise ValueError(f"extract '{value}' has {compiled.groups} groups; give at most "
                             "one (the answer)")


@op("exact_answer", check=_compiles)
class ExactAnswer(Module):
    """1.0 when the output equals the prompt's reference answer, else 0.0."""

    def __init__(self, *,
                 extract: str | None = param(None, doc="a regex whose first match (its group, "
                                             "if it has one) is the answer compared; None: "
                                             "the whole output"),
                 strip: bool = param(True, doc="ignore surrounding whitespace")) -> None:
        super().__init__()
        self.extract = re.compile(extract) if extract is not None else None
        self.strip = strip

    def forward(self) -> Outputs():
        return {}

    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        out = []
        for c in candidates:
            if c.answer is None:
                raise ValueError(f"exact_answer needs reference answers; the prompt "
                                 f"{c.prompt!r} has none (use a source with answers, e.g. "
                                 "arithmetic_task)")
            text = c.output
            if self.extract is not None:
                found = self.extract.search(text)
                text = "" if found is None else found.group(1 if found.groups() else 0)
            answer = c.answer
            if self.strip:
                text, answer = text.strip(), answer.strip()
            out.append(float(text == answer))
        return out


@op("regex_match", check=_compiles)
class RegexMatch(Module):
    """1.0 when the output matches ``pattern`` (the whole output with ``full``), else 0.0."""

    def __init__(self, *,
                 pattern: str = param(doc="a regular expression (Python re)"),
                 full: bool = param(True, doc="the whole output must match (fullmatch); "
                                    "false: anywhere (search)")) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.full = full

    def forward(self) -> Outputs():
        return {}

    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        match = self.pattern.fullmatch if self.full else self.pattern.search
        return [float(match(c.output) is not None) for c in candidates]


@op("lm_likelihood")
class LMLikelihood(Module):
    """Mean log-probability per output token under ``model`` (a critic: higher is likelier)."""

    def __init__(self, *,
                 model: NodeRef = param(doc="the causal LM node that scores (teacher or "
                                        "student)"),
                 eos_token_id: int = param(1, ge=0, doc="the <eos> id (text sources: 1)"),
                 context: BuildContext) -> None:
        super().__init__()
        self._refs = (model,)  # used by reference: not a submodule of this node
        self.eos_token_id = eos_token_id

    def forward(self) -> Outputs():
        return {}

    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        return mean_loglik(self._refs[0], candidates, eos_token_id=self.eos_token_id)
