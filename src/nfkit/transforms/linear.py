r"""Linear bijections ``z = W x + b`` on the last dim (or on channels, for images)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfkit._checks import (
    as_int,
    as_permutation,
    check_negative_dim,
    check_number,
    check_positive_int,
    resolve_seed,
    seeded,
    shown,
)
from nfkit._shapes import check_size
from nfkit.core import Transform
from nfkit.transforms.functional import householder_matrix, softplus_inverse

__all__ = ["Identity", "Permutation", "Reverse", "LULinear", "Householder", "InvConv1x1"]


def _zeros_ladj(x: Tensor, event_dim: int) -> Tensor:
    return x.new_zeros(x.shape[: x.dim() - event_dim])


class Identity(Transform):
    """``z = x``, log-det 0: the transform of a flow that is its base distribution alone
    (:func:`nfkit.models.GMM`), or a placeholder in a composition."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, _zeros_ladj(x, 1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z, _zeros_ladj(z, 1)


class Permutation(Transform):
    r"""``z = x[..., perm]``; volume preserving (``ladj = 0``), inverse ``x = z[..., argsort(perm)]``.

    Args:
        perm: A permutation of ``0..D-1``, or an int ``D`` for a random one drawn from ``seed``.
        dim: Dimension to permute, from the right (-1 vectors, -3 image channels).
    """

    def __init__(
        self, perm: Sequence[int] | Tensor | int, *, seed: int = 0, dim: int = -1
    ) -> None:
        super().__init__()
        if as_int(perm) is not None:
            d = check_positive_int("Permutation", "features", perm)
            perm_t = torch.randperm(d, generator=seeded("Permutation", seed))
        else:
            perm_t = as_permutation("Permutation", "perm", perm)
        check_negative_dim("Permutation", dim)
        self.dim, self.event_dim = dim, -dim
        self.register_buffer("perm", perm_t)
        self.register_buffer("perm_inv", torch.argsort(perm_t))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Permutation", x, self.dim, len(self.perm))
        return x.index_select(self.dim, self.perm), _zeros_ladj(x, self.event_dim)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Permutation", z, self.dim, len(self.perm), "z")
        return z.index_select(self.dim, self.perm_inv), _zeros_ladj(z, self.event_dim)


class Reverse(Transform):
    r"""``z = x[..., ::-1]``: reverses the order of the features (``ladj = 0``, its own inverse)."""

    features: int | None = None  # (layers pickled before the size was kept: any size)

    def __init__(self, features: int | None = None, *, dim: int = -1) -> None:
        super().__init__()
        check_negative_dim("Reverse", dim)
        self.dim, self.event_dim = dim, -dim
        # the size it was built for, checked (None: any size)
        self.features = (
            None if features is None else check_positive_int("Reverse", "features", features)
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.features is not None:
            check_size("Reverse", x, self.dim, self.features)
        return x.flip(self.dim), _zeros_ladj(x, self.event_dim)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.features is not None:
            check_size("Reverse", z, self.dim, self.features, "z")
        return z.flip(self.dim), _zeros_ladj(z, self.event_dim)


class LULinear(Transform):
    r"""``z = W x + b`` with ``W = P L U`` (Kingma & Dhariwal 2018, Glow, arXiv:1807.03039).

    ``P`` is a fixed random permutation, ``L`` unit lower-triangular, ``U`` upper-triangular with
    diagonal ``softplus(ŝ) + ε > 0``. ``ladj = Σ log u_ii`` (no determinant computed);
    inverse by two triangular solves (exact to rounding). Starts at ``W = P``.

    Args:
        features: ``D`` (channels for images with ``dim=-3``).
        dim: The mixed dimension, from the right: -1 for vectors, -3 for a 1x1 convolution on
            ``(C, H, W)`` images (``ladj`` then multiplied by ``H · W``).
    """

    def __init__(self, features: int, *, seed: int = 0, dim: int = -1, eps: float = 1e-3) -> None:
        super().__init__()
        d = check_positive_int("LULinear", "features", features)
        if dim not in (-1, -3):
            raise ValueError(
                f"LULinear: dim must be -1 (vectors) or -3 (image channels), got {shown(dim)}"
            )
        eps = check_number("LULinear", "eps", eps, 0.0, inclusive=True)
        if not eps < 1:  # the diagonal starts at 1: softplus(ŝ) = 1 - ε > 0
            raise ValueError(f"LULinear: eps must be < 1, got {shown(eps)}")
        self.features, self.dim, self.event_dim, self.eps = d, dim, -dim, eps
        perm = torch.randperm(d, generator=seeded("LULinear", seed))
        self.register_buffer("permutation", torch.eye(d)[perm])
        self.lower = nn.Parameter(torch.zeros(d, d))
        self.upper = nn.Parameter(torch.zeros(d, d))
        self.raw_diag = nn.Parameter(torch.full((d,), softplus_inverse(1 - eps)))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("tril_mask", torch.tril(torch.ones(d, d), -1))

    def _factors(self) -> tuple[Tensor, Tensor, Tensor]:
        eye = torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.tril_mask + eye
        diag = F.softplus(self.raw_diag) + self.eps
        upper = self.upper * self.tril_mask.T + torch.diag(diag)
        return lower, upper, diag

    def weight(self) -> Tensor:
        """The matrix ``W = P L U``."""
        lower, upper, _ = self._factors()
        return self.permutation @ lower @ upper

    @property
    def _where(self) -> str:
        return "LULinear" if self.dim == -1 else "InvConv1x1"

    def _scale(self, x: Tensor) -> int:
        return 1 if self.dim == -1 else x.shape[-1] * x.shape[-2]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size(self._where, x, self.dim, self.features)
        lower, upper, diag = self._factors()
        w = self.permutation @ lower @ upper
        if self.dim == -1:
            z = x @ w.T + self.bias
        else:
            z = torch.einsum("ij,...jhw->...ihw", w, x) + self.bias[:, None, None]
        ladj = torch.log(diag).sum() * self._scale(x)
        return z, ladj.expand(x.shape[: x.dim() - self.event_dim])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size(self._where, z, self.dim, self.features, "z")
        lower, upper, diag = self._factors()
        # Solve P L U x = z - b, with the feature dim moved first: (D, N).
        if self.dim == -1:
            y = (z - self.bias).movedim(-1, 0)
        else:
            y = (z - self.bias[:, None, None]).movedim(-3, 0)
        shape = y.shape
        y = self.permutation.T @ y.reshape(self.features, -1)
        y = torch.linalg.solve_triangular(lower, y, upper=False, unitriangular=True)
        y = torch.linalg.solve_triangular(upper, y, upper=True)
        x = y.reshape(shape).movedim(0, self.dim)
        ladj = -torch.log(diag).sum() * self._scale(z)
        return x, ladj.expand(z.shape[: z.dim() - self.event_dim])

    def extra_repr(self) -> str:
        return f"features={self.features}, dim={self.dim}"


class Householder(Transform):
    r"""``z = H_K ⋯ H_1 x`` with reflections ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²`` (orthogonal).

    ``ladj = 0``; inverse applies the reflections in reverse order (exact). Tomczak & Welling
    (2016), arXiv:1611.09630.

    Args:
        features: ``D``.
        reflections: Number ``K`` of reflections (default ``D``). The product has determinant
            ``(-1)^K``: ``K = D`` reaches every orthogonal matrix of that sign
            (Cartan–Dieudonné), every rotation for even ``D``; for odd ``D`` take ``D - 1`` or
            ``D + 1`` for rotations (the log-det is 0 either way).
    """

    def __init__(self, features: int, reflections: int | None = None, *, seed: int = 0) -> None:
        super().__init__()
        d = check_positive_int("Householder", "features", features)
        k = check_positive_int(
            "Householder", "reflections", d if reflections is None else reflections
        )
        g = seeded("Householder", seed)
        self.vectors = nn.Parameter(torch.randn(k, d, generator=g))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Householder", x, -1, self.vectors.shape[-1])
        return x @ householder_matrix(self.vectors).T, _zeros_ladj(x, 1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Householder", z, -1, self.vectors.shape[-1], "z")
        return z @ householder_matrix(self.vectors), _zeros_ladj(z, 1)


class InvConv1x1(Transform):
    r"""Invertible 1×1 convolution ``z[:, i, j] = W x[:, i, j] + b`` with ``W = P L U`` (Glow).

    A thin wrapper over :class:`LULinear` with ``dim=-3``: the same channel-mixing matrix at every
    pixel. ``ladj = H · W · Σ log u_ii``; inverse by two triangular solves (exact to rounding).
    Kingma & Dhariwal (2018), "Glow", arXiv:1807.03039 (LU-decomposed variant).

    Args:
        channels: ``C``.
        seed: Seed of the fixed random permutation ``P``.

    Shapes:
        x: ``(*batch, C, H, W)`` → z: same, ladj: ``(*batch,)``.
    """

    event_dim = 3

    def __init__(self, channels: int, *, seed: int = 0) -> None:
        super().__init__()
        channels = check_positive_int("InvConv1x1", "channels", channels)
        self.linear = LULinear(channels, seed=resolve_seed("InvConv1x1", seed), dim=-3)

    def weight(self) -> Tensor:
        """The ``C × C`` matrix ``W = P L U``."""
        return self.linear.weight()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.linear(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.linear.inverse(z)
