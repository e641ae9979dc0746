"""nf.plot: each figure function writes a non-empty PNG (Agg, no pyplot state)."""

from __future__ import annotations

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
