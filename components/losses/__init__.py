"""Loss components: each returns ``{"loss": scalar}`` (token-level ones add sum and count);
metric components for evaluation live here too."""

from dgraph.components.losses.adversarial import GANCriticLoss, GANGeneratorLoss
from dgraph.components.losses.attention import AttentionTransfer
from dgraph.components.losses.classification import CrossEntropy, HintonKD
from dgraph.components.losses.crd import CRD
from dgraph.components.losses.distribution_matching import DistributionMatching
from dgraph.components.losses.dkd import DKD
from dgraph.components.losses.feature import MSE, CosineFeature, FeatureMSE
from dgraph.components.losses.kl import KLDiv
from dgraph.components.losses.lm_metrics import LMPerplexity
from dgraph.components.losses.rkd import RKDAngle, RKDDistance
from dgraph.components.losses.token import (
    TokenCE,
    TokenFeature,
    TokenJSD,
    TokenKL,
    TokenTopKKL,
)

__all__ = [
    "CRD", "DKD", "MSE", "AttentionTransfer", "CosineFeature", "CrossEntropy",
    "DistributionMatching", "FeatureMSE", "GANCriticLoss", "GANGeneratorLoss", "HintonKD",
    "KLDiv", "LMPerplexity", "RKDAngle", "RKDDistance", "TokenCE", "TokenFeature", "TokenJSD",
    "TokenKL", "TokenTopKKL",
]
