"""Python's cyclic garbage collector during the start-up of a training run.

Importing torch and ``torch._dynamo`` (which every ``torch.optim`` optimizer imports) makes
some 300,000 objects that live as long as the process. While they are made, the collector
runs every generation again and again and finds next to nothing (a hundred objects): about
0.35 CPU s of a 2.4 s one-step ``dgraph train kd``, five full collections among them.

The command line pauses the collector for a ``train`` command (:func:`pause`); the training
loop resumes it before its first step (:func:`resume`), after moving everything allocated so
far (modules, the operator registry, the built run) into the permanent generation
(:func:`gc.freeze`), so that later collections do not walk it again either. Garbage made
during the start-up that sits in a reference cycle is kept until the process ends: the few
objects the paused collections would have found. Outside the command line (a Python caller
of :func:`dgraph.api.train`, the tests) nothing changes: :func:`resume` only undoes a pause.
"""

from __future__ import annotations

import gc

__all__ = ["pause", "paused", "resume"]

_paused = False


def pause() -> None:
    """Stop automatic collection until :func:`resume` (if it runs now)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def paused() -> bool:
    """Whether :func:`pause` stopped the collector and nothing resumed it since."""
    return _paused


def resume() -> None:
    """After a :func:`pause`: freeze what exists now and collect automatically again."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
