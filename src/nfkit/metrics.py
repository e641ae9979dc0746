r"""Evaluation metrics: :func:`compare` (models by held-out log-likelihood, with paired standard
errors), :func:`bits_per_dim` (flows on quantized data) and :func:`coverage` (the calibration of
a conditional flow used as a posterior)."""

from __future__ import annotations

import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from nfkit._checks import (
    check_event,
    check_number,
    check_positive_int,
    check_tensor,
    resolve_seed,
    shown,
)
from nfkit.core import context_tensor, dtype_device
from nfkit.transforms.image import dequantize as _dequantize

__all__ = [
    "bits_per_dim",
    "compare",
    "compare_scores",
    "coverage",
    "Coverage",
    "pareto_k",
    "log_normalizer_se",
    "importance_sampling",
    "ImportanceSampling",
]


def compare_scores(scores: Mapping[str, Any]) -> Any:
    r"""Rank models by their per-row log-likelihoods on the same rows, with standard errors.

    For model ``m`` with scores ``s_m,i`` (``i = 1 … n``, the same rows for every model):
    ``log_likelihood`` is the mean ``s̄_m``, ``sem`` its standard error ``sd(s_m) / √n``;
    ``difference`` is ``s̄_best - s̄_m`` (``≥ 0``; 0 for the best) and ``difference_sem`` the
    standard error of the paired differences ``sd(s_best - s_m) / √n``, which is far smaller than
    either ``sem`` when the models agree on which rows are easy: a difference of several
    ``difference_sem`` is one the data supports.

    Args:
        scores: ``{name: per-row log-likelihoods}`` (Tensors or arrays of one length ``n ≥ 2``,
            finite; ``-inf`` rows are refused: a model that gives a held-out row zero density
            has lost the comparison outright and is better reported as such).

    Returns:
        A pandas DataFrame, best model first, columns ``model``, ``rows``, ``log_likelihood``,
        ``sem``, ``difference``, ``difference_sem`` (nats per row).
    """
    import pandas as pd

    where = "nf.metrics.compare_scores"
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"{where}: scores must be a non-empty mapping name -> per-row scores")
    table = {}
    for name, values in scores.items():
        if isinstance(values, Tensor):
            values = values.detach().cpu().double().numpy()
        array = np.asarray(values)
        if array.dtype.kind not in "iuf":  # text, objects, complex numbers
            raise ValueError(
                f"{where}: scores of {shown(name)} must be real numbers, got {array.dtype} values"
            )
        array = array.astype(np.float64)
        if array.ndim != 1 or len(array) < 2:
            raise ValueError(
                f"{where}: scores of {shown(name)} must be one value per row (at least 2), "
                f"got shape {array.shape}"
            )
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise ValueError(f"{where}: scores of {shown(name)} have {bad} non-finite value(s)")
        table[str(name)] = array
    lengths = {len(a) for a in table.values()}
    if len(lengths) != 1:
        raise ValueError(
            f"{where}: every model must score the same rows, got lengths "
            + ", ".join(f"{k}: {len(a)}" for k, a in table.items())
        )
    n = lengths.pop()
    means = {k: float(a.mean()) for k, a in table.items()}
    best = max(means, key=means.__getitem__)
    rows = []
    for name, array in sorted(table.items(), key=lambda kv: -means[kv[0]]):
        paired = table[best] - array
        rows.append(
            {
                "model": name,
                "rows": n,
                "log_likelihood": means[name],
                "sem": float(array.std(ddof=1) / math.sqrt(n)),
                "difference": float(paired.mean()),
                "difference_sem": float(paired.std(ddof=1) / math.sqrt(n)),
            }
        )
    return pd.DataFrame(rows)


def _discrete_columns(flow: nn.Module) -> list[int]:
    from nfkit.models.dequantized import DequantizedFlow

    return list(flow.discrete_columns) if isinstance(flow, DequantizedFlow) else []


def compare(
    flows: Mapping[str, nn.Module],
    x: Any,
    context: Any = None,
    *,
    chunk_size: int | None = 2**16,
) -> Any:
    r"""Score held-out rows ``x`` (and ``context``) under every flow and rank them
    (:func:`compare_scores`): mean log-likelihood, its standard error, and each model's gap to the
    best with the paired standard error.

    The flows must model the same thing for their likelihoods to compare: the same event shape,
    all conditional or none, and the same discrete columns (a
    :class:`~nfkit.models.DequantizedFlow`'s log-probabilities are not densities); otherwise a
    one-line ``ValueError`` says which. Each flow is scored in eval mode without autograd (its
    mode is restored), on its own dtype and device.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> x = nf.datasets.two_moons(512, seed=0)
        >>> flows = {"maf": nf.models.MAF(2, transforms=1, hidden=(8,)),
        ...          "nsf": nf.models.NSF(2, transforms=1, hidden=(8,))}
        >>> nf.metrics.compare(flows, x).columns.tolist()
        ['model', 'rows', 'log_likelihood', 'sem', 'difference', 'difference_sem']
    """
    from nfkit.core import Flow
    from nfkit.tables import as_tensor

    where = "nf.metrics.compare"
    if not isinstance(flows, Mapping) or not flows:
        raise ValueError(f"{where}: flows must be a non-empty mapping name -> nf.Flow")
    reference = None
    for name, flow in flows.items():
        if not isinstance(flow, Flow):
            raise TypeError(f"{where}: {shown(name)} is not an nf.Flow ({type(flow).__name__})")
        kind = (tuple(flow.event_shape), flow.context_features, _discrete_columns(flow))
        if reference is None:
            reference = (name, kind)
        elif kind != reference[1]:
            what = ["event shape", "context size", "discrete columns"]
            differs = next(w for w, a, b in zip(what, kind, reference[1]) if a != b)
            raise ValueError(
                f"{where}: {shown(reference[0])} and {shown(name)} differ in their {differs} "
                f"({reference[1][what.index(differs)]} against {kind[what.index(differs)]}); "
                "their likelihoods do not compare"
            )
    scores = {}
    for name, flow in flows.items():
        dtype, device = dtype_device(flow)
        xs = as_tensor(x, where, "x", dtype=dtype, device=device)
        cs = context_tensor(flow, context, where, dtype=dtype, device=device)
        was_training = flow.training
        flow.eval()
        try:
            with torch.no_grad():
                scores[name] = flow.log_prob(xs, cs, chunk_size=chunk_size)
        finally:
            flow.train(was_training)
    return compare_scores(scores)


def bits_per_dim(
    flow: nn.Module,
    x: Tensor,
    *,
    levels: int,
    scale: float = 1.0,
    context: Tensor | None = None,
    dequantize: bool = True,
    samples: int = 1,
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    r"""Bits per dimension of quantized data ``x`` under a flow on dequantized data.

    The data take the ``K = levels`` values ``0..K−1`` per coordinate. The flow models
    ``y = scale · (x + u)`` with ``u ~ U[0, 1)^D`` (uniform dequantization; ``scale = 1`` for a
    flow on ``[0, K]`` such as one starting with
    :class:`~nfkit.transforms.LogitPreprocess`, ``scale = 1/K`` for a flow on ``[0, 1]``). The
    density of ``x + u`` is ``p(y) · scale^D``, so

    ``bpd(x) = −E_u[log p_flow(scale · (x + u))] / (D ln 2) − log₂(scale)``

    averaged over ``samples`` draws of ``u``. It is an upper bound on the discrete code length
    ``−log₂ P(x) / D`` (Theis et al. 2016, arXiv:1511.01844); a model uniform on the cube gives
    exactly ``log₂ K``. Dequantized values that round onto an end of ``[0, scale · K]`` (in
    float32, ``255 + u`` rounds to 256 about once in 1.3e5 draws) are moved to the nearest
    value inside, so a flow on the open ``(0, 1)`` (a :class:`~nfkit.transforms.Logit` first)
    can be scored.

    The flow runs in its current mode: call ``flow.eval()`` first for a test score (in training
    mode an :class:`~nfkit.transforms.ActNorm` not yet initialized takes its statistics from
    ``x``, a BatchNorm updates its running ones); in training mode it is a differentiable loss.

    Args:
        flow: An :class:`~nfkit.Flow` (anything with ``log_prob`` and ``event_shape``).
        x: Integer-valued data ``(*batch, *event)`` in ``0..K−1`` (any dtype); with
            ``dequantize=False``, already dequantized values ``x + u`` in ``[0, K]``.
        levels: ``K``, the number of quantization levels.
        scale: The factor the flow's inputs were scaled by (see above).
        context: Optional context passed to ``log_prob``.
        dequantize: Add ``u ~ U[0, 1)`` here (set False if ``x`` is already dequantized).
        samples: Number of dequantization draws averaged (ignored when ``dequantize=False``).
        generator: Random generator for ``u`` (reproducible evaluation).
        reduction: ``"mean"`` over the batch (a scalar) or ``"none"`` (shape ``(*batch,)``).

    Returns:
        A tensor of bits per dimension; differentiable with respect to the flow's parameters.
    """
    where = "nf.metrics.bits_per_dim"
    levels = check_positive_int(where, "levels", levels, minimum=2)
    samples = check_positive_int(where, "samples", samples)
    scale = check_number(where, "scale", scale, 0.0)
    if reduction not in ("mean", "none"):
        raise ValueError(f"{where}: reduction must be 'mean' or 'none', got {shown(reduction)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    dtype, device = dtype_device(flow)
    x = x.to(dtype=dtype, device=device)
    check_event(where, "x", x, flow.event_shape)  # NaN named here, not as a non-integer pixel
    if reduction == "mean" and x.numel() == 0:
        raise ValueError(f"{where}: x has no rows to average over")
    high = levels - 1 if dequantize else levels
    if bool(((x < 0) | (x > high)).any()):
        raise ValueError(
            f"{where}: x must lie in [0, {high}] for levels={levels}, "
            f"got values in [{x.min().item():g}, {x.max().item():g}]"
        )
    if dequantize and not bool((x == x.round()).all()):
        raise ValueError(f"{where}: x must be integer-valued pixels (or pass dequantize=False)")
    d = math.prod(flow.event_shape)
    draws = samples if dequantize else 1
    # The dequantized values, scaled, kept inside the open (0, scale · K): in float32, 255 + u
    # rounds to 256 about once in 1.3e5 draws and u = 0 once in 2^24, and a flow on (0, 1)
    # (a Logit first) refuses both ends. The nearest inner values change log p by nothing
    # measurable on average.
    top = torch.nextafter(torch.tensor(scale * levels, dtype=dtype), torch.tensor(0, dtype=dtype))
    inside = (torch.finfo(dtype).tiny, top.item())  # (a CPU scalar: no device sync)
    total = 0.0
    for _ in range(draws):  # a handful of dequantization draws, not a loop over the batch
        if dequantize:
            y = (scale * _dequantize(x, generator=generator)).clamp_(*inside)
        else:
            y = scale * x
        total = total + flow.log_prob(y, context)
    bpd = -(total / draws) / (d * math.log(2)) - math.log2(scale)
    return bpd.mean() if reduction == "mean" else bpd


LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (0.99,)
"""The credibility levels :func:`coverage` reports by default: 0.05, 0.10, …, 0.95 and 0.99."""


@dataclass(repr=False)
class Coverage:
    r"""What :func:`coverage` measured over ``B`` pairs ``(θ_i, x_i)`` with ``S`` draws each.

    Attributes:
        levels: Credibility levels ``α`` ``(K,)``.
        coverage: The fraction of pairs whose ``θ_i`` lies in the ``α`` highest-density region
            of ``q(θ | x_i)``, ``(K,)``. A calibrated posterior gives ``α`` (within
            ``band``); below ``α`` it is overconfident (too narrow), above it conservative.
        band: Half-width of the simultaneous 97.5% band of the coverage curve (Dvoretzky–
            Kiefer–Wolfowitz, ``c = √(log(2/0.025) / 2)``; the other 2.5% goes to the marginal
            ranks, so an exact model passes both with probability about 0.95):
            ``c / √B + 1/S`` for a posterior
            (each pair ranked among its own ``S`` draws; ``1/S`` for the ranks' rounding),
            ``c √(1/B + 1/S)`` for an unconditional flow (one set of ``S`` draws ranks every
            row, so its own sampling error is shared by all of them, as in a two-sample test).
        marginal_band: The same band for each feature's marginal ranks, with ``c`` for ``D``
            tests at once (Bonferroni: ``log(2D/0.025)``).
        hpd_rank: Per pair, the fraction of the draws denser than ``θ_i`` (a uniform random
            share of the draws exactly as dense counts as denser, a randomized rank):
            the smallest level whose region holds ``θ_i``, ``(B,)``; uniform on ``[0, 1]`` when
            calibrated.
        names: The features' names for :attr:`verdict`: a DataFrame ``theta``'s columns, else
            a table model's columns (None: "feature j").
        marginal_rank: Per pair and feature, how many of the ``S`` draws fall below ``θ_ij``
            (draws equal to it, as in a discrete column, counted with a random tie-break),
            ``(B, D)``: simulation-based calibration's ranks, uniform on ``0 … S`` when
            calibrated.
        samples: ``S``.
    """

    levels: np.ndarray
    coverage: np.ndarray
    band: float
    hpd_rank: np.ndarray
    marginal_rank: np.ndarray
    samples: int
    marginal_band: float = math.inf
    names: list[str] | None = None  # the features' names, for the verdict

    @property
    def max_deviation(self) -> float:
        """``max_α |coverage(α) - α|``."""
        return float(np.abs(self.coverage - self.levels).max())

    @property
    def marginal_deviation(self) -> np.ndarray:
        """Per feature, ``max_α |P(rank/S ≤ α) - α|`` over the levels: how far its marginal
        ranks are from uniform, ``(D,)``."""
        u = self.marginal_rank / self.samples  # (B, D) in [0, 1]
        found = (u[None, :, :] <= self.levels[:, None, None]).mean(1)  # (K, D)
        return np.abs(found - self.levels[:, None]).max(0)

    @property
    def calibrated(self) -> bool:
        """Every level's coverage within ``band``, and every feature's marginal ranks within
        ``marginal_band`` of uniform (an exact model fails this in about 5% of evaluations).
        A posterior shifted off the truth can keep its highest-density coverage and still fail
        the marginal ranks. Neither test sees a posterior equal to the prior (it is calibrated,
        and uninformative): compare its spread with the prior's."""
        return self.max_deviation <= self.band and bool(
            (self.marginal_deviation <= self.marginal_band).all()
        )

    @property
    def verdict(self) -> str:
        """``calibrated``; else ``overconfident`` (coverage below the levels on average: the
        regions are too narrow) or ``conservative`` (too wide); else, with the coverage in its
        band, ``biased`` (a feature's draws lie too high or too low), with that reading."""
        if self.calibrated:
            return "calibrated"
        if self.max_deviation > self.band:
            if float((self.coverage - self.levels).mean()) < 0:
                return "overconfident (regions too narrow)"
            return "conservative (regions too wide)"
        j = int((self.marginal_deviation / self.marginal_band).argmax())
        low = float(self.marginal_rank[:, j].mean()) < self.samples / 2
        where = "high" if low else "low"
        name = f"feature {j}" if self.names is None else repr(self.names[j])
        return f"biased (the draws of {name} lie too {where})"

    def __repr__(self) -> str:
        worst = int(np.abs(self.coverage - self.levels).argmax())
        return (
            f"Coverage(pairs={len(self.hpd_rank)}, samples={self.samples}, "
            f"max_deviation={self.max_deviation:.3f} at level {self.levels[worst]:g} "
            f"(coverage {self.coverage[worst]:.3f}), calibrated={self.calibrated})"
        )

    def plot(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
        """The coverage against the level (:func:`nfkit.plot.coverage`)."""
        from nfkit.plot import coverage as plot_coverage

        return plot_coverage(self, path, **kwargs)


def _tie_broken(below: Tensor, ties: Tensor) -> Tensor:
    """A rank among draws with ties broken at random: uniform on ``below … below + ties`` (a
    discrete or category column has many draws equal to the truth; counting only those below
    made an exact model's ranks non-uniform, and its verdict "biased")."""
    return below + (torch.rand(ties.shape, device=ties.device) * (ties + 1)).floor().long()


def _denser_fraction(above: Tensor, ties: Tensor, samples: int) -> Tensor:
    """The fraction of ``samples`` draws denser than the true value, a uniform random share of
    the draws exactly as dense counting as denser: the randomized rank, uniform on ``[0, 1]``
    for a calibrated model also when densities tie (a dequantized flow's draws of the true
    integer all have its density; counting ties half bunched an exact model's ranks into steps
    and its verdict flipped between overconfident and conservative with the seed)."""
    share = torch.rand(ties.shape, dtype=torch.float64, device=ties.device)
    return (above + share * ties) / samples


def coverage(
    flow: nn.Module,
    theta: Any,
    context: Any = None,
    *,
    samples: int = 1000,
    levels: Sequence[float] = LEVELS,
    seed: int | None = None,
) -> Coverage:
    r"""Expected coverage and simulation-based calibration of a posterior ``q(θ | x)``, or of
    an unconditional density on held-out rows.

    For held-out pairs ``(θ_i, x_i)`` drawn from the prior and the simulator (not the training
    pairs), ``S = samples`` draws ``θ ~ q(θ | x_i)`` place ``θ_i`` among them twice: by density
    (the rank of ``q(θ_i | x_i)`` among the draws' densities gives the smallest highest-density
    region holding ``θ_i``; Hermans et al. 2022, arXiv:2110.06581) and per feature (the rank of
    ``θ_ij`` among the draws' ``j``-th features; Talts et al. 2018, arXiv:1804.06788). Both
    ranks are uniform when ``q`` is the true posterior, so ``coverage(α) = α`` at every level.

    An unconditional flow ``p`` (``context=None``) is checked the same way on held-out rows
    ``θ_i`` of the data: coverage below the level means the model puts too much of its mass on
    too small a region (too sharp), above it too little (too flat). One set of ``S`` draws
    serves every row there (ranks by sorting), so ``S`` can be large.

    Args:
        flow: A :class:`~nfkit.Flow` over vectors ``(D,)``; scored in eval mode without autograd
            (its mode is restored), in its own dtype and device.
        theta: The parameters ``(B, D)`` (Tensor, array or DataFrame); for an unconditional
            flow, held-out rows.
        context: Their simulated data ``(B, C)``; None for an unconditional flow.
        samples: ``S``, draws per pair.
        levels: Credibility levels to report, in ``(0, 1)``.
        seed: Seed of the draws (None: torch's global RNG, left as it is after).

    Costs ``B · S`` samples and densities, done ``2^16`` at a time.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> flow = nf.models.MAF(1, context=1, transforms=1, hidden=(8,))   # untrained: q = N(0, 1)
        >>> x = torch.randn(200, 1)
        >>> result = nf.metrics.coverage(flow, torch.randn(200, 1), x, samples=200, seed=0)
        >>> result.coverage.shape, result.marginal_rank.shape
        ((20,), (200, 1))
    """
    from nfkit.core import Flow
    from nfkit.tables import as_tensor

    where = "nf.metrics.coverage"
    if not isinstance(flow, Flow):
        raise TypeError(f"{where}: flow must be an nf.Flow, got {type(flow).__name__}")
    if len(flow.event_shape) != 1:
        raise ValueError(
            f"{where}: the flow must be over vectors, got event shape {tuple(flow.event_shape)}"
        )
    if (context is None) != (flow.context_features == 0):
        need = "needs the context of each row" if context is None else "takes no context"
        raise ValueError(
            f"{where}: a flow of context size {flow.context_features} {need} (theta given x: "
            "a conditional flow; held-out rows alone: an unconditional one)"
        )
    samples = check_positive_int(where, "samples", samples)
    seed = None if seed is None else resolve_seed(where, seed)
    grid = np.asarray(levels, dtype=np.float64)
    if grid.ndim != 1 or not len(grid) or not bool(((grid > 0) & (grid < 1)).all()):
        raise ValueError(f"{where}: levels must be numbers in (0, 1), got {shown(levels)}")
    dtype, device = dtype_device(flow)
    th = as_tensor(theta, where, "theta", dtype=dtype, device=device)
    cx = context_tensor(flow, context, where, dtype=dtype, device=device)
    flow._check_x(where, th, cx, names=("theta", "context"))
    rows = th.shape[0] if cx is None else cx.shape[0]
    if th.dim() != 2 or (cx is not None and cx.dim() != 2) or th.shape[0] != rows:
        got = tuple(th.shape) if cx is None else f"{tuple(th.shape)} and {tuple(cx.shape)}"
        raise ValueError(
            f"{where}: theta (and context) must be tables with the same number of rows, got "
            f"shapes {got}"
        )
    if rows == 0:
        raise ValueError(f"{where}: theta has no rows")
    block = max(1, 2**16 // samples)
    devices = [device] if device is not None and device.type == "cuda" else []
    was_training = flow.training
    flow.eval()
    hpd, marginal = [], []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            if cx is None:  # one set of draws for every row: counts by sorting
                draws = flow.sample(samples)  # (S, D)
                log_q = flow.log_prob(draws).sort().values
                log_true = flow.log_prob(th)
                below = torch.searchsorted(log_q, log_true)
                above = samples - torch.searchsorted(log_q, log_true, right=True)
                hpd.append(_denser_fraction(above, samples - above - below, samples))
                columns = draws.T.contiguous().sort().values  # (D, S)
                below = torch.searchsorted(columns, th.T.contiguous()).T
                ties = torch.searchsorted(columns, th.T.contiguous(), right=True).T - below
                marginal.append(_tie_broken(below, ties))
            else:
                for i in range(0, th.shape[0], block):  # blocks of pairs, each fully batched
                    t, c = th[i : i + block], cx[i : i + block]
                    draws = flow.sample(samples, c)  # (S, b, D)
                    log_q = flow.log_prob(draws, c)  # (S, b)
                    log_true = flow.log_prob(t, c)  # (b,)
                    above, ties = (log_q > log_true).sum(0), (log_q == log_true).sum(0)
                    hpd.append(_denser_fraction(above, ties, samples))
                    marginal.append(_tie_broken((draws < t).sum(0), (draws == t).sum(0)))
    finally:
        flow.train(was_training)
    hpd_rank = torch.cat(hpd).cpu().numpy()
    found = (hpd_rank[None, :] <= grid[:, None]).mean(1)
    pairs, features = len(hpd_rank), th.shape[1]

    def band(tests: int) -> float:
        c = math.sqrt(math.log(2 * tests / 0.05) / 2)
        if cx is None:  # the rows share one set of draws: a two-sample band
            return c * math.sqrt(1 / pairs + 1 / samples)
        return c / math.sqrt(pairs) + 1 / samples

    return Coverage(
        levels=grid,
        coverage=found,
        band=band(2),  # 5% in all: half to the coverage curve, half to the D marginals
        hpd_rank=hpd_rank,
        marginal_rank=torch.cat(marginal).cpu().numpy(),
        samples=samples,
        marginal_band=band(2 * features),
        names=_feature_names(theta, features) or flow._column_labels(),
    )


def _feature_names(table: Any, width: int) -> list[str] | None:
    """A DataFrame's column names (for messages and verdicts), or None for other tables."""
    columns = getattr(table, "columns", None)
    if columns is None or len(columns) != width:
        return None
    return [str(c) for c in columns]


def pareto_k(log_weights: Tensor) -> float:
    r"""Pareto-smoothed importance sampling's diagnostic ``k̂`` of importance weights.

    ``w_i = exp(log_weights_i)`` (``p̃(x_i) / q(x_i)`` for draws ``x_i ~ q``; any scale). The
    ``M = ⌈min(S/5, 3√S)⌉`` largest of the ``S`` weights, less the next one, are fitted by a
    generalized Pareto distribution (the Zhang & Stephens 2009 posterior-mean estimator, with
    the weakly informative prior ``k̂ ← (M k̂ + 5) / (M + 10)``); ``k̂`` is its shape. The
    weights have ``1/k̂`` finite moments: ``k̂ < 0.5``, a finite variance (the ESS is
    trustworthy); ``k̂ < 0.7``, importance-sampling estimates (``log Ẑ``, expectations under
    ``p``) are usable with a few thousand draws; above, ``q`` misses mass of ``p`` and the
    estimates cannot be trusted however many draws are taken (Yao, Vehtari, Simpson & Gelman
    2018, arXiv:1802.02538; Vehtari et al. 2024, arXiv:1507.02646).

    Args:
        log_weights: ``(S,)`` log importance weights, ``S ≥ 25``; ``-inf`` (zero weight) is
            allowed, NaN is not.

    Returns:
        ``k̂``; ``-inf`` when the largest weights are all equal (no tail: ``q ∝ p̃`` there;
        log-weights within ``1e-6`` of each other, relative to their size, count as equal:
        float32 rounding of an exact fit), ``inf`` when fewer than 5 distinct values exceed
        the threshold (a handful of draws carry all the weight) — unless the largest weight
        is within 1% of the threshold: then the few values are rounding levels of equal
        weights (an exact float32 fit in many dimensions, ``log w`` rounded on the scale of
        ``log p̃`` and ``log q``), and ``-inf`` again.
    """
    where = "nf.metrics.pareto_k"
    lw = check_tensor(where, "log_weights", log_weights).detach().double()
    if lw.dim() != 1:
        raise ValueError(f"{where}: log_weights must have shape (S,), got {tuple(lw.shape)}")
    if lw.numel() < 25:
        raise ValueError(f"{where}: needs at least 25 log-weights, got {lw.numel()}")
    if bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()):
        raise ValueError(f"{where}: log_weights contain NaN or +inf")
    s = lw.numel()
    m = math.ceil(min(s / 5, 3 * math.sqrt(s)))
    top = torch.topk(lw, m + 1).values.flip(0)  # ascending: the threshold, then the tail
    if not math.isfinite(float(top[-1])):
        return math.inf  # (nearly) every weight is zero
    # log-weights closer than float32 rounding of their size are ties (an exact fit's weights
    # are equal up to that rounding, which would otherwise read as a tail of a few draws)
    if float(top[-1] - top[0]) <= 1e-6 * max(1.0, abs(float(top[-1]))):
        return -math.inf  # the largest weights are all equal: no tail at all
    scaled = torch.exp(top - top[-1])  # the largest weight is 1
    x = scaled[1:] - scaled[0]  # exceedances over the threshold, ascending
    x = x[x > 0]
    if x.numel() < 5 or bool(x[0] == x[-1]):  # too few distinct exceedances to fit a tail:
        # rounding levels of equal weights (all within 1%: no tail), else a handful of draws
        # carrying everything
        return -math.inf if float(top[-1] - top[0]) < math.log1p(0.01) else math.inf
    return _gpd_shape(x)


def _gpd_shape(x: Tensor) -> float:
    """Zhang & Stephens (2009) estimate of a generalized Pareto shape from ascending positive
    exceedances ``x``, shrunk towards 0.5 by a weakly informative prior (Vehtari et al.)."""
    n = x.numel()
    grid = 30 + int(math.sqrt(n))
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    quartile = x[int(n / 4 + 0.5) - 1]
    theta = 1 / x[-1] + (1 - torch.sqrt(grid / (j - 0.5))) / (3 * quartile)  # (grid,)
    k = torch.log1p(-theta[:, None] * x).mean(1)  # the shape at each θ
    profile = n * (torch.log(-theta / k) - k - 1)  # profile log-likelihood of θ
    weights = torch.softmax(profile, 0)
    theta_hat = (theta * weights).sum()
    shape = float(torch.log1p(-theta_hat * x).mean())
    return (n * shape + 10 * 0.5) / (n + 10)


# --------------------------------------------------------------------------- importance sampling


def _flat(
    log_density: Callable[..., Tensor], x: Tensor, context: Tensor | None, log_p: Tensor
) -> bool:
    """Whether ``log p̃`` is the same at every draw (of each context); with one draw, also at
    two other points (``x/2`` and one nearby), where it may also be non-finite (outside a box it
    is uniform on), since one value alone is always "the same". An integer ``log p̃`` is not
    flat: it cannot carry a gradient."""
    if not log_p.is_floating_point():
        return False
    if log_p.shape[0] > 1:
        return bool((log_p == log_p[:1]).all())
    with torch.no_grad():
        for other in (0.5 * x.detach(), x.detach() + 1e-3 * (1 + x.detach().abs())):
            again = log_density(other) if context is None else log_density(other, context)
            if not bool(((again == log_p) | ~torch.isfinite(again)).all()):
                return False
    return True


def target_log_density(
    where: str, log_density: Callable[..., Tensor], x: Tensor, context: Tensor | None, like: Tensor
) -> Tensor:
    """``log p̃(x)`` (given ``context``), checked to be one value per sample: the shape of
    ``like`` (the flow's ``log q``), and differentiable in ``x`` when ``x`` carries a gradient
    (a reverse-KL step), unless it is the same for every draw (a flat target: its gradient is
    0). Shape and graph checks only: no host sync but for a value without a graph."""
    if context is not None:
        try:
            inspect.signature(log_density).bind(x, context)
        except TypeError:
            raise TypeError(
                f"{where}: log_density is called as log_density(x, context) when a context is "
                "given, but it does not take two arguments"
            ) from None
        except ValueError:  # no signature to read (some builtins): let the call decide
            pass
    log_p = log_density(x) if context is None else log_density(x, context)
    if not isinstance(log_p, Tensor) or log_p.shape != like.shape:
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(
            f"{where}: log_density must return one value per sample, a tensor of shape "
            f"{tuple(like.shape)} for samples of shape {tuple(x.shape)}; got {got}"
        )
    if (
        x.requires_grad
        and torch.is_grad_enabled()
        and not log_p.requires_grad
        and not _flat(log_density, x, context, log_p)  # a flat target: its gradient is 0
    ):
        raise ValueError(
            f"{where}: log_density returned a value without a gradient in x (computed through "
            "NumPy, .detach(), .item(), an integer dtype or rounding?); the reverse KL needs "
            "∇x log p̃: write it with torch operations on x"
        )
    return log_p


def weighted_draws(
    where: str,
    flow: nn.Module,
    log_density: Callable[..., Tensor],
    context: Tensor | None,
    n: int,
    chunk: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``n`` draws of ``flow`` in chunks, each with its float64 log importance weights
    ``log p̃(x) - log q(x)``: ``(x (m, *cb, *event), log w (m, *cb))`` per chunk."""
    for i in range(0, n, chunk):
        x, log_q = flow.sample_and_log_prob(min(chunk, n - i), context)  # type: ignore[operator]
        log_p = target_log_density(where, log_density, x, context, log_q)
        yield x, (log_p - log_q).double()


def weight_summary(log_weights: Tensor) -> tuple[float, float, float]:
    """``(ESS / S, log Ẑ, k̂)`` of ``S`` log importance weights (NaN counts as weight 0):
    ``(Σw)² / (S Σw²)``, ``log mean w`` and :func:`pareto_k` (NaN below 25 weights)."""
    lw = torch.where(torch.isnan(log_weights), -math.inf, log_weights.double().flatten())
    total = torch.logsumexp(lw, 0)
    log_z = total - math.log(lw.numel())
    ess = torch.exp(2 * total - torch.logsumexp(2 * lw, 0)) / lw.numel()
    k = pareto_k(lw) if lw.numel() >= 25 else math.nan
    return float(ess), float(log_z), k


def data_side_spline_bound(flow: nn.Module) -> float | None:
    """The interval ``[-B, B]`` of the rational-quadratic spline that meets the data first in
    ``flow`` (the first layer that is not a permutation; an ``Inverse`` looked through), or
    None when that layer is no such spline. Outside it the spline is the identity, so the
    flow cannot shape mass there."""
    from nfkit.core import Compose, Inverse
    from nfkit.transforms.linear import Permutation, Reverse
    from nfkit.transforms.transformers import RQSplineTransformer

    transform = getattr(flow, "transform", None)
    layers = list(transform) if isinstance(transform, Compose) else [transform]
    for layer in layers:
        while isinstance(layer, Inverse):
            layer = layer.transform
        if isinstance(layer, (Permutation, Reverse)):
            continue
        transformer = getattr(layer, "transformer", None)
        return float(transformer.bound) if isinstance(transformer, RQSplineTransformer) else None
    return None


def warn_outside_spline_interval(
    where: str,
    flow: nn.Module,
    x: Tensor,
    what: str,
    advice: str,
    *,
    share: float = 0.01,
    stacklevel: int = 3,
) -> None:
    """Warn when more than ``share`` of the rows of ``x`` ``(n, *event)`` have a value at or
    beyond 90% of the data-side spline's bound (:func:`data_side_spline_bound`): training data
    the spline cannot shape, or draws of ``q`` piled at the bound (variational fits of a target
    with mass beyond it). One reduction; nothing for other flows."""
    bound = data_side_spline_bound(flow)
    if bound is None or x.numel() == 0:
        return
    rows = x.detach().reshape(x.shape[0], -1).abs().ge(0.9 * bound).any(1)
    fraction = float(rows.double().mean())
    if fraction > share:
        warnings.warn(
            f"{where}: {100 * fraction:.1f}% of {what} lie at or beyond ±{0.9 * bound:g} (90% of "
            f"the data-side spline's interval [-{bound:g}, {bound:g}], outside which it is the "
            f"identity); {advice}",
            UserWarning,
            stacklevel=stacklevel,  # the caller of the public function
        )


VI_SPLINE_ADVICE = (
    "if the target has mass beyond it, widen it (bound=) or put nf.transforms.Affine(scale=...) "
    "in front of the flow"
)


def check_log_weights(where: str, log_weights: Tensor) -> None:
    """Refuse log importance weights ``(S, *contexts)`` with a NaN or ``+inf`` (a NaN
    ``log p̃`` would count as weight 0 and bias every estimate silently) or none finite in
    some context (``q`` puts no mass where the target has any); ``-inf`` is a draw outside the
    target's support."""
    draws = log_weights.numel()  # (S, *contexts): a draw per sample and context
    for bad, what in ((torch.isnan(log_weights), "NaN"), (log_weights == math.inf, "+inf")):
        count = int(bad.sum())
        if count:
            raise ValueError(
                f"{where}: log_density is {what} at {count} of {draws} draws; return a finite "
                "log-density, or -inf outside the target's support"
            )
    if not bool(torch.isfinite(log_weights).any(0).all()):
        raise ValueError(
            f"{where}: log_density is -inf at every draw: q puts no mass where the target has any"
        )


def log_normalizer_se(ess: float, samples: int) -> float:
    r"""The standard error of ``log Ẑ = log mean w`` from ``samples = S`` weights whose ESS
    fraction is ``ess = (Σw)² / (S Σw²)``: by the delta method ``sd(w) / (√S · mean w)``, with
    the unbiased variance ``sqrt((1/ess - 1) / (S - 1))`` (0 when every weight is equal, NaN
    for ``S < 2``). It assumes a finite variance of ``w``: trust it when PSIS's ``k̂ < 0.5``
    (:func:`pareto_k`), as a rough guide up to 0.7; above, the variance may be infinite and
    this figure too small."""
    where = "nf.metrics.log_normalizer_se"
    samples = check_positive_int(where, "samples", samples)
    real = isinstance(ess, numbers.Real) and not isinstance(ess, bool)
    # (rounding may pass 1 by an ulp; 0 or NaN, every weight 0 or a NaN one: the SE is NaN)
    if not real or ess < 0 or ess > 1 + 1e-6:  # type: ignore[operator]
        raise ValueError(
            f"{where}: ess is the ESS as a fraction of samples, a number in (0, 1], "
            f"got {shown(ess)}"
        )
    if samples < 2 or not ess > 0:
        return math.nan
    return math.sqrt(max(1 / ess - 1, 0.0) / (samples - 1))


@dataclass(repr=False)
class ImportanceSampling:
    r"""Draws ``x_i ~ q`` (a flow) weighted towards an unnormalized target ``p̃``:
    ``w_i = p̃(x_i) / q(x_i)``, from :func:`importance_sampling`.

    Attributes:
        samples: ``(S, *event)`` draws of ``q``.
        log_weights: ``(S,)`` ``log p̃(x_i) - log q(x_i)`` in float64 (``-inf``: a draw outside
            the target's support, zero weight; a NaN or ``+inf`` of ``p̃`` is an error).
        ess: Effective sample size ``(Σw)² / (S Σw²)`` as a fraction of ``S``, in ``(0, 1]``.
        log_normalizer: ``log Ẑ = log mean w``, an estimate of ``log ∫ p̃`` (in expectation a
            lower bound, by Jensen).
        pareto_k: :func:`pareto_k` of the weights: below 0.7 the estimates are reliable.
    """

    samples: Tensor
    log_weights: Tensor
    ess: float
    log_normalizer: float
    pareto_k: float

    @property
    def reliable(self) -> bool:
        """``k̂ < 0.7``: importance-weighted estimates converge at a usable rate."""
        return self.pareto_k < 0.7

    @property
    def log_normalizer_se(self) -> float:
        """Standard error of :attr:`log_normalizer` (:func:`log_normalizer_se`; meaningful
        when :attr:`pareto_k` is below 0.5–0.7)."""
        return log_normalizer_se(self.ess, len(self.log_weights))

    @property
    def weights(self) -> Tensor:
        """Self-normalized weights ``w_i / Σ_j w_j``, ``(S,)``."""
        return torch.softmax(self.log_weights, 0)

    def expectation(self, fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``E_p[f(x)] ≈ Σ_i w̄_i f(x_i)`` (self-normalized); ``fn`` maps the ``(S, *event)``
        samples to ``(S, *out)``; None: ``f(x) = x``, the target's mean."""
        values = self.samples if fn is None else fn(self.samples)
        n = len(self.log_weights)
        if not isinstance(values, Tensor) or values.dim() == 0 or values.shape[0] != n:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"ImportanceSampling.expectation: fn must return a tensor (S, *out) with S = {n} "
                f"(one value per sample), got {got}"
            )
        w = self.weights.to(values.dtype)
        return torch.tensordot(w, values, dims=([0], [0]))

    def resample(self, n: int, *, seed: int | None = None) -> Tensor:
        """``n`` draws (with replacement) from the samples with probabilities ``w̄``:
        sampling-importance-resampling, approximately from ``p`` when :attr:`reliable`."""
        n = check_positive_int("ImportanceSampling.resample", "n", n)
        seed = None if seed is None else resolve_seed("ImportanceSampling.resample", seed)
        g = None if seed is None else torch.Generator().manual_seed(seed)
        index = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=g)
        return self.samples[index.to(self.samples.device)]

    def __repr__(self) -> str:
        return (
            f"ImportanceSampling(samples={len(self.log_weights)}, ess={self.ess:.4g}, "
            f"log_normalizer={self.log_normalizer:.4g} ± {self.log_normalizer_se:.2g}, "
            f"pareto_k={self.pareto_k:.3g}, "
            f"reliable={self.reliable})"
        )


@torch.no_grad()
def importance_sampling(
    flow: nn.Module,
    log_density: Callable[..., Tensor],
    samples: int = 8192,
    *,
    context: Tensor | None = None,
    seed: int | None = None,
    chunk_size: int = 4096,
) -> ImportanceSampling:
    r"""Weigh ``samples`` draws of ``flow = q`` by an unnormalized density ``p̃``.

    ``w_i = p̃(x_i) / q(x_i)`` for ``x_i ~ q``, drawn ``chunk_size`` at a time with
    ``flow.sample_and_log_prob``. The result gives ``log Ẑ``, the ESS and PSIS's ``k̂``
    (:func:`pareto_k`), self-normalized expectations under ``p`` and resampled draws: the
    check of a variational fit (:func:`nfkit.fit_vi` reports the same three numbers) and the
    way to correct it, for a flow trained by any loop.

    Args:
        flow: The proposal ``q`` (an ``nf.Flow``; evaluated in its current mode).
        log_density: ``x -> log p̃(x)`` of shape ``x.shape[:-1]`` (``(x, context)`` with a
            context), as in :func:`nfkit.fit_vi`.
        samples: ``S``.
        context: One context ``(C,)`` for a conditional ``q`` (one target at a time).
        seed: Seed of the draws (the global RNG is left as it was); None: the global RNG.
        chunk_size: Draws per pass.
    """
    from nfkit.core import Flow

    where = "nf.metrics.importance_sampling"
    if not isinstance(flow, Flow):
        raise TypeError(f"{where}: flow must be an nf.Flow, got {type(flow).__name__}")
    if not callable(log_density):
        raise TypeError(f"{where}: log_density must be callable, got {type(log_density).__name__}")
    samples = check_positive_int(where, "samples", samples)
    chunk_size = check_positive_int(where, "chunk_size", chunk_size)
    seed = None if seed is None else resolve_seed(where, seed)
    if context is not None:
        check_tensor(where, "context", context)
        if context.dim() != 1:
            raise ValueError(
                f"{where}: context must be one context of shape (C,), got shape "
                f"{tuple(context.shape)}; weigh one target at a time"
            )
    device = dtype_device(flow)[1]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        xs, lws = zip(*weighted_draws(where, flow, log_density, context, samples, chunk_size))
    lw = torch.cat(lws)
    check_log_weights(where, lw)
    ess, log_z, k = weight_summary(lw)
    warn_outside_spline_interval(
        where, flow, torch.cat(xs), "q's draws", VI_SPLINE_ADVICE, stacklevel=4
    )
    return ImportanceSampling(torch.cat(xs), lw, ess, log_z, k)
