r"""Block neural autoregressive flow (BNAF; De Cao, Titov and Aziz 2019, arXiv:1904.04676).

:class:`BlockAutoregressive` is one monotone autoregressive *network* (no conditioner and
transformer pair): its weight matrices are block lower-triangular over the features, with
positive diagonal blocks, so ``z_i`` depends on ``x_{≤i}`` and increases with ``x_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfkit._checks import check_hidden, check_number, check_positive_int, require_context
from nfkit._numerics import monotone_solve, refuse_export
from nfkit._shapes import check_size, context_batch
from nfkit.core import Transform

__all__ = ["BlockAutoregressive"]


def _log_matmul(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``log(exp(log_a) @ exp(log_b))`` for ``log_a (D, p, q)`` and ``log_b (*, D, q)`` →
    ``(*, D, p)``: products of positive blocks in log space (log-sum-exp over ``q``)."""
    return torch.logsumexp(log_a + log_b.unsqueeze(-2), dim=-1)


class BlockAutoregressive(Transform):
    r"""BNAF's layer: a monotone autoregressive network ``z = f(x)`` on ``ℝ^D`` (De Cao et al.
    2019, arXiv:1904.04676).

    ``h⁰ = x``, ``hˡ = σ(Wˡ hˡ⁻¹ + bˡ)`` for the hidden layers, ``f(x) = Wᴸ hᴸ⁻¹ + bᴸ``, and
    ``z = s ⊙ f(x) + (1 - s) ⊙ x`` with a learned gate ``s = sigmoid(a) ∈ (0, 1)`` per feature
    (the paper's gated residual); hidden layer ``l`` holds ``hidden[l]`` units per feature. Each ``Wˡ`` is block lower-triangular over the
    features: block ``(i, j)`` is zero for ``j > i``, free for ``j < i`` and positive for ``j = i``
    (``exp`` of a free matrix), and each row is weight-normalized (``exp(g) · w / ‖w‖``). So
    ``z_i`` depends on ``x_{≤i}`` only and increases with ``x_i``: the Jacobian is triangular and
    ``log|det ∂z/∂x| = Σ_i log ∂z_i/∂x_i``, with ``∂z_i/∂x_i = s_i ∂f_i/∂x_i + 1 - s_i`` and
    ``∂f_i/∂x_i`` the product of the diagonal blocks and the activations' slopes, accumulated in
    log space (log-sum-exp products of ``(D, a, a)`` blocks). The activation
    ``σ(u) = tanh(u) + α u`` (``α = leak``) has slope in ``[α, 1 + α]``. The residual keeps every
    slope above ``1 - s_i``, so ``z`` covers ``ℝ^D`` and the density integrates to one (``f``
    alone saturates: with the paper's plain ``tanh`` its range is bounded, with the leak its far
    slopes are ``α`` per layer and a Gaussian's tails land very far out). A context enters the
    first layer through an unmasked linear map.

    Inverse: no closed form. Feature by feature (``i = 1 … D``), ``f_i(x_{<i}, x_i) = z_i`` is
    solved for ``x_i`` by safeguarded Newton (``nfkit._numerics.monotone_solve``) on a bracket
    grown until it holds the root: ``D`` root finds of a few tens of passes each, to ``10⁻¹²``
    relative in float64 (``10⁻⁶`` in float32); gradients by the implicit function theorem. Each
    pass runs only the blocks of the first ``i`` features and carries ``∂z_i/∂x_i`` forward in
    linear space with the value. So ``log_prob`` is one pass and sampling takes ``D`` root finds:
    BNAF is a density model first.

    Args:
        features: ``D``.
        hidden: Units per feature of each hidden layer (the network is ``1 → hidden… → 1`` per
            feature, ``D ·`` that overall).
        context: Context size (0: none).
        leak: ``α`` of the activation, ``> 0``.
    """

    outline_settings = ("leak",)

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (16, 16),
        *,
        context: int = 0,
        leak: float = 0.01,
    ) -> None:
        super().__init__()
        where = "BlockAutoregressive"
        self.features = d = check_positive_int(where, "features", features)
        hidden = check_hidden(where, hidden)
        self.leak = check_number(where, "leak", leak, 0.0)
        context = check_positive_int(where, "context", context, minimum=0)
        self.sizes = (1, *hidden, 1)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.scales = nn.ParameterList()  # log row norms g
        for index, (a_in, a_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            rows = torch.arange(d).repeat_interleave(a_out)  # the feature of each row
            cols = torch.arange(d).repeat_interleave(a_in)  # ... and of each column
            lower, diagonal = cols[None, :] <= rows[:, None], cols[None, :] == rows[:, None]
            self.register_buffer(f"_lower{index}", lower, persistent=False)
            self.register_buffer(f"_diagonal{index}", diagonal, persistent=False)
            bound = 1 / math.sqrt(a_in * d)
            self.weights.append(
                nn.Parameter(torch.empty(d * a_out, d * a_in).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(d * a_out).uniform_(-bound, bound)))
            # row norms 1/√a_in: a_in diagonal entries near 1/√a_in sum to a slope near 1, so
            # the network starts with neither a large expansion nor a large contraction
            self.scales.append(nn.Parameter(torch.full((d * a_out,), -0.5 * math.log(a_in))))
        self.context_layer = nn.Linear(context, d * self.sizes[1]) if context else None
        self.gate = nn.Parameter(torch.zeros(d))  # logit of the residual gate, per feature

    def _layer(self, index: int) -> tuple[Tensor, Tensor]:
        """``(W, log D)``: layer ``index``'s masked, weight-normalized matrix and the log of its
        diagonal blocks, ``(D, a_out, a_in)``."""
        v, g = self.weights[index], self.scales[index]
        lower, diagonal = getattr(self, f"_lower{index}"), getattr(self, f"_diagonal{index}")
        raw = torch.where(diagonal, v.exp(), torch.where(lower, v, torch.zeros_like(v)))
        log_norm = 0.5 * torch.log((raw * raw).sum(-1))
        weight = raw * torch.exp(g - log_norm).unsqueeze(-1)
        d, a_out, a_in = self.features, self.sizes[index + 1], self.sizes[index]
        # log of the diagonal blocks only (D a_out × a_in entries, not the whole matrix)
        blocks = torch.diagonal(v.view(d, a_out, d, a_in), dim1=0, dim2=2).permute(2, 0, 1)
        return weight, blocks + (g - log_norm).view(d, a_out, 1)

    def _network(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(z, log ∂z_i/∂x_i)``, both ``(*batch, D)``."""
        if self.context_layer is not None:
            require_context("BlockAutoregressive", context, self.context_layer.in_features)
            context_batch(x.shape[:-1], context.shape[:-1])  # type: ignore[union-attr]
        h, log_slope = x, None  # log_slope: (*batch, D, a) log-derivatives of h_i w.r.t. x_i
        last = len(self.sizes) - 2
        for index in range(last + 1):
            weight, log_diagonal = self._layer(index)
            u = F.linear(h, weight, self.biases[index])
            if index == 0 and self.context_layer is not None:
                u = u + self.context_layer(context)
            if log_slope is None:  # x_i is one unit: the block is a column
                log_slope = log_diagonal.squeeze(-1).expand(*u.shape[:-1], -1, -1)
            else:
                log_slope = _log_matmul(log_diagonal, log_slope)
            if index < last:
                t = torch.tanh(u)
                h = t + self.leak * u
                activation = torch.log1p(self.leak - t * t)  # log(1 + α - tanh²)
                log_slope = log_slope + activation.unflatten(
                    -1, (self.features, u.shape[-1] // self.features)
                )
            else:
                h = u
        # gated residual: z = σ(a) f(x) + σ(-a) x, slope σ(a) f' + σ(-a) > σ(-a)
        log_slope = torch.logaddexp(
            F.logsigmoid(self.gate) + log_slope.squeeze(-1), F.logsigmoid(-self.gate)
        )
        gate = torch.sigmoid(self.gate)
        return gate * h + (1 - gate) * x, log_slope

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("BlockAutoregressive", x, -1, self.features)
        z, log_slope = self._network(x, context)
        return z, log_slope.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.inverse_value(z, context)
        _, ladj = self.forward(x, context)
        return x, -ladj

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_size("BlockAutoregressive", z, -1, self.features, "z")
        batch = (
            z.shape[:-1] if context is None else context_batch(z.shape[:-1], context.shape[:-1])
        )
        z = z.expand(*batch, self.features)
        layers = [self._layer(index)[0] for index in range(len(self.sizes) - 1)]  # once
        shift = self.biases[0]
        if self.context_layer is not None:
            require_context("BlockAutoregressive", context, self.context_layer.in_features)
            shift = shift + self.context_layer(context).expand(*batch, -1)
        x = z.new_zeros(*batch, 0)
        for i in range(self.features):

            def column(xi: Tensor, i: int = i, solved: Tensor = x) -> tuple[Tensor, Tensor]:
                return self._column(i, torch.cat([solved, xi.unsqueeze(-1)], -1), layers, shift)

            target = z[..., i]
            lo, hi = self._bracket(lambda xi, f=column: f(xi)[0], target)
            x = torch.cat([x, monotone_solve(column, target, lo, hi, joint=True)[..., None]], -1)
        return x

    def _column(
        self, i: int, x: Tensor, layers: Sequence[Tensor], shift: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(z_i, ∂z_i/∂x_i)`` from ``x_{≤i}`` ``(*batch, i + 1)``: the network restricted to
        the blocks of the first ``i + 1`` features (block lower-triangular: the rest do not
        reach ``z_i``), its derivative carried forward along ``x_i`` in linear space (one
        extra matrix product per layer, not the log-space blocks of :meth:`_network`)."""
        h, dh = x, None
        last = len(layers) - 1
        for index, weight in enumerate(layers):
            rows, cols = (i + 1) * self.sizes[index + 1], (i + 1) * self.sizes[index]
            w = weight[:rows, :cols]
            bias = (shift if index == 0 else self.biases[index])[..., :rows]
            u = F.linear(h, w) + bias  # (bias: batched with a context's shift)
            du = w[:, i] if dh is None else F.linear(dh, w)  # the first layer: x_i is column i
            if index < last:
                t = torch.tanh(u)
                h, dh = t + self.leak * u, (1 + self.leak - t * t) * du
            else:
                h, dh = u, du.expand(u.shape)
        gate = torch.sigmoid(self.gate[i])
        return gate * h[..., i] + (1 - gate) * x[..., i], gate * dh[..., i] + (1 - gate)

    @staticmethod
    def _bracket(value, target: Tensor) -> tuple[Tensor, Tensor]:
        """``lo ≤ root ≤ hi``: ``[-1, 1]`` doubled on the side that misses, up to the dtype's
        largest power of two (60 doublings returned the end of a bracket without the root for
        ``|z| ≳ 6e17``: a finite, wrong inverse); a root still outside is refused."""
        refuse_export("a numerical root find")
        with torch.no_grad():
            lo, hi = torch.full_like(target, -1.0), torch.full_like(target, 1.0)
            lost = None  # rows with a NaN weight or z: no bracket helps (the root find gives NaN)
            for _ in range(math.ceil(math.log2(torch.finfo(target.dtype).max)) + 1):
                v_lo, v_hi = value(lo), value(hi)
                low_ok, high_ok = v_lo <= target, v_hi >= target
                if lost is None:  # NaN at ±1 already; NaN further out is an overflow, not held
                    lost = torch.isnan(v_lo + v_hi + target)
                # ends whose values overflowed (±inf, or NaN from inf - inf inside the network)
                # hold nothing the root find can use: x there has no finite image
                finite = torch.isfinite(v_lo) & torch.isfinite(v_hi)
                held = (low_ok & high_ok & finite) | lost
                if bool(held.all()):
                    return lo, hi
                lo = torch.where(low_ok, lo, 2 * lo)
                hi = torch.where(high_ok, hi, 2 * hi)
        raise ValueError(
            f"BlockAutoregressive.inverse: no x of the dtype maps to z in {int((~held).sum())} "
            "row(s) (z beyond the range of the map)"
        )

    def extra_repr(self) -> str:
        return f"features={self.features}, sizes={self.sizes}, leak={self.leak:g}"
