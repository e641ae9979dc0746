r"""Continuous-time factories: :func:`FFJORD` (Grathwohl et al. 2018, arXiv:1810.01367)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

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
    sample_solver: str | None | Sequence[str | None] = None,
    sample_steps: int | None | Sequence[int | None] = None,
    adjoint: bool = False,
    t1: float = 1.0,
    max_steps: int = 10_000,
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
    and ``.sample_steps``). Either may be a list with one entry per block; ``nf.save`` records
    the blocks' settings as they are (a list where they differ).
    ``adjoint=True`` back-propagates with the adjoint method (memory independent of the steps).
    An adaptive solve that needs more than ``max_steps`` steps raises a one-line ``ValueError``
    (a field grown stiff in training) instead of running on.
    ``time_features=K`` feeds ``K`` Fourier features of ``t`` to the field beside ``t``.

    The adaptive solver's step control spans the batch, so results depend on the batch:
    ``log_prob`` in one pass and in chunks agree to the solver's tolerance, not bitwise
    (1.3e-4 with the defaults; see :class:`~nfkit.transforms.ContinuousFlow`).

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
    solvers = _per_block("sample_solver", sample_solver, blocks)
    counts = _per_block("sample_steps", sample_steps, blocks)
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
            sample_solver=solvers[i],
            sample_steps=counts[i],
            adjoint=adjoint,
            t1=t1,
            max_steps=max_steps,
        )
        for i in range(blocks)
    ]
    base_distribution = make_base(base, features)
    return Flow(Compose(*layers), base_distribution, context=context)


def _per_block(name: str, value: Any, blocks: int) -> list[Any]:
    """One setting per block: ``value`` for all, or a list of ``blocks`` of them."""
    if not isinstance(value, list | tuple):
        return [value] * blocks
    if len(value) != blocks:
        raise ValueError(f"FFJORD: {name} has {len(value)} entries for {blocks} blocks")
    return list(value)
