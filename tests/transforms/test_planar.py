"""Planar-family transforms at extremes: Radial far out, Sylvester's sizes."""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf


def test_radial_far_out_is_minus_inf_not_nan() -> None:
    """Radial's log-det at |x| where the distance to its centre overflows: -inf (a density of
    0), not NaN from 0·inf (float32 from 1e20, float64 from 1e155)."""
    from nfkit.testing import perturb_parameters

    flow = nf.models.Radial(2, layers=3)
    perturb_parameters(flow, 0.5, seed=0)
    for dtype, far in ((torch.float32, 1e20), (torch.float64, 1e155)):
        x = torch.tensor([[far, far], [3.0, -2.0]], dtype=dtype)
        lp = flow.to(dtype).log_prob(x)
        assert lp[0] == -math.inf and torch.isfinite(lp[1]), lp


def test_sylvester_rank_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        nf.models.Sylvester(3, rank=0)
    with pytest.raises(ValueError, match="reflections must be an integer >= 1, got 0"):
        nf.models.Sylvester(3, reflections=0)


@pytest.mark.parametrize("w_scale", [0.0, 1e-7, 1e-5, 1.0])
def test_planar_with_a_vanishing_w(w_scale: float) -> None:
    """‖w‖² below the 1e-12 floor of û's correction: the log-det and the inverse use the wᵀû
    the map has (they used m(wᵀu): log-det 0.32 off, inverse 3e3 off at ‖w‖ ≈ 1e-7)."""
    t = nf.transforms.Planar(3).double()
    w = w_scale * torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        t.params.value.copy_(
            torch.cat([torch.tensor([1.0, 2.0, 3.0]).double(), w, torch.tensor([0.3]).double()])
        )
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # (parameter gradients near the floor's kink are ~1e11: central differences straddle it)
    nf.testing.check_transform(t, x, atol_inverse=1e-9, parameters=w_scale > 1e-6)


@pytest.mark.parametrize("context", [0, 3])
@pytest.mark.parametrize("d", [1, 2, 10])
def test_a_fresh_planar_flow_is_the_identity(d: int, context: int) -> None:
    """``u = 0`` gave ``wᵀû = m(0) = log 2 - 1``: every fresh layer contracted along ``w`` (a
    10-layer 1-D flow's samples had std 0.03, and its density of base draws was 22 nats worse
    than the base's)."""
    flow = nf.models.Planar(d, context=context)
    x = torch.randn(500, d)
    c = torch.randn(500, context) if context else None
    z, ladj = flow.transform(x, c)
    torch.testing.assert_close(z, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(ladj, torch.zeros(500), rtol=0, atol=1e-6)
