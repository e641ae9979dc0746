"""``nf.models.standardize(..., bounds=...)``: columns with bounded or half-bounded supports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nfkit as nf


def _table(n: int = 400, seed: int = 0) -> torch.Tensor:
    """A fraction in (0, 1), a positive price and an unbounded column."""
    g = torch.Generator().manual_seed(seed)
    share = torch.rand(n, generator=g) * 0.98 + 0.01
    price = torch.exp(torch.randn(n, generator=g)) * 50
    return torch.stack([share, price, torch.randn(n, generator=g)], -1).double()


def test_samples_stay_inside_and_the_density_integrates_to_one() -> None:
    torch.manual_seed(0)
    x = _table()
    flow = nf.models.standardize(
        nf.models.NSF(3, transforms=2, hidden=(16,), bins=4).double(),
        x,
        bounds=[(0, 1), (0, None), (None, None)],
    )
    nf.fit(flow, x, steps=30, progress=False, seed=0)
    with torch.no_grad():
        s = flow.sample(5000)
    assert bool((s[:, 0] > 0).all() & (s[:, 0] < 1).all() & (s[:, 1] > 0).all())
    # one column on (0, 1): the density integrates to one over the interval
    x1 = x[:, :1]
    line = nf.models.standardize(
        nf.models.NSF(1, transforms=2, hidden=(8,)).double(), x1, bounds=(0, 1)
    )
    nf.testing.perturb_parameters(line, 0.3, 0)
    grid = torch.linspace(1e-6, 1 - 1e-6, 20001, dtype=torch.float64)
    with torch.no_grad():
        p = line.log_prob(grid[:, None]).exp()
    assert abs(torch.trapezoid(p, grid).item() - 1) < 2e-3


def test_values_outside_a_columns_bounds_are_refused_by_name() -> None:
    x = _table()
    frame = {"share": x[:, 0].numpy(), "price": x[:, 1].numpy(), "z": x[:, 2].numpy()}
    import pandas as pd

    df = pd.DataFrame(frame)
    with pytest.raises(
        ValueError, match=r"column 'share' has values outside its bounds \(0, 0.5\)"
    ):
        nf.models.standardize(
            nf.models.MAF(3, transforms=1, hidden=(8,)), df, columns=list(df.columns),
            bounds=[(0, 0.5), (0, None), (None, None)],
        )  # fmt: skip
    flow = nf.models.standardize(
        nf.models.MAF(3, transforms=1, hidden=(8,)), x, bounds=[(0, 1), (0, None), (None, None)]
    )
    with pytest.raises(ValueError, match=r"x column 1 has values outside the support \(0, inf\)"):
        flow.log_prob(torch.tensor([[0.5, -2.0, 0.0]]))
    assert flow.config["bounds"] == [[0.0, 1.0], [0.0, None], [None, None]]
    again = nf.models.build(flow.config)
    again.load_state_dict(flow.state_dict())
    torch.testing.assert_close(again.log_prob(x[:5].float()), flow.log_prob(x[:5].float()))


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([(0, 1)], "one .low, high. pair, or one per column .3."),
        ([(1, 0), (0, None), (None, None)], "bounds of column 0 need low < high"),
        ([(0, "a"), (0, None), (None, None)], "bounds of column 0 must be numbers or None"),
    ],
)
def test_bad_bounds_are_one_line(bounds, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as info:
        nf.models.standardize(
            nf.models.MAF(3, transforms=1, hidden=(8,)), _table().abs(), bounds=bounds
        )
    assert "\n" not in str(info.value)


def test_bounds_of_angles_are_their_range() -> None:
    """On a flow of angles (``NCSF``) the bounds of an angle are its range in the user's units,
    mapped linearly onto the flow's circle: values outside are refused, and the range must be
    finite."""
    angles = torch.rand(100, 2) * 6 - 3
    flow = nf.models.NCSF(2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"column 0 has values outside its bounds \[0, 1\]"):
        nf.models.standardize(flow, angles, bounds=(0, 1))
    with pytest.raises(ValueError, match="an angle of the flow, must be its finite range"):
        nf.models.standardize(flow, angles, bounds=(0, None))
    degrees = nf.models.standardize(flow, angles * 60, bounds=(-180, 180))
    torch.testing.assert_close(  # the same density, per degree instead of per radian
        degrees.log_prob(angles * 60),
        flow.log_prob(angles * math.pi / 3) + 2 * math.log(math.pi / 180),
    )


def test_a_float32_bounded_flow_cast_to_float64_keeps_its_support_through_save_and_load(
    tmp_path,
) -> None:
    """``.double()`` after construction keeps float32-rounded ends (0.1 → 0.10000000149...);
    ``nf.load`` rebuilt in float64 (end 0.1) and loaded the rounded buffer, and the domain kept
    from the rebuild let 0.1000000001 through to ``log(x - low)``: NaN, silently. The domain
    follows the loaded ends, the message prints them distinctly, and an angle's range set by
    ``standardize`` (not a buffer's end) stays."""
    x = 0.1 + torch.rand(300, 2, generator=torch.Generator().manual_seed(0))
    inner = nf.models.MAF(2, transforms=1, hidden=(8,))
    flow = nf.models.standardize(inner, x, bounds=[(0.1, None), (None, None)]).double().eval()
    loaded = nf.load(nf.save(flow, tmp_path / "bounded.pt"))
    v = torch.tensor([[0.1000000001, 0.5]], dtype=torch.float64)
    for f in (flow, loaded):
        assert not bool(f.in_support(v))
        with pytest.raises(ValueError, match=r"outside the support \(0\.10000000149011612, inf\)"):
            f.log_prob(v)
    inside = torch.tensor([[0.2, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(inside), flow.log_prob(inside))
    ncsf = nf.models.NCSF(2, angles=[0], transforms=1, hidden=(8,))
    degrees = nf.models.standardize(ncsf, torch.rand(50, 2) * 300, bounds=[(0, 360), (0, None)])
    again = nf.load(nf.save(degrees, tmp_path / "angles.pt"))
    assert str(again.transform.domain) == str(degrees.transform.domain)
    assert "[0, 360]" in str(again.transform.domain)


def test_flow_density_bounds() -> None:
    x = _table().numpy()
    est = nf.FlowDensity(
        "maf", bounds=[(0, 1), (0, None), (None, None)], transforms=1, hidden=(8,), steps=20,
        random_state=0,
    ).fit(x)  # fmt: skip
    draws = est.sample(500, random_state=0)
    assert (draws[:, 0] > 0).all() and (draws[:, 0] < 1).all() and (draws[:, 1] > 0).all()
    assert np.isfinite(est.score_samples(x)).all()
    with pytest.raises(ValueError, match="bounds need standardize=True"):
        nf.FlowDensity("maf", bounds=(0, None), standardize=False, steps=2).fit(np.abs(x))


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        ([0.0], ["a"], "low and high must be numbers"),
        ([0.0, 1.0], [1.0], "one value per column"),
        ([1.0], [0.0], "need low < high in every column"),
        ([float("inf")], [float("inf")], "need low < high"),
    ],
)
def test_bounded_refuses_bad_ends_in_one_line(low, high, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        nf.transforms.Bounded(low, high)
    assert "\n" not in str(info.value)


def test_angles_beside_other_columns_keep_their_units() -> None:
    """``NCSF(angles=[1])`` behind ``standardize``: the real columns are standardized, the
    angle is mapped from its range (compass degrees, whole numbers: never taken as discrete)
    onto the circle; the wrapped flow rebuilds from its config, and the density is the inner
    one's with both Jacobians."""
    torch.manual_seed(0)
    n = 300
    wind = torch.randint(0, 360, (n,)).double()
    x = torch.stack([100 + 10 * torch.randn(n, dtype=torch.float64), wind,
                     torch.randint(0, 5, (n,)).double()], -1)  # fmt: skip
    inner = nf.models.NCSF(3, angles=[1], transforms=1, hidden=(8,)).double()
    flow = nf.models.standardize(
        inner, x, bounds=[(None, None), (0, 360), (None, None)], discrete="auto"
    )
    assert flow.config["discrete"] == [2] and flow.config["bounds"][1] == [0.0, 360.0]
    assert str(flow.transform.domain.at(1)) == "[0, 360]"
    affine = flow.transform[1]
    scale = 2 * math.pi / 360
    torch.testing.assert_close(
        affine.log_abs_scale[:2], torch.tensor([-math.log(x[:, 0].std(unbiased=False)),
                                                math.log(scale)], dtype=torch.float64),
    )  # fmt: skip
    rebuilt = nf.models.build(flow.config).double()
    rebuilt.load_state_dict(flow.state_dict())
    torch.manual_seed(1)  # the same dequantization draws
    first = flow.log_prob(x[:5])
    torch.manual_seed(1)
    torch.testing.assert_close(rebuilt.log_prob(x[:5]), first)
    draws = flow.sample(500)
    assert bool(((draws[:, 1] >= 0) & (draws[:, 1] <= 360)).all())
    inner2 = nf.models.NCSF(2, angles=[1], transforms=1, hidden=(8,)).double()
    plain = nf.models.standardize(inner2, x[:, :2], bounds=[(None, None), (0, 360)])
    std = x[:, 0].std(unbiased=False)
    z = torch.stack([(x[:, 0] - x[:, 0].mean()) / std, x[:, 1] * scale - math.pi], -1)
    with torch.no_grad():
        expected = inner2.log_prob(z) - math.log(std) + math.log(scale)
        torch.testing.assert_close(plain.log_prob(x[:, :2]), expected)


def test_given_angles_are_read_as_cos_sin_pairs() -> None:
    """``context_angles``: a given angle (compass degrees) is mapped from its range onto
    ``[-π, π]`` and read as ``(cos, sin)``, so the conditional density is the same at 0 and
    360 degrees, and any value is accepted (the embedding wraps it); the inner flow takes
    ``C + A`` context features; the config rebuilds it; mistakes are one-line errors."""
    torch.manual_seed(0)
    n = 400
    wind, temp = torch.rand(n, dtype=torch.float64) * 360, torch.randn(n, dtype=torch.float64)
    x = (2 + torch.cos(torch.deg2rad(wind)) + 0.2 * temp)[:, None]
    c = torch.stack([temp, wind], -1)
    inner = nf.models.NSF(1, context=3, transforms=1, hidden=(8,)).double()
    nf.testing.perturb_parameters(inner, 0.3, 0)
    flow = nf.models.standardize(
        inner, x, c, columns=["y", "temp", "wind"], given=["temp", "wind"],
        context_angles={"wind": (0, 360)},
    )  # fmt: skip
    assert flow.context_features == 2 and flow.config["context_angles"] == [[1, 0.0, 360.0]]
    # the config's own form, [index, low, high] triples, is taken too (a raw TypeError before)
    again = nf.models.standardize(
        nf.models.NSF(1, context=3, transforms=1, hidden=(8,)).double(), x, c,
        context_angles=flow.config["context_angles"],
    )  # fmt: skip
    assert again.config["context_angles"] == flow.config["context_angles"]
    rows = torch.tensor([[1.0], [2.5]], dtype=torch.float64)
    at = lambda degrees: flow.log_prob(rows, torch.tensor([[0.3, degrees]] * 2).double())  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(at(0.0), at(360.0), rtol=0, atol=1e-10)
        torch.testing.assert_close(at(10.0), at(370.0), rtol=0, atol=1e-10)
        assert (at(0.0) - at(180.0)).abs().max() > 1e-3  # the angle matters
    rebuilt = nf.models.build(flow.config).double()
    rebuilt.load_state_dict(flow.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(x[:5], c[:5]), flow.log_prob(x[:5], c[:5]))
    for angles, inner_context, message in (
        # (a context of 2 columns and an inner flow of 2: it named the context as wrong)
        ([1], 2, r"the context has 2 columns, 1 of them angles .* the flow needs 3 context "
         r"features \(C \+ A\); it takes 2"),  # fmt: skip
        ([0, 1], 2, r"needs C \+ 2 context features for C context columns; it takes 2"),
        (["speed"], 3, "must name context columns .* the context columns are 'temp', 'wind'"),
        ({1: (360, 0)}, 3, "needs one finite range low < high"),
        ({1: "north"}, 3, "must be \\(low, high\\)"),
        ([[1, 360]], 3, "or \\[index, low, high\\] triples, got \\[1, 360\\]"),  # (was a TypeError)
    ):
        with pytest.raises(ValueError, match=message) as info:
            nf.models.standardize(
                nf.models.NSF(1, context=inner_context, transforms=1, hidden=(8,)), x, c,
                columns=["y", "temp", "wind"], given=["temp", "wind"], context_angles=angles,
            )  # fmt: skip
        assert "\n" not in str(info.value)


def test_dataframes_name_the_columns() -> None:
    """``standardize`` records a DataFrame's column names (data, then a context frame's)."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(100, 2)), columns=["u", "v"])
    c = pd.DataFrame(rng.normal(size=(100, 1)), columns=["w"])
    flow = nf.models.standardize(nf.models.MAF(2, transforms=1, hidden=(8,)), x)
    assert flow.config["columns"] == ["u", "v"] and flow.config["given"] is None
    flow = nf.models.standardize(nf.models.MAF(2, context=1, transforms=1, hidden=(8,)), x, c)
    assert flow.config["columns"] == ["u", "v", "w"] and flow.config["given"] == ["w"]


def test_bounds_by_column_as_a_dict() -> None:
    """``{column: (low, high)}`` (as ``FlowDensity`` takes): iterated as a sequence it gave its
    keys, so ``{0: (0, 10), 1: (0, 2)}`` bounded both columns to (0, 1), silently."""
    pd = pytest.importorskip("pandas")
    x = torch.rand(100, 2, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    maf = lambda: nf.models.MAF(2, transforms=1, hidden=(4,))  # noqa: E731
    flow = nf.models.standardize(maf(), x, bounds={0: (0, 10), 1: (0, 2)})
    assert flow.config["bounds"] == [[0.0, 10.0], [0.0, 2.0]]
    assert flow.in_support(torch.tensor([[5.0, 1.5]])).tolist() == [True]
    frame = pd.DataFrame(x.numpy(), columns=["a", "b"])
    flow = nf.models.standardize(maf(), frame, bounds={"b": (0, None)})
    assert flow.config["bounds"] == [[None, None], [0.0, None]]
    with pytest.raises(ValueError, match=r"bounds must name modelled columns .* got 'c'; the "):
        nf.models.standardize(maf(), frame, bounds={"c": (0, 1)})


def test_column_names_and_context_rows_are_checked_against_the_data() -> None:
    """Names recorded for `nfkit score` must match the flow (a wrong count was saved and then
    blamed the data at scoring), and the context's statistics come from x's own rows (10
    unrelated context rows beside 300 were used silently)."""
    x = torch.randn(300, 2) * 4 + 2
    c = torch.randn(300, 1)

    def maf(context: int = 0) -> nf.Flow:
        return nf.models.MAF(2, context=context, transforms=1, hidden=(8,))

    for flow, context, kwargs, message in (
        (maf(), None, {"columns": ["a"]}, r"columns name 1 modelled column\(s\) \['a'\]"),
        (maf(), None, {"columns": ["a", "a"]}, r"columns must be distinct names, got \['a'\]"),
        (maf(1), c, {"columns": ["a", "b", "c"], "given": ["zz"]}, r"given names \['zz'\], which"),
        (maf(1), c, {"columns": ["a", "b", "c", "d"], "given": ["c", "d"]}, r"given names 2 context"),
        (maf(), None, {"columns": ["a", "b", "c"], "given": ["c"]}, r"given names 1 context"),
        (maf(1), c, {"given": ["c"]}, "give columns too"),
        (maf(1), c[:10], {}, "x has 300 rows but context has 10"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            nf.models.standardize(flow, x, context, **kwargs)
        assert "\n" not in str(info.value)
    ok = nf.models.standardize(maf(1), x, c, columns=["a", "b", "c"], given=["c"])
    assert ok.config["columns"] == ["a", "b", "c"] and ok.config["given"] == ["c"]


def test_standardized_factory_checks_the_names_it_records() -> None:
    """A config edited by hand (or written by another tool) is held to the same rule as
    standardize: the names must fit the features and the context."""
    x, c = torch.randn(300, 2) * 4 + 2, torch.randn(300, 1)
    flow = nf.models.standardize(nf.models.MAF(2, context=1, transforms=1, hidden=(8,)), x, c,
                                 columns=["a", "b", "c"], given=["c"])  # fmt: skip
    assert nf.models.build(flow.config).config["columns"] == ["a", "b", "c"]
    for change, message in (
        ({"columns": ["a", "b"]}, r"given names \['c'\], which are not among columns"),
        ({"given": None}, r"columns name 3 modelled column\(s\)"),
        ({"columns": ["a", "b", "c", "d"], "given": ["c", "d"]}, r"given names 2 context column"),
        ({"columns": None}, "give columns too"),
    ):
        with pytest.raises(ValueError, match=message):
            nf.models.build({**flow.config, **change})
