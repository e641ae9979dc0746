r"""nfkit beside zuko, nflows and normflows: same architectures, same data, same process.

Usage::

    python benchmarks/peers.py                       # every cell, eager, writes benchmarks/results/
    python benchmarks/peers.py --quick               # fewer rounds/steps (a smoke run, ~2 min)
    python benchmarks/peers.py --cells moons-MAF,digits-NSF --compile --device cpu
    python benchmarks/peers.py --cells synth16-MAF --hidden 64,64 --transforms 3 --batch 256

Cells are ``<data>-<model>``: data ∈ {moons (D=2), digits (D=64), synth256 (D=256), or any
``synth<D>``: a 16-dim latent through a random tanh layer, D ≥ 2}, model ∈ {MAF, NSF, RealNVP,
NSFc (coupling NSF)}. Every library gets 5 transforms, conditioner networks with hidden widths
(128, 128) and ReLU (``--transforms``, ``--hidden``), splines with 8 bins on [-5, 5] and linear
(identity) tails; the script prints each library's parameter count (they must match) and fails
loudly otherwise. ``--libs`` picks the libraries (any subset; the floor does not need nfkit);
the Markdown marks the others "not run". Results go to ``--out`` (default
``benchmarks/results/``) as ``peers-<full|quick>-<cpu|cuda>.md`` and ``.json``; a results file
already there is kept and the run written as ``...-2`` (``-3``, ...), so quoting a stored run's
command and running it never replaces that run's figures.

The peers' flows (``build``): zuko's own factories for MAF and NSF, and zuko's coupling layers
(``GeneralCouplingTransform``, as in its ``NICE``/``RealNVP``) with nfkit's masks for RealNVP
and coupling NSF (zuko's ``mask`` marks the conditioning features, nfkit's the transformed
ones: zuko's own factories alternate the mirror image, and for odd ``D`` condition on one
feature more; stored runs before this change used them, same parameter count at even ``D``);
nflows' MADEs take ``len(hidden) - 1`` blocks of one width (``--hidden`` with unequal widths
is refused when they run MAF or NSF); nflows' transforms (its MAF scales by
``softplus(ŝ) + 1e-3``, its affine coupling by the gate ``σ(ŝ + 2) + 1e-3``, which cannot expand,
so its RealNVP's density never exceeds the base's peak); normflows' own ``AffineCouplingBlock``
(exp scale, split by halves where nfkit alternates features, as many features transformed per
layer as nfkit's) for RealNVP, and nflows-style transforms from normflows put on the density
side (``Swap``) for MAF, NSF and coupling NSF. normflows' ``MaskedAffineAutoregressive`` run that
way computes ``z = (σ(ŝ + 2) + 1e-3) x + shift`` on the density side: it can only contract,
every log-det is at most ``D T log 1.001``, and its test log-likelihood is capped near the
base's peak (moons: −2.39 after 500 steps against a bound of −1.83), so normflows' MAF
test log-likelihood is not comparable with the other libraries' (its timings are: the gate
costs about what an expanding scale would). Results files written before
normflows' RealNVP was added (all stored ``peers-*`` results) have no normflows on RealNVP
cells.

Metrics (float32, batch 512 unless ``--batch``, Adam lr 1e-3):

* ``step``: median training-step time (forward, backward, Adam) over rounds; the libraries and the
  *floor* are interleaved round by round (the machine may be shared: only same-round ratios are
  meaningful). The floor is forward + backward of the same networks, including the input
  gradients of every network after the first: plain ``F.linear`` chains with the same shapes
  (no masks, no activations, no transformer, no optimizer step), where every chain after the
  first takes an input that requires grad, as a flow's transforms after the first do (their
  inputs depend on earlier transforms' parameters), timed in the same rounds. The libraries'
  steps include Adam, activations and the transformer, so 1.0x is out of reach by
  construction. The ``MLP+Adam`` column times the networks' own share of a step: the same dense
  networks (with the same input gradients) as a plain PyTorch MLP (ReLU in place between
  layers, one tensor per weight and bias), forward, backward and ``torch.optim.Adam``'s step, in
  the same rounds; a flow adds masks, its transformers and the log-density to this. Results
  stored before the floor took those input gradients (all stored ``peers-*`` results) used a
  floor and an ``MLP+Adam`` step without them: a smaller floor (4–9% in an A/B on moons,
  digits and synth256 MAF and digits RealNVP) and so higher ratios. A timed step takes the
  next of 8 batches drawn on the device beforehand (the same for every library), so no step
  times drawing data; stored results before session 37 drew and copied each batch inside the
  timed step (25–270 µs, 0.5–1.3% of a floor, the same for every library).
* ``log_prob``: rows/s of ``log_prob`` under ``no_grad`` on a batch of 4096.
* ``sample``: samples/s for 1000 samples; the sampling floor is the forward matmuls of the
  networks at that batch, ``D`` times per autoregressive layer (once per coupling layer). It
  is the issue's "D-pass floor", a reference rather than a bound: an inverse that passes only
  the rows each step needs (nfkit's) can beat it.
* ``memory``: CUDA: ``torch.cuda.max_memory_allocated`` over one training step. CPU: the growth of
  the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) over the first
  two training steps (activations, gradients, Adam's state) above the built model's, in a fresh
  subprocess per library with the run's torch thread count (torch's CPU allocator is invisible
  to ``tracemalloc``). The child trims glibc's heap (``malloc_trim(0)``) before resetting the
  peak, so that the step cannot reuse pages the data's freed NumPy temporaries left resident;
  stored results measured before the trim understate synth256 (MAF, nfkit: 4.9 MiB against
  39 MiB).
  ``--memory-only`` re-measures this column of an existing results file (``--results``).
* ``test_ll``: mean test log-likelihood (nats per row) after a fixed budget of steps, same seed,
  same data, same batches for every library; and for nfkit also after ``nf.fit`` when ``nf.fit``
  exists. That column is not like-for-like: ``nf.fit`` holds out a validation split, stops
  early, uses its own AdamW and cosine schedule and runs up to ``--fit`` steps (a different
  budget from the peers' fixed ``--steps``); only its batch is the run's (``--batch``).
* ``--compile``: nfkit's training step and ``log_prob`` under ``torch.compile`` (inductor), beside
  the eager figures; ``flow.transform`` is compiled and the boundary checks stay outside.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nfkit as nf
from nfkit.cli import _hidden as hidden_widths  # the CLI's --hidden parser: "64,64" → (64, 64)

LIBS = ("nfkit", "zuko", "nflows", "normflows")
MODELS = ("MAF", "NSF", "RealNVP", "NSFc")
DATA = {"moons": 2, "digits": 64, "synth256": 256}  # and any synth<D>, D >= 2
DEFAULT_CELLS = [f"{d}-{m}" for d in ("moons", "digits") for m in MODELS] + [
    "synth256-MAF",
    "synth256-NSF",
]
# The architecture and batch; --hidden, --transforms and --batch change them for a run.
HIDDEN = (128, 128)
TRANSFORMS = 5
BINS = 8
BOUND = 5.0
BATCH = 512


def configure(hidden: tuple[int, ...], transforms: int, batch: int) -> None:
    """Set the networks' hidden widths, the number of transforms and the batch for this run."""
    global HIDDEN, TRANSFORMS, BATCH
    if not hidden or min(hidden) < 1 or transforms < 1 or batch < 1:
        raise SystemExit(
            f"peers.py: need hidden widths, transforms and batch >= 1, got {hidden}, "
            f"{transforms}, {batch}"
        )
    HIDDEN, TRANSFORMS, BATCH = tuple(hidden), transforms, batch


def features(data: str) -> int:
    """``D`` of a data name: moons 2, digits 64, ``synth<D>`` D (0 when unknown)."""
    if data in DATA:
        return DATA[data]
    if data.startswith("synth") and data[5:].isdigit() and int(data[5:]) >= 2:
        return int(data[5:])
    return 0


# ----------------------------------------------------------------------------------------- data


def load_data(name: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Train/test float32 tensors, standardized with the training statistics."""
    rng = np.random.default_rng(seed)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(20_000, noise=0.05, random_state=seed)
    elif name == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().data + rng.uniform(size=(1797, 64))  # dequantized
    elif features(name) and name.startswith("synth"):
        # a 16-dim latent through a random tanh layer and squared sines, plus noise
        d = features(name)
        z = rng.standard_normal((15_000, 16))
        a = rng.standard_normal((16, d)) / 4
        x = np.tanh(z @ a) + 0.3 * np.sin(z @ rng.standard_normal((16, d))) ** 2
        x = x + 0.05 * rng.standard_normal(x.shape)
    else:
        raise ValueError(f"load_data: unknown data {name!r}")
    x = x[rng.permutation(len(x))]
    n_test = len(x) // 5
    train, test = x[n_test:], x[:n_test]
    mean, std = train.mean(0), train.std(0) + 1e-6
    as_t = lambda a: torch.as_tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return as_t(train), as_t(test)


# -------------------------------------------------------------------------------------- models


@dataclass
class Model:
    """A library's flow behind one interface."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    autoregressive: bool
    nets: list[tuple[int, ...]] = field(default_factory=list)  # layer widths of each network


class _Net(nn.Module):
    """A plain MLP conditioner that accepts (and ignores) a context, for nflows/normflows."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        widths = [n_in, *HIDDEN, n_out]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.ReLU()] if i else []
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def _alternating(d: int, i: int) -> Tensor:
    return (torch.arange(d) + i % 2) % 2 == 0  # True = transformed (nfkit's alternating_mask)


def _zuko_coupling(d: int, transforms: int, **kwargs: Any) -> nn.Module:
    """zuko's coupling flow (``zuko.flows.NICE``'s layers and base) with nfkit's masks: zuko's
    ``mask`` marks the features that condition, nfkit's the transformed ones, so zuko's own
    alternation is the mirror image of nfkit's (and conditions on more features for odd D)."""
    from zuko.distributions import DiagNormal
    from zuko.flows.core import Flow, UnconditionalDistribution
    from zuko.flows.coupling import GeneralCouplingTransform

    layers = [
        GeneralCouplingTransform(d, mask=~_alternating(d, i), **kwargs) for i in range(transforms)
    ]
    base = UnconditionalDistribution(
        DiagNormal, loc=torch.zeros(d), scale=torch.ones(d), buffer=True
    )
    return Flow(layers, base)


def _net_widths(model: str, d: int) -> list[tuple[int, ...]]:
    p = {"MAF": 2, "RealNVP": 2, "NSF": 3 * BINS - 1, "NSFc": 3 * BINS - 1}[model]
    if model in ("MAF", "NSF"):
        return [(d, *HIDDEN, d * p)] * TRANSFORMS
    out = []
    for i in range(TRANSFORMS):
        n_b = int(_alternating(d, i).sum())
        out.append((d - n_b, *HIDDEN, n_b * p))
    return out


def build(lib: str, model: str, d: int) -> Model:
    """The same architecture in each library (``TRANSFORMS`` transforms, ``HIDDEN``, ReLU)."""
    ar = model in ("MAF", "NSF")
    nets = _net_widths(model, d)
    if lib == "nfkit":
        flow = {
            "MAF": lambda: nf.models.MAF(d, transforms=TRANSFORMS, hidden=HIDDEN),
            "NSF": lambda: nf.models.NSF(
                d, transforms=TRANSFORMS, bins=BINS, bound=BOUND, hidden=HIDDEN
            ),
            "RealNVP": lambda: nf.models.RealNVP(d, transforms=TRANSFORMS, hidden=HIDDEN),
            "NSFc": lambda: nf.models.NSF(
                d, transforms=TRANSFORMS, bins=BINS, bound=BOUND, hidden=HIDDEN, coupling=True
            ),
        }[model]()
        return Model(flow, flow.log_prob, flow.sample, ar, nets)
    if lib == "zuko":
        import zuko

        kw: dict[str, Any] = {"transforms": TRANSFORMS, "hidden_features": HIDDEN}
        if model == "MAF":
            zflow = zuko.flows.MAF(d, **kw)
        elif model == "NSF":
            zflow = zuko.flows.NSF(d, bins=BINS, **kw)
        else:  # RealNVP / NSFc: zuko's coupling with nfkit's masks
            spline = {
                "univariate": zuko.transforms.MonotonicRQSTransform,
                "shapes": [(BINS,), (BINS,), (BINS - 1,)],
            }
            zflow = _zuko_coupling(d, **(spline if model == "NSFc" else {}), **kw)
        return Model(
            zflow, lambda x: zflow().log_prob(x), lambda n: zflow().sample((n,)), ar, nets
        )
    if lib == "nflows":
        from nflows import distributions as nd
        from nflows import flows as nfl
        from nflows import transforms as nt

        layers: list[nn.Module] = []
        for i in range(TRANSFORMS):
            mask = _alternating(d, i).int() * 2 - 1
            if model == "MAF":
                layers.append(
                    nt.MaskedAffineAutoregressiveTransform(
                        d, HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False
                    )
                )
            elif model == "NSF":
                layers.append(
                    nt.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                        d,
                        HIDDEN[0],
                        num_bins=BINS,
                        tails="linear",
                        tail_bound=BOUND,
                        num_blocks=len(HIDDEN) - 1,
                        use_residual_blocks=False,
                    )
                )
            elif model == "RealNVP":
                layers.append(nt.AffineCouplingTransform(mask, _Net))
            else:
                layers.append(
                    nt.PiecewiseRationalQuadraticCouplingTransform(
                        mask, _Net, num_bins=BINS, tails="linear", tail_bound=BOUND
                    )
                )
            if ar and i < TRANSFORMS - 1:
                layers.append(nt.ReversePermutation(d))
        nflow = nfl.Flow(nt.CompositeTransform(layers), nd.StandardNormal([d]))
        return Model(nflow, nflow.log_prob, nflow.sample, ar, nets)
    if lib == "normflows":
        import normflows as nfs
        from normflows.flows.neural_spline.autoregressive import (
            MaskedPiecewiseRationalQuadraticAutoregressive,
        )
        from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

        class Swap(nfs.flows.Flow):
            """Wraps an nflows-style transform (data → latent) as a normflows flow."""

            def __init__(self, t: nn.Module) -> None:
                super().__init__()
                self.t = t

            def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
                x, ladj = self.t.inverse(z)
                return x, ladj.view(-1)

            def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
                z, ladj = self.t(x)
                return z, ladj.view(-1)

        class Reverse(nfs.flows.Flow):
            def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
                return z.flip(-1), z.new_zeros(len(z))

            inverse = forward

        flows: list[nn.Module] = []
        for i in range(TRANSFORMS):
            mask = _alternating(d, i).int() * 2 - 1
            if model == "MAF":
                # normflows runs this transform's one-pass direction latent → data (an IAF);
                # Swap puts the one pass on the density side, as in MAF.
                flows.append(
                    Swap(
                        nfs.flows.MaskedAffineAutoregressive(
                            d, HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False
                        )
                    )
                )
            elif model == "NSF":
                flows.append(
                    Swap(
                        MaskedPiecewiseRationalQuadraticAutoregressive(
                            d,
                            HIDDEN[0],
                            num_bins=BINS,
                            tails="linear",
                            tail_bound=BOUND,
                            num_blocks=len(HIDDEN) - 1,
                            use_residual_blocks=False,
                        )
                    )
                )
            elif model == "NSFc":
                flows.append(
                    Swap(
                        PiecewiseRationalQuadraticCoupling(
                            mask, _Net, num_bins=BINS, tails="linear", tail_bound=BOUND
                        )
                    )
                )
            else:  # RealNVP
                # normflows' own coupling block with the original RealNVP's exp scale. Its split
                # is by halves (chunk(2), the first ceil(D/2) wide) where nfkit alternates
                # features; the halves are picked so that each layer transforms as many
                # features as nfkit's (even layers ceil(D/2), odd ones floor(D/2)): "channel_inv"
                # transforms the first half, "channel" the second.
                n_b = int(_alternating(d, i).sum())
                flows.append(
                    nfs.flows.AffineCouplingBlock(
                        _Net(d - n_b, 2 * n_b),
                        scale_map="exp",
                        split_mode="channel_inv" if i % 2 == 0 else "channel",
                    )
                )
            if ar and i < TRANSFORMS - 1:
                flows.append(Reverse())
        # normflows' flows run latent → data; the list is ordered from the base.
        nflow = nfs.NormalizingFlow(
            nfs.distributions.DiagGaussian(d, trainable=False), flows[::-1]
        )
        return Model(nflow, nflow.log_prob, lambda n: nflow.sample(n)[0], ar, nets)
    raise ValueError(f"build: unknown library {lib!r}")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(fn: Callable[[], Any], reps: int, device: str) -> float:
    """Seconds per call, median of ``reps`` single calls."""
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_fns(
    nets: list[tuple[int, ...]], autoregressive: bool, device: str
) -> tuple[Callable[[], None], Callable[[], None], Callable[[int], Callable[[], None]]]:
    """The matmul floor (the same dense ``F.linear`` chains: training step and sampling passes)
    and the ``MLP+Adam`` step: those chains with ReLU between layers and an Adam step.

    In a flow's training step every network's input but the first's depends on the parameters
    of the transforms before it, so backward computes the gradient with respect to that input
    too (one more matmul per layer). The chains after the first therefore take an input that
    requires grad: the floor is forward + backward of the same networks, including the input
    gradients of every network after the first. ``autoregressive`` only sets the sampling
    floor's passes (``D`` per network, else one).
    """
    params: list[nn.Parameter] = []
    layers: list[list[tuple[nn.Parameter, nn.Parameter]]] = []
    for widths in nets:
        chain = []
        for a, b in zip(widths[:-1], widths[1:]):
            w = nn.Parameter(torch.randn(b, a, device=device) / math.sqrt(a))
            bias = nn.Parameter(torch.zeros(b, device=device))
            chain.append((w, bias))
            params += [w, bias]
        layers.append(chain)
    xs = [
        torch.randn(BATCH, widths[0], device=device, requires_grad=i > 0)
        for i, widths in enumerate(nets)
    ]

    def run(inputs: list[Tensor], relu: bool = False) -> Tensor:
        total = inputs[0].new_zeros(())
        for h, chain in zip(inputs, layers):
            for i, (w, b) in enumerate(chain):
                h = F.linear(torch.relu_(h) if relu and i else h, w, b)
            total = total + h.mean()
        return total

    def step() -> None:
        for t in (*params, *xs[1:]):
            t.grad = None
        run(xs).backward()

    opt = torch.optim.Adam(params, lr=1e-3)

    def mlp_step() -> None:
        opt.zero_grad()
        for x in xs[1:]:
            x.grad = None
        run(xs, relu=True).backward()
        opt.step()

    def sampler(n: int) -> Callable[[], None]:
        z = torch.randn(n, max(widths[0] for widths in nets), device=device)
        inputs = [z[..., : widths[0]] for widths in nets]
        passes = nets[0][0] if autoregressive else 1

        def go() -> None:
            with torch.no_grad():
                for _ in range(passes):
                    run(inputs)

        return go

    return step, mlp_step, sampler


TIMED_BATCHES = 8
"""Batches drawn (on the device) before the timed steps, which cycle through them."""


def timed_batches(data: Tensor, device: str) -> Callable[[], Tensor]:
    """The next of :data:`TIMED_BATCHES` batches drawn beforehand (seed 0, the same for every
    library): a timed step draws no data, as the floor and ``MLP+Adam`` do not (drawing and
    copying a batch costs 25–270 µs, 0.5–1.3% of a floor)."""
    gen = torch.Generator().manual_seed(0)
    ready = [
        data[torch.randint(len(data), (BATCH,), generator=gen)].to(device)
        for _ in range(TIMED_BATCHES)
    ]
    return itertools.cycle(ready).__next__


def drawn_batches(data: Tensor, device: str) -> Callable[[], Tensor]:
    """A fresh batch per call (seed 0, the same sequence for every library): for training."""
    gen = torch.Generator().manual_seed(0)
    return lambda: data[torch.randint(len(data), (BATCH,), generator=gen)].to(device)


def train_step_fn(m: Model, batch: Callable[[], Tensor]) -> Callable[[], None]:
    opt = torch.optim.Adam(m.module.parameters(), lr=1e-3)

    def step() -> None:
        loss = -m.log_prob(batch()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def compiled_fns(
    flow: nf.Flow, data: Tensor, device: str
) -> tuple[Callable[[], None], Callable[[Tensor], Tensor]]:
    """nfkit under torch.compile: ``flow.transform`` + base log-density, checks left outside.

    Dynamo's caches are cleared first: each cell's model is a new set of guards on the same
    code objects, and after ``torch._dynamo.config.recompile_limit`` (8) of them dynamo stops
    compiling and runs eagerly (with a warning), so later cells would time eager code under the
    compiled label.
    """
    torch.compiler.reset()
    flow.validate = False

    def log_prob(x: Tensor) -> Tensor:
        z, ladj = flow.transform(x)
        return flow.base.log_prob(z) + ladj

    clp = torch.compile(log_prob)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    batch = timed_batches(data, device)

    def step() -> None:
        loss = -clp(batch()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, clp


def fit_budget(m: Model, train: Tensor, test: Tensor, steps: int, device: str) -> float:
    """Test log-likelihood after ``steps`` Adam steps (same batches for every library)."""
    step = train_step_fn(m, drawn_batches(train, device))
    torch.manual_seed(0)
    for _ in range(steps):
        step()
    return mean_ll(m, test, device)


def mean_ll(m: Model, test: Tensor, device: str) -> float:
    m.module.eval()
    with torch.no_grad():
        ll = torch.cat([m.log_prob(c.to(device)) for c in test.split(4096)])
    m.module.train()
    return float(ll.mean())


# ------------------------------------------------------------------------------------- memory


def memory_child(cell: str, lib: str, device: str) -> None:
    """Run one training step in this (fresh) process and print the peak memory growth in MiB."""
    data_name, model = cell.split("-")
    train, _ = load_data(data_name)
    torch.manual_seed(0)
    m = build(lib, model, features(data_name))
    m.module.to(device)
    step = train_step_fn(m, timed_batches(train, device))
    if device.startswith("cuda"):
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    # Peak RSS over the first two steps (activations, gradients, Adam's state) above the RSS of
    # the built model. ru_maxrss cannot be used: Linux carries it over fork and exec, so a child
    # of a large parent would report the parent's peak. Writing 5 to clear_refs resets VmHWM.
    # The heap is trimmed first: pages that load_data's NumPy temporaries left resident would
    # otherwise be reused by the step without raising VmHWM (synth256 MAF: 4.9 MiB without
    # the trim, 38 MiB with it or with data made without temporaries).
    _trim_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    step()
    print(max(0, _status_kib("VmHWM") - before) / 1024)


def _trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim(0)``; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS: resident now, VmHWM: peak since reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def measure_memory(cell: str, lib: str, device: str) -> float | None:
    cmd = [sys.executable, __file__, "--_memory", cell, lib, "--device", device]
    cmd += ["--hidden", ",".join(map(str, HIDDEN)), "--transforms", str(TRANSFORMS)]
    cmd += ["--batch", str(BATCH), "--threads", str(torch.get_num_threads())]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        return round(float(out.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------- main


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for lib in ("zuko", "nflows", "normflows"):
        try:
            info[lib] = version(lib)
        except PackageNotFoundError:
            info[lib] = "not installed"
    return info


def run_cell(cell: str, args: argparse.Namespace) -> dict[str, Any]:
    data_name, model = cell.split("-")
    d, device = features(data_name), args.device
    train, test = load_data(data_name)
    libs = list(args.libs)
    models: dict[str, Model] = {}
    for lib in libs:
        torch.manual_seed(0)
        models[lib] = build(lib, model, d)
        models[lib].module.to(device)
    counts = {lib: n_params(m.module) for lib, m in models.items()}
    print(f"[{cell}] parameters: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    if len(set(counts.values())) != 1:
        raise SystemExit(f"[{cell}] parameter counts differ: {counts}")
    # The floor's networks are the architecture's, whichever libraries run (nfkit need not).
    nets, ar = _net_widths(model, d), model in ("MAF", "NSF")
    floor_step, mlp_step, floor_sampler = floor_fns(nets, ar, device)

    # Training step: libraries and floor interleaved round by round (order rotated each round).
    steps = {lib: train_step_fn(m, timed_batches(train, device)) for lib, m in models.items()}
    steps["floor"] = floor_step
    steps["mlp"] = mlp_step
    compiled: tuple[Callable[[], None], Callable[[Tensor], Tensor]] | None = None
    if args.compile:
        torch.manual_seed(0)
        cflow = build("nfkit", model, d).module.to(device)
        t0 = time.perf_counter()
        compiled = compiled_fns(cflow, train, device)  # type: ignore[arg-type]
        compiled[0]()
        compiled[0]()
        compile_s = time.perf_counter() - t0
        steps["nfkit-compiled"] = compiled[0]
    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(_clock(steps[k], args.reps, device))
    step_ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}

    # log_prob and sample throughput, interleaved too.
    x_eval = torch.cat([test] * (4096 // len(test) + 1))[:4096].to(device)
    n_sample = 1000
    lp_fns: dict[str, Callable[[], Any]] = {}
    sp_fns: dict[str, Callable[[], Any]] = {}
    for lib, m in models.items():
        m.module.eval()
        lp_fns[lib] = lambda m=m: m.log_prob(x_eval)
        sp_fns[lib] = lambda m=m: m.sample(n_sample)
    if compiled is not None:
        lp_fns["nfkit-compiled"] = lambda: compiled[1](x_eval)
    sp_fns["floor"] = floor_sampler(n_sample)
    lp_t: dict[str, list[float]] = {k: [] for k in lp_fns}
    sp_t: dict[str, list[float]] = {k: [] for k in sp_fns}
    with torch.no_grad():
        # one warm-up call each; fast calls are timed several times per round (a single 5 ms
        # call is at the mercy of the scheduler), slow ones once per round
        reps = {
            k: max(1, min(5, round(0.1 / _clock(fn, 1, device))))
            for k, fn in (*sp_fns.items(), *(("lp:" + k, fn) for k, fn in lp_fns.items()))
        }
        for _ in range(args.rounds):
            for k in lp_fns:
                lp_t[k].append(_clock(lp_fns[k], reps["lp:" + k], device))
            for k in sp_fns:
                sp_t[k].append(_clock(sp_fns[k], reps[k], device))
    for m in models.values():
        m.module.train()
    lp_rate = {k: 4096 / statistics.median(v) for k, v in lp_t.items()}
    sp_rate = {k: n_sample / statistics.median(v) for k, v in sp_t.items()}

    memory = {lib: measure_memory(cell, lib, device) for lib in libs} if args.memory else {}

    # Test log-likelihood after a fixed budget (fresh models, same seed and batches).
    test_ll: dict[str, float] = {}
    for lib in libs:
        torch.manual_seed(0)
        m = build(lib, model, d)
        m.module.to(device)
        test_ll[lib] = fit_budget(m, train, test, args.steps, device)
        print(f"[{cell}] {lib}: test LL after {args.steps} steps {test_ll[lib]:.3f}", flush=True)
    fit_ll: dict[str, Any] | None = None
    if hasattr(nf, "fit") and args.fit and "nfkit" in libs:
        # not like-for-like: early stopping on a validation split, nf.fit's AdamW and cosine
        # schedule, and up to --fit steps; only the batch is the run's
        torch.manual_seed(0)
        m = build("nfkit", model, d)
        t0 = time.perf_counter()
        hist = nf.fit(
            m.module,
            train,
            steps=args.fit,
            batch_size=BATCH,
            progress=False,
            seed=0,
            device=device,
        )
        fit_ll = {
            "test_ll": mean_ll(m, test, device),
            "seconds": time.perf_counter() - t0,
            "steps": getattr(hist, "steps", None) or len(getattr(hist, "train_loss", []) or []),
        }
        print(f"[{cell}] nfkit nf.fit(steps={args.fit}): test LL {fit_ll['test_ll']:.3f}")

    result = {
        "cell": cell,
        "features": d,
        "params": counts,
        "step_ms": step_ms,
        "ratio_to_floor": {k: v / step_ms["floor"] for k, v in step_ms.items()},
        "log_prob_rows_per_s": lp_rate,
        "sample_per_s": sp_rate,
        "sample_ratio_to_floor": {k: sp_rate["floor"] / v for k, v in sp_rate.items()},
        "memory_mib": memory,
        "test_ll": test_ll,
        "test_ll_steps": args.steps,
        "fit": fit_ll,
    }
    if compiled is not None:
        result["compile_seconds"] = compile_s
    print(
        f"[{cell}] step ms: "
        + ", ".join(f"{k} {v:.2f} ({v / step_ms['floor']:.2f}x)" for k, v in step_ms.items()),
        flush=True,
    )
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _get(d: dict[str, Any], k: str, spec: str) -> str:
    """``d[k]`` formatted; "not run" when the run left ``k`` out, "n/a" when it has no value."""
    return "not run" if k not in d else _fmt(d[k], spec)


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    libs = [*LIBS, "nfkit-compiled"]
    lines = [
        "# nfkit vs zuko / nflows / normflows",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['threads']} torch threads), "
        f"torch {info['torch']}, Python {info['python']}, device {info['device']}"
        + (f" ({info['gpu']})" if info["gpu"] else " (no GPU was available to this run)")
        + f"; zuko {info['zuko']}, nflows {info['nflows']}, normflows {info['normflows']}; "
        f"load average at start {info['load_average']}.",
        "",
        f"Architecture: {TRANSFORMS} transforms, hidden widths {HIDDEN}, splines with {BINS} "
        f"bins on [-{BOUND:g}, {BOUND:g}].",
        "",
        "Training step: median ms (ratio to the matmul floor of the same run). Float32, "
        f"batch {BATCH}, Adam. The floor is forward + backward of the same networks' dense "
        "matmuls, including the input gradients of every network after the first (no masks, "
        "activations, transformer or optimizer step). MLP+Adam: those networks as a plain MLP "
        "(ReLU, one tensor per weight and bias), forward, backward and the Adam step: the "
        "networks' own share of a step, before masks, transformers and the log-density. "
        '"not run": left out of this run (`--libs`, or no `--compile`; results from before '
        'normflows\' RealNVP wrapper have no normflows on RealNVP cells); "n/a": no figure '
        "(a results file from before that column, or a failed measurement).",
        "",
        "| cell | params | " + " | ".join(libs) + " | MLP+Adam | floor |",
        "|---" * (len(libs) + 4) + "|",
    ]
    for r in results:
        s, q = r["step_ms"], r["ratio_to_floor"]
        cells = [f"{s[k]:.2f} ({q[k]:.2f}x)" if k in s else "not run" for k in libs]
        cells.append(f"{s['mlp']:.2f} ({q['mlp']:.2f}x)" if "mlp" in s else "n/a")
        lines.append(
            f"| {r['cell']} | {next(iter(r['params'].values()), 'n/a')} | "
            + " | ".join(cells)
            + f" | {s['floor']:.2f} |"
        )
    lines += ["", "`log_prob` throughput, rows/s (batch 4096, no grad):", ""]
    lines += ["| cell | " + " | ".join(libs) + " |", "|---" * (len(libs) + 1) + "|"]
    for r in results:
        v = r["log_prob_rows_per_s"]
        lines.append(f"| {r['cell']} | " + " | ".join(_get(v, k, ",.0f") for k in libs) + " |")
    lines += [
        "",
        "Sampling, samples/s for 1000 samples (ratio: floor rate / library rate; the floor is "
        "the networks' forward matmuls, D passes per autoregressive layer):",
        "",
    ]
    lines += ["| cell | " + " | ".join(LIBS) + " | floor |", "|---" * (len(LIBS) + 2) + "|"]
    for r in results:
        v, q = r["sample_per_s"], r["sample_ratio_to_floor"]
        cells = [f"{v[k]:,.0f} ({q[k]:.2f}x)" if k in v else "not run" for k in LIBS]
        lines.append(f"| {r['cell']} | " + " | ".join(cells) + f" | {v['floor']:,.0f} |")
    budgets = sorted({r["test_ll_steps"] for r in results if "test_ll_steps" in r})
    budget = " or ".join(map(str, budgets)) if budgets else "a number of"
    lines += [
        "",
        f"Test log-likelihood (nats/row, higher is better) after the same fixed budget of "
        f"{budget} Adam steps for every library. normflows' MAF (its one-pass transform put on the density "
        "side) and nflows' RealNVP (its affine coupling's gate, σ(ŝ + 2) + 1e-3) can only "
        "contract, so their figures are capped at the base's peak and not "
        "comparable. Last column, not like-for-like: nfkit trained with `nf.fit` (early "
        "stopping on a validation split, AdamW with a cosine schedule, up to `--fit` steps at "
        "the run's batch):",
        "",
    ]
    lines += ["| cell | " + " | ".join(LIBS) + " | nfkit nf.fit |", "|---" * (len(LIBS) + 2) + "|"]
    for r in results:
        v = r["test_ll"]
        fit = r["fit"]["test_ll"] if r.get("fit") else None
        lines.append(
            f"| {r['cell']} | "
            + " | ".join(_get(v, k, ".3f") for k in LIBS)
            + f" | {_fmt(fit, '.3f') if 'nfkit' in v else 'not run'} |"
        )
    if any(r["memory_mib"] for r in results):
        what = (
            "torch.cuda.max_memory_allocated growth"
            if info["device"].startswith("cuda")
            else "peak RSS growth (VmHWM) over the first two training steps, one fresh process each"
        )
        lines += ["", f"Memory, MiB ({what}):", ""]
        lines += ["| cell | " + " | ".join(LIBS) + " |", "|---" * (len(LIBS) + 1) + "|"]
        for r in results:
            v = r["memory_mib"]
            lines.append(f"| {r['cell']} | " + " | ".join(_get(v, k, ".1f") for k in LIBS) + " |")
    if any("compile_seconds" in r for r in results):
        lines += [
            "",
            "`torch.compile` time, seconds: nfkit's compiled training step from "
            "`torch.compile` to the end of its first two calls (compilation included):",
            "",
            "| cell | compile, s |",
            "|---|---|",
        ]
        lines += [
            f"| {r['cell']} | {r['compile_seconds']:.2f} |"
            for r in results
            if "compile_seconds" in r
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few rounds and steps (smoke run)")
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="comma-separated cells")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, quick 3)")
    p.add_argument("--reps", type=int, default=None, help="steps per round (default 5, quick 2)")
    p.add_argument("--steps", type=int, default=None, help="fixed training budget for test LL")
    p.add_argument("--fit", type=int, default=None, help="nf.fit max steps (0 = skip)")
    p.add_argument("--compile", action="store_true", help="add nfkit under torch.compile")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="re-measure only the memory column of the existing results file (same cells, tag)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    p.add_argument(
        "--hidden",
        type=hidden_widths,
        default=HIDDEN,
        help="hidden widths of every network, comma-separated (default 128,128)",
    )
    p.add_argument("--transforms", type=int, default=TRANSFORMS, help="transforms (default 5)")
    p.add_argument("--batch", type=int, default=BATCH, help="training batch (default 512)")
    p.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results"),
        help="folder for peers-<tag>.md/.json; a file already there is kept and this run "
        "written as peers-<tag>-2 (-3, ...)",
    )
    p.add_argument(
        "--results",
        default=None,
        help="with --memory-only: the results JSON to re-measure (default: peers-<tag>.json "
        "in --out)",
    )
    p.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configure(args.hidden, args.transforms, args.batch)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory:
        memory_child(*args._memory, args.device)
        return
    args.libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in args.libs if lib not in LIBS]
    if unknown or not args.libs:
        what = f"unknown --libs {unknown}" if unknown else "--libs names no library"
        raise SystemExit(f"peers.py: {what}; choose from {LIBS}")
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.reps = args.reps or (2 if args.quick else 5)
    args.steps = args.steps if args.steps is not None else (100 if args.quick else 1000)
    args.fit = args.fit if args.fit is not None else (0 if args.quick else 3000)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in cells:
        data_name, _, model = c.partition("-")
        if not features(data_name) or model not in MODELS:
            raise SystemExit(
                f"peers.py: unknown cell {c!r}; data {list(DATA)} or synth<D>, models {MODELS}"
            )
    autoregressive = any(c.partition("-")[2] in ("MAF", "NSF") for c in cells)
    fixed_width = [lib for lib in ("nflows", "normflows") if lib in args.libs]
    if autoregressive and fixed_width and len(set(HIDDEN)) > 1:
        raise SystemExit(
            f"peers.py: {' and '.join(fixed_width)}' MADE keeps one hidden width, got "
            f"--hidden {','.join(map(str, HIDDEN))}; give equal widths or leave them out (--libs)"
        )
    info = machine(args.device)
    print(json.dumps(info), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    tag += "-" + ("cuda" if args.device.startswith("cuda") else "cpu")
    command = "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    source = Path(args.results) if args.results else out / f"peers-{tag}.json"
    name = _free_name(out, f"peers-{tag}")  # stored results are never overwritten
    if args.memory_only:
        try:
            stored = json.loads(source.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"peers.py: cannot read results file {str(source)!r} ({e})") from None
        if "architecture" in stored:  # re-measure the sizes the file was written with
            a = stored["architecture"]
            configure(tuple(a["hidden"]), a["transforms"], a["batch"])
        if not args.threads and stored["machine"].get("threads"):
            torch.set_num_threads(stored["machine"]["threads"])  # the run's thread count
        for r in stored["results"]:
            if r["cell"] in cells:
                r["memory_mib"] = {
                    lib: measure_memory(r["cell"], lib, args.device)
                    for lib in r["memory_mib"] or r["params"]
                }
                print(f"[{r['cell']}] memory MiB: {r['memory_mib']}", flush=True)
        stored["memory_command"] = command
        (out / f"{name}.json").write_text(json.dumps(stored, indent=1))
        (out / f"{name}.md").write_text(
            markdown(stored["results"], stored["machine"], stored["command"])
            + f"\nMemory column of {source.name} re-measured by `{command}`.\n"
        )
        print(f"wrote {out / f'{name}.md'} and .json")
        return
    results = []
    for c in cells:  # write after every cell, so an interrupted run keeps what it measured
        results.append(run_cell(c, args))
        (out / f"{name}.json").write_text(
            json.dumps(
                {
                    "machine": info,
                    "command": command,
                    "architecture": {"transforms": TRANSFORMS, "hidden": HIDDEN, "batch": BATCH},
                    "results": results,
                },
                indent=1,
            )
        )
        (out / f"{name}.md").write_text(markdown(results, info, command.strip()))
    print(f"wrote {out / f'{name}.md'} and .json")


def _free_name(folder: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ...: the first with no .md or .json in ``folder``."""
    k = 1
    while True:
        name = stem if k == 1 else f"{stem}-{k}"
        if not (folder / f"{name}.md").exists() and not (folder / f"{name}.json").exists():
            return name
        k += 1


if __name__ == "__main__":
    main()
