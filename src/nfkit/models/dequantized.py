r"""Tables with integer-valued columns: :class:`DequantizedFlow` (uniform dequantization).

A flow is a density on ``ℝ^D``; a column of counts, ratings or years takes integer values, and a
density fitted to them piles up into spikes at the integers (its likelihood grows without bound
while it generalizes worse). Uniform dequantization (Theis et al. 2016; as a surjective layer,
Nielsen et al. 2020, "SurVAE Flows") models a discrete column ``v`` through a continuous flow
``p`` on ``y = v + u``, ``u ~ U[0, 1)``, so that

``P(v, x) = ∫_{[0,1)^d} p(v + u, x) du``

is a probability over the integers of the ``d`` discrete columns (a density over the continuous
columns ``x``): the unit cells ``[v, v + 1)`` tile the line, so the probabilities sum to one.
Training maximizes the lower bound ``E_u log p(v + u, x) ≤ log P(v, x)`` (Jensen), one fresh
``u`` per row and step; scoring estimates ``log P`` itself by a quasi-Monte Carlo average of
``p`` over each row's cell; sampling floors the continuous samples.

The noise keeps ``ε = 2⁻¹²`` away from the cells' edges, ``u ~ U[ε, 1 - ε]`` (density
``(1 - 2ε)^{-d}``), so that ``v + u`` never lands on a bounded column's end, where the logit or
log that maps it onto the real line is infinite (``torch.rand`` does return 0). The bound and the
estimate then carry the term ``d log(1 - 2ε)`` (``-4.9·10⁻⁴`` nats per discrete column) and
concern ``P_ε(v, x) = ∫_{[ε, 1-ε]^d} p(v + u, x) du ≤ P(v, x)``, which differs from ``P`` by the
mass of the trimmed edges (a fraction of about ``2ε`` per column for a smooth density).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nfkit._checks import check_positive_int, check_tensor, shown
from nfkit.core import CHUNK_SIZE, Flow, Transform, _check_chunk, _check_values, blockwise

__all__ = ["DequantizedFlow", "DRAWS"]

DRAWS = 16
"""Default number of quasi-Monte Carlo points per row when scoring (``log_prob`` in eval mode)."""

EDGE = 2.0**-12
"""How far the dequantization noise stays from the cells' edges: ``u ∈ [EDGE, 1 - EDGE]``."""


class DequantizedFlow(Flow):
    r"""A flow over rows whose columns ``discrete`` hold integers: uniform dequantization.

    ``P(v, x | c) = ∫_{[0,1)^d} p(v + u, x | c) du`` for the discrete columns ``v`` (integers)
    and the continuous ones ``x``, where ``p`` is the flow of ``transform`` and ``base`` (its
    support, e.g. a :class:`~nfkit.transforms.Bounded` layer's ``(l, h + 1)``, gives the
    integers ``l … h`` a column may take). Built by :func:`nfkit.models.standardize` with
    ``discrete=``; ``nf.save``/``nf.load`` keep it.

    - ``log_prob`` in **train** mode: ``log p(v + u, x | c) + d log(1 - 2ε)`` with a fresh
      ``u ~ U[ε, 1 - ε]^d`` per row (``ε = 2⁻¹²``, see the module), an unbiased estimate of the
      lower bound ``E_u log p(v + u, x) + d log(1 - 2ε) ≤ log P(v, x)`` that :func:`nfkit.fit`
      maximizes.
    - ``log_prob`` in **eval** mode: ``log (1/K) Σ_k p(v + u_k, x | c) + d log(1 - 2ε)`` over
      ``K = draws`` scrambled Sobol points ``u_k`` (the same for every row, so the score of a
      row is deterministic and does not depend on its batch): a quasi-Monte Carlo estimate of
      ``log P(v, x)`` (of the trimmed cells' ``P_ε``, a relative ``~2ε`` per column below)
      that converges to it as ``K`` grows (``K`` flow passes per row). Accurate with few
      points where the density is nearly flat inside a cell, as a trained model's is; an
      untrained flow can be sharp inside a cell next to a bound (64 points then missed up to
      15% of a cell's mass in a test).
    - ``sample``: ``⌊y⌋`` on the discrete columns of the flow's samples ``y`` (integers within
      their range); the continuous columns as drawn. There are no reparameterized samples:
      ``rsample`` and ``sample_and_log_prob`` raise.

    Args:
        transform, base, embedding, context, config: As in :class:`~nfkit.Flow`.
        discrete: Indices of the discrete columns (of the event's last dim, ``D``).

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> g = torch.Generator().manual_seed(0)
        >>> counts = torch.poisson(torch.full((500, 1), 3.0), generator=g)
        >>> flow = nf.models.standardize(
        ...     nf.models.MAF(1, transforms=1, hidden=(8,)), counts, discrete="auto"
        ... ).eval()
        >>> v = torch.arange(-20.0, 40.0)[:, None]  # every integer with non-negligible mass
        >>> total = flow.log_prob(v).exp().sum().item()  # probabilities of the integers
        >>> abs(total - 1) < 1e-3  # one, less the trimmed edges of the cells (about 2 · 2⁻¹²)
        True
        >>> bool((flow.sample(100) % 1 == 0).all())  # integer samples
        True
    """

    def __init__(
        self,
        transform: Transform,
        base: nn.Module,
        *,
        discrete: Sequence[int],
        embedding: nn.Module | None = None,
        context: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(transform, base, embedding=embedding, context=context, config=config)
        if len(self.event_shape) != 1:
            raise ValueError(
                f"DequantizedFlow: only vector flows, got event shape {tuple(self.event_shape)}"
            )
        features = int(self.event_shape[0])
        index = sorted(set(int(i) for i in discrete))
        if not index or index[0] < 0 or index[-1] >= features:
            raise ValueError(
                f"DequantizedFlow: discrete must list columns in 0…{features - 1}, "
                f"got {shown(discrete)}"
            )
        mask = torch.zeros(features, dtype=torch.bool)
        mask[index] = True
        self.register_buffer("discrete", mask)
        self.discrete_columns = index
        # the flow's support per column (fixed; moved with the module, not saved)
        low, high = self.transform.domain._tensors(torch.empty(0, dtype=torch.float64))
        self.register_buffer("low", low.expand(features).clone(), persistent=False)
        self.register_buffer("high", high.expand(features).clone(), persistent=False)

    # ------------------------------------------------------------------ support of the cells

    def _ends(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The flow's support ``(low, high)`` per column, in ``like``'s dtype and device."""
        return self.low.to(like), self.high.to(like)

    def _inside(self, y: Tensor) -> Tensor:
        """``y`` moved just inside an open end it reached by rounding (``v + u`` with ``u`` near
        0 or 1 at a bound): the cell's measure-zero edge, which the flow's support excludes."""
        low, high = self._ends(y)
        return torch.minimum(
            torch.maximum(y, torch.nextafter(low, high)), torch.nextafter(high, low)
        )

    def _dequantize(self, x: Tensor, r: Tensor) -> Tensor:
        """``v + u`` in the discrete columns, ``u = ε + (1 - 2ε) r`` for ``r ∈ [0, 1]``."""
        u = r * (1 - 2 * EDGE) + EDGE
        return self._inside(x + u * self.discrete.to(x.dtype))

    @property
    def _log_cell(self) -> float:
        """``d log(1 - 2ε)``: the log-density of the noise ``u`` enters the bound and estimate."""
        return len(self.discrete_columns) * math.log1p(-2 * EDGE)

    # ------------------------------------------------------------------ checks

    def _label(self, j: int) -> str:
        names = self._column_labels()
        return repr(names[j]) if names is not None else str(j)

    def _check_x(
        self,
        where: str,
        x: Tensor,
        context: Tensor | None,
        names: tuple[str, str] = ("x", "context"),
        support: bool = True,
    ) -> None:
        """As :meth:`Flow._check_x`, and (with ``support``) the discrete columns hold integers
        within their range."""
        if not self.validate:
            return
        check_tensor(where, names[0], x)
        if not (x.is_floating_point() and x.dim() >= 1 and x.shape[-1:] == self.event_shape):
            super()._check_x(where, x, context, names)  # the shape error
            return
        if support and _check_values():
            self.check_cells(where, x, names[0])
        # the checks of the flow's own support, at each cell's centre (inside it when v is)
        super()._check_x(where, x + 0.5 * self.discrete.to(x.dtype), context, names, support)

    def in_support(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """As :meth:`Flow.in_support`, and the discrete columns hold integers within their
        range: ``(*batch,)`` bool."""
        low, high = self._ends(x)
        v = x[..., self.discrete_columns]
        lo, hi = low[self.discrete_columns], high[self.discrete_columns] - 1
        cells = ((v == torch.floor(v)) & (v >= lo) & (v <= hi)).all(-1)
        return cells & super().in_support(x + 0.5 * self.discrete.to(x.dtype), context)

    def check_cells(self, where: str, x: Tensor, name: str = "x") -> None:
        """Raise a one-line ``ValueError`` unless the discrete columns of ``x`` ``(*batch, D)``
        hold integers within their range (NaN and inf are left to the other checks)."""
        low, high = self._ends(x)
        v = x[..., self.discrete_columns]
        finite = torch.isfinite(v)
        lo, hi = low[self.discrete_columns], high[self.discrete_columns] - 1
        whole = ~finite | (v == torch.floor(v))
        inside = ~finite | ((v >= lo) & (v <= hi))
        for ok, what in ((whole, "non-integer values"), (inside, "values outside")):
            if not bool(ok.all()):
                first = torch.nonzero(~ok)[0]
                j = int(first[-1])
                bad = v[tuple(first)].item()
                span = f" its range [{lo[j].item():g}, {hi[j].item():g}]" if "out" in what else ""
                raise ValueError(
                    f"{where}: discrete {name} column {self._label(self.discrete_columns[j])} "
                    f"has {what}{span} (e.g. {bad:g}); it holds integers"
                )

    # ------------------------------------------------------------------ density

    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        chunk_size: int | None = CHUNK_SIZE,
        draws: int = DRAWS,
    ) -> Tensor:
        """``log P(v, x | c)``: a one-draw lower-bound estimate in train mode, the ``draws``-point
        quasi-Monte Carlo estimate in eval mode (see the class); shape ``(*batch,)``.

        Args:
            x: Rows ``(*batch, D)``; the discrete columns hold integers.
            context: ``(*batch, C)`` or None.
            chunk_size: As in :meth:`Flow.log_prob` (rows times ``draws`` per block in eval mode).
            draws: Quasi-Monte Carlo points per row in eval mode (more: closer to ``log P``).
        """
        where = "DequantizedFlow.log_prob"
        self._check_x(where, x, context)
        size = _check_chunk(where, chunk_size)
        draws = check_positive_int(where, "draws", draws)
        batch = x.shape[:-1]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
        if self.training:  # a fresh u per row of the broadcast batch
            x = x.expand(*batch, x.shape[-1])
            y = self._dequantize(x, torch.rand(x.shape, dtype=x.dtype, device=x.device))
            return self._chunked_log_prob(y, context, size) + self._log_cell
        if context is not None:
            context = context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        x = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            return x.new_zeros(batch)
        u = self._sobol(draws, x)  # (K, D)
        rows = x.shape[0] if size is None else max(1, size // draws)

        def block(i: int) -> Tensor:
            xi = x[i : i + rows]
            y = self._dequantize(xi.unsqueeze(0), u.unsqueeze(1)).reshape(-1, x.shape[-1])
            ci = None if context is None else context[i : i + rows].repeat(draws, 1)
            lp = self._chunked_log_prob(y, ci, size).reshape(draws, -1)
            return torch.logsumexp(lp, 0) + (self._log_cell - math.log(draws))

        return blockwise(x.shape[0], rows, block).reshape(batch)

    def dequantized_log_prob(
        self, y: Tensor, context: Tensor | None = None, *, chunk_size: int | None = CHUNK_SIZE
    ) -> Tensor:
        """``log p(y | c)``: the continuous density of the dequantized rows ``y = v + u`` (any
        real values in the discrete columns; its integral over the cell ``[v, v + 1)`` is
        ``P(v)``). What :func:`nfkit.plot.density` draws for such a flow."""
        where = "DequantizedFlow.dequantized_log_prob"
        Flow._check_x(self, where, y, context, ("y", "context"))
        return self._chunked_log_prob(y, context, _check_chunk(where, chunk_size))

    def _sobol(self, draws: int, like: Tensor) -> Tensor:
        """``(draws, D)`` scrambled Sobol points (fixed seed) in the discrete columns, 0 elsewhere."""
        d = len(self.discrete_columns)
        points = torch.quasirandom.SobolEngine(d, scramble=True, seed=0).draw(
            draws, dtype=torch.float64
        )
        u = torch.zeros(draws, self.event_shape[0], dtype=like.dtype, device=like.device)
        u[:, self.discrete_columns] = points.to(like)
        return u

    # ------------------------------------------------------------------ sampling

    def _rsample(self, where: str, shape_or_n: Any, context: Tensor | None) -> Tensor:
        y = super()._rsample(where, shape_or_n, context)
        low, high = self._ends(y)
        v = torch.minimum(torch.maximum(torch.floor(y), low), high - 1)  # rounding at an end
        return torch.where(self.discrete, v, y)

    def rsample(
        self, shape_or_n: int | Sequence[int] = (), context: Tensor | None = None
    ) -> Tensor:
        """Not available: integers have no reparameterized samples; use :meth:`sample`."""
        raise TypeError(
            "DequantizedFlow.rsample: discrete columns have no reparameterized samples; use sample"
        )

    def sample_and_log_prob(
        self, shape_or_n: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Not available (see :meth:`rsample`): use :meth:`sample`, then :meth:`log_prob`."""
        raise TypeError(
            "DequantizedFlow.sample_and_log_prob: discrete columns have no reparameterized "
            "samples; use sample, then log_prob"
        )
