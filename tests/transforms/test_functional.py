"""Property tests of the pure spline math: monotone, invertible, identity tails, finite gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit.transforms import AffineTransformer
from nfkit.transforms.functional import (
    _affine_plain,
    affine,
    householder_matrix,
    rqs,
    softsign_clamp,
)


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
    """Gradient ``1 / (1 + |x|/B)²``; the in-place no-grad path rounds as the tracked one; the
    formula under torch.func; gradcheck and gradgradcheck."""
    x = torch.linspace(-30, 30, 13, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(softsign_clamp(x, 3.0).sum(), x)
    assert torch.equal(softsign_clamp(x.detach(), 3.0), softsign_clamp(x, 3.0).detach())
    torch.testing.assert_close(g, 1 / (1 + x.detach().abs() / 3.0) ** 2)
    smooth = torch.tensor([-7.3, -2.1, -0.4, 0.6, 3.3, 9.8], dtype=torch.float64)  # |x|: not at 0
    smooth.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: softsign_clamp(a, 2.0), (smooth,))
    assert torch.autograd.gradgradcheck(lambda a: softsign_clamp(a, 2.0), (smooth,))
    torch.testing.assert_close(torch.func.grad(lambda a: softsign_clamp(a, 3.0).sum())(x), g)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("kind", ["exp", "softsign", "sigmoid"])
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 4.0), bound=st.floats(0.5, 6.0))
@settings(max_examples=8)
def test_affine_node_matches_plain_formula(
    kind: str, inverse: bool, seed: int, scale: float, bound: float
) -> None:
    """The one-node affine map: the plain formula's values (bit for bit) and gradients, for
    both directions and every log-scale kind (raw parameters large enough to reach the sigmoid's
    floor), with the parameters feature-major or parameter-major; gradcheck and gradgradcheck."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(33, 7, generator=g, dtype=torch.float64)
    raw = torch.randn(33, 7, 2, generator=g, dtype=torch.float64) * scale
    for params in (raw, raw.permute(2, 0, 1).contiguous().permute(1, 2, 0)):
        xa, pa = x.clone().requires_grad_(), params.clone().requires_grad_()
        xb, pb = x.clone().requires_grad_(), params.clone().requires_grad_()
        y, s = affine(xa, pa, kind, bound, inverse)
        assert type(y.grad_fn).__name__ == "_AffineBackward"
        y_ref, s_ref = _affine_plain(xb, pb, kind, bound, inverse)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
        # the transformer without autograd (log_prob, sampling) computes the same values
        t = AffineTransformer(max_log_scale=bound, scale=kind)
        y_eval, s_eval = (t.inverse if inverse else t.forward)(x, params)
        torch.testing.assert_close(y_eval, y.detach(), rtol=0, atol=0)
        torch.testing.assert_close(s_eval, s.detach(), rtol=0, atol=0)
        cot_y, cot_s = torch.randn_like(x), torch.randn_like(x)
        ga = torch.autograd.grad((y, s), (xa, pa), (cot_y, cot_s))
        gb = torch.autograd.grad((y_ref, s_ref), (xb, pb), (cot_y, cot_s))
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b)
        assert ga[1].stride() == pa.stride()  # the gradient keeps the parameters' layout
        # a single output used, and the input that needs no gradient gets none
        (gp,) = torch.autograd.grad(affine(x, pa, kind, bound, inverse)[1].sum(), pa)
        (gp_ref,) = torch.autograd.grad(_affine_plain(x, pb, kind, bound, inverse)[1].sum(), pb)
        torch.testing.assert_close(gp, gp_ref)
    small_x = x[:3, :2].clone().requires_grad_()
    small_p = raw[:3, :2].clone().requires_grad_()
    f = lambda a, p: affine(a, p, kind, bound, inverse)  # noqa: E731
    assert torch.autograd.gradcheck(f, (small_x, small_p))
    assert torch.autograd.gradgradcheck(f, (small_x, small_p))


def test_affine_node_steps_aside() -> None:
    """Plain ops (not the node) without autograd, under torch.func, and for broadcasting inputs,
    with the plain formula's values; an unknown kind is a one-line error; an in-place change of
    the inverse's output before backward is an error, not a wrong gradient."""
    x, p = torch.randn(4, 3), torch.randn(4, 3, 2, requires_grad=True)
    ref = _affine_plain(x, p.detach(), "softsign", 5.0, False)
    no_node = affine(x, p.detach(), "softsign", 5.0)
    assert all(t.grad_fn is None for t in no_node)
    torch.testing.assert_close(no_node, ref, rtol=0, atol=0)
    with torch.no_grad():
        assert affine(x, p, "softsign", 5.0)[0].grad_fn is None
    wide = affine(x[:1], p, "softsign", 5.0)  # x broadcasts over the parameters' batch
    assert type(wide[0].grad_fn).__name__ != "_AffineBackward" and wide[0].shape == (4, 3)
    torch.testing.assert_close(wide, _affine_plain(x[:1], p, "softsign", 5.0, False))
    grad = torch.func.grad(lambda q: affine(x, q, "softsign", 5.0)[0].sum())(p.detach())
    (expected,) = torch.autograd.grad(_affine_plain(x, p, "softsign", 5.0, False)[0].sum(), p)
    torch.testing.assert_close(grad, expected)
    for params in (p, p.detach()):
        with pytest.raises(ValueError, match="kind must be 'exp', 'softsign' or 'sigmoid'"):
            affine(x, params, "tanh", 5.0)
    y, _ = affine(x, p, "softsign", 5.0, True)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 9), d=st.integers(1, 9))
def test_householder_matrix_is_the_product_of_reflections(seed: int, k: int, d: int) -> None:
    """The one-block (UT) form equals ``H_K ⋯ H_1`` multiplied out reflection by reflection."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(2, k, d, generator=g, dtype=torch.float64)
    expected = torch.eye(d, dtype=torch.float64).expand(2, d, d)
    for i in range(k):
        v = vectors[:, i, :, None]
        reflection = torch.eye(d, dtype=torch.float64) - 2 * v @ v.mT / (v.mT @ v)
        expected = reflection @ expected
    q = householder_matrix(vectors)
    torch.testing.assert_close(q, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(q @ q.mT, torch.eye(d, dtype=torch.float64).expand(2, d, d))
