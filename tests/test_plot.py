"""nf.plot: each figure function writes a non-empty PNG (Agg, no pyplot state)."""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf

pytest.importorskip("matplotlib")


def _png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.fixture(scope="module")
def flow2() -> nf.Flow:
    torch.manual_seed(0)
    flow = nf.models.NSF(2, transforms=2, hidden=(8,), bins=4)
    return nf.testing.perturb_parameters(flow, 0.2).eval()


def test_density_samples_history_layers(tmp_path, flow2) -> None:
    x = nf.datasets.two_moons(300, seed=0)
    fig = nf.plot.density(flow2, x, path=tmp_path / "d.png", resolution=40, n=300, title="t")
    assert fig.axes and (tmp_path / "d.png").exists()
    _png(tmp_path / "d.png")
    # the heat map fills its panel: data beyond the box (an outlier here) left a white strip
    far = torch.cat([x, torch.tensor([[-40.0, 30.0]])])
    fig = nf.plot.density(flow2, far, resolution=20, n=100)
    (image,) = fig.axes[0].images
    left, right, bottom, top = image.get_extent()
    assert fig.axes[0].get_xlim() == (left, right) and fig.axes[0].get_ylim() == (bottom, top)
    nf.plot.samples(flow2, None, path=tmp_path / "s.png", n=300)
    _png(tmp_path / "s.png")
    nf.plot.layers(flow2, path=tmp_path / "l.png", n=300)
    _png(tmp_path / "l.png")
    h = nf.fit(flow2, x, steps=10, eval_every=2, progress=False)
    h.plot(tmp_path / "h.png")
    _png(tmp_path / "h.png")


def test_corner_1d_and_conditional(tmp_path) -> None:
    torch.manual_seed(0)
    flow = nf.models.MAF(4, context=1, transforms=1, hidden=(8,))
    nf.plot.corner(flow, torch.randn(200, 4), context=[0.5], path=tmp_path / "c.png", n=200)
    _png(tmp_path / "c.png")
    nf.plot.layers(flow, context=[0.5], path=tmp_path / "l4.png", n=200)
    _png(tmp_path / "l4.png")
    flow1 = nf.models.MAF(1, transforms=1, hidden=(8,))
    nf.plot.density(flow1, torch.randn(100, 1), path=tmp_path / "d1.png", n=100)
    _png(tmp_path / "d1.png")
    with pytest.raises(ValueError, match="nf.plot.density: needs D <= 2"):
        nf.plot.density(flow, context=[0.5])


def test_corner_bins_integer_columns_on_the_integers(tmp_path) -> None:
    """A discrete column's histogram has one bin per integer, its lowest value included (a box
    inset past the bound hid the most common count, 0)."""
    counts = torch.poisson(torch.full((300, 1), 0.7))
    x = torch.cat([counts, torch.randn(300, 2)], 1)
    flow = nf.models.standardize(
        nf.models.MAF(3, transforms=1, hidden=(8,)),
        x,
        bounds=[(0, None), (None, None), (None, None)],
        discrete=[0],
    )
    fig = nf.plot.corner(flow, x, n=300, path=tmp_path / "c.png")
    patches = fig.axes[0].patches  # the data's histogram bars, then the samples' outline
    lefts = sorted({round(p.get_x(), 6) for p in patches if hasattr(p, "get_width")})
    assert lefts[0] == -0.5 and all(abs(b - a - 1) < 1e-9 for a, b in zip(lefts, lefts[1:]))


def test_data_must_match_the_model(flow2) -> None:
    with pytest.raises(ValueError, match=r"nf.plot.density: data must have shape \(n, 2\) like"):
        nf.plot.density(flow2, torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"nf.plot.corner: data must have shape \(n, 2\) like"):
        nf.plot.corner(flow2, torch.randn(10, 1))


def test_the_suffix_names_the_format(tmp_path, flow2) -> None:
    """``.pdf``/``.svg`` are written as such (not a PNG under that name); no suffix is PNG; an
    unknown suffix is a one-line error before anything is written."""
    magic = {"f.pdf": b"%PDF", "f.svg": b"<?xml", "f.png": b"\x89PNG", "f": b"\x89PNG"}
    for name, head in magic.items():
        nf.plot.history(nf.History(train_loss=[2.0, 1.0], steps=2), tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(head), name
    with pytest.raises(
        ValueError, match=r"cannot write a figure as '.*f.txt': unknown figure format '.txt'"
    ):
        nf.plot.density(flow2, path=tmp_path / "f.txt")
    assert not (tmp_path / "f.txt").exists()


def test_empty_history_draws_without_warnings(tmp_path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" among them
        nf.plot.history(nf.History(), tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_a_torus_is_drawn_inside_its_support(tmp_path) -> None:
    """NCSF: the density grid and the layer panels stay on [-π, π]² (a grid outside it would
    be refused by log_prob), no warnings, the base named by its class and support."""
    import math
    import warnings

    torch.manual_seed(0)
    flow = nf.models.NCSF(2, transforms=2, hidden=(8,), bins=3)
    nf.testing.perturb_parameters(flow, 0.5, 0)
    data = torch.remainder(torch.randn(200, 2) * 2 + math.pi, 2 * math.pi) - math.pi
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nf.plot.density(flow, data, n=200, resolution=20, path=tmp_path / "d.png")
        nf.plot.layers(flow, n=200, path=tmp_path / "l.png")
    for name in ("d.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert nf.plot._base_name(flow) == "Uniform on [-3.14159, 3.14159]"
    assert nf.plot._base_name(nf.models.MAF(2, transforms=1, hidden=(4,))) == "N(0, I)"


def test_angles_beside_a_real_column_are_drawn_on_their_circle(tmp_path) -> None:
    """A mixed NCSF (an angle in degrees, a positive length): the corner plot's angle axis is
    the whole circle and the length's stays above 0; the density and layer figures draw
    without warnings, and the base is named by its parts."""
    import warnings

    torch.manual_seed(0)
    angle = torch.remainder(40 * torch.randn(300) + 180, 360)
    x = torch.stack([angle, torch.rand(300) + 0.5], -1)
    inner = nf.models.NCSF(2, angles=[0], bound=180.0, transforms=1, hidden=(8,), bins=3)
    flow = nf.models.standardize(inner, x, bounds=[(0, 360), (0, None)])
    nf.testing.perturb_parameters(flow, 0.3, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = nf.plot.corner(flow, x, n=300)
        nf.plot.density(flow, x, n=200, resolution=20, path=tmp_path / "d.png")
        nf.plot.layers(inner, n=200, path=tmp_path / "l.png")
    axes = fig.axes
    assert axes[0].get_xlim() == (0.0, 360.0)  # the angle's marginal: its whole circle
    assert axes[3].get_xlim()[0] > 0  # the length: inside its support
    assert nf.plot._base_name(inner) == (
        "Uniform × StandardNormal on per column [-180, 180], the real line"
    )


@pytest.mark.parametrize("d", [1, 2])
def test_a_flow_with_integer_columns_draws_its_dequantized_density(tmp_path, d: int) -> None:
    """The grid holds non-integers, which ``log_prob`` refuses for a discrete column: the figure
    draws ``p(v + u)`` (named so) instead of failing."""
    import warnings

    torch.manual_seed(0)
    data = torch.cat([torch.poisson(torch.full((200, 1), 3.0)), torch.randn(200, 1)], -1)[:, :d]
    flow = nf.models.standardize(nf.models.MAF(d, transforms=1, hidden=(8,)), data, discrete=[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = nf.plot.density(flow.eval(), data, n=200, resolution=20)
    texts = [ax.get_title() for ax in fig.axes]
    texts += [label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]]
    assert any("p(v + u)" in t for t in texts)
    fig.savefig(tmp_path / "d.png")


@pytest.mark.parametrize(
    ("objective", "label"),
    [
        ("likelihood", "loss (NLL, nats)"),
        ("flow_matching", "loss (flow matching)"),
        ("reverse_kl", "loss (-ELBO, nats)"),
    ],  # fmt: skip
)
def test_history_labels_its_loss_by_the_objective(objective: str, label: str) -> None:
    """A fit_vi history was labelled an NLL."""
    fig = nf.plot.history(nf.History(train_loss=[2.0, 1.0], steps=2, objective=objective))
    assert fig.axes[0].get_ylabel() == label


def test_figure_arguments_are_checked_in_one_line(flow2) -> None:
    """``max_panels=1`` divided by zero, ``dims=(0, 5)`` indexed out of range, ``n=0`` took the
    quantile of nothing, ``max_dims=0`` raised matplotlib's error."""
    for call, message in (
        (lambda: nf.plot.layers(flow2, max_panels=1), "max_panels must be an integer >= 2"),
        (lambda: nf.plot.layers(flow2, dims=(0, 5)), "dims must be two different coordinates"),
        (lambda: nf.plot.layers(flow2, dims=(1, 1)), "dims must be two different coordinates"),
        (lambda: nf.plot.density(flow2, n=0), "nf.plot.density: n must be an integer >= 1"),
        (lambda: nf.plot.corner(flow2, max_dims=0), "max_dims must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def _state(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_figures_evaluate_the_flow_in_eval_mode_and_restore_it(tmp_path) -> None:
    """A flow left in train mode: BatchNorm's running statistics and an ActNorm's initialization
    were changed by drawing it (and the drawn density was the batch-statistics one); each
    module's mode is as it was after."""
    import numpy as np

    torch.manual_seed(0)
    flow = nf.models.MAF(2, transforms=2, hidden=(8,), batch_norm=True)
    x = torch.randn(200, 2) * 3 + 10
    with torch.no_grad():
        flow.log_prob(x)  # running statistics away from their start
    flow.train()
    list(flow.modules())[-1].eval()  # a mixed state, restored as it was
    modes = [m.training for m in flow.modules()]
    before = _state(flow)
    fig = nf.plot.density(flow, x, n=100, resolution=12)
    nf.plot.corner(flow, x, n=100)
    nf.plot.samples(flow, x, n=100)
    nf.plot.layers(flow, n=100)
    after = _state(flow)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in flow.modules()] == modes
    image = fig.axes[0].images[0]
    x0, x1, y0, y1 = image.get_extent()
    xx, yy = np.meshgrid(np.linspace(x0, x1, 12), np.linspace(y0, y1, 12))
    grid = torch.tensor(np.stack([xx, yy], -1).reshape(-1, 2), dtype=torch.float32)
    flow.eval()
    with torch.no_grad():
        expected = flow.log_prob(grid).exp().double().numpy().reshape(12, 12)
    drawn = np.asarray(image.get_array())
    assert np.abs(drawn - expected).max() <= 1e-5 * expected.max()
    residual = nf.models.ResidualFlow(2, blocks=1, hidden=(8,), actnorm=True).train()
    before = _state(residual)
    nf.plot.layers(residual, n=50)
    nf.plot.density(residual, n=50, resolution=5)
    after = _state(residual)
    assert all(torch.equal(before[k], after[k]) for k in before) and residual.training


def test_the_data_drawn_is_a_seeded_random_subset() -> None:
    """The first rows of a sorted table were one end of it; the subset leaves the global RNG."""
    x = torch.randn(5000, 2, dtype=torch.float64)
    x = x[x[:, 0].argsort()]
    exact = nf.Flow(
        nf.transforms.Affine(torch.zeros(2), torch.ones(2)), nf.distributions.StandardNormal(2)
    )
    fig = nf.plot.density(exact, x, n=300, resolution=5)
    shown_x0 = fig.axes[1].collections[0].get_offsets()[:, 0]
    assert len(shown_x0) == 300 and shown_x0.min() < -1 and shown_x0.max() > 1
    state = torch.get_rng_state()
    first = nf.plot._subset(x, 100)
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(
        first, nf.plot._subset(x, 100)
    )


def test_a_data_frame_is_matched_to_the_model_by_column_name() -> None:
    """A DataFrame in another column order was drawn by position under the model's names."""
    pd = pytest.importorskip("pandas")
    torch.manual_seed(0)
    x = torch.stack([torch.randn(100), torch.randn(100) + 50], -1)
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), x, columns=["a", "b"]
    )
    df = pd.DataFrame({"b": x[:, 1].numpy(), "extra": 0.0, "a": x[:, 0].numpy()})
    fig = nf.plot.density(flow.eval(), df, n=100, resolution=5)
    drawn = fig.axes[1].collections[0].get_offsets()
    assert abs(drawn[:, 0].mean() - x[:, 0].mean().item()) < 1e-6
    assert fig.axes[1].get_xlabel() == "a"
    fig = nf.plot.corner(flow, df, n=100)
    assert fig.axes[0].get_xlim()[1] < 10  # column a's marginal, not b's
    with pytest.raises(ValueError, match="nf.plot.corner: data has no column 'a' of the model"):
        nf.plot.corner(flow, df[["b"]].assign(c=1.0), n=100)


def test_corner_histograms_show_the_true_density_not_the_window_s() -> None:
    """A model wider than the data: its mass outside the window was renormalized into it."""
    torch.manual_seed(0)
    wide = nf.Flow(
        nf.transforms.Affine(torch.zeros(3), torch.full((3,), 1 / 3)),
        nf.distributions.StandardNormal(3),
    )
    fig = nf.plot.corner(wide, torch.randn(3000, 3), n=4000)
    step = [p for p in fig.axes[0].patches if not hasattr(p, "get_width")][0]
    v = step.get_xy()
    area = 0.5 * abs(sum(v[k - 1, 0] * v[k, 1] - v[k, 0] * v[k - 1, 1] for k in range(len(v))))
    assert 0.6 < area < 0.9  # the fraction of the model inside the window (~0.75), not 1
    bars = [p for p in fig.axes[0].patches if hasattr(p, "get_width")]
    assert sum(p.get_width() * p.get_height() for p in bars) > 0.95  # the data: nearly all in


def test_a_bounded_column_s_axis_is_the_data_range_inside_its_support() -> None:
    """Data in [100, 120] on a declared support (0, 1000) got the whole support as its axis."""
    torch.manual_seed(0)
    x = torch.stack([torch.rand(300) * 20 + 100, torch.randn(300)], 1)
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), x, bounds=[(0, 1000), (None, None)]
    ).eval()
    for fig in (nf.plot.corner(flow, x, n=200), nf.plot.density(flow, x, n=200, resolution=5)):
        low, high = fig.axes[0].get_xlim()
        assert 90 < low < 100 and 120 < high < 130
    from nfkit._checks import Interval

    box = nf.plot._bounds(torch.rand(50, 1) * 1e-3, support=Interval(0.0, 1.0))
    assert 0 < box[0][0] < box[0][1] < 0.01  # just inside the end, near the data


def test_a_1d_integer_column_s_histogram_has_a_bar_per_cell() -> None:
    """The data's bars are the cells [v, v + 1) of p(v + u), each its value's fraction (60 bins
    of a renormalized histogram made spikes beside the curve)."""
    torch.manual_seed(0)
    counts = torch.poisson(torch.full((400, 1), 3.0))
    flow = nf.models.standardize(
        nf.models.MAF(1, transforms=1, hidden=(8,)), counts, discrete=[0], bounds=[(0, None)]
    )
    fig = nf.plot.density(flow.eval(), counts, n=200, resolution=20)
    bars = [p for p in fig.axes[0].patches if hasattr(p, "get_width")]
    assert bars and all(p.get_width() == 1 and p.get_x() == int(p.get_x()) for p in bars)
    for p in bars:
        assert abs(p.get_height() - (counts == p.get_x()).double().mean().item()) < 1e-9


def test_coverage_rank_bins_hold_rank_values_fairly() -> None:
    """Ranks 0 … S binned as r / S into 20 equal bins: bins held 1 or 2 rank values (S = 30),
    so exactly uniform ranks were drawn as a comb; now every bin is density 1."""
    import types

    import numpy as np

    for s in (10, 30, 100):
        ranks = np.repeat(np.arange(s + 1), 20)[:, None].repeat(2, 1)
        result = types.SimpleNamespace(
            levels=np.array([0.5]), coverage=np.array([0.5]), band=0.05,
            marginal_rank=ranks, samples=s,
        )  # fmt: skip
        fig = nf.plot.coverage(result)
        steps = [a for a in fig.axes[1].patches if type(a).__name__ == "StepPatch"]
        heights = steps[0].get_data().values
        assert len(steps) == 2 and np.allclose(heights, 1.0), (s, heights)
        assert steps[0].get_data().edges[0] == 0 and steps[0].get_data().edges[-1] == 1
        # the band drawn is Coverage.band, the 97.5% one (it was labelled 95%)
        labels = fig.axes[0].get_legend_handles_labels()[1]
        assert labels[0] == "97.5% band", labels


def test_density_samples_and_corner_leave_the_global_generator() -> None:
    """As the README says of every figure: their draws come from a fork of torch's generator
    (they advanced the global one before), so the same state draws the same figure."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).eval()
    flow3 = nf.models.MAF(3, transforms=1, hidden=(8,)).eval()
    x = torch.randn(200, 3)
    for draw in (
        lambda: nf.plot.density(flow, x[:, :2], n=100, resolution=5),
        lambda: nf.plot.samples(flow, x[:, :2], n=100),
        lambda: nf.plot.corner(flow3, x, n=100),
    ):
        state = torch.get_rng_state()
        draw()
        assert torch.equal(state, torch.get_rng_state())


def test_layers_seed_leaves_every_global_generator(monkeypatch) -> None:
    """``torch.manual_seed`` inside ``fork_rng(devices=[])`` reseeded every CUDA generator."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).eval()
    state = torch.get_rng_state()
    fig = nf.plot.layers(flow, n=50, seed=123)
    assert not calls and torch.equal(state, torch.get_rng_state())
    torch.manual_seed(123)
    expected = flow.sample(50)
    drawn = fig.axes[1].collections[-1].get_offsets()
    assert abs(torch.tensor(drawn) - expected.double()).max() < 1e-5


def test_empty_and_spreadless_data(flow2) -> None:
    """0 rows: a raw quantile error; one row or a constant column: a ±1.5e-7 box."""
    for call in (nf.plot.density, nf.plot.corner):
        with pytest.raises(ValueError, match=rf"nf.plot.{call.__name__}: data has no rows"):
            call(flow2, torch.zeros(0, 2), n=50)
    one = nf.plot.density(flow2, torch.zeros(1, 2), n=200, resolution=5)
    constant = nf.plot.corner(flow2, torch.stack([torch.randn(50), torch.ones(50)], 1), n=200)
    for low, high in (one.axes[0].get_xlim(), one.axes[0].get_ylim(), constant.axes[3].get_xlim()):
        assert high - low > 1


def test_columns_bounds_and_context_are_checked_in_one_line(flow2) -> None:
    """Short ``columns`` and bad ``bounds`` raised IndexError/TypeError; a batch of contexts was
    drawn as one by corner and broke layers."""
    conditional = nf.models.MAF(2, context=1, transforms=1, hidden=(8,)).eval()
    two = [[0.0], [1.0]]
    for call, message in (
        (lambda: nf.plot.density(flow2, columns=["a"]), "density: columns must name the 2"),
        (lambda: nf.plot.corner(flow2, columns=["a"]), "corner: columns must name the 2"),
        (lambda: nf.plot.density(flow2, bounds=[(0, 1)]), "bounds must be 2 pairs"),
        (lambda: nf.plot.density(flow2, bounds=[(1, 0), (0, 1)]), "bounds must be 2 pairs"),
        (lambda: nf.plot.density(flow2, bounds=(0, 1)), "bounds must be 2 pairs"),
        (lambda: nf.plot.density(flow2, bounds=[(0, 1, 2), (0, 1)]), "bounds must be 2 pairs"),
        (lambda: nf.plot.density(flow2, bounds=[(0, 1), (0, math.inf)]), "bounds must be 2"),
        (lambda: nf.plot.corner(conditional, context=two), "corner: context must be one"),
        (lambda: nf.plot.layers(conditional, context=two), "layers: context must be one"),
        (lambda: nf.plot.density(conditional, context=two), "density: context must be one"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    nf.plot.corner(conditional, context=[[0.5]], n=50)  # one row is one context


def test_samples_of_a_1d_flow_are_drawn() -> None:
    """D = 1 drew the curve and the data but no samples."""
    flow = nf.models.MAF(1, transforms=1, hidden=(8,)).eval()
    fig = nf.plot.samples(flow, torch.randn(100, 1), n=300)
    ax = fig.axes[0]
    assert "300 samples" in ax.get_legend_handles_labels()[1]
    assert any(not hasattr(p, "get_width") for p in ax.patches)  # the samples' step outline


def test_a_1d_integer_window_without_values_draws_its_own_cells() -> None:
    """``bounds`` beside the values built an empty or backwards range of cells (torch errors)."""
    torch.manual_seed(0)
    x = torch.randint(0, 6, (300, 1)).float()
    flow = nf.models.standardize(nf.models.NSF(1, transforms=1, hidden=(8,)), x, discrete=[0])
    for window in ((10.0, 20.0), (-20.0, -10.0)):
        fig = nf.plot.density(flow, x, bounds=[window], n=100, resolution=10)
        low, high = fig.axes[0].get_xlim()
        assert low <= window[0] and high >= window[1] - 1


def test_layers_checks_the_context_as_the_flow_does() -> None:
    """``layers`` calls the base and the layers directly: a wrong-width context gave torch's
    matrix error, an inf one matplotlib's, a context on an unconditional flow was ignored and a
    partly missing set element drawn as 0."""
    M = nf.models
    emb = M.Embedded(2, flow=M.MAF(2, context=2, transforms=1, hidden=(8,)).config, context=6)
    plain = M.MAF(2, transforms=1, hidden=(8,))
    cond = M.MAF(2, context=3, transforms=1, hidden=(8,))
    pad = M.Embedded(2, flow=M.MAF(2, context=2, transforms=1, hidden=(8,)).config, context=6,
                     set_features=2, padded=True)  # fmt: skip
    nan = float("nan")
    for flow, context, message in (
        (emb, torch.zeros(7), r"context must have last dim 6, got shape \(7,\)"),
        (emb, None, "this flow is conditional and needs a context of last dim 6"),
        (cond, torch.tensor([0.0, float("inf"), 0.0]), "context contains inf values"),
        (plain, torch.zeros(3), "this flow takes no context, but a context was given"),
        (pad, torch.tensor([nan, 1.0, 0.5, 0.5, 0.2, 0.1]), "context holds a partly missing set"),
    ):
        with pytest.raises(ValueError, match=f"^nf.plot.layers: {message}"):
            nf.plot.layers(flow, context=context, n=20)
    assert nf.plot.layers(emb, context=torch.zeros(6), n=20) is not None
