r"""Gaussianization factories: :func:`RBIG` (Laparra et al. 2011), fitted greedily without
gradients, and :func:`GF` (Meng et al. 2020), its gradient-trained counterpart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from nfkit._checks import (
    check_number,
    check_open_interval,
    check_positive_int,
    check_tensor,
    shown,
)
from nfkit.core import Compose, Flow, Transform
from nfkit.distributions import StandardNormal
from nfkit.models._registry import factory
from nfkit.models.classic import _check_common, _flow
from nfkit.transforms import Elementwise, Householder
from nfkit.transforms.gaussianization import MarginalGaussianization, Rotation
from nfkit.transforms.monotonic import GaussianizationTransformer

__all__ = ["GF", "RBIG", "RBIGFlow"]


def _pairs(
    features: int, layers: int, bins: int, rotation: str, seed: int
) -> list[MarginalGaussianization | Rotation]:
    out: list[MarginalGaussianization | Rotation] = []
    for i in range(layers):
        out.append(MarginalGaussianization(features, bins=bins))
        out.append(Rotation(features, method=rotation, seed=seed + i))  # type: ignore[arg-type]
    return out


class RBIGFlow(Flow):
    r"""A :class:`~nfkit.Flow` of RBIG layers with a greedy :meth:`fit` (build it with :func:`RBIG`).

    The transform is ``layers`` pairs (:class:`MarginalGaussianization`, :class:`Rotation`); the
    base is ``N(0, I)``. Until :meth:`fit` is called every layer is the identity.
    """

    def __init__(
        self,
        features: int,
        *,
        layers: int,
        max_layers: int | None = None,
        rotation: Literal["pca", "random"],
        bins: int,
        tol: float,
        patience: int,
        validation: float,
        seed: int,
    ) -> None:
        transform: Transform = Compose(*_pairs(features, layers, bins, rotation, seed))
        super().__init__(transform, StandardNormal(features))
        self.features, self.layers, self.rotation = features, layers, rotation
        self.max_layers = layers if max_layers is None else max_layers  # fit's cap
        self.bins, self.tol, self.patience = bins, tol, patience
        self.validation, self.seed = validation, seed
        self.gains: list[float] = []

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run (until then every layer is the identity); also for a
        fitted flow loaded from a file, which has its layers but not the fit's ``gains``."""
        return bool(self.gains) or any(
            m.fitted for m in self.transform.modules() if isinstance(m, MarginalGaussianization)
        )

    @torch.no_grad()
    def fit(self, x: Tensor) -> RBIGFlow:
        r"""Fit the layers one after another on data ``x`` of shape ``(n, D)``; returns ``self``.

        A seeded random ``validation`` fraction of the rows is held out; layers are fitted on the
        rest. Layer ``ℓ`` Gaussianizes the marginals of the current data ``y`` (map ``g``) and
        then rotates. Its gain is the increase of the held-out mean log-likelihood,
        ``Δ_ℓ = mean[½‖y‖² - ½‖g(y)‖² + Σ_i log g_i'(y_i)]`` over held-out points (rotations keep
        ``‖·‖``): the out-of-sample reduction of ``KL(p_y ‖ N(0, I))``, i.e. of the total
        correlation plus the marginal negentropies and moment mismatch. In-sample estimates
        of that reduction are biased upwards (about ``bins·D / 2n`` nats per layer), so they
        never stop; held-out ones do.

        **Stopping test:** fitting stops once ``Δ_ℓ < tol`` for ``patience`` consecutive layers
        (or after ``max_layers`` layers, or at a gain that is ``-inf`` or NaN, counted as
        ``-inf``: the held-out rows broke down, as with a handful of rows); the flow keeps the
        first ``k ≥ 1`` layers, ``k`` maximizing
        the held-out log-likelihood ``Σ_{ℓ≤k} Δ_ℓ``. The gains are stored in ``self.gains`` and
        ``k`` in ``self.config["layers"]`` (the cap stays in ``config["max_layers"]``), so
        ``nf.models.build(config)`` plus ``load_state_dict`` restores the fitted flow, and a
        rebuilt or loaded flow fitted again has the same cap as the flow it was saved from. The flow (layers and base) takes the dtype and
        device of ``x``.
        """
        x = check_tensor("RBIG.fit", "x", x)
        if x.dtype not in (torch.float32, torch.float64):  # (eigh has no half kernels)
            raise TypeError(
                f"RBIG.fit: x must be float32 or float64 (the fitted flow takes its dtype), got "
                f"{str(x.dtype).replace('torch.', '')}; pass x.float()"
            )
        if x.dim() != 2 or x.shape[-1] != self.features or x.shape[0] < 4:
            raise ValueError(
                f"RBIG.fit: x must have shape (n, {self.features}) with n >= 4, "
                f"got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("RBIG.fit: x contains NaN or inf values; expected finite numbers")
        constant = torch.nonzero((x == x[:1]).all(0)).flatten().tolist()
        if constant:  # (also a column its dtype cannot resolve: 1e4 + 1e-4·N(0, 1) in float32)
            raise ValueError(
                f"RBIG.fit: column(s) {', '.join(map(str, constant))} of x are constant in "
                f"{str(x.dtype).replace('torch.', '')}; a density over them is degenerate"
            )
        centred = x.double() - x.double().mean(0)
        # Of the standardized columns: both ends grow like √n, so the test of their ratio does
        # not depend on n (a tolerance ∝ n refused every float32 table from 840k rows), and an
        # exact dependence in the dtype leaves a ratio at its rounding level, ~eps.
        spread = torch.linalg.svdvals(centred / centred.std(0))
        if float(spread[-1]) <= float(spread[0]) * 100 * x.shape[1] * torch.finfo(x.dtype).eps:
            raise ValueError(  # (a duplicated column: its layers blew up to NaN off the line)
                f"RBIG.fit: the columns of x are linearly dependent in "
                f"{str(x.dtype).replace('torch.', '')} (a combination of them is constant, "
                "e.g. a duplicated column); a density over them is degenerate: drop one"
            )
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        n_val = min(max(2, round(self.validation * x.shape[0])), x.shape[0] - 2)
        val, y = x.detach()[order[:n_val]], x.detach()[order[n_val:]]
        layers = _pairs(self.features, self.max_layers, self.bins, self.rotation, self.seed)
        gains: list[float] = []
        below = 0
        for i in range(self.max_layers):
            marginal = layers[2 * i].to(y).fit(y)
            g = marginal(y)[0]
            rotation = layers[2 * i + 1].to(y).fit(g)
            y = rotation(g)[0]
            g_val, ladj = marginal(val)
            gain = float((0.5 * (val * val - g_val * g_val).sum(-1) + ladj).mean())
            gains.append(-math.inf if math.isnan(gain) else gain)
            if gains[-1] == -math.inf:  # the held-out rows broke down (tiny n): stop here
                break
            val = rotation(g_val)[0]
            below = below + 1 if gains[-1] < self.tol else 0
            if below >= self.patience:
                break
        cumulative = torch.tensor(gains, dtype=torch.float64).cumsum(0)
        keep = int(cumulative.argmax()) + 1
        self.transform = Compose(*layers[: 2 * keep])
        self.gains = gains
        self.config["layers"], self.config["max_layers"] = keep, self.max_layers
        return self.to(device=x.device, dtype=x.dtype)  # the base too, with the layers


def fitted_greedily(flow: Flow) -> bool:
    """Whether ``flow`` is an RBIG model (alone or inside :func:`~nfkit.models.standardize`),
    fitted by :meth:`RBIGFlow.fit` rather than by gradient (``nf.fit``)."""
    config = flow.config or {}
    return config.get("model") == "RBIG" or (config.get("flow") or {}).get("model") == "RBIG"


@factory
def RBIG(
    features: int,
    *,
    layers: int = 50,
    rotation: Literal["pca", "random"] = "pca",
    bins: int = 32,
    tol: float = 1e-3,
    patience: int = 5,
    validation: float = 0.2,
    seed: int = 0,
    max_layers: int | None = None,
) -> RBIGFlow:
    r"""Rotation-based iterative Gaussianization: call ``flow.fit(x)``, no gradient training.

    ``layers`` is the most layers :meth:`RBIGFlow.fit` adds (``max_layers`` when given: after
    fitting, ``config`` records the number kept as ``layers`` and the cap as ``max_layers``, so
    a saved, loaded or rebuilt flow fitted again may add as many as the first fit could);
    each is a :class:`~nfkit.transforms.MarginalGaussianization` with ``bins`` spline bins
    followed by a :class:`~nfkit.transforms.Rotation` (``"pca"``, or ``"random"`` with seeds
    ``seed + i``). Fitting stops when the held-out log-likelihood gain per layer (the
    out-of-sample reduction of the KL divergence to ``N(0, I)``) stays below ``tol`` nats for
    ``patience`` layers, measured on a seeded ``validation`` fraction of the data. ``log_prob`` is exact for the fitted map (one
    pass), sampling is exact (closed-form inverses). The fitted layers are differentiable in
    ``x``, so ``flow.transform`` can be the frozen first stage of a gradient-trained flow.

    References:
        Laparra, Camps-Valls, Malo (2011), "Iterative Gaussianization: from ICA to random
        rotations", arXiv:1602.00229; Chen & Gopinath (2000), "Gaussianization".
    """
    features = check_positive_int("RBIG", "features", features)
    layers = check_positive_int("RBIG", "layers", layers)
    if max_layers is not None:
        max_layers = check_positive_int("RBIG", "max_layers", max_layers)
    bins = check_positive_int("RBIG", "bins", bins)
    patience = check_positive_int("RBIG", "patience", patience)
    if rotation not in ("pca", "random"):
        raise ValueError(f"RBIG: rotation must be 'pca' or 'random', got {shown(rotation)}")
    check_number("RBIG", "tol", tol, 0.0, inclusive=True)
    seed = check_positive_int("RBIG", "seed", seed, minimum=0)
    validation = check_open_interval("RBIG", "validation", validation, 0, 1)
    return RBIGFlow(
        features,
        layers=layers,
        max_layers=max_layers,
        rotation=rotation,
        bins=bins,
        tol=float(tol),
        patience=patience,
        validation=validation,
        seed=seed,
    )


@factory
def GF(
    features: int,
    *,
    context: int = 0,
    transforms: int = 3,
    components: int = 8,
    hidden: Sequence[int] = (64, 64),
    base: str = "normal",
) -> Flow:
    r"""Gaussianization flow (Meng, Song, Song & Ermon 2020, arXiv:2003.01941), trained by gradient.

    ``transforms`` elementwise layers (:class:`~nfkit.transforms.Elementwise` with
    :class:`~nfkit.transforms.GaussianizationTransformer`: each feature pushed through the CDF of
    a learned mixture of ``components`` logistic kernels, then ``Φ⁻¹``), with a learned rotation
    (:class:`~nfkit.transforms.Householder`, ``D`` reflections) between consecutive layers: the
    trainable form of RBIG's "Gaussianize the marginals, rotate, repeat". ``log_prob`` is closed
    form; sampling takes one bracketed root find per element and layer, all features at once
    (no sequential passes). With ``context > 0`` each layer's parameters are an MLP of the
    context (hidden widths ``hidden``; unused without context). Standardize the data first (as
    ``nf.models.standardize`` and ``nfkit fit`` do): each layer starts near the identity on
    standardized data, its kernels at the normal quantiles.

    Args:
        features: ``D``.
        context: Context size.
        transforms: Number of elementwise Gaussianization layers.
        components: Mixture components per feature and layer (``2 · components`` parameters).
        hidden: Hidden widths of the context network (conditional flows only).
        base: Base distribution name.
    """
    hidden = _check_common("GF", features, context, transforms, hidden)
    components = check_positive_int("GF", "components", components)
    transformer = GaussianizationTransformer(components=components)
    layers: list[Transform] = []
    for i in range(transforms):
        if i > 0 and features > 1:
            layers.append(Householder(features, seed=i))
        layers.append(Elementwise(features, transformer, context=context, hidden=hidden))
    return _flow(layers, features, context, base)
