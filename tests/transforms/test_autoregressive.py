"""The autoregressive inverse: one feature per pass, against the plain fixed-point iteration."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nfkit.transforms import (
    AdditiveTransformer,
    AffineTransformer,
    Autoregressive,
    RQSplineTransformer,
)

TRANSFORMERS = {
    "affine": AffineTransformer(),
    "spline": RQSplineTransformer(bins=4, bound=3.0),
    "additive": AdditiveTransformer(),
}


def _layer(d: int, kind: str, context: int, residual: bool, seed: int) -> Autoregressive:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(d, generator=g)
    layer = Autoregressive(
        d, TRANSFORMERS[kind], context=context, order=order, hidden=(12, 12), residual=residual
    ).double()
    with torch.no_grad():  # away from the identity (the output layer starts at zero)
        layer.made.theta.copy_(0.5 * torch.randn(layer.made.theta.shape, generator=g))
    return layer


def _fixed_point(layer: Autoregressive, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The textbook inverse: D full passes of x ← τ⁻¹(z; θ(x)), every feature every pass."""
    x = torch.zeros_like(z)
    for _ in range(layer.features):
        x, _ = layer.transformer.inverse(z, layer.made(x, c))
    return x


@given(
    d=st.integers(1, 6),
    kind=st.sampled_from(sorted(TRANSFORMERS)),
    context=st.sampled_from([0, 2]),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_inverse_matches_the_fixed_point_iteration(
    d: int, kind: str, context: int, residual: bool, seed: int
) -> None:
    layer = _layer(d, kind, context, residual, seed)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(5, d, dtype=torch.float64, generator=g)
    c = torch.randn(5, context, dtype=torch.float64, generator=g) if context else None
    with torch.no_grad():  # the in-place path
        x, ladj = layer.inverse(z, c)
        torch.testing.assert_close(x, _fixed_point(layer, z, c))
        z_back, ladj_fwd = layer(x, c)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(ladj, -ladj_fwd)
    x_grad, ladj_grad = layer.inverse(z, c)  # the out-of-place path (autograd recording)
    torch.testing.assert_close(x_grad, x, rtol=0, atol=0)
    torch.testing.assert_close(ladj_grad, ladj, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_inverse_gradients(kind: str) -> None:
    # rsample through an MAF, or an IAF's density: gradients reach z, the context and the weights
    layer = _layer(3, kind, 2, False, seed=3)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    theta = layer.made.theta
    inv = layer.inv  # its forward is the layer's inverse

    def g(z: torch.Tensor, c: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(inv, {"transform.made.theta": theta}, (z, c))

    assert torch.autograd.gradcheck(g, (z, c, theta))


def test_inverse_broadcasts_the_context_over_samples() -> None:
    layer = _layer(4, "spline", 2, False, seed=5)
    z = torch.randn(3, 5, 4, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64)
    x, ladj = layer.inverse(z, c)
    assert x.shape == (3, 5, 4) and ladj.shape == (3, 5)
    for s in range(3):
        xs, ls = layer.inverse(z[s], c)
        torch.testing.assert_close(x[s], xs)
        torch.testing.assert_close(ladj[s], ls)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_pass_parameters_are_parameter_major(batch: tuple[int, ...]) -> None:
    """A pass's ``θ`` equals ``F.linear`` and each parameter is contiguous over the batch (the
    layout the spline reads without a transposing copy)."""
    from nfkit.transforms.autoregressive import _linear_param_major

    g = torch.Generator().manual_seed(0)
    h = torch.randn(*batch, 7, generator=g, dtype=torch.float64)
    w, b = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    theta = _linear_param_major(h, w, b)
    torch.testing.assert_close(theta, torch.nn.functional.linear(h, w, b))
    if batch:  # parameter j is the contiguous block j of the storage
        assert theta[..., 0].is_contiguous()
        assert theta.stride(-1) == theta[..., 0].numel()


def test_context_refusals_are_one_line() -> None:
    """The inverse names a context that does not broadcast with z, as the forward does (a raw
    broadcast error before); a negative context size is refused at construction."""
    layer = Autoregressive(3, AffineTransformer(), context=2, hidden=(8,))
    z, c = torch.randn(5, 3), torch.randn(4, 2)
    for call in (layer.forward, layer.inverse, layer.inverse_value):
        with pytest.raises(ValueError, match=r"context's batch shape \(4,\) does not broadcast with the input's \(5,\)"):
            call(z, c)
    with pytest.raises(ValueError, match="Autoregressive: context must be an integer >= 0, got -1"):
        Autoregressive(3, AffineTransformer(), context=-1)
