r"""Transformers: the elementwise invertible maps shared by Elementwise, Coupling and Autoregressive.

A transformer is usually a frozen dataclass of hyperparameters (no tensors); one that needs its
own weights (UMNN's shared integrand network) is also an ``nn.Module``, and the structure that holds
it registers it as a submodule. It receives the conditioner's
*unconstrained* output ``params`` of shape ``(*, num_params)`` per element and constrains it itself;
``params = 0`` gives the identity. The structures start every element at
:meth:`Transformer.initial_params` (the bias of their conditioner's zero-initialized output layer,
or the free parameters): zeros, except for transformers whose components are interchangeable,
which start them spread apart. Both directions return the **elementwise** ``ladj``; the
structure that uses the transformer sums it over the event.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nfkit._checks import Interval, check_number, check_positive_int, real, shown
from nfkit.transforms.functional import affine, wrap
from nfkit.transforms.spline_fused import rqs_packed, rqs_packed_inverse_value

__all__ = [
    "Transformer",
    "AdditiveTransformer",
    "AffineTransformer",
    "RQSplineTransformer",
    "CircularRQSplineTransformer",
    "PerColumnTransformer",
]


class Transformer(abc.ABC):
    """Abstract elementwise monotone map ``z = τ(x; θ)`` with ``num_params`` raw parameters θ."""

    @property
    @abc.abstractmethod
    def num_params(self) -> int:
        """Unconstrained parameters per element."""

    @property
    def domain(self) -> Interval:
        """Support of each input (and output) coordinate; the structures holding the
        transformer (:class:`~nfkit.transforms.Elementwise`, ``Coupling``, ``Autoregressive``)
        take it as theirs. The real line unless overridden."""
        return real

    @property
    def period(self) -> float | tuple[float | None, ...] | None:
        """For angles, their period: the default conditioners of ``Coupling`` and
        ``Autoregressive`` then read the inputs as ``(cos, sin)`` pairs. None otherwise; a
        tuple (one entry per column, None for an ordinary number) for a
        :class:`PerColumnTransformer` that mixes angles and other quantities."""
        return None

    @property
    def columns(self) -> int | None:
        """How many columns it is built for (a :class:`PerColumnTransformer`'s assignment);
        None: any number."""
        return None

    def initial_params(self) -> Tensor:
        """The raw parameters ``(P,)`` (float64) every element starts from: the bias of the
        conditioner's zero-initialized output layer in ``Coupling`` and ``Autoregressive``, the
        free parameters of ``Elementwise``. Zeros (the identity) by default. A transformer made
        of interchangeable components (a mixture, a sum of squares) must start them apart:
        from equal components every gradient step moves them alike, and they stay one. A
        transformer that differs by column returns ``(D, P)``, one row per column."""
        return torch.zeros(self.num_params, dtype=torch.float64)

    def select(self, columns: tuple[int, ...]) -> Transformer:
        """The transformer of the columns ``columns`` (indices into the ``D`` it maps, in that
        order): itself, unless it treats columns differently (:class:`PerColumnTransformer`).
        ``Coupling`` asks for its transformed and conditioning columns, ``Autoregressive``'s
        inverse for the one column each pass settles."""
        return self

    @abc.abstractmethod
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``x (*)``, ``params (*, P)`` → ``(z, log|dz/dx|)``, both ``(*)``."""

    @abc.abstractmethod
    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``z (*)``, ``params (*, P)`` → ``(x, log|dx/dz|)``, both ``(*)``."""

    def inverse_value(self, z: Tensor, params: Tensor) -> Tensor:
        """``inverse(z, params)[0]``: overridden where the log-det costs extra work."""
        return self.inverse(z, params)[0]

    def _check_params(self, params: Tensor) -> None:
        """``params`` has ``P = num_params`` entries per element, else a one-line error (a
        shape test): a spline read its bin count off the width, so 12 parameters for 4 bins
        gave another spline, silently."""
        if params.shape[-1:] != (self.num_params,):
            raise ValueError(
                f"{type(self).__name__}: params must have last dim {self.num_params} (num_params), "
                f"got shape {tuple(params.shape)}"
            )


def check_transformer(where: str, transformer: object, features: int) -> Transformer:
    """``transformer`` if it is a :class:`Transformer` for ``features`` columns (any, or as many
    as its assignment names), else a one-line error naming ``where``."""
    if not isinstance(transformer, Transformer):
        raise TypeError(f"{where}: transformer must be a Transformer, got {shown(transformer)}")
    if transformer.columns is not None and transformer.columns != features:
        raise ValueError(
            f"{where}: the transformer is built for {transformer.columns} columns (its "
            f"assignment), but features={features}"
        )
    return transformer


@dataclass(frozen=True)
class AdditiveTransformer(Transformer):
    r"""``z = x + t`` (NICE, Dinh et al. 2014, arXiv:1410.8516). Volume preserving: ``ladj = 0``."""

    @property
    def num_params(self) -> int:
        return 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check_params(params)
        z = x + params.squeeze(-1)
        return z, torch.zeros_like(z)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check_params(params)
        x = z - params.squeeze(-1)
        return x, torch.zeros_like(x)


@dataclass(frozen=True)
class AffineTransformer(Transformer):
    r"""``z = x · exp(s) + t``, with the log-scale ``s`` bounded.

    RealNVP (Dinh et al. 2016, arXiv:1605.08803) and MAF (Papamakarios et al. 2017,
    arXiv:1705.07057). ``ladj = s``; inverse ``x = (z - t) · exp(-s)`` (exact). Raw parameters
    all zero give the identity. Under autograd either direction is one node with a hand-written
    backward (``nfkit.transforms.functional.affine``).

    Args:
        max_log_scale: The bound ``B`` on ``|s|``, which keeps training stable.
        scale: How the raw ``ŝ`` becomes ``s``.

            * ``"exp"`` (default): ``s = B tanh(ŝ / B)``, soft-clamped to ``(-B, B)``. The layer
              may contract or expand by up to ``e^B``.
            * ``"softsign"``: ``s = ŝ / (1 + |ŝ| / B)``, the same range reached algebraically
              (as zuko's monotonic affine): moderate ``ŝ`` give smaller scales and the gradient
              never vanishes. It learns faster and over-fits small data far less than ``"exp"``
              (the default of the ``MAF``, ``IAF`` and ``RealNVP`` factories).
            * ``"sigmoid"``: ``s = log σ(ŝ + 2) - log σ(2)``, floored at ``-B``. This is the
              Glow / nflows gate (Kingma & Dhariwal 2018, arXiv:1807.03039), normalized so that
              ``ŝ = 0`` is the identity. It expands by at most ``1/σ(2) ≈ 1.14`` per layer. On
              small data it over-fits much more slowly, but it learns sharp densities (thin
              manifolds) more slowly too.
    """

    max_log_scale: float = 5.0
    scale: str = "exp"

    def __post_init__(self) -> None:
        if self.scale not in ("exp", "softsign", "sigmoid"):
            raise ValueError(
                "AffineTransformer: scale must be 'exp', 'softsign' or 'sigmoid', "
                f"got {shown(self.scale)}"
            )
        check_number("AffineTransformer", "max_log_scale", self.max_log_scale, 0.0)

    @property
    def num_params(self) -> int:
        return 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check_params(params)
        z, log_scale = affine(x, params, self.scale, self.max_log_scale)
        return z, log_scale.expand(z.shape)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check_params(params)
        x, log_scale = affine(z, params, self.scale, self.max_log_scale, inverse=True)
        return x, log_scale.expand(x.shape)


@dataclass(frozen=True)
class _Spline(Transformer):
    """The settings shared by the spline transformers, checked once: ``K = bins`` bins on
    ``[-bound, bound]`` and the floors of the bin widths, heights and knot derivatives."""

    bins: int = 8
    bound: float = 5.0
    min_width: float = 1e-3
    min_height: float = 1e-3
    min_derivative: float = 1e-3

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_positive_int(where, "bins", self.bins)
        check_number(where, "bound", self.bound, 0.0)
        for name in ("min_width", "min_height", "min_derivative"):
            check_number(where, name, getattr(self, name), 0.0, inclusive=True)
        if self.min_derivative >= 1:  # raw 0 gives the derivative 1: softplus⁻¹(1 - m) is none
            raise ValueError(f"{where}: min_derivative must be < 1, got {self.min_derivative:g}")
        if self.min_width * self.bins >= 1 or self.min_height * self.bins >= 1:
            raise ValueError(
                f"{where}: min_width and min_height must be < 1/bins = {1 / self.bins:g}, got "
                f"{self.min_width:g} and {self.min_height:g}"
            )

    def _options(self, params: Tensor) -> dict[str, float]:
        """The spline's settings, once ``params`` is checked to be the packed parameters."""
        self._check_params(params)
        return self._options_unchecked()

    def _options_unchecked(self) -> dict[str, float]:
        return {
            "bound": self.bound,
            "min_width": self.min_width,
            "min_height": self.min_height,
            "min_derivative": self.min_derivative,
        }


@dataclass(frozen=True)
class RQSplineTransformer(_Spline):
    r"""Monotone rational-quadratic spline on ``[-bound, bound]`` with identity tails.

    Neural spline flows (Durkan et al. 2019, arXiv:1906.04032). ``K = bins`` bins; parameters are
    K width logits, K height logits and K - 1 interior derivatives (``3K - 1``). The inverse is
    the closed-form root of a quadratic (exact to rounding). Any finite input gives finite values
    and gradients: outside the interval the map is the identity. Evaluated by
    ``nfkit.transforms.spline_fused.rqs_packed`` (the values and gradients of the reference
    ``nfkit.transforms.functional.rqs`` with fewer ops and a hand-written backward).
    """

    @property
    def num_params(self) -> int:
        return 3 * self.bins - 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rqs_packed(x, params, inverse=False, **self._options(params))

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rqs_packed(z, params, inverse=True, **self._options(params))

    def inverse_value(self, z: Tensor, params: Tensor) -> Tensor:
        return rqs_packed_inverse_value(z, params, **self._options(params))


@dataclass(frozen=True)
class CircularRQSplineTransformer(_Spline):
    r"""Circular rational-quadratic spline: a diffeomorphism of the circle ``[-bound, bound]``
    (angles, with ``bound = π``), whose two ends are one point.

    ``z = wrap(g(x) + φ)`` (Rezende et al. 2020, "Normalizing Flows on Tori and Spheres",
    arXiv:2002.02428): ``g`` is a ``K``-bin monotone spline fixing ``±bound`` with equal
    derivatives at the two ends (C¹ across the seam), ``φ`` a rotation. Parameters: K width
    logits, K height logits, K derivatives (``δ_0 = δ_K`` and ``δ_1 … δ_{K-1}``) and ``φ``
    (``3K + 1``); all zero give the identity. ``log|dz/dx| = log g'(x)``; the inverse
    ``g⁻¹(wrap(z - φ))`` is closed-form (exact to rounding). ``g`` is evaluated by the fused
    spline (``rqs_packed(..., circular=True)``: the values and gradients of the reference
    :func:`nfkit.transforms.functional.circular_spline` with a hand-written backward). Its
    :attr:`domain` is the closed interval ``[-bound, bound]``: a flow built on it refuses
    values outside (wrap angles first, e.g. ``torch.remainder(x + π, 2π) - π``).
    """

    bound: float = math.pi

    @property
    def num_params(self) -> int:
        return 3 * self.bins + 1

    @property
    def domain(self) -> Interval:
        return Interval(-self.bound, self.bound, closed=True)

    @property
    def period(self) -> float:
        return 2 * self.bound

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """The spline's ``3K`` packed parameters and the rotation ``φ``."""
        self._check_params(params)
        spline, shift = params.split([3 * self.bins, 1], dim=-1)
        return spline, shift.squeeze(-1)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        spline, shift = self._split(params)
        y, ladj = rqs_packed(x, spline, circular=True, **self._options_unchecked())
        return wrap(y + shift, self.bound), ladj

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        spline, shift = self._split(params)
        y = wrap(z - shift, self.bound)
        return rqs_packed(y, spline, inverse=True, circular=True, **self._options_unchecked())

    def inverse_value(self, z: Tensor, params: Tensor) -> Tensor:
        spline, shift = self._split(params)
        y = wrap(z - shift, self.bound)
        return rqs_packed_inverse_value(y, spline, circular=True, **self._options_unchecked())


class PerColumnTransformer(torch.nn.Module, Transformer):
    r"""Different transformers for different columns: column ``i`` of the ``D = len(assignment)``
    is mapped by ``parts[assignment[i]]``.

    For tables that mix kinds of quantity, such as angles beside lengths: a
    :class:`CircularRQSplineTransformer` on the angles and a :class:`RQSplineTransformer` on
    the rest (``nf.models.NCSF(..., angles=...)``). ``log|dz/dx|`` and the inverse are each
    column's part's; the domain, the period (read by the conditioners) and the initial
    parameters are per column. Every column receives ``P = max_k P_k`` raw parameters and its
    part reads the first ``P_k`` (the others get no gradient). Each part sees its columns
    through one ``index_select`` (the indices are non-persistent buffers: they follow the
    module's device and stay out of its state dict). ``Coupling`` and ``Autoregressive`` ask
    for the transformer of the columns they map with :meth:`select`, which returns the one
    part itself when those columns share it. Parts are plain transformers (not modules with
    their own weights, such as UMNN's).

    Example:
        >>> import math, torch
        >>> from nfkit.transforms import (
        ...     CircularRQSplineTransformer, PerColumnTransformer, RQSplineTransformer)
        >>> t = PerColumnTransformer(
        ...     (CircularRQSplineTransformer(bins=4), RQSplineTransformer(bins=4)), (0, 1, 1))
        >>> t.num_params, t.period[0] == 2 * math.pi, t.period[1]
        (13, True, None)
        >>> z, ladj = t.forward(torch.zeros(5, 3), torch.zeros(5, 3, 13))  # zeros: identity
        >>> z.abs().max().item(), ladj.shape
        (0.0, torch.Size([5, 3]))
    """

    def __init__(self, parts: Sequence[Transformer], assignment: Sequence[int]) -> None:
        super().__init__()
        where = "PerColumnTransformer"
        for name, value in (("parts", parts), ("assignment", assignment)):
            if isinstance(value, str) or not isinstance(value, Sequence | Tensor):
                raise TypeError(f"{where}: {name} must be a sequence, got {shown(value)}")
        parts, assignment = tuple(parts), tuple(assignment)
        for part in parts:
            if isinstance(part, PerColumnTransformer) or (
                isinstance(part, Transformer) and part.domain._per_column()
            ):
                raise TypeError(f"{where}: a part must treat every column alike, got {part}")
            if not isinstance(part, Transformer) or isinstance(part, torch.nn.Module):
                raise TypeError(
                    f"{where}: parts must be Transformers without weights of their own, "
                    f"got {shown(part)}"
                )
        if not parts or not assignment:
            raise ValueError(f"{where}: needs at least one part and one column")
        if any(
            not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(parts)
            for k in assignment
        ):
            raise ValueError(
                f"{where}: assignment must give each column a part index in 0..{len(parts) - 1},"
                f" got {shown(assignment)}"
            )
        self.parts, self.assignment = parts, assignment
        #: ``(part, its columns)`` for every part that maps a column.
        self.groups = [
            (part, [i for i, j in enumerate(assignment) if j == k])
            for k, part in enumerate(parts)
            if k in assignment
        ]
        for g, (_, cols) in enumerate(self.groups):
            self.register_buffer(f"columns{g}", torch.tensor(cols), persistent=False)
        order = torch.tensor([i for _, cols in self.groups for i in cols])
        self.register_buffer("back", order.argsort(), persistent=False)

    @property
    def num_params(self) -> int:
        return max(part.num_params for part in self.parts)

    def _columns(self) -> list[Transformer]:
        return [self.parts[k] for k in self.assignment]

    @property
    def domain(self) -> Interval:
        domains = [t.domain for t in self._columns()]
        return Interval(
            tuple(float(d.low) for d in domains),  # type: ignore[arg-type]
            tuple(float(d.high) for d in domains),  # type: ignore[arg-type]
            tuple(bool(d.closed) for d in domains),
        )

    @property
    def columns(self) -> int:
        return len(self.assignment)

    @property
    def period(self) -> float | tuple[float | None, ...] | None:
        periods = tuple(t.period for t in self._columns())
        if all(p is None for p in periods):
            return None
        return periods[0] if len(set(periods)) == 1 else periods  # type: ignore[return-value]

    def initial_params(self) -> Tensor:
        rows = torch.zeros(len(self.assignment), self.num_params, dtype=torch.float64)
        for i, t in enumerate(self._columns()):
            rows[i, : t.num_params] = t.initial_params()
        return rows

    def select(self, columns: tuple[int, ...]) -> Transformer:
        """The transformer of ``columns``, reading the same ``P`` raw parameters per column:
        their one part (behind :class:`_FirstParams` when it takes fewer), or a
        ``PerColumnTransformer`` of their parts (on this one's device)."""
        assignment = tuple(self.assignment[c] for c in columns)
        if len(set(assignment)) > 1:
            return PerColumnTransformer(self.parts, assignment).to(self.back.device)
        part = self.parts[assignment[0]]
        return part if part.num_params == self.num_params else _FirstParams(part, self.num_params)

    def _map(self, method: str, x: Tensor, params: Tensor) -> tuple[Tensor, ...]:
        """Each part's ``method`` on its columns, the outputs put back in column order:
        ``(value, ladj)`` or ``(value,)``."""
        outs = []
        for g, (part, _) in enumerate(self.groups):
            idx = getattr(self, f"columns{g}")
            theta = params.index_select(-2, idx)[..., : part.num_params]
            out = getattr(part, method)(x.index_select(-1, idx), theta)
            outs.append(out if isinstance(out, tuple) else (out,))
        return tuple(torch.cat(o, -1).index_select(-1, self.back) for o in zip(*outs))

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self._map("forward", x, params)  # type: ignore[return-value]

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._map("inverse", z, params)  # type: ignore[return-value]

    def inverse_value(self, z: Tensor, params: Tensor) -> Tensor:
        return self._map("inverse_value", z, params)[0]

    def extra_repr(self) -> str:
        return f"parts={self.parts}, assignment={self.assignment}"


@dataclass(frozen=True)
class _FirstParams(Transformer):
    """``transformer`` given ``width`` raw parameters per element, of which it reads the first
    ``transformer.num_params`` (one part of a :class:`PerColumnTransformer`, selected alone)."""

    transformer: Transformer
    width: int

    @property
    def num_params(self) -> int:
        return self.width

    @property
    def domain(self) -> Interval:
        return self.transformer.domain

    @property
    def period(self) -> float | tuple[float | None, ...] | None:
        return self.transformer.period

    def initial_params(self) -> Tensor:
        out = torch.zeros(self.width, dtype=torch.float64)
        out[: self.transformer.num_params] = self.transformer.initial_params()
        return out

    def _head(self, params: Tensor) -> Tensor:
        return params[..., : self.transformer.num_params]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.transformer.forward(x, self._head(params))

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.transformer.inverse(z, self._head(params))

    def inverse_value(self, z: Tensor, params: Tensor) -> Tensor:
        return self.transformer.inverse_value(z, self._head(params))
