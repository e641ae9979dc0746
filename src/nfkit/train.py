r"""Training: maximum likelihood or flow matching (:func:`fit`) and reverse-KL variational
inference (:func:`fit_vi`).

Both run the same loop: minibatch AdamW (torch's fused kernel on CPU and CUDA), a learning-rate
schedule (cosine by default), gradient clipping, a tqdm bar, and a :class:`History`. The loop
avoids a host sync per step: losses and gradient norms are written into device buffers and
checked (finite?) every ``sync_every`` steps;
if a loss or gradient norm was NaN/inf, the weights of the last checked point are put back and
:class:`NonFiniteLossError` is raised. Under ``torchrun`` (an initialized
``torch.distributed`` process group) :func:`fit` shards each global minibatch over the ranks and
wraps the flow in ``DistributedDataParallel``; see :mod:`nfkit.distributed`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from nfkit._checks import (
    check_device,
    check_number,
    check_positive_int,
    resolve_seed,
    shown,
)
from nfkit.core import Flow, context_tensor, dtype_device
from nfkit.distributed import rank_and_world
from nfkit.flow_matching import FlowMatchingNoise, FlowMatchingObjective
from nfkit.io import (
    CHECKPOINT_FORMAT,
    FORMAT,
    DamagedFileError,
    atomic_save,
    safe_torch_load,
    weights_difference,
)
from nfkit.metrics import (
    VI_SPLINE_ADVICE,
    check_log_weights,
    log_normalizer_se,
    target_log_density,
    warn_outside_spline_interval,
    weight_summary,
    weighted_draws,
)
from nfkit.models._registry import learning_rate
from nfkit.models.gaussianization import RBIGFlow
from nfkit.tables import as_tensor
from nfkit.transforms.continuous import step_control_failure
from nfkit.transforms.normalization import ActNorm, BatchNorm

__all__ = ["fit", "fit_vi", "History", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good weights were restored."""


@dataclass
class History:
    r"""What a training run recorded.

    Attributes:
        train_loss: Per-step training loss (NLL in nats per sample for :func:`fit`, or the
            flow-matching loss with ``objective="flow_matching"``; the reverse KL up to
            ``log Z``, i.e. ``-ELBO``, for :func:`fit_vi`: with ``anneal``, the annealed
            ``E[log q - β_t log p̃]`` until ``β_t`` reaches 1).
        val_loss: Validation loss (NLL, or the flow-matching loss) at each evaluation (empty
            without validation data).
        val_step: The step (number of updates done) of each evaluation.
        time: Wall-clock seconds since the start at each evaluation.
        lr: Learning rate at each evaluation.
        best_step, best_val: Step and value of the best validation loss (weights restored to it).
        objective: ``"likelihood"``, ``"flow_matching"`` or (:func:`fit_vi`) ``"reverse_kl"``:
            what the losses are.
        val_nll: (flow matching) the validation NLL of the restored weights, nats per row.
        stopped_early: Whether early stopping ended the run.
        steps: Number of optimizer steps done.
        wall_time: Total seconds.
        ess: (:func:`fit_vi`) importance-sampling effective sample size ``(Σw)² / Σw²`` as a
            fraction of ``n_estimate`` samples, with ``w = p̃(x) / q(x)``; 1 means ``q ∝ p̃``.
        log_normalizer: (:func:`fit_vi`) ``log Ẑ = log mean w``, an estimate of ``log ∫ p̃``.
        log_normalizer_se: (:func:`fit_vi`) its standard error
            (:func:`nfkit.metrics.log_normalizer_se`; meaningful when ``pareto_k < 0.5``, a
            rough guide up to 0.7).
        pareto_k: (:func:`fit_vi`) the weights' Pareto diagnostic
            (:func:`nfkit.metrics.pareto_k`): below 0.7, ``log Ẑ`` and importance-weighted
            expectations are reliable; above, ``q`` misses part of ``p``.
        per_context: (:func:`fit_vi` with a batch of contexts) ``{"ess": [...],
            "log_normalizer": [...], "log_normalizer_se": [...], "pareto_k": [...]}``, one
            entry per context (the batch flattened): each context's target has its own
            normalizer. ``ess`` and ``pareto_k`` above are then the worst of them (smallest,
            largest) and ``log_normalizer`` (and its standard error) is None.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    steps: int = 0
    wall_time: float = 0.0
    ess: float | None = None
    log_normalizer: float | None = None
    log_normalizer_se: float | None = None
    pareto_k: float | None = None
    objective: str = "likelihood"
    val_nll: float | None = None
    per_context: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (safe for ``torch.load(weights_only=True)`` and Python's ``json``,
        which writes a non-finite value, e.g. ``pareto_k = -inf``, as ``-Infinity``)."""
        return asdict(self)

    def __repr__(self) -> str:
        """One line: the run's length and outcome, not its per-step lists (``to_dict`` has
        those): a notebook cell ending in ``nf.fit(...)`` would print thousands of losses."""
        parts = [f"steps={self.steps}"]
        if self.train_loss:
            parts.append(f"last train_loss={self.train_loss[-1]:.4f}")
        if self.best_val is not None:
            parts.append(f"best_val={self.best_val:.4f} at step {self.best_step}")
        if self.stopped_early:
            parts.append("stopped early")
        for name in ("val_nll", "ess", "log_normalizer", "log_normalizer_se", "pareto_k"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:.4g}")
        parts.append(f"wall_time={self.wall_time:.1f}s")
        return f"History({', '.join(parts)})"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def plot(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
        """The loss curves (:func:`nfkit.plot.history`); writes a PNG if ``path`` is given."""
        from nfkit.plot import history

        return history(self, path, **kwargs)


# --------------------------------------------------------------------------- small pieces


def _wrap_model(module: nn.Module, world: int, device: torch.device) -> nn.Module:
    """The module the loop calls (the flow, ``model(x, context) -> log_prob``, or its
    flow-matching objective): wrapped in DDP when ``world > 1``."""
    if world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _uninitialized(flow: Flow) -> bool:
    """Whether a layer still waits for its data-dependent initialization (ActNorm)."""
    return any(
        isinstance(b, Tensor) and b.dtype == torch.bool and not bool(b.all())
        for name, b in flow.named_buffers()
        if name.endswith("initialized")
    )


def _broadcast_float(value: float, world: int, device: torch.device) -> float:
    """Rank 0's value on every rank (the same early-stopping decision everywhere)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def _same_on_every_rank(where: str, x: Tensor, c: Tensor | None, w: Tensor | None) -> None:
    """Every process must hold the same rows (each trains on its shard of the same global
    batches): compared by :func:`_fingerprint`; a mismatch is refused on every rank alike (it
    hung, or trained on mismatched batches)."""
    mine = (x.shape[0], _fingerprint(x, c, w))
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if any(other[0] != mine[0] or not _same_data(other[1], mine[1]) for other in every):
        rows = ", ".join(f"rank {r}: {other[0]} rows" for r, other in enumerate(every))
        raise ValueError(
            f"{where}: the processes were given different training data ({rows}; or the same "
            "number of other rows): in a distributed run every process passes the whole data "
            "set, and each trains on its shard of the same batches"
        )


def _same_run_on_every_rank(
    where: str, settings: dict[str, Any], train: Tensor, held_out: Tensor
) -> None:
    """Every process runs the same loop on the same split: the settings (steps, batch size,
    schedule, ...) and the training and held-out rows after the split are compared, and a
    mismatch is refused on every rank alike (other ``steps`` hung the run, another
    ``val_fraction`` aborted it inside gloo, a ``val=`` on one rank only trained it on two
    different sets, silently)."""
    mine = (settings, train, held_out)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    for rank, (other, other_train, other_held) in enumerate(every):
        differ = [k for k in sorted({*settings, *other}) if settings.get(k) != other.get(k)]
        if differ:
            key = differ[0]
            raise ValueError(
                f"{where}: the processes of a distributed run were given different settings "
                f"({key}={other.get(key)!r} on rank {rank}, {settings.get(key)!r} here): every "
                "process must call fit alike"
            )
        for what, a, b in (("training", other_train, train), ("held-out", other_held, held_out)):
            if not _same_data(a, b):
                raise ValueError(
                    f"{where}: the processes of a distributed run have different {what} rows "
                    f"(rank {rank} and here; val= or val_weights= given on some ranks only?): "
                    "every process must call fit alike"
                )


def _config_difference(made: Any, now: Any, at: str = "") -> str:
    """The first setting in which two model configs differ, in a few words (nested configs,
    such as a standardized model's inner ``flow``, are followed)."""
    if isinstance(made, dict) and isinstance(now, dict):
        for key in [*made, *(k for k in now if k not in made)]:
            if made.get(key) != now.get(key):
                return _config_difference(made.get(key), now.get(key), f"{at}{key}.")
    name = at.rstrip(".") or "model"
    return f"{name}={made!r} there, {now!r} here"[:200]


def _same_checkpoint_on_every_rank(where: str, checkpoint: Any, state: dict | None) -> None:
    """Every process checkpoints and resumes alike (the same step): a ``checkpoint=`` given on
    one rank only hung the others at the first evaluation, and a rank that could not see rank
    0's file (no shared filesystem) started afresh against a resumed one, pairing the
    collectives of other steps. Refused on every rank alike."""
    step = None if state is None else state.get("step")
    mine = (checkpoint is not None, step if isinstance(step, int) else None)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if any(other != mine for other in every):
        ranks = ", ".join(
            f"rank {r}: "
            + ("no checkpoint" if not given else "fresh" if at is None else f"step {at}")
            for r, (given, at) in enumerate(every)
        )
        raise ValueError(
            f"{where}: the processes disagree on the checkpoint ({ranks}): in a distributed run "
            "every process passes checkpoint= (rank 0 writes it) and, to resume, reads the same "
            "file (a shared filesystem)"
        )


def _rng_states(flow: Flow, world: int) -> list[tuple[Tensor, Tensor | None]]:
    """Every rank's (CPU, CUDA) RNG state, gathered (a collective: called on every rank):
    a resumed distributed run gives each process its own noise stream back."""
    mine = (torch.get_rng_state(), _cuda_rng_state(flow))
    if world == 1:
        return [mine]
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    return every


class _Batcher:
    """Shuffled epochs of minibatch indices ``(B,)`` (CPU), from a private generator.

    Its state (generator, current permutation, position) goes into checkpoints, so a resumed run
    draws exactly the batches the uninterrupted run would have drawn. A distributed run replaces
    this with a ``DistributedSampler``-style shard of each permutation.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self.pos = int(state["pos"])


def _eval_every(where: str, steps: int, eval_every: int | None) -> int:
    """Steps between evaluations/checks: ``clamp(steps // 20, 1, 200)`` unless given."""
    if eval_every is None:
        return min(max(steps // 20, 1), 200)
    return check_positive_int(where, "eval_every", eval_every)


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_adamw(params: list[Tensor]) -> bool | None:
    """``True`` when torch's fused AdamW kernel takes every parameter (CPU or CUDA, a float
    dtype), else ``None`` (torch's default).

    The fused kernel updates each tensor in one pass instead of about a dozen elementwise ops;
    on CPU torch's default is the per-tensor loop. Same update up to rounding.
    """
    ok = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)
    return True if ok else None


class _Loop:
    """Optimizer, schedule, clipping, deferred finiteness checks, snapshots and the bar."""

    def __init__(
        self,
        where: str,
        flow: Flow,
        *,
        steps: int,
        lr: float,
        weight_decay: float,
        clip: float | None,
        schedule: str,
        sync_every: int,
        progress: bool,
        device: torch.device,
        world: int = 1,
    ) -> None:
        self.where, self.flow, self.steps, self.world = where, flow, steps, world
        self.params = [p for p in flow.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{where}: the flow has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr, weight_decay=weight_decay, fused=_fused_adamw(self.params)
        )
        if schedule == "cosine":
            self.scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=steps
            )
        elif schedule == "constant":
            self.scheduler = None
        else:
            raise ValueError(
                f"{where}: schedule must be 'cosine' or 'constant', got {shown(schedule)}"
            )
        if clip is not None:  # a negative clip flips the gradient; NaN poisons the weights
            check_number(where, "clip", clip, 0.0, inclusive=True)
        self.clip = math.inf if not clip else float(clip)
        self.sync_every = sync_every
        # the steps since the last check (at most sync_every): not one entry per step, which a
        # cap of 10**9 steps (stopped early by patience) would have allocated as 16 GB
        window = min(steps, sync_every)
        self.losses = torch.zeros(window, device=device, dtype=torch.float64)
        self.norms = torch.zeros(window, device=device, dtype=torch.float64)
        self.mark_good(0)
        self.failed_step: int | None = None  # the first non-finite step a check found
        self.progress = progress
        self.bar: Any = None

    def open_bar(self, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.steps,
            initial=initial,
            desc=self.where,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self, i: int, loss: Tensor) -> None:
        """One update; no host sync (the loss and norm are recorded on the device)."""
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except AssertionError as e:  # an adjoint ODE solve (FFJORD) gives up inside backward
            how = step_control_failure(e)
            if how is None:
                raise
            raise ValueError(
                f"{self.where}: the adjoint ODE solve of the backward pass failed ({how}) at step "
                f"{i + 1}: the field is too stiff or blows up (loosen atol/rtol, raise max_steps, "
                "or use a fixed-step solver)"
            ) from None
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.losses[i - self.synced] = loss.detach()  # (a check comes every sync_every steps)
        self.norms[i - self.synced] = norm.detach()

    def mark_good(self, step: int) -> None:
        """Take the current weights, those after ``step`` updates, as the start of the checks
        (a fresh loop, a resume)."""
        self.synced = self.restored = step
        self.good = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
        self.pending = {k: v.clone() for k, v in self.good.items()}
        self.good_step = self.pending_step = step

    def sync(self, done: int, history: History) -> None:
        """Check steps ``[synced, done)``; on NaN/inf restore the last good weights and raise.

        A finite loss at step ``i`` (1-based) vouches for the weights it was computed with, those
        after ``i - 1`` updates, not for the update it made: the weights at a check are kept as
        ``pending`` and become ``good`` at the next check, whose first loss measured them. A
        failure at the first step after a check restores the check before (the weights at the
        check produced it)."""
        if done <= self.synced:
            return
        window = slice(0, done - self.synced)
        if self.world > 1:
            # Each rank saw its own shard: record the global-batch loss, identical on every rank.
            dist.all_reduce(self.losses[window])
            self.losses[window] /= self.world
        ok = torch.isfinite(self.losses[window]) & torch.isfinite(self.norms[window])
        if not bool(ok.all()):
            first = self.synced + int(torch.nonzero(~ok)[0, 0]) + 1  # 1-based
            self.failed_step = first
            vouched = first - 1 > self.pending_step  # a finite loss measured the pending weights
            self.flow.load_state_dict(self.pending if vouched else self.good)
            self.restored = self.pending_step if vouched else self.good_step
            raise NonFiniteLossError(
                f"{self.where}: non-finite loss or gradient at step {first}; weights restored to "
                f"step {self.restored} (try a lower lr, a smaller clip, or check the "
                f"{'target log-density' if self.where == 'nf.fit_vi' else 'data'})"
            )
        history.train_loss.extend(self.losses[window].tolist())
        history.steps = done
        self.good, self.pending = self.pending, self.good  # the pending weights are vouched for
        self.good_step = self.pending_step
        for k, v in self.flow.state_dict().items():
            self.pending[k].copy_(v)
        self.pending_step = done
        if self.bar is not None:
            self.bar.update(done - self.synced)
        self.synced = done

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def postfix(self, history: History) -> None:
        if self.bar is None or not history.train_loss:
            return
        recent = history.train_loss[-self.sync_every :]
        info = {"train": f"{sum(recent) / len(recent):.4f}"}
        if history.val_loss:
            info["val"] = f"{history.val_loss[-1]:.4f}"
        self.bar.set_postfix(info, refresh=False)


def _split(
    x: Tensor,
    c: Tensor | None,
    w: Tensor | None,
    val_fraction: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """``(x, c, w)`` of the training rows, then of the held-out ones (None: no validation)."""
    n = x.shape[0]
    n_val = int(round(val_fraction * n))
    if val_fraction <= 0 or n < 2:
        return x, c, w, None, None, None
    n_val = min(max(n_val, 1), n - 1)
    perm = torch.randperm(n, generator=generator).to(x.device)
    tr, va = perm[n_val:], perm[:n_val]

    def rows(t: Tensor | None, i: Tensor) -> Tensor | None:
        return None if t is None else t[i]

    return x[tr], rows(c, tr), rows(w, tr), x[va], rows(c, va), rows(w, va)


def _row_weights(
    where: str, weights: Any, n: int, name: str, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """``weights`` as a checked ``(n,)`` tensor: finite, ``>= 0``, not all zero (None: none)."""
    if weights is None:
        return None
    if isinstance(weights, Tensor):
        w = weights.detach()
    else:
        try:
            w = torch.tensor(np.array(weights, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(
                f"{where}: {name} must be numbers, one per row, got {type(weights).__name__}"
            ) from None
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(
            f"{where}: {name} must have shape ({n},), one per row, got {tuple(w.shape)}"
        )
    if w.is_complex() or w.dtype == torch.bool:
        raise TypeError(f"{where}: {name} must be real numbers, got {w.dtype}")
    w = w.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf values")
    if bool((w < 0).any()):
        raise ValueError(f"{where}: {name} must be >= 0, got a minimum of {float(w.min()):.6g}")
    if not bool((w > 0).any()):
        raise ValueError(f"{where}: {name} are all zero")
    # Scale-free (the objective divides by Σw): to a maximum of 1 in float64 before the cast,
    # so importance weights of any magnitude (1e-50, 1e39) survive float32.
    return (w / w.max()).to(dtype)


@torch.no_grad()
def _nll(
    flow: Flow, x: Tensor, c: Tensor | None, w: Tensor | None = None, chunk: int = 8192
) -> float:
    """Mean negative log-likelihood over ``x`` in chunks (eval mode), weighted by ``w`` (``-Σ w
    log p / Σ w``) when given; one host sync."""
    was_training = flow.training
    flow.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        ci = None if c is None else c[i : i + chunk]
        lp = flow.log_prob(x[i : i + chunk], ci).double()  # (rows of weight 0: left out)
        total += -(lp.sum() if w is None else (lp * w[i : i + chunk].double()).sum())
    flow.train(was_training)
    return float(total) / (x.shape[0] if w is None else float(w.double().sum()))


@torch.no_grad()
def _flow_matching_val(
    objective: FlowMatchingObjective,
    x: Tensor,
    c: Tensor | None,
    noise: FlowMatchingNoise,
    w: Tensor | None = None,
    chunk: int = 8192,
) -> float:
    """Mean flow-matching loss over ``x`` repeated to the rows of ``noise`` (fixed draws, so
    every evaluation scores the same problem: in eval mode, as :func:`_nll`, so that dropout or
    batch statistics in an embedding neither vary it nor learn from it), weighted by ``w`` when
    given; one host sync."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    mass = torch.zeros((), dtype=torch.float64, device=x.device)
    rows = noise.s.shape[0]
    was_training = objective.training
    objective.eval()
    for i in range(0, rows, chunk):
        idx = torch.arange(i, min(i + chunk, rows), device=x.device) % x.shape[0]
        part = noise.rows(slice(i, i + chunk))
        loss = objective(x[idx], None if c is None else c[idx], part).double()
        if w is None:
            total += loss.sum()
        else:
            total += (loss * w[idx].double()).sum()
            mass += w[idx].double().sum()
    objective.train(was_training)
    return float(total) / (rows if w is None else float(mass))


VAL_DRAWS = 4096
"""Flow matching's validation draws: each validation row is repeated up to this many in all."""

OBJECTIVES = ("likelihood", "flow_matching")


def _rows(where: str, flow: Flow, x: Tensor, name: str) -> Tensor:
    """``x`` if it is rows ``(n, *event)`` of the flow's event shape with ``n >= 1``."""
    event = tuple(flow.event_shape)
    if x.dim() != 1 + len(event):
        raise ValueError(
            f"{where}: {name} must be rows of shape (n, {', '.join(map(str, event))}), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {name} has no rows")
    return x


def _val_by_name(where: str, val: Any, data: Any, context: Any) -> Any:
    """``val`` (or its pair) with DataFrame columns put in the order of the training
    DataFrame's, matched by name (a ``val`` with the columns in another order was scored
    column by column, silently); other names are refused."""

    def match(part: Any, train: Any, name: str, train_name: str) -> Any:
        columns = getattr(train, "columns", None)
        if columns is None or getattr(part, "columns", None) is None:
            return part
        if list(part.columns) == list(columns):
            return part
        if sorted(map(str, part.columns)) != sorted(map(str, columns)):
            raise ValueError(
                f"{where}: {name} has columns {list(map(str, part.columns))} but {train_name} "
                f"has {list(map(str, columns))}; give them the same columns (matched by name)"
            )
        return part[list(columns)]

    if isinstance(val, (tuple, list)) and len(val) == 2:
        return (
            match(val[0], data, "val data", "the training data"),
            match(val[1], context, "val context", "context"),
        )
    return match(val, data, "val", "the training data")


def _val_data(
    where: str, flow: Flow, val: Any, conditional: bool, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    if conditional:
        if not (isinstance(val, (tuple, list)) and len(val) == 2):
            raise TypeError(f"{where}: for a conditional fit, val must be a pair (data, context)")
        xv = _rows(
            where,
            flow,
            as_tensor(val[0], where, "val data", dtype=dtype, device=device),
            "val data",
        )
        cv = context_tensor(flow, val[1], where, "val context", dtype=dtype, device=device)
        return xv, _context_rows(where, cv, xv, "val data", "val context")
    return _rows(
        where, flow, as_tensor(val, where, "val", dtype=dtype, device=device), "val"
    ), None


def _check_callback(where: str, callback: object) -> None:
    """``callback`` is None or callable, checked before the first step (``callback=1`` failed
    with Python's own error at the first evaluation)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"{where}: callback must be callable (or None), got {shown(callback)}")


@dataclass
class _EarlyStopping:
    """The best validation NLL so far, its weights, and evaluations since it (``bad``)."""

    patience: int
    best: dict[str, Tensor] | None = None
    bad: int = 0

    def update(self, history: History, val: float, done: int, flow: Flow) -> bool:
        """Record ``val`` at step ``done``; True once ``patience`` evaluations did not improve.
        A NaN (the flow's ``log_prob`` is NaN at a held-out row) raises
        :class:`NonFiniteLossError` after putting back the best weights so far: no later value
        could compare as better, and the run would silently keep this evaluation's weights."""
        if math.isnan(val) or val == math.inf:
            if self.best is not None:
                flow.load_state_dict(self.best)
            kept = (
                f"weights restored to the best evaluation (step {history.best_step})"
                if self.best is not None
                else "no earlier evaluation to restore"
            )
            value, gives = ("NaN", "NaN") if math.isnan(val) else ("+inf", "density 0 (-inf)")
            raise NonFiniteLossError(
                f"nf.fit: the validation loss is {value} at step {done} (the flow gives {gives} "
                f"at some held-out rows); {kept}"
            )
        history.val_loss.append(val)
        if history.best_val is None or val < history.best_val:
            history.best_val, history.best_step, self.bad = val, done, 0
            self.best = {k: t.detach().clone() for k, t in flow.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.patience


def _place(
    where: str, flow: Flow, device: str | torch.device | None
) -> tuple[torch.dtype, torch.device]:
    """Check ``flow`` and ``device``, move the flow there (if given); its dtype and device."""
    if not isinstance(flow, Flow):
        raise TypeError(f"{where}: flow must be an nf.Flow, got {type(flow).__name__}")
    checked = check_device(where, device)
    if checked is not None:
        flow.to(checked)
    return dtype_device(flow)


def _training_data(
    where: str,
    flow: Flow,
    data: Any,
    context: Any,
    weights: Any,
    device: str | torch.device | None,
) -> tuple[Tensor, Tensor | None, Tensor | None, torch.dtype, torch.device]:
    """``(x, c, w, dtype, device)``: the flow moved to ``device``, data, context and weights
    as checked tensors in its dtype there, with the same number of rows. Rows of weight 0 take
    no part: they are left out here, before the flow checks the rest (their values may lie
    outside its support) and before any split."""
    dtype, dev = _place(where, flow, device)
    x = _rows(where, flow, as_tensor(data, where, "data", dtype=dtype, device=dev), "data")
    c = context_tensor(flow, context, where, dtype=dtype, device=dev)
    if c is not None:
        c = _context_rows(where, c, x, "data", "context")
    w = _row_weights(where, weights, x.shape[0], "weights", dtype, dev)
    x, c, w = _counted(x, c, w)
    flow._check_x(where, x, c, names=("data", "context"))
    return x, c, w, dtype, dev


def _counted(
    x: Tensor, c: Tensor | None, w: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The rows of weight > 0 (all rows without weights)."""
    if w is None or bool((w > 0).all()):
        return x, c, w
    kept = w > 0
    return x[kept], None if c is None else c[kept], w[kept]


def _context_rows(where: str, c: Tensor, x: Tensor, x_name: str, name: str) -> Tensor:
    """``c`` if it is a table ``(n, C)`` with a row per row of ``x``: a context of other batch
    dims, such as ``(n, 1, C)``, would broadcast against the rows and pair each with all."""
    if c.dim() != 2 or c.shape[0] != x.shape[0]:
        raise ValueError(
            f"{where}: {name} must be a table (n, C) with a row per {x_name} row ({x.shape[0]}), "
            f"got shape {tuple(c.shape)}"
        )
    return c


def _steps(where: str, steps: int | None, epochs: int | None, n: int, batch_size: int) -> int:
    """Optimizer steps from ``steps`` or ``epochs`` (default 1000): an epoch is the ``⌊n/B⌋``
    full batches of one shuffled order of the ``n`` rows, as :class:`_Batcher` draws them."""
    if steps is not None and epochs is not None:
        raise ValueError(f"{where}: give steps or epochs, not both")
    if epochs is not None:
        return check_positive_int(where, "epochs", epochs) * (n // min(batch_size, n))
    return 1000 if steps is None else check_positive_int(where, "steps", steps)


def _initialize_on_first_batch(
    flow: Flow, batcher: _Batcher, x: Tensor, c: Tensor | None, device: torch.device
) -> None:
    """Data-dependent init (ActNorm) on the full first global batch, identical on every rank,
    before DDP copies rank 0's parameters: as in a single-process run. The batch order is left
    as it was."""
    first = batcher.state_dict()
    with torch.no_grad():
        idx = batcher.next().to(device)
        flow(x[idx], None if c is None else c[idx])
    batcher.load_state_dict(first)


def _read_checkpoint(
    where: str, checkpoint: str | os.PathLike[str] | None, resume: bool
) -> dict | None:
    """The checkpoint to resume from (None: start fresh). A file already at ``checkpoint`` must
    be an nfkit checkpoint, resumed or not: training would overwrite it, and a model file, a
    data file or anything else there is refused instead."""
    if checkpoint is None:
        if resume:
            raise ValueError(f"{where}: resume=True needs checkpoint=PATH")
        return None
    if not Path(checkpoint).exists():
        return None
    try:
        state = safe_torch_load(checkpoint, where, map_location="cpu")
    except DamagedFileError as e:  # cut short: say so, not "not an nfkit checkpoint"
        raise DamagedFileError(f"{e}; remove it, or give checkpoint= another path") from None
    except ValueError:  # not a torch file, or a directory
        state = None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        model = isinstance(state, dict) and state.get("format") == FORMAT
        what = "is a model file (nf.save), not" if model else "exists and is not"
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} {what} an nfkit checkpoint; "
            "training would overwrite it: give checkpoint= a path of its own"
        )
    return state if resume else None


def _fingerprint(x: Tensor, c: Tensor | None, w: Tensor | None = None) -> Tensor:
    """The training data's per-column sums, sums of squares and position-weighted sums
    ``Σ_i (i/n) x_i`` (float64, on the CPU; the last tells the same rows in another order, which
    the batch order of a resumed run depends on), with the weights' when given: what a resumed
    run compares to tell the same table from another. NaN (a padded set's absent elements)
    counts as 0, with the NaN pattern's columns beside (only then: other fingerprints as
    before)."""
    parts = [x] if c is None else [x, c]
    if w is not None:
        parts.append(w.unsqueeze(-1))
    flat = torch.cat([t.reshape(t.shape[0], -1).double() for t in parts], 1)
    missing = flat.isnan()
    if bool(missing.any()):
        flat = torch.cat([flat.nan_to_num(0.0), missing.double()], 1)
    position = torch.arange(flat.shape[0], dtype=flat.dtype, device=flat.device) / flat.shape[0]
    return torch.cat([flat.sum(0), flat.square().sum(0), position @ flat]).cpu()


def _same_data(a: Tensor, b: Tensor) -> bool:
    """Whether two :func:`_fingerprint` s are of the same rows (up to the rounding of the sums)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def _damaged(where: str, checkpoint: Any, e: BaseException) -> ValueError:
    """The one-line error for a checkpoint whose fields are missing or malformed."""
    detail = " ".join(str(e).split())[:160]
    return ValueError(
        f"{where}: checkpoint {str(checkpoint)!r} is damaged ({type(e).__name__}: {detail}); "
        "give another checkpoint path"
    )


def _cuda_rng_state(flow: Flow) -> Tensor | None:
    """The RNG state of the CUDA device the flow is on (None on other devices)."""
    device = dtype_device(flow)[1]
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _checkpoint_state(
    flow: Flow,
    loop: _Loop,
    batcher: _Batcher,
    history: History,
    stopping: _EarlyStopping,
    *,
    seed: int,
    steps: int,
    n: int,
    done: int,
    noise: torch.Generator | None,
    data: Tensor,
    settings: dict[str, Any],
    rngs: list[tuple[Tensor, Tensor | None]],
    val_data: Tensor | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue as if uninterrupted (plain data and tensors:
    loads with ``weights_only=True``). ``rngs``: every rank's RNG states (:func:`_rng_states`)."""
    return {
        "settings": settings,
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(flow.config),
        "seed": seed,
        "steps": steps,
        "n": n,
        "step": done,
        "model": flow.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": None if loop.scheduler is None else loop.scheduler.state_dict(),
        "batcher": batcher.state_dict(),
        "history": history.to_dict(),
        "best": stopping.best,
        "bad": stopping.bad,
        "rng": rngs[0][0],
        # the flow's GPU generator too: dequantization noise, Hutchinson probes and the
        # roulette draws on a CUDA flow come from it
        "cuda_rng": rngs[0][1],
        # a distributed run's other ranks (each draws its own noise)
        "rank_rngs": [list(pair) for pair in rngs] if len(rngs) > 1 else None,
        "noise_rng": None if noise is None else noise.get_state(),
        "objective": history.objective,
        "data": data,
        "val_data": val_data,
    }


def _restore(
    where: str,
    checkpoint: str | os.PathLike[str] | None,
    state: dict[str, Any],
    flow: Flow,
    loop: _Loop,
    batcher: _Batcher,
    stopping: _EarlyStopping,
    *,
    steps: int,
    n: int,
    noise: torch.Generator | None,
    data: Tensor,
    settings: dict[str, Any],
    val_data: Tensor | None = None,
) -> tuple[History, int]:
    """Put a checkpoint's weights, optimizer, schedule, batch order and RNG back; returns the
    history and the step to continue from. Refused (one line) when it was made for another
    model or on other training data (``data``: :func:`_fingerprint`)."""
    made_for = state.get("config")
    if made_for and flow.config and made_for != json.dumps(flow.config):
        model = json.loads(made_for)
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made for another model ("
            f"{_config_difference(model, flow.config)}): resume with the same model, or give "
            "another checkpoint path"
        )
    made_with = state.get("settings") or {}  # older checkpoints: not recorded
    # (before the data: another val_fraction splits off other training rows, and is named)
    changed = [k for k, v in settings.items() if k in made_with and made_with[k] != v]
    if int(state["steps"]) != steps and "eval_every" in changed:
        changed.remove("eval_every")  # by default derived from steps: steps is named below
    capped = made_with.get("batch_size") == int(state["n"]) and settings["batch_size"] == n
    if "batch_size" in changed and capped:  # both batches were the rows: other data, named below
        changed.remove("batch_size")
    if changed:
        was = ", ".join(f"{k}={made_with[k]!r}" for k in changed)
        now = ", ".join(f"{k}={settings[k]!r}" for k in changed)
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made with {was}; got {now}: resume "
            "with the settings it was made with (its optimizer and schedule carry them), or "
            "give another checkpoint path"
        )
    saved = state.get("data")  # older checkpoints have no fingerprint
    if saved is not None and data.numel() and saved.numel() == data.numel() * 2 // 3:
        data = data[: saved.numel()]  # made before row order was fingerprinted: sums alone
    if saved is not None and not _same_data(saved, data):
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made on other training data (the "
            "rows, their order or the weights differ): resume on the same data, or give "
            "another checkpoint path"
        )
    held = state.get("val_data")  # older checkpoints: not recorded; empty: none held out
    if held is not None and not _same_data(held, torch.empty(0) if val_data is None else val_data):
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made with other held-out rows (val=, "
            "val_weights= or the split): early stopping compared them; resume with the same "
            "ones, or give another checkpoint path"
        )
    if int(state["steps"]) != steps or int(state["n"]) != n:
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made with steps={state['steps']} "
            f"on {state['n']} training rows; got steps={steps} on {n} rows"
        )
    made = state.get("objective", "likelihood")  # older checkpoints: maximum likelihood
    objective = "likelihood" if noise is None else "flow_matching"
    if made != objective:
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} was made with objective={made!r}; "
            f"got objective={objective!r}"
        )
    model = state.get("model")
    other = weights_difference(flow, model) if isinstance(model, dict) else None
    if other is not None:  # before the optimizer, whose size check would call it damaged
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} holds another architecture's weights "
            f"({other})"
        )
    try:  # everything but the flow first: a damaged field then leaves the flow as it was
        loop.optimizer.load_state_dict(state["optimizer"])
        if loop.scheduler is not None and state["scheduler"] is not None:
            loop.scheduler.load_state_dict(state["scheduler"])
        batcher.load_state_dict(state["batcher"])
        best, bad, start = state["best"], int(state["bad"]), int(state["step"])
        history = History.from_dict(state["history"])
        rng, cuda_rng, noise_rng = state["rng"], state.get("cuda_rng"), state.get("noise_rng")
        rank, world = rank_and_world()
        ranks = state.get("rank_rngs")  # made by as many processes: each its own stream back
        if ranks is not None and len(ranks) == world:
            rng, cuda_rng = ranks[rank]
        if not isinstance(rng, Tensor) or not isinstance(history.train_loss, list):
            raise TypeError("rng or history")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise _damaged(where, checkpoint, e) from None
    try:
        flow.load_state_dict(state["model"])
    except RuntimeError as e:  # a hand-built flow of another architecture (no config to compare)
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise ValueError(
            f"{where}: checkpoint {str(checkpoint)!r} holds another architecture's weights "
            f"({' '.join(first.split())})"
        ) from None
    stopping.best, stopping.bad = best, bad
    torch.set_rng_state(rng)
    device = dtype_device(flow)[1]
    if device.type == "cuda" and cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    if noise is not None and noise_rng is not None:
        noise.set_state(noise_rng)
    loop.mark_good(start)
    return history, start


# --------------------------------------------------------------------------- fit


def fit(
    flow: Flow,
    data: Any,
    *,
    context: Any = None,
    weights: Any = None,
    val: Any = None,
    val_weights: Any = None,
    val_fraction: float = 0.1,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 512,
    lr: float | None = None,
    weight_decay: float = 0.0,
    clip: float | None = 5.0,
    schedule: str = "cosine",
    patience: int = 10,
    eval_every: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    seed: int | None = None,
    callback: Callable[[History], None] | None = None,
    objective: str = "likelihood",
) -> History:
    r"""Fit ``flow`` by maximum likelihood: minimize ``-(1/B) Σ_b log p(x_b | c_b)`` with AdamW.

    With ``objective="flow_matching"`` a continuous flow (:func:`nfkit.models.FFJORD`,
    ``blocks=1``) is trained instead by conditional flow matching
    (:func:`nfkit.flow_matching_loss`): one network pass per step and no ODE solve, the
    validation loss is the flow-matching loss on fixed draws, and at the end
    ``History.val_nll`` holds the validation NLL of the restored weights (one ODE solve).

    The data is split into training and validation sets (``val_fraction``, unless ``val`` is
    given); every ``eval_every`` steps the validation NLL is computed, and after ``patience``
    evaluations without improvement training stops. The weights of the best evaluation are put
    back at the end (without validation data the last weights are kept). The learning rate
    follows a cosine decay to 0 over ``steps`` (``schedule="constant"`` to keep it fixed); the
    gradient norm is clipped to ``clip``. The flow is left in eval mode.

    Args:
        flow: The :class:`~nfkit.Flow` to train (in place).
        data: Rows ``(n, D)`` as a Tensor, NumPy array or numeric pandas DataFrame.
        context: Conditioning rows ``(n, C)`` for a conditional flow, fitting ``p(x | c)``.
        weights: Per-row weights ``(n,)``, finite and ``>= 0`` (survey or importance weights):
            the objective becomes the weighted NLL ``-Σ_i w_i log p(x_i) / Σ_i w_i``. Batches
            are drawn uniformly and each row's loss is multiplied by its weight over the mean
            weight of the training rows, so every step's loss is an unbiased estimate of that
            objective (an integer weight ``k`` counts as ``k`` copies of the row, in
            expectation). Held-out rows keep their weights: the validation NLL is weighted.
        val: Validation data (a pair ``(data, context)`` when conditional); overrides the split.
            DataFrames beside DataFrame ``data``/``context`` are matched to their columns by name.
        val_weights: Weights of the rows of ``val`` (default: all equal).
        val_fraction: Fraction held out for validation when ``val`` is None (0: none).
        steps: Number of optimizer steps. ``epochs``: alternatively, passes over the training
            set, each the ``⌊n/B⌋`` full batches of one shuffle (the fewer than ``B`` rows left
            over wait for the next shuffle). Give at most one; default 1000 steps.
        batch_size: Minibatch size (capped at the training set size).
        lr, weight_decay: AdamW's learning rate and decoupled weight decay. ``lr=None``: the
            flow's factory's rate (:func:`nfkit.models.learning_rate`: 1e-3, 5e-3 for BNAF).
        clip: Maximum gradient norm (None or 0: no clipping).
        schedule: ``"cosine"`` (default) or ``"constant"``.
        patience: Evaluations without improvement before stopping.
        eval_every: Steps between evaluations; default ``clamp(steps // 20, 1, 200)``.
        checkpoint: Path written atomically at each evaluation (weights, optimizer, scheduler,
            step, history, best weights, RNG states); loads with ``weights_only=True``.
        resume: Continue from ``checkpoint`` if it exists (same data and settings).
        progress: Show a tqdm bar with the train/val NLL.
        device: Move the flow and data there (default: the flow's device).
        seed: Seed of the split, the batch order and the training noise (dequantization,
            Hutchinson probes, roulette draws: from a fork of torch's global RNG, which is left
            as it was). None: the seed is drawn from the global RNG and the noise comes from it.
            A resumed run takes the checkpoint's (a different explicit seed is refused).
        callback: Called with the History after each evaluation.
        objective: ``"likelihood"`` (maximum likelihood) or ``"flow_matching"`` (see above).

    Distributed: inside an initialized ``torch.distributed`` process group (``torchrun``, see
    :mod:`nfkit.distributed`) every rank holds the data, draws the same global minibatch of
    ``batch_size`` rows (which must divide by the number of ranks) and trains on its shard under
    ``DistributedDataParallel``; progress, checkpoints and callbacks run on rank 0 only, and the
    validation loss is broadcast from rank 0. The result equals single-process training on the
    same global batches up to floating-point rounding.

    Returns:
        The :class:`History`.

    Raises:
        NonFiniteLossError: a NaN/inf loss or gradient; the last good weights are restored.
    """
    where = "nf.fit"
    if isinstance(flow, RBIGFlow) and not flow.fitted:
        raise ValueError(
            f"{where}: an RBIG flow is fitted by flow.fit(x), greedily and without gradients "
            "(nf.fit would train its identity layers by gradient); fit it first, and nf.fit "
            "may then fine-tune it"
        )
    x, c, w, dtype, dev = _training_data(where, flow, data, context, weights, device)
    warn_outside_spline_interval(  # the rows that count (a weight of 0 takes no part)
        where,
        flow,
        x,
        "the training rows",
        "standardize them (nf.models.standardize), or widen it (bound=) for heavy tails",
    )
    lr = learning_rate(flow) if lr is None else lr
    lr = check_number(where, "lr", lr, 0.0)  # (a NumPy scalar: unreadable in a checkpoint)
    weight_decay = check_number(where, "weight_decay", weight_decay, 0.0, inclusive=True)
    _check_callback(where, callback)
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(
            f"{where}: checkpoint must be a path (str or os.PathLike), got {shown(checkpoint)}"
        )
    if clip is not None:
        clip = check_number(where, "clip", clip, 0.0, inclusive=True)
    check_number(where, "val_fraction", val_fraction, 0.0, inclusive=True)
    if val_fraction >= 1:
        raise ValueError(f"{where}: val_fraction must be < 1, got {val_fraction}")
    batch_size = check_positive_int(where, "batch_size", batch_size)
    patience = check_positive_int(where, "patience", patience)
    seed_given = seed is not None
    seed = resolve_seed(where, seed)
    rank, world = rank_and_world()
    if world > 1 and dist.is_initialized():  # rank 0's seed: the same split and batches
        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
        _same_on_every_rank(where, x, c, w)
    if objective not in OBJECTIVES:
        raise ValueError(f"{where}: objective must be one of {OBJECTIVES}, got {shown(objective)}")
    matching = FlowMatchingObjective(flow, where) if objective == "flow_matching" else None

    state = _read_checkpoint(where, checkpoint, resume)
    if world > 1 and dist.is_initialized():
        _same_checkpoint_on_every_rank(where, checkpoint, state)
    if state is not None:
        try:
            made_seed = int(state["seed"])
        except (KeyError, TypeError, ValueError) as e:
            raise _damaged(where, checkpoint, e) from None
        if seed_given and seed != made_seed:
            raise ValueError(
                f"{where}: checkpoint {str(checkpoint)!r} was made with seed={made_seed}; got "
                f"seed={seed}: resume with its seed (or seed=None), or give another checkpoint path"
            )
        seed = made_seed

    generator = torch.Generator().manual_seed(seed)
    if val is not None:
        val = _val_by_name(where, val, data, context)
        xv, cv = _val_data(where, flow, val, c is not None, dtype, dev)
        wv = _row_weights(where, val_weights, xv.shape[0], "val_weights", dtype, dev)
        xv, cv, wv = _counted(xv, cv, wv)  # (weight 0: not checked either)
        flow._check_x(where, xv, cv, names=("val", "val context"))
        xt, ct, wt = x, c, w
    elif val_weights is not None:
        raise ValueError(f"{where}: val_weights weights the rows of val=; give val= too")
    else:
        xt, ct, wt, xv, cv, wv = _split(x, c, w, val_fraction, generator)
    if wt is not None:  # (rows of weight 0 were left out before the split: _counted)
        wt = (wt.double() / wt.double().mean()).to(dtype)  # mean 1: the loss keeps its scale

    n = xt.shape[0]
    if min(batch_size, n) < 2 and any(isinstance(m, BatchNorm) for m in flow.modules()):
        raise ValueError(
            f"{where}: a flow with BatchNorm needs batches of at least 2 rows (its statistics); "
            f"got batch_size={batch_size} on {n} training row(s)"
        )
    fingerprint = _fingerprint(xt, ct, wt) if checkpoint is not None else torch.empty(0)
    held_out = None  # early stopping's rows: a resumed run must score the same ones
    if checkpoint is not None:  # (empty: none held out, which a resumed run must share)
        held_out = _fingerprint(xv, cv, wv) if xv is not None else torch.empty(0)
    steps = _steps(where, steps, epochs, n, batch_size)
    eval_every = _eval_every(where, steps, eval_every)

    settings = {  # what a resumed run must share with the checkpoint's
        "lr": lr,
        "batch_size": min(batch_size, n),
        "eval_every": eval_every,
        "schedule": schedule,
        "clip": float(clip or 0.0),
        "weight_decay": weight_decay,
        "patience": patience,
    }
    if val is None:  # the split (with val=, none: the held-out rows are compared instead)
        settings["val_fraction"] = float(val_fraction)
    if world > 1 and dist.is_initialized():
        _same_run_on_every_rank(
            where,
            {**settings, "steps": steps, "objective": objective, "val_fraction": val_fraction},
            _fingerprint(xt, ct, wt),
            _fingerprint(xv, cv, wv) if xv is not None else torch.empty(0),
        )
    if world > 1 and n < world:
        raise ValueError(
            f"{where}: {n} training row(s) cannot be shared by the {world} processes of a "
            "distributed run: run fewer processes (or give more data)"
        )
    if world > 1 and min(batch_size, n) % world:
        capped = (
            f"the batch is the {n} training rows (fewer than batch_size={batch_size}), "
            if n < batch_size
            else f"batch_size ({batch_size}) "
        )
        raise ValueError(
            f"{where}: {capped}which the {world} processes of a distributed run cannot share "
            f"equally; give a batch_size divisible by {world}"
            + (f" and at most {n}" if n < batch_size else "")
        )
    batcher = _Batcher(n, batch_size, generator)
    loop = _Loop(
        where,
        flow,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        clip=clip,
        schedule=schedule,
        sync_every=min(eval_every, 25),
        progress=progress and rank == 0,
        device=dev,
        world=world,
    )
    stopping = _EarlyStopping(patience)
    noise_rng = val_noise = None
    if matching is not None:  # the same draws on every rank: each takes its shard of them
        noise_rng = torch.Generator(device=dev).manual_seed((seed + 1) % 2**63)
        if xv is not None:
            repeats = max(1, math.ceil(VAL_DRAWS / xv.shape[0]))
            fixed = torch.Generator(device=dev).manual_seed((seed + 2) % 2**63)
            val_noise = matching.draw(repeats * xv.shape[0], xv, fixed)
    # An explicit seed also fixes the training noise drawn from torch's global RNG
    # (dequantization, Hutchinson probes, roulette), in a fork that leaves the caller's RNG as
    # it was; a resumed run puts the checkpoint's RNG state back inside the fork.
    forked = seed_given or state is not None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [], enabled=forked):
        if seed_given:
            torch.manual_seed((seed + 3 + rank) % 2**63)
        history, start = History(objective=objective), 0
        t0 = time.perf_counter()
        if state is not None:
            try:
                history, start = _restore(
                    where, checkpoint, state, flow, loop, batcher, stopping, steps=steps, n=n,
                    noise=noise_rng, data=fingerprint, settings=settings, val_data=held_out,
                )  # fmt: skip
            except (KeyError, TypeError, AttributeError, IndexError) as e:
                raise _damaged(where, checkpoint, e) from None
            t0 -= history.wall_time
            if history.stopped_early:  # the run had ended: resuming returns its result
                start = steps

        validate, flow.validate = flow.validate, False
        flow.train()
        if world > 1 and _uninitialized(flow):
            _initialize_on_first_batch(flow, batcher, xt, ct, dev)
        model = _wrap_model(flow if matching is None else matching, world, dev)
        synced = [m for m in flow.modules() if isinstance(m, BatchNorm)] if world > 1 else []
        for m in synced:  # the global batch's statistics, as in one process
            m.synced = True
        loop.open_bar(start)
        try:
            for i in range(start, steps):
                idx = batcher.next()
                noise = None if matching is None else matching.draw(len(idx), xt, noise_rng)
                if world > 1:
                    idx = idx[rank::world]
                    noise = None if noise is None else noise.rows(slice(rank, None, world))
                idx = idx.to(dev, non_blocking=True)
                cb = None if ct is None else ct[idx]
                if matching is None:
                    rows = -model(xt[idx], cb)
                else:
                    rows = model(xt[idx], cb, noise)
                loss = rows.mean() if wt is None else (rows * wt[idx]).mean()
                loop.step(i, loss)
                done = i + 1
                evaluate = done % eval_every == 0 or done == steps
                if evaluate or done % loop.sync_every == 0:
                    loop.sync(done, history)
                    loop.postfix(history)
                if evaluate:
                    history.val_step.append(done)
                    history.time.append(time.perf_counter() - t0)
                    history.lr.append(loop.lr())
                    stop = False
                    if xv is not None:
                        val = (
                            _nll(flow, xv, cv, wv)
                            if matching is None
                            else _flow_matching_val(matching, xv, cv, val_noise, wv)
                        )
                        stop = stopping.update(
                            history, _broadcast_float(val, world, dev), done, flow
                        )
                    # in the checkpoint: a resumed run ends here too (not "early" at the end)
                    history.stopped_early = stop and done < steps
                    history.wall_time = time.perf_counter() - t0
                    rngs = _rng_states(flow, world) if checkpoint is not None else []
                    if checkpoint is not None and rank == 0:
                        state = _checkpoint_state(
                            flow, loop, batcher, history, stopping, seed=seed, steps=steps, n=n,
                            done=done, noise=noise_rng, data=fingerprint, settings=settings,
                            rngs=rngs, val_data=held_out,
                        )  # fmt: skip
                        atomic_save(state, checkpoint)
                    loop.postfix(history)
                    if callback is not None and rank == 0:
                        callback(history)
                    if stop:
                        break
            if stopping.best is not None:
                flow.load_state_dict(stopping.best)
            elif xv is None:
                history.best_step = history.steps
            if matching is not None and xv is not None:
                history.val_nll = _broadcast_float(_nll(flow, xv, cv, wv), world, dev)
        finally:
            loop.close()
            for m in synced:
                m.__dict__.pop("synced", None)  # (the class default: off)
            flow.validate = validate
            flow.eval()
    history.wall_time = time.perf_counter() - t0
    return history


# --------------------------------------------------------------------------- fit_vi


@torch.no_grad()
def _importance(
    flow: Flow,
    log_density: Callable[..., Tensor],
    context: Tensor | None,
    n: int,
    history: History,
    chunk: int = 4096,
) -> None:
    """``history``'s ESS / n, log Ẑ and k̂ from ``n`` samples of ``q`` (``w = exp(log p̃ -
    log q)``), per context for a batch of contexts (each its own target and normalizer)."""
    xs, ws = zip(*weighted_draws("nf.fit_vi", flow, log_density, context, n, chunk))
    lw = torch.cat([w.reshape(w.shape[0], -1) for w in ws])  # (n, contexts)
    check_log_weights("nf.fit_vi", lw)
    x = torch.cat(xs)  # (n, *contexts, *event): a row per draw and context
    x = x.reshape(-1, *flow.event_shape)
    warn_outside_spline_interval("nf.fit_vi", flow, x, "q's draws", VI_SPLINE_ADVICE, stacklevel=6)
    if context is None or context.dim() == 1:
        history.ess, history.log_normalizer, history.pareto_k = weight_summary(lw.flatten())
        history.log_normalizer_se = log_normalizer_se(history.ess, lw.numel())
        return
    ess, log_z, k = zip(*(weight_summary(lw[:, j]) for j in range(lw.shape[1])))
    history.per_context = {
        "ess": list(ess),
        "log_normalizer": list(log_z),
        "log_normalizer_se": [log_normalizer_se(e, lw.shape[0]) for e in ess],
        "pareto_k": list(k),
    }
    history.ess, history.log_normalizer, history.pareto_k = min(ess), None, max(k)


def fit_vi(
    flow: Flow,
    log_density: Callable[..., Tensor],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float = 0.0,
    clip: float | None = 5.0,
    schedule: str = "cosine",
    anneal: int = 0,
    context: Tensor | None = None,
    eval_every: int | None = None,
    n_estimate: int = 8192,
    progress: bool = True,
    device: str | torch.device | None = None,
    seed: int | None = None,
    callback: Callable[[History], None] | None = None,
) -> History:
    r"""Fit ``flow = q`` to an unnormalized density ``p̃`` by minimizing the reverse KL.

    Loss per step: ``(1/B) Σ_b [log q(x_b) - β_t log p̃(x_b)]`` with ``(x_b, log q(x_b))`` from
    ``flow.sample_and_log_prob`` (reparameterized), which equals ``KL(q ‖ p) - log Z`` at
    ``β = 1`` (the negative ELBO). ``β_t = min(1, 0.01 + t / anneal)`` when ``anneal > 0``
    (Rezende & Mohamed 2015, arXiv:1505.05770), else 1. A flow with fast sampling (IAF, the
    ``direction="sample"`` planar family, coupling flows) is the natural choice.

    After training, ``n_estimate`` samples give the importance weights ``w = p̃(x) / q(x)``:
    ``history.log_normalizer = log mean w`` (``log Ẑ``, an estimate of ``log ∫ p̃`` whose
    expectation is a lower bound), ``history.ess = (Σw)² / (n Σw²)`` ∈ (0, 1] and
    ``history.pareto_k``, PSIS's ``k̂`` of the weights (:func:`nfkit.metrics.pareto_k`; below
    0.7 the estimates are reliable, Yao et al. 2018). For a batch of contexts they are taken
    per context, ``history.per_context``, the worst ESS and ``k̂`` above. The reverse KL seeks
    modes: a mode of ``p̃`` that ``q`` never visits is invisible to every one of these (its
    draws never land there), so a multimodal target needs a check of its own.

    Args:
        flow: The flow ``q`` (trained in place; left in eval mode).
        log_density: ``x -> log p̃(x)`` of shape ``x.shape[:-1]`` (``(x, context)`` when a
            context is given); differentiable in ``x``. See :mod:`nfkit.targets`.
        steps: Optimizer steps.
        batch_size: Samples per step.
        lr, weight_decay, clip, schedule: As in :func:`fit`.
        anneal: Steps of linear annealing of ``β`` from 0.01 to 1 (0: none).
        context: A fixed context ``(C,)`` or ``(*batch, C)`` for a conditional ``q``.
        eval_every: Steps between evaluations (progress, callback); the loss is checked for
            NaN/inf every ``min(eval_every, 25)`` steps.
        n_estimate: Samples for the final ESS and ``log Ẑ``.
        progress, device: As in :func:`fit`.
        seed: Seed of the sampling (the global RNG is left as it was); None: the global RNG.
        callback: Called with the History after each evaluation.
    """
    where = "nf.fit_vi"
    dtype, dev = _place(where, flow, device)
    if not callable(log_density):
        raise TypeError(f"{where}: log_density must be callable, got {type(log_density).__name__}")
    steps = check_positive_int(where, "steps", steps)
    batch_size = check_positive_int(where, "batch_size", batch_size)
    n_estimate = check_positive_int(where, "n_estimate", n_estimate)
    anneal = check_positive_int(where, "anneal", anneal, minimum=0)
    lr = learning_rate(flow) if lr is None else lr
    lr = check_number(where, "lr", lr, 0.0)  # (a NumPy scalar: unreadable in a checkpoint)
    weight_decay = check_number(where, "weight_decay", weight_decay, 0.0, inclusive=True)
    _check_callback(where, callback)
    if isinstance(context, np.ndarray):  # as nf.fit takes it
        context = torch.tensor(np.array(context, dtype=np.float64))
    if context is not None:
        if not isinstance(context, Tensor):
            raise TypeError(f"{where}: context must be a Tensor, got {type(context).__name__}")
        context = context.detach().to(device=dev, dtype=dtype)  # no graph into the caller
    # width, finite (NaN as whole absent elements behind a padded set); before any step
    flow._check_context(where, context, True, "context")
    if context is not None and context.numel() == 0:
        raise ValueError(f"{where}: context has no rows (shape {tuple(context.shape)})")
    if not getattr(flow.base, "reparameterized", True):
        fix = (
            "fit a flow factory (IAF, RealNVP, NSF, ...) instead"
            if flow.config.get("model") == "GMM"
            else "use a reparameterized base (base='normal') or freeze the weights"
        )
        raise ValueError(
            f"{where}: the base distribution {type(flow.base).__name__} draws its mixture "
            f"component without a gradient, so its trained weights would get biased gradients; "
            f"{fix}"
        )
    eval_every = _eval_every(where, steps, eval_every)
    if seed is not None:
        seed = resolve_seed(where, seed)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _fit_vi(
            where, flow, log_density, context, steps, batch_size, lr, weight_decay, clip,
            schedule, anneal, eval_every, n_estimate, progress, dev, callback,
        )  # fmt: skip


def _off_target(
    where: str, off_target: Tensor, loop: _Loop, draws: int
) -> NonFiniteLossError | None:
    """The error naming the target when a non-finite loss came from ``log p̃`` not being finite
    at some draws (``off_target``: the count per step since the loop's last check) at the step
    the loop found first; None otherwise (a non-finite gradient there: its NaN weights make
    every later draw, and so the target there, NaN)."""
    bad = torch.nonzero(off_target)
    if bad.numel() == 0 or loop.synced + int(bad[0, 0]) + 1 != loop.failed_step:
        return None
    at = int(bad[0, 0])
    return NonFiniteLossError(
        f"{where}: log_density is not finite (-inf, NaN or +inf) at {int(off_target[at])} of "
        f"{draws} draws of step {loop.synced + at + 1}; weights restored to step "
        f"{loop.restored}. Draws of q "
        "outside the target's support: put nf.transforms.Bounded(low, high) in front of the flow "
        "(nf.Flow(nf.Compose(nf.transforms.Bounded(...), flow.transform), flow.base)), or make "
        "log_density finite everywhere"
    )


def _fit_vi(
    where: str,
    flow: Flow,
    log_density: Callable[..., Tensor],
    context: Tensor | None,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    clip: float | None,
    schedule: str,
    anneal: int,
    eval_every: int,
    n_estimate: int,
    progress: bool,
    dev: torch.device,
    callback: Callable[[History], None] | None,
) -> History:
    loop = _Loop(
        where,
        flow,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        clip=clip,
        schedule=schedule,
        sync_every=min(eval_every, 25),
        progress=progress,
        device=dev,
    )
    history = History(objective="reverse_kl")
    for module in flow.modules():  # trained from samples: no data for ActNorm's init
        if isinstance(module, ActNorm):
            module.mark_initialized()
    t0 = time.perf_counter()
    validate, flow.validate = flow.validate, False
    flow.train()
    loop.open_bar(0)
    # per step since the last check, the draws at which the target was not finite (on the
    # device: no sync)
    off_target = torch.zeros_like(loop.losses, dtype=torch.long)
    try:
        for i in range(steps):
            beta = 1.0 if anneal == 0 else min(1.0, 0.01 + i / anneal)
            x, log_q = flow.sample_and_log_prob(batch_size, context)
            log_p = target_log_density(where, log_density, x, context, log_q)
            off_target[i - loop.synced] = (~torch.isfinite(log_p.detach())).sum()
            loss = (log_q - beta * log_p).mean()
            loop.step(i, loss)
            done = i + 1
            if done % loop.sync_every == 0 or done % eval_every == 0 or done == steps:
                try:  # (at every check too: its callback sees the History up to this step)
                    loop.sync(done, history)
                except NonFiniteLossError as e:
                    named = _off_target(
                        where, off_target[: done - loop.synced], loop, log_p.numel()
                    )
                    if named is None:
                        raise
                    raise named from e

            if done % eval_every == 0 or done == steps:
                history.val_step.append(done)
                history.time.append(time.perf_counter() - t0)
                history.lr.append(loop.lr())
                loop.postfix(history)
                if callback is not None:
                    callback(history)
        flow.eval()
        _importance(flow, log_density, context, n_estimate, history)
        history.best_step = history.steps
    finally:
        loop.close()
        flow.validate = validate
        flow.eval()
    history.wall_time = time.perf_counter() - t0
    return history
