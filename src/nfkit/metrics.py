r"""Evaluation metrics for flows on quantized data: :func:`bits_per_dim`."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from nfkit._checks import check_number, check_positive_int, check_tensor, shown
from nfkit.core import dtype_device
from nfkit.transforms.image import dequantize as _dequantize

__all__ = ["bits_per_dim"]


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
