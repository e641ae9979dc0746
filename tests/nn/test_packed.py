"""PackedLayers and MLP: one flat parameter that behaves like a stack of nn.Linear layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfkit.nn import MLP, PackedLayers, Parameters


def test_mlp_matches_the_layers_it_packs() -> None:
    torch.manual_seed(0)
    net = MLP(3, 2, hidden=(8, 5), zero_init=False)
    ref = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        for lin, (w, b) in zip(ref[::2], net.parameter_views()):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    x = torch.randn(7, 3)
    torch.testing.assert_close(net(x), ref(x))
    assert [n for n, _ in net.named_parameters()] == ["theta"]
    assert net.theta.numel() == sum(p.numel() for p in ref.parameters())


def test_zero_init_and_default_init_bounds() -> None:
    net = MLP(4, 3, hidden=(16,))
    (w0, b0), (w1, b1) = net.parameter_views()
    assert (w1 == 0).all() and (b1 == 0).all()
    assert w0.abs().max() <= 1 / 4**0.5 and w0.std() > 0  # nn.Linear's U(±1/√in)


def test_masks_are_applied_and_gradients_are_masked() -> None:
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    net = PackedLayers([(2, 2)], masks=[mask])
    w, _ = net.layers()[0]
    assert w[0, 1] == 0
    net.chain(torch.randn(4, 2), net.layers()).sum().backward()
    gw = net.theta.grad[:4].view(2, 2)  # the weight's slice of theta
    assert gw[0, 1] == 0 and gw[1, 1] != 0


def test_conditional_parameters_start_at_their_init() -> None:
    init = torch.tensor([0.5, -1.0, 2.0])
    source = Parameters(3, context=2, hidden=(8,), init=init)
    torch.testing.assert_close(source(torch.randn(5, 2)), init.expand(5, 3))


def test_inplace_relu_keeps_the_gradient_exact() -> None:
    net = MLP(3, 2, hidden=(6, 6), zero_init=False).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="do not match the layer shapes"):
        PackedLayers([(2, 3)], masks=[torch.ones(3, 2)])
    with pytest.raises(ValueError, match="1 layers but 2 zero flags"):
        PackedLayers([(2, 3)], zero=[True, False])
    with pytest.raises(ValueError, match=r"shapes \(out, in\) >= 1"):
        PackedLayers([])
    with pytest.raises(ValueError, match="MLP: in_features must be an integer >= 1"):
        MLP(0, 2)
