"""Glow and multiscale RealNVP end to end: config, conditioning, and a short fit on digits."""

from __future__ import annotations

import json
import math

import pytest
import torch

import nfkit as nf


@pytest.mark.parametrize("name", ["Glow", "MultiscaleRealNVP"])
def test_config_is_json_and_rebuilds(name: str) -> None:
    flow = nf.models.FACTORIES[name]((2, 4, 4), levels=2, hidden=(8,) if name == "Glow" else 8)
    config = json.loads(json.dumps(flow.config))
    assert config["shape"] == [2, 4, 4] and config["model"] == name
    rebuilt = nf.models.build(config)
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))


def test_class_conditional_glow_shapes() -> None:
    flow = nf.models.Glow((1, 8, 8), levels=2, steps=1, hidden=(8,), context=10)
    labels = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    assert flow.sample(3, labels).shape == (3, 4, 1, 8, 8)
    assert flow.log_prob(torch.randn(5, 4, 1, 8, 8), labels).shape == (5, 4)
    with pytest.raises(ValueError, match=r"Flow.log_prob: this flow is conditional"):
        flow.log_prob(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("shape", [(1.7, 8, 8), "144", (1, 8), (1, 8, 8, 1)])
@pytest.mark.parametrize("name", ["Glow", "MultiscaleRealNVP"])
def test_a_shape_that_is_not_three_whole_numbers_is_refused(name: str, shape) -> None:
    """``int(1.7)`` built a (1, 8, 8) flow whose config kept 1.7; ``"144"`` a (1, 4, 4) one."""
    with pytest.raises(ValueError, match=rf"{name}: shape must be \(C, H, W\) of ints, got"):
        nf.models.FACTORIES[name](shape, levels=1)


def test_conv_networks_name_a_context_of_the_wrong_width() -> None:
    """A context of the wrong width was a torch conv error about channels."""
    for net in (nf.nn.ConvNet(2, 4, (8,), context=3), nf.nn.ConvResNet(2, 4, 8, context=3)):
        with pytest.raises(
            ValueError, match=r"expected a context of last dim 3, got shape \(5, 2\)"
        ):
            net(torch.randn(5, 2, 4, 4), torch.randn(5, 2))


def test_short_fit_on_digits_lowers_bits_per_dim() -> None:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images[:300], dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(0)
    flow = nf.models.Glow((1, 8, 8), levels=2, steps=1, hidden=(16,), pixel_levels=17)
    g = torch.Generator().manual_seed(0)

    def bpd() -> float:
        flow.eval()
        with torch.no_grad():
            out = nf.metrics.bits_per_dim(flow, x, levels=17, generator=g).item()
        flow.train()
        return out

    before = bpd()
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(40):
        loss = -flow.log_prob(nf.transforms.dequantize(x[:128], generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bpd()
    assert math.isfinite(after) and after < before - 0.5, (before, after)
    assert after < math.log2(17)  # better than uniform on the cube
