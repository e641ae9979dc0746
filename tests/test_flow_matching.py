"""Flow matching: the loss, what it learns, and nf.fit(objective="flow_matching")."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import nfkit as nf
from nfkit.flow_matching import FlowMatchingNoise, FlowMatchingObjective
from nfkit.models.dequantized import EDGE


def _ffjord(d: int = 1, context: int = 0, **kw) -> nf.Flow:
    return nf.models.FFJORD(d, context=context, hidden=(32, 32), **kw).double()


def test_loss_is_the_regression_onto_the_line_velocity() -> None:
    """Through standardize's fixed affine layer: y = (x - μ)/σ, y_s = (1-s) y + s z, target
    (z - y)/t₁, the field evaluated at time s t₁; summed over the features."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, dtype=torch.float64) * 3 + 1
    flow = nf.models.standardize(_ffjord(3, t1=2.0), x)
    (field,) = [m for m in flow.modules() if isinstance(m, nf.transforms.ContinuousFlow)]
    with torch.no_grad():  # a field that is not zero, so the check sees the network
        for p in field.parameters():
            p.normal_()
    noise = FlowMatchingNoise(torch.randn(64, 3, dtype=torch.float64), torch.rand(64).double())
    loss = nf.flow_matching_loss(flow, x, noise=noise)
    (affine,) = FlowMatchingObjective(flow)._prefix  # standardize's fixed (x - μ)/σ
    y = affine(x)[0]
    torch.testing.assert_close(y.mean(0), torch.zeros(3, dtype=torch.float64))
    s = noise.s[:, None]
    y_s = (1 - s) * y + s * noise.z
    net_in = torch.cat([y_s, 2.0 * s], -1)
    expected = (field.net(net_in) - (noise.z - y) / 2.0).square().sum(-1)
    torch.testing.assert_close(loss, expected)
    assert loss.shape == (64,)
    loss.mean().backward()  # differentiable in the field's weights
    assert all(p.grad is not None for p in field.parameters())


def test_learns_a_gaussian_exactly() -> None:
    """1-D data N(1, 2²): the fitted flow's exact log-density (ODE, exact trace) matches the
    data's to 0.05 nats over ±2σ (20000 rows: with 4000, the sample's own tails are 0.1 nats
    off), and its samples have the data's mean and spread."""
    torch.manual_seed(0)
    x = 1 + 2 * torch.randn(20000, 1, dtype=torch.float64)
    flow = nf.models.standardize(_ffjord(1), x)
    history = nf.fit(
        flow, x, steps=1500, batch_size=1024, lr=3e-3, objective="flow_matching",
        progress=False, seed=0,
    )  # fmt: skip
    assert history.objective == "flow_matching" and history.val_nll is not None
    grid = torch.linspace(-3, 5, 9, dtype=torch.float64)[:, None]
    truth = torch.distributions.Normal(1.0, 2.0).log_prob(grid[:, 0])
    with torch.no_grad():
        got = flow.log_prob(grid)
        samples = flow.sample(4000)
    assert (got - truth).abs().max() < 0.05, got - truth
    assert abs(samples.mean() - 1) < 0.15 and abs(samples.std() - 2) < 0.15
    exact_nll = 0.5 * math.log(2 * math.pi * 4) + 0.5  # the entropy of N(1, 4)
    assert abs(history.val_nll - exact_nll) < 0.06  # 0.026 here; 2000 rows: ±0.016 of noise


def test_conditional_flow_matching() -> None:
    """x | c ~ N(c, 0.5²): the fitted conditional density at three contexts, within 0.2 nats
    over ±1σ (0.05–0.09 on this seed; a flow blind to c would be off by nats), and the samples'
    mean and spread at each."""
    torch.manual_seed(1)
    c = torch.rand(6000, 1, dtype=torch.float64) * 4 - 2
    x = c + 0.5 * torch.randn_like(c)
    flow = _ffjord(1, context=1)
    nf.fit(
        flow, x, context=c, steps=2000, lr=3e-3, objective="flow_matching", progress=False,
        seed=0,
    )  # fmt: skip
    for ci in (-1.5, 0.0, 1.5):
        points = torch.tensor([[ci - 0.5], [ci], [ci + 0.5]], dtype=torch.float64)
        context = torch.full_like(points, ci)
        with torch.no_grad():
            got = flow.log_prob(points, context)
            draws = flow.sample(2000, context[:1])[:, 0, 0]
        truth = torch.distributions.Normal(ci, 0.5).log_prob(points[:, 0])
        assert (got - truth).abs().max() < 0.2, (ci, got, truth)
        assert abs(draws.mean() - ci) < 0.1 and abs(draws.std() - 0.5) < 0.1, (ci, draws.std())


def test_dequantized_columns_get_uniform_noise() -> None:
    torch.manual_seed(2)
    x = torch.cat([torch.randn(300, 1), torch.randint(0, 5, (300, 1)).float()], 1).double()
    flow = nf.models.standardize(_ffjord(2), x, discrete=[1])
    assert isinstance(flow, nf.models.DequantizedFlow)
    objective = FlowMatchingObjective(flow)
    noise = objective.draw(300, x)
    assert noise.cells is not None and noise.cells.shape == (300, 2)
    shifted = x + torch.stack([torch.zeros(300), EDGE + (1 - 2 * EDGE) * noise.cells[:, 1]], 1)
    plain = nf.models.standardize(_ffjord(2), x)  # continuous: no dequantization
    plain.load_state_dict(flow.state_dict(), strict=False)
    plain.transform.load_state_dict(flow.transform.state_dict())
    torch.testing.assert_close(
        objective(x, None, noise), FlowMatchingObjective(plain)(shifted, None, noise)
    )
    history = nf.fit(flow, x, steps=30, objective="flow_matching", progress=False, seed=0)
    assert math.isfinite(history.val_nll)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: nf.models.NSF(2), "this flow has no ContinuousFlow"),
        (lambda: nf.models.FFJORD(2, blocks=2), "this flow has 2 ContinuousFlow layers"),
        (
            lambda: nf.Flow(
                nf.Compose(nf.models.FFJORD(2).transform, nf.transforms.Reverse(2)),
                nf.distributions.StandardNormal(2),
            ),
            "a ContinuousFlow followed by other layers",
        ),
        (
            lambda: nf.Flow(
                nf.Compose(nf.transforms.ActNorm(2), nf.models.FFJORD(2).transform),
                nf.distributions.StandardNormal(2),
            ),
            "but ActNorm has trainable parameters",
        ),
        (lambda: nf.models.FFJORD(2, base="gmm"), "the flow's base is GaussianMixture"),
        # a field blind to t trains silently to the wrong flow (sample std 0.88 for 0.5)
        (lambda: nf.models.FFJORD(2, time_dependent=False), "this ContinuousFlow ignores t"),
    ],
)
def test_flows_flow_matching_cannot_train_are_refused_in_one_line(build, message) -> None:
    x = nf.datasets.two_moons(64)
    with pytest.raises(ValueError, match=message) as info:
        nf.fit(build(), x, steps=2, objective="flow_matching", progress=False)
    assert "\n" not in str(info.value) and str(info.value).startswith("nf.fit: ")
    with pytest.raises(ValueError, match="nf.flow_matching_loss: .*" + message):
        nf.flow_matching_loss(build(), x)


def test_bad_objective_and_data_are_one_line_errors() -> None:
    x = nf.datasets.two_moons(64)
    with pytest.raises(ValueError, match="objective must be one of .*got 'mle'"):
        nf.fit(nf.models.FFJORD(2), x, objective="mle")
    with pytest.raises(ValueError, match=r"x must have last dim 2, got shape \(64, 1\)"):
        nf.flow_matching_loss(nf.models.FFJORD(2), x[:, :1])
    with pytest.raises(ValueError, match=r"batch shape \(64,\) and context's \(3,\) do not"):
        nf.flow_matching_loss(nf.models.FFJORD(2, context=1), x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"x must be rows \(B, D\), got shape \(4, 16, 2\)"):
        nf.flow_matching_loss(nf.models.FFJORD(2), x.reshape(4, 16, 2))
    z, s = torch.zeros(64, 2), torch.zeros(64)
    quantized = nf.models.standardize(nf.models.FFJORD(2), x.round(), discrete=[0, 1])
    for flow, noise, error, message in (
        (
            nf.models.FFJORD(2),
            FlowMatchingNoise(z, s[:32]),
            ValueError,
            r"noise.s must be a tensor of shape \(64,\), got \(32,\)",
        ),
        (nf.models.FFJORD(2), (z, s), TypeError, "noise must be a FlowMatchingNoise, got tuple"),
        (
            nf.models.FFJORD(2),
            FlowMatchingNoise(z.double(), s),
            ValueError,
            "noise.z is torch.float64 on cpu; x is torch.float32",
        ),
        (
            nf.models.FFJORD(2),
            FlowMatchingNoise(z + math.nan, s),
            ValueError,
            "noise.z holds NaN or inf",
        ),
        (
            nf.models.FFJORD(2),
            FlowMatchingNoise(z, s, z),
            ValueError,
            "noise.cells is for a DequantizedFlow",
        ),
        (
            quantized,
            FlowMatchingNoise(z, s),
            ValueError,
            r"noise.cells must be a tensor of shape \(64, 2\), got NoneType",
        ),
    ):
        with pytest.raises(error, match=message):
            nf.flow_matching_loss(flow, x.round() if flow is quantized else x, noise=noise)
    # a context of other batch dims pairs every row with every context (a (B, B) loss)
    with pytest.raises(
        ValueError,
        match=r"context must be \(B, C\), \(1, C\) or \(C,\) for x of shape \(64, 2\), got shape \(64, 1, 3\)",
    ):
        nf.flow_matching_loss(nf.models.FFJORD(2, context=3), x, torch.zeros(64, 1, 3))
    assert nf.flow_matching_loss(nf.models.FFJORD(2, context=3), x, torch.zeros(1, 3)).shape == (
        64,
    )
    with pytest.raises(ValueError, match="x contains NaN values"):
        nf.flow_matching_loss(nf.models.FFJORD(2), torch.full((3, 2), math.nan))


def test_resume_equals_uninterrupted(tmp_path) -> None:
    """The draws come from a seeded generator saved in the checkpoint."""
    x = nf.datasets.two_moons(400, seed=0).double()
    torch.manual_seed(0)
    initial = nf.models.FFJORD(2, hidden=(16,)).double()
    kw = dict(steps=20, eval_every=5, batch_size=64, progress=False, seed=3)
    kw["objective"] = "flow_matching"
    full = copy.deepcopy(initial)
    h_full = nf.fit(full, x, **kw)

    class Crash(Exception):
        pass

    def crash(history: nf.History) -> None:
        if history.val_step[-1] == 10:
            raise Crash

    path = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        nf.fit(copy.deepcopy(initial), x, checkpoint=path, callback=crash, **kw)
    resumed = copy.deepcopy(initial)
    h = nf.fit(resumed, x, checkpoint=path, resume=True, **kw)
    assert h.train_loss == h_full.train_loss and h.val_loss == h_full.val_loss
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert h.val_nll == pytest.approx(h_full.val_nll, rel=1e-12)
    with pytest.raises(ValueError, match="was made with objective='flow_matching'; got "):
        nf.fit(copy.deepcopy(initial), x, checkpoint=path, resume=True,
               **{**kw, "objective": "likelihood"})  # fmt: skip


def test_history_and_plot_name_the_objective(tmp_path) -> None:
    x = nf.datasets.two_moons(200, seed=0)
    history = nf.fit(
        nf.models.FFJORD(2, hidden=(8,)), x, steps=10, objective="flow_matching", progress=False
    )
    assert "val_nll=" in repr(history)
    assert nf.History.from_dict(history.to_dict()) == history
    pytest.importorskip("matplotlib")
    fig = history.plot()
    assert "flow matching" in fig.axes[0].get_ylabel()


def test_a_learned_summary_trains_with_the_field() -> None:
    """Embedded: the summary network of the raw context is part of the loss's graph."""
    torch.manual_seed(3)
    inner = nf.models.FFJORD(1, context=2, hidden=(16,)).double()
    flow = nf.models.Embedded(1, flow=inner.config, context=6, hidden=(8,)).double()
    x, c = torch.randn(64, 1, dtype=torch.float64), torch.randn(64, 6, dtype=torch.float64)
    nf.flow_matching_loss(flow, x, c).mean().backward()
    assert all(p.grad is not None for p in flow.embedding.parameters())
    history = nf.fit(flow, x, context=c, steps=10, objective="flow_matching", progress=False)
    assert math.isfinite(history.val_nll)


def test_bounded_columns_train_through_their_fixed_map() -> None:
    """standardize(bounds=...) puts a fixed Bounded map before the field: flow matching runs in
    the unbounded space, and the samples stay inside the support."""
    torch.manual_seed(4)
    x = torch.stack([torch.rand(2000) * 3, torch.randn(2000)], 1).double()
    flow = nf.models.standardize(_ffjord(2), x, bounds=[(0, 3), (None, None)])
    history = nf.fit(flow, x, steps=300, objective="flow_matching", progress=False, seed=0)
    assert math.isfinite(history.val_nll)
    with torch.no_grad():
        s = flow.sample(500)
    assert bool(((s[:, 0] > 0) & (s[:, 0] < 3)).all())
    # U(0, 3) in the first column: its log-density is -log 3 = -1.10 per row; the fit is close
    assert abs(history.val_nll - (math.log(3) + 0.5 * math.log(2 * math.pi * math.e))) < 0.15


def test_validation_loss_is_computed_in_eval_mode() -> None:
    """A dropout in the context embedding was live while the validation loss was scored: with
    weights that do not move (lr 1e-12) the four evaluations differed (6.22–6.36), so early
    stopping picked weights partly by chance; in eval mode they are one number, and the flow
    is back in train mode after each."""
    torch.manual_seed(0)
    x, c = torch.randn(200, 2), torch.randn(200, 3)
    embedding = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5))
    flow = nf.Flow(
        nf.Compose(nf.transforms.ContinuousFlow(2, context=4, hidden=(8,))),
        nf.distributions.StandardNormal(2),
        embedding=embedding,
        context=3,
    )
    nf.testing.perturb_parameters(flow, 0.5)
    seen = []
    h = nf.fit(
        flow, x, context=c, steps=20, eval_every=5, lr=1e-12, objective="flow_matching",
        seed=0, progress=False, callback=lambda _: seen.append(embedding.training),
    )  # fmt: skip
    assert len(h.val_loss) == 4 and len(set(h.val_loss)) == 1, h.val_loss
    assert seen == [True] * 4
