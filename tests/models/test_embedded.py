"""``Embedded``: a conditional flow behind a learned summary network, saved and loaded by config."""

from __future__ import annotations

import math

import pytest
import torch

import nfkit as nf


def test_a_summary_network_learns_a_conjugate_posterior(tmp_path) -> None:
    """θ ~ N(0, 1), twenty draws x_i ~ N(θ, 1): the posterior is N(Σx / 21, 1 / 21). A flow
    conditioned on the 20 raw draws through a 4-feature summary network gets the posterior mean
    within 0.05 and its standard deviation within 15% at three held-out observations; the saved
    and loaded model gives the same densities."""
    torch.manual_seed(0)
    n, m = 8000, 20
    theta = torch.randn(n, 1)
    x = theta + torch.randn(n, m)
    inner = nf.models.NSF(1, context=4, transforms=2, hidden=(32, 32))
    flow = nf.models.Embedded(1, flow=inner.config, context=m, hidden=(32,))
    flow = nf.models.standardize(flow, theta, x)
    nf.fit(flow, theta, context=x, steps=800, progress=False, seed=0)
    flow.eval()
    observed = torch.tensor([[-1.0], [0.0], [1.5]]) + torch.randn(3, m)
    with torch.no_grad():
        draws = flow.sample(20_000, context=observed).squeeze(-1)  # (20000, 3)
    mean, std = observed.sum(-1) / (m + 1), math.sqrt(1 / (m + 1))
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.05)
    assert ((draws.std(0) / std - 1).abs() < 0.15).all(), draws.std(0) / std
    path = nf.save(flow, tmp_path / "posterior.pt")
    loaded = nf.load(path)
    assert loaded.config["flow"]["model"] == "Embedded"
    grid = torch.linspace(-1, 1, 7)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.log_prob(grid, observed[:1].expand(7, -1)),
            flow.log_prob(grid, observed[:1].expand(7, -1)),
        )


def test_bad_settings_are_one_line() -> None:
    unconditional = nf.models.NSF(2, transforms=1, hidden=(8,)).config
    conditional = nf.models.NSF(2, context=3, transforms=1, hidden=(8,)).config
    for kwargs, message in (
        ({"flow": unconditional, "context": 5}, "the inner flow must be conditional"),
        ({"flow": conditional, "context": 0}, "Embedded: context must be"),
        ({"flow": "NSF", "context": 5}, "flow must be an inner flow's config dict"),
        ({"flow": conditional, "context": 5, "hidden": (8, 4), "residual": True}, "equal hidden"),
    ):
        with pytest.raises((ValueError, TypeError), match=message) as info:
            nf.models.Embedded(2, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"event shape \(3,\)"):
        nf.models.Embedded(3, flow=conditional, context=5)


def test_command_line_summary_of_the_given_columns(tmp_path, capsys) -> None:
    """``nfkit fit --given ... --summary K`` wraps the model in ``Embedded``: ``nfkit info`` names
    the summary network, sampling takes the raw given values; ``--summary`` without ``--given``
    is a one-line error."""
    import numpy as np
    import pandas as pd

    from nfkit.cli import main

    rng = np.random.default_rng(0)
    theta = rng.normal(size=300)
    table = pd.DataFrame(theta[:, None] + rng.normal(size=(300, 6)), columns=list("abcdef"))
    table.insert(0, "theta", theta)
    table.to_csv(tmp_path / "sims.csv", index=False)
    model = str(tmp_path / "m.pt")
    fit = ["fit", str(tmp_path / "sims.csv"), "--steps", "5", "--hidden", "8", "-q"]
    assert main([*fit, "--given", "a,b,c,d,e,f", "--summary", "2", "--out", model]) == 0
    assert main(["info", model]) == 0
    out = capsys.readouterr().out
    assert "NSF(features=1, context=2" in out
    assert "summary: an MLP (8) of the 6 context features into the model's 2" in out
    given = ",".join(f"{c}=0.5" for c in "abcdef")
    assert main(["sample", model, "--given", given, "-n", "3", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # header and three rows
    assert main([*fit, "--summary", "2", "--out", model]) == 1
    assert "--summary is the size of a learned summary of the --given" in capsys.readouterr().err


def test_flow_density_summary() -> None:
    """``FlowDensity(summary=K)`` wraps the model in ``Embedded``; without given columns it is a
    one-line error."""
    import numpy as np

    rng = np.random.default_rng(0)
    theta = rng.normal(size=(300, 1))
    data = np.hstack([theta, theta + rng.normal(size=(300, 6))])
    est = nf.FlowDensity(
        "maf", given=[1, 2, 3, 4, 5, 6], summary=2, transforms=1, hidden=(8,), steps=10,
        random_state=0,
    ).fit(data)  # fmt: skip
    assert est.flow_.config["flow"]["model"] == "Embedded"
    assert est.flow_.config["flow"]["flow"]["context"] == 2
    assert np.isfinite(est.score_samples(data[:5])).all()
    assert est.sample(4, context=data[0, 1:], random_state=0).shape == (4, 7)
    with pytest.raises(ValueError, match="summary is the size of a summary of given columns"):
        nf.FlowDensity("maf", summary=2, steps=2).fit(data)


def test_a_set_summary_is_invariant_to_the_order_of_the_trials(tmp_path) -> None:
    """``set_features``: the twenty draws of the conjugate problem as a set of scalars. The
    standardized flow (statistics pooled over the elements) gives equal densities for any order
    of the draws, learns the posterior as the MLP summary does, and saves and loads."""
    torch.manual_seed(0)
    n, m = 8000, 20
    theta = torch.randn(n, 1)
    x = theta + torch.randn(n, m)
    inner = nf.models.NSF(1, context=4, transforms=2, hidden=(32, 32))
    flow = nf.models.Embedded(1, flow=inner.config, context=m, hidden=(32,), set_features=1)
    flow = nf.models.standardize(flow, theta, x)
    scaler = flow.embedding[0]
    assert torch.equal(scaler.mean, scaler.mean[:1].expand(m))  # one scaling for every trial
    nf.fit(flow, theta, context=x, steps=800, progress=False, seed=0)
    flow.eval()
    observed = torch.tensor([[-1.0], [0.0], [1.5]]) + torch.randn(3, m)
    grid = torch.linspace(-2, 2, 9)[:, None, None]
    with torch.no_grad():
        draws = flow.sample(20_000, context=observed).squeeze(-1)
        shuffled = observed[:, torch.randperm(m)]
        torch.testing.assert_close(
            flow.log_prob(grid, shuffled), flow.log_prob(grid, observed), rtol=1e-5, atol=1e-5
        )
    mean, std = observed.sum(-1) / (m + 1), math.sqrt(1 / (m + 1))
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.05)
    assert ((draws.std(0) / std - 1).abs() < 0.15).all(), draws.std(0) / std
    loaded = nf.load(nf.save(flow, tmp_path / "set.pt"))
    assert loaded.config["flow"]["set_features"] == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(grid, observed), flow.log_prob(grid, observed))
    with pytest.raises(ValueError, match=r"context \(20\) must hold whole elements of set_f"):
        nf.models.Embedded(1, flow=inner.config, context=m, set_features=3)


def test_info_names_a_set_summary(tmp_path, capsys) -> None:
    from nfkit.cli import main

    inner = nf.models.MAF(2, context=3, transforms=1, hidden=(8,))
    flow = nf.models.Embedded(2, flow=inner.config, context=12, hidden=(16,), set_features=4)
    path = nf.save(flow, tmp_path / "m.pt")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "summary: a DeepSet (16) of the 3 elements of 4 context features each (their order "
        "does not matter) into the model's 3, trained with it"
    ) in out


def test_set_summary_from_the_command_line_and_the_estimator(tmp_path, capsys) -> None:
    """``--summary K --summary-set M`` and ``FlowDensity(summary=K, summary_set=M)`` build the
    DeepSet summary; shuffling the trials leaves the scores unchanged; misuse is one line."""
    import numpy as np
    import pandas as pd

    from nfkit.cli import main

    rng = np.random.default_rng(0)
    theta = rng.normal(size=300)
    trials = theta[:, None] + rng.normal(size=(300, 6))
    table = pd.DataFrame(trials, columns=list("abcdef"))
    table.insert(0, "theta", theta)
    table.to_csv(tmp_path / "sims.csv", index=False)
    model = str(tmp_path / "m.pt")
    fit = ["fit", str(tmp_path / "sims.csv"), "--steps", "5", "--hidden", "8", "-q"]
    given = ["--given", "a,b,c,d,e,f"]
    assert main([*fit, *given, "--summary", "2", "--summary-set", "2", "--out", model]) == 0
    assert main(["info", model]) == 0
    assert "a DeepSet (8) of the 3 elements of 2 context features each" in capsys.readouterr().out
    assert main([*fit, *given, "--summary-set", "2", "--out", model]) == 1
    assert "give --summary" in capsys.readouterr().err
    assert main([*fit, *given, "--summary", "2", "--summary-set", "4", "--out", model]) == 1
    assert "context (6) must hold whole elements of set_features=4" in capsys.readouterr().err
    data = np.hstack([theta[:, None], trials])
    est = nf.FlowDensity("maf", given=[1, 2, 3, 4, 5, 6], summary=2, summary_set=1,
                         transforms=1, hidden=(8,), steps=10, random_state=0).fit(data)  # fmt: skip
    assert est.flow_.config["flow"]["set_features"] == 1
    shuffled = np.hstack([theta[:, None], trials[:, ::-1]])
    np.testing.assert_allclose(est.score_samples(shuffled), est.score_samples(data), atol=1e-9)
    with pytest.raises(ValueError, match="summary_set reads the given columns as a set"):
        nf.FlowDensity("maf", given=[1, 2], summary_set=1, steps=2).fit(data[:, :3])


def test_a_padded_set_summary_is_amortized_over_the_number_of_trials(tmp_path) -> None:
    """``padded``: the conjugate problem with 0 to 20 trials per simulation, absent trials as
    NaN. One flow gives the posterior N(Σx / (k+1), 1 / (k+1)) for every count k. Over 20
    observed data sets at each of k = 0, 5 and 20: the posterior means' RMS error is under 0.3
    posterior standard deviations and the mean spread within 15% of the truth (measured, one
    thread, seed 0: 0.07, 0.08, 0.08 and 0.98, 1.06, 0.97; a flow blind to k would be off by a
    factor of 2 at one end). The density does not depend on where the padding sits; the model
    is saved and loaded."""
    torch.manual_seed(0)
    n, m = 8000, 20
    theta = torch.randn(n, 1)
    x = theta + torch.randn(n, m)
    k = torch.randint(0, m + 1, (n,))
    x[torch.arange(m) >= k[:, None]] = torch.nan
    inner = nf.models.NSF(1, context=4, transforms=2, hidden=(32, 32))
    flow = nf.models.Embedded(
        1, flow=inner.config, context=m, hidden=(64,), set_features=1, padded=True
    )
    flow = nf.models.standardize(flow, theta, x)
    nf.fit(flow, theta, context=x, steps=1000, lr=3e-3, progress=False, seed=0)
    flow.eval()
    g = torch.Generator().manual_seed(1)
    for count in (0, 5, 20):
        truth = torch.randn(20, 1, generator=g)
        observed = torch.full((20, m), torch.nan)
        observed[:, :count] = truth + torch.randn(20, count, generator=g)
        with torch.no_grad():
            draws = flow.sample(4000, context=observed).squeeze(-1)  # (4000, 20)
        mean, std = observed[:, :count].sum(-1) / (count + 1), math.sqrt(1 / (count + 1))
        rms = float(((draws.mean(0) - mean) / std).pow(2).mean().sqrt())
        spread = float((draws.std(0) / std).mean())
        assert rms < 0.3 and abs(spread - 1) < 0.15, (count, rms, spread)
        with torch.no_grad():
            moved = flow.log_prob(torch.zeros(20, 1), observed.flip(-1))  # padding first
            torch.testing.assert_close(moved, flow.log_prob(torch.zeros(20, 1), observed))
    loaded = nf.load(nf.save(flow, tmp_path / "padded.pt"))
    assert loaded.config["flow"]["padded"] is True
    grid = torch.linspace(-2, 2, 20)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(grid, x[:20]), flow.log_prob(grid, x[:20]))


def test_padding_errors_are_one_line() -> None:
    inner = nf.models.MAF(1, context=2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="padded=True pads a set's elements; give set_features"):
        nf.models.Embedded(1, flow=inner.config, context=6, padded=True)
    flow = nf.models.Embedded(1, flow=inner.config, context=6, set_features=2, padded=True)
    c = torch.randn(3, 6)
    c[0, 4:] = torch.nan  # a whole element absent: fine
    assert flow.log_prob(torch.zeros(3, 1), c).isfinite().all()
    assert flow.sample(2, context=c).shape == (2, 3, 1)
    part = c.clone()
    part[1, 2] = torch.nan  # half an element
    for call in (lambda: flow.log_prob(torch.zeros(3, 1), part), lambda: flow.sample(2, part)):
        with pytest.raises(ValueError, match="context holds a partly missing set element"):
            call()
    inf = c.clone()
    inf[2, 0] = torch.inf
    with pytest.raises(ValueError, match="context contains inf values"):
        flow.log_prob(torch.zeros(3, 1), inf)
    with pytest.raises(ValueError, match="nf.fit: context contains inf values"):
        nf.fit(flow, torch.zeros(3, 1), context=inf, steps=1, progress=False)
    with pytest.raises(ValueError, match="nf.fit: context holds a partly missing set element"):
        nf.fit(flow, torch.zeros(3, 1), context=part, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"pooled over the set's elements\) column\(s\) 1 are"):
        nf.models.standardize(flow, torch.randn(3, 1), torch.tensor([[0.0, 1, 1.0, 1, 2, 1]] * 3))
    plain = nf.models.Embedded(1, flow=inner.config, context=6, set_features=2)
    with pytest.raises(ValueError, match="context contains NaN values"):
        plain.log_prob(torch.zeros(3, 1), c)
    with pytest.raises(ValueError, match="nf.fit: context contains NaN or inf values"):
        nf.fit(plain, torch.zeros(3, 1), context=c, steps=1, progress=False)


def test_padded_sets_from_the_command_line_and_the_estimator(tmp_path, capsys) -> None:
    """``--summary-padded`` / ``summary_padded=True``: empty cells in the given set's columns
    are absent trials; a score does not depend on where they sit; an empty modelled cell or a
    partly empty element is still a one-line error."""
    import numpy as np
    import pandas as pd

    from nfkit.cli import main

    rng = np.random.default_rng(0)
    theta = rng.normal(size=300)
    trials = theta[:, None] + rng.normal(size=(300, 6))
    trials[np.arange(6) >= rng.integers(0, 7, 300)[:, None]] = np.nan  # 0 … 6 trials a row
    table = pd.DataFrame(np.column_stack([theta, trials]), columns=["theta", *"abcdef"])
    table.to_csv(tmp_path / "sims.csv", index=False)
    model, scores = str(tmp_path / "m.pt"), str(tmp_path / "s.csv")
    fit = ["fit", str(tmp_path / "sims.csv"), "--steps", "5", "--hidden", "8", "-q"]
    given = ["--given", "a,b,c,d,e,f", "--summary", "2", "--summary-set", "1"]
    assert main([*fit, *given, "--out", model]) == 1
    assert "missing values in column(s) 'a'" in capsys.readouterr().err
    assert main([*fit, "--given", "a,b,c,d,e,f", "--summary-padded", "--out", model]) == 1
    assert "--summary-padded lets a set's elements be missing" in capsys.readouterr().err
    assert main([*fit, *given, "--summary-padded", "--out", model]) == 0
    assert main(["info", model]) == 0
    assert "a DeepSet (8) of up to 6 elements of 1 context features" in capsys.readouterr().out
    reversed_cells = table[["theta", *"fedcba"]].set_axis(["theta", *"abcdef"], axis=1)
    reversed_cells.to_csv(tmp_path / "moved.csv", index=False)  # padding first
    assert main(["score", model, str(tmp_path / "sims.csv"), "--out", scores]) == 0
    first = pd.read_csv(scores)["log_density"].to_numpy()
    assert main(["score", model, str(tmp_path / "moved.csv"), "--out", scores]) == 0
    np.testing.assert_allclose(pd.read_csv(scores)["log_density"], first, atol=1e-5)
    assert np.isfinite(first).all()
    table.loc[3, "theta"] = np.nan
    table.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["score", model, str(tmp_path / "bad.csv"), "--out", scores]) == 1
    assert "missing values in column(s) 'theta' (1)" in capsys.readouterr().err

    data = np.column_stack([theta, trials])
    est = nf.FlowDensity("maf", given=[1, 2, 3, 4, 5, 6], summary=2, summary_set=1,
                         summary_padded=True, transforms=1, hidden=(8,), steps=10,
                         random_state=0).fit(data)  # fmt: skip
    assert est.flow_.config["flow"]["padded"] is True
    moved = np.column_stack([theta, trials[:, ::-1]])
    np.testing.assert_allclose(est.score_samples(moved), est.score_samples(data), atol=1e-9)
    bad = data.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"score_samples: missing values \(NaN\) in modelled col"):
        est.score_samples(bad)
    with pytest.raises(ValueError, match="fit: summary_padded lets a set's elements be missing"):
        nf.FlowDensity("maf", given=[1, 2], summary=2, summary_padded=True).fit(data[:, :3])
    with pytest.raises(ValueError, match="Input .*contains NaN"):  # scikit-learn's own check
        nf.FlowDensity("maf", given=[1, 2, 3, 4, 5, 6], summary=2, summary_set=1).fit(data)
    two = nf.FlowDensity("maf", given=[1, 2, 3, 4, 5, 6], summary=2, summary_set=2,
                         summary_padded=True, transforms=1, hidden=(8,), steps=2)  # fmt: skip
    half = np.column_stack([theta, np.nan_to_num(trials)])
    half[0, 2] = np.nan  # half of the first two-number element
    with pytest.raises(ValueError, match="context holds a partly missing set element"):
        two.fit(half)


def test_a_wrapped_inner_config_is_refused() -> None:
    """A standardized (or discrete) inner flow's config would lose its statistics and its
    discrete columns silently: refused, pointing at standardize(Embedded(...))."""
    x, c = torch.randn(50, 2), torch.randn(50, 4)
    x[:, 0] = x[:, 0].round()
    wrapped = nf.models.standardize(nf.models.MAF(2, context=3, transforms=1, hidden=(8,)), x,
                                    c[:, :3], discrete=[0])  # fmt: skip
    with pytest.raises(ValueError, match="the inner flow's config is a Standardized wrapper"):
        nf.models.Embedded(2, flow=wrapped.config, context=4)
