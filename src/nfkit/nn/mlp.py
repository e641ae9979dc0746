"""Plain conditioners: :class:`MLP`, :class:`Parameters`, and the input helpers (context,
angles)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfkit._checks import check_hidden, check_number, check_positive_int, require_context
from nfkit._shapes import context_batch
from nfkit.nn.packed import PackedLayers

__all__ = [
    "MLP",
    "ResNet",
    "Parameters",
    "PeriodicEmbedding",
    "broadcast_cat",
    "periodic_embedding",
]


def broadcast_cat(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate ``x (*a, D)`` and ``context (*b, C)`` on the last dim, broadcasting batch dims."""
    if context is None:
        return x
    batch = context_batch(x.shape[:-1], context.shape[:-1])
    return torch.cat(
        [x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])], -1
    )


Period = float | tuple[float | None, ...] | None
"""Which inputs are angles: a float (every input, of that period), a tuple (one entry per
input: its period, or None for an ordinary number) or None (no angle)."""


def check_period(where: str, period: object, features: int) -> Period:
    """``period`` in its plainest form: a tuple with no angle is None, one whose entries are all
    the same period is that float (the layout of an all-angle input)."""
    if period is None:
        return None
    if not isinstance(period, tuple):
        return check_number(where, "period", period, 0.0)
    if len(period) != features:
        raise ValueError(
            f"{where}: period needs one entry per input ({features}), got {len(period)}"
        )
    periods = tuple(None if p is None else check_number(where, "period", p, 0.0) for p in period)
    if all(p is None for p in periods):
        return None
    if len(set(periods)) == 1:
        return periods[0]
    return periods


def embedded_width(features: int, period: Period) -> int:
    """The width of :func:`periodic_embedding`'s output for ``features`` inputs."""
    if period is None:
        return features
    if isinstance(period, tuple):
        return features + sum(p is not None for p in period)
    return 2 * features


def angle_columns(period: Period, features: int) -> list[int]:
    """The inputs that are angles (they get a sine after the first ``features`` entries)."""
    if period is None:
        return []
    if isinstance(period, tuple):
        return [i for i, p in enumerate(period) if p is not None]
    return list(range(features))


class PeriodicEmbedding(nn.Module):
    """The module form of :func:`periodic_embedding` for ``features`` inputs: its constants
    are (non-persistent) buffers, so they follow ``.to(device)`` and a pass copies nothing from
    the host. None: the identity."""

    outline_settings = ("period",)

    def __init__(self, features: int, period: Period) -> None:
        super().__init__()
        self.period = check_period("PeriodicEmbedding", period, features)
        self.per_column = isinstance(self.period, tuple)
        if self.per_column:
            omega = [0.0 if p is None else 2 * math.pi / p for p in self.period]  # type: ignore[union-attr]
            # float64 (cast like any buffer by .float()/.to(dtype); .double() keeps the digits)
            omega_t = torch.tensor(omega, dtype=torch.float64)
            self.register_buffer("omega", omega_t, persistent=False)
            self.register_buffer("is_angle", omega_t > 0, persistent=False)
            self.register_buffer(
                "angles", torch.tensor(angle_columns(self.period, features)), persistent=False
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.period is None:
            return x
        if not self.per_column:
            angle = x * (2 * math.pi / self.period)  # type: ignore[operator]
            return torch.cat([torch.cos(angle), torch.sin(angle)], -1)
        angle = x * self.omega.to(x.dtype)
        sines = torch.sin(angle.index_select(-1, self.angles))
        return torch.cat([torch.where(self.is_angle, torch.cos(angle), x), sines], -1)


def periodic_embedding(x: Tensor, period: float | tuple[float | None, ...]) -> Tensor:
    """Angles ``x (*, D)`` as ``(cos ωx, sin ωx)`` with ``ω = 2π / period``, so a network on it
    is a continuous, periodic function of them.

    A float ``period``: every input is an angle; ``(*, 2D)``, all cosines then all sines. A
    tuple (one period per input, None for an ordinary number, see :func:`check_period`):
    ``(*, D + A)`` for ``A`` angles, where entry ``i < D`` is ``cos ωᵢxᵢ`` for an angle and
    ``xᵢ`` itself otherwise, followed by the ``A`` angles' sines. The conditioners hold a
    :class:`PeriodicEmbedding` (the same map, its constants on the module's device).
    """
    return PeriodicEmbedding(x.shape[-1], period).to(x.device)(x)


class MLP(PackedLayers):
    r"""Multi-layer perceptron ``in_features → hidden[0] → … → out_features``.

    Its weights and biases share one flat parameter (see :class:`~nfkit.nn.PackedLayers`).

    Args:
        in_features: Input size (the context is concatenated to the input by the caller).
        out_features: Output size.
        hidden: Widths of the hidden layers.
        activation: Activation module class.
        zero_init: Zero the last layer, so a conditioner starts at the identity transform.
        residual: Residual blocks instead of plain layers (all hidden widths equal, ``H``):
            ``in → H``, then ``max(1, len(hidden) - 1)`` blocks ``h + W₂ act(W₁ act(h))``
            (``W₂`` starts at zero), then ``H → out``; as :class:`~nfkit.nn.MADE` with
            ``residual=True``, unmasked. See :class:`ResNet`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
        residual: bool = False,
    ) -> None:
        in_features = check_positive_int("MLP", "in_features", in_features)
        out_features = check_positive_int("MLP", "out_features", out_features)
        widths = check_hidden("MLP", hidden)
        if residual:
            if len(set(widths)) != 1:
                raise ValueError(f"MLP: residual blocks need equal hidden widths, got {widths}")
            h, blocks = widths[0], max(1, len(widths) - 1)
            shapes = [(h, in_features), *[(h, h)] * (2 * blocks), (out_features, h)]
            zero = [False, *[False, True] * blocks, zero_init]
        else:
            sizes = [in_features, *widths, out_features]
            shapes = list(zip(sizes[1:], sizes[:-1]))
            zero = [False] * (len(shapes) - 1) + [zero_init]
        super().__init__(shapes, zero=zero, activation=activation)
        self.in_features, self.out_features, self.residual = in_features, out_features, residual

    def forward(self, x: Tensor) -> Tensor:
        """``(*batch, in_features)`` → ``(*batch, out_features)``."""
        layers = self.layers()
        if not self.residual:
            return self.chain(x, layers)
        w, b = layers[-1]
        return F.linear(self.residual_chain(x, layers[:-1]), w, b)


class ResNet(MLP):
    r"""Residual MLP ``in → H → blocks × (h + W₂ act(W₁ act(h))) → out`` (He et al. 2016), the
    conditioner of the neural spline flow paper (Durkan et al. 2019: 2 blocks).

    :class:`MLP` with ``residual=True`` and ``hidden = (H,) * (blocks + 1)``.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: ``H``, the width of every block.
        blocks: Number of residual blocks (>= 1).
        activation: Activation module class.
        zero_init: Zero the last layer (a conditioner then starts at the identity transform).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        blocks: int = 2,
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ) -> None:
        hidden = check_positive_int("ResNet", "hidden", hidden)
        blocks = check_positive_int("ResNet", "blocks", blocks)
        super().__init__(
            in_features,
            out_features,
            (hidden,) * (blocks + 1),
            activation=activation,
            zero_init=zero_init,
            residual=True,
        )


class Parameters(nn.Module):
    r"""A source of ``num`` raw transform parameters: free, or a function of the context.

    Without context (``context=0``) it holds a free vector and returns it (shape ``(num,)``).
    With context it is an :class:`MLP` ``c ↦ θ(c)`` (shape ``(*batch, num)``), the hyper-network
    of a conditional elementwise / planar / radial / Sylvester layer.
    """

    def __init__(
        self,
        num: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        init: Tensor | None = None,
    ) -> None:
        super().__init__()
        num = check_positive_int("Parameters", "num", num)
        context = check_positive_int("Parameters", "context", context, minimum=0)
        self.num, self.context = num, context
        dtype = torch.get_default_dtype()
        if init is not None and torch.as_tensor(init).numel() != num:
            raise ValueError(
                f"Parameters: init has {torch.as_tensor(init).numel()} values, expected num={num}"
            )
        init = torch.zeros(num) if init is None else init.reshape(num).to(dtype).clone()
        if context > 0:
            self.net = MLP(context, num, hidden)
            with torch.no_grad():
                self.net.parameter_views()[-1][1].copy_(init)
        else:
            self.value = nn.Parameter(init)

    def forward(self, context: Tensor | None = None) -> Tensor:
        if self.context > 0:
            require_context("Parameters", context, self.context)
            return self.net(context)
        return self.value
