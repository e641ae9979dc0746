r"""Convolutional conditioners for image couplings: :class:`ConvNet` and :class:`ConvResNet`.

Both map ``(x_a, context)`` with ``x_a`` of shape ``(*batch, C_in, H, W)`` and an optional context
vector ``(*batch, C_ctx)`` to ``(*batch, C_out, H, W)``, the shape a
:class:`~nfkit.transforms.Coupling` with ``dim=-3`` expects from its conditioner. The context joins
the input as ``C_ctx`` extra channels, constant over the pixels (:func:`broadcast_cat_channels`).
The output layer is zero-initialized, so a coupling built on either network starts at the
identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nfkit._checks import (
    as_int,
    check_hidden,
    check_positive_int,
    require_context,
    shape_str,
    shown,
)
from nfkit._shapes import context_batch

__all__ = ["ConvNet", "ConvResNet", "broadcast_cat_channels"]


def broadcast_cat_channels(x: Tensor, context: Tensor | None) -> Tensor:
    """Append ``context (*b, K)`` to ``x (*a, C, H, W)`` as ``K`` constant channels.

    Batch dims broadcast, so a context of shape ``(K,)`` or ``(*batch, K)`` both work; the result
    has shape ``(*broadcast(a, b), C + K, H, W)``.
    """
    if context is None:
        return x
    batch = context_batch(x.shape[:-3], context.shape[:-1])
    h, w = x.shape[-2:]
    planes = context[..., None, None].expand(*batch, context.shape[-1], h, w)
    return torch.cat([x.expand(*batch, *x.shape[-3:]), planes], dim=-3)


def _check_kernel(where: str, kernel_size: object) -> int:
    """A positive odd int ("same" padding keeps H × W only for odd kernels)."""
    k = as_int(kernel_size)
    if k is None or k < 1 or k % 2 == 0:
        raise ValueError(
            f"{where}: kernel_size must be a positive odd int, got {shown(kernel_size)}"
        )
    return k


def _conv(a: int, b: int, kernel: int) -> nn.Conv2d:
    # "Same" padding keeps H x W, so any image size (even 1 x 1) works.
    return nn.Conv2d(a, b, kernel, padding=kernel // 2)


class _ImageNet(nn.Module):
    """Shared plumbing: validate the input, add context channels, fold batch dims into one."""

    def __init__(self, where: str, in_channels: int, out_channels: int, context: int) -> None:
        super().__init__()
        self.in_channels = check_positive_int(where, "in_channels", in_channels)
        self.out_channels = check_positive_int(where, "out_channels", out_channels)
        self.context = check_positive_int(where, "context", context, minimum=0)
        self._where = where

    def _body(self, h: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.dim() < 3 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"{self._where}.forward: x must have shape (*, {self.in_channels}, H, W), "
                f"got {shape_str(x.shape)}"
            )
        if (context is None) != (self.context == 0):
            raise ValueError(
                f"{self._where}.forward: expected a context of last dim {self.context}"
                if self.context
                else f"{self._where}.forward: this network takes no context, but one was given"
            )
        require_context(f"{self._where}.forward", context, self.context)  # its width
        h = broadcast_cat_channels(x, context)
        batch = h.shape[:-3]
        out = self._body(h.reshape(-1, *h.shape[-3:]))
        return out.reshape(*batch, *out.shape[-3:])


class ConvNet(_ImageNet):
    r"""Glow's coupling network: conv k×k → act → (conv 1×1 → act)... → conv k×k, zero-initialized.

    With ``hidden=(h, h)`` this is the network of Kingma & Dhariwal (2018), arXiv:1807.03039
    (3×3, 1×1, 3×3 convolutions), without its ActNorm layers.

    Args:
        in_channels: Channels of ``x_a``.
        out_channels: Channels of the output (``n_b · P`` for a coupling).
        hidden: Widths of the hidden feature maps; the first and last convolutions are k×k, the
            ones in between 1×1.
        context: Size of the context vector (0: unconditional).
        kernel_size: Odd kernel size of the first and last convolutions.
        activation: Activation module class.
        zero_init: Zero the last convolution, so the output starts at 0.

    Shapes:
        x: ``(*batch, C_in, H, W)``, context ``(*batch, C_ctx)`` → ``(*batch, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: Sequence[int] = (64, 64),
        *,
        context: int = 0,
        kernel_size: int = 3,
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ) -> None:
        super().__init__("ConvNet", in_channels, out_channels, context)
        kernel_size = _check_kernel("ConvNet", kernel_size)
        widths = [in_channels + context, *check_hidden("ConvNet", hidden), out_channels]
        last = len(widths) - 2
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(activation())
            layers.append(_conv(a, b, kernel_size if i in (0, last) else 1))
        self.net = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    def _body(self, h: Tensor) -> Tensor:
        return self.net(h)


class _ResidualBlock(nn.Module):
    """``h + conv(act(conv(act(h))))``; the inner output conv starts at zero (block = identity)."""

    def __init__(self, width: int, kernel: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.net = nn.Sequential(
            activation(), _conv(width, width, kernel), activation(), _conv(width, width, kernel)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ConvResNet(_ImageNet):
    r"""Convolutional ResNet conditioner (RealNVP, Dinh et al. 2016, arXiv:1605.08803).

    ``conv k×k → blocks × [h + conv(act(conv(act(h))))] → act → conv k×k`` (zero-initialized).

    Args:
        in_channels: Channels of ``x_a``.
        out_channels: Channels of the output (``n_b · P`` for a coupling).
        hidden: Width of the residual stream.
        blocks: Number of residual blocks.
        context: Size of the context vector (0: unconditional).
        kernel_size: Odd kernel size of every convolution.
        activation: Activation module class.

    Shapes:
        x: ``(*batch, C_in, H, W)``, context ``(*batch, C_ctx)`` → ``(*batch, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        *,
        blocks: int = 2,
        context: int = 0,
        kernel_size: int = 3,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__("ConvResNet", in_channels, out_channels, context)
        hidden = check_positive_int("ConvResNet", "hidden", hidden)
        blocks = check_positive_int("ConvResNet", "blocks", blocks, minimum=0)
        kernel_size = _check_kernel("ConvResNet", kernel_size)
        self.input = _conv(in_channels + context, hidden, kernel_size)
        self.blocks = nn.Sequential(
            *(_ResidualBlock(hidden, kernel_size, activation) for _ in range(blocks))
        )
        self.act = activation()
        self.output = _conv(hidden, out_channels, kernel_size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _body(self, h: Tensor) -> Tensor:
        return self.output(self.act(self.blocks(self.input(h))))
