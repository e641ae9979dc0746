r"""The contract: :class:`Transform`, :class:`Inverse`, :class:`Compose` and :class:`Flow`.

Direction: a transform maps **data → latent**. ``forward(x, context) -> (z, ladj)`` and
``inverse(z, context) -> (x, ladj)``, where ``ladj = log|det ∂out/∂in|`` of the direction that was
called, summed over the event, of shape ``batch_shape``. Both are computed in one pass.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from nfkit._checks import (
    Interval,
    as_int,
    as_ints,
    check_context,
    check_event,
    check_like,
    check_positive_int,
    check_support,
    check_tensor,
    real,
    shape_str,
    shown,
)
from nfkit.nn.packed import PackedLayers
from nfkit.nn.sets import check_padded_set, padded_set
from nfkit.tables import as_tensor

if TYPE_CHECKING:
    from nfkit.torch_distribution import FlowDistribution

__all__ = ["Transform", "Inverse", "Compose", "Flow"]


class Transform(nn.Module, abc.ABC):
    r"""Abstract base of every bijection (data → latent).

    Subclasses implement :meth:`forward` and :meth:`inverse`, each returning the value and the
    log-absolute-determinant of *that* direction's Jacobian in one pass.

    Attributes:
        event_dim: Number of rightmost dims forming one event (1 for vectors, 3 for images).
        domain: Support of each input coordinate (checked by :class:`Flow` at its boundary).
        codomain: Support of each output coordinate.
        autograd_inside: True for a transform that differentiates internally
            (``torch.autograd.grad`` under ``torch.enable_grad()``) even when its caller records
            no graph, e.g. a log-det by autograd. :meth:`Flow.sample` then runs under
            ``torch.no_grad()`` instead of ``torch.inference_mode()``, where autograd stays off.
        outline_settings: Names of attributes that define the map but are no weights (a
            BNAF's ``leak``, an ODE's ``t1``): a saved file's outline records their values, and
            ``nf.load(path, into=flow)`` refuses a flow built with others. Any module may set
            it (a set network's ``padded``, a mixture's ``covariance``).
    """

    event_dim: int = 1
    domain: Interval = real
    codomain: Interval = real
    autograd_inside: ClassVar[bool] = False
    outline_settings: ClassVar[tuple[str, ...]] = ()

    @property
    def batch_coupled(self) -> bool:
        """True while one row's output depends on the other rows of its batch (``BatchNorm`` in
        train mode, ``ActNorm`` before its data-dependent initialization). :class:`Flow` then
        evaluates a batch in one pass rather than in cache-sized blocks."""
        return False

    @abc.abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → latent: returns ``(z, log|det ∂z/∂x|)``."""

    @abc.abstractmethod
    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent → data: returns ``(x, log|det ∂x/∂z|)``."""

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Latent → data, the value alone: ``inverse(z, context)[0]``, what sampling needs.

        Transforms whose log-det costs extra work in the inverse (splines) override it to skip
        that work; the result equals ``inverse(z, context)[0]``.
        """
        return self.inverse(z, context)[0]

    @property
    def inv(self) -> Transform:
        """The inverse view: a new :class:`Inverse` wrapper (never stored, to avoid module cycles)."""
        return Inverse(self)


class Inverse(Transform):
    """Swaps ``forward`` and ``inverse`` of ``transform`` (e.g. IAF = ``Autoregressive(...).inv``)."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform
        self.event_dim = transform.event_dim

    @property
    def domain(self) -> Interval:  # type: ignore[override]
        return self.transform.codomain  # read live: a loaded layer may move its ends

    @property
    def codomain(self) -> Interval:  # type: ignore[override]
        return self.transform.domain

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.forward(z, context)

    @property
    def inv(self) -> Transform:
        return self.transform


def _sum_trailing(ladj: Tensor, dims: int) -> Tensor:
    """``ladj`` summed over its last ``dims`` dimensions (none: ``ladj`` itself): the log-det
    of a layer with a smaller ``event_dim`` than the event it acts on, such as an elementwise
    ``Affine`` (``event_dim = 1``) on images ``(*batch, C, H, W)``, whose ``ladj`` is
    ``(*batch, C, H)``. A dimension count only: no sync."""
    return ladj.sum(tuple(range(-dims, 0))) if dims > 0 else ladj


def _sum_ladjs(
    layers: Sequence[Transform],
    ladjs: Sequence[Tensor],
    dims: Sequence[tuple[int, int]],
    event_dim: int,
    context: Tensor | None,
) -> Tensor:
    """A chain's log-det from its layers' (in data → latent order), each summed over the event
    dimensions it leaves: a layer with ``event_dim`` ``e`` on an event of rank ``r > e`` (an
    elementwise layer in front of images) returns ``(*batch, *event[:r - e])``.

    The event's rank is followed through the chain from the data side (rank ``event_dim``, the
    chain's largest) by each layer's input and output ranks ``dims``: a layer that adds
    dimensions first broadcasts the batch up to the context's, the rest is event (an unflatten);
    one that removes them shrinks the event (a flatten). Dimension counts only: no sync.
    """
    context_batch = 0 if context is None else context.dim() - 1
    rank, total = event_dim, None
    for layer, ladj, (in_dim, out_dim) in zip(layers, ladjs, dims, strict=True):
        ladj = _sum_trailing(ladj, rank - layer.event_dim)
        total = ladj if total is None else total + ladj
        batch = in_dim - rank
        grown = max(0, min(out_dim - in_dim, context_batch - batch))
        rank = out_dim - (batch + grown)
    return total  # type: ignore[return-value]


class Compose(Transform):
    """Chain ``t1, t2, ...`` applied **in the order given** on ``forward``; ``ladj`` is summed.

    The same ``context`` is passed to every layer. Nested Composes are flattened. The chain's
    ``event_dim`` is its layers' largest; a layer with a smaller one has its ``ladj`` summed over
    the remaining event dimensions (an elementwise layer in front of an image flow).

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> t = nf.Compose(nf.transforms.Affine(shift=1.0, scale=2.0), nf.transforms.Reverse(3))
        >>> x = torch.tensor([[1.0, 2.0, 3.0]])
        >>> z, ladj = t(x)  # Affine first, then Reverse
        >>> z
        tensor([[7., 5., 3.]])
        >>> ladj  # 3 log 2
        tensor([2.0794])
        >>> t.inverse(z)[0]
        tensor([[1., 2., 3.]])
    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, Compose):
                flat.extend(t.transforms)
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(f"Compose: expected Transform objects, got {type(t).__name__}")
        if not flat:
            raise ValueError("Compose: needs at least one transform")
        self.transforms = nn.ModuleList(flat)
        self.event_dim = max(t.event_dim for t in flat)
        # Layers whose support the layer before does not guarantee (an Affine in front of a
        # LogitPreprocess): the chain's domain is the first layer's, so their input is checked
        # on the way (a value read; none in the usual chains, whose inner layers take the line).
        # Not circles (closed ends): a circular layer takes its ends as one point, and a
        # standardized float32 angle at 360° arrives one ulp past π.
        self._inner_checks = tuple(
            i > 0
            and not t.domain.is_real
            and not t.domain.has_closed_ends
            and flat[i - 1].codomain != t.domain
            for i, t in enumerate(flat)
        )

    @property
    def domain(self) -> Interval:  # type: ignore[override]
        return self.transforms[0].domain  # read live: a loaded layer may move its ends

    @property
    def inner_checks(self) -> tuple[bool, ...]:
        """Per layer, whether its input is checked on the way (see ``__init__``)."""
        return self.__dict__.get("_inner_checks", ())  # (chains pickled before: none)

    def inner_support(self, x: Tensor, context: Tensor | None, batch: int) -> Tensor:
        """Whether each event's input to every inner-checked layer (:attr:`inner_checks`, at
        least one) lies in that layer's domain, ``x`` mapped by the layers before it (no
        autograd): a bool tensor of the batch (``batch`` leading dims of ``x``)."""
        checks = self.inner_checks
        last = max(i for i, check in enumerate(checks) if check)
        events = x.dim() - batch  # (a context may broadcast more batch dims on the way)
        inside = torch.ones((), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for i, t in enumerate(self.transforms[: last + 1]):
                if checks[i]:
                    inside = inside & t.domain.contains(x).flatten(x.dim() - events).all(-1)
                if i < last:
                    x = t(x, context)[0]
        return inside

    @property
    def codomain(self) -> Interval:  # type: ignore[override]
        return self.transforms[-1].codomain

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladjs, dims = [], []
        checks = self.inner_checks
        for i, t in enumerate(self.transforms):
            if i < len(checks) and checks[i] and _check_values():
                name = f"layer {i} ({type(t).__name__})'s input (x mapped by the layers before it)"
                check_support("Compose", name, x, t.domain)
            rank = x.dim()
            x, l_ = t(x, context)
            ladjs.append(l_)
            dims.append((rank, x.dim()))
        return x, _sum_ladjs(self.transforms, ladjs, dims, self.event_dim, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladjs, dims = [], []
        for t in reversed(self.transforms):
            rank = z.dim()
            z, l_ = t.inverse(z, context)
            ladjs.append(l_)
            dims.append((z.dim(), rank))  # (the data side's rank, the latent side's)
        layers = self.transforms
        return z, _sum_ladjs(layers, ladjs[::-1], dims[::-1], self.event_dim, context)

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        for t in reversed(self.transforms):
            z = t.inverse_value(z, context)
        return z

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)  # type: ignore[arg-type]

    def __getitem__(self, index: int | slice) -> Transform:
        if isinstance(index, slice):
            return Compose(*self.transforms[index])
        return self.transforms[index]  # type: ignore[return-value]


CHUNK_SIZE = 2**16
"""Default ``chunk_size`` of :meth:`Flow.log_prob` and :meth:`Flow.sample` (rows per pass)."""


BLOCK_ENTRIES = 2**18
"""Entries of the widest network activation in one block of :meth:`Flow.log_prob` (1 MiB in
float32)."""
BLOCK_EVENT_ENTRIES = 2**17
"""Event entries in one block of :meth:`Flow.log_prob` (2048 rows at ``D = 64``)."""
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 1024, 8192
"""Bounds on the rows of one block of :meth:`Flow.log_prob` without autograd."""


def _block_rows(module: nn.Module, event_numel: int) -> int:
    """Rows per block of a ``Flow.log_prob`` without autograd, within [1024, 8192].

    The fewer of :data:`BLOCK_EVENT_ENTRIES` event entries and :data:`BLOCK_ENTRIES` entries of
    the widest layer output of the flow's networks (``nn.Linear``,
    :class:`~nfkit.nn.PackedLayers`), so that a block's intermediates stay in cache (and out of
    fresh ``mmap`` pages). On CPU, 4096 rows in
    blocks against one pass, interleaved A/B with the benchmark's models (hidden 128): digits
    NSF −27%, coupling NSF −10% (digits) and −20% (D = 256), moons RealNVP −20%, digits MAF
    −21%; synth256 MAF +4% (GEMM-bound). Narrower networks take larger blocks, so each op
    serves more rows: hidden 64, 4096 rows in one pass against 2048-row blocks (an AMD EPYC,
    three processes each): synth8 MAF −11 to −14%, synth16 MAF −7 to −10%, moons NSF −14 to
    −16%, moons coupling NSF −20%, synth16 RealNVP −13%, moons MAF −3 to −14% (+4% and +9% in
    one other pair of processes). At ``D = 64`` (hidden 128) 2048-row blocks beat 1024-row
    ones (``2**17`` event entries rather than ``2**16``; in-process A/B, AMD EPYC, default heap
    and a heap kept by glibc settings): digits RealNVP +5% and +2% rows/s with one thread, +13%
    and +19% with two; digits MAF +3% and 0%, +12% and +11%.
    """
    widest = max([event_numel, *(_output_width(m) for m in module.modules())])
    rows = min(BLOCK_EVENT_ENTRIES // max(event_numel, 1), BLOCK_ENTRIES // widest)
    return min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, rows))


def _output_width(module: nn.Module) -> int:
    """The widest layer output of ``module`` itself (not its children), 0 when it has none."""
    if isinstance(module, PackedLayers):
        return max(out for out, _ in module.shapes)
    if isinstance(module, nn.Linear):
        return module.out_features
    return 0


def _batch_coupled(module: nn.Module) -> bool:
    """Whether any submodule mixes the rows of a batch (see :attr:`Transform.batch_coupled`)."""
    for m in module.modules():
        if isinstance(m, Transform) and m.batch_coupled:
            return True
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return True
    return False


@contextlib.contextmanager
def _draws_are_not_data(module: nn.Module) -> Iterator[None]:
    """While a flow samples: layers still waiting for a data-dependent initialization
    (``ActNorm``, flagged by ``_needs_init``) skip it, since they see the base's draws, not
    data (an ``ActNorm`` inside an ``Inverse`` is reached through its forward when sampling).
    The flags are put back on exit; nothing is kept. Under ``torch.compile`` too (dynamo
    replays the flags' writes; a compiled ``sample`` initialized ``ActNorm`` from its draws)."""
    # (__dict__: nn.Module's getattr of a missing name costs an exception)
    waiting = [m for m in module.modules() if m.__dict__.get("_needs_init", False)]
    for m in waiting:
        m._sampling = True
    try:
        yield
    finally:
        for m in waiting:
            m._sampling = False


def autograd_inside(module: nn.Module) -> bool:
    """Whether any submodule is a transform that differentiates internally
    (:attr:`Transform.autograd_inside`)."""
    return any(isinstance(m, Transform) and m.autograd_inside for m in module.modules())


def _samples_in_inference_mode(module: nn.Module) -> bool:
    """Whether :meth:`Flow.sample` may run under ``torch.inference_mode()`` rather than
    ``torch.no_grad()``: unless a transform differentiates internally or ``torch.compile`` traces
    the call. Without the version counters and view tracking of ``no_grad``, each op costs less:
    sampling 1000 rows, moons NSF −17%, moons MAF −13%, digits NSF −6%.
    """
    return not (torch.compiler.is_compiling() or autograd_inside(module))


def floating_tensor(module: nn.Module) -> Tensor | None:
    """The first floating-point parameter or buffer of ``module`` (whose dtype and device the
    module computes in), or None."""
    for t in module.parameters():
        if t.is_floating_point():
            return t
    for t in module.buffers():
        if t.is_floating_point():
            return t
    return None


def dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device ``module`` computes in (of :func:`floating_tensor`); torch's default
    dtype on the CPU for a module without floating tensors."""
    like = floating_tensor(module)
    return (
        (torch.get_default_dtype(), torch.device("cpu"))
        if like is None
        else (like.dtype, like.device)
    )


def context_tensor(
    flow: Flow,
    context: Any,
    where: str,
    name: str = "context",
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Tensor | None:
    """A user's context (Tensor, array, DataFrame; None passes) as a float tensor, like
    :func:`~nfkit.tables.as_tensor`; NaN is let through for a flow whose summary takes padded
    sets (``flow._check_x`` then checks that it pads whole elements)."""
    if context is None:
        return None
    nan = padded_set(flow.embedding) is not None
    return as_tensor(context, where, name, dtype=dtype, device=device, allow_nan=nan)


def _check_chunk(where: str, chunk_size: int | None) -> int | None:
    if chunk_size is None:
        return None
    n = as_int(chunk_size)
    if n is None or n < 1:
        raise ValueError(
            f"{where}: chunk_size must be a positive int or None, got {shown(chunk_size)}"
        )
    return n


def _as_shape(shape_or_n: int | Sequence[int] | torch.Size, where: str) -> torch.Size:
    """A sample shape from ``n`` or a tuple of ints (NumPy and 0-d tensor integers too)."""
    n = as_int(shape_or_n)
    shape = (n,) if n is not None else as_ints(shape_or_n)
    if shape is None:
        raise TypeError(
            f"{where}: expected an int or a shape tuple of ints, got {shown(shape_or_n)}"
        )
    if any(s < 0 for s in shape):
        raise ValueError(f"{where}: sample shape must be non-negative, got {shape_str(shape)}")
    return torch.Size(shape)


def _check_values() -> bool:
    """Whether the boundary checks read values (NaN, inf, support): not while ``torch.compile``
    traces, since reading a value on the host would break the graph."""
    return not torch.compiler.is_compiling()


def _reads_context(modules: Sequence[nn.Module]) -> bool | None:
    """Whether any of ``modules`` (and their submodules) reads a context: an nfkit network or
    layer built with one (``context`` or ``context_features`` > 0, a ``context_layer``). None
    when a module from outside nfkit and torch is among them (a user's conditioner may read
    it: nothing can be said)."""
    reads = False
    for module in (m for top in modules for m in top.modules()):
        owner = type(module).__module__
        # torch's own layers read no context; a scripted, traced or FX module hides its code
        if not owner.startswith(("nfkit.", "torch.nn.modules.", "torch.nn.utils.")):
            return None
        width = as_int(getattr(module, "context", 0))  # (NumPy or 0-d tensor widths too)
        features = as_int(getattr(module, "context_features", 0))
        if (
            (width or 0) > 0
            or (features or 0) > 0
            or getattr(module, "context_layer", None) is not None
        ):
            reads = True
    return reads


def blockwise(n: int, size: int, block: Callable[[int], Tensor]) -> Tensor:
    """``torch.cat([block(i) for i in range(0, n, size)])``: the ``(n,)`` values of the blocks
    of ``size`` rows starting at ``i``. Without autograd (outside ``torch.compile``) each block
    is written into one output as it comes: kept in a list to the end, thousands of small
    outputs between the blocks' freed intermediates fragmented glibc's heap, and the peak grew
    with ``n`` (8M rows of a moons MAF: ~1 GB over the input, 37 MB this way). With autograd
    the graph holds every block anyway."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.cat([block(i) for i in range(0, n, size)])
    first = block(0)
    out = first.new_empty(n)
    out[: first.shape[0]] = first
    for i in range(size, n, size):
        out[i : i + size] = block(i)
    return out


def _check_embedding_input(embedding: nn.Module, context: int) -> None:
    """An embedding whose input width is known (``in_features`` of it or of an
    ``nn.Sequential``'s first module, as ``nn.Linear`` and :class:`~nfkit.nn.MLP` have; a set
    network's ``element_features``) must read the flow's ``context`` features."""
    first = embedding[0] if isinstance(embedding, nn.Sequential) and len(embedding) else embedding
    width = as_int(getattr(first, "in_features", None))
    if width is not None and width != context:
        raise ValueError(
            f"Flow: the embedding reads {width} features, but the flow's context is {context}; "
            "build one with the other's width"
        )
    element = as_int(getattr(embedding, "element_features", None))
    if element and context % element:
        raise ValueError(
            f"Flow: the embedding reads sets of {element}-feature elements, but the flow's "
            f"context of {context} features is not a whole number of them"
        )


class Flow(nn.Module):
    r"""A normalizing flow: the distribution of ``x = T⁻¹(z)`` with ``z ~ base``.

    ``log p(x | c) = log p_base(T(x; c) | c) + log|det ∂T/∂x|``.

    Args:
        transform: The data → latent transform ``T``.
        base: A :class:`~nfkit.distributions.BaseDistribution` on the latent space.
        embedding: Optional module applied once to the context before it reaches ``T`` and base.
        context: Size of the (raw) context vector; 0 for an unconditional flow.
        config: Keyword arguments that rebuild the architecture (filled by ``nf.models``).

    Shapes:
        ``log_prob``: x ``(*batch, *event)``, context ``(*batch, C)`` → ``(*batch,)``.
        ``sample(shape)``: context ``(*cb, C)`` → ``(*shape, *cb, *event)``.

    Input checks: ``log_prob`` and ``sample`` raise a one-line ``ValueError`` for a wrong shape,
    a missing or extra context, NaN or inf, or ``x`` outside the transform's domain. While
    ``torch.compile`` traces, only the checks that need no tensor values (shapes, context) run, so
    ``torch.compile(flow.log_prob, fullgraph=True)`` is one graph (for a direction computed in
    closed form; one computed by iteration, such as Planar's density, FFJORD's ODE solve or
    BNAF's sampling, breaks the graph: ``tests/test_compile.py`` lists which);
    ``flow.validate = False`` turns every check off.

    Example:
        >>> import torch
        >>> import nfkit as nf
        >>> _ = torch.manual_seed(0)
        >>> flow = nf.Flow(
        ...     nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), context=3),
        ...     nf.distributions.StandardNormal(2),
        ...     context=3,
        ... )
        >>> x, c = torch.randn(10, 2), torch.randn(10, 3)
        >>> flow.log_prob(x, context=c).shape
        torch.Size([10])
        >>> flow.sample(4, context=c).shape  # sample dims first, then the context's batch
        torch.Size([4, 10, 2])
    """

    def __init__(
        self,
        transform: Transform,
        base: nn.Module,
        *,
        embedding: nn.Module | None = None,
        context: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            raise TypeError(
                f"Flow: transform must be an nf.Transform, got {type(transform).__name__}"
            )
        if not (
            isinstance(base, nn.Module)
            and hasattr(base, "event_shape")
            and hasattr(base, "rsample")
        ):  # (a torch.distributions object: another log_prob signature, and no .to())
            raise TypeError(
                f"Flow: base must be an nf.distributions distribution (an nn.Module), got "
                f"{type(base).__name__}"
            )
        if transform.event_dim > len(base.event_shape):
            raise ValueError(
                f"Flow: the transform acts on events of {transform.event_dim} dimensions, but the "
                f"base's event shape {tuple(base.event_shape)} has {len(base.event_shape)}"
            )
        context = check_positive_int("Flow", "context", context, minimum=0)
        if context and _reads_context([transform, base]) is False:
            raise ValueError(
                f"Flow: context={context}, but no layer and not the base reads a context (the "
                "flow would ignore it); build the conditional layers with context=..."
            )
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(
                f"Flow: embedding must be an nn.Module (or None), got {type(embedding).__name__}"
            )
        if embedding is not None and context:
            _check_embedding_input(embedding, context)
        reads = as_int(getattr(base, "context", 0)) or 0  # a conditional base (a mixture)
        if reads and (not context or (embedding is None and reads != context)):
            raise ValueError(
                f"Flow: the base reads a context of {reads} features, but the flow's context is "
                f"{context}; build the base with the flow's context width"
            )
        self.transform = transform
        self.base = base
        self.embedding = embedding
        self.context_features = context
        self.config: dict[str, Any] = dict(config or {})
        self.validate = True

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size(self.base.event_shape)

    def _embed(self, context: Tensor | None) -> Tensor | None:
        if context is None or self.embedding is None:
            return context
        return self.embedding(context)

    def _column_labels(self) -> list[str] | None:
        """The modelled columns' names (a table model's ``config``: its columns less the given
        ones), or None; errors name columns by them."""
        config = self.config or {}
        given = set(config.get("given") or ())
        names = [c for c in config.get("columns") or () if c not in given]
        return names if len(self.event_shape) == 1 and len(names) == self.event_shape[0] else None

    def _check_x(
        self,
        where: str,
        x: Tensor,
        context: Tensor | None,
        names: tuple[str, str] = ("x", "context"),
        support: bool = True,
    ) -> None:
        """Data and context as :meth:`log_prob` takes them (``names``: what the errors call them;
        ``support=False``: values outside the support pass)."""
        if not self.validate:
            return
        values = _check_values()
        like = floating_tensor(self)
        xn, cn = names
        check_like(where, xn, check_tensor(where, xn, x), like)  # before reading any value
        check_event(where, xn, x, self.event_shape, values=values)
        if values and support:
            check_support(where, xn, x, self.transform.domain, self._column_labels)
        if context is not None and self.context_features:
            check_like(where, cn, check_tensor(where, cn, context), like)
        self._check_context(where, context, values, cn)
        if context is None:
            return
        batch, c_batch = x.shape[: x.dim() - len(self.event_shape)], context.shape[:-1]
        try:
            torch.broadcast_shapes(batch, c_batch)
        except RuntimeError:
            raise ValueError(
                f"{where}: {xn}'s batch shape {shape_str(batch)} and {cn}'s "
                f"{shape_str(c_batch)} do not broadcast"
            ) from None

    def _check_context(self, where: str, context: Tensor | None, values: bool, name: str) -> None:
        """The context's presence and width; its values finite, or, behind a padded set summary
        (:class:`~nfkit.nn.DeepSet` with ``padded=True``), NaN only as whole absent elements."""
        m = padded_set(self.embedding)
        check_context(
            where, context, self.context_features, values=values and m is None, name=name
        )
        if m is not None and values and context is not None:
            check_padded_set(where, name, context, m)

    def _log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        context = self._embed(context)
        z, ladj = self.transform(x, context)
        self._check_event("Flow.log_prob", z, "maps x to")
        return self.base.log_prob(z, context) + self._event_ladj(ladj, z)

    def _event_ladj(self, ladj: Tensor, z: Tensor) -> Tensor:
        """The transform's ``ladj`` summed over the event dimensions it leaves (an elementwise
        transform, ``event_dim = 1``, in front of an image base): shape ``(*batch,)``, the
        batch of ``z`` (events of the base's shape)."""
        return _sum_trailing(ladj, ladj.dim() - (z.dim() - len(self.event_shape)))

    def _check_event(self, where: str, t: Tensor, what: str) -> None:
        """The transform's output ``t`` has the base's event shape (a transform built for
        another number of features, such as ``Coupling(3, ...)`` in front of a 4-feature base,
        would otherwise drop or misread columns silently). Shapes only: no sync."""
        ev = self.event_shape
        if tuple(t.shape[t.dim() - len(ev) :]) != tuple(ev) or t.dim() < len(ev):
            raise ValueError(
                f"{where}: the transform {what} event shape {tuple(t.shape[t.dim() - len(ev) :])}, "
                f"but the base's is {tuple(ev)}: the transform and the base disagree on the "
                "number of features"
            )

    def in_support(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Which events of ``x`` ``(*batch, *event)`` lie in the flow's support (every
        coordinate inside :attr:`Transform.domain` of the first layer, and, in a hand-built
        :class:`Compose` whose later layer's domain the one before does not guarantee, that
        layer's input inside its domain: ``x`` is mapped there, with ``context``): a bool tensor
        ``(*batch,)``. :meth:`log_prob` refuses an event outside (its density is 0); see
        :func:`log_prob_or_minus_inf` to score it ``-inf`` instead. NaN is not inside."""
        batch = x.dim() - len(self.event_shape)
        inside = self.transform.domain.contains(x).flatten(batch).all(-1)
        if isinstance(self.transform, Compose) and any(self.transform.inner_checks):
            inside = inside & self.transform.inner_support(x, self._embed(context), batch)
        return inside

    def log_prob(
        self, x: Tensor, context: Tensor | None = None, *, chunk_size: int | None = CHUNK_SIZE
    ) -> Tensor:
        """Exact log-density of ``x`` (shape ``(*batch,)``).

        Args:
            x: Data ``(*batch, *event)``.
            context: ``(*batch, C)`` (broadcast against ``x``'s batch) or None.
            chunk_size: Evaluate at most this many rows at a time (the flattened broadcast batch)
                so that memory stays bounded for millions of rows; None: one pass. Results equal
                the one-pass ones up to rounding (an adaptive ODE solve, FFJORD's, controls its
                steps over the whole batch: to its tolerance); with autograd on, gradients flow
                through every chunk.

        Without autograd (under ``torch.no_grad()``) on CPU, an int ``chunk_size`` is further
        capped to 1024–8192 rows (about 2**17 event entries and 2**18 entries of the widest
        network layer, see ``_block_rows``), which keeps each block's intermediates in cache: up
        to 20–30% faster for batches of thousands. Not on a GPU (there blocks only add kernel
        launches: digits NSF, 4096 rows on an H200, a third of the rows/s in blocks), nor while
        ``torch.compile`` traces; ``chunk_size=None`` opts out. A flow with a transform that
        couples the rows of a batch (:attr:`Transform.batch_coupled`: ``BatchNorm`` in train
        mode, ``ActNorm`` before its initialization; torch's batch norms in train mode) is
        always evaluated in one pass, whatever ``chunk_size``: chunks would each get their own
        batch statistics. Call ``flow.eval()`` first to score many rows in bounded memory.
        """
        self._check_x("Flow.log_prob", x, context)
        return self._chunked_log_prob(x, context, _check_chunk("Flow.log_prob", chunk_size))

    def _chunked_log_prob(self, x: Tensor, context: Tensor | None, size: int | None) -> Tensor:
        """:meth:`log_prob` of checked inputs, in blocks of at most ``size`` rows."""
        if (
            not torch.compiler.is_compiling()
            and torch.is_inference_mode_enabled()
            and autograd_inside(self)
        ):
            # FFJORD's trace and a residual block's series take gradients inside, which inference
            # mode forbids: run without it, on ordinary copies of the inputs, still without grad.
            with torch.inference_mode(False), torch.no_grad():
                x, context = x.clone(), None if context is None else context.clone()
                return self._chunked_log_prob(x, context, size)
        ev = len(self.event_shape)
        batch = x.shape[: x.dim() - ev]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
        n = math.prod(batch)  # symbolic under torch.export: numel() would specialize it
        if not torch.compiler.is_compiling() and n == 0:
            return x.new_zeros(batch)  # no row: nothing runs (nor initializes on no data)
        if torch.compiler.is_exporting():  # one graph for any batch size: one pass
            size = None
        if size is not None and n > min(size, MIN_BLOCK_ROWS):  # else one pass, whatever block
            if (
                not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()
                and x.device.type == "cpu"  # a GPU wants wide batches: blocks only add launches
            ):
                size = min(size, _block_rows(self, self.event_shape.numel()))
            if n > size and _batch_coupled(self):  # chunks would get their own batch statistics
                size = None
        if size is None or n <= size:
            return self._log_prob(x, context)
        x = x.expand(*batch, *x.shape[x.dim() - ev :]).reshape(n, *x.shape[x.dim() - ev :])
        if context is not None:
            context = context.expand(*batch, context.shape[-1]).reshape(n, context.shape[-1])

        def block(i: int) -> Tensor:
            return self._log_prob(
                x[i : i + size], None if context is None else context[i : i + size]
            )

        return blockwise(n, size, block).reshape(batch)

    def _sample_shape(self, where: str, shape_or_n: Any, context: Tensor | None) -> torch.Size:
        shape = _as_shape(shape_or_n, where)
        if self.validate:
            if context is not None and self.context_features:
                like = floating_tensor(self)
                check_like(where, "context", check_tensor(where, "context", context), like)
            self._check_context(where, context, _check_values(), "context")
        if context is not None:
            shape = shape + context.shape[:-1]
        return shape

    def _rsample(self, where: str, shape_or_n: Any, context: Tensor | None) -> Tensor:
        shape = self._sample_shape(where, shape_or_n, context)
        context = self._embed(context)
        z = self.base.rsample(shape, context)
        if not torch.compiler.is_compiling() and z.numel() == 0:
            return z.new_zeros((*shape, *self.event_shape))  # no row: nothing runs
        with _draws_are_not_data(self):
            x = self.transform.inverse_value(z, context)
        self._check_event(where, x, "maps the base's draws to")
        return x

    def rsample(
        self, shape_or_n: int | Sequence[int] = (), context: Tensor | None = None
    ) -> Tensor:
        """Reparameterized samples of shape ``(*shape, *context_batch, *event)``."""
        return self._rsample("Flow.rsample", shape_or_n, context)

    def sample(
        self,
        shape_or_n: int | Sequence[int] = (),
        context: Tensor | None = None,
        *,
        chunk_size: int | None = CHUNK_SIZE,
    ) -> Tensor:
        """Samples without gradient (see :meth:`rsample`), ``(*shape, *context_batch, *event)``.

        Args:
            shape_or_n: Sample shape (an int ``n`` means ``(n,)``).
            context: ``(*cb, C)`` or None.
            chunk_size: Draw and transform at most this many samples at a time (along the
                flattened sample shape, times the context batch; along the contexts too when
                they alone are more), writing into one output tensor, so memory beyond the
                output stays bounded; None: one pass. The base
                noise is drawn chunk by chunk, so under a fixed seed the samples depend on
                ``chunk_size`` (each chunk size gives the same distribution).
        """
        size = _check_chunk("Flow.sample", chunk_size)
        shape = _as_shape(shape_or_n, "Flow.sample")
        if context is not None:
            check_tensor("Flow.sample", "context", context)
        per_row = 1 if context is None else context.shape[:-1].numel()
        n = shape.numel()
        if size is not None and per_row > size and context is not None:
            return self._sample_by_contexts(shape, context, size)
        single = size is None or n * per_row <= size
        step = n if size is None or single else max(1, size // max(per_row, 1))
        inference = _samples_in_inference_mode(self)
        mode: Callable[[], AbstractContextManager] = (
            torch.inference_mode if inference else torch.no_grad
        )
        with mode():
            first = self._rsample("Flow.sample", shape if single else min(step, n), context)
        if single:  # an ordinary tensor (not an inference one), usable with autograd later
            return first.clone() if inference else first
        # the output is allocated outside inference mode, so it is an ordinary tensor too
        out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device)
        out[: len(first)] = first
        with mode():
            for i in range(len(first), n, step):
                out[i : i + step] = self._rsample("Flow.sample", min(step, n - i), context)
        return out.reshape(*shape, *first.shape[1:])

    def _sample_by_contexts(self, shape: torch.Size, context: Tensor, size: int) -> Tensor:
        """:meth:`sample` for a context batch of more than ``size`` contexts: ``size // n``
        contexts at a time (at least one, each sampled in chunks of ``size``), into one
        output ``(*shape, *context_batch, *event)``."""
        rows = context.reshape(-1, context.shape[-1])
        n, batch = shape.numel(), context.shape[:-1]
        step = max(1, size // max(n, 1))
        first = self.sample(n, rows[:step], chunk_size=size)  # (n, step, *event)
        out = torch.empty((n, len(rows), *first.shape[2:]), dtype=first.dtype, device=first.device)
        out[:, :step] = first
        for j in range(step, len(rows), step):
            out[:, j : j + step] = self.sample(n, rows[j : j + step], chunk_size=size)
        return out.reshape(*shape, *batch, *first.shape[2:])

    def sample_and_log_prob(
        self, shape_or_n: int | Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized samples and their log-density, in one pass through the transform.

        ``log p(x) = log p_base(z) - log|det ∂x/∂z|``.
        """
        if (
            not torch.compiler.is_compiling()
            and torch.is_inference_mode_enabled()
            and autograd_inside(self)
        ):  # as in log_prob: inside gradients, which inference mode forbids; still no grad
            with torch.inference_mode(False), torch.no_grad():
                context = None if context is None else context.clone()
                return self.sample_and_log_prob(shape_or_n, context)
        shape = self._sample_shape("Flow.sample_and_log_prob", shape_or_n, context)
        context = self._embed(context)
        z = self.base.rsample(shape, context)
        if not torch.compiler.is_compiling() and z.numel() == 0:  # no row: nothing runs
            return z.new_zeros((*shape, *self.event_shape)), z.new_zeros(shape)
        log_pz = self.base.log_prob(z, context)
        with _draws_are_not_data(self):
            x, ladj = self.transform.inverse(z, context)
        self._check_event("Flow.sample_and_log_prob", x, "maps the base's draws to")
        return x, log_pz - self._event_ladj(ladj, z)

    def distribution(
        self, context: Tensor | None = None, *, validate_args: bool | None = None
    ) -> FlowDistribution:
        """This flow at ``context`` as a ``torch.distributions.Distribution`` (a view, not a
        copy): :class:`~nfkit.FlowDistribution`, for code that takes torch's distributions
        (``validate_args=False``: ``log_prob`` is ``-inf`` outside the support)."""
        from nfkit.torch_distribution import FlowDistribution

        return FlowDistribution(self, context, validate_args=validate_args)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Alias of :meth:`log_prob` so that ``flow(x)`` works with DDP and ``torch.compile``."""
        return self.log_prob(x, context)


def log_prob_or_minus_inf(
    flow: Flow, x: Tensor, context: Tensor | None = None, **options: Any
) -> Tensor:
    """``flow.log_prob(x, context, **options)`` with ``-inf`` for the events outside the
    flow's support (:meth:`Flow.in_support`: density 0) instead of an error; anomaly scores of
    rows that include impossible ones. NaN and shape errors are still raised. The outside rows
    are scored at the first inside row (a ``where``, no boolean indexing), then replaced."""
    flow._check_x("Flow.log_prob", x, context, support=False)  # all but the support
    inside = flow.in_support(x, context)
    if not bool(inside.any()):
        batch = x.shape[: x.dim() - len(flow.event_shape)]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
        return torch.full(batch, -math.inf, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, *flow.event_shape)
    first = flat[inside.reshape(-1).long().argmax()]
    events = len(flow.event_shape)
    mask = inside.reshape(*inside.shape, *([1] * events))
    safe = torch.where(mask, x, first)
    out = flow.log_prob(safe, context, **options)
    return torch.where(inside, out, torch.full_like(out, -math.inf))
