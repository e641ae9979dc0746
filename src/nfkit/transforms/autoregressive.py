r"""Autoregressive: one structure for MAF, IAF and autoregressive neural spline flows.

``z_i = τ(x_i; θ_i(x_{<i}, c))`` with ``θ`` from one :class:`~nfkit.nn.MADE` pass. The Jacobian is
triangular, so ``ladj = Σ_i log|τ'(x_i)|``. The forward (density) direction is one network pass;
the inverse takes ``D`` sequential passes; pass ``k`` applies the output layer to the rows of
the one feature it settles (rank ``k``) and the transformer to that column, adding its
``ladj``. IAF is ``Autoregressive(...).inv``: fast sampling, sequential density.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nfkit._checks import check_positive_int
from nfkit._shapes import check_size, context_batch
from nfkit.core import Transform
from nfkit.nn.made import MADE
from nfkit.transforms.transformers import Transformer, check_transformer

__all__ = ["Autoregressive"]


class Autoregressive(Transform):
    r"""Masked autoregressive transform (Papamakarios et al. 2017, arXiv:1705.07057).

    Args:
        features: ``D``.
        transformer: Any :class:`Transformer` (affine for MAF/IAF, spline for NSF).
        context: Context size (seen by every output of the MADE).
        order: Autoregressive order, a permutation of ``0..D-1`` (default: identity).
        hidden: MADE hidden widths; at least ``D - 1`` for every input to reach the later
            outputs (see :class:`~nfkit.nn.MADE`).
        residual: Masked residual blocks in the MADE.
        activation: Activation class of the MADE.

    Shapes:
        x: ``(*batch, D)`` → z ``(*batch, D)``, ladj ``(*batch,)``; context ``(*batch, C)``.

    Inverse: exact after ``D`` passes (each pass fixes one more coordinate in ``order``).

    Example:
        >>> import torch
        >>> from nfkit.transforms import AffineTransformer, Autoregressive
        >>> _ = torch.manual_seed(0)
        >>> maf_layer = Autoregressive(3, AffineTransformer(), hidden=(32, 32))
        >>> x = torch.randn(10, 3)
        >>> z, ladj = maf_layer(x)  # one MADE pass
        >>> ladj.shape
        torch.Size([10])
        >>> x_back, _ = maf_layer.inverse(z)  # 3 sequential passes
        >>> torch.allclose(x_back, x, atol=1e-5)
        True
        >>> iaf_layer = maf_layer.inv  # IAF: one pass to sample, D passes for the density
    """

    def __init__(
        self,
        features: int,
        transformer: Transformer,
        *,
        context: int = 0,
        order: Sequence[int] | Tensor | None = None,
        hidden: Sequence[int] = (128, 128),
        residual: bool = False,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("Autoregressive", "features", features)
        context = check_positive_int("Autoregressive", "context", context, minimum=0)
        check_transformer("Autoregressive", transformer, self.features)
        self.transformer = transformer
        self.domain = self.codomain = transformer.domain
        self.made = MADE(
            features,
            transformer.num_params,
            context=context,
            hidden=hidden,
            order=order,
            residual=residual,
            activation=activation,
            period=transformer.period,
        )
        self.made.set_output_bias(transformer.initial_params())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Autoregressive", x, -1, self.features)
        z, ladj = self.transformer.forward(x, self.made(x, context))
        return z, ladj.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self._invert(z, context, with_ladj=True)
        return x, ladj  # type: ignore[return-value]

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self._invert(z, context, with_ladj=False)[0]

    def _invert(
        self, z: Tensor, context: Tensor | None, with_ladj: bool
    ) -> tuple[Tensor, Tensor | None]:
        check_size("Autoregressive", z, -1, self.features, "z")
        batch = (
            z.shape[:-1] if context is None else context_batch(z.shape[:-1], context.shape[:-1])
        )
        d, p = self.features, self.transformer.num_params
        z = z.expand(*batch, d)
        layers = self.made.layers()  # masked once, reused by the D passes
        # Pass k settles the feature of rank k, which needs only that feature's P output rows
        # (contiguous: the rows are feature-major), so the output layer shrinks D-fold and the
        # transformer runs on one column. Rows and columns are put in pass order once.
        settles = self.made.settles
        w, b = layers[-1]
        w = w.view(d, p, -1).index_select(0, settles)
        b = b.view(d, p).index_select(0, settles)
        z_pass = z.index_select(-1, settles)
        x = torch.zeros_like(z)
        ladj = z.new_zeros(()) if with_ladj else None
        columns = [self.transformer.select((i,)) for i in self.made.settle_order]
        in_place = not torch.is_grad_enabled()  # else out of place, so autograd can follow x
        for k in range(d):
            if k == 0 and self.made.first_is_bias:  # the first pass needs no network
                theta = b[0].expand(*batch, p)
            else:
                theta = _linear_param_major(self.made.trunk(x, context, layers), w[k], b[k])
            if ladj is None:  # sampling: the value alone (a spline skips its log-det)
                x_k = columns[k].inverse_value(z_pass[..., k], theta)
            else:
                x_k, ladj_k = columns[k].inverse(z_pass[..., k], theta)
                ladj = ladj + ladj_k
            column, value = settles[k : k + 1], x_k.unsqueeze(-1)
            x = x.index_copy_(-1, column, value) if in_place else x.index_copy(-1, column, value)
        return x, ladj

    def extra_repr(self) -> str:
        return f"features={self.features}, transformer={self.transformer}"


def _linear_param_major(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``F.linear(h, w, b)`` of shape ``(*batch, P)``, stored parameter-major (each of the ``P``
    parameters contiguous over the batch): the layout the transformers read, so the spline
    needs no transposing copy.
    """
    flat = h.reshape(-1, h.shape[-1])
    return torch.addmm(b.unsqueeze(-1), w, flat.T).T.reshape(*h.shape[:-1], w.shape[0])
