"""Plain conditioners: :class:`MLP`, :class:`Parameters`, and the one context helper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nfkit._checks import check_hidden, check_positive_int
from nfkit._shapes import broadcast_shapes
from nfkit.nn.packed import PackedLayers

__all__ = ["MLP", "Parameters", "broadcast_cat"]


def broadcast_cat(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate ``x (*a, D)`` and ``context (*b, C)`` on the last dim, broadcasting batch dims."""
    if context is None:
        return x
    batch = broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return torch.cat(
        [x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])], -1
    )


class MLP(PackedLayers):
    r"""Multi-layer perceptron ``in_features → hidden[0] → … → out_features``.

    Its weights and biases share one flat parameter (see :class:`~nfkit.nn.PackedLayers`).

    Args:
        in_features: Input size (the context is concatenated to the input by the caller).
        out_features: Output size.
        hidden: Widths of the hidden layers.
        activation: Activation module class.
        zero_init: Zero the last layer, so a conditioner starts at the identity transform.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_init: bool = True,
    ) -> None:
        in_features = check_positive_int("MLP", "in_features", in_features)
        out_features = check_positive_int("MLP", "out_features", out_features)
        widths = [in_features, *check_hidden("MLP", hidden), out_features]
        shapes = list(zip(widths[1:], widths[:-1]))
        zero = [False] * (len(shapes) - 1) + [zero_init]
        super().__init__(shapes, zero=zero, activation=activation)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        """``(*batch, in_features)`` → ``(*batch, out_features)``."""
        return self.chain(x, self.layers())


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
        self.num, self.context = num, context
        init = torch.zeros(num) if init is None else init.reshape(num).clone()
        if context > 0:
            self.net = MLP(context, num, hidden)
            with torch.no_grad():
                self.net.parameter_views()[-1][1].copy_(init)
        else:
            self.value = nn.Parameter(init)

    def forward(self, context: Tensor | None = None) -> Tensor:
        if self.context > 0:
            if context is None:
                raise ValueError("Parameters: this layer is conditional and needs a context")
            return self.net(context)
        return self.value
