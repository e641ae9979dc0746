r"""A flow as a ``torch.distributions.Distribution``: :class:`FlowDistribution`.

For code that takes torch's distributions rather than nfkit flows: a prior or proposal handed
to a simulation-based-inference library, ``torch.distributions.TransformedDistribution`` (a
flow pushed through torch's bijections), Monte Carlo KL estimates between distributions, a
variational family in a hand-written ELBO. ``flow.distribution(context)`` is the view; it holds
the flow (no copy), so training the flow changes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from nfkit._shapes import broadcasts_to

if TYPE_CHECKING:
    from nfkit.core import Flow

__all__ = ["FlowDistribution"]


def _kind(low_finite: bool, high_finite: bool) -> str:
    """Which ends a column's support has."""
    if low_finite:
        return "interval" if high_finite else "greater_than"
    return "less_than" if high_finite else "real"


def _constraint(kind: str, low: Tensor, high: Tensor) -> Any:
    """torch's constraint of ``kind`` with these ends."""
    if kind == "interval":
        return constraints.interval(low, high)
    if kind == "greater_than":
        return constraints.greater_than(low)
    return constraints.less_than(high) if kind == "less_than" else constraints.real


class FlowDistribution(Distribution):
    r"""``p(x | c)`` of a flow at a fixed context, with torch's distribution interface.

    - ``log_prob(x)``: the flow's ``log p(x | c)`` (exact; a
      :class:`~nfkit.models.DequantizedFlow`'s is its quasi-Monte Carlo estimate), ``x`` of
      shape ``(*sample, *batch, *event)`` (broadcast against the context's batch). A value
      outside the support is refused or, with ``validate_args=False``, scored ``-inf``
      (density 0), as torch's own distributions do without validation.
    - ``rsample(shape)`` / ``sample(shape)``: ``(*shape, *batch, *event)``, reparameterized or
      without gradient; ``has_rsample`` is False for a
      :class:`~nfkit.models.DequantizedFlow` (integers) and for a base whose draws carry no
      gradient to all its parameters (a trainable mixture's weights).
    - ``batch_shape``: the context's batch dims (``()`` without context, or what
      :meth:`expand` gives); ``event_shape``: the flow's.
    - ``support``: the flow's domain per coordinate of the last event dim (the real line, or
      the bounds of a ``Bounded`` layer), so ``torch.distributions.biject_to`` finds a map
      onto it (see :attr:`support`).

    Args:
        flow: An :class:`~nfkit.Flow`.
        context: ``(*batch, C)`` for a conditional flow (checked as ``flow.sample`` checks
            it), else None.
        batch_shape: An unconditional flow's batch (independent draws per entry; what
            :meth:`expand` sets); default ``()``.
        validate_args: Refuse values outside the support in ``log_prob`` (True or None) or
            score them ``-inf`` (False). torch's global default
            (``Distribution.set_default_validate_args``) is not followed: libraries switch it
            off when imported (zuko does), which would change what nfkit computes. NaN and
            shape errors are refused either way.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> flow = nf.models.NSF(2, context=3, transforms=2, hidden=(8,))
        >>> q = flow.distribution(torch.randn(5, 3))
        >>> q.batch_shape, q.event_shape
        (torch.Size([5]), torch.Size([2]))
        >>> q.rsample((4,)).shape
        torch.Size([4, 5, 2])
        >>> y = torch.distributions.TransformedDistribution(
        ...     nf.models.MAF(2, transforms=1, hidden=(8,)).distribution(),
        ...     [torch.distributions.ExpTransform()],
        ... )  # a flow on the positive quadrant
        >>> y.log_prob(torch.ones(2)).shape
        torch.Size([])
    """

    arg_constraints: dict[str, Any] = {}

    def __init__(
        self,
        flow: Flow,
        context: Tensor | None = None,
        *,
        batch_shape: torch.Size | None = None,
        validate_args: bool | None = None,
    ) -> None:
        from nfkit.core import Flow

        if not isinstance(flow, Flow):
            raise TypeError(f"FlowDistribution: expected an nf.Flow, got {type(flow).__name__}")
        flow._sample_shape("FlowDistribution", (), context)  # the context's checks
        self.flow = flow
        self.context = context
        if validate_args is not None and not isinstance(validate_args, bool):
            raise TypeError(
                "FlowDistribution: validate_args must be True, False or None, got "
                f"{type(validate_args).__name__}"
            )
        #: Whether ``log_prob`` refuses values outside the support (else ``-inf``).
        self.validate_support = validate_args is not False
        if context is not None and batch_shape is not None:
            raise ValueError(
                "FlowDistribution: batch_shape is for an unconditional flow; a conditional "
                "one takes its batch from the context (expand it instead)"
            )
        if batch_shape is None:
            batch_shape = torch.Size() if context is None else context.shape[:-1]
        super().__init__(
            batch_shape=torch.Size(batch_shape),
            event_shape=flow.event_shape,
            validate_args=False,  # the flow checks its inputs itself (validate_support)
        )

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        from nfkit.models.dequantized import DequantizedFlow

        # a mixture base's rsample carries no gradient to its weights: not reparameterized
        # (as torch's MixtureSameFamily says), so code that checks does not trust it
        return not isinstance(self.flow, DequantizedFlow) and bool(
            getattr(self.flow.base, "reparameterized", True)
        )

    @property
    def support(self) -> Any:  # type: ignore[override]
        """The flow's domain: real; ``greater_than``/``less_than``/``interval`` when every
        coordinate has the same kind of ends (as tensors of the last event dim, in the flow's
        dtype and device); for a mix (a positive column among real ones), torch's ``cat`` of one
        such constraint per column. ``torch.distributions.biject_to`` maps onto each.
        torch's intervals are closed, the flow's supports open (a value at an end passes
        ``support.check`` and is refused by ``log_prob``); integer (discrete) columns are
        described by their integers: ``integer_interval`` from the lowest to the highest (an
        open end: ±inf), as ``log_prob`` takes them."""
        from nfkit.core import dtype_device

        domain = self.flow.transform.domain
        k = len(self.event_shape)
        discrete = set(getattr(self.flow, "discrete_columns", ()))  # a DequantizedFlow's
        if domain.is_real and not discrete:
            return constraints.independent(constraints.real, k)
        dtype, device = dtype_device(self.flow)
        low, high = domain._tensors(torch.zeros((), dtype=dtype, device=device))
        if low.dim() == 0:  # one interval for every column
            low, high = (t.expand(self.event_shape[-1:]) for t in (low, high))
        kinds = [_kind(math.isfinite(lo), math.isfinite(hi))
                 for lo, hi in zip(low.flatten().tolist(), high.flatten().tolist(), strict=True)]  # fmt: skip
        if len(set(kinds)) == 1 and not discrete:
            return constraints.independent(_constraint(kinds[0], low, high), k)
        # a discrete column's values v + u fill (l, h + 1): its integers are l … h
        columns = [
            constraints.integer_interval(low[j], high[j] - 1)
            if j in discrete
            else _constraint(kind, low[j], high[j])
            for j, kind in enumerate(kinds)
        ]
        return constraints.independent(
            constraints.cat(columns, dim=-1, lengths=[1] * len(columns)), k
        )

    def _extra(self) -> torch.Size:
        """Batch dims the flow's own draws lack: all of an unconditional flow's batch."""
        return self.batch_shape if self.context is None else torch.Size()

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(value)``, of shape ``value``'s batch dims broadcast with ``batch_shape``."""
        if self.validate_support:
            log_p = self.flow.log_prob(value, self.context)
        else:
            from nfkit.core import log_prob_or_minus_inf

            log_p = log_prob_or_minus_inf(self.flow, value, self.context)
        if self.context is None and self.batch_shape:  # an unconditional flow over a batch
            try:
                shape = torch.broadcast_shapes(log_p.shape, self.batch_shape)
            except RuntimeError:
                raise ValueError(
                    f"FlowDistribution.log_prob: value's batch shape {tuple(log_p.shape)} does "
                    f"not broadcast with the batch shape {tuple(self.batch_shape)}"
                ) from None
            log_p = log_p.expand(shape)
        return log_p

    def rsample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        return self.flow.rsample(torch.Size(sample_shape) + self._extra(), self.context)

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:  # noqa: B008
        return self.flow.sample(torch.Size(sample_shape) + self._extra(), self.context)

    def expand(self, batch_shape: Any, _instance: Any = None) -> FlowDistribution:
        """The same flow over ``batch_shape`` (the context broadcast to it)."""
        batch_shape = torch.Size(batch_shape)
        if not broadcasts_to(self.batch_shape, batch_shape):
            raise ValueError(
                f"FlowDistribution.expand: {tuple(batch_shape)} does not extend the batch shape "
                f"{tuple(self.batch_shape)} (each dim equal, or 1 in the batch)"
            )
        checks = self.validate_support
        if self.context is None:
            return FlowDistribution(self.flow, batch_shape=batch_shape, validate_args=checks)
        context = self.context.expand(*batch_shape, self.context.shape[-1])
        return FlowDistribution(self.flow, context, validate_args=checks)

    def __repr__(self) -> str:
        model = (self.flow.config or {}).get("model", type(self.flow).__name__)
        return (
            f"FlowDistribution({model}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )
