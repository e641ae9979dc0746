r"""Base distributions on the latent space.

Every distribution is an ``nn.Module`` with ``event_shape``, ``log_prob(z, context=None)`` and
``rsample(shape, context=None)``; unconditional ones ignore the context. Parameters and buffers are
registered, so ``.to(device)`` and ``.double()`` carry them along.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfkit._checks import as_int, as_ints, check_positive_int, shape_str, shown
from nfkit._shapes import broadcasts_to

__all__ = [
    "BaseDistribution",
    "StandardNormal",
    "DiagNormal",
    "Uniform",
    "StudentT",
    "GaussianMixture",
    "Product",
]

_LOG_2PI = math.log(2 * math.pi)

COVARIANCES = ("diagonal", "spherical", "full", "tied")
"""The covariance types of :class:`GaussianMixture` (scikit-learn's, diagonal first)."""


def _event_shape(where: str, features: int | Sequence[int]) -> torch.Size:
    if as_int(features) is not None:
        return torch.Size((check_positive_int(where, "features", features),))
    dims = as_ints(features)
    if not dims or any(s < 1 for s in dims):
        raise ValueError(
            f"{where}: features must be a positive int or shape, got {shown(features)}"
        )
    return torch.Size(dims)


def _batch_shape(shape: int | Sequence[int]) -> Sequence[int]:
    """A sample shape as a sequence: an int ``n`` (NumPy's too) is ``(n,)``."""
    if isinstance(shape, tuple | list):  # torch.Size too: no conversion on a flow's path
        return shape
    n = as_int(shape)
    return shape if n is None else (n,)


class BaseDistribution(nn.Module):
    """Abstract base: a distribution over events of shape ``event_shape``.

    A zero-size buffer ``_anchor`` tracks the module's device and dtype. ``reparameterized``
    says whether ``rsample`` differentiates through every parameter (reverse-KL training needs
    it).
    """

    reparameterized: bool = True

    def __init__(self, features: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _event_shape(type(self).__name__, features)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def features(self) -> int:
        return math.prod(self.event_shape)

    def _like(self) -> dict:
        return {"device": self._anchor.device, "dtype": self._anchor.dtype}

    def _sum_event(self, x: Tensor) -> Tensor:
        return x.flatten(x.dim() - len(self.event_shape)).sum(-1)

    def _check_z(self, z: Tensor) -> None:
        """``z``'s trailing dims are the event shape, else a one-line error (a shape test, no
        read): called directly, a base would sum another number of coordinates under its own
        normalizer, or fail in a broadcast."""
        k = len(self.event_shape)
        if z.dim() < k or z.shape[z.dim() - k :] != self.event_shape:
            raise ValueError(
                f"{type(self).__name__}.log_prob: z must have trailing shape "
                f"{shape_str(self.event_shape)}, got shape {shape_str(z.shape)}"
            )

    def _per_feature(self, name: str, value: float | Tensor) -> Tensor:
        """``value`` as a tensor of the event shape (a number or a broadcastable tensor)."""
        where = type(self).__name__
        try:
            t = torch.as_tensor(value, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{where}: {name} must be a number or a tensor of numbers, got {shown(value)}"
            ) from None
        try:
            return t.expand(self.event_shape)
        except RuntimeError:
            raise ValueError(
                f"{where}: {name} of shape {tuple(t.shape)} does not broadcast to the event "
                f"shape {tuple(self.event_shape)}"
            ) from None

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Reparameterized draws ``(*shape, *event)`` (an int ``n``: ``(n,)``)."""
        raise NotImplementedError  # pragma: no cover

    def sample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        """Draws without gradient, ``(*shape, *event)`` (an int ``n``: ``(n,)``), as
        :meth:`rsample`: ``shape`` is the whole batch shape, so with a conditional base (a
        context ``(*c, C)``) it must include the context's batch ``c`` (as a flow passes it)."""
        with torch.no_grad():
            return self.rsample(shape, context)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


class StandardNormal(BaseDistribution):
    r"""Standard normal ``N(0, I)``: ``log p(z) = -½‖z‖² - ½ D log 2π``.

    Example:
        >>> import torch
        >>> from nfkit.distributions import StandardNormal
        >>> base = StandardNormal(2)
        >>> base.log_prob(torch.zeros(2))  # -log 2π
        tensor(-1.8379)
        >>> base.sample((5,)).shape
        torch.Size([5, 2])
    """

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        return -0.5 * self._sum_event(z * z) - 0.5 * self.features * _LOG_2PI

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        return torch.randn(*shape, *self.event_shape, **self._like())


class DiagNormal(BaseDistribution):
    r"""Diagonal normal ``N(μ, diag σ²)`` with ``σ = exp(log_scale)``; trainable by default.

    ``DiagNormal(D, trainable)`` as in the API contract; ``loc`` and ``scale`` (numbers or
    ``(D,)``) by keyword only. They are stored in torch's default dtype, as every module's
    weights: for float64 values, build under ``torch.set_default_dtype(torch.float64)`` (a
    later ``.double()`` keeps float32's digits).
    """

    def __init__(
        self,
        features: int | Sequence[int],
        trainable: bool = True,
        *,
        loc: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
    ) -> None:
        if not isinstance(trainable, bool):  # DiagNormal(2, 0.5) once meant loc=0.5
            raise TypeError(f"DiagNormal: trainable must be True or False, got {shown(trainable)}")
        super().__init__(features)
        loc_t, scale_t = self._per_feature("loc", loc), self._per_feature("scale", scale)
        if not bool((scale_t > 0).all()) or not bool(torch.isfinite(scale_t).all()):
            raise ValueError("DiagNormal: scale must be positive and finite")
        if not bool(torch.isfinite(loc_t).all()):
            raise ValueError("DiagNormal: loc must be finite")
        loc_t, log_scale = loc_t.clone(), scale_t.log().clone()
        if trainable:
            self.loc = nn.Parameter(loc_t)
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("log_scale", log_scale)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return self._sum_event(-0.5 * u * u - self.log_scale) - 0.5 * self.features * _LOG_2PI

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        eps = torch.randn(*shape, *self.event_shape, **self._like())
        return self.loc + torch.exp(self.log_scale) * eps


class Uniform(BaseDistribution):
    r"""Uniform on the box ``Π_i [low_i, high_i]``; ``log p = -Σ log(high - low)`` inside,
    ``-inf`` out. ``low`` and ``high``: numbers, or tensors broadcastable to the event shape (a
    range per feature)."""

    def __init__(
        self,
        features: int | Sequence[int],
        low: float | Tensor = -1.0,
        high: float | Tensor = 1.0,
    ) -> None:
        super().__init__(features)
        low_t, high_t = self._per_feature("low", low), self._per_feature("high", high)
        if not bool((torch.isfinite(low_t) & torch.isfinite(high_t) & (high_t > low_t)).all()):
            raise ValueError(
                f"Uniform: need finite high > low, got low={shown(low)}, high={shown(high)}"
            )
        self.register_buffer("low", low_t.clone())
        self.register_buffer("high", high_t.clone())

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        inside = self._sum_event(((z >= self.low) & (z <= self.high)).to(z.dtype))
        log_vol = torch.log(self.high - self.low).sum()
        full = torch.tensor(float(self.features), dtype=z.dtype, device=z.device)
        return torch.where(inside == full, -log_vol, torch.full_like(inside, -math.inf))

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        u = torch.rand(*shape, *self.event_shape, **self._like())
        # torch.rand gives exactly 0 about once in 2^24 float32 draws, and the product may round
        # to an end: draws are kept one ulp inside (low, high), where a map onto ℝ after it
        # (tanh⁻¹, logit) is finite (a flow sampled -inf there, with a NaN log-density)
        return (self.low + (self.high - self.low) * u).clamp(
            torch.nextafter(self.low, self.high), torch.nextafter(self.high, self.low)
        )


class Product(BaseDistribution):
    r"""Independent product of distributions over groups of columns:
    ``log p(z) = Σ_k log p_k(z[..., columns_k])``; a sample draws every part and puts its
    columns in their places.

    For flows whose coordinates have different supports: angles on a circle, with a uniform
    base, beside real numbers with a normal one (``nf.models.NCSF(..., angles=...)``). Vector
    events; every column belongs to exactly one part; the context is passed to every part.

    Example:
        >>> import math, torch
        >>> from nfkit.distributions import Product, StandardNormal, Uniform
        >>> base = Product([Uniform(1, -math.pi, math.pi), StandardNormal(2)], [[1], [0, 2]])
        >>> z = base.sample((4,))
        >>> z.shape, bool((z[:, 1].abs() <= math.pi).all()), base.log_prob(z).shape
        (torch.Size([4, 3]), True, torch.Size([4]))
    """

    def __init__(
        self, parts: Sequence[BaseDistribution], columns: Sequence[Sequence[int]]
    ) -> None:
        groups = [as_ints(c) for c in columns]
        flat = [i for g in groups for i in g]
        if len(parts) != len(groups) or not parts:
            raise ValueError(
                f"Product: needs one column group per part, got {len(parts)} parts and "
                f"{len(groups)} groups"
            )
        if sorted(flat) != list(range(len(flat))):
            raise ValueError(
                f"Product: the column groups must split 0..D-1 between them, got {shown(columns)}"
            )
        super().__init__(len(flat))
        for part, group in zip(parts, groups):
            if not isinstance(part, BaseDistribution) or tuple(part.event_shape) != (len(group),):
                raise ValueError(
                    f"Product: each part must be a distribution of event shape ({len(group)},) "
                    f"for its columns {list(group)}, got {shown(part)}"
                )
        self.parts = nn.ModuleList(parts)
        self.columns = [list(g) for g in groups]
        for k, group in enumerate(groups):
            self.register_buffer(f"_columns{k}", torch.tensor(group), persistent=False)
        self.register_buffer("_back", torch.tensor(flat).argsort(), persistent=False)

    @property  # type: ignore[override]
    def reparameterized(self) -> bool:
        """Whether every part is, now (a mixture part whose weights were frozen after)."""
        return all(p.reparameterized for p in self.parts)

    def _groups(self) -> list[tuple[BaseDistribution, Tensor]]:
        return [(part, getattr(self, f"_columns{k}")) for k, part in enumerate(self.parts)]

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        terms = [part.log_prob(z.index_select(-1, idx), context) for part, idx in self._groups()]
        return sum(terms[1:], terms[0])

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        draws = [part.rsample(shape, context) for part, _ in self._groups()]
        return torch.cat(draws, -1).index_select(-1, self._back)

    def extra_repr(self) -> str:
        return f"columns={self.columns}"


class StudentT(BaseDistribution):
    r"""Independent Student-t marginals with (trainable) degrees of freedom ``ν > 0.5``.

    ``log p(z) = Σ_i [lgamma((ν+1)/2) - lgamma(ν/2) - ½ log(νπ) - (ν+1)/2 · log(1 + z_i²/ν)]``.
    Heavy tails for heavy-tailed data (Jaini et al., 2020, "Tails of Lipschitz triangular flows").
    ``ν = softplus(raw) + 0.5``; one ν per feature.
    """

    def __init__(
        self, features: int | Sequence[int], df: float = 5.0, trainable: bool = True
    ) -> None:
        super().__init__(features)
        if not (df > 0.5 and math.isfinite(df)):
            raise ValueError(f"StudentT: df must be a finite number > 0.5, got {shown(df)}")
        y = df - 0.5  # softplus⁻¹(y) = y + log(1 - e^{-y}), finite for any y (expm1 overflowed)
        raw = torch.full(self.event_shape, y + math.log(-math.expm1(-y)))
        if trainable:
            self.raw_df = nn.Parameter(raw)
        else:
            self.register_buffer("raw_df", raw)

    @property
    def df(self) -> Tensor:
        return F.softplus(self.raw_df) + 0.5

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        nu = self.df
        # the normalizer in float64: its lgamma terms grow as (ν/2) log(ν/2) and cancel to about
        # ½ log(ν/2), which float32 lost (0.06 nats per feature at ν = 10⁶, 0.3 at 10⁷)
        n64 = nu.double()
        norm = torch.lgamma((n64 + 1) / 2) - torch.lgamma(n64 / 2) - 0.5 * torch.log(n64 * math.pi)
        return self._sum_event(norm.to(nu.dtype) - (nu + 1) / 2 * torch.log1p(z * z / nu))

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        nu = self.df.expand(*shape, *self.event_shape)
        # z = ε / sqrt(g / ν) with g ~ χ²_ν = Gamma(ν/2, 1/2); Gamma has reparameterized samples.
        g = torch.distributions.Gamma(
            nu / 2, torch.full_like(nu, 0.5), validate_args=False
        ).rsample()
        eps = torch.randn(*shape, *self.event_shape, **self._like())
        return eps * torch.rsqrt(g / nu)


class GaussianMixture(BaseDistribution):
    r"""Mixture of ``components`` Gaussians with trainable weights, means and covariances.

    ``log p(z) = logsumexp_k [log π_k + log N(z; μ_k, Σ_k)]`` with ``Σ_k = L_k L_kᵀ``
    (scikit-learn's four covariance types):

    - ``covariance="diagonal"`` (default): ``L_k = diag σ_k`` (``D`` scales per component);
    - ``"spherical"``: ``L_k = σ_k I`` (one scale per component);
    - ``"full"``: ``L_k`` lower triangular with diagonal ``σ_k`` (``D (D + 1) / 2`` per
      component); ``log N`` by one triangular solve: ``-½‖L_k⁻¹(z - μ_k)‖² - Σ log σ_k -
      (D/2) log 2π``;
    - ``"tied"``: one full ``L`` shared by every component (``D (D + 1) / 2`` in all), so
      ``L⁻¹(z - μ_k) = L⁻¹z - L⁻¹μ_k`` takes one solve for all components.

    Sampling picks a component by the Gumbel-max trick (not reparameterizable in the choice:
    ``rsample``'s gradients reach the means and covariances, not the weights) and draws
    ``μ_k + L_k ε`` within it.

    With ``context > 0`` the weights, means and covariance factors are an MLP of the context
    (hidden widths ``hidden``): a mixture density network (Bishop 1994), ``p(z | c)``. Its output
    layer starts at zero weights and the unconditional starting values as bias (equal weights,
    unit covariances, means drawn once from a seeded generator, so the components start apart).

    Shapes:
        ``log_prob``: z ``(*batch, D)``, context ``(*batch, C)`` → ``(*batch,)``;
        ``rsample(shape, context)``: ``(*shape, D)``, the context broadcast over ``shape``'s
        trailing dims (as :meth:`nfkit.Flow.sample` passes it).
    """

    outline_settings = ("covariance",)

    def __init__(
        self,
        features: int,
        components: int = 8,
        trainable: bool = True,
        *,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        covariance: str = "diagonal",
    ) -> None:
        super().__init__(features)
        components = check_positive_int("GaussianMixture", "components", components)
        self.context = check_positive_int("GaussianMixture", "context", context, minimum=0)
        if len(self.event_shape) != 1:
            raise ValueError("GaussianMixture: features must be an int (vector events)")
        if self.context and not trainable:
            raise ValueError("GaussianMixture: a conditional mixture (context > 0) is trainable")
        if covariance not in COVARIANCES:
            raise ValueError(
                f"GaussianMixture: covariance must be one of {', '.join(map(repr, COVARIANCES))}"
                f", got {shown(covariance)}"
            )
        d = self.event_shape[0]
        self.components, self.covariance = components, covariance
        own = 1 if covariance == "tied" else components  # factors: one per component, or one
        values = {
            "logits": torch.zeros(components),
            "loc": torch.randn(components, d, generator=torch.Generator().manual_seed(0)),
            "log_scale": torch.zeros(own, 1 if covariance == "spherical" else d),
        }
        if covariance in ("full", "tied"):  # each L's strictly lower triangle, row by row
            values["tril"] = torch.zeros(own, d * (d - 1) // 2)
        #: The shapes of the unconstrained values, in the order a context network outputs them.
        self.shapes = {name: tuple(value.shape) for name, value in values.items()}
        if self.context:
            from nfkit.nn.mlp import Parameters  # nfkit.nn imports the distributions' module

            init = torch.cat([v.reshape(-1) for v in values.values()])
            self.params = Parameters(init.numel(), self.context, hidden, init=init)
            return
        for name, value in values.items():
            if trainable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def reparameterized(self) -> bool:
        """Whether ``rsample``'s gradients are those of the expectation it estimates: not when
        the weights are trained (the component choice carries no gradient), so reverse-KL
        training (:func:`nfkit.fit_vi`) refuses such a mixture."""
        return not self.context and not self.logits.requires_grad

    def _mixture(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``log π (*c, K)``, ``μ (*c, K, D)``, ``log σ (*c, K, D)`` (the diagonal of each
        ``L_k``) and, for full or tied covariances, ``L (*c, K, D, D)`` (``(*c, 1, D, D)`` when
        tied; else None); ``*c`` is the context batch."""
        d = self.features
        if not self.context:
            values = {name: getattr(self, name) for name in self.shapes}
        else:
            if context is None:
                raise ValueError(
                    "GaussianMixture: this mixture is conditional and needs a context"
                )
            theta = self.params(context)
            sizes = [math.prod(shape) for shape in self.shapes.values()]
            values = {
                name: part.unflatten(-1, shape) if len(shape) > 1 else part
                for (name, shape), part in zip(self.shapes.items(), theta.split(sizes, -1))
            }
        loc, log_scale = values["loc"], values["log_scale"]
        log_weights = torch.log_softmax(values["logits"], -1)
        lower = values.get("tril")
        if lower is None:  # diagonal or spherical: the scales of every coordinate
            return log_weights, loc, log_scale.expand(loc.shape), None
        rows, cols = torch.tril_indices(d, d, -1, device=loc.device)
        flat = lower.new_zeros(*lower.shape[:-1], d * d).index_copy(-1, rows * d + cols, lower)
        factor = flat.unflatten(-1, (d, d)) + torch.diag_embed(torch.exp(log_scale))
        return log_weights, loc, log_scale.expand(loc.shape), factor

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_z(z)
        log_weights, loc, log_scale, factor = self._mixture(context)
        k, d = self.components, self.features
        if factor is not None and factor.dim() == 3:
            # Unconditional: every row a right-hand side, in the solver's (K, D, rows) layout.
            rows = z.reshape(-1, d).T.unsqueeze(0)
            if factor.shape[0] == 1:  # tied: L⁻¹(z - μ_k) = L⁻¹z - L⁻¹μ_k, one solve for all
                solved = torch.linalg.solve_triangular(factor, rows, upper=False)
                solved = solved - torch.linalg.solve_triangular(
                    factor, loc.unsqueeze(-1), upper=False
                )
            else:  # one factor per component: K solves
                solved = torch.linalg.solve_triangular(
                    factor, rows - loc.unsqueeze(-1), upper=False
                )
            squares = (solved * solved).sum(1).T.reshape(*z.shape[:-1], k)
        else:
            diff = z.unsqueeze(-2) - loc  # (*, K, D)
            if factor is None:
                u = diff * torch.exp(-log_scale)
            else:  # a factor per row (a conditional mixture)
                factor = factor.expand(*diff.shape, d)
                u = torch.linalg.solve_triangular(factor, diff.unsqueeze(-1), upper=False)
                u = u.squeeze(-1)
            squares = (u * u).sum(-1)
        comp = -0.5 * squares - log_scale.sum(-1) - 0.5 * d * _LOG_2PI
        return torch.logsumexp(comp + log_weights, dim=-1)

    def rsample(self, shape: int | Sequence[int] = (), context: Tensor | None = None) -> Tensor:
        shape = _batch_shape(shape)
        if context is not None and not broadcasts_to(context.shape[:-1], torch.Size(shape)):
            raise ValueError(
                f"GaussianMixture.rsample: shape {shape_str(shape)} must include the context's "
                f"batch shape {shape_str(context.shape[:-1])} (the whole batch of draws)"
            )
        log_weights, loc, log_scale, factor = self._mixture(context)
        k, d = self.components, self.features
        # Gumbel-max: argmax_k (log π_k + G_k) is distributed as π
        u = torch.rand(*shape, k, **self._like()).clamp_min(torch.finfo(loc.dtype).tiny)
        choice = (log_weights - torch.log(-torch.log(u))).argmax(-1)  # (*shape,)

        def pick(t: Tensor) -> Tensor:  # the chosen component's entry of t (*c, K, *rest)
            rest = t.shape[loc.dim() - 1 :]
            index = choice.reshape(*shape, 1, *([1] * len(rest))).expand(*shape, 1, *rest)
            return torch.take_along_dim(t.expand(*shape, k, *rest), index, -1 - len(rest)).squeeze(
                -1 - len(rest)
            )

        eps = torch.randn(*shape, d, **self._like())
        if factor is None:
            return pick(loc) + torch.exp(pick(log_scale)) * eps
        return pick(loc) + (pick(factor) @ eps.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        extra = f", covariance={self.covariance!r}" if self.covariance != "diagonal" else ""
        extra += f", context={self.context}" if self.context else ""
        return f"event_shape={tuple(self.event_shape)}, components={self.components}{extra}"
