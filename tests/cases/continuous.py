"""Cases for the continuous flows (FFJORD): exact trace, tight solver tolerances, tiny networks.

The generic test asks for a round trip within 1e-8 and a log-det within 1e-6 of the autograd
Jacobian in float64, so the cases use dopri5 with atol = rtol = 1e-10 (the error of both
directions follows the solver tolerance); the dynamics are bounded (tanh MLP), so the tails case
stays finite.
"""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T

from . import Case, ModelCase

TIGHT = {"atol": 1e-10, "rtol": 1e-10}
H = (8,)

TRANSFORMS: dict[str, Case] = {
    "ContinuousFlow": Case(
        lambda d, c: T.ContinuousFlow(d, context=c, hidden=H, **TIGHT), context=True
    ),
    "ContinuousFlow-autonomous": Case(
        lambda d, c: T.ContinuousFlow(d, context=c, hidden=H, time_dependent=False, **TIGHT),
        features=(2,),
    ),
    # one Fourier frequency: the same code path as K of them, and 3x fewer solver steps (each
    # frequency makes the perturbed field faster in t, and dopri5 at 1e-10 follows it)
    "ContinuousFlow-time-features": Case(
        lambda d, c: T.ContinuousFlow(d, context=c, hidden=H, time_features=1, **TIGHT),
        context=True,
        features=(2,),
    ),
}

MODELS: dict[str, ModelCase] = {
    "FFJORD": ModelCase(lambda d, c: nf.models.FFJORD(d, context=c, blocks=1, hidden=H, **TIGHT)),
}
