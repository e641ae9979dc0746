"""Cases for the invertible residual block and the ResidualFlow factory (exact log-det).

Spectral normalization only updates in train mode, so every case runs one train-mode forward
after the parameters are perturbed and is then checked in eval mode (``train_first=True``).
"""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase

H = (16, 16)

TRANSFORMS: dict[str, Case] = {
    "ResidualBlock": Case(
        lambda d, c: T.ResidualBlock(d, context=c, hidden=H), context=True, train_first=True
    ),
    "ResidualBlock-inverse": Case(
        lambda d, c: T.ResidualBlock(d, context=c, hidden=H, lipschitz=0.5).inv,
        context=True,
        train_first=True,
    ),
}

MODELS: dict[str, ModelCase] = {
    "ResidualFlow": ModelCase(
        lambda d, c: nf.models.ResidualFlow(d, context=c, blocks=2, hidden=H), train_first=True
    ),
}
