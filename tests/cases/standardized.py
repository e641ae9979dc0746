"""Case for the ``Standardized`` factory (standardization stored in the model), non-trivial stats."""

from __future__ import annotations

import torch

import nfkit as nf

from . import ModelCase


def _standardized(d: int, c: int) -> nf.Flow:
    g = torch.Generator().manual_seed(3)
    x = 5.0 + 3.0 * torch.randn(64, d, generator=g)
    context = None if c == 0 else -2.0 + 0.5 * torch.randn(64, c, generator=g)
    inner = nf.models.MAF(d, context=c, transforms=2, hidden=(8,))
    return nf.models.standardize(inner, x, context)


MODELS: dict[str, ModelCase] = {"Standardized": ModelCase(_standardized)}
