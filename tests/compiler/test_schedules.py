"""Optimizers are built with torch's fused kernels on CPU and CUDA (which also take the
non-finite flag: a flagged step is skipped on the device, without a sync); RMSprop and
parameters spread over devices get the foreach kernels."""

from __future__ import annotations

import pytest
import torch

from dgraph.compiler.schedules import build_optimizer
from dgraph.spec.model import OptimizerSpec

TYPES = ["adam", "adamw", "sgd"]


def _groups(device: str) -> list[dict]:
    return [{"params": [torch.nn.Parameter(torch.zeros(3, device=device))], "node": "n"}]


@pytest.mark.parametrize("kind", TYPES)
def test_cpu_optimizers_are_fused_and_take_the_non_finite_flag(kind):
    optimizer = build_optimizer(OptimizerSpec(type=kind, lr=0.1), _groups("cpu"))
    assert optimizer.defaults["fused"] is True and not optimizer.defaults.get("foreach")
    assert getattr(optimizer, "_step_supports_amp_scaling", False)
    param = optimizer.param_groups[0]["params"][0]
    param.grad = torch.ones_like(param)
    optimizer.grad_scale = None
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    assert torch.equal(param.detach(), torch.zeros(3))


def test_rmsprop_and_parameters_on_several_devices_use_foreach_kernels():
    optimizer = build_optimizer(OptimizerSpec(type="rmsprop", lr=0.1), _groups("cpu"))
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults.get("fused")
    groups = _groups("cpu") + [{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))],
                                "node": "m"}]
    optimizer = build_optimizer(OptimizerSpec(type="adam", lr=0.1), groups)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", TYPES)
def test_cuda_optimizers_are_fused_and_take_the_non_finite_flag(kind):
    optimizer = build_optimizer(OptimizerSpec(type=kind, lr=0.1), _groups("cuda"))
    assert optimizer.defaults["fused"] is True and not optimizer.defaults.get("foreach")
    assert getattr(optimizer, "_step_supports_amp_scaling", False)
    # A set flag skips the step on the device: the parameter stays where it was.
    param = optimizer.param_groups[0]["params"][0]
    param.grad = torch.ones_like(param)
    optimizer.grad_scale = None
    optimizer.found_inf = torch.ones((), device="cuda")
    optimizer.step()
    assert torch.equal(param.detach(), torch.zeros(3, device="cuda"))
