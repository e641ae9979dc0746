"""Property tests of the pure spline math: monotone, invertible, identity tails, finite gradients."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit.transforms.functional import _UnbindLast, rqs, softsign_clamp, unbind_last

settings.register_profile("nfkit", deadline=None, max_examples=40)
settings.load_profile("nfkit")


def _params(seed: int, n: int, bins: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, bins, generator=g, dtype=torch.float64) * scale
    h = torch.randn(n, bins, generator=g, dtype=torch.float64) * scale
    d = torch.randn(n, bins - 1, generator=g, dtype=torch.float64) * scale
    return w, h, d


@given(
    seed=st.integers(0, 10_000),
    bins=st.integers(1, 12),
    scale=st.floats(0.0, 2.0),
    bound=st.floats(0.5, 10.0),
)
def test_spline_monotone_and_invertible(seed: int, bins: int, scale: float, bound: float) -> None:
    w, h, d = _params(seed, 1, bins, scale)
    x = torch.linspace(-2 * bound, 2 * bound, 801, dtype=torch.float64)
    y, ladj = rqs(x, w.expand(801, -1), h.expand(801, -1), d.expand(801, -1), bound=bound)
    assert (y[1:] >= y[:-1]).all(), "not monotone"
    xb, ladj_inv = rqs(
        y, w.expand(801, -1), h.expand(801, -1), d.expand(801, -1), bound=bound, inverse=True
    )
    torch.testing.assert_close(xb, x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-8, rtol=0)
    outside = x.abs() >= bound
    torch.testing.assert_close(y[outside], x[outside])  # identity tails
    assert (ladj[outside] == 0).all()


@given(
    seed=st.integers(0, 10_000),
    x=st.floats(-1e30, 1e30, allow_nan=False),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_spline_finite_everywhere(seed: int, x: float, dtype: torch.dtype) -> None:
    w, h, d = (p.to(dtype).requires_grad_(True) for p in _params(seed, 1, 6, 1.0))
    xt = torch.tensor([x], dtype=dtype, requires_grad=True)
    for inverse in (False, True):
        y, ladj = rqs(xt, w, h, d, bound=3.0, inverse=inverse)
        grads = torch.autograd.grad((y + ladj).sum(), [xt, w, h, d])
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        assert all(torch.isfinite(g).all() for g in grads)


def test_spline_zero_parameters_is_identity() -> None:
    x = torch.randn(100, dtype=torch.float64) * 4
    w, h, d = torch.zeros(100, 8), torch.zeros(100, 8), torch.zeros(100, 7)
    y, ladj = rqs(x, w.double(), h.double(), d.double(), bound=5.0)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-12, rtol=0)


@given(seed=st.integers(0, 10_000), bins=st.integers(2, 10))
def test_knots_use_their_own_minimum_sizes(seed: int, bins: int) -> None:
    """With min_width != min_height, every x-knot maps onto its y-knot (the stacked path)."""
    from nfkit.transforms.functional import _knots

    w, h, d = _params(seed, 1, bins, 4.0)
    w[..., 0] = -80.0  # a collapsed bin: its size is set by the minimum alone
    h[..., -1] = -80.0
    xk = _knots(w, 3.0, 0.05)[0]
    yk = _knots(h, 3.0, 0.01)[0]
    assert abs(float(xk[1] - xk[0]) - 0.05 * 6.0) < 1e-9
    assert abs(float(yk[-1] - yk[-2]) - 0.01 * 6.0) < 1e-9
    y, _ = rqs(
        xk[1:-1], w.expand(bins - 1, bins), h.expand(bins - 1, bins), d.expand(bins - 1, bins - 1),
        bound=3.0, min_width=0.05, min_height=0.01,
    )  # fmt: skip
    torch.testing.assert_close(y, yk[1:-1], rtol=0, atol=1e-9)


def test_softsign_clamp_gradients() -> None:
    """The hand-written backward: equal to autograd through the formula, gradcheck and
    gradgradcheck (double backward recomputes from the input), and the torch.func fallback."""
    x = torch.linspace(-30, 30, 13, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(softsign_clamp(x, 3.0).sum(), x)
    # the no-grad path rounds as the Function does (a sampled point maps back exactly)
    assert torch.equal(softsign_clamp(x.detach(), 3.0), softsign_clamp(x, 3.0).detach())
    xr = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad((xr / (1 + xr.abs() / 3.0)).sum(), xr)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(g, 1 / (1 + x.detach().abs() / 3.0) ** 2)
    smooth = torch.tensor([-7.3, -2.1, -0.4, 0.6, 3.3, 9.8], dtype=torch.float64)  # |x|: not at 0
    smooth.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: softsign_clamp(a, 2.0), (smooth,))
    assert torch.autograd.gradgradcheck(lambda a: softsign_clamp(a, 2.0), (smooth,))
    torch.testing.assert_close(torch.func.grad(lambda a: softsign_clamp(a, 3.0).sum())(x), g)


def test_unbind_last_matches_unbind_with_gradients() -> None:
    torch.manual_seed(0)
    # (4096, 9, 2): slots of 36864 entries take the Function; the feature-major layout of a
    # network's output (parameters innermost) and a transposed one
    base = torch.randn(4096, 9, 2, dtype=torch.float64)
    for x in (base, base.transpose(0, 1).contiguous().transpose(0, 1)):
        x = x.clone().requires_grad_()
        ref = x.detach().clone().requires_grad_()
        parts, ref_parts = unbind_last(x), ref.unbind(-1)
        assert type(parts[0].grad_fn).__name__ == "_UnbindLastBackward"
        for p, r in zip(parts, ref_parts):
            torch.testing.assert_close(p, r, rtol=0, atol=0)
        cot = [torch.randn_like(r) for r in ref_parts]
        (sum((p.sin() * c).sum() for p, c in zip(parts, cot))).backward()
        (sum((r.sin() * c).sum() for r, c in zip(ref_parts, cot))).backward()
        torch.testing.assert_close(x.grad, ref.grad, rtol=0, atol=0)
        assert x.grad.stride() == x.stride()  # the gradient keeps the input's layout
        # one slot unused: its gradient is zero
        x.grad = None
        unbind_last(x)[1].sum().backward()
        assert x.grad[..., 0].abs().sum() == 0 and (x.grad[..., 1] == 1).all()
    # small slots: plain unbind; double backward through the Function is exact
    assert (
        unbind_last(torch.randn(8, 2, requires_grad=True))[0].grad_fn.name() == "UnbindBackward0"
    )
    small = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda t: [u.sin() for u in _UnbindLast.apply(t)], (small,)
    )


def test_unbind_last_under_torch_func_uses_plain_unbind() -> None:
    x = torch.randn(4096, 9, 2, dtype=torch.float64)  # large enough for the Function in autograd
    grad = torch.func.grad(lambda t: (unbind_last(t)[0].sin() * unbind_last(t)[1]).sum())(x)
    s, r = x.unbind(-1)
    torch.testing.assert_close(grad, torch.stack([s.cos() * r, s.sin()], -1))
