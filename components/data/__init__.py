"""Data source components: each builds a :class:`dgraph.data.DataSource`.

Every module here is imported by :mod:`dgraph.components`; each declares its sources.
"""

__all__: list[str] = []
