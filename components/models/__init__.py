"""Model components: networks usable as teacher, student or any other model, projectors
between feature spaces, targets, learnable tensors and synthetic data."""

from dgraph.components.models.cnn import CNN
from dgraph.components.models.diffusion import UNet2D
from dgraph.components.models.hf import HFCausalLM
from dgraph.components.models.learnable import LearnableTensor
from dgraph.components.models.mlp import MLP, MLPMap
from dgraph.components.models.projectors import Conv1x1Projector, LinearProjector
from dgraph.components.models.random_nets import RandomConvNet
from dgraph.components.models.synthetic import SyntheticDigits
from dgraph.components.models.targets import EMATarget
from dgraph.components.models.token_projector import TokenProjector

__all__ = [
    "CNN", "Conv1x1Projector", "EMATarget", "HFCausalLM", "LearnableTensor", "LinearProjector",
    "MLP", "MLPMap", "RandomConvNet", "SyntheticDigits", "TokenProjector", "UNet2D",
]
