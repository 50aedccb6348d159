"""``python -m dgraph ...`` runs the command-line interface (as ``torchrun -m dgraph`` needs)."""

import sys

from dgraph.cli import main

sys.exit(main())
