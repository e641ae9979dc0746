"""Specific tests of the monotonic transformers (DSF, UMNN, SOS, Gaussianization), their starting
parameters, and the NAF / UMNN / GF factories."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf
from nfkit.testing import perturb_parameters
from nfkit.transforms.monotonic import (
    DSFTransformer,
    GaussianizationTransformer,
    SOSPolynomialTransformer,
    UMNNTransformer,
    _normal_icdf_of_log,
    clenshaw_curtis,
)


def _random(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _umnn(seed: int, scale: float, **kwargs: object) -> UMNNTransformer:
    torch.manual_seed(seed)
    u = UMNNTransformer(embedding=3, hidden=(8, 8), **kwargs).double()  # type: ignore[arg-type]
    return perturb_parameters(u, scale, seed)  # type: ignore[return-value]


def _assert_monotone_invertible(t: object, x: torch.Tensor, params: torch.Tensor) -> None:
    z, ladj = t.forward(x, params)  # type: ignore[attr-defined]
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
    assert (z[1:] > z[:-1]).all(), "not strictly increasing"
    xb, ladj_inv = t.inverse(z, params)  # type: ignore[attr-defined]
    # Stated tolerance of the root finder: 1e-12 (1 + |x|) in float64 (checked with slack 10).
    assert ((xb - x).abs() <= 1e-11 * (1 + x.abs())).all(), (xb - x).abs().max()
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-9, rtol=1e-9)


@given(seed=st.integers(0, 10_000), hidden=st.integers(1, 6), scale=st.floats(0.0, 3.0))
def test_dsf_monotone_and_invertible(seed: int, hidden: int, scale: float) -> None:
    t = DSFTransformer(hidden=hidden, bound=4.0)
    x = torch.linspace(-8, 8, 401, dtype=torch.float64)
    params = _random(seed, (1, t.num_params), scale).expand(401, -1)
    _assert_monotone_invertible(t, x, params)


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 1.0))
def test_umnn_monotone_and_invertible(seed: int, scale: float) -> None:
    t = _umnn(seed, scale, nodes=32, bound=3.0)
    x = torch.linspace(-6, 6, 201, dtype=torch.float64)
    params = _random(seed, (1, t.num_params), 2 * scale).expand(201, -1)
    with torch.no_grad():
        _assert_monotone_invertible(t, x, params)


def test_zero_params_is_identity() -> None:
    x = torch.linspace(-30, 30, 121, dtype=torch.float64)
    for t in (DSFTransformer(hidden=5), UMNNTransformer(embedding=2).double()):
        z, ladj = t.forward(x, torch.zeros(121, t.num_params, dtype=torch.float64))
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(ladj, torch.zeros_like(x))


def test_dsf_ladj_matches_autograd_and_tails() -> None:
    t = DSFTransformer(hidden=4, bound=3.0)
    x = torch.linspace(-10, 10, 301, dtype=torch.float64, requires_grad=True)
    params = _random(1, (1, t.num_params), 1.5).expand(301, -1)
    z, ladj = t.forward(x, params)
    (dz,) = torch.autograd.grad(z.sum(), x)
    torch.testing.assert_close(dz.log(), ladj, atol=1e-10, rtol=1e-10)
    # Linear tails: constant slope outside the bound, and the map is continuous at the bound.
    outside = x.detach().abs() > 3
    right = outside & (x.detach() > 0)
    left = outside & (x.detach() < 0)
    for side in (left, right):
        torch.testing.assert_close(ladj[side], ladj[side][:1].expand(int(side.sum())))
    # Continuous at the bound (the tail starts at the inner map's value there).
    z_b, _ = t.forward(torch.tensor([3.0 - 1e-9, 3.0 + 1e-9]).double(), params[:2])
    assert (z_b[1] - z_b[0]).abs().item() < 1e-6


def test_clenshaw_curtis_exactness() -> None:
    s, w = clenshaw_curtis(8)
    assert s.dtype == torch.float64 and s.shape == (9,)
    for k in range(9):  # exact for polynomials of degree <= n
        exact = (1 - (-1) ** (k + 1)) / (k + 1)
        assert abs((w * s**k).sum().item() - exact) < 1e-14
    s, w = clenshaw_curtis(24)
    assert abs((w * torch.exp(s)).sum().item() - (math.e - 1 / math.e)) < 1e-14


def test_umnn_quadrature_accuracy() -> None:
    """The default 48-node rule on [-5, 5] agrees with a 400-node reference to 1e-9."""
    t = _umnn(3, 0.5)
    ref = _umnn(3, 0.5, nodes=400)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    params = _random(4, (101, t.num_params), 1.0)
    with torch.no_grad():
        z, _ = t.forward(x, params)
        z_ref, _ = ref.forward(x, params)
    assert (z - z_ref).abs().max().item() < 1e-9
    # ... hence log g (the exact ladj) matches the derivative of the computed map.
    xr = x.clone().requires_grad_(True)
    zr, ladj = t.forward(xr, params)
    (dz,) = torch.autograd.grad(zr.sum(), xr)
    assert (dz.log() - ladj).abs().max().item() < 1e-7


def test_umnn_float32_tails_finite() -> None:
    t = _umnn(5, 1.0).float()
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], requires_grad=True)
    params = _random(6, (5, t.num_params), 3.0).float().requires_grad_(True)
    for fn in (t.forward, t.inverse):
        out, ladj = fn(x, params)
        grads = torch.autograd.grad((out + ladj).sum(), [x, params, *t.parameters()])
        assert torch.isfinite(out).all() and torch.isfinite(ladj).all()
        assert all(torch.isfinite(g).all() for g in grads)


def test_umnn_weights_registered() -> None:
    flow = nf.models.UMNN(3, transforms=2, hidden=(8,), integrand=(8,))
    names = [k for k, _ in flow.named_parameters()]
    assert any(".transformer.net." in k for k in names), names
    assert any(".transformer.net." in k for k in flow.state_dict())
    # One integrand network per layer, shared across the coordinates of that layer.
    nets = {id(m.transformer.net) for m in flow.transform if hasattr(m, "transformer")}
    assert len(nets) == 2
    # Gradients reach the integrand network.
    flow.log_prob(torch.randn(5, 3)).sum().backward()
    assert flow.transform[0].transformer.net.theta.grad is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="DSFTransformer"):
        DSFTransformer(hidden=0)
    with pytest.raises(ValueError, match="UMNNTransformer"):
        UMNNTransformer(bound=-1.0)
    with pytest.raises(ValueError, match="NAF"):
        nf.models.NAF(0)


def _grid_mass(flow: nf.Flow, half_width: float = 8.0, n: int = 201) -> float:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(n, n)
    return torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()


@pytest.mark.parametrize("name", ["NAF", "UMNN"])
def test_density_integrates_to_one(name: str) -> None:
    torch.manual_seed(0)
    if name == "NAF":
        flow = nf.models.NAF(2, transforms=2, hidden=(16, 16), components=4)
    else:
        flow = nf.models.UMNN(2, transforms=2, hidden=(16, 16), embedding=4, integrand=(16,))
    flow = perturb_parameters(flow.double(), 0.1).eval()
    assert abs(_grid_mass(flow) - 1.0) < 1e-2


def test_dsf_inverse_where_newton_stalls() -> None:
    """A case hypothesis found (seed 1180): steep and flat stretches made the Newton steps tiny
    far from the root, and the old stopping rule took that for convergence (an error of 0.61).
    The safeguard (each kept Newton step at most half the last one) falls back to bisection."""
    t = DSFTransformer(hidden=3, bound=4.0)
    x = torch.linspace(-8, 8, 401, dtype=torch.float64)
    params = _random(1180, (1, t.num_params), 2.96875).expand(401, -1)
    _assert_monotone_invertible(t, x, params)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), components=st.integers(1, 6), scale=st.floats(0.0, 3.0))
def test_gaussianization_monotone_and_invertible(seed: int, components: int, scale: float) -> None:
    t = GaussianizationTransformer(components=components)
    x = torch.cat(
        [torch.linspace(-8, 8, 401, dtype=torch.float64), torch.tensor([-1e3, -50.0, 50.0, 1e3])]
    ).sort()[0]
    raw = t.initial_params() + _random(seed, (t.num_params,), scale)
    _assert_monotone_invertible(t, x, raw.expand(x.shape[0], -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussianization_finite_and_exact_far_out(dtype: torch.dtype) -> None:
    """No clamped tails: where F(x) underflows (x = ±1e8) z is still finite, increasing, and the
    log-det matches autograd (float64) and is finite (float32)."""
    t = GaussianizationTransformer(components=3)
    x = torch.tensor([-1e8, -1e5, -100.0, 0.0, 100.0, 1e5, 1e8], dtype=dtype, requires_grad=True)
    params = _random(3, (t.num_params,), 1.0).to(dtype).expand(7, -1)
    z, ladj = t.forward(x, params)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
    assert (z[1:] > z[:-1]).all()
    (dz,) = torch.autograd.grad(z.sum(), x)
    if dtype == torch.float64:
        torch.testing.assert_close(dz.log(), ladj, atol=1e-8, rtol=1e-8)
        xb, _ = t.inverse(z.detach(), params)
        torch.testing.assert_close(xb, x.detach(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_icdf_of_log_matches_scipy(dtype: torch.dtype) -> None:
    special = pytest.importorskip("scipy.special")
    y = torch.cat([-torch.logspace(-3, 9, 400, dtype=torch.float64), torch.tensor([-math.log(2)])])
    y = y.to(dtype).requires_grad_(True)
    z = _normal_icdf_of_log(y)
    reference = torch.from_numpy(special.ndtri_exp(y.detach().double().numpy()))
    tol = 1e-11 if dtype == torch.float64 else 1e-5
    assert ((z.double() - reference).abs() <= tol * (1 + reference.abs())).all()
    # dz/dy = Φ(z)/φ(z): exp(y + z²/2)·√(2π) where that does not overflow, 1/|z| far out
    (dz,) = torch.autograd.grad(z.sum(), y)
    zd = reference
    mills = torch.where(
        zd > -30, torch.exp(y.detach().double() + zd * zd / 2) * math.sqrt(2 * math.pi), -1 / zd
    )
    rtol = 1e-6 if dtype == torch.float64 else 1e-3
    assert ((dz.double() - mills).abs() <= rtol * mills + 1e-3 * (zd <= -30)).all()


@pytest.mark.parametrize(
    "transformer",
    [
        DSFTransformer(hidden=4),
        SOSPolynomialTransformer(polynomials=3, degree=2),
        GaussianizationTransformer(components=4),
    ],
    ids=["DSF", "SOS", "Gaussianization"],
)
def test_components_start_apart_and_move_apart(transformer: nf.transforms.Transformer) -> None:
    """Interchangeable components (sigmoids, squared polynomials, kernels) that start equal get
    equal gradients and stay one (a DSF of K equal sigmoids is the affine map a x + b); the
    structures start them at ``initial_params()``, so training moves them apart."""
    torch.manual_seed(0)
    layer = nf.transforms.Autoregressive(2, transformer, hidden=(16, 16))
    init = transformer.initial_params().to(torch.float32)
    bias = layer.made.parameter_views()[-1][1].detach().view(2, -1)
    torch.testing.assert_close(bias, init.expand(2, -1))
    x = torch.randn(256, 2) * torch.tensor([1.0, 0.5]) + torch.tensor([0.5, -1.0])
    opt = torch.optim.Adam(layer.parameters(), 1e-2)
    for _ in range(20):
        loss = -(layer(x)[1] - 0.5 * (layer(x)[0] ** 2).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        params = layer.made(x[:8])  # (8, 2, P)
    if isinstance(transformer, SOSPolynomialTransformer):
        k, r = transformer.polynomials, transformer.degree + 1
        later = params[..., :-1].unflatten(-1, (k, r))[..., 1:, :]
        assert (later.abs().amax((-1, -2)) > 0.1).all()  # the later polynomials are not zero
        return
    k = transformer.num_params // (3 if isinstance(transformer, DSFTransformer) else 2)
    offsets = params[..., k : 2 * k]
    gaps = (offsets.unsqueeze(-1) - offsets.unsqueeze(-2)).abs() + torch.eye(k)
    assert (gaps > 1e-2).all()  # every pair of components apart, in every row and feature


def test_elementwise_and_coupling_start_at_initial_params() -> None:
    kernels = GaussianizationTransformer(components=3)
    free = nf.transforms.Elementwise(4, kernels)
    assert free.params.value.dtype == torch.get_default_dtype()
    torch.testing.assert_close(
        free.params.value.view(4, -1), kernels.initial_params().float().expand(4, -1)
    )
    coupling = nf.transforms.Coupling(4, kernels, context=2, hidden=(8,))
    with torch.no_grad():
        theta = coupling._params(torch.randn(5, 2), torch.randn(5, 2))
    torch.testing.assert_close(theta, kernels.initial_params().float().expand(5, 2, -1))


def test_gf_factory() -> None:
    flow = nf.models.GF(3, transforms=3, components=4)
    assert sum(isinstance(t, nf.transforms.Householder) for t in flow.transform.transforms) == 2
    assert flow.config["model"] == "GF"
    one = nf.models.GF(1, transforms=2)
    assert not any(isinstance(t, nf.transforms.Householder) for t in one.transform.transforms)
    with pytest.raises(ValueError, match="GF: components"):
        nf.models.GF(2, components=0)


def test_gaussianization_second_derivatives() -> None:
    """``Φ⁻¹(exp(y))`` differentiates through an autograd.Function whose backward is itself
    differentiable, so gradients of gradients (a score, a Hessian) are exact too."""
    t = GaussianizationTransformer(components=3)
    x = torch.tensor([-40.0, -2.0, 0.3, 5.0], dtype=torch.float64, requires_grad=True)
    params = (t.initial_params() + _random(4, (t.num_params,), 0.5)).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda v, p: t.forward(v, p), (x, params))
    y = -torch.tensor([1.0, 30.0, 900.0, 1e5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_normal_icdf_of_log, (y,))


def test_gaussianization_layers_start_near_the_identity_even_stacked() -> None:
    """A fresh GF layer keeps a standard normal input's variance, and twelve of them stay
    near the identity (equal slopes widened the latent 3% per layer, 2.3x after twelve)."""
    from nfkit.transforms import GaussianizationTransformer

    for k in (1, 4, 8, 16):
        t = GaussianizationTransformer(components=k)
        x = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        z, _ = t.forward(x, t.initial_params().expand(len(x), -1))
        assert abs(float(z.var()) - 1) < 0.02, (k, float(z.var()))
    flow = nf.models.GF(1, transforms=12).double()
    x = torch.randn(50_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = flow.transform(x)[0]
        nll = -flow.log_prob(x).mean().item()
    # N(0, 1)'s entropy is 1.419 nats; equal slopes gave 4.0 here
    assert float(z.std()) < 1.2 and nll < 2.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("degree", [140, 1100])
def test_bernstein_of_a_high_degree_stays_finite(degree: int, dtype: torch.dtype) -> None:
    """``C(M, k)`` overflows float32 from ``M ≈ 130`` (float64: 1030): ``BPF(2, degree=140)``
    gave NaN densities and samples. The basis is computed in log space past degree 60: zero
    parameters are still the identity, the inverse and log-dets still agree."""
    from nfkit.testing import check_transform

    t = nf.transforms.BernsteinTransformer(degree=degree)
    x = torch.linspace(-6, 6, 13, dtype=dtype)
    z, ladj = t.forward(x, torch.zeros(13, t.num_params, dtype=dtype))
    tol = 1e-3 if dtype == torch.float32 else 1e-9  # (float32: exponents of ~±90 summed)
    torch.testing.assert_close(z, x, atol=tol, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=tol, rtol=0)
    if dtype == torch.float64 and degree == 140:
        layer = nf.transforms.Elementwise(2, t).double()
        perturb_parameters(layer, 0.3, 0)
        check_transform(layer, torch.randn(6, 2, dtype=dtype) * 2, atol_inverse=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaussianization_layer_gradient_at_its_median(dtype: torch.dtype) -> None:
    """At F = ½ both tails' logs round a float above log ½, where the clamp's gradient was 0,
    and torch.minimum split a tie's gradient between terms of opposite sign: dz/dx came out 0
    (float32: 3e-9 for |x| < 1.6e-8) against exp(ladj) = 0.92, and a fresh GF failed
    check_transform at x = 0."""
    layer = nf.transforms.Elementwise(1, GaussianizationTransformer(components=4)).to(dtype)
    for value in (0.0, 1e-9, -1e-9):
        x = torch.full((1, 1), value, dtype=dtype, requires_grad=True)
        z, ladj = layer(x)
        (slope,) = torch.autograd.grad(z.sum(), x)
        torch.testing.assert_close(slope, ladj.exp().reshape(1, 1))
    gf = nf.models.GF(2, transforms=2, components=4).double()
    nf.testing.check_transform(gf.transform, torch.zeros(3, 2, dtype=torch.float64))
