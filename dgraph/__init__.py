"""dgraph: distillation methods written as specs — validated, drawn, compiled, exported.

The core layers import one way: spec -> registry -> graph -> compiler -> runtime. Components
(``dgraph.components``) and exporters (``dgraph.exporters``) are plug-ins of that core.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
