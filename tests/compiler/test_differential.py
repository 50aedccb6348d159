"""The compiled KD step against the same step written by hand in plain PyTorch."""

from __future__ import annotations

import textwrap

import torch
import torch.nn.functional as F
from dgraph.components.models.mlp import MLP
from safetensors.torch import save_file

from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

STEPS = 25
SPEC = """
dgraph: 1
name: kd_diff
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  teacher:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [64], num_classes: 10}
    init: {weights: teacher.safetensors}
    inputs: {x: data.x}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  kd:
    kind: loss
    type: hinton_kd
    params: {temperature: 4.0}
    inputs: {student: student.logits, teacher: teacher.logits}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
updates:
  main:
    optimizer: {type: adam, lr: 0.01}
    params: [student]
    objective: {kd: 0.7, ce: 0.3}
train: {steps: STEPS, seed: 3, eval: {every: 1000}, checkpoint_every: 1000}
""".replace("STEPS", str(STEPS))


def _hand_written(teacher_state, student_state, train_x, train_y, *, batch_size, seed, steps):
    """Hinton KD in plain PyTorch: the loop a user would write."""
    teacher = MLP.create(in_features=64, hidden=[64], num_classes=10)
    student = MLP.create(in_features=64, hidden=[16], num_classes=10)
    teacher.load_state_dict(teacher_state)
    student.load_state_dict(student_state)
    teacher.eval()
    teacher.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01, fused=True)  # as dgraph's
    n = train_x.shape[0]
    per_epoch = n // batch_size
    losses = []
    order = None
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        if position == 0:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        index = order[position * batch_size:(position + 1) * batch_size]
        x, y = train_x[index], train_y[index]
        with torch.no_grad():
            t_logits = teacher(x)["logits"]
        s_logits = student(x)["logits"]
        temperature = 4.0
        kd = F.kl_div(F.log_softmax(s_logits / temperature, dim=-1),
                      F.log_softmax(t_logits / temperature, dim=-1),
                      reduction="batchmean", log_target=True) * temperature**2
        ce = F.cross_entropy(s_logits, y)
        total = 0.7 * kd + 0.3 * ce
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append((float(kd), float(ce)))
    return student, losses


def test_compiled_kd_step_matches_hand_written_loop(tmp_path):
    torch.manual_seed(123)
    teacher_state = MLP.create(in_features=64, hidden=[64], num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in teacher_state.items()},
              str(tmp_path / "teacher.safetensors"))
    spec_file = tmp_path / "kd_diff.yaml"
    spec_file.write_text(textwrap.dedent(SPEC))
    graph, _ = validate(load_spec(spec_file))
    trainer = Trainer(graph, tmp_path / "run", progress=False, log=lambda _m: None)
    (tmp_path / "run").mkdir()
    student_state = {k: v.clone() for k, v in trainer.instances.modules["student"]
                     .state_dict().items()}
    data = trainer.instances.data["data"]

    recorded = []
    plan = trainer.program.plans["main"]
    step_fn = plan.step

    def recording_step(batch, weights):
        total, terms = step_fn(batch, weights)
        recorded.append(tuple(float(t.detach()) for t in terms))
        return total, terms

    plan.step = recording_step
    trainer.run()

    student, hand_losses = _hand_written(
        teacher_state, student_state, data.train["x"], data.train["y"],
        batch_size=32, seed=3, steps=STEPS)
    assert recorded == hand_losses
    compiled_state = trainer.instances.modules["student"].state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(compiled_state[key], value), key
