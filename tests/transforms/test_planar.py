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
