"""nf.targets: the Rezende & Mohamed (2015) energies and the Gaussian reference target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nfkit as nf


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_energies_shapes_dtype_gradients(name: str) -> None:
    fn = nf.targets.ENERGIES[name]
    z = (3 * torch.randn(4, 5, 2, dtype=torch.float64)).requires_grad_(True)
    lp = fn(z)
    assert lp.shape == (4, 5) and lp.dtype == torch.float64
    (g,) = torch.autograd.grad(lp.sum(), z)
    assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    assert fn(torch.zeros(2)).shape == ()
    with pytest.raises(ValueError, match=f"nf.targets.{name}: z must have last dim 2"):
        fn(torch.zeros(3, 3))


def test_energy_values() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    # U2 = ½((z2 - sin(π z1 / 2)) / 0.4)²: zero on the wave.
    torch.testing.assert_close(
        nf.targets.U2(z), torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    )
    # U1 at (2, 0): ring term 0, lobes log(1 + exp(-½ (4/0.6)²)).
    expected = math.log1p(math.exp(-0.5 * (4 / 0.6) ** 2))
    torch.testing.assert_close(nf.targets.U1(z[2]), torch.tensor(expected, dtype=torch.float64))
    # U1 is symmetric under z -> -z.
    w = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(nf.targets.U1(w), nf.targets.U1(-w))


def test_gaussian_normalizer() -> None:
    loc, scale = torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.3])
    f = nf.targets.gaussian(loc, scale)
    g = torch.linspace(-8, 8, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    z = torch.trapezoid(torch.trapezoid(f(grid).exp(), g, dim=1), g).item()
    assert abs(math.log(z) - float(torch.log(scale * math.sqrt(2 * math.pi)).sum())) < 1e-6


def test_gaussian_refusals_are_one_line() -> None:
    for kwargs, message in (
        ({"scale": math.inf}, "scale must be positive and finite"),
        ({"scale": 0.0}, "scale must be positive and finite"),
        ({"loc": math.nan}, "loc must be finite"),
        ({"loc": [0.0, 0.0], "scale": [1.0, 1.0, 1.0]}, "loc has 2 entries and scale 3"),
        ({"loc": torch.zeros(2, 2)}, r"numbers or vectors \(D,\), got shapes \(2, 2\)"),
    ):
        with pytest.raises(ValueError, match=message):
            nf.targets.gaussian(**kwargs)
    with pytest.raises(ValueError, match=r"x must have last dim 3 \(the size of loc and scale\)"):
        nf.targets.gaussian([0.0, 0.0, 0.0])(torch.zeros(4, 2))
    assert nf.targets.gaussian(0.0, 2.0)(torch.zeros(5, 7)).shape == (5,)


def test_gaussian_refuses_integer_and_numpy_points() -> None:
    # an integer x once cast loc 0.5 -> 0 and scale 2.5 -> 2: silently wrong densities
    f = nf.targets.gaussian(0.5, 2.5)
    for x in (torch.tensor([[1, 1]]), np.ones((1, 2))):
        with pytest.raises(TypeError, match="gaussian: x must be a floating-point Tensor"):
            f(x)
    assert torch.allclose(f(torch.tensor([[1.0, 1.0]])), torch.tensor([-0.04]))
