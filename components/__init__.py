"""dgraph's built-in components: a plug-in of the core, registered on import.

Each module declares its component types without importing torch; the torch code lives in
``_torch_*`` modules imported by ``build``.
"""

from dgraph.components import data, losses, models, ops

__all__ = ["data", "losses", "models", "ops"]
