r"""Gaussianization layers (RBIG): marginal Gaussianization and rotations, fitted without gradients.

Rotation-based iterative Gaussianization (Laparra, Camps-Valls & Malo 2011; Chen & Gopinath 2000)
alternates a per-coordinate map ``x_i ↦ Φ⁻¹(F_i(x_i))`` that makes every marginal standard normal
with an orthogonal rotation. Each layer here is an ordinary :class:`~nfkit.Transform` whose state
lives in buffers of fixed size: ``fit(x)`` sets them from data (no gradients), after which the map
is fixed, exact, differentiable in ``x`` and saved by ``state_dict``. A freshly built layer is the
identity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from nfkit._checks import check_positive_int, check_tensor, resolve_seed, shown
from nfkit._shapes import check_size
from nfkit.core import Transform
from nfkit.transforms.functional import sum_event
from nfkit.transforms.transformers import RQSplineTransformer

__all__ = ["MarginalGaussianization", "Rotation"]

# The spline acts on the box [-1, 1]² after an affine map of each axis; tiny minimum bin sizes let
# it follow quantile knots closely, while the closed-form inverse stays exact.
_BOX = 1.0
_MIN = 1e-6


def _softplus_inverse(y: Tensor) -> Tensor:
    """``log(exp(y) - 1)`` for ``y > 0``, without overflow."""
    return y + torch.log(-torch.expm1(-y))


def _check_data(where: str, x: object, features: int) -> Tensor:
    x = check_tensor(where, "x", x)
    if x.dim() < 2 or x.shape[-1] != features or x.shape[:-1].numel() < 2:
        raise ValueError(
            f"{where}: x must have shape (n, {features}) with n >= 2, got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: x contains NaN or inf values; expected finite numbers")
    return x.detach().reshape(-1, features)


def _quantiles(x: Tensor, levels: Tensor) -> Tensor:
    """``torch.quantile(x, levels, dim=0)`` (its linear rule, ranks ``p (n - 1)``, in float64)
    from one sort, for any ``n``: ``torch.quantile`` refuses more than 2**24 rows. ``(K + 1, D)``."""
    ordered = x.sort(0).values
    rank = levels.double() * (x.shape[0] - 1)
    below, above = rank.floor().long(), rank.ceil().long()
    weight = (rank - below).to(x.dtype)[:, None]
    return torch.lerp(ordered[below], ordered[above], weight)


class MarginalGaussianization(Transform):
    r"""Marginal Gaussianization ``z_i = g_i(x_i) ≈ Φ⁻¹(F_i(x_i))``, a fitted monotone spline.

    ``fit(x)`` places ``bins + 1`` knots per coordinate at the empirical quantiles ``x_k`` of
    levels ``p_k`` equally spaced on ``[1/(n+1), n/(n+1)]`` (linear interpolation between order
    statistics) and sets ``g(x_k) = Φ⁻¹(p_k)``. Between knots ``g`` is the monotone
    rational-quadratic spline (:class:`~nfkit.transforms.RQSplineTransformer`) through them,
    with interior knot slopes the harmonic mean of the neighbouring secants (Fritsch–Carlson), so
    ``g`` is C¹ and strictly increasing. Beyond the outer knots ``g`` is linear with the slope of
    the outer secant ``(Φ⁻¹(p_K) - Φ⁻¹(p_0)) / (x_K - x_0)``: Gaussian tails in ``x``.

    Args:
        features: Event size D.
        bins: Number of spline bins per coordinate K. The spline's unconstrained parameters
            ``(D, 3K - 1)`` are an ``nn.Parameter`` (set by ``fit``, trainable afterwards); the
            knot ranges are buffers.

    Shapes:
        x ``(*batch, D)`` → z ``(*batch, D)``, ladj ``(*batch,)``.

    Log-det:
        ``Σ_i log g_i'(x_i)`` (closed form, from the spline).

    Inverse:
        Closed form (the spline's quadratic root, exact to rounding).

    References:
        Laparra, Camps-Valls, Malo (2011), "Iterative Gaussianization: from ICA to random
        rotations", IEEE Trans. Neural Networks 22(4), arXiv:1602.00229. Chen & Gopinath (2000),
        "Gaussianization", NeurIPS.

    Example:
        >>> layer = MarginalGaussianization(2, bins=16).fit(torch.rand(500, 2))
        >>> z, ladj = layer(torch.rand(4, 2))
        >>> z.shape, ladj.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(self, features: int, *, bins: int = 32) -> None:
        super().__init__()
        self.features = check_positive_int("MarginalGaussianization", "features", features)
        self.bins = check_positive_int("MarginalGaussianization", "bins", bins)
        self.spline = RQSplineTransformer(
            bins=bins, bound=_BOX, min_width=_MIN, min_height=_MIN, min_derivative=_MIN
        )
        # Affine maps of each axis onto the spline's box; the identity until fitted.
        self.register_buffer("x_low", torch.full((features,), -_BOX))
        self.register_buffer("x_high", torch.full((features,), _BOX))
        self.register_buffer("z_low", torch.full((features,), -_BOX))
        self.register_buffer("z_high", torch.full((features,), _BOX))
        # Spline parameters are unconstrained: fitted by ``fit``, and trainable afterwards (any
        # value is a valid monotone spline), so a fitted RBIG can also be fine-tuned by gradient.
        self.params = nn.Parameter(torch.zeros(features, self.spline.num_params))

    def _log_slope(self) -> Tensor:
        return torch.log((self.z_high - self.z_low) / (self.x_high - self.x_low))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("MarginalGaussianization", x, -1, self.features)
        u = (x - self.x_low) * (2 * _BOX / (self.x_high - self.x_low)) - _BOX
        v, ladj = self.spline.forward(u, self.params)
        z = (v + _BOX) * ((self.z_high - self.z_low) / (2 * _BOX)) + self.z_low
        return z, sum_event(ladj + self._log_slope(), 1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("MarginalGaussianization", z, -1, self.features, "z")
        v = (z - self.z_low) * (2 * _BOX / (self.z_high - self.z_low)) - _BOX
        u, ladj = self.spline.inverse(v, self.params)
        x = (u + _BOX) * ((self.x_high - self.x_low) / (2 * _BOX)) + self.x_low
        return x, sum_event(ladj - self._log_slope(), 1)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the layer (it differs from a fresh one, the identity:
        true of a fitted layer loaded from a file too)."""
        fresh = [-_BOX, _BOX, -_BOX, _BOX]
        ends = (self.x_low, self.x_high, self.z_low, self.z_high)
        return bool(self.params.detach().ne(0).any()) or any(
            bool(end.ne(value).any()) for end, value in zip(ends, fresh, strict=True)
        )

    @torch.no_grad()
    def fit(self, x: Tensor) -> MarginalGaussianization:
        """Set the knots from data ``x`` of shape ``(n, D)`` (no gradients); returns ``self``."""
        x = _check_data("MarginalGaussianization.fit", x, self.features).to(self.params)
        n, k = x.shape[0], self.bins
        levels = torch.linspace(1 / (n + 1), n / (n + 1), k + 1, dtype=x.dtype, device=x.device)
        knots = _quantiles(x, levels).T  # (D, K + 1)
        # Ties (discrete or repeated values) would give empty bins: keep the knots increasing,
        # over a span the dtype resolves (1e-12 of the values was 0 in float32: x_high = x_low,
        # and a column that became constant inside an RBIG gave NaN)
        # (per column: one floor from the largest value of every column squeezed a column of
        # small values, 0.1·N(0, 1) beside one of 5e5, into a span of 7.6 and its z into
        # [-3.09, -2.59])
        floor = max(1e-12, 64 * torch.finfo(x.dtype).eps) * (1 + knots.abs().amax(1))
        span = torch.maximum(knots[:, -1] - knots[:, 0], floor)
        knots = knots[:, :1] + torch.cummax(knots - knots[:, :1], dim=1).values
        widths = (knots.diff(dim=1) / span[:, None]).clamp_min(1e-9)
        widths = widths / widths.sum(1, keepdim=True)
        targets = math.sqrt(2) * torch.erfinv(2 * levels - 1)  # Φ⁻¹(p_k), (K + 1,)
        heights = (targets.diff() / (targets[-1] - targets[0])).expand_as(widths)
        secant = heights / widths  # slopes in the box's units
        inner = 2 * secant[:, 1:] * secant[:, :-1] / (secant[:, 1:] + secant[:, :-1])
        free = 1 - _MIN * k

        def logits(sizes: Tensor) -> Tensor:  # inverse of the spline's softmax parametrisation
            return torch.log(((sizes - _MIN) / free).clamp_min(1e-30))

        raw_inner = _softplus_inverse((inner - _MIN).clamp_min(1e-12)) - _softplus_inverse(
            torch.tensor(1 - _MIN, dtype=x.dtype)
        )
        self.params.copy_(torch.cat([logits(widths), logits(heights), raw_inner], dim=1))
        self.x_low.copy_(knots[:, 0])
        self.x_high.copy_(knots[:, 0] + span)
        self.z_low.copy_(targets[0].expand(self.features))
        self.z_high.copy_(targets[-1].expand(self.features))
        return self

    def extra_repr(self) -> str:
        return f"features={self.features}, bins={self.bins}"


class Rotation(Transform):
    r"""Orthogonal map ``z = Q x`` with ``Q`` fitted by PCA or drawn at random.

    ``fit(x)`` with ``method="pca"`` sets the rows of ``Q`` to the eigenvectors of the sample
    covariance of ``x``, in decreasing order of variance (signs fixed so each row's largest entry
    is positive); with ``method="random"`` it draws ``Q`` uniformly on O(D) up to its rows' signs
    (QR of a Gaussian matrix with sign correction, then the rows' signs fixed as for PCA: Haar
    for the axes the rows span, not for their orientation) from a generator seeded by
    ``seed``, ignoring the data. Before
    ``fit`` the layer is the identity. ``Q`` is a buffer (no gradient).

    Args:
        features: Event size D.
        method: ``"pca"`` or ``"random"``.
        seed: Seed of the random rotation.

    Shapes:
        x ``(*batch, D)`` → z ``(*batch, D)``, ladj ``(*batch,)`` (zeros).

    Log-det:
        0 (``|det Q| = 1``).

    Inverse:
        ``x = Qᵀ z`` (exact to rounding).

    References:
        Laparra, Camps-Valls, Malo (2011), arXiv:1602.00229.
    """

    def __init__(
        self, features: int, *, method: Literal["pca", "random"] = "pca", seed: int = 0
    ) -> None:
        super().__init__()
        self.features = check_positive_int("Rotation", "features", features)
        if method not in ("pca", "random"):
            raise ValueError(f"Rotation: method must be 'pca' or 'random', got {shown(method)}")
        self.method, self.seed = method, resolve_seed("Rotation", seed)
        self.register_buffer("weight", torch.eye(features))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Rotation", x, -1, self.features)
        return x @ self.weight.T, x.new_zeros(x.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Rotation", z, -1, self.features, "z")
        return z @ self.weight, z.new_zeros(z.shape[:-1])

    @torch.no_grad()
    def fit(self, x: Tensor) -> Rotation:
        """Set ``Q`` from data ``x`` of shape ``(n, D)`` (PCA) or from the seed; returns ``self``."""
        x = _check_data("Rotation.fit", x, self.features).to(self.weight)
        if self.method == "pca":
            cov = torch.cov(x.T).reshape(self.features, self.features)
            _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
            q = vectors.flip(-1).T
        else:
            g = torch.Generator().manual_seed(self.seed)
            a = torch.randn(self.features, self.features, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = (q * torch.sign(torch.diagonal(r))).T
        q = q.to(self.weight)
        rows = torch.arange(self.features, device=q.device)
        signs = torch.sign(q[rows, q.abs().argmax(-1)])
        self.weight.copy_(q * signs[:, None])
        return self

    def extra_repr(self) -> str:
        return f"features={self.features}, method={self.method!r}"
