r"""Normalization layers as exact bijections: :class:`ActNorm` and :class:`BatchNorm`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfkit._checks import check_number, check_positive_int, shown
from nfkit._shapes import check_size
from nfkit.core import Transform

__all__ = ["ActNorm", "BatchNorm"]


def _feature_view(param: Tensor, event_dim: int) -> Tensor:
    """Reshape a per-feature vector so it broadcasts over an event of ``event_dim`` dims."""
    return param.reshape(-1, *([1] * (event_dim - 1)))


def _reduce_dims(x: Tensor, event_dim: int) -> list[int]:
    """All dims except the feature dim (the first event dim)."""
    feature = x.dim() - event_dim
    return [i for i in range(x.dim()) if i != feature]


class ActNorm(Transform):
    r"""``z = (x - μ) · exp(-s)`` per feature (Kingma & Dhariwal 2018, Glow).

    ``ladj = -Σ s`` (times ``H · W`` for images). Data-dependent initialization: the first
    forward in train mode sets ``μ`` and ``s`` to the batch mean and log-std, so the output starts
    standardized (a feature with no spread in that batch keeps ``s = 0``); whichever direction first sees data initializes (inside an
    :class:`~nfkit.Inverse`, e.g. an IAF-style ``Compose(ActNorm, ...).inv``, the data come
    through :meth:`inverse`), and a :class:`~nfkit.Flow`'s sampling never does (its inputs are
    base draws); the ``initialized`` buffer records it, so it survives ``state_dict``. A Python
    mirror of that flag (updated by ``load_state_dict``) keeps the train-mode forward free of a
    device-to-host sync.

    Args:
        features: ``D`` (channels for images).
        event_dim: 1 for vectors ``(*, D)``, 3 for images ``(*, C, H, W)``.
    """

    _sampling = False  # set by Flow while it samples: the inputs are draws, not data

    def __init__(self, features: int, *, event_dim: int = 1) -> None:
        super().__init__()
        d = check_positive_int("ActNorm", "features", features)
        if event_dim not in (1, 3):
            raise ValueError(f"ActNorm: event_dim must be 1 or 3, got {shown(event_dim)}")
        self.event_dim = event_dim
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.register_buffer("initialized", torch.tensor(False))
        self._needs_init = True

    @property
    def batch_coupled(self) -> bool:
        return self.training and self._needs_init

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        flag = state_dict.get(prefix + "initialized")
        if flag is not None:
            self._needs_init = not bool(flag)

    @torch.no_grad()
    def mark_initialized(self) -> None:
        """Keep the current ``μ, s`` (no data-dependent init from now on): for a flow trained
        without data, by :func:`nfkit.fit_vi`, whose trained values a later train-mode forward
        would otherwise overwrite."""
        self.initialized.fill_(True)
        self._needs_init = False

    @torch.no_grad()
    def _initialize(self, x: Tensor, inverse: bool = False) -> None:
        """``μ, s`` from the batch ``x`` so that the output starts standardized: ``μ = mean``,
        ``s = log std`` for the forward; for data through the inverse (``x · e^s + μ``),
        ``s = -log std``, ``μ = -mean / std``."""
        dims = _reduce_dims(x, self.event_dim)
        mean = x.mean(dims)
        per_feature = x.numel() // x.shape[-self.event_dim]  # (N·H·W values of a channel)
        std = x.std(dims, unbiased=False) if per_feature > 1 else torch.ones_like(self.loc)
        # A feature with no spread in this batch (one value, or a constant column, whose std
        # may round to a tiny non-zero) keeps the scale 1: any floor would fix its scale for
        # good at that floor, and later rows off the constant would score -1e11. Any other
        # spread, however small in the data's units, is standardized.
        flat = (x.amax(dims) == x.amin(dims)) | (std == 0)
        log_std = torch.log(std.masked_fill(flat, 1.0))
        if inverse:
            self.loc.copy_(-mean * torch.exp(-log_std))
            self.log_scale.copy_(-log_std)
        else:
            self.loc.copy_(mean)
            self.log_scale.copy_(log_std)
        self.initialized.fill_(True)
        self._needs_init = False

    def _ladj(self, x: Tensor) -> Tensor:
        count = 1 if self.event_dim == 1 else x.shape[-1] * x.shape[-2]
        return (self.log_scale.sum() * count).expand(x.shape[: x.dim() - self.event_dim])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("ActNorm", x, -self.event_dim, self.loc.shape[0])
        if self.training and self._needs_init and not self._sampling and x.numel() > 0:
            self._initialize(x)  # (not from an empty batch, nor from a flow's draws)
        loc, log_scale = (
            _feature_view(self.loc, self.event_dim),
            _feature_view(self.log_scale, self.event_dim),
        )
        return (x - loc) * torch.exp(-log_scale), -self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("ActNorm", z, -self.event_dim, self.loc.shape[0], "z")
        if self.training and self._needs_init and not self._sampling and z.numel() > 0:
            self._initialize(z, inverse=True)  # inside an Inverse the data arrive here
        loc, log_scale = (
            _feature_view(self.loc, self.event_dim),
            _feature_view(self.log_scale, self.event_dim),
        )
        return z * torch.exp(log_scale) + loc, self._ladj(z)


def _moments(rows: Tensor, synced: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and count of ``rows (n, D)``; with ``synced``, of every process's
    rows together (two differentiable all-reduces: the sums with the count, then the squared
    deviations from the global mean)."""
    count = torch.full((1,), rows.shape[0], dtype=rows.dtype, device=rows.device)
    if not synced:
        return rows.mean(0), rows.var(0, unbiased=False), count[0]
    from torch.distributed.nn.functional import all_reduce

    sums = all_reduce(torch.cat([rows.sum(0), count]))
    n = sums[-1]
    mean = sums[:-1] / n
    return mean, all_reduce((rows - mean).square().sum(0)) / n, n.detach()


class BatchNorm(Transform):
    r"""Batch normalization as a bijection (Dinh et al. 2016, RealNVP; Papamakarios et al. 2017).

    ``z = (x - m) / sqrt(v + ε) · exp(γ) + β``; ``ladj = Σ [γ - ½ log(v + ε)]``. In train mode
    ``(m, v)`` are the batch statistics (over all batch dims) and the running averages are updated;
    in eval mode they are the running averages, and the layer is an exact bijection with an exact
    inverse. ``inverse`` always uses the running averages.
    """

    outline_settings = ("eps",)

    def __init__(self, features: int, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        d = check_positive_int("BatchNorm", "features", features)
        # momentum in (0, 1] (a running average); eps >= 0 (ε > 0 keeps a constant column finite)
        if not check_number("BatchNorm", "momentum", momentum, 0.0) <= 1:
            raise ValueError(f"BatchNorm: momentum must lie in (0, 1], got {shown(momentum)}")
        self.momentum = float(momentum)
        self.eps = check_number("BatchNorm", "eps", eps, 0.0, inclusive=True)
        self.log_gamma = nn.Parameter(torch.zeros(d))
        self.beta = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    synced: bool = False
    """Set by :func:`nfkit.fit` for a distributed run (``torchrun``): the batch statistics are
    those of the global batch, all-reduced over the processes (differentiably), so the run
    matches one process on the same batches, and every process keeps the same running
    averages."""

    @property
    def batch_coupled(self) -> bool:
        return self.training

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("BatchNorm", x, -1, self.beta.shape[0])
        if self.training and x.numel() > 0:  # an empty batch has no statistics to use
            flat = x.reshape(-1, x.shape[-1])
            if flat.shape[0] < 2 and not self.synced:  # one row's variance is 0: a spurious
                raise ValueError(  # density, a wrecked running average
                    "BatchNorm: a train-mode batch needs at least 2 rows (its statistics), got 1; "
                    "call .eval() to use the running statistics"
                )
            mean, var, n = _moments(flat, self.synced)
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)
        z = (x - mean) * torch.exp(log_scale) + self.beta
        return z, log_scale.sum().expand(x.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_size("BatchNorm", z, -1, self.beta.shape[0], "z")
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, (-log_scale.sum()).expand(z.shape[:-1])
