"""Cases for the Gaussianization layers and RBIG, each fitted on a fixed non-Gaussian dataset,
and for GF (trained by gradient, so the generic test's parameter noise perturbs it).

RBIG's layers have no parameters (only buffers set by ``fit``), so the parameter noise does not
touch them; RBIG takes no context.
"""

from __future__ import annotations

import torch

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase


def _data(d: int, n: int = 400, seed: int = 0) -> torch.Tensor:
    """Skewed, correlated data: exp-normal marginals mixed by a fixed matrix."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(
        d, d, generator=g, dtype=torch.float64
    )
    return (x.exp() - 1.5) @ mix


def _rbig(d: int, rotation: str) -> nf.Flow:
    return nf.models.RBIG(d, layers=4, bins=8, rotation=rotation).fit(_data(d))


TRANSFORMS: dict[str, Case] = {
    "MarginalGaussianization": Case(
        lambda d, c: T.MarginalGaussianization(d, bins=8).double().fit(_data(d))
    ),
    "Rotation-pca": Case(lambda d, c: T.Rotation(d).double().fit(_data(d))),
    "Rotation-random": Case(
        lambda d, c: T.Rotation(d, method="random", seed=3).double().fit(_data(d))
    ),
    "RBIG-layers": Case(lambda d, c: _rbig(d, "pca").transform),
}

MODELS: dict[str, ModelCase] = {
    "GF": ModelCase(
        lambda d, c: nf.models.GF(d, context=c, transforms=3, components=4, hidden=(16, 16))
    ),
    "RBIG": ModelCase(lambda d, c: _rbig(d, "pca"), context=False),
    "RBIG-random": ModelCase(lambda d, c: _rbig(d, "random"), context=False),
}
