"""Chunked evaluation: ``Flow.log_prob`` / ``Flow.sample`` with ``chunk_size`` equal the one-pass results."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import nfkit as nf

SMALL = {"transforms": 2, "hidden": (16, 16)}


def test_log_prob_chunked_equals_unchunked() -> None:
    flow = nf.models.NSF(3, bins=4, **SMALL).double()
    x = torch.randn(1001, 3, dtype=torch.float64)
    ref = flow.log_prob(x, chunk_size=None)
    for size in (1, 7, 500, 1001, 5000):
        torch.testing.assert_close(flow.log_prob(x, chunk_size=size), ref, rtol=0, atol=1e-12)


def test_log_prob_chunked_batch_shapes_and_context() -> None:
    flow = nf.models.MAF(3, context=2, **SMALL).double()
    x = torch.randn(6, 7, 3, dtype=torch.float64)
    c = torch.randn(7, 2, dtype=torch.float64)  # broadcast against x's batch (6, 7)
    ref = flow.log_prob(x, c, chunk_size=None)
    out = flow.log_prob(x, c, chunk_size=5)
    assert out.shape == (6, 7)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_log_prob_chunked_gradients() -> None:
    flow = nf.models.MAF(2, **SMALL).double()
    x = torch.randn(50, 2, dtype=torch.float64)
    grads = []
    for size in (None, 8):
        flow.zero_grad()
        flow.log_prob(x, chunk_size=size).mean().backward()
        grads.append([p.grad.clone() for p in flow.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(1000,), (10, 100)])
def test_sample_chunked_equals_unchunked(shape: tuple[int, ...]) -> None:
    flow = nf.models.MAF(2, **SMALL)
    torch.manual_seed(0)
    ref = flow.sample(shape, chunk_size=None)
    torch.manual_seed(0)
    out = flow.sample(shape, chunk_size=160)
    assert out.shape == (*shape, 2)
    # torch's CPU normal generator draws in blocks of 16, so chunks of 160 see the same stream.
    torch.testing.assert_close(out, ref)


def test_sample_chunked_with_context() -> None:
    flow = nf.models.NSF(2, context=3, bins=4, **SMALL)
    c = torch.randn(4, 3)
    out = flow.sample(25, c, chunk_size=10)  # 10 // 4 = 2 sample rows per chunk
    assert out.shape == (25, 4, 2)
    assert torch.isfinite(flow.log_prob(out, c)).all()
    assert flow.sample(0, c, chunk_size=3).shape == (0, 4, 2)


class _ToContext(nf.Transform):
    """Sampling maps z to ``context + 1e-3 z``: each sample shows which context it was drawn for."""

    def forward(self, x, context=None):
        return (x - context) * 1e3, x.new_full(x.shape[:-1], 3 * 6.907755278982137)

    def inverse(self, z, context=None):
        return context + 1e-3 * z, z.new_full(z.shape[:-1], -3 * 6.907755278982137)


@pytest.mark.parametrize(("shape", "contexts"), [((), (10,)), ((3,), (2, 7)), ((0,), (9,))])
def test_sample_chunks_over_many_contexts(shape, contexts) -> None:
    """More contexts than ``chunk_size``: drawn a few contexts at a time (it drew every context
    in one pass: 424 MiB for 2M contexts at any chunk size), each sample for its own context."""
    flow = nf.Flow(_ToContext(), nf.distributions.StandardNormal(3), context=3)
    calls = []
    original = flow._rsample
    flow._rsample = lambda where, n, c: (
        calls.append(torch.Size(n).numel() * c[..., 0].numel()) or (original(where, n, c))
    )
    context = torch.randn(*contexts, 3) * 10
    x = flow.sample(shape, context, chunk_size=4)
    assert x.shape == (*shape, *contexts, 3)
    torch.testing.assert_close(x, context.expand_as(x), atol=0.02, rtol=0)
    assert calls and max(calls) <= 4


def test_default_chunk_size_and_errors() -> None:
    flow = nf.models.MAF(2, **SMALL)
    assert nf.core.CHUNK_SIZE == 2**16
    x = torch.randn(2**16 + 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x, chunk_size=None))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            flow.log_prob(x[:4], chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            flow.sample(4, chunk_size=bad)


def _calls(flow: nf.Flow, x: torch.Tensor, **kwargs: object) -> tuple[int, torch.Tensor]:
    """How many times the flow's transform runs for one ``log_prob`` call, and its result."""
    calls = []
    hook = flow.transform.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = flow.log_prob(x, **kwargs)
    finally:
        hook.remove()
    return len(calls), out


def test_no_grad_log_prob_runs_in_cache_sized_blocks() -> None:
    flow = nf.models.NSF(2, bins=4, transforms=2, hidden=(128, 128)).double()
    x = torch.randn(5000, 2, dtype=torch.float64)
    ref = flow.log_prob(x, chunk_size=None)
    with torch.no_grad():
        n_blocks, out = _calls(flow, x)  # 2**18 / 128 = 2048 rows per block
        n_opt_out, _ = _calls(flow, x, chunk_size=None)
        n_small, _ = _calls(flow, x, chunk_size=1000)  # a smaller chunk_size is kept
    assert (n_blocks, n_opt_out, n_small) == (3, 1, 5)
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-12)
    assert _calls(flow, x)[0] == 1  # with autograd: one pass
    wide = nf.models.MAF(64, transforms=1, hidden=(8,))
    with torch.no_grad():
        assert _calls(wide, torch.randn(5000, 64))[0] == 3  # 2**17 / 64 = 2048 rows per block


@pytest.mark.parametrize(
    ("flow", "features", "rows"),
    [
        (lambda: nf.models.MAF(2, hidden=(128, 128)), 2, 2048),  # widest layer 128
        (lambda: nf.models.MAF(8, hidden=(64, 64)), 8, 4096),  # narrower: larger blocks
        (lambda: nf.models.MAF(2, hidden=(16, 16)), 2, 8192),  # at most 8192 rows
        (lambda: nf.models.MAF(64, hidden=(64, 64)), 64, 2048),  # 64 x 2 out, 2**17 entries
        (  # no network: the event alone sets the rows, 2**17 / 64
            lambda: nf.Flow(
                nf.transforms.Affine(torch.zeros(64)), nf.distributions.StandardNormal(64)
            ),
            64,
            2048,
        ),
        (
            lambda: nf.Flow(
                nf.transforms.Affine(torch.zeros(128)), nf.distributions.StandardNormal(128)
            ),
            128,
            1024,
        ),
        (lambda: nf.models.NSF(16, hidden=(64, 64), coupling=True), 16, 1424),  # 8 x 23 out
        (lambda: nf.models.NSF(16, hidden=(64, 64)), 16, 1024),  # 16 x 23 out: at least 1024
        (
            lambda: nf.Flow(
                nf.transforms.Affine(torch.zeros(3)), nf.distributions.StandardNormal(3)
            ),
            3,
            8192,
        ),
    ],
)
def test_block_rows_follow_the_widest_layer(flow: object, features: int, rows: int) -> None:
    from nfkit.core import _block_rows

    f = flow()  # type: ignore[operator]
    assert _block_rows(f, features) == rows
    x = torch.randn(rows + 5, features)
    with torch.no_grad():
        assert _calls(f, x)[0] == 2  # one full block and the rest


class _BatchNormNet(torch.nn.Module):
    """A conditioner with torch's own BatchNorm1d inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.BatchNorm1d(1), torch.nn.Linear(1, 2))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


def test_batch_coupled_flows_are_evaluated_in_one_pass() -> None:
    """Train-mode batch statistics (and ActNorm's first-batch initialization) see the whole batch."""
    x = torch.randn(20000, 2, dtype=torch.float64)  # 8192 rows per block once uncoupled
    bn = nf.models.RealNVP(2, batch_norm=True, **SMALL).double()
    with torch.no_grad():
        assert _calls(bn, x)[0] == 1
        bn.eval()
        assert _calls(bn, x)[0] == 3
    norm = nf.transforms.ActNorm(2)
    act = nf.Flow(norm, nf.distributions.StandardNormal(2)).double()
    with torch.no_grad():
        assert _calls(act, x)[0] == 1  # initializes from all the rows
        torch.testing.assert_close(norm.loc, x.mean(0))
        assert _calls(act, x)[0] == 3
    torch_bn = nf.Flow(
        nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), conditioner=_BatchNormNet()),
        nf.distributions.StandardNormal(2),
    ).double()
    with torch.no_grad():
        assert _calls(torch_bn, x)[0] == 1


@pytest.mark.parametrize("grad", [False, True])
def test_batch_coupled_flows_ignore_chunk_size(grad: bool) -> None:
    """Memory chunks too would give each chunk its own batch statistics: one pass instead."""
    x = torch.randn(3000, 2, dtype=torch.float64)
    flow = nf.models.RealNVP(2, batch_norm=True, **SMALL).double()
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    with torch.set_grad_enabled(grad):
        ref = flow.log_prob(x, chunk_size=None)
        running = flow.transform[1].running_mean.clone()
        flow.load_state_dict(state)
        n, out = _calls(flow, x, chunk_size=1000)
    assert n == 1
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(flow.transform[1].running_mean, running, rtol=0, atol=0)
    flow.eval()  # running statistics: the chunks are independent again
    with torch.set_grad_enabled(grad):
        assert _calls(flow, x, chunk_size=1000)[0] == 3


_SCORE_8M = """
import torch, nfkit as nf
torch.set_num_threads(1)
def kib(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
flow = nf.models.MAF(2, transforms=2, hidden=(64, 64)).eval()
x = torch.randn(8_000_000, 2)
before = kib("VmRSS")
with torch.no_grad():
    lp = flow.log_prob(x)
assert lp.shape == (8_000_000,) and bool(torch.isfinite(lp).all())
print((kib("VmHWM") - before) / 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_no_grad_log_prob_of_millions_of_rows_stays_in_bounded_memory() -> None:
    """Without autograd the blocks are written into one output: kept in a list, thousands of
    small block outputs between the blocks' freed intermediates fragmented glibc's heap and
    the peak grew with the rows (8M rows of this MAF: 436–1046 MB over the input in three
    fresh processes, 36–42 MB after; the output itself is 31 MB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _SCORE_8M], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip()) < 150, run.stdout
