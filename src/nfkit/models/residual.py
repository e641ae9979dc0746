r"""Residual-flow factory: :func:`ResidualFlow` (i-ResNet / Residual Flows)."""

from __future__ import annotations

from collections.abc import Sequence

from nfkit._checks import check_hidden, check_positive_int
from nfkit.core import Compose, Flow, Transform
from nfkit.models._registry import factory, make_base
from nfkit.transforms import ActNorm
from nfkit.transforms.residual import LogDet, ResidualBlock

__all__ = ["ResidualFlow"]


@factory
def ResidualFlow(
    features: int,
    *,
    context: int = 0,
    blocks: int = 4,
    hidden: Sequence[int] = (64, 64),
    lipschitz: float = 0.9,
    logdet: LogDet = "exact",
    terms: int = 8,
    max_iter: int | None = None,
    actnorm: bool = True,
    base: str = "normal",
) -> Flow:
    """Residual flow (Behrmann et al. 2019, arXiv:1811.00995; Chen et al. 2019, arXiv:1906.02735).

    ``blocks`` :class:`~nfkit.transforms.ResidualBlock` layers, each preceded by an
    :class:`~nfkit.transforms.ActNorm` when ``actnorm`` (data-dependent init on the first
    train-mode forward). ``log_prob`` is explicit; sampling runs a fixed-point iteration per
    block. ``logdet`` picks the training estimator (``"exact"``, ``"series"``, ``"roulette"``);
    eval mode always uses the exact log-det.

    Args:
        features: ``D``.
        context: Context size.
        blocks: Number of residual blocks.
        hidden: Hidden widths of each block's ``g``.
        lipschitz: Lipschitz bound of each ``g`` (< 1).
        logdet: Log-det estimator in train mode.
        terms: Series terms (always-computed terms for the roulette estimator).
        max_iter: Cap on each block's fixed-point iterations when sampling; None: what an
            ``L``-contraction needs (it grows like ``1 / (1 - L)``; see
            :class:`~nfkit.transforms.ResidualBlock`).
        actnorm: Insert ActNorm before each block.
        base: Base distribution name.
    """
    features = check_positive_int("ResidualFlow", "features", features)
    context = check_positive_int("ResidualFlow", "context", context, minimum=0)
    blocks = check_positive_int("ResidualFlow", "blocks", blocks)
    hidden = check_hidden("ResidualFlow", hidden)
    layers: list[Transform] = []
    for _ in range(blocks):
        if actnorm:
            layers.append(ActNorm(features))
        layers.append(
            ResidualBlock(
                features,
                context=context,
                hidden=hidden,
                lipschitz=lipschitz,
                logdet=logdet,
                terms=terms,
                max_iter=max_iter,
            )
        )
    base_distribution = make_base(base, features)
    return Flow(Compose(*layers), base_distribution, context=context)
