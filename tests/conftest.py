"""Test tiers: the short tier runs by default (CI); ``--slow`` also runs the long end-to-end tier.

Mark a test ``@pytest.mark.slow`` when it trains a spec to convergence or otherwise takes
more than a few seconds; give the short tier a version of it that runs a few steps.
``DGRAPH_SLOW=1`` has the same effect as ``--slow`` (the benchmarks use it).
"""

from __future__ import annotations

import os

import pytest

import dgraph  # noqa: F401  (before torch: it pins MKL's code path, see dgraph/__init__.py)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run tests marked slow (long end-to-end runs)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long end-to-end run, skipped unless --slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or os.environ.get("DGRAPH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow (or DGRAPH_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count must not change it for the tests after it:
    in-process runs compared with subprocess runs (resume tests) then differ in the last bits."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
