"""Cases for the monotonic transformers (DSF, UMNN, SOS, Bernstein, Gaussianization), BNAF's
network, and the NAF / UMNN / SOSPF / BPF / BNAF factories (GF's case is with RBIG's)."""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase

H = (16, 16)
DSF = T.DSFTransformer(hidden=4)
SOS = T.SOSPolynomialTransformer(polynomials=2, degree=2, bound=4.0)
BERNSTEIN = T.BernsteinTransformer(degree=6, bound=4.0)
KERNELS = T.GaussianizationTransformer(components=4)


def _coupling(d: int, c: int, transformer: T.Transformer) -> nf.Transform:
    if d == 1:
        return T.Elementwise(1, transformer, context=c, hidden=H)
    return T.Coupling(d, transformer, context=c, hidden=H)


def _umnn() -> T.UMNNTransformer:
    return T.UMNNTransformer(embedding=4, hidden=(16, 16), nodes=48)


TRANSFORMS: dict[str, Case] = {
    "Autoregressive-DSF(NAF)": Case(
        lambda d, c: T.Autoregressive(d, DSF, context=c, hidden=H),
        context=True,
        features=(1, 2, 5, 9),  # from 8 features the MADE's θ is parameter-major
    ),
    "Coupling-DSF": Case(lambda d, c: _coupling(d, c, DSF), context=True),
    "Autoregressive-UMNN": Case(
        lambda d, c: T.Autoregressive(d, _umnn(), context=c, hidden=H), context=True
    ),
    "Coupling-UMNN": Case(lambda d, c: _coupling(d, c, _umnn()), context=True),
    "Autoregressive-SOS(SOSPF)": Case(
        lambda d, c: T.Autoregressive(d, SOS, context=c, hidden=H), context=True
    ),
    "Coupling-SOS": Case(lambda d, c: _coupling(d, c, SOS), context=True),
    "Autoregressive-Bernstein(BPF)": Case(
        lambda d, c: T.Autoregressive(d, BERNSTEIN, context=c, hidden=H), context=True
    ),
    "Coupling-Bernstein": Case(lambda d, c: _coupling(d, c, BERNSTEIN), context=True),
    "Elementwise-Gaussianization(GF)": Case(
        lambda d, c: T.Elementwise(d, KERNELS, context=c, hidden=H), context=True
    ),
    "Coupling-Gaussianization": Case(lambda d, c: _coupling(d, c, KERNELS), context=True),
    "Autoregressive-Gaussianization": Case(
        lambda d, c: T.Autoregressive(d, KERNELS, context=c, hidden=H), context=True
    ),
    "BlockAutoregressive(BNAF)": Case(
        lambda d, c: T.BlockAutoregressive(d, (4, 3), context=c), context=True
    ),
}

MODELS: dict[str, ModelCase] = {
    "BPF": ModelCase(lambda d, c: nf.models.BPF(d, context=c, transforms=2, hidden=H, degree=6)),
    "SOSPF": ModelCase(
        lambda d, c: nf.models.SOSPF(d, context=c, transforms=2, hidden=H, degree=2)
    ),
    "BNAF": ModelCase(lambda d, c: nf.models.BNAF(d, context=c, transforms=2, hidden=(8, 8))),
    "BNAF-random-orders": ModelCase(
        lambda d, c: nf.models.BNAF(d, context=c, transforms=3, hidden=(6,), orders="random")
    ),
    "NAF": ModelCase(
        lambda d, c: nf.models.NAF(d, context=c, transforms=2, hidden=H, components=4)
    ),
    "UMNN": ModelCase(
        lambda d, c: nf.models.UMNN(
            d, context=c, transforms=2, hidden=H, embedding=4, integrand=(16, 16)
        )
    ),
    "NAF-random-orders": ModelCase(
        lambda d, c: nf.models.NAF(
            d, context=c, transforms=2, hidden=H, components=4, orders="random"
        )
    ),
    "UMNN-random-orders": ModelCase(
        lambda d, c: nf.models.UMNN(
            d, context=c, transforms=2, hidden=H, embedding=4, integrand=(16, 16), orders="random"
        )
    ),
}
