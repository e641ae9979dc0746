"""Bounded, Logit, Sigmoid and LogitPreprocess next to the ends of their intervals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf
from nfkit.distributions import StandardNormal
from nfkit.transforms import Affine, Bounded, Logit, LogitPreprocess, Sigmoid, Softplus, Tanh

T = nf.transforms

DTYPES = (torch.float32, torch.float64)


def _inside(low: float, high: float, dtype: torch.dtype) -> torch.Tensor:
    """Points of ``(low, high)`` in ``dtype``: one ulp from each end, and between."""
    lo, hi = torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
    ends = [torch.nextafter(lo, hi), torch.nextafter(hi, lo)]
    return torch.stack([*ends, lo + (hi - lo) * 0.3, lo + (hi - lo) * 0.999])


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-1e6, 1e6),
    width=st.floats(1e-3, 1e6),
    dtype=st.sampled_from(DTYPES),
)
def test_bounded_is_finite_up_to_one_ulp_from_either_end(low, width, dtype) -> None:
    """Two finite ends: ``z`` and ``ladj`` finite everywhere inside, up to one ulp from each end
    (``u = (x - l)/(h - l)`` used to round to 1 below ``h``: NaN densities), and the inverse
    stays inside."""
    high = low + width
    lo, hi = torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
    if not bool(torch.nextafter(lo, hi) < hi):  # no value strictly inside in this dtype
        return
    t = Bounded([low], [high], dtype=dtype)
    x = _inside(float(lo), float(hi), dtype)[:, None]
    x = x[(x > lo) & (x < hi)][:, None]
    z, ladj = t(x)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all(), (x, z, ladj)
    back = t.inverse(torch.tensor([[-200.0], [-20.0], [20.0], [200.0]], dtype=dtype))[0]
    assert bool(((back > lo) & (back < hi)).all()) and torch.isfinite(t(back)[1]).all()


def test_bounded_upper_end_matches_float64() -> None:
    """Next to the upper end the float32 log-det agrees with float64 as closely as next to the
    lower end (it lost 0.06–0.22 nats from the cancellation in ``1 - u``)."""
    t = Bounded([-1.0], [1.0])
    for x in (1 - 1e-6, 1 - 3e-7, -1 + 1e-6):
        lad32 = t(torch.tensor([[x]], dtype=torch.float32))[1].double()
        x32 = torch.tensor([[x]], dtype=torch.float32).double()  # the same point in float64
        lad64 = t.double()(x32)[1]
        t.float()
        assert abs(float(lad32 - lad64)) < 1e-5, (x, float(lad32), float(lad64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_sigmoid_and_pixels_stay_inside_their_open_intervals(dtype) -> None:
    """The inverses (and Sigmoid's forward) land strictly inside their open intervals, where
    rounding put them on an end (float32 ``σ(17) = 1``), so a flow scores its own samples."""
    z = torch.tensor([[-200.0, -30.0, 17.0, 40.0, 200.0]], dtype=dtype)
    for inside in (Logit().inverse(z)[0], Sigmoid()(z)[0]):
        assert bool(((inside > 0) & (inside < 1)).all()), inside
        assert torch.isfinite(Logit()(inside)[1]).all()
    pixels = LogitPreprocess(17, 0.05, event_dim=1).to(dtype)
    x = pixels.inverse(z)[0]
    low, high = pixels.domain.low, pixels.domain.high
    assert bool(((x > low) & (x < high)).all()), x
    zz, ladj = pixels(x)
    assert torch.isfinite(zz).all() and torch.isfinite(ladj).all()
    edge = torch.tensor([[math.nextafter(low, 0), math.nextafter(high, 0)]], dtype=torch.float64)
    assert torch.isfinite(pixels.double()(edge)[1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_and_softplus_stay_inside_their_open_ranges(dtype) -> None:
    """``tanh`` rounds to ±1 from |x| ≈ 9 (float32), ``softplus`` to 0 below ≈ -104: a flow
    ending in their inverses drew samples (370 of 1000) its own log_prob refused."""
    x = torch.tensor([[-1000.0, -120.0, -20.0, 0.0, 20.0, 1000.0]], dtype=dtype)
    z, ladj = Tanh()(x)
    assert bool((z.abs() < 1).all()) and torch.isfinite(Tanh().inverse(z)[0]).all(), z
    z, ladj = Softplus()(x)
    assert bool((z > 0).all()) and torch.isfinite(Softplus().inverse(z)[0]).all(), z
    for layer in (Tanh(), Softplus()):
        flow = nf.Flow(nf.Compose(layer.inv, Affine(0.0, 0.01)), StandardNormal(1)).to(dtype)
        assert torch.isfinite(flow.log_prob(flow.sample(1000))).all()
    # at the ends themselves: x = ∓inf with log-det +inf at both (-1 gave NaN: inf - inf)
    x, ladj = Tanh().inverse(torch.tensor([[-1.0, 1.0]], dtype=dtype))
    assert x.tolist() == [[-math.inf, math.inf]] and ladj.tolist() == [math.inf]


def test_affine_keeps_the_dtype_of_its_tensors() -> None:
    """A float64 ``shift`` stays float64 (it had been rounded to float32 at construction, and
    ``.double()`` widened the rounded value: 1.5 nats off here); numbers take ``dtype=``."""
    mu = torch.tensor([1.7e9 + 37.0], dtype=torch.float64)
    sd = torch.tensor([10.0], dtype=torch.float64)
    flow = nf.Flow(T.Affine(-mu / sd, 1 / sd), nf.distributions.StandardNormal(1)).double()
    assert flow.transform.shift.item() == -170000003.7
    expected = -0.5 * math.log(2 * math.pi) - math.log(10.0)
    assert abs(flow.log_prob(mu[None]).item() - expected) < 1e-12
    assert T.Affine(0.1, 3.0, dtype=torch.float64).shift.item() == 0.1
    assert T.Affine(0.1, 3.0).shift.dtype == torch.get_default_dtype()
