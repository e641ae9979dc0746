r"""Flow matching: train a continuous flow by regressing its vector field, without an ODE solve.

A :class:`~nfkit.transforms.ContinuousFlow` maps data ``y`` at ``t = 0`` to the latent at
``t = t₁`` along ``dy/dt = f(y, t, c)``. Conditional flow matching (Lipman et al. 2023; Liu et
al. 2023, "rectified flow"; Tong et al. 2024, I-CFM with ``σ = 0``) joins each data row ``y`` to
an independent base draw ``z ~ N(0, I)`` by the straight line

``y_s = (1 - s) y + s z``, ``s = t / t₁ ∈ [0, 1]``, of velocity ``u = (z - y) / t₁``,

and minimizes ``E_{y, z, s ~ U[0, 1]} ‖f(y_s, s t₁, c) - u‖²``. Its minimizer is the velocity
``E[u | y_s, s, c]`` whose flow carries the data distribution onto ``N(0, I)`` at ``t₁`` (the
marginals of the lines), so the trained flow is an ordinary continuous flow: ``log_prob`` and
``sample`` solve its ODE, with the exact log-determinant. Each training step costs one pass of the
network (FFJORD's maximum likelihood costs an ODE solve with the trace of the Jacobian), and the
loss is conditional for free: ``c`` is the flow's context (flow matching posterior estimation,
Dax et al. 2023).

Which flows qualify: the transform's last layer is the only :class:`ContinuousFlow` (``FFJORD``
with ``blocks=1``), every layer before it is fixed (no trainable parameters: the standardization
of :func:`nfkit.models.standardize`, a :class:`~nfkit.transforms.Bounded` map), and the base is
the standard normal. A :class:`~nfkit.models.DequantizedFlow`'s integer columns get uniform
dequantization noise, as in maximum likelihood.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from nfkit.core import Compose, Flow, Transform
from nfkit.distributions import StandardNormal
from nfkit.models.dequantized import DequantizedFlow
from nfkit.transforms.continuous import ContinuousFlow

__all__ = ["flow_matching_loss", "FlowMatchingObjective", "FlowMatchingNoise"]


class FlowMatchingNoise(NamedTuple):
    """The random draws of one flow-matching batch of ``B`` rows of ``D`` features.

    ``z``: base draws ``(B, D)``; ``s``: times in ``[0, 1)`` as fractions of ``t₁``, ``(B,)``;
    ``cells``: uniform dequantization draws ``(B, D)`` for a :class:`DequantizedFlow` (else None).
    """

    z: Tensor
    s: Tensor
    cells: Tensor | None = None

    def rows(self, index: Tensor | slice) -> FlowMatchingNoise:
        """The draws of some rows (a rank's shard, a chunk)."""
        return FlowMatchingNoise(
            self.z[index], self.s[index], None if self.cells is None else self.cells[index]
        )


def _layers(transform: Transform) -> list[Transform]:
    if isinstance(transform, Compose):
        return [t for part in transform.transforms for t in _layers(part)]
    return [transform]


class FlowMatchingObjective(nn.Module):
    r"""The per-row flow-matching loss of ``flow`` as a module (what ``nf.fit`` trains, and wraps
    in ``DistributedDataParallel`` across processes).

    ``forward(x, context, noise) -> (B,)``: ``‖f(y_s, s t₁, c) - (z - y)/t₁‖²`` summed over the
    features, where ``y`` is ``x`` through the fixed layers before the continuous flow (and, for a
    :class:`DequantizedFlow`, dequantized by ``noise.cells``), ``c`` the embedded context and
    ``noise`` a :class:`FlowMatchingNoise` (see :meth:`draw`).

    Raises:
        ValueError: ``flow`` is not a flow that flow matching can train (see the module).
    """

    def __init__(self, flow: Flow, where: str = "flow matching") -> None:
        super().__init__()
        if not isinstance(flow, Flow):
            raise TypeError(f"{where}: flow must be an nf.Flow, got {type(flow).__name__}")
        layers = _layers(flow.transform)
        fields = [t for t in layers if isinstance(t, ContinuousFlow)]
        if len(fields) != 1 or layers[-1] is not fields[0]:
            if not fields:
                got = "no ContinuousFlow"
            elif len(fields) > 1:
                got = f"{len(fields)} ContinuousFlow layers"
            else:
                got = "a ContinuousFlow followed by other layers"
            raise ValueError(
                f"{where}: flow matching trains one ContinuousFlow as the flow's last layer "
                f"(nf.models.FFJORD with blocks=1); this flow has {got}"
            )
        if not fields[0].time_dependent:
            raise ValueError(
                f"{where}: flow matching regresses a field of time, E[u | y_s, s]; this "
                "ContinuousFlow ignores t (build it with time_dependent=True)"
            )
        for layer in layers[:-1]:
            if any(p.requires_grad for p in layer.parameters()):
                raise ValueError(
                    f"{where}: flow matching needs the layers before the ContinuousFlow to be "
                    f"fixed, but {type(layer).__name__} has trainable parameters"
                )
        if type(flow.base) is not StandardNormal:
            raise ValueError(
                f"{where}: flow matching carries the data onto a standard normal; the flow's "
                f"base is {type(flow.base).__name__} (build it with base='normal')"
            )
        self.flow = flow
        # plain tuples: the layers are the flow's submodules already
        self._prefix = tuple(layers[:-1])
        self._field = (fields[0],)

    def draw(
        self, rows: int, like: Tensor, generator: torch.Generator | None = None
    ) -> FlowMatchingNoise:
        """Fresh draws for ``rows`` rows in ``like``'s dtype and device: ``z ~ N(0, I)``,
        ``s ~ U[0, 1)`` and, for a :class:`DequantizedFlow`, ``cells ~ U[0, 1)^D``."""
        shape = (rows, *self.flow.event_shape)
        kw = {"dtype": like.dtype, "device": like.device, "generator": generator}
        z = torch.randn(shape, **kw)
        s = torch.rand(rows, **kw)
        cells = torch.rand(shape, **kw) if isinstance(self.flow, DequantizedFlow) else None
        return FlowMatchingNoise(z, s, cells)

    def forward(self, x: Tensor, context: Tensor | None, noise: FlowMatchingNoise) -> Tensor:
        flow, (field,) = self.flow, self._field
        c = flow._embed(context)
        y = x
        if isinstance(flow, DequantizedFlow):
            y = flow._dequantize(y, noise.cells)
        for layer in self._prefix:
            y, _ = layer(y, c)
        z, s = noise.z, noise.s
        s_ = s.unsqueeze(-1)
        y_s = (1 - s_) * y + s_ * z
        target = (z - y) / field.t1
        return (field.velocity(y_s, s * field.t1, c) - target).square().sum(-1)


def flow_matching_loss(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    *,
    noise: FlowMatchingNoise | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The conditional flow-matching loss of each row of ``x``, shape ``(B,)``: minimize its mean.

    ``x`` is ``(B, D)`` data and ``context`` ``(B, C)``, ``(1, C)`` or ``(C,)`` (a conditional
    flow). The draws are fresh (from ``generator``, else torch's global RNG) unless ``noise``
    gives them. The loss is
    ``‖f(y_s, s t₁, c) - (z - y)/t₁‖²`` with ``y_s = (1 - s) y + s z`` (see
    :mod:`nfkit.flow_matching`); at its minimum the flow's ODE carries the data onto the base.

    Example:
        >>> import nfkit as nf
        >>> flow = nf.models.FFJORD(2, hidden=(32, 32))
        >>> x = nf.datasets.two_moons(256)
        >>> nf.flow_matching_loss(flow, x).shape
        torch.Size([256])
    """
    where = "nf.flow_matching_loss"
    objective = FlowMatchingObjective(flow, where)
    if flow.validate:
        flow._check_x(where, x, context)
        if x.dim() != 2:
            raise ValueError(f"{where}: x must be rows (B, D), got shape {tuple(x.shape)}")
        if context is not None and (
            context.dim() > 2 or (context.dim() == 2 and context.shape[0] not in (1, x.shape[0]))
        ):
            raise ValueError(
                f"{where}: context must be (B, C), (1, C) or (C,) for x of shape "
                f"{tuple(x.shape)}, got shape {tuple(context.shape)}"
            )
    if noise is None:
        noise = objective.draw(x.shape[0], x, generator)
    else:
        _check_noise(where, noise, x, isinstance(flow, DequantizedFlow))
    return objective(x, context, noise)


def _check_noise(where: str, noise: object, x: Tensor, cells: bool) -> None:
    """Given draws: a :class:`FlowMatchingNoise` of ``x``'s rows, dtype and device, finite,
    with ``cells`` exactly for a :class:`DequantizedFlow`."""
    if not isinstance(noise, FlowMatchingNoise):
        raise TypeError(f"{where}: noise must be a FlowMatchingNoise, got {type(noise).__name__}")
    expected = {"z": tuple(x.shape), "s": tuple(x.shape[:1])}
    if cells:
        expected["cells"] = tuple(x.shape)
    elif noise.cells is not None:
        raise ValueError(f"{where}: noise.cells is for a DequantizedFlow; this flow has none")
    for name, shape in expected.items():
        value = getattr(noise, name)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{where}: noise.{name} must be a tensor of shape {shape}, got {got}")
        if value.dtype != x.dtype or value.device != x.device:
            raise ValueError(
                f"{where}: noise.{name} is {value.dtype} on {value.device}; x is {x.dtype} on "
                f"{x.device}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: noise.{name} holds NaN or inf")
