r"""Figures (PNG via matplotlib's Agg canvas; matplotlib is imported inside the functions).

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (no global figure
state, no GUI backend), writes it to ``path`` as PNG when a path is given, and returns it.

- :func:`density`: the model's density as a heat-map with the data on top, next to samples.
- :func:`samples`: samples against data (scatter for D = 2, :func:`corner` for D > 2).
- :func:`corner`: for D > 2, marginal histograms and pairwise scatter, data vs samples.
- :func:`history`: training and validation loss against the step.
- :func:`coverage`: a posterior's expected coverage against the credibility level, and its
  simulation-based-calibration rank histograms (:func:`nfkit.metrics.coverage`).
- :func:`layers`: base samples (and a grid) pushed through the inverse of the flow's layers one
  at a time: how a Gaussian is reshaped into the target, transform after transform.

Install the extra: ``pip install "nfkit[plot]"``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from nfkit._checks import Interval, as_ints, check_positive_int, real, shown
from nfkit.core import Compose, Flow, dtype_device
from nfkit.io import atomic_write
from nfkit.models.dequantized import DequantizedFlow
from nfkit.transforms.elementwise import Affine

__all__ = ["density", "samples", "corner", "history", "layers", "coverage"]

_DATA = "#555555"
_MODEL = "#d95f02"
_F = TypeVar("_F", bound=Callable[..., Any])


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("nf.plot needs matplotlib: pip install 'nfkit[plot]'") from None
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def figure_format(path: str | os.PathLike[str]) -> str:
    """The format a figure at ``path`` is written in, from its suffix (none: ``"png"``); a
    suffix matplotlib does not write is a one-line ``ValueError`` (checked before any work by
    callers that draw samples first)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix in ("", "png"):
        return "png"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise ImportError("nf.plot needs matplotlib: pip install 'nfkit[plot]'") from None
    formats = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"nf.plot: cannot write a figure as {os.fspath(path)!r}: unknown figure format "
            f"'.{suffix}'; use one of {', '.join('.' + f for f in sorted(formats))}"
        )
    return suffix


def _finish(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    """Write the figure atomically in the format its suffix names (``.png``, ``.pdf``, ``.svg``,
    ... as matplotlib supports; no suffix: PNG). A PNG is reduced to a 256-colour palette when
    Pillow is there (files ~3x smaller)."""
    if path is None:
        return fig
    suffix = figure_format(path)
    if suffix != "png":
        atomic_write(path, lambda f: fig.savefig(f, format=suffix, dpi=fig.dpi))
        return fig
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
        return fig
    buffer.seek(0)
    with Image.open(buffer) as image:
        small = image.convert("RGB").quantize(colors=256)
    atomic_write(path, lambda f: small.save(f, format="PNG", optimize=True))
    return fig


def _np(x: Tensor) -> Any:
    return x.detach().double().cpu().numpy()


def _data(data: Any, where: str, features: int, flow: Flow | None = None) -> Tensor | None:
    """The data to draw beside the model: ``(n, features)`` float64, or None. A DataFrame's
    columns are picked by the model's column names when it knows them (not by position)."""
    if data is None:
        return None
    from nfkit.tables import as_tensor

    names = _model_columns(flow) if flow is not None else None
    if names and hasattr(data, "columns") and hasattr(data, "to_numpy"):
        has = set(data.columns)
        missing = [c for c in names if c not in has]
        if missing:
            raise ValueError(
                f"{where}: data has no column {', '.join(map(repr, missing))} of the model "
                f"(it models {', '.join(map(repr, names))})"
            )
        data = data[names]
    x = as_tensor(data, where, "data", dtype=torch.float64)
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(
            f"{where}: data must have shape (n, {features}) like the model, got {tuple(x.shape)}"
        )
    if len(x) == 0:
        raise ValueError(f"{where}: data has no rows")
    return x


def _subset(x: Tensor, k: int) -> Tensor:
    """At most ``k`` rows of ``x``, a seeded random subset (not the first rows: a sorted table's
    would be one end of it), drawn without touching the global RNG."""
    if len(x) <= k:
        return x
    generator = torch.Generator().manual_seed(0)
    return x[torch.randperm(len(x), generator=generator)[:k]]


def _in_eval_mode(fn: _F) -> _F:
    """Run a figure function with its flow in eval mode (BatchNorm's running statistics, an
    ActNorm's initialization and spectral-norm vectors left as they are; the eval-mode density
    drawn), each module's mode restored after."""

    @functools.wraps(fn)
    def wrapper(flow: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(flow, torch.nn.Module):
            return fn(flow, *args, **kwargs)
        modes = [(m, m.training) for m in flow.modules()]
        flow.eval()
        try:
            return fn(flow, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training

    return cast(_F, wrapper)


def _check_flow(where: str, flow: Any) -> Flow:
    if not isinstance(flow, Flow):
        raise TypeError(f"{where}: expected an nf.Flow, got {type(flow).__name__}")
    if len(flow.event_shape) != 1:
        raise ValueError(f"{where}: only vector flows, got event shape {tuple(flow.event_shape)}")
    return flow


def _context(flow: Flow, context: Any, where: str) -> Tensor | None:
    """One context vector ``(C,)`` (or one row ``(1, C)``); a batch of contexts is refused,
    and the flow's own checks run (given when needed, its width, finite values, a padded
    set's whole absent elements): ``layers`` calls the base and the layers directly."""
    c = None if context is None else torch.as_tensor(context, **_like(flow))
    if c is not None and c.dim() > 1 and c.shape[:-1].numel() != 1:
        raise ValueError(
            f"{where}: context must be one vector (C,), got a batch of shape {tuple(c.shape)}"
        )
    flow._sample_shape(where, (), c)
    return c


def _check_bounds(where: str, bounds: Any, d: int) -> list[tuple[float, float]]:
    """``bounds`` as ``d`` pairs ``(lo, hi)`` of finite numbers with ``lo < hi``."""
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in bounds]
    except (TypeError, ValueError):
        pairs = None
    if (
        pairs is None
        or len(pairs) != d
        or not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in pairs)
    ):
        raise ValueError(
            f"{where}: bounds must be {d} pairs (lo, hi) of finite numbers with lo < hi, "
            f"got {shown(bounds)}"
        )
    return pairs


def _like(flow: Flow) -> dict[str, Any]:
    dtype, device = dtype_device(flow)
    return {"dtype": dtype, "device": device}


@contextlib.contextmanager
def _forked_rng(flow: Flow, seed: int | None = None) -> Iterator[None]:
    """torch's CPU generator and the flow's CUDA device's (no other: ``torch.manual_seed``
    would reseed every GPU's) in a fork, seeded with ``seed`` when given: the figures leave
    the global state as it was (the same state draws the same figure)."""
    device = _like(flow)["device"]
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def _samples(flow: Flow, n: int, context: Tensor | None) -> Tensor:
    """``n`` draws (per context) as float64 rows, in a fork of torch's generators."""
    with _forked_rng(flow):
        x = flow.sample(n, context)
    return x.reshape(-1, flow.event_shape[0]).double().cpu()


def _bounds(
    points: Tensor, pad: float = 0.15, support: Interval = real, fallback: Tensor | None = None
) -> list[tuple[float, float]]:
    """The plotting box: the points' 0.5–99.5% range, padded, per column (a column without
    spread, one row or a constant: the ``fallback`` points' range); a circle's whole support, so
    the grid never leaves it, and inside a bounded column's support, just inside its ends."""
    lo = torch.quantile(points, 0.005, dim=0)
    hi = torch.quantile(points, 0.995, dim=0)
    if fallback is not None and bool((hi <= lo).any()):
        flat = hi <= lo
        lo = torch.where(flat, torch.quantile(fallback, 0.005, dim=0), lo)
        hi = torch.where(flat, torch.quantile(fallback, 0.995, dim=0), hi)
    width = torch.where(hi > lo, hi - lo, lo.abs().clamp_min(1.0))  # still none: ±its size
    box = []
    for i, (a, b) in enumerate(zip((lo - pad * width).tolist(), (hi + pad * width).tolist())):
        s = support.at(i)
        low, high = float(s.low), float(s.high)  # type: ignore[arg-type]
        if s.is_circle:
            box.append((low, high))
            continue
        span = high - low if math.isfinite(high - low) else 0.0
        if low > -math.inf:
            low = low + 1e-6 * max(1.0, abs(low), span)
            a = max(a, low)
        if high < math.inf:
            high = high - 1e-6 * max(1.0, abs(high), span)
            b = min(b, high)
        if a >= b:  # the points lie outside the support: beside its end(s) instead
            a, b = (low, min(high, low + 1.0)) if low > -math.inf else (high - 1.0, high)
        box.append((a, b))
    return box


def _model_columns(flow: Flow) -> list[str] | None:
    """The names of the model's modelled columns (its given ones left out), when it knows them."""
    config = getattr(flow, "config", None) or {}
    if not config.get("columns"):
        return None
    given = set(config.get("given") or ())
    return [c for c in config["columns"] if c not in given]


def _labels(flow: Flow, columns: Sequence[str] | None, d: int, where: str, k: int) -> list[str]:
    """The axis labels: ``columns`` (at least the ``k`` shown), the model's names or ``x0, …``."""
    if columns is not None:
        if isinstance(columns, str) or len(columns) < k:
            raise ValueError(
                f"{where}: columns must name the {k} shown coordinates, got {shown(columns)}"
            )
        return [str(c) for c in columns]
    return _model_columns(flow) or [f"x{i}" for i in range(d)]


def _log_density(flow: Flow) -> Any:
    """The log-density drawn on a grid: ``log_prob``, or for a flow with integer columns the
    density of its dequantized rows ``v + u`` (defined between the integers too)."""
    return flow.dequantized_log_prob if isinstance(flow, DequantizedFlow) else flow.log_prob


def _discrete_columns(flow: Flow) -> list[int]:
    """The integer columns of a :class:`DequantizedFlow` (none for another flow)."""
    return [int(j) for j in flow.discrete_columns] if isinstance(flow, DequantizedFlow) else []


def _density_name(flow: Flow) -> str:
    return "p(v + u)" if isinstance(flow, DequantizedFlow) else "p(x)"


def _cell_edges(values: Tensor, box: tuple[float, float], offset: float = 0.0) -> Tensor:
    """The edges of one bin per integer ``v`` of ``values`` inside ``box``, ``[v + offset,
    v + 1 + offset)`` (``offset = 0``: the cells of ``p(v + u)``; ``-0.5``: bins centred on the
    integers), the lowest one included; a whole number of integers per bin beyond 60."""
    low = math.floor(max(box[0], float(values.min())))
    high = math.floor(min(box[1], float(values.max())))
    if low > high:  # no value inside the box (bounds= elsewhere): the box's own cells
        low, high = math.floor(box[0]), math.floor(box[1])
    step = max(1, math.ceil((high - low + 1) / 60))
    return torch.arange(low + offset, high + 1 + offset + step, step, dtype=torch.float64)


def _hist(ax: Any, values: Tensor, edges: Tensor, **style: Any) -> None:
    """A histogram of ``values`` as a density: each point weighs ``1 / (n · bin width)``, so a
    bar is the true density (not renormalized over the window, which would hide the mass
    outside it)."""
    import numpy as np

    v = _np(values)
    width = float(edges[1] - edges[0])
    ax.hist(v, bins=_np(edges), weights=np.full(len(v), 1.0 / (len(v) * width)), **style)


@_in_eval_mode
def density(
    flow: Flow,
    data: Any = None,
    *,
    context: Any = None,
    n: int = 2000,
    bounds: Sequence[tuple[float, float]] | None = None,
    resolution: int = 200,
    columns: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Any:
    r"""Heat-map of ``p(x)`` on a grid with the data on top, and ``n`` samples next to the data.

    For D = 1 the density is a curve over histograms of the data and the samples (an integer
    column's bars are its cells ``[v, v + 1)``). For D > 2 use :func:`corner`.

    Args:
        flow: A flow over ``D ∈ {1, 2}`` (conditional: pass one ``context`` vector ``(C,)``).
        data: Optional data ``(m, D)`` (Tensor, array or DataFrame), drawn in grey.
        n: Number of model samples.
        bounds: ``[(lo, hi)] * D`` of the grid; default from the data (or samples), padded.
        resolution: Grid points per axis.
        columns: Axis labels (default: the model's column names, or ``x0, x1``).
        path: Write the figure there (PNG, or the format of the suffix: ``.pdf``, ``.svg``, ...).
        title: Figure title.
    """
    where = "nf.plot.density"
    flow = _check_flow(where, flow)
    n = check_positive_int(where, "n", n)
    resolution = check_positive_int(where, "resolution", resolution, minimum=2)
    d = flow.event_shape[0]
    if d > 2:
        raise ValueError(f"{where}: needs D <= 2, got D = {d}; use nf.plot.corner")
    ctx = _context(flow, context, where)
    box = _check_bounds(where, bounds, d) if bounds is not None else None
    labels = _labels(flow, columns, d, where, d)
    x = _data(data, where, d, flow)
    s = _samples(flow, n, ctx)
    if box is None:
        ref = x if x is not None else s
        box = _bounds(ref, support=flow.transform.domain, fallback=s)
    like = _like(flow)
    if d == 1:
        fig, ax = _figure(1, 1, (5.5, 3.8))
        ax = ax[0, 0]
        grid = torch.linspace(box[0][0], box[0][1], resolution * 2, dtype=torch.float64)
        with torch.no_grad():
            dens = _log_density(flow)(grid[:, None].to(**like), ctx).exp().double().cpu()
        if _discrete_columns(flow):  # the bars of p(v + u): [v, v + 1) holds v's mass
            both = s[:, 0] if x is None else torch.cat([x[:, 0], s[:, 0]])
            edges = _cell_edges(both, box[0])
        else:
            edges = torch.linspace(box[0][0], box[0][1], 61, dtype=torch.float64)
        if x is not None:
            _hist(ax, x[:, 0], edges, color=_DATA, alpha=0.4, label="data")
        _hist(ax, s[:, 0], edges, histtype="step", color=_MODEL, lw=1, label=f"{n} samples")
        ax.plot(_np(grid), _np(dens), color=_MODEL, lw=2, label=f"model {_density_name(flow)}")
        ax.set_xlim(min(box[0][0], float(edges[0])), max(box[0][1], float(edges[-1])))
        ax.set_xlabel(labels[0])
        ax.legend(frameon=False)
    else:
        fig, axes = _figure(1, 2, (10, 4.6))
        gx = torch.linspace(box[0][0], box[0][1], resolution, dtype=torch.float64)
        gy = torch.linspace(box[1][0], box[1][1], resolution, dtype=torch.float64)
        xx, yy = torch.meshgrid(gx, gy, indexing="xy")
        pts = torch.stack([xx, yy], -1).reshape(-1, 2)
        with torch.no_grad():
            lp = torch.cat([_log_density(flow)(c.to(**like), ctx) for c in pts.split(16384)])
        dens = lp.double().cpu().exp().reshape(resolution, resolution)
        ax = axes[0, 0]
        ax.imshow(
            _np(dens), origin="lower", extent=(*box[0], *box[1]), aspect="auto", cmap="magma"
        )
        if x is not None:
            k = _subset(x, 3000)
            ax.scatter(*_np(k).T, s=1.5, c="white", alpha=0.35, linewidths=0)
        ax.set_xlim(*box[0])  # the image's box: data outside it no longer widen the axes
        ax.set_ylim(*box[1])
        ax.set_title(
            f"model density {_density_name(flow)}" + (" with data" if x is not None else "")
        )
        ax2 = axes[0, 1]
        if x is not None:
            k = _subset(x, n)
            ax2.scatter(*_np(k).T, s=2, c=_DATA, alpha=0.5, linewidths=0, label="data")
        ax2.scatter(*_np(s).T, s=2, c=_MODEL, alpha=0.5, linewidths=0, label="samples")
        ax2.set_xlim(*box[0])
        ax2.set_ylim(*box[1])
        ax2.set_title(f"{n} samples" + (" vs data" if x is not None else ""))
        ax2.legend(frameon=False, markerscale=5, loc="upper right")
        for a in (ax, ax2):
            a.set_xlabel(labels[0])
            a.set_ylabel(labels[1])
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


@_in_eval_mode
def corner(
    flow: Flow,
    data: Any = None,
    *,
    context: Any = None,
    n: int = 2000,
    columns: Sequence[str] | None = None,
    max_dims: int = 6,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Any:
    r"""Corner plot: marginal histograms (diagonal) and pairwise scatter, data vs ``n`` samples.

    Shows the first ``max_dims`` coordinates. Works for any D ≥ 1. An angle's axis spans its
    whole circle; a bounded column's stays inside its support.
    """
    where = "nf.plot.corner"
    flow = _check_flow(where, flow)
    n = check_positive_int(where, "n", n)
    d = flow.event_shape[0]
    k = min(d, check_positive_int(where, "max_dims", max_dims))
    ctx = _context(flow, context, where)
    labels = _labels(flow, columns, d, where, k)
    x = _data(data, where, d, flow)
    s = _samples(flow, n, ctx)
    box = _bounds(x if x is not None else s, support=flow.transform.domain, fallback=s)
    edges_of = {i: torch.linspace(*box[i], 41, dtype=torch.float64) for i in range(k)}
    for i in _discrete_columns(flow):  # bins centred on the integers, the ends included
        if i < k:
            both = s[:, i] if x is None else torch.cat([x[:, i], s[:, i]])
            edges_of[i] = _cell_edges(both, box[i], -0.5)
            box[i] = (float(edges_of[i][0]), float(edges_of[i][-1]))
    size = max(4.0, 1.9 * k)
    fig, axes = _figure(k, k, (size, size))
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                edges = edges_of[i]
                if x is not None:
                    _hist(ax, x[:, i], edges, color=_DATA, alpha=0.5)
                _hist(ax, s[:, i], edges, histtype="step", color=_MODEL, lw=1.5)
                ax.set_yticks([])
            else:
                if x is not None:
                    xs = _subset(x, n)
                    ax.scatter(_np(xs[:, j]), _np(xs[:, i]), s=1, c=_DATA, alpha=0.4, linewidths=0)
                ax.scatter(_np(s[:, j]), _np(s[:, i]), s=1, c=_MODEL, alpha=0.4, linewidths=0)
                ax.set_ylim(*box[i])
            ax.set_xlim(*box[j])
            if i == k - 1:
                ax.set_xlabel(labels[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
            elif j > 0:
                ax.set_yticklabels([])
    fig.suptitle(title or ("data (grey) vs samples (orange)" if x is not None else "samples"))
    return _finish(fig, path)


def samples(
    flow: Flow,
    data: Any = None,
    *,
    context: Any = None,
    n: int = 2000,
    columns: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Samples vs data: for D = 1 their histogram beside the model's curve and the data's, for
    D = 2 a scatter (the right panel of :func:`density`), else :func:`corner`."""
    flow = _check_flow("nf.plot.samples", flow)
    if flow.event_shape[0] > 2:
        return corner(flow, data, context=context, n=n, columns=columns, path=path)
    return density(flow, data, context=context, n=n, columns=columns, path=path)


def history(
    h: Any, path: str | os.PathLike[str] | None = None, *, title: str | None = None
) -> Any:
    r"""Training loss per step (light: raw; dark: moving average) and validation loss per evaluation.

    Args:
        h: A :class:`~nfkit.train.History`.
        path: Write the figure there (PNG, or the format of the suffix: ``.pdf``, ``.svg``, ...).
    """
    train = torch.tensor(getattr(h, "train_loss", []), dtype=torch.float64)
    fig, ax = _figure(1, 1, (6.5, 4))
    ax = ax[0, 0]
    if len(train):
        steps = torch.arange(1, len(train) + 1)
        ax.plot(steps.numpy(), train.numpy(), color="#9ecae1", lw=0.8, label="train (per step)")
        w = max(1, len(train) // 50)
        if w > 1:
            kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
            smooth = torch.nn.functional.conv1d(train[None, None], kernel)[0, 0]
            ax.plot(
                steps[w - 1 :].numpy(),
                smooth.numpy(),
                color="#08519c",
                lw=1.5,
                label="train (avg)",
            )
        lo, hi = torch.quantile(
            train[len(train) // 10 :], torch.tensor([0.0, 0.98], dtype=torch.float64)
        )
        vals = torch.tensor(h.val_loss, dtype=torch.float64) if h.val_loss else train[:0]
        lo = min(float(lo), float(vals.min())) if len(vals) else float(lo)
        hi = max(float(hi), float(vals.max())) if len(vals) else float(hi)
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    if getattr(h, "val_loss", None):
        ax.plot(
            h.val_step[: len(h.val_loss)], h.val_loss, "o-", color=_MODEL, ms=3, label="validation"
        )
        if h.best_step is not None and h.best_val is not None:
            ax.axvline(h.best_step, color=_MODEL, ls=":", lw=1)
            ax.annotate(
                f"best {h.best_val:.3f} @ {h.best_step}",
                (h.best_step, h.best_val),
                textcoords="offset points",
                xytext=(5, 10),
                fontsize=8,
            )
    ax.set_xlabel("step")
    labels = {"flow_matching": "loss (flow matching)", "reverse_kl": "loss (-ELBO, nats)"}
    ax.set_ylabel(labels.get(getattr(h, "objective", "likelihood"), "loss (NLL, nats)"))
    if ax.get_legend_handles_labels()[1]:  # an empty history draws nothing to label
        ax.legend(frameon=False)
    ax.set_title(title or "training history")
    return _finish(fig, path)


@torch.no_grad()
def _base_name(flow: Flow) -> str:
    """``N(0, I)`` for the standard normal base, else the base's class and its support."""
    name = type(flow.base).__name__
    if name == "StandardNormal":
        return "N(0, I)"
    if name == "Product":  # e.g. a uniform on the angles times a normal on the rest
        name = " × ".join(type(part).__name__ for part in flow.base.parts)  # type: ignore[union-attr]
    support = flow.transform.codomain
    return name if support.is_real else f"{name} on {support}"


@_in_eval_mode
def layers(
    flow: Flow,
    *,
    context: Any = None,
    n: int = 2000,
    max_panels: int = 8,
    dims: tuple[int, int] = (0, 1),
    seed: int | None = 0,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    r"""A Gaussian reshaped into the target, layer by layer.

    With ``T = T_K ∘ … ∘ T_1`` (data → latent), samples ``z ~ base`` and a grid of lines are
    pushed through ``T_K⁻¹``, then ``T_{K-1}⁻¹``, …, ``T_1⁻¹``; panel ``k`` shows the points after
    ``k`` inverse layers (the last panel is the model's samples). Points are coloured by their
    angle in the base, so one can follow them. At most ``max_panels`` panels (evenly spaced
    layers; the first and last always shown). Coordinates ``dims`` are drawn. ``seed`` fixes the
    base samples (None: drawn from torch's current state); the global RNG is left as it was.
    """
    where = "nf.plot.layers"
    flow = _check_flow(where, flow)
    n = check_positive_int(where, "n", n)
    max_panels = check_positive_int(where, "max_panels", max_panels, minimum=2)  # first, last
    d = flow.event_shape[0]
    pair = as_ints(dims)
    if d >= 2 and (pair is None or len(pair) != 2 or len(set(pair)) != 2
                   or not all(0 <= v < d for v in pair)):  # fmt: skip
        raise ValueError(
            f"{where}: dims must be two different coordinates in 0 … {d - 1}, got {shown(dims)}"
        )
    i, j = pair if d >= 2 else (0, 0)  # type: ignore[misc]
    parts = list(flow.transform) if isinstance(flow.transform, Compose) else [flow.transform]
    ctx = flow._embed(_context(flow, context, where))
    like = _like(flow)
    with _forked_rng(flow, seed):
        z = flow.base.sample((n,), ctx)
    hue = torch.atan2(z[:, j], z[:, i]) if d >= 2 else z[:, 0]
    # Grid lines in the base (2-D only): 9 lines each way over [-2.5, 2.5], or over the base's
    # support when it is bounded (a torus), just inside its ends.
    lines = None
    if d == 2:
        support = flow.transform.codomain.at(0)
        lo, hi = -2.5, 2.5
        if math.isfinite(support.low) and math.isfinite(support.high):
            inset = 0.01 * (support.high - support.low)
            lo, hi = support.low + inset, support.high - inset
        t = torch.linspace(lo, hi, 200, dtype=torch.float64)
        ticks = torch.linspace(lo, hi, 9, dtype=torch.float64)
        horizontal = torch.stack([t.expand(9, -1), ticks[:, None].expand(-1, 200)], -1)
        lines = torch.cat([horizontal, horizontal.flip(-1)]).reshape(-1, 2).to(**like)
    states = [(z, lines)]
    names = ["base"]
    for layer in reversed(parts):
        with torch.no_grad():  # figures need values only (layers that differentiate inside
            z, _ = layer.inverse(z, ctx)  # switch autograd back on themselves)
            if lines is not None:
                lines, _ = layer.inverse(lines, ctx)
        states.append((z, lines))
        label = type(layer).__name__
        if isinstance(layer, Affine) and len(names) == len(parts):
            label = "Affine (standardization)"
        names.append(f"{label}⁻¹")
    total = len(states)
    if total > max_panels:
        keep = sorted({round(k * (total - 1) / (max_panels - 1)) for k in range(max_panels)})
    else:
        keep = list(range(total))
    cols = min(4, len(keep)) if len(keep) != 6 else 3
    rows = math.ceil(len(keep) / cols)
    fig, axes = _figure(rows, cols, (2.8 * cols, 2.8 * rows))
    for a in axes.flat:
        a.set_axis_off()
    colours = _np(hue)
    for a, k in zip(axes.flat, keep):
        pts, grid = states[k]
        pts = pts.double().cpu()
        a.set_axis_on()
        if grid is not None:
            gl = grid.double().cpu().reshape(18, 200, 2)
            support = flow.transform.codomain.at(0)
            if math.isfinite(support.low) and math.isfinite(support.high):
                # on a torus a line that wraps jumps across the panel: break it there
                jump = (gl.diff(dim=1).abs() > (support.high - support.low) / 2).any(-1)
                gl[:, 1:][jump] = math.nan
            for line in gl:
                a.plot(*_np(line).T, color="#bbbbbb", lw=0.5)
        if d >= 2:
            a.scatter(_np(pts[:, i]), _np(pts[:, j]), c=colours, cmap="hsv", s=1.5, linewidths=0)
        else:
            a.hist(_np(pts[:, 0]), bins=60, color=_MODEL, alpha=0.7)
        lim = _bounds(pts[:, [i, j]] if d >= 2 else pts[:, :1], pad=0.1)
        a.set_xlim(*lim[0])
        if d >= 2:
            a.set_ylim(*lim[1])
        a.set_title(f"{k}: {names[k]}" if k else f"base {_base_name(flow)}", fontsize=9)
        a.tick_params(labelsize=7)
    fig.suptitle("base samples through the inverse layers (last panel: model samples)")
    return _finish(fig, path)


def coverage(
    result: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    r"""A posterior's calibration (:class:`nfkit.metrics.Coverage`) in two panels.

    Left: the empirical coverage of the highest-density regions against their level, with the
    diagonal (calibrated) and its simultaneous 97.5% band (``result.band``; the other 2.5% of
    :attr:`~nfkit.metrics.Coverage.calibrated`'s 5% goes to the ranks); a curve below the
    diagonal is an overconfident posterior, above it a conservative one. Right: for each
    feature (up to eight), the histogram of the simulation-based-calibration ranks as fractions
    of the draws, against the uniform density 1 (a ∪ shape: too narrow; ∩: too wide; a slope:
    biased).

    Args:
        result: What :func:`nfkit.metrics.coverage` returned.
        path: Write the figure there (PNG, or the format of the suffix).
        columns: Names of the features (default ``θ1, θ2, …``).
    """
    import numpy as np

    fig, axes = _figure(1, 2, (9, 3.8))
    left, right = axes[0]
    levels = np.concatenate([[0.0], result.levels, [1.0]])
    found = np.concatenate([[0.0], result.coverage, [1.0]])
    left.fill_between(
        [0, 1], [-result.band, 1 - result.band], [result.band, 1 + result.band],
        color="#cccccc", alpha=0.6, lw=0, label="97.5% band",
    )  # fmt: skip
    left.plot([0, 1], [0, 1], color=_DATA, lw=1, ls=":", label="calibrated")
    left.plot(levels, found, "o-", color=_MODEL, ms=3, label="flow")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_xlabel("credibility level")
    left.set_ylabel("expected coverage")
    left.set_aspect("equal")
    left.legend(frameon=False, fontsize=8, loc="upper left")
    ranks = np.asarray(result.marginal_rank, dtype=np.int64)  # each in 0 … S: S + 1 values
    values = int(result.samples) + 1
    d = ranks.shape[1]
    names = list(columns) if columns is not None else [f"θ{j + 1}" for j in range(d)]
    bins = min(values, max(5, min(20, len(ranks) // 20)))
    # bins on the integer ranks, each divided by how many rank values it holds: a calibrated
    # posterior's uniform ranks are density 1 in every bin (equal bins of r / S were not)
    cuts = np.round(np.linspace(0, values, bins + 1)).astype(np.int64)
    held = np.diff(cuts)
    edges = cuts / values
    for j in range(min(d, 8)):
        counts = np.histogram(ranks[:, j], bins=cuts - 0.5)[0]
        right.stairs(counts * values / (len(ranks) * held), edges, lw=1.2, label=names[j])
    right.axhline(1.0, color=_DATA, lw=1, ls=":")
    right.set_xlim(0, 1)
    right.set_xlabel("rank of the true value among the draws")
    right.set_ylabel("density")
    right.legend(frameon=False, fontsize=8, loc="upper center")
    fig.suptitle(title or f"posterior calibration ({len(ranks)} pairs, {result.samples} draws)")
    return _finish(fig, path)
