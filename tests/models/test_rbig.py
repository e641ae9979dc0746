"""RBIG as a model: fitted greedily by standardize, FlowDensity and the command line, never by
gradient from its identity start; its stopping test on tiny or constant data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf
from nfkit.cli import main


def _correlated(n: int = 1500) -> torch.Tensor:
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.stack([z[:, 0], 0.95 * z[:, 0] + math.sqrt(1 - 0.95**2) * z[:, 1]], 1)
    return x * torch.tensor([3.0, 0.5], dtype=torch.float64) + 10.0


def test_standardize_fits_an_unfitted_rbig_on_the_standardized_rows() -> None:
    """standardize(RBIG) fits it (it stayed a product of identity layers: the columns'
    dependence was lost) on the standardized rows; the same as fitting it by hand there."""
    x = _correlated()
    flow = nf.models.standardize(nf.models.RBIG(2).double(), x)
    std = (x - x.mean(0)) / x.std(0)
    by_hand = nf.models.RBIG(2).fit(std)
    assert flow.config["flow"]["layers"] == by_hand.config["layers"] >= 1
    expected = by_hand.log_prob(std) - torch.log(x.std(0)).sum()
    torch.testing.assert_close(flow.log_prob(x), expected)
    again = nf.models.build(flow.config).double()  # the fitted count, then the weights
    again.load_state_dict(flow.state_dict())
    torch.testing.assert_close(again.log_prob(x), flow.log_prob(x))


def test_flow_density_rbig_models_the_dependence() -> None:
    x = _correlated().numpy()
    est = nf.FlowDensity("rbig", random_state=0).fit(x)
    sample = est.sample(3000, random_state=0)
    assert abs(np.corrcoef(sample.T)[0, 1] - 0.95) < 0.02
    assert est.history_.steps == 0  # no gradient training
    independent = nf.FlowDensity("rbig", random_state=0).fit(x[:, :1]).score(x[:, :1]) + (
        nf.FlowDensity("rbig", random_state=0).fit(x[:, 1:]).score(x[:, 1:])
    )
    assert est.score(x) > independent + 1.0  # log(1/sqrt(1 - 0.95²)) = 1.16 nats of dependence
    with pytest.raises(ValueError, match="rbig is fitted greedily, without sample weights"):
        nf.FlowDensity("rbig").fit(x, sample_weight=np.ones(len(x)))


def test_cli_fit_rbig(capsys, tmp_path) -> None:
    x = _correlated(800).numpy()
    pd.DataFrame(x, columns=["a", "b"]).to_csv(tmp_path / "t.csv", index=False)
    code = main(
        ["fit", str(tmp_path / "t.csv"), "--model", "rbig", "--out", str(tmp_path / "r.pt")]
    )
    _, err = capsys.readouterr()
    assert code == 0 and "fitted RBIG on 800 rows greedily" in err
    flow = nf.load(tmp_path / "r.pt")
    draws = flow.sample(3000).double().numpy()
    assert abs(np.corrcoef(draws.T)[0, 1] - 0.95) < 0.02


def test_nf_fit_refuses_an_unfitted_rbig() -> None:
    with pytest.raises(ValueError, match=r"nf.fit: an RBIG flow is fitted by flow.fit\(x\)"):
        nf.fit(nf.models.RBIG(2), torch.randn(100, 2), steps=2, progress=False)
    fitted = nf.models.RBIG(2).fit(torch.randn(200, 2))
    nf.fit(fitted, torch.randn(200, 2), steps=2, progress=False)  # fine-tuning: allowed


def test_rbig_stops_at_a_broken_down_gain_and_refuses_constant_columns() -> None:
    """Five rows: the held-out gains run to -inf and NaN (NaN won the argmax and kept 5
    layers, -inf densities at training rows); a constant column named, not "NaN or inf"."""
    torch.manual_seed(0)
    rbig = nf.models.RBIG(3).fit(torch.randn(5, 3))
    assert not any(math.isnan(g) for g in rbig.gains) and rbig.config["layers"] == 1
    assert torch.isfinite(rbig.log_prob(torch.randn(5, 3))).all()
    x = torch.randn(50, 2)
    x[:, 1] = 3.0
    with pytest.raises(ValueError, match="RBIG.fit: column.s. 1 of x are constant in float32"):
        nf.models.RBIG(2).fit(x)
    # half precision: bfloat16 was "linearly dependent" (its eps is over the test's ratio),
    # float16 a raw "linalg_eigh_cpu not implemented for 'Half'"
    moons = nf.datasets.two_moons(200, seed=0)
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(TypeError, match=r"RBIG.fit: x must be float32 or float64 \(the"):
            nf.models.RBIG(2).fit(moons.to(dtype))


def test_a_fitted_rbig_loaded_from_a_file_is_fitted(tmp_path) -> None:
    """A loaded RBIG has its layers but not the fit's gains: it counted as unfitted, so nf.fit
    refused to fine-tune it and standardize re-fitted it (discarding the file's weights)."""
    x = _correlated(600).float()
    flow = nf.models.RBIG(2).fit(x)
    nf.fit(flow, x, steps=3, progress=False)  # fine-tuned: its weights differ from a fresh fit
    nf.save(flow, tmp_path / "r.pt")
    loaded = nf.load(tmp_path / "r.pt")
    assert loaded.gains == [] and loaded.fitted and not nf.models.RBIG(2).fitted
    nf.fit(loaded, x, steps=2, progress=False)  # fine-tuning again: allowed
    again = nf.load(tmp_path / "r.pt")
    wrapped = nf.models.standardize(nf.load(tmp_path / "r.pt"), x)
    inner = wrapped.transform.transforms[1]  # after the standardizing Affine: kept, not re-fitted
    torch.testing.assert_close(inner.params, again.transform.transforms[0].params, rtol=0, atol=0)


def test_rbig_fits_columns_that_become_constant_in_float32() -> None:
    """A duplicated column (or four Gaussian rows) makes a column constant after a rotation: the
    marginal layer's span floor of 1e-12 of the values was 0 in float32 (x_high = x_low), the
    layer gave NaN and the next fit said "x contains NaN or inf values"."""
    layer = nf.transforms.MarginalGaussianization(1).fit(torch.ones(10, 1))
    z, ladj = layer(torch.tensor([[1.0], [1.5]]))
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
    a = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    flow = nf.models.RBIG(2).fit(torch.cat([a, a + 1e-3 * a.square()], 1))
    assert torch.isfinite(flow.log_prob(torch.randn(20, 2))).all()
    # an exact duplicate (or any constant combination) is refused: its layers gave NaN off the line
    for x in (torch.cat([a, a], 1), torch.cat([a, 2 * a + 1, torch.randn(500, 1)], 1)):
        with pytest.raises(ValueError, match="RBIG.fit: the columns of x are linearly dependent"):
            nf.models.RBIG(x.shape[1]).fit(x)
    for seed in range(10):  # four rows, the documented minimum
        torch.manual_seed(seed)
        rows = torch.randn(4, 2)
        assert torch.isfinite(nf.models.RBIG(2, seed=seed).fit(rows).log_prob(rows)).all()


def test_cli_rbig_takes_the_run_seed_and_refuses_gradient_options(capsys, tmp_path) -> None:
    """--seed seeds RBIG's held-out split (the summary printed a seed that played no part);
    options of gradient training are refused rather than ignored (--val was silently unused)."""
    x = _correlated(400).numpy()
    pd.DataFrame(x, columns=["a", "b"]).to_csv(tmp_path / "t.csv", index=False)
    fit = ["fit", str(tmp_path / "t.csv"), "--model", "rbig", "-q", "--out"]
    for seed in ("1", "2"):
        assert main([*fit, str(tmp_path / f"s{seed}.pt"), "--seed", seed]) == 0
    one, two = nf.load(tmp_path / "s1.pt"), nf.load(tmp_path / "s2.pt")
    assert one.config["flow"]["seed"] == 1 and two.config["flow"]["seed"] == 2
    rows = torch.as_tensor(x[:50], dtype=torch.float32)
    assert not torch.equal(one.log_prob(rows), two.log_prob(rows))
    capsys.readouterr()
    code = main([*fit, str(tmp_path / "v.pt"), "--val-fraction", "0.5", "--steps", "5"])
    _, err = capsys.readouterr()
    assert code != 0 and err.strip().splitlines() == [
        "nfkit: error: --model rbig is fitted greedily, layer by layer without gradient steps: "
        "--val-fraction, --steps play(s) no part (its held-out share of rows: --option "
        "validation=F, default 0.2)"
    ]


def test_a_saved_or_rebuilt_rbig_refits_with_the_original_cap(tmp_path) -> None:
    """After a fit, ``config["layers"]`` is the number kept; a rebuilt or loaded flow took it
    as its cap, so refitting on more data kept at most 2 layers (a silently worse model)
    where the flow in memory kept 8. The cap is ``config["max_layers"]``."""
    torch.manual_seed(0)
    flow = nf.models.RBIG(2).fit(nf.datasets.two_moons(60))
    assert flow.config["layers"] < 50 and flow.config["max_layers"] == 50
    big, test = nf.datasets.two_moons(4000), nf.datasets.two_moons(2000)
    copies = [nf.load(nf.save(flow, tmp_path / "r.pt")), nf.models.build(flow.config)]
    kept = flow.fit(big).config["layers"]
    assert kept > 2
    for other in copies:
        assert other.fit(big).config["layers"] == kept
        torch.testing.assert_close(other.log_prob(test), flow.log_prob(test))
    with pytest.raises(ValueError, match="RBIG: max_layers must be"):
        nf.models.RBIG(2, max_layers=0)
