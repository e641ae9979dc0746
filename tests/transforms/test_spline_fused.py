"""The packed spline (fewer ops, hand-written backward) against the reference ``rqs``, in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nfkit.transforms.functional import circular_spline, rqs
from nfkit.transforms.spline_fused import (
    _knots,
    _transposed_copy,
    rqs_packed,
    rqs_packed_inverse_value,
)


def _reference(x, params, bound, inverse=False, mins=(1e-3, 1e-3, 1e-3), circular=False):
    k = params.shape[-1] // 3 if circular else (params.shape[-1] + 1) // 3
    w, h, d = params.split([k, k, params.shape[-1] - 2 * k], dim=-1)
    return (circular_spline if circular else rqs)(
        x, w, h, d, bound=bound, inverse=inverse,
        min_width=mins[0], min_height=mins[1], min_derivative=mins[2],
    )  # fmt: skip


def _packed(x, params, bound, inverse=False, mins=(1e-3, 1e-3, 1e-3), circular=False):
    return rqs_packed(
        x, params, bound=bound, inverse=inverse, circular=circular,
        min_width=mins[0], min_height=mins[1], min_derivative=mins[2],
    )  # fmt: skip


def _inputs(
    seed: int, n: int, d: int, bins: int, scale: float, bound: float, circular: bool = False
):
    """Points inside, outside, on ±bound and on interior knots; parameters at ``scale``
    (``3K`` of them for the circular spline, ``3K - 1`` else)."""
    g = torch.Generator().manual_seed(seed)
    size = 3 * bins if circular else 3 * bins - 1
    params = torch.randn(n, d, size, generator=g, dtype=torch.float64) * scale
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * bound
    x[0, 0], x[1 % n, -1], x[2 % n, 0] = bound, -bound, 3 * bound
    return x, params


@given(
    seed=st.integers(0, 10_000),
    bins=st.integers(2, 12),
    scale=st.floats(0.0, 4.0),
    bound=st.floats(0.5, 8.0),
    mins=st.sampled_from([(1e-3, 1e-3, 1e-3), (0.05, 0.01, 0.2)]),
    inverse=st.booleans(),
    circular=st.booleans(),
)
def test_values_match_reference(seed, bins, scale, bound, mins, inverse, circular) -> None:
    """Also the circular spline (``δ_0`` at both ends, inputs beyond ±bound clamped)."""
    x, params = _inputs(seed, 16, 3, bins, scale, bound, circular)
    y_ref, l_ref = _reference(x, params, bound, inverse, mins, circular)
    y, ladj = _packed(x, params, bound, inverse, mins, circular)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    inner = x.abs() < bound if circular else torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(ladj[inner], l_ref[inner], rtol=1e-9, atol=1e-9)
    # a circle's ends (and inputs clamped to them): ξ is exactly 0 or 1 there; the reference's
    # inverse finds it as a root with cancellation (up to ~1e-6 off with steep derivatives), its
    # forward exactly; the ends are fixed points, so there the inverse's is minus the forward's
    if circular and inverse:
        l_ref = -_reference(x.clamp(-bound, bound), params, bound, False, mins, circular)[1]
    torch.testing.assert_close(ladj[~inner], l_ref[~inner], rtol=1e-9, atol=1e-9)


@given(
    seed=st.integers(0, 10_000),
    bins=st.integers(2, 10),
    scale=st.floats(0.0, 3.0),
    mins=st.sampled_from([(1e-3, 1e-3, 1e-3), (0.05, 0.01, 0.2)]),
    inverse=st.booleans(),
    circular=st.booleans(),
)
def test_gradients_match_reference(seed, bins, scale, mins, inverse, circular) -> None:
    """The hand-written backward equals autograd through the reference, for x and all params.

    Forward: the chain rule through the knots; inverse: the implicit function theorem. Circular:
    ``δ_0``'s gradient gathers both ends'.
    """
    x, params = _inputs(seed, 12, 3, bins, scale, 4.0, circular)
    g = torch.Generator().manual_seed(seed + 1)
    gy, gl = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    if circular:  # inputs on or beyond ±bound sit on the clamp (a measure-zero set on a circle,
        # where the reference's clamp of ξ rounds differently): no cotangent from them
        edge = x.abs() >= 4.0
        gy, gl = gy.masked_fill(edge, 0.0), gl.masked_fill(edge, 0.0)
    grads = []
    for fn in (_reference, _packed):
        xr, pr = x.clone().requires_grad_(), params.clone().requires_grad_()
        out = fn(xr, pr, 4.0, inverse, mins, circular)
        grads.append(torch.autograd.grad(out, (xr, pr), (gy, gl)))
    for ours, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-9)


def test_layouts_and_broadcasting() -> None:
    """Parameter-major (non-contiguous) params and params broadcast over the batch."""
    x, params = _inputs(0, 10, 4, 6, 1.5, 3.0)
    plane = params.transpose(-1, -2).contiguous().transpose(-1, -2)  # (B, D, P) param-major
    assert not plane.is_contiguous()
    torch.testing.assert_close(_packed(x, plane, 3.0), _reference(x, params, 3.0))
    shared = params[0].clone().requires_grad_()  # (D, P) for every row
    xr = x.clone().requires_grad_()
    y, ladj = _packed(xr, shared, 3.0)
    gx, gp = torch.autograd.grad((y.sum() + ladj.sum()), (xr, shared))
    ref_p = shared.detach().clone().requires_grad_()
    xr2 = x.clone().requires_grad_()
    y2, l2 = _reference(xr2, ref_p, 3.0)
    gx2, gp2 = torch.autograd.grad((y2.sum() + l2.sum()), (xr2, ref_p))
    assert gp.shape == shared.shape
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gp, gp2)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("layout", ["parameter-major", "feature-major"])
def test_parameter_gradient_takes_the_parameters_layout(
    inverse: bool, layout: str, circular: bool
) -> None:
    """The gradient of parameter-major params (a MADE's transposed output view) comes back in
    their own strides, so the view's backward needs no copy; feature-major params get the
    gradient as before. Values equal the reference's in both."""
    x, params = _inputs(7, 10, 4, 6, 1.5, 3.0, circular)
    leaf = params.clone().requires_grad_()
    view = (
        leaf.transpose(-1, -2).contiguous().transpose(-1, -2)
        if layout == "parameter-major"
        else leaf
    )
    grads = {}

    def keep(g: torch.Tensor) -> torch.Tensor:
        grads["spline"] = g
        return g

    view.register_hook(keep)  # the gradient exactly as the spline returns it
    g = torch.Generator().manual_seed(8)
    gy, gl = torch.randn(2, 10, 4, generator=g, dtype=torch.float64)
    out = _packed(x, view, 3.0, inverse, circular=circular)
    (gp,) = torch.autograd.grad(out, leaf, (gy, gl))
    ref_p = params.clone().requires_grad_()
    ref = _reference(x, ref_p, 3.0, inverse, circular=circular)
    (gp_ref,) = torch.autograd.grad(ref, ref_p, (gy, gl))
    torch.testing.assert_close(gp, gp_ref, rtol=1e-8, atol=1e-9)
    if layout == "parameter-major":
        assert grads["spline"].stride() == view.stride()
    else:
        assert grads["spline"].stride(-1) != 1  # rows contiguous; the view's backward copies


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("layout", ["expanded", "one row", "per feature"])
def test_parameters_shared_across_the_batch(inverse: bool, layout: str, circular: bool) -> None:
    """Shared parameters build the per-bin table once (stride-0 dims are narrowed to size 1) and
    read it per input: values and gradients equal the reference on the materialized parameters.
    """
    x, params = _inputs(5, 9, 3, 7, 2.0, 3.0, circular)
    base = {"expanded": params[0, 0], "one row": params[0, 0], "per feature": params[0]}[layout]
    leaf = base.clone().requires_grad_()
    shared = {
        "expanded": leaf.expand(9, 3, leaf.shape[-1]),  # stride 0 in both batch dims
        "one row": leaf,  # (P,), broadcast against x (9, 3)
        "per feature": leaf.expand(9, 3, leaf.shape[-1]),  # stride 0 along the batch only
    }[layout]
    dense = leaf.detach().expand(9, 3, leaf.shape[-1]).clone().requires_grad_()
    g = torch.Generator().manual_seed(6)
    gy, gl = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    xr, xr2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.no_grad():
        torch.testing.assert_close(
            _packed(x, shared, 3.0, inverse, circular=circular),
            _reference(x, dense, 3.0, inverse, circular=circular),
        )
    out = _packed(xr, shared, 3.0, inverse, circular=circular)
    ref = _reference(xr2, dense, 3.0, inverse, circular=circular)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gx, gp = torch.autograd.grad(out, (xr, leaf), (gy, gl))
    gx2, gd = torch.autograd.grad(ref, (xr2, dense), (gy, gl))
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gp, gd.sum_to_size(leaf.shape))


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck_and_double_backward(inverse: bool, circular: bool) -> None:
    """First derivatives by finite differences; second derivatives go through the reference."""
    x, params = _inputs(3, 4, 2, 5, 1.0, 3.0, circular)
    x = x[3:].clone().requires_grad_()  # interior points: finite differences need smoothness
    p = params[3:].clone().requires_grad_()

    def fn(a, b):
        return _packed(a, b, 3.0, inverse, circular=circular)

    assert torch.autograd.gradcheck(fn, (x, p))
    assert torch.autograd.gradgradcheck(fn, (x, p))


@pytest.mark.parametrize("inverse", [False, True])
def test_backward_leaves_the_saved_locals_intact(inverse: bool) -> None:
    """The hand-written backward works in place on its own temporaries only: a second backward
    through the same graph (``retain_graph``) gives the same gradients as the first."""
    x, params = _inputs(5, 16, 3, 6, 1.0, 3.0)
    x, params = x.requires_grad_(), params.requires_grad_()
    y, ladj = _packed(x, params, 3.0, inverse)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gl = torch.randn(ladj.shape, generator=g, dtype=y.dtype)
    first = torch.autograd.grad((y, ladj), (x, params), (gy, gl), retain_graph=True)
    second = torch.autograd.grad((y, ladj), (x, params), (gy, gl))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    ref = torch.autograd.grad(_reference(x, params, 3.0, inverse), (x, params), (gy, gl))
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b)


@given(
    seed=st.integers(0, 10_000),
    x=st.floats(-1e30, 1e30, allow_nan=False),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_finite_everywhere(seed: int, x: float, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    params = (torch.randn(1, 17, generator=g) * 5).to(dtype).requires_grad_()
    xt = torch.tensor([x], dtype=dtype, requires_grad=True)
    for inverse in (False, True):
        y, ladj = _packed(xt, params, 3.0, inverse)
        gx, gp = torch.autograd.grad((y + ladj).sum(), (xt, params))
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        assert torch.isfinite(gx).all() and torch.isfinite(gp).all()


def test_one_bin_uses_the_reference() -> None:
    x, params = _inputs(1, 5, 2, 1, 1.0, 2.0)
    torch.testing.assert_close(_packed(x, params, 2.0), _reference(x, params, 2.0))


@pytest.mark.parametrize("inverse", [False, True])
def test_in_place_change_before_backward_is_detected(inverse: bool) -> None:
    """The saved locals would be stale: autograd's version check must refuse, as for any op."""
    x, params = _inputs(2, 6, 2, 4, 1.0, 3.0)
    leaf = params.clone().requires_grad_()
    p = leaf * 1.0
    y, ladj = _packed(x, p, 3.0, inverse)
    p.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (y.sum() + ladj.sum()).backward()


@pytest.mark.filterwarnings("ignore:torch.searchsorted")  # vmap's batched view of the knots
def test_torch_func_transforms_use_the_reference() -> None:
    """``torch.func.grad`` and ``vmap(jacrev)`` work and agree with plain autograd."""
    x, params = _inputs(4, 5, 2, 6, 1.0, 3.0)
    grad = torch.func.grad(lambda a: _packed(a, params, 3.0)[1].sum())(x)
    xr = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(_reference(xr, params, 3.0)[1].sum(), xr)
    torch.testing.assert_close(grad, expected)
    p0 = params[:, 0]
    jac = torch.func.vmap(torch.func.jacrev(lambda a, p: _packed(a, p, 3.0)[0]))(x[:, 0], p0)
    torch.testing.assert_close(jac, torch.exp(_reference(x[:, 0], p0, 3.0)[1]))


@pytest.mark.parametrize("inverse", [False, True])
def test_large_parameters_take_the_tiled_transpose_with_the_same_result(inverse: bool) -> None:
    torch.manual_seed(0)
    params = torch.randn(4096, 8, 23)  # 753k entries: over the 2**19 threshold
    pt = params.movedim(-1, 0)
    assert torch.equal(_transposed_copy(params, pt), pt.contiguous())
    small = params[:64]
    assert torch.equal(
        _transposed_copy(small, small.movedim(-1, 0)), small.movedim(-1, 0).contiguous()
    )
    # the same spline through the tiled copy (contiguous params) and the plain one (not contiguous)
    x = 6 * torch.rand(4096, 8) - 3
    other = params.transpose(0, 1).contiguous().transpose(0, 1)
    a = params.clone().requires_grad_()
    b = other.clone().requires_grad_()
    ya, la = rqs_packed(x, a, bound=5.0, inverse=inverse)
    yb, lb = rqs_packed(x, b, bound=5.0, inverse=inverse)
    assert torch.equal(ya, yb) and torch.equal(la, lb)
    (ya.sum() + la.sum()).backward()
    (yb.sum() + lb.sum()).backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("layout", ["per input", "param-major", "expanded", "one row"])
@pytest.mark.parametrize("grad", [False, True])
def test_inverse_value_equals_the_inverse(layout: str, grad: bool, circular: bool) -> None:
    """The value-only inverse (sampling) is the inverse's first output, bitwise without autograd;
    with autograd it is that output and its gradient."""
    x, params = _inputs(7, 9, 3, 6, 2.0, 3.0, circular)
    params = {
        "per input": params,
        "param-major": params.movedim(-1, 0).contiguous().movedim(0, -1),
        "expanded": params[0, 0].expand(9, 3, params.shape[-1]),
        "one row": params[0, 0],
    }[layout]
    kw = {"bound": 3.0, "min_width": 1e-3, "min_height": 2e-3, "min_derivative": 1e-3}
    kw["circular"] = circular
    if not grad:
        with torch.no_grad():
            value = rqs_packed_inverse_value(x, params, **kw)
            want = rqs_packed(x, params, inverse=True, **kw)[0]
        assert torch.equal(value, want)
        return
    xr = x.clone().requires_grad_()
    value = rqs_packed_inverse_value(xr, params, **kw)
    mins = (1e-3, 2e-3, 1e-3)
    want = _reference(x.clone().requires_grad_(), params, 3.0, True, mins, circular)[0]
    torch.testing.assert_close(value, want)
    (gx,) = torch.autograd.grad(value.sum(), xr)
    x2 = x.clone().requires_grad_()
    (gx2,) = torch.autograd.grad(_reference(x2, params, 3.0, True, mins, circular)[0].sum(), x2)
    torch.testing.assert_close(gx, gx2)


@pytest.mark.parametrize("inverse", [False, True])
def test_large_batches_sum_the_bins_row_by_row(inverse: bool) -> None:
    """From 32768 entries the knots' cumulative sum is row additions: the same sums as
    ``torch.cumsum`` (to rounding), and the spline's values and gradients still match the
    reference; in float32 the points on and near ±bound stay in the interval (to rounding) and
    round-trip."""
    torch.manual_seed(0)
    size = torch.softmax(torch.randn(2, 8, 4096, dtype=torch.float64), 1) * 6.0  # Σ = 2B, B = 3
    ref = torch.cumsum(size, 1) - 3.0
    torch.testing.assert_close(_knots(size, 3.0), ref, rtol=0, atol=1e-14)
    assert (_knots(size, 3.0)[:, -1] == 3.0).all()  # pinned
    small = size[..., :16]
    expected = torch.cumsum(small, 1).sub_(3.0)
    expected[:, -1] = 3.0
    assert torch.equal(_knots(small, 3.0), expected)  # below the threshold: torch's cumsum
    x, params = _inputs(3, 512, 8, 8, 2.0, 4.0)  # 2 · 8 · 4096 entries per knot table
    xr, pr = x.clone().requires_grad_(), params.clone().requires_grad_()
    xp, pp = x.clone().requires_grad_(), params.clone().requires_grad_()
    ref, ours = _reference(xr, pr, 4.0, inverse), _packed(xp, pp, 4.0, inverse)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    cot = torch.randn(2, 512, 8, dtype=torch.float64)
    g_ref = torch.autograd.grad(ref, (xr, pr), tuple(cot))
    g_ours = torch.autograd.grad(ours, (xp, pp), tuple(cot))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    p32 = (torch.randn(4096, 8, 23) * 3).float()
    edge = torch.tensor([-5.0, -5.0 + 1e-6, -4.9999, 4.9999, 5.0 - 1e-6, 5.0])
    x32 = edge.repeat(4096 * 8 // 6 + 1)[: 4096 * 8].view(4096, 8)
    y, ladj = rqs_packed(x32, p32, bound=5.0, inverse=inverse)
    back, _ = rqs_packed(y, p32, bound=5.0, inverse=not inverse)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert y.abs().max() <= 5.0 + 1e-5  # the last knot is pinned: [-B, B] maps onto itself
    torch.testing.assert_close(back, x32, rtol=0, atol=1e-3)  # steep float32 bins: ~3e-4


@pytest.mark.parametrize("inverse", [False, True])
def test_many_bins_count_in_int64(inverse: bool) -> None:
    """Over 256 bins the bin index is counted in int64 (uint8 would wrap): values still match."""
    x, params = _inputs(5, 64, 2, 300, 1.0, 3.0)
    y_ref, l_ref = _reference(x, params, 3.0, inverse)
    y, ladj = _packed(x, params, 3.0, inverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ladj, l_ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("packed", [True, False], ids=["fused", "reference"])
def test_inverse_root_is_exact_to_rounding_next_to_a_steep_knot(packed: bool) -> None:
    """``2 s Δy / (b + √disc)`` cancels when ``b < 0`` (the next knot's slope above twice the
    bin's): a wide flat bin before a knot of slope ~20 gave x 4e-4 off in float32 (|f(x) - y|
    200 ulps). With the sign-aware root it is the float64 root to rounding."""
    th = torch.tensor([5.0, -5.0, -5.0, 5.0, 20.0])  # bin 0: width ~6, height ~0.02
    x = torch.linspace(2.5, 2.99, 8)

    def spline(v: torch.Tensor, p: torch.Tensor, inverse: bool) -> torch.Tensor:
        p = p.expand(8, -1)
        if packed:
            return rqs_packed(v, p, bound=3.0, inverse=inverse)[0]
        w, h, d = p.split([2, 2, 1], -1)
        return rqs(v, w, h, d, bound=3.0, inverse=inverse)[0]

    y = spline(x, th, False)
    back = spline(y, th, True)
    exact = spline(y.double(), th.double(), True)
    assert (back.double() - exact).abs().max() < 2e-5  # (4e-4 before)
    assert (spline(back, th, False) - y).abs().max() <= 4 * torch.finfo(torch.float32).eps
