r"""Coupling: one structure for NICE, RealNVP, Glow and coupling neural spline flows.

Split ``x`` along ``dim`` into an identity part ``x_a`` and a transformed part ``x_b``:
``z_a = x_a``, ``z_b = τ(x_b; θ(x_a, c))``. The Jacobian is block-triangular, so
``ladj = Σ log|τ'(x_b)|`` and the inverse is exact in one conditioner pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfkit._checks import check_negative_dim, check_positive_int, require_context, shown
from nfkit._shapes import broadcast_shapes, check_size
from nfkit.core import Transform
from nfkit.nn.mlp import MLP, Period, PeriodicEmbedding, broadcast_cat, embedded_width
from nfkit.transforms.functional import sum_event
from nfkit.transforms.transformers import Transformer, check_transformer

__all__ = ["Coupling", "MLPConditioner", "alternating_mask"]


def alternating_mask(features: int, parity: int = 0) -> Tensor:
    """Boolean mask ``[True, False, True, ...]`` (or shifted by ``parity``): True = transformed."""
    features = check_positive_int("alternating_mask", "features", features)
    parity = check_positive_int("alternating_mask", "parity", parity, minimum=0)
    return (torch.arange(features) + parity) % 2 == 0


class MLPConditioner(nn.Module):
    """``θ(x_a, c)``: an :class:`~nfkit.nn.MLP` on ``[x_a, c]`` with zero-initialized output
    (with residual blocks if ``residual``). With a ``period``, ``x_a`` are angles, read as
    ``(cos, sin)`` pairs (:func:`~nfkit.nn.periodic_embedding`; a tuple: one period per input,
    None for an ordinary number)."""

    context = 0  # (conditioners pickled before the attribute existed)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        context: int,
        hidden: Sequence[int],
        residual: bool = False,
        period: Period = None,
    ):
        super().__init__()
        context = check_positive_int("MLPConditioner", "context", context, minimum=0)
        self.embed = PeriodicEmbedding(in_features, period)  # no weights
        self.period = self.embed.period
        width = embedded_width(in_features, self.period)
        self.net = MLP(width + context, out_features, hidden, residual=residual)
        self.context = context

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        require_context("Coupling's conditioner", context, self.context)
        if self.period is not None:
            x = self.embed(x)
        # an unconditional conditioner ignores a context (one meant for a conditional base)
        return self.net(broadcast_cat(x, context) if self.context else x)


def _as_mask(mask: Tensor | Sequence[bool], features: int) -> Tensor:
    """A boolean mask from booleans or exact 0/1 entries (0.5 or 2 is no mask entry: they were
    read as True)."""
    items = mask.tolist() if isinstance(mask, Tensor) else mask
    try:
        values = [bool(v) if v in (0, 1) else None for v in items]  # True == 1, False == 0
    except TypeError:  # a string, a number, nested sequences
        values = [None]
    if isinstance(items, str) or None in values:
        raise ValueError(
            f"Coupling: mask must be a boolean ({features},) with both True and False entries, "
            f"got {shown(mask)}"
        )
    return torch.tensor(values, dtype=torch.bool)


class Coupling(Transform):
    r"""Coupling layer with any elementwise :class:`Transformer` (Dinh et al. 2014, 2016).

    Args:
        features: Size of the split dimension (``D`` for vectors, channels for images).
        transformer: ``AdditiveTransformer()`` (NICE), ``AffineTransformer()`` (RealNVP/Glow) or
            ``RQSplineTransformer()`` (coupling NSF).
        context: Context size for the default MLP conditioner.
        mask: Boolean ``(features,)``, True where coordinates are transformed; default alternating.
        conditioner: Module ``(x_a, context) -> θ`` of shape ``(*, n_b · P, *rest)``; default MLP
            (vectors, ``dim=-1``; other ``dim`` need one), whose output starts at ``transformer.initial_params()`` for every feature (a custom
            conditioner should start there too).
        hidden: Hidden widths of the default conditioner.
        residual: Residual blocks in the default conditioner (equal hidden widths; see
            :class:`~nfkit.nn.MLP`).
        dim: The dimension split by the mask, counted from the right (-1 vectors, -3 images).

    Shapes:
        x: ``(*batch, D)`` (or ``(*batch, C, H, W)`` with ``dim=-3``) → z same, ladj ``(*batch,)``.

    Example:
        >>> import torch
        >>> from nfkit.transforms import Coupling, RQSplineTransformer
        >>> _ = torch.manual_seed(0)
        >>> t = Coupling(4, RQSplineTransformer(bins=8), context=2, hidden=(32, 32))
        >>> x, c = torch.randn(10, 4), torch.randn(10, 2)
        >>> z, ladj = t(x, context=c)
        >>> z.shape, ladj.shape
        (torch.Size([10, 4]), torch.Size([10]))
        >>> torch.allclose(t.inverse(z, context=c)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        transformer: Transformer,
        *,
        context: int = 0,
        mask: Tensor | Sequence[bool] | None = None,
        conditioner: nn.Module | None = None,
        hidden: Sequence[int] = (64, 64),
        residual: bool = False,
        dim: int = -1,
    ) -> None:
        super().__init__()
        features = check_positive_int("Coupling", "features", features)
        if features < 2:  # no column would condition the others
            raise ValueError(
                "Coupling: needs features >= 2 (use Elementwise for D = 1; with a context, "
                "Elementwise(..., context=C))"
            )
        context = check_positive_int("Coupling", "context", context, minimum=0)
        check_transformer("Coupling", transformer, features)
        mask_t = alternating_mask(features) if mask is None else _as_mask(mask, features)
        if mask_t.shape != (features,) or bool(mask_t.all()) or not bool(mask_t.any()):
            raise ValueError(
                f"Coupling: mask must be a boolean ({features},) with both True and False entries"
            )
        check_negative_dim("Coupling", dim)
        self.transformer, self.dim, self.event_dim = transformer, dim, -dim
        self.domain = self.codomain = transformer.domain
        self.register_buffer("mask", mask_t)
        self._set_indices()
        n_a, n_b, p = len(self.idx_a), len(self.idx_b), transformer.num_params
        if conditioner is not None and not isinstance(conditioner, nn.Module):
            raise TypeError(
                f"Coupling: conditioner must be an nn.Module (x_a, context) -> θ, got "
                f"{shown(conditioner)}"
            )
        if conditioner is None:
            if dim != -1:
                raise ValueError(
                    f"Coupling: dim={dim} needs a conditioner (e.g. nf.nn.ConvNet for images); "
                    "the default MLP reads the last dim"
                )
            period = transformer.select(tuple(self.idx_a.tolist())).period
            conditioner = MLPConditioner(n_a, n_b * p, context, hidden, residual, period=period)
            conditioner.net.set_output_bias(self._transformer_b().initial_params())
        self.conditioner = conditioner

    def _set_indices(self) -> None:
        """The index buffers of the two parts, derived from :attr:`mask` (also after loading)."""
        idx_b = torch.nonzero(self.mask).flatten()
        idx_a = torch.nonzero(~self.mask).flatten()
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer(
            "perm_back", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False
        )
        # The transformer of the transformed columns: the transformer itself unless it differs
        # by column. One with buffers of its own (a PerColumnTransformer) is registered, so it
        # follows the layer's device; it has no state-dict entries.
        selected = self.transformer.select(tuple(idx_b.tolist()))
        if isinstance(selected, nn.Module) and selected is not self.transformer:
            self.transformer_b = selected.to(idx_b.device)
        elif "transformer_b" in self._modules:
            del self._modules["transformer_b"]
        self._selected = None if isinstance(selected, nn.Module) else selected

    def _transformer_b(self) -> Transformer:
        """The transformer of the transformed columns (see :meth:`_set_indices`)."""
        if "transformer_b" in self._modules:
            return self._modules["transformer_b"]  # type: ignore[return-value]
        return self.transformer if self._selected is None else self._selected

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._set_indices()  # the split follows the loaded mask

    def _params(self, x_a: Tensor, context: Tensor | None) -> Tensor:
        # Conditioner output (*, n_b·P, *rest) → (*, n_b, *rest, P) so that it lines up with x_b.
        theta = self.conditioner(x_a, context)
        p = self.transformer.num_params
        # (a custom conditioner's width is checked: P values for n_b columns would broadcast)
        check_size("Coupling", theta, self.dim, len(self.idx_b) * p, "the conditioner's output")
        return theta.unflatten(self.dim, (-1, p)).movedim(self.dim, -1)

    def _split(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_a, x_b, θ(x_a, c))``: the conditioning part, the transformed part, its parameters."""
        check_size("Coupling", x, self.dim, len(self.perm_back))
        x_a = x.index_select(self.dim, self.idx_a)
        return x_a, x.index_select(self.dim, self.idx_b), self._params(x_a, context)

    def _join(self, x_a: Tensor, z_b: Tensor) -> Tensor:
        """The two parts back in their places (``x_a`` broadcast to ``z_b``'s batch)."""
        e = self.event_dim
        batch = broadcast_shapes(x_a.shape[: x_a.dim() - e], z_b.shape[: z_b.dim() - e])
        x_a = x_a.expand(*batch, *x_a.shape[x_a.dim() - e :])
        return torch.cat([x_a, z_b], dim=self.dim).index_select(self.dim, self.perm_back)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b, params = self._split(x, context)
        z_b, ladj = self._transformer_b().forward(x_b, params)
        return self._join(x_a, z_b), sum_event(ladj, self.event_dim)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b, params = self._split(z, context)
        x_b, ladj = self._transformer_b().inverse(z_b, params)
        return self._join(z_a, x_b), sum_event(ladj, self.event_dim)

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        z_a, z_b, params = self._split(z, context)
        return self._join(z_a, self._transformer_b().inverse_value(z_b, params))

    def extra_repr(self) -> str:
        return f"transformer={self.transformer}, mask={self.mask.int().tolist()}"
