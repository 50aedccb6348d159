"""Operations and samplers: generic tensor ops, ``expr``, and per-step random inputs.

Every module here is imported by :mod:`dgraph.components`; each declares its components.
"""

__all__: list[str] = []
