"""Fixtures for the component tests: build a registered component type from a params dict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dgraph.registry import COMPONENTS, BuildContext, Component, load_plugins

load_plugins()  # imports dgraph.components, which registers the built-in types


def _make(type_name: str, **params: Any) -> Component:
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), node=f"test_{type_name}")


def _build(type_name: str, *, spec_dir: Path | None = None, device: str = "cpu",
           **params: Any) -> Any:
    comp = _make(type_name, **params)
    return comp.build(BuildContext(node=comp.node, device=device, spec_dir=spec_dir))


@pytest.fixture
def make() -> Callable[..., Component]:
    """``make(type, **params)``: a declared component (no torch involved)."""
    return _make


@pytest.fixture
def build() -> Callable[..., Any]:
    """``build(type, spec_dir=None, device='cpu', **params)``: the built runtime object."""
    return _build


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
