"""Data source components: each builds a :class:`dgraph.data.DataSource`.

Each public module here declares sources (imported when a spec names one, see
:mod:`dgraph.components`).
"""

__all__: list[str] = []
