"""``dgraph sweep``: search over specs (a grid or an Optuna search), each trial a normal run.

It sits beside the CLI and above :mod:`dgraph.api`: :mod:`dgraph.search.space` reads the search
space (``--grid key=v1,v2`` or a space file) and checks it against the spec before any trial
runs, :mod:`dgraph.search.runner` drives Optuna and the trial processes,
:mod:`dgraph.search.report` writes the table, the plot, ``results.jsonl`` and the best spec,
and :mod:`dgraph.search.training_free` is the training-free (DisWOT-style) objective.
Optuna is imported only when a sweep runs (``pip install dgraph[search]``).
"""

from dgraph.search.space import Param, SweepError, parse_grid, parse_space

__all__ = ["Param", "SweepError", "parse_grid", "parse_space", "sweep"]


def sweep(*args, **kwargs):
    """:func:`dgraph.search.runner.sweep` (imported on use: it needs Optuna)."""
    from dgraph.search.runner import sweep as run

    return run(*args, **kwargs)
