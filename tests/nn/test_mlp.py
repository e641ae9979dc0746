"""MLP with residual blocks and ResNet: the block structure, the identity start, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfkit.nn import MADE, MLP, ResNet


def test_residual_mlp_computes_pre_activation_blocks() -> None:
    torch.manual_seed(0)
    net = MLP(3, 2, hidden=(8, 8, 8), residual=True, zero_init=False)
    with torch.no_grad():
        net.theta.normal_()  # blocks' second layers start at zero: make every layer count
    (w0, b0), *blocks, (wo, bo) = net.parameter_views()
    assert len(blocks) == 4  # two blocks of two layers
    x = torch.randn(5, 3)
    h = x @ w0.T + b0
    for (w1, b1), (w2, b2) in zip(blocks[::2], blocks[1::2]):
        h = h + torch.relu(torch.relu(h) @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(net(x), torch.relu(h) @ wo.T + bo)


def test_blocks_start_as_the_identity_and_the_output_at_zero() -> None:
    torch.manual_seed(0)
    net = ResNet(4, 3, hidden=16, blocks=2)
    assert net.shapes == ((16, 4), (16, 16), (16, 16), (16, 16), (16, 16), (3, 16))
    x = torch.randn(7, 4)
    assert torch.equal(net(x), torch.zeros(7, 3))  # zero-initialized output layer
    # every block's second layer starts at zero: the hidden state is the first layer's
    plain = ResNet(4, 3, hidden=16, blocks=2, zero_init=False)
    (w0, b0), *_, (wo, bo) = plain.parameter_views()
    torch.testing.assert_close(plain(x), torch.relu(x @ w0.T + b0) @ wo.T + bo)
    loss = plain(x).square().sum()
    loss.backward()
    assert plain.theta.grad is not None and plain.theta.grad.abs().sum() > 0


def test_residual_refusals_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"MLP: residual blocks need equal hidden widths"):
        MLP(3, 2, hidden=(8, 4), residual=True)
    with pytest.raises(ValueError, match="ResNet: blocks must be an integer >= 1, got 0"):
        ResNet(3, 2, blocks=0)
    with pytest.raises(ValueError, match="ResNet: hidden must be an integer >= 1"):
        ResNet(3, 2, hidden=(8, 8))
    assert isinstance(ResNet(3, 2, activation=nn.Tanh).act, nn.Tanh)


def test_a_context_that_does_not_broadcast_is_named_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"context's batch shape \(3,\) does not broadcast"):
        MADE(2, 2, context=3)(torch.randn(2, 2), torch.randn(3, 3))


def test_parameters_refusals_are_one_line() -> None:
    from nfkit.nn import Parameters

    assert Parameters(4, init=torch.arange(4.0))().tolist() == [0.0, 1.0, 2.0, 3.0]
    for kwargs, message in (
        ({"num": 4, "context": -1}, "Parameters: context must be an integer >= 0, got -1"),
        ({"num": 0}, "Parameters: num must be an integer >= 1, got 0"),
        ({"num": 4, "init": torch.zeros(3)}, "Parameters: init has 3 values, expected num=4"),
    ):
        with pytest.raises(ValueError, match=message):
            Parameters(**kwargs)
