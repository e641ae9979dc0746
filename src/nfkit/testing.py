r"""Public conformance checks: run them on your own transforms and flows.

``check_transform`` verifies, for one transform and one input batch, that ``inverse`` undoes
``forward``, that ``ladj`` equals ``log|det|`` of the autograd Jacobian per event, that the two
directions' ``ladj`` are negatives of each other, and the shapes. ``check_flow`` runs zuko's
checklist on a whole :class:`~nfkit.Flow`. Use float64 inputs for tight tolerances.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nfkit.core import Flow, Transform, _batch_coupled, autograd_inside

__all__ = ["check_transform", "check_flow", "jacobian_logdet", "perturb_parameters"]


def perturb_parameters(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Add ``N(0, scale²)`` noise to every parameter, so zero-initialized layers are not identities."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.add_(scale * noise.to(p.dtype).to(p.device))
    return module


def jacobian_logdet(
    fn: callable,
    x: Tensor,
    event_dim: int = 1,  # noqa: UP037
) -> Tensor:
    """``log|det ∂fn(x)/∂x|`` per event by autograd, assuming events are independent.

    Row ``i`` of every event's Jacobian is the gradient of ``Σ_batch fn(x)[..., i]``, so the cost
    is one backward pass per event coordinate, whatever the batch size.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        batch = out.shape[: out.dim() - event_dim]
        flat = out.reshape(*batch, -1)
        n = flat.shape[-1]
        rows = []
        for i in range(n):
            (g,) = torch.autograd.grad(flat[..., i].sum(), x, retain_graph=True)
            rows.append(g.expand(*batch, *g.shape[g.dim() - event_dim :]).reshape(*batch, -1))
    jac = torch.stack(rows, dim=-2)
    return torch.linalg.slogdet(jac)[1]


def _close(
    where: str, name: str, got: Tensor, want: Tensor, atol: float, rtol: float = 0.0
) -> None:
    if got.shape != want.shape:
        raise AssertionError(
            f"{where}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        )
    err = (got - want).abs()
    tol = atol + rtol * want.abs()
    if not bool(torch.isfinite(got).all()):
        raise AssertionError(f"{where}: {name} has non-finite values")
    if not bool((err <= tol).all()):
        allowed = f"{atol:g}" if not rtol else f"{atol:g} + {rtol:g}·|reference|"
        raise AssertionError(
            f"{where}: {name} differs by up to {err.max().item():.3g} (tolerance {allowed})"
        )


def check_transform(
    t: Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    atol_inverse: float = 1e-8,
    atol_ladj: float = 1e-6,
    jacobian: bool = True,
    parameters: bool = True,
) -> dict[str, float]:
    r"""Check a transform at ``x`` (use float64). Raises ``AssertionError`` naming what failed.

    Checks, in this order: (a) the shapes: ``ladj`` of each direction has the batch shape of
    ``x`` (broadcast with the context's), ``z`` that batch plus an event of ``x``'s size;
    (b) ``inverse(forward(x)) ≈ x``; (c) ``ladj ≈ log|det J|`` of the autograd Jacobian, per
    event (the forward's log-det); (d) ``ladj_inverse(z) ≈ -ladj(x)`` (the inverse's);
    (e) ``inverse_value(z)`` (no autograd; and under ``torch.inference_mode()``, as
    :meth:`~nfkit.Flow.sample` runs it, unless :attr:`~nfkit.Transform.autograd_inside`)
    equals ``inverse(z)[0]``; (e') for rows ``x (n, *event)`` (and a transform whose values
    do not depend on the batch), ``forward`` and ``inverse`` at batch shapes ``(2, n/2)`` and
    ``()`` (one event) give the same values with that batch shape (a log-det summed over
    ``dim=1`` instead of the event is right at ``(n, D)`` alone); (f) with ``parameters`` (float64
    only), the gradients with respect to the transform's parameters: along a random direction
    ``v``, the autograd derivative of ``Σ r·z``, ``Σ ladj`` (forward), ``Σ r'·x`` and ``Σ
    ladj_inverse`` (inverse at the fixed ``z``; ``r, r'`` random), each on its own, equals the
    central difference ``(f(θ + εv) - f(θ - εv)) / 2ε`` (each evaluation with the same random
    seed): a log-det or an inverse whose value is right but whose graph is cut from a parameter
    (``.detach()``, a ``.data`` read) trains the wrong objective, and (b)–(e) cannot see it; the
    same along a direction of the inputs (``x``, ``z``, the context), which also tests a
    hand-written backward of the forward's value, on which (c)'s Jacobian relies.
    Returns the largest errors seen, for reporting.
    """
    try:
        return _check_transform(t, x, context, atol_inverse, atol_ladj, jacobian, parameters)
    except AssertionError as e:
        if x.dtype != torch.float64:
            raise AssertionError(
                f"{e} (checked in {str(x.dtype).replace('torch.', '')}: use float64 inputs "
                "and a float64 transform for these tolerances)"
            ) from None
        raise


def _check_transform(
    t: Transform,
    x: Tensor,
    context: Tensor | None,
    atol_inverse: float,
    atol_ladj: float,
    jacobian: bool,
    parameters: bool,
) -> dict[str, float]:
    name = type(t).__name__
    event_dim = t.event_dim
    z, ladj = t(x, context)
    batch = x.shape[: x.dim() - event_dim]
    if context is not None:
        batch = torch.broadcast_shapes(batch, context.shape[:-1])
    if tuple(ladj.shape) != tuple(batch):
        raise AssertionError(
            f"{name}: ladj has shape {tuple(ladj.shape)}, expected {tuple(batch)}"
        )
    # The event may change shape (Squeeze: (C, H, W) -> (4C, H/2, W/2)) but not its size.
    z_event = z.shape[len(batch) :]
    if (
        tuple(z.shape[: len(batch)]) != tuple(batch)
        or len(z_event) != event_dim
        or z_event.numel() != x.shape[x.dim() - event_dim :].numel()
    ):
        raise AssertionError(
            f"{name}: z has shape {tuple(z.shape)}, expected batch {tuple(batch)} + event"
        )
    x_back, ladj_inv = t.inverse(z, context)
    x_shape = (*batch, *x.shape[x.dim() - event_dim :])
    if tuple(x_back.shape) != x_shape:  # (the comparison below would broadcast an extra dim)
        raise AssertionError(
            f"{name}: inverse gives x of shape {tuple(x_back.shape)}, expected {x_shape}"
        )
    if tuple(ladj_inv.shape) != tuple(batch):
        raise AssertionError(
            f"{name}: ladj of the inverse has shape {tuple(ladj_inv.shape)}, expected "
            f"{tuple(batch)} (summed over the event)"
        )
    _close(
        name, "inverse(forward(x))", x_back, x.expand_as(x_back), atol_inverse, rtol=atol_inverse
    )
    report = {"inverse_error": (x_back - x).abs().max().item()}
    if jacobian:  # the forward's log-det first: a wrong one then is not blamed on the inverse
        xb = x.expand(*batch, *x.shape[x.dim() - event_dim :])
        ref = jacobian_logdet(lambda u: t(u, context)[0], xb, event_dim)
        _close(name, "ladj vs autograd log|det J|", ladj, ref, atol_ladj, rtol=atol_ladj)
        report["ladj_error"] = (ladj - ref).abs().max().item()
    _close(
        name,
        "ladj(inverse) + ladj(forward)",  # (after (c): a gap here is the inverse's)
        ladj_inv + ladj,
        torch.zeros_like(ladj),
        atol_ladj,
    )
    report["symmetry_error"] = (ladj_inv + ladj).abs().max().item()
    with torch.no_grad():  # the value-only inverse (sampling) skips work only without autograd
        x_value = t.inverse_value(z, context)
    _close(
        name,
        "inverse_value(z) vs inverse(z)[0]",
        x_value,
        x_back.detach(),
        atol_inverse,
        rtol=atol_inverse,  # as the round trip: a fixed-point inverse at |x| = 1e8
    )
    if not autograd_inside(t):  # Flow.sample runs the inverse under inference mode
        try:
            with torch.inference_mode():
                x_value = t.inverse_value(z, context)
        except RuntimeError as e:
            raise AssertionError(
                f"{name}: inverse_value fails under torch.inference_mode() ({e}); a transform "
                "that differentiates internally must set autograd_inside = True"
            ) from e
        _close(
            name,
            "inverse_value under inference_mode",
            x_value,
            x_back.detach(),
            atol_inverse,
            rtol=atol_inverse,
        )
    _check_other_batch_shapes(name, t, x, context, z, ladj, atol_inverse, atol_ladj)
    if parameters and x.dtype == torch.float64:
        report["parameter_gradient_error"] = _check_parameter_gradients(
            name, t, x, z.detach(), context, atol_ladj
        )
        report["input_gradient_error"] = _check_input_gradients(
            name, t, x.detach(), z.detach(), context, atol_ladj
        )
    return report


def _check_other_batch_shapes(
    name: str,
    t: Transform,
    x: Tensor,
    context: Tensor | None,
    z: Tensor,
    ladj: Tensor,
    atol: float,
    atol_ladj: float,
) -> None:
    """(a) for rows ``x (n, *event)`` also at two other batch shapes, ``(2, n/2)`` and one
    event ``x[0]``: the same values with the batch shape kept, in both directions (a log-det
    summed over ``dim=1`` rather than the event passes at ``(n, D)`` alone). An ``x`` (and
    context) of several batch dims is first flattened to rows, which must give the same values:
    a layer that mixes events along a batch dim can pass the Jacobian test there (it sums each
    output over the batch, assuming independent events), not this one. Skipped for a
    batch-coupled layer (its values depend on the batch)."""
    event_dim = t.event_dim
    batch_shape = z.shape[: z.dim() - event_dim]  # x's and the context's, broadcast
    if len(batch_shape) < 1 or _batch_coupled(t) or batch_shape.numel() < 2:
        return
    context_batch = None if context is None or context.dim() == 1 else context.shape[:-1]
    if (
        len(batch_shape) > 1
        or x.shape[: x.dim() - event_dim] != batch_shape
        or (context_batch is not None and context_batch != batch_shape)
    ):  # rows: x and the context broadcast to the batch shape, then flattened
        event = x.shape[x.dim() - event_dim :]
        x = x.expand(*batch_shape, *event).reshape(-1, *event)
        if context is not None and context.dim() > 1:
            context = context.expand(*batch_shape, context.shape[-1]).reshape(
                -1, context.shape[-1]
            )
        z, ladj = z.reshape(x.shape[0], *z.shape[len(batch_shape) :]), ladj.reshape(-1)
        zr, lr = t(x, context)
        _close(name, "z of the batch flattened to rows", zr, z, atol, rtol=atol)
        _close(name, "ladj of the batch flattened to rows", lr, ladj, atol_ladj, rtol=atol_ladj)
    c = context if context is None or context.dim() == 1 else None
    n = x.shape[0]
    shapes = ([((2, n // 2), n)] if n % 2 == 0 else []) + [((), 1)]
    for batch, rows in shapes:
        xb = x[:rows].reshape(*batch, *x.shape[1:])
        cb = c if c is not None or context is None else context[:rows].reshape(*batch, -1)
        zb, lb = t(xb, cb)
        if tuple(lb.shape) != tuple(batch):
            raise AssertionError(
                f"{name}: at batch shape {tuple(batch)} ladj has shape {tuple(lb.shape)}, "
                f"expected {tuple(batch)}"
            )
        _close(name, f"z at batch shape {tuple(batch)}", zb.reshape(z[:rows].shape), z[:rows],
               atol, rtol=atol)  # fmt: skip
        _close(name, f"ladj at batch shape {tuple(batch)}", lb.reshape(-1), ladj[:rows],
               atol_ladj, rtol=atol_ladj)  # fmt: skip
        xb_back, lb_inv = t.inverse(zb, cb)  # the inverse keeps the batch shape too
        if tuple(xb_back.shape) != tuple(xb.shape) or tuple(lb_inv.shape) != tuple(batch):
            raise AssertionError(
                f"{name}: at batch shape {tuple(batch)} the inverse gives x of shape "
                f"{tuple(xb_back.shape)} and ladj of shape {tuple(lb_inv.shape)}, expected "
                f"{tuple(xb.shape)} and {tuple(batch)}"
            )
        _close(name, f"inverse(z) at batch shape {tuple(batch)}", xb_back, xb, atol, rtol=atol)
        _close(name, f"ladj of the inverse at batch shape {tuple(batch)}", lb_inv.reshape(-1),
               -ladj[:rows], atol_ladj, rtol=atol_ladj)  # fmt: skip


def _seeded(run: Callable[[], Tensor], seed: int, devices: list) -> Tensor:
    """``run()`` under a fixed seed in a fork of the RNG: the same draws (Hutchinson probes,
    roulette) at every evaluation of a directional derivative."""
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return run()


def _compare_directional(
    name: str, what: str, wrt: str, exact: float, central: Callable[[float], float], atol: float
) -> float:
    """Autograd's directional derivative ``exact`` against the central difference
    ``central(ε)`` (float64: ~1e-9 relative); where they part, Richardson's extrapolation of
    two steps cancels the ε² error (an input near a Tanh's ends, strongly curved) before the
    gap counts. Raises naming ``what`` and ``wrt``; returns the relative gap."""
    numeric = central(1e-6)
    gap, scale = abs(exact - numeric), max(1.0, abs(numeric), abs(exact))
    if gap > 1e2 * atol * scale:
        numeric = (4 * central(5e-7) - numeric) / 3
        gap, scale = abs(exact - numeric), max(1.0, abs(numeric), abs(exact))
    if gap > 1e2 * atol * scale:
        cut = (
            "a value cut from a parameter's graph"
            if wrt == "the parameters"
            else (f"{wrt} cut from its graph")
        )
        raise AssertionError(
            f"{name}: the {what}'s gradient with respect to {wrt} differs from central "
            f"differences by {gap:.3g} (autograd {exact:.6g}, numeric {numeric:.6g}): is "
            f"{cut} (.detach(), .data)?"
        )
    return gap / scale


def _check_parameter_gradients(
    name: str, t: Transform, x: Tensor, z: Tensor, context: Tensor | None, atol: float
) -> float:
    """(f) of :func:`check_transform`: autograd against central differences along a random
    direction of the parameters, for the forward and the inverse; the largest relative gap."""
    params = [p for p in t.parameters() if p.requires_grad and p.dtype == torch.float64]
    if not params:
        return 0.0
    g = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
    r_z = torch.randn(z.shape, generator=g, dtype=z.dtype).to(z.device)
    r_x = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
    devices = [x.device] if x.device.type == "cuda" else []
    worst = 0.0
    for what, run in (  # the value and the log-det apart: each on its own scale
        ("forward value", lambda: (r_z * t(x, context)[0]).sum()),
        ("forward log-det", lambda: t(x, context)[1].sum()),
        ("inverse value", lambda: (r_x * t.inverse(z, context)[0]).sum()),
        ("inverse log-det", lambda: t.inverse(z, context)[1].sum()),
        # Flow.rsample differentiates the value-only inverse: its graph must be whole too
        ("inverse_value", lambda: (r_x * t.inverse_value(z, context)).sum()),
    ):
        with torch.enable_grad():
            value = _seeded(run, seed, devices)
            grads = (
                torch.autograd.grad(value, params, allow_unused=True)
                if value.requires_grad
                else [None] * len(params)  # no graph at all: every gradient is 0
            )
        exact = sum(float((gp * v).sum()) for gp, v in zip(grads, direction) if gp is not None)

        def at(step: float, run=run) -> float:  # the value with the parameters moved by step·v
            with torch.no_grad():
                for p, v in zip(params, direction):
                    p.add_(step * v)
                try:
                    return float(_seeded(run, seed, devices))
                finally:
                    for p, v in zip(params, direction):
                        p.sub_(step * v)

        central = lambda eps, at=at: (at(eps) - at(-eps)) / (2 * eps)  # noqa: E731
        worst = max(
            worst, _compare_directional(name, what, "the parameters", exact, central, atol)
        )
    return worst


def _check_input_gradients(
    name: str, t: Transform, x: Tensor, z: Tensor, context: Tensor | None, atol: float
) -> float:
    """(f) for the inputs: the forward's value and log-det in ``x``, the inverse's value and
    log-det in ``z``, and all four in the context: autograd against central differences along
    a random direction. A log-det cut from its input (``x.detach()``) or from the context
    passed every other check and trained a layer in front of it (or an embedding network) on
    the wrong gradient; a hand-written backward of the forward's value is also what (c)'s
    Jacobian reads, so a wrong one passed (c) with a log-det built to match it. The largest
    relative gap."""
    g = torch.Generator().manual_seed(1)

    def draw(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)

    r_z, r_x = draw(z), draw(x)
    runs: list[tuple[str, str, Callable[[Tensor, Tensor | None], Tensor]]] = [
        ("forward value", "x", lambda a, c: (r_z * t(a, c)[0]).sum()),
        ("forward log-det", "x", lambda a, c: t(a, c)[1].sum()),
        ("inverse value", "z", lambda a, c: (r_x * t.inverse(a, c)[0]).sum()),
        ("inverse log-det", "z", lambda a, c: t.inverse(a, c)[1].sum()),
    ]
    if context is not None and context.is_floating_point():
        runs += [
            ("forward value", "context", lambda a, c: (r_z * t(x, c)[0]).sum()),
            ("forward log-det", "context", lambda a, c: t(x, c)[1].sum()),
            ("inverse value", "context", lambda a, c: (r_x * t.inverse(z, c)[0]).sum()),
            ("inverse log-det", "context", lambda a, c: t.inverse(z, c)[1].sum()),
        ]
    seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
    devices = [x.device] if x.device.type == "cuda" else []
    worst = 0.0
    for what, wrt, run in runs:
        base = context if wrt == "context" else (x if wrt == "x" else z)
        assert base is not None
        v = draw(base)

        def at(point: Tensor, run=run, wrt=wrt) -> Tensor:
            call = (lambda: run(x, point)) if wrt == "context" else (lambda: run(point, context))
            return _seeded(call, seed, devices)

        leaf = base.clone().requires_grad_(True)
        with torch.enable_grad():
            value = at(leaf)
            grad = (
                torch.autograd.grad(value, leaf, allow_unused=True)[0]
                if value.requires_grad
                else None
            )
        exact = 0.0 if grad is None else float((grad * v).sum())

        def central(eps: float, base=base, v=v, at=at) -> float:
            with torch.no_grad():
                return (float(at(base + eps * v)) - float(at(base - eps * v))) / (2 * eps)

        worst = max(worst, _compare_directional(name, what, wrt, exact, central, atol))
    return worst


def check_flow(
    flow: Flow,
    context: Tensor | None = None,
    *,
    n: int = 16,
    atol: float = 1e-6,
    jacobian: bool = True,
    atol_inverse: float = 1e-8,
) -> None:
    r"""zuko's checklist for a whole flow (float64 recommended).

    Checks the shape of ``log_prob``; ``log_prob`` against ``log p_base(T(x)) + log|det J_T|`` by
    autograd; that every parameter gets a gradient; ``sample``/``rsample`` shapes and gradients;
    that ``sample_and_log_prob`` matches ``log_prob`` of the same samples; a ``state_dict`` round
    trip through ``torch.load(weights_only=True)``; and that ``repr`` leaves the RNG untouched.
    With ``jacobian``, also :func:`check_transform` on the flow's transform at a few of its own
    samples (embedded context; inverse to ``atol_inverse``, parameter and input gradients
    in float64).

    The checks run on a copy of ``flow``, which is left as it was (its gradients, an
    ``ActNorm``'s pending initialization, a ``BatchNorm``'s running statistics); a copy whose
    layers couple the rows of a batch in train mode (:attr:`~nfkit.Transform.batch_coupled`)
    is checked in eval mode, where a density does not depend on the other rows.
    """
    flow = copy.deepcopy(flow)
    if _batch_coupled(flow):
        flow.eval()
    name = flow.config.get("model", type(flow).__name__)
    event = tuple(flow.event_shape)
    batch = () if context is None else tuple(context.shape[:-1])
    x, log_q = flow.sample_and_log_prob((n,), context)
    if tuple(x.shape) != (n, *batch, *event):
        raise AssertionError(
            f"{name}: sample shape {tuple(x.shape)}, expected {(n, *batch, *event)}"
        )
    x = x.detach()
    lp = flow.log_prob(x, context)
    if tuple(lp.shape) != (n, *batch):
        raise AssertionError(f"{name}: log_prob shape {tuple(lp.shape)}, expected {(n, *batch)}")
    _close(name, "sample_and_log_prob vs log_prob", log_q, lp, atol * 100, rtol=1e-6)
    if jacobian:
        ctx = flow._embed(context)
        z, _ = flow.transform(x, ctx)
        ref = flow.base.log_prob(z, ctx) + jacobian_logdet(
            lambda u: flow.transform(u, ctx)[0], x, len(flow.event_shape)
        )
        _close(name, "log_prob vs change of variables", lp, ref, atol, rtol=atol)
        check_transform(
            flow.transform, x[: min(n, 5)], ctx, atol_inverse=atol_inverse, atol_ladj=atol
        )

    if any(p.requires_grad for p in flow.parameters()):  # a flow of fixed maps has none
        flow.zero_grad()
        loss = flow.log_prob(x, context).mean()
        if loss.requires_grad:  # else no parameter reaches it: all are reported below
            loss.backward()
        missing = [k for k, p in flow.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            raise AssertionError(
                f"{name}: parameters without gradient from log_prob: {missing[:5]}"
            )
        flow.zero_grad()
        loss = flow.rsample((n,), context).square().mean()
        if loss.requires_grad:
            loss.backward()
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in flow.parameters()):
            raise AssertionError(f"{name}: rsample carries no gradient to the parameters")
        flow.zero_grad()
    s = flow.sample(3, context)
    if s.requires_grad or tuple(s.shape) != (3, *batch, *event):
        raise AssertionError(
            f"{name}: sample must be gradient-free with shape {(3, *batch, *event)}"
        )

    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    flow.load_state_dict(state)
    _close(
        name, "log_prob after state_dict round trip", flow.log_prob(x, context), lp, 1e-12, 1e-12
    )

    before = torch.random.get_rng_state()
    repr(flow)
    if not torch.equal(before, torch.random.get_rng_state()):
        raise AssertionError(f"{name}: repr changed the global RNG state")
    if not bool(torch.isfinite(lp).all()):
        raise AssertionError(f"{name}: non-finite log_prob on its own samples")
