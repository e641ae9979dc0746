r"""Evaluation metrics: :func:`compare` (models by held-out log-likelihood, with paired standard
errors) and :func:`bits_per_dim` (flows on quantized data)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from nfkit._checks import check_number, check_positive_int, check_tensor, shown
from nfkit.core import dtype_device
from nfkit.transforms.image import dequantize as _dequantize

__all__ = ["bits_per_dim", "compare", "compare_scores"]


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
        array = np.asarray(values, dtype=np.float64)
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
        cs = None if context is None else as_tensor(context, where, "context", dtype=dtype,
                                                    device=device)  # fmt: skip
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
    exactly ``log₂ K``.

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
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    dtype, device = dtype_device(flow)
    x = check_tensor(where, "x", x.to(dtype=dtype, device=device))
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
    total = 0.0
    for _ in range(draws):  # a handful of dequantization draws, not a loop over the batch
        y = _dequantize(x, generator=generator) if dequantize else x
        total = total + flow.log_prob(scale * y, context)
    bpd = -(total / draws) / (d * math.log(2)) - math.log2(scale)
    return bpd.mean() if reduction == "mean" else bpd
