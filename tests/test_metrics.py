"""nf.metrics: bits per dimension, its exact values and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf
import nfkit.transforms as T


def test_bits_per_dim_uniform_on_the_cube_is_log2_levels() -> None:
    x = torch.randint(0, 17, (50, 1, 2, 2))
    squeeze = nf.Compose(T.Squeeze(), T.Squeeze().inv)  # any volume-preserving map
    cube = nf.Flow(squeeze, nf.distributions.Uniform((1, 2, 2), 0.0, 17.0))
    bpd = nf.metrics.bits_per_dim(cube, x, levels=17, samples=3)
    torch.testing.assert_close(bpd, torch.tensor(math.log2(17)))
    unit = nf.Flow(squeeze, nf.distributions.Uniform((1, 2, 2), 0.0, 1.0))
    per = nf.metrics.bits_per_dim(unit, x, levels=17, scale=1 / 17, reduction="none")
    assert per.shape == (50,)
    torch.testing.assert_close(per, torch.full((50,), math.log2(17)))


def test_bits_per_dim_matches_log_prob_and_checks_input() -> None:
    flow = nf.models.Glow((1, 4, 4), levels=1, steps=1, hidden=(4,), pixel_levels=17).double()
    x = torch.randint(0, 17, (8, 1, 4, 4)).double()
    y = x + 0.5
    expected = -flow.log_prob(y).mean() / (16 * math.log(2))
    got = nf.metrics.bits_per_dim(flow, y, levels=17, dequantize=False)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"bits_per_dim: x must lie in \[0, 16\]"):
        nf.metrics.bits_per_dim(flow, x + 1, levels=17)
    with pytest.raises(ValueError, match=r"bits_per_dim: x must be integer-valued"):
        nf.metrics.bits_per_dim(flow, x.clamp(max=15) + 0.5, levels=17)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"levels": 1}, ValueError, "levels must be an integer >= 2, got 1"),
        ({"samples": 0}, ValueError, "samples must be an integer >= 1, got 0"),
        ({"scale": 0.0}, ValueError, "scale must be a finite number > 0, got 0.0"),
        ({"scale": True}, ValueError, "scale must be a finite number > 0, got True"),
        ({"scale": float("inf")}, ValueError, "scale must be a finite number > 0, got inf"),
        ({"reduction": "sum"}, ValueError, "reduction must be 'mean' or 'none', got 'sum'"),
        ({"x": [[0.0]]}, TypeError, "x must be a torch.Tensor, got list"),
    ],
)
def test_bits_per_dim_refusals_are_one_line(kwargs: dict, error: type, message: str) -> None:
    cube = nf.Flow(T.Squeeze(), nf.distributions.Uniform((1, 2, 2), 0.0, 17.0))
    call = {"x": torch.randint(0, 17, (4, 1, 2, 2)), "levels": 17, **kwargs}
    with pytest.raises(error) as info:
        nf.metrics.bits_per_dim(cube, **call)
    assert str(info.value) == f"nf.metrics.bits_per_dim: {message}"
