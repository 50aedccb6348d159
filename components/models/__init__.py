"""Model components: networks usable as teacher, student or any other model, projectors
between feature spaces, targets, learnable tensors and synthetic data.

Each public module here declares components (imported when a spec names one, see
:mod:`dgraph.components`).
"""

__all__: list[str] = []
