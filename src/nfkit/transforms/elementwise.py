r"""Elementwise bijections: fixed maps (Sigmoid, Logit, Tanh, ...) and the learned ``Elementwise``.

Each acts coordinatewise, so the Jacobian is diagonal and ``ladj = Σ_i log|f'(x_i)|`` over the
event (``event_dim`` rightmost dims, 1 by default).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfkit._checks import (
    Interval,
    check_number,
    check_positive_int,
    positive,
    shown,
    symmetric_unit,
    unit_interval,
)
from nfkit._shapes import check_size
from nfkit.core import Transform
from nfkit.nn.mlp import Parameters
from nfkit.transforms.functional import (
    interval_logit,
    interval_sigmoid,
    sum_event,
)
from nfkit.transforms.transformers import Transformer, check_transformer

__all__ = [
    "Affine",
    "Bounded",
    "Sigmoid",
    "Logit",
    "Tanh",
    "Softplus",
    "LeakyReLU",
    "Elementwise",
]


class _Pointwise(Transform):
    """Shared plumbing for fixed elementwise maps: subclasses give the 1-D map and its log-slope."""

    def __init__(self, event_dim: int = 1) -> None:
        super().__init__()
        self.event_dim = check_positive_int(type(self).__name__, "event_dim", event_dim, minimum=0)

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        try:
            z, ladj = self._f(x)
        except RuntimeError:
            self._check_broadcast(x, "x")
            raise
        self._check_same_shape(x, z, "x")
        return z, sum_event(ladj, self.event_dim)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        try:
            x, ladj = self._f_inv(z)
        except RuntimeError:
            self._check_broadcast(z, "z")
            raise
        self._check_same_shape(z, x, "z")
        return x, sum_event(ladj, self.event_dim)

    def _check_broadcast(self, given: Tensor, name: str) -> None:
        """After a failed map: a one-line error when the per-column parameters do not broadcast
        against ``given`` (a narrower input than the layer was built for)."""
        for tensor in (*self._parameters.values(), *self._buffers.values()):
            if tensor is None:
                continue
            try:
                torch.broadcast_shapes(given.shape, tensor.shape)
            except RuntimeError:
                raise ValueError(
                    f"{type(self).__name__}: {name} has shape {tuple(given.shape)}, but its "
                    f"per-column parameters have shape {tuple(tensor.shape)}: a layer built for "
                    "another number of features"
                ) from None

    def _check_same_shape(self, given: Tensor, out: Tensor, name: str) -> None:
        """Per-column parameters (``Affine``'s, ``Bounded``'s ends) broadcast against a wider
        or narrower input would silently change the event's size: a shape comparison only."""
        if out.shape != given.shape:
            raise ValueError(
                f"{type(self).__name__}: {name} has shape {tuple(given.shape)}, but its per-column "
                f"parameters make it {tuple(out.shape)}: a layer built for another number of "
                "features"
            )


class Affine(_Pointwise):
    r"""``z = x · scale + shift`` per coordinate (fixed buffers, or trainable).

    ``ladj = Σ log|scale|``; inverse ``x = (z - shift) / scale`` (exact). Used for the
    standardization stored in a fitted model.

    Args:
        shift, scale: Finite tensors (or numbers) broadcastable to the event (``scale``
            nonzero).
        trainable: Learn ``shift`` and ``log|scale|`` (sign fixed) instead of fixing them.
        dtype: Of the buffers (or parameters). Default: the wider of the floating tensors
            given (a float64 ``shift`` stays float64), else torch's default dtype; Python
            numbers are rounded to it, so give ``dtype=torch.float64`` for a float64 flow
            built from numbers (``.double()`` afterwards widens the rounded values).
    """

    def __init__(
        self,
        shift: Tensor | float = 0.0,
        scale: Tensor | float = 1.0,
        *,
        trainable: bool = False,
        event_dim: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(event_dim)
        if dtype is None:
            floats = [
                v.dtype for v in (shift, scale) if isinstance(v, Tensor) and v.is_floating_point()
            ]
            dtype = functools.reduce(torch.promote_types, floats) if floats else None
        dtype = dtype or torch.get_default_dtype()
        shift_t = torch.as_tensor(shift, dtype=dtype).clone()
        scale_t = torch.as_tensor(scale, dtype=dtype).clone()
        if not bool(torch.isfinite(shift_t).all()):
            raise ValueError("Affine: shift must be finite")
        if not bool(torch.isfinite(scale_t).all()) or bool((scale_t == 0).any()):
            raise ValueError("Affine: scale must be finite and nonzero")
        self.register_buffer("sign", torch.sign(scale_t))
        if trainable:
            self.shift = nn.Parameter(shift_t)
            self.log_abs_scale = nn.Parameter(scale_t.abs().log())
        else:
            self.register_buffer("shift", shift_t)
            self.register_buffer("log_abs_scale", scale_t.abs().log())

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x * (self.sign * torch.exp(self.log_abs_scale)) + self.shift
        return z, self.log_abs_scale.expand(z.shape)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = (z - self.shift) * (self.sign * torch.exp(-self.log_abs_scale))
        return x, (-self.log_abs_scale).expand(x.shape)


class Bounded(_Pointwise):
    r"""Columns with bounded or half-bounded supports mapped onto the real line, one per column.

    For column ``i`` with support ``(l_i, h_i)`` (``±inf`` for an open end):

    - both ends finite: ``z = logit(u)``, ``u = (x - l)/(h - l)``;
      ``log|dz/dx| = -log(h - l) - log u - log(1 - u)``, computed from the distances to the
      ends (:func:`~nfkit.transforms.functional.interval_logit`), finite up to one ulp from
      either end;
    - lower end only: ``z = log(x - l)``, ``log|dz/dx| = -log(x - l)``;
    - upper end only: ``z = -log(h - x)``, ``log|dz/dx| = -log(h - x)``;
    - neither: ``z = x``.

    The inverse is closed-form (``l + (h - l) σ(z)``, ``l + e^z``, ``h - e^{-z}``, ``z``), kept
    at least one ulp inside each finite end (where rounding would land on the end). Its
    :attr:`domain` is the per-column interval, so a :class:`~nfkit.Flow` starting with it
    refuses values outside a column's support, naming the column. Put in front of a flow (as
    :func:`nfkit.models.standardize` does with ``bounds=``), it makes the density zero outside
    the supports: positive quantities (prices, durations), fractions.

    Args:
        low, high: ``(D,)`` ends of each column's support (``-inf``/``inf`` for none).
        dtype: Of the buffers holding the ends (default: torch's default dtype). Give
            ``torch.float64`` for a flow that computes in float64: ``.double()`` after
            building in float32 keeps the float32-rounded ends.
    """

    def __init__(
        self, low: Sequence[float], high: Sequence[float], *, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(event_dim=1)
        dtype = dtype or torch.get_default_dtype()
        try:
            low_t = torch.as_tensor(low, dtype=dtype).flatten()
            high_t = torch.as_tensor(high, dtype=dtype).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"Bounded: low and high must be numbers, got {shown(low)} and {shown(high)}"
            ) from None
        if low_t.shape != high_t.shape or low_t.numel() == 0:
            raise ValueError(
                f"Bounded: low and high need one value per column, got {shown(low)} and "
                f"{shown(high)}"
            )
        if bool(torch.isnan(low_t).any() | torch.isnan(high_t).any()) or not bool(
            (low_t < high_t).all()
        ):
            raise ValueError(
                f"Bounded: need low < high in every column, got {shown(low)}, {shown(high)}"
            )
        if bool((low_t == math.inf).any() | (high_t == -math.inf).any()):
            raise ValueError("Bounded: low cannot be +inf nor high -inf")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self.domain = Interval(tuple(low_t.tolist()), tuple(high_t.tolist()))

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """The domain's ends follow the loaded ``low``/``high`` (which the map uses): a float32
        flow's file read into a float64 rebuild has ``low = 0.10000000149...`` where the rebuild
        had ``0.1``, and a domain kept from the rebuild let the values between through to
        ``log(x - low)``: NaN. Ends the domain does not take from the buffers (an angle's range
        set by ``nf.models.standardize``) stay."""
        before = self.low.tolist(), self.high.tolist()
        super()._load_from_state_dict(*args, **kwargs)
        after = self.low.tolist(), self.high.tolist()
        columns = [self.domain.at(j) for j in range(len(after[0]))]
        lows = [a if c.low == b else c.low for c, b, a in zip(columns, before[0], after[0])]
        highs = [a if c.high == b else c.high for c, b, a in zip(columns, before[1], after[1])]
        closed = tuple(bool(c.closed) for c in columns)
        self.domain = Interval(tuple(lows), tuple(highs), closed if any(closed) else False)

    def _parts(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``has_low, has_high`` and safe ends ``l < h`` in every column, used or not: the
        finite ends, 0 for an open lower end, ``l + 1`` for an open upper one (``h - 1`` below
        a finite upper end when the lower is open); and ``log(h - l)``."""
        low, high = self.low.to(like), self.high.to(like)
        has_low, has_high = torch.isfinite(low), torch.isfinite(high)
        hi = torch.where(has_high, high, torch.where(has_low, low + 1, torch.ones_like(high)))
        lo = torch.where(has_low, low, hi - 1)
        return has_low, has_high, lo, hi, torch.log(hi - lo)

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        has_low, has_high, lo, hi, log_width = self._parts(x)
        both = has_low & has_high
        # every branch sees safe inputs where it is not selected (no inf or NaN gradients)
        inside = torch.where(both, x, (lo + hi) / 2)
        z_both, ladj_both = interval_logit(inside, lo, hi, log_width)
        log_a = torch.log(torch.where(has_low, x, hi) - lo)
        log_b = torch.log(hi - torch.where(has_high, x, lo))
        z = torch.where(
            both, z_both, torch.where(has_low, log_a, torch.where(has_high, -log_b, x))
        )
        ladj = torch.where(
            both,
            ladj_both,
            torch.where(has_low, -log_a, torch.where(has_high, -log_b, torch.zeros_like(x))),
        )
        return z, ladj

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        has_low, has_high, lo, hi, log_width = self._parts(z)
        both = has_low & has_high
        x_both, ladj_both = interval_sigmoid(z, lo, hi, log_width)
        x = torch.where(
            both,
            x_both,
            torch.where(has_low, lo + torch.exp(z), torch.where(has_high, hi - torch.exp(-z), z)),
        )
        # A value within rounding of an end lands on it (l + e^z = l once e^z < ulp(l) / 2):
        # keep it one ulp inside the open support.
        inf = torch.full_like(lo, math.inf)
        x = torch.clamp(
            x,
            torch.where(has_low, torch.nextafter(lo, inf), -inf),
            torch.where(has_high, torch.nextafter(hi, -inf), inf),
        )
        # log|dx/dz|: log(h - l) + log σ'(z); z; -z; 0
        ladj = torch.where(
            both,
            ladj_both,
            torch.where(has_low, z, torch.where(has_high, -z, torch.zeros_like(z))),
        )
        return x, ladj

    def extra_repr(self) -> str:
        return f"support={self.domain}"


class Sigmoid(_Pointwise):
    r"""``z = σ(x) = 1 / (1 + e^{-x})``: ℝ → (0, 1). ``log σ'(x) = -softplus(-x) - softplus(x)``."""

    codomain = unit_interval

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zero, one = x.new_zeros(()), x.new_ones(())
        return interval_sigmoid(x, zero, one, zero)  # (kept inside (0, 1), where σ rounds to 1)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        zero = z.new_zeros(())
        return interval_logit(z, zero, zero + 1, zero)  # log|dx/dz| = -log z - log(1 - z)


class Logit(_Pointwise):
    r"""``z = log x - log(1 - x)``: (0, 1) → ℝ, the inverse of :class:`Sigmoid`.

    ``ladj = -log x - log(1 - x)``. Inputs must lie strictly inside (0, 1) (checked by ``Flow``);
    the inverse stays at least one ulp inside (float32's ``σ(z)`` rounds to 1 from ``z ≈ 17``).
    """

    domain = unit_interval

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zero = x.new_zeros(())
        return interval_logit(x, zero, zero + 1, zero)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        zero = z.new_zeros(())
        return interval_sigmoid(z, zero, zero + 1, zero)  # (kept inside (0, 1))


class Tanh(_Pointwise):
    r"""``z = tanh x``: ℝ → (-1, 1). ``log(1 - tanh² x) = 2 (log 2 - x - softplus(-2x))`` (stable).

    ``z`` is kept at least one ulp inside (-1, 1) (``tanh`` rounds to ±1 from ``|x| ≈ 9`` in
    float32, 19 in float64), so an inverse flow's samples stay in its support."""

    codomain = symmetric_unit

    @staticmethod
    def _log_slope(x: Tensor) -> Tensor:
        return 2 * (math.log(2) - x - F.softplus(-2 * x))

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zero, one = x.new_zeros(()), x.new_ones(())
        inside = torch.nextafter(one, zero)
        return torch.tanh(x).clamp(-inside, inside), self._log_slope(x)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # log|dx/dz| = -log(1 - z²) from 1 ± z (exact near ±1); +inf at both ends (the slope
        # through atanh gave inf - inf = NaN at exactly -1)
        return torch.atanh(z), -torch.log1p(z) - torch.log1p(-z)


class Softplus(_Pointwise):
    r"""``z = log(1 + e^x)``: ℝ → (0, ∞). ``log σ(x) = -softplus(-x)``; inverse ``log(e^z - 1)``.

    ``z`` is at least the smallest positive number (``softplus`` rounds to 0 below
    ``x ≈ -104`` in float32), so an inverse flow's samples stay in its support."""

    codomain = positive

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zero = x.new_zeros(())
        return F.softplus(x).clamp_min(torch.nextafter(zero, zero + 1)), -F.softplus(-x)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z + torch.log(-torch.expm1(-z))
        return x, F.softplus(-x)


class LeakyReLU(_Pointwise):
    r"""``z = x`` for ``x ≥ 0``, ``z = a x`` otherwise (``a > 0``). ``ladj = Σ [x < 0] log a``."""

    outline_settings = ("negative_slope",)

    def __init__(self, negative_slope: float = 0.01, event_dim: int = 1) -> None:
        super().__init__(event_dim)
        self.negative_slope = check_number("LeakyReLU", "negative_slope", negative_slope, 0.0)

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        neg = x < 0
        z = torch.where(neg, x * self.negative_slope, x)
        return z, neg.to(x.dtype) * math.log(self.negative_slope)

    def _f_inv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        neg = z < 0
        x = torch.where(neg, z / self.negative_slope, z)
        return x, -neg.to(z.dtype) * math.log(self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Elementwise(Transform):
    r"""A learned coordinatewise map ``z_i = τ(x_i; θ_i)`` with any :class:`Transformer` τ.

    ``θ`` is a free ``(D, P)`` parameter, or ``θ(c)`` from an MLP on the context when
    ``context > 0``. ``ladj = Σ_i log|τ'(x_i; θ_i)|``; the inverse is the transformer's.

    Args:
        features: ``D``.
        transformer: E.g. ``RQSplineTransformer()`` for learned marginal maps.
        context: Context size (0: unconditional).
        hidden: Hidden widths of the context network.
    """

    def __init__(
        self,
        features: int,
        transformer: Transformer,
        *,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.features = check_positive_int("Elementwise", "features", features)
        check_transformer("Elementwise", transformer, self.features)
        self.transformer = transformer
        self.domain = self.codomain = transformer.domain
        init = transformer.initial_params().expand(features, -1).reshape(-1)  # (P,) or (D, P)
        self.params = Parameters(features * transformer.num_params, context, hidden, init=init)

    def _params(self, context: Tensor | None) -> Tensor:
        return self.params(context).unflatten(-1, (self.features, self.transformer.num_params))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Elementwise", x, -1, self.features)
        z, ladj = self.transformer.forward(x, self._params(context))
        return z, ladj.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Elementwise", z, -1, self.features, "z")
        x, ladj = self.transformer.inverse(z, self._params(context))
        return x, ladj.sum(-1)

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_size("Elementwise", z, -1, self.features, "z")
        return self.transformer.inverse_value(z, self._params(context))

    def extra_repr(self) -> str:
        return f"features={self.features}, transformer={self.transformer}"
