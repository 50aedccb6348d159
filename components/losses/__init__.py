"""Loss components: each returns ``{"loss": scalar}`` (token-level ones add sum and count);
metric components for evaluation live here too.

Every public module here is imported by :mod:`dgraph.components`; ``_divergence`` holds the
maths the losses share and is imported only inside their implementations.
"""

__all__: list[str] = []
