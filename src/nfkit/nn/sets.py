r"""A permutation-invariant summary of a set: :class:`DeepSet` (Zaheer et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from nfkit._checks import check_hidden, check_positive_int
from nfkit.nn.mlp import MLP

__all__ = ["DeepSet"]


class DeepSet(nn.Module):
    r"""``ρ((1/n) Σ_i φ(x_i))``: one summary of ``n`` exchangeable elements ``x_i`` of ``m``
    features each (the trials of an experiment, i.i.d. observations given the parameters).

    ``φ`` is an :class:`MLP` ``m → hidden… → H`` applied to every element, ``H = hidden[-1]``;
    the mean over the elements makes the output invariant to their order (and lets ``n`` vary
    from call to call); ``ρ`` is an MLP ``H → hidden… → out_features``. Both are randomly
    initialized (a summary that starts at zero would pass no gradient).

    Args:
        element_features: ``m``, the features of one element.
        out_features: Size of the summary.
        hidden: Hidden widths of ``φ`` and of ``ρ``.
        residual: Residual blocks in both (equal hidden widths).

    Shapes:
        ``(*batch, n·m)`` (the elements one after another, as a table row holds them) →
        ``(*batch, out_features)``.

    References:
        Zaheer, Kottur, Ravanbakhsh, Póczos, Salakhutdinov & Smola (2017), "Deep sets",
        arXiv:1703.06114.

    Example:
        >>> import torch
        >>> net = DeepSet(2, 4, hidden=(16,))
        >>> x = torch.randn(3, 10)            # 3 sets of five 2-D elements
        >>> shuffled = x.view(3, 5, 2)[:, torch.randperm(5)].reshape(3, 10)
        >>> torch.allclose(net(x), net(shuffled), atol=1e-6)
        True
    """

    def __init__(
        self,
        element_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        residual: bool = False,
    ) -> None:
        super().__init__()
        where = "DeepSet"
        self.element_features = check_positive_int(where, "element_features", element_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        widths = check_hidden(where, hidden)
        width = widths[-1]
        self.phi = MLP(self.element_features, width, widths, zero_init=False, residual=residual)
        self.rho = MLP(width, self.out_features, widths, zero_init=False, residual=residual)

    def forward(self, x: Tensor) -> Tensor:
        m = self.element_features
        if x.shape[-1] % m:
            raise ValueError(
                f"DeepSet: the last dim ({x.shape[-1]}) must hold whole elements of {m} features"
            )
        return self.rho(self.phi(x.unflatten(-1, (-1, m))).mean(-2))

    def extra_repr(self) -> str:
        return f"element_features={self.element_features}, out_features={self.out_features}"
