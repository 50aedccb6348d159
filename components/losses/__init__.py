"""Loss components: each returns ``{"loss": scalar}``."""

from dgraph.components.losses.adversarial import GANCriticLoss, GANGeneratorLoss
from dgraph.components.losses.attention import AttentionTransfer  # noqa: F401
from dgraph.components.losses.classification import CrossEntropy, HintonKD
from dgraph.components.losses.crd import CRD  # noqa: F401
from dgraph.components.losses.distribution_matching import DistributionMatching  # noqa: F401
from dgraph.components.losses.dkd import DKD  # noqa: F401
from dgraph.components.losses.feature import MSE, CosineFeature, FeatureMSE
from dgraph.components.losses.kl import KLDiv  # noqa: F401
from dgraph.components.losses.lm_metrics import LMPerplexity  # noqa: F401
from dgraph.components.losses.rkd import RKDAngle, RKDDistance  # noqa: F401
from dgraph.components.losses.token import TokenCE, TokenFeature, TokenJSD, TokenKL, TokenTopKKL  # noqa: F401,E501

__all__ = [
    "MSE", "CosineFeature", "CrossEntropy", "FeatureMSE", "GANCriticLoss", "GANGeneratorLoss",
    "HintonKD",
]
