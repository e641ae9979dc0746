"""Shape helpers for hot paths."""

from __future__ import annotations

import torch


def broadcast_shapes(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)``, returning ``a`` at once when the shapes are equal.

    The common case in a flow (data and parameters with the same batch) then costs a tuple
    comparison instead of ``torch.broadcast_shapes``' ~6 µs of Python per call. Not while
    tracing: comparing a symbolic batch size with a fixed one would specialize it.
    """
    if torch.compiler.is_compiling():
        return torch.broadcast_shapes(a, b)
    return a if a == b else torch.broadcast_shapes(a, b)


def check_size(where: str, x: torch.Tensor, dim: int, size: int, name: str = "x") -> None:
    """``x.shape[dim] == size`` (the features a layer was built for), else a one-line error:
    ``index_select`` with a shorter index would drop columns silently."""
    enough_dims = x.dim() >= (-dim if dim < 0 else dim + 1)
    if not enough_dims or x.shape[dim] != size:
        raise ValueError(
            f"{where}: {name} must have {size} feature{'s' if size != 1 else ''} along dim "
            f"{dim}, got shape {tuple(x.shape)}"
        )
