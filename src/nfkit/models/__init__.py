r"""Architecture factories: each returns an :class:`~nfkit.Flow` whose ``config`` rebuilds it.

All arguments after ``features`` are keyword-only. ``nf.models.build(flow.config)`` gives a fresh
flow of the same architecture (``nf.load`` then fills in the weights). Each family's factories
live in their own module and register themselves with ``@factory``.
"""

from nfkit.models._registry import FACTORIES, build, factory, learning_rate, make_base
from nfkit.models.classic import IAF, MAF, NCSF, NICE, NSF, Planar, Radial, RealNVP, Sylvester
from nfkit.models.continuous import FFJORD
from nfkit.models.dequantized import DequantizedFlow
from nfkit.models.embedded import Embedded
from nfkit.models.gaussianization import GF, RBIG, RBIGFlow
from nfkit.models.image import Glow, MultiscaleRealNVP
from nfkit.models.mixture import GMM
from nfkit.models.monotonic import BNAF, BPF, NAF, SOSPF, UMNN
from nfkit.models.residual import ResidualFlow
from nfkit.models.standardized import Standardized, standardize

__all__ = [
    "Glow",
    "MultiscaleRealNVP",
    "FFJORD",
    "RBIG",
    "RBIGFlow",
    "GF",
    "GMM",
    "MAF",
    "IAF",
    "NSF",
    "NCSF",
    "RealNVP",
    "NICE",
    "Planar",
    "Radial",
    "Sylvester",
    "NAF",
    "UMNN",
    "BNAF",
    "SOSPF",
    "BPF",
    "ResidualFlow",
    "Standardized",
    "standardize",
    "Embedded",
    "DequantizedFlow",
    "FACTORIES",
    "build",
    "factory",
    "make_base",
    "learning_rate",
]
