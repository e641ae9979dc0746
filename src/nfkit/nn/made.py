r"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015, arXiv:1502.03509)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfkit._checks import as_permutation, check_hidden, check_positive_int, require_context
from nfkit._shapes import check_size
from nfkit.nn.mlp import Period, PeriodicEmbedding, angle_columns, broadcast_cat, check_period
from nfkit.nn.packed import PackedLayers

__all__ = ["MADE"]

PARAM_MAJOR_MIN_FEATURES = 8
"""From this many features, :meth:`MADE.forward` stores ``θ`` parameter-major (see there)."""


class MADE(PackedLayers):
    r"""Autoregressive network: output ``i`` depends only on inputs of lower order, and the context.

    Computes ``θ(x, c)`` of shape ``(*batch, D, P)`` where ``θ_i`` depends on ``x_j`` with
    ``order[j] < order[i]`` (and on every context feature). One pass gives all ``D`` outputs.

    Args:
        features: ``D``.
        out_per_feature: ``P`` outputs per feature.
        context: Size of the context vector (inputs of order 0, visible to every output).
        hidden: Hidden widths. Hidden units' degrees cycle over ``1 … D-1`` (as in nflows), so a
            width ``H < D - 1`` gives no unit of degree above ``H``: inputs of rank ``>= H``
            then feed no output (the later conditionals see the first ``H`` inputs only).
            Give widths of at least ``D - 1`` for every dependency to be representable.
        order: A permutation of ``0..D-1``; feature ``i`` has rank ``order[i]``. Default: identity.
        residual: Use masked residual blocks (all hidden widths equal) as in nflows' ResidualMADE.
        activation: Activation module class.
        period: Inputs are angles of this period: the network reads each as the pair
            ``(cos 2πx/period, sin 2πx/period)`` (both of the feature's rank), so ``θ`` is a
            continuous, periodic function of them (circular flows). A tuple: one period per
            input, None for an ordinary number (angles beside other quantities; see
            :func:`~nfkit.nn.periodic_embedding`). None: inputs as they are.

    From ``D = 8`` (:data:`PARAM_MAJOR_MIN_FEATURES`) the output is stored parameter-major: the
    ``(*batch, D, P)`` result is a transposed view whose ``P`` slices ``θ[..., j]`` are each
    contiguous, the layout in which a transformer reads them (the output layer's rows are
    reordered for the product; values and gradients are those of the feature-major rows).
    ``log_prob`` without autograd: digits (``D = 64``) NSF −13%, MAF −4%; synth256 MAF −5%;
    NSF training step −4%. Below ``D = 8`` the reorder costs more than it saves (``D = 2``:
    +2%), and so it does in a pass that autograd records with at most two parameters per feature
    (an affine transformer, whose one-node backward gains little from contiguous rows, while
    the reorder adds copies forward and backward): those stay feature-major (MAF training step,
    interleaved A/B on an AMD EPYC: synth8 −10%, synth16 −7.5% at hidden 64, digits −2.5%,
    synth256 +1.1%); see :meth:`parameter_major`.

    The last layer is zero-initialized, so a flow built on MADE starts at the identity. Weights,
    biases and masks are packed in one parameter and one buffer
    (:class:`~nfkit.nn.PackedLayers`).
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
        period: Period = None,
    ) -> None:
        d = check_positive_int("MADE", "features", features)
        period = check_period("MADE", period, d)
        p = check_positive_int("MADE", "out_per_feature", out_per_feature)
        hidden = check_hidden("MADE", hidden)
        if residual and len(set(hidden)) != 1:
            raise ValueError(f"MADE: residual blocks need equal hidden widths, got {hidden}")
        context = check_positive_int("MADE", "context", context, minimum=0)
        rank = torch.arange(d) if order is None else as_permutation("MADE", "order", order, d)
        masks, zero_init = _masks(rank, p, hidden, context, period, residual)

        super().__init__(
            [tuple(m.shape) for m in masks], masks=masks, zero=zero_init, activation=activation
        )
        self.features, self.out_per_feature, self.context = d, p, context
        self._hidden = hidden
        self.residual, self.period = residual, period
        self.embed = PeriodicEmbedding(d, period)  # no weights: the state dict is unchanged
        self.register_buffer("rank", rank)
        self._set_settles()
        #: No hidden unit feeds the outputs of the first feature (rank 0): their values are the
        #: output bias, whatever the input. True without a context and with ``D > 1`` (every
        #: hidden degree is then >= 1, and rank-0 outputs see only degree-0 units).
        self.first_is_bias = not context and d > 1

    def trunk(
        self,
        x: Tensor,
        context: Tensor | None = None,
        layers: Sequence[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """The activated last hidden layer ``(*batch, H)``: the input of the output layer.

        An autoregressive inverse applies the output layer itself, restricted to the rows of
        the one feature each pass settles.
        """
        layers = self.layers() if layers is None else layers
        if self.period is not None:  # (no module call otherwise: this runs D times a sample)
            x = self.embed(x)
        require_context("MADE (an autoregressive conditioner)", context, self.context)
        h = broadcast_cat(x, context) if self.context else x
        if not self.residual:
            return self.activate(self.chain(h, layers[:-1]))
        return self.residual_chain(h, layers[:-1])

    def _set_settles(self) -> None:
        #: ``argsort(rank)``: the feature of each rank, i.e. the one an autoregressive inverse
        #: settles in each pass (a buffer: follows ``.to()``; recomputed from a loaded ``rank``).
        self.register_buffer("settles", torch.argsort(self.rank), persistent=False)
        #: The same as a tuple of ints, read without a device sync.
        self.settle_order = tuple(self.settles.tolist())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        error_msgs = args[-1] if args else kwargs.get("error_msgs", [])
        d = self.features
        if sorted(self.rank.tolist()) != list(range(d)):
            error_msgs.append(f"{prefix}rank is not a permutation of 0..{d - 1}")
            return
        self._set_settles()  # the loaded order may differ
        masks, _ = _masks(self.rank.cpu(), self.out_per_feature, self._hidden, self.context,
                          self.period, self.residual)  # fmt: skip
        expected = torch.cat([t for m in masks for t in (m.flatten(), torch.ones(len(m)))])
        if not torch.equal(self.mask.detach().cpu().to(expected.dtype), expected):
            # the masks follow from the order and the settings: another one is a tampered file
            error_msgs.append(f"{prefix}mask is not the autoregressive mask of its order")

    def parameter_major(self) -> bool:
        """Whether :meth:`forward` stores ``θ`` parameter-major now: from
        :data:`PARAM_MAJOR_MIN_FEATURES` features with ``P >= 2``, except with ``P = 2`` while
        autograd records the weights (an eager training pass of an affine flow). Under
        ``torch.compile`` always from 8 features: inductor fuses the reorder, and the compiled
        synth256 MAF step is 13% faster parameter-major. Only the layout depends on it, never
        the values."""
        d, p = self.features, self.out_per_feature
        if p == 1 or d < PARAM_MAJOR_MIN_FEATURES:
            return False
        if p > 2 or torch.compiler.is_compiling():
            return True
        return not (torch.is_grad_enabled() and self.theta.requires_grad)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        layers: Sequence[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """``θ(x, c)``, shape ``(*batch, D, P)``.

        ``layers`` (from :meth:`layers`) may be passed to reuse the masked weights across
        several passes; by default they are computed here.
        """
        check_size("MADE", x, -1, self.features)  # a narrow first layer would read a slice
        layers = self.layers() if layers is None else layers
        w, b = layers[-1]
        d, p = self.features, self.out_per_feature
        if not self.parameter_major():
            return F.linear(self.trunk(x, context, layers), w, b).unflatten(-1, (d, p))
        # Parameter-major: the output rows reordered (parameter j of every feature together), so
        # a transformer's reads of one parameter (affine shift, log-scale; the spline's rows) are
        # contiguous. Same values; the result is the (D, P) transposed view.
        w = w.view(d, p, -1).transpose(0, 1).reshape(p * d, -1)
        b = b.view(d, p).t().reshape(-1)
        out = F.linear(self.trunk(x, context, layers), w, b)
        return out.unflatten(-1, (p, d)).transpose(-1, -2)


def _masks(
    rank: Tensor, p: int, hidden: Sequence[int], context: int, period: Period, residual: bool
) -> tuple[list[Tensor], list[bool]]:
    """The MADE's masks (and which layers start at zero) for the order ``rank``: determined by
    the settings, so a loaded file's mask buffer is checked against them."""
    d = len(rank)
    # Degrees: inputs 1..D (context 0); a unit of degree k sees inputs of degree <= k. Hidden
    # degrees cycle over [low, D-1]; with a context, low = 0 so that units seeing the context
    # alone feed the first output (which would otherwise be a constant).
    # An angle is read as (cos, sin): its sine is one more input of the feature's degree.
    sines = torch.tensor(angle_columns(period, d), dtype=torch.long)
    embedded = [rank + 1, (rank + 1)[sines]]
    deg_in = torch.cat([*embedded, torch.zeros(context, dtype=torch.long)])
    low = 0 if context else min(1, d - 1)
    span = max(1, d - 1 - low + 1)
    deg_hidden = [torch.arange(h) % span + low for h in hidden]
    # Output units are feature-major: unit i·P + j is parameter j of feature i, so feature i's
    # parameters are the contiguous rows i·P … i·P + P - 1 of the output layer.
    deg_out = (rank + 1).repeat_interleave(p)

    masks = [(deg_hidden[0][:, None] >= deg_in[None, :]).float()]
    zero_init = [False]
    if residual:
        # Each block: h + W2 act(W1 act(h)), with W2 zero-initialized.
        square = (deg_hidden[0][:, None] >= deg_hidden[0][None, :]).float()
        for _ in range(max(1, len(hidden) - 1)):
            masks += [square, square]
            zero_init += [False, True]
    else:
        for a, b in zip(deg_hidden[:-1], deg_hidden[1:]):
            masks.append((b[:, None] >= a[None, :]).float())
            zero_init.append(False)
    masks.append((deg_out[:, None] > deg_hidden[-1][None, :]).float())
    zero_init.append(True)

    return masks, zero_init
