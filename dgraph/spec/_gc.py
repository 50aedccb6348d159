"""Python's cyclic garbage collector paused while a spec is read or validated.

Reading and validating a spec of a million nodes makes tens of millions of dicts, lists,
models and graph objects, all kept, none in a reference cycle: each automatic collection of
the oldest generation walks every one of them again, about a fifth of the time on a 50 MB
spec, and finds nothing. While paused, objects are still freed as usual when their last
reference goes; only cycles wait until the collector runs again (which it does on its own).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic cyclic collection for the block (a no-op if it is already off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
