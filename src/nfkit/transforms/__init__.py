"""Bijections (data → latent) and the elementwise transformers they share.

Every class listed in ``__all__`` is covered by the generic test in ``tests/test_transforms.py``.
"""

from nfkit.transforms.autoregressive import Autoregressive
from nfkit.transforms.block import BlockAutoregressive
from nfkit.transforms.continuous import ContinuousFlow
from nfkit.transforms.coupling import Coupling, MLPConditioner, alternating_mask
from nfkit.transforms.elementwise import (
    Affine,
    Bounded,
    Elementwise,
    LeakyReLU,
    Logit,
    Sigmoid,
    Softplus,
    Tanh,
)
from nfkit.transforms.gaussianization import MarginalGaussianization, Rotation
from nfkit.transforms.image import LogitPreprocess, MultiscaleSplit, Squeeze, dequantize
from nfkit.transforms.linear import (
    Householder,
    Identity,
    InvConv1x1,
    LULinear,
    Permutation,
    Reverse,
)
from nfkit.transforms.monotonic import (
    BernsteinTransformer,
    DSFTransformer,
    GaussianizationTransformer,
    SOSPolynomialTransformer,
    UMNNTransformer,
)
from nfkit.transforms.normalization import ActNorm, BatchNorm
from nfkit.transforms.planar import Planar, Radial, Sylvester
from nfkit.transforms.residual import ResidualBlock
from nfkit.transforms.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    CircularRQSplineTransformer,
    PerColumnTransformer,
    RQSplineTransformer,
    Transformer,
)

__all__ = [
    # image (events (C, H, W))
    "Squeeze",
    "MultiscaleSplit",
    "LogitPreprocess",
    "InvConv1x1",
    "dequantize",
    # continuous (FFJORD) and Gaussianization (RBIG)
    "ContinuousFlow",
    "MarginalGaussianization",
    "Rotation",
    # structures
    "Elementwise",
    "Coupling",
    "Autoregressive",
    "BlockAutoregressive",
    # transformers
    "Transformer",
    "AdditiveTransformer",
    "AffineTransformer",
    "RQSplineTransformer",
    "CircularRQSplineTransformer",
    "PerColumnTransformer",
    "BernsteinTransformer",
    "DSFTransformer",
    "GaussianizationTransformer",
    "SOSPolynomialTransformer",
    "UMNNTransformer",
    # fixed elementwise maps
    "Affine",
    "Bounded",
    "Sigmoid",
    "Logit",
    "Tanh",
    "Softplus",
    "LeakyReLU",
    # linear
    "Identity",
    "Permutation",
    "Reverse",
    "LULinear",
    "Householder",
    # normalization
    "ActNorm",
    "BatchNorm",
    # residual-type layers with explicit forward
    "Planar",
    "Radial",
    "Sylvester",
    # invertible residual block (numerical inverse)
    "ResidualBlock",
    # helpers
    "MLPConditioner",
    "alternating_mask",
]
