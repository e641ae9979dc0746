"""Conditioner networks: MLP, MADE, and hyper-networks producing transform parameters."""

from nfkit.nn.conv import ConvNet, ConvResNet, broadcast_cat_channels
from nfkit.nn.made import MADE
from nfkit.nn.mlp import (
    MLP,
    Parameters,
    PeriodicEmbedding,
    ResNet,
    broadcast_cat,
    periodic_embedding,
)
from nfkit.nn.packed import PackedLayers
from nfkit.nn.sets import DeepSet

__all__ = [
    "MLP",
    "ResNet",
    "MADE",
    "PackedLayers",
    "DeepSet",
    "Parameters",
    "broadcast_cat",
    "PeriodicEmbedding",
    "periodic_embedding",
    "ConvNet",
    "ConvResNet",
    "broadcast_cat_channels",
]
