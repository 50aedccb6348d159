"""Model components usable as teacher, student or any other network."""

from dgraph.components.models.mlp import MLP

__all__ = ["MLP"]
