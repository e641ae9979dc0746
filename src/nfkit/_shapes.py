"""Shape helpers for hot paths."""

from __future__ import annotations

import torch

from nfkit._checks import shape_str


def broadcast_shapes(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)``, returning ``a`` at once when the shapes are equal.

    The common case in a flow (data and parameters with the same batch) then costs a tuple
    comparison instead of ``torch.broadcast_shapes``' ~6 µs of Python per call. Not while
    tracing: comparing a symbolic batch size with a fixed one would specialize it.
    """
    if torch.compiler.is_compiling():
        return torch.broadcast_shapes(a, b)
    return a if a == b else torch.broadcast_shapes(a, b)


def context_batch(x_batch: torch.Size, c_batch: torch.Size) -> torch.Size:
    """The broadcast of an input's batch shape and its context's (as :func:`broadcast_shapes`),
    or a one-line ``ValueError`` naming both when they do not broadcast."""
    try:
        return broadcast_shapes(x_batch, c_batch)
    except RuntimeError:
        raise ValueError(
            f"the context's batch shape {shape_str(c_batch)} does not broadcast with the "
            f"input's {shape_str(x_batch)}"
        ) from None


def broadcasts_to(batch: torch.Size, shape: torch.Size) -> bool:
    """Whether ``batch`` broadcasts to ``shape`` itself (``shape`` is their broadcast)."""
    try:
        return torch.broadcast_shapes(shape, batch) == shape
    except RuntimeError:
        return False


def check_size(where: str, x: torch.Tensor, dim: int, size: int, name: str = "x") -> None:
    """``x.shape[dim] == size`` (the features a layer was built for), else a one-line error:
    ``index_select`` with a shorter index would drop columns silently."""
    enough_dims = x.dim() >= (-dim if dim < 0 else dim + 1)
    if not enough_dims or x.shape[dim] != size:
        raise ValueError(
            f"{where}: {name} must have {size} feature{'s' if size != 1 else ''} along dim "
            f"{dim}, got shape {tuple(x.shape)}"
        )
