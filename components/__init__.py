"""dgraph's built-in components: a plug-in of the core.

Every module of this package whose name does not start with an underscore declares components
(see :mod:`dgraph.declare`), so a new component is one new file: no list to edit. Importing
this package imports none of them: :func:`dgraph.registry.load_plugins` lets the registry
import a module when a spec first names one of its types (``_index.py``, generated from a
full import and checked by tests/test_startup.py, says which module declares which type; a
module missing there is imported up front), and every module when all types are listed.
Modules declare their components without importing torch at the top; torch is imported
inside the implementations, when a graph is built.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

__all__ = ["import_every_module", "module_names"]


def module_names() -> list[str]:
    """The public modules and sub-packages of this package, found on disk (none imported)."""
    found: list[str] = []

    def walk(path: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([path], prefix):
            short = info.name.rsplit(".", 1)[-1]
            if short.startswith("_"):
                continue
            found.append(info.name)
            if info.ispkg:
                walk(os.path.join(path, short), info.name + ".")

    for path in __path__:
        walk(path, __name__ + ".")
    return found


def import_every_module() -> None:
    """Import every public module: every built-in component type registers."""
    for name in module_names():
        importlib.import_module(name)
