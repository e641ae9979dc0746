"""Cases for the core transforms and factories."""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase

SPLINE = T.RQSplineTransformer(bins=5, bound=3.0)
INF = float("inf")
H = (16, 16)
WIDE = (1, 2, 5, 9)  # from 8 features a MADE stores θ parameter-major


def _coupling(d: int, c: int, transformer: T.Transformer) -> nf.Transform:
    # D = 1 has nothing to condition on: a custom conditioner sees only the context (if any).
    if d == 1:
        return T.Elementwise(1, transformer, context=c, hidden=H)
    return T.Coupling(d, transformer, context=c, hidden=H)


TRANSFORMS: dict[str, Case] = {
    "Affine": Case(lambda d, c: T.Affine(shift=0.3, scale=-1.7)),
    "Affine-trainable": Case(
        lambda d, c: T.Affine(shift=[0.1] * d, scale=[2.0] * d, trainable=True)
    ),
    "Sigmoid": Case(lambda d, c: T.Sigmoid()),
    # columns on (0, 1), (-inf, 3), (1, inf), the real line, (2, 10), ... in turn
    "Bounded": Case(
        lambda d, c: T.Bounded(
            [(0.0, -INF, 1.0, -INF, 2.0)[i % 5] for i in range(d)],
            [(1.0, 3.0, INF, INF, 10.0)[i % 5] for i in range(d)],
        ),
        tails=False,
    ),
    "Logit": Case(lambda d, c: T.Logit(), tails=False),
    "Tanh": Case(lambda d, c: T.Tanh()),
    "Softplus": Case(lambda d, c: T.Softplus()),
    "LeakyReLU": Case(lambda d, c: T.LeakyReLU(0.2)),
    "Elementwise-affine": Case(
        lambda d, c: T.Elementwise(d, T.AffineTransformer(), context=c, hidden=H), context=True
    ),
    "Elementwise-spline": Case(
        lambda d, c: T.Elementwise(d, SPLINE, context=c, hidden=H), context=True
    ),
    "Identity": Case(lambda d, c: T.Identity()),
    "Permutation": Case(lambda d, c: T.Permutation(d, seed=1)),
    "Reverse": Case(lambda d, c: T.Reverse(d)),
    "LULinear": Case(lambda d, c: T.LULinear(d, seed=2)),
    "Householder": Case(lambda d, c: T.Householder(d)),
    "ActNorm": Case(lambda d, c: T.ActNorm(d), train_first=True),
    "BatchNorm": Case(lambda d, c: T.BatchNorm(d), train_first=True),
    "Planar": Case(lambda d, c: T.Planar(d, context=c, hidden=H), context=True),
    "Radial": Case(lambda d, c: T.Radial(d, context=c, hidden=H), context=True),
    "Sylvester": Case(lambda d, c: T.Sylvester(d, context=c, hidden=H), context=True),
    "Sylvester-rank1": Case(
        lambda d, c: T.Sylvester(d, rank=1, reflections=2, context=c, hidden=H), context=True
    ),
    "Coupling-additive": Case(lambda d, c: _coupling(d, c, T.AdditiveTransformer()), context=True),
    "Coupling-affine": Case(lambda d, c: _coupling(d, c, T.AffineTransformer()), context=True),
    "Coupling-spline": Case(lambda d, c: _coupling(d, c, SPLINE), context=True),
    "Autoregressive-affine": Case(
        lambda d, c: T.Autoregressive(d, T.AffineTransformer(), context=c, hidden=H),
        context=True,
        features=WIDE,
    ),
    "Autoregressive-affine-sigmoid": Case(
        lambda d, c: T.Autoregressive(
            d, T.AffineTransformer(scale="sigmoid"), context=c, hidden=H
        ),
        context=True,
    ),
    "Autoregressive-affine-softsign": Case(
        lambda d, c: T.Autoregressive(
            d, T.AffineTransformer(scale="softsign"), context=c, hidden=H
        ),
        context=True,
    ),
    "Autoregressive-spline-narrow": Case(  # hidden < D: the first layer reads a column span
        lambda d, c: T.Autoregressive(
            d, SPLINE, context=c, hidden=(2, 2), order=list(range(d))[::-1]
        ),
        context=True,
        features=(1, 2, 6),
    ),
    "Coupling-affine-sigmoid": Case(
        lambda d, c: _coupling(d, c, T.AffineTransformer(scale="sigmoid")), context=True
    ),
    "Autoregressive-affine-inverse(IAF)": Case(
        lambda d, c: T.Autoregressive(d, T.AffineTransformer(), context=c, hidden=H).inv,
        context=True,
        features=WIDE,
    ),
    "Autoregressive-spline-residual": Case(
        lambda d, c: T.Autoregressive(
            d, SPLINE, context=c, hidden=H, residual=True, order=list(range(d))[::-1]
        ),
        context=True,
        features=WIDE,
    ),
    "Autoregressive-additive": Case(
        lambda d, c: T.Autoregressive(d, T.AdditiveTransformer(), context=c, hidden=H),
        context=True,
    ),
    "Compose": Case(
        lambda d, c: nf.Compose(
            T.LULinear(d), T.Autoregressive(d, SPLINE, context=c, hidden=H), T.Tanh()
        ),
        context=True,
    ),
}

_SMALL = {"transforms": 2, "hidden": H}

MODELS: dict[str, ModelCase] = {
    "GMM": ModelCase(lambda d, c: nf.models.GMM(d, context=c, components=3, hidden=(16,))),
    **{
        f"GMM-{cov}": ModelCase(
            lambda d, c, cov=cov: nf.models.GMM(
                d, context=c, components=3, covariance=cov, hidden=(8,)
            )
        )
        for cov in ("diagonal", "spherical", "tied")
    },
    "MAF": ModelCase(lambda d, c: nf.models.MAF(d, context=c, **_SMALL)),
    "MAF-residual": ModelCase(lambda d, c: nf.models.MAF(d, context=c, residual=True, **_SMALL)),
    "IAF": ModelCase(lambda d, c: nf.models.IAF(d, context=c, **_SMALL)),
    "NSF": ModelCase(lambda d, c: nf.models.NSF(d, context=c, bins=4, **_SMALL)),
    "NSF-coupling": ModelCase(
        lambda d, c: nf.models.NSF(d, context=c, coupling=True, bins=4, **_SMALL)
    ),
    "RealNVP": ModelCase(lambda d, c: nf.models.RealNVP(d, context=c, **_SMALL)),
    "RealNVP-sigmoid": ModelCase(
        lambda d, c: nf.models.RealNVP(d, context=c, scale="sigmoid", **_SMALL)
    ),
    "MAF-exp": ModelCase(lambda d, c: nf.models.MAF(d, context=c, scale="exp", **_SMALL)),
    "RealNVP-exp": ModelCase(lambda d, c: nf.models.RealNVP(d, context=c, scale="exp", **_SMALL)),
    "IAF-exp": ModelCase(lambda d, c: nf.models.IAF(d, context=c, scale="exp", **_SMALL)),
    "MAF-bound1": ModelCase(lambda d, c: nf.models.MAF(d, context=c, max_log_scale=1.0, **_SMALL)),
    "MAF-sigmoid": ModelCase(lambda d, c: nf.models.MAF(d, context=c, scale="sigmoid", **_SMALL)),
    "RealNVP-batchnorm": ModelCase(
        lambda d, c: nf.models.RealNVP(d, context=c, batch_norm=True, **_SMALL), train_first=True
    ),
    "RealNVP-residual": ModelCase(
        lambda d, c: nf.models.RealNVP(d, context=c, residual=True, **_SMALL)
    ),
    "NSF-coupling-residual": ModelCase(
        lambda d, c: nf.models.NSF(d, context=c, bins=4, coupling=True, residual=True, **_SMALL)
    ),
    "NICE-residual": ModelCase(lambda d, c: nf.models.NICE(d, context=c, residual=True, **_SMALL)),
    "MAF-random-orders": ModelCase(
        lambda d, c: nf.models.MAF(d, context=c, orders="random", **_SMALL)
    ),
    "IAF-random-orders": ModelCase(
        lambda d, c: nf.models.IAF(d, context=c, orders="random", **_SMALL)
    ),
    "NSF-random-orders": ModelCase(
        lambda d, c: nf.models.NSF(d, context=c, bins=4, orders="random", **_SMALL)
    ),
    "MAF-batchnorm": ModelCase(
        lambda d, c: nf.models.MAF(d, context=c, batch_norm=True, **_SMALL), train_first=True
    ),
    "NSF-batchnorm": ModelCase(
        lambda d, c: nf.models.NSF(d, context=c, bins=4, batch_norm=True, **_SMALL),
        train_first=True,
    ),
    "NSF-coupling-batchnorm": ModelCase(
        lambda d, c: nf.models.NSF(d, context=c, bins=4, coupling=True, batch_norm=True, **_SMALL),
        train_first=True,
    ),
    "NICE": ModelCase(lambda d, c: nf.models.NICE(d, context=c, **_SMALL)),
    "Planar": ModelCase(lambda d, c: nf.models.Planar(d, context=c, layers=3, hidden=H)),
    "Planar-density": ModelCase(
        lambda d, c: nf.models.Planar(d, context=c, layers=3, hidden=H, direction="density")
    ),
    "Radial": ModelCase(lambda d, c: nf.models.Radial(d, context=c, layers=3, hidden=H)),
    "Sylvester": ModelCase(lambda d, c: nf.models.Sylvester(d, context=c, layers=2, hidden=H)),
}
