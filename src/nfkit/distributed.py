r"""Multi-process training on PyTorch's own engine: ``torch.distributed`` + DDP, launched by torchrun.

``nf.fit`` detects an initialized process group and then: draws the same global minibatch on every
rank (same seed) and gives each rank an equal shard of it; wraps the flow in
``DistributedDataParallel`` (gradients averaged over ranks, so one step equals a single-process
step on the global batch, up to rounding); shows progress and writes checkpoints on rank 0 only;
and broadcasts rank 0's validation loss so every rank takes the same early-stopping decision.

Launch (one machine, 2 processes; use ``--nnodes``/``--rdzv-endpoint`` for several machines)::

    torchrun --nproc-per-node 2 -m nfkit fit data.csv --distributed --out model.pt

or, from your own script, call :func:`init_from_env` once and then ``nf.fit`` as usual.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from nfkit._checks import check_device

__all__ = ["init_from_env", "rank_and_world", "is_main_process", "shutdown"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run)."""
    return rank_and_world()[0] == 0


def init_from_env(
    backend: str | None = None, device: str | torch.device | None = None
) -> torch.device:
    """Initialize the process group from torchrun's environment; return this rank's device.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default NCCL on a GPU, gloo on CPU.
        device: ``"cpu"`` trains on CPU (gloo) also where CUDA is available; ``"cuda"`` takes
            GPU ``LOCAL_RANK``; None: ``"cuda"`` where CUDA is available, else ``"cpu"``. A
            numbered GPU (``"cuda:1"``) only with one process per node (``LOCAL_WORLD_SIZE``
            1); with more, every process of the node would use that one GPU: refused.

    Raises a one-line ``RuntimeError`` outside torchrun, and a one-line ``ValueError`` for a
    device this rank cannot have (a local rank beyond the node's visible GPUs: start at most
    that many processes per node, or train on CPU).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "nfkit.distributed: RANK/WORLD_SIZE are not set; launch with torchrun "
            "(e.g. torchrun --nproc-per-node 2 -m nfkit fit DATA --distributed)"
        )
    if not dist.is_available():
        raise RuntimeError("nfkit.distributed: this PyTorch build has no torch.distributed")
    where = "nfkit.distributed"
    rank, world = _env_int("RANK", None, 0), _env_int("WORLD_SIZE", None, 1)
    if rank >= world:  # torch would wait in the rendezvous for ranks that never come
        raise RuntimeError(f"{where}: RANK={rank} must be below WORLD_SIZE={world}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = check_device(where, device)
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"{where}: the nccl backend needs GPUs; on {dev.type} use gloo")
    if dev.type == "cuda":
        local = _env_int("LOCAL_RANK", 0, 0)
        per_node = _env_int("LOCAL_WORLD_SIZE", 1, 1)
        visible = torch.cuda.device_count()
        if dev.index is not None and per_node > 1:
            raise ValueError(
                f"{where}: device {str(dev)!r} would put this node's {per_node} processes on "
                "one GPU; give 'cuda' (each process takes GPU LOCAL_RANK)"
            )
        if dev.index is None and local >= visible:
            raise ValueError(
                f"{where}: local rank {local} has no GPU of its own ({visible} visible): start "
                f"at most {visible} process(es) per node (torchrun --nproc-per-node "
                f"{visible}) or train on CPU (device 'cpu'; nfkit fit --device cpu)"
            )
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dev


def _env_int(name: str, default: int | None, minimum: int) -> int:
    """The integer environment variable ``name`` (torchrun sets it), ``>= minimum``, or
    ``default`` when unset; else a one-line ``RuntimeError`` naming it."""
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        value = int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum:
        raise RuntimeError(
            f"nfkit.distributed: {name} must be an integer >= {minimum} (torchrun sets it), "
            f"got {text!r}"
        )
    return value


def shutdown(wait: bool = True) -> None:
    """Wait for every rank, then destroy the process group (if one is initialized).

    The barrier keeps a rank that finishes early (ranks other than 0 skip saving) from tearing
    down its gloo/NCCL connections while a peer still has work in flight. ``wait=False`` after
    a failure on this rank: its peers may be blocked in a collective it will never join, and a
    barrier would wait for the backend's timeout (30 minutes); tearing down lets them fail and
    torchrun end the run.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
