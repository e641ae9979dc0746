r"""Toy 2-D densities, the scikit-learn digits, and readers for user tables.

Every toy is ``name(n, *, noise=..., seed=None) -> Tensor`` of shape ``(n, 2)`` in the default
dtype; ``seed`` makes it reproducible without touching the global RNG (``None``: draw from it).
``load(path)`` reads ``.csv``, ``.npy`` and ``.parquet`` files into a numeric
:class:`pandas.DataFrame` (see :func:`nfkit.tables.read_table` for the rules and errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nfkit._checks import (
    check_number,
    check_open_interval,
    check_positive_int,
    seeded,
)
from nfkit.tables import read_table as load

__all__ = [
    "two_moons",
    "circles",
    "checkerboard",
    "pinwheel",
    "eight_gaussians",
    "spirals",
    "digits",
    "load",
    "TOYS",
]


def _generator(where: str, seed: int | None) -> torch.Generator:
    return seeded(f"nf.datasets.{where}", seed)


def _prepare(where: str, n: int, noise: float, seed: int | None) -> torch.Generator:
    n = check_positive_int(f"nf.datasets.{where}", "n", n)
    check_number(f"nf.datasets.{where}", "noise", noise, 0.0, inclusive=True)
    return _generator(where, seed)


def _out(x: Tensor) -> Tensor:
    return x.to(torch.get_default_dtype())


def two_moons(n: int, *, noise: float = 0.1, seed: int | None = None) -> Tensor:
    r"""Two interleaved half circles: ``(cos θ, sin θ)`` and ``(1 - cos θ, ½ - sin θ)``, plus noise.

    Centred (mean ≈ 0) and then doubled: ``x = 2 (m - (½, ¼) + noise · ε)`` with ``ε ~ N(0, I)``,
    so the data span about ``[-3, 3] × [-1.5, 1.5]`` and the noise's std is ``2 · noise``.
    """
    g = _prepare("two_moons", n, noise, seed)
    theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    a = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    b = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], -1)
    x = torch.where(upper[:, None], a, b) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _out(x * 2)


def circles(n: int, *, noise: float = 0.05, seed: int | None = None) -> Tensor:
    r"""Two concentric circles of radii 1 and 2 (half the points on each), radial noise ``noise``."""
    g = _prepare("circles", n, noise, seed)
    theta = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    radius = 1.0 + (torch.rand(n, generator=g, dtype=torch.float64) < 0.5).double()
    radius = radius + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return _out(radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], -1))


def checkerboard(n: int, *, noise: float = 0.0, seed: int | None = None) -> Tensor:
    r"""Uniform on the 8 black squares of a 4×4 board on ``[-2, 2]²`` (plus optional noise)."""
    g = _prepare("checkerboard", n, noise, seed)
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    offset = (
        torch.rand(n, generator=g, dtype=torch.float64)
        - torch.randint(0, 2, (n,), generator=g).double() * 2
    )
    x2 = offset + (torch.floor(x1) % 2)
    x = torch.stack([x1, x2], -1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _out(x)


def pinwheel(n: int, *, noise: float = 0.3, seed: int | None = None, arms: int = 5) -> Tensor:
    r"""``arms`` spiralling Gaussian blades (Johnson et al. 2016), doubled in scale.

    Before the doubling a blade's radius is ``1 + noise · ε`` (``ε ~ N(0, 1)``), so the radial
    std of the output is ``2 · noise`` (and its tangential std ``2 · 0.05``).
    """
    g = _prepare("pinwheel", n, noise, seed)
    arms = check_positive_int("nf.datasets.pinwheel", "arms", arms)
    angles = torch.arange(arms, dtype=torch.float64) * 2 * math.pi / arms
    labels = torch.randint(0, arms, (n,), generator=g)
    feats = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [noise, 0.05], dtype=torch.float64
    )
    feats[:, 0] += 1.0
    rot = angles[labels] + 0.25 * torch.exp(feats[:, 0])
    c, s = torch.cos(rot), torch.sin(rot)
    x = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], -1)
    return _out(2 * x)


def eight_gaussians(n: int, *, noise: float = 0.2, seed: int | None = None) -> Tensor:
    r"""Equal mixture of 8 Gaussians (std ``noise``) centred on a circle of radius 2."""
    g = _prepare("eight_gaussians", n, noise, seed)
    k = torch.randint(0, 8, (n,), generator=g).double()
    centres = 2 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], -1)
    return _out(centres + noise * torch.randn(n, 2, generator=g, dtype=torch.float64))


def spirals(n: int, *, noise: float = 0.1, seed: int | None = None) -> Tensor:
    r"""Two interleaved Archimedean spirals ``r ∝ θ`` (θ up to 3π), isotropic noise ``noise``."""
    g = _prepare("spirals", n, noise, seed)
    t = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, 1.0, -1.0)
    x = sign[:, None] * torch.stack([t * torch.cos(t), t * torch.sin(t)], -1) / math.pi
    return _out(x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64))


TOYS: dict[str, Callable[..., Tensor]] = {
    "two_moons": two_moons,
    "circles": circles,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "eight_gaussians": eight_gaussians,
    "spirals": spirals,
}


def digits(*, test_fraction: float = 0.2, seed: int | None = 0) -> tuple[Tensor, Tensor]:
    r"""The 1797 8×8 handwritten digits bundled with scikit-learn (no download), dequantized.

    Each pixel is an integer ``v ∈ {0, …, 16}``; it becomes ``x = (v + u) / 17`` with
    ``u ~ U(0, 1)``, so ``x ∈ (0, 1)^64`` (also after rounding to the default dtype: a
    value that rounds onto an end is put one ulp inside) and a density ``p(x)`` gives a
    discrete log-likelihood
    bound ``log P(v) ≥ log p(x) - 64 log 17`` (uniform dequantization, Theis et al. 2016).

    Args:
        test_fraction: Fraction of images held out (shuffled with ``seed``).
        seed: Seed of the shuffle and of the dequantization noise.

    Returns:
        ``(train, test)`` tensors of shape ``(n, 64)`` in the default dtype.
    """
    check_open_interval("nf.datasets.digits", "test_fraction", test_fraction, 0, 1)
    from sklearn.datasets import load_digits

    v = torch.as_tensor(load_digits().data, dtype=torch.float64)
    g = _generator("digits", seed)
    x = (v + torch.rand(v.shape, generator=g, dtype=torch.float64)) / 17.0
    x = x[torch.randperm(len(x), generator=g)]
    n_test = min(len(x) - 1, max(1, round(test_fraction * len(x))))  # a row on each side
    return _inside_unit(_out(x[n_test:])), _inside_unit(_out(x[:n_test]))


def _inside_unit(x: Tensor) -> Tensor:
    """``x`` kept strictly inside (0, 1) in its dtype: ``(16 + u) / 17`` with ``u`` within half
    a float32 ulp of 1 rounds to 1.0 in float32 (about one seed in 200 of ``digits``)."""
    one = torch.ones((), dtype=x.dtype)
    return x.clamp(torch.finfo(x.dtype).tiny, torch.nextafter(one, one - 1).item())
