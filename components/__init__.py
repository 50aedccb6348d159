"""dgraph's built-in components: a plug-in of the core, registered on import.

Every module of this package whose name does not start with an underscore is imported here,
so a new component is one new file: no list to edit. Modules declare their components
without importing torch at the top (see :mod:`dgraph.declare`); torch is imported inside the
implementations, when a graph is built.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []


def _import_every_module() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        private = any(part.startswith("_") for part in info.name.split(".")[2:])
        if not private:
            importlib.import_module(info.name)


_import_every_module()
