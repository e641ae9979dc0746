r"""Numerical inverses: vectorized bracketed root finding with implicit-function gradients.

``monotone_solve(f, y, lo, hi)`` solves ``f(x) = y`` elementwise for an increasing ``f`` on the
bracket ``[lo, hi]``. The iterations run without autograd (bisection, safeguarded by Newton steps
where ``df`` is given); one last Newton step is taken *with* autograd, which makes the gradient
with respect to ``y`` and to the parameters inside ``f`` exact at the root (implicit function
theorem: ``dx = (dy - ∂f/∂θ dθ) / f'(x)``), without back-propagating through the loop.

``fixed_point(f, x0)`` solves ``x = f(x)`` for a contraction ``f`` by Banach iteration, with
implicit gradients through a backward hook (the adjoint fixed point), as in deep equilibrium models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["monotone_solve", "fixed_point", "default_tol"]


def default_tol(dtype: torch.dtype) -> float:
    """Root tolerance in x: 1e-12 in float64, 1e-6 in float32/16."""
    return 1e-12 if dtype == torch.float64 else 1e-6


class NotExportable(RuntimeError):
    """A computation with data-dependent iterations was met while ``torch.export`` traced."""


class NotConvergedError(RuntimeError):
    """An iteration that should converge (a contraction's fixed point) did not."""


def refuse_export(what: str) -> None:
    """Raise :class:`NotExportable` naming ``what`` while ``torch.export`` traces: a loop whose
    length depends on the data has no single graph (torch's own error comes after a dump of
    the partial graph)."""
    if torch.compiler.is_exporting():
        raise NotExportable(what)


def monotone_solve(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    df: Callable[[Tensor], Tensor] | None = None,
    joint: bool = False,
    tol: float | None = None,
    max_iter: int = 200,
) -> Tensor:
    r"""Solve ``f(x) = y`` for increasing ``f`` with ``f(lo) <= y <= f(hi)``, elementwise.

    Safeguarded Newton (as Numerical Recipes' ``rtsafe``): a Newton step is kept when it stays
    inside the current bracket and is at most half the step before the last, otherwise the
    midpoint is taken. So kept steps shrink geometrically, and a Newton iteration that stalls
    (tiny steps far from the root, where ``f`` is locally steep) falls back to bisection.
    Stops when the bracket is narrower than ``tol · (1 + |x|)`` or a kept Newton step is below a
    tenth of that (or after ``max_iter`` steps; bisection alone reaches 1e-12 from a width of
    1e3 in 50 steps).

    With ``joint=True``, ``f`` returns ``(f(x), f'(x))`` from one evaluation (for maps whose
    value and slope share their work), and ``df`` is not used.

    Returns:
        ``x`` of the broadcast shape of ``y``, ``lo`` and ``hi``, differentiable by one final
        Newton step (needs ``df`` or ``joint``, or ``f`` differentiable by autograd).
    """
    refuse_export("a numerical root find")
    tol = default_tol(y.dtype) if tol is None else tol
    with torch.no_grad():
        yd = y.detach()
        shape = torch.broadcast_shapes(lo.shape, hi.shape, yd.shape)
        lo, hi = lo.detach().expand(shape).clone(), hi.detach().expand(shape).clone()
        x = (lo + hi) / 2
        # the sizes of the last two steps (the bracket's width at first); as in rtsafe, a Newton
        # step must be at most half the one before the last
        last = before = hi - lo
        for it in range(max_iter):
            if joint:
                fx, slope_x = f(x)
                fx = fx - yd
            else:
                fx = f(x) - yd
                slope_x = None if df is None else df(x)
            below = fx < 0
            lo = torch.where(below, x, lo)
            hi = torch.where(below, hi, x)
            mid = (lo + hi) / 2
            scale = tol * (1 + x.abs())
            if slope_x is None:
                x, done = mid, (hi - lo) <= scale
            else:
                dx = fx / slope_x.clamp_min(1e-30)  # the Newton step is x - dx
                step = x - dx
                # Non-strict: at a converged root the step lands on the bracket end just set;
                # steps within the tolerance always pass (a converged x stays put).
                dx = dx.abs()
                ok = (step >= lo) & (step <= hi) & (dx + dx <= torch.maximum(before, scale))
                x_new = torch.where(ok, step, mid)
                before, last = last, torch.where(ok, dx, (mid - x).abs())
                done = ((hi - lo) <= scale) | (ok & (dx <= 0.1 * scale))
                x = x_new
            # One sync every 8 steps keeps the loop cheap while still stopping early.
            if it % 8 == 7 and bool(done.all()):
                break
        # a map (or target) that is NaN there has no root: NaN, not the bracket's end (a BNAF
        # with a NaN weight sampled -2**60, its bracket doubled while NaN compared False)
        x = torch.where(torch.isnan(fx), fx, x)
    if not torch.is_grad_enabled():
        return x
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if joint:
            fx, slope = f(x)
        else:
            fx = f(x)
            slope = (
                df(x) if df is not None else torch.autograd.grad(fx.sum(), x, retain_graph=True)[0]
            )
    # Implicit step: gradients as the implicit function theorem gives. The value takes the Newton
    # correction but stays in the final bracket (a vanishing slope cannot throw it out), and the
    # slope is floored so that the backward pass never forms 0 · inf.
    slope = slope.detach().clamp_min(torch.finfo(slope.dtype).tiny ** 0.5)
    with torch.no_grad():
        x_val = torch.minimum(torch.maximum(x - (fx - y) / slope, lo), hi)
    return x_val + ((y - y.detach()) - (fx - fx.detach())) / slope


def fixed_point(
    f: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    tol: float | None = None,
    contraction: float = 0.9,
    max_iter: int | None = None,
    where: str = "fixed_point",
    hint: str = "",
) -> Tensor:
    r"""Solve ``x = f(x)`` for a contraction ``f`` (``Lip(f) <= contraction = L < 1``), row by row.

    ``x0`` is ``(*batch, D)`` and ``f`` maps each row on its own. Banach iteration ``x ← f(x)``
    from ``x0`` without autograd, checked every 8 steps (one host sync per check). A row stops
    at the first check where its step ``δ = f(x) - x`` satisfies either

    - ``|δ| <= ε (1 + |x|)`` in every entry, ``ε = tol (1 - L) / L``: then the error
      ``<= δ L / (1 - L)`` is below ``tol (1 + |x|)`` (``tol``: :func:`default_tol`); or
    - ``‖δ‖₂`` did not even halve over the last ``k`` steps, ``L^k <= 1/4`` (``k`` a multiple
      of 8; in exact arithmetic ``‖δ‖`` shrinks by ``L`` per step), and
      ``|δ| <= 64 eps / (1 - L) (1 + |x|)``: rounding rules (e.g. a 2-cycle at the dtype's
      resolution), and ``x`` is as accurate as the arithmetic allows, about the rounding error
      of ``f`` over ``1 - L`` (float32, ``L = 0.99``: 2e-5).

    A stopped row keeps its value, so it does not depend on the other rows. The iteration
    budget is ``max_iter``, or by default ``2 n + 16`` with ``n = log(‖δ₀‖ / ε) / log(1/L)`` the
    steps an ``L``-contraction needs from its first step ``δ₀`` (largest row): it grows like
    ``1 / (1 - L)``. Rows still moving then: :class:`NotConvergedError` naming ``where``, the
    rows, their step and the fix, plus ``hint``; NaN or inf is reported at the first check.

    Gradients (implicit function theorem, as in deep equilibrium models): one step ``f(x*)`` is
    taken with autograd, giving ``∂f/∂θ`` and ``∂f/∂z``; a hook on it replaces the incoming
    gradient ``u`` by the solution of ``y = u + J_fᵀ y`` (again a contraction, solved the same
    way), i.e. ``(I - J_f)⁻ᵀ u``; the result is an alias of that step, so a gradient with respect
    to the result itself is not passed through the hook. Double backward through the solve is
    not supported.
    """
    refuse_export("a fixed-point iteration")
    tol = default_tol(x0.dtype) if tol is None else tol
    factor = tol * (1 - contraction) / contraction  # the step that bounds the error by tol
    floor = 64 * torch.finfo(x0.dtype).eps / (1 - contraction)  # a step at rounding level
    span = 8 * math.ceil(math.log(4) / -math.log(contraction) / 8)  # L^span <= 1/4

    def iterate(step: Callable[[Tensor], Tensor], start: Tensor, what: str) -> Tensor:
        if start.numel() == 0:
            return start
        x = out = start
        done = torch.zeros(start.shape[:-1], dtype=torch.bool, device=start.device)
        budget, it, then = max_iter, 0, None  # then: the step's norm `span` steps ago
        while budget is None or it < budget:
            x_new, it = step(x), it + 1
            if it == 1:
                first = torch.linalg.vector_norm(x_new - x, dim=-1)
            if it % 8 and it != budget:
                x = x_new
                continue
            delta, x = x_new - x, x_new
            size = torch.linalg.vector_norm(delta, dim=-1)
            scaled = (delta.abs() / (1 + x.abs())).amax(-1)
            now = scaled <= factor
            if it % span == 0:
                if then is not None:  # not even halved over `span` steps: rounding rules
                    now = now | ((2 * size > then) & (scaled <= floor))
                then = size
            out = torch.where((now & ~done).unsqueeze(-1), x, out)  # a row's first stop
            done = done | now
            if it <= 8:  # one sync for both: whether all is done, and the first step
                all_done, largest = torch.stack([done.all().to(size), first.amax()]).tolist()
                if not math.isfinite(largest):
                    break
                if budget is None:
                    need = math.log(max(largest / factor, 1.0)) / -math.log(contraction)
                    budget = 2 * math.ceil(need) + 16
            else:
                all_done = bool(done.all())
            if all_done:
                return out
        bad = ~torch.isfinite(scaled)
        if bad.any():
            raise NotConvergedError(
                f"{where}: {what} reached NaN or inf after {it} steps in {int(bad.sum())} of "
                f"{done.numel()} rows (non-finite input, or a map that diverges){hint}"
            )
        worst = float(torch.where(done, 0, scaled).max())
        why = (
            f"raise max_iter={max_iter}, or check that the map contracts by {contraction:g}"
            if max_iter is not None
            else f"a map that contracts by {contraction:g} would have converged by then"
        )
        raise NotConvergedError(
            f"{where}: {what} did not converge in {it} steps: {int((~done).sum())} of "
            f"{done.numel()} rows still move by up to {worst:.2g} per step (relative to "
            f"1 + |x|; {factor:.2g} needed); {why}{hint}"
        )

    with torch.no_grad():
        x_star = iterate(f, x0.detach(), "the fixed-point iteration")
    if not torch.is_grad_enabled():
        return x_star
    x = f(x_star)
    if not x.requires_grad:
        return x
    x_leaf = x_star.detach().requires_grad_(True)
    with torch.enable_grad():
        f_leaf = f(x_leaf)

    def adjoint(grad: Tensor | None) -> Tensor | None:
        if grad is None:  # an undefined gradient (gradcheck's probe, some autograd Functions)
            return grad

        def step(y: Tensor) -> Tensor:
            (vjp,) = torch.autograd.grad(f_leaf, x_leaf, y, retain_graph=True)
            return grad + vjp

        with torch.no_grad():
            return iterate(step, grad, "the fixed-point iteration of the gradient")

    x.register_hook(adjoint)
    # An alias is returned: a gradient taken with respect to the result itself (a log-det's
    # series estimator differentiating through x, a score ∇ₓ log p at samples) is the plain
    # one; only a gradient flowing on into x, towards the parameters and z, gets the adjoint.
    return x.view_as(x)
