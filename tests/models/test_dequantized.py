"""``nf.models.standardize(..., discrete=...)``: integer columns by uniform dequantization."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nfkit as nf
from nfkit.models import DequantizedFlow


def _counts(n: int = 600, rate: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, 1), rate, dtype=torch.float64), generator=g)


def _line(bounds=None, model: str = "NSF", seed: int = 0) -> DequantizedFlow:
    """A 1-D discrete flow with perturbed (far from the identity) weights, in eval mode."""
    torch.manual_seed(seed)
    inner = getattr(nf.models, model)(1, transforms=2, hidden=(8,)).double()
    x = _counts() if bounds is None else _counts().clamp(*bounds)
    flow = nf.models.standardize(inner, x, discrete=[0], bounds=bounds)
    nf.testing.perturb_parameters(flow, 0.3, seed)
    assert isinstance(flow, DequantizedFlow)
    return flow.eval()


@pytest.mark.parametrize("model", ["NSF", "MAF"])
@pytest.mark.parametrize("bounds", [None, (0, 12)])
def test_probabilities_of_the_integers_sum_to_one(model: str, bounds) -> None:
    flow = _line(bounds, model)
    v = torch.arange(-60.0, 80.0) if bounds is None else torch.arange(0.0, 13.0)
    with torch.no_grad():
        p = flow.log_prob(v[:, None].double(), draws=64).exp()
    assert abs(p.sum().item() - 1) < 5e-3
    assert float(p.max()) < 1


def test_a_discrete_and_a_continuous_column_integrate_to_one() -> None:
    """``Σ_v ∫ P(v, y) dy = 1`` with ``v ∈ 0…9`` (bounded) and ``y`` real."""
    torch.manual_seed(0)
    v = torch.randint(0, 10, (500, 1)).double()
    x = torch.cat([v, v + torch.randn(500, 1, dtype=torch.float64)], -1)
    inner = nf.models.NSF(2, transforms=2, hidden=(8,), bins=4).double()
    flow = nf.models.standardize(inner, x, discrete=[0], bounds=[(0, 9), (None, None)])
    nf.testing.perturb_parameters(flow, 0.2, 0)
    flow.eval()
    y = torch.linspace(-30, 40, 7001, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(torch.arange(10.0).double(), y, indexing="ij"), -1)
    with torch.no_grad():
        p = flow.log_prob(grid.reshape(-1, 2), draws=32).exp().reshape(10, -1)
    assert abs(torch.trapezoid(p, y, dim=1).sum().item() - 1) < 5e-3


def test_scores_are_deterministic_and_training_draws_bound_them_from_below() -> None:
    flow = _line()
    v = torch.tensor([[0.0], [2.0], [5.0]], dtype=torch.float64)
    with torch.no_grad():
        score = flow.log_prob(v)
        assert torch.equal(score, flow.log_prob(v))
        assert torch.equal(score[1:2], flow.log_prob(v[1:2]))  # not a function of the batch
        exact = flow.log_prob(v, draws=512)
        flow.train()
        draws = flow.log_prob(v.expand(4000, 3, 1))  # one fresh u per row
    assert float(draws.std(0).min()) > 0
    # E_u log p(v + u) ≤ log P(v) (Jensen), and the mean is a finite bound
    assert bool((draws.mean(0) <= exact + 0.01).all())
    assert bool((draws.mean(0) > exact - 1).all())
    assert torch.allclose(score, exact, atol=5e-3)


def test_samples_are_integers_in_range_with_the_models_frequencies() -> None:
    flow = _line((0, 5))
    torch.manual_seed(1)
    s = flow.sample(20000)[:, 0]
    assert bool((s == s.floor()).all() & (s >= 0).all() & (s <= 5).all())
    freq = torch.bincount(s.long(), minlength=6).double() / len(s)
    with torch.no_grad():
        p = flow.log_prob(torch.arange(6.0).double()[:, None], draws=64).exp()
    assert torch.allclose(freq, p, atol=0.015)


def test_fit_on_counts_recovers_the_poisson_log_probabilities() -> None:
    torch.manual_seed(0)
    x, test = _counts(2000, 3.0, 0).float(), _counts(2000, 3.0, 1).float()
    flow = nf.models.standardize(
        nf.models.NSF(1, transforms=2, hidden=(16,)), x, discrete="auto", bounds=(0, None)
    )
    nf.fit(flow, x, steps=400, progress=False, seed=0)
    with torch.no_grad():
        model = flow.log_prob(test).mean().item()
    truth = torch.distributions.Poisson(3.0).log_prob(test).mean().item()  # about -1.87
    assert abs(model - truth) < 0.05


def test_auto_finds_the_whole_number_columns() -> None:
    torch.manual_seed(0)
    x = torch.cat([_counts(200), torch.randn(200, 1, dtype=torch.float64), _counts(200)], -1)
    flow = nf.models.standardize(nf.models.MAF(3, transforms=1, hidden=(8,)), x, discrete="auto")
    assert isinstance(flow, DequantizedFlow) and flow.config["discrete"] == [0, 2]
    plain = nf.models.standardize(
        nf.models.MAF(1, transforms=1, hidden=(8,)), x[:, 1:2], discrete="auto"
    )
    assert type(plain) is nf.Flow and plain.config["discrete"] is None
    named = nf.models.standardize(
        nf.models.MAF(3, transforms=1, hidden=(8,)), x, columns=["a", "b", "c"], discrete=["c"]
    )
    assert named.config["discrete"] == [2]


def test_saved_pickled_and_cast_flows_keep_their_discrete_columns(tmp_path) -> None:
    flow = _line((0, 12))
    v = torch.arange(0.0, 6.0).double()[:, None]
    with torch.no_grad():
        expected = flow.log_prob(v)
        path = nf.save(flow, tmp_path / "m.pt")
        loaded = nf.load(path).double().eval()
        assert isinstance(loaded, DequantizedFlow)
        assert torch.allclose(loaded.log_prob(v), expected, atol=1e-12)
        copy = pickle.loads(pickle.dumps(flow))
        assert torch.equal(copy.log_prob(v), expected)
        single = flow.float()
        assert single.discrete.dtype == torch.bool
        assert torch.allclose(single.log_prob(v.float()).double(), expected, atol=1e-4)


def test_grid_density_is_the_dequantized_one() -> None:
    flow = _line()
    y = torch.linspace(-20, 30, 20001, dtype=torch.float64)
    with torch.no_grad():
        p = flow.dequantized_log_prob(y[:, None]).exp()
        cell = flow.dequantized_log_prob(torch.tensor([[2.25], [2.75]]).double()).exp()
        two = flow.log_prob(torch.tensor([[2.0]]).double(), draws=256).exp()
    assert abs(torch.trapezoid(p, y).item() - 1) < 1e-3
    assert float(cell.min()) > 0 and abs(cell.mean().item() - two.item()) < 0.1 * two.item()


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([[0.5]], r"discrete (x|data) column 0 has non-integer values \(e.g. 0.5\)"),
        (
            [[13.0]],
            r"discrete (x|data) column 0 has values outside its range \[0, 12\] \(e.g. 13\)",
        ),
        ([[-1.0]], r"values outside its range \[0, 12\] \(e.g. -1\)"),
        ([[float("nan")]], r"NaN"),
    ],
)
def test_bad_values_are_one_line_errors(x, message: str) -> None:
    flow = _line((0, 12))
    with pytest.raises(ValueError, match=message):
        flow.log_prob(torch.tensor(x, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        nf.fit(flow, torch.tensor(x * 4, dtype=torch.float64), steps=1, progress=False)


def test_bad_settings_are_one_line_errors() -> None:
    x = _counts()
    maf = nf.models.MAF(1, transforms=1, hidden=(8,))
    standardize = nf.models.standardize
    with pytest.raises(ValueError, match=r"discrete x column 0 has non-integer values \(e.g."):
        standardize(maf, x + 0.5, discrete=[0])
    with pytest.raises(ValueError, match="discrete column 3 is out of range for 1 columns"):
        standardize(maf, x, discrete=[3])
    with pytest.raises(ValueError, match="discrete must list modelled columns"):
        standardize(maf, x, discrete=["kids"])
    with pytest.raises(ValueError, match="lists a column twice"):
        standardize(maf, x, discrete=[0, 0])
    with pytest.raises(ValueError, match=r"bounds of discrete column 0 must be whole numbers"):
        standardize(maf, x, discrete=[0], bounds=(-0.5, None))
    with pytest.raises(ValueError, match=r"values outside its range \[1, inf\]"):
        standardize(maf, x, discrete=[0], bounds=(1, None))
    angles = torch.rand(50, 2, dtype=torch.float64) * 6 - 3
    with pytest.raises(ValueError, match="column 0 is an angle of the flow .* cannot be discrete"):
        standardize(nf.models.NCSF(2, transforms=1, hidden=(8,)), angles.round(), discrete=[0])
    flow = _line()
    with pytest.raises(TypeError, match="no reparameterized samples; use sample"):
        flow.rsample(3)
    with pytest.raises(TypeError, match="use sample, then log_prob"):
        flow.sample_and_log_prob(3)
    with pytest.raises(ValueError, match="draws must be"):
        flow.log_prob(x[:2], draws=0)


def test_training_draws_a_fresh_noise_for_each_row_of_a_broadcast_batch() -> None:
    """One row scored against 1000 contexts in train mode: 1000 dequantization draws, not one
    shared by every row (the noise is drawn for the broadcast batch)."""
    torch.manual_seed(0)
    v = torch.poisson(torch.full((200, 1), 3.0)).double()
    c = torch.randn(200, 2, dtype=torch.float64)
    flow = nf.models.standardize(
        nf.models.MAF(1, context=2, transforms=1, hidden=(8,)).double(), v, c, discrete=[0]
    ).train()
    lp = flow.log_prob(torch.tensor([3.0], dtype=torch.float64), c[0].expand(1000, 2))
    assert lp.shape == (1000,) and lp.unique().numel() > 900


def test_context_and_chunks() -> None:
    torch.manual_seed(0)
    c = torch.randn(300, 2, dtype=torch.float64)
    v = torch.poisson(torch.exp(c[:, :1]))
    inner = nf.models.MAF(1, transforms=2, hidden=(8,), context=2).double()
    flow = nf.models.standardize(inner, v, c, discrete=[0]).eval()
    nf.testing.perturb_parameters(flow, 0.3, 0)
    with torch.no_grad():
        whole = flow.log_prob(v, c)
        chunked = flow.log_prob(v, c, chunk_size=64)  # 64 // 16 = 4 rows per block
        s = flow.sample(5, c[:3])
    assert whole.shape == (300,) and torch.allclose(whole, chunked, atol=1e-12)
    assert s.shape == (5, 3, 1) and bool((s == s.floor()).all())


@pytest.mark.parametrize("draw", [0.0, 1.0 - 2.0**-24])
def test_noise_at_a_cells_edge_stays_finite_at_a_bound(monkeypatch, draw: float) -> None:
    """``torch.rand`` returns 0 (and values just below 1): at a bounded column's first or last
    integer, ``v + u`` would sit on the support's end, where the logit is infinite (a float32
    fit on raw digits hit it after 263 steps). The noise keeps 2⁻¹² from the edges."""
    torch.manual_seed(0)
    x = torch.tensor([[0.0], [16.0], [3.0]])
    flow = nf.models.standardize(
        nf.models.MAF(1, transforms=1, hidden=(8,)), x, discrete=[0], bounds=(0, 16)
    ).train()
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, draw, **kw))
    lp = flow.log_prob(x)
    assert bool(torch.isfinite(lp).all())
    lp.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in flow.parameters() if p.grad is not None)


@given(low=st.integers(-50, 50), span=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_any_bounded_integer_range_gets_probability_one(low: int, span: int, seed: int) -> None:
    """Property: for integers ``low … low + span`` (the bounds), a perturbed discrete flow's
    estimated probabilities of those integers sum to the mass of the trimmed cells
    ``[v + ε, v + 1 - ε]`` (one, less the edges), computed exactly through the 1-D map as
    ``Φ(z(v + 1 - ε)) - Φ(z(v + ε))``, and its samples are those integers. A perturbed flow's
    density can be sharp inside a cell near a bound (a trained flow's is flat inside its
    cells): 64 points miss up to 15% of a cell's mass and 1024 up to 6%, so the test takes
    16384 (worst relative error 0.23% over 300 random draws of the arguments). It can also pile
    mass into the trimmed edges at the bounds (11% at low=0, span=1, seed=1378), which is why
    the sum is compared with the trimmed cells' mass and not with one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, low + span + 1, (64, 1), generator=g).double()
    x[:2, 0] = torch.tensor([low, low + span], dtype=torch.float64)  # not constant
    torch.manual_seed(seed)
    inner = nf.models.MAF(1, transforms=1, hidden=(4,)).double()
    flow = nf.models.standardize(inner, x, discrete=[0], bounds=(low, low + span))
    nf.testing.perturb_parameters(flow, 0.3, seed)
    flow.eval()
    v = torch.arange(low, low + span + 1, dtype=torch.float64)[:, None]
    from nfkit.models.dequantized import EDGE

    with torch.no_grad():
        total = flow.log_prob(v, draws=16384).exp().sum().item()
        s = flow.sample(200)
        ends = torch.cat([v + EDGE, v + 1 - EDGE], -1).reshape(-1, 1)  # each cell's trimmed ends
        z = flow.transform(ends)[0].reshape(-1, 2)
        trimmed = (torch.special.ndtr(z[:, 1]) - torch.special.ndtr(z[:, 0])).sum().item()
    assert trimmed > 0.5  # what the trimmed cells hold is most of the mass
    assert abs(total - trimmed) < 2e-2 * trimmed
    assert bool((s == s.floor()).all() & (s >= low).all() & (s <= low + span).all())
