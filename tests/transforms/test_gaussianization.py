"""Specific tests of the Gaussianization layers and RBIG: fitting, stopping, densities, reuse."""

from __future__ import annotations

import io
import math

import pytest
import torch

import nfkit as nf
from nfkit.distributions import StandardNormal
from nfkit.testing import jacobian_logdet
from nfkit.transforms import MarginalGaussianization, Rotation


def _moons(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = (torch.rand(n, generator=g) < 0.5).unsqueeze(-1)
    a = torch.stack([t.cos(), t.sin()], -1)
    b = torch.stack([1 - t.cos(), 0.5 - t.sin()], -1)
    return torch.where(upper, a, b) + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def moons_rbig() -> nf.Flow:
    return nf.models.RBIG(2, layers=60).fit(_moons(2000, seed=0))


def test_marginal_gaussianization_fits_marginals() -> None:
    """Fitted on skewed data: outputs have mean ≈ 0, std ≈ 1, and the map is increasing."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 3, generator=g, dtype=torch.float64).exp() * torch.tensor([1.0, 5, 0.1])
    layer = MarginalGaussianization(3, bins=16).double().fit(x)
    z, _ = layer(x)
    assert z.mean(0).abs().max() < 0.05 and (z.std(0) - 1).abs().max() < 0.05
    grid = torch.linspace(-50, 50, 2001, dtype=torch.float64).unsqueeze(-1).expand(-1, 3)
    assert (layer(grid)[0].diff(dim=0) > 0).all()
    # Linear tails: constant slope beyond the outer knots, and finite far out.
    far = torch.tensor([[1e6] * 3, [2e6] * 3], dtype=torch.float64)
    _, ladj = layer(far)
    torch.testing.assert_close(ladj[0], ladj[1])


def test_unfitted_layers_are_identities() -> None:
    x = torch.randn(4, 3)
    for layer in (MarginalGaussianization(3), Rotation(3)):
        z, ladj = layer(x)
        torch.testing.assert_close(z, x)
        assert ladj.abs().max() < 1e-6


def test_pca_rotation_decorrelates() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 3, generator=g, dtype=torch.float64
    )
    r = Rotation(3).double().fit(x)
    cov = torch.cov(r(x)[0].T)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 1e-10
    assert (cov.diagonal().diff() <= 0).all()  # decreasing variance
    q = r.weight
    torch.testing.assert_close(q @ q.T, torch.eye(3, dtype=torch.float64))
    q_random = Rotation(3, method="random", seed=1).double().fit(x).weight
    torch.testing.assert_close(q_random @ q_random.T, torch.eye(3, dtype=torch.float64))


def test_rbig_stopping_test_stops() -> None:
    """On Gaussian data the held-out gains vanish fast: far fewer layers than the maximum."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1500, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]], dtype=torch.float64
    )
    flow = nf.models.RBIG(3, layers=100, tol=1e-3, patience=4).fit(x)
    assert len(flow.gains) < 30
    assert all(gain < 1e-3 for gain in flow.gains[-4:])
    assert flow.config["layers"] == len(flow.transform) // 2 <= len(flow.gains)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rbig_takes_the_data_dtype_whole(dtype: torch.dtype) -> None:
    """The fitted flow, its base included, is in the data's dtype: it samples and scores there."""
    x = torch.randn(400, 2, dtype=dtype) ** 3
    other = torch.float64 if dtype == torch.float32 else torch.float32
    flow = nf.models.RBIG(2, layers=3).to(other)  # built in the other dtype
    flow.fit(x)
    samples = flow.sample(5)
    assert samples.dtype == dtype and flow.log_prob(samples).dtype == dtype


def test_rbig_log_prob_is_change_of_variables(moons_rbig: nf.Flow) -> None:
    x = _moons(300, seed=1)  # held out
    with torch.no_grad():
        lp = moons_rbig.log_prob(x)
    z, _ = moons_rbig.transform(x)
    ref = StandardNormal(2).double().log_prob(z) + jacobian_logdet(
        lambda u: moons_rbig.transform(u)[0], x
    )
    torch.testing.assert_close(lp, ref, atol=1e-8, rtol=1e-8)
    x_back, _ = moons_rbig.transform.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)


def test_rbig_beats_a_gaussian_on_two_moons(moons_rbig: nf.Flow) -> None:
    train, test = _moons(2000, seed=0), _moons(2000, seed=2)
    gaussian = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    with torch.no_grad():
        rbig_ll = moons_rbig.log_prob(test).mean().item()
    gaussian_ll = gaussian.log_prob(test).mean().item()
    assert rbig_ll > gaussian_ll + 0.3, (rbig_ll, gaussian_ll)


def test_rbig_density_integrates_to_one(moons_rbig: nf.Flow) -> None:
    g = torch.linspace(-4, 5, 451, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        p = moons_rbig.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(451, 451)
    mass = torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()
    assert abs(mass - 1.0) < 1e-2, mass


def test_rbig_save_load_keeps_fitted_layers(moons_rbig: nf.Flow) -> None:
    assert moons_rbig.config["layers"] == len(moons_rbig.transform) // 2 < 60
    buffer = io.BytesIO()
    torch.save(moons_rbig.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = nf.models.build(moons_rbig.config).double()
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    x = _moons(50, seed=3)
    torch.testing.assert_close(rebuilt.log_prob(x), moons_rbig.log_prob(x))
    samples = rebuilt.sample(100)
    assert samples.shape == (100, 2) and torch.isfinite(samples).all()


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
def test_rbig_as_first_stage_of_a_gradient_flow(frozen: bool) -> None:
    """RBIG layers are differentiable in x: RBIG ∘ NSF trained with plain Adam improves."""
    data = _moons(1000, seed=4)
    rbig = nf.models.RBIG(2, layers=3, bins=16).fit(data)
    rbig.requires_grad_(not frozen)
    before = {k: v.clone() for k, v in rbig.state_dict().items()}
    torch.manual_seed(0)
    nsf = nf.models.NSF(2, transforms=2, hidden=(16, 16), bins=4).double()
    flow = nf.Flow(nf.Compose(rbig.transform, nsf.transform), StandardNormal(2).double())
    opt = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=3e-3)
    with torch.no_grad():
        start = -flow.log_prob(data).mean().item()
    for step in range(40):
        batch = data[torch.randint(0, 1000, (200,), generator=torch.Generator().manual_seed(step))]
        opt.zero_grad()
        (-flow.log_prob(batch).mean()).backward()
        opt.step()
    with torch.no_grad():
        end = -flow.log_prob(data).mean().item()
    assert math.isfinite(end) and end < start - 0.02, (start, end)
    changed = [k for k, v in rbig.state_dict().items() if not torch.equal(v, before[k])]
    assert (not changed) if frozen else changed


def test_errors_are_one_line() -> None:
    with pytest.raises(
        ValueError, match=r"MarginalGaussianization.fit: x must have shape \(n, 2\)"
    ):
        MarginalGaussianization(2).fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="Rotation: method must be 'pca' or 'random'"):
        Rotation(2, method="ica")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RBIG: rotation must be"):
        nf.models.RBIG(2, rotation="ica")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RBIG.fit: x must have shape \(n, 2\)"):
        nf.models.RBIG(2).fit(torch.randn(10))
    with pytest.raises(TypeError, match="RBIG.fit: x must be a torch.Tensor"):
        nf.models.RBIG(2).fit([[0.0, 1.0]])  # type: ignore[arg-type]


def test_marginal_floor_is_each_columns_own() -> None:
    """The span floor took the largest value of every column: a column of 0.1·N(0, 1) beside
    one of 5e5 + 1e5·N(0, 1) (float32) was squeezed into z in [-3.09, -2.59]."""
    torch.manual_seed(0)
    x = torch.stack([5e5 + 1e5 * torch.randn(1000), 0.1 * torch.randn(1000)], 1)
    layer = MarginalGaussianization(2, bins=4).fit(x)
    levels = torch.linspace(1 / 1001, 1000 / 1001, 5)
    z = layer(torch.quantile(x, levels, dim=0))[0]
    expected = math.sqrt(2) * torch.erfinv(2 * levels - 1)
    torch.testing.assert_close(z, expected[:, None].expand(5, 2), rtol=0, atol=1e-3)


def test_rbig_takes_large_and_correlated_float32_tables() -> None:
    """The dependence test's tolerance grew with n while the singular values' ratio does not:
    100k float32 rows of correlation 0.98 (and every float32 table from ~840k rows) were
    called linearly dependent. A combination that is exact in the dtype is still refused."""
    torch.manual_seed(0)
    a = torch.randn(100_000)
    x = torch.stack([a, 0.98 * a + 0.199 * torch.randn(100_000)], 1)
    nf.models.RBIG(2, layers=1).fit(x)
    y = torch.randn(1000, 3)
    with pytest.raises(ValueError, match="linearly dependent in float32"):
        nf.models.RBIG(4).fit(torch.cat([y, y[:, :1] + y[:, 1:2]], 1))


def test_marginal_knots_are_torch_quantiles_and_take_more_than_2_24_rows() -> None:
    """The knots are ``torch.quantile``'s (linear rule) from one sort: ``torch.quantile``
    refuses more than 2**24 rows ("input tensor is too large"), which stopped RBIG on tables
    of ~21M rows (its 80% training split) with torch's traceback."""
    from nfkit.transforms.gaussianization import _quantiles

    g = torch.Generator().manual_seed(0)
    for n in (4, 5, 101, 10_000):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        levels = torch.linspace(1 / (n + 1), n / (n + 1), 33, dtype=torch.float64)
        assert torch.equal(_quantiles(x, levels), torch.quantile(x, levels, dim=0))
    big = torch.randn(2**24 + 5, 1, generator=g)
    layer = nf.transforms.MarginalGaussianization(1).fit(big)
    z, _ = layer(torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(z, torch.tensor([[0.0], [1.0]]), atol=2e-3, rtol=0)  # ≈ Φ⁻¹(Φ)
