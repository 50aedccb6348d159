"""Operations and samplers: generic tensor ops, ``expr``, and per-step random inputs.

Each public module here declares components (imported when a spec names one, see
:mod:`dgraph.components`).
"""

__all__: list[str] = []
