"""nf.FlowDensity: scikit-learn's own estimator checks, GridSearchCV, Pipeline, conditional use."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

import nfkit as nf

SMALL = dict(model="maf", transforms=1, hidden=(8,), steps=15, batch_size=64, random_state=0)


@parametrize_with_checks(
    [nf.FlowDensity(**SMALL), nf.FlowDensity("rbig", transforms=1, steps=5, random_state=0)],
    expected_failed_checks=lambda est: est._expected_failed_checks(),
)
def test_sklearn_checks(estimator, check) -> None:
    check(estimator)


def _moons(n: int = 600) -> np.ndarray:
    return nf.datasets.two_moons(n, seed=0).double().numpy()


def test_fit_score_sample() -> None:
    x = 10 + 3 * _moons()
    est = nf.FlowDensity(**{**SMALL, "steps": 60, "transforms": 2}).fit(x)
    s = est.score_samples(x)
    assert s.shape == (600,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert est.score(x) == pytest.approx(s.mean())
    draws = est.sample(200, random_state=1)
    assert draws.shape == (200, 2)
    np.testing.assert_array_equal(draws, est.sample(200, random_state=1))
    assert abs(draws.mean(0) - x.mean(0)).max() < 1.5
    assert clone(est).get_params() == est.get_params()


@pytest.mark.parametrize("model", ["residualflow", "ffjord", "rbig", "nsf"])
def test_fitted_estimator_pickles(model: str) -> None:
    """joblib.dump / multiprocessing: a fitted estimator pickles and scores the same after."""
    x = _moons(200)
    est = nf.FlowDensity(**{**SMALL, "model": model, "steps": 3}).fit(x)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.score_samples(x[:20]), est.score_samples(x[:20]))


def test_flow_matching_objective() -> None:
    x = 5 + 2 * _moons(2000)
    kw = {**SMALL, "model": "ffjord", "objective": "flow_matching", "hidden": (64, 64)}
    est = nf.FlowDensity(**{**kw, "steps": 1500, "batch_size": 256, "lr": 3e-3}).fit(x)
    assert est.history_.objective == "flow_matching" and est.history_.val_nll is not None
    s = est.score_samples(x[:500])
    assert np.isfinite(s).all()
    # better than the best Gaussian (-4.68 nats; -4.22 on this seed)
    cov = np.cov(x.T)
    gauss = -0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    assert s.mean() > gauss + 0.3, (s.mean(), gauss)


def test_grid_search_and_pipeline() -> None:
    x = _moons(300)
    grid = GridSearchCV(nf.FlowDensity(**SMALL), {"transforms": np.arange(1, 3)}, cv=2)
    grid.fit(x)  # NumPy integers from the grid
    assert grid.best_params_["transforms"] in (1, 2) and np.isfinite(grid.best_score_)
    assert grid.best_estimator_.flow_.config["flow"]["transforms"] in (1, 2)
    pipe = Pipeline([("scale", StandardScaler()), ("flow", nf.FlowDensity(**SMALL))]).fit(x)
    assert pipe.score_samples(x[:5]).shape == (5,)


def test_conditional_given_names() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=500)
    df = pd.DataFrame({"a": g + 0.1 * rng.normal(size=500), "g": g, "b": rng.normal(size=500)})
    est = nf.FlowDensity(**{**SMALL, "given": ["g"], "steps": 40}).fit(df)
    assert est.given_indices_ == [1] and est.data_indices_ == [0, 2]
    assert est.flow_.config["given"] == ["g"] and est.flow_.config["columns"] == ["a", "g", "b"]
    assert est.score_samples(df).shape == (500,)
    draws = est.sample(50, context=[2.0], random_state=0)
    assert draws.shape == (50, 3) and (draws[:, 1] == 2.0).all()
    with pytest.raises(ValueError, match="conditional; pass context"):
        est.sample(5)
    with pytest.raises(ValueError, match="given column 'zz' not found"):
        nf.FlowDensity(**{**SMALL, "given": ["zz"]}).fit(df)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        nf.FlowDensity(model="nope").fit(df)


def test_fit_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    nf.FlowDensity(**SMALL).fit(_moons(100))
    assert torch.equal(before, torch.get_rng_state())


def test_given_by_index_and_per_row_context() -> None:
    x = _moons(300)
    x = np.column_stack([x, x[:, 0] + 0.1])  # column 2 follows column 0
    est = nf.FlowDensity(**{**SMALL, "given": [-1]}).fit(x)  # negative index: the last column
    assert est.given_indices_ == [2] and est.data_indices_ == [0, 1]
    rows = est.sample(4, context=np.arange(4.0)[:, None], random_state=0)  # one sample per row
    np.testing.assert_array_equal(rows[:, 2], np.arange(4.0))
    with pytest.raises(
        ValueError, match=r"context must have shape \(1,\) or \(4, 1\), got \(3, 1\)"
    ):
        est.sample(4, context=np.zeros((3, 1)))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"given": [3]}, ValueError, "given index 3 out of range for 2 columns"),
        ({"given": [0, 0]}, ValueError, "given lists a column twice"),
        ({"given": [0, 1]}, ValueError, "given must leave at least one column to model"),
        ({"given": [1.5]}, TypeError, "given entries must be int or str, got 1.5"),
        ({"given": ["a"]}, ValueError, "fit on a DataFrame to use names"),
        # not rounded to an int (transforms=2.7 had built 2 transforms, hidden=(8.9,) 8 units)
        ({"transforms": 2.7}, ValueError, "transforms must be an integer >= 1, got 2.7"),
        ({"transforms": "2"}, ValueError, "transforms must be an integer >= 1, got '2'"),
        ({"objective": "mle"}, ValueError, "objective must be one of .*got 'mle'"),
        ({"objective": "flow_matching"}, ValueError, "model='ffjord', not 'maf'"),
        (
            {"model_options": {"transforms": 3}},
            ValueError,
            "'transforms' is set by the transforms, hidden or context setting; give it there",
        ),
        (
            {"hidden": (8.9,)},
            ValueError,
            r"hidden must be a sequence of positive ints, got \(8.9,\)",
        ),
        ({"model": "glow"}, ValueError, r"Glow is an image flow \(events of shape \(C, H, W\)\)"),
        ({"model": "MultiscaleRealNVP"}, ValueError, "MultiscaleRealNVP is an image flow"),
        # not read as truthy ("no" had meant True), nor one int read as one layer
        ({"standardize": "no"}, TypeError, "standardize must be True or False, got 'no'"),
        ({"progress": 1}, TypeError, "progress must be True or False, got 1"),
        ({"summary_padded": None}, TypeError, "summary_padded must be True or False, got None"),
        ({"hidden": 8}, TypeError, r"hidden must be a tuple of positive ints.*got 8$"),
        ({"hidden": "64"}, TypeError, "hidden must be a tuple of positive ints"),
        ({"hidden": (8, 0)}, ValueError, r"hidden must be a sequence of positive ints"),
        ({"outside_support": "zero"}, ValueError, "outside_support must be 'raise' or '-inf'"),
        ({"given": 1.0}, TypeError, "given must be a column or a list of them, got 1.0"),
        ({"model_options": [1]}, TypeError, "model_options must be a dict of the factory's"),
        # the range was dropped: samples outside it, data inside it refused
        (
            {"model": "ncsf", "angles": {0: (0, 360)}, "standardize": False},
            ValueError,
            "angle ranges need standardize=True",
        ),
    ],
)
def test_bad_settings_are_one_line(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        nf.FlowDensity(**{**SMALL, **kwargs}).fit(_moons(100))
    assert "\n" not in str(info.value) and str(info.value).startswith("FlowDensity.fit: ")


def test_sample_rejects_bad_requests() -> None:
    est = nf.FlowDensity(**SMALL).fit(_moons(100))
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        est.sample(0)
    with pytest.raises(ValueError, match="not conditional; context not used"):
        est.sample(3, context=[1.0])


def test_flow_density_discrete_columns() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "kids": rng.poisson(1.5, 300),
            "x": rng.normal(size=300),
            "rooms": rng.integers(1, 6, 300),
        }
    )
    est = nf.FlowDensity(
        "maf", discrete="auto", bounds=[(0, None), (None, None), (1, 5)], transforms=1,
        hidden=(8,), steps=20, random_state=0,
    ).fit(df)  # fmt: skip
    assert est.discrete_indices_ == [0, 2]
    draws = est.sample(500, random_state=0)
    assert (draws[:, [0, 2]] == np.floor(draws[:, [0, 2]])).all()
    assert (draws[:, 0] >= 0).all() and draws[:, 2].min() >= 1 and draws[:, 2].max() <= 5
    scores = est.score_samples(df)
    assert np.isfinite(scores).all() and np.array_equal(scores, est.score_samples(df))
    named = nf.FlowDensity("maf", discrete=["rooms"], given=["x"], transforms=1, hidden=(8,),
                           steps=5, random_state=0).fit(df)  # fmt: skip
    assert named.discrete_indices_ == [2]
    assert (
        nf.FlowDensity("maf", steps=5, transforms=1, hidden=(8,)).fit(df).discrete_indices_ == []
    )
    with pytest.raises(ValueError, match="discrete column 'x' is a given column"):
        nf.FlowDensity("maf", discrete=["x"], given=["x"], steps=2).fit(df)
    with pytest.raises(ValueError, match="discrete lists a column twice"):
        nf.FlowDensity("maf", discrete=[0, "kids"], steps=2).fit(df)
    with pytest.raises(ValueError, match="discrete index 7 out of range for 3 columns"):
        nf.FlowDensity("maf", discrete=[7], steps=2).fit(df)
    with pytest.raises(ValueError, match="discrete need standardize=True"):
        nf.FlowDensity("maf", discrete="auto", standardize=False, steps=2).fit(df)


def test_text_column_through_ordinal_encoder() -> None:
    """The documented recipe for text columns: scikit-learn's encoder in front, the codes as a
    discrete column, and the encoder turning sampled codes back into labels."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    rng = np.random.default_rng(0)
    region = rng.choice(["east", "north", "west"], 300, p=[0.6, 0.3, 0.1])
    table = pd.DataFrame({"region": region, "income": rng.normal(50, 10, 300)})
    codes = ColumnTransformer([("region", OrdinalEncoder(), ["region"])], remainder="passthrough")
    flow = nf.FlowDensity("maf", transforms=2, hidden=(16,), steps=150, discrete=[0],
                          bounds=[(0, 2), (None, None)], random_state=0)  # fmt: skip
    pipe = make_pipeline(codes, flow).fit(table)
    assert flow.discrete_indices_ == [0]
    # the three regions' probabilities at a fixed income sum to one
    rows = pd.DataFrame({"region": ["east", "north", "west"], "income": [50.0] * 3})
    from scipy.special import logsumexp

    log_p = pipe.score_samples(rows)
    log_income = logsumexp(log_p)  # log p(income = 50)
    assert np.isclose(np.exp(log_p - log_income).sum(), 1.0)
    assert log_p[0] > log_p[2]  # east is six times as frequent as west
    sampled = flow.sample(200, random_state=0)
    labels = pipe[0].named_transformers_["region"].inverse_transform(sampled[:, :1]).ravel()
    assert set(labels) == {"east", "north", "west"} and (labels == "east").mean() > 0.4


def test_data_float32_would_blur_is_fitted_in_float64() -> None:
    """``1e8 + N(0, 1)`` in float32 is one value (the fit saw a constant and scored 0.23 nats
    off); ``1 - 1e-9`` in ``(0, 1)`` is 1 in float32 (refused as outside the support)."""
    rng = np.random.default_rng(0)
    x, held = 1e8 + rng.normal(size=(2000, 1)), 1e8 + rng.normal(size=(500, 1))
    est = nf.FlowDensity("maf", transforms=1, hidden=(8,), steps=100, random_state=0).fit(x)
    gaussian = -0.5 * np.log(2 * np.pi * x.var()) - 0.5 * (held - x.mean()) ** 2 / x.var()
    assert abs(est.score(held) - gaussian.mean()) < 0.05
    share = np.r_[np.linspace(0.1, 0.9, 50), 1 - 1e-9][:, None]
    fitted = nf.FlowDensity("maf", transforms=1, hidden=(8,), steps=5, bounds=(0, 1)).fit(share)
    assert np.isfinite(fitted.score_samples(share)).all()


def test_a_failed_refit_leaves_no_stale_model() -> None:
    rng = np.random.default_rng(0)
    est = nf.FlowDensity("maf", transforms=1, hidden=(8,), steps=5).fit(rng.normal(size=(50, 2)))
    constant = np.c_[rng.normal(size=50), np.ones(50)]
    with pytest.raises(ValueError, match="constant"):
        est.fit(constant)
    with pytest.raises(NotFittedError):
        est.score_samples(constant)


def test_angles_by_numpy_index_and_a_dataframe_context() -> None:
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(0, 360, 200), rng.normal(size=200)]
    est = nf.FlowDensity("ncsf", transforms=1, hidden=(8,), steps=5, angles=np.int64(0),
                         bounds=[(0, 360), (None, None)]).fit(X)  # fmt: skip
    assert np.isfinite(est.score_samples(X)).all()
    frame = pd.DataFrame({"c": rng.normal(size=100), "y": rng.normal(size=100)})
    cond = nf.FlowDensity("maf", transforms=1, hidden=(8,), steps=5, given=["c"]).fit(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning for pandas' read-only view
        assert cond.sample(3, context=frame[["c"]].iloc[:3]).shape == (3, 2)


def test_bounds_by_column_name() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "price": rng.lognormal(size=200),
            "share": rng.uniform(0.01, 0.99, 200),
            "z": rng.normal(size=200),
        }  # fmt: skip
    )
    small = dict(model="maf", transforms=1, hidden=(8,), steps=10)
    est = nf.FlowDensity(**small, bounds={"price": (0, None), "share": (0, 1)}).fit(frame)
    assert est.flow_.config["bounds"] == [[0.0, None], [0.0, 1.0], [None, None]]
    draws = est.sample(500, random_state=0)
    assert (draws[:, 0] > 0).all() and ((draws[:, 1] > 0) & (draws[:, 1] < 1)).all()
    with pytest.raises(ValueError, match="bounds are for modelled columns; 'z' is given"):
        nf.FlowDensity(**small, given=["z"], bounds={"z": (0, None)}).fit(frame)
    with pytest.raises(ValueError, match="bounds column 'nope' not found"):
        nf.FlowDensity(**small, bounds={"nope": (0, None)}).fit(frame)


def test_sample_weight_zero_rows_take_no_part() -> None:
    """Rows of weight 0 (here wild outliers) are left out of the likelihood and of the
    standardization: the fit matches one on the clean rows; unweighted, they ruin it."""
    x = nf.datasets.two_moons(600, seed=0).numpy().astype(np.float64)
    x[:50] += 1000.0
    w = np.ones(600)
    w[:50] = 0.0
    est = dict(model="maf", transforms=2, hidden=(16,), steps=200, random_state=0)
    weighted = nf.FlowDensity(**est).fit(x, sample_weight=w).score(x[50:])
    clean = nf.FlowDensity(**est).fit(x[50:]).score(x[50:])
    plain = nf.FlowDensity(**est).fit(x).score(x[50:])
    assert abs(weighted - clean) < 0.05 and plain < clean - 3
    with pytest.raises(ValueError, match="non-zero"):
        nf.FlowDensity(**est).fit(x, sample_weight=np.zeros(600))


def test_valid_settings_of_the_checked_kinds_still_fit() -> None:
    """A list or array of widths and NumPy booleans are accepted; clone keeps them as given."""
    x = _moons(100)
    for hidden, flag in (([8], np.True_), (np.array([8, 8]), False), (None, True)):
        est = nf.FlowDensity(**{**SMALL, "steps": 2, "hidden": hidden, "standardize": flag})
        assert np.isfinite(est.fit(x).score(x))
        assert clone(est).get_params()["standardize"] is flag


def test_zero_weight_rows_stay_out_of_the_validation_split() -> None:
    """Rows of weight 0 are dropped before nf.fit: a held-out share of only such rows had made
    the fit fail ("every held-out row has weight 0") for this seed; the fit now equals one on
    the rows of positive weight."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    w = np.zeros(200)
    ones = rng.choice(200, 20, replace=False)
    w[ones] = 1.0
    w[ones[::2]] = 2.0
    kw = dict(model="maf", transforms=1, hidden=(8,), steps=3, random_state=0)
    est = nf.FlowDensity(**kw).fit(x, sample_weight=w)
    same = nf.FlowDensity(**kw).fit(x[w > 0], sample_weight=w[w > 0])
    np.testing.assert_array_equal(est.score_samples(x), same.score_samples(x))
    with pytest.raises(ValueError, match="sample_weight leaves 1 row of weight > 0"):
        nf.FlowDensity(**kw).fit(x, sample_weight=np.eye(200)[0])


def test_a_failed_fit_leaves_it_unfitted() -> None:
    """A fit that raises leaves no fitted attribute for check_is_fitted (in a Pipeline too),
    first fit or refit."""
    x = _moons(100)
    bad = nf.FlowDensity(**{**SMALL, "objective": "typo"})
    with pytest.raises(ValueError, match="objective must be one of"):
        bad.fit(x)
    with pytest.raises(NotFittedError):
        check_is_fitted(bad)
    assert not hasattr(bad, "n_features_in_") and not hasattr(bad, "data_indices_")
    pipe = Pipeline([("scale", StandardScaler()), ("flow", clone(bad))])
    with pytest.raises(ValueError, match="objective must be one of"):
        pipe.fit(x)
    with pytest.raises(NotFittedError):
        check_is_fitted(pipe)
    est = nf.FlowDensity(**{**SMALL, "steps": 2}).fit(x)
    check_is_fitted(est)
    with pytest.raises(ValueError, match="objective must be one of"):
        est.set_params(objective="typo").fit(x)
    with pytest.raises(NotFittedError):
        check_is_fitted(est)


def test_rbig_lists_the_sample_weight_checks_it_fails() -> None:
    est = nf.FlowDensity("rbig")
    failed = est._expected_failed_checks()
    assert len(failed) == 7 and "check_sample_weights_shape" in failed
    assert all("refuses sample_weight" in why for why in failed.values())
    assert nf.FlowDensity("maf")._expected_failed_checks() == {}


def test_integer_weights_match_repeated_rows() -> None:
    """An integer weight counts as that many copies of the row: with full batches, no held-out
    split and no standardization (fitted on the distinct rows, unweighted) the training is the
    same up to float32 rounding (3.5e-8 here); ``score`` with the weights is the mean over the
    repeated rows."""
    x = _moons(60)
    k = np.random.default_rng(0).integers(1, 4, size=60)
    repeated = np.repeat(x, k, axis=0)
    kw = dict(model="maf", transforms=2, hidden=(16,), steps=50, batch_size=1000)
    kw.update(val_fraction=0.0, standardize=False, random_state=0)
    weighted = nf.FlowDensity(**kw).fit(x, sample_weight=k)
    copies = nf.FlowDensity(**kw).fit(repeated)
    test = nf.datasets.two_moons(200, seed=1).double().numpy()
    np.testing.assert_allclose(weighted.score_samples(test), copies.score_samples(test), atol=1e-6)
    assert weighted.score(x, sample_weight=k) == pytest.approx(weighted.score(repeated), abs=1e-12)


def test_score_takes_sample_weight() -> None:
    x = _moons(200)
    w = np.random.default_rng(0).uniform(0, 2, 200)
    w[:20] = 0.0
    est = nf.FlowDensity(**{**SMALL, "steps": 5}).fit(x)
    s = est.score_samples(x)
    assert est.score(x, sample_weight=w) == pytest.approx(np.average(s, weights=w), rel=1e-12)
    assert est.score(x, sample_weight=w) == pytest.approx(est.score(x[20:], sample_weight=w[20:]))
    assert est.score(x, sample_weight=None) == est.score(x)
    # weights whose sum overflows float64 (fit takes them): the same mean, not NaN
    assert est.score(x, sample_weight=np.full(200, 1e307)) == pytest.approx(est.score(x))
    with pytest.raises(ValueError, match="sample_weight"):
        est.score(x, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="sample_weight"):
        est.score(x, sample_weight=-w)
    # GridSearchCV passes the weights to score too: no "does not support sample_weight" warning
    grid = GridSearchCV(nf.FlowDensity(**{**SMALL, "steps": 3}), {"transforms": [1]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        grid.fit(x, sample_weight=w)
    assert np.isfinite(grid.best_score_)


def test_score_weights_route_with_metadata_routing() -> None:
    import sklearn

    x = _moons(200)
    w = np.random.default_rng(0).uniform(0.5, 2, 200)
    with sklearn.config_context(enable_metadata_routing=True):
        est = nf.FlowDensity(**{**SMALL, "steps": 3})
        est = est.set_fit_request(sample_weight=True).set_score_request(sample_weight=True)
        grid = GridSearchCV(est, {"transforms": [1]}, cv=2).fit(x, sample_weight=w)
    assert np.isfinite(grid.best_score_)


def test_ncsf_without_angles_says_every_column_is_an_angle() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"phi": rng.uniform(-3, 3, 100), "speed": 4 + rng.normal(size=100)})
    small = dict(model="ncsf", transforms=1, hidden=(8,), steps=2)
    message = (
        r"FlowDensity.fit: model='ncsf' treats every column as an angle in \[-π, π\] unless "
        r"angles= names them; column 'speed' has values outside it \(e.g. "
    )
    with pytest.raises(ValueError, match=message) as info:
        nf.FlowDensity(**small).fit(frame)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"every column as an angle .* column 1 has values"):
        nf.FlowDensity(**small, standardize=False).fit(frame.to_numpy())
    with pytest.raises(ValueError, match=r"\[-2, 2\] unless angles= names them; column 'phi'"):
        nf.FlowDensity(**small, model_options={"bound": 2.0}).fit(frame[["phi"]])
    # named angles, or a range through bounds: fitted as before
    assert np.isfinite(nf.FlowDensity(**small, angles=["phi"]).fit(frame).score(frame))
    ranged = nf.FlowDensity(**small, bounds=[(None, None), (0, 10)]).fit(frame)
    assert np.isfinite(ranged.score(frame))


def test_bounds_are_open_at_their_ends() -> None:
    x = np.random.default_rng(0).lognormal(size=(100, 1))
    x[0] = 0.0
    with pytest.raises(ValueError, match=r"outside its bounds \(0, inf\)"):
        nf.FlowDensity(**{**SMALL, "steps": 2, "bounds": (0, None)}).fit(x)


def test_outside_support_scores_impossible_rows_minus_inf() -> None:
    """An anomaly detector's setting: a row below a bound (or a non-integer count) has density
    0, scored -inf beside the others' finite scores, which equal the default's."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"price": rng.gamma(2, size=300), "qty": rng.poisson(3, size=300)})
    test = pd.DataFrame({"price": [1.0, -5.0, 2.0, 0.5], "qty": [1, 2, 3.5, 2]})
    est = nf.FlowDensity(
        "maf", transforms=1, hidden=(8,), steps=20, bounds={"price": (0, None)},
        discrete=["qty"], random_state=0,
    ).fit(train)  # fmt: skip
    with pytest.raises(ValueError, match="column 'qty' has non-integer values"):
        est.score_samples(test)
    scores = est.set_params(outside_support="-inf").score_samples(test)
    assert np.isneginf(scores[[1, 2]]).all() and np.isfinite(scores[[0, 3]]).all()
    inside = est.set_params(outside_support="raise").score_samples(test.iloc[[0, 3]])
    np.testing.assert_allclose(scores[[0, 3]], inside)
    assert est.set_params(outside_support="-inf").score(test) == -np.inf


def test_information_criteria_follow_gaussian_mixture_conventions() -> None:
    """``aic = 2k - 2 Σ log p`` and ``bic = k log n - 2 Σ log p`` with ``k`` the trained
    parameters (the standardization's statistics are buffers, not counted)."""
    x = _moons(200)
    est = nf.FlowDensity("maf", transforms=1, hidden=(8,), steps=20, random_state=0).fit(x)
    k = sum(p.numel() for p in est.flow_.parameters())
    assert est.n_parameters() == k > 0
    total = est.score_samples(x).sum()
    assert est.aic(x) == pytest.approx(2 * k - 2 * total)
    assert est.bic(x) == pytest.approx(k * np.log(200) - 2 * total)
    assert est.bic(x) > est.aic(x)  # log 200 > 2
    # a mixture counts its K weights as K - 1 free ones, as scikit-learn's GaussianMixture
    gmm = nf.FlowDensity("gmm", model_options={"components": 3, "covariance": "full"},
                         steps=5, random_state=0).fit(np.random.default_rng(0).normal(size=(90, 3)))  # fmt: skip
    assert gmm.n_parameters() == 3 * 3 + 3 * 3 + 3 * 3 + 3 - 1  # means, 3x3 triangles, weights


def test_bounds_naming_one_column_twice_are_refused() -> None:
    """A name and an index of the same column: the last had won silently."""
    df = pd.DataFrame(np.abs(_moons(100)) + 0.1, columns=["a", "b"])
    with pytest.raises(ValueError, match="FlowDensity.fit: bounds lists a column twice"):
        nf.FlowDensity(**SMALL, bounds={"b": (0, None), 1: (0, 100)}).fit(df)


def test_an_array_fit_records_its_column_layout_for_the_command_line(tmp_path) -> None:
    """Fitted on an array with a given column in the middle: the saved flow records the names a
    header-less table gets (x0, x1, ...) and which is given, so ``nfkit score`` reads the
    columns by position as the estimator did (it read them as modelled, then given), and the
    errors name the user's column."""
    g = np.random.default_rng(0)
    X = np.c_[g.normal(size=300), g.normal(size=300) * 10 + 50, g.gamma(2.0, size=300)]
    est = nf.FlowDensity(**SMALL, given=[1], bounds={2: (0, None)}).fit(X)
    assert est.flow_.config["columns"] == ["x0", "x1", "x2"]
    assert est.flow_.config["given"] == ["x1"]
    nf.save(est.flow_, tmp_path / "m.pt")
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "scores.csv"
    done = subprocess.run(
        [sys.executable, "-m", "nfkit", "score", str(tmp_path / "m.pt"), str(tmp_path / "X.npy"), "-o", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scores = pd.read_csv(out).iloc[:, -1].to_numpy()
    np.testing.assert_allclose(scores, est.score_samples(X), rtol=1e-4, atol=1e-4)
    bad = X.copy()
    bad[0, 2] = -1.0
    with pytest.raises(ValueError, match="column 'x2' has values outside the support"):
        est.score_samples(bad)


def test_score_leaves_rows_of_weight_zero_unscored() -> None:
    """A row of weight 0 outside the support: not scored (it was refused)."""
    X = np.abs(_moons(200)) + 0.1
    est = nf.FlowDensity(**SMALL, bounds=(0, None)).fit(X)
    bad, w = X[:20].copy(), np.ones(20)
    bad[0, 0], w[0] = -1.0, 0.0
    assert est.score(bad, sample_weight=w) == pytest.approx(est.score(X[1:20]))


def test_default_hidden_with_a_summary_network() -> None:
    """``hidden=None`` (the factories' defaults) reached Embedded as None: an error."""
    X = np.c_[_moons(100), np.random.default_rng(0).normal(size=100)]
    est = nf.FlowDensity("nsf", hidden=None, given=[2], summary=2, steps=2, random_state=0)
    assert np.isfinite(est.fit(X).score(X))
