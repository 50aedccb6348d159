"""The zoo's specs share their common blocks through ``extends`` bases instead of repeating them.

Bases are the zoo files whose names start with ``_`` (``_digits``, ``_llm_distil``, ...): they
ship with the zoo, specs name them like zoo specs (``extends: _digits_kd``), and they are not
methods, so ``zoo_names()`` and ``dgraph list`` leave them out. A duplicate detector over the
zoo's files finds any block written twice; the repeats that ``extends`` cannot remove (it
merges by node name: one block under two names stays two) or that are not moved into a base
yet are listed below with their reason, and the list is exact: a new repeat fails, and so does
a listed one that has gone.
"""

from __future__ import annotations

import fnmatch
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from dgraph.graph import validate
from dgraph.registry import load_plugins
from dgraph.spec import load_spec, zoo_names
from dgraph.spec.source import SPEC_SUFFIXES, zoo_dir

load_plugins()

FILES = sorted(p for p in zoo_dir().iterdir() if p.suffix in SPEC_SUFFIXES)
BASES = [p for p in FILES if p.stem.startswith("_")]
WINDOW = 3  # a block: this many entries in a row, or one entry of this many lines, as written
BIG = 6  # and a whole mapping of this many entries however written (a model's config)

# Repeats that `extends` cannot remove, by the pair of files that hold them.
ALLOWED = {
    frozenset({"_digits_kd.yaml", "multi_teacher.yaml"}):
        "multi_teacher's teacher_mlp is the MLP teacher of _digits_kd under another name",
    frozenset({"at.yaml", "multi_teacher.yaml"}):
        "multi_teacher's teacher_cnn is at's CNN teacher under another name",
    frozenset({"kd.yaml", "multi_teacher.yaml"}):
        "multi_teacher's kd_mlp and kd_cnn are kd's Hinton KD term (T = 4), one per teacher",
    frozenset({"born_again.yaml", "multi_teacher.yaml"}):
        "the Hinton KD term (T = 4) of both",
    frozenset({"born_again.yaml", "kd.yaml"}):
        "born_again's Hinton KD term; its base cannot be kd's (other updates, no teacher run)",
    frozenset({"_digits_main.yaml", "born_again.yaml"}):
        "born_again's updates `labels` and `born_again` are the student's `main` update renamed",
    frozenset({"_llm_distil.yaml", "llm_topk.yaml"}):
        "llm_topk's student: its base is _llm (it has no teacher node), not _llm_distil",
    frozenset({"_llm_corpus.yaml", "llm_topk.yaml"}):
        "the teacher's GPT-2 config, inside the top-k cache's parameters in llm_topk",
    frozenset({"_llm_distil.yaml", "blackbox_kd.yaml"}):
        "blackbox_kd's student: its base is _llm (no teacher node, as llm_topk)",
    frozenset({"blackbox_kd.yaml", "llm_topk.yaml"}):
        "the 1-layer student and the top-k KL term, from a file instead of a cache",
    frozenset({"arithmetic_teacher.yaml", "llm_teacher.yaml"}):
        "the teacher-training blocks (token_ce on the teacher, its update) of an LM teacher on "
        "other data (arithmetic_teacher's base is _arithmetic_teacher, not _llm_corpus)",
    frozenset({"_arithmetic_student.yaml", "seqkd_multi_teacher.yaml"}):
        "the 1-layer GPT-2 config: the weak second teacher has the student's architecture on "
        "purpose (its own weights, trained in the first stage)",
    frozenset({"_arithmetic_student.yaml", "llm_seqkd.yaml"}):
        "the student's seq_ce objective on generated text; its base cannot be _llm_on_policy "
        "(the corpus and its teacher)",
    frozenset({"_arithmetic_student.yaml", "_llm_on_policy.yaml"}):
        "student_eval, the student's module on the true held-out text, as in _llm_on_policy",
    frozenset({"llm_kd.yaml", "llm_topk.yaml"}):
        "the one-term objective {kd: 1.0}; llm_topk's base is _llm (a top-k cache, no teacher "
        "node), not _llm_distil",
    frozenset({"llm_7b_validate.yaml", "llm_kd.yaml"}):
        "the forward token-KL term of llm_kd, in the standalone 7B validation spec",
    # The frozen CNN teacher of teacher_digits_cnn, and the DDIM scheduler of the diffusion
    # bases, in files that extend another base: to move into bases listed beside it
    # (`extends: [_digits_mlp, _cnn_teacher]`), now that extends takes a list.
    **{frozenset(pair): "the frozen CNN teacher (teacher_digits_cnn's run)" for pair in (
        ("_diffusion_digits.yaml", "at.yaml"), ("_diffusion_digits.yaml", "multi_teacher.yaml"),
        ("_diffusion_digits.yaml", "dd_quantization.yaml"), ("at.yaml", "dd_quantization.yaml"),
        ("dd_quantization.yaml", "multi_teacher.yaml"),
        ("_diffusion_digits.yaml", "_ofa_digits.yaml"), ("_ofa_digits.yaml", "at.yaml"),
        ("_ofa_digits.yaml", "dd_quantization.yaml"), ("_ofa_digits.yaml", "multi_teacher.yaml"))},
    frozenset({"_diffusion_digits.yaml", "_diffusion_toy.yaml"}):
        "the teacher's DDIM scheduler; _diffusion_digits extends _digits",
    # The same block under another node name, where a base would have to name it twice.
    frozenset({"_toy2d.yaml", "dmd2_toy.yaml"}):
        "dmd2_toy's generator input z is the base's Gaussian noise under another name",
    frozenset({"_denoiser_teacher.yaml", "dmd2_toy.yaml"}):
        "dmd2_toy's fake-score loss is the teacher's denoising loss on generated samples",
    frozenset({"_denoiser_teacher.yaml", "vsd_toy.yaml"}):
        "vsd_toy's fake-score loss is the teacher's denoising loss on the particles",
    frozenset({"_denoiser_teacher.yaml", "_sampler_distill.yaml"}):
        "the learned-solver specs sample the teacher as a teacher run does (the `plain` metric)",
    **{frozenset(pair): "the distilled students' 3000-step schedule" for pair in (
        ("consistency_toy.yaml", "flowmap_toy.yaml"), ("dmd2_toy.yaml", "flowmap_toy.yaml"))},
    # Known debt, listed so that no new repeat slips in: the diffusion specs repeat their
    # denoiser, teacher and timestep blocks, and dd_quantization its evaluators; they need
    # more bases (or an extends that takes several) to share them.
    **{frozenset(pair): "to move into a base" for pair in (
        ("_digits_dd.yaml", "dd_quantization.yaml"),
        ("consistency_digits.yaml", "consistency_toy.yaml"),
        ("consistency_digits.yaml", "diffusion_teacher_digits.yaml"),
        ("consistency_toy.yaml", "dmd2_toy.yaml"),
        ("consistency_toy.yaml", "progressive_toy.yaml"),
        ("dmd2_toy.yaml", "progressive_toy.yaml"),
        ("dd_quantization.yaml", "dd_sre2l.yaml"),
        ("dmd2_toy.yaml", "vsd_toy.yaml"),
        ("sds_toy.yaml", "vsd_toy.yaml"),
        ("dmd2_toy.yaml", "sds_toy.yaml"))},
    # lcm_lora_digits is consistency_digits with a LoRA student and a stop-gradient target;
    # it cannot extend consistency_digits (the student node's UNet params would merge into
    # the lora node's). dmd2_digits is dmd2_toy's graph on the digits UNet. Their shared
    # UNet, teacher, solver and loss blocks need a digits base of their own.
    **{frozenset(pair): "to move into a base" for pair in (
        ("consistency_digits.yaml", "dmd2_digits.yaml"),
        ("consistency_digits.yaml", "lcm_lora_digits.yaml"),
        ("consistency_toy.yaml", "lcm_lora_digits.yaml"),
        ("diffusion_teacher_digits.yaml", "dmd2_digits.yaml"),
        ("diffusion_teacher_digits.yaml", "lcm_lora_digits.yaml"),
        ("dmd2_digits.yaml", "dmd2_toy.yaml"),
        ("dmd2_digits.yaml", "lcm_lora_digits.yaml"),
        ("dmd2_digits.yaml", "sds_toy.yaml"),
        ("dmd2_digits.yaml", "vsd_toy.yaml"),
        # sampler_distill_digits' frozen teacher block (the UNet config is a YAML anchor in
        # each file, so a base cannot hold it for the others yet)
        ("consistency_digits.yaml", "sampler_distill_digits.yaml"),
        ("lcm_lora_digits.yaml", "sampler_distill_digits.yaml"),
        ("dmd2_digits.yaml", "sampler_distill_digits.yaml"),
        ("diffusion_teacher_digits.yaml", "sampler_distill_digits.yaml"),
        # the ring's frozen DDIM teacher, as in sds_toy and vsd_toy (listed above), and the
        # DDIM solvers' start timestep (999 to the clean end), on other data ports
        ("sampler_distill_ddim_toy.yaml", "sds_toy.yaml"),
        ("sampler_distill_ddim_toy.yaml", "vsd_toy.yaml"),
        ("sampler_distill_ddim_toy.yaml", "sampler_distill_digits.yaml"))},
}


def _strip_comment(line: str) -> str:
    """The line without its comment ('#' at the start or after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


class _Entry:
    """One entry as written (a mapping key or list item) with the entries nested under it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = 1
        self.children: list[_Entry] = []

    @property
    def block(self) -> str:
        """The entry and everything under it, one normalised line per written line."""
        return "\n".join([self.text, *(child.block for child in self.children)])

    @property
    def size(self) -> int:
        return self.lines + sum(child.size for child in self.children)


def _tree(text: str) -> _Entry:
    """The entries of a file as written.

    Comments and blank lines are dropped, white space is folded, and a flow mapping or list
    that continues over several lines is one entry (of several lines).
    """
    root = _Entry("")
    stack: list[tuple[int, _Entry]] = [(-1, root)]
    depth = 0  # open brackets of the entry being continued
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        if depth > 0:
            entry = stack[-1][1]
            entry.text += " " + line.strip()
            entry.lines += 1
        else:
            indent = len(line) - len(line.lstrip())
            while stack[-1][0] >= indent:
                stack.pop()
            entry = _Entry(" ".join(line.split()))
            stack[-1][1].children.append(entry)
            stack.append((indent, entry))
        depth += sum(line.count(c) for c in "{[") - sum(line.count(c) for c in "}]")
    return root


def _written_blocks(text: str) -> Iterator[str]:
    """Runs of WINDOW sibling entries (each with what is nested under it), and single entries
    of at least WINDOW lines."""
    pending = [_tree(text)]
    while pending:
        entry = pending.pop()
        pending += entry.children
        if entry.text and entry.size >= WINDOW:
            yield entry.block
        group = [child.block for child in entry.children]
        for i in range(len(group) - WINDOW + 1):
            yield "\n".join(group[i:i + WINDOW])


def _mappings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _mappings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _mappings(item)


def _load(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def repeated_blocks(files: list[Path]) -> dict[frozenset[str], list[str]]:
    """Pairs of files that hold the same block, with the blocks.

    A block is, as written (after comments and white space): WINDOW sibling entries in a row,
    each with what is nested under it, or one entry of at least WINDOW lines; or a whole
    mapping of at least BIG entries however it is written (flow or block style, aliases
    expanded), such as a model's config written in two flow lines.
    """
    where: dict[str, set[str]] = defaultdict(set)
    for path in files:
        for block in _written_blocks(path.read_text(encoding="utf-8")):
            where[block].add(path.name)
        for mapping in _mappings(_load(path)):
            if len(mapping) >= BIG:
                where[json.dumps(mapping, sort_keys=True)].add(path.name)
    pairs: dict[frozenset[str], list[str]] = defaultdict(list)
    for block, names in where.items():
        for a in names:
            for b in names:
                if a < b:
                    pairs[frozenset({a, b})].append(block)
    return dict(pairs)


def test_the_detector_finds_a_block_written_twice(tmp_path: Path) -> None:
    node = "  kd:\n    kind: loss\n    type: hinton_kd\n    params: {temperature: 4.0}\n"
    config = "model_type: gpt2, n_layer: 3, n_embd: 96, n_head: 4, vocab_size: 258"
    files = {
        "a.yaml": "nodes:\n" + node,
        "b.yaml": "# a comment\nnodes:\n\n" + node.replace("    ", "      ") + "  ce: {}\n",
        "c.yaml": "nodes:\n  kd:\n    kind: loss\n    type: mse   # one line differs\n"
                  "    params: {temperature: 4.0}\n",
        "d.yaml": "nodes:\n  kd:\n    kind: loss\n    type: hinton_kd\n",  # two lines only
        "e.yaml": "nodes:\n  t:\n    params:\n      config: {" + config.replace(
            "n_head", "\n               n_head") + ", n_positions: 128}\n",
        "f.yaml": "nodes:\n  s:\n    params:\n      config:\n" + "".join(
            f"        {item}\n" for item in (config + ", n_positions: 128").split(", ")),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = repeated_blocks(sorted(tmp_path.iterdir()))
    assert set(found) == {frozenset({"a.yaml", "b.yaml"}), frozenset({"e.yaml", "f.yaml"})}


def test_no_block_is_repeated_across_zoo_files() -> None:
    found = repeated_blocks(FILES)
    unexpected = {" ~ ".join(sorted(pair)): blocks for pair, blocks in found.items()
                  if pair not in ALLOWED}
    assert not unexpected, "blocks written in two zoo files (share them through a base):\n" + (
        json.dumps(unexpected, indent=1))
    gone = [" ~ ".join(sorted(pair)) for pair in ALLOWED if pair not in found]
    assert not gone, f"listed repeats that are no longer there (remove them from ALLOWED): {gone}"


def test_bases_are_shipped_but_not_listed_as_methods() -> None:
    assert BASES, "the zoo has no bases"
    names = set(zoo_names())
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from "
                                  "Python 3.11")
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dgraph.specs"]
    extended: set[str] = set()
    for path in FILES:
        base = _load(path).get("extends")
        if base is not None:
            extended.update(base if isinstance(base, list) else [base])
    for path in BASES:
        assert path.stem not in names, path.name
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path.name
        assert path.stem in extended, f"{path.name} is extended by no zoo file"
    assert names == {p.stem for p in FILES} - {p.stem for p in BASES}


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_spec_validates_statically(name: str) -> None:
    spec = load_spec(name)
    assert spec.display_name == name
    validate(spec)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_sharing_nodes_list_only_their_inputs(path: Path) -> None:
    for name, node in (_load(path).get("nodes") or {}).items():
        if isinstance(node, dict) and "shares" in node:
            repeated = {"kind", "type", "params"} & set(node)
            assert not repeated, f"{path.name}: node '{name}' shares '{node['shares']}' and " \
                f"repeats its {', '.join(sorted(repeated))}"


@pytest.mark.parametrize("name", zoo_names())
def test_sharing_nodes_inherit_their_owners_type_and_params(name: str) -> None:
    spec = load_spec(name)
    for node in spec.nodes.values():
        if node.shares is not None:
            owner = spec.nodes[node.shares]
            assert (node.kind, node.type, node.params) == (owner.kind, owner.type, owner.params)


def test_every_spec_but_the_standalone_ones_extends_a_base() -> None:
    # they share no block with another
    standalone = {"adversarial_toy", "llm_7b_validate", "rl_rnd", "embed_kd"}
    plain = {p.stem for p in FILES if "extends" not in _load(p)}
    assert plain == standalone | {"_digits", "_llm", "_rl_cartpole", "_toy2d",
                                  "_denoiser_teacher", "_sampler_distill"}
