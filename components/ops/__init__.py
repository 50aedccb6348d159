"""Parameter-free operations."""

from dgraph.components.ops.basic import Detach, Flatten
from dgraph.components.ops.normalize import L2Normalize  # noqa: F401
from dgraph.components.ops.samplers import GaussianNoise
from dgraph.components.ops.lm_sampler import LMSampler  # noqa: F401

__all__ = ["Detach", "Flatten", "GaussianNoise"]
