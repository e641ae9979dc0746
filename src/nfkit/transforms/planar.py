r"""Planar, radial and Sylvester layers (Rezende & Mohamed 2015; van den Berg et al. 2018).

These are residual maps ``f(x) = x + g(x)`` written, as in their papers, in the direction
where they are explicit. Here ``forward`` is that explicit map; ``inverse`` is numerical (Planar,
Sylvester: bracketed Newton/bisection to 1e-12 relative in float64, 1e-6 in float32) or closed
form (Radial). For variational inference use ``layer.inv`` (``nf.models`` does this by default),
so that sampling is explicit and exact.

Every layer takes ``context``: with ``context > 0`` its parameters come from an MLP of the context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nfkit._checks import check_positive_int, seeded
from nfkit._numerics import monotone_solve
from nfkit._shapes import check_size
from nfkit.core import Transform
from nfkit.nn.mlp import Parameters
from nfkit.transforms.functional import householder_matrix

__all__ = ["Planar", "Radial", "Sylvester"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _tanh_slope(a: Tensor) -> Tensor:
    return 1 - torch.tanh(a) ** 2


class Planar(Transform):
    r"""``f(x) = x + û tanh(wᵀx + b)`` (Rezende & Mohamed 2015, arXiv:1505.05770).

    ``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(a) = softplus(a) - 1`` guarantees ``wᵀû > -1``, hence
    invertibility. Log-det: ``log(1 + tanh'(wᵀx + b) wᵀû)``. Inverse: solve the scalar monotone
    equation ``α + wᵀû tanh(α) = wᵀz + b`` on the bracket ``wᵀz + b ± |wᵀû|``, then
    ``x = z - û tanh(α)``.

    Shapes: x ``(*batch, D)`` → z ``(*batch, D)``, ladj ``(*batch,)``.
    """

    def __init__(
        self, features: int, *, context: int = 0, hidden: Sequence[int] = (64, 64), seed: int = 0
    ) -> None:
        super().__init__()
        d = self.features = check_positive_int("Planar", "features", features)
        g = seeded("Planar", seed)
        init = torch.cat(
            [torch.randn(d, generator=g) * 0.1, torch.randn(d, generator=g), torch.zeros(1)]
        )
        # u along w with wᵀu = log(e - 1): m(wᵀu) = softplus(log(e - 1)) - 1 = 0, so û = 0 and
        # the layer starts at the identity (u = 0 gave wᵀû = m(0) = log 2 - 1: a contraction by
        # up to 0.69 along w per layer, a fresh 10-layer 1-D flow's samples of std 0.03)
        w = init[d : 2 * d]
        init[:d] = math.log(math.e - 1) * w / _dot(w, w)
        self.params = Parameters(2 * d + 1, context, hidden, init=init)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.params(context)
        d = self.features
        u, w, b = p[..., :d], p[..., d : 2 * d], p[..., 2 * d]
        wu = _dot(w, u)
        one = wu.new_ones(())
        # m(wᵀu) > -1, also where softplus rounds below -1's next float (wᵀu ≲ -17 in float32):
        # the map stays invertible, its log-det finite
        wu_hat = torch.maximum(F.softplus(wu) - 1, torch.nextafter(-one, one))
        ww = _dot(w, w)
        floor = ww.clamp_min(1e-12)  # ‖w‖² ≈ 0: a shift, û a bounded correction of u
        u_hat = u + ((wu_hat - wu) / floor).unsqueeze(-1) * w
        # wᵀû: m(wᵀu), or, where the floor acts, wᵀu + (m - wᵀu) ‖w‖² / 1e-12
        wu_hat = torch.where(ww < 1e-12, wu + (wu_hat - wu) * (ww / floor), wu_hat)
        return u_hat, w, b, wu_hat

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Planar", x, -1, self.features)
        u, w, b, wu = self._unpack(context)
        a = _dot(w, x) + b
        z = x + u * torch.tanh(a).unsqueeze(-1)
        return z, torch.log1p(_tanh_slope(a) * wu)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Planar", z, -1, self.features, "z")
        u, w, b, wu = self._unpack(context)
        c = _dot(w, z) + b
        radius = wu.abs()
        alpha = monotone_solve(
            lambda a: a + wu * torch.tanh(a),
            c,
            c - radius - 1e-3,
            c + radius + 1e-3,
            df=lambda a: 1 + wu * _tanh_slope(a),
        )
        x = z - u * torch.tanh(alpha).unsqueeze(-1)
        return x, -torch.log1p(_tanh_slope(alpha) * wu)

    def extra_repr(self) -> str:
        return f"features={self.features}"


class Radial(Transform):
    r"""``f(x) = x + β h(r) (x - x₀)``, ``h(r) = 1 / (α + r)``, ``r = ‖x - x₀‖`` (Rezende & Mohamed 2015).

    ``α = softplus(α̂) > 0`` and ``β = -α + softplus(β̂) > -α`` make it invertible. Log-det:
    ``(D - 1) log(1 + β h) + log(1 + β h - β h² r)``. Inverse in closed form: ``r`` is the positive
    root of ``r² + (α + β - ρ) r - ρ α = 0`` with ``ρ = ‖z - x₀‖``, then
    ``x = x₀ + (z - x₀) / (1 + β h(r))``.
    """

    def __init__(
        self, features: int, *, context: int = 0, hidden: Sequence[int] = (64, 64), seed: int = 0
    ) -> None:
        super().__init__()
        d = self.features = check_positive_int("Radial", "features", features)
        g = seeded("Radial", seed)
        # x0 random; α̂ = β̂ = 0 gives β = 0: the layer starts at the identity.
        init = torch.cat([torch.randn(d, generator=g), torch.zeros(2)])
        self.params = Parameters(d + 2, context, hidden, init=init)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context)
        d = self.features
        alpha = F.softplus(p[..., d])
        beta = -alpha + F.softplus(p[..., d + 1])
        return p[..., :d], alpha, beta

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        # log(1 + βh)^(D-1) + log(1 + βh + βh' r), h' = -h²: the second is 1 + βh(1 - hr) =
        # 1 + αβh², which stays finite where r overflows to inf (βh - βh²r was 0 - 0·inf, NaN)
        h = 1 / (alpha + r)
        return (self.features - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Radial", x, -1, self.features)
        x0, alpha, beta = self._unpack(context)
        diff = x - x0
        r = diff.norm(dim=-1)
        z = x + (beta / (alpha + r)).unsqueeze(-1) * diff
        return z, self._ladj(r, alpha, beta)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Radial", z, -1, self.features, "z")
        x0, alpha, beta = self._unpack(context)
        diff = z - x0
        rho = diff.norm(dim=-1)
        a = alpha + beta - rho
        sq = torch.sqrt(a * a + 4 * rho * alpha)
        # Two algebraically equal forms of the positive root, each free of cancellation on its side.
        r = torch.where(a > 0, 2 * rho * alpha / (a + sq).clamp_min(1e-30), (sq - a) / 2)
        x = x0 + diff / (1 + beta / (alpha + r)).unsqueeze(-1)
        return x, -self._ladj(r, alpha, beta)

    def extra_repr(self) -> str:
        return f"features={self.features}"


class Sylvester(Transform):
    r"""``f(x) = x + Q R tanh(R̃ Qᵀ x + b)`` (van den Berg et al. 2018, arXiv:1803.05649).

    ``Q`` (``D × M``) has orthonormal columns, the first ``M`` of a product of Householder
    reflections; ``R``, ``R̃`` are ``M × M`` upper-triangular with diagonals ``tanh(·)`` so that
    ``r_ii r̃_ii > -1`` (invertibility). Log-det (Sylvester's identity):
    ``Σ_i log(1 + tanh'(u_i) r̃_ii r_ii)`` with ``u = R̃ Qᵀ x + b``. Inverse: the component of ``x``
    orthogonal to ``Q`` is that of ``z``; ``v = Qᵀ x`` solves a triangular system of scalar
    monotone equations, by back-substitution (``M`` bracketed root finds, 1e-12 in float64).

    Args:
        features: ``D``.
        rank: ``M ≤ D`` (default ``D``).
        reflections: Householder reflections building ``Q`` (default ``D``).
    """

    def __init__(
        self,
        features: int,
        *,
        rank: int | None = None,
        reflections: int | None = None,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        seed: int = 0,
    ) -> None:
        super().__init__()
        d = self.features = check_positive_int("Sylvester", "features", features)
        m = self.rank = check_positive_int("Sylvester", "rank", d if rank is None else rank)
        k = self.reflections = check_positive_int(
            "Sylvester", "reflections", d if reflections is None else reflections
        )
        if m > d:
            raise ValueError(f"Sylvester: rank must be <= features ({d}), got {m}")
        g = seeded("Sylvester", seed)
        # R = 0 starts the layer at the identity; R̃'s raw diagonal at 1 (r̃_ii = tanh 1) keeps
        # u = R̃ Qᵀx + b away from 0, without which every gradient would vanish (R, R̃, b all 0
        # is a saddle: each partial derivative has a zero factor).
        rt_diagonal = torch.eye(m).flatten()
        init = torch.cat(
            [torch.randn(k * d, generator=g), torch.zeros(m * m), rt_diagonal, torch.zeros(m)]
        )
        self.params = Parameters(k * d + 2 * m * m + m, context, hidden, init=init)
        self.register_buffer("triu", torch.triu(torch.ones(m, m), 1))

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.params(context)
        d, m, k = self.features, self.rank, self.reflections
        q = householder_matrix(p[..., : k * d].unflatten(-1, (k, d)))[..., :m]
        rest = p[..., k * d :]
        r_raw = rest[..., : m * m].unflatten(-1, (m, m))
        rt_raw = rest[..., m * m : 2 * m * m].unflatten(-1, (m, m))
        b = rest[..., 2 * m * m :]
        r = r_raw * self.triu + torch.diag_embed(
            torch.tanh(torch.diagonal(r_raw, dim1=-2, dim2=-1))
        )
        rt = rt_raw * self.triu + torch.diag_embed(
            torch.tanh(torch.diagonal(rt_raw, dim1=-2, dim2=-1))
        )
        return q, r, rt, b

    @staticmethod
    def _mv(a: Tensor, v: Tensor) -> Tensor:
        return (a @ v.unsqueeze(-1)).squeeze(-1)

    def _ladj(self, u: Tensor, r: Tensor, rt: Tensor) -> Tensor:
        diag = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(rt, dim1=-2, dim2=-1)
        return torch.log1p(_tanh_slope(u) * diag).sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Sylvester", x, -1, self.features)
        q, r, rt, b = self._unpack(context)
        v = self._mv(q.transpose(-1, -2), x)
        u = self._mv(rt, v) + b
        z = x + self._mv(q, self._mv(r, torch.tanh(u)))
        return z, self._ladj(u, r, rt)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("Sylvester", z, -1, self.features, "z")
        q, r, rt, b = self._unpack(context)
        c = self._mv(q.transpose(-1, -2), z)
        batch = c.shape[:-1]
        r, rt, b = (
            r.expand(*batch, *r.shape[-2:]),
            rt.expand(*batch, *rt.shape[-2:]),
            b.expand(c.shape),
        )
        v: list[Tensor | None] = [None] * self.rank
        u: list[Tensor | None] = [None] * self.rank
        for i in reversed(range(self.rank)):
            later = range(i + 1, self.rank)
            t = c[..., i] - sum(
                (r[..., i, j] * torch.tanh(u[j]) for j in later), torch.zeros_like(c[..., i])
            )
            s = b[..., i] + sum((rt[..., i, j] * v[j] for j in later), torch.zeros_like(c[..., i]))
            rii, rtii = r[..., i, i], rt[..., i, i]
            reach = rii.abs() + 1e-3
            v[i] = monotone_solve(
                lambda vi, rii=rii, rtii=rtii, s=s: vi + rii * torch.tanh(rtii * vi + s),
                t,
                t - reach,
                t + reach,
                df=lambda vi, rii=rii, rtii=rtii, s=s: 1 + rii * rtii * _tanh_slope(rtii * vi + s),
            )
            u[i] = rtii * v[i] + s
        v_t, u_t = torch.stack(v, -1), torch.stack(u, -1)
        x = z - self._mv(q, c) + self._mv(q, v_t)
        return x, -self._ladj(u_t, r, rt)

    def extra_repr(self) -> str:
        return f"features={self.features}, rank={self.rank}, reflections={self.reflections}"
