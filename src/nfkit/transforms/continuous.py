r"""Continuous normalizing flows: FFJORD on ``torchdiffeq`` (Grathwohl et al. 2018; Chen et al. 2018).

The transform integrates an ODE ``dx/dt = f(x, t, c)`` from the data (``t = 0``) to the latent
(``t = t1``), together with the instantaneous change of variables
``d log|det ∂x(t)/∂x(0)| / dt = tr(∂f/∂x)``. The trace is exact (``D`` backward passes, for
small ``D``) or Hutchinson's stochastic estimate ``εᵀ (∂f/∂x) ε`` with one noise draw held fixed
over the whole solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from nfkit._checks import check_hidden, check_number, check_positive_int, require_context, shown
from nfkit._numerics import refuse_export
from nfkit.core import Transform
from nfkit.nn.mlp import MLP, broadcast_cat

__all__ = ["ContinuousFlow"]

_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "rk4", "euler", "midpoint")
_FIXED_STEP = ("rk4", "euler", "midpoint")


class _Dynamics(nn.Module):
    """The augmented vector field ``(x, l) ↦ (f(x, t, c), tr ∂f/∂x)`` for one solve.

    Built afresh on every call: it holds that call's context and Hutchinson noise (``None`` for
    the exact trace), so no state outlives the call. It is an ``nn.Module`` because
    ``odeint_adjoint`` needs one; its only parameters are those of the field's network.
    """

    def __init__(
        self, field: ContinuousFlow, context: Tensor | None, noise: Tensor | None
    ) -> None:
        super().__init__()
        self.field = field
        self.context = context
        self.noise = noise

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        # The trace must stay differentiable when the caller differentiates (training, adjoint
        # backward pass); under no_grad (sampling, adjoint forward pass) a first-order graph is
        # built locally and discarded.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # Under no_grad the state may be a view that claims requires_grad without a graph
            # (odeint_adjoint's forward pass): differentiate w.r.t. a fresh leaf instead.
            if not (create_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            f = self.field.velocity(x, t, self.context)
            if self.noise is None:
                trace = torch.zeros_like(f[..., 0])
                for i in range(f.shape[-1]):  # D backward passes, one per Jacobian row
                    (row,) = torch.autograd.grad(
                        f[..., i].sum(), x, create_graph=create_graph, retain_graph=True
                    )
                    trace = trace + row[..., i]
            else:
                (vjp,) = torch.autograd.grad(
                    f, x, self.noise, create_graph=create_graph, retain_graph=create_graph
                )
                trace = (vjp * self.noise).sum(-1)
        if not create_graph:
            f, trace = f.detach(), trace.detach()
        return f, trace


class _Field(nn.Module):
    """The vector field alone, ``x ↦ f(x, t, c)``: the ODE of a solve without the log-det."""

    def __init__(self, field: ContinuousFlow, context: Tensor | None) -> None:
        super().__init__()
        self.field = field
        self.context = context

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.field.velocity(x, t, self.context)


def _grid(steps: int) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """torchdiffeq's ``grid_constructor`` for ``steps`` equal steps from ``t[0]`` to ``t[-1]``."""

    def grid(func: nn.Module, y0: Tensor, t: Tensor) -> Tensor:
        out = torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype, device=t.device)
        out[0], out[-1] = t[0], t[-1]  # the solver checks that the ends are exact
        return out

    return grid


def step_control_failure(error: AssertionError, limit: str = "max_steps") -> str | None:
    """How torchdiffeq's adaptive step control gave up, in a few words, if ``error`` is one of
    its assertions (more steps than ``limit``, a step size underflowing to 0, NaN or inf in the
    state); else None. An adjoint solve raises them from ``backward()``."""
    text = str(error)
    if text.startswith("max_num_steps exceeded"):
        return f"more than {limit} steps"
    if text.startswith("underflow in dt"):
        return "its step size underflowed to 0"
    if text.startswith("non-finite values in state"):
        return "NaN or inf"
    return None


class ContinuousFlow(Transform):
    r"""FFJORD block: ``z = x(t1)`` where ``dx/dt = f(x(t), t, c)``, ``x(0) = x``.

    ``f`` is an MLP with tanh activations on ``[x, τ(t), c]`` (``τ`` only if ``time_dependent``,
    the context broadcast with :func:`nfkit.nn.broadcast_cat`); its last layer starts at zero, so
    a new block is the identity. ``τ(t) = t``, or with ``time_features = K`` the Fourier features
    ``[t, sin(kπt/t1), cos(kπt/t1)]`` for ``k = 1 … K`` (a field that changes quickly in time,
    as flow matching's does near the data). Being a bounded function of its input, ``f`` moves any point by at
    most ``t1·sup|f|``, so inputs far in the tails stay finite.

    Args:
        features: Event size D.
        context: Context size C (0: unconditional).
        hidden: Hidden widths of the dynamics MLP.
        time_dependent: Feed ``t`` to the dynamics.
        time_features: ``K``, the Fourier features of ``t`` fed beside it (0: ``t`` alone).
        trace: ``"exact"`` (D backward passes per evaluation) or ``"hutchinson"``. Hutchinson's
            estimator is used in **training mode only**; in eval mode the trace is always exact,
            so ``log_prob`` of a model in eval mode is deterministic.
        noise: Hutchinson noise, ``"rademacher"`` or ``"gaussian"`` (drawn once per solve).
        solver: A ``torchdiffeq`` method (``"dopri5"``, ``"rk4"``, ...).
        atol, rtol: Solver tolerances (defaults 1e-5, as in the FFJORD paper). They are floored at
            ``100 eps`` of the input dtype (about 1.2e-5 in float32) so the adaptive solver can
            converge.
        steps: Number of equal steps for fixed-step solvers (``rk4``, ``euler``, ``midpoint``):
            exactly ``steps`` field evaluations per stage, on an even grid from 0 to ``t1``.
        sample_solver, sample_steps: The solver (and fixed-step count) of sampling alone
            (:meth:`inverse_value`, no log-det); None: ``solver`` and ``steps``. A field trained
            by flow matching is nearly straight: ``sample_solver="rk4", sample_steps=4``
            samples it fast while ``log_prob`` keeps the adaptive ``solver`` (a fixed-step
            log-det is only as exact as its steps; see :func:`nfkit.models.FFJORD`).
        adjoint: Back-propagate with ``torchdiffeq.odeint_adjoint`` (memory O(1) in the number
            of steps; gradients agree with direct back-propagation to the solver tolerance).
        t1: Integration time.
        max_steps: Most steps (accepted or rejected) an adaptive solve may take; beyond them it
            raises a one-line ``ValueError`` rather than run on (a field grown stiff in
            training can need millions).

    Shapes:
        x ``(*batch, D)``, context ``(*cbatch, C)`` → z ``(*broadcast, D)``, ladj ``(*broadcast,)``.

    Log-det:
        ``log|det ∂z/∂x| = ∫₀^t1 tr(∂f/∂x(x(t), t)) dt``, integrated with the state by the same
        solver (exact up to the solver tolerance; an unbiased estimate under Hutchinson).

    Inverse:
        The same ODE integrated backwards from ``t1`` to 0. Both directions are numerical: the
        round-trip error and the log-det error follow ``atol``/``rtol`` (about 1e-9 in float64
        with ``atol = rtol = 1e-10`` and dopri5; about 1e-4 to 1e-3 with the defaults
        ``1e-5``, also in float64, growing with how far the flow moves points).

    Batches:
        An adaptive solver controls one step size for the whole batch (its error norm spans all
        rows), so a row's result depends on the rows solved with it: ``log_prob`` in one pass and
        in chunks (``chunk_size``) agree to the solver's tolerance, not bitwise (1.3e-4 apart with
        the default tolerances, float64, 3000 rows in chunks of 500). Fixed-step solvers treat
        every row alike (the same grid). A failed adaptive solve (the step size underflowing,
        e.g. under NaN parameters, or more than ``max_steps`` steps) raises a one-line
        ``ValueError`` naming the cause. With ``adjoint=True`` the backward solve runs inside
        ``loss.backward()``: :func:`nfkit.fit` turns its failure into the same kind of one-line
        error; a hand-written loop gets torchdiffeq's ``AssertionError`` from ``backward()``.

    References:
        Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud (2018), "FFJORD: Free-form continuous
        dynamics for scalable reversible generative models", arXiv:1810.01367.
        Chen, Rubanova, Bettencourt, Duvenaud (2018), "Neural ordinary differential equations",
        arXiv:1806.07366.

    Example:
        >>> t = ContinuousFlow(2, hidden=(8,)).double()
        >>> z, ladj = t(torch.randn(5, 2, dtype=torch.float64))
        >>> z.shape, ladj.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    outline_settings = ("t1",)

    autograd_inside = True  # the trace of the log-det is taken by autograd

    def __init__(
        self,
        features: int,
        *,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        time_dependent: bool = True,
        time_features: int = 0,
        trace: Literal["exact", "hutchinson"] = "exact",
        noise: Literal["rademacher", "gaussian"] = "rademacher",
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        steps: int = 20,
        sample_solver: str | None = None,
        sample_steps: int | None = None,
        adjoint: bool = False,
        t1: float = 1.0,
        max_steps: int = 10_000,
    ) -> None:
        super().__init__()
        where = "ContinuousFlow"
        self.features = check_positive_int(where, "features", features)
        self.context_features = check_positive_int(where, "context", context, minimum=0)
        hidden = check_hidden(where, hidden)
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"{where}: trace must be 'exact' or 'hutchinson', got {shown(trace)}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(
                f"{where}: noise must be 'rademacher' or 'gaussian', got {shown(noise)}"
            )
        if solver not in _SOLVERS:
            raise ValueError(f"{where}: solver must be one of {_SOLVERS}, got {shown(solver)}")
        for name, value in (("atol", atol), ("rtol", rtol), ("t1", t1)):
            check_number(where, name, value, 0.0)
        self.steps = check_positive_int(where, "steps", steps)
        self.max_steps = check_positive_int(where, "max_steps", max_steps)
        self.sample_solver = sample_solver  # (checked by the properties below)
        self.sample_steps = sample_steps
        self.time_dependent = bool(time_dependent)
        self.time_features = check_positive_int(where, "time_features", time_features, minimum=0)
        if self.time_features and not self.time_dependent:
            raise ValueError(f"{where}: time_features needs time_dependent=True")
        self.trace, self.noise, self.solver = trace, noise, solver
        self.atol, self.rtol, self.t1 = float(atol), float(rtol), float(t1)
        self.adjoint = bool(adjoint)
        # float64 (read in the input's dtype; .double() keeps the digits, as a rebuilt float64
        # flow has them: the buffer is not saved)
        frequencies = torch.arange(1, self.time_features + 1, dtype=torch.float64) * (
            math.pi / self.t1
        )
        self.register_buffer("frequencies", frequencies, persistent=False)
        times = (1 + 2 * self.time_features) if self.time_dependent else 0
        inputs = features + times + self.context_features
        self.net = MLP(inputs, features, hidden, activation=nn.Tanh)

    @property
    def sample_solver(self) -> str | None:
        """Sampling's solver (None: :attr:`solver`); may be set on a trained flow, checked
        when set, and recorded by ``nf.save`` in an FFJORD model's config."""
        return self._sample_solver

    @sample_solver.setter
    def sample_solver(self, value: str | None) -> None:
        if value is not None and value not in _SOLVERS:
            raise ValueError(
                f"ContinuousFlow: sample_solver must be None or one of {_SOLVERS}, got {shown(value)}"
            )
        self._sample_solver = value

    @property
    def sample_steps(self) -> int | None:
        """Sampling's fixed-step count (None: :attr:`steps`); set and saved like
        :attr:`sample_solver`."""
        return self._sample_steps

    @sample_steps.setter
    def sample_steps(self, value: int | None) -> None:
        self._sample_steps = (
            None if value is None else check_positive_int("ContinuousFlow", "sample_steps", value)
        )

    def _solve(
        self, x: Tensor, context: Tensor | None, t0: float, t1: float, where: str,
        trace: bool = True,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """The ODE from ``t0`` to ``t1``: the end state and, if ``trace``, the log-det."""
        if x.shape[-1] != self.features:
            raise ValueError(
                f"{where}: expected last dim {self.features}, got shape {tuple(x.shape)}"
            )
        if not self.context_features:  # ignored, as every layer of a Compose receives it
            context = None
        require_context(where, context, self.context_features)  # given, of its width
        refuse_export("an ODE solve")
        import torchdiffeq  # a declared dependency, imported on first use

        if context is not None:
            batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = x.expand(*batch, self.features)
        if x.numel() == 0:  # no row: nothing to solve (the solver's step control would fail)
            return (x.clone(), x.new_zeros(x.shape[:-1])) if trace else (x.clone(), None)
        noise = None
        if trace and self.trace == "hutchinson" and self.training:
            if self.noise == "rademacher":
                noise = torch.randint_like(x, 2) * 2 - 1
            else:
                noise = torch.randn_like(x)
        func: nn.Module = _Dynamics(self, context, noise) if trace else _Field(self, context)
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        eps = torch.finfo(x.dtype).eps
        solver, steps = self.solver, self.steps
        if not trace:  # sampling: its own solver, if set
            solver = self.sample_solver or solver
            steps = self.sample_steps or steps
        kwargs = {
            "method": solver,
            "atol": max(self.atol, 100 * eps),
            "rtol": max(self.rtol, 100 * eps),
        }
        if solver in _FIXED_STEP:  # exactly `steps` equal steps (a step_size may add one)
            kwargs["options"] = {"grid_constructor": _grid(steps)}
        else:  # steps tried, accepted or not, per solve
            kwargs["options"] = {"max_num_steps": self.max_steps}
        state = (x, torch.zeros_like(x[..., 0])) if trace else x
        try:
            if self.adjoint:
                params = tuple(self.net.parameters())
                if context is not None:
                    params = (*params, context)
                path = torchdiffeq.odeint_adjoint(
                    func, state, times, adjoint_params=params, **kwargs
                )
            else:
                path = torchdiffeq.odeint(func, state, times, **kwargs)
        except AssertionError as e:  # torchdiffeq's step control gives up with an assert
            how = step_control_failure(e, f"max_steps={self.max_steps}")
            if how is None:
                raise
            cause = self._failure(x, context, t0)
            raise ValueError(f"{where}: the {solver} solve failed ({how}): {cause}") from None
        return (path[0][-1], path[1][-1]) if trace else (path[-1], None)

    def _failure(self, x: Tensor, context: Tensor | None, t0: float) -> str:
        """Why an adaptive solve gave up, in a few words (its syncs are on the failure path)."""
        if not all(bool(p.isfinite().all()) for p in self.parameters()):
            return "the field's parameters hold NaN or inf"
        if not bool(x.isfinite().all()) or (context is not None and not context.isfinite().all()):
            return "the input or the context holds NaN or inf"
        with torch.no_grad():
            if not bool(self.velocity(x, t0, context).isfinite().all()):
                return "the field is NaN or inf at the input"
        return (
            "the field is too stiff or blows up (loosen atol/rtol, raise max_steps, or use a "
            "fixed-step solver)"
        )

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The vector field ``f(x, t, c)``, shape of ``x`` (broadcast with the context's batch).

        ``t`` is a number or a tensor broadcastable to ``x``'s batch shape (one time per row, as
        flow matching draws them); it is ignored unless ``time_dependent``.
        """
        if self.time_dependent:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            t = t.unsqueeze(-1) if t.ndim else t.reshape(1)
            if self.time_features:
                angle = t * self.frequencies.to(x.dtype)
                t = torch.cat([t, angle.sin(), angle.cos()], -1)
            x = broadcast_cat(x, t)
        return self.net(broadcast_cat(x, context))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, 0.0, self.t1, "ContinuousFlow.forward")  # type: ignore[return-value]

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, context, self.t1, 0.0, "ContinuousFlow.inverse")  # type: ignore[return-value]

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Sampling: the ODE of the field alone, backwards in time, without the trace (no
        Jacobian, no autograd). Equal to ``inverse(z)[0]`` to the solver tolerance (the adaptive
        steps differ: the log-det is not part of the error control here)."""
        return self._solve(z, context, self.t1, 0.0, "ContinuousFlow.inverse_value", False)[0]

    def extra_repr(self) -> str:
        sampling = f"sample_solver={self.sample_solver!r}, " if self.sample_solver else ""
        return (
            f"features={self.features}, context={self.context_features}, "
            f"time_features={self.time_features}, trace={self.trace!r}, "
            f"solver={self.solver!r}, atol={self.atol:g}, rtol={self.rtol:g}, {sampling}"
            f"adjoint={self.adjoint}, t1={self.t1:g}"
        )
