"""Specifics of the image transforms, conditioners and bits/dim (the generic checks are in
tests/test_transforms.py via tests/cases/image.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nfkit as nf
from nfkit import transforms as T
from nfkit.nn import ConvNet, ConvResNet


def test_squeeze_pixel_layout_and_round_trip() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float64).reshape(1, 2, 4, 6)
    z, ladj = T.Squeeze()(x)
    assert z.shape == (1, 8, 2, 3) and torch.equal(ladj, torch.zeros(1, dtype=torch.float64))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for h in range(2):
                    for w in range(3):
                        assert z[0, 4 * c + 2 * i + j, h, w] == x[0, c, 2 * h + i, 2 * w + j]
    back, ladj_inv = T.Squeeze().inverse(z)
    assert torch.equal(back, x) and torch.equal(ladj_inv, ladj)


def test_squeeze_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"Squeeze.forward: height and width must be divisible"):
        T.Squeeze()(torch.randn(2, 1, 3, 4))
    with pytest.raises(ValueError, match=r"Squeeze.inverse: channels must be divisible by 4"):
        T.Squeeze().inverse(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"Squeeze.forward: expected an image batch"):
        T.Squeeze()(torch.randn(4, 4))


def test_multiscale_split_preserves_shape_and_factored_channels() -> None:
    inner = T.Coupling(
        2, T.AffineTransformer(), conditioner=ConvNet(1, 2, (8,), context=3), dim=-3
    )
    nf.testing.perturb_parameters(inner, 0.3)
    t = T.MultiscaleSplit(inner, split=2)
    x, c = torch.randn(5, 1, 4, 6, 6), torch.randn(4, 3)  # context broadcasts: batch (5, 4)
    z, ladj = t(x, c)
    assert z.shape == (5, 4, 4, 6, 6) and ladj.shape == (5, 4)
    assert torch.equal(z[..., 2:, :, :], x[..., 2:, :, :].expand(5, 4, 2, 6, 6))
    z_inner, ladj_inner = inner(x[..., :2, :, :], c)
    assert torch.equal(z[..., :2, :, :], z_inner) and torch.equal(ladj, ladj_inner)
    with pytest.raises(ValueError, match=r"MultiscaleSplit.forward: x must have more than 2"):
        t(torch.randn(3, 2, 6, 6), c)
    with pytest.raises(ValueError, match=r"MultiscaleSplit: inner must act on images"):
        T.MultiscaleSplit(T.Reverse(2), split=2)
    with pytest.raises(ValueError, match=r"inner Squeeze must keep its input's shape"):
        T.MultiscaleSplit(T.Squeeze(), split=2)(torch.randn(2, 4, 4, 4))  # (8, 2, 2) from cat


@pytest.mark.parametrize("kernel_size", [3.0, 1.5, "3", None, True, 2, 0])
@pytest.mark.parametrize("net", ["ConvNet", "ConvResNet"])
def test_conv_kernel_size_must_be_a_positive_odd_int(net: str, kernel_size: object) -> None:
    """Floats, strings and None reached torch's constructor (a raw TypeError); True was a 1×1
    kernel."""
    widths = (8,) if net == "ConvNet" else 8
    with pytest.raises(ValueError, match=f"{net}: kernel_size must be a positive odd int"):
        getattr(nf.nn, net)(2, 4, widths, kernel_size=kernel_size)


def test_conv_context_that_does_not_broadcast_is_named() -> None:
    net = ConvNet(2, 4, (8,), context=3)
    with pytest.raises(ValueError, match=r"context's batch shape \(3,\) does not broadcast"):
        net(torch.randn(2, 2, 4, 4), torch.randn(3, 3))


def test_glow_latent_has_data_shape_and_levels() -> None:
    flow = nf.models.Glow((1, 8, 8), levels=3, steps=1, hidden=(4,))
    splits = [m for m in flow.modules() if isinstance(m, T.MultiscaleSplit)]
    assert len(splits) == 2 and [s.split for s in splits] == [2, 4]
    x = torch.randn(3, 1, 8, 8)
    z, ladj = flow.transform(x)
    assert z.shape == x.shape and ladj.shape == (3,)
    assert flow.sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"Glow: shape must be .* divisible by 2\*\*levels = 8"):
        nf.models.Glow((1, 8, 4), levels=3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels \(levels=20000\), got"):
        nf.models.Glow((1, 8, 8), levels=20000)  # 2**20000 once went into the message
    with pytest.raises(ValueError, match=r"MultiscaleRealNVP: shape must be \(C, H, W\)"):
        nf.models.MultiscaleRealNVP((8, 8))


def test_fresh_image_flows_are_volume_preserving_permutations() -> None:
    """Zero-initialized conditioners: couplings are identities, InvConv1x1 starts at P."""
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    for flow in (
        nf.models.Glow((2, 8, 8), levels=2, steps=2, hidden=(8,)),
        nf.models.MultiscaleRealNVP((2, 8, 8), levels=2, steps=1, hidden=8),
    ):
        flow = flow.double().eval()  # eval: ActNorm keeps its identity initialization
        z, ladj = flow.transform(x)
        # ~1e-8 per channel: float32 rounding of LULinear's diagonal (softplus(raw) + eps = 1).
        torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.flatten(1).sort(-1).values, x.flatten(1).sort(-1).values)


@pytest.mark.parametrize("net", ["convnet", "resnet"])
def test_conditioner_zero_init_and_context(net: str) -> None:
    make = ConvNet if net == "convnet" else ConvResNet
    m = make(3, 4, 16, context=2) if net == "resnet" else make(3, 4, (16, 16), context=2)
    x, c = torch.randn(2, 5, 3, 4, 4), torch.randn(5, 2)
    out = m(x, c)
    assert out.shape == (2, 5, 4, 4, 4) and torch.equal(out, torch.zeros_like(out))
    coupling = T.Coupling(
        6,
        T.AffineTransformer(),
        conditioner=make(3, 6, 8, context=2) if net == "resnet" else make(3, 6, (8,), context=2),
        dim=-3,
    )
    y = torch.randn(5, 6, 4, 4)
    z, ladj = coupling(y, c)
    assert torch.equal(z, y) and torch.equal(ladj, torch.zeros(5))
    # The context enters as constant channels: a perturbed net depends on it.
    nf.testing.perturb_parameters(m, 0.3)
    assert not torch.allclose(m(x, c), m(x, c + 1))
    with pytest.raises(ValueError, match=r"forward: x must have shape \(\*, 3, H, W\)"):
        m(torch.randn(2, 4, 4, 4), c)
    with pytest.raises(ValueError, match=r"expected a context of last dim 2"):
        m(x)


def test_invconv1x1_is_a_1x1_convolution() -> None:
    t = T.InvConv1x1(3, seed=4)
    nf.testing.perturb_parameters(t, 0.3)
    x = torch.randn(2, 3, 5, 5)
    z, ladj = t(x)
    w = t.weight()
    ref = F.conv2d(x, w[:, :, None, None], t.linear.bias)
    torch.testing.assert_close(z, ref)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(w)[1].expand(2) * 25)


def test_logit_preprocess_values_and_domain_errors() -> None:
    pre = T.LogitPreprocess(17, 0.05)
    x = torch.tensor([0.0, 8.5, 17.0], dtype=torch.float64).reshape(1, 1, 1, 3)
    z, _ = pre(x)
    logit = math.log(0.05 / 0.95)
    torch.testing.assert_close(
        z.flatten(), torch.tensor([logit, 0.0, -logit], dtype=torch.float64)
    )
    flow = nf.Flow(pre, nf.distributions.StandardNormal((1, 2, 2)))
    ok = torch.tensor([[[[0.0, 17.0], [3.5, 16.99]]]])
    assert torch.isfinite(flow.log_prob(ok)).all()  # the ends of [0, K] are inside the domain
    for bad in (-1.0, 18.0):
        x = ok.clone()
        x[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"Flow.log_prob: x has values outside the support"):
            flow.log_prob(x)
    with pytest.raises(ValueError, match=r"LogitPreprocess: alpha must lie in \(0, 0.5\)"):
        T.LogitPreprocess(17, 0.0)


def test_dequantize() -> None:
    x = torch.randint(0, 17, (1000, 4))
    y = T.dequantize(x, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.get_default_dtype()
    assert ((y >= x) & (y < x + 1)).all() and (y - x).std() > 0.2
    listed = T.dequantize([[1, 2]], generator=torch.Generator().manual_seed(0))  # array-like
    assert listed.dtype == torch.get_default_dtype() and ((listed >= 1) & (listed < 3)).all()


def test_logit_preprocess_names_an_input_without_its_event_dims() -> None:
    """A (5,) input raised a raw IndexError and a (4, 3) one was summed over its last dim alone
    (event_dim=3): one-line errors now, in both directions."""
    t = nf.transforms.LogitPreprocess(17)
    for bad in (torch.rand(5) * 17, torch.rand(4, 3) * 17):
        with pytest.raises(ValueError, match=r"^LogitPreprocess: x needs 3 event dims"):
            t(bad)
        with pytest.raises(ValueError, match=r"^LogitPreprocess: z needs 3 event dims"):
            t.inverse(bad)

