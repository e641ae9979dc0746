"""Cases for circular splines (angles on [-bound, bound]), per-column transformers that mix
them with ordinary splines, and the NCSF factory (all angles, or some)."""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase

CIRCULAR = T.CircularRQSplineTransformer(bins=5, bound=2.0)
H = (16, 16)


def _mixed(d: int) -> T.PerColumnTransformer:
    """Angles in the even columns, real numbers (spline with identity tails) in the odd ones."""
    spline = T.RQSplineTransformer(bins=4, bound=3.0)
    return T.PerColumnTransformer((CIRCULAR, spline), tuple(i % 2 for i in range(d)))


# Inputs live on the circle, so there are no far tails to feed.
TRANSFORMS: dict[str, Case] = {
    "Elementwise-circular": Case(
        lambda d, c: T.Elementwise(d, CIRCULAR, context=c, hidden=H),
        context=True,
        tails=False,
    ),
    "Coupling-circular": Case(
        lambda d, c: T.Coupling(d, CIRCULAR, context=c, hidden=H),
        context=True,
        features=(2, 5),
        tails=False,
    ),
    "Autoregressive-circular": Case(
        lambda d, c: T.Autoregressive(d, CIRCULAR, context=c, hidden=H),
        context=True,
        features=(1, 2, 5, 9),
        tails=False,
    ),
    "Elementwise-per-column": Case(
        lambda d, c: T.Elementwise(d, _mixed(d), context=c, hidden=H),
        context=True,
        tails=False,
    ),
    "Coupling-per-column": Case(
        lambda d, c: T.Coupling(d, _mixed(d), context=c, hidden=H),
        context=True,
        features=(2, 5),
        tails=False,
    ),
    "Autoregressive-per-column": Case(
        lambda d, c: T.Autoregressive(d, _mixed(d), context=c, hidden=H),
        context=True,
        features=(1, 2, 5, 9),
        tails=False,
    ),
}

_SMALL = dict(transforms=2, hidden=H, bins=4)
MODELS: dict[str, ModelCase] = {
    "NCSF": ModelCase(lambda d, c: nf.models.NCSF(d, context=c, **_SMALL)),
    "NCSF-coupling": ModelCase(
        lambda d, c: nf.models.NCSF(d, context=c, coupling=True, bound=180.0, **_SMALL),
    ),
    "NCSF-mixed": ModelCase(
        lambda d, c: nf.models.NCSF(d, context=c, angles=range(0, d, 2), **_SMALL),
    ),
    "NCSF-mixed-coupling": ModelCase(
        lambda d, c: nf.models.NCSF(d, context=c, angles=[d - 1], coupling=True, **_SMALL),
    ),
}
