"""The affine transformer's log-scale parameterizations: identity at zero, their ranges."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nfkit.transforms import AffineTransformer


@pytest.mark.parametrize("scale", ["exp", "softsign", "sigmoid"])
def test_zero_parameters_are_the_identity(scale: str) -> None:
    t = AffineTransformer(scale=scale)
    x = torch.randn(7, 3, dtype=torch.float64)
    z, ladj = t.forward(x, torch.zeros(7, 3, 2, dtype=torch.float64))
    torch.testing.assert_close(z, x, rtol=0, atol=1e-15)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), rtol=0, atol=1e-15)


@given(raw=st.floats(-1e4, 1e4), bound=st.floats(0.5, 8.0))
def test_log_scale_ranges(raw: float, bound: float) -> None:
    x = torch.ones(1, dtype=torch.float64)
    params = torch.tensor([[0.0, raw]], dtype=torch.float64)
    _, s_exp = AffineTransformer(max_log_scale=bound).forward(x, params)
    _, s_sig = AffineTransformer(max_log_scale=bound, scale="sigmoid").forward(x, params)
    assert -bound <= float(s_exp) <= bound
    _, s_soft = AffineTransformer(max_log_scale=bound, scale="softsign").forward(x, params)
    assert abs(float(s_soft)) < bound and math.copysign(1, float(s_soft)) == math.copysign(1, raw)
    # the sigmoid gate expands by at most 1/σ(2) and contracts by at most e^-B
    assert -bound <= float(s_sig) <= math.log1p(math.exp(-2.0)) + 1e-12
    xb, s_inv = AffineTransformer(max_log_scale=bound, scale="sigmoid").inverse(x, params)
    assert torch.isfinite(xb).all() and float(s_inv) == -float(s_sig)


def test_sigmoid_gate_matches_its_formula() -> None:
    raw = torch.linspace(-6, 6, 25, dtype=torch.float64)
    params = torch.stack([torch.zeros_like(raw), raw], -1)
    _, s = AffineTransformer(scale="sigmoid").forward(torch.ones_like(raw), params)
    expected = torch.log(torch.sigmoid(raw + 2) / torch.sigmoid(torch.tensor(2.0)))
    torch.testing.assert_close(s, expected.clamp_min(-5.0))


def test_softsign_matches_its_formula_and_reaches_half_the_bound_at_the_bound() -> None:
    raw = torch.linspace(-20, 20, 41, dtype=torch.float64)
    params = torch.stack([torch.zeros_like(raw), raw], -1)
    _, s = AffineTransformer(scale="softsign", max_log_scale=4.0).forward(
        torch.ones_like(raw), params
    )
    torch.testing.assert_close(s, raw / (1 + raw.abs() / 4.0))
    assert float(s[24]) == 2.0  # raw = 4 = B gives B / 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"scale": "tanh"},
            "AffineTransformer: scale must be 'exp', 'softsign' or 'sigmoid', got 'tanh'",
        ),
        (
            {"max_log_scale": 0.0},
            "AffineTransformer: max_log_scale must be a finite number > 0, got 0.0",
        ),
        (
            {"max_log_scale": float("nan")},
            "AffineTransformer: max_log_scale must be a finite number > 0, got nan",
        ),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        AffineTransformer(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("scale", ["exp", "softsign", "sigmoid"])
@pytest.mark.parametrize(
    ("x_shape", "p_shape", "x_dtype"),
    [
        ((64, 5), (64, 5), torch.float32),  # same shapes: the in-place chain
        ((64, 5), (5,), torch.float32),  # shared parameters broadcast over the batch
        ((5,), (64, 5), torch.float32),  # one input against a batch of parameters
        ((64, 5), (64, 5), torch.float64),  # mixed dtypes promote
    ],
)
def test_untracked_path_equals_the_autograd_path(
    scale: str, x_shape: tuple, p_shape: tuple, x_dtype: torch.dtype
) -> None:
    """Without autograd the affine chain runs in place on its temporaries; values, broadcast
    shapes and dtypes are exactly those of the recorded path."""
    t = AffineTransformer(scale=scale, max_log_scale=2.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=x_dtype)
    params = 3 * torch.randn(*p_shape, 2, generator=gen)
    tracked = params.clone().requires_grad_()
    for step in (t.forward, t.inverse):
        with torch.no_grad():
            y, ladj = step(x, params)
        y_ref, ladj_ref = step(x, tracked)
        assert y_ref.requires_grad
        assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
        assert torch.equal(y, y_ref.detach()) and torch.equal(ladj, ladj_ref.detach())


def _every_transformer() -> list:
    import nfkit.transforms as T

    return [
        T.AdditiveTransformer(),
        AffineTransformer(),
        T.RQSplineTransformer(bins=4),
        T.CircularRQSplineTransformer(bins=4),
        T.DSFTransformer(),
        T.SOSPolynomialTransformer(),
        T.BernsteinTransformer(),
        T.UMNNTransformer(),
    ]


@pytest.mark.parametrize("transformer", _every_transformer(), ids=lambda t: type(t).__name__)
def test_params_of_another_width_are_refused(transformer) -> None:
    """A spline read its bin count off the parameters' width (12 for 4 bins gave another
    spline, silently); the others failed in an unpack or broadcast, or gave a wrong shape."""
    if isinstance(transformer, torch.nn.Module):  # UMNN's integrand network
        transformer = transformer.double()
    p = transformer.num_params
    x = torch.rand(5, dtype=torch.float64) - 0.5
    params = 0.1 * torch.randn(5, p, dtype=torch.float64)
    for call in (transformer.forward, transformer.inverse, transformer.inverse_value):
        call(x, params)  # the right width is taken
        for width in (p - 1, p + 1):
            if width < 1:
                continue
            with pytest.raises(ValueError) as info:
                call(x, params.new_zeros(5, width))
            assert str(info.value) == (
                f"{type(transformer).__name__}: params must have last dim {p} (num_params), got "
                f"shape (5, {width})"
            )


def test_spline_min_derivative_of_one_or_more_is_refused_at_construction() -> None:
    from nfkit.transforms import RQSplineTransformer

    for m in (1.0, 1.5):  # the first forward failed with "math domain error"
        with pytest.raises(ValueError, match=f"RQSplineTransformer: min_derivative must be < 1, got {m:g}"):
            RQSplineTransformer(bins=4, min_derivative=m)
