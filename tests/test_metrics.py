"""nf.metrics: bits per dimension, its exact values and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nfkit as nf
import nfkit.transforms as T


def test_bits_per_dim_uniform_on_the_cube_is_log2_levels() -> None:
    x = torch.randint(0, 17, (50, 1, 2, 2))
    squeeze = nf.Compose(T.Squeeze(), T.Squeeze().inv)  # any volume-preserving map
    cube = nf.Flow(squeeze, nf.distributions.Uniform((1, 2, 2), 0.0, 17.0))
    bpd = nf.metrics.bits_per_dim(cube, x, levels=17, samples=3)
    torch.testing.assert_close(bpd, torch.tensor(math.log2(17)))
    unit = nf.Flow(squeeze, nf.distributions.Uniform((1, 2, 2), 0.0, 1.0))
    per = nf.metrics.bits_per_dim(unit, x, levels=17, scale=1 / 17, reduction="none")
    assert per.shape == (50,)
    torch.testing.assert_close(per, torch.full((50,), math.log2(17)))


def test_bits_per_dim_keeps_dequantized_ends_inside_an_open_domain(monkeypatch) -> None:
    # A flow on the open (0, 1) scored with scale = 1/K: in float32, 255 + u rounds to 256 about
    # once in 1.3e5 draws (3 times in these 614400 with this seed), and u = 0 gives 0; both are
    # outside a Logit's domain. They are moved one step inside, so the score is finite.
    flow = nf.Flow(T.Logit(), nf.distributions.StandardNormal(3072)).eval()
    x = torch.full((200, 3072), 255, dtype=torch.uint8)
    seeded = T.dequantize(x, generator=torch.Generator().manual_seed(0))
    assert int((seeded == 256).sum()) > 0  # the case is really drawn
    bpd = nf.metrics.bits_per_dim(
        flow, x, levels=256, scale=1 / 256, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(bpd)
    # both ends at once: every u drawn as 0 (pixel 0 → 0) or as 1 (pixel 255 → 256)
    ends = torch.tensor([[0] * 1536 + [255] * 1536])
    monkeypatch.setattr(nf.metrics, "_dequantize", lambda v, generator: v + (v > 0).to(v.dtype))
    per = nf.metrics.bits_per_dim(flow, ends, levels=256, scale=1 / 256, reduction="none")
    assert per.shape == (1,) and torch.isfinite(per).all()


def test_bits_per_dim_matches_log_prob_and_checks_input() -> None:
    flow = nf.models.Glow((1, 4, 4), levels=1, steps=1, hidden=(4,), pixel_levels=17).double()
    x = torch.randint(0, 17, (8, 1, 4, 4)).double()
    y = x + 0.5
    expected = -flow.log_prob(y).mean() / (16 * math.log(2))
    got = nf.metrics.bits_per_dim(flow, y, levels=17, dequantize=False)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"bits_per_dim: x must lie in \[0, 16\]"):
        nf.metrics.bits_per_dim(flow, x + 1, levels=17)
    with pytest.raises(ValueError, match=r"bits_per_dim: x must be integer-valued"):
        nf.metrics.bits_per_dim(flow, x.clamp(max=15) + 0.5, levels=17)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"levels": 1}, ValueError, "levels must be an integer >= 2, got 1"),
        ({"samples": 0}, ValueError, "samples must be an integer >= 1, got 0"),
        ({"scale": 0.0}, ValueError, "scale must be a finite number > 0, got 0.0"),
        ({"scale": True}, ValueError, "scale must be a finite number > 0, got True"),
        ({"scale": float("inf")}, ValueError, "scale must be a finite number > 0, got inf"),
        ({"reduction": "sum"}, ValueError, "reduction must be 'mean' or 'none', got 'sum'"),
        ({"generator": 5}, TypeError, "generator must be a torch.Generator or None, got int"),
        ({"x": [[0.0]]}, TypeError, "x must be a torch.Tensor, got list"),
        (  # named as NaN, not as a non-integer pixel
            {"x": torch.full((2, 1, 2, 2), math.nan)},
            ValueError,
            "x contains NaN values; expected finite numbers",
        ),
        (
            {"x": torch.zeros(2, 1, 2, 3)},
            ValueError,
            "x must have trailing shape (1, 2, 2), got shape (2, 1, 2, 3)",
        ),
    ],
)
def test_bits_per_dim_refusals_are_one_line(kwargs: dict, error: type, message: str) -> None:
    cube = nf.Flow(T.Squeeze(), nf.distributions.Uniform((1, 2, 2), 0.0, 17.0))
    call = {"x": torch.randint(0, 17, (4, 1, 2, 2)), "levels": 17, **kwargs}
    with pytest.raises(error) as info:
        nf.metrics.bits_per_dim(cube, **call)
    assert str(info.value) == f"nf.metrics.bits_per_dim: {message}"


def test_compare_scores_ranks_with_paired_standard_errors() -> None:
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(4000, generator=g, dtype=torch.float64) * 3  # hard and easy rows
    a = shared + 0.1 * torch.randn(4000, generator=g, dtype=torch.float64)
    b = shared - 0.05 + 0.1 * torch.randn(4000, generator=g, dtype=torch.float64)
    ranking = nf.metrics.compare_scores({"b": b, "a": a.numpy()})
    assert ranking["model"].tolist() == ["a", "b"] and ranking["rows"].tolist() == [4000] * 2
    assert ranking["difference"].iloc[0] == 0 and ranking["difference_sem"].iloc[0] == 0
    diff, paired, sem = ranking.loc[1, ["difference", "difference_sem", "sem"]]
    assert abs(diff - 0.05) < 0.01 and abs(diff - (a.mean() - b.mean()).item()) < 1e-12
    # the paired error sees through the shared row difficulty: ~0.14/√n, not ~3/√n
    assert abs(paired - (a - b).std().item() / 4000**0.5) < 1e-12 and paired < sem / 10
    with pytest.raises(ValueError, match="every model must score the same rows"):
        nf.metrics.compare_scores({"a": a, "b": b[:10]})
    with pytest.raises(ValueError, match="scores of 'a' have 1 non-finite value"):
        nf.metrics.compare_scores({"a": torch.tensor([0.0, -float("inf")]), "b": b[:2]})
    with pytest.raises(ValueError, match="non-empty mapping"):
        nf.metrics.compare_scores({})
    for bad, kind in ((["x", "y"], "<U1"), ([1j, 2j], "complex128"), ([None, 1.0], "object")):
        with pytest.raises(ValueError) as info:  # not NumPy's own "could not convert" error
            nf.metrics.compare_scores({"a": bad})
        assert str(info.value) == (
            f"nf.metrics.compare_scores: scores of 'a' must be real numbers, got {kind} values"
        )


def test_log_normalizer_se_refuses_what_is_not_an_ess_fraction() -> None:
    assert nf.metrics.log_normalizer_se(1.0, 10) == 0.0  # equal weights
    assert math.isnan(nf.metrics.log_normalizer_se(0.5, 1))
    assert abs(nf.metrics.log_normalizer_se(0.5, 101) - 0.1) < 1e-12  # sqrt((2 - 1) / 100)
    assert math.isnan(nf.metrics.log_normalizer_se(0.0, 10))  # every weight 0: undefined
    for ess, samples, message in (
        (2.0, 10, "ess is the ESS as a fraction of samples, a number in (0, 1], got 2.0"),
        ("a", 10, "ess is the ESS as a fraction of samples, a number in (0, 1], got 'a'"),
        (-0.5, 100, "ess is the ESS as a fraction of samples, a number in (0, 1], got -0.5"),
        (0.5, 2.5, "samples must be"),
    ):
        with pytest.raises(ValueError) as info:
            nf.metrics.log_normalizer_se(ess, samples)
        assert str(info.value).startswith(f"nf.metrics.log_normalizer_se: {message}")


def test_compare_scores_flows_and_refuses_what_does_not_compare() -> None:
    torch.manual_seed(0)
    x = nf.datasets.two_moons(1000, seed=0)
    trained = nf.models.MAF(2, transforms=2, hidden=(16,))
    nf.fit(trained, x, steps=200, progress=False, seed=0)
    untrained = nf.models.NSF(2, transforms=1, hidden=(8,)).double().train()
    test = nf.datasets.two_moons(500, seed=1)
    ranking = nf.metrics.compare({"untrained": untrained, "trained": trained}, test)
    assert ranking["model"].tolist() == ["trained", "untrained"]
    assert ranking["difference"].iloc[1] > 5 * ranking["difference_sem"].iloc[1]
    assert untrained.training  # its mode is restored
    with torch.no_grad():
        assert abs(ranking["log_likelihood"].iloc[0] - trained.log_prob(test).mean().item()) < 1e-5
    counts = torch.poisson(torch.full((200, 2), 3.0))
    discrete = nf.models.standardize(nf.models.MAF(2, transforms=1, hidden=(8,)), counts,
                                     discrete=[0])  # fmt: skip
    with pytest.raises(
        ValueError, match=r"differ in their discrete columns \(\[\] against \[0\]\)"
    ):
        nf.metrics.compare({"plain": trained, "counts": discrete}, counts)
    with pytest.raises(ValueError, match="differ in their event shape"):
        nf.metrics.compare({"a": trained, "b": nf.models.MAF(3, transforms=1)}, test)
    with pytest.raises(TypeError, match="'a' is not an nf.Flow"):
        nf.metrics.compare({"a": torch.nn.Linear(2, 2)}, test)


def _prior_flow() -> nf.Flow:
    """A conditional flow that is still the identity: q(θ | x) = N(0, I) for every x."""
    torch.manual_seed(0)
    return nf.models.MAF(2, context=1, transforms=1, hidden=(8,)).double()


def test_coverage_of_an_exact_posterior_is_the_level() -> None:
    """θ ~ N(0, I) with uninformative data: q = N(0, I) is the exact posterior, so coverage
    equals the level within the band, and the marginal ranks are uniform on 0 … S."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    x = torch.randn(3000, 1, generator=g, dtype=torch.float64)
    result = nf.metrics.coverage(_prior_flow(), theta, x, samples=400, seed=0)
    assert result.calibrated and result.max_deviation <= result.band, result
    assert result.coverage.shape == result.levels.shape == (20,)
    assert result.marginal_rank.shape == (3000, 2) and result.marginal_rank.max() <= 400
    assert abs(result.marginal_rank.mean() / 400 - 0.5) < 0.02
    assert abs(result.hpd_rank.mean() - 0.5) < 0.02
    again = nf.metrics.coverage(_prior_flow(), theta, x, samples=400, seed=0)
    np.testing.assert_array_equal(again.hpd_rank, result.hpd_rank)  # the seed fixes the draws


@pytest.mark.parametrize(("spread", "sign"), [(1.5, -1), (0.6, 1)])
def test_coverage_tells_overconfident_from_conservative(spread: float, sign: int) -> None:
    """θ wider than q (q overconfident): coverage below the level; narrower: above it."""
    g = torch.Generator().manual_seed(2)
    theta = spread * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    x = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    flow = _prior_flow()
    state = torch.get_rng_state()
    result = nf.metrics.coverage(flow, theta, x, samples=300, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded run leaves the global RNG
    assert not result.calibrated
    assert result.verdict.startswith("overconfident" if sign < 0 else "conservative")
    middle = result.levels.tolist().index(0.5)
    assert sign * (result.coverage[middle] - 0.5) > 0.15, result
    assert "calibrated=False" in repr(result)


def test_coverage_refusals_are_one_line() -> None:
    flow = _prior_flow()
    theta, x = torch.randn(10, 2).double(), torch.randn(10, 1).double()
    for call, message in (
        (lambda: nf.metrics.coverage(nf.models.MAF(2), theta, x), "of context size 0 takes no"),
        (lambda: nf.metrics.coverage(flow, theta), "of context size 1 needs the context"),
        (lambda: nf.metrics.coverage(flow, theta, x[:5]), "do not broadcast"),
        (lambda: nf.metrics.coverage(flow, theta, x, levels=[0.5, 1.0]), r"levels must be"),
        (lambda: nf.metrics.coverage(flow, theta[:, :1], x), "theta must have last dim 2"),
        (lambda: nf.metrics.coverage(flow, theta, x, samples=0), "samples must be"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value) and str(info.value).startswith("nf.metrics.coverage")


def test_coverage_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    theta, x = torch.randn(200, 2).double(), torch.randn(200, 1).double()
    result = nf.metrics.coverage(_prior_flow(), theta, x, samples=100, seed=0)
    fig = result.plot(tmp_path / "coverage.png", columns=["mu", "sigma"])
    assert (tmp_path / "coverage.png").stat().st_size > 0
    assert fig.axes[0].get_xlabel() == "credibility level"
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["mu", "sigma"]


def test_coverage_of_an_unconditional_density_on_held_out_rows() -> None:
    """One set of draws ranks every row: a model equal to the data's law is calibrated, one too
    sharp for the data covers too little and one too flat too much."""
    torch.manual_seed(0)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).double()  # still N(0, I)
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    exact = nf.metrics.coverage(flow, rows, samples=5000, seed=0)
    assert exact.calibrated and exact.marginal_rank.shape == (3000, 2)
    assert abs(exact.marginal_rank.mean() / 5000 - 0.5) < 0.02
    middle = exact.levels.tolist().index(0.5)
    for spread, sign in ((1.4, -1), (0.7, 1)):
        result = nf.metrics.coverage(flow, spread * rows, samples=5000, seed=0)
        assert not result.calibrated and sign * (result.coverage[middle] - 0.5) > 0.15


def test_coverage_bands_hold_for_an_exact_model_and_catch_a_shifted_posterior() -> None:
    """Shared draws make the unconditional rows' ranks correlated: the two-sample band keeps an
    exact model's false alarms rare (the one-sample band failed 30 of 40 runs at B = 5000,
    S = 1000). A posterior off by 0.3 prior sd in one feature keeps its coverage curve within
    the band; its marginal ranks give it away."""
    torch.manual_seed(0)
    flow = nf.models.RealNVP(2, transforms=1, hidden=(8,))  # untrained: exactly N(0, I)
    alarms = sum(
        not nf.metrics.coverage(flow, torch.randn(5000, 2), samples=1000, seed=r).calibrated
        for r in range(12)
    )
    assert alarms <= 2, alarms
    posterior = nf.models.RealNVP(2, context=1, transforms=1, hidden=(8,))  # q(θ | x) = N(0, I)
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(2000, 2, generator=g) + torch.tensor([0.3, 0.0])
    result = nf.metrics.coverage(posterior, theta, torch.randn(2000, 1, generator=g),
                                 samples=200, seed=0)  # fmt: skip
    assert result.max_deviation <= result.band  # the coverage curve alone passes
    assert not result.calibrated
    assert result.verdict == "biased (the draws of feature 0 lie too low)"
    assert result.marginal_deviation[1] <= result.marginal_band
    # a DataFrame theta names its columns in the verdict, as the command line does
    pd = pytest.importorskip("pandas")
    framed = nf.metrics.coverage(posterior, pd.DataFrame(theta.numpy(), columns=["mu", "tau"]),
                                 torch.randn(2000, 1, generator=g), samples=200, seed=0)  # fmt: skip
    assert framed.names == ["mu", "tau"]
    assert framed.verdict == "biased (the draws of 'mu' lie too low)"


def test_coverage_of_an_exact_model_of_integers_breaks_density_ties() -> None:
    """Every column integer: the draws of the true value all have its density, so counting
    ties half made an exact model's HPD ranks a step function, and its verdict flip between
    overconfident and conservative with the seed. A random share of the ties is uniform."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 6, (300, 1), generator=g).double()
    inner = nf.models.MAF(1, transforms=2, hidden=(8,)).double()
    flow = nf.models.standardize(inner, counts, discrete="auto", bounds=(1, 5)).eval()
    torch.manual_seed(1)
    rows = flow.sample(2000)  # the model's own law: exactly calibrated
    for seed in range(3):
        result = nf.metrics.coverage(flow, rows, samples=4000, seed=seed)
        assert result.calibrated, (seed, result.max_deviation, result.band)
        assert result.max_deviation < result.band
    posterior = nf.models.standardize(
        nf.models.MAF(1, context=1, transforms=1, hidden=(8,)).double(), counts,
        torch.randn(300, 1, generator=g, dtype=torch.float64), discrete="auto", bounds=(1, 5),
    ).eval()  # fmt: skip
    x = torch.randn(400, 1, generator=g, dtype=torch.float64)
    theta = posterior.sample(1, x)[0]  # (θ, x) pairs from the model itself
    result = nf.metrics.coverage(posterior, theta, x, samples=300, seed=0)
    assert result.max_deviation < result.band, (result.max_deviation, result.band)


def test_pareto_k_recovers_a_known_tail_and_reads_the_extremes() -> None:
    """Weights ``w = u^{-k}`` (``u`` uniform) have a Pareto tail of shape ``k``: k̂ within 0.1 of
    0.25 and 0.75 (measured 0.27 and 0.73, 20,000 draws, seed 0) and beyond 0.7 at 1.25 (1.02:
    the prior shrinks towards 0.5); any scale of the weights gives the same k̂."""
    g = torch.Generator().manual_seed(0)
    for k, low, high in ((0.25, 0.15, 0.35), (0.75, 0.65, 0.85), (1.25, 0.9, 1.6)):
        lw = -k * torch.log(torch.rand(20_000, generator=g, dtype=torch.float64))
        estimate = nf.metrics.pareto_k(lw)
        assert low < estimate < high, (k, estimate)
        assert nf.metrics.pareto_k(lw + 7.0) == pytest.approx(estimate, abs=1e-9)
    assert nf.metrics.pareto_k(torch.zeros(100)) == -math.inf  # q ∝ p̃: no tail
    with torch.device("meta"):  # its grid is made where the weights are (a CUDA fit_vi's
        assert nf.metrics.pareto_k(lw) == pytest.approx(estimate, abs=1e-9)  # k̂ raised)
    rounded = 1.8 + 1e-7 * torch.randn(8192, generator=torch.Generator().manual_seed(0))
    assert nf.metrics.pareto_k(rounded) == -math.inf  # an exact fit, up to float32 rounding
    # float32 rounding levels of an exact fit in 60 dimensions (log p̃ and log q near -85,
    # log w on a few levels 1e-5 apart): no tail either, rather than "a handful of draws"
    levels = torch.tensor([0.0, 7.6e-6, -7.6e-6, 1.5e-5, -1.5e-5], dtype=torch.float64)
    assert nf.metrics.pareto_k(levels[torch.arange(8192) % 5]) == -math.inf
    flow = nf.Flow(nf.transforms.Identity(), nf.distributions.StandardNormal(60))
    exact = nf.metrics.importance_sampling(flow, nf.targets.gaussian(torch.zeros(60)), seed=0)
    assert exact.reliable and exact.pareto_k == -math.inf
    few = torch.full((1000,), -math.inf)
    few[:3] = torch.tensor([0.0, 1.0, 2.0])
    assert nf.metrics.pareto_k(few) == math.inf  # three draws carry all the weight
    with pytest.raises(ValueError, match="needs at least 25 log-weights, got 10"):
        nf.metrics.pareto_k(torch.zeros(10))
    bad = torch.zeros(50)
    bad[3] = math.nan
    with pytest.raises(ValueError, match="log_weights contain NaN or \\+inf"):
        nf.metrics.pareto_k(bad)


def test_importance_sampling_corrects_a_rough_proposal() -> None:
    """q = an untrained flow (standard normal) against p̃ = 3·N((1, -1), 0.8² I): log Ẑ → log 3,
    the weighted mean → (1, -1), resampled draws follow p; k̂ reliable; seeded and
    leaving the global RNG as it was. Against a 3x wider target k̂ flags it."""
    torch.manual_seed(0)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).double()
    loc = torch.tensor([1.0, -1.0], dtype=torch.float64)
    target = nf.targets.gaussian(loc, torch.full((2,), 0.8, dtype=torch.float64))

    log_z_gaussian = 2 * math.log(0.8 * math.sqrt(2 * math.pi))

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return target(x) + math.log(3.0) - log_z_gaussian  # a known Z = 3

    state = torch.get_rng_state()
    result = nf.metrics.importance_sampling(flow, log_p, 20_000, seed=0, chunk_size=3000)
    assert torch.equal(state, torch.get_rng_state())
    again = nf.metrics.importance_sampling(flow, log_p, 20_000, seed=0, chunk_size=3000)
    assert torch.equal(result.log_weights, again.log_weights)
    assert result.samples.shape == (20_000, 2) and result.log_weights.shape == (20_000,)
    assert abs(result.log_normalizer - math.log(3.0)) < 0.03, result.log_normalizer
    torch.testing.assert_close(result.expectation(), loc, rtol=0, atol=0.05)
    torch.testing.assert_close(
        result.expectation(lambda x: x[:, :1] ** 2),
        torch.tensor([1.64], dtype=torch.float64),
        rtol=0,
        atol=0.1,
    )
    with pytest.raises(ValueError, match=r"fn must return a tensor \(S, \*out\) with S = 20000"):
        result.expectation(lambda x: x.sum())  # (a raw IndexError from tensordot)
    draws = result.resample(5000, seed=1)
    torch.testing.assert_close(draws.mean(0), loc, rtol=0, atol=0.06)
    torch.testing.assert_close(
        draws.std(0), torch.full((2,), 0.8, dtype=torch.float64), rtol=0, atol=0.06
    )
    # ESS: 1 / Π_j ∫ p_j² / q_j = 1 / 2.237² ≈ 0.20 in theory (measured 0.198)
    assert result.reliable and 0.17 < result.ess < 0.23 and "reliable=True" in repr(result)
    wide = nf.targets.gaussian(
        torch.zeros(2, dtype=torch.float64), torch.full((2,), 3.0, dtype=torch.float64)
    )
    flagged = nf.metrics.importance_sampling(flow, wide, 20_000, seed=0)
    assert not flagged.reliable and flagged.pareto_k > 0.75, flagged.pareto_k


def test_log_normalizer_standard_error_matches_the_spread_over_seeds() -> None:
    """``log_normalizer_se`` (delta method) against the spread of ``log Ẑ`` over 40 seeds, for
    a proposal (N(0, I)) a little off its target (N(0.3, 0.9² I), k̂ < 0.5); 0 for a perfect
    one; and as ``fit_vi`` reports it."""
    torch.manual_seed(0)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).double()
    target = nf.targets.gaussian(
        torch.full((2,), 0.3, dtype=torch.float64), torch.full((2,), 0.9, dtype=torch.float64)
    )
    runs = [nf.metrics.importance_sampling(flow, target, 500, seed=s) for s in range(40)]
    spread = torch.tensor([r.log_normalizer for r in runs]).std().item()
    se = sum(r.log_normalizer_se for r in runs) / len(runs)
    assert all(r.pareto_k < 0.5 for r in runs)
    assert 0.7 < se / spread < 1.4, (se, spread)
    assert " ± " in repr(runs[0])
    exact = nf.metrics.importance_sampling(flow, lambda x: flow.log_prob(x) + 2.0, 300, seed=0)
    assert exact.log_normalizer == pytest.approx(2.0) and exact.log_normalizer_se < 1e-6
    assert math.isnan(nf.metrics.log_normalizer_se(0.5, 1))
    h = nf.fit_vi(flow, target, steps=5, n_estimate=400, progress=False, seed=0)
    assert h.log_normalizer_se == pytest.approx(nf.metrics.log_normalizer_se(h.ess, 400))
    cond = nf.models.MAF(2, context=1, transforms=1, hidden=(8,)).double()
    h = nf.fit_vi(cond, lambda x, c: -0.5 * ((x - c) ** 2).sum(-1), steps=3, n_estimate=100,
                  context=torch.tensor([[0.0], [1.0]], dtype=torch.float64), progress=False,
                  seed=0)  # fmt: skip
    assert len(h.per_context["log_normalizer_se"]) == 2 and h.log_normalizer_se is None


def test_importance_sampling_refusals_and_context() -> None:
    flow = nf.models.MAF(2, context=1, transforms=1, hidden=(8,))

    def log_p(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x - c) ** 2).sum(-1)

    out = nf.metrics.importance_sampling(flow, log_p, 100, context=torch.tensor([2.0]), seed=0)
    assert out.samples.shape == (100, 2) and math.isfinite(out.log_normalizer)
    with pytest.raises(ValueError, match=r"context must be one context of shape \(C,\), got "):
        nf.metrics.importance_sampling(flow, log_p, 100, context=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="log_density must return one value per sample"):
        nf.metrics.importance_sampling(flow, lambda x, c: x, 100, context=torch.zeros(1))
    with pytest.raises(TypeError, match="flow must be an nf.Flow, got Linear"):
        nf.metrics.importance_sampling(torch.nn.Linear(2, 2), log_p)
    with pytest.raises(TypeError, match="log_density must be callable"):
        nf.metrics.importance_sampling(flow, 3.0)
    plain = nf.models.MAF(2, transforms=1, hidden=(8,))

    def failing(x: torch.Tensor) -> torch.Tensor:  # NaN where a likelihood code fails
        return torch.where(x[:, 0] > 1, math.nan, -0.5 * (x**2).sum(-1))

    with pytest.raises(ValueError, match=r"log_density is NaN at \d+ of 500 draws; return a"):
        nf.metrics.importance_sampling(plain, failing, 500, seed=0)
    with pytest.raises(ValueError, match=r"log_density is \+inf at 500 of 500 draws"):
        nf.metrics.importance_sampling(plain, lambda x: torch.full_like(x[:, 0], math.inf), 500)
    with pytest.raises(ValueError, match="log_density is -inf at every draw"):
        nf.metrics.importance_sampling(plain, lambda x: torch.full_like(x[:, 0], -math.inf), 500)
    half = nf.metrics.importance_sampling(  # -inf outside the support: zero weight, allowed
        plain, lambda x: torch.where(x[:, 0] > 0, -0.5 * (x**2).sum(-1), -math.inf), 2000, seed=0
    )
    assert half.ess == pytest.approx(0.5, abs=0.05)


def test_argument_refusals_are_one_line() -> None:
    """Empty inputs, a seed torch cannot take, a matrix of log-weights."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    conditional = nf.models.MAF(2, context=1, transforms=1, hidden=(8,))
    calls = [
        (lambda: nf.metrics.coverage(flow, torch.zeros(0, 2), samples=10), "theta has no rows"),
        (
            lambda: nf.metrics.coverage(conditional, torch.zeros(0, 2), torch.zeros(0, 1)),
            "theta has no rows",
        ),
        (
            lambda: nf.metrics.coverage(flow, torch.zeros(5, 2), samples=10, seed="a"),
            "seed must be an int or None, got 'a'",
        ),
        (
            lambda: nf.metrics.importance_sampling(flow, nf.targets.gaussian(), 50, seed=2**64),
            r"seed must lie in \[-2\*\*63, 2\*\*64\)",
        ),
        (
            lambda: nf.metrics.pareto_k(torch.randn(100, 3)),
            r"must have shape \(S,\), got \(100, 3\)",
        ),
        (
            lambda: nf.metrics.bits_per_dim(flow, torch.zeros(0, 2), levels=256, dequantize=False),
            "x has no rows to average over",
        ),
    ]
    for call, message in calls:
        with pytest.raises((ValueError, TypeError), match=message):
            call()
