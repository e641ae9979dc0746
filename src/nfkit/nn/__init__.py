"""Conditioner networks: MLP, MADE, and hyper-networks producing transform parameters."""

from nfkit.nn.conv import ConvNet, ConvResNet, broadcast_cat_channels
from nfkit.nn.made import MADE, MaskedLinear
from nfkit.nn.mlp import MLP, Parameters, broadcast_cat

__all__ = [
    "MLP",
    "MADE",
    "MaskedLinear",
    "Parameters",
    "broadcast_cat",
    "ConvNet",
    "ConvResNet",
    "broadcast_cat_channels",
]
