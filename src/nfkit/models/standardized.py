r"""Standardization stored in the model: ``Standardized`` (factory) and ``standardize`` (fit it).

A standardized flow is ``p(x | c) = p_inner((x - μ) / σ | (c - m) / s) · Π_i 1/σ_i``: a fixed
:class:`~nfkit.transforms.Affine` ``z₀ = (x - μ)/σ`` is prepended to the inner flow's transform,
so ``log_prob`` takes and ``sample`` returns data in the user's units and the log-density includes
the standardization's Jacobian ``-Σ_i log σ_i``. The columns an inner flow keeps on a bounded
support (``NCSF``'s angles on ``[-π, π]``) keep their units, or are mapped linearly from the
range their ``bounds`` give (``(0, 360)`` degrees). The context (if any) is standardized by a fixed
embedding (no Jacobian: the context is conditioned on, not modelled). ``μ, σ, m, s`` are buffers,
so they travel in ``state_dict`` and ``nf.save``/``nf.load``; ``flow.config`` records the inner
architecture plus, optionally, the table's column names and which of them are the context.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nfkit._checks import Interval, check_positive_int, shown
from nfkit.core import Compose, Flow, context_tensor, floating_tensor
from nfkit.models._registry import build, factory
from nfkit.models.dequantized import DequantizedFlow
from nfkit.models.gaussianization import RBIGFlow
from nfkit.nn.mlp import PeriodicEmbedding
from nfkit.nn.sets import check_padded_set
from nfkit.tables import as_tensor
from nfkit.transforms.elementwise import Affine, Bounded

__all__ = ["Standardized", "standardize", "ContextStandardize"]


class ContextStandardize(nn.Module):
    r"""Fixed context embedding ``c ↦ (c - mean) / scale`` (buffers; identity when new).

    ``angles``: context columns that are angles. The same map sends each one's range onto
    ``[-π, π]`` (``mean`` its centre, ``scale`` its half-width over ``π``), and the result is
    read as a ``(cos, sin)`` pair (:class:`~nfkit.nn.PeriodicEmbedding`): the output has
    ``C + len(angles)`` columns, and the flow is a continuous function of each angle across
    its seam (any value is accepted: the embedding wraps it)."""

    def __init__(self, features: int, angles: Sequence[int] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.angles = tuple(angles)
        periods = tuple(2 * math.pi if j in self.angles else None for j in range(features))
        self.embed = PeriodicEmbedding(features, periods)  # no weights: the state dict is kept
        #: Column for column (no angle): a padded set's NaN elements stay where they were.
        self.keeps_context_layout = not self.angles

    @property
    def out_features(self) -> int:
        """The width of the embedded context: ``C`` plus one sine per angle."""
        return self.mean.shape[0] + len(self.angles)

    def forward(self, context: Tensor) -> Tensor:
        scaled = (context - self.mean) / self.scale
        return self.embed(scaled) if self.angles else scaled


def _fixed_columns(inner: Flow, features: int) -> list[int]:
    """The columns the inner flow keeps on a bounded support (``NCSF``'s angles): not
    standardized, since their values mean something in their own units (a circle's ends must
    stay its ends); ``bounds`` there give their range in the user's units instead."""
    domain = inner.transform.domain
    return [i for i in range(features) if not domain.at(i).is_real]


Bounds = Sequence[Sequence[float | None]] | Mapping[int | str, Sequence[float | None]]


def _named(j: int, labels: Sequence[str] | None) -> str:
    """Column ``j`` as the errors name it: its label when the columns are named."""
    return repr(labels[j]) if labels else str(j)


def _check_bounds(
    where: str, bounds: Any, features: int, labels: Sequence[str] | None = None
) -> list[tuple[float, float]] | None:
    """``bounds`` as ``D`` pairs ``(low, high)`` of floats (None and ±inf: an open end): one pair
    per column, one pair for every column, or a dict ``{column: (low, high)}`` (indices or
    ``labels``; the columns it does not name are open)."""
    if bounds is None:
        return None
    if isinstance(bounds, Mapping):  # (iterated, it would give its keys: {0: .., 1: ..} a pair)
        by_column: list[Any] = [(None, None)] * features
        for key, span in bounds.items():
            by_column[_column_index(where, "bounds", "modelled", key, labels, features)] = span
        bounds = by_column
    try:
        pairs = [list(p) if isinstance(p, Sequence | np.ndarray) else p for p in bounds]
    except TypeError:
        pairs = []
    if len(pairs) == 2 and all(v is None or isinstance(v, numbers.Real) for v in pairs):
        pairs = [pairs] * features  # one (low, high) for every column
    if len(pairs) != features or any(not isinstance(p, list) or len(p) != 2 for p in pairs):
        raise ValueError(
            f"{where}: bounds must be one (low, high) pair, or one per column ({features}), "
            f"got {shown(bounds)}"
        )
    out = []
    for i, (low, high) in enumerate(pairs):
        try:
            lo = -math.inf if low is None else float(low)
            hi = math.inf if high is None else float(high)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: bounds of column {_named(i, labels)} must be numbers or None, got "
                f"{shown((low, high))}"
            ) from None
        if not lo < hi or lo == math.inf or hi == -math.inf:
            raise ValueError(
                f"{where}: bounds of column {_named(i, labels)} need low < high, got "
                f"({low}, {high})"
            )
        out.append((lo, hi))
    return out


def _plain_bounds(bounds: list[tuple[float, float]] | None) -> list[list[float | None]] | None:
    """The bounds for ``config`` (JSON): open ends as None."""
    if bounds is None:
        return None
    return [[None if math.isinf(v) else v for v in pair] for pair in bounds]


def _check_discrete(
    where: str, discrete: Any, features: int, labels: Sequence[str] | None = None
) -> list[int] | None:
    """``discrete`` as sorted column indices (None: no discrete column): indices, or names
    among ``labels`` (the modelled columns' names)."""
    if discrete is None:
        return None
    items = [discrete] if isinstance(discrete, str | numbers.Integral) else discrete
    try:
        items = list(items)
    except TypeError:
        items = [discrete]
    out = []
    for item in items:
        if isinstance(item, str) and labels is not None and item in labels:
            out.append(list(labels).index(item))
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            if not -features <= int(item) < features:
                raise ValueError(
                    f"{where}: discrete column {int(item)} is out of range for {features} columns"
                )
            out.append(int(item) % features)
        else:
            known = f"; the modelled columns are {', '.join(map(repr, labels))}" if labels else ""
            raise ValueError(
                f"{where}: discrete must list modelled columns (indices or names), "
                f"got {shown(item)}{known}"
            )
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: discrete lists a column twice: {shown(discrete)}")
    return sorted(out) or None


def _cell_bounds(
    where: str,
    bounds: list[tuple[float, float]] | None,
    discrete: list[int] | None,
    labels: Sequence[str] | None = None,
) -> list[tuple[float, float]] | None:
    """The flow's support per column: a discrete column's integers ``low … high`` are the cells
    ``[v, v + 1)``, so its continuous support is ``(low, high + 1)`` (whole-number ends)."""
    if bounds is None or discrete is None:
        return bounds
    out = list(bounds)
    for j in discrete:
        low, high = bounds[j]
        if any(math.isfinite(v) and not float(v).is_integer() for v in (low, high)):
            raise ValueError(
                f"{where}: bounds of discrete column {_named(j, labels)} must be whole numbers "
                f"(the first and last integer it takes), got ({low:g}, {high:g})"
            )
        out[j] = (low, high + 1)
    return out


def _check_inside(
    where: str, x: Tensor, domain: Interval, columns: list[int], labels: Sequence[str] | None
) -> None:
    """``x[..., k]`` (column ``columns[k]`` of the table) inside that column's support, or an
    error naming the column (by its label when there is one)."""
    inside = torch.stack([domain.at(j).contains(x[..., k]) for k, j in enumerate(columns)], -1)
    if not bool(inside.all()):
        k = int(torch.nonzero(~inside)[0][-1])
        j = columns[k]
        label = repr(labels[j]) if labels else str(j)
        bad = x[..., k][~inside[..., k]][0].item()
        own = domain.at(j)
        hint = ""
        if own.is_circle:
            hint = (
                "; an angle's bounds are its range, e.g. (0, 360) (nfkit fit: --angles NAME=0:360)"
            )
        raise ValueError(
            f"{where}: column {label} has values outside its bounds {own} (e.g. {bad:g}){hint}"
        )


def _column_index(
    where: str,
    option: str,
    kind: str,
    key: Any,
    labels: Sequence[str] | None,
    count: int | None = None,
) -> int:
    """The column ``key`` names for ``option``: a name among ``labels`` or an index (below
    ``count`` when given), else a one-line error listing the ``kind`` columns."""
    if isinstance(key, str) and labels is not None and key in labels:
        return list(labels).index(key)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool) and 0 <= key:
        if count is None or key < count:
            return int(key)
    known = f"; the {kind} columns are {', '.join(map(repr, labels))}" if labels else ""
    raise ValueError(
        f"{where}: {option} must name {kind} columns (indices or names), got {shown(key)}{known}"
    )


def _check_context_angles(
    where: str, angles: Any, labels: Sequence[str] | None
) -> dict[int, tuple[float, float]]:
    """``context_angles`` as ``{context column: (low, high)}``: from indices or names (among
    ``labels``, the context columns' names), a dict of them to ranges (default ``(-π, π)``), or
    ``[j, low, high]`` triples (the form a model's ``config`` stores)."""
    if angles is None:
        return {}
    if isinstance(angles, dict):
        items = list(angles.items())
    else:
        entries = [angles] if isinstance(angles, str | numbers.Integral) else list(angles)
        items = [
            (e[0], (e[1], e[2])) if isinstance(e, list | tuple) and len(e) == 3 else (e, None)
            for e in entries
        ]
    out: dict[int, tuple[float, float]] = {}
    for key, span in items:
        if isinstance(key, list | tuple):  # (no column is a sequence)
            raise ValueError(
                f"{where}: context_angles must be indices, names, a dict of them to (low, high) "
                f"ranges or [index, low, high] triples, got {shown(key)}"
            )
        j = _column_index(where, "context_angles", "context", key, labels)
        try:
            low, high = (-math.pi, math.pi) if span is None else (float(span[0]), float(span[1]))
        except (TypeError, ValueError, IndexError):
            raise ValueError(
                f"{where}: the range of context angle {shown(key)} must be (low, high), "
                f"got {shown(span)}"
            ) from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or j in out:
            raise ValueError(
                f"{where}: context angle {shown(key)} needs one finite range low < high, "
                f"got {shown(span)}"
            )
        out[j] = (low, high)
    return out


def _whole_columns(x: Tensor) -> list[int]:
    """Indices of the columns of ``x`` ``(n, D)`` whose values are all finite whole numbers
    within the dtype's exact integers (``|x| ≤ 2/eps``: 2**24 in float32, 2**53 in float64;
    beyond, every value is whole, and a column of masses around 2e30 was taken for counts)."""
    if x.dim() != 2 or not x.is_floating_point():
        return []
    exact = 2 / torch.finfo(x.dtype).eps
    whole = (torch.isfinite(x) & (x == torch.floor(x)) & (x.abs() <= exact)).all(0)
    return torch.nonzero(whole).flatten().tolist()


def _wrap(
    inner: Flow,
    features: int,
    context: int,
    bounds: list[tuple[float, float]] | None = None,
    discrete: list[int] | None = None,
    context_angles: Sequence[int] = (),
) -> Flow:
    """The standardized flow around ``inner`` (statistics at the identity; :func:`standardize`
    sets them). Layers in front of the inner flow's: a :class:`~nfkit.transforms.Bounded` when
    there are ``bounds``, then the :class:`~nfkit.transforms.Affine` standardization; neither
    for a flow whose columns are all angles and no ``bounds`` (nothing to scale)."""
    where = "nf.models.standardize"
    layers = list(inner.transform) if isinstance(inner.transform, Compose) else [inner.transform]
    embedding: nn.Module | None = inner.embedding
    if context > 0:
        scaler = ContextStandardize(context, context_angles)
        embedding = scaler if embedding is None else nn.Sequential(scaler, embedding)
    fixed = _fixed_columns(inner, features)
    bad = [j for j in discrete or [] if j in fixed]
    if bad:
        raise ValueError(
            f"{where}: column {bad[0]} is an angle of the flow (support "
            f"{inner.transform.domain.at(bad[0])}) and cannot be discrete"
        )
    if len(fixed) < features or bounds is not None:
        layers.insert(0, Affine(torch.zeros(features), torch.ones(features)))
        support = _cell_bounds(where, bounds, discrete)
        if support is not None:  # the supports mapped onto the real line, then standardized
            real = [(-math.inf, math.inf) if j in fixed else b for j, b in enumerate(support)]
            like = floating_tensor(inner)  # its dtype: exact ends for a float64 flow
            layers.insert(
                0,
                Bounded(
                    [b[0] for b in real],
                    [b[1] for b in real],
                    dtype=None if like is None else like.dtype,
                ),
            )
        if fixed:  # what the flow accepts: each angle's range, the other columns' supports
            layers[0].domain = _joint_domain(where, layers[0].domain, inner, fixed, bounds)
    if discrete is not None:
        flow: Flow = DequantizedFlow(
            Compose(*layers), inner.base, discrete=discrete, embedding=embedding, context=context
        )
    else:
        flow = Flow(Compose(*layers), inner.base, embedding=embedding, context=context)
    like = floating_tensor(inner)
    if like is not None:  # the new buffers follow the inner flow's dtype and device
        flow.to(dtype=like.dtype, device=like.device)
    return flow


def _joint_domain(
    where: str,
    first: Interval,
    inner: Flow,
    fixed: list[int],
    bounds: list[tuple[float, float]] | None,
) -> Interval:
    """Per column: the closed range of each angle (its ``bounds``, or the inner flow's
    interval), and ``first``'s support for the other columns."""
    lows, highs, closed = [], [], []
    for j in range(inner.event_shape[0]):
        if j not in fixed:
            column = first.at(j)
            lows.append(float(column.low))
            highs.append(float(column.high))
            closed.append(False)
            continue
        own = inner.transform.domain.at(j)
        low, high = (float(own.low), float(own.high)) if bounds is None else bounds[j]
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                f"{where}: bounds of column {j}, an angle of the flow, must be its finite range "
                f"(one period, e.g. (-180, 180) or (0, 360)), got ({low:g}, {high:g})"
            )
        lows.append(low)
        highs.append(high)
        closed.append(bool(own.closed))
    return Interval(tuple(lows), tuple(highs), tuple(closed))


@factory
def Standardized(
    features: int,
    *,
    flow: dict[str, Any],
    context: int = 0,
    columns: Sequence[str] | None = None,
    given: Sequence[str] | None = None,
    bounds: Bounds | None = None,
    discrete: Sequence[int] | None = None,
    categories: dict[str, list[str]] | None = None,
    context_angles: Sequence[Sequence[float]] | None = None,
) -> Flow:
    r"""A flow of ``inner = nf.models.build(flow)`` behind a fixed standardization of x (and c).

    ``log p(x | c) = log p_inner((x - μ)/σ | (c - m)/s) - Σ_i log σ_i``. The statistics start at
    ``μ = 0, σ = 1`` (identity); :func:`standardize` fits them and ``nf.load`` restores them.

    Args:
        features: ``D``, the number of modelled columns.
        flow: The inner flow's ``config`` (e.g. ``nf.models.NSF(3).config``).
        context: Number of context columns ``C`` (must match the inner flow's).
        columns: Optional names of all table columns, in file order (data and context).
        given: Optional names of the context columns (a subset of ``columns``).
        bounds: Optional support ``(low, high)`` of each modelled column (None: an open end), as
            in :func:`standardize`.
        discrete: Optional indices of the integer-valued modelled columns: the flow is then a
            :class:`~nfkit.models.DequantizedFlow` (see :func:`standardize`).
        categories: Optional labels of category columns, ``{name: labels}``, recorded only (the
            table holds their codes ``0 … K-1``; ``nfkit fit`` writes it, ``sample`` and
            ``score`` read it).
        context_angles: Optional ``[j, low, high]`` per context column ``j`` that is an angle
            with that range (see :func:`standardize`); the inner flow then takes
            ``C + len(context_angles)`` context features.
    """
    features = check_positive_int("Standardized", "features", features)
    context = check_positive_int("Standardized", "context", context, minimum=0)
    if not isinstance(flow, dict) or "model" not in flow:
        raise TypeError("Standardized: flow must be an inner flow's config dict with a 'model'")
    if given is not None and columns is None:
        raise ValueError(
            "Standardized: given names context columns among columns: give columns too"
        )
    if columns is not None:  # what `nfkit score` reads a table by
        _check_names("Standardized", list(columns), list(given or ()), features)
        if len(given or ()) != context:
            raise ValueError(
                f"Standardized: given names {len(given or ())} context column(s), for a context "
                f"of {context}"
            )
    inner = build(flow)
    angles = [int(entry[0]) for entry in context_angles or ()]
    _check_inner("Standardized", inner, features, context + len(angles))
    return _wrap(
        inner,
        features,
        context,
        _check_bounds("Standardized", bounds, features),
        _check_discrete("Standardized", discrete, features),
        angles,
    )


def _check_inner(where: str, inner: Flow, features: int, context: int) -> None:
    if tuple(inner.event_shape) != (features,):
        raise ValueError(
            f"{where}: inner flow must have event shape ({features},), "
            f"got {tuple(inner.event_shape)}"
        )
    if inner.context_features != context:
        raise ValueError(
            f"{where}: inner flow takes context of size {inner.context_features}, got {context}"
        )


def _stats(
    where: str, name: str, data: Tensor, labels: Sequence[str] | None
) -> tuple[Tensor, Tensor]:
    if data.dim() != 2 or data.shape[0] < 2:
        raise ValueError(
            f"{where}: {name} must be a 2-D table with at least 2 rows, got shape {tuple(data.shape)}"
        )
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf values")
    # on the columns divided by their largest magnitude (a power of two: exact), so that
    # neither the sum nor the squares overflow (values of 1e200 gave std = inf, and a model
    # whose standardized values were all 0)
    scale = torch.exp2(torch.frexp(data.abs().amax(0)).exponent.to(data.dtype))
    scaled = data / scale
    mean = scaled.mean(0) * scale
    std = scaled.std(0, unbiased=False) * scale
    bad = torch.nonzero(~(std > 0)).flatten().tolist()
    if bad:
        names = [labels[i] if labels is not None else str(i) for i in bad]
        why = (
            "the flow could not learn how x depends on them: drop them"
            if name.startswith("context")
            else "a density over them is degenerate"
        )
        raise ValueError(f"{where}: {name} column(s) {', '.join(names)} are constant; {why}")
    return mean, std


def standardize(
    flow: Flow,
    x: Any,
    context: Any = None,
    *,
    columns: Sequence[str] | None = None,
    given: Sequence[str] | None = None,
    bounds: Bounds | None = None,
    discrete: Sequence[int | str] | str | None = None,
    context_angles: Any = None,
) -> Flow:
    r"""Wrap ``flow`` (keeping its weights) in a :func:`Standardized` flow fitted on ``x`` (and c).

    ``μ`` and ``σ`` are the per-column mean and (population) standard deviation of ``x``,
    except for the columns the flow keeps on a bounded support, ``NCSF``'s angles: they stay
    in their units, or are mapped from the range their ``bounds`` give onto the flow's circle.
    A flow of angles only, without ``bounds``, is not scaled at all (only its context). The
    returned flow shares the inner flow's modules; its ``config`` rebuilds it with
    ``nf.models.build`` and its ``state_dict`` holds the statistics.

    Args:
        flow: An unconditional flow of event shape ``(D,)``, or a conditional one of context ``C``.
        x: Training data ``(n, D)``, ``n ≥ 2`` (a Tensor, NumPy array or numeric DataFrame);
            a constant column is an error.
        context: Training context ``(n, C)`` when the flow is conditional (same types).
        columns: Names recorded in ``config`` (all columns, in file order). Default: the
            names of ``x`` (then ``context``) when they are DataFrames.
        given: Names of the context columns, recorded in ``config``.
        bounds: The support of each modelled column, ``(low, high)`` pairs (None: an open end;
            one pair for every column, one per column, or a dict ``{column: (low, high)}`` by
            index or name, the others open): a :class:`~nfkit.transforms.Bounded`
            layer maps them onto the real line before the standardization (whose statistics
            are then those of the mapped columns), so the density is zero outside them and
            samples stay inside; ``log_prob`` refuses values outside, naming the column.
            Positive quantities: ``(0, None)``; fractions: ``(0, 1)``. For a discrete column
            the ends are its first and last integers (whole numbers, both included). For an
            angle of the flow (``NCSF``) they are its range, one period in the table's units
            (``(0, 360)`` for compass degrees), mapped linearly onto the flow's circle (both
            ends open, or no ``bounds``: the flow's own interval).
        discrete: Integer-valued columns (counts, ratings, years): indices, names from
            ``columns``, or ``"auto"`` for every modelled column whose values in ``x`` are all
            whole numbers. The result is then a :class:`~nfkit.models.DequantizedFlow`: a flow
            on ``v + u``, ``u`` uniform in the unit cell (``2⁻¹²`` from its edges), whose ``log_prob`` is the log-probability of the
            integers (a density over the other columns) and whose samples are integers there.
            The statistics are those of one dequantized draw of ``x`` (a fixed seed).
        context_angles: Context columns that are angles: indices or names from ``given``, or a
            dict of them to their ranges ``(low, high)``, one period in the table's units
            (default ``(-π, π)``). Each is read as a ``(cos, sin)`` pair
            (:class:`ContextStandardize`), so ``flow`` must take ``C + A`` context features
            for ``C`` context columns of which ``A`` are angles: ``p(x | c)`` is then continuous
            across each angle's seam (a dihedral given, the bond lengths modelled).

    Example:
        >>> import nfkit as nf
        >>> x = 100 + 10 * nf.datasets.two_moons(256, seed=0)
        >>> flow = nf.models.standardize(nf.models.MAF(2, transforms=1, hidden=(8,)), x)
        >>> flow.log_prob(x[:3]).shape
        torch.Size([3])
    """
    where = "nf.models.standardize"
    if not isinstance(flow, Flow) or not flow.config:
        raise TypeError(f"{where}: expected an nf.Flow built by an nf.models factory")
    if len(flow.event_shape) != 1:
        raise ValueError(f"{where}: only vector flows, got event shape {tuple(flow.event_shape)}")
    features = int(flow.event_shape[0])
    x_labels = None
    c_labels = None
    if columns is None and given is None and hasattr(x, "columns"):  # DataFrames name them
        data_names = [str(c) for c in x.columns]
        given_names = [str(c) for c in context.columns] if hasattr(context, "columns") else []
        if given_names or context is None:
            columns, given = data_names + given_names, given_names or None
    if given is not None and columns is None:
        raise ValueError(f"{where}: given names context columns among columns: give columns too")
    if columns is not None:
        given_set = set(given or ())
        x_labels = [c for c in columns if c not in given_set]
        c_labels = list(given or ())  # the context's columns, in its order
        _check_names(where, list(columns), c_labels, features)
    if context_angles is not None and context is None:
        raise ValueError(f"{where}: context_angles need a context")
    if context_angles and (flow.config or {}).get("set_features"):
        raise ValueError(
            f"{where}: context_angles cannot be given for a set summary (set_features): its "
            "context columns are exchangeable set elements, none an angle"
        )
    angle_ranges = _check_context_angles(where, context_angles, c_labels)
    ctx = flow.context_features - len(angle_ranges)  # the context columns
    if (context is None) != (flow.context_features == 0):
        raise ValueError(
            f"{where}: flow takes context of size {flow.context_features} but context was "
            f"{'not given' if context is None else 'given'}"
        )
    x = as_tensor(x, where, "x")  # a Tensor (its dtype kept), NumPy array or DataFrame
    if x.dim() == 2 and x.shape[1] != features:
        raise ValueError(f"{where}: x must have last dim {features}, got shape {tuple(x.shape)}")
    support = _check_bounds(where, bounds, features, x_labels)
    fixed = _fixed_columns(flow, features)
    if support is not None:  # an angle with both ends open: the flow's own interval
        for j in fixed:
            if support[j] == (-math.inf, math.inf):
                own = flow.transform.domain.at(j)
                support[j] = (float(own.low), float(own.high))  # type: ignore[arg-type]
    if isinstance(discrete, str) and discrete == "auto":  # never an angle
        discrete = [j for j in _whole_columns(x) if j not in fixed] or None
    cells = _check_discrete(where, discrete, features, x_labels)
    if ctx < 1 and context is not None:
        raise ValueError(
            f"{where}: with {len(angle_ranges)} context angle(s) read as (cos, sin) pairs, the "
            f"flow needs C + {len(angle_ranges)} context features for C context columns; it "
            f"takes {flow.context_features}"
        )
    shape = getattr(context, "shape", None) or np.shape(context)  # (lists too; checked below)
    width = shape[-1] if angle_ranges and context is not None and len(shape) else ctx
    if width != ctx:  # (the width check further on would blame the data, naming ctx)
        raise ValueError(
            f"{where}: the context has {width} columns, {len(angle_ranges)} of them angles read "
            f"as (cos, sin) pairs: the flow needs {width + len(angle_ranges)} context features "
            f"(C + A); it takes {flow.context_features}"
        )
    if c_labels is not None and len(c_labels) != (ctx if context is not None else 0):
        raise ValueError(
            f"{where}: given names {len(c_labels)} context column(s) {c_labels}; the flow "
            f"takes {ctx if context is not None else 0}"
        )
    if any(j >= ctx for j in angle_ranges):
        raise ValueError(
            f"{where}: context angle column {max(angle_ranges)} is out of range for {ctx} "
            f"context columns (a flow of C + A context features for C columns, A of them angles)"
        )
    cell_support = _cell_bounds(where, support, cells, x_labels)  # (errors name the columns)
    out = _wrap(flow, features, ctx, support, cells, sorted(angle_ranges))
    out.config = {
        "model": "Standardized",
        "features": features,
        "flow": dict(flow.config),
        "context": ctx,
        "columns": None if columns is None else list(columns),
        "given": None if given is None else list(given),
        "bounds": _plain_bounds(support),
        "discrete": cells,
    }
    if angle_ranges:  # recorded only when used: configs of flows without them are unchanged
        out.config["context_angles"] = [[j, *angle_ranges[j]] for j in sorted(angle_ranges)]
    first = 1 if support is not None else 0  # the Affine follows the Bounded layer
    if fixed:  # each angle inside its range (the other columns are checked below)
        _check_inside(where, x[..., fixed], out.transform.domain, fixed, x_labels)
    if cells is not None:  # checked as log_prob checks, then one dequantized draw
        out.check_cells(where, x)  # type: ignore[operator]
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        x = out._dequantize(x, noise.to(x.device))  # type: ignore[operator]
    if support is not None:  # the statistics of the columns mapped onto the real line
        to_cells = [
            (-math.inf, math.inf) if j in fixed else b for j, b in enumerate(cell_support or [])
        ]
        to_real = Bounded([b[0] for b in to_cells], [b[1] for b in to_cells], dtype=x.dtype).to(
            x.device
        )
        _check_inside(where, x, to_real.domain, list(range(features)), x_labels)
        x = to_real(x)[0]
    mean, std = _stats(where, "x", x, x_labels)
    if mean.shape[0] != features:
        raise ValueError(f"{where}: x must have last dim {features}, got shape {tuple(x.shape)}")
    like = {"dtype": mean.dtype, "device": mean.device}
    like_tensor = floating_tensor(out)
    if like_tensor is not None:
        like = {"dtype": like_tensor.dtype, "device": like_tensor.device}
    with torch.no_grad():
        if len(fixed) < features or support is not None:
            shift, log_scale = -mean / std, -std.log()
            for j in fixed:  # an angle's range mapped linearly onto the flow's interval
                own = flow.transform.domain.at(j)
                low, high = (own.low, own.high) if support is None else support[j]
                scale = (own.high - own.low) / (high - low)  # type: ignore[operator]
                shift[j], log_scale[j] = own.low - low * scale, math.log(scale)
            affine: Affine = out.transform[first]  # type: ignore[assignment]
            affine.shift.copy_(shift.to(**like))
            affine.log_abs_scale.copy_(log_scale.to(**like))
        if context is not None:
            context = context_tensor(flow, context, where)
            if context.dim() != 2 or context.shape[-1] != ctx:
                raise ValueError(
                    f"{where}: context must have last dim {ctx}, got shape {tuple(context.shape)}"
                )
            if context.shape[0] != x.shape[0]:  # statistics of unrelated rows, silently
                raise ValueError(
                    f"{where}: x has {x.shape[0]} rows but context has {context.shape[0]}: give "
                    "one context row per row of x"
                )
            m = (flow.config or {}).get("set_features")
            if m:  # a set's elements are exchangeable: one scaling for all, pooled over them
                elements = context.reshape(-1, m)
                if (flow.config or {}).get("padded"):  # the present elements only
                    check_padded_set(where, "context", context, m)
                    elements = elements[~torch.isnan(elements).all(-1)]
                pooled = "context (pooled over the set's elements)"
                cmean, cstd = (s.repeat(ctx // m) for s in _stats(where, pooled, elements, None))
            else:
                cmean, cstd = _stats(where, "context", context, c_labels)
            scaler = (
                out.embedding
                if isinstance(out.embedding, ContextStandardize)
                else out.embedding[0]
            )  # type: ignore[index]
            for j, (low, high) in angle_ranges.items():  # the range onto [-π, π]
                cmean[j], cstd[j] = (low + high) / 2, (high - low) / (2 * math.pi)
            scaler.mean.copy_(cmean.to(**like))
            scaler.scale.copy_(cstd.to(**like))
    if isinstance(flow, RBIGFlow) and not flow.fitted:  # greedily, on the standardized rows
        out = _fit_rbig_inside(out, flow, ((x - mean) / std).to(**like))
    return out


def _check_names(where: str, columns: list, given: list, features: int) -> None:
    """``columns`` (every column, in file order) and ``given`` (the context's, among them) as
    ``config`` will record them: distinct, ``given`` inside ``columns``, and ``features``
    modelled ones (``nfkit score`` reads a table by these names)."""
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1}, key=str)
        raise ValueError(f"{where}: columns must be distinct names, got {twice} more than once")
    missing = [g for g in given if g not in columns]
    if missing:
        raise ValueError(f"{where}: given names {missing}, which are not among columns {columns}")
    modelled = [c for c in columns if c not in set(given)]
    if len(modelled) != features:
        raise ValueError(
            f"{where}: columns name {len(modelled)} modelled column(s) {modelled} (columns less "
            f"given) for a flow of {features} features"
        )


def _fit_rbig_inside(out: Flow, rbig: Flow, y: Tensor) -> Flow:
    """``out`` (the standardized flow around an unfitted ``rbig``) with ``rbig`` fitted on the
    standardized rows ``y`` (:meth:`~nfkit.models.RBIGFlow.fit`): its layers in place of the
    identity ones, its layer count in the config."""
    old = len(rbig.transform) if isinstance(rbig.transform, Compose) else 1
    rbig.fit(y)  # type: ignore[operator]
    front = list(out.transform)[: len(out.transform) - old]  # Bounded, Affine
    out.transform = Compose(*front, *rbig.transform)
    out.config["flow"] = dict(rbig.config)
    return out
