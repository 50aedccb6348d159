"""Parameter-free operations and samplers."""

from dgraph.components.ops import expr, tensor
from dgraph.components.ops.basic import Detach, Flatten
from dgraph.components.ops.lm_sampler import LMSampler
from dgraph.components.ops.normalize import L2Normalize
from dgraph.components.ops.samplers import GaussianNoise

__all__ = ["expr", "tensor", "Detach", "Flatten", "GaussianNoise", "L2Normalize", "LMSampler"]
