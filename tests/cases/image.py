"""Cases for the image transforms (events ``(C, H, W)``) and the multiscale image factories.

Events stay small (at most 48 coordinates): the Jacobian check costs one backward pass per event
coordinate. ``d`` is the number of channels.
"""

from __future__ import annotations

import nfkit as nf
from nfkit import transforms as T
from nfkit.nn import ConvNet, ConvResNet

from . import Case, ModelCase

AFFINE = T.AffineTransformer()


def _img(h: int = 4):
    return lambda d: (d, h, h)


def _conv_coupling(d: int, c: int, resnet: bool = False) -> nf.Transform:
    n_b = (d + 1) // 2  # the default alternating mask transforms channels 0, 2, ...
    out = n_b * AFFINE.num_params
    net = (
        ConvResNet(d - n_b, out, 8, blocks=1, context=c)
        if resnet
        else ConvNet(d - n_b, out, (8, 8), context=c)
    )
    return T.Coupling(d, AFFINE, conditioner=net, dim=-3)


def _glow_step(d: int, c: int) -> nf.Transform:
    return nf.Compose(T.ActNorm(d, event_dim=3), T.InvConv1x1(d, seed=3), _conv_coupling(d, c))


TRANSFORMS: dict[str, Case] = {
    # A pure permutation of coordinates: the tails test (which feeds the same tensor to both
    # directions) does not apply to a shape-changing map.
    "Squeeze": Case(lambda d, c: T.Squeeze(), features=(1, 2), event_shape=_img(4), tails=False),
    "Squeeze-inverse": Case(
        lambda d, c: T.Squeeze().inv,
        features=(1, 2),
        event_shape=lambda d: (4 * d, 2, 2),
        tails=False,
    ),
    "InvConv1x1": Case(lambda d, c: T.InvConv1x1(d, seed=1), features=(1, 3), event_shape=_img(3)),
    "LogitPreprocess": Case(
        lambda d, c: T.LogitPreprocess(17, 0.05), features=(1, 2), event_shape=_img(3), tails=False
    ),
    "LogitPreprocess-vector": Case(
        lambda d, c: T.LogitPreprocess(256, 0.01, event_dim=1), tails=False
    ),
    "Coupling-ConvNet": Case(
        lambda d, c: _conv_coupling(d, c), context=True, features=(3,), event_shape=_img(4)
    ),
    "Coupling-ConvResNet": Case(
        lambda d, c: _conv_coupling(d, c, resnet=True),
        context=True,
        features=(2,),
        event_shape=_img(4),
    ),
    "Glow-step": Case(
        _glow_step, context=True, features=(2,), event_shape=_img(4), train_first=True
    ),
    # A vector layer (event_dim 1) in front of an image layer: the chain sums its ladj over H.
    "Compose-vector-layer-on-images": Case(
        lambda d, c: nf.Compose(T.Affine(shift=0.5, scale=1.5), T.InvConv1x1(d, seed=1)),
        features=(2,),
        event_shape=_img(3),
    ),
    "MultiscaleSplit": Case(
        lambda d, c: T.MultiscaleSplit(_conv_coupling(2, c), split=2),
        context=True,
        features=(3,),
        event_shape=_img(3),
    ),
}

_GLOW = {"levels": 2, "steps": 2, "hidden": (8,)}

MODELS: dict[str, ModelCase] = {
    "Glow": ModelCase(
        lambda d, c: nf.models.Glow((d, 4, 4), context=c, **_GLOW),
        features=(2,),
        event_shape=_img(4),
        train_first=True,
    ),
    "Glow-pixels": ModelCase(
        lambda d, c: nf.models.Glow(
            (d, 4, 4), context=c, split_prior=False, pixel_levels=17, **_GLOW
        ),
        context=False,
        features=(1,),
        event_shape=_img(4),
        perturb=0.05,
    ),
    "MultiscaleRealNVP": ModelCase(
        lambda d, c: nf.models.MultiscaleRealNVP(
            (d, 4, 4), context=c, levels=2, steps=1, hidden=8, blocks=1
        ),
        features=(1,),
        event_shape=_img(4),
        perturb=0.05,
    ),
}
