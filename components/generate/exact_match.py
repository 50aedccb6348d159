"""``exact_match``: the share of held-out prompts a model answers exactly, decoding greedily.

A metric accumulator that makes its own inputs (see :mod:`dgraph.runtime.metrics`): at each
evaluation the ``model`` node continues every prompt of the ``data`` node's held-out split
(``arithmetic_task``: ``"37+48="``) greedily for up to ``max_new_tokens`` tokens, the output
is cut at ``<eos>`` and compared with the reference answer (surrounding whitespace ignored):

    accuracy = (1/N) sum_i [decode_greedy(prompt_i) == answer_i]

Evaluation runs with torch's generators forked and gradients off.
"""

from __future__ import annotations

from dgraph.components.generate._decoding import decode, split_output, tokenizer_of

from dgraph.declare import Module, NodeRef, Outputs, Scalar, metric, param
from dgraph.registry import BuildContext

__all__ = ["ExactMatch", "exact_match_accuracy"]


def exact_match_accuracy(model, source, *, split: str = "eval",  # noqa: ANN001 - modules
                         max_new_tokens: int = 6, max_examples: int | None = None,
                         batch_size: int = 512, eos_token_id: int = 1) -> float:
    """The exact-match accuracy of ``model``'s greedy answers on ``source``'s ``split``."""
    tensors = source.eval if split == "eval" else source.train
    answers = source.info["answers"][split]
    tok = tokenizer_of(source)
    ids, mask = tensors["prompt_ids"], tensors["prompt_mask"].bool()
    n = ids.shape[0] if max_examples is None else min(max_examples, ids.shape[0])
    device = next(iter(model.parameters())).device
    correct = 0
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        out = decode(model, ids[start:end].to(device), mask[start:end].to(device),
                     max_new_tokens=max_new_tokens, decoding="greedy",
                     eos_token_id=eos_token_id).tolist()
        for row, generated in enumerate(out):
            text = tok.decode(split_output(generated, eos_token_id)[0])
            correct += text.strip() == answers[start + row].strip()
    return correct / max(n, 1)


@metric("exact_match")
class ExactMatch(Module):
    """Exact-match accuracy of a model's greedy answers on a source's held-out prompts."""

    def __init__(self, *,
                 model: NodeRef = param(doc="the causal LM node evaluated"),
                 data: NodeRef = param(doc="a data node with reference answers "
                                       "(arithmetic_task)"),
                 max_new_tokens: int = param(6, gt=0, doc="tokens decoded per answer"),
                 max_examples: int | None = param(None, gt=0, doc="evaluate the first N "
                                                  "held-out prompts (None: all)"),
                 eos_token_id: int = param(1, ge=0, doc="the <eos> id (text sources: 1)"),
                 context: BuildContext) -> None:
        super().__init__()
        self._refs = (model, data)  # used by reference: not submodules of this node
        self.max_new_tokens = max_new_tokens
        self.max_examples = max_examples
        self.eos_token_id = eos_token_id
        if not context.meta and "answers" not in getattr(data, "info", {}):
            from dgraph.components._inputs import input_error

            raise input_error(context, "data", "names a data node without reference answers",
                              code="no-answers", expected="a source whose info holds "
                              "answers (arithmetic_task)", found=type(data).__name__,
                              hint="point data at the task's arithmetic_task node")

    def reset(self) -> None:
        return None

    def update(self) -> None:
        return None

    def compute(self) -> Outputs(accuracy=Scalar(None, "share of exact answers")):
        model, source = self._refs
        return {"accuracy": exact_match_accuracy(
            model, source, max_new_tokens=self.max_new_tokens,
            max_examples=self.max_examples, eos_token_id=self.eos_token_id)}
