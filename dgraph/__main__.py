"""``python -m dgraph ...`` runs the command-line interface (as ``torchrun -m dgraph`` needs)."""

from dgraph.cli import program

program()
