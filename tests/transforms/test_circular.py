"""Circular splines and NCSF: a diffeomorphism of the circle, a density on the torus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf
from nfkit.transforms import CircularRQSplineTransformer


def test_zero_parameters_are_the_identity() -> None:
    t = CircularRQSplineTransformer(bins=6)
    x = (torch.rand(50, dtype=torch.float64) * 2 - 1) * math.pi
    z, ladj = t.forward(x, torch.zeros(50, t.num_params, dtype=torch.float64))
    torch.testing.assert_close(z, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), rtol=0, atol=1e-14)


@given(seed=st.integers(0, 2**31 - 1), bins=st.integers(1, 9), bound=st.floats(0.5, 200.0))
def test_a_diffeomorphism_of_the_circle(seed: int, bins: int, bound: float) -> None:
    """Property: the map is continuous with a continuous derivative across the seam ±bound
    (the two ends are one point of the circle), its values stay on the circle, and the inverse
    undoes it."""
    g = torch.Generator().manual_seed(seed)
    t = CircularRQSplineTransformer(bins=bins, bound=bound)
    params = torch.randn(t.num_params, generator=g, dtype=torch.float64)
    ends = torch.tensor([-bound, bound], dtype=torch.float64)
    z, ladj = t.forward(ends, params.expand(2, -1))
    # the same point of the circle at both ends (up to the wrap, which picks one of ±bound)
    gap = torch.remainder(z[1] - z[0] + bound, 2 * bound) - bound
    assert abs(gap.item()) < 1e-9 * bound
    assert abs(ladj[0].item() - ladj[1].item()) < 1e-12  # C¹: equal end derivatives
    x = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * bound
    z, ladj = t.forward(x, params.expand(200, -1))
    assert bool((z.abs() <= bound).all())
    back, ladj_back = t.inverse(z, params.expand(200, -1))
    torch.testing.assert_close(back, x, rtol=0, atol=1e-9 * bound)
    torch.testing.assert_close(ladj_back, -ladj, rtol=0, atol=1e-8)


@pytest.mark.parametrize("angles", ["all", "some"])
@pytest.mark.parametrize("structure", ["Autoregressive", "Coupling", "Elementwise"])
def test_every_layer_is_continuous_across_the_seam(structure: str, angles: str) -> None:
    """Moving any one angle from +bound to -bound (the same point of the circle) changes
    neither the output point nor the log-det: the conditioners read angles as (cos, sin).
    ``"some"``: angles in columns 0 and 3 beside real numbers in 1 and 2
    (a ``PerColumnTransformer``), which keep their ordinary tails (the identity far out)."""
    torch.manual_seed(0)
    if angles == "all":
        transformer, columns = CircularRQSplineTransformer(bins=5, bound=2.0), (0, 1, 2, 3)
    else:
        transformer, columns = _mixed_transformer((0, 1, 1, 0)), (0, 3)
    layer = getattr(nf.transforms, structure)(4, transformer, context=2, hidden=(16,)).double()
    nf.testing.perturb_parameters(layer, 0.3, 0)
    x = (torch.rand(8, 4, dtype=torch.float64) * 2 - 1) * 2.0
    c = torch.randn(8, 2, dtype=torch.float64)
    for i in columns:
        plus, minus = x.clone(), x.clone()
        plus[:, i], minus[:, i] = 2.0, -2.0
        (z1, l1), (z2, l2) = layer(plus, c), layer(minus, c)
        gap = torch.remainder(z1 - z2 + 2.0, 4.0) - 2.0
        torch.testing.assert_close(gap, torch.zeros_like(gap), rtol=0, atol=1e-12)
        torch.testing.assert_close(l1, l2, rtol=0, atol=1e-12)
    if angles == "some" and structure != "Autoregressive":  # (later columns may shift there)
        far = x.clone()
        far[:, 1:3] = 50.0  # beyond the real columns' spline: the identity there
        torch.testing.assert_close(layer(far, c)[0][:, 1:3], far[:, 1:3], rtol=0, atol=1e-12)


def _mixed_transformer(assignment: tuple[int, ...]) -> nf.transforms.PerColumnTransformer:
    """A circular spline on ``[-2, 2]`` (part 0) and a spline with identity tails (part 1)."""
    circular = CircularRQSplineTransformer(bins=4, bound=2.0)
    spline = nf.transforms.RQSplineTransformer(bins=3, bound=3.0)
    return nf.transforms.PerColumnTransformer((circular, spline), assignment)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="CircularRQSplineTransformer: bins"):
        CircularRQSplineTransformer(bins=0)
    with pytest.raises(ValueError, match="CircularRQSplineTransformer: bound"):
        CircularRQSplineTransformer(bound=-1.0)


@pytest.mark.parametrize("coupling", [False, True])
def test_ncsf_density_integrates_to_one_on_the_torus(coupling: bool) -> None:
    torch.manual_seed(0)
    flow = nf.models.NCSF(2, transforms=2, hidden=(16, 16), bins=4, coupling=coupling).double()
    nf.testing.perturb_parameters(flow, 0.3, 0)
    n = 401
    g = torch.linspace(-math.pi, math.pi, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(n, n)
    mass = torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()
    assert abs(mass - 1) < 2e-3
    samples = flow.sample(1000)
    assert bool((samples.abs() <= math.pi).all())


def test_ncsf_refuses_angles_off_the_circle_and_is_not_standardized() -> None:
    flow = nf.models.NCSF(2, transforms=1, hidden=(8,), bins=3)
    with pytest.raises(ValueError, match=r"outside the support \[-3.14159, 3.14159\]"):
        flow.log_prob(torch.tensor([[0.0, 3.5]]))
    angles = torch.remainder(torch.randn(300, 2) + 2.8 + math.pi, 2 * math.pi) - math.pi
    wrapped = nf.models.standardize(flow, angles)
    torch.testing.assert_close(wrapped.log_prob(angles), flow.log_prob(angles))
    rebuilt = nf.models.build(wrapped.config)
    rebuilt.load_state_dict(wrapped.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(angles), flow.log_prob(angles))


def test_ncsf_learns_a_density_across_the_seam() -> None:
    """A wrapped normal centred near +π (half its mass across the seam): nf.fit gets within a
    tenth of a nat per angle of its entropy, which a flow that cut the circle at ±π could not."""
    torch.manual_seed(0)
    sd = 0.5
    angles = torch.remainder(sd * torch.randn(4000, 1) + math.pi, 2 * math.pi) - math.pi
    flow = nf.models.NCSF(1, transforms=2, hidden=(16,), bins=8)
    nf.fit(flow, angles, steps=400, progress=False, seed=0)
    entropy = 0.5 * math.log(2 * math.pi * math.e * sd**2)  # the wrap changes it by < 1e-6
    with torch.no_grad():
        ll = flow.log_prob(angles).mean().item()
    assert ll > -entropy - 0.1, (ll, -entropy)


def test_flow_density_and_cli_on_angles(tmp_path, capsys) -> None:
    from nfkit.cli import main

    rng = np.random.default_rng(0)
    angles = np.mod(rng.normal(2.5, 0.6, size=(300, 2)) + np.pi, 2 * np.pi) - np.pi
    est = nf.FlowDensity("ncsf", transforms=1, hidden=(8,), steps=20, random_state=0)
    assert np.isfinite(est.fit(angles).score_samples(angles)).all()
    assert np.abs(est.sample(50, random_state=0)).max() <= np.pi
    np.savetxt(tmp_path / "a.csv", angles, delimiter=",", header="phi,psi", comments="")
    model = str(tmp_path / "m.pt")
    args = ["fit", str(tmp_path / "a.csv"), "--model", "ncsf", "--steps", "5", "--out", model]
    assert main([*args, "-q"]) == 0
    assert main(["info", model]) == 0
    assert "support: [-3.14159, 3.14159] per column" in capsys.readouterr().out
    assert (
        main(["plot", model, "--data", str(tmp_path / "a.csv"), "-o", str(tmp_path / "p.png")])
        == 0
    )
    (tmp_path / "deg.csv").write_text("phi,psi\n170,10\n-20,30\n")
    assert main(["score", model, str(tmp_path / "deg.csv")]) == 1
    err = capsys.readouterr().err
    assert "outside the support" in err and "--angles NAME=-180:180" in err
    assert len(err.strip().splitlines()) == 1


def test_variational_inference_on_the_torus_finds_the_normalizer() -> None:
    """Reverse KL to a product of von Mises densities exp(κ cos(x - μ)) on the torus: the flow's
    estimate of log Z matches 2 log(2π I₀(κ)) and its circular means match μ."""
    torch.manual_seed(0)
    kappa, mu = 4.0, torch.tensor([2.8, -1.0])  # the first mode near the seam at ±π
    flow = nf.models.NCSF(2, transforms=3, hidden=(32, 32))
    history = nf.fit_vi(
        flow, lambda x: (kappa * torch.cos(x - mu)).sum(-1), steps=400, progress=False, seed=0
    )
    true_log_z = 2 * math.log(2 * math.pi * torch.special.i0(torch.tensor(kappa)).item())
    assert abs(history.log_normalizer - true_log_z) < 0.05
    assert history.ess > 0.9
    s = flow.sample(20_000)
    means = torch.atan2(torch.sin(s).mean(0), torch.cos(s).mean(0))
    torch.testing.assert_close(means, mu, rtol=0, atol=0.05)


# ---------------------------------------------------------------- angles beside real numbers


def test_per_column_transformer_reports_each_columns_part() -> None:
    t = _mixed_transformer((0, 1, 1, 0))
    circular, spline = t.parts
    assert t.num_params == circular.num_params == 13 and spline.num_params == 8
    assert t.period == (4.0, None, None, 4.0)
    assert str(t.domain) == "per column [-2, 2], the real line, the real line, [-2, 2]"
    assert t.initial_params().shape == (4, 13)
    assert t.select((0, 3)) is circular  # one part, as wide as the whole: itself
    narrow = t.select((2, 1))  # the spline alone, reading the first 8 of 13 parameters
    assert narrow.num_params == 13 and narrow.period is None and narrow.domain.is_real
    assert t.select((1, 0)).period == (None, 4.0)
    x = torch.tensor([[1.5, -0.3, 2.5, -1.0]], dtype=torch.float64)
    params = torch.randn(1, 4, 13, dtype=torch.float64)
    z, ladj = t.forward(x, params)
    for i, part in enumerate((circular, spline, spline, circular)):  # column by column
        zi, li = part.forward(x[:, i], params[:, i, : part.num_params])
        torch.testing.assert_close(z[:, i], zi, rtol=0, atol=0)
        torch.testing.assert_close(ladj[:, i], li, rtol=0, atol=0)
    torch.testing.assert_close(t.inverse_value(z, params), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(narrow.forward(x[:, 1], params[:, 1])[0], z[:, 1])


def test_per_column_transformer_bad_settings() -> None:
    circular = CircularRQSplineTransformer()
    with pytest.raises(ValueError, match="part index in 0..1"):
        nf.transforms.PerColumnTransformer((circular, circular), (0, 2))
    with pytest.raises(TypeError, match="without weights of their own"):
        nf.transforms.PerColumnTransformer((nf.transforms.UMNNTransformer(),), (0,))
    with pytest.raises(TypeError, match="treat every column alike"):
        nf.transforms.PerColumnTransformer((_mixed_transformer((0, 1)),), (0,))
    with pytest.raises(ValueError, match="angles must be distinct column indices in 0..2"):
        nf.models.NCSF(3, angles=[0, 3])
    with pytest.raises(ValueError, match="angles must be distinct"):
        nf.models.NCSF(3, angles=[1, 1])
    with pytest.raises(ValueError, match="NCSF: real_bound must be a finite number > 0"):
        nf.models.NCSF(3, angles=[1], real_bound=-1.0)


@pytest.mark.parametrize("coupling", [False, True])
def test_mixed_ncsf_density_integrates_to_one(coupling: bool) -> None:
    """An angle and a real number: the density integrates to one over the cylinder, and
    samples keep the angle on its circle."""
    torch.manual_seed(0)
    flow = nf.models.NCSF(
        2, angles=[1], transforms=2, hidden=(16, 16), bins=4, coupling=coupling
    ).double()
    nf.testing.perturb_parameters(flow, 0.3, 0)
    assert isinstance(flow.base, nf.distributions.Product)
    a = torch.linspace(-math.pi, math.pi, 201, dtype=torch.float64)
    r = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    rr, aa = torch.meshgrid(r, a, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([rr, aa], -1).reshape(-1, 2)).exp().reshape(len(r), len(a))
    mass = torch.trapezoid(torch.trapezoid(p, a, dim=1), r).item()
    assert abs(mass - 1) < 2e-3
    samples = flow.sample(2000)
    assert bool((samples[:, 1].abs() <= math.pi).all()) and samples[:, 0].abs().max() > math.pi


def test_mixed_ncsf_learns_an_angle_and_a_length_across_the_seam() -> None:
    """A dihedral-like angle centred on the seam (a wrapped normal at π) and a length whose mean
    follows its cosine: nf.fit gets within 0.1 nats of the true entropy per row on fresh rows,
    and the fitted density is the same at both ends of the circle (one point)."""
    torch.manual_seed(0)
    sd, noise = 0.5, 0.2

    def draw(n: int) -> torch.Tensor:
        angle = torch.remainder(sd * torch.randn(n) + math.pi, 2 * math.pi) - math.pi
        return torch.stack([angle, 2 + torch.cos(angle) + noise * torch.randn(n)], -1)

    entropy = 0.5 * math.log(2 * math.pi * math.e * sd**2) + 0.5 * math.log(
        2 * math.pi * math.e * noise**2
    )
    x = draw(4000)
    flow = nf.models.standardize(nf.models.NCSF(2, angles=[0], transforms=3, hidden=(32, 32)), x)
    nf.fit(flow, x, steps=600, progress=False, seed=0)
    with torch.no_grad():
        score = flow.log_prob(draw(4000)).mean().item()
        lengths = torch.linspace(0.6, 1.4, 9)
        ends = [flow.log_prob(torch.stack([torch.full_like(lengths, a), lengths], -1))
                for a in (-math.pi, math.pi)]  # fmt: skip
    assert score > -entropy - 0.1, (score, -entropy)
    torch.testing.assert_close(ends[0], ends[1], rtol=0, atol=1e-4)


def test_flow_density_and_cli_on_angles_beside_other_columns(tmp_path, capsys) -> None:
    """A table with an angle in radians, a compass direction in degrees (0 to 360), a positive
    length and a count: ``nfkit fit --angles`` picks NCSF, keeps the angles on their circles,
    and the other columns keep their bounds and integers; ``FlowDensity(angles=...)`` too."""
    import pandas as pd

    from nfkit.cli import main

    rng = np.random.default_rng(0)
    n = 400
    phi = np.mod(rng.normal(np.pi, 0.5, n) + np.pi, 2 * np.pi) - np.pi
    wind = np.mod(np.degrees(rng.vonmises(0.3, 4, n)), 360)
    df = pd.DataFrame(
        {"phi": phi, "wind": wind, "length": np.exp(0.3 * np.cos(phi)), "kids": rng.poisson(2, n)}
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    model = str(tmp_path / "m.pt")
    fit = ["fit", str(tmp_path / "t.csv"), "--steps", "5", "--transforms", "1", "--out", model]
    assert main([*fit, "--angles", "phi,wind=0:360", "--bounds", "length=0:", "-q"]) == 0
    assert main(["info", model]) == 0
    out = capsys.readouterr().out
    assert "NCSF(" in out and "angles=[0, 1]" in out
    assert "angles: phi in [-3.14159, 3.14159], wind in [0, 360]" in out
    assert "bounds: 0 < length" in out and "discrete: kids" in out
    assert main(["sample", model, "-n", "300", "--seed", "0", "-o", str(tmp_path / "s.csv")]) == 0
    drawn = pd.read_csv(tmp_path / "s.csv")
    assert drawn["phi"].abs().max() <= np.pi and drawn["wind"].between(0, 360).all()
    assert (drawn["length"] > 0).all() and (drawn["kids"] == drawn["kids"].round()).all()
    assert main(["score", model, str(tmp_path / "t.csv"), "-o", str(tmp_path / "l.csv")]) == 0
    assert np.isfinite(pd.read_csv(tmp_path / "l.csv")["log_density"]).all()
    capsys.readouterr()
    df.assign(wind=df["wind"] + 360).to_csv(tmp_path / "off.csv", index=False)
    assert main(["score", model, str(tmp_path / "off.csv")]) == 1  # the column by its name
    assert "x column 'wind' has values outside the support [0, 360]" in capsys.readouterr().err
    for extra, message in (
        (["--angles", "phi", "--model", "maf"], "--angles needs --model ncsf"),
        (["--angles", "phi,wind"], "column 'wind' has values outside its bounds"),
        (["--angles", "wind=0:360", "--bounds", "wind=0:360"], "have --bounds too"),
        (["--angles", "phi,kids=0:10", "--discrete", "kids"], "are --angles; an angle is"),
        (["--angles", "speed"], "--angles column(s) 'speed' are not modelled columns"),
    ):
        assert main([*fit, *extra, "-q"]) == 1, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main([*fit, "--angles", "phi=0:x"]) == 2
    assert "must be two numbers (or multiples of pi)" in capsys.readouterr().err
    est = nf.FlowDensity(
        "ncsf", angles=["phi", "wind"], bounds=[(None, None), (0, 360), (0, None), (None, None)],
        discrete="auto", transforms=1, hidden=(8,), steps=20, random_state=0,
    ).fit(df)  # fmt: skip
    assert np.isfinite(est.score_samples(df)).all() and est.discrete_indices_ == [3]
    drawn = est.sample(200, random_state=0)
    assert np.abs(drawn[:, 0]).max() <= np.pi and ((drawn[:, 1] >= 0) & (drawn[:, 1] <= 360)).all()
    with pytest.raises(ValueError, match="angles are for model='ncsf'"):
        nf.FlowDensity("nsf", angles=["phi"], steps=2).fit(df)
    both = nf.FlowDensity("ncsf", angles={"wind": (0, 360)}, bounds=(0, 360), steps=2)
    with pytest.raises(ValueError, match="an angle's range goes in angles or in bounds, not both"):
        both.fit(df)
    ranged = nf.FlowDensity(
        "ncsf", angles={"wind": (0, 360)}, bounds=[(None, None), (None, None), (0, None),
        (None, None)], transforms=1, hidden=(8,), steps=5, random_state=0,
    ).fit(df)  # fmt: skip
    assert ranged.flow_.config["bounds"][1] == [0.0, 360.0]


def test_variational_inference_on_the_cylinder_finds_the_normalizer() -> None:
    """Reverse KL to ``exp(κ cos(a - μ) - ½((r - 2 cos a)/0.5)²)`` on an angle ``a`` (mode near
    the seam) and a real ``r`` whose mean follows it: the mixed flow's samples are
    reparameterized through its product base, and its estimate of ``log Z`` matches
    ``log(2π I₀(κ)) + ½ log(2π · 0.25)``."""
    torch.manual_seed(0)
    kappa, mu = 4.0, 2.8

    def target(x: torch.Tensor) -> torch.Tensor:
        a, r = x[..., 0], x[..., 1]
        return kappa * torch.cos(a - mu) - 0.5 * ((r - 2 * torch.cos(a)) / 0.5) ** 2

    flow = nf.models.NCSF(2, angles=[0], transforms=3, hidden=(32, 32))
    history = nf.fit_vi(flow, target, steps=400, progress=False, seed=0)
    i0 = torch.special.i0(torch.tensor(kappa)).item()
    true_log_z = math.log(2 * math.pi * i0) + 0.5 * math.log(2 * math.pi * 0.25)
    assert abs(history.log_normalizer - true_log_z) < 0.05
    assert history.ess > 0.9


def test_given_angles_from_the_command_line_and_flow_density(tmp_path, capsys) -> None:
    """``--angles`` may name ``--given`` columns: any model then reads them as (cos, sin)
    pairs, ``nfkit info`` lists them, and the samples given 359.9 and 0.1 degrees (a hair
    apart on the circle) are nearly the same; ``FlowDensity`` takes a given angle with its
    range in ``angles``."""
    import pandas as pd

    from nfkit.cli import main

    rng = np.random.default_rng(0)
    n = 400
    wind = rng.uniform(0, 360, n)
    df = pd.DataFrame(
        {"wind": wind, "speed": 5 + 2 * np.cos(np.radians(wind)) + rng.normal(0, 0.3, n)}
    )
    df.to_csv(tmp_path / "w.csv", index=False)
    model = str(tmp_path / "w.pt")
    fit = ["fit", str(tmp_path / "w.csv"), "--given", "wind", "--angles", "wind=0:360"]
    assert main([*fit, "--model", "maf", "--steps", "30", "--out", model, "-q"]) == 0
    assert main(["info", model]) == 0
    out = capsys.readouterr().out
    assert "MAF(" in out and "context=2" in out and "given angles: wind in [0, 360]" in out
    draws = []
    for degrees in ("359.9", "0.1"):
        path = tmp_path / f"s{degrees}.csv"
        args = ["sample", model, "--given", f"wind={degrees}", "-n", "5", "--seed", "0"]
        assert main([*args, "-o", str(path)]) == 0
        draws.append(pd.read_csv(path)["speed"].to_numpy())
    np.testing.assert_allclose(draws[0], draws[1], atol=1e-2)
    est = nf.FlowDensity(
        "nsf", given=["wind"], angles={"wind": (0, 360)}, transforms=1, hidden=(8,), steps=20,
        random_state=0,
    ).fit(df)  # fmt: skip
    assert est.flow_.config["context_angles"] == [[0, 0.0, 360.0]]
    near = est.score_samples(pd.DataFrame({"wind": [0.0, 360.0], "speed": [7.0, 7.0]}))
    assert np.isfinite(near).all() and abs(near[0] - near[1]) < 1e-9


@settings(max_examples=20, deadline=None)
@given(
    assignment=st.lists(st.integers(0, 3), min_size=2, max_size=6),
    structure=st.sampled_from(["Autoregressive", "Coupling", "Elementwise"]),
    seed=st.integers(0, 1000),
)
def test_any_assignment_of_parts_is_a_correct_layer(
    assignment: list[int], structure: str, seed: int
) -> None:
    """Property: whatever the columns' parts (a circular spline, a spline with tails, an affine
    map, an additive one: parameter counts 13, 8, 2 and 1), a perturbed layer inverts, its
    log-det is the autograd Jacobian's, and inputs drawn in each column's own support pass."""
    torch.manual_seed(seed)
    parts = (
        CircularRQSplineTransformer(bins=4, bound=2.0),
        nf.transforms.RQSplineTransformer(bins=3, bound=3.0),
        nf.transforms.AffineTransformer(),
        nf.transforms.AdditiveTransformer(),
    )
    t = nf.transforms.PerColumnTransformer(parts, tuple(assignment))
    d = len(assignment)
    layer = getattr(nf.transforms, structure)(d, t, context=2, hidden=(8,)).double()
    nf.testing.perturb_parameters(layer, 0.3, seed)
    x = layer.domain.from_real(torch.randn(6, d, dtype=torch.float64))
    c = torch.randn(6, 2, dtype=torch.float64)
    nf.testing.check_transform(layer, x, c)
