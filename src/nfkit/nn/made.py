r"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015, arXiv:1502.03509)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfkit._checks import check_hidden, check_positive_int
from nfkit.nn.mlp import broadcast_cat

__all__ = ["MADE", "MaskedLinear"]


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)ᵀ + b`` with a fixed binary mask ``M`` (a buffer)."""

    def __init__(self, mask: Tensor) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Autoregressive network: output ``i`` depends only on inputs of lower order, and the context.

    Computes ``θ(x, c)`` of shape ``(*batch, D, P)`` where ``θ_i`` depends on ``x_j`` with
    ``order[j] < order[i]`` (and on every context feature). One pass gives all ``D`` outputs.

    Args:
        features: ``D``.
        out_per_feature: ``P`` outputs per feature.
        context: Size of the context vector (inputs of order 0, visible to every output).
        hidden: Hidden widths.
        order: A permutation of ``0..D-1``; feature ``i`` has rank ``order[i]``. Default: identity.
        residual: Use masked residual blocks (all hidden widths equal) as in nflows' ResidualMADE.
        activation: Activation module class.

    The last layer is zero-initialized, so a flow built on MADE starts at the identity.
    ``D = 1`` is handled: the single output depends on the context only.
    """

    def __init__(
        self,
        features: int,
        out_per_feature: int,
        *,
        context: int = 0,
        hidden: Sequence[int] = (128, 128),
        order: Sequence[int] | Tensor | None = None,
        residual: bool = False,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        d = check_positive_int("MADE", "features", features)
        p = check_positive_int("MADE", "out_per_feature", out_per_feature)
        hidden = check_hidden("MADE", hidden)
        if residual and len(set(hidden)) != 1:
            raise ValueError(f"MADE: residual blocks need equal hidden widths, got {hidden}")
        rank = torch.arange(d) if order is None else torch.as_tensor(order, dtype=torch.long)
        if sorted(rank.tolist()) != list(range(d)):
            raise ValueError(
                f"MADE: order must be a permutation of 0..{d - 1}, got {rank.tolist()}"
            )
        self.features, self.out_per_feature, self.context = d, p, context
        self.residual = residual
        # Degrees: inputs 1..D (context 0); hidden in [min(1, D-1), D-1]; unit k sees degree <= k.
        deg_in = torch.cat([rank + 1, torch.zeros(context, dtype=torch.long)])
        low = min(1, d - 1)
        span = max(1, d - 1 - low + 1)
        deg_hidden = [torch.arange(h) % span + low for h in hidden]
        deg_out = (rank + 1).repeat_interleave(p)

        self.input = MaskedLinear((deg_hidden[0][:, None] >= deg_in[None, :]).float())
        self.act = activation()
        blocks: list[nn.Module] = []
        for a, b in zip(deg_hidden[:-1], deg_hidden[1:]):
            blocks.append(MaskedLinear((b[:, None] >= a[None, :]).float()))
        if residual:
            # Each block: h + W2 act(W1 act(h)), with W2 zero-initialized.
            self.hidden = nn.ModuleList(
                MaskedLinear((deg_hidden[0][:, None] >= deg_hidden[0][None, :]).float())
                for _ in range(2 * max(1, len(hidden) - 1))
            )
            for layer in list(self.hidden)[1::2]:
                nn.init.zeros_(layer.weight)
        else:
            self.hidden = nn.ModuleList(blocks)
        self.output = MaskedLinear((deg_out[:, None] > deg_hidden[-1][None, :]).float())
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.register_buffer("rank", rank)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.input(broadcast_cat(x, context) if self.context else x)
        if self.residual:
            layers = list(self.hidden)
            for w1, w2 in zip(layers[0::2], layers[1::2]):
                h = h + w2(self.act(w1(self.act(h))))
        else:
            for layer in self.hidden:
                h = layer(self.act(h))
        out = self.output(self.act(h))
        return out.unflatten(-1, (self.features, self.out_per_feature))
