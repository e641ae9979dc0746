r"""Classic factories (coupling, autoregressive, planar family): each returns an :class:`~nfkit.Flow` whose ``config`` rebuilds it.

All arguments after ``features`` are keyword-only. ``nf.models.build(flow.config)`` gives a fresh
flow of the same architecture (``nf.load`` then fills in the weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from nfkit import distributions as D
from nfkit._checks import as_ints, check_hidden, check_number, check_positive_int, shown
from nfkit.core import Compose, Flow, Transform
from nfkit.models._registry import activation as activation_class
from nfkit.models._registry import factory, make_base
from nfkit.transforms import (
    AdditiveTransformer,
    AffineTransformer,
    Autoregressive,
    BatchNorm,
    CircularRQSplineTransformer,
    Coupling,
    Elementwise,
    PerColumnTransformer,
    RQSplineTransformer,
    Transformer,
    alternating_mask,
)
from nfkit.transforms import (
    Planar as PlanarLayer,
)
from nfkit.transforms import (
    Radial as RadialLayer,
)
from nfkit.transforms import (
    Sylvester as SylvesterLayer,
)

__all__ = ["MAF", "IAF", "NSF", "NCSF", "RealNVP", "NICE", "Planar", "Radial", "Sylvester"]


def _check_common(
    where: str, features: int, context: int, transforms: int, hidden: Any
) -> tuple[int, ...]:
    check_positive_int(where, "features", features)
    check_positive_int(where, "context", context, minimum=0)
    check_positive_int(where, "transforms", transforms)
    return check_hidden(where, hidden)


def _flow(layers: list[Transform], features: int, context: int, base: str | nn.Module) -> Flow:
    return Flow(Compose(*layers), make_base(base, features), context=context)


_ORDERS = ("alternate", "random")


def _orders(features: int, i: int, orders: str = "alternate") -> torch.Tensor:
    """Layer ``i``'s autoregressive order: ``"alternate"`` identity, reversed, identity, ...;
    ``"random"`` a random permutation seeded by ``i`` (the same for every build of a config)."""
    if orders == "random":
        return torch.randperm(features, generator=torch.Generator().manual_seed(i))
    order = torch.arange(features)
    return order if i % 2 == 0 else order.flip(0)


def _check_residual(where: str, residual: bool, hidden: tuple[int, ...]) -> None:
    if residual and len(set(hidden)) != 1:
        raise ValueError(f"{where}: residual=True needs equal hidden widths, got {hidden}")


def _check_orders(where: str, orders: object) -> str:
    if orders not in _ORDERS:
        raise ValueError(f"{where}: orders must be 'alternate' or 'random', got {shown(orders)}")
    return orders  # type: ignore[return-value]


def _with_batch_norm(layers: list[Transform], features: int, batch_norm: bool) -> list[Transform]:
    """A :class:`~nfkit.transforms.BatchNorm` between consecutive layers when ``batch_norm``."""
    if not batch_norm:
        return layers
    out: list[Transform] = []
    for i, layer in enumerate(layers):
        out += [layer, BatchNorm(features)] if i < len(layers) - 1 else [layer]
    return out


def _autoregressive_stack(
    where: str,
    features: int,
    transformer: Transformer,
    context: int,
    transforms: int,
    hidden: Any,
    residual: bool,
    activation: str,
    *,
    invert: bool = False,
    batch_norm: bool = False,
    orders: str = "alternate",
) -> list[Transform]:
    """``transforms`` :class:`~nfkit.transforms.Autoregressive` layers (inverted for IAF) with
    their orders, optionally a ``BatchNorm`` between them."""
    hidden = _check_common(where, features, context, transforms, hidden)
    _check_residual(where, residual, hidden)
    orders = _check_orders(where, orders)
    layers: list[Transform] = []
    for i in range(transforms):
        layer = Autoregressive(
            features,
            transformer,
            context=context,
            order=_orders(features, i, orders),
            hidden=hidden,
            residual=residual,
            activation=activation_class(activation),
        )
        layers.append(layer.inv if invert else layer)
    return _with_batch_norm(layers, features, batch_norm)


def _coupling_stack(
    where: str,
    features: int,
    transformer: Transformer,
    context: int,
    transforms: int,
    hidden: Any,
    batch_norm: bool = False,
    residual: bool = False,
) -> list[Transform]:
    hidden = _check_common(where, features, context, transforms, hidden)
    _check_residual(where, residual, hidden)
    layers: list[Transform] = []
    for i in range(transforms):
        if features == 1:
            layers.append(Elementwise(1, transformer, context=context, hidden=hidden))
        else:
            mask = alternating_mask(features, parity=i % 2)
            layers.append(
                Coupling(
                    features,
                    transformer,
                    context=context,
                    mask=mask,
                    hidden=hidden,
                    residual=residual,
                )
            )
    return _with_batch_norm(layers, features, batch_norm)


def _spline_stack(
    where: str,
    features: int,
    transformer: Transformer,
    context: int,
    transforms: int,
    hidden: Any,
    coupling: bool,
    residual: bool,
    activation: str,
    batch_norm: bool,
    orders: str,
) -> list[Transform]:
    """The layers of a spline flow (``NSF``, ``NCSF``): coupling layers when ``coupling`` (where
    ``activation`` and ``orders`` do not apply), else autoregressive ones."""
    if coupling:
        return _coupling_stack(
            where, features, transformer, context, transforms, hidden, batch_norm, residual
        )
    return _autoregressive_stack(
        where, features, transformer, context, transforms, hidden, residual, activation,
        batch_norm=batch_norm, orders=orders,
    )  # fmt: skip


@factory
def MAF(
    features: int,
    *,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    residual: bool = False,
    activation: str = "relu",
    scale: str = "softsign",
    max_log_scale: float = 5.0,
    batch_norm: bool = False,
    orders: str = "alternate",
    base: str = "normal",
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al. 2017): affine MADE layers, orders alternating.

    ``batch_norm=True`` puts a :class:`~nfkit.transforms.BatchNorm` between the layers, as in the
    paper's "MAF with batch norm" (batch statistics in train mode, running averages in eval).
    ``orders``: the layers' autoregressive orders, ``"alternate"`` (identity, reversed, ...) or
    ``"random"`` (a fixed random permutation per layer, seeded by its index: rebuilt identically
    from the config).

    ``log_prob``: one pass per layer. ``sample``: ``D`` passes per layer. ``scale``: the affine
    log-scale, ``"softsign"`` (default: ``ŝ / (1 + |ŝ|/5)``, expands and contracts),
    ``"exp"`` (``5 tanh(ŝ/5)``, the earlier default: saved configs name their scale and rebuild as saved)
    or ``"sigmoid"`` (Glow-style gate, expands by at most 1.14x per layer: slowest to over-fit
    small data); see :class:`~nfkit.transforms.AffineTransformer`. ``max_log_scale``: the bound
    ``B`` on ``|s|`` per layer. A smaller ``B`` caps how sharply one layer can fit a small table
    (1437 rows of digits over-fit far less at ``B = 1``) but also how sharp a density the flow
    can reach at all (a 256-D table with strongly correlated columns loses 2 nats at ``B = 2``).

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> _ = torch.manual_seed(0)
        >>> flow = nf.models.MAF(3, transforms=3, hidden=(32, 32))
        >>> flow.log_prob(torch.randn(8, 3)).shape
        torch.Size([8])
        >>> flow.sample(5).shape
        torch.Size([5, 3])
        >>> flow.config["model"], flow.config["transforms"]
        ('MAF', 3)
    """
    layers = _autoregressive_stack(
        "MAF",
        features,
        AffineTransformer(scale=scale, max_log_scale=max_log_scale),
        context,
        transforms,
        hidden,
        residual,
        activation,
        batch_norm=batch_norm,
        orders=orders,
    )
    return _flow(layers, features, context, base)


@factory
def IAF(
    features: int,
    *,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    residual: bool = False,
    activation: str = "relu",
    scale: str = "softsign",
    max_log_scale: float = 5.0,
    orders: str = "alternate",
    base: str = "normal",
) -> Flow:
    """Inverse autoregressive flow (Kingma et al. 2016, arXiv:1606.04934): MAF layers inverted.

    ``sample``/``rsample``: one pass per layer (use for variational inference). ``log_prob`` of
    external data: ``D`` passes per layer. ``scale``, ``max_log_scale``, ``orders``: as in
    :func:`MAF` (the flow narrows or widens the base by at most ``e^(B·transforms)`` per
    dimension).
    """
    layers = _autoregressive_stack(
        "IAF",
        features,
        AffineTransformer(scale=scale, max_log_scale=max_log_scale),
        context,
        transforms,
        hidden,
        residual,
        activation,
        invert=True,
        orders=orders,
    )
    return _flow(layers, features, context, base)


@factory
def NSF(
    features: int,
    *,
    context: int = 0,
    transforms: int = 5,
    bins: int = 8,
    bound: float = 5.0,
    hidden: Sequence[int] = (128, 128),
    coupling: bool = False,
    residual: bool = False,
    activation: str = "relu",
    batch_norm: bool = False,
    orders: str = "alternate",
    base: str = "normal",
) -> Flow:
    """Neural spline flow (Durkan et al. 2019): rational-quadratic splines with identity tails.

    Autoregressive (MADE conditioner) by default; ``coupling=True`` gives the coupling variant
    (one pass in both directions). ``batch_norm=True``: a :class:`~nfkit.transforms.BatchNorm`
    between the layers. ``residual``: residual blocks in the MADE or, with ``coupling=True``, in
    the coupling conditioners (:class:`~nfkit.nn.ResNet`-style, as in the paper); ``activation``
    and ``orders`` (as in :func:`MAF`) apply to the autoregressive variant.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> _ = torch.manual_seed(0)
        >>> flow = nf.models.NSF(2, context=1, transforms=2, bins=4, hidden=(16, 16))
        >>> x, c = torch.randn(8, 2), torch.randn(8, 1)
        >>> flow.log_prob(x, context=c).shape
        torch.Size([8])
        >>> flow.sample(3, context=c).shape
        torch.Size([3, 8, 2])
        >>> nf.models.build(flow.config).config == flow.config  # same architecture, new weights
        True
    """
    transformer = RQSplineTransformer(bins=bins, bound=bound)
    layers = _spline_stack(
        "NSF", features, transformer, context, transforms, hidden, coupling, residual,
        activation, batch_norm, orders,
    )  # fmt: skip
    return _flow(layers, features, context, base)


@factory
def NCSF(
    features: int,
    *,
    context: int = 0,
    transforms: int = 5,
    bins: int = 8,
    bound: float = math.pi,
    angles: Sequence[int] | None = None,
    real_bound: float = 5.0,
    hidden: Sequence[int] = (128, 128),
    coupling: bool = False,
    residual: bool = False,
    activation: str = "relu",
    orders: str = "alternate",
) -> Flow:
    r"""Neural circular spline flow: a density on the torus ``[-bound, bound]^D`` (angles), or on
    a torus times a real space when only some coordinates are angles.

    Every layer maps each angle by a :class:`~nfkit.transforms.CircularRQSplineTransformer`
    (a circular spline and a rotation, Rezende et al. 2020, arXiv:2002.02428), conditioned
    autoregressively (a MADE, by default) or by coupling (``coupling=True``); the base is uniform
    on ``[-bound, bound]^D``, so ``log p(x) = -D log(2 bound) + Σ log|det J|`` and samples stay on
    the torus. ``bound = π`` for radians, ``180`` for degrees. The conditioners read each angle
    as ``(cos, sin)`` (:func:`~nfkit.nn.periodic_embedding`) and each coordinate's map is C¹
    across the seam, so the density is continuous on the torus. Values outside the interval
    are refused by ``log_prob`` (wrap them first).

    ``angles``: the indices of the coordinates that are angles (default: all of them). The
    others are ordinary real numbers (lengths, energies: a molecule's dihedrals beside its bond
    lengths): each layer maps them by NSF's spline (``bins`` bins on ``[-real_bound,
    real_bound]``, identity tails; one :class:`~nfkit.transforms.PerColumnTransformer` for all
    columns), the conditioners read them as they are, and their base is a standard normal
    (:class:`~nfkit.distributions.Product`). ``nf.models.standardize`` (so ``nf.fit``'s users,
    ``nfkit fit --angles`` and ``FlowDensity``) standardizes those and leaves the angles in
    their units.

    Example:
        >>> import math, torch
        >>> import nfkit as nf
        >>> flow = nf.models.NCSF(2, transforms=2, bins=4, hidden=(16, 16))
        >>> angles = flow.sample(5)
        >>> bool((angles.abs() <= math.pi).all()), flow.log_prob(angles).shape
        (True, torch.Size([5]))
        >>> mixed = nf.models.NCSF(3, angles=[0, 2], transforms=2, bins=4, hidden=(16, 16))
        >>> x = mixed.sample(5)  # columns 0 and 2 on [-π, π], column 1 on the real line
        >>> bool((x[:, [0, 2]].abs() <= math.pi).all()), mixed.log_prob(x).shape
        (True, torch.Size([5]))
    """
    where = "nf.models.NCSF"
    features = check_positive_int(where, "features", features)
    check_number(where, "real_bound", real_bound, 0.0)
    circular = CircularRQSplineTransformer(bins=bins, bound=bound)
    angle_cols = _check_columns(where, "angles", angles, features)
    if angle_cols is None or len(angle_cols) == features:
        transformer: Transformer = circular
        base: nn.Module = D.Uniform(features, -bound, bound)
    else:
        other = [i for i in range(features) if i not in angle_cols]
        spline = RQSplineTransformer(bins=bins, bound=real_bound)
        transformer = PerColumnTransformer(
            (circular, spline), tuple(0 if i in angle_cols else 1 for i in range(features))
        )
        parts = [D.StandardNormal(len(other))]
        if angle_cols:
            parts.insert(0, D.Uniform(len(angle_cols), -bound, bound))
        base = D.Product(parts, [angle_cols, other] if angle_cols else [other])
    layers = _spline_stack(
        "NCSF", features, transformer, context, transforms, hidden, coupling, residual,
        activation, False, orders,
    )  # fmt: skip
    return _flow(layers, features, context, base)


def _check_columns(
    where: str, name: str, columns: Sequence[int] | None, features: int
) -> list[int] | None:
    """``columns`` as sorted, distinct indices in ``0..features-1`` (None stays None)."""
    if columns is None:
        return None
    values = as_ints(columns)
    if (
        values is None
        or any(not 0 <= i < features for i in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(
            f"{where}: {name} must be distinct column indices in 0..{features - 1}, "
            f"got {shown(columns)}"
        )
    return sorted(values)


@factory
def RealNVP(
    features: int,
    *,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    batch_norm: bool = False,
    residual: bool = False,
    scale: str = "softsign",
    max_log_scale: float = 5.0,
    base: str = "normal",
) -> Flow:
    """RealNVP (Dinh et al. 2016): affine couplings with alternating masks, optional BatchNorm.

    ``scale``, ``max_log_scale``: the affine log-scale (``"softsign"``, ``"exp"`` or
    ``"sigmoid"``) and its bound per layer, as in :func:`MAF`. ``residual``: residual blocks in
    the conditioners (equal hidden widths; the paper's conditioners are ResNets).
    """
    layers = _coupling_stack(
        "RealNVP",
        features,
        AffineTransformer(scale=scale, max_log_scale=max_log_scale),
        context,
        transforms,
        hidden,
        batch_norm,
        residual,
    )
    return _flow(layers, features, context, base)


@factory
def NICE(
    features: int,
    *,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (128, 128),
    residual: bool = False,
    base: str = "normal",
) -> Flow:
    """NICE (Dinh et al. 2014): additive couplings followed by a learned diagonal scaling.

    The couplings preserve volume, so the last layer's scaling ``z = e^s x + t`` (``|s| ≤ 5``,
    the :class:`~nfkit.transforms.AffineTransformer` default) is the flow's only change of
    scale: data spread far beyond ``e^5`` times the base's are not reached; standardize them
    first (:func:`nfkit.models.standardize`; the estimator and the CLI do by default).
    ``residual``: residual blocks in the conditioners (equal hidden widths).
    """
    layers = _coupling_stack(
        "NICE",
        features,
        AdditiveTransformer(),
        context,
        transforms,
        hidden,
        residual=residual,
    )
    layers.append(Elementwise(features, AffineTransformer(), context=context, hidden=hidden))
    return _flow(layers, features, context, base)


def _residual_layers(
    where: str,
    make: Callable[[int], Transform],
    features: int,
    context: int,
    layers: int,
    direction: str,
    hidden: Any,
) -> list[Transform]:
    features = check_positive_int(where, "features", features)
    context = check_positive_int(where, "context", context, minimum=0)
    layers = check_positive_int(where, "layers", layers)
    check_hidden(where, hidden)  # (read by a context network only, but recorded either way)
    if direction not in ("sample", "density"):
        raise ValueError(
            f"{where}: direction must be 'sample' or 'density', got {shown(direction)}"
        )
    # In the papers these layers are explicit from noise to data: then sampling is exact and fast.
    out = [make(i) for i in range(layers)]
    return [t.inv for t in reversed(out)] if direction == "sample" else out


@factory
def Planar(
    features: int,
    *,
    context: int = 0,
    layers: int = 10,
    hidden: Sequence[int] = (64, 64),
    direction: Literal["sample", "density"] = "sample",
    base: str = "normal",
) -> Flow:
    """Planar flow (Rezende & Mohamed 2015).

    ``direction="sample"`` (default) makes sampling explicit (variational inference);
    ``"density"`` makes ``log_prob`` explicit. The other direction is a numerical inverse.
    """
    t = _residual_layers(
        "Planar",
        lambda i: PlanarLayer(features, context=context, hidden=hidden, seed=i),
        features,
        context,
        layers,
        direction,
        hidden,
    )
    return _flow(t, features, context, base)


@factory
def Radial(
    features: int,
    *,
    context: int = 0,
    layers: int = 10,
    hidden: Sequence[int] = (64, 64),
    direction: Literal["sample", "density"] = "sample",
    base: str = "normal",
) -> Flow:
    """Radial flow (Rezende & Mohamed 2015); both directions are closed form."""
    t = _residual_layers(
        "Radial",
        lambda i: RadialLayer(features, context=context, hidden=hidden, seed=i),
        features,
        context,
        layers,
        direction,
        hidden,
    )
    return _flow(t, features, context, base)


@factory
def Sylvester(
    features: int,
    *,
    context: int = 0,
    layers: int = 4,
    rank: int | None = None,
    reflections: int | None = None,
    hidden: Sequence[int] = (64, 64),
    direction: Literal["sample", "density"] = "sample",
    base: str = "normal",
) -> Flow:
    """Householder-Sylvester flow (van den Berg et al. 2018)."""
    t = _residual_layers(
        "Sylvester",
        lambda i: SylvesterLayer(
            features, rank=rank, reflections=reflections, context=context, hidden=hidden, seed=i
        ),
        features,
        context,
        layers,
        direction,
        hidden,
    )
    return _flow(t, features, context, base)
