r"""Pure tensor math shared by the transforms: no modules, no state.

The rational-quadratic spline follows Durkan et al. (2019), "Neural Spline Flows", arXiv:1906.04032,
with identity (linear) tails outside ``[-bound, bound]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sum_event",
    "soft_clamp",
    "softplus_inverse",
    "rqs",
    "log_sigmoid_derivative",
    "householder_matrix",
]


def sum_event(x: Tensor, event_dim: int) -> Tensor:
    """Sum the ``event_dim`` rightmost dims of an elementwise log-det."""
    if event_dim == 0:
        return x
    return x.flatten(x.dim() - event_dim).sum(-1)


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smooth clamp to ``(-bound, bound)``: ``bound · tanh(x / bound)`` (identity near 0)."""
    return bound * torch.tanh(x / bound)


def softplus_inverse(y: float) -> float:
    """``log(exp(y) - 1)``: the raw value whose softplus is ``y``."""
    return math.log(math.expm1(y))


def log_sigmoid_derivative(x: Tensor) -> Tensor:
    """``log σ'(x) = -softplus(-x) - softplus(x)``, finite for every real ``x``."""
    return -F.softplus(-x) - F.softplus(x)


def householder_matrix(vectors: Tensor) -> Tensor:
    r"""``Q = H_K ⋯ H_1`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²``, from ``vectors (*, K, D)`` → ``(*, D, D)``.

    Built by reflecting the rows of the identity (``K`` rank-one updates of a ``D × D`` matrix).
    """
    d = vectors.shape[-1]
    m = torch.eye(d, dtype=vectors.dtype, device=vectors.device).expand(*vectors.shape[:-2], d, d)
    for k in range(vectors.shape[-2]):
        v = vectors[..., k, :]
        coef = (m @ v.unsqueeze(-1)).squeeze(-1) / (v * v).sum(-1, keepdim=True)
        m = m - 2 * coef.unsqueeze(-1) * v.unsqueeze(-2)
    return m.transpose(-1, -2)


def _knots(raw: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Bin sizes and knot positions on ``[-bound, bound]`` from unconstrained logits ``(*, K)``."""
    k = raw.shape[-1]
    sizes = min_size + (1 - min_size * k) * torch.softmax(raw, dim=-1)
    knots = torch.cumsum(sizes, dim=-1)
    knots = F.pad(knots, (1, 0), value=0.0)
    knots = 2 * bound * knots - bound
    # Pin the ends exactly so that x = ±bound maps to ±bound despite rounding.
    knots = torch.cat(
        [
            torch.full_like(knots[..., :1], -bound),
            knots[..., 1:-1],
            torch.full_like(knots[..., :1], bound),
        ],
        dim=-1,
    )
    return knots[..., 1:] - knots[..., :-1], knots


def rqs(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    *,
    bound: float,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    r"""Monotone rational-quadratic spline with identity tails, elementwise.

    Args:
        x: Inputs ``(*,)``, anywhere on the real line.
        widths, heights: Unconstrained bin logits ``(*, K)``.
        derivatives: Unconstrained interior knot derivatives ``(*, K - 1)``; the boundary
            derivatives are 1 so the spline joins its linear tails smoothly (C¹).
        bound: The spline acts on ``[-bound, bound]``; outside, it is the identity.
        inverse: Evaluate the inverse map instead (closed form, a quadratic root).

    Returns:
        ``(y, log|dy/dx|)`` elementwise, both of the shape of ``x``. Inputs outside the interval
        are clamped *before* the spline arithmetic, so values and gradients stay finite for any
        finite input, in float32 too; raw parameters all zero give the identity.
    """
    w, xk = _knots(widths, bound, min_width)
    h, yk = _knots(heights, bound, min_height)
    d_inner = min_derivative + F.softplus(derivatives + softplus_inverse(1 - min_derivative))
    one = d_inner.new_ones(*d_inner.shape[:-1], 1)
    d = torch.cat([one, d_inner, one], dim=-1)

    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    search = (yk if inverse else xk)[..., 1:-1].contiguous()
    if search.shape[-1] == 0:  # a single bin
        idx = torch.zeros(*xc.shape, 1, dtype=torch.long, device=xc.device)
    else:
        idx = torch.searchsorted(search, xc.unsqueeze(-1).contiguous(), right=True)

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, idx).squeeze(-1)

    x0, y0, wk, hk = pick(xk[..., :-1]), pick(yk[..., :-1]), pick(w), pick(h)
    d0, d1 = pick(d[..., :-1]), pick(d[..., 1:])
    s = hk / wk
    if not inverse:
        xi = ((xc - x0) / wk).clamp(0, 1)
        xi1 = xi * (1 - xi)
        denom = s + (d1 + d0 - 2 * s) * xi1
        y = y0 + hk * (s * xi * xi + d0 * xi1) / denom
        num = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2)
        ladj = torch.log(num) - 2 * torch.log(denom)
    else:
        dy = xc - y0
        c2 = d1 + d0 - 2 * s
        a = hk * (s - d0) + dy * c2
        b = hk * d0 - dy * c2
        c = -s * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)
        y = x0 + xi * wk
        xi1 = xi * (1 - xi)
        denom = s + c2 * xi1
        num = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2)
        ladj = 2 * torch.log(denom) - torch.log(num)
    y = torch.where(inside, y, x)
    ladj = torch.where(inside, ladj, torch.zeros_like(ladj))
    return y, ladj
