"""Cases for the wrapping factories: ``Standardized`` (standardization stored in the model),
non-trivial stats, and with per-column ``bounds``; ``Embedded`` (a learned context summary)."""

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


def _bounded(d: int, c: int) -> nf.Flow:
    """Columns on (0, inf), (-1, 1), the real line, (0, inf), ... (``bounds``)."""
    g = torch.Generator().manual_seed(4)
    u = torch.randn(64, d, generator=g)
    kinds = [i % 3 for i in range(d)]
    x = torch.stack(
        [
            (u[:, i].exp() * 2, torch.tanh(u[:, i]) * 0.9, u[:, i] + 3)[k]
            for i, k in enumerate(kinds)
        ],
        -1,
    )
    bounds = [((0.0, None), (-1.0, 1.0), (None, None))[k] for k in kinds]
    context = None if c == 0 else torch.randn(64, c, generator=g)
    inner = nf.models.NSF(d, context=c, transforms=2, hidden=(8,), bins=4)
    return nf.models.standardize(inner, x, context, bounds=bounds)


def _embedded(d: int, c: int) -> nf.Flow:
    """A summary network of the raw context (``c`` features) into a 2-feature inner context."""
    inner = nf.models.NSF(d, context=2, transforms=2, hidden=(8,), bins=4)
    return nf.models.Embedded(d, flow=inner.config, context=c, hidden=(8,))


def _embedded_set(d: int, c: int) -> nf.Flow:
    """A DeepSet summary of the raw context read as ``c`` exchangeable scalars."""
    inner = nf.models.NSF(d, context=2, transforms=2, hidden=(8,), bins=4)
    return nf.models.Embedded(d, flow=inner.config, context=c, hidden=(8,), set_features=1)


def _embedded_padded(d: int, c: int) -> nf.Flow:
    """The same over sets of any size up to ``c`` (``padded``: absent scalars are NaN)."""
    inner = nf.models.NSF(d, context=2, transforms=2, hidden=(8,), bins=4)
    return nf.models.Embedded(
        d, flow=inner.config, context=c, hidden=(8,), set_features=1, padded=True
    )


MODELS: dict[str, ModelCase] = {
    "Embedded": ModelCase(_embedded, needs_context=True),
    "Embedded-set": ModelCase(_embedded_set, needs_context=True),
    "Embedded-padded": ModelCase(_embedded_padded, needs_context=True),
    "Standardized": ModelCase(_standardized),
    "Standardized-bounds": ModelCase(_bounded),
}
