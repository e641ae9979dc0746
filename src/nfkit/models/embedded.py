r"""A conditional flow behind a learned summary network of its context: :func:`Embedded`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from nfkit._checks import check_hidden, check_positive_int
from nfkit.core import Flow
from nfkit.models._registry import build, factory
from nfkit.models.standardized import _check_inner
from nfkit.nn.mlp import MLP
from nfkit.nn.sets import DeepSet

__all__ = ["Embedded"]


@factory
def Embedded(
    features: int,
    *,
    flow: dict[str, Any],
    context: int,
    hidden: Sequence[int] = (64, 64),
    residual: bool = False,
    set_features: int | None = None,
    padded: bool = False,
) -> Flow:
    r"""``p(x | c) = p_inner(x | e(c))``: a conditional flow whose raw context ``c`` (``context``
    features) first goes through a learned summary network ``e``, trained with the flow.

    ``e`` is an :class:`~nfkit.nn.MLP` ``context → hidden… → C_inner`` (randomly initialized,
    residual blocks with ``residual``), where ``C_inner`` is the inner flow's context size: many
    or redundant observations (an experiment's raw data, a time series flattened) summarized
    into a few features, as in neural posterior estimation with an embedding network
    (Papamakarios & Murray 2016; Greenberg, Nonnenmacher & Macke 2019). ``inner =
    nf.models.build(flow)`` (its ``config``, e.g. ``nf.models.NSF(2, context=8).config``), so
    the result is rebuilt by its ``config``: ``nf.load(path)`` needs no architecture (a
    hand-assembled ``nf.Flow(..., embedding=net)`` loads with ``nf.load(path, into=flow)``),
    and ``nf.models.standardize`` puts its context standardization in front of ``e``. ``log_prob`` and ``sample`` take the raw context.

    ``set_features=m``: the raw context is a set of ``context / m`` exchangeable elements of
    ``m`` numbers each, one after another (i.i.d. trials of an experiment), and ``e`` is a
    :class:`~nfkit.nn.DeepSet` ``ρ(mean_i φ(c_i))``: the flow is then exactly invariant to
    the elements' order, and ``nf.models.standardize`` scales every element alike (statistics
    pooled over the elements, so the invariance survives it).

    ``padded=True`` (with ``set_features``): sets of different sizes, up to ``context / m``
    elements; an absent element is ``m`` NaNs anywhere in the row (the trials a simulation or
    an experiment did not run). The summary pools the present elements and reads their number
    (:class:`~nfkit.nn.DeepSet` with ``padded=True``), so one flow is amortized over the
    number of trials; NaN elsewhere (part of an element) is still an error.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> inner = nf.models.NSF(2, context=4, transforms=2, hidden=(16,))
        >>> flow = nf.models.Embedded(2, flow=inner.config, context=20, hidden=(32,))
        >>> flow.log_prob(torch.randn(5, 2), context=torch.randn(5, 20)).shape
        torch.Size([5])
        >>> flow.sample(3, context=torch.randn(20)).shape
        torch.Size([3, 2])
    """
    where = "Embedded"
    features = check_positive_int(where, "features", features)
    context = check_positive_int(where, "context", context)
    hidden = check_hidden(where, hidden)
    if not isinstance(flow, dict) or "model" not in flow:
        raise TypeError(f"{where}: flow must be an inner flow's config dict with a 'model'")
    if flow["model"] in ("Standardized", "Embedded"):  # their statistics (or discrete
        # columns, a DequantizedFlow) would be lost: only the config is used
        raise ValueError(
            f"{where}: the inner flow's config is a {flow['model']} wrapper; give the plain "
            "model's config and wrap the result (nf.models.standardize(Embedded(...), x, c))"
        )
    inner = build(flow)
    _check_inner(where, inner, features, inner.context_features)  # the event shape
    if inner.context_features < 1:
        raise ValueError(
            f"{where}: the inner flow must be conditional (its context is the summary's size); "
            "build it with context=..."
        )
    if residual and len(set(hidden)) != 1:
        raise ValueError(f"{where}: residual blocks need equal hidden widths, got {hidden}")
    if padded and set_features is None:
        raise ValueError(f"{where}: padded=True pads a set's elements; give set_features too")
    summary: nn.Module
    if set_features is None:
        summary = MLP(context, inner.context_features, hidden, zero_init=False, residual=residual)
    else:
        m = check_positive_int(where, "set_features", set_features)
        if context % m:
            raise ValueError(
                f"{where}: context ({context}) must hold whole elements of set_features={m}"
            )
        summary = DeepSet(m, inner.context_features, hidden, residual=residual, padded=padded)
    embedding = summary if inner.embedding is None else nn.Sequential(summary, inner.embedding)
    return Flow(inner.transform, inner.base, embedding=embedding, context=context)
