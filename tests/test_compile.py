"""``torch.compile``: every classic factory's hot path compiles as one graph (no graph breaks).

Checked with ``fullgraph=True`` (a graph break raises) and the cheap ``eager`` / ``aot_eager``
backends, so no C++ compilation happens here. The boundary checks of :class:`~nfkit.Flow` that
read values (NaN, support) would sync with the host; they are skipped while dynamo traces, so
``flow.log_prob`` compiles as it is (its shape checks still run). One inductor compile of a small
MAF training step runs when a C++ compiler is available.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
import torch

import nfkit as nf

dynamo = pytest.importorskip("torch._dynamo")

SMALL = {"hidden": (8, 8)}
FACTORIES = {
    "MAF": lambda: nf.models.MAF(3, transforms=2, **SMALL),
    "IAF": lambda: nf.models.IAF(3, transforms=2, **SMALL),
    "NSF": lambda: nf.models.NSF(3, transforms=2, bins=4, **SMALL),
    "NSF-coupling": lambda: nf.models.NSF(3, transforms=2, bins=4, coupling=True, **SMALL),
    "RealNVP": lambda: nf.models.RealNVP(3, transforms=2, **SMALL),
    "NICE": lambda: nf.models.NICE(3, transforms=2, **SMALL),
    "MAF-context": lambda: nf.models.MAF(3, context=2, transforms=2, **SMALL),
    "NSF-context": lambda: nf.models.NSF(3, context=2, transforms=2, bins=4, **SMALL),
    "Radial": lambda: nf.models.Radial(3, layers=2, **SMALL),
    "NCSF": lambda: nf.models.NCSF(3, transforms=2, bins=4, **SMALL),
    "NCSF-coupling": lambda: nf.models.NCSF(3, transforms=2, bins=4, coupling=True, **SMALL),
    "NCSF-mixed": lambda: nf.models.NCSF(3, angles=[1], transforms=2, bins=4, **SMALL),
    "Embedded": lambda: nf.models.Embedded(
        3, flow=nf.models.NSF(3, context=2, transforms=2, bins=4, **SMALL).config, context=5
    ),
    "NCSF-mixed-coupling": lambda: nf.models.NCSF(
        3, angles=[0], transforms=2, bins=4, coupling=True, **SMALL
    ),
}
# Planar and Sylvester are explicit in their sampling direction; their density direction is a
# numerical inverse (``nfkit._numerics.monotone_solve``), whose convergence test syncs with the
# host, so only sampling is required to be one graph for them.
SAMPLERS = {
    **FACTORIES,
    "Planar": lambda: nf.models.Planar(3, layers=2, **SMALL),
    "Sylvester": lambda: nf.models.Sylvester(3, layers=2, **SMALL),
}
# BNAF, SOSPF, BPF and GF are the other way round: explicit in their density direction, numerical in
# sampling.
DENSITIES = {
    **FACTORIES,
    "BNAF": lambda: nf.models.BNAF(3, transforms=2, hidden=(8, 8)),
    "SOSPF": lambda: nf.models.SOSPF(3, transforms=2, **SMALL),
    "BPF": lambda: nf.models.BPF(3, transforms=2, degree=6, **SMALL),
    "BNAF-context": lambda: nf.models.BNAF(3, context=2, transforms=2, hidden=(8,)),
    "GF": lambda: nf.models.GF(3, transforms=2, components=4),
    "GMM-context": lambda: nf.models.GMM(3, context=2, components=4, hidden=(8,)),
    "GMM-tied": lambda: nf.models.GMM(3, components=4, covariance="tied"),
    "GF-context": lambda: nf.models.GF(3, context=2, transforms=2, components=4, hidden=(8,)),
    "ResidualFlow": lambda: nf.models.ResidualFlow(3, context=2, blocks=2, hidden=(8, 8)),
}


@pytest.fixture(autouse=True)
def _reset_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _context(flow: nf.Flow, n: int) -> torch.Tensor | None:
    return torch.randn(n, flow.context_features) if flow.context_features else None


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_log_prob_and_training_step_one_graph(name: str) -> None:
    flow = DENSITIES[name]()
    x, c = torch.randn(16, 3).clamp(-3, 3), _context(flow, 16)  # inside NCSF's [-π, π] too
    compiled = torch.compile(flow.log_prob, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, c), flow.log_prob(x, c))
    loss = -compiled(x, c).mean()  # training step: forward compiled, backward through AOT graph
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    opt.step()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sample_one_graph(name: str) -> None:
    flow = SAMPLERS[name]()
    c = _context(flow, 4)

    def sample(n: int, context: torch.Tensor | None) -> torch.Tensor:
        return flow.sample(n, context)

    out = torch.compile(sample, backend="eager", fullgraph=True)(5, c)
    assert out.shape == ((5, 3) if c is None else (5, 4, 3))
    assert torch.isfinite(out).all()


def test_compiled_sample_leaves_actnorm_waiting_for_data() -> None:
    """As eager sampling: a compiled ``sample`` of a flow whose ``ActNorm`` has not seen data
    yet does not initialize it from the base's draws (it did, under dynamo)."""
    torch.manual_seed(0)
    flow = nf.models.Glow((1, 4, 4), levels=2, steps=1, hidden=(8,))  # train mode
    acts = [m for m in flow.modules() if isinstance(m, nf.transforms.ActNorm)]
    out = torch.compile(flow.sample, backend="eager", fullgraph=True)(4)
    assert out.shape == (4, 1, 4, 4) and acts
    assert not any(bool(m.initialized) or not m._needs_init for m in acts)
    assert all(float(m.log_scale.detach().abs().max()) == 0.0 for m in acts)
    flow(torch.rand(8, 1, 4, 4))  # the data then initialize it
    assert all(bool(m.initialized) for m in acts)


@pytest.mark.parametrize("entry", ["transform", "log_prob"])
def test_explain_reports_no_break(entry: str) -> None:
    flow = nf.models.NSF(3, transforms=2, bins=4, **SMALL)
    explanation = dynamo.explain(getattr(flow, entry))(torch.randn(8, 3))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_compiled_log_prob_keeps_shape_checks() -> None:
    flow = nf.models.MAF(3, context=2, transforms=1, **SMALL)
    compiled = torch.compile(flow.log_prob, backend="eager")  # a bad call falls back to eager
    with pytest.raises(ValueError, match="must have last dim 3, got shape"):
        compiled(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="needs a context of last dim 2"):
        compiled(torch.randn(4, 3))
    # eager calls still read the values
    with pytest.raises(ValueError, match="contains NaN"):
        flow.log_prob(torch.full((4, 3), float("nan")), torch.randn(4, 2))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cl") is None, reason="no C++")
def test_inductor_training_step() -> None:
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    x = torch.randn(32, 2)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        z, ladj = flow.transform(x)
        return -(flow.base.log_prob(z) + ladj).mean()

    loss = torch.compile(loss_fn)(x)
    torch.testing.assert_close(loss, loss_fn(x), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert flow.transform[0].made.theta.grad is not None


EXPORTED = ["MAF", "NSF", "NSF-coupling", "RealNVP", "NSF-context", "NCSF-mixed", "Embedded",
            "BNAF", "GF", "GMM-context", "ResidualFlow"]  # fmt: skip


@pytest.mark.parametrize("name", EXPORTED)
def test_export_gives_one_program_for_any_batch_size(name: str) -> None:
    """``nf.export``: the density as a ``torch.export`` program traced at 8 rows gives the
    flow's ``log_prob`` at 3 and 300 rows; where the flow samples in closed form from a
    standard normal base, the sampler's program maps noise to what ``T⁻¹`` gives."""
    torch.manual_seed(0)
    flow = DENSITIES[name]()
    nf.testing.perturb_parameters(flow, 0.1)
    flow.train()
    program = nf.export(flow)
    assert flow.training  # put back in its mode
    flow.eval()
    c = flow.context_features
    for rows in (3, 300):
        x = flow.transform.domain.from_real(torch.randn(rows, 3))
        args = (x,) if not c else (x, torch.randn(rows, c))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(*args), flow.log_prob(*args))
    if name in SAMPLERS and type(flow.base) is nf.distributions.StandardNormal:
        sampler = nf.export(flow, "sample")
        z = torch.randn(50, 3)
        context = torch.randn(50, c) if c else None
        args = (z,) if not c else (z, context)
        with torch.no_grad():
            expected = flow.transform.inverse_value(z, flow._embed(context))
            torch.testing.assert_close(sampler.module()(*args), expected)


def test_an_exported_program_keeps_its_weights_and_an_image_flow_takes_no_rows() -> None:
    """The program holds a copy: training the flow afterwards changed its values by 1.65, and
    ``flow.double()`` broke it. An exported Glow took no empty batch (``Squeeze``'s branch on an
    empty input was decided while tracing)."""
    torch.manual_seed(0)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    program = nf.export(flow).module()
    x = torch.randn(5, 2)
    before = program(x)
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (-flow.log_prob(torch.randn(64, 2) + 1).mean()).backward()
        optimizer.step()
    flow.double()
    torch.testing.assert_close(program(x), before, rtol=0, atol=0)
    glow = nf.models.Glow((1, 4, 4), levels=2, steps=1, hidden=(8,)).eval()
    density, sampler = nf.export(glow).module(), nf.export(glow, "sample").module()
    assert density(torch.rand(0, 1, 4, 4)).shape == (0,)
    assert sampler(torch.randn(0, 1, 4, 4)).shape == (0, 1, 4, 4)
    images = torch.rand(3, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(density(images), glow.log_prob(images))


def test_an_exported_density_scores_events_outside_the_support_minus_inf() -> None:
    """An angle beyond its range went through the circular spline's wrap to a finite, wrong
    density (-2.64 where the same point on the circle scores -2.20, and nf.log_prob_or_minus_inf
    -inf); a bounded column's outside values likewise. NaN rows stay NaN."""
    torch.manual_seed(0)
    ncsf = nf.models.NCSF(3, angles=[1], transforms=1, hidden=(8,))
    bounded = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), torch.rand(100, 2), bounds=[(0, 1), (None, None)]
    )
    cases = [
        (ncsf, torch.tensor([[0.5, 4.0, -0.2], [0.5, 4.0 - 2 * math.pi, -0.2], [0.1, 0.2, 0.3]])),
        (bounded, torch.tensor([[0.5, 0.5], [1.5, 0.5], [-0.1, 2.0], [0.2, -3.0]])),
    ]
    for flow, x in cases:
        nf.testing.perturb_parameters(flow, 0.3)
        flow.eval()
        program = nf.export(flow).module()
        expected = nf.log_prob_or_minus_inf(flow, x).detach()
        assert bool(torch.isinf(expected).any()) and bool(torch.isfinite(expected).any())
        torch.testing.assert_close(program(x), expected)
        nan_row = torch.cat([x[:1], torch.full_like(x[:1], math.nan)])
        assert torch.isnan(program(nan_row)).tolist() == [False, True]


def test_export_refusals_and_a_saved_program(tmp_path) -> None:
    flow = nf.models.NSF(2, context=1, transforms=1, hidden=(8,))
    nf.testing.perturb_parameters(flow, 0.2)
    path = tmp_path / "nsf.pt2"
    torch.export.save(nf.export(flow), path)
    x, c = torch.randn(20, 2), torch.randn(20, 1)
    torch.testing.assert_close(torch.export.load(path).module()(x, c), flow.log_prob(x, c))
    # a fresh process without nfkit runs it (the spline's own autograd code is not needed)
    torch.save({"x": x, "c": c, "expected": flow.log_prob(x, c).detach()}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"out = torch.export.load({str(path)!r}).module()(d['x'], d['c'])\n"
        "torch.testing.assert_close(out, d['expected'])\n"
        "assert 'nfkit' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="nf.export: batch must be an integer >= 2"):
        nf.export(flow, batch="x")
    with pytest.raises(ValueError, match="direction must be 'density' or 'sample'"):
        nf.export(flow, "inverse")
    with pytest.raises(TypeError, match="nf.export: expected an nf.Flow, got Linear"):
        nf.export(torch.nn.Linear(2, 2))
    mixture = nf.models.MAF(2, transforms=1, hidden=(8,), base="gmm")
    with pytest.raises(ValueError, match="'sample' feeds standard normal noise .* base is"):
        nf.export(mixture, "sample")
    counts = torch.poisson(torch.full((100, 1), 3.0))
    dequantized = nf.models.standardize(
        nf.models.MAF(1, transforms=1, hidden=(8,)), counts, bounds=[(0, None)], discrete=[0]
    )
    with pytest.raises(ValueError, match="discrete columns scores by averaging"):
        nf.export(dequantized)
    # a direction with a data-dependent number of steps has no single graph: named, no dump
    for flow, direction, what in (
        (nf.models.GF(2, transforms=1, components=4), "sample", "a numerical root find"),
        (nf.models.Planar(2, layers=1), "density", "a numerical root find"),
        (nf.models.FFJORD(2, hidden=(8,)), "density", "an ODE solve"),
    ):
        with pytest.raises(ValueError, match=f"flow's {direction} runs {what}, whose number"):
            nf.export(flow, direction)


def _compiled_and_eager_samples(options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A conditional autoregressive NSF whose features + context (3 + 5) equal its bins (8),
    sampled eagerly and by inductor with the same draws (``fallback_random``)."""
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    flow = nf.models.NSF(3, context=5, transforms=2, hidden=(16,), bins=8).double()
    flow = nf.testing.perturb_parameters(flow, scale=0.3)
    context = torch.randn(5, dtype=torch.float64)
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(1)
        eager = flow.sample(64, context=context)
        compiled = torch.compile(flow.sample, options=options)
        torch.manual_seed(1)
        return compiled(64, context=context), eager


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cl") is None, reason="no C++")
@pytest.mark.xfail(
    strict=True,
    reason="inductor bug (torch 2.13, CPU): a buffer reused while live when features + "
    "context equal bins; compile with options={'allow_buffer_reuse': False} (README)",
)
def test_inductor_samples_of_a_conditional_spline_equal_eager_ones() -> None:
    compiled, eager = _compiled_and_eager_samples()
    torch.testing.assert_close(compiled, eager)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cl") is None, reason="no C++")
def test_inductor_without_buffer_reuse_samples_as_eager() -> None:
    """The workaround the README gives for the inductor bug above."""
    compiled, eager = _compiled_and_eager_samples({"allow_buffer_reuse": False})
    torch.testing.assert_close(compiled, eager)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cl") is None, reason="no C++")
def test_inductor_training_step_of_a_residual_flow_has_the_eager_gradients() -> None:
    """Inductor differentiated slogdet of the exact log-det's batched product wrongly (up to
    2x); the compiled path takes the log-det from an LU factorization."""
    torch.manual_seed(0)
    flow = nf.models.ResidualFlow(3, blocks=2, hidden=(16, 16)).double().eval()
    x = torch.randn(64, 3, dtype=torch.float64)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        z, ladj = flow.transform(x)
        return -(flow.base.log_prob(z) + ladj).mean()

    eager = torch.autograd.grad(loss_fn(x), list(flow.parameters()))
    compiled = torch.autograd.grad(torch.compile(loss_fn)(x), list(flow.parameters()))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)
