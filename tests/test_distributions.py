"""Base distributions: normalization, sampling moments, trainability, dtype/device movement."""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf
from nfkit import distributions as D

ALL = {
    "StandardNormal": lambda: D.StandardNormal(2),
    "DiagNormal": lambda: D.DiagNormal(
        2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([0.5, 2.0])
    ),
    "Uniform": lambda: D.Uniform(2, low=-2.0, high=3.0),
    "StudentT": lambda: D.StudentT(2, df=4.0),
    "GaussianMixture": lambda: D.GaussianMixture(2, components=3),
    "GaussianMixture-full": lambda: _correlated_mixture(),
    # columns swapped: the uniform part's column is the second
    "Product": lambda: D.Product(
        [D.Uniform(1, low=-2.0, high=3.0), D.DiagNormal(1, loc=1.0, scale=0.5)], [[1], [0]]
    ),
}


def _correlated_mixture() -> D.GaussianMixture:
    dist = D.GaussianMixture(2, components=3, covariance="full")
    with torch.no_grad():
        dist.tril.copy_(torch.tensor([[0.9], [-1.5], [0.0]]))
        dist.log_scale.copy_(torch.tensor([[0.3, -0.5], [0.0, 0.2], [-0.4, 0.1]]))
        dist.logits.copy_(torch.tensor([0.5, -0.2, 0.0]))
    return dist


@pytest.mark.parametrize("name", list(ALL))
def test_density_integrates_to_one(name: str) -> None:
    dist = ALL[name]().double()
    g = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = dist.log_prob(torch.stack([xx, yy], -1)).exp()
    mass = torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()
    # The box's edges cost the trapezoid rule half a grid cell per side.
    assert abs(mass - 1) < (2e-2 if name in ("Uniform", "Product") else 5e-3), mass


@pytest.mark.parametrize("name", list(ALL))
def test_samples_match_density(name: str) -> None:
    """The mean of log p under samples equals the density's own entropy integral (first moment)."""
    dist = ALL[name]().double()
    torch.manual_seed(0)
    s = dist.sample((100_000,))
    assert s.shape == (100_000, 2) and s.dtype == torch.float64
    g = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx, yy], -1)
    p = dist.log_prob(pts).exp()
    mean_grid = torch.stack(
        [torch.trapezoid(torch.trapezoid(p * pts[..., i], g, dim=1), g) for i in range(2)]
    )
    torch.testing.assert_close(s.mean(0), mean_grid, atol=0.05, rtol=0.02)


def test_product_puts_each_part_on_its_columns() -> None:
    """``log p`` is the sum of the parts' on their columns; samples put each part's draws in
    its columns; the groups must split the columns; the parts follow the module."""
    base = ALL["Product"]()
    z = torch.tensor([[1.0, 2.5], [0.0, -1.0], [1.0, 3.5]])
    expected = D.Uniform(1, -2.0, 3.0).log_prob(z[:, 1:]) + D.DiagNormal(
        1, loc=1.0, scale=0.5
    ).log_prob(z[:, :1])
    torch.testing.assert_close(base.log_prob(z), expected)
    assert base.log_prob(z)[2] == -math.inf
    s = base.sample((2000,))
    assert s.shape == (2000, 2) and bool((s[:, 1] >= -2).all() & (s[:, 1] <= 3).all())
    assert abs(s[:, 0].mean().item() - 1.0) < 0.05
    assert base.double().sample((3,)).dtype == torch.float64
    assert base.reparameterized
    with pytest.raises(ValueError, match="must split 0..D-1"):
        D.Product([D.StandardNormal(1), D.StandardNormal(1)], [[0], [2]])
    with pytest.raises(ValueError, match=r"event shape \(2,\) for its columns \[0, 1\]"):
        D.Product([D.StandardNormal(1)], [[0, 1]])
    with pytest.raises(ValueError, match="one column group per part"):
        D.Product([D.StandardNormal(1)], [[0], [1]])


@pytest.mark.parametrize(
    "name", ["DiagNormal", "StudentT", "GaussianMixture", "GaussianMixture-full"]
)
def test_trainable_and_reparameterized(name: str) -> None:
    dist = ALL[name]()
    params = list(dist.parameters())
    assert params, f"{name} should be trainable by default"
    dist.rsample((64,)).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_student_t_matches_torch() -> None:
    dist = D.StudentT(3, df=3.0).double()
    z = torch.randn(10, 3, dtype=torch.float64) * 4
    ref = torch.distributions.StudentT(torch.tensor(3.0, dtype=torch.float64)).log_prob(z).sum(-1)
    torch.testing.assert_close(dist.log_prob(z), ref)


@pytest.mark.parametrize("df", [1e5, 1e6, 1e7])
def test_student_t_in_float32_keeps_its_normalizer_for_large_df(df: float) -> None:
    """The normalizer's two lgamma terms cancel to about ½ log(ν/2): in float32 that lost
    0.06 nats per feature at ν = 10⁶ and 0.3 at 10⁷ (the density integrated to 1.33)."""
    z = torch.tensor([[0.0, 1.0, 3.0]])
    dist = D.StudentT(3, df=df, trainable=False)
    ref = torch.distributions.StudentT(torch.tensor(df, dtype=torch.float64)).log_prob(z.double())
    assert dist.log_prob(z).dtype == torch.float32
    torch.testing.assert_close(dist.log_prob(z).double(), ref.sum(-1), atol=2e-6, rtol=0)


def test_uniform_outside_is_minus_inf() -> None:
    u = D.Uniform(2)
    lp = u.log_prob(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert lp[0] == pytest.approx(-2 * math.log(2)) and lp[1] == -math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_draws_stay_inside_the_open_box(monkeypatch, dtype) -> None:
    """``torch.rand`` gives exactly 0 about once in 2^24 float32 draws: such a draw was ``low``,
    where a flow ending in tanh⁻¹ or logit sampled -inf with a NaN log-density (3 of 2^25
    draws with seed 1). Every draw, also at u = 0 and just below 1, lies strictly inside."""
    top = 1 - torch.finfo(dtype).eps / 2
    for value in (0.0, top):
        monkeypatch.setattr(torch, "rand", lambda *shape, value=value, **kw: torch.full(
            shape, value, **kw))  # fmt: skip
        for u in (D.Uniform(2, low=-1.0, high=1.0), D.Uniform(1, low=1e6, high=1e6 + 1.0)):
            z = u.to(dtype).sample((4,))
            assert bool(((z > u.low) & (z < u.high)).all()), (value, z)
        for layer, low in ((nf.transforms.Tanh(), -1.0), (nf.transforms.Sigmoid(), 0.0)):
            flow = nf.Flow(layer.inv, D.Uniform(1, low=low, high=1.0)).to(dtype)
            x, log_q = flow.sample_and_log_prob(3)
            assert torch.isfinite(x).all() and torch.isfinite(log_q).all(), (layer, value)


def test_follow_module_dtype() -> None:
    for make in ALL.values():
        dist = make().double()
        assert dist.sample((3,)).dtype == torch.float64
        assert dist.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_conditional_mixture_follows_its_context() -> None:
    """A mixture density network: each context row gives its own normalized mixture, and
    samples for a context row follow that row's weights and means (Gumbel-max choice)."""
    torch.manual_seed(0)
    dist = D.GaussianMixture(1, components=2, context=1, hidden=(8,)).double()
    with torch.no_grad():  # weights (σ(±2c)), means ±5 c-independent: set through the bias
        w, b = dist.params.net.parameter_views()[-1]
        w.zero_()
        b.copy_(torch.tensor([0.0, 0.0, -5.0, 5.0, 0.0, 0.0]))
        first = dist.params.net.parameter_views()[0]
        first[0].zero_()
        first[0][0, 0] = 1.0  # hidden unit 0 = relu(c)
        first[1].zero_()
        w[1, 0] = 2.0  # logit of component 1 grows with relu(c)
    context = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    g = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    p = dist.log_prob(g[:, None, None], context).exp()  # (6001, 2)
    torch.testing.assert_close(torch.trapezoid(p, g, dim=0), torch.ones(2, dtype=torch.float64))
    s = dist.rsample((40_000, 2), context)  # (40000, 2, 1)
    share = (s[..., 0] > 0).double().mean(0)
    expected = torch.sigmoid(torch.tensor([0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(share, expected, atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="needs a context"):
        dist.log_prob(torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="is trainable"):
        D.GaussianMixture(1, context=2, trainable=False)


@pytest.mark.parametrize("covariance", D.COVARIANCES)
@pytest.mark.parametrize("context", [0, 3])
def test_mixture_matches_torch(context: int, covariance: str) -> None:
    """log p against torch's MixtureSameFamily of MultivariateNormal(scale_tril=L_k), and the
    samples' covariance against the mixture's, for each covariance type; the factors have the
    type's structure (diagonal, a multiple of I, or one for all components)."""
    torch.manual_seed(0)
    dist = D.GaussianMixture(3, components=2, covariance=covariance, context=context, hidden=(8,))
    dist = nf.testing.perturb_parameters(dist.double(), 0.5 if context == 0 else 0.1, 1)
    c = torch.randn(3, dtype=torch.float64) if context else None
    log_weights, loc, log_scale, factor = dist._mixture(c)
    if factor is None:
        factor = torch.diag_embed(log_scale.exp())
        assert covariance != "spherical" or bool((log_scale == log_scale[..., :1]).all())
    else:
        assert factor.shape[-3] == (1 if covariance == "tied" else 2)
        factor = factor.expand(2, 3, 3)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_weights),
        torch.distributions.MultivariateNormal(loc, scale_tril=factor),
    )
    z = torch.randn(50, 3, dtype=torch.float64) * 2
    torch.testing.assert_close(dist.log_prob(z, c), reference.log_prob(z))
    s = dist.rsample((200_000,), c)
    assert s.shape == (200_000, 3)
    weights = log_weights.exp()
    second = factor @ factor.mT + loc.unsqueeze(-1) * loc.unsqueeze(-2)  # E[z zᵀ] per component
    mean = (weights.unsqueeze(-1) * loc).sum(-2)
    covariance = (weights[:, None, None] * second).sum(0) - mean[:, None] * mean[None, :]
    torch.testing.assert_close(s.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), covariance, atol=0.06, rtol=0.03)


def test_bases_refuse_non_finite_settings_and_take_a_large_df() -> None:
    """``StudentT(df=711)`` overflowed ``expm1``; ``df=inf``, an infinite Uniform end or a NaN
    DiagNormal loc gave NaN or -inf densities silently."""
    base = D.StudentT(1, df=1000.0)
    assert (
        float(base.df.detach()) == pytest.approx(1000.0) and torch.isfinite(base.sample(3)).all()
    )
    for build, message in (
        (lambda: D.StudentT(1, df=math.inf), "StudentT: df must be a finite number > 0.5"),
        (lambda: D.Uniform(1, 0.0, math.inf), "Uniform: need finite high > low"),
        (lambda: D.DiagNormal(1, loc=math.nan), "DiagNormal: loc must be finite"),
        (lambda: D.DiagNormal(1, scale=math.inf), "DiagNormal: scale must be positive and finite"),
        (
            lambda: D.DiagNormal(3, loc=torch.tensor([1.0, 2.0])),
            r"^DiagNormal: loc of shape \(2,\) does not broadcast to the event shape \(3,\)$",
        ),
        (
            lambda: D.DiagNormal((2, 3), scale=torch.ones(2)),
            r"^DiagNormal: scale of shape \(2,\) does not broadcast to the event shape \(2, 3\)$",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            build()
    assert D.StandardNormal(2).sample(5).shape == (5, 2)  # an int n, as Flow.sample takes


def test_diag_normal_takes_trainable_second_as_the_api_contract_writes_it() -> None:
    """``DiagNormal(D, trainable)``: ``False`` was read as ``loc`` (a trainable base), ``True``
    as a mean of 1."""
    fixed = D.DiagNormal(2, False)
    assert not any(p.requires_grad for p in fixed.parameters()) and torch.equal(
        fixed.loc, torch.zeros(2)
    )
    trained = D.DiagNormal(2, True)
    assert {n for n, _ in trained.named_parameters()} == {"loc", "log_scale"}
    assert torch.equal(trained.loc.detach(), torch.zeros(2))
    with pytest.raises(TypeError, match="DiagNormal: trainable must be True or False, got 0.5"):
        D.DiagNormal(2, 0.5)
    with pytest.raises(TypeError):  # loc and scale by keyword only
        D.DiagNormal(2, True, 1.0)


def test_factory_bases_match_the_flow_and_a_frozen_mixture_part_is_reparameterized() -> None:
    """A base object of another width built (log_prob then said "last dim 3"); a base object
    went into the config (unsaveable; a rebuilt flow shared it); base="uniform" gave density 0
    beyond [-1, 1] under a flow onto the real line; a Product kept its parts' reparameterized
    flag from when it was built; ``has_rsample`` was True for a mixture base."""
    with pytest.raises(ValueError, match=r"base: a distribution of event shape \(3,\)"):
        nf.models.MAF(2, base=D.StandardNormal(3))
    assert nf.models.MAF(2, base=D.StudentT(2, df=3.0)).config is None  # saved as hand-built
    with pytest.raises(ValueError, match="a flow onto the real line has no bounded base"):
        nf.models.MAF(1, base="uniform")
    with pytest.raises(ValueError, match="base='gmm' is for vector events"):
        nf.models.Glow((2, 4, 4), levels=1, base="gmm")
    mixture = D.GaussianMixture(1, components=2)
    product = D.Product([mixture, D.StandardNormal(1)], [[0], [1]])
    assert not product.reparameterized
    mixture.logits.requires_grad_(False)
    assert product.reparameterized
    flow = nf.models.MAF(2, transforms=1, hidden=(8,), base="gmm")
    assert not flow.distribution().has_rsample
    assert nf.models.MAF(2, transforms=1, hidden=(8,)).distribution().has_rsample


def test_a_conditional_mixture_names_a_sample_shape_without_the_context_batch() -> None:
    """``shape`` is the whole batch (a flow passes the context's batch in it): ``(3,)`` with a
    context of 5 rows was torch's "size of tensor a (5) must match" error."""
    from nfkit.distributions import GaussianMixture

    mixture, c = GaussianMixture(2, 3, context=4), torch.randn(5, 4)
    assert mixture.sample((5,), c).shape == (5, 2)
    assert mixture.sample((3, 5), c).shape == (3, 5, 2)
    with pytest.raises(ValueError, match=r"shape \(3,\) must include the context's batch"):
        mixture.sample((3,), c)


@pytest.mark.parametrize("name", list(ALL))
def test_rsample_takes_an_int_and_log_prob_names_a_wrong_event(name: str) -> None:
    """`rsample(5)` as `sample(5)` (a raw TypeError before); `log_prob` called directly with
    another event width is refused (StandardNormal(2) summed 4 coordinates under its own
    normalizer)."""
    dist = ALL[name]()
    assert dist.rsample(5).shape == dist.sample(5).shape == (5, 2)
    wrong = torch.zeros(3, 4)
    with pytest.raises(ValueError) as info:
        dist.log_prob(wrong)
    assert str(info.value).endswith("z must have trailing shape (2,), got shape (3, 4)")


def test_uniform_takes_a_range_per_feature() -> None:
    box = D.Uniform(2, torch.tensor([0.0, 1.0]), 2.0)
    inside, outside = torch.tensor([1.0, 1.5]), torch.tensor([1.0, 0.5])
    assert torch.allclose(box.log_prob(inside), torch.tensor(-math.log(2.0)))
    assert box.log_prob(outside) == -math.inf
    draws = box.sample(1000)
    assert bool((draws[:, 1] >= 1).all()) and bool((draws[:, 0] < 1).any())
    for call, error, message in (
        (lambda: D.Uniform(2, "a", 1.0), TypeError, "Uniform: low must be a number or a tensor"),
        (lambda: D.Uniform(2, torch.tensor([0.0, 2.0]), 2.0), ValueError, "need finite high > low"),
        (lambda: D.DiagNormal(2, loc="a"), TypeError, "DiagNormal: loc must be a number or a tensor"),
    ):
        with pytest.raises(error, match=message):
            call()
