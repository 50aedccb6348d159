"""Loss components: each returns ``{"loss": scalar}``."""

from dgraph.components.losses.adversarial import GANCriticLoss, GANGeneratorLoss
from dgraph.components.losses.classification import CrossEntropy, HintonKD
from dgraph.components.losses.feature import MSE, CosineFeature, FeatureMSE

__all__ = [
    "MSE", "CosineFeature", "CrossEntropy", "FeatureMSE", "GANCriticLoss", "GANGeneratorLoss",
    "HintonKD",
]
