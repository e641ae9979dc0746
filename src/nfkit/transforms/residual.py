r"""Invertible residual blocks ``z = x + g(x, c)`` with ``Lip_x(g) < 1`` (i-ResNet, Residual Flows).

The forward (density) direction is explicit; the inverse is the fixed point of
``x ← z - g(x, c)``, a contraction. The log-det ``log det(I + J_g)`` is computed exactly from the
Jacobian (small ``D``), or estimated by a truncated power series or the unbiased Russian-roulette
series with Hutchinson's trace estimator (training on larger ``D``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from nfkit._checks import (
    check_hidden,
    check_open_interval,
    check_positive_int,
    require_context,
    shown,
)
from nfkit._numerics import fixed_point
from nfkit._shapes import check_size
from nfkit.core import Transform

__all__ = ["ResidualBlock", "LipSwish"]

LogDet = Literal["exact", "series", "roulette"]
_LOGDETS = ("exact", "series", "roulette")


class LipSwish(nn.Module):
    r"""``x σ(βx) / 1.1`` with ``β = softplus(β̂)``: 1-Lipschitz and smooth (Chen et al. 2019)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5413248546129181))  # softplus⁻¹(1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1

    def value_and_slope(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``φ(x)`` and ``φ'(x) = (σ(βx) + βx σ(βx)(1 - σ(βx))) / 1.1``, elementwise."""
        beta = F.softplus(self.raw_beta)
        s = torch.sigmoid(beta * x)
        value = x * s
        return value / 1.1, (s + beta * value * (1 - s)) / 1.1


class ResidualBlock(Transform):
    r"""``z = x + g(x, c)``, ``g`` a spectral-normalized MLP with ``Lip_x(g) <= lipschitz < 1``.

    ``g(x, c) = L · (W_K φ(⋯ φ(W_1 x + V c + b_1) ⋯) + b_K)`` where every ``W_k`` is divided by its
    spectral norm (``torch.nn.utils.parametrizations.spectral_norm``, power iteration), ``φ`` is
    :class:`LipSwish` (1-Lipschitz) and ``L = lipschitz``; the context enters through the
    unnormalized ``V`` (``g`` need not be contractive in ``c``). So ``Lip_x(g) <= L``, up to the
    power iteration's estimate of the spectral norms.

    Spectral normalization updates its power-iteration vectors on every forward in **train**
    mode (and only then); in eval mode the normalized weights are fixed. Switching to eval mode
    (``eval()``, ``train(False)``) first refines the estimates with more power iterations; weights
    changed while in eval mode keep the old estimates until the next train-mode forward (or the
    next switch to eval). ``refresh_pending`` tells whether that refinement is due (a train-mode
    pass ran since eval mode was last entered); ``nf.save`` of a block in train mode writes the
    refined estimates (from a copy), and ``nf.load`` clears it. An inverse whose fixed-point iteration then fails to converge raises
    ``NotConvergedError`` rather than returning what it reached.

    A block pickles (and deep-copies) as its constructor's arguments, its state dict, its modes
    and ``refresh_pending``, since torch's parametrized modules refuse pickling; attributes added
    by hand are not carried.

    Log-det ``log det(I + J_g)``, selected by ``logdet`` in train mode and ``eval_logdet`` in eval:

    - ``"exact"``: the ``D × D`` Jacobian by the chain rule in the same forward pass
      (``J_g = L W_K diag(φ'(h_{K-1})) ⋯ diag(φ'(h_1)) W_1``, ``O(D H²)`` per row), then
      ``slogdet``. Default; for small ``D``.
    - ``"series"``: ``Σ_{k=1}^{n} (-1)^{k+1} tr(J^k) / k`` truncated at ``n = terms``, each
      trace by Hutchinson's estimator ``vᵀ J^k v`` with one Rademacher ``v`` (biased by the
      truncation, ``O(L^{n+1} / (1 - L))``).
    - ``"roulette"``: the unbiased Russian-roulette estimator of Residual Flows: ``n = terms + m``
      with ``m ~ Geometric(roulette_p)`` drawn per call, term ``k`` reweighted by
      ``1 / P(n >= k)``. Gradients back-propagate through the series (no Neumann trick). Its
      variance is finite when ``‖J_g‖² < 1 - roulette_p`` (term ``k`` is up to ``D ‖J_g‖^k / k``,
      drawn with probability ``(1 - p)^{k - terms}``): with ``roulette_p = 0.5`` and a block
      near its bound ``L = 0.9`` the estimates are heavy-tailed; a smaller ``roulette_p``
      (more terms on average) tames them.

    Inverse: fixed-point iteration ``x ← z - g(x, c)`` from ``x = z``, per row, until the error
    bound ``|δ| L / (1 - L)`` of a step ``δ`` is below ``1e-10`` (float64) or ``1e-5`` (float32)
    times ``1 + |x|``, or until rounding stops the progress (then ``x`` is as accurate as the
    arithmetic allows, about ``eps / (1 - L)``: 2e-5 in float32 at ``L = 0.99``). The steps grow
    like ``1 / (1 - L)`` (float64: up to 260 at ``L = 0.9``, 2,800 at ``0.99``); gradients by
    the implicit function theorem (:func:`~nfkit._numerics.fixed_point`). :meth:`inverse_value`
    (sampling) skips the log-det.

    Args:
        features: ``D``.
        context: Context size ``C`` (0: unconditional).
        hidden: Hidden widths of ``g``.
        lipschitz: ``L < 1``, the Lipschitz bound of ``g`` in ``x``.
        logdet: Estimator in train mode.
        eval_logdet: Estimator in eval mode.
        terms: Series length (``"series"``) or number of terms always computed (``"roulette"``).
        roulette_p: Success probability of the geometric number of extra roulette terms.
        power_iterations: Power-iteration steps per train-mode forward in spectral normalization.
        max_iter: Cap on the inverse's fixed-point iterations; None: what an ``L``-contraction
            needs, ``2 log(|δ₀| / ε) / log(1/L) + 16`` from the first step ``δ₀``,
            ``ε = tol (1 - L) / L``.

    Shapes:
        x ``(*batch, D)`` → z ``(*batch, D)``, ladj ``(*batch,)``; context ``(*batch, C)``.

    References:
        Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual Networks", ICML 2019,
        arXiv:1811.00995. Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible
        Generative Modeling", NeurIPS 2019, arXiv:1906.02735.

    Example:
        >>> block = ResidualBlock(2, hidden=(16,)).eval()
        >>> z, ladj = block(torch.randn(4, 2))
        >>> x, _ = block.inverse(z)
        >>> bool(torch.allclose(block(x)[0], z, atol=1e-5))
        True
    """

    outline_settings = ("lipschitz",)

    autograd_inside = True  # the log-det series is taken by autograd

    def __init__(
        self,
        features: int,
        *,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        lipschitz: float = 0.9,
        logdet: LogDet = "exact",
        eval_logdet: LogDet = "exact",
        terms: int = 8,
        roulette_p: float = 0.5,
        power_iterations: int = 5,
        max_iter: int | None = None,
    ) -> None:
        super().__init__()
        d = self.features = check_positive_int("ResidualBlock", "features", features)
        self.context_features = check_positive_int("ResidualBlock", "context", context, minimum=0)
        widths = check_hidden("ResidualBlock", hidden)
        lipschitz = check_open_interval("ResidualBlock", "lipschitz", lipschitz, 0, 1)
        for name, value in (("logdet", logdet), ("eval_logdet", eval_logdet)):
            if value not in _LOGDETS:
                raise ValueError(
                    f"ResidualBlock: {name} must be one of {_LOGDETS}, got {shown(value)}"
                )
        roulette_p = check_open_interval("ResidualBlock", "roulette_p", roulette_p, 0, 1)
        self.lipschitz, self.logdet, self.eval_logdet = float(lipschitz), logdet, eval_logdet
        self.terms = check_positive_int("ResidualBlock", "terms", terms)
        self.roulette_p = float(roulette_p)
        self.max_iter = (
            None if max_iter is None else check_positive_int("ResidualBlock", "max_iter", max_iter)
        )
        power_iterations = check_positive_int(
            "ResidualBlock", "power_iterations", power_iterations
        )
        self._arguments = {
            "features": d,
            "context": self.context_features,
            "hidden": widths,
            "lipschitz": self.lipschitz,
            "logdet": logdet,
            "eval_logdet": eval_logdet,
            "terms": self.terms,
            "roulette_p": self.roulette_p,
            "power_iterations": power_iterations,
            "max_iter": self.max_iter,
        }
        sizes = [d, *widths, d]
        self.linears = nn.ModuleList(
            spectral_norm(nn.Linear(a, b), n_power_iterations=power_iterations)
            for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.activations = nn.ModuleList(LipSwish() for _ in widths)
        self.context_layer = nn.Linear(context, widths[0], bias=False) if context > 0 else None
        self.refresh_pending = False  # a train-mode pass ran since eval mode was last entered

    def __reduce_ex__(self, protocol: int) -> tuple:
        # torch's parametrized modules refuse pickling ("only supported through state_dict()"),
        # which would make every flow holding a block unpicklable (joblib, multiprocessing,
        # copy): a block pickles as its constructor's arguments and its state dict instead.
        return (
            _rebuild_block,
            (
                type(self),
                self._arguments,
                self.state_dict(),
                [m.training for m in self.modules()],
                [p.requires_grad for p in self.parameters()],
                self.refresh_pending,
            ),
        )

    def train(self, mode: bool = True) -> ResidualBlock:
        """Set the mode. Entering eval mode after train-mode passes first runs at least 50 more
        power iterations per weight, so that eval mode's fixed spectral-norm estimates fit the
        current weights (train mode's lag the optimizer steps after the last pass, and
        ``Lip(g) <= L`` rests on them). A block that ran no train-mode pass (built, loaded) keeps
        its estimates, so a loaded block computes what the saved one did."""
        if self.training and not mode and self.refresh_pending:
            with torch.no_grad():
                # each train-mode read of the weights runs power_iterations steps
                for _ in range(-(-50 // self._arguments["power_iterations"])):
                    self._weights()
            self.refresh_pending = False
        return super().train(mode)

    def _weights(self) -> list[tuple[Tensor, Tensor]]:
        # Read each normalized weight once per call: in train mode every read runs (and stores)
        # a power iteration, and the solve and the log-det must see the same g.
        self.refresh_pending = self.refresh_pending or self.training
        return [(layer.weight, layer.bias) for layer in self.linears]

    def _g(
        self, x: Tensor, context: Tensor | None, weights: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        h = F.linear(x, *weights[0])
        if self.context_layer is not None:
            h = h + self.context_layer(context)
        for act, (w, b) in zip(self.activations, weights[1:]):
            h = F.linear(act(h), w, b)
        return self.lipschitz * h

    def _check_context(self, where: str, context: Tensor | None) -> None:
        # An unconditional block ignores a context (as every layer of a Compose receives it).
        require_context(f"ResidualBlock.{where}", context, self.context_features)

    def _broadcast(self, x: Tensor, context: Tensor | None) -> Tensor:
        """``x`` expanded to the batch it shares with ``context`` (a view)."""
        if self.context_layer is None or context is None:
            return x
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        return x.expand(*batch, x.shape[-1])

    def _exact(
        self, x: Tensor, context: Tensor | None, weights: list[tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        # g and its Jacobian in one forward pass by the chain rule through the MLP:
        # J = L · W_K diag(φ'(h_{K-1})) W_{K-1} ⋯ diag(φ'(h_1)) W_1, as (*batch, H_k, D) products
        # (no functorch transform, so the block traces for torch.export and torch.compile).
        w, b = weights[0]
        h = F.linear(x, w, b)
        if self.context_layer is not None:
            h = h + self.context_layer(context)
        jac = w
        for act, (w, b) in zip(self.activations, weights[1:]):
            a, slope = act.value_and_slope(h)
            jac = torch.matmul(w, slope.unsqueeze(-1) * jac)
            h = F.linear(a, w, b)
        eye = torch.eye(self.features, dtype=h.dtype, device=h.device)
        m = eye + self.lipschitz * jac  # det > 0: I + L J with Lip(L J) < 1
        if torch.compiler.is_compiling():
            # inductor (torch 2.13) differentiates slogdet of this batched product wrongly (up
            # to 2x); an LU factorization's diagonal gives the same log-det and right gradients
            lu = torch.linalg.lu_factor(m)[0]
            return self.lipschitz * h, lu.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        return self.lipschitz * h, torch.linalg.slogdet(m)[1]  # (2.6x faster in eager)

    def _series(
        self,
        x: Tensor,
        context: Tensor | None,
        weights: list[tuple[Tensor, Tensor]],
        roulette: bool,
    ) -> tuple[Tensor, Tensor]:
        grad_mode = torch.is_grad_enabled()
        x = self._broadcast(x, context)  # the probes and the trace need one row per output
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self._g(xg, context, weights)
            v = torch.randint_like(gx, 2) * 2 - 1  # Rademacher probe
            n, extra = self.terms, 0
            if roulette:
                # Sampled on the CPU: a Python int, no device sync.
                extra = int(torch.empty((), dtype=torch.float64).geometric_(self.roulette_p)) - 1
            w, ladj = v, torch.zeros(gx.shape[:-1], dtype=gx.dtype, device=gx.device)
            for k in range(1, n + extra + 1):
                (w,) = torch.autograd.grad(gx, xg, w, create_graph=grad_mode, retain_graph=True)
                coef = (-1) ** (k + 1) / k
                if k > n:  # 1 / P(N >= k) for the geometric tail
                    coef /= (1 - self.roulette_p) ** (k - n)
                ladj = ladj + coef * (w * v).sum(-1)
        if not grad_mode:
            gx, ladj = gx.detach(), ladj.detach()
        return gx, ladj

    def _g_and_ladj(
        self, x: Tensor, context: Tensor | None, weights: list[tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        mode = self.logdet if self.training else self.eval_logdet
        if mode == "exact":
            return self._exact(x, context, weights)
        return self._series(x, context, weights, roulette=mode == "roulette")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_context("forward", context)
        check_size("ResidualBlock", x, -1, self.features)
        gx, ladj = self._g_and_ladj(x, context, self._weights())
        return x + gx, ladj

    def _solve(
        self, where: str, z: Tensor, context: Tensor | None
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The fixed point ``x = z - g(x, c)`` (implicit gradients), and the weights of ``g``."""
        self._check_context(where, context)
        check_size(f"ResidualBlock.{where}", z, -1, self.features, "z")
        weights = self._weights()
        z = self._broadcast(z, context)
        context = context if self.context_layer is not None else None
        x = fixed_point(
            lambda x: z - self._g(x, context, weights),
            z,
            tol=1e-10 if z.dtype == torch.float64 else 1e-5,
            contraction=self.lipschitz,
            max_iter=self.max_iter,
            where=f"ResidualBlock.{where}",
            hint=(
                "; after weights changed in eval mode the spectral-norm estimates are stale: "
                "run a train-mode forward, then eval()"
            ),
        )
        return x, weights

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, weights = self._solve("inverse", z, context)
        _, ladj = self._g_and_ladj(x, context, weights)
        return x, -ladj

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Sampling: the fixed point alone, without the log-det (whose series estimators take
        gradients, which ``torch.inference_mode`` forbids). Equal to ``inverse(z, context)[0]``."""
        return self._solve("inverse_value", z, context)[0]

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, lipschitz={self.lipschitz}, logdet={self.logdet!r}, "
            f"eval_logdet={self.eval_logdet!r}"
        )


def _rebuild_block(
    cls: type[ResidualBlock],
    arguments: dict,
    state: dict[str, Tensor],
    training: list[bool],
    requires_grad: list[bool],
    refresh_pending: bool = False,  # absent from blocks pickled by nfkit 0.1.0
) -> ResidualBlock:
    """Unpickle a :class:`ResidualBlock`: the tensors keep their dtype and device (``assign``).
    The block is built under a fork of torch's CPU generator: its random initial weights and
    spectral-norm vectors, replaced by the state at once, leave the caller's stream as it was
    (``copy.deepcopy`` of a flow inside a training loop changed the batches drawn after it)."""
    with torch.random.fork_rng(devices=[]):
        block = cls(**arguments)
    block.load_state_dict(state, assign=True)
    for module, mode in zip(block.modules(), training, strict=True):
        module.training = mode
    for parameter, flag in zip(block.parameters(), requires_grad, strict=True):
        parameter.requires_grad_(flag)
    block.refresh_pending = bool(refresh_pending)
    return block
