"""Specific tests of the monotonic transformers (DSF, UMNN) and the NAF / UMNN factories."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf
from nfkit.testing import perturb_parameters
from nfkit.transforms.monotonic import DSFTransformer, UMNNTransformer, clenshaw_curtis


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
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-9, rtol=0)


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
