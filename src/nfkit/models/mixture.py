r"""Mixture factory: :func:`GMM`, a Gaussian mixture (a mixture density network when
conditional) with the interface of every other flow."""

from __future__ import annotations

from collections.abc import Sequence

from nfkit._checks import check_hidden, check_positive_int
from nfkit.core import Flow
from nfkit.distributions import COVARIANCES, GaussianMixture
from nfkit.models._registry import factory
from nfkit.transforms.linear import Identity

__all__ = ["GMM"]


@factory
def GMM(
    features: int,
    *,
    context: int = 0,
    components: int = 8,
    covariance: str = "full",
    hidden: Sequence[int] = (64, 64),
) -> Flow:
    r"""Gaussian mixture model: ``p(x | c) = Σ_k π_k(c) N(x; μ_k(c), Σ_k(c))``.

    A :class:`~nfkit.Flow` whose transform is the identity and whose base is a
    :class:`~nfkit.distributions.GaussianMixture` of ``components`` Gaussians with full
    covariances ``Σ_k = L_k L_kᵀ`` (``covariance="full"``, as scikit-learn's and zuko's),
    diagonal ones (``"diagonal"``: ``D`` instead of ``D (D + 1) / 2`` parameters each),
    ``σ_k² I`` (``"spherical"``: one each) or one full covariance shared by all components
    (``"tied"``: ``D (D + 1) / 2`` in all, one triangular solve for every component). With
    ``context > 0`` the weights, means and covariance factors are an MLP of the context (hidden
    widths ``hidden``; unused without context): a mixture density network (Bishop 1994), the
    classic baseline for conditional density estimation and for neural posterior estimation
    (zuko's ``GMM``, sbi's ``"mdn"``). ``log_prob`` is exact (one network pass and one
    triangular solve); sampling picks a component by the Gumbel-max trick, so it is
    reparameterized within the component but not in the choice: train it by likelihood
    (``nf.fit``); ``nf.fit_vi`` refuses it (its weights would get biased gradients).
    Standardize the data first (as ``nf.models.standardize`` and ``nfkit fit`` do): the
    components start at unit covariance around means drawn from ``N(0, I)``.

    Args:
        features: ``D``.
        context: Context size.
        components: Mixture components.
        covariance: ``"full"``, ``"diagonal"``, ``"spherical"`` or ``"tied"`` (scikit-learn's
            names).
        hidden: Hidden widths of the context network (conditional mixtures only).
    """
    features = check_positive_int("GMM", "features", features)
    context = check_positive_int("GMM", "context", context, minimum=0)
    components = check_positive_int("GMM", "components", components)
    hidden = check_hidden("GMM", hidden)
    if covariance not in COVARIANCES:
        raise ValueError(
            f"GMM: covariance must be one of {', '.join(map(repr, COVARIANCES))}, "
            f"got {covariance!r}"
        )
    base = GaussianMixture(
        features, components, context=context, hidden=hidden, covariance=covariance
    )
    return Flow(Identity(), base, context=context)
