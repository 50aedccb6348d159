"""A training-free objective (DisWOT-style): how alike a spec's teacher and its student at
initialisation see one batch, with no training.

DisWOT (Dong et al., 2023) finds that the similarity of the *sample relations* and of the
*semantic* (class) relations of a teacher and an untrained student correlates with the
student's accuracy after distillation. Here, for features ``F`` (``B x D``, any widths):

* sample relation ``G = rownorm(F F^T)`` (``B x B``, each row scaled to unit L2 norm, as in
  similarity-preserving KD); ``relation = -||G_t - G_s||_F^2 / B^2``;
* class relation from the logits ``Z`` (``B x K``, same ``K``): ``C = rownorm(Z^T Z)``
  (``K x K``); ``semantic = -||C_t - C_s||_F^2 / K^2``;

``score = relation + semantic`` (at most 0; higher is better). The teacher is built as the
spec builds it (its ``init`` weights loaded), the student at its seeded initialisation; the
batch is the first one the spec's training would draw. The relation uses the ``features``
output of both when they have one, else their ``logits``.

``python -m dgraph.search.training_free SPEC --out DIR [--set K=V ...]`` scores one trial and
writes ``DIR/score.json``; ``dgraph sweep --objective training_free`` runs it per trial.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dgraph.errors import DgraphError

__all__ = ["OBJECTIVE", "class_relation", "relation_score", "sample_relation",
           "score_spec", "training_free_score"]

OBJECTIVE = "training_free"


def _rownorm(matrix: Any) -> Any:
    import torch

    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)


def sample_relation(features: Any) -> Any:
    """``rownorm(F F^T)`` of ``features`` flattened to ``B x D`` (float64)."""
    flat = features.detach().flatten(1).double()
    return _rownorm(flat @ flat.T)


def class_relation(logits: Any) -> Any:
    """``rownorm(Z^T Z)`` of ``logits`` (``B x K``, float64): how classes co-activate."""
    flat = logits.detach().flatten(1).double()
    return _rownorm(flat.T @ flat)


def relation_score(teacher: Any, student: Any) -> float:
    """``-||G_t - G_s||_F^2 / n^2`` of two ``n x n`` relation matrices (0 when equal)."""
    if teacher.shape != student.shape:
        raise ValueError(f"relation matrices differ in shape: teacher {list(teacher.shape)}, "
                         f"student {list(student.shape)}")
    n = teacher.shape[0]
    return -float(((teacher - student) ** 2).sum()) / (n * n)


def training_free_score(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, float]:
    """The score of a teacher's and a student's outputs on one batch (``port -> tensor``):
    ``relation`` (features, else logits), ``semantic`` (logits of equal width) and ``score``
    (their sum)."""
    port = "features" if "features" in teacher and "features" in student else "logits"
    if port not in teacher or port not in student:
        raise ValueError("the teacher and the student need both a 'features' or both a "
                         f"'logits' output; teacher has {sorted(teacher)}, student has "
                         f"{sorted(student)}")
    result = {"relation": relation_score(sample_relation(teacher[port]),
                                         sample_relation(student[port]))}
    t_logits, s_logits = teacher.get("logits"), student.get("logits")
    if t_logits is not None and s_logits is not None and t_logits.shape[-1] == \
            s_logits.shape[-1]:
        result["semantic"] = relation_score(class_relation(t_logits), class_relation(s_logits))
    result["score"] = sum(result.values())
    return result


def scored_nodes(graph: Any) -> tuple[list[str], str]:
    """The teacher nodes and the student node a spec's score compares; a DgraphError naming
    what is missing."""
    teachers = [n for n, node in graph.nodes.items() if node.kind == "teacher"]
    students = [n for n, node in graph.nodes.items() if node.kind == "student"]
    name = graph.spec.display_name
    if not teachers or not students:
        raise DgraphError(
            f"--objective {OBJECTIVE}: spec '{name}' needs a teacher node and a student node "
            f"(it has teachers: {', '.join(teachers) or 'none'}; students: "
            f"{', '.join(students) or 'none'}); use a trained metric such as "
            "student/accuracy instead")
    export = graph.spec.export.node if graph.spec.export is not None else None
    return teachers, export if isinstance(export, str) and export in students else students[0]


def score_spec(spec_ref: str | Path, overrides: list[str], run_dir: Path) -> dict[str, float]:
    """Build ``spec_ref`` (with ``overrides``) as a run in ``run_dir`` would start, run one
    training batch through its teachers and its student, and score them (teachers averaged)."""
    import torch

    from dgraph.graph import validate
    from dgraph.runtime.setup import RunSetup
    from dgraph.spec import load_spec

    graph, _warnings = validate(load_spec(spec_ref, overrides))
    teachers, student = scored_nodes(graph)
    setup = RunSetup(graph, run_dir)
    needed: set[str] = set()
    todo = [*teachers, student]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [e.src for e in graph.edges_into(name)]
    batch = {name: loader.next() for name, loader in setup.loaders.items() if name in needed}
    for module in setup.instances.modules.values():
        module.eval()
    order = [n for n in setup.program.order if n in needed]
    with torch.no_grad():
        values = setup.program.run_nodes(setup.instances, batch, order)

    def outputs(node: str) -> dict[str, Any]:
        return {port: v for (n, port), v in values.items() if n == node}

    scores = [training_free_score(outputs(t), outputs(student)) for t in teachers]
    return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgraph.search.training_free",
                                     description="score one spec without training")
    parser.add_argument("spec")
    parser.add_argument("--out", required=True, help="folder for score.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = score_spec(args.spec, args.set, out)
    except DgraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a component that cannot run this batch: the trial fails
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from dgraph.runtime.rundir import atomic_write_text

    text = json.dumps(result, indent=2, sort_keys=True)
    atomic_write_text(out / "score.json", text + "\n", what="the score")
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
