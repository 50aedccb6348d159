"""Token-normalised losses under gradient accumulation: 4 micro-batches of 2 = 1 batch of 8."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from dgraph.graph import validate
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, BuildContext, Component, Params, component
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

VOCAB = 11


class _TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids):
        return {"logits": self.head(torch.tanh(self.embed(input_ids)))}


class _TokenNLL(nn.Module):
    def forward(self, logits, target, mask):
        nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB),
                                          target[:, 1:].reshape(-1), reduction="none")
        keep = mask[:, 1:].reshape(-1).to(nll.dtype)
        total, count = (nll * keep).sum(), keep.sum()
        return {"loss": total / count.clamp_min(1), "sum": total, "count": count}


if "tokacc_lm" not in COMPONENTS:
    @component("tokacc_lm", roles=("student",))
    class TokAccLM(Component):
        """Test-only embedding LM."""

        inputs = {"input_ids": Port("Tokens", "B, T")}
        outputs = {"logits": Port("Logits", "B, T, 11")}

        def build(self, context: BuildContext):
            return _TinyLM()

    class _Weight(Params):
        weight: float = 1.0

    @component("tokacc_nll", roles=("loss",))
    class TokAccNLL(Component):
        """Test-only token NLL with sum and count outputs."""

        inputs = {"logits": Port("Logits", "B, T, V"), "target": Port("Tokens", "B, T"),
                  "mask": Port("Mask", "B, T")}
        outputs = {"loss": Port("Scalar"), "sum": Port("Scalar"), "count": Port("Scalar")}
        token_normalised = True  # the protocol: normalise by the count of all micro-batches

        def build(self, context: BuildContext):
            return _TokenNLL()

SPEC = """
dgraph: 1
name: tokacc
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: tokens.pt
      batch_size: {batch}
      shuffle: false
      keys:
        ids: {{key: ids, type: Tokens}}
        mask: {{key: mask, type: Mask}}
  lm: {{kind: student, type: tokacc_lm, inputs: {{input_ids: data.ids}}}}
  nll:
    kind: loss
    type: tokacc_nll
    inputs: {{logits: lm.logits, target: data.ids, mask: data.mask}}
updates:
  main:
    optimizer: {{type: sgd, lr: 0.5}}
    params: [lm]
    objective: {{nll: 1.0}}
    accumulate: {accumulate}
train: {{steps: 1, eval: {{every: 100}}}}
"""


def _trainer(tmp_path, batch: int, accumulate: int, name: str) -> Trainer:
    text = SPEC.format(batch=batch, accumulate=accumulate)
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    graph, _ = validate(load_spec(path))
    torch.manual_seed(0)
    return Trainer(graph, tmp_path / name, progress=False, log=lambda _m: None)


@pytest.fixture
def token_file(tmp_path):
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (8, 7), generator=gen)
    lengths = torch.tensor([7, 3, 5, 2, 6, 7, 4, 3])  # padded sequences of different lengths
    mask = torch.arange(7)[None, :] < lengths[:, None]
    torch.save({"ids": ids, "mask": mask}, tmp_path / "tokens.pt")
    return tmp_path


def test_four_micro_batches_of_two_equal_one_batch_of_eight(token_file):
    whole = _trainer(token_file, batch=8, accumulate=1, name="whole")
    split = _trainer(token_file, batch=2, accumulate=4, name="split")
    split.instances.modules["lm"].load_state_dict(whole.instances.modules["lm"].state_dict())
    terms_whole = whole.step_runner.run_update("main", whole.stages[0], 0, {})
    terms_split = split.step_runner.run_update("main", split.stages[0], 0, {})
    torch.testing.assert_close(terms_split["total"], terms_whole["total"], rtol=0, atol=1e-6)
    after_whole = whole.instances.modules["lm"].state_dict()
    for key, value in split.instances.modules["lm"].state_dict().items():
        torch.testing.assert_close(value, after_whole[key], rtol=0, atol=1e-6)


def test_plain_mean_accumulation_would_differ(token_file):
    # The same split without count normalisation (mean of micro-batch means) is not equal:
    # this is what the token-count normalisation fixes.
    whole = _trainer(token_file, batch=8, accumulate=1, name="whole")
    nll = _TokenNLL()
    data = torch.load(token_file / "tokens.pt", weights_only=True)
    logits = whole.instances.modules["lm"](data["ids"])["logits"]
    means = [nll(logits[i:i + 2], data["ids"][i:i + 2], data["mask"][i:i + 2])["loss"]
             for i in range(0, 8, 2)]
    whole_loss = nll(logits, data["ids"], data["mask"])["loss"]
    assert abs(float(sum(means).detach() / 4) - float(whole_loss.detach())) > 1e-3
