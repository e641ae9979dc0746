r"""Unnormalized 2-D target densities for variational inference (:func:`nfkit.fit_vi`).

The four energies of Rezende & Mohamed (2015, "Variational Inference with Normalizing Flows",
arXiv:1505.05770, Table 1), returned as log-densities ``log p̃(z) = -U(z)`` of shape
``z.shape[:-1]`` for ``z`` of shape ``(*batch, 2)``, differentiable, in ``z``'s dtype/device:

- ``U1(z) = ½ ((‖z‖ - 2) / 0.4)² - log(exp(-½ ((z₁ - 2)/0.6)²) + exp(-½ ((z₁ + 2)/0.6)²))``
- ``U2(z) = ½ ((z₂ - w₁(z)) / 0.4)²``
- ``U3(z) = -log(exp(-½ ((z₂ - w₁)/0.35)²) + exp(-½ ((z₂ - w₁ + w₂)/0.35)²))``
- ``U4(z) = -log(exp(-½ ((z₂ - w₁)/0.4)²) + exp(-½ ((z₂ - w₁ + w₃)/0.35)²))``

with ``w₁ = sin(2π z₁ / 4)``, ``w₂ = 3 exp(-½ ((z₁ - 1)/0.6)²)``, ``w₃ = 3 σ((z₁ - 1)/0.3)``.
U2–U4 are unbounded in ``z₁`` (their mass is infinite); as in the paper, they are used with a
bounded view, so ``fit_vi`` on them has no finite ``log Z`` (only U1 is normalizable).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["U1", "U2", "U3", "U4", "ENERGIES", "gaussian"]


def _check_floating(where: str, name: str, z: Tensor) -> None:
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise TypeError(f"nf.targets.{where}: {name} must be a floating-point Tensor")


def _check(where: str, z: Tensor) -> tuple[Tensor, Tensor]:
    _check_floating(where, "z", z)
    if z.shape[-1:] != (2,):
        raise ValueError(f"nf.targets.{where}: z must have last dim 2, got shape {tuple(z.shape)}")
    return z[..., 0], z[..., 1]


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def U1(z: Tensor) -> Tensor:
    r"""Ring with two lobes: ``-U1(z)`` (see the module docstring)."""
    z1, _ = _check("U1", z)
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2) / 0.4) ** 2
    lobes = torch.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)
    return -(ring - lobes)


def U2(z: Tensor) -> Tensor:
    r"""Sine wave: ``-U2(z) = -½ ((z₂ - sin(π z₁ / 2)) / 0.4)²``."""
    z1, z2 = _check("U2", z)
    return -0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def U3(z: Tensor) -> Tensor:
    r"""Sine wave splitting in two around ``z₁ = 1``: ``-U3(z)``."""
    z1, z2 = _check("U3", z)
    w1 = _w1(z1)
    w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    return torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)


def U4(z: Tensor) -> Tensor:
    r"""Sine wave with a sigmoid step: ``-U4(z)``."""
    z1, z2 = _check("U4", z)
    w1 = _w1(z1)
    w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
    return torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {"U1": U1, "U2": U2, "U3": U3, "U4": U4}


def gaussian(loc: Tensor | float = 0.0, scale: Tensor | float = 1.0) -> Callable[[Tensor], Tensor]:
    r"""Unnormalized ``N(loc, diag scale²)``: ``log p̃(x) = -½ Σ ((x - loc)/scale)²``.

    Its normalizer is known, ``log Z = Σ_i log(scale_i √(2π))``, which makes it the reference
    target for testing :func:`nfkit.fit_vi`'s ``log_normalizer`` and ``ess``.
    """
    loc_t = torch.as_tensor(loc, dtype=torch.float64)
    scale_t = torch.as_tensor(scale, dtype=torch.float64)
    if not bool(torch.isfinite(loc_t).all()):
        raise ValueError("nf.targets.gaussian: loc must be finite")
    if not bool(((scale_t > 0) & torch.isfinite(scale_t)).all()):
        raise ValueError("nf.targets.gaussian: scale must be positive and finite")
    if loc_t.dim() > 1 or scale_t.dim() > 1:
        raise ValueError(
            f"nf.targets.gaussian: loc and scale must be numbers or vectors (D,), got shapes "
            f"{tuple(loc_t.shape)} and {tuple(scale_t.shape)}"
        )
    try:
        width = torch.broadcast_shapes(loc_t.shape, scale_t.shape)
    except RuntimeError:
        raise ValueError(
            f"nf.targets.gaussian: loc has {loc_t.numel()} entries and scale "
            f"{scale_t.numel()}: give them the same length (or one a number)"
        ) from None

    def log_density(x: Tensor) -> Tensor:
        _check_floating("gaussian", "x", x)
        if width and width[0] > 1 and x.shape[-1] != width[0]:
            raise ValueError(
                f"nf.targets.gaussian: x must have last dim {width[0]} (the size of loc and "
                f"scale), got shape {tuple(x.shape)}"
            )
        u = (x - loc_t.to(x)) / scale_t.to(x)
        return -0.5 * (u * u).sum(-1)

    return log_density
