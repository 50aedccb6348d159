"""Sentence-embedding distillation (zoo spec ``embed_kd``): held-out cosine similarity between
student and teacher embeddings, distilled vs the same student without the teacher.

1. ``embed_kd`` as shipped: the 4-layer BERT teacher built from its config (byte tokens),
   a 1-layer student with the teacher's config, cosine loss on the masked-mean embeddings;
2. the same student without the teacher's signal (learning rate 1e-12: its initialisation);
3. the same two runs on a local BERT folder written by ``save_pretrained`` with a WordPiece
   tokenizer (``BertTokenizerFast`` from a small vocab.txt) saved into the same folder,
   given with ``--set nodes.teacher.params.path=FOLDER`` (the data reads its tokenizer).

    python benchmarks/embed_kd.py [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "and", "to", "of", "you", "my", "that", "in", "is", "not", "me", "it",
         "with", "be", "your", "his", "this", "but", "for", "have", "he", "what", "so", "will"]


def make_bert_folder(folder: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2,
                     seed: int = 0) -> Path:
    """A BERT encoder (random weights, ``seed``) and its WordPiece tokenizer in one folder,
    both written with ``save_pretrained``, as a sentence-transformers folder holds them."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits
    vocab = SPECIALS + WORDS + list(chars) + [f"##{c}" for c in chars] + \
        list(string.punctuation)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True,
                                  model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden,
                        max_position_embeddings=128, pad_token_id=0)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def run(workdir: Path, steps: int, *, log=print) -> dict[str, float]:
    from dgraph.api import train

    quiet = {"progress": False, "log": lambda _m: None}
    common = [f"train.steps={steps}", f"train.eval.every={steps}",
              f"train.checkpoint_every={steps}"]
    result: dict[str, float] = {}
    folder = make_bert_folder(workdir / "bert_teacher", layers=4, hidden=64, heads=4)
    for label, extra in (("config", []), ("folder", [f"nodes.teacher.params.path={folder}"])):
        started = time.perf_counter()
        kd = train("embed_kd", out=workdir / f"kd_{label}", overrides=[*common, *extra],
                   **quiet)
        result[f"{label}_kd_cosine"] = kd["embedding/cosine"]
        result[f"{label}_kd_s"] = time.perf_counter() - started
        none = train("embed_kd", out=workdir / f"none_{label}",
                     overrides=[*common, *extra, "updates.main.optimizer.lr=1e-12"], **quiet)
        result[f"{label}_no_teacher_cosine"] = none["embedding/cosine"]
        log(f"{label}: distilled {kd['embedding/cosine']:.4f}, without the teacher "
            f"{none['embedding/cosine']:.4f} ({result[f'{label}_kd_s']:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=None, help="keep the runs here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.out or tmp), args.steps)
    ok = all(result[f"{k}_kd_cosine"] > result[f"{k}_no_teacher_cosine"]
             for k in ("config", "folder"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
