"""BatchNorm and ActNorm beyond the generic test."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit import transforms as T


def test_batchnorm_refuses_a_one_row_train_batch_and_keeps_its_running_statistics() -> None:
    """One row has variance 0 (a density of the same constant for any x, and the running
    variance pulled towards 0): refused, as torch's BatchNorm1d refuses it; eval mode scores it."""
    flow = nf.models.RealNVP(2, batch_norm=True, transforms=2, hidden=(8,))
    bn = next(m for m in flow.modules() if isinstance(m, T.BatchNorm))
    with pytest.raises(ValueError, match="at least 2 rows"):
        flow.log_prob(torch.randn(2))
    assert torch.equal(bn.running_var, torch.ones(2))
    assert flow.eval().log_prob(torch.randn(2)).shape == ()


@pytest.mark.parametrize(
    ("shape", "event_dim"), [((1, 3), 1), ((1, 3, 1, 1), 3)], ids=["vector", "1x1-image"]
)
def test_actnorm_initialized_from_one_value_per_feature_keeps_its_scale(shape, event_dim) -> None:
    """One value per feature (a batch of one vector, or one image at a 1×1 level of a Glow)
    has no spread: the scale stays 1 (the image case took log 1e-6 from std 0, and every
    other input then scored about -1e13). With several values it is the batch's std."""
    layer = T.ActNorm(3, event_dim=event_dim)
    x = torch.randn(shape)
    layer(x)
    assert bool(layer.initialized) and torch.equal(layer.log_scale.detach(), torch.zeros(3))
    torch.testing.assert_close(layer.loc.detach(), x.reshape(3))
    wide = T.ActNorm(3, event_dim=3)
    images = torch.randn(1, 3, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    wide(images)
    expected = images.transpose(0, 1).reshape(3, -1).std(1, unbiased=False).log()
    torch.testing.assert_close(wide.log_scale.detach(), expected)


@pytest.mark.parametrize("event_dim", [1, 3])
def test_actnorm_standardizes_any_spread_and_keeps_a_constant_feature_at_scale_one(
    event_dim: int,
) -> None:
    """A tiny spread in the data's units is standardized (an absolute floor of 1e-6 on the std
    left data of std 1e-9 at std 1e-3); a feature constant in the first batch, also one whose
    spread is only the rounding of its mean, keeps the scale 1 (the floor fixed its log-scale at
    -13.8 for good, and a later row off the constant scored about -5e11)."""
    shape = (64, 3) if event_dim == 1 else (16, 3, 2, 2)
    x = torch.randn(shape, dtype=torch.float64) * 1e-9
    const = torch.full(shape, 0.1, dtype=torch.float64)
    first = torch.arange(3).view((3,) + (1,) * (event_dim - 1)) == 0
    x = torch.where(first, const, x)
    layer = T.ActNorm(3, event_dim=event_dim).double()
    z, _ = layer(x)
    assert layer.log_scale[0].item() == 0.0
    dims = (0,) if event_dim == 1 else (0, 2, 3)
    torch.testing.assert_close(z.std(dims, unbiased=False)[1:], torch.ones(2, dtype=torch.float64))
    off = x.clone()
    off.select(-event_dim, 0).fill_(1.1)  # the constant 0.1 moved by 1: z moves by 1
    z_off = layer(off)[0].select(-event_dim, 0)
    torch.testing.assert_close(z_off, torch.ones_like(z_off))


def test_actnorm_standardizes_a_spread_small_beside_its_mean() -> None:
    """Latitudes 45 ± 3e-4 in float32 (79 ulps of spread) were taken as constant by a rule at
    64 eps of the mean: only an exactly constant feature keeps the scale 1."""
    torch.manual_seed(0)
    x = torch.stack([45 + 3e-4 * torch.randn(512, dtype=torch.float64),
                     7 + 3e-4 * torch.randn(512, dtype=torch.float64)], -1).float()  # fmt: skip
    layer = T.ActNorm(2)
    z, _ = layer(x)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.5}, r"momentum must lie in \(0, 1\], got 1.5"),  # running var < 0
        ({"momentum": None}, "momentum must be a finite number > 0, got None"),  # lerp_ error
        ({"eps": -1.0}, "eps must be a finite number >= 0, got -1.0"),  # NaN log-det in eval
    ],
)
def test_batchnorm_settings_are_checked_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^BatchNorm: {message}$"):
        T.BatchNorm(2, **kwargs)
