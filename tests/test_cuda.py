"""CUDA: every classic factory's log_prob, sample and a training step, in float32 and float64.

Skipped without a GPU. Checks that nothing hard-codes the CPU: parameters, buffers, base
distributions and intermediate tensors all follow ``flow.to("cuda")`` / ``flow.double()``, and that
the CUDA results match the CPU ones.
"""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = {"hidden": (16, 16)}
FACTORIES = {
    "MAF": lambda c: nf.models.MAF(3, context=c, transforms=2, **SMALL),
    "IAF": lambda c: nf.models.IAF(3, context=c, transforms=2, **SMALL),
    "NSF": lambda c: nf.models.NSF(3, context=c, transforms=2, bins=4, **SMALL),
    "NSF-coupling": lambda c: nf.models.NSF(
        3, context=c, transforms=2, bins=4, coupling=True, **SMALL
    ),
    "RealNVP": lambda c: nf.models.RealNVP(3, context=c, transforms=2, **SMALL),
    "NICE": lambda c: nf.models.NICE(3, context=c, transforms=2, **SMALL),
    "Planar": lambda c: nf.models.Planar(3, context=c, layers=2, **SMALL),
    "Radial": lambda c: nf.models.Radial(3, context=c, layers=2, **SMALL),
    "Sylvester": lambda c: nf.models.Sylvester(3, context=c, layers=2, **SMALL),
    "BNAF": lambda c: nf.models.BNAF(3, context=c, transforms=2, hidden=(8, 8)),
    "SOSPF": lambda c: nf.models.SOSPF(3, context=c, transforms=2, **SMALL),
    "BPF": lambda c: nf.models.BPF(3, context=c, transforms=2, degree=6, **SMALL),
    "GF": lambda c: nf.models.GF(3, context=c, transforms=2, components=4, hidden=(8,)),
    "GMM": lambda c: nf.models.GMM(3, context=c, components=4, hidden=(8,)),
    "NCSF-mixed": lambda c: nf.models.NCSF(  # bound 5: randn inputs stay on the circle
        3, context=c, angles=[1], bound=5.0, transforms=2, **SMALL
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("context", [0, 2], ids=["plain", "context"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_on_cuda(name: str, context: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cpu = FACTORIES[name](context).to(dtype)
    with torch.no_grad():  # move away from the identity initialization
        for p in cpu.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gpu = FACTORIES[name](context).to(device="cuda", dtype=dtype)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(64, 3, dtype=dtype)
    c = torch.randn(64, context, dtype=dtype) if context else None
    xg, cg = x.cuda(), None if c is None else c.cuda()

    lp = gpu.log_prob(xg, cg)
    assert lp.device.type == "cuda" and lp.dtype == dtype and lp.shape == (64,)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-8, "atol": 1e-8}
    torch.testing.assert_close(lp.cpu(), cpu.log_prob(x, c), **tol)

    s = gpu.sample(10, None if cg is None else cg[:4])
    assert s.device.type == "cuda" and s.dtype == dtype
    assert s.shape == ((10, 3) if context == 0 else (10, 4, 3))
    assert torch.isfinite(s).all()

    opt = torch.optim.Adam(gpu.parameters(), lr=1e-3)
    loss = -gpu.log_prob(xg, cg).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in gpu.parameters())


def test_chunked_on_cuda() -> None:
    flow = nf.models.NSF(2, transforms=2, bins=4, **SMALL).to("cuda", torch.float64)
    x = torch.randn(1000, 2, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, chunk_size=64), flow.log_prob(x, chunk_size=None))
    assert flow.sample(1000, chunk_size=100).shape == (1000, 2)


def test_compiled_on_cuda() -> None:
    flow = nf.models.MAF(3, transforms=2, **SMALL).cuda()
    flow.validate = False
    x = torch.randn(32, 3, device="cuda")
    compiled = torch.compile(flow.log_prob, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), flow.log_prob(x))


def test_discrete_columns_on_cuda() -> None:
    """A DequantizedFlow moved to CUDA scores as on the CPU (the Sobol points follow the data),
    trains there, and samples integers there."""
    torch.manual_seed(0)
    x = torch.cat([torch.poisson(torch.full((300, 1), 3.0)), torch.randn(300, 1)], -1).double()
    flow = nf.models.standardize(nf.models.NSF(2, transforms=2, bins=4, **SMALL).double(), x,
                                 discrete=[0], bounds=[(0, None), (None, None)]).eval()  # fmt: skip
    cpu = flow.log_prob(x)
    gpu = flow.to("cuda")
    torch.testing.assert_close(gpu.log_prob(x.cuda()).cpu(), cpu)
    s = gpu.sample(500)
    assert s.device.type == "cuda" and bool((s[:, 0] == s[:, 0].floor()).all())
    nf.fit(gpu, x.cuda(), steps=3, progress=False)


def test_flow_matching_on_cuda() -> None:
    """The loss with the same draws matches the CPU's; nf.fit draws on the GPU (its generator
    lives there) and the trained continuous flow scores and samples there."""
    torch.manual_seed(0)
    x = torch.randn(256, 2, dtype=torch.float64)
    c = torch.randn(256, 1, dtype=torch.float64)
    cpu = nf.models.standardize(nf.models.FFJORD(2, context=1, hidden=(16,)).double(), x, c)
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.1 * torch.randn_like(p))
    noise = nf.flow_matching.FlowMatchingObjective(cpu).draw(256, x)
    expected = nf.flow_matching_loss(cpu, x, c, noise=noise)
    gpu = cpu.to("cuda")
    moved = nf.flow_matching.FlowMatchingNoise(noise.z.cuda(), noise.s.cuda())
    got = nf.flow_matching_loss(gpu, x.cuda(), c.cuda(), noise=moved)
    torch.testing.assert_close(got.cpu(), expected)
    history = nf.fit(gpu, x, context=c, steps=20, objective="flow_matching", progress=False)
    assert history.val_nll is not None and all(map(math.isfinite, history.train_loss))
    assert gpu.log_prob(x[:8].cuda(), c[:8].cuda()).device.type == "cuda"
    assert gpu.sample(5, c[:2].cuda()).shape == (5, 2, 2)


def test_coverage_on_cuda() -> None:
    """nf.metrics.coverage draws, scores and ranks on the GPU; seeded runs repeat there."""
    torch.manual_seed(0)
    flow = nf.models.MAF(2, context=1, transforms=1, **SMALL).to("cuda", torch.float64)
    theta = torch.randn(300, 2, dtype=torch.float64, device="cuda")
    x = torch.randn(300, 1, dtype=torch.float64, device="cuda")
    first = nf.metrics.coverage(flow, theta, x, samples=100, seed=0)
    again = nf.metrics.coverage(flow, theta, x, samples=100, seed=0)
    assert (first.hpd_rank == again.hpd_rank).all() and first.marginal_rank.shape == (300, 2)
    plain = nf.models.MAF(2, transforms=1, **SMALL).to("cuda", torch.float64)
    assert nf.metrics.coverage(plain, theta, samples=500, seed=0).coverage.shape == (20,)


def test_torch_distribution_view_on_cuda() -> None:
    """``flow.distribution``: draws, densities and the support's ends on the flow's device;
    the padded set summary's NaN handling there too."""
    x = torch.rand(200, 2) * 3
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), x, bounds=[(0.0, 3.0), (0.0, 3.0)]
    ).to("cuda")
    q = flow.distribution()
    draws = q.rsample((16,))
    assert draws.device.type == "cuda" and q.support.check(draws).all()
    assert q.log_prob(draws).isfinite().all()
    inner = nf.models.MAF(1, context=2, transforms=1, hidden=(8,))
    padded = nf.models.Embedded(1, flow=inner.config, context=4, set_features=1, padded=True)
    c = torch.tensor([[0.5, float("nan"), 1.0, float("nan")]], device="cuda")
    out = padded.to("cuda").log_prob(torch.zeros(1, 1, device="cuda"), c)
    assert out.device.type == "cuda" and out.isfinite().all()


def test_log_prob_on_cuda_is_one_pass() -> None:
    """Without autograd, CPU scoring runs in cache-sized blocks; on a GPU one pass (blocks would
    only add kernel launches)."""
    flow = nf.models.MAF(2, transforms=1, hidden=(128, 128)).cuda().eval()
    calls: list[int] = []
    inner = flow._log_prob
    flow._log_prob = lambda x, c: calls.append(len(x)) or inner(x, c)  # type: ignore[method-assign]
    with torch.no_grad():
        flow.log_prob(torch.randn(20000, 2, device="cuda"))
    assert calls == [20000]


def test_bits_per_dim_of_a_cuda_flow_with_a_cpu_generator() -> None:
    """``dequantize`` drew with ``torch.rand(generator=cpu, device="cuda")``, which torch
    refuses: the noise is drawn where the generator lives, then moved."""
    flow = nf.models.Glow((1, 4, 4), levels=1, pixel_levels=4, hidden=(8,)).to("cuda").eval()
    x = torch.randint(0, 4, (5, 1, 4, 4), device="cuda")
    g = torch.Generator().manual_seed(0)
    bpd = nf.metrics.bits_per_dim(flow, x, levels=4, generator=g)
    assert math.isfinite(float(bpd))
