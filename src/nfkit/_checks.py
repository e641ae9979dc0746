"""Boundary validators: one-line ``ValueError``/``TypeError`` messages, never used in hot paths."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Interval", "real", "unit_interval", "positive", "symmetric_unit"]


@dataclass(frozen=True)
class Interval:
    """An interval ``(low, high)`` describing the support of each coordinate: open, or closed
    ``[low, high]`` with ``closed=True`` (a circle's coordinate, whose two ends are one point).
    ``low``, ``high`` and ``closed`` are one value for every coordinate, or a tuple with one per
    coordinate of the last dim (columns of a table with different supports; angles beside
    ordinary numbers)."""

    low: float | tuple[float, ...] = -math.inf
    high: float | tuple[float, ...] = math.inf
    closed: bool | tuple[bool, ...] = False

    def _ends(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        low = self.low if isinstance(self.low, tuple) else (self.low,)
        high = self.high if isinstance(self.high, tuple) else (self.high,)
        return low, high

    def _per_column(self) -> bool:
        return any(isinstance(v, tuple) for v in (self.low, self.high, self.closed))

    @property
    def is_circle(self) -> bool:
        """Whether this is one coordinate's closed, bounded support: an angle's circle."""
        if self._per_column():
            return False
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        return bool(self.closed) and math.isfinite(low) and math.isfinite(high)

    @property
    def has_closed_ends(self) -> bool:
        """Whether any coordinate's support is closed (a circle's, whose ends are one point)."""
        return any(self.closed) if isinstance(self.closed, tuple) else bool(self.closed)

    @property
    def is_real(self) -> bool:
        low, high = self._ends()
        return all(v == -math.inf for v in low) and all(v == math.inf for v in high)

    def at(self, i: int) -> Interval:
        """The support of coordinate ``i`` (``self`` when it is the same for every one)."""
        if not self._per_column():
            return self
        low, high = self._ends()
        closed = self.closed if isinstance(self.closed, tuple) else (self.closed,)
        return Interval(low[i % len(low)], high[i % len(high)], closed[i % len(closed)])

    def _tensors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self._ends()
        as_t = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device)  # noqa: E731
        return as_t(low), as_t(high)

    def contains(self, x: Tensor) -> Tensor:
        """Boolean tensor: which entries of ``x`` lie inside the interval (per coordinate of
        the last dim when the ends are tuples)."""
        if self.is_real:
            return torch.ones_like(x, dtype=torch.bool)
        low, high = self._tensors(x)
        if isinstance(self.closed, tuple):
            closed = torch.tensor(self.closed, device=x.device)
            return torch.where(closed, (x >= low) & (x <= high), (x > low) & (x < high))
        if self.closed:
            return (x >= low) & (x <= high)
        return (x > low) & (x < high)

    def from_real(self, u: Tensor) -> Tensor:
        """Map real numbers into the interval (used to draw test inputs in the support)."""
        if self.is_real:
            return u
        low, high = self._tensors(u)
        lo_ok, hi_ok = torch.isfinite(low), torch.isfinite(high)
        lo, hi = torch.where(lo_ok, low, 0.0), torch.where(hi_ok, high, 0.0)
        both = lo + (hi - lo) * torch.sigmoid(u)
        half = torch.where(lo_ok, lo + torch.exp(u), hi - torch.exp(u))
        return torch.where(lo_ok & hi_ok, both, torch.where(lo_ok | hi_ok, half, u))

    def __str__(self) -> str:
        return self.describe()

    def describe(self, precise: bool = False) -> str:
        """The interval as text, ends in 6 significant digits, or (``precise``) in as many as
        read back exactly (``0.10000000149011612``, a float32 end, not ``0.1``)."""
        if self.is_real:
            return "the real line"
        if self._per_column():
            lengths = [len(v) for v in (self.low, self.high, self.closed) if isinstance(v, tuple)]
            return "per column " + ", ".join(
                self.at(i).describe(precise) for i in range(max(lengths))
            )
        # precise: an end rounded to float32 (0.10000000149011612) does not print as 0.1
        end = (lambda v: _distinct(v, torch.float64)) if precise else (lambda v: f"{v:g}")
        ends = f"{end(self.low)}, {end(self.high)}"
        return f"[{ends}]" if self.closed else f"({ends})"


real = Interval()
unit_interval = Interval(0.0, 1.0)
positive = Interval(0.0, math.inf)
symmetric_unit = Interval(-1.0, 1.0)


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_tensor(where: str, name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise TypeError(f"{where}: {name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_event(
    where: str, name: str, x: Tensor, event_shape: Sequence[int], *, values: bool = True
) -> None:
    """``x`` must end with ``event_shape`` and (if ``values``) hold only finite values."""
    check_tensor(where, name, x)
    k = len(event_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != tuple(event_shape):
        what = (
            f"last dim {event_shape[0]}" if k == 1 else f"trailing shape {shape_str(event_shape)}"
        )
        raise ValueError(f"{where}: {name} must have {what}, got shape {shape_str(x.shape)}")
    if not values:
        return
    # One reduction in the common case: a sum is finite only if every entry is (NaN and ±inf
    # propagate); an overflowing sum of finite values falls through to the exact test.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{where}: {name} contains {bad} values; expected finite numbers")


def check_like(where: str, name: str, x: Tensor, like: Tensor | None) -> None:
    """``x`` must have the dtype and device of ``like`` (a module's first floating tensor; None:
    a module without one, nothing to check). Reads no values: no host sync."""
    if like is None:
        return
    if x.dtype != like.dtype:
        raise TypeError(
            f"{where}: {name} is {x.dtype} but the flow is {like.dtype}; convert one "
            f"({name}.to({like.dtype}) or flow.to({x.dtype}))"
        )
    if x.device != like.device:
        raise ValueError(
            f"{where}: {name} is on {x.device} but the flow is on {like.device}; move one "
            f"({name}.to('{like.device}') or flow.to('{x.device}'))"
        )


def check_support(
    where: str,
    name: str,
    x: Tensor,
    domain: Interval,
    labels: Callable[[], Sequence[str] | None] | None = None,
) -> None:
    """``x`` inside ``domain`` (per column of the last dim), or a one-line error naming the
    column: by its label when ``labels()`` (called only then) gives one per column, else by
    index."""
    if domain.is_real:
        return
    inside = domain.contains(x)
    if not bool(inside.all()):
        first = torch.nonzero(~inside)[0]
        bad = x[tuple(first)].item()
        j = int(first[-1])
        column = domain.at(j)
        if column is not domain:  # supports differ by column: name the column and its own
            domain = column
            names = None if labels is None else labels()
            label = repr(names[j]) if names is not None and len(names) > j else str(j)
            name = f"{name} column {label}"
        hint = ""
        if domain.is_circle:
            hint = (
                "; for angles, wrap them into it, or give their range (nfkit fit: --angles "
                "NAME=-180:180; nf.models.standardize: bounds)"
            )
        value = _distinct(bad, x.dtype)
        # ends in more digits where the 6-digit ones would seem to hold the value (a float32
        # end: "(0.1, inf) (e.g. 0.1000000001)")
        seems_inside = float(f"{domain.low:g}") <= float(value) <= float(f"{domain.high:g}")
        shown_domain = domain.describe(precise=seems_inside)
        raise ValueError(
            f"{where}: {name} has values outside the support {shown_domain} (e.g. {value}){hint}"
        )


def _distinct(value: float, dtype: torch.dtype) -> str:
    """``value`` in the fewest of 6, 9 or 17 significant digits that read back as it in
    ``dtype``: one ulp past an end (float32 ``π``) does not print as the end."""
    for digits in (6, 9, 17):
        text = f"{value:.{digits}g}"
        if torch.tensor(float(text), dtype=dtype).item() == value:
            break
    return text


def require_context(where: str, context: Tensor | None, width: int) -> None:
    """A conditional layer (a context of ``width`` features) called without one, or with one
    of another width: a one-line error, where the network would otherwise fail on a matrix
    product or run unconditioned. A ``None`` test and a shape comparison: nothing is read from
    the tensors."""
    if not width:
        return
    if context is None:
        raise ValueError(
            f"{where}: this layer is conditional (a context of {width} features) and got no "
            f"context; build the Flow with context={width} and pass context="
        )
    if context.shape[-1:] != (width,):
        raise ValueError(
            f"{where}: expected a context of last dim {width}, got shape {tuple(context.shape)}"
        )


def check_context(
    where: str,
    context: Tensor | None,
    features: int,
    *,
    values: bool = True,
    name: str = "context",
) -> None:
    """A flow with ``features`` context features needs a context of last dim ``features``
    (finite, if ``values``); ``name``: what the errors call it."""
    if features == 0:
        if context is not None:
            raise ValueError(f"{where}: this flow takes no context, but a {name} was given")
        return
    if context is None:
        raise ValueError(
            f"{where}: this flow is conditional and needs a {name} of last dim {features}"
        )
    check_event(where, name, context, (features,), values=values)


def _cut(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with ``…``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message for a one-line error of ours (its type name if it has none)."""
    return _cut(str(e), limit) or type(e).__name__


def shown(value: object, limit: int = 60) -> str:
    """``value`` as an error message shows it: one line of at most ``limit`` characters.

    Arrays, tensors and tables are named by type and shape (``a Tensor of shape (500, 2)``), not
    printed; any other value by its ``repr``, whitespace collapsed and cut with ``…``.
    """
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple | torch.Size) and len(shape) > 0:
        kind = type(value).__name__
        return f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind} of shape {tuple(shape)}"
    return _cut(repr(value), limit)


def as_int(value: object) -> int | None:
    """``value`` as a Python int if it is integer-like (an int, a NumPy integer, a 0-d integer
    tensor: anything with ``__index__``), else None; bools are not integers here."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        return None
    if isinstance(value, tuple | list):  # a shape: no exception to trace (torch 2.11's dynamo
        return None  # stops at the TypeError below)
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def as_ints(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of Python ints if it is a sequence (or 1-d array) of integer-likes
    (see :func:`as_int`), else None; a string is not such a sequence."""
    if isinstance(value, str):
        return None
    try:
        items = tuple(as_int(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        return None
    return None if any(v is None for v in items) else items  # type: ignore[return-value]


def resolve_seed(where: str, seed: object) -> int:
    """``seed`` as a Python int (any integer-like); ``None``: a fresh one drawn from torch's
    global RNG (so ``torch.manual_seed`` upstream still makes the run reproducible)."""
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    value = as_int(seed)
    if value is None:
        raise TypeError(f"{where}: seed must be an int or None, got {shown(seed)}")
    if not -(2**63) <= value < 2**64:  # torch.manual_seed's range
        raise ValueError(f"{where}: seed must lie in [-2**63, 2**64), got {value}")
    return value


def as_permutation(where: str, name: str, value: object, size: int | None = None) -> Tensor:
    """``value`` (a sequence, array or tensor of integers) as a long tensor if it is a
    permutation of ``0..D-1`` (``D = size``, or its length), else a one-line error: integers
    only (1.7 is no index: it had been truncated to 1)."""
    items = as_ints(value.tolist() if hasattr(value, "tolist") else value)
    d = len(items) if items is not None and size is None else size
    if items is None or sorted(items) != list(range(d)):  # type: ignore[arg-type]
        span = "D-1" if size is None else str(size - 1)
        raise ValueError(f"{where}: {name} must be a permutation of 0..{span}, got {shown(value)}")
    return torch.tensor(items, dtype=torch.long)


def seeded(where: str, seed: object) -> torch.Generator:
    """A CPU generator seeded by :func:`resolve_seed` (``seed`` checked, naming ``where``)."""
    return torch.Generator().manual_seed(resolve_seed(where, seed))


def check_positive_int(where: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` as a Python int ``>= minimum`` (NumPy integers and 0-d integer tensors too)."""
    number = as_int(value)
    if number is None or number < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {shown(value)}")
    return number


def check_negative_dim(where: str, dim: object) -> int:
    """``dim`` as a negative Python int: a dimension counted from the right (the layer's event
    is the trailing ``-dim`` dims)."""
    number = as_int(dim)
    if number is None or number >= 0:
        raise ValueError(
            f"{where}: dim counts from the right and must be a negative integer, got {shown(dim)}"
        )
    return number


def check_number(
    where: str, name: str, value: object, low: float, *, inclusive: bool = False
) -> float:
    """A finite real number ``> low`` (``>= low`` if ``inclusive``), as a Python float (NumPy
    scalars too)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < low if inclusive else value <= low):  # type: ignore[operator]
        op = ">=" if inclusive else ">"
        raise ValueError(
            f"{where}: {name} must be a finite number {op} {low:g}, got {shown(value)}"
        )
    return float(value)  # type: ignore[arg-type]


def check_open_interval(where: str, name: str, value: object, low: float, high: float) -> float:
    """A real number strictly between ``low`` and ``high``, as a Python float (NumPy scalars too)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not low < value < high:  # type: ignore[operator]
        raise ValueError(f"{where}: {name} must lie in ({low:g}, {high:g}), got {shown(value)}")
    return float(value)  # type: ignore[arg-type]


def check_hidden(where: str, hidden: object, name: str = "hidden") -> tuple[int, ...]:
    """Hidden widths as a tuple of Python ints (one int, or a sequence or 1-d array of them)."""
    one = as_int(hidden)
    widths = (one,) if one is not None else as_ints(hidden)
    if not widths or any(h < 1 for h in widths):
        raise ValueError(
            f"{where}: {name} must be a sequence of positive ints, got {shown(hidden)}"
        )
    return widths


def check_device(where: str, device: object) -> torch.device | None:
    """``device`` as a :class:`torch.device` (``None`` stays ``None``).

    One-line ``ValueError`` when it names no device type (``"cudax"``) or one this machine lacks
    (``"cuda"`` without a visible GPU or in a CPU-only build of torch, ``"cuda:3"`` with two
    GPUs, ``"mps"`` off Apple silicon), instead of torch's error at the first ``.to()``. An
    integer ``i`` means ``cuda:i``.
    """
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(
            f"{where}: device must be a string like 'cuda' or a torch.device, "
            f"got {type(device).__name__}"
        )
    try:
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{where}: {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from None
    if dev.type == "meta":  # a module moved there loses its weights for good
        raise ValueError(
            f"{where}: device 'meta' holds no values (a flow moved there cannot come back); "
            "use 'cpu' or 'cuda'"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise ValueError(f"{where}: device {str(dev)!r} is not available: {why}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"{where}: device {str(dev)!r} is not available: {count} GPU(s) visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{where}: device 'mps' is not available on this machine")
    elif dev.type not in ("cpu", "meta"):
        # xpu, hpu, ...: torch's module of that backend says whether it runs here
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"{where}: device {str(dev)!r} is not available on this machine")
    return dev
