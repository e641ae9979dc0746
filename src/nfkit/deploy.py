r"""A flow as one exported graph for deployment: :func:`export` (``torch.export``).

``torch.export`` traces a module into an ``ExportedProgram``: a standalone graph with the
weights, saved by ``torch.export.save`` and run (``torch.export.load(path).module()``) without
nfkit's Python code, or compiled ahead of time (AOTInductor). :func:`export` builds the
program of one direction of a flow with the batch dimension left free.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Literal

import torch
from torch import Tensor, nn

from nfkit._checks import check_positive_int, one_line
from nfkit._numerics import NotExportable
from nfkit.core import Flow, dtype_device
from nfkit.distributions import StandardNormal

__all__ = ["export"]


class _Density(nn.Module):
    """``(x[, c]) -> log p(x | c)``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        log_p = self.flow.log_prob(x, context, chunk_size=None)
        # outside the support: -inf, as log_prob_or_minus_inf (a transform need not give NaN
        # there: a circular spline wraps an angle beyond its range to a finite, wrong value);
        # a NaN input stays NaN
        events = len(self.flow.event_shape)
        counted = self.flow.in_support(x, context) | torch.isnan(x).flatten(x.dim() - events).any(
            -1
        )
        return torch.where(counted, log_p, torch.full_like(log_p, -math.inf))


class _Sampler(nn.Module):
    """``(z[, c]) -> x = T⁻¹(z; e(c))``: standard normal noise to data."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.flow.transform.inverse_value(z, self.flow._embed(context))


def export(
    flow: Flow,
    direction: Literal["density", "sample"] = "density",
    *,
    batch: int = 8,
) -> torch.export.ExportedProgram:
    r"""Export ``flow``'s density or its sampler as a ``torch.export.ExportedProgram``.

    - ``"density"``: the program maps ``x (B, *event)`` (and ``context (B, C)`` for a
      conditional flow) to ``log p(x | c)``, shape ``(B,)``, in one pass for any ``B``.
    - ``"sample"``: it maps standard normal noise ``z (B, *event)`` (and ``context``) to
      samples ``x = T⁻¹(z; c)``: draw ``z = torch.randn(B, *event)`` where the program runs.
      Needs the ``StandardNormal`` base every factory uses by default.

    The batch size ``B`` is a free dimension (traced at ``batch``). A copy of the flow is
    traced in eval mode, so the program holds the flow's current weights and standardization
    (training the flow afterwards leaves it as it was). The program does not check its
    inputs' values (the flow's checks that read values do not run while tracing; shapes are
    fixed but ``B``): a density program scores an event outside the flow's support ``-inf``
    (as :func:`~nfkit.log_prob_or_minus_inf`) and a NaN one NaN.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> flow = nf.models.MAF(2, transforms=1, hidden=(8,))
        >>> program = nf.export(flow)              # torch.export.save(program, "maf.pt2")
        >>> program.module()(torch.randn(100, 2)).shape
        torch.Size([100])
        >>> sampler = nf.export(flow, "sample")
        >>> sampler.module()(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """
    where = "nf.export"
    if not isinstance(flow, Flow):
        raise TypeError(f"{where}: expected an nf.Flow, got {type(flow).__name__}")
    if direction not in ("density", "sample"):
        raise ValueError(f"{where}: direction must be 'density' or 'sample', got {direction!r}")
    batch = check_positive_int(where, "batch", batch, minimum=2)  # a size-1 dim would be fixed
    from nfkit.models.dequantized import DequantizedFlow

    if isinstance(flow, DequantizedFlow):
        raise ValueError(
            f"{where}: a flow with discrete columns scores by averaging over random draws; "
            "export its continuous flow, or score with nfkit"
        )
    if direction == "sample" and type(flow.base) is not StandardNormal:
        raise ValueError(
            f"{where}: 'sample' feeds standard normal noise through the inverse; this flow's "
            f"base is {type(flow.base).__name__}"
        )
    dtype, device = dtype_device(flow)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, *flow.event_shape, generator=g, dtype=dtype).to(device)
    example = flow.transform.domain.from_real(u) if direction == "density" else u
    args: tuple[Tensor, ...] = (example,)
    rows = torch.export.Dim("batch")
    shapes: tuple[dict[int, torch.export.Dim], ...] = ({0: rows},)
    if flow.context_features:
        context = torch.randn(batch, flow.context_features, generator=g, dtype=dtype)
        args, shapes = (*args, context.to(device)), (*shapes, {0: rows})
    # a copy in eval mode: torch.export shares the module's tensors, so training the flow
    # afterwards (or .double()) changed or broke the program
    copy = deepcopy(flow).eval()
    module = _Density(copy) if direction == "density" else _Sampler(copy)
    try:
        return torch.export.export(module, args, dynamic_shapes=shapes)
    except NotExportable as e:
        raise ValueError(
            f"{where}: this flow's {direction} runs {e}, whose number of steps depends on the "
            "data: no single graph holds it (export the other direction if it is explicit)"
        ) from None
    except Exception as e:  # torch's tracer: many kinds, long messages
        raise ValueError(
            f"{where}: torch.export cannot trace this flow's {direction} as one graph "
            f"({type(e).__name__}: {one_line(e, 160)})"
        ) from None
