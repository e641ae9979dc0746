"""The one generic correctness test: every transform and every model factory, in float64.

For each case × D ∈ {1, 2, 5} × batch shape × with/without context it checks (a) the round trip
``inverse(forward(x)) ≈ x`` to 1e-8, (b) ``ladj`` against ``log|det|`` of the autograd Jacobian to
1e-6, (c) that the two directions' ``ladj`` are negatives, (d) shapes. Then float32, far tails,
CUDA (skipped without a GPU), and a coverage guard over ``nf.transforms`` and ``nf.models``.
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle

import pytest
import torch

import nfkit as nf
from cases import MODELS, TRANSFORMS, Case, ModelCase
from nfkit.testing import check_flow, check_transform, perturb_parameters

CONTEXT = 3
BATCHES = {"n": (6,), "n,m": (3, 4)}


def _build(case: Case, d: int, context: int, dtype=torch.float64, seed: int = 0) -> nf.Transform:
    torch.manual_seed(seed)
    t = case.make(d, context).to(dtype)
    perturb_parameters(t, case.perturb, seed)
    return t


def _inputs(t: nf.Transform, case: Case, d: int, batch, dtype=torch.float64) -> torch.Tensor:
    u = torch.randn(*batch, *case.event_shape(d), dtype=dtype)
    return t.domain.from_real(u * 1.5)


def _warm_up(t: nf.Transform, case, x: torch.Tensor, context) -> None:
    if case.train_first:
        t.train()
        t(x, context)
    t.eval()


def _context(case: Case, batch, use: bool, broadcast: bool = False) -> torch.Tensor | None:
    if not use:
        return None
    shape = batch[1:] if broadcast else batch
    return torch.randn(*shape, CONTEXT, dtype=torch.float64)


def _params(cases: dict, features_attr: str = "features"):
    out = []
    for name, case in cases.items():
        for d in case.features:
            uses = (False, True) if case.context else (False,)
            for use_ctx in (True,) if getattr(case, "needs_context", False) else uses:
                out.append(
                    pytest.param(name, d, use_ctx, id=f"{name}-D{d}{'-ctx' if use_ctx else ''}")
                )
    return out


@pytest.mark.parametrize("batch", list(BATCHES.values()), ids=list(BATCHES))
@pytest.mark.parametrize(("name", "d", "use_ctx"), _params(TRANSFORMS))
def test_transform(name: str, d: int, use_ctx: bool, batch) -> None:
    case = TRANSFORMS[name]
    t = _build(case, d, CONTEXT if use_ctx else 0)
    x = _inputs(t, case, d, batch)
    context = _context(case, batch, use_ctx)
    _warm_up(t, case, x, context)
    check_transform(t, x, context, atol_inverse=case.atol_inverse)


@pytest.mark.parametrize("name", [n for n, c in TRANSFORMS.items() if c.context])
def test_transform_context_broadcasts(name: str) -> None:
    """A context of batch shape (m, C) broadcasts against x of batch shape (n, m)."""
    case = TRANSFORMS[name]
    d = max(case.features)
    t = _build(case, d, CONTEXT)
    x = _inputs(t, case, d, (3, 4))
    context = _context(case, (3, 4), True, broadcast=True)
    _warm_up(t, case, x, context)
    check_transform(t, x, context, atol_inverse=case.atol_inverse)
    # The conditional transform really depends on the context.
    z1, _ = t(x, context)
    z2, _ = t(x, context + 1.0)
    assert not torch.allclose(z1, z2), f"{name} ignores its context"


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_float32(name: str) -> None:
    """float32 gives finite values close to the float64 result of the same weights."""
    case = TRANSFORMS[name]
    d = max(case.features)
    ctx = CONTEXT if case.context else 0
    t64 = _build(case, d, ctx)
    x = _inputs(t64, case, d, (8,))
    context = _context(case, (8,), case.context)
    _warm_up(t64, case, x, context)
    z64, l64 = t64(x, context)
    t32 = t64.float()
    c32 = None if context is None else context.float()
    z32, l32 = t32(x.float(), c32)
    assert z32.dtype == torch.float32 and l32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), z64, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(l32.double(), l64, atol=1e-3, rtol=1e-3)
    xb, _ = t32.inverse(z32, c32)
    torch.testing.assert_close(xb.double(), x, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", [n for n, c in TRANSFORMS.items() if c.tails])
def test_transform_tails(name: str, dtype: torch.dtype) -> None:
    """Inputs far out on the real line give finite values, log-dets and gradients, both ways."""
    case = TRANSFORMS[name]
    d = max(case.features)
    t = _build(case, d, CONTEXT if case.context else 0)
    context = _context(case, (6,), case.context)
    _warm_up(t, case, _inputs(t, case, d, (6,)), context)
    t = t.to(dtype)
    context = None if context is None else context.to(dtype)
    far = torch.tensor([1e4, -1e4, 50.0, -50.0, 1e4, -3e3], dtype=dtype)
    x = far.reshape(6, *([1] * len(case.event_shape(d)))).expand(6, *case.event_shape(d)).clone()
    directions = [("forward", t.forward)]
    if t.codomain.is_real:
        directions.append(("inverse", t.inverse))
    for label, fn in directions:
        xr = x.clone().requires_grad_(True)
        out, ladj = fn(xr, context)
        assert torch.isfinite(out).all(), f"{name}.{label}: non-finite values in the tails"
        assert torch.isfinite(ladj).all(), f"{name}.{label}: non-finite log-det in the tails"
        grads = torch.autograd.grad(
            out.sum() + ladj.sum(), [xr, *t.parameters()], allow_unused=True
        )
        for g in grads:
            assert g is None or torch.isfinite(g).all(), (
                f"{name}.{label}: non-finite gradient in the tails"
            )


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_given_another_width(name: str) -> None:
    """A layer built for ``D`` features and given ``D + 1`` or ``D - 1``, used by hand (no
    :class:`~nfkit.Flow` to check the event): a one-line ``ValueError``, or, for a map that
    takes any width (``Tanh``, ``Reverse()``), a transform that is right at that width. Never a
    silent broadcast: ``ActNorm(1)`` on 3 columns scaled them all and counted one log-scale."""
    case = TRANSFORMS[name]
    d = max(case.features)
    t = _build(case, d, 0)
    x_d = _inputs(t, case, d, (6,))
    _warm_up(t, case, x_d, None)
    dim = -len(case.event_shape(d))  # the features (or channels): a copy of the first added
    for x in (torch.cat([x_d, x_d.narrow(dim, 0, 1)], dim), x_d.narrow(dim, 0, d - 1)):
        if x.shape[dim] == 0:
            continue
        width = x.shape[dim]
        try:
            z, _ = t(x)
            z_in = t.codomain.from_real(torch.randn_like(z))
            t.inverse(z_in)
        except ValueError as e:
            assert "\n" not in str(e), f"{name} at width {width}: a multi-line error: {e}"
            continue
        check_transform(t, x, atol_inverse=case.atol_inverse, parameters=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_cuda(name: str) -> None:
    case = TRANSFORMS[name]
    d = max(case.features)
    t = _build(case, d, CONTEXT if case.context else 0).cuda()
    x = _inputs(t, case, d, (6,)).cuda()
    context = _context(case, (6,), case.context)
    context = None if context is None else context.cuda()
    _warm_up(t, case, x, context)
    check_transform(t, x, context, atol_inverse=case.atol_inverse)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_pickles(name: str) -> None:
    """Every transform survives pickle and deepcopy with its weights, dtype and mode."""
    case = TRANSFORMS[name]
    d = max(case.features)
    context_size = CONTEXT if case.context else 0
    t = _build(case, d, context_size)
    x = _inputs(t, case, d, (4,))
    context = _context(case, (4,), bool(context_size))
    _warm_up(t, case, x, context)
    z, ladj = t(x, context)
    for copied in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert type(copied) is type(t) and not copied.training
        z2, ladj2 = copied(x, context)
        assert z2.dtype == torch.float64
        torch.testing.assert_close(z2, z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ladj2, ladj, rtol=1e-12, atol=1e-12)


def _build_model(case: ModelCase, d: int, context: int) -> nf.Flow:
    torch.manual_seed(0)
    flow = case.make(d, context).double()
    perturb_parameters(flow, case.perturb)
    if case.train_first:
        flow.train()
        flow.log_prob(
            torch.randn(64, *case.event_shape(d), dtype=torch.float64),
            _context(None, (64,), bool(context)),
        )
    flow.eval()
    return flow


@pytest.mark.parametrize(("name", "d", "use_ctx"), _params(MODELS))
def test_model(name: str, d: int, use_ctx: bool, tmp_path) -> None:
    """Every factory: change of variables by autograd, invertibility, sampling, gradients, I/O."""
    case = MODELS[name]
    flow = _build_model(case, d, CONTEXT if use_ctx else 0)
    assert flow.config["model"] in nf.models.FACTORIES
    context = _context(None, (4,), use_ctx)
    check_flow(flow, context, atol_inverse=case.atol_inverse)  # check_transform included
    x = flow.sample((5,), context)
    # The config rebuilds the same architecture, so the weights load into it; nf.load does so
    # within its construction budget (proportional to the file's weights).
    rebuilt = nf.load(nf.save(flow, tmp_path / "flow.pt"))
    assert rebuilt.config == flow.config and not rebuilt.training
    torch.testing.assert_close(rebuilt.log_prob(x, context), flow.log_prob(x, context))
    # An empty batch runs nothing and gives empty results of the right shapes.
    empty = torch.empty(0, *flow.event_shape, dtype=torch.float64)
    assert flow.log_prob(empty, None if context is None else context[:0]).shape == (0,)
    batch = () if context is None else context.shape[:-1]
    assert flow.sample(0, context).shape == (0, *batch, *flow.event_shape)
    # Pickling (joblib, multiprocessing, copy) keeps the weights, dtype and mode.
    unpickled = pickle.loads(pickle.dumps(flow))
    assert not unpickled.training
    torch.testing.assert_close(unpickled.log_prob(x, context), flow.log_prob(x, context))


def _grid_mass(flow: nf.Flow, half_width: float = 10.0, n: int = 401) -> float:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx, yy], -1).reshape(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(pts).exp().reshape(n, n)
    return torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()


@pytest.mark.parametrize(
    "name",
    [
        "MAF",
        "NSF",
        "NSF-coupling",
        "RealNVP",
        "Planar",
        "Radial",
        "Sylvester",
        "BNAF",
        "SOSPF",
        "BPF",
        "GF",
    ],
)
def test_density_integrates_to_one(name: str) -> None:
    flow = _build_model(MODELS[name], 2, 0)
    assert abs(_grid_mass(flow) - 1.0) < 1e-2


@pytest.mark.parametrize("name", ["MAF", "NSF-coupling", "Planar"])
def test_samples_follow_log_prob(name: str) -> None:
    """Two-sample check: histogram of 200k samples vs. the density integrated over the same cells."""
    flow = _build_model(MODELS[name], 2, 0)
    torch.manual_seed(1)
    samples = flow.sample(200_000)
    edges = torch.linspace(-6, 6, 25, dtype=torch.float64)
    counts = torch.histogramdd(samples, bins=[edges, edges]).hist / samples.shape[0]
    fine = torch.linspace(-6, 6, 24 * 8 + 1, dtype=torch.float64)
    mid = (fine[1:] + fine[:-1]) / 2
    xx, yy = torch.meshgrid(mid, mid, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(24 * 8, 24 * 8)
    cell = (fine[1] - fine[0]) ** 2
    expected = (p * cell).reshape(24, 8, 24, 8).sum((1, 3))
    total_variation = 0.5 * (counts - expected).abs().sum().item()
    assert total_variation < 0.03, total_variation


def test_coverage_guard() -> None:
    """Every class in nf.transforms.__all__ and every factory in nf.models.__all__ has a case."""
    used_types: set[type] = set()
    used_transformers: set[type] = set()
    for case in TRANSFORMS.values():
        t = case.make(max(case.features), CONTEXT if case.context else 0)
        for m in t.modules():
            used_types.add(type(m))
            if hasattr(m, "transformer"):
                used_transformers.add(type(m.transformer))
    missing = []
    for name in nf.transforms.__all__:
        obj = getattr(nf.transforms, name)
        if not inspect.isclass(obj) or inspect.isabstract(obj):
            continue
        if issubclass(obj, nf.Transform) and obj not in used_types:
            missing.append(name)
        if issubclass(obj, nf.transforms.Transformer) and obj not in used_transformers:
            missing.append(name)
    assert not missing, f"transforms without a case in tests/cases: {missing}"
    factories = [n for n in nf.models.__all__ if n in nf.models.FACTORIES]
    covered = {
        case.make(2, CONTEXT if case.needs_context else 0).config["model"]
        for case in MODELS.values()
    }
    assert not [n for n in factories if n not in covered], (
        f"factories without a case: {set(factories) - covered}"
    )
    assert math.isfinite(len(TRANSFORMS))


def _trainable_params():
    out = []
    for name, case in MODELS.items():
        d = 2 if 2 in case.features else case.features[0]
        out.append(pytest.param(name, d, case.context or case.needs_context, id=name))
    return out


@pytest.mark.parametrize(("name", "d", "use_ctx"), _trainable_params())
def test_model_trains_from_its_initialization(name: str, d: int, use_ctx: bool) -> None:
    """A freshly built factory is not stuck: its loss has a non-zero gradient (a layer whose
    parameters all start at zero can sit at a saddle, as Sylvester's did) and 15 Adam steps lower
    the held-fixed negative log-likelihood of skewed data."""
    case = MODELS[name]
    torch.manual_seed(0)
    flow = case.make(d, CONTEXT if use_ctx else 0).double()
    u = torch.randn(256, *case.event_shape(d), dtype=torch.float64)
    x = flow.transform.domain.from_real(torch.exp(0.7 * u) - 1.3)
    context = _context(None, (256,), use_ctx)
    flow.train()
    flow.log_prob(x, context)  # data-dependent initializations (ActNorm) see the data first

    def loss() -> torch.Tensor:
        return -flow.log_prob(x, context).mean()

    flow.eval()
    with torch.no_grad():
        before = loss()
    flow.train()
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for step in range(15):
        opt.zero_grad()
        value = loss()
        value.backward()
        if step == 0:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
        opt.step()
    flow.eval()
    with torch.no_grad():
        after = loss()
    assert after < before - 1e-3, (before.item(), after.item())
