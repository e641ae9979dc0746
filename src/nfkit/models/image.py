r"""Multiscale image flows: :func:`Glow` and :func:`MultiscaleRealNVP`.

Both share one builder: level ``l`` maps ``(C, H, W)`` by ``Squeeze → steps on (4C, H/2, W/2) →
MultiscaleSplit(level l + 1 on the first 2C channels) → Squeeze⁻¹``; the last level has no split.
The whole transform maps ``(C, H, W) → (C, H, W)``, so the base is a distribution on the data's
shape and the factored-out latents sit where the inverse squeezes put them. ``H`` and ``W`` must
be divisible by ``2**levels``. With ``pixel_levels=K`` the flow starts with
:class:`~nfkit.transforms.LogitPreprocess` and models dequantized pixels ``x + u ∈ [0, K]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nfkit._checks import as_ints, check_hidden, check_open_interval, check_positive_int, shown
from nfkit.core import Compose, Flow, Transform
from nfkit.models._registry import factory, make_base
from nfkit.nn.conv import ConvNet, ConvResNet
from nfkit.transforms.coupling import Coupling
from nfkit.transforms.image import LogitPreprocess, MultiscaleSplit, Squeeze
from nfkit.transforms.linear import InvConv1x1
from nfkit.transforms.normalization import ActNorm
from nfkit.transforms.transformers import AffineTransformer

__all__ = ["Glow", "MultiscaleRealNVP"]

# (channels, height, width, level) -> the steps of that level, in the squeezed view.
StepMaker = Callable[[int, int, int, int], list[Transform]]


def _check_shape(where: str, shape: Any, levels: int) -> tuple[int, int, int]:
    dims = as_ints(shape)  # whole numbers only: int(1.7) built a (1, H, W) flow, "144" (1, 4, 4)
    if dims is None or len(dims) != 3:
        raise ValueError(f"{where}: shape must be (C, H, W) of ints, got {shown(shape)}")
    c, h, w = dims
    levels = check_positive_int(where, "levels", levels)
    # (2**levels only once it is known to be at most H: levels = 20000 made a 6000-digit number)
    if min(c, h, w) < 1 or 2 ** min(levels, h.bit_length()) > h or h % 2**levels or w % 2**levels:
        fits = f" = {2**levels}" if levels < 64 else f" (levels={levels})"
        raise ValueError(
            f"{where}: shape must be positive (C, H, W) with H and W divisible by "
            f"2**levels{fits}, got {tuple(shape)!r}"
        )
    return c, h, w


def _multiscale(c: int, h: int, w: int, levels: int, steps: StepMaker, level: int = 0) -> Compose:
    c4, h2, w2 = 4 * c, h // 2, w // 2
    layers = [Squeeze(), *steps(c4, h2, w2, level)]
    if level < levels - 1:
        keep = c4 // 2
        inner = _multiscale(keep, h2, w2, levels, steps, level + 1)
        layers.append(MultiscaleSplit(inner, keep))
    layers.append(Squeeze().inv)
    return Compose(*layers)


def _flow(
    where: str,
    shape: tuple[int, int, int],
    body: Transform,
    context: int,
    pixel_levels: int | None,
    alpha: float,
    base: str | nn.Module,
) -> Flow:
    layers = [body]
    check_open_interval(where, "alpha", alpha, 0, 0.5)
    if pixel_levels is not None:
        pixel_levels = check_positive_int(where, "pixel_levels", pixel_levels, minimum=2)
        layers.insert(0, LogitPreprocess(pixel_levels, alpha))
    return Flow(Compose(*layers), make_base(base, shape), context=context)


def _channel_mask(c: int, parity: int) -> torch.Tensor:
    """Transform the second half of the channels (``parity=1``: the first half)."""
    mask = torch.arange(c) >= c // 2
    return ~mask if parity else mask


def _checkerboard_mask(c: int, parity: int) -> torch.Tensor:
    """Checkerboard mask of the unsqueezed image, seen in the squeezed view ``(4C', H, W)``.

    Channel ``k = c'·4 + 2i + j`` holds pixel offset ``(i, j)`` of its 2×2 block, so the
    checkerboard colour of a pixel is ``(i + j) mod 2``.
    """
    k = torch.arange(c) % 4
    return (k // 2 + k % 2) % 2 == parity


@factory
def Glow(
    shape: Sequence[int],
    *,
    context: int = 0,
    levels: int = 2,
    steps: int = 4,
    hidden: Sequence[int] = (64, 64),
    split_prior: bool = True,
    pixel_levels: int | None = None,
    alpha: float = 0.05,
    base: str = "normal",
) -> Flow:
    r"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039) on images of shape ``(C, H, W)``.

    Each of ``levels`` levels: squeeze, then ``steps`` × [ActNorm → InvConv1x1 → affine coupling
    (ConvNet conditioner, 3×3 / 1×1 / 3×3)], then half of the channels are factored out. With
    ``split_prior`` the factored-out half gets Glow's learned prior ``N(μ(h), σ(h))`` given the
    kept half ``h``, written as an affine coupling of the factored half before the split.
    ``log_prob`` and ``sample`` are both one network pass per coupling.

    Args:
        shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
        context: Context size (broadcast as constant channels into every conditioner).
        levels: Number of scales ``L``.
        steps: Flow steps per level ``K``.
        hidden: Hidden widths of the coupling ConvNets.
        split_prior: Learned conditional prior on factored-out channels.
        pixel_levels: If given, prepend ``LogitPreprocess(pixel_levels, alpha)``: the flow then
            models dequantized pixels in ``[0, pixel_levels]``.
        alpha: The logit pre-processing margin.
        base: Base distribution name (``"normal"``, ``"diag_normal"``, ...).

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> flow = nf.models.Glow((1, 8, 8), levels=2, steps=2, hidden=(16, 16), pixel_levels=17)
        >>> x = nf.transforms.dequantize(torch.randint(0, 17, (5, 1, 8, 8)))
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 1, 8, 8]))
        >>> nf.metrics.bits_per_dim(flow, torch.randint(0, 17, (5, 1, 8, 8)), levels=17).shape
        torch.Size([])
    """
    c, h, w = _check_shape("Glow", shape, levels)
    context = check_positive_int("Glow", "context", context, minimum=0)
    steps = check_positive_int("Glow", "steps", steps)
    hidden = check_hidden("Glow", hidden)
    affine = AffineTransformer()

    def coupling(ch: int, mask: torch.Tensor) -> Coupling:
        n_b = int(mask.sum())
        net = ConvNet(ch - n_b, n_b * affine.num_params, hidden, context=context)
        return Coupling(ch, affine, mask=mask, conditioner=net, dim=-3)

    def glow_steps(ch: int, hh: int, ww: int, level: int) -> list[Transform]:
        out: list[Transform] = []
        for k in range(steps):
            out += [
                ActNorm(ch, event_dim=3),
                InvConv1x1(ch, seed=1000 * level + k),
                coupling(ch, _channel_mask(ch, k % 2)),
            ]
        if split_prior and level < levels - 1:
            # Factored-out channels ch//2.. transformed given the kept ones: a learned prior.
            out.append(coupling(ch, _channel_mask(ch, 0)))
        return out

    body = _multiscale(c, h, w, levels, glow_steps)
    return _flow("Glow", (c, h, w), body, context, pixel_levels, alpha, base)


@factory
def MultiscaleRealNVP(
    shape: Sequence[int],
    *,
    context: int = 0,
    levels: int = 2,
    steps: int = 3,
    hidden: int = 64,
    blocks: int = 2,
    pixel_levels: int | None = None,
    alpha: float = 0.05,
    base: str = "normal",
) -> Flow:
    r"""Multiscale RealNVP (Dinh et al. 2016, arXiv:1605.08803) on images of shape ``(C, H, W)``.

    Each level: ``steps`` affine couplings with alternating checkerboard masks, then ``steps``
    with alternating channel masks, then half of the channels are factored out; the last level
    has ``steps + 1`` checkerboard couplings only. Conditioners are convolutional ResNets.
    A checkerboard mask on the ``(C, H, W)`` image is applied as a channel mask in the squeezed
    view ``(4C, H/2, W/2)`` (same masked pixels; the conditioner sees the unmasked pixels at half
    resolution), so one :class:`~nfkit.transforms.Coupling` serves both mask types. No batch
    normalization (a training-time statistic); the couplings start at the identity.

    Args:
        shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
        context: Context size (broadcast as constant channels into every conditioner).
        levels: Number of scales.
        steps: Couplings per mask type and level.
        hidden: Width of the ResNet conditioners.
        blocks: Residual blocks per conditioner.
        pixel_levels: If given, prepend ``LogitPreprocess(pixel_levels, alpha)``.
        alpha: The logit pre-processing margin.
        base: Base distribution name.
    """
    c, h, w = _check_shape("MultiscaleRealNVP", shape, levels)
    context = check_positive_int("MultiscaleRealNVP", "context", context, minimum=0)
    steps = check_positive_int("MultiscaleRealNVP", "steps", steps)
    hidden = check_positive_int("MultiscaleRealNVP", "hidden", hidden)
    blocks = check_positive_int("MultiscaleRealNVP", "blocks", blocks, minimum=0)
    affine = AffineTransformer()

    def coupling(ch: int, mask: torch.Tensor) -> Coupling:
        n_b = int(mask.sum())
        net = ConvResNet(ch - n_b, n_b * affine.num_params, hidden, blocks=blocks, context=context)
        return Coupling(ch, affine, mask=mask, conditioner=net, dim=-3)

    def realnvp_steps(ch: int, hh: int, ww: int, level: int) -> list[Transform]:
        last = level == levels - 1
        out = [coupling(ch, _checkerboard_mask(ch, k % 2)) for k in range(steps + last)]
        if not last:
            out += [coupling(ch, _channel_mask(ch, k % 2)) for k in range(steps)]
        return out

    body = _multiscale(c, h, w, levels, realnvp_steps)
    return _flow("MultiscaleRealNVP", (c, h, w), body, context, pixel_levels, alpha, base)
