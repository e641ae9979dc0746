r"""Continuous-time factories: :func:`FFJORD` (Grathwohl et al. 2018, arXiv:1810.01367)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from nfkit._checks import check_hidden, check_positive_int
from nfkit.core import Compose, Flow
from nfkit.models._registry import factory, make_base
from nfkit.transforms.continuous import ContinuousFlow

__all__ = ["FFJORD"]


@factory
def FFJORD(
    features: int,
    *,
    context: int = 0,
    blocks: int = 1,
    hidden: Sequence[int] = (64, 64),
    time_dependent: bool = True,
    time_features: int = 0,
    trace: Literal["exact", "hutchinson"] = "exact",
    noise: Literal["rademacher", "gaussian"] = "rademacher",
    solver: str = "dopri5",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    steps: int = 20,
    sample_solver: str | None = None,
    sample_steps: int | None = None,
    adjoint: bool = False,
    t1: float = 1.0,
    base: str = "normal",
) -> Flow:
    r"""FFJORD: ``blocks`` continuous-flow blocks (:class:`~nfkit.transforms.ContinuousFlow`).

    ``log_prob`` and ``sample`` each cost one ODE solve per block (adaptive ``solver`` with
    ``atol``/``rtol``); the log-density error and the sampling error follow those tolerances.
    With ``trace="hutchinson"`` training uses the stochastic trace (one noise draw per solve,
    ``noise``); evaluation (``flow.eval()``) always uses the exact trace, O(D) backward passes.
    A fixed-step ``solver`` (``"rk4"``, ``"midpoint"``, ``"euler"``) takes ``steps`` equal steps
    instead. Its ``log_prob`` is only as exact as the steps: the trace summed along a discrete
    path is not the log-det of the discrete map, so the density integrates to 1 up to the
    solver's error (a flow-matching field on moons: rk4 × 4 1.0000, midpoint × 4 0.996,
    euler × 8 1.036, euler × 4 1.077). So give sampling its own: ``sample_solver="rk4",
    sample_steps=4`` samples a nearly straight flow-matching field fast while ``log_prob``
    keeps the adaptive ``solver`` (on a trained flow, set ``flow.transform[0].sample_solver``
    and ``.sample_steps``).
    ``adjoint=True`` back-propagates with the adjoint method (memory independent of the steps).
    ``time_features=K`` feeds ``K`` Fourier features of ``t`` to the field beside ``t``.

    Trained by maximum likelihood (:func:`nfkit.fit`, an ODE solve with the trace per step) or,
    with ``blocks=1``, by flow matching (``nf.fit(..., objective="flow_matching")``, one
    network pass per step; :mod:`nfkit.flow_matching`).

    References:
        Grathwohl et al. (2018), arXiv:1810.01367; Chen et al. (2018), arXiv:1806.07366.
    """
    features = check_positive_int("FFJORD", "features", features)
    context = check_positive_int("FFJORD", "context", context, minimum=0)
    blocks = check_positive_int("FFJORD", "blocks", blocks)
    hidden = check_hidden("FFJORD", hidden)
    layers = [
        ContinuousFlow(
            features,
            context=context,
            hidden=hidden,
            time_dependent=time_dependent,
            time_features=time_features,
            trace=trace,
            noise=noise,
            solver=solver,
            atol=atol,
            rtol=rtol,
            steps=steps,
            sample_solver=sample_solver,
            sample_steps=sample_steps,
            adjoint=adjoint,
            t1=t1,
        )
        for _ in range(blocks)
    ]
    return Flow(Compose(*layers), make_base(base, features), context=context)
