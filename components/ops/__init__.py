"""Parameter-free operations."""

from dgraph.components.ops.basic import Detach, Flatten
from dgraph.components.ops.samplers import GaussianNoise

__all__ = ["Detach", "Flatten", "GaussianNoise"]
