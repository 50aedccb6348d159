"""The per-step fast paths: modules called through ``forward`` when nothing else would run,
weights of 1 that multiply by nothing, the plain update path of the runtime, and the cheaper
masked cross-entropy and CPU KL kernels. Each gives the same numbers as the general path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, write_spec
from torch import nn

from dgraph._torch_declare import call_plain
from dgraph.compiler.codegen import direct_call, value_call
from dgraph.errors import NonFiniteError
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.runtime.train import Trainer

SPEC = """
    dgraph: 1
    name: fast
    nodes:
      data: {kind: data, type: digits, params: {batch_size: 16, labelled: 200}}
      teacher:
        kind: teacher
        type: mlp
        params: {in_features: 64, hidden: [16], num_classes: 10}
        inputs: {x: data.x}
      student:
        kind: student
        type: mlp
        params: {in_features: 64, hidden: [8], num_classes: 10}
        inputs: {x: data.x}
      kd:
        kind: loss
        type: hinton_kd
        inputs: {student: student.logits, teacher: teacher.logits}
      ce:
        kind: loss
        type: cross_entropy
        inputs: {logits: student.logits, target: data.y, mask: data.labelled}
    updates:
      main:
        optimizer: {type: adam, lr: 0.01}
        params: [student]
        objective: {kd: 0.9, ce: 0.1}
    train: {steps: 6, seed: 1, log_every: 3, checkpoint_every: 1000, eval: {every: 1000}}
    """


def _trainer(tmp_path: Path, *overrides: str, run: str = "run") -> Trainer:
    return make_trainer(write_spec(tmp_path, SPEC), tmp_path / run, *overrides)


def _module(type_name: str, **params):
    load_plugins()
    cls = COMPONENTS.get(type_name)
    component = cls(cls.Params.model_validate(params), node=f"test_{type_name}")
    return component.build(BuildContext(node=component.node, device="cpu"))


# -- direct calls -------------------------------------------------------------------------
def test_a_plain_module_is_called_through_forward():
    layer = nn.Linear(2, 3)
    call = direct_call(layer)
    assert call == layer.forward and call.__self__ is layer


def test_hooks_wrappers_and_non_modules_keep_the_full_call():
    hooked = nn.Linear(2, 3)
    hooked.register_forward_pre_hook(lambda _m, _a: None)
    backward = nn.Linear(2, 3)
    backward.register_full_backward_hook(lambda _m, _gi, _go: None)
    compiled = nn.Linear(2, 3)
    compiled.compile()

    class Wrapper(nn.Linear):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    wrapper = Wrapper(2, 3)
    not_a_module = object()
    for module in (hooked, backward, compiled, wrapper, not_a_module):
        assert direct_call(module) is module
    handle = nn.modules.module.register_module_forward_hook(lambda _m, _a, _o: None)
    try:
        plain = nn.Linear(2, 3)
        assert direct_call(plain) is plain
    finally:
        handle.remove()
    assert direct_call(plain) == plain.forward


def test_a_hook_added_after_binding_runs_once_the_calls_are_decided_again(tmp_path):
    trainer = _trainer(tmp_path, "train.steps=2")
    seen = []
    trainer.instances.modules["student"].register_forward_hook(
        lambda _m, _a, out: seen.append(out["logits"].shape))
    trainer.run_step()
    assert seen == []  # bound before the hook: called through forward
    trainer.program.refresh_calls(trainer.instances)
    trainer.run_step()
    assert seen == [torch.Size([16, 10])]
    # Trainer.run decides again when it starts: a hook added before it always runs.
    again = _trainer(tmp_path, "train.steps=2", run="again")
    seen.clear()
    again.instances.modules["student"].register_forward_hook(
        lambda _m, _a, out: seen.append(out["logits"].shape))
    again.run()
    assert seen[:2] == [torch.Size([16, 10])] * 2


# -- layers called as functions (call_plain) ------------------------------------------------
def _layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 8),
                         nn.GELU(approximate="tanh"), nn.Linear(8, 8), nn.Tanh(),
                         nn.Sequential(nn.Linear(8, 8), nn.SiLU()), nn.LeakyReLU(0.2),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("training", [True, False])
def test_call_plain_computes_what_the_modules_compute_bit_for_bit(training):
    layers = _layers().train(training)
    x = torch.randn(5, 6, requires_grad=True)
    torch.manual_seed(1)
    expected = layers(x)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    torch.manual_seed(1)  # the same dropout draws
    got = call_plain(layers, x)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    assert torch.equal(got, expected) and torch.equal(grad_got, grad_expected)
    assert training is not torch.equal(call_plain(layers, x), got)  # dropout draws again


def test_call_plain_skips_module_calls_only_where_they_add_nothing():
    layers = _layers()
    calls = []

    class Counted(nn.Linear):  # a subclass: its own forward must run
        def forward(self, x):
            calls.append("subclass")
            return super().forward(x)

    layers[3] = Counted(8, 8)
    layers[0].register_forward_hook(lambda _m, _a, _o: calls.append("hook on a layer"))
    layers[7].register_forward_pre_hook(lambda _m, _a: calls.append("hook on a sequential"))
    # What Module.compile sets: the call runs it instead of forward.
    compiled = layers[5]
    compiled._compiled_call_impl = lambda x: (calls.append("compiled"), compiled.forward(x))[1]
    x = torch.randn(5, 6)
    call_plain(layers, x)
    assert calls == ["hook on a layer", "subclass", "compiled", "hook on a sequential"]
    del compiled._compiled_call_impl
    calls.clear()
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, _a, _o: calls.append(type(m).__name__))
    try:
        call_plain(layers, x)
    finally:
        handle.remove()
    # a hook for every module: every module is called, so each hook fires once
    assert calls.count("Linear") == 4 and calls.count("Sequential") == 2 \
        and calls.count("LeakyReLU") == 1
    assert calls.count("Counted") == 1 and "hook on a layer" in calls


def test_a_tap_on_an_mlp_layer_still_records(tmp_path):
    spec = write_spec(tmp_path, """
        dgraph: 1
        name: tap_mlp
        nodes:
          data: {kind: data, type: digits, params: {batch_size: 16}}
          student:
            kind: student
            type: mlp
            params: {in_features: 64, hidden: [32, 16], num_classes: 10}
            inputs: {x: data.x}
          probe:
            kind: loss
            type: feature_mse
            inputs: {student: student.body.3, teacher: student.features}
          ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
        updates:
          main:
            optimizer: {type: adam, lr: 0.001}
            params: [student]
            objective: {ce: 1.0, probe: 1.0}
        train: {steps: 1, seed: 0, device: cpu}
        """)
    trainer = make_trainer(spec, tmp_path / "run")
    _, terms, _ = trainer.run_step()
    # body.3 is the last hidden activation, the features port: the tap recorded it
    assert float(terms["main"]["probe"]) == 0.0


# -- value calls: a declared function with one output ------------------------------------
def test_a_declared_loss_is_called_as_its_function_and_its_value_taken_straight(tmp_path):
    trainer = _trainer(tmp_path)
    plan = trainer.program.plans["main"]
    assert "    v_kd__loss = m_kd(student=v_student__logits, teacher=v_teacher__logits)\n" \
        in plan.source
    assert "o_kd" not in plan.source and "o_student = m_student(x=v_data__x)" in plan.source
    kd = trainer.instances.modules["kd"]
    call = trainer.program._namespace["m_kd"]
    assert call.func is kd.fn and call.keywords == kd.params
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert torch.equal(call(student=s, teacher=t), kd(student=s, teacher=t)["loss"])
    expected = F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1),
                        reduction="batchmean", log_target=True) * 16
    torch.testing.assert_close(call(student=s, teacher=t), expected, rtol=1e-6, atol=0)


def test_a_hooked_loss_keeps_the_module_call_and_its_hook_sees_the_output_dict(tmp_path):
    trainer = _trainer(tmp_path, "train.steps=2")
    seen = []
    trainer.instances.modules["ce"].register_forward_hook(
        lambda _m, _a, out: seen.append(sorted(out)))
    trainer.program.refresh_calls(trainer.instances)
    _stage, terms, _drawn = trainer.run_step()
    assert seen == [["loss"]]
    assert terms["main"]["ce"].shape == () and terms["main"]["ce"].requires_grad


def test_a_scheduled_parameter_is_read_at_each_value_call():
    module = _module("add_noise", std={"start": 1.0, "end": 0.0, "steps": 4})
    call = value_call(module, "y")
    assert not hasattr(call, "keywords")  # not a partial: the parameters are read per call
    x = torch.zeros(3, 5)
    for step, std in ((0, 1.0), (2, 0.5), (4, 0.0)):
        module.set_step(step)
        torch.manual_seed(7)
        y = call(x=x)
        torch.manual_seed(7)
        torch.testing.assert_close(y, std * torch.randn(3, 5), rtol=0, atol=0)


# -- weights ------------------------------------------------------------------------------
def test_a_weight_of_one_returns_the_loss_itself_and_others_multiply(tmp_path):
    trainer = _trainer(tmp_path, "updates.main.objective={ce: 1.0}")
    plan = trainer.program.plans["main"]
    assert "v_ce__loss if w['ce'] == 1.0 else w['ce'] * v_ce__loss" in plan.source
    batch = {"data": trainer.loaders["data"].next()}
    total, (ce,) = plan.step(batch, {"ce": 1.0})
    assert total is ce
    total, (ce,) = plan.step(batch, {"ce": 0.25})
    assert torch.equal(total, 0.25 * ce)


# -- the plain update path ----------------------------------------------------------------
def test_simple_updates_take_the_plain_path_and_others_the_general_one(tmp_path):
    runner = _trainer(tmp_path).step_runner
    assert runner._simple("main")
    for i, override in enumerate(("updates.main.accumulate=2", "updates.main.repeat=2",
                                  "train.precision=bf16")):
        other = _trainer(tmp_path, override, run=f"run{i}").step_runner
        assert not other._simple("main"), override


def test_the_plain_path_trains_exactly_as_the_general_path(tmp_path):
    plain = _trainer(tmp_path, run="plain")
    general = _trainer(tmp_path, run="general")
    general.step_runner._plain["main"] = False
    logged = {}
    for trainer in (plain, general):
        terms = [trainer.run_step()[1]["main"] for _ in range(6)]
        logged[trainer is plain] = [{k: float(v.detach()) for k, v in t.items()} for t in terms]
    assert logged[True] == logged[False]
    assert set(logged[True][2]) == {"grad_norm", "total", "kd", "ce"}  # a logging step
    assert set(logged[True][0]) == {"total", "kd", "ce"}
    for key, value in general.instances.modules["student"].state_dict().items():
        assert torch.equal(plain.instances.modules["student"].state_dict()[key], value), key
    assert plain.step == general.step == 6


def test_run_step_runs_the_updates_due_and_counts_the_examples(tmp_path):
    trainer = _trainer(tmp_path, "updates.aux={optimizer: {type: sgd, lr: 0.1}, "
                       "params: [student], objective: {ce: 1.0}, every: 2}")
    due = []
    for _ in range(3):
        stage, terms, drawn = trainer.run_step()
        due.append(sorted(terms))
        assert (stage.name, drawn) == ("main", 16)  # both updates read the same batch
    assert due == [["aux", "main"], ["main"], ["aux", "main"]]
    assert trainer.loaders["data"].position == 3


def test_a_nan_through_the_plain_path_is_caught_and_located(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.instances.modules["teacher"].head.bias.data[3] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert str(info.value).startswith(
        "step 0: update 'main' went non-finite (loss nan; gradients finite); the first node "
        "whose output went non-finite is 'teacher' (port 'logits', teacher 'mlp'). The step "
        "was skipped")
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().strip()  # nothing logged


# -- losses -------------------------------------------------------------------------------
def _masked_ce_by_hand(logits, y, mask):
    target = y.masked_fill(~mask, -1)
    return F.cross_entropy(logits, target, ignore_index=-1, reduction="sum") / (
        target >= 0).sum().clamp_min(1)


def test_masked_cross_entropy_equals_the_hand_formula_bit_for_bit():
    ce = _module("cross_entropy")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=gen, requires_grad=True)
    y = torch.randint(10, (32,), generator=gen)
    y[:3] = -1  # unlabelled examples, also masked out below or not
    mask = torch.rand(32, generator=gen) > 0.3
    mask[:2] = True
    got = ce(logits=logits, target=y, mask=mask)["loss"]
    want = _masked_ce_by_hand(logits, y, mask)
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0])
    # A float mask of 0/1 and a [B, 1] mask mean the same.
    as_float = ce(logits=logits, target=y, mask=mask.float().unsqueeze(1))["loss"]
    assert torch.equal(as_float, want)


def test_masked_cross_entropy_of_a_batch_without_labels_is_zero_with_zero_gradients():
    ce = _module("cross_entropy")
    logits = torch.randn(4, 3, requires_grad=True)
    loss = ce(logits=logits, target=torch.tensor([0, 1, 2, 0]),
              mask=torch.zeros(4, dtype=torch.bool))["loss"]
    assert float(loss.detach()) == 0.0
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.zeros(4, 3))


def test_kl_on_cpu_equals_pytorch_kl_div_bit_for_bit():
    kd = _module("hinton_kd")
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(16, 7, generator=gen, requires_grad=True)
    t = torch.randn(16, 7, generator=gen)
    got = kd(student=s, teacher=t)["loss"]
    want = F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1), reduction="batchmean",
                    log_target=True) * 16
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got, s)[0], torch.autograd.grad(want, s)[0])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_on_cpu_with_minus_inf_logits_is_exact(direction):
    # Class 2 is masked (-inf) on both sides: p = 0 there, so it adds exactly 0 (the plain
    # formula would give 0 * inf = NaN). Two classes of logits 0 and log 3 on each side:
    # p_t = [1/4, 3/4], p_s = [1/2, 1/2]; KL(p_t || p_s) = 1/4 ln(1/2) + 3/4 ln(3/2).
    kl = _module("kl_div", direction=direction)
    inf = float("inf")
    s = torch.tensor([[0.0, 0.0, -inf]], requires_grad=True)
    t = torch.tensor([[0.0, torch.log(torch.tensor(3.0)).item(), -inf]])
    loss = kl(student=s, teacher=t)["loss"]
    p_t, p_s = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    p, q = (p_t, p_s) if direction == "forward" else (p_s, p_t)
    assert float(loss.detach()) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all() and float(grad[0, 2]) == 0.0
    # A class the teacher allows and the student rules out: the true KL, +inf.
    loss = _module("kl_div")(student=torch.tensor([[0.0, -inf]]),
                                     teacher=torch.tensor([[0.0, 0.0]]))["loss"]
    assert float(loss) == inf


# -- the batch loader's per-epoch batch indices ----------------------------------------------
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_loader_draws_each_epochs_permutation_in_order_and_resumes_mid_epoch(drop_last):
    from dgraph.runtime.data import BatchLoader

    x = torch.arange(10.0).unsqueeze(1)
    loader = BatchLoader({"x": x, "i": torch.arange(10)}, 4, shuffle=True,
                         drop_last=drop_last, seed=3)
    per_epoch = 2 if drop_last else 3
    drawn = []
    for epoch in range(3):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        for position in range(per_epoch):
            batch = loader.next()
            assert loader.drawn == (epoch, position)
            assert torch.equal(batch["i"], order[position * 4:position * 4 + 4])
            assert torch.equal(batch["x"][:, 0], batch["i"].float())
            drawn.append(batch["i"])
    again = BatchLoader({"x": x, "i": torch.arange(10)}, 4, shuffle=True,
                        drop_last=drop_last, seed=3)
    again.load_state_dict({"epoch": 1, "position": 1, "seed": 3})
    rest = [again.next()["i"] for _ in range(len(drawn) - per_epoch - 1)]
    assert all(torch.equal(a, b) for a, b in zip(rest, drawn[per_epoch + 1:], strict=True))
    assert torch.equal(loader.batch_at(1, 1)["i"], drawn[per_epoch + 1])


def test_a_declared_class_with_one_output_is_called_through_its_own_forward(tmp_path):
    from dgraph.compiler.codegen import value_ports

    module = _module("mlp_map", in_features=3, hidden=[4], out_features=2)
    call = value_call(module, "y")
    assert call.__func__ is type(module).value_forward and call.__self__ is module
    x = torch.randn(5, 3)
    assert torch.equal(call(x=x), module(x=x)["y"])
    module.register_forward_hook(lambda _m, _a, out: {"y": out["y"] * 0})
    assert torch.equal(value_call(module, "y")(x=x), torch.zeros(5, 2))
    trainer = _trainer(tmp_path)
    # mlp has two outputs (logits, features): called for its dict; the losses for their value.
    assert value_ports(trainer.graph) == {"ce": "loss", "kd": "loss"}


# -- CUDA graphs: each training step is marked as a new iteration ----------------------------
def test_a_step_is_marked_for_cuda_graphs_only_when_the_steps_replay_as_cuda_graphs(tmp_path):
    from dgraph.compiler.compile_mode import CompileChoice
    from dgraph.runtime.train import graph_step_marker

    graphs = CompileChoice("auto", "reduce-overhead", "every node is cuda_graph_safe")
    assert graph_step_marker(graphs) is torch.compiler.cudagraph_mark_step_begin
    for choice in (CompileChoice(False, None, "train.compile is false"),
                   CompileChoice(True, "default", "train.compile is true")):
        assert graph_step_marker(choice) is None
    trainer = _trainer(tmp_path, "train.steps=3")
    assert trainer._new_graph_step is None  # eager on CPU
    marks = []
    trainer._new_graph_step = lambda: marks.append(trainer.step)
    trainer.run_step()
    trainer.run_step()
    assert marks == [0, 1]
