"""``BlockAutoregressive`` (BNAF's network): normalized even when saturated, float32 inverse."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit.transforms import BlockAutoregressive


def test_a_network_of_small_range_still_carries_all_the_mass() -> None:
    """Where ``f``'s saturated range is small (its output rows 7.4x shorter: ``f`` stays within
    about ±0.1 but for slopes of the leak's size), ``f`` alone would send most of a Gaussian
    far out (within ±60 it holds 0.096 of the mass with the gate shut, checked); the gated
    residual keeps the slope above ``1 - s``, so the density integrates to one on that grid
    and the base's far quantiles come back from the inverse."""
    torch.manual_seed(0)
    flow = nf.Flow(BlockAutoregressive(1, (8, 8)), nf.distributions.StandardNormal(1)).double()
    with torch.no_grad():
        flow.transform.scales[-1].sub_(2.0)
    x = torch.linspace(-60, 60, 600_001, dtype=torch.float64)
    with torch.no_grad():
        p = flow.log_prob(x[:, None]).exp()
        z = torch.tensor([[-8.0], [8.0]], dtype=torch.float64)
        ends, _ = flow.transform.inverse(z)
        back, _ = flow.transform(ends)
        assert abs(torch.trapezoid(p, x).item() - 1) < 1e-6
        assert torch.allclose(back, z, atol=1e-9) and float(ends.abs().max()) < 60
        flow.transform.gate.fill_(30.0)  # the gate shut: f alone
        shut = flow.log_prob(x[:, None]).exp()
    assert torch.trapezoid(shut, x).item() < 0.2


def test_float32_inverse_and_context() -> None:
    torch.manual_seed(0)
    t = BlockAutoregressive(4, (8,), context=3)
    nf.testing.perturb_parameters(t, 0.3, 0)
    x, c = torch.randn(256, 4), torch.randn(256, 3)
    z, ladj = t(x, c)
    back, inverse_ladj = t.inverse(z, c)
    assert torch.allclose(back, x, atol=1e-4) and torch.allclose(inverse_ladj, -ladj, atol=1e-3)
    z2, _ = t(x, c + 1)  # the context changes the map
    assert (z2 - z).abs().max() > 1e-2


def test_one_columns_pass_matches_the_whole_network() -> None:
    """The inverse's pass for feature ``i`` (the blocks of the first ``i + 1`` features, the
    slope carried forward in linear space) gives the whole network's ``z_i`` and
    ``exp(log ∂z_i/∂x_i)``, with a context too."""
    torch.manual_seed(0)
    t = BlockAutoregressive(5, (6, 4), context=2).double()
    nf.testing.perturb_parameters(t, 0.5, 0)
    x, c = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    z, log_slope = t._network(x, c)
    layers = [t._layer(index)[0] for index in range(len(t.sizes) - 1)]
    shift = t.biases[0] + t.context_layer(c)
    for i in range(5):
        zi, slope = t._column(i, x[:, : i + 1], layers, shift)
        torch.testing.assert_close(zi, z[:, i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(slope, log_slope[:, i].exp(), rtol=1e-12, atol=1e-12)


def test_a_conditional_bnaf_samples_one_row_per_context() -> None:
    """One draw for a batch of one context: the context's shift is batched (F.linear's bias
    had to be 1-D after its input was flattened)."""
    torch.manual_seed(0)
    flow = nf.models.BNAF(3, context=2)
    assert flow.sample(1, torch.randn(1, 2)).shape == (1, 1, 3)
    assert flow.sample(2, torch.randn(1, 2)).shape == (2, 1, 3)


def test_a_network_with_nan_weights_samples_nan_not_the_brackets_end() -> None:
    """A NaN weight (a diverged step) makes every comparison False: the bracket doubled 60
    times and the root find returned its end, -2**60, as a finite sample. Now NaN, as
    ``log_prob`` gives (and NAF's, SOSPF's root finds)."""
    torch.manual_seed(0)
    flow = nf.models.BNAF(2, transforms=1, hidden=(4,))
    with torch.no_grad():
        flow.transform[0].biases[0].fill_(float("nan"))
    assert torch.isnan(flow.log_prob(torch.zeros(2, 2))).all()
    assert torch.isnan(flow.sample(3)).all()


def test_the_inverse_of_a_far_z_is_exact_not_the_brackets_end() -> None:
    """The bracket stopped after 60 doublings: for |z| beyond ~6e17 the root find returned the
    end of a bracket without the root (z = 1e19 and 1e25 both came back as 5.8e17)."""
    layer = BlockAutoregressive(1, (4,)).double()
    z = torch.tensor([[1e19], [-1e25], [1e300], [0.5]], dtype=torch.float64)
    x, _ = layer.inverse(z)
    torch.testing.assert_close(layer(x)[0], z, rtol=1e-9, atol=1e-9)


def test_a_z_beyond_the_float32_range_of_the_map_is_refused() -> None:
    """The bracket grew to inf, which "held" every finite z: the inverse came back NaN."""
    layer = nf.models.BNAF(2, transforms=1).transform
    with pytest.raises(ValueError, match="no x of the dtype maps to z in 1 row"):
        layer.inverse_value(torch.tensor([[3e38, 0.5]]))
    # A bracket end whose value overflowed inside the network (inf - inf: NaN, or ±inf) "held"
    # the root: 1e38 came back as a finite x whose image is NaN. Refused; 1e37 is exact.
    torch.manual_seed(6)
    layer = BlockAutoregressive(3, (8, 8))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    for dtype, far in ((torch.float32, 1e38), (torch.float64, 1e307)):
        layer = layer.to(dtype)
        with pytest.raises(ValueError, match="no x of the dtype maps to z in 1 row"):
            layer.inverse_value(torch.tensor([[far, 0.0, 0.0]], dtype=dtype))
    z = torch.tensor([[1e37, 0.0, 0.0]])
    torch.testing.assert_close(layer.float()(layer.float().inverse_value(z))[0], z)


def test_context_refusals_are_one_line() -> None:
    """A context that does not broadcast with the input, or a negative context size: one
    line each (raw broadcast errors from inside the network before)."""
    layer = BlockAutoregressive(3, (4,), context=2)
    x, c = torch.randn(5, 3), torch.randn(4, 2)
    for call in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=r"context's batch shape \(4,\) does not broadcast with the input's \(5,\)"):
            call(x, c)
    with pytest.raises(ValueError, match="BlockAutoregressive: context must be an integer >= 0, got -1"):
        BlockAutoregressive(3, context=-1)
