"""Loss components: each returns ``{"loss": scalar}`` (token-level ones add sum and count);
metric components for evaluation live here too.

Each public module here declares losses (imported when a spec names one, see
:mod:`dgraph.components`); ``_divergence`` holds the maths the losses share and is imported
only inside their implementations.
"""

__all__: list[str] = []
