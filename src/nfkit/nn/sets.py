r"""A permutation-invariant summary of a set: :class:`DeepSet` (Zaheer et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfkit._checks import check_hidden, check_positive_int
from nfkit.nn.mlp import MLP

__all__ = ["DeepSet", "padded_set", "check_padded_set"]


class DeepSet(nn.Module):
    r"""``ρ((1/n) Σ_i φ(x_i))``: one summary of ``n`` exchangeable elements ``x_i`` of ``m``
    features each (the trials of an experiment, i.i.d. observations given the parameters).

    ``φ`` is an :class:`MLP` ``m → hidden… → H`` applied to every element, ``H = hidden[-1]``;
    the mean over the elements makes the output invariant to their order (and lets ``n`` vary
    from call to call); ``ρ`` is an MLP ``H → hidden… → out_features``. Both are randomly
    initialized (a summary that starts at zero would pass no gradient).

    ``padded=True``: sets of different sizes in one batch. A row holds up to ``n`` elements,
    an absent one as ``m`` NaNs (padding, anywhere in the row). The mean runs over the present
    elements only, and ``ρ`` also reads their number as the fraction ``k/n`` (a posterior
    narrows with more trials, which a mean alone cannot tell): ``ρ(mean_{i present} φ(x_i),
    k/n)``. A row with no element gives ``ρ(0, 0)``. A partly NaN element is an error of the
    flow's input checks (:func:`check_padded_set`), not of this module.

    Args:
        element_features: ``m``, the features of one element.
        out_features: Size of the summary.
        hidden: Hidden widths of ``φ`` and of ``ρ``.
        residual: Residual blocks in both (equal hidden widths).
        padded: Absent elements are all-NaN padding.

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

    outline_settings = ("padded",)

    def __init__(
        self,
        element_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        residual: bool = False,
        padded: bool = False,
    ) -> None:
        super().__init__()
        where = "DeepSet"
        self.element_features = check_positive_int(where, "element_features", element_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        self.padded = bool(padded)
        widths = check_hidden(where, hidden)
        width = widths[-1]
        self.phi = MLP(self.element_features, width, widths, zero_init=False, residual=residual)
        self.rho = MLP(
            width + self.padded, self.out_features, widths, zero_init=False, residual=residual
        )

    def forward(self, x: Tensor) -> Tensor:
        m = self.element_features
        if x.shape[-1] % m or x.shape[-1] == 0:  # (no slot at all: a mean over none, NaN)
            raise ValueError(
                f"DeepSet: the last dim ({x.shape[-1]}) must hold whole elements of {m} features, "
                "at least one"
            )
        elements = x.unflatten(-1, (-1, m))
        if not self.padded:
            return self.rho(self.phi(elements).mean(-2))
        # present: (*batch, n, 1); NaN padding becomes 0 before φ (masked out after it), so no
        # NaN reaches a gradient
        present = (~torch.isnan(elements).all(-1, keepdim=True)).to(x.dtype)
        h = self.phi(torch.nan_to_num(elements, nan=0.0)) * present
        count = present.sum(-2)  # (*batch, 1)
        pooled = h.sum(-2) / count.clamp(min=1.0)
        return self.rho(torch.cat([pooled, count / elements.shape[-2]], -1))

    def extra_repr(self) -> str:
        padded = ", padded=True" if self.padded else ""
        return (
            f"element_features={self.element_features}, out_features={self.out_features}{padded}"
        )


def padded_set(module: nn.Module | None) -> int | None:
    """The element size ``m`` of the padded :class:`DeepSet` that reads a flow's raw context,
    or None: whether the context may hold NaN padding. That is the embedding itself, or the
    first module of an ``nn.Sequential`` (after modules that keep the context's layout, marked
    ``keeps_context_layout``: the standardization's scaling). A padded set inside an embedding
    of another kind (one that also reads other columns) does not let NaN through: its context
    is checked as numbers, and NaN refused."""
    while isinstance(module, nn.Sequential) and len(module) > 0:
        head = module[0]
        if getattr(head, "keeps_context_layout", False) and len(module) > 1:
            module = module[1:]
        else:
            module = head
    if isinstance(module, DeepSet) and module.padded:
        return module.element_features
    return None


def check_padded_set(where: str, name: str, context: Tensor, m: int) -> None:
    """A padded set's context: NaN only as whole absent elements of ``m`` features, no inf.

    Reads values (a host sync), as the flow's other input checks do."""
    if context.shape[-1] % m:
        raise ValueError(
            f"{where}: {name}'s last dim ({context.shape[-1]}) must hold whole set elements of "
            f"{m} features"
        )
    elements = context.unflatten(-1, (-1, m))
    nan = torch.isnan(elements)
    if bool((nan.any(-1) & ~nan.all(-1)).any()):
        raise ValueError(
            f"{where}: {name} holds a partly missing set element (some of its {m} features "
            "NaN); an absent element is all NaN"
        )
    if bool(torch.isinf(context).any()):
        raise ValueError(f"{where}: {name} contains inf values; expected finite numbers or NaN")
