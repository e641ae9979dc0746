r"""Image transforms on events ``(*batch, C, H, W)`` (``event_dim = 3``).

:class:`Squeeze` (space-to-depth), :class:`MultiscaleSplit` (factor-out of a multiscale
architecture), :class:`LogitPreprocess` (dequantized pixels → logit space) and the data-side
function :func:`dequantize`. The invertible 1×1 convolution is
:class:`~nfkit.transforms.InvConv1x1` in ``linear.py``.

**Multiscale design.** Every transform here keeps the contract ``forward/inverse -> (z, ladj)``.
:class:`Squeeze` changes the event shape ``(C, H, W) → (4C, H/2, W/2)``; :class:`MultiscaleSplit`
does not: it sends the first ``split`` channels through an inner transform and passes the others
(the factored-out latents) through unchanged. A level of Glow or multiscale RealNVP is
``Squeeze → steps → MultiscaleSplit(next level) → Squeeze⁻¹``, so the whole flow maps
``(C, H, W)`` to ``(C, H, W)`` and its base is a standard normal on that shape (Dinh et al. 2016,
arXiv:1605.08803; Kingma & Dhariwal 2018, arXiv:1807.03039).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nfkit._checks import Interval, check_open_interval, check_positive_int, shape_str
from nfkit.core import Transform
from nfkit.transforms.functional import (
    interval_logit,
    interval_sigmoid,
    sum_event,
)

__all__ = ["Squeeze", "MultiscaleSplit", "LogitPreprocess", "dequantize"]


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[:-3])


def _check_image(where: str, x: Tensor) -> None:
    if x.dim() < 3:
        raise ValueError(
            f"{where}: expected an image batch (*, C, H, W), got {shape_str(x.shape)}"
        )


class Squeeze(Transform):
    r"""Space-to-depth: ``(C, H, W) → (C·f², H/f, W/f)``, each ``f × f`` block into channels.

    ``z[c·f² + i·f + j, h, w] = x[c, h·f + i, w·f + j]`` (the layout of
    :func:`torch.nn.functional.pixel_unshuffle`). A permutation of coordinates: ``ladj = 0``;
    the inverse (depth-to-space) is exact. Dinh et al. (2016), RealNVP, arXiv:1605.08803.

    Args:
        factor: Block size ``f``; ``H`` and ``W`` must be divisible by it.

    Shapes:
        x: ``(*batch, C, H, W)`` → z: ``(*batch, C·f², H/f, W/f)``, ladj: ``(*batch,)``.
    """

    outline_settings = ("factor",)

    event_dim = 3

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = check_positive_int("Squeeze", "factor", factor)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image("Squeeze.forward", x)
        f = self.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"Squeeze.forward: height and width must be divisible by {f}, "
                f"got shape {shape_str(x.shape)}"
            )
        # pixel_unshuffle's layout by reshapes (it returns an empty input unchanged, and a
        # branch on the batch's size does not survive torch.export: empty batches failed)
        y = x.unflatten(-1, (-1, f)).unflatten(-3, (-1, f))  # (*b, C, H/f, i, W/f, j)
        n = y.dim()
        y = y.permute(*range(n - 5), n - 5, n - 3, n - 1, n - 4, n - 2)  # (*b, C, i, j, H/f, W/f)
        return y.flatten(-5, -3), _zeros(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image("Squeeze.inverse", z)
        f = self.factor
        if z.shape[-3] % (f * f):
            raise ValueError(
                f"Squeeze.inverse: channels must be divisible by {f * f}, "
                f"got shape {shape_str(z.shape)}"
            )
        y = z.unflatten(-3, (-1, f, f))  # (*b, C, i, j, h, w)
        n = y.dim()
        y = y.permute(*range(n - 5), n - 5, n - 2, n - 4, n - 1, n - 3)  # (*b, C, h, i, w, j)
        return y.flatten(-2, -1).flatten(-3, -2), _zeros(z)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class MultiscaleSplit(Transform):
    r"""Factor-out: ``z = [inner(x[:split]), x[split:]]`` along the channels.

    The first ``split`` channels continue through ``inner`` (the next, coarser levels of a
    multiscale flow); the remaining channels are factored out: they are already latent and pass
    through unchanged. The event shape is preserved (``inner`` must preserve its own), so the
    flow keeps one latent tensor of the data's shape. The Jacobian is block diagonal:
    ``ladj = ladj_inner``; the inverse applies ``inner.inverse`` to the first ``split`` channels
    (exact when ``inner``'s is).

    Args:
        inner: Transform on ``(*batch, split, H, W)``; receives the context.
        split: Number of leading channels that go through ``inner``.

    Shapes:
        x: ``(*batch, C, H, W)`` with ``C > split`` → z: same, ladj: ``(*batch,)``.
    """

    outline_settings = ("split",)

    event_dim = 3

    def __init__(self, inner: Transform, split: int) -> None:
        super().__init__()
        if not isinstance(inner, Transform):
            raise TypeError(
                f"MultiscaleSplit: inner must be an nf.Transform, got {type(inner).__name__}"
            )
        if inner.event_dim != 3:
            raise ValueError(
                f"MultiscaleSplit: inner must act on images (event_dim 3), got {inner.event_dim}"
            )
        self.inner = inner
        self.split = check_positive_int("MultiscaleSplit", "split", split)

    def _split(
        self, where: str, x: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        _check_image(where, x)
        if x.shape[-3] <= self.split:
            raise ValueError(
                f"{where}: x must have more than {self.split} channels, got {shape_str(x.shape)}"
            )
        head, tail = x[..., : self.split, :, :], x[..., self.split :, :, :]
        out, ladj = (self.inner.inverse if inverse else self.inner)(head, context)
        if out.shape[-3:] != head.shape[-3:]:
            raise ValueError(
                f"{where}: the inner {type(self.inner).__name__} must keep its input's shape "
                f"(C, H, W) = {shape_str(head.shape[-3:])}, it gave {shape_str(out.shape[-3:])}"
            )
        tail = tail.expand(*out.shape[:-3], *tail.shape[-3:])
        return torch.cat([out, tail], dim=-3), ladj

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._split("MultiscaleSplit.forward", x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._split("MultiscaleSplit.inverse", z, context, inverse=True)

    def extra_repr(self) -> str:
        return f"split={self.split}"


class LogitPreprocess(Transform):
    r"""``z = logit(α + (1 − 2α) · x / K)``: dequantized pixels ``x ∈ [0, K]`` → real line.

    RealNVP's pre-processing (Dinh et al. 2016, arXiv:1605.08803). With ``s = (1 − 2α) / K`` and
    ``p = α + s x``, the map is a bijection from the open interval ``(−α/s, (1 − α)/s)`` (where
    ``0 < p < 1``) onto ℝ; that interval is its ``domain`` (checked by :class:`~nfkit.Flow`) and it
    strictly contains the data cube ``[0, K]``, whose ends map to the finite ``logit(α)`` and
    ``logit(1 − α)``. A flow with a normal base therefore puts a little mass outside
    ``[0, K]`` (``Φ(logit α)`` per side and coordinate: 0.16% for ``α = 0.05``); clamp samples to
    ``[0, K)`` before flooring them to pixels. Bits/dim stay a valid upper bound on the discrete
    code length (the induced pixel model is sub-normalized).

    Log-det: ``ladj = Σ [log s − log p − log(1 − p)]`` over the event.

    Computed from the distances to the domain's ends (``p = s (x − x₀)``, ``1 − p = s (x₁ − x)``;
    :func:`~nfkit.transforms.functional.interval_logit`), so it is finite anywhere inside.

    Inverse: ``x = (σ(z) − α) / s`` (closed form, exact to rounding, kept at least one ulp
    inside the domain, where rounding would land on an end), with
    ``ladj = Σ [log σ(z) + log(1 − σ(z)) − log s]``.

    Args:
        levels: ``K``, the number of quantization levels (pixels take 0..K−1; ``x + u`` lies in
            ``[0, K]`` after uniform dequantization, see :func:`dequantize`).
        alpha: ``α`` in ``(0, 0.5)``.
        event_dim: 3 for images ``(*, C, H, W)``, 1 for flattened vectors ``(*, D)``.

    Shapes:
        x: ``(*batch, *event)`` → z: same, ladj: ``(*batch,)``.

    Example:
        >>> import torch
        >>> t = LogitPreprocess(levels=17, alpha=0.05)
        >>> x = torch.tensor([0.0, 8.5, 17.0]).reshape(1, 1, 1, 3)
        >>> z, ladj = t(x)
        >>> z.flatten()  # logit(0.05), 0, logit(0.95)
        tensor([-2.9444,  0.0000,  2.9444])
        >>> t.domain  # the bijection's domain, which contains [0, 17]
        Interval(low=-0.9444444444444445, high=17.944444444444443, closed=False)
    """

    outline_settings = ("levels", "alpha")

    def __init__(self, levels: int = 256, alpha: float = 0.05, *, event_dim: int = 3) -> None:
        super().__init__()
        self.levels = check_positive_int("LogitPreprocess", "levels", levels)
        alpha = check_open_interval("LogitPreprocess", "alpha", alpha, 0, 0.5)
        event_dim = check_positive_int("LogitPreprocess", "event_dim", event_dim, minimum=0)
        self.alpha, self.event_dim = float(alpha), event_dim
        scale = (1 - 2 * self.alpha) / self.levels
        self.domain = Interval(-self.alpha / scale, (1 - self.alpha) / scale)
        self._scale, self._log_scale = scale, math.log(scale)

    def _ends(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The domain's ends in ``like``'s dtype and ``log`` of its width, ``-log s``."""
        low, high = self.domain.low, self.domain.high
        return like.new_tensor(low), like.new_tensor(high), like.new_tensor(-self._log_scale)

    def _check_rank(self, x: Tensor, name: str) -> None:
        if x.dim() < self.event_dim:  # (the log-det would be summed over too few dims)
            raise ValueError(
                f"LogitPreprocess: {name} needs {self.event_dim} event dims (event_dim), got "
                f"shape {shape_str(x.shape)}"
            )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_rank(x, "x")
        # p = α + s x = s (x - x₀) and 1 - p = s (x₁ - x) for the domain (x₀, x₁): from the
        # distances to its ends, finite anywhere inside
        z, ladj = interval_logit(x, *self._ends(x))
        return z, sum_event(ladj, self.event_dim)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_rank(z, "z")
        x, ladj = interval_sigmoid(z, *self._ends(z))  # (one ulp inside the domain at least)
        return x, sum_event(ladj, self.event_dim)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, alpha={self.alpha:g}"


def dequantize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantization ``x + u``, ``u ~ U[0, 1)`` per coordinate (data side, not a Transform).

    Turns integer pixels ``0..K−1`` into continuous values in ``[0, K)`` (``[0, K]`` after
    rounding: ``255 + u`` may round to 256 in float32, inside the domain of
    :class:`LogitPreprocess`, not of a flow on the open ``(0, 1)`` after scaling by ``1/K``,
    which :func:`~nfkit.metrics.bits_per_dim` keeps one step inside); a density ``p`` on
    them bounds the discrete likelihood: ``log P(x) ≥ E_u log p(x + u)`` (Theis et al. 2016,
    arXiv:1511.01844). Integer tensors are converted to the default float dtype.
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    # drawn where the generator lives (a CPU generator cannot draw on a GPU), then moved
    at = x.device if generator is None else generator.device
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=at)
    return x + u.to(x.device)
