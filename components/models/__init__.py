"""Model components: networks usable as teacher, student or any other model, projectors
between feature spaces, targets, learnable tensors and synthetic data.

Every module here is imported by :mod:`dgraph.components`; each declares its components.
"""

__all__: list[str] = []
