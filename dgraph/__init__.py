"""dgraph: distillation methods written as specs — validated, drawn, compiled, exported.

The core layers import one way: spec -> registry -> graph -> compiler -> runtime. Components
(``dgraph.components``) and exporters (``dgraph.exporters``) are plug-ins of that core.
"""

import os

# MKL picks among code paths at run time (by data alignment, among others), so two runs of one
# spec could differ in the last bits of a matrix product, and a run resumed after a kill could
# differ from an uninterrupted one. STRICT fixes the path. It only works when set before torch
# (and MKL) is loaded: `dgraph` and `import dgraph` before `import torch` get it; a user's own
# MKL_CBWR wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

__all__ = ["__version__"]
